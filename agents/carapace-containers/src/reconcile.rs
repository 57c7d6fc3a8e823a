//! The container agent's decisions, pure: from the containers the settings
//! ask for and what the agent knows of each one ([`Entry`]: its task, the
//! image for the reference its settings give), the next thing to do
//! ([`decide`] → [`Action`]); and how every outcome (an image found in the
//! store or pulled, a container started, ended, stopped, cleared) changes
//! what the agent knows, with the console line that says so. The agent
//! binary performs the actions — pulls, bundles, crun — and feeds the
//! outcomes back; nothing here touches the node but [`ImageCache::lookup`],
//! a read of the image store.
//!
//! The rules:
//! - An enabled container needs the image its reference names. The store
//!   is asked first ([`ImageCache::lookup`]): an image it has is used as it
//!   is, tag or not, so a reboot or a restart of the agent never pulls
//!   again; only a changed reference (compared in its canonical form) is
//!   looked up and, when the store lacks it, pulled. A failed pull is tried
//!   again after [`policy::delay`] (1 s, 2 s, 4 s, … 60 s).
//! - A container runs an [`Instance`]: the settings and the image it was
//!   started with. When the settings change, the running instance is
//!   stopped only once the image of the new settings is ready; while it is
//!   pulled, or when its pull fails, the old instance keeps running (and is
//!   restarted by its own policy), and the status shows the pull error.
//! - Stopping: the image's stop signal, SIGKILL after [`STOP_GRACE`].
//! - A container that ended by itself is restarted as its restart policy
//!   and [`policy::decide`] say; one that could not be started (its bundle
//!   failed) is tried again with the same backoff, whatever its policy.
//! - A container removed from the settings, or disabled, is stopped and
//!   cleared (its bundle, writable layer included, and its cgroup
//!   removed); a removed one leaves the status, a disabled one stays as
//!   `disabled`.

use crate::policy::{self, ExitReason};
use crate::status::{ContainerStatus, State};
use carapace_model::containers::{Container, ContainerName, ImageRef};
use carapace_oci::Pulled;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long a container asked to stop has before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The images the store already has.
pub trait ImageCache {
    /// The image `image` resolved to when it was last pulled, if the store
    /// still has all of it.
    fn lookup(&self, image: &ImageRef) -> Option<Pulled>;
}

impl ImageCache for carapace_oci::Store {
    fn lookup(&self, image: &ImageRef) -> Option<Pulled> {
        carapace_oci::Store::lookup(self, image)
    }
}

/// Whether two references name the same image (`nginx` and
/// `docker.io/library/nginx:latest` do).
pub fn same_image(a: &ImageRef, b: &ImageRef) -> bool {
    a.canonical() == b.canonical()
}

/// What a run of a container is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub settings: Container,
    pub pulled: Pulled,
}

/// The image for the reference the settings give.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ImageState {
    /// Not looked for yet.
    #[default]
    Unknown,
    /// Being pulled, after `failures` failed pulls of the same reference.
    Pulling { image: ImageRef, failures: u32 },
    /// The last pull failed; the next is due at `retry_at`.
    Failed {
        image: ImageRef,
        error: String,
        failures: u32,
        retry_at: Instant,
    },
    /// In the store.
    Ready {
        image: ImageRef,
        pulled: Box<Pulled>,
    },
}

impl ImageState {
    /// The image, if it is ready and the one `image` names.
    pub fn ready_for(&self, image: &ImageRef) -> Option<&Pulled> {
        match self {
            ImageState::Ready { image: i, pulled } if same_image(i, image) => Some(pulled),
            _ => None,
        }
    }
}

/// Where a container's process is.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Task {
    /// Nothing runs and nothing is planned but what [`decide`] says.
    #[default]
    Idle,
    Running {
        instance: Instance,
    },
    /// Asked to stop (its stop signal sent); SIGKILL at `sigkill_at`
    /// unless `killed` already.
    Stopping {
        instance: Instance,
        sigkill_at: Instant,
        killed: bool,
    },
    /// Ended; its policy restarts it at `at`.
    Waiting {
        instance: Instance,
        at: Instant,
    },
    /// Ended; its policy leaves it so until its settings change.
    Exited {
        instance: Instance,
    },
    /// Could not be started (`error`), `failures` times in a row; tried
    /// again at `retry_at`.
    StartFailed {
        instance: Instance,
        error: String,
        failures: u32,
        retry_at: Instant,
    },
    /// Disabled: stopped, bundle and cgroup removed.
    Cleared,
}

impl Task {
    /// The instance that runs, ran last or is to run again.
    pub fn instance(&self) -> Option<&Instance> {
        match self {
            Task::Running { instance }
            | Task::Stopping { instance, .. }
            | Task::Waiting { instance, .. }
            | Task::Exited { instance }
            | Task::StartFailed { instance, .. } => Some(instance),
            Task::Idle | Task::Cleared => None,
        }
    }

    /// Whether a process of the container may exist.
    pub fn is_running(&self) -> bool {
        matches!(self, Task::Running { .. } | Task::Stopping { .. })
    }
}

/// What the agent knows about one container.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Entry {
    pub task: Task,
    pub image: ImageState,
    /// Starts by the restart policy, never reset while the agent runs.
    pub restarts: u32,
    /// Restarts in a row, for the backoff ([`policy::decide`]).
    pub in_a_row: u32,
    /// How the last run ended, in [`ExitReason`]'s words.
    pub last_exit: Option<String>,
    /// The container's first process, once crun has created it.
    pub pid: Option<i32>,
    /// When the current or last run started, ms since boot.
    pub started_at_ms: Option<u64>,
    /// The number of the current or last run: events of older runs are stale.
    pub run: u64,
}

/// The next thing to do for one container.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one action is made and taken at a time; a box would only add an allocation"
)]
pub enum Action {
    /// The store has the image: use it, pull nothing.
    UseCached { image: ImageRef, pulled: Pulled },
    /// Pull the image (giving up a pull of another reference in flight).
    Pull { image: ImageRef },
    /// Prepare the bundle of `instance` and run it; `restart` when its
    /// policy starts it again.
    Start { instance: Instance, restart: bool },
    /// Send the running instance its stop signal.
    Stop,
    /// The grace ran out: SIGKILL.
    Kill,
    /// Remove the bundle (the writable layer with it) and the cgroup; a
    /// removed container then leaves the status, a disabled one stays.
    Clear { disabled: bool },
}

/// The next action for a container whose settings are `desired` (None:
/// removed from the settings), given what the agent knows of it. None:
/// nothing to do until an event or a deadline ([`Entry::next_deadline`]).
pub fn decide(
    desired: Option<&Container>,
    entry: &Entry,
    now: Instant,
    cache: &dyn ImageCache,
) -> Option<Action> {
    let Some(wanted) = desired.filter(|c| c.enabled) else {
        return match &entry.task {
            Task::Running { .. } => Some(Action::Stop),
            Task::Stopping { .. } => kill_due(&entry.task, now),
            Task::Cleared if desired.is_some() => None,
            _ => Some(Action::Clear {
                disabled: desired.is_some(),
            }),
        };
    };
    if let Some(fetch) = fetch(wanted, &entry.image, now, cache) {
        return Some(fetch);
    }
    let ready = entry.image.ready_for(&wanted.image);
    let start_new = |pulled: &Pulled| Action::Start {
        instance: Instance {
            settings: wanted.clone(),
            pulled: pulled.clone(),
        },
        restart: false,
    };
    let changed = |instance: &Instance| instance.settings != *wanted;
    match &entry.task {
        Task::Stopping { .. } => kill_due(&entry.task, now),
        Task::Running { instance } => {
            (ready.is_some() && changed(instance)).then_some(Action::Stop)
        }
        Task::Waiting { instance, at } => match ready {
            Some(pulled) if changed(instance) => Some(start_new(pulled)),
            // The new image is not there (yet): the old instance goes on.
            _ if now >= *at => Some(Action::Start {
                instance: instance.clone(),
                restart: true,
            }),
            _ => None,
        },
        Task::Exited { instance } => match ready {
            Some(pulled) if changed(instance) => Some(start_new(pulled)),
            _ => None,
        },
        Task::StartFailed {
            instance, retry_at, ..
        } => match ready {
            Some(pulled) if changed(instance) || now >= *retry_at => Some(start_new(pulled)),
            _ if now >= *retry_at => Some(Action::Start {
                instance: instance.clone(),
                restart: false,
            }),
            _ => None,
        },
        Task::Idle | Task::Cleared => ready.map(start_new),
    }
}

fn kill_due(task: &Task, now: Instant) -> Option<Action> {
    match task {
        Task::Stopping {
            sigkill_at, killed, ..
        } if !killed && now >= *sigkill_at => Some(Action::Kill),
        _ => None,
    }
}

/// Looking for the image of `wanted`, unless it is there, being pulled,
/// or waiting for the retry of a failed pull.
fn fetch(
    wanted: &Container,
    image: &ImageState,
    now: Instant,
    cache: &dyn ImageCache,
) -> Option<Action> {
    let same = |i: &ImageRef| same_image(i, &wanted.image);
    match image {
        ImageState::Ready { image, .. } | ImageState::Pulling { image, .. } if same(image) => None,
        ImageState::Failed {
            image, retry_at, ..
        } if same(image) && now < *retry_at => None,
        _ => Some(match cache.lookup(&wanted.image) {
            Some(pulled) => Action::UseCached {
                image: wanted.image.clone(),
                pulled,
            },
            None => Action::Pull {
                image: wanted.image.clone(),
            },
        }),
    }
}

fn seconds(d: Duration) -> u64 {
    d.as_secs_f64().round() as u64
}

impl Entry {
    /// The store had `image`: `using cached <image> (<digest>)`.
    pub fn cached(&mut self, image: ImageRef, pulled: Pulled) -> String {
        let line = format!("using cached {image} ({})", pulled.manifest_digest);
        self.image = ImageState::Ready {
            image,
            pulled: Box::new(pulled),
        };
        line
    }

    /// A pull of `image` started: `pulling <image>`.
    pub fn pulling(&mut self, image: ImageRef) -> String {
        let failures = match &self.image {
            ImageState::Failed {
                image: i, failures, ..
            }
            | ImageState::Pulling {
                image: i, failures, ..
            } if same_image(i, &image) => *failures,
            _ => 0,
        };
        let line = format!("pulling {image}");
        self.image = ImageState::Pulling { image, failures };
        line
    }

    /// A pull of `image` ended: `pulled <image> as <digest> (<n> layers)`
    /// or `pull failed: <error>, retrying in <s> s`. None when it is no
    /// longer the pull the container waits for.
    pub fn pulled(
        &mut self,
        image: &ImageRef,
        result: Result<Pulled, String>,
        now: Instant,
    ) -> Option<String> {
        let failures = match &self.image {
            ImageState::Pulling { image: i, failures } if same_image(i, image) => *failures,
            _ => return None,
        };
        let image = image.clone();
        Some(match result {
            Ok(pulled) => {
                let line = format!(
                    "pulled {image} as {} ({} layers)",
                    pulled.manifest_digest,
                    pulled.layers.len()
                );
                self.image = ImageState::Ready {
                    image,
                    pulled: Box::new(pulled),
                };
                line
            }
            Err(error) => {
                let failures = failures.saturating_add(1);
                let delay = policy::delay(failures);
                let line = format!("pull failed: {error}, retrying in {} s", seconds(delay));
                self.image = ImageState::Failed {
                    image,
                    error,
                    failures,
                    retry_at: now + delay,
                };
                line
            }
        })
    }

    /// Makes a failed pull due at `now` (the registries' settings changed:
    /// new credentials are tried at once, not after the backoff).
    pub fn retry_pull_now(&mut self, now: Instant) {
        if let ImageState::Failed { retry_at, .. } = &mut self.image {
            *retry_at = now;
        }
    }

    /// crun runs `instance`, started at `now_ms` since boot. Returns the
    /// number of this run.
    pub fn started(&mut self, instance: Instance, restart: bool, now_ms: u64) -> u64 {
        if restart {
            self.restarts = self.restarts.saturating_add(1);
        } else {
            self.in_a_row = 0;
        }
        self.run = self.run.wrapping_add(1);
        self.pid = None;
        self.started_at_ms = Some(now_ms);
        self.task = Task::Running { instance };
        self.run
    }

    /// `instance` could not be started: `could not start: <error>, retrying in <s> s`.
    pub fn start_failed(&mut self, instance: Instance, error: String, now: Instant) -> String {
        let failures = match &self.task {
            Task::StartFailed {
                instance: i,
                failures,
                ..
            } if i.settings == instance.settings => failures.saturating_add(1),
            _ => 1,
        };
        let delay = policy::delay(failures);
        let line = format!("could not start: {error}, retrying in {} s", seconds(delay));
        self.pid = None;
        self.task = Task::StartFailed {
            instance,
            error,
            failures,
            retry_at: now + delay,
        };
        line
    }

    /// crun created run `run` as process `pid`: `started (pid <pid>)`.
    pub fn got_pid(&mut self, run: u64, pid: i32) -> Option<String> {
        if run != self.run || !self.task.is_running() {
            return None;
        }
        self.pid = Some(pid);
        Some(format!("started (pid {pid})"))
    }

    /// Its stop signal was sent at `now`.
    pub fn stopping(&mut self, now: Instant) {
        if let Task::Running { instance } = std::mem::take(&mut self.task) {
            self.task = Task::Stopping {
                instance,
                sigkill_at: now + STOP_GRACE,
                killed: false,
            };
        } else {
            self.task = Task::Idle;
        }
    }

    /// SIGKILL was sent.
    pub fn killed(&mut self) {
        if let Task::Stopping { killed, .. } = &mut self.task {
            *killed = true;
        }
    }

    /// Run `run` ended as `reason` after `ran`. Returns the console line
    /// (`<reason>, restarting in <s> s`, `<reason>, not restarting`, or
    /// `stopped (<reason>)` when it was asked to stop); None for a stale run.
    pub fn ended(
        &mut self,
        run: u64,
        reason: &ExitReason,
        ran: Duration,
        now: Instant,
    ) -> Option<String> {
        if run != self.run || !self.task.is_running() {
            return None;
        }
        self.pid = None;
        self.last_exit = Some(reason.to_string());
        match std::mem::take(&mut self.task) {
            Task::Running { instance } => {
                match policy::decide(instance.settings.restart, reason, ran, self.in_a_row) {
                    policy::Decision::Restart { delay, in_a_row } => {
                        self.in_a_row = in_a_row;
                        self.task = Task::Waiting {
                            instance,
                            at: now + delay,
                        };
                        Some(format!("{reason}, restarting in {} s", seconds(delay)))
                    }
                    policy::Decision::Stay => {
                        self.task = Task::Exited { instance };
                        Some(format!("{reason}, not restarting"))
                    }
                }
            }
            _ => {
                self.task = Task::Idle;
                Some(format!("stopped ({reason})"))
            }
        }
    }

    /// Its bundle and cgroup were removed (`had_bundle`: there was a
    /// bundle to remove): `stopped and removed`, for a disabled one
    /// `stopped and removed (disabled)`, or `disabled` when nothing of it
    /// was there. A removed container's entry is then dropped.
    pub fn cleared(&mut self, disabled: bool, had_bundle: bool) -> String {
        let had_run = had_bundle || !matches!(self.task, Task::Idle | Task::Cleared);
        self.task = Task::Cleared;
        self.image = ImageState::Unknown;
        self.pid = None;
        match (disabled, had_run) {
            (false, _) => "stopped and removed".to_string(),
            (true, true) => "stopped and removed (disabled)".to_string(),
            (true, false) => "disabled".to_string(),
        }
    }

    /// The earliest deadline after `now` (a restart, a retry, a SIGKILL).
    /// Deadlines already past are not given: [`decide`] acts on those at once.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let task = match &self.task {
            Task::Waiting { at, .. } => Some(*at),
            Task::StartFailed { retry_at, .. } => Some(*retry_at),
            Task::Stopping {
                sigkill_at,
                killed: false,
                ..
            } => Some(*sigkill_at),
            _ => None,
        };
        let image = match &self.image {
            ImageState::Failed { retry_at, .. } => Some(*retry_at),
            _ => None,
        };
        [task, image]
            .into_iter()
            .flatten()
            .filter(|t| *t > now)
            .min()
    }

    /// Its status, with `desired` its settings (None: removed, still
    /// stopping). None when there is nothing to say (removed and idle).
    ///
    /// The state is the process's while one runs (`running`, also while
    /// it is being stopped or a new image is being pulled for it;
    /// `restarting` while it waits for its restart), else `disabled`,
    /// `failed` (a failed pull or start, `error` says which), `exited`,
    /// `pulling` or `starting`. `image` is the settings' reference,
    /// `image_digest` the manifest digest of the image that runs or ran.
    pub fn status(
        &self,
        name: &ContainerName,
        desired: Option<&Container>,
    ) -> Option<ContainerStatus> {
        let instance = self.task.instance();
        let image = desired
            .map(|c| &c.image)
            .or(instance.map(|i| &i.settings.image))?;
        let mut s = ContainerStatus::new(name.as_str(), image.as_str());
        let wanted = desired.filter(|c| c.enabled);
        s.image_digest = instance
            .map(|i| i.pulled.manifest_digest.clone())
            .or_else(|| match &self.image {
                ImageState::Ready { pulled, .. } => Some(pulled.manifest_digest.clone()),
                _ => None,
            });
        s.restarts = self.restarts;
        s.last_exit = self.last_exit.clone();
        s.started_at_ms = self.started_at_ms;
        s.pid = if self.task.is_running() {
            self.pid
        } else {
            None
        };
        let pull_error = match (&self.image, wanted) {
            (ImageState::Failed { image, error, .. }, Some(c)) if same_image(image, &c.image) => {
                Some(format!("pull {image}: {error}"))
            }
            _ => None,
        };
        let start_error = match &self.task {
            Task::StartFailed { error, .. } => Some(error.clone()),
            _ => None,
        };
        s.state = match (&self.task, wanted) {
            (Task::Running { .. } | Task::Stopping { .. }, _) => State::Running,
            (Task::Waiting { .. }, _) => State::Restarting,
            (_, None) if desired.is_some() => State::Disabled,
            (_, None) => State::Stopped,
            _ if pull_error.is_some() || start_error.is_some() => State::Failed,
            (Task::Exited { instance }, Some(c)) if instance.settings == *c => State::Exited,
            (_, Some(c)) if self.image.ready_for(&c.image).is_some() => State::Starting,
            _ => State::Pulling,
        };
        s.error = pull_error.or(start_error);
        Some(s)
    }
}

/// Every container the agent has to look at: those of the settings and
/// those it still knows of.
pub fn names<'a>(
    desired: &'a BTreeMap<ContainerName, Container>,
    entries: &'a BTreeMap<ContainerName, Entry>,
) -> BTreeSet<ContainerName> {
    desired.keys().chain(entries.keys()).cloned().collect()
}

/// The images the entries run, ran or have ready: with the images of
/// every configured container, what [`carapace_oci::Store::gc`] must keep.
/// (An old instance that keeps running while the image of its new
/// settings fails to pull is in use, though no setting names it.)
pub fn images_in_use(entries: &BTreeMap<ContainerName, Entry>) -> Vec<Pulled> {
    let mut keep: Vec<Pulled> = Vec::new();
    for entry in entries.values() {
        let ready = match &entry.image {
            ImageState::Ready { pulled, .. } => Some(&**pulled),
            _ => None,
        };
        for p in entry
            .task
            .instance()
            .map(|i| &i.pulled)
            .into_iter()
            .chain(ready)
        {
            if !keep.iter().any(|k| k.reference == p.reference) {
                keep.push(p.clone());
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::cell::Cell;
    use std::path::PathBuf;

    /// A store that has `images` and counts the lookups.
    #[derive(Default)]
    struct FakeStore {
        images: Vec<Pulled>,
        lookups: Cell<usize>,
    }

    impl ImageCache for FakeStore {
        fn lookup(&self, image: &ImageRef) -> Option<Pulled> {
            self.lookups.set(self.lookups.get() + 1);
            self.images
                .iter()
                .find(|p| p.reference == image.canonical())
                .cloned()
        }
    }

    fn name(s: &str) -> ContainerName {
        ContainerName::try_from(s.to_string()).expect("name")
    }

    fn image(s: &str) -> ImageRef {
        ImageRef::try_from(s.to_string()).expect("image")
    }

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).expect("container settings")
    }

    /// An image as the store gives it, with `layers` layers and a digest
    /// made of `digit`.
    fn pulled(reference: &str, digit: char, layers: usize) -> Pulled {
        let digest = format!("sha256:{}", digit.to_string().repeat(64));
        Pulled {
            reference: image(reference).canonical(),
            manifest_digest: digest.clone(),
            index_digest: None,
            config_digest: digest,
            config: serde_json::from_value(json!({
                "architecture": "amd64", "os": "linux",
                "rootfs": { "type": "layers", "diff_ids": [] },
                "config": { "Cmd": ["/app"] },
            }))
            .expect("image config"),
            layers: (0..layers)
                .map(|i| PathBuf::from(format!("/layers/{digit}{i}")))
                .collect(),
            layer_digests: (0..layers).map(|i| format!("{digit}{i}")).collect(),
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Applies `action` as the agent would when everything succeeds
    /// (pulls excepted: they end by `Entry::pulled`).
    fn perform(entry: &mut Entry, action: Action, now: Instant) -> Option<String> {
        match action {
            Action::UseCached { image, pulled } => Some(entry.cached(image, pulled)),
            Action::Pull { image } => Some(entry.pulling(image)),
            Action::Start { instance, restart } => {
                let run = entry.started(instance, restart, 1000);
                entry.got_pid(run, 4242)
            }
            Action::Stop => {
                entry.stopping(now);
                None
            }
            Action::Kill => {
                entry.killed();
                None
            }
            Action::Clear { disabled } => Some(entry.cleared(disabled, true)),
        }
    }

    /// A container running `settings` with `pulled`, as after a start.
    fn running(settings: &Container, p: &Pulled) -> Entry {
        let mut entry = Entry::default();
        entry.cached(settings.image.clone(), p.clone());
        let run = entry.started(
            Instance {
                settings: settings.clone(),
                pulled: p.clone(),
            },
            false,
            1000,
        );
        entry.got_pid(run, 4242);
        entry
    }

    #[test]
    fn a_new_container_is_pulled_then_started() {
        let now = Instant::now();
        let web = container(json!({ "image": "nginx:1.27" }));
        let store = FakeStore::default();
        let mut entry = Entry::default();
        assert_eq!(
            entry.status(&name("web"), Some(&web)).map(|s| s.state),
            Some(State::Pulling)
        );

        let action = decide(Some(&web), &entry, now, &store).expect("an action");
        assert_eq!(
            action,
            Action::Pull {
                image: image("nginx:1.27")
            }
        );
        assert_eq!(
            perform(&mut entry, action, now).as_deref(),
            Some("pulling nginx:1.27")
        );
        assert_eq!(
            decide(Some(&web), &entry, now, &store),
            None,
            "one pull at a time"
        );

        let p = pulled("nginx:1.27", 'a', 3);
        let line = entry.pulled(&image("nginx:1.27"), Ok(p.clone()), now);
        assert_eq!(
            line,
            Some(format!(
                "pulled nginx:1.27 as sha256:{} (3 layers)",
                "a".repeat(64)
            ))
        );
        assert_eq!(
            entry.status(&name("web"), Some(&web)).map(|s| s.state),
            Some(State::Starting)
        );

        let action = decide(Some(&web), &entry, now, &store).expect("a start");
        assert_eq!(
            action,
            Action::Start {
                instance: Instance {
                    settings: web.clone(),
                    pulled: p.clone()
                },
                restart: false
            }
        );
        assert_eq!(
            perform(&mut entry, action, now).as_deref(),
            Some("started (pid 4242)")
        );
        assert_eq!(decide(Some(&web), &entry, now, &store), None, "settled");

        let status = entry.status(&name("web"), Some(&web)).expect("status");
        assert_eq!(status.state, State::Running);
        assert_eq!(status.pid, Some(4242));
        assert_eq!(status.image, "nginx:1.27");
        assert_eq!(status.image_digest, Some(p.manifest_digest));
        assert_eq!(status.restarts, 0);
        assert_eq!(status.error, None);
        assert_eq!(status.log, "container_web");
    }

    #[test]
    fn an_image_the_store_has_is_used_without_pulling_even_by_tag() {
        let now = Instant::now();
        // As after a reboot: the tag was pulled before, the store kept it.
        let web = container(json!({ "image": "nginx" }));
        let p = pulled("docker.io/library/nginx:latest", 'c', 2);
        let store = FakeStore {
            images: vec![p.clone()],
            ..FakeStore::default()
        };
        let mut entry = Entry::default();
        let action = decide(Some(&web), &entry, now, &store).expect("an action");
        assert!(matches!(action, Action::UseCached { .. }), "{action:?}");
        assert_eq!(
            perform(&mut entry, action, now),
            Some(format!("using cached nginx (sha256:{})", "c".repeat(64)))
        );
        let action = decide(Some(&web), &entry, now, &store).expect("a start");
        assert!(
            matches!(&action, Action::Start { instance, restart: false } if instance.pulled == p),
            "{action:?}"
        );
        perform(&mut entry, action, now);
        // Once ready, the store is not asked again on every pass.
        let asked = store.lookups.get();
        for _ in 0..5 {
            assert_eq!(decide(Some(&web), &entry, now, &store), None);
        }
        assert_eq!(store.lookups.get(), asked);
        // Another spelling of the same image is not a new image (the
        // settings differ though: the container is made again).
        let spelled_out = container(json!({ "image": "docker.io/library/nginx:latest" }));
        assert_eq!(
            decide(Some(&spelled_out), &entry, now, &store),
            Some(Action::Stop)
        );
        assert_eq!(store.lookups.get(), asked, "no lookup, no pull");
    }

    #[test]
    fn a_changed_image_whose_pull_fails_keeps_the_old_container_running() {
        let now = Instant::now();
        let old = container(json!({ "image": "registry.test:5000/app:v1" }));
        let new = container(json!({ "image": "registry.test:5000/app:does-not-exist" }));
        let v1 = pulled("registry.test:5000/app:v1", 'a', 1);
        let store = FakeStore {
            images: vec![v1.clone()],
            ..FakeStore::default()
        };
        let mut entry = running(&old, &v1);

        let action = decide(Some(&new), &entry, now, &store).expect("a pull");
        assert_eq!(
            action,
            Action::Pull {
                image: new.image.clone()
            }
        );
        perform(&mut entry, action, now);
        assert_eq!(
            decide(Some(&new), &entry, now, &store),
            None,
            "no stop while the new image is pulled"
        );
        let status = entry.status(&name("app"), Some(&new)).expect("status");
        assert_eq!((status.state, status.pid), (State::Running, Some(4242)));

        let error = "manifest unknown: tag does-not-exist of app at registry.test:5000";
        let line = entry.pulled(&new.image, Err(error.into()), now);
        assert_eq!(
            line.as_deref(),
            Some(
                "pull failed: manifest unknown: tag does-not-exist of app at registry.test:5000, retrying in 1 s"
            )
        );
        assert_eq!(
            decide(Some(&new), &entry, now, &store),
            None,
            "the old container keeps running"
        );
        assert!(matches!(entry.task, Task::Running { .. }));
        let status = entry.status(&name("app"), Some(&new)).expect("status");
        assert_eq!(status.state, State::Running);
        assert_eq!(status.pid, Some(4242));
        assert_eq!(
            status.image, "registry.test:5000/app:does-not-exist",
            "the settings' reference"
        );
        assert_eq!(
            status.image_digest,
            Some(v1.manifest_digest.clone()),
            "what runs"
        );
        assert_eq!(
            status.error.as_deref(),
            Some(format!("pull registry.test:5000/app:does-not-exist: {error}").as_str())
        );

        // The retry comes after the backoff, and fails again: 2 s next.
        assert_eq!(entry.next_deadline(now), Some(now + secs(1)));
        let later = now + secs(1);
        let action = decide(Some(&new), &entry, later, &store).expect("retry");
        assert!(matches!(action, Action::Pull { .. }), "{action:?}");
        perform(&mut entry, action, later);
        let line = entry.pulled(&new.image, Err(error.into()), later);
        assert!(line.expect("line").ends_with(", retrying in 2 s"));

        // The old container crashes meanwhile: its own policy restarts it.
        let run = entry.run;
        let line = entry.ended(run, &ExitReason::Exited(1), secs(5), later);
        assert_eq!(
            line.as_deref(),
            Some("exited with status 1, restarting in 1 s")
        );
        let action = decide(Some(&new), &entry, later + secs(1), &store).expect("restart");
        assert_eq!(
            action,
            Action::Start {
                instance: Instance {
                    settings: old.clone(),
                    pulled: v1.clone()
                },
                restart: true
            }
        );
        // And its image is kept by the garbage collection.
        let entries = BTreeMap::from([(name("app"), entry)]);
        assert_eq!(images_in_use(&entries), vec![v1]);
    }

    #[test]
    fn a_changed_image_that_pulls_replaces_the_container() {
        let now = Instant::now();
        let old = container(json!({ "image": "app:v1" }));
        let new = container(json!({ "image": "app:v2" }));
        let v1 = pulled("app:v1", 'a', 1);
        let v2 = pulled("app:v2", 'b', 2);
        let store = FakeStore::default();
        let mut entry = running(&old, &v1);

        let action = decide(Some(&new), &entry, now, &store).expect("pull");
        perform(&mut entry, action, now);
        entry.pulled(&new.image, Ok(v2.clone()), now);
        assert_eq!(decide(Some(&new), &entry, now, &store), Some(Action::Stop));
        entry.stopping(now);
        assert_eq!(
            entry.status(&name("app"), Some(&new)).map(|s| s.state),
            Some(State::Running),
            "still running while it stops"
        );
        assert_eq!(decide(Some(&new), &entry, now, &store), None);
        assert_eq!(entry.next_deadline(now), Some(now + STOP_GRACE));
        assert_eq!(
            decide(Some(&new), &entry, now + STOP_GRACE, &store),
            Some(Action::Kill)
        );
        entry.killed();
        assert_eq!(decide(Some(&new), &entry, now + STOP_GRACE, &store), None);
        assert_eq!(entry.next_deadline(now), None);

        let run = entry.run;
        let line = entry.ended(run, &ExitReason::Signaled(9), secs(30), now);
        assert_eq!(line.as_deref(), Some("stopped (killed by signal SIGKILL)"));
        let action = decide(Some(&new), &entry, now, &store).expect("start");
        assert_eq!(
            action,
            Action::Start {
                instance: Instance {
                    settings: new.clone(),
                    pulled: v2
                },
                restart: false
            }
        );
        perform(&mut entry, action, now);
        assert_eq!(entry.restarts, 0, "a new container, not a restart");
    }

    #[test]
    fn a_changed_field_with_the_same_image_restarts_without_pulling() {
        let now = Instant::now();
        let old = container(json!({ "image": "app:v1" }));
        let new = container(json!({ "image": "app:v1", "env": { "MODE": "fast" } }));
        let v1 = pulled("app:v1", 'a', 1);
        let store = FakeStore::default();
        let mut entry = running(&old, &v1);
        assert_eq!(decide(Some(&new), &entry, now, &store), Some(Action::Stop));
        entry.stopping(now);
        let run = entry.run;
        entry.ended(run, &ExitReason::Signaled(15), secs(3), now);
        let action = decide(Some(&new), &entry, now, &store).expect("start");
        assert!(
            matches!(&action, Action::Start { instance, .. } if instance.settings == new && instance.pulled == v1),
            "{action:?}"
        );
        assert_eq!(store.lookups.get(), 0, "the image was not looked for again");
    }

    #[test]
    fn a_removed_container_is_stopped_then_removed_and_leaves_the_status() {
        let now = Instant::now();
        let web = container(json!({ "image": "nginx:1.27" }));
        let p = pulled("nginx:1.27", 'a', 1);
        let store = FakeStore::default();
        let mut entry = running(&web, &p);

        assert_eq!(decide(None, &entry, now, &store), Some(Action::Stop));
        entry.stopping(now);
        assert_eq!(decide(None, &entry, now, &store), None);
        let status = entry
            .status(&name("web"), None)
            .expect("listed while it stops");
        assert_eq!(
            (status.state, status.image.as_str()),
            (State::Running, "nginx:1.27")
        );

        let run = entry.run;
        assert_eq!(
            entry
                .ended(run, &ExitReason::Signaled(15), secs(3), now)
                .as_deref(),
            Some("stopped (killed by signal SIGTERM)")
        );
        assert_eq!(
            decide(None, &entry, now, &store),
            Some(Action::Clear { disabled: false })
        );
        assert_eq!(entry.cleared(false, true), "stopped and removed");

        // One that never ran (its pull failing) is removed at once.
        let mut failing = Entry::default();
        failing.pulling(image("nginx:nope"));
        failing.pulled(&image("nginx:nope"), Err("manifest unknown".into()), now);
        assert_eq!(
            decide(None, &failing, now, &store),
            Some(Action::Clear { disabled: false })
        );
        assert_eq!(failing.cleared(false, false), "stopped and removed");
    }

    #[test]
    fn a_disabled_container_is_stopped_cleared_and_listed_as_disabled() {
        let now = Instant::now();
        let enabled = container(json!({ "image": "nginx:1.27" }));
        let disabled = container(json!({ "image": "nginx:1.27", "enabled": false }));
        let p = pulled("nginx:1.27", 'a', 1);
        let store = FakeStore {
            images: vec![p.clone()],
            ..FakeStore::default()
        };
        let mut entry = running(&enabled, &p);

        assert_eq!(
            decide(Some(&disabled), &entry, now, &store),
            Some(Action::Stop)
        );
        entry.stopping(now);
        let run = entry.run;
        entry.ended(run, &ExitReason::Exited(0), secs(3), now);
        assert_eq!(
            decide(Some(&disabled), &entry, now, &store),
            Some(Action::Clear { disabled: true })
        );
        assert_eq!(entry.cleared(true, true), "stopped and removed (disabled)");
        assert_eq!(
            decide(Some(&disabled), &entry, now, &store),
            None,
            "settled"
        );
        let status = entry
            .status(&name("web"), Some(&disabled))
            .expect("still listed");
        assert_eq!(status.state, State::Disabled);
        assert_eq!((status.pid, status.error), (None, None));
        assert_eq!(store.lookups.get(), 0, "no image is looked for");

        // Enabled again: the store still has the image.
        let action = decide(Some(&enabled), &entry, now, &store).expect("lookup");
        assert!(matches!(action, Action::UseCached { .. }), "{action:?}");

        // A container that is disabled from the start was never there.
        let mut fresh = Entry::default();
        assert_eq!(
            decide(Some(&disabled), &fresh, now, &store),
            Some(Action::Clear { disabled: true })
        );
        assert_eq!(fresh.cleared(true, false), "disabled");
    }

    #[test]
    fn restarts_follow_the_policy_with_backoff_and_are_counted() {
        let now = Instant::now();
        let web = container(json!({ "image": "app:1", "restart": "on-failure:2",
                                    "memory_max": 8388608 }));
        let p = pulled("app:1", 'a', 1);
        let store = FakeStore::default();
        let mut entry = running(&web, &p);

        let oom = ExitReason::OutOfMemory {
            memory_max: Some(8_388_608),
        };
        let run = entry.run;
        assert_eq!(
            entry.ended(run, &oom, secs(2), now).as_deref(),
            Some(
                "killed by the kernel: out of memory (memory.max 8388608 bytes), restarting in 1 s"
            )
        );
        let status = entry.status(&name("web"), Some(&web)).expect("status");
        assert_eq!(status.state, State::Restarting);
        assert_eq!(status.pid, None);
        assert_eq!(
            status.last_exit.as_deref(),
            Some("killed by the kernel: out of memory (memory.max 8388608 bytes)")
        );
        assert_eq!(decide(Some(&web), &entry, now, &store), None, "not yet");
        assert_eq!(entry.next_deadline(now), Some(now + secs(1)));
        let action = decide(Some(&web), &entry, now + secs(1), &store).expect("restart");
        assert!(
            matches!(action, Action::Start { restart: true, .. }),
            "{action:?}"
        );
        perform(&mut entry, action, now + secs(1));
        assert_eq!(entry.restarts, 1);

        // A stale end (of the run before) changes nothing.
        assert_eq!(entry.ended(run, &oom, secs(2), now), None);
        assert!(matches!(entry.task, Task::Running { .. }));

        let run = entry.run;
        assert_eq!(
            entry
                .ended(run, &ExitReason::Exited(3), secs(2), now)
                .as_deref(),
            Some("exited with status 3, restarting in 2 s")
        );
        let action = decide(Some(&web), &entry, now + secs(2), &store).expect("restart");
        perform(&mut entry, action, now + secs(2));
        assert_eq!(entry.restarts, 2);
        // on-failure:2: the third failure in a row stays.
        let run = entry.run;
        assert_eq!(
            entry
                .ended(run, &ExitReason::Exited(3), secs(2), now)
                .as_deref(),
            Some("exited with status 3, not restarting")
        );
        assert_eq!(decide(Some(&web), &entry, now + secs(600), &store), None);
        let status = entry.status(&name("web"), Some(&web)).expect("status");
        assert_eq!((status.state, status.restarts), (State::Exited, 2));

        // A change of its settings makes it anew, with a fresh backoff.
        let changed = container(json!({ "image": "app:1", "restart": "always" }));
        let action = decide(Some(&changed), &entry, now, &store).expect("start");
        assert!(
            matches!(action, Action::Start { restart: false, .. }),
            "{action:?}"
        );
        perform(&mut entry, action, now);
        assert_eq!(entry.in_a_row, 0);

        // A clean exit under "always" restarts too; "never" never does.
        let run = entry.run;
        assert_eq!(
            entry
                .ended(run, &ExitReason::Exited(0), secs(2), now)
                .as_deref(),
            Some("exited with status 0, restarting in 1 s")
        );
        let never = container(json!({ "image": "app:1", "restart": "never" }));
        let mut entry = running(&never, &p);
        let run = entry.run;
        assert_eq!(
            entry
                .ended(run, &ExitReason::Signaled(15), secs(2), now)
                .as_deref(),
            Some("killed by signal SIGTERM, not restarting")
        );
    }

    #[test]
    fn a_pid_is_reported_for_the_current_run_only() {
        let web = container(json!({ "image": "app:1" }));
        let p = pulled("app:1", 'a', 1);
        let mut entry = Entry::default();
        let instance = Instance {
            settings: web,
            pulled: p,
        };
        let first = entry.started(instance.clone(), false, 10);
        let second = entry.started(instance, true, 20);
        assert_ne!(first, second);
        assert_eq!(entry.got_pid(first, 1), None);
        assert_eq!(entry.got_pid(second, 2).as_deref(), Some("started (pid 2)"));
        assert_eq!(entry.started_at_ms, Some(20));
    }

    #[test]
    fn pull_failures_back_off_and_fail_the_container_until_one_works() {
        let now = Instant::now();
        let web = container(json!({ "image": "app:1" }));
        let store = FakeStore::default();
        let mut entry = Entry::default();
        let mut t = now;
        for want in [1, 2, 4, 8] {
            let action = decide(Some(&web), &entry, t, &store).expect("pull");
            assert!(matches!(action, Action::Pull { .. }), "{action:?}");
            perform(&mut entry, action, t);
            let line = entry
                .pulled(&web.image, Err("registry app unreachable".into()), t)
                .expect("line");
            assert_eq!(
                line,
                format!("pull failed: registry app unreachable, retrying in {want} s")
            );
            assert_eq!(decide(Some(&web), &entry, t, &store), None, "backing off");
            t += secs(want);
        }
        let status = entry.status(&name("web"), Some(&web)).expect("status");
        assert_eq!(status.state, State::Failed);
        assert_eq!(
            status.error.as_deref(),
            Some("pull app:1: registry app unreachable")
        );
        // New registry settings (credentials) are tried without waiting.
        assert_eq!(decide(Some(&web), &entry, t - secs(1), &store), None);
        entry.retry_pull_now(t - secs(1));
        assert!(matches!(
            decide(Some(&web), &entry, t - secs(1), &store),
            Some(Action::Pull { .. })
        ));
        // A result of a pull the container no longer waits for is dropped.
        assert_eq!(
            entry.pulled(&image("app:0"), Ok(pulled("app:0", 'z', 1)), t),
            None
        );

        let action = decide(Some(&web), &entry, t, &store).expect("pull");
        perform(&mut entry, action, t);
        entry.pulled(&web.image, Ok(pulled("app:1", 'a', 1)), t);
        let status = entry.status(&name("web"), Some(&web)).expect("status");
        assert_eq!((status.state, status.error), (State::Starting, None));
    }

    #[test]
    fn a_start_that_fails_is_tried_again_with_backoff() {
        let now = Instant::now();
        let web = container(json!({ "image": "app:1" }));
        let p = pulled("app:1", 'a', 1);
        let store = FakeStore {
            images: vec![p.clone()],
            ..FakeStore::default()
        };
        let mut entry = Entry::default();
        let action = decide(Some(&web), &entry, now, &store).expect("lookup");
        perform(&mut entry, action, now);
        let Some(Action::Start { instance, .. }) = decide(Some(&web), &entry, now, &store) else {
            panic!("a start");
        };
        let why = "container web: user \"app\" of the image is not in the image's /etc/passwd";
        assert_eq!(
            entry.start_failed(instance.clone(), why.into(), now),
            format!("could not start: {why}, retrying in 1 s")
        );
        let status = entry.status(&name("web"), Some(&web)).expect("status");
        assert_eq!(status.state, State::Failed);
        assert_eq!(status.error.as_deref(), Some(why));
        assert_eq!(decide(Some(&web), &entry, now, &store), None);
        let action = decide(Some(&web), &entry, now + secs(1), &store).expect("retry");
        assert!(
            matches!(action, Action::Start { restart: false, .. }),
            "{action:?}"
        );
        assert_eq!(
            entry.start_failed(instance, why.into(), now),
            format!("could not start: {why}, retrying in 2 s")
        );
    }

    #[test]
    fn the_next_deadline_is_the_earliest_still_to_come() {
        let now = Instant::now();
        let web = container(json!({ "image": "app:1" }));
        let p = pulled("app:1", 'a', 1);
        let mut entry = running(&web, &p);
        assert_eq!(
            entry.next_deadline(now),
            None,
            "a running container waits for nothing"
        );
        entry.pulling(image("app:2"));
        entry.pulled(&image("app:2"), Err("nope".into()), now);
        entry.stopping(now);
        assert_eq!(
            entry.next_deadline(now),
            Some(now + secs(1)),
            "the pull retry"
        );
        assert_eq!(
            entry.next_deadline(now + secs(1)),
            Some(now + STOP_GRACE),
            "past ones are left out"
        );
        assert_eq!(entry.next_deadline(now + STOP_GRACE), None);
    }

    #[test]
    fn the_store_root_holds_the_bundles_beside_its_own_directories() {
        let run_root = std::path::Path::new(crate::RUN_ROOT);
        let below = run_root
            .strip_prefix(crate::STORE_ROOT)
            .expect("the bundles are in the store root");
        assert_eq!(below.components().count(), 1);
        let store = carapace_oci::Store::open(
            std::env::temp_dir().join(format!("carapace-reconcile-store-{}", std::process::id())),
        )
        .expect("store");
        let made: Vec<String> = std::fs::read_dir(store.root())
            .expect("store root")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(made.contains(&"layers".to_string()), "{made:?}");
        assert!(
            !made.iter().any(|d| below == std::path::Path::new(d)),
            "{below:?} clashes with the store's {made:?}"
        );
        std::fs::remove_dir_all(store.root()).ok();
    }

    #[test]
    fn every_container_of_the_settings_or_still_known_is_looked_at() {
        let desired = BTreeMap::from([(name("a"), container(json!({ "image": "x" })))]);
        let entries = BTreeMap::from([(name("b"), Entry::default())]);
        assert_eq!(
            names(&desired, &entries).into_iter().collect::<Vec<_>>(),
            [name("a"), name("b")]
        );
    }
}
