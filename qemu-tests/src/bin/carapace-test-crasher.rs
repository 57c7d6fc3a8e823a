//! Guest-side probe of the test image (a service with `restart = "always"`):
//! it says `crasher: started`, and fails with status 3 about 50 ms later, every
//! time — so the QEMU tests can watch PID 1 restart it with growing delays and
//! stay in charge while it does.

use std::io::Write;
use std::time::Duration;

/// The exit status the tests expect in `service crasher exited with status 3`.
const STATUS: i32 = 3;

fn main() {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "crasher: started");
    let _ = out.flush();
    drop(out);
    std::thread::sleep(Duration::from_millis(50));
    std::process::exit(STATUS);
}
