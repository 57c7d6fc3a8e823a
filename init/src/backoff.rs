//! The restart policy, as pure functions: whether a service that ended is
//! started again, and after how long.
//!
//! A service that keeps failing is started again after 100 ms, then 200 ms,
//! 400 ms, … up to 10 s between two starts. A run that lasted longer than
//! [`STABLE_RUN`] proves the service healthy: the next failure counts as the
//! first again. `restart = "never"` never starts a service again;
//! `"on-failure"` only after a nonzero exit status or a signal; `"always"`
//! (the default) after any end. Nothing here touches a process or a clock.

use crate::manifest::Restart;
use std::fmt;
use std::time::Duration;

/// The delay after the first failure; each further consecutive failure doubles it.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest delay between two starts.
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// A run longer than this counts as healthy and resets the failure count.
pub const STABLE_RUN: Duration = Duration::from_secs(10);

/// How a service's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal with this number killed it.
    Signal(i32),
}

impl Exit {
    /// Exit status 0: the only end that `on-failure` accepts as success.
    pub fn is_success(self) -> bool {
        self == Exit::Code(0)
    }
}

/// `exited with status 3`, `killed by signal SIGKILL`: the words of the
/// console line that reports the end of a service.
impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(code) => write!(f, "exited with status {code}"),
            Exit::Signal(sig) => write!(f, "killed by signal {}", signal_name(sig)),
        }
    }
}

/// The conventional name of a signal number (`SIGTERM`), or the number
/// itself for one without a name here (real-time signals, say).
pub fn signal_name(sig: i32) -> String {
    use rustix::process::Signal;
    let names = [
        (Signal::HUP, "SIGHUP"),
        (Signal::INT, "SIGINT"),
        (Signal::QUIT, "SIGQUIT"),
        (Signal::ILL, "SIGILL"),
        (Signal::TRAP, "SIGTRAP"),
        (Signal::ABORT, "SIGABRT"),
        (Signal::BUS, "SIGBUS"),
        (Signal::FPE, "SIGFPE"),
        (Signal::KILL, "SIGKILL"),
        (Signal::USR1, "SIGUSR1"),
        (Signal::SEGV, "SIGSEGV"),
        (Signal::USR2, "SIGUSR2"),
        (Signal::PIPE, "SIGPIPE"),
        (Signal::ALARM, "SIGALRM"),
        (Signal::TERM, "SIGTERM"),
        (Signal::CHILD, "SIGCHLD"),
        (Signal::XCPU, "SIGXCPU"),
        (Signal::XFSZ, "SIGXFSZ"),
        (Signal::VTALARM, "SIGVTALRM"),
        (Signal::PROF, "SIGPROF"),
        (Signal::IO, "SIGIO"),
        (Signal::POWER, "SIGPWR"),
        (Signal::SYS, "SIGSYS"),
    ];
    names
        .iter()
        .find(|(s, _)| s.as_raw() == sig)
        .map(|(_, name)| name.to_string())
        .unwrap_or_else(|| sig.to_string())
}

/// What to do with a service that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after `delay`; `failures` is the new consecutive-failure count.
    Restart { delay: Duration, failures: u32 },
    /// Leave it ended.
    Stay,
}

/// Whether `policy` starts a service again after `exit`.
pub fn should_restart(policy: Restart, exit: Exit) -> bool {
    match policy {
        Restart::Always => true,
        Restart::OnFailure => !exit.is_success(),
        Restart::Never => false,
    }
}

/// The consecutive-failure count after a run of length `ran` ended, given
/// the count before it: a run longer than [`STABLE_RUN`] starts afresh at 1.
pub fn next_failures(previous: u32, ran: Duration) -> u32 {
    if ran > STABLE_RUN {
        1
    } else {
        previous.saturating_add(1)
    }
}

/// The delay before the next start after `failures` consecutive failures:
/// [`FIRST_DELAY`] for the first, doubling, never more than [`MAX_DELAY`].
pub fn delay(failures: u32) -> Duration {
    // 2^7 * 100 ms already exceeds the cap; clamping the exponent keeps the
    // shift and the multiplication from overflowing.
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_DELAY.saturating_mul(1u32 << doublings).min(MAX_DELAY)
}

/// The whole policy: a service with `policy` ran for `ran` after
/// `failures` consecutive failures before this run, then ended with `exit`.
pub fn decide(policy: Restart, exit: Exit, ran: Duration, failures: u32) -> Decision {
    if !should_restart(policy, exit) {
        return Decision::Stay;
    }
    let failures = next_failures(failures, ran);
    Decision::Restart {
        delay: delay(failures),
        failures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Duration = Duration::from_millis(50);

    /// The delays a service that always crashes at once is restarted with.
    fn crash_loop(policy: Restart, exit: Exit, runs: usize) -> Vec<u128> {
        let mut failures = 0;
        let mut delays = Vec::new();
        for _ in 0..runs {
            match decide(policy, exit, QUICK, failures) {
                Decision::Restart { delay, failures: f } => {
                    failures = f;
                    delays.push(delay.as_millis());
                }
                Decision::Stay => break,
            }
        }
        delays
    }

    #[test]
    fn a_crash_loop_doubles_the_delay_from_100_ms_up_to_the_10_s_cap() {
        assert_eq!(
            crash_loop(Restart::Always, Exit::Code(3), 11),
            vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000, 10_000]
        );
    }

    #[test]
    fn the_cap_holds_for_any_number_of_failures() {
        assert_eq!(delay(1), FIRST_DELAY);
        assert_eq!(delay(8), MAX_DELAY);
        assert_eq!(delay(40), MAX_DELAY);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
        assert_eq!(
            delay(0),
            FIRST_DELAY,
            "a count of 0 is treated as the first failure"
        );
        assert_eq!(
            next_failures(u32::MAX, QUICK),
            u32::MAX,
            "the count saturates"
        );
    }

    #[test]
    fn a_run_longer_than_10_s_resets_the_failure_count() {
        let after_five = 5;
        assert_eq!(
            decide(
                Restart::Always,
                Exit::Code(1),
                Duration::from_secs(11),
                after_five
            ),
            Decision::Restart {
                delay: FIRST_DELAY,
                failures: 1
            }
        );
        assert_eq!(
            decide(Restart::Always, Exit::Code(1), STABLE_RUN, after_five),
            Decision::Restart {
                delay: Duration::from_millis(3200),
                failures: 6
            },
            "exactly 10 s is not longer than 10 s"
        );
        assert_eq!(next_failures(7, QUICK), 8);
    }

    #[test]
    fn never_means_never_and_on_failure_only_after_a_failure() {
        assert_eq!(
            decide(Restart::Never, Exit::Code(1), QUICK, 0),
            Decision::Stay
        );
        assert_eq!(
            decide(Restart::Never, Exit::Signal(9), QUICK, 0),
            Decision::Stay
        );
        assert_eq!(
            decide(Restart::OnFailure, Exit::Code(0), QUICK, 0),
            Decision::Stay
        );
        assert!(should_restart(Restart::OnFailure, Exit::Code(1)));
        assert!(should_restart(Restart::OnFailure, Exit::Signal(11)));
        assert!(should_restart(Restart::Always, Exit::Code(0)));
        assert!(should_restart(Restart::Always, Exit::Signal(15)));
        assert_eq!(
            crash_loop(Restart::OnFailure, Exit::Code(0), 3),
            Vec::<u128>::new()
        );
        assert_eq!(
            crash_loop(Restart::OnFailure, Exit::Signal(6), 3),
            vec![100, 200, 400]
        );
    }

    #[test]
    fn exits_read_as_console_words() {
        assert_eq!(Exit::Code(3).to_string(), "exited with status 3");
        assert_eq!(Exit::Signal(9).to_string(), "killed by signal SIGKILL");
        assert_eq!(Exit::Signal(15).to_string(), "killed by signal SIGTERM");
        assert_eq!(Exit::Signal(40).to_string(), "killed by signal 40");
    }
}
