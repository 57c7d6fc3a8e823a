//! The supervisor's view of every service, published for the API as
//! /run/carapace/services.json (written whole and renamed into place, so a
//! reader never sees half of it). This file is the one channel from PID 1 to
//! the agents; they never signal or inspect services themselves.

use crate::supervisor::{ServiceState, Status};
use serde_json::{json, Value};

/// Where the snapshot is published.
pub const PATH: &str = "/run/carapace/services.json";

/// One service as JSON: name, state, pid (when it runs), restarts, last exit.
pub fn to_json(s: &ServiceState) -> Value {
    let (state, pid) = match &s.status {
        Status::Starting => ("starting", None),
        Status::Running { pid } => ("running", Some(*pid)),
        Status::RestartPending { .. } => ("restart-pending", None),
        Status::Exited(_) => ("exited", None),
        Status::Stopping { pid } => ("stopping", Some(*pid)),
        Status::Stopped => ("stopped", None),
    };
    json!({
        "name": s.name,
        "state": state,
        "pid": pid,
        "restarts": s.restarts,
        "last_exit": s.last_exit.map(|e| e.to_string()),
        "started_at_ms": s.started_at_ms,
    })
}

/// The whole snapshot as text.
pub fn render(states: &[ServiceState]) -> String {
    Value::Array(states.iter().map(to_json).collect()).to_string()
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
