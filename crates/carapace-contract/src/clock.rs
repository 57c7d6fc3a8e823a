//! The node's clock for everything it stamps: milliseconds since the kernel
//! started (CLOCK_BOOTTIME, which counts suspend too). Log lines,
//! `started_at_ms` in services.json and containers.json, and the boot's
//! stage times are all on it, so they compare with each other.

/// Milliseconds since the kernel started (CLOCK_BOOTTIME).
pub fn ms_since_boot() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_does_not_go_back() {
        let a = ms_since_boot();
        let b = ms_since_boot();
        assert!(b >= a);
    }
}
