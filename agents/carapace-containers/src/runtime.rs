//! The crun command line (the binary a parameter, /usr/bin/crun on the
//! node; its state under /run/crun), and a running container's output.
//!
//! [`Runtime::run`] starts, as a child of the agent,
//!
//! ```text
//! crun --root /run/crun --log=file:<bundle>/crun.log run --bundle <bundle> --pid-file <bundle>/pid <name>
//! ```
//!
//! in the foreground: crun stays the parent of the container, forwards
//! signals to it, exits with its status (128 + N when signal N killed it),
//! and removes the container, its state and its cgroup leaf as it exits.
//! stdin is /dev/null; stdout and stderr are one pipe whose lines go to the
//! container's log ([`crate::container_log`]). crun's own error messages go
//! to `crun.log` instead, emptied before each run: after a run, a message
//! there means crun could not start the container
//! ([`ExitReason::StartFailed`]) and says why. crun runs in a process group
//! of its own, so that the agent decides how its containers stop (PID 1's
//! SIGTERM at shutdown goes to the agent's group only).
//!
//! [`Runtime::kill`], [`Runtime::delete`] and [`Runtime::state`] run
//! `crun kill|delete|state` and fail with crun's exit status and stderr.
//! Every crun command but `run` is given [`COMMAND_TIMEOUT`].
//!
//! [`limit_slice_memory`] caps `carapace.slice`, the parent of every
//! container's cgroup, at what the node can spare
//! ([`slice_memory_max`]: MemTotal less max(192 MiB, 20 %)), so that the
//! containers together, with or without their own `memory_max`, cannot
//! take the memory PID 1 and the agents run in: the kernel's OOM killer
//! then picks inside the slice.

use crate::bundle::Bundle;
use crate::container_log::{self, LogWriter};
use crate::policy::{self, ExitReason};
use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// crun on the node.
pub const DEFAULT_CRUN: &str = "/usr/bin/crun";
/// crun's state directory on the node.
pub const DEFAULT_STATE_ROOT: &str = "/run/crun";
/// The longest a `kill`, `delete` or `state` may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the output of a container that ended is still read: what its
/// processes wrote just before the end, unless one left the pipe open.
pub const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// What failed in talking to crun.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot run {crun}: {source}")]
    Spawn { crun: PathBuf, source: io::Error },
    #[error("crun {action} {id} failed ({status}): {stderr}")]
    Failed {
        action: &'static str,
        id: String,
        status: String,
        stderr: String,
    },
    #[error("crun {action} {id} did not finish within {seconds} s")]
    Timeout {
        action: &'static str,
        id: String,
        seconds: u64,
    },
    #[error("crun state {id}: not the JSON of a container state: {source}")]
    State {
        id: String,
        source: serde_json::Error,
    },
    #[error("cannot {what} for container {id}: {source}")]
    Io {
        what: &'static str,
        id: String,
        source: io::Error,
    },
}

/// crun, and where it keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    crun: PathBuf,
    state_root: PathBuf,
    cgroup_root: PathBuf,
}

/// A container's state as `crun state` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// `creating`, `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// Its first process, as the node sees it.
    pub pid: Option<i32>,
}

/// The arguments of `crun run`, after the program.
pub fn run_args(state_root: &Path, bundle: &Bundle) -> Vec<OsString> {
    let mut log = OsString::from("--log=file:");
    log.push(bundle.crun_log());
    vec![
        "--root".into(),
        state_root.into(),
        log,
        "run".into(),
        "--bundle".into(),
        bundle.dir().into(),
        "--pid-file".into(),
        pid_file(bundle).into(),
        bundle.name().as_str().into(),
    ]
}

/// Where `crun run` writes the container's first pid.
pub fn pid_file(bundle: &Bundle) -> PathBuf {
    bundle.dir().join("pid")
}

impl Runtime {
    /// `crun` at `crun`, its state in `state_root`, cgroups under /sys/fs/cgroup.
    pub fn new(crun: impl Into<PathBuf>, state_root: impl Into<PathBuf>) -> Runtime {
        Runtime {
            crun: crun.into(),
            state_root: state_root.into(),
            cgroup_root: PathBuf::from(crate::CGROUP_ROOT),
        }
    }

    /// /usr/bin/crun with its state in /run/crun.
    pub fn on_node() -> Runtime {
        Runtime::new(DEFAULT_CRUN, DEFAULT_STATE_ROOT)
    }

    /// The same with the cgroup hierarchy at `root` (for tests).
    pub fn with_cgroup_root(mut self, root: impl Into<PathBuf>) -> Runtime {
        self.cgroup_root = root.into();
        self
    }

    pub fn crun(&self) -> &Path {
        &self.crun
    }

    pub fn state_root(&self) -> &Path {
        &self.state_root
    }

    /// Whether crun has state for container `id` (a run in progress, or
    /// one that crun could not clean up).
    pub fn exists(&self, id: &str) -> bool {
        self.state_root.join(id).is_dir()
    }

    /// The containers crun has state for, sorted.
    pub fn list(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.state_root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids
    }

    /// Runs `crun <action> <args>` about container `id` to its end; its
    /// stdout on success.
    async fn short(
        &self,
        action: &'static str,
        id: &str,
        args: &[&str],
    ) -> Result<String, RuntimeError> {
        let mut c = tokio::process::Command::new(&self.crun);
        c.arg("--root")
            .arg(&self.state_root)
            .arg(action)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = c.spawn().map_err(|source| RuntimeError::Spawn {
            crun: self.crun.clone(),
            source,
        })?;
        let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| RuntimeError::Timeout {
                action,
                id: id.to_string(),
                seconds: COMMAND_TIMEOUT.as_secs(),
            })?
            .map_err(|source| RuntimeError::Io {
                what: "wait for crun",
                id: id.to_string(),
                source,
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(RuntimeError::Failed {
                action,
                id: id.to_string(),
                status: exit_words(out.status),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// `crun kill <id> <signal>`: the signal goes to the container's first process.
    pub async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let signal = signal.to_string();
        self.short("kill", id, &[id, &signal]).await.map(|_| ())
    }

    /// `crun delete [--force] <id>`: removes what crun keeps of a container
    /// (with `force`, killing it first if it still runs).
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let args: &[&str] = if force { &["--force", id] } else { &[id] };
        self.short("delete", id, args).await.map(|_| ())
    }

    /// `crun state <id>`; None when crun has no such container.
    pub async fn state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        if !self.exists(id) {
            return Ok(None);
        }
        let text = self.short("state", id, &[id]).await?;
        let state: oci_spec::runtime::State =
            serde_json::from_str(&text).map_err(|source| RuntimeError::State {
                id: id.to_string(),
                source,
            })?;
        let status = serde_json::to_value(state.status())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        Ok(Some(ContainerState {
            status,
            pid: *state.pid(),
        }))
    }

    /// Starts the container of `bundle` (whose `config.json` is written):
    /// removes state crun may have left of an earlier run, empties
    /// `crun.log`, then starts `crun run` with its output going to the
    /// container's log in `logs`. `memory_max` is only for the words of an
    /// OOM kill.
    pub async fn run(
        &self,
        bundle: &Bundle,
        logs: &LogWriter,
        memory_max: Option<u64>,
    ) -> Result<Running, RuntimeError> {
        let id = bundle.name().as_str().to_string();
        let io_err = |what: &'static str| {
            let id = id.clone();
            move |source| RuntimeError::Io { what, id, source }
        };
        if self.exists(&id) {
            self.delete(&id, true).await?;
        }
        std::fs::write(bundle.crun_log(), "").map_err(io_err("empty crun.log"))?;
        match std::fs::remove_file(pid_file(bundle)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove the old pid file")(e))
            }
            _ => {}
        }
        let memory_events = policy::memory_events_path(&self.cgroup_root, bundle.name());
        let oom_before = policy::read_oom_kills(&memory_events).unwrap_or(0);

        let (reader, writer) = io::pipe().map_err(io_err("make the output pipe"))?;
        let writer2 = writer.try_clone().map_err(io_err("make the output pipe"))?;
        let mut c = tokio::process::Command::new(&self.crun);
        c.args(run_args(&self.state_root, bundle))
            .stdin(Stdio::null())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::from(writer2))
            .process_group(0);
        let child = c.spawn().map_err(|source| RuntimeError::Spawn {
            crun: self.crun.clone(),
            source,
        })?;
        // The write ends now belong to crun alone: EOF comes when the container's are closed.
        drop(c);
        let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))
            .map_err(io_err("read the output pipe"))?;
        let pump = tokio::spawn(container_log::pump(
            receiver,
            logs.clone(),
            container_log::log_name(bundle.name()),
        ));
        Ok(Running {
            id,
            child,
            pump,
            crun_log: bundle.crun_log(),
            pid_file: pid_file(bundle),
            memory_events,
            oom_before,
            memory_max,
            started: Instant::now(),
        })
    }

    /// Removes `carapace.slice/<name>`, the cgroup that outlives the runs
    /// of a container, once the container is gone from the settings.
    pub fn remove_cgroup(
        &self,
        name: &carapace_model::containers::ContainerName,
    ) -> io::Result<()> {
        let dir = self
            .cgroup_root
            .join(crate::CGROUP_PARENT)
            .join(name.as_str());
        match std::fs::remove_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// The least memory the node keeps for itself (kernel, PID 1, agents)
/// outside the containers' slice.
pub const NODE_RESERVE_MIN: u64 = 192 << 20;

/// The least `memory.max` of the slice, whatever the node's size: a
/// container's own smallest `memory_max` ([`carapace_model::containers::MIN_MEMORY_MAX`]).
pub const SLICE_MEMORY_MIN: u64 = carapace_model::containers::MIN_MEMORY_MAX;

/// `memory.max` of `carapace.slice` on a node with `mem_total` bytes: all
/// but max([`NODE_RESERVE_MIN`], 20 %), never below [`SLICE_MEMORY_MIN`].
pub fn slice_memory_max(mem_total: u64) -> u64 {
    let reserve = NODE_RESERVE_MIN.max(mem_total / 5);
    mem_total.saturating_sub(reserve).max(SLICE_MEMORY_MIN)
}

/// `MemTotal` of /proc/meminfo text, in bytes.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// What [`limit_slice_memory`] set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceLimit {
    pub mem_total: u64,
    pub memory_max: u64,
}

impl std::fmt::Display for SliceLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: memory.max {} MiB of {} MiB (the rest is the node's)",
            crate::CGROUP_PARENT,
            self.memory_max >> 20,
            self.mem_total >> 20
        )
    }
}

/// Why the slice could not be limited.
#[derive(Debug, thiserror::Error)]
pub enum SliceError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} has no MemTotal line in kB")]
    NoMemTotal { path: PathBuf },
}

/// Creates `carapace.slice` under `cgroup_root` if missing, enables the
/// memory and pids controllers for it and its children, and writes its
/// `memory.max` from `meminfo` (/proc/meminfo on the node).
pub fn limit_slice_memory(cgroup_root: &Path, meminfo: &Path) -> Result<SliceLimit, SliceError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| SliceError::Io { what, path, source }
    };
    let text = std::fs::read_to_string(meminfo).map_err(io("read", meminfo))?;
    let total = mem_total(&text).ok_or_else(|| SliceError::NoMemTotal {
        path: meminfo.to_path_buf(),
    })?;
    let slice = cgroup_root.join(crate::CGROUP_PARENT);
    match std::fs::create_dir(&slice) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io("create", &slice)(e)),
        _ => {}
    }
    for dir in [cgroup_root, slice.as_path()] {
        let control = dir.join("cgroup.subtree_control");
        // One at a time: a controller already on is no error, and one
        // the kernel lacks must not keep the other off.
        for controller in ["+memory", "+pids"] {
            std::fs::write(&control, controller).map_err(io("enable a controller in", &control))?;
        }
    }
    let memory_max = slice_memory_max(total);
    let file = slice.join("memory.max");
    std::fs::write(&file, format!("{memory_max}\n")).map_err(io("write", &file))?;
    Ok(SliceLimit {
        mem_total: total,
        memory_max,
    })
}

/// `exited with status 1`, `killed by signal SIGKILL`.
fn exit_words(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!(
            "killed by signal {}",
            carapace_init::backoff::signal_name(sig)
        ),
        _ => "ended".into(),
    }
}

/// A container that `crun run` runs.
#[derive(Debug)]
pub struct Running {
    id: String,
    child: tokio::process::Child,
    pump: tokio::task::JoinHandle<Option<String>>,
    crun_log: PathBuf,
    pid_file: PathBuf,
    memory_events: PathBuf,
    oom_before: u64,
    memory_max: Option<u64>,
    started: Instant,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub reason: ExitReason,
    /// How long it ran (from the start of `crun run`).
    pub ran: Duration,
    /// Output that could not be kept, if any (the log file failed).
    pub log_error: Option<String>,
}

impl Running {
    /// The container id (its name).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The pid of `crun run`.
    pub fn crun_pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The container's first process as the node sees it, once crun has
    /// created it.
    pub fn container_pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Waits until crun has created the container and written its pid, and
    /// returns it; None when crun ended first (it could not start the
    /// container, or the container was gone at once without a pid file)
    /// or `within` ran out. [`Running::wait`] still reports how it ended.
    pub async fn wait_for_pid(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(pid) = self.container_pid() {
                return Some(pid);
            }
            // tokio keeps the status for `wait`, which then returns it.
            if !matches!(self.child.try_wait(), Ok(None)) || Instant::now() >= deadline {
                return self.container_pid();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the container to end, reads the last of its output, and
    /// tells how it ended.
    pub async fn wait(mut self) -> Result<Ended, RuntimeError> {
        let status = self.child.wait().await.map_err(|source| RuntimeError::Io {
            what: "wait for crun run",
            id: self.id.clone(),
            source,
        })?;
        let ran = self.started.elapsed();
        let log_error = match tokio::time::timeout(OUTPUT_DRAIN, &mut self.pump).await {
            Ok(Ok(err)) => err,
            Ok(Err(e)) => Some(format!("the output reader of {} failed: {e}", self.id)),
            Err(_) => {
                self.pump.abort();
                None
            }
        };
        let crun_said = std::fs::read_to_string(&self.crun_log).unwrap_or_default();
        let crun_said = crun_said.trim();
        let reason = if !status.success() && !crun_said.is_empty() {
            ExitReason::StartFailed(crun_said.lines().last().unwrap_or(crun_said).to_string())
        } else {
            let oom_after = policy::read_oom_kills(&self.memory_events).unwrap_or(self.oom_before);
            policy::classify_status(
                status,
                oom_after.saturating_sub(self.oom_before),
                self.memory_max,
            )
        };
        Ok(Ended {
            reason,
            ran,
            log_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carapace_model::containers::ContainerName;

    fn name(s: &str) -> ContainerName {
        ContainerName::try_from(s.to_string()).expect("name")
    }

    fn temp(label: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("carapace-rt-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    /// A stand-in for crun: records its arguments in `calls`, and for `run`
    /// writes the pid file (unless the bundle holds `no-pid`) and executes
    /// `<bundle>/fake-run.sh` (with CRUN_LOG set to the --log file).
    const FAKE_CRUN: &str = r#"#!/bin/sh
dir=$(dirname "$0")
echo "$*" >> "$dir/calls"
[ "$1" = "--version" ] && exit 0
shift 2
log=""
case "$1" in --log=file:*) log="${1#--log=file:}"; shift;; esac
cmd="$1"; shift
case "$cmd" in
run)
    bundle="$2"; pidfile="$4"
    [ -e "$bundle/no-pid" ] || echo $$ > "$pidfile"
    CRUN_LOG="$log" exec sh "$bundle/fake-run.sh";;
kill|delete|state)
    id=""
    for a; do case "$a" in -*|[0-9]*) ;; *) id="$a";; esac; done
    if [ "$id" = missing ]; then echo "crun: container \`missing\` does not exist" >&2; exit 1; fi
    if [ "$cmd" = state ]; then
        printf '{"ociVersion":"1.0.2","id":"%s","pid":4242,"status":"running","bundle":"/b","created":"x","owner":""}' "$id"
    fi
    exit 0;;
esac
echo "fake crun: unknown command $cmd" >&2
exit 2
"#;

    struct Fixture {
        dir: PathBuf,
        runtime: Runtime,
        logs: LogWriter,
    }

    fn fixture(label: &str) -> Fixture {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp(label);
        let crun = dir.join("crun");
        std::fs::write(&crun, FAKE_CRUN).expect("fake crun");
        std::fs::set_permissions(&crun, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // Another test thread may fork while the file was open for writing
        // (ETXTBSY): wait until it runs.
        for _ in 0..100 {
            match std::process::Command::new(&crun).arg("--version").status() {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(26) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("fake crun does not run: {e}"),
            }
        }
        std::fs::write(dir.join("calls"), "").expect("calls");
        let runtime = Runtime::new(&crun, dir.join("state")).with_cgroup_root(dir.join("cgroup"));
        let logs = LogWriter::new(dir.join("logs"), carapace_contract::logs::CAP).expect("logs");
        Fixture { dir, runtime, logs }
    }

    impl Fixture {
        fn bundle(&self, name_: &str, script: &str) -> Bundle {
            let b = Bundle::new(&self.dir.join("run"), &name(name_));
            std::fs::create_dir_all(b.dir()).expect("bundle dir");
            std::fs::write(b.dir().join("fake-run.sh"), script).expect("script");
            b
        }
        fn calls(&self) -> Vec<String> {
            std::fs::read_to_string(self.dir.join("calls"))
                .expect("calls")
                .lines()
                .filter(|l| *l != "--version")
                .map(str::to_string)
                .collect()
        }
        fn log(&self, name_: &str) -> Vec<String> {
            std::fs::read_to_string(self.dir.join(format!("logs/container_{name_}.log")))
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    l.split_once(' ')
                        .map(|(_, t)| t.to_string())
                        .unwrap_or_default()
                })
                .collect()
        }
    }

    #[test]
    fn run_is_crun_run_in_the_foreground_with_the_bundle_and_a_pid_file() {
        let b = Bundle::new(Path::new("/var/lib/carapace/containers/run"), &name("web"));
        let args: Vec<String> = run_args(Path::new("/run/crun"), &b)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--root",
                "/run/crun",
                "--log=file:/var/lib/carapace/containers/run/web/crun.log",
                "run",
                "--bundle",
                "/var/lib/carapace/containers/run/web",
                "--pid-file",
                "/var/lib/carapace/containers/run/web/pid",
                "web"
            ]
        );
        assert!(!args.iter().any(|a| a == "--detach" || a == "-d"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn output_goes_to_the_log_in_order_and_the_exit_status_is_reported() {
        let f = fixture("exit");
        let b = f.bundle("web", "echo out-1\necho err-1 >&2\necho out-2\nexit 3\n");
        let running = f.runtime.run(&b, &f.logs, None).await.expect("run");
        assert_eq!(running.id(), "web");
        assert!(running.crun_pid().is_some());
        let ended = running.wait().await.expect("wait");
        assert_eq!(ended.reason, ExitReason::Exited(3));
        assert_eq!(ended.log_error, None);
        assert_eq!(f.log("web"), ["out-1", "err-1", "out-2"]);
        assert_eq!(
            f.calls(),
            [format!(
                "--root {} --log=file:{} run --bundle {} --pid-file {} web",
                f.dir.join("state").display(),
                b.crun_log().display(),
                b.dir().display(),
                pid_file(&b).display()
            )]
        );
        std::fs::remove_dir_all(&f.dir).ok();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_pid_file_names_the_container_process() {
        let f = fixture("pid");
        let b = f.bundle("web", "sleep 0.3\n");
        let running = f.runtime.run(&b, &f.logs, None).await.expect("run");
        let mut pid = None;
        for _ in 0..50 {
            pid = running.container_pid();
            if pid.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            pid.map(|p| p as u32),
            running.crun_pid(),
            "the fake execs in place"
        );
        assert_eq!(
            running.wait().await.expect("wait").reason,
            ExitReason::Exited(0)
        );
        std::fs::remove_dir_all(&f.dir).ok();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waiting_for_the_pid_ends_with_the_pid_or_when_crun_ends_without_one() {
        let f = fixture("waitpid");
        let b = f.bundle("web", "sleep 0.3\n");
        let mut running = f.runtime.run(&b, &f.logs, None).await.expect("run");
        let pid = running.wait_for_pid(Duration::from_secs(5)).await;
        assert_eq!(pid.map(|p| p as u32), running.crun_pid());
        assert_eq!(
            running.wait().await.expect("wait").reason,
            ExitReason::Exited(0)
        );

        // crun that fails before creating anything: no pid file, and no
        // waiting for the whole timeout.
        let b = f.bundle("bad", "echo 'no such image' > \"$CRUN_LOG\"\nexit 1\n");
        std::fs::write(b.dir().join("no-pid"), "").expect("no pid file");
        let mut running = f.runtime.run(&b, &f.logs, None).await.expect("run");
        let started = Instant::now();
        assert_eq!(running.wait_for_pid(Duration::from_secs(20)).await, None);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(
            running.wait().await.expect("the status is kept").reason,
            ExitReason::StartFailed("no such image".into())
        );
        std::fs::remove_dir_all(&f.dir).ok();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_start_failure_is_told_in_crun_s_words() {
        let f = fixture("startfail");
        let b = f.bundle(
            "web",
            "echo 'mount `/var/lib/carapace/volumes/x` to `/data`: No such file or directory' > \"$CRUN_LOG\"\nexit 1\n",
        );
        // Words of an earlier run are not taken for this run's.
        std::fs::write(b.crun_log(), "old trouble\n").expect("old log");
        let ended = f
            .runtime
            .run(&b, &f.logs, None)
            .await
            .expect("run")
            .wait()
            .await
            .expect("wait");
        assert_eq!(
            ended.reason.to_string(),
            "could not start: mount `/var/lib/carapace/volumes/x` to `/data`: No such file or directory"
        );
        let ok = f.bundle("ok", "exit 1\n");
        std::fs::write(ok.crun_log(), "old trouble\n").expect("old log");
        let ended = f
            .runtime
            .run(&ok, &f.logs, None)
            .await
            .expect("run")
            .wait()
            .await
            .expect("wait");
        assert_eq!(ended.reason, ExitReason::Exited(1));
        std::fs::remove_dir_all(&f.dir).ok();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_sigkill_during_which_the_cgroup_counted_an_oom_kill_is_out_of_memory() {
        let f = fixture("oom");
        let b = f.bundle("web", "");
        let events = policy::memory_events_path(&f.dir.join("cgroup"), b.name());
        std::fs::create_dir_all(events.parent().expect("cgroup")).expect("cgroup dir");
        // An earlier run's OOM kill does not count for this one.
        std::fs::write(&events, "oom 1\noom_kill 1\n").expect("events");
        std::fs::write(
            b.dir().join("fake-run.sh"),
            format!(
                "printf 'oom 2\\noom_kill 2\\n' > {}\nexit 137\n",
                events.display()
            ),
        )
        .expect("script");
        let ended = f
            .runtime
            .run(&b, &f.logs, Some(8 << 20))
            .await
            .expect("run")
            .wait()
            .await
            .expect("wait");
        assert_eq!(
            ended.reason.to_string(),
            "killed by the kernel: out of memory (memory.max 8388608 bytes)"
        );
        // The next run, killed without an OOM kill, is a plain SIGKILL.
        std::fs::write(b.dir().join("fake-run.sh"), "exit 137\n").expect("script");
        let ended = f
            .runtime
            .run(&b, &f.logs, Some(8 << 20))
            .await
            .expect("run")
            .wait()
            .await
            .expect("wait");
        assert_eq!(ended.reason, ExitReason::Signaled(9));
        std::fs::remove_dir_all(&f.dir).ok();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn kill_delete_and_state_are_crun_commands_whose_errors_carry_stderr() {
        let f = fixture("cmds");
        f.runtime.kill("web", 15).await.expect("kill");
        f.runtime.delete("web", true).await.expect("delete");
        f.runtime.delete("web", false).await.expect("delete");
        let root = f.dir.join("state");
        assert_eq!(
            f.calls(),
            [
                format!("--root {} kill web 15", root.display()),
                format!("--root {} delete --force web", root.display()),
                format!("--root {} delete web", root.display()),
            ]
        );
        let err = f
            .runtime
            .kill("missing", 9)
            .await
            .expect_err("no such container");
        assert_eq!(
            err.to_string(),
            "crun kill missing failed (exited with status 1): crun: container `missing` does not exist"
        );
        let err = f
            .runtime
            .delete("missing", false)
            .await
            .expect_err("no such container");
        assert!(err.to_string().contains("does not exist"), "{err}");

        assert_eq!(
            f.runtime.state("web").await.expect("state"),
            None,
            "no state dir"
        );
        std::fs::create_dir_all(root.join("web")).expect("state dir");
        assert!(f.runtime.exists("web"));
        assert_eq!(f.runtime.list(), ["web"]);
        assert_eq!(
            f.runtime.state("web").await.expect("state"),
            Some(ContainerState {
                status: "running".into(),
                pid: Some(4242)
            })
        );
        std::fs::remove_dir_all(&f.dir).ok();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn leftover_state_is_deleted_before_a_run() {
        let f = fixture("leftover");
        let b = f.bundle("web", "exit 0\n");
        std::fs::create_dir_all(f.dir.join("state/web")).expect("leftover state");
        let ended = f
            .runtime
            .run(&b, &f.logs, None)
            .await
            .expect("run")
            .wait()
            .await
            .expect("wait");
        assert_eq!(ended.reason, ExitReason::Exited(0));
        let calls = f.calls();
        assert!(calls[0].ends_with("delete --force web"), "{calls:?}");
        assert!(calls[1].contains(" run --bundle "), "{calls:?}");
        std::fs::remove_dir_all(&f.dir).ok();
    }

    #[test]
    fn the_slice_leaves_the_node_192_mib_or_a_fifth() {
        const MIB: u64 = 1 << 20;
        // The test VM: 1 GiB, of which the kernel shows about 980 MiB.
        assert_eq!(slice_memory_max(980 * MIB), 980 * MIB - 196 * MIB);
        // Small: the fixed reserve wins.
        assert_eq!(slice_memory_max(512 * MIB), 320 * MIB);
        // Large: a fifth.
        assert_eq!(slice_memory_max(16 << 30), (16 << 30) - (16 << 30) / 5);
        // Tiny: still something for a container, never an underflow.
        assert_eq!(slice_memory_max(100 * MIB), SLICE_MEMORY_MIN);
        assert_eq!(slice_memory_max(0), SLICE_MEMORY_MIN);
    }

    #[test]
    fn mem_total_is_read_from_meminfo_in_kib() {
        let meminfo = "MemTotal:        1003520 kB\nMemFree:          812345 kB\n";
        assert_eq!(mem_total(meminfo), Some(1_003_520 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: lots kB\n"), None);
        assert_eq!(mem_total("MemTotal: 5 MB\n"), None);
    }

    #[test]
    fn the_slice_gets_its_memory_max_and_controllers() {
        let dir = temp("slice");
        let cgroup = dir.join("cgroup");
        std::fs::create_dir_all(&cgroup).expect("cgroup root");
        let meminfo = dir.join("meminfo");
        std::fs::write(&meminfo, "MemTotal:        1048576 kB\n").expect("meminfo");
        let limit = limit_slice_memory(&cgroup, &meminfo).expect("limited");
        assert_eq!(limit.mem_total, 1 << 30);
        assert_eq!(limit.memory_max, (1 << 30) - (1 << 30) / 5);
        assert_eq!(
            std::fs::read_to_string(cgroup.join("carapace.slice/memory.max")).expect("memory.max"),
            format!("{}\n", limit.memory_max)
        );
        // A plain directory keeps only the last write; the kernel's file
        // takes each controller.
        assert_eq!(
            std::fs::read_to_string(cgroup.join("cgroup.subtree_control")).expect("control"),
            "+pids"
        );
        assert_eq!(
            limit.to_string(),
            "carapace.slice: memory.max 819 MiB of 1024 MiB (the rest is the node's)"
        );
        std::fs::write(&meminfo, "nothing\n").expect("meminfo");
        let err = limit_slice_memory(&cgroup, &meminfo).expect_err("no MemTotal");
        assert!(err.to_string().contains("no MemTotal"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_missing_crun_is_reported_with_its_path() {
        let runtime = Runtime::new("/nonexistent/crun", "/tmp/none");
        let err = runtime.kill("web", 15).await.expect_err("no crun");
        assert!(
            err.to_string()
                .starts_with("cannot run /nonexistent/crun: "),
            "{err}"
        );
    }
}
