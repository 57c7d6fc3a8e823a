//! The log files behind `GET /v1/logs`: every console line of a service is
//! also appended to `/run/carapace/logs/<service>.log`, and PID 1's own
//! `carapace: …` lines of stage 2 to `init.log`, by the writer and in the
//! record format of [`carapace_contract::logs`] (`<ms since boot> <text>`
//! a line, rotated to `<service>.log.1` at [`CAP`] bytes).
//!
//! Logging never stops PID 1: a file that cannot be written is given up on
//! (said once on the console) and the console line still goes out.

use carapace_contract::logs::Sink;
use std::sync::Mutex;

pub use carapace_contract::logs::{CAP, DIR, INIT};

static SINK: Mutex<Option<Sink>> = Mutex::new(None);

/// Starts writing log files into `dir` (stage 2 calls this once /run is up).
pub fn start(dir: &str) -> std::io::Result<()> {
    let sink = Sink::new(dir, CAP)?;
    if let Ok(mut guard) = SINK.lock() {
        *guard = Some(sink);
    }
    Ok(())
}

/// Appends a line of `name` to its file, if logging has started. Reports a
/// failure on the console (never through this function again for that file).
pub fn append(name: &str, line: &str) {
    let result = match SINK.lock() {
        Ok(mut guard) => match guard.as_mut() {
            Some(sink) => sink.append(name, crate::clock::ms_since_boot(), line),
            None => Ok(()),
        },
        Err(_) => Ok(()),
    };
    if let Err(e) = result {
        crate::console::write_line(&format!("carapace: cannot keep the log of {name}: {e}\n"));
    }
}
