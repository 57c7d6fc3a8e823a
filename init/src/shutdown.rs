//! The orderly shutdown, from the power request to the last system call.
//!
//! The order, decided by [`shut_down`] alone and tested with a recording
//! [`Machine`]:
//!
//! 1. `carapace: shutting down (<reason>): stopping services`; no service is
//!    started again; SIGTERM to each service's process group.
//! 2. Reap until every service has ended; a service still running when its
//!    own `stop_timeout_ms` has passed gets SIGKILL on its process group
//!    (`carapace: service <name> did not stop within <ms> ms: killing it`),
//!    so nothing waits longer than the longest stop timeout (plus 1 s for
//!    SIGKILL to take effect).
//! 3. SIGTERM to every other process (orphans, anything that left its
//!    service's group), up to 2 s; then SIGKILL to whatever is left
//!    (`carapace: <n> other processes did not stop: killing them`).
//! 4. sync, then unmount /var: `carapace: /var unmounted cleanly`; if it is
//!    busy, remount it read-only instead and say so.
//! 5. `carapace: power off` or `carapace: reboot`, then [`crate::power::final_action`].
//!
//! The event loop that pings the hardware watchdog has stopped by then:
//! the real machine pings it whenever the sequence waits, so that a long
//! stop timeout does not end in a watchdog reset ([`crate::watchdog::keep_alive`]).

use crate::console;
use crate::power::final_action;
use crate::supervisor::{PowerRequest, Supervisor};
use rustix::io::Errno;
use rustix::process::{Pid, Signal};
use std::time::{Duration, Instant};

/// How long the others get between SIGTERM and SIGKILL.
pub const OTHERS_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for processes to disappear after SIGKILL.
pub const KILL_WAIT: Duration = Duration::from_secs(1);
/// How often to look again while waiting.
pub const POLL: Duration = Duration::from_millis(20);

/// What the shutdown sequence does to the machine. The real one is
/// [`Pid1`]; tests record the calls.
pub trait Machine {
    /// One console line, after `carapace: `.
    fn say(&mut self, msg: &str);
    /// A monotonic clock.
    fn now(&self) -> Duration;
    fn sleep(&mut self, d: Duration);
    /// Marks every service as stopping (never started again) and sends
    /// SIGTERM to each running one; returns the longest stop timeout among them.
    fn stop_services(&mut self) -> Duration;
    /// Reaps, then names the services that still run.
    fn services_running(&mut self) -> Vec<String>;
    /// The stop timeout of one service.
    fn stop_timeout(&self, name: &str) -> Duration;
    /// SIGKILL to the process group of one service.
    fn kill_service(&mut self, name: &str);
    /// `kill(-1, sig)`: every process but PID 1 and kernel threads.
    fn signal_everyone(&mut self, sig: Signal);
    /// Reaps, then counts the processes other than PID 1 and kernel threads.
    fn others_running(&mut self) -> usize;
    fn sync(&mut self);
    fn unmount_var(&mut self) -> rustix::io::Result<()>;
    fn remount_var_read_only(&mut self) -> rustix::io::Result<()>;
}

/// Polls `left` until it reports nothing left or `limit` has passed; returns
/// the last count.
fn wait_until_gone<M: Machine>(
    m: &mut M,
    limit: Duration,
    left: impl Fn(&mut M) -> usize,
) -> usize {
    let deadline = m.now() + limit;
    loop {
        let n = left(m);
        if n == 0 || m.now() >= deadline {
            return n;
        }
        m.sleep(POLL);
    }
}

/// Reaps the services after their SIGTERM; each one still running when its
/// own stop timeout has passed gets SIGKILL. Gives up [`KILL_WAIT`] after the
/// longest timeout, `grace`.
fn stop_services_in_time<M: Machine>(m: &mut M, grace: Duration) {
    let start = m.now();
    let give_up = start + grace + KILL_WAIT;
    let mut killed: Vec<String> = Vec::new();
    loop {
        let running = m.services_running();
        if running.is_empty() {
            return;
        }
        if m.now() >= give_up {
            m.say(&format!(
                "services still running after SIGKILL: {}",
                running.join(", ")
            ));
            return;
        }
        for name in running {
            let timeout = m.stop_timeout(&name);
            if !killed.contains(&name) && m.now() >= start + timeout {
                m.say(&format!(
                    "service {name} did not stop within {} ms: killing it",
                    timeout.as_millis()
                ));
                m.kill_service(&name);
                killed.push(name);
            }
        }
        m.sleep(POLL);
    }
}

/// Runs the shutdown sequence up to, not including, the final power action.
pub fn shut_down<M: Machine>(m: &mut M, reason: &str) {
    m.say(&format!("shutting down ({reason}): stopping services"));

    let grace = m.stop_services();
    stop_services_in_time(m, grace);

    m.signal_everyone(Signal::TERM);
    let left = wait_until_gone(m, OTHERS_GRACE, |m| m.others_running());
    if left > 0 {
        m.say(&format!(
            "{left} other processes did not stop: killing them"
        ));
        m.signal_everyone(Signal::KILL);
        wait_until_gone(m, KILL_WAIT, |m| m.others_running());
    }

    m.sync();
    match m.unmount_var() {
        Ok(()) => m.say("/var unmounted cleanly"),
        Err(e) => {
            let why = if e == Errno::BUSY {
                "busy".to_string()
            } else {
                e.to_string()
            };
            match m.remount_var_read_only() {
                Ok(()) => m.say(&format!(
                    "cannot unmount /var ({why}): remounted it read-only"
                )),
                Err(e2) => m.say(&format!(
                    "cannot unmount /var ({why}) nor remount it read-only ({e2})"
                )),
            }
        }
    }
}

/// The whole shutdown of PID 1: never returns.
pub fn run(supervisor: &mut Supervisor, request: &PowerRequest) -> ! {
    shut_down(&mut Pid1::new(supervisor), &request.reason);
    console::say(request.action.as_str());
    final_action(request.action)
}

/// The real machine, as seen from PID 1.
pub struct Pid1<'a> {
    pub supervisor: &'a mut Supervisor,
    origin: Instant,
}

impl<'a> Pid1<'a> {
    pub fn new(supervisor: &'a mut Supervisor) -> Pid1<'a> {
        Pid1 {
            supervisor,
            origin: Instant::now(),
        }
    }
}

impl Machine for Pid1<'_> {
    fn say(&mut self, msg: &str) {
        console::say(msg);
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&mut self, d: Duration) {
        // The event loop no longer pings the watchdog: the shutdown does,
        // while it waits (it is bounded by the stop timeouts).
        crate::watchdog::keep_alive();
        std::thread::sleep(d);
    }

    fn stop_services(&mut self) -> Duration {
        self.supervisor.begin_stop()
    }

    fn services_running(&mut self) -> Vec<String> {
        self.supervisor.reap();
        self.supervisor.running()
    }

    fn stop_timeout(&self, name: &str) -> Duration {
        self.supervisor.stop_timeout(name).unwrap_or_default()
    }

    fn kill_service(&mut self, name: &str) {
        self.supervisor.kill(name);
    }

    fn signal_everyone(&mut self, sig: Signal) {
        // kill(-1) from anything but PID 1 would reach every process of the
        // user (on a development host: everything). Only PID 1 does it.
        if !rustix::process::getpid().is_init() {
            console::say("not PID 1: leaving other processes alone");
            return;
        }
        // rustix spells kill(-1, sig) as the process group of pid 1, which
        // is the same system call: -1 means every process we may signal
        // except ourselves.
        match rustix::process::kill_process_group(Pid::INIT, sig) {
            // ESRCH: there was nobody left.
            Ok(()) | Err(Errno::SRCH) => {}
            Err(e) => console::say(&format!("cannot signal every process: {e}")),
        }
    }

    fn others_running(&mut self) -> usize {
        self.supervisor.reap();
        if rustix::process::getpid().is_init() {
            other_processes().len()
        } else {
            0
        }
    }

    fn sync(&mut self) {
        rustix::fs::sync();
    }

    fn unmount_var(&mut self) -> rustix::io::Result<()> {
        rustix::mount::unmount("/var", rustix::mount::UnmountFlags::empty())
    }

    fn remount_var_read_only(&mut self) -> rustix::io::Result<()> {
        rustix::mount::mount_remount("/var", rustix::mount::MountFlags::RDONLY, "")
    }
}

/// The state letter and the parent pid from the text of /proc/<pid>/stat
/// (`pid (comm) state ppid …`, where comm may hold spaces and parentheses).
pub fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether a process counts at shutdown: not PID 1, not kthreadd (2), not a
/// kernel thread (a child of kthreadd), and not a zombie (the reaper's job).
pub fn counts_as_other(pid: i32, state: char, ppid: i32) -> bool {
    pid > 2 && ppid != 2 && state != 'Z'
}

/// The pids of the processes that count at shutdown.
pub fn other_processes() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parse_stat(&stat))
                .is_some_and(|(state, ppid)| counts_as_other(pid, state, ppid))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine with a fake clock whose services and other processes end
    /// after given times (or never), recording every step.
    struct Recorder {
        clock: Duration,
        /// (name, stop timeout, ends this long after SIGTERM; None: ignores it).
        services: Vec<(&'static str, Duration, Option<Duration>)>,
        terminated_at: Option<Duration>,
        /// Services killed, and when.
        killed: Vec<(String, Duration)>,
        /// SIGKILL does not end services (a process stuck in the kernel).
        unkillable: bool,
        /// Other processes: end this long after SIGTERM (None: ignore it).
        others: Option<Duration>,
        others_termed_at: Option<Duration>,
        others_killed: bool,
        var: rustix::io::Result<()>,
        remount: rustix::io::Result<()>,
        steps: Vec<String>,
    }

    impl Recorder {
        fn new() -> Recorder {
            Recorder {
                clock: Duration::ZERO,
                services: Vec::new(),
                terminated_at: None,
                killed: Vec::new(),
                unkillable: false,
                others: Some(Duration::ZERO),
                others_termed_at: None,
                others_killed: false,
                var: Ok(()),
                remount: Ok(()),
                steps: Vec::new(),
            }
        }

        fn service(
            mut self,
            name: &'static str,
            timeout_ms: u64,
            stops_after_ms: Option<u64>,
        ) -> Self {
            self.services.push((
                name,
                Duration::from_millis(timeout_ms),
                stops_after_ms.map(Duration::from_millis),
            ));
            self
        }

        /// The steps without the polling.
        fn story(&self) -> Vec<&str> {
            self.steps.iter().map(String::as_str).collect()
        }
    }

    impl Machine for Recorder {
        fn say(&mut self, msg: &str) {
            self.steps.push(format!("say: {msg}"));
        }
        fn now(&self) -> Duration {
            self.clock
        }
        fn sleep(&mut self, d: Duration) {
            self.clock += d;
        }
        fn stop_services(&mut self) -> Duration {
            self.steps.push("TERM services".into());
            self.terminated_at = Some(self.clock);
            self.services.iter().map(|s| s.1).max().unwrap_or_default()
        }
        fn services_running(&mut self) -> Vec<String> {
            let now = self.clock;
            let Some(t) = self.terminated_at else {
                return self.services.iter().map(|s| s.0.to_string()).collect();
            };
            self.services
                .iter()
                .filter(|(name, _, after)| {
                    let stopped = after.is_some_and(|a| now >= t + a);
                    let killed = !self.unkillable && self.killed.iter().any(|(n, _)| n == name);
                    !stopped && !killed
                })
                .map(|s| s.0.to_string())
                .collect()
        }
        fn stop_timeout(&self, name: &str) -> Duration {
            self.services
                .iter()
                .find(|s| s.0 == name)
                .map(|s| s.1)
                .unwrap_or_default()
        }
        fn kill_service(&mut self, name: &str) {
            self.steps
                .push(format!("KILL {name} at {} ms", self.clock.as_millis()));
            self.killed.push((name.to_string(), self.clock));
        }
        fn signal_everyone(&mut self, sig: Signal) {
            if sig == Signal::TERM {
                self.others_termed_at = Some(self.clock);
                self.steps.push("TERM everyone".into());
            } else if sig == Signal::KILL {
                self.others_killed = true;
                self.steps
                    .push(format!("KILL everyone at {} ms", self.clock.as_millis()));
            }
        }
        fn others_running(&mut self) -> usize {
            match (self.others_termed_at, self.others) {
                _ if self.others_killed => 0,
                (Some(t), Some(after)) if self.clock >= t + after => 0,
                _ => 3,
            }
        }
        fn sync(&mut self) {
            self.steps.push("sync".into());
        }
        fn unmount_var(&mut self) -> rustix::io::Result<()> {
            self.steps.push("unmount /var".into());
            self.var
        }
        fn remount_var_read_only(&mut self) -> rustix::io::Result<()> {
            self.steps.push("remount /var read-only".into());
            self.remount
        }
    }

    #[test]
    fn services_that_stop_in_time_are_not_killed_and_var_is_unmounted_last() {
        let mut m =
            Recorder::new()
                .service("api", 5000, Some(30))
                .service("update", 2000, Some(100));
        shut_down(&mut m, "power button");
        assert_eq!(
            m.story(),
            [
                "say: shutting down (power button): stopping services",
                "TERM services",
                "TERM everyone",
                "sync",
                "unmount /var",
                "say: /var unmounted cleanly",
            ]
        );
        assert!(
            m.clock < Duration::from_millis(200),
            "no waiting for nothing: {:?}",
            m.clock
        );
    }

    #[test]
    fn a_service_that_ignores_sigterm_is_killed_when_its_own_stop_timeout_passes() {
        let mut m = Recorder::new()
            .service("patient", 5000, Some(4000))
            .service("stubborn", 300, None)
            .service("slow", 1000, None);
        shut_down(&mut m, "SIGTERM");
        assert_eq!(
            m.story(),
            [
                "say: shutting down (SIGTERM): stopping services",
                "TERM services",
                "say: service stubborn did not stop within 300 ms: killing it",
                "KILL stubborn at 300 ms",
                "say: service slow did not stop within 1000 ms: killing it",
                "KILL slow at 1000 ms",
                "TERM everyone",
                "sync",
                "unmount /var",
                "say: /var unmounted cleanly",
            ]
        );
        assert!(
            m.clock >= Duration::from_millis(4000),
            "the patient one was waited for"
        );
        assert!(m.clock < Duration::from_millis(4100));
    }

    #[test]
    fn a_service_that_survives_sigkill_is_given_up_on_after_one_more_second() {
        let mut m = Recorder::new().service("stuck", 500, None);
        m.unkillable = true;
        shut_down(&mut m, "SIGTERM");
        assert_eq!(
            m.story()[2..6],
            [
                "say: service stuck did not stop within 500 ms: killing it",
                "KILL stuck at 500 ms",
                "say: services still running after SIGKILL: stuck",
                "TERM everyone",
            ]
        );
        assert_eq!(m.clock, Duration::from_millis(1500));
    }

    #[test]
    fn other_processes_get_sigterm_then_sigkill_after_two_seconds() {
        let mut m = Recorder::new().service("api", 100, Some(10));
        m.others = None;
        shut_down(&mut m, "ctrl-alt-del");
        let story = m.story();
        let Some(kill_at) = story
            .iter()
            .position(|s| s.starts_with("KILL everyone at 2"))
        else {
            panic!("no SIGKILL for everyone after 2 s: {story:?}");
        };
        assert_eq!(
            story[kill_at - 1],
            "say: 3 other processes did not stop: killing them"
        );
        assert_eq!(story[kill_at - 2], "TERM everyone");
        assert!(story.ends_with(&["sync", "unmount /var", "say: /var unmounted cleanly"]));
    }

    #[test]
    fn a_busy_var_is_remounted_read_only_and_the_console_says_so() {
        let mut m = Recorder::new();
        m.var = Err(Errno::BUSY);
        shut_down(&mut m, "SIGUSR2");
        assert!(m.story().ends_with(&[
            "sync",
            "unmount /var",
            "remount /var read-only",
            "say: cannot unmount /var (busy): remounted it read-only",
        ]));
        let mut m = Recorder::new();
        m.var = Err(Errno::BUSY);
        m.remount = Err(Errno::BUSY);
        shut_down(&mut m, "SIGUSR2");
        assert_eq!(
            m.story().last(),
            Some(&"say: cannot unmount /var (busy) nor remount it read-only (Device or resource busy (os error 16))")
        );
        assert!(!m.story().contains(&"say: /var unmounted cleanly"));
    }

    #[test]
    fn with_no_services_shutdown_goes_straight_to_the_others() {
        let mut m = Recorder::new();
        shut_down(&mut m, "SIGPWR");
        assert_eq!(m.story()[1..3], ["TERM services", "TERM everyone"]);
        assert_eq!(m.clock, Duration::ZERO);
    }

    #[test]
    fn reads_state_and_parent_even_with_odd_process_names() {
        assert_eq!(parse_stat("42 (sh) S 1 42 42 0"), Some(('S', 1)));
        assert_eq!(parse_stat("43 (a) b) (c) Z 7 0"), Some(('Z', 7)));
        assert_eq!(parse_stat("44 (x y) R"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn init_kernel_threads_and_zombies_are_not_others() {
        assert!(!counts_as_other(1, 'S', 0));
        assert!(!counts_as_other(2, 'S', 0));
        assert!(!counts_as_other(57, 'I', 2));
        assert!(!counts_as_other(300, 'Z', 1));
        assert!(counts_as_other(300, 'S', 1));
        assert!(counts_as_other(301, 'R', 300));
    }

    #[test]
    fn this_test_process_is_an_other_process() {
        let me = rustix::process::getpid().as_raw_nonzero().get();
        assert!(other_processes().contains(&me) || me <= 2);
    }
}
