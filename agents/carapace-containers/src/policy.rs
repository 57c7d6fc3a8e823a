//! When a container that ended starts again, and how it ended — pure but
//! for [`read_oom_kills`].
//!
//! Backoff: a container that keeps ending is started again after 1 s, then
//! 2 s, 4 s, … at most 60 s between two starts. A run of at least
//! [`HEALTHY_RUN`] proves it healthy: the count of restarts in a row starts
//! again from zero, and so does the delay. The settings' `restart` decides
//! whether to restart at all ([`RestartPolicy::restarts`]): `always` after
//! any end, `never` never, `on-failure:N` after a failure, at most N times
//! in a row.
//!
//! How a run ended ([`ExitReason`]): `crun run` exits with the container's
//! status, or 128 + the signal that killed it (as a shell does), so 137 is
//! SIGKILL. A SIGKILL while the `oom_kill` count of the container's cgroup
//! rose is the kernel's OOM killer: "killed by the kernel: out of memory
//! (memory.max N bytes)". The count is read from
//! `/sys/fs/cgroup/carapace.slice/<name>/memory.events`, the parent of the
//! leaf crun runs the container in: `memory.events` counts the events of
//! the whole subtree, and this parent outlives the leaf, which crun removes
//! as soon as the container has ended (foreground `crun run` deletes the
//! container; `--keep` exists only from crun 1.15). The counter only
//! grows, so [`crate::runtime`] reads it before a run and after, and the
//! difference is this run's. (As with Docker, a program that exits with
//! status 129–192 on its own reads as killed by a signal.)

use carapace_model::containers::{ContainerName, RestartPolicy};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The delay before the first restart; each further one in a row doubles it.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest delay between two starts.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// A run this long counts as healthy: restarts in a row start from zero.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// How a container's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// Its process exited with this status.
    Exited(i32),
    /// A signal with this number killed it.
    Signaled(i32),
    /// The kernel's OOM killer killed it; `memory_max` is its limit, if any.
    OutOfMemory { memory_max: Option<u64> },
    /// The runtime could not start it (crun's own message).
    StartFailed(String),
}

impl ExitReason {
    /// Status 0: the only end that `on-failure` takes as success.
    pub fn is_success(&self) -> bool {
        *self == ExitReason::Exited(0)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Exited(code) => write!(f, "exited with status {code}"),
            ExitReason::Signaled(sig) => write!(
                f,
                "killed by signal {}",
                carapace_init::backoff::signal_name(*sig)
            ),
            ExitReason::OutOfMemory {
                memory_max: Some(bytes),
            } => write!(
                f,
                "killed by the kernel: out of memory (memory.max {bytes} bytes)"
            ),
            ExitReason::OutOfMemory { memory_max: None } => write!(
                f,
                "killed by the kernel: out of memory (no memory.max: the node ran out)"
            ),
            ExitReason::StartFailed(why) => write!(f, "could not start: {why}"),
        }
    }
}

/// How a run ended, from the exit status of `crun run` (`code` if it
/// exited, `signal` if a signal killed crun itself) and how many OOM kills
/// the container's cgroup counted during the run.
pub fn classify(
    code: Option<i32>,
    signal: Option<i32>,
    oom_kills: u64,
    memory_max: Option<u64>,
) -> ExitReason {
    let reason = match (code, signal) {
        (Some(c), _) if (129..=128 + 64).contains(&c) => ExitReason::Signaled(c - 128),
        (Some(c), _) => ExitReason::Exited(c),
        (None, Some(s)) => ExitReason::Signaled(s),
        (None, None) => ExitReason::Exited(-1),
    };
    let sigkill = rustix::process::Signal::KILL.as_raw();
    match reason {
        ExitReason::Signaled(s) if s == sigkill && oom_kills > 0 => {
            ExitReason::OutOfMemory { memory_max }
        }
        other => other,
    }
}

/// The same from a [`std::process::ExitStatus`].
pub fn classify_status(
    status: std::process::ExitStatus,
    oom_kills: u64,
    memory_max: Option<u64>,
) -> ExitReason {
    use std::os::unix::process::ExitStatusExt;
    classify(status.code(), status.signal(), oom_kills, memory_max)
}

/// `memory.events` of a container's cgroup, the parent of crun's leaf:
/// `<cgroup root>/carapace.slice/<name>/memory.events`.
pub fn memory_events_path(cgroup_root: &Path, name: &ContainerName) -> PathBuf {
    cgroup_root
        .join(crate::CGROUP_PARENT)
        .join(name.as_str())
        .join("memory.events")
}

/// The `oom_kill` count of a `memory.events` text (None if it has none).
pub fn parse_oom_kills(memory_events: &str) -> Option<u64> {
    memory_events.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

/// Reads the `oom_kill` count of `memory.events` at `path`; 0 when the
/// file lacks the line.
pub fn read_oom_kills(path: &Path) -> std::io::Result<u64> {
    Ok(parse_oom_kills(&std::fs::read_to_string(path)?).unwrap_or(0))
}

/// What to do with a container that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after `delay`; it is then the `in_a_row`-th restart in a row.
    Restart { delay: Duration, in_a_row: u32 },
    /// Leave it ended.
    Stay,
}

/// The delay before the `in_a_row`-th restart in a row (1 for the first).
pub fn delay(in_a_row: u32) -> Duration {
    // 2^6 s already exceeds the cap; clamping keeps the shift in range.
    let doublings = in_a_row.saturating_sub(1).min(16);
    FIRST_DELAY.saturating_mul(1u32 << doublings).min(MAX_DELAY)
}

/// The whole policy: a container with `policy` ran for `ran`, ended as
/// `exit`, after `in_a_row` restarts in a row before this run.
pub fn decide(policy: RestartPolicy, exit: &ExitReason, ran: Duration, in_a_row: u32) -> Decision {
    let in_a_row = if ran >= HEALTHY_RUN { 0 } else { in_a_row };
    if !policy.restarts(exit.is_success(), in_a_row) {
        return Decision::Stay;
    }
    let in_a_row = in_a_row.saturating_add(1);
    Decision::Restart {
        delay: delay(in_a_row),
        in_a_row,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Duration = Duration::from_millis(300);

    fn policy(s: &str) -> RestartPolicy {
        RestartPolicy::try_from(s.to_string()).expect("policy")
    }

    /// The delays, in seconds, of a container that always ends at once.
    fn crash_loop(p: RestartPolicy, exit: ExitReason, runs: usize) -> Vec<u64> {
        let mut in_a_row = 0;
        let mut delays = Vec::new();
        for _ in 0..runs {
            match decide(p, &exit, QUICK, in_a_row) {
                Decision::Restart { delay, in_a_row: n } => {
                    delays.push(delay.as_secs());
                    in_a_row = n;
                }
                Decision::Stay => break,
            }
        }
        delays
    }

    #[test]
    fn a_crash_loop_backs_off_from_one_second_doubling_to_a_minute() {
        assert_eq!(
            crash_loop(policy("always"), ExitReason::Exited(1), 10),
            [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
        );
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn a_healthy_minute_resets_the_backoff() {
        let after = decide(
            policy("always"),
            &ExitReason::Exited(1),
            Duration::from_secs(61),
            6,
        );
        assert_eq!(
            after,
            Decision::Restart {
                delay: FIRST_DELAY,
                in_a_row: 1
            }
        );
    }

    #[test]
    fn on_failure_stops_after_its_retries_and_after_success() {
        assert_eq!(
            crash_loop(policy("on-failure:3"), ExitReason::Exited(2), 10),
            [1, 2, 4]
        );
        assert_eq!(
            decide(policy("on-failure:3"), &ExitReason::Exited(0), QUICK, 0),
            Decision::Stay
        );
        // The retries count again after a healthy run.
        assert!(matches!(
            decide(
                policy("on-failure:3"),
                &ExitReason::Exited(2),
                HEALTHY_RUN,
                3
            ),
            Decision::Restart { in_a_row: 1, .. }
        ));
        let oom = ExitReason::OutOfMemory { memory_max: None };
        assert_eq!(crash_loop(policy("on-failure:1"), oom, 5), [1]);
    }

    #[test]
    fn never_means_never_and_always_restarts_even_a_clean_exit() {
        assert_eq!(
            crash_loop(policy("never"), ExitReason::Exited(1), 5),
            Vec::<u64>::new()
        );
        assert_eq!(
            crash_loop(policy("always"), ExitReason::Exited(0), 3),
            [1, 2, 4]
        );
    }

    #[test]
    fn exit_statuses_above_128_are_signals() {
        assert_eq!(classify(Some(0), None, 0, None), ExitReason::Exited(0));
        assert_eq!(classify(Some(3), None, 0, None), ExitReason::Exited(3));
        assert_eq!(classify(Some(143), None, 0, None), ExitReason::Signaled(15));
        assert_eq!(classify(None, Some(9), 0, None), ExitReason::Signaled(9));
        assert_eq!(
            classify(Some(143), None, 0, None).to_string(),
            "killed by signal SIGTERM"
        );
        assert_eq!(
            classify(Some(3), None, 0, None).to_string(),
            "exited with status 3"
        );
    }

    #[test]
    fn a_sigkill_with_an_oom_kill_is_out_of_memory() {
        let oom = classify(Some(137), None, 1, Some(268_435_456));
        assert_eq!(
            oom,
            ExitReason::OutOfMemory {
                memory_max: Some(268_435_456)
            }
        );
        assert_eq!(
            oom.to_string(),
            "killed by the kernel: out of memory (memory.max 268435456 bytes)"
        );
        assert!(!oom.is_success());
        // A SIGKILL without an OOM kill is just a SIGKILL.
        assert_eq!(
            classify(Some(137), None, 0, Some(1)),
            ExitReason::Signaled(9)
        );
        // An OOM kill of a child while the main process exited on its own.
        assert_eq!(classify(Some(1), None, 1, Some(1)), ExitReason::Exited(1));
    }

    #[test]
    fn the_oom_kill_count_is_read_from_memory_events() {
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(events), Some(1));
        assert_eq!(parse_oom_kills("low 0\n"), None);

        let name = ContainerName::try_from("web".to_string()).expect("name");
        let root =
            std::env::temp_dir().join(format!("carapace-policy-cgroup-{}", std::process::id()));
        let path = memory_events_path(&root, &name);
        assert_eq!(path, root.join("carapace.slice/web/memory.events"));
        std::fs::create_dir_all(path.parent().expect("dir")).expect("cgroup dir");
        std::fs::write(&path, events).expect("memory.events");
        let kills = read_oom_kills(&path).expect("read");
        assert_eq!(
            classify(Some(137), None, kills, Some(4 << 20)).to_string(),
            "killed by the kernel: out of memory (memory.max 4194304 bytes)"
        );
        std::fs::write(&path, "low 0\n").expect("memory.events");
        assert_eq!(read_oom_kills(&path).expect("read"), 0);
        assert!(read_oom_kills(&root.join("gone")).is_err());
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn exit_statuses_convert_from_wait_statuses() {
        use std::os::unix::process::ExitStatusExt;
        let exited = std::process::ExitStatus::from_raw(3 << 8);
        assert_eq!(classify_status(exited, 0, None), ExitReason::Exited(3));
        let killed = std::process::ExitStatus::from_raw(9);
        assert_eq!(
            classify_status(killed, 2, None).to_string(),
            "killed by the kernel: out of memory (no memory.max: the node ran out)"
        );
    }
}
