//! Supervision: start the services of the manifest, forward their output to
//! the console line by line, reap every child — services and orphans alike —
//! and start again what ended, as the restart policy ([`crate::backoff`]) says.
//!
//! Services are started with `std::process::Command`, never `tokio::process`:
//! PID 1 reaps with one global `wait(WNOHANG)` loop (any child, any process
//! group), which would race tokio's own reaper. Each service runs in a new
//! session (so its process group can be signalled as a whole), with stdin on
//! /dev/null and stdout and stderr on one pipe that a small thread reads and
//! prints as `[<name>] <line>`. Nothing else is inherited: the environment is
//! `PATH` plus the service's `env`. Between fork and exec the child takes
//! the privileges of its manifest entry ([`crate::privileges`]): its OOM
//! score, `no_new_privs`, exactly its capabilities, its user; a failure
//! there fails the start like a missing program.
//!
//! Console lines (after `carapace: `):
//! - `service <name> exited with status <n>, restarting in <ms> ms (restart <count>)`
//! - `service <name> killed by signal <SIGNAME>, not restarting`
//! - `cannot start service <name>: <program>: <error>` (then counted as status 127)
//! - during shutdown, without a policy part: `service <name> killed by signal SIGTERM`

use crate::backoff::{self, Decision, Exit};
use crate::console;
use crate::manifest::{Manifest, Service};
use crate::power::PowerAction;
use crate::privileges::Privileges;
use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// The longest console line a service can print, in bytes; longer ones are split.
pub const MAX_LINE: usize = 4096;
/// `PATH` of every service.
pub const SERVICE_PATH: &str = "/usr/bin:/usr/sbin:/usr/lib/carapace";
/// The status a service that could not even be started is counted with.
pub const CANNOT_START: i32 = 127;

/// A request to end the machine, with the words the shutdown line gives as reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerRequest {
    pub action: PowerAction,
    pub reason: String,
}

/// What wakes the supervisor: signals, timers and the power button.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// SIGCHLD: some child ended (perhaps several; signals coalesce).
    ChildExited,
    /// The restart delay of service number `.0` has passed.
    RestartDue(usize),
    /// Someone asked for a power-off or a reboot.
    Power(PowerRequest),
}

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not started yet.
    Starting,
    /// Its process runs.
    Running { pid: i32 },
    /// It ended and will be started again after the backoff delay.
    RestartPending { delay_ms: u64 },
    /// It ended and its policy does not start it again.
    Exited(Exit),
    /// Shutdown sent it SIGTERM; it has not ended yet.
    Stopping { pid: i32 },
    /// It ended during shutdown, or shutdown came while it waited to restart.
    Stopped,
}

/// One service as the API shows it: a snapshot, not a handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    pub name: String,
    pub status: Status,
    /// How many times it was started again (never reset).
    pub restarts: u32,
    /// How its last run ended, if one did.
    pub last_exit: Option<Exit>,
    /// When its current or last run started, in ms since the kernel started.
    pub started_at_ms: Option<u64>,
}

struct Supervised {
    spec: Service,
    pid: Option<Pid>,
    started: Instant,
    started_at_ms: Option<u64>,
    failures: u32,
    restarts: u32,
    last_exit: Option<Exit>,
    status: Status,
}

/// The services of the manifest and the reaper of every child of PID 1.
pub struct Supervisor {
    services: Vec<Supervised>,
    events: UnboundedSender<Event>,
    stopping: bool,
    orphans_reaped: u64,
    /// Where the states are published for the API (stage 2 sets it).
    publish_to: Option<std::path::PathBuf>,
}

impl Supervisor {
    /// Services in manifest order, none started yet. Restart timers report
    /// through `events`; the same channel must carry SIGCHLD and power requests
    /// to [`Supervisor::run`].
    pub fn new(manifest: Manifest, events: UnboundedSender<Event>) -> Supervisor {
        let services = manifest
            .service
            .into_iter()
            .map(|spec| Supervised {
                spec,
                pid: None,
                started: Instant::now(),
                started_at_ms: None,
                failures: 0,
                restarts: 0,
                last_exit: None,
                status: Status::Starting,
            })
            .collect();
        Supervisor {
            services,
            events,
            stopping: false,
            orphans_reaped: 0,
            publish_to: None,
        }
    }

    /// Starts every service once, in manifest order.
    pub fn start_all(&mut self) {
        for i in 0..self.services.len() {
            self.start(i);
        }
    }

    /// Handles events until a power request comes, and returns it. Must run
    /// inside a tokio runtime (restart timers are tokio tasks).
    pub async fn run(&mut self, events: &mut UnboundedReceiver<Event>) -> PowerRequest {
        // A child may have ended before the SIGCHLD listener was in place.
        self.reap();
        let mut published = String::new();
        self.publish_if_changed(&mut published);
        while let Some(event) = events.recv().await {
            match event {
                Event::ChildExited => self.reap(),
                Event::RestartDue(i) => self.restart_due(i),
                Event::Power(request) => return request,
            }
            self.publish_if_changed(&mut published);
        }
        // Unreachable while `self` holds a sender, but never a reason to panic.
        PowerRequest {
            action: PowerAction::PowerOff,
            reason: "event channel closed".into(),
        }
    }

    /// From now on, publish the services' states at `path` whenever they change.
    pub fn publish_states_to(&mut self, path: impl Into<std::path::PathBuf>) {
        self.publish_to = Some(path.into());
    }

    fn publish_if_changed(&self, last: &mut String) {
        let Some(path) = &self.publish_to else { return };
        let text = crate::services_file::render(&self.snapshot());
        if text != *last {
            crate::services_file::publish(path, &text);
            *last = text;
        }
    }

    fn start(&mut self, i: usize) {
        if self.stopping {
            return;
        }
        let Some(s) = self.services.get_mut(i) else {
            return;
        };
        s.started = Instant::now();
        s.started_at_ms = Some(crate::clock::ms_since_boot());
        match spawn(&s.spec) {
            Ok(pid) => {
                s.pid = Some(pid);
                s.status = Status::Running {
                    pid: pid.as_raw_nonzero().get(),
                };
            }
            Err(e) => {
                console::say(&format!(
                    "cannot start service {}: {}: {e}",
                    s.spec.name,
                    s.spec.program()
                ));
                self.ended(i, Exit::Code(CANNOT_START));
            }
        }
    }

    /// Collects every child that has ended: a service's end goes through its
    /// restart policy; any other child is an orphan and is only counted.
    pub fn reap(&mut self) {
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    match self.services.iter().position(|s| s.pid == Some(pid)) {
                        Some(i) => self.ended(i, exit_of(status)),
                        None => self.orphans_reaped += 1,
                    }
                }
                Ok(None) => break,
                Err(rustix::io::Errno::INTR) => continue,
                // No children at all.
                Err(rustix::io::Errno::CHILD) => break,
                Err(e) => {
                    console::say(&format!("cannot reap children: {e}"));
                    break;
                }
            }
        }
    }

    fn ended(&mut self, i: usize, exit: Exit) {
        let stopping = self.stopping;
        let Some(s) = self.services.get_mut(i) else {
            return;
        };
        s.pid = None;
        s.last_exit = Some(exit);
        let name = &s.spec.name;
        if stopping {
            s.status = Status::Stopped;
            console::say(&format!("service {name} {exit}"));
            return;
        }
        match backoff::decide(s.spec.restart, exit, s.started.elapsed(), s.failures) {
            Decision::Stay => {
                s.status = Status::Exited(exit);
                console::say(&format!("service {name} {exit}, not restarting"));
            }
            Decision::Restart { delay, failures } => {
                s.failures = failures;
                s.restarts = s.restarts.saturating_add(1);
                let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                s.status = Status::RestartPending { delay_ms };
                console::say(&format!(
                    "service {name} {exit}, restarting in {delay_ms} ms (restart {})",
                    s.restarts
                ));
                self.schedule_restart(i, delay);
            }
        }
    }

    fn schedule_restart(&self, i: usize, delay: Duration) {
        let events = self.events.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = events.send(Event::RestartDue(i));
                });
            }
            Err(e) => console::say(&format!("cannot schedule a restart: {e}")),
        }
    }

    /// The restart delay of service `i` has passed: start it, unless
    /// shutdown began meanwhile.
    pub fn restart_due(&mut self, i: usize) {
        let pending = self
            .services
            .get(i)
            .is_some_and(|s| matches!(s.status, Status::RestartPending { .. }));
        if pending {
            self.start(i);
        }
    }

    /// Shutdown begins: no service is started again from now on, every
    /// running one gets SIGTERM on its process group. Returns the longest
    /// `stop_timeout_ms` among those running (zero if none runs).
    pub fn begin_stop(&mut self) -> Duration {
        self.stopping = true;
        let mut grace = Duration::ZERO;
        for s in &mut self.services {
            match s.pid {
                Some(pid) => {
                    // The service is a session leader, so its pid is also its
                    // process group: this reaches its children too.
                    if let Err(e) = rustix::process::kill_process_group(pid, Signal::TERM) {
                        console::say(&format!("cannot stop service {}: {e}", s.spec.name));
                    }
                    s.status = Status::Stopping {
                        pid: pid.as_raw_nonzero().get(),
                    };
                    grace = grace.max(Duration::from_millis(s.spec.stop_timeout_ms));
                }
                None => {
                    if !matches!(s.status, Status::Exited(_)) {
                        s.status = Status::Stopped;
                    }
                }
            }
        }
        grace
    }

    /// The names of the services whose process still runs.
    pub fn running(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|s| s.pid.is_some())
            .map(|s| s.spec.name.clone())
            .collect()
    }

    /// SIGKILL to the process group of the service called `name`, if it runs.
    pub fn kill(&mut self, name: &str) {
        for s in self.services.iter().filter(|s| s.spec.name == name) {
            if let Some(pid) = s.pid {
                if let Err(e) = rustix::process::kill_process_group(pid, Signal::KILL) {
                    console::say(&format!("cannot kill service {name}: {e}"));
                }
            }
        }
    }

    /// The stop timeout of the service called `name`.
    pub fn stop_timeout(&self, name: &str) -> Option<Duration> {
        self.services
            .iter()
            .find(|s| s.spec.name == name)
            .map(|s| Duration::from_millis(s.spec.stop_timeout_ms))
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// How many children that belonged to no service were reaped.
    pub fn orphans_reaped(&self) -> u64 {
        self.orphans_reaped
    }

    /// Every service's state, in manifest order.
    pub fn snapshot(&self) -> Vec<ServiceState> {
        self.services
            .iter()
            .map(|s| ServiceState {
                name: s.spec.name.clone(),
                status: s.status,
                restarts: s.restarts,
                last_exit: s.last_exit,
                started_at_ms: s.started_at_ms,
            })
            .collect()
    }
}

/// How a reaped child ended.
pub fn exit_of(status: WaitStatus) -> Exit {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(sig)) => Exit::Signal(sig),
        // Stopped or continued are not reported without WUNTRACED/WCONTINUED.
        (None, None) => Exit::Code(-1),
    }
}

/// Starts one service: a new session, stdin on /dev/null, stdout and stderr
/// into one pipe whose other end a thread forwards to the console.
fn spawn(spec: &Service) -> std::io::Result<Pid> {
    let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let stderr_writer = writer.try_clone()?;
    let mut cmd = Command::new(spec.program());
    cmd.args(spec.args())
        .env_clear()
        .env("PATH", SERVICE_PATH)
        .envs(&spec.env)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(stderr_writer));
    // Everything the child needs is prepared here, before the fork.
    let privileges = Privileges::of(spec);
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe work is allowed. It makes system calls only (setsid,
    // then those of `Privileges::apply`, on values prepared before the fork)
    // and converts an error number into an `io::Error` without allocating;
    // it takes no lock and touches no memory shared with other threads.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::setsid().map_err(std::io::Error::from)?;
            privileges.apply().map_err(std::io::Error::from)
        });
    }
    let child = cmd.spawn()?;
    // Dropping `cmd` closes our copies of the pipe's write end, so the reader
    // sees the end of the stream once the service and its children are gone.
    // The `Child` is never waited on: the global reaper collects the process.
    drop(cmd);
    let raw = i32::try_from(child.id()).map_err(|_| std::io::Error::other("pid out of range"))?;
    let pid = Pid::from_raw(raw).ok_or_else(|| std::io::Error::other("spawned child has pid 0"))?;
    forward_output(&spec.name, std::fs::File::from(reader));
    Ok(pid)
}

/// Reads a service's output on a small thread of its own (blocking reads;
/// the thread ends with the stream) and prints it as `[<name>] <line>`,
/// keeping each line in the service's log file too ([`crate::logs`]).
fn forward_output(name: &str, mut pipe: std::fs::File) {
    let prefix = format!("[{name}] ");
    let log_name = name.to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("out-{name}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut lines = LineSplitter::default();
            let mut chunk = [0u8; 4096];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        for line in lines.push(chunk.get(..n).unwrap_or(&[])) {
                            console::write_line(&format!("{prefix}{line}\n"));
                            crate::logs::append(&log_name, &line);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            if let Some(line) = lines.finish() {
                console::write_line(&format!("{prefix}{line}\n"));
                crate::logs::append(&log_name, &line);
            }
        });
    if let Err(e) = spawned {
        console::say(&format!("cannot forward the output of service {name}: {e}"));
    }
}

/// Splits a byte stream into console lines: at each newline (a trailing
/// carriage return is dropped), and after [`MAX_LINE`] bytes at the latest
/// (at a character boundary when the text is UTF-8). Invalid UTF-8 is shown
/// with replacement characters.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; returns the lines they complete.
    pub fn push(&mut self, data: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &byte in data {
            if byte == b'\n' {
                let line = std::mem::take(&mut self.pending);
                lines.push(text_of(&line));
                continue;
            }
            self.pending.push(byte);
            if self.pending.len() > MAX_LINE {
                let cut = char_boundary_before(&self.pending, MAX_LINE);
                let rest = self.pending.split_off(cut);
                let line = std::mem::replace(&mut self.pending, rest);
                lines.push(text_of(&line));
            }
        }
        lines
    }

    /// What is left when the stream ends without a final newline.
    pub fn finish(self) -> Option<String> {
        (!self.pending.is_empty()).then(|| text_of(&self.pending))
    }
}

fn text_of(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(line).into_owned()
}

/// The largest cut ≤ `at` that does not fall inside a UTF-8 sequence (at most
/// three bytes back; bytes that are not UTF-8 are cut anywhere).
fn char_boundary_before(bytes: &[u8], at: usize) -> usize {
    let is_continuation = |i: usize| bytes.get(i).is_some_and(|b| b & 0xC0 == 0x80);
    (at.saturating_sub(3)..=at)
        .rev()
        .find(|&i| !is_continuation(i))
        .filter(|&i| i > 0)
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_split_at_newlines_across_reads() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"hel").is_empty());
        assert_eq!(s.push(b"lo\r\nwor"), ["hello"]);
        assert_eq!(s.push(b"ld\n\nlast"), ["world", ""]);
        assert_eq!(s.finish().as_deref(), Some("last"));
        assert_eq!(LineSplitter::default().finish(), None);
    }

    #[test]
    fn a_very_long_line_is_split_at_4_kib() {
        let mut s = LineSplitter::default();
        let mut long = vec![b'x'; MAX_LINE * 2 + 10];
        long.push(b'\n');
        let lines = s.push(&long);
        let lengths: Vec<usize> = lines.iter().map(String::len).collect();
        assert_eq!(lengths, [MAX_LINE, MAX_LINE, 10]);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn a_split_does_not_cut_a_utf8_character() {
        let mut s = LineSplitter::default();
        let mut text = "a".repeat(MAX_LINE - 1).into_bytes();
        text.extend_from_slice("éz\n".as_bytes());
        let lines = s.push(&text);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], "a".repeat(MAX_LINE - 1));
        assert_eq!(lines[1], "éz");
    }

    #[test]
    fn invalid_utf8_is_shown_lossily() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\xffb\n"), ["a\u{fffd}b"]);
        let mut binary = LineSplitter::default();
        let lines = binary.push(&[0x80; MAX_LINE + 1]);
        assert_eq!(
            lines.len(),
            1,
            "continuation bytes alone are cut at the limit"
        );
    }

    #[test]
    fn services_start_in_manifest_order_and_wait_for_a_restart_only_when_pending() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let manifest =
            Manifest::parse("[[service]]\nname = \"a\"\nexec = [\"/a\"]\ncapabilities = []\n[[service]]\nname = \"b\"\nexec = [\"/b\"]\ncapabilities = []\n")
                .expect("manifest");
        let mut sup = Supervisor::new(manifest, tx);
        let names: Vec<String> = sup.snapshot().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(sup
            .snapshot()
            .iter()
            .all(|s| s.status == Status::Starting && s.restarts == 0));
        // A stray timer for a service that is not waiting changes nothing.
        sup.restart_due(0);
        sup.restart_due(7);
        assert_eq!(sup.snapshot()[0].status, Status::Starting);
        assert_eq!(
            sup.begin_stop(),
            Duration::ZERO,
            "nothing runs, nothing to wait for"
        );
        assert!(sup.is_stopping());
        assert!(sup.snapshot().iter().all(|s| s.status == Status::Stopped));
        assert!(sup.running().is_empty());
    }

    /// Set in the environment of the child test process that supervises for real.
    const CHILD_ENV: &str = "CARAPACE_SUPERVISOR_TEST_CHILD";
    const CHILD_TEST: &str = "supervisor::tests::supervising_real_processes_as_a_subreaper";

    /// Runs the real supervisor and the real shutdown sequence (minus what
    /// only PID 1 may do) in a separate process: the global reaper collects
    /// *every* child, which must not steal the children of other tests.
    #[test]
    fn a_crashing_service_is_restarted_orphans_are_reaped_and_shutdown_stops_everything() {
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => panic!("current test binary: {e}"),
        };
        let out = Command::new(exe)
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .stdin(Stdio::null())
            .output()
            .expect("run the child test process");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
        assert!(out.status.success(), "child test failed:\n{all}");
        assert!(
            stdout.contains("1 passed"),
            "the child ran the test:\n{all}"
        );
        for line in [
            "[failing] hi",
            "carapace: service failing exited with status 1, restarting in 100 ms (restart 1)",
            "carapace: service failing exited with status 1, restarting in 200 ms (restart 2)",
            "carapace: service orphaner exited with status 0, not restarting",
            "carapace: cannot start service missing: /nonexistent/program: ",
            "carapace: service missing exited with status 127, not restarting",
            "[stubborn] up",
            "[capped] CapEff:\t0000000000000020",
            "[capped] CapBnd:\t0000000000000020",
            "[capped] NoNewPrivs:\t1",
            "[capped] 300",
            "carapace: service capped exited with status 0, not restarting",
            "carapace: shutting down (test): stopping services",
            "carapace: service polite killed by signal SIGTERM",
            "carapace: service stubborn did not stop within 300 ms: killing it",
            "carapace: service stubborn killed by signal SIGKILL",
            "carapace: /var unmounted cleanly",
        ] {
            assert!(stdout.contains(line), "missing {line:?}:\n{all}");
        }
        assert!(
            !stdout.contains("service failing exited with status 1, not restarting"),
            "{all}"
        );
    }

    /// The children of this process still in the process table (running or
    /// zombies), as (pid, state).
    fn children() -> Vec<(i32, char)> {
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let (state, ppid) = crate::shutdown::parse_stat(&stat)?;
                (ppid == me).then_some((pid, state))
            })
            .collect()
    }

    /// The real machine for services, a recording stand-in for what only
    /// PID 1 may do (signal every process, unmount /var).
    struct TestMachine<'a> {
        real: crate::shutdown::Pid1<'a>,
        everyone_signalled: Vec<Signal>,
    }

    impl crate::shutdown::Machine for TestMachine<'_> {
        fn say(&mut self, msg: &str) {
            self.real.say(msg)
        }
        fn now(&self) -> Duration {
            self.real.now()
        }
        fn sleep(&mut self, d: Duration) {
            self.real.sleep(d)
        }
        fn stop_services(&mut self) -> Duration {
            self.real.stop_services()
        }
        fn services_running(&mut self) -> Vec<String> {
            self.real.services_running()
        }
        fn stop_timeout(&self, name: &str) -> Duration {
            self.real.stop_timeout(name)
        }
        fn kill_service(&mut self, name: &str) {
            self.real.kill_service(name)
        }
        fn signal_everyone(&mut self, sig: Signal) {
            self.everyone_signalled.push(sig);
        }
        fn others_running(&mut self) -> usize {
            self.real.supervisor.reap();
            0
        }
        fn sync(&mut self) {}
        fn unmount_var(&mut self) -> rustix::io::Result<()> {
            Ok(())
        }
        fn remount_var_read_only(&mut self) -> rustix::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn supervising_real_processes_as_a_subreaper() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return; // Only meaningful in the child process started above.
        }
        // Orphans of our services are reparented to us, as they would be to PID 1.
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .expect("become a child subreaper");
        let manifest = Manifest::parse(
            r#"
            [[service]]
            name = "failing"
            exec = ["/bin/sh", "-c", "echo hi; exit 1"]
            capabilities = []
            restart = "on-failure"

            [[service]]
            name = "orphaner"
            exec = ["/bin/sh", "-c", "sleep 0.2 >/dev/null & exit 0"]
            capabilities = []
            restart = "never"

            [[service]]
            name = "missing"
            exec = ["/nonexistent/program"]
            capabilities = []
            restart = "never"

            [[service]]
            name = "polite"
            exec = ["/bin/sleep", "30"]
            capabilities = []

            [[service]]
            name = "capped"
            exec = ["/bin/sh", "-c", "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; cat /proc/self/oom_score_adj"]
            restart = "never"
            capabilities = ["CAP_KILL"]
            oom_score_adj = 300

            [[service]]
            name = "stubborn"
            exec = ["/bin/sh", "-c", "trap '' TERM; echo up; while :; do sleep 0.05; done"]
            capabilities = []
            stop_timeout_ms = 300
            "#,
        )
        .expect("manifest");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut sup = Supervisor::new(manifest, tx.clone());
        let request = runtime.block_on(async {
            let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
                .expect("listen for SIGCHLD");
            let child_tx = tx.clone();
            tokio::spawn(async move {
                while sigchld.recv().await.is_some() {
                    let _ = child_tx.send(Event::ChildExited);
                }
            });
            sup.start_all();
            let power_tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let _ = power_tx.send(Event::Power(PowerRequest {
                    action: PowerAction::Reboot,
                    reason: "test".into(),
                }));
            });
            sup.run(&mut rx).await
        });
        assert_eq!(request.action, PowerAction::Reboot);

        let snapshot = sup.snapshot();
        let failing = &snapshot[0];
        assert!(failing.restarts >= 2, "{failing:?}");
        assert_eq!(failing.last_exit, Some(Exit::Code(1)));
        assert_eq!(snapshot[1].status, Status::Exited(Exit::Code(0)));
        assert_eq!(snapshot[2].status, Status::Exited(Exit::Code(CANNOT_START)));
        assert!(
            matches!(snapshot[3].status, Status::Running { .. }),
            "{:?}",
            snapshot[3]
        );
        assert!(sup.orphans_reaped() >= 1, "the orphaned sleep was reaped");

        let mut machine = TestMachine {
            real: crate::shutdown::Pid1::new(&mut sup),
            everyone_signalled: Vec::new(),
        };
        crate::shutdown::shut_down(&mut machine, &request.reason);
        assert_eq!(machine.everyone_signalled, [Signal::TERM]);
        drop(machine);
        assert!(sup.running().is_empty());
        let snapshot = sup.snapshot();
        assert_eq!(
            snapshot[3].last_exit,
            Some(Exit::Signal(Signal::TERM.as_raw()))
        );
        assert_eq!(
            snapshot[5].last_exit,
            Some(Exit::Signal(Signal::KILL.as_raw()))
        );
        assert!(snapshot
            .iter()
            .all(|s| matches!(s.status, Status::Stopped | Status::Exited(_))));
        // A restart timer that fires now starts nothing.
        sup.restart_due(0);
        assert!(sup.running().is_empty());
        // Every process of every service is gone and reaped (what SIGKILL
        // hit may take a moment to die).
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            sup.reap();
            let left = children();
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "children left: {left:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
