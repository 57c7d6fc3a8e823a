//! The trivial init of `cargo xtask bench boot`: as `/init` of an initrd of
//! its own, it prints `trivial init at <ms> ms` (milliseconds since the
//! kernel started, CLOCK_BOOTTIME, as carapace-init's lines count them) and
//! powers the machine off at once. The same kernel reaching this is the
//! floor the node's ready time is measured against.

use std::io::Write;

fn main() {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let ms = (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "trivial init at {ms} ms");
    let _ = out.flush();
    rustix::fs::sync();
    // Only PID 1 may power off; run anywhere else this only prints.
    let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
}
