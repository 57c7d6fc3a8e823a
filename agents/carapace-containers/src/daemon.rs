//! carapace-containers: the container agent, the `containers` service that
//! carapace-init supervises (as root; restarted with backoff if it exits).
//! It runs the containers of the committed settings with crun and keeps
//! them as the settings say. What to do is decided by
//! [`crate::reconcile`], pure; this file is the shell that
//! does it, on a current-thread tokio runtime.
//!
//! - Settings: /var/lib/carapace/settings.json, polled once a second (the
//!   API commits by renaming a new file into place). No file: no
//!   containers. A file that cannot be read: no containers at start, the
//!   current ones kept later (and no garbage collection meanwhile).
//! - Images: the carapace-oci store at /var/lib/carapace/containers. The
//!   store is looked up before any pull, so a reboot pulls nothing it has.
//!   HTTPS registries are verified against the Mozilla root certificates
//!   compiled in (webpki-roots; the node carries no CA bundle); registries
//!   marked `insecure` are reached over plain HTTP. After a pass that changed something (and with no pull in
//!   flight), `Store::gc` keeps only the images of the configured
//!   containers (enabled or not) and those running.
//! - Bundles in /var/lib/carapace/containers/run/<name>, crun's state in
//!   /run/crun, container output in the `container_<name>` logs (not on
//!   the console), status in /run/carapace/containers.json on every change.
//! - At start: crun's leftover containers are deleted (killed), stale
//!   rootfs mounts unmounted, bundles and cgroups of containers no longer
//!   configured removed.
//! - SIGTERM or SIGINT: every container gets its stop signal, SIGKILL
//!   after 5 s, rootfs mounts are unmounted, exit 0. (The service entry
//!   needs a `stop_timeout_ms` of about 10000 for this to finish.)
//!
//! Console lines (stdout, each prefixed `carapace-containers: `); tests
//! wait on these shapes:
//! - `disk bound: <dirs> (project 4242) at most <n> MiB and <i> inodes of /var's …, enforced`,
//!   `disk bound: not available: <why>: …` (an older /var), `disk bound: not applied: <error>`
//!   (first, see [`crate::quota`])
//! - `store /var/lib/carapace/containers, runtime <crun> (<crun --version, first line>)`
//! - `<name>: pulling <image>`
//! - `<name>: pulled <image> as <sha256:digest> (<n> layers)`
//! - `<name>: using cached <image> (<sha256:digest>)`
//! - `<name>: pull failed: <error>, retrying in <s> s`
//! - `<name>: started (pid <pid>)`
//! - `<name>: could not start: <error>, retrying in <s> s`
//! - `<name>: <exit reason>, restarting in <s> s` and
//!   `<name>: <exit reason>, not restarting`, the exit reason as
//!   `exited with status 1`, `killed by signal SIGKILL`,
//!   `killed by the kernel: out of memory (memory.max <n> bytes)`,
//!   `could not start: <crun's message>`
//! - `<name>: stopped (<exit reason>)` — it ended after its stop signal
//! - `<name>: stopped and removed` (removed from the settings),
//!   `<name>: stopped and removed (disabled)`, `<name>: disabled` (nothing
//!   of it was there)
//! - `<name>: cannot send <SIGNAME>: <crun's error>`,
//!   `<name>: cannot remove its bundle|cgroup: <error>`
//! - `settings: <n> containers, <m> enabled` (when the containers change),
//!   `settings: no /var/lib/carapace/settings.json: no containers`,
//!   `settings error: <why> (no containers)` at start,
//!   `settings error: <why> (keeping the current containers)` later
//! - `registries: HTTPS verified against <n> built-in root certificates` (once, at start)
//! - `carapace.slice: memory.max <n> MiB of <m> MiB (the rest is the node's)`,
//!   or `cannot limit the containers' memory: <error>` (once, at start)
//! - `<id>: deleted what crun kept of an earlier run`,
//!   `<name>: removed the bundle of a container no longer configured` (at start)
//! - `image store: removed <i> images, <b> blobs and <l> layers that no container uses`
//! - `stopping <n> containers (SIGTERM|SIGINT)`, then `all containers stopped`

use crate::bundle::{Bundle, Image, KernelMounter};
use crate::container_log::LogWriter;
use crate::policy::ExitReason;
use crate::reconcile::{self, Action, Entry, Instance, Task};
use crate::runtime::{Ended, Running, Runtime};
use crate::status::{self, ContainerStatus, State};
use crate::{spec, CGROUP_PARENT, CGROUP_ROOT, RUN_ROOT, STORE_ROOT};
use anyhow::Context;
use carapace_model::containers::{ContainerName, ImageRef};
use carapace_model::{persist, Settings};
use carapace_oci::{Pulled, Store};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Where the API commits the settings.
const SETTINGS_JSON: &str = carapace_contract::paths::SETTINGS_JSON;
/// The node's resolver configuration, which the net agent writes; copied
/// into the bundles of `host_network` containers.
const RESOLV_CONF: &str = carapace_contract::paths::RESOLV_CONF;
/// How often the settings and resolv.conf are looked at, and everything
/// reconciled.
const POLL: Duration = Duration::from_secs(1);
/// At shutdown: how long containers have between their stop signal and SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// At shutdown: how long to wait for the ends after SIGKILL.
const AFTER_SIGKILL: Duration = Duration::from_secs(2);
/// How long crun may take to create a container (write its pid).
const PID_WAIT: Duration = Duration::from_secs(30);
/// Actions for one container in one pass: a bound, never reached in practice.
const MAX_STEPS: usize = 8;

/// Prints one console line (a closed stdout is no reason to panic).
fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "carapace-containers: {line}");
}

fn say_about(name: &ContainerName, line: &str) {
    say(&format!("{name}: {line}"));
}

pub fn main() -> std::process::ExitCode {
    // First, while this is the only thread: the bound drops a capability
    // per thread, and the threads started later inherit the drop.
    say(&crate::quota::console_line(&crate::quota::bound_on_node()));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!("cannot start the runtime: {e}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run());
    // An unpack that a shutdown interrupted may still be running on the
    // blocking pool: do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            say(&format!("{e:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT; an error only when it cannot start.
async fn run() -> anyhow::Result<()> {
    // First, so that a shutdown during the start is not a plain kill.
    let mut terminate = signal(SignalKind::terminate()).ok();
    let mut interrupt = signal(SignalKind::interrupt()).ok();

    let runtime = Runtime::on_node();
    let version = crun_version(runtime.crun()).await;
    say(&format!(
        "store {STORE_ROOT}, runtime {} ({version})",
        runtime.crun().display()
    ));
    std::fs::create_dir_all(runtime.state_root())
        .with_context(|| format!("cannot create {}", runtime.state_root().display()))?;
    // Before any container runs: together they get what the node can spare.
    match crate::runtime::limit_slice_memory(Path::new(CGROUP_ROOT), Path::new("/proc/meminfo")) {
        Ok(limit) => say(&limit.to_string()),
        Err(e) => say(&format!("cannot limit the containers' memory: {e}")),
    }
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    say(&format!(
        "registries: HTTPS verified against {} built-in root certificates",
        roots.len()
    ));
    let store = Store::open(STORE_ROOT)?.with_tls_roots(roots);
    let logs = LogWriter::on_node().context("cannot open the container logs")?;

    let (events, mut received) = mpsc::unbounded_channel();
    let mut agent = Agent {
        store,
        runtime,
        logs,
        run_root: PathBuf::from(RUN_ROOT),
        watch: SettingsWatch::new(SETTINGS_JSON),
        settings: Settings::default(),
        settings_error: None,
        said_no_settings: false,
        entries: BTreeMap::new(),
        pulls: BTreeMap::new(),
        events,
        resolv_conf: std::fs::read_to_string(RESOLV_CONF).unwrap_or_default(),
        published: None,
        publish_error: None,
        gc_due: true,
    };
    agent.check_settings(true);
    agent.clear_leftovers().await;
    let why = agent
        .event_loop(&mut received, &mut terminate, &mut interrupt)
        .await;
    agent.shut_down(why, &mut received).await;
    Ok(())
}

/// `crun --version`'s first line, or why there is none.
async fn crun_version(crun: &Path) -> String {
    let mut c = tokio::process::Command::new(crun);
    c.arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(5), c.output()).await {
        Err(_) => "--version did not answer within 5 s".into(),
        Ok(Err(e)) => format!("cannot run it: {e}"),
        Ok(Ok(out)) if !out.status.success() => format!("--version failed: {}", out.status),
        Ok(Ok(out)) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no version given")
            .to_string(),
    }
}

/// What the tasks the agent spawned report.
enum Event {
    Pulled {
        name: ContainerName,
        image: ImageRef,
        result: Result<Box<Pulled>, String>,
    },
    /// crun created the container of run `run` (pid None: it ended first).
    Started {
        name: ContainerName,
        run: u64,
        pid: Option<i32>,
    },
    Ended {
        name: ContainerName,
        run: u64,
        ended: Result<Ended, String>,
    },
}

struct Agent {
    store: Store,
    runtime: Runtime,
    logs: LogWriter,
    run_root: PathBuf,
    watch: SettingsWatch,
    settings: Settings,
    settings_error: Option<String>,
    said_no_settings: bool,
    entries: BTreeMap<ContainerName, Entry>,
    /// The pull in flight per container: its canonical reference and task.
    pulls: BTreeMap<ContainerName, (String, JoinHandle<()>)>,
    events: mpsc::UnboundedSender<Event>,
    resolv_conf: String,
    published: Option<String>,
    publish_error: Option<String>,
    gc_due: bool,
}

async fn next_signal(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

impl Agent {
    /// Reconciles, publishes and collects until a signal; returns its name.
    async fn event_loop(
        &mut self,
        received: &mut mpsc::UnboundedReceiver<Event>,
        terminate: &mut Option<Signal>,
        interrupt: &mut Option<Signal>,
    ) -> &'static str {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.reconcile().await;
            self.publish();
            self.collect_garbage().await;
            let now = Instant::now();
            let deadline = self
                .entries
                .values()
                .filter_map(|e| e.next_deadline(now))
                .min();
            tokio::select! {
                _ = tick.tick() => {
                    self.check_settings(false);
                    self.check_resolv_conf();
                }
                Some(event) = received.recv() => self.on_event(event),
                _ = sleep_until_opt(deadline) => {}
                _ = next_signal(terminate) => return "SIGTERM",
                _ = next_signal(interrupt) => return "SIGINT",
            }
        }
    }

    fn entry(&mut self, name: &ContainerName) -> &mut Entry {
        self.entries.entry(name.clone()).or_default()
    }

    /// Takes whatever [`reconcile::decide`] says for every container until
    /// it says nothing more.
    async fn reconcile(&mut self) {
        for name in reconcile::names(&self.settings.containers, &self.entries) {
            for _ in 0..MAX_STEPS {
                let desired = self.settings.containers.get(&name);
                let entry = self.entries.entry(name.clone()).or_default();
                let Some(action) = reconcile::decide(desired, entry, Instant::now(), &self.store)
                else {
                    break;
                };
                self.perform(&name, action).await;
                if !self.entries.contains_key(&name) {
                    break;
                }
            }
        }
    }

    async fn perform(&mut self, name: &ContainerName, action: Action) {
        match action {
            Action::UseCached { image, pulled } => {
                self.abort_pull(name);
                let line = self.entry(name).cached(image, pulled);
                say_about(name, &line);
            }
            Action::Pull { image } => self.pull(name, image),
            Action::Start { instance, restart } => self.start(name, instance, restart).await,
            Action::Stop => {
                let signal = self.stop_signal(name);
                self.signal(name, signal).await;
                self.entry(name).stopping(Instant::now());
            }
            Action::Kill => {
                self.signal(name, rustix::process::Signal::KILL.as_raw())
                    .await;
                self.entry(name).killed();
            }
            Action::Clear { disabled } => self.clear(name, disabled).await,
        }
    }

    fn abort_pull(&mut self, name: &ContainerName) {
        if let Some((_, task)) = self.pulls.remove(name) {
            task.abort();
        }
    }

    fn pull(&mut self, name: &ContainerName, image: ImageRef) {
        self.abort_pull(name);
        let line = self.entry(name).pulling(image.clone());
        say_about(name, &line);
        let store = self.store.clone();
        let registry = self.settings.registries.get(image.registry()).cloned();
        let events = self.events.clone();
        let canonical = image.canonical();
        let who = name.clone();
        let task = tokio::spawn(async move {
            let result = store
                .pull_with(&image, registry.as_ref())
                .await
                .map(Box::new)
                .map_err(|e| e.to_string());
            let _ = events.send(Event::Pulled {
                name: who,
                image,
                result,
            });
        });
        self.pulls.insert(name.clone(), (canonical, task));
    }

    async fn start(&mut self, name: &ContainerName, instance: Instance, restart: bool) {
        let bundle = Bundle::new(&self.run_root, name);
        let image = Image {
            layers: &instance.pulled.layers,
            config: &instance.pulled.config,
        };
        let prepared = bundle.prepare(&KernelMounter, &instance.settings, image, &self.resolv_conf);
        let memory_max = instance.settings.memory_max.map(|m| m.bytes());
        let running = match prepared {
            Ok(_) => self
                .runtime
                .run(&bundle, &self.logs, memory_max)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match running {
            Ok(running) => {
                let run = self.entry(name).started(
                    instance,
                    restart,
                    carapace_contract::clock::ms_since_boot(),
                );
                self.watch_run(name.clone(), run, running);
                // A replaced image may be unused now.
                self.gc_due |= !restart;
            }
            Err(error) => {
                let line = self
                    .entry(name)
                    .start_failed(instance, error, Instant::now());
                say_about(name, &line);
            }
        }
    }

    /// Reports the pid of run `run`, then its end.
    fn watch_run(&self, name: ContainerName, run: u64, mut running: Running) {
        let events = self.events.clone();
        tokio::spawn(async move {
            let pid = running.wait_for_pid(PID_WAIT).await;
            let _ = events.send(Event::Started {
                name: name.clone(),
                run,
                pid,
            });
            let ended = running.wait().await.map_err(|e| e.to_string());
            let _ = events.send(Event::Ended { name, run, ended });
        });
    }

    /// The image's stop signal of what runs, SIGTERM if it names none (or
    /// none that exists).
    fn stop_signal(&self, name: &ContainerName) -> i32 {
        self.entries
            .get(name)
            .and_then(|e| e.task.instance())
            .and_then(|i| spec::stop_signal(name, &i.pulled.config).ok())
            .unwrap_or(rustix::process::Signal::TERM.as_raw())
    }

    async fn signal(&self, name: &ContainerName, signal: i32) {
        if let Err(e) = self.runtime.kill(name.as_str(), signal).await {
            // Unless it ended on its own meanwhile (its end is on the way).
            if self.runtime.exists(name.as_str()) {
                say_about(
                    name,
                    &format!(
                        "cannot send {}: {e}",
                        carapace_init::backoff::signal_name(signal)
                    ),
                );
            }
        }
    }

    async fn clear(&mut self, name: &ContainerName, disabled: bool) {
        self.abort_pull(name);
        if self.runtime.exists(name.as_str()) {
            if let Err(e) = self.runtime.delete(name.as_str(), true).await {
                say_about(name, &e.to_string());
            }
        }
        let bundle = Bundle::new(&self.run_root, name);
        let had_bundle = bundle.dir().exists();
        if let Err(e) = bundle.remove(&KernelMounter) {
            say_about(name, &format!("cannot remove its bundle: {e}"));
        }
        if let Err(e) = self.runtime.remove_cgroup(name) {
            say_about(name, &format!("cannot remove its cgroup: {e}"));
        }
        let line = self.entry(name).cleared(disabled, had_bundle);
        if !disabled {
            self.entries.remove(name);
        }
        self.gc_due = true;
        say_about(name, &line);
    }

    fn on_event(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Pulled {
                name,
                image,
                result,
            } => {
                if self
                    .pulls
                    .get(&name)
                    .is_some_and(|(canonical, _)| *canonical == image.canonical())
                {
                    self.pulls.remove(&name);
                }
                if let Some(line) = self
                    .entries
                    .get_mut(&name)
                    .and_then(|e| e.pulled(&image, result.map(|p| *p), now))
                {
                    say_about(&name, &line);
                }
            }
            Event::Started { name, run, pid } => {
                if let Some(line) = pid
                    .zip(self.entries.get_mut(&name))
                    .and_then(|(pid, e)| e.got_pid(run, pid))
                {
                    say_about(&name, &line);
                }
            }
            Event::Ended { name, run, ended } => {
                let (reason, ran) = match ended {
                    Ok(ended) => {
                        if let Some(e) = ended.log_error {
                            say_about(&name, &e);
                        }
                        (ended.reason, ended.ran)
                    }
                    Err(e) => (
                        ExitReason::StartFailed(format!("lost track of crun: {e}")),
                        Duration::ZERO,
                    ),
                };
                if let Some(line) = self
                    .entries
                    .get_mut(&name)
                    .and_then(|e| e.ended(run, &reason, ran, now))
                {
                    say_about(&name, &line);
                }
            }
        }
    }

    /// Takes in the settings file if it changed.
    fn check_settings(&mut self, first: bool) {
        match self.watch.poll() {
            SettingsPoll::Unchanged => {}
            SettingsPoll::Missing => {
                self.settings_error = None;
                if !self.said_no_settings {
                    say(&format!("settings: no {SETTINGS_JSON}: no containers"));
                    self.said_no_settings = true;
                }
                self.take_settings(Settings::default());
            }
            SettingsPoll::Loaded(settings) => {
                self.settings_error = None;
                self.said_no_settings = false;
                self.take_settings(*settings);
            }
            SettingsPoll::Failed(e) => {
                if self.settings_error.as_ref() != Some(&e) {
                    if first {
                        say(&format!("settings error: {e} (no containers)"));
                    } else {
                        say(&format!(
                            "settings error: {e} (keeping the current containers)"
                        ));
                    }
                }
                self.settings_error = Some(e);
            }
        }
    }

    fn take_settings(&mut self, settings: Settings) {
        if settings.containers != self.settings.containers {
            let enabled = settings.containers.values().filter(|c| c.enabled).count();
            say(&format!(
                "settings: {} containers, {enabled} enabled",
                settings.containers.len()
            ));
            self.gc_due = true;
        }
        if settings.registries != self.settings.registries {
            let now = Instant::now();
            for entry in self.entries.values_mut() {
                entry.retry_pull_now(now);
            }
        }
        self.settings = settings;
    }

    /// Copies a changed /run/carapace/resolv.conf into the bundles of the
    /// `host_network` containers (rewritten in place: a running container
    /// sees the change).
    fn check_resolv_conf(&mut self) {
        let text = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
        if text == self.resolv_conf {
            return;
        }
        self.resolv_conf = text;
        for (name, entry) in &self.entries {
            let bundle = Bundle::new(&self.run_root, name);
            let host_network = entry
                .task
                .instance()
                .is_some_and(|i| i.settings.host_network);
            if host_network && bundle.dir().is_dir() {
                if let Err(e) = bundle.write_host_files(&self.resolv_conf) {
                    say_about(name, &e.to_string());
                }
            }
        }
    }

    fn statuses(&self) -> Vec<ContainerStatus> {
        self.entries
            .iter()
            .filter_map(|(name, e)| e.status(name, self.settings.containers.get(name)))
            .collect()
    }

    fn publish(&mut self) {
        let statuses = self.statuses();
        self.write_status(&statuses);
    }

    fn write_status(&mut self, statuses: &[ContainerStatus]) {
        let text = status::render(statuses);
        if self.published.as_ref() == Some(&text) {
            return;
        }
        match status::publish(Path::new(status::PATH), &text) {
            Ok(()) => {
                self.published = Some(text);
                self.publish_error = None;
            }
            Err(e) => {
                let e = format!("cannot write {}: {e}", status::PATH);
                if self.publish_error.as_ref() != Some(&e) {
                    say(&e);
                }
                self.publish_error = Some(e);
            }
        }
    }

    /// Frees the images no configured or running container uses, when
    /// something changed, no pull is in flight and the settings were read.
    async fn collect_garbage(&mut self) {
        if !self.gc_due || !self.pulls.is_empty() || self.settings_error.is_some() {
            return;
        }
        self.gc_due = false;
        let mut keep = reconcile::images_in_use(&self.entries);
        for c in self.settings.containers.values() {
            if let Some(p) = self.store.lookup(&c.image) {
                if !keep.iter().any(|k| k.reference == p.reference) {
                    keep.push(p);
                }
            }
        }
        match self.store.gc(&keep).await {
            Ok(r) if r != carapace_oci::GcReport::default() => say(&format!(
                "image store: removed {} images, {} blobs and {} layers that no container uses",
                r.images, r.blobs, r.layers
            )),
            Ok(_) => {}
            Err(e) => say(&e.to_string()),
        }
    }

    /// What an earlier run of the agent left: crun's containers (killed and
    /// deleted), rootfs mounts, and the bundles and cgroups of containers
    /// no longer in the settings.
    async fn clear_leftovers(&mut self) {
        for id in self.runtime.list() {
            match self.runtime.delete(&id, true).await {
                Ok(()) => say(&format!("{id}: deleted what crun kept of an earlier run")),
                Err(e) => say(&e.to_string()),
            }
        }
        let configured = |name: &ContainerName| self.settings.containers.contains_key(name);
        // Without readable settings, nothing is taken for unconfigured.
        let sure = self.settings_error.is_none();
        for name in container_dirs(&self.run_root) {
            let bundle = Bundle::new(&self.run_root, &name);
            let result = if sure && !configured(&name) {
                bundle.remove(&KernelMounter).map(|()| {
                    say_about(
                        &name,
                        "removed the bundle of a container no longer configured",
                    )
                })
            } else {
                bundle.unmount_rootfs(&KernelMounter)
            };
            if let Err(e) = result {
                say_about(&name, &e.to_string());
            }
        }
        if sure {
            for name in container_dirs(&Path::new(CGROUP_ROOT).join(CGROUP_PARENT)) {
                if !configured(&name) {
                    if let Err(e) = self.runtime.remove_cgroup(&name) {
                        say_about(&name, &format!("cannot remove its cgroup: {e}"));
                    }
                }
            }
        }
    }

    /// Stops every container (stop signal, SIGKILL after [`SHUTDOWN_GRACE`]),
    /// unmounts every rootfs, and says so in the status.
    async fn shut_down(&mut self, why: &str, received: &mut mpsc::UnboundedReceiver<Event>) {
        for (_, (_, task)) in std::mem::take(&mut self.pulls) {
            task.abort();
        }
        let running: Vec<ContainerName> = self
            .entries
            .iter()
            .filter(|(_, e)| e.task.is_running())
            .map(|(n, _)| n.clone())
            .collect();
        say(&format!("stopping {} containers ({why})", running.len()));
        for name in &running {
            if matches!(
                self.entries.get(name).map(|e| &e.task),
                Some(Task::Running { .. })
            ) {
                let signal = self.stop_signal(name);
                self.signal(name, signal).await;
                self.entry(name).stopping(Instant::now());
            }
        }
        self.wait_for_ends(received, Instant::now() + SHUTDOWN_GRACE)
            .await;
        let left: Vec<ContainerName> = self
            .entries
            .iter()
            .filter(|(_, e)| e.task.is_running())
            .map(|(n, _)| n.clone())
            .collect();
        for name in &left {
            self.signal(name, rustix::process::Signal::KILL.as_raw())
                .await;
            self.entry(name).killed();
        }
        if !left.is_empty() {
            self.wait_for_ends(received, Instant::now() + AFTER_SIGKILL)
                .await;
        }
        for name in container_dirs(&self.run_root) {
            if let Err(e) = Bundle::new(&self.run_root, &name).unmount_rootfs(&KernelMounter) {
                say_about(&name, &e.to_string());
            }
        }
        let statuses: Vec<ContainerStatus> = self
            .statuses()
            .into_iter()
            .map(|mut s| {
                if s.state != State::Disabled {
                    s.state = State::Stopped;
                    s.pid = None;
                }
                s
            })
            .collect();
        self.write_status(&statuses);
        say("all containers stopped");
    }

    async fn wait_for_ends(
        &mut self,
        received: &mut mpsc::UnboundedReceiver<Event>,
        deadline: Instant,
    ) {
        let deadline = tokio::time::Instant::from_std(deadline);
        while self.entries.values().any(|e| e.task.is_running()) {
            tokio::select! {
                Some(event) = received.recv() => {
                    if !matches!(event, Event::Pulled { .. }) {
                        self.on_event(event);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

/// The entries of `dir` named like containers.
fn container_dirs(dir: &Path) -> Vec<ContainerName> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| ContainerName::try_from(n).ok())
        .collect()
}

/// What a look at the settings file found.
#[derive(Debug, PartialEq)]
enum SettingsPoll {
    Unchanged,
    Missing,
    Loaded(Box<Settings>),
    Failed(String),
}

/// Polls the settings file.
#[derive(Debug)]
struct SettingsWatch(persist::SettingsWatch);

impl SettingsWatch {
    fn new(path: impl Into<PathBuf>) -> SettingsWatch {
        SettingsWatch(persist::SettingsWatch::new(path))
    }

    /// The settings if the file changed since the last call (always on the first).
    fn poll(&mut self) -> SettingsPoll {
        match self.0.poll() {
            None => SettingsPoll::Unchanged,
            Some(Ok(Some(s))) => SettingsPoll::Loaded(Box::new(s)),
            Some(Ok(None)) => SettingsPoll::Missing,
            Some(Err(e)) => SettingsPoll::Failed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_settings_file_is_read_when_it_changes_and_only_then() {
        let dir =
            std::env::temp_dir().join(format!("carapace-containers-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("settings.json");
        let mut watch = SettingsWatch::new(&path);
        assert_eq!(watch.poll(), SettingsPoll::Missing);
        assert_eq!(watch.poll(), SettingsPoll::Unchanged);

        let settings = Settings::from_value(json!({
            "containers": { "web": { "image": "nginx:1.27" } }
        }))
        .expect("valid");
        persist::save(&path, &settings).expect("saved");
        assert_eq!(
            watch.poll(),
            SettingsPoll::Loaded(Box::new(settings.clone()))
        );
        assert_eq!(watch.poll(), SettingsPoll::Unchanged);

        std::fs::write(
            &path,
            br#"{ "containers": { "Web": { "image": "nginx" } } }"#,
        )
        .expect("bad file");
        match watch.poll() {
            SettingsPoll::Failed(e) => assert!(e.contains("containers.Web"), "{e}"),
            other => panic!("not refused: {other:?}"),
        }
        std::fs::remove_file(&path).expect("removed");
        assert_eq!(watch.poll(), SettingsPoll::Missing);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn only_directories_named_like_containers_are_taken_for_containers() {
        let dir =
            std::env::temp_dir().join(format!("carapace-containers-dirs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["web", "db-1", "Not_A_Name", ".tmp"] {
            std::fs::create_dir_all(dir.join(d)).expect("dir");
        }
        std::fs::write(dir.join("file"), "").expect("file");
        let mut names: Vec<String> = container_dirs(&dir)
            .into_iter()
            .map(|n| n.to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["db-1", "web"]);
        assert!(container_dirs(&dir.join("missing")).is_empty());
        std::fs::remove_dir_all(&dir).ok();
    }
}
