//! Guest-side probe of the test images that stands still: it says
//! `idle: <argv[0]> standing still` once and then sleeps forever, ignoring
//! nothing and doing nothing. The update tests use it to build versions that
//! never become healthy: as the network agent (the NIC never gets an
//! address) and as stage 2 itself (PID 1 hangs before `ready`, so only the
//! hardware watchdog that stage 1 armed resets the machine).

use std::io::Write;

fn main() {
    let name = std::env::args().next().unwrap_or_else(|| "idle".into());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "idle: {name} standing still");
    let _ = out.flush();
    drop(out);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
