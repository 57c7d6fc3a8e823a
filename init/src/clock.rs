//! Time since the kernel started, for the `ready` line and the boot benchmark.

/// Milliseconds since the kernel started (CLOCK_BOOTTIME).
pub fn ms_since_boot() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}
