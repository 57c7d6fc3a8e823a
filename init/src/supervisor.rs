//! Supervision: start the services of the manifest, forward their output to
//! the console line by line, reap every child (services and orphans alike,
//! with one global `wait(WNOHANG)` loop — `waitpid(None)` would only see our own process group), and restart what ended according to
//! the restart policy. The event loop that drives it lives in `stage2`.

use crate::backoff::{self, Exit};
use crate::console;
use crate::manifest::{Manifest, Service};
use rustix::process::{Pid, Signal, WaitOptions};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Longest console line a service can print; longer ones are split.
pub const MAX_LINE: usize = 4096;

/// What the supervisor is told by signals, timers and the power button.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// SIGCHLD: some child ended.
    ChildExited,
    /// A restart delay of service `index` has passed.
    RestartDue(usize),
    /// Someone asked for a power-off or reboot.
    Power {
        action: crate::power::PowerAction,
        reason: String,
    },
}

/// A service's state as the API will show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Running { pid: i32 },
    WaitingToRestart,
    Exited(Exit),
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    pub name: String,
    pub state: State,
    pub restarts: u32,
}

struct Slot {
    spec: Service,
    pid: Option<Pid>,
    started: Instant,
    failures: u32,
    restarts: u32,
    state: State,
}

/// The supervised services.
pub struct Supervisor {
    slots: Vec<Slot>,
    events: UnboundedSender<Event>,
    stopping: bool,
    /// Children reaped that belonged to no service (orphans).
    pub orphans_reaped: u64,
}

/// Splits a byte stream into console lines of at most [`MAX_LINE`] bytes.
#[derive(Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; returns the lines they complete.
    pub fn push(&mut self, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in data {
            if b == b'\n' {
                out.push(self.take());
            } else {
                self.buf.push(b);
                if self.buf.len() >= MAX_LINE {
                    out.push(self.take());
                }
            }
        }
        out
    }

    /// What is left at the end of the stream, if anything.
    pub fn finish(mut self) -> Option<String> {
        (!self.buf.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let line = String::from_utf8_lossy(&self.buf).trim_end_matches('\r').to_string();
        self.buf.clear();
        line
    }
}

fn forward_output(name: String, mut pipe: std::fs::File) {
    let thread_name = format!("log-{name}");
    let spawned = std::thread::Builder::new().name(thread_name.clone()).spawn(move || {
        let mut splitter = LineSplitter::default();
        let mut chunk = [0u8; 4096];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    for line in splitter.push(&chunk[..n]) {
                        console::write_line(&format!("[{name}] {line}\n"));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        if let Some(line) = splitter.finish() {
            console::write_line(&format!("[{name}] {line}\n"));
        }
    });
    if let Err(e) = spawned {
        console::say(&format!("cannot start {thread_name}: {e}"));
    }
}

fn spawn(spec: &Service) -> std::io::Result<Pid> {
    let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let writer2 = writer.try_clone()?;
    let mut cmd = Command::new(&spec.exec[0]);
    cmd.args(&spec.exec[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/usr/sbin:/usr/lib/carapace")
        .envs(&spec.env)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        // Its own process group, so stopping it reaches its children too.
        .process_group(0);
    let child = cmd.spawn()?;
    // Our copies of the write end go with `cmd`, so the reader sees EOF when
    // the service and its children are gone. The child is never waited on
    // through `Child`: the global reaper collects it.
    drop(cmd);
    let pid = Pid::from_raw(child.id() as i32).ok_or_else(|| std::io::Error::other("spawned child has pid 0"))?;
    forward_output(spec.name.clone(), std::fs::File::from(reader));
    Ok(pid)
}

fn exit_of(status: rustix::process::WaitStatus) -> Exit {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(sig)) => Exit::Signal(sig),
        _ => Exit::Code(-1),
    }
}

fn describe(exit: Exit) -> String {
    match exit {
        Exit::Code(c) => format!("exited with status {c}"),
        Exit::Signal(s) => format!("was killed by signal {s}"),
    }
}

impl Supervisor {
    pub fn new(manifest: Manifest, events: UnboundedSender<Event>) -> Supervisor {
        let slots = manifest
            .service
            .into_iter()
            .map(|spec| Slot {
                spec,
                pid: None,
                started: Instant::now(),
                failures: 0,
                restarts: 0,
                state: State::Stopped,
            })
            .collect();
        Supervisor {
            slots,
            events,
            stopping: false,
            orphans_reaped: 0,
        }
    }

    /// Starts every service once.
    pub fn start_all(&mut self) {
        for i in 0..self.slots.len() {
            self.start(i);
        }
    }

    fn start(&mut self, i: usize) {
        if self.stopping {
            return;
        }
        let slot = &mut self.slots[i];
        slot.started = Instant::now();
        match spawn(&slot.spec) {
            Ok(pid) => {
                slot.pid = Some(pid);
                slot.state = State::Running { pid: pid.as_raw_nonzero().get() };
            }
            Err(e) => {
                console::say(&format!("cannot start service {} ({}): {e}", slot.spec.name, slot.spec.exec[0]));
                // A service that cannot even start counts as a failed run.
                self.ended(i, Exit::Code(127));
            }
        }
    }

    /// Collects every child that has ended; services are handled by policy,
    /// anything else is an orphan and is simply reaped.
    pub fn reap(&mut self) {
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    match self.slots.iter().position(|s| s.pid == Some(pid)) {
                        Some(i) => {
                            self.slots[i].pid = None;
                            self.ended(i, exit_of(status));
                        }
                        None => self.orphans_reaped += 1,
                    }
                }
                Ok(None) => break,
                Err(rustix::io::Errno::INTR) => continue,
                // ECHILD: no children at all.
                Err(_) => break,
            }
        }
    }

    fn ended(&mut self, i: usize, exit: Exit) {
        let stopping = self.stopping;
        let slot = &mut self.slots[i];
        slot.state = State::Exited(exit);
        let name = slot.spec.name.clone();
        if stopping {
            console::say(&format!("service {name} {}", describe(exit)));
            return;
        }
        if !backoff::should_restart(slot.spec.restart, exit) {
            console::say(&format!("service {name} {}, not restarting", describe(exit)));
            return;
        }
        slot.failures = backoff::next_failures(slot.failures, slot.started.elapsed());
        let delay = backoff::delay(slot.failures);
        slot.restarts += 1;
        slot.state = State::WaitingToRestart;
        console::say(&format!(
            "service {name} {}, restarting in {} ms (restart {})",
            describe(exit),
            delay.as_millis(),
            slot.restarts
        ));
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::RestartDue(i));
        });
    }

    /// A restart delay has passed.
    pub fn restart_due(&mut self, i: usize) {
        if i < self.slots.len() && self.slots[i].state == State::WaitingToRestart {
            self.start(i);
        }
    }

    /// Sends SIGTERM to every running service's process group and stops all
    /// restarts; returns the longest grace period of the running services.
    pub fn begin_stop(&mut self) -> Duration {
        self.stopping = true;
        let mut grace = Duration::ZERO;
        for slot in &mut self.slots {
            if let Some(pid) = slot.pid {
                let _ = rustix::process::kill_process_group(pid, Signal::TERM);
                grace = grace.max(Duration::from_millis(slot.spec.stop_timeout_ms));
            } else if slot.state == State::WaitingToRestart {
                slot.state = State::Stopped;
            }
        }
        grace
    }

    /// Whether every service has ended.
    pub fn all_stopped(&self) -> bool {
        self.slots.iter().all(|s| s.pid.is_none())
    }

    /// SIGKILL for the process group of every service still running.
    pub fn kill_remaining(&mut self) {
        for slot in &self.slots {
            if let Some(pid) = slot.pid {
                console::say(&format!("service {} did not stop in time: killing it", slot.spec.name));
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            }
        }
    }

    /// Every service's state and restart count.
    pub fn snapshot(&self) -> Vec<ServiceStatus> {
        self.slots
            .iter()
            .map(|s| ServiceStatus {
                name: s.spec.name.clone(),
                state: s.state.clone(),
                restarts: s.restarts,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_at_newlines_and_at_the_limit() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"hel"), Vec::<String>::new());
        assert_eq!(s.push(b"lo\r\nwor"), vec!["hello".to_string()]);
        assert_eq!(s.push(b"ld\n\n"), vec!["world".to_string(), String::new()]);
        let long = vec![b'x'; MAX_LINE + 10];
        let lines = s.push(&long);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(s.finish().as_deref(), Some("xxxxxxxxxx"));
    }

    #[test]
    fn invalid_utf8_is_kept_lossily() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\xffb\n"), vec!["a\u{fffd}b".to_string()]);
    }

    #[test]
    fn supervises_a_real_crashing_service() {
        // Runs on the host in a private runtime: start /bin/sh that fails,
        // reap it, and see the restart policy schedule another start.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let manifest = Manifest::parse(
                "[[service]]\nname = \"failing\"\nexec = [\"/bin/sh\", \"-c\", \"exit 3\"]\nrestart = \"on-failure\"\n",
            )
            .expect("manifest");
            let mut sup = Supervisor::new(manifest, tx);
            sup.start_all();
            let first_pid = match sup.snapshot()[0].state {
                State::Running { pid } => pid,
                ref other => panic!("not running: {other:?}"),
            };
            // Wait for the exit without stealing other tests' children: poll
            // that pid only, then hand its status to the supervisor's logic.
            let pid = Pid::from_raw(first_pid).expect("pid");
            let status = loop {
                if let Ok(Some((_, st))) = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
                    break st;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            sup.slots[0].pid = None;
            sup.ended(0, exit_of(status));
            assert_eq!(sup.snapshot()[0].state, State::WaitingToRestart);
            assert_eq!(sup.snapshot()[0].restarts, 1);
            assert_eq!(rx.recv().await, Some(Event::RestartDue(0)));
            sup.restart_due(0);
            assert!(matches!(sup.snapshot()[0].state, State::Running { pid } if pid != first_pid));
            // Stopping: no more restarts.
            let _ = sup.begin_stop();
            if let State::Running { pid } = sup.snapshot()[0].state {
                let pid = Pid::from_raw(pid).expect("pid");
                let status = loop {
                    if let Ok(Some((_, st))) = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
                        break st;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                };
                sup.slots[0].pid = None;
                sup.ended(0, exit_of(status));
            }
            assert!(matches!(sup.snapshot()[0].state, State::Exited(_)));
            assert!(sup.all_stopped());
        });
    }
}
