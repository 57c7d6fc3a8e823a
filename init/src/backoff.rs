//! The restart policy, as pure functions: whether a service that ended is
//! started again, and after how long.

use crate::manifest::Restart;
use std::time::Duration;

/// The first delay; each further consecutive failure doubles it.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest delay between two starts.
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// A run at least this long counts as healthy and resets the doubling.
pub const STABLE_RUN: Duration = Duration::from_secs(10);

/// How a service's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn is_success(self) -> bool {
        self == Exit::Code(0)
    }
}

/// Whether `policy` starts a service again after `exit`.
pub fn should_restart(policy: Restart, exit: Exit) -> bool {
    match policy {
        Restart::Always => true,
        Restart::OnFailure => !exit.is_success(),
        Restart::Never => false,
    }
}

/// The consecutive-failure count after a run of `ran` that ended: a long,
/// healthy run starts counting afresh.
pub fn next_failures(previous: u32, ran: Duration) -> u32 {
    if ran >= STABLE_RUN {
        1
    } else {
        previous.saturating_add(1)
    }
}

/// The delay before the next start after `failures` consecutive failures (>= 1).
pub fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let ms: Vec<u128> = (1..=10).map(|n| delay(n).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
        assert_eq!(delay(0), FIRST_DELAY);
    }

    #[test]
    fn a_stable_run_resets_the_count() {
        assert_eq!(next_failures(7, Duration::from_millis(50)), 8);
        assert_eq!(next_failures(7, STABLE_RUN), 1);
        assert_eq!(next_failures(u32::MAX, Duration::ZERO), u32::MAX);
    }

    #[test]
    fn policies() {
        assert!(should_restart(Restart::Always, Exit::Code(0)));
        assert!(should_restart(Restart::Always, Exit::Signal(9)));
        assert!(!should_restart(Restart::OnFailure, Exit::Code(0)));
        assert!(should_restart(Restart::OnFailure, Exit::Code(1)));
        assert!(should_restart(Restart::OnFailure, Exit::Signal(11)));
        assert!(!should_restart(Restart::Never, Exit::Code(1)));
    }
}
