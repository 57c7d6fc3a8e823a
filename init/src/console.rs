//! Lines on the console. PID 1 must not panic when the console is gone or
//! full, so every write here ignores errors instead of using `println!`.

use std::io::Write;

/// Writes `carapace: <msg>` as one line to standard output (the console).
/// In stage 2 the line is kept in the `init` log file as well.
pub fn say(msg: &str) {
    write_line(&format!("carapace: {msg}\n"));
    crate::logs::append(crate::logs::INIT, msg);
}

/// Writes a raw, already formatted line (the caller adds the newline).
pub fn write_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}
