//! The agent's published state, /run/carapace/network.json, which the API
//! server includes in its status, and the atomic file writer used for it and
//! for resolv.conf.
//!
//! ```json
//! {"interface":"eth0","mac":"52:54:00:12:34:56","mode":"dhcp","state":"configured",
//!  "addresses":["10.0.2.15/24"],"gateway":"10.0.2.2","dns":["10.0.2.3"],
//!  "lease_seconds":86400,"error":null,
//!  "ntp":{"servers":["10.0.2.2"],"synced_with":"10.0.2.2","offset_ms":12.5,
//!         "last_sync_unix":1700000000,"error":null}}
//! ```

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where the state is published.
pub const NETWORK_JSON: &str = "/run/carapace/network.json";

/// How addresses are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Dhcp,
    Static,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Dhcp => "dhcp",
            Mode::Static => "static",
        })
    }
}

/// Where the agent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// No interface yet, or no lease yet.
    Waiting,
    Configured,
    /// Configuring failed; `error` says why.
    Error,
}

/// The NTP part.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NtpStatus {
    pub servers: Vec<String>,
    pub synced_with: Option<String>,
    pub offset_ms: Option<f64>,
    pub last_sync_unix: Option<i64>,
    pub error: Option<String>,
}

/// The whole document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub interface: Option<String>,
    pub mac: Option<String>,
    pub mode: Mode,
    pub state: LinkState,
    pub addresses: Vec<String>,
    pub gateway: Option<String>,
    pub dns: Vec<String>,
    pub lease_seconds: Option<u32>,
    pub error: Option<String>,
    pub ntp: NtpStatus,
}

impl Default for NetworkStatus {
    fn default() -> Self {
        NetworkStatus {
            interface: None,
            mac: None,
            mode: Mode::Dhcp,
            state: LinkState::Waiting,
            addresses: Vec::new(),
            gateway: None,
            dns: Vec::new(),
            lease_seconds: None,
            error: None,
            ntp: NtpStatus::default(),
        }
    }
}

impl NetworkStatus {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// Writes the document to `path` atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut text = self.to_json();
        text.push('\n');
        write_atomic(path, text.as_bytes())
    }
}

/// Writes `data` to `path` through a temporary file in the same directory
/// and a rename, creating the directory if needed, so readers see the old
/// or the new content and never a torn file.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    carapace_model::persist::write_file(path, data, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_shape_keeps_its_names() {
        let s = NetworkStatus {
            interface: Some("eth0".into()),
            mac: Some("52:54:00:12:34:56".into()),
            mode: Mode::Dhcp,
            state: LinkState::Configured,
            addresses: vec!["10.0.2.15/24".into()],
            gateway: Some("10.0.2.2".into()),
            dns: vec!["10.0.2.3".into()],
            lease_seconds: Some(86400),
            error: None,
            ntp: NtpStatus {
                servers: vec!["10.0.2.2".into()],
                synced_with: Some("10.0.2.2".into()),
                offset_ms: Some(12.5),
                last_sync_unix: Some(1_700_000_000),
                error: None,
            },
        };
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).expect("json");
        assert_eq!(
            v,
            json!({"interface":"eth0","mac":"52:54:00:12:34:56","mode":"dhcp",
                   "state":"configured","addresses":["10.0.2.15/24"],"gateway":"10.0.2.2",
                   "dns":["10.0.2.3"],"lease_seconds":86400,"error":null,
                   "ntp":{"servers":["10.0.2.2"],"synced_with":"10.0.2.2","offset_ms":12.5,
                          "last_sync_unix":1_700_000_000,"error":null}})
        );
        let waiting: serde_json::Value =
            serde_json::from_str(&NetworkStatus::default().to_json()).expect("json");
        assert_eq!(waiting["state"], "waiting");
        assert_eq!(waiting["interface"], serde_json::Value::Null);
        assert_eq!(waiting["ntp"]["synced_with"], serde_json::Value::Null);
        let static_error = NetworkStatus {
            mode: Mode::Static,
            state: LinkState::Error,
            ..NetworkStatus::default()
        };
        let v: serde_json::Value = serde_json::from_str(&static_error.to_json()).expect("json");
        assert_eq!(
            (v["mode"].as_str(), v["state"].as_str()),
            (Some("static"), Some("error"))
        );
    }

    #[test]
    fn write_replaces_the_file() {
        let dir = std::env::temp_dir().join(format!("carapace-net-status-{}", std::process::id()));
        let path = dir.join("network.json");
        NetworkStatus::default().write(&path).expect("written");
        let s = NetworkStatus {
            interface: Some("eth0".into()),
            ..NetworkStatus::default()
        };
        s.write(&path).expect("rewritten");
        let back: NetworkStatus =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("parse");
        assert_eq!(back, s);
        assert_eq!(
            std::fs::read_dir(&dir).expect("dir").count(),
            1,
            "no temp file left"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
