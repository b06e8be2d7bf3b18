//! `crpod`: the podman-like container front-end. Its commands arrive with the container
//! issue; until then it says so instead of pretending.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "crpod: no container commands are implemented yet (they need the dump and restore engines)"
    );
    ExitCode::from(2)
}
