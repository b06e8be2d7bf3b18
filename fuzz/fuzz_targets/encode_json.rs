//! Any JSON document given to `encode`: an error or an image, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = criu_images::crit::encode(&doc, Vec::new(), "fuzz.img".as_ref());
    }
});
