//! Any byte string as an image file: decoding (plain, pretty, without payloads) and
//! counting must return an error or a document, never panic, hang or over-allocate.
#![no_main]

use criu_images::crit::{self, DecodeOptions};
use criu_images::ImageReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for opts in [
        DecodeOptions { pretty: false, no_payload: false },
        DecodeOptions { pretty: true, no_payload: false },
        DecodeOptions { pretty: true, no_payload: true },
    ] {
        if let Ok(mut r) = ImageReader::new(data, "fuzz.img") {
            if let Ok(doc) = crit::decode(&mut r, opts) {
                let _ = crit::to_python_json(&doc, opts.pretty);
                // What we decoded must encode again.
                if !opts.no_payload {
                    crit::encode(&doc, Vec::new(), "fuzz.img".as_ref()).expect("decoded document encodes");
                }
            }
        }
    }
    if let Ok(mut r) = ImageReader::new(data, "fuzz.img") {
        let _ = crit::count(&mut r);
    }
});
