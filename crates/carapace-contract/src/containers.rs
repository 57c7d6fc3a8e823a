//! /run/carapace/containers.json: what the container agent says about each
//! container, a JSON array sorted by name, written whole and renamed into
//! place at every change. Read by the API (`/v1/status` serves it as
//! `containers`) and the update daemon's health check (is every declared
//! container running steadily, or finished as its policy allows).
//!
//! ```json
//! [{"name":"web","image":"nginx:1.27","image_digest":"sha256:…",
//!   "state":"running","pid":812,"restarts":2,
//!   "last_exit":"killed by the kernel: out of memory (memory.max 268435456 bytes)",
//!   "error":null,"started_at_ms":53120,"log":"container_web"}]
//! ```
//!
//! `started_at_ms` is milliseconds since boot ([`crate::clock`]), the clock
//! of the log lines and of services.json. `pid` is the container's first
//! process as the node sees it. `log` is the name to give `carapace-ctl
//! logs` ([`crate::logs::container_log`]).
//!
//! A reader needs `name` and `state`; anything else missing reads as null,
//! 0 or empty; fields it does not know are ignored, and a state it does not
//! know is kept as its word ([`State::Other`]), so that one container in a
//! state this version does not know fails by name instead of failing the
//! whole report.

use serde::{Deserialize, Serialize};

/// Where a container is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Its image is being pulled.
    Pulling,
    /// Its bundle is being made, or crun is starting it.
    Starting,
    /// Its process runs.
    Running,
    /// It ended and starts again after the backoff delay.
    Restarting,
    /// It ended and its restart policy leaves it so.
    Exited,
    /// It cannot be run: `error` says why (a pull or a bundle that failed).
    Failed,
    /// It was stopped on purpose (removed from the settings, node shutting down).
    Stopped,
    /// `enabled` is false in its settings.
    Disabled,
    /// A state this version does not know (another version wrote it), as
    /// its word. The container agent never writes one.
    #[serde(untagged)]
    Other(String),
}

impl State {
    /// The state's word in the file: `running`, `restarting`, ….
    pub fn as_str(&self) -> &str {
        match self {
            State::Pulling => "pulling",
            State::Starting => "starting",
            State::Running => "running",
            State::Restarting => "restarting",
            State::Exited => "exited",
            State::Failed => "failed",
            State::Stopped => "stopped",
            State::Disabled => "disabled",
            State::Other(word) => word,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One container's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    /// The image reference as the settings give it.
    #[serde(default)]
    pub image: String,
    /// The manifest digest of the image that runs or was pulled, `sha256:…`.
    #[serde(default)]
    pub image_digest: Option<String>,
    pub state: State,
    #[serde(default)]
    pub pid: Option<i32>,
    /// How many times it was started again (never reset while the agent runs).
    #[serde(default)]
    pub restarts: u32,
    /// How its last run ended, in words (`exited with status 1`).
    #[serde(default)]
    pub last_exit: Option<String>,
    /// What keeps it from running, if anything.
    #[serde(default)]
    pub error: Option<String>,
    /// When its current or last run started, in ms since boot.
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    /// Its log name ([`crate::logs::container_log`]).
    #[serde(default)]
    pub log: String,
}

impl ContainerStatus {
    /// A container just taken from the settings: pulling `image` (the
    /// reference as the settings give it), nothing else known.
    pub fn new(name: &str, image: &str) -> ContainerStatus {
        ContainerStatus {
            name: name.to_string(),
            image: image.to_string(),
            image_digest: None,
            state: State::Pulling,
            pid: None,
            restarts: 0,
            last_exit: None,
            error: None,
            started_at_ms: None,
            log: crate::logs::container_log(name),
        }
    }
}

/// The file's text: the statuses sorted by name, and a newline.
pub fn render(statuses: &[ContainerStatus]) -> String {
    let mut sorted: Vec<&ContainerStatus> = statuses.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut text = serde_json::to_string(&sorted).unwrap_or_else(|_| "[]".into());
    text.push('\n');
    text
}

/// Reads the file's text.
pub fn parse(text: &str) -> Result<Vec<ContainerStatus>, serde_json::Error> {
    serde_json::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As the container agent wrote it before the record moved here.
    const WRITTEN: &str = concat!(
        r#"[{"name":"db","image":"registry.example.org:5000/team/db","image_digest":null,"state":"failed","pid":null,"restarts":0,"last_exit":null,"error":"pull registry.example.org:5000/team/db: 401 unauthorized","started_at_ms":null,"log":"container_db"},"#,
        r#"{"name":"job","image":"busybox","image_digest":null,"state":"pulling","pid":null,"restarts":0,"last_exit":null,"error":null,"started_at_ms":null,"log":"container_job"},"#,
        r#"{"name":"web","image":"nginx:1.27","image_digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","state":"running","pid":812,"restarts":2,"last_exit":"killed by the kernel: out of memory (memory.max 268435456 bytes)","error":null,"started_at_ms":53120,"log":"container_web"}]"#,
        "\n"
    );

    #[test]
    fn the_file_the_agent_writes_reads_back_and_writes_the_same() {
        let statuses = parse(WRITTEN).expect("parses");
        assert_eq!(render(&statuses), WRITTEN);
        assert_eq!(statuses[2].state, State::Running);
        assert_eq!(statuses[2].pid, Some(812));
        assert_eq!(statuses[1], ContainerStatus::new("job", "busybox"));
    }

    #[test]
    fn every_state_has_its_word() {
        let states = [
            State::Pulling,
            State::Starting,
            State::Running,
            State::Restarting,
            State::Exited,
            State::Failed,
            State::Stopped,
            State::Disabled,
        ];
        let words: Vec<serde_json::Value> = states
            .iter()
            .map(|s| serde_json::to_value(s).expect("state"))
            .collect();
        assert_eq!(
            words,
            [
                "pulling",
                "starting",
                "running",
                "restarting",
                "exited",
                "failed",
                "stopped",
                "disabled"
            ]
        );
        for s in states {
            assert_eq!(serde_json::to_value(&s).expect("word"), s.as_str());
            let back: State = serde_json::from_value(s.as_str().into()).expect("back");
            assert_eq!(back, s);
        }
    }

    #[test]
    fn a_state_this_version_does_not_know_is_kept_by_name() {
        let list =
            parse(r#"[{"name":"db","image":"x","state":"hibernating","restarts":0,"new":true}]"#)
                .expect("lenient");
        assert_eq!(list[0].state, State::Other("hibernating".into()));
        assert_eq!(list[0].state.to_string(), "hibernating");
        assert_eq!((list[0].log.as_str(), list[0].pid), ("", None));
        let shortest = parse(r#"[{"name":"web","state":"running","restarts":2}]"#).expect("short");
        assert_eq!((shortest[0].restarts, shortest[0].image.as_str()), (2, ""));
        assert!(parse("{}").is_err());
        assert!(
            parse(r#"[{"name":"web"}]"#).is_err(),
            "a container has a state"
        );
    }
}
