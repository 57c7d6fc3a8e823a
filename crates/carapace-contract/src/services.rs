//! /run/carapace/services.json: the supervisor's view of every service, a
//! JSON array in manifest order, written whole and renamed into place by
//! carapace-init (`services_file`) whenever a state changes. Read by the
//! API (`/v1/status` serves it as `services`), the update daemon's health
//! check (is every agent running, and for how long) and the test image's
//! checker (each service's pid).
//!
//! ```json
//! [{"last_exit":null,"name":"api","pid":42,"restarts":0,"started_at_ms":1900,"state":"running"}]
//! ```
//!
//! A reader needs `name` and `state`; a missing `pid`, `last_exit` or
//! `started_at_ms` reads as null and missing `restarts` as 0 (older
//! versions wrote neither restarts nor start times); fields it does not
//! know are ignored, and a state it does not know is kept as its word
//! ([`State::Other`]).

use serde::{Deserialize, Serialize};

/// Where a service is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Not started yet.
    Starting,
    /// Its process runs (`pid`).
    Running,
    /// It ended and starts again after the backoff delay.
    RestartPending,
    /// It ended and its restart policy leaves it so.
    Exited,
    /// Shutdown sent it SIGTERM; it has not ended yet (`pid`).
    Stopping,
    /// It ended during shutdown, or shutdown came while it waited to restart.
    Stopped,
    /// A state this version does not know (another version wrote it), as
    /// its word. carapace-init never writes one.
    #[serde(untagged)]
    Other(String),
}

impl State {
    /// The state's word in the file: `running`, `restart-pending`, ….
    pub fn as_str(&self) -> &str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::RestartPending => "restart-pending",
            State::Exited => "exited",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Other(word) => word,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One service. Fields in the file's order (alphabetical, the order it has
/// always had).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// How its last run ended, in words (`exited with status 1`,
    /// `killed by signal SIGKILL`), if one did.
    #[serde(default)]
    pub last_exit: Option<String>,
    /// Its name in the manifest.
    pub name: String,
    /// Its process, while it runs or is being stopped.
    #[serde(default)]
    pub pid: Option<i32>,
    /// How many times it was started again this boot (never reset).
    #[serde(default)]
    pub restarts: u32,
    /// When its current or last run started, in ms since boot
    /// ([`crate::clock`]).
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    pub state: State,
}

/// Reads the file's text.
pub fn parse(text: &str) -> Result<Vec<Service>, serde_json::Error> {
    serde_json::from_str(text)
}

/// The file's text.
pub fn render(services: &[Service]) -> String {
    serde_json::to_string(services).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every state, as carapace-init wrote the file before the record
    /// existed (through `serde_json::json!`, keys sorted).
    const WRITTEN: &str = r#"[{"last_exit":null,"name":"net","pid":null,"restarts":0,"started_at_ms":null,"state":"starting"},{"last_exit":null,"name":"api","pid":42,"restarts":0,"started_at_ms":1900,"state":"running"},{"last_exit":"exited with status 3","name":"crasher","pid":null,"restarts":3,"started_at_ms":2500,"state":"restart-pending"},{"last_exit":"exited with status 0","name":"job","pid":null,"restarts":0,"started_at_ms":3000,"state":"exited"},{"last_exit":"killed by signal SIGKILL","name":"bus","pid":77,"restarts":1,"started_at_ms":4000,"state":"stopping"},{"last_exit":"killed by signal SIGTERM","name":"update","pid":null,"restarts":2,"started_at_ms":5000,"state":"stopped"}]"#;

    #[test]
    fn the_file_carapace_init_writes_reads_back_and_writes_the_same() {
        let services = parse(WRITTEN).expect("parses");
        assert_eq!(render(&services), WRITTEN);
        let states: Vec<State> = services.iter().map(|s| s.state.clone()).collect();
        assert_eq!(
            states,
            [
                State::Starting,
                State::Running,
                State::RestartPending,
                State::Exited,
                State::Stopping,
                State::Stopped
            ]
        );
        for s in &services {
            assert_eq!(
                serde_json::to_value(&s.state).expect("word"),
                s.state.as_str()
            );
        }
        assert_eq!(services[1].pid, Some(42));
        assert_eq!(
            services[2].last_exit.as_deref(),
            Some("exited with status 3")
        );
    }

    #[test]
    fn older_shapes_and_unknown_states_are_read_as_they_are() {
        let services =
            parse(r#"[{"name":"api","state":"running"},{"name":"x","state":"backoff","new":1}]"#)
                .expect("lenient");
        assert_eq!(
            services[0],
            Service {
                last_exit: None,
                name: "api".into(),
                pid: None,
                restarts: 0,
                started_at_ms: None,
                state: State::Running,
            }
        );
        assert_eq!(services[1].state, State::Other("backoff".into()));
        assert_eq!(services[1].state.to_string(), "backoff");
        assert!(render(&services).contains(r#""state":"backoff""#));
        assert!(
            parse(r#"[{"state":"running"}]"#).is_err(),
            "a service has a name"
        );
        assert!(parse("{torn").is_err());
    }
}
