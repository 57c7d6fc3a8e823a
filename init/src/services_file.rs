//! The supervisor's view of every service, published for the API as
//! /run/carapace/services.json (written whole and renamed into place, so a
//! reader never sees half of it). This file is the one channel from PID 1 to
//! the agents; they never signal or inspect services themselves. The record
//! and its JSON are [`carapace_contract::services`]'s.

use crate::supervisor::{ServiceState, Status};
use carapace_contract::services::{self, Service, State};

/// Where the snapshot is published.
pub const PATH: &str = carapace_contract::paths::SERVICES_JSON;

/// One service's record: name, state, pid (when it runs), restarts, last exit.
pub fn record(s: &ServiceState) -> Service {
    let (state, pid) = match &s.status {
        Status::Starting => (State::Starting, None),
        Status::Running { pid } => (State::Running, Some(*pid)),
        Status::RestartPending { .. } => (State::RestartPending, None),
        Status::Exited(_) => (State::Exited, None),
        Status::Stopping { pid } => (State::Stopping, Some(*pid)),
        Status::Stopped => (State::Stopped, None),
    };
    Service {
        last_exit: s.last_exit.map(|e| e.to_string()),
        name: s.name.clone(),
        pid,
        restarts: s.restarts,
        started_at_ms: s.started_at_ms,
        state,
    }
}

/// The whole snapshot as text.
pub fn render(states: &[ServiceState]) -> String {
    services::render(&states.iter().map(record).collect::<Vec<_>>())
}

/// Writes `text` to `path` atomically; failures are reported, never fatal.
pub fn publish(path: &std::path::Path, text: &str) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    let result = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, text))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        crate::console::say(&format!("cannot publish {}: {e}", path.display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Exit;
    use serde_json::Value;

    #[test]
    fn states_become_json_the_api_can_serve() {
        let states = vec![
            ServiceState {
                name: "api".into(),
                status: Status::Running { pid: 42 },
                restarts: 0,
                last_exit: None,
                started_at_ms: Some(1900),
            },
            ServiceState {
                name: "crasher".into(),
                status: Status::RestartPending { delay_ms: 400 },
                restarts: 3,
                last_exit: Some(Exit::Code(3)),
                started_at_ms: Some(2500),
            },
        ];
        let v: Value = serde_json::from_str(&render(&states)).expect("valid JSON");
        assert_eq!(v[0]["name"], "api");
        assert_eq!(v[0]["state"], "running");
        assert_eq!(v[0]["pid"], 42);
        assert_eq!(v[1]["state"], "restart-pending");
        assert_eq!(v[1]["restarts"], 3);
        assert_eq!(v[1]["last_exit"], "exited with status 3");
        assert!(v[1]["pid"].is_null());
    }

    #[test]
    fn every_state_is_written_as_it_always_was() {
        let s = |name: &str, status, restarts, last_exit, started_at_ms| ServiceState {
            name: name.into(),
            status,
            restarts,
            last_exit,
            started_at_ms,
        };
        let states = [
            s("net", Status::Starting, 0, None, None),
            s("api", Status::Running { pid: 42 }, 0, None, Some(1900)),
            s(
                "crasher",
                Status::RestartPending { delay_ms: 400 },
                3,
                Some(Exit::Code(3)),
                Some(2500),
            ),
            s(
                "job",
                Status::Exited(Exit::Code(0)),
                0,
                Some(Exit::Code(0)),
                Some(3000),
            ),
            s(
                "bus",
                Status::Stopping { pid: 77 },
                1,
                Some(Exit::Signal(9)),
                Some(4000),
            ),
            s(
                "update",
                Status::Stopped,
                2,
                Some(Exit::Signal(15)),
                Some(5000),
            ),
        ];
        // The text of the writer before the record existed (serde_json::json!).
        let before = concat!(
            r#"[{"last_exit":null,"name":"net","pid":null,"restarts":0,"started_at_ms":null,"state":"starting"},"#,
            r#"{"last_exit":null,"name":"api","pid":42,"restarts":0,"started_at_ms":1900,"state":"running"},"#,
            r#"{"last_exit":"exited with status 3","name":"crasher","pid":null,"restarts":3,"started_at_ms":2500,"state":"restart-pending"},"#,
            r#"{"last_exit":"exited with status 0","name":"job","pid":null,"restarts":0,"started_at_ms":3000,"state":"exited"},"#,
            r#"{"last_exit":"killed by signal SIGKILL","name":"bus","pid":77,"restarts":1,"started_at_ms":4000,"state":"stopping"},"#,
            r#"{"last_exit":"killed by signal SIGTERM","name":"update","pid":null,"restarts":2,"started_at_ms":5000,"state":"stopped"}]"#,
        );
        assert_eq!(render(&states), before);
    }

    #[test]
    fn publishing_replaces_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("services-file-{}", std::process::id()));
        let path = dir.join("carapace/services.json");
        publish(&path, "[1]");
        publish(&path, "[2]");
        assert_eq!(std::fs::read_to_string(&path).expect("published"), "[2]");
        assert!(!dir.join("carapace/services.json.tmp").exists());
        std::fs::remove_dir_all(&dir).ok();
    }
}
