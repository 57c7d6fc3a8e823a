//! What the agent says about each container, published as
//! /run/carapace/containers.json: a JSON array sorted by name, written whole
//! and renamed into place (a reader never sees half of it), like PID 1's
//! services.json. The record, its words and its JSON are
//! [`carapace_contract::containers`]'s; the agent keeps one
//! [`ContainerStatus`] per container and publishes them here.

use std::path::Path;

pub use carapace_contract::containers::{parse, render, ContainerStatus, State};

/// Where the snapshot is published.
pub const PATH: &str = carapace_contract::paths::CONTAINERS_JSON;

/// Writes `text` to `path` whole: a temporary file renamed into place.
pub fn publish(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ExitReason;
    use carapace_model::containers::{ContainerName, ImageRef};
    use serde_json::{json, Value};

    fn status(name: &str, image: &str) -> ContainerStatus {
        ContainerStatus::new(
            ContainerName::try_from(name.to_string())
                .expect("name")
                .as_str(),
            ImageRef::try_from(image.to_string())
                .expect("image")
                .as_str(),
        )
    }

    #[test]
    fn a_new_container_is_pulling_with_its_image_as_given() {
        let s = status("web", "nginx:1.27");
        assert_eq!(s.state, State::Pulling);
        assert_eq!(s.image, "nginx:1.27", "not docker.io/library/nginx:1.27");
        assert_eq!(s.log, "container_web");
        assert_eq!(s.restarts, 0);
    }

    #[test]
    fn statuses_become_the_json_the_api_serves_sorted_by_name() {
        let mut web = status("web", "nginx:1.27");
        web.state = State::Restarting;
        web.image_digest = Some(format!("sha256:{}", "a".repeat(64)));
        web.restarts = 3;
        web.last_exit = Some(
            ExitReason::OutOfMemory {
                memory_max: Some(268_435_456),
            }
            .to_string(),
        );
        web.started_at_ms = Some(53_120);
        let mut db = status("db", "registry.example.org:5000/team/db");
        db.state = State::Failed;
        db.error = Some("pull registry.example.org:5000/team/db: 401 unauthorized".into());
        let text = render(&[web.clone(), db.clone()]);
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v[0]["name"], "db");
        assert_eq!(v[0]["state"], "failed");
        assert_eq!(v[0]["image"], "registry.example.org:5000/team/db");
        assert!(v[0]["error"].as_str().expect("error").contains("401"));
        assert!(v[0]["pid"].is_null());
        assert_eq!(
            v[1],
            json!({
                "name": "web", "image": "nginx:1.27",
                "image_digest": format!("sha256:{}", "a".repeat(64)),
                "state": "restarting", "pid": null, "restarts": 3,
                "last_exit": "killed by the kernel: out of memory (memory.max 268435456 bytes)",
                "error": null, "started_at_ms": 53120, "log": "container_web",
            })
        );
        assert_eq!(parse(&text).expect("parses back"), vec![db, web]);
    }

    #[test]
    fn every_state_has_its_word() {
        let words: Vec<Value> = [
            State::Pulling,
            State::Starting,
            State::Running,
            State::Restarting,
            State::Exited,
            State::Failed,
            State::Stopped,
            State::Disabled,
        ]
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
    }

    #[test]
    fn publishing_replaces_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("carapace-status-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("containers.json");
        publish(&path, &render(&[status("a", "busybox")])).expect("publish");
        publish(&path, &render(&[status("b", "busybox")])).expect("publish again");
        let back = parse(&std::fs::read_to_string(&path).expect("read")).expect("parse");
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].name, "b");
        assert!(!dir.join("containers.json.tmp").exists());
        std::fs::remove_dir_all(&dir).ok();
    }
}
