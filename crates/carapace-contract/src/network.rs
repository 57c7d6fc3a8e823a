//! /run/carapace/network.json: the network agent's state, written whole
//! (a temporary file renamed into place) by carapace-net at every change.
//! Read by the API (`/v1/status` serves it as `network`) and the update
//! daemon (its health check: a configured NIC with a real address; and the
//! DNS servers it resolves the update source with).
//!
//! ```json
//! {"interface":"eth0","mac":"52:54:00:12:34:56","mode":"dhcp","state":"configured",
//!  "addresses":["10.0.2.15/24"],"gateway":"10.0.2.2","dns":["10.0.2.3"],
//!  "lease_seconds":86400,"error":null,
//!  "ntp":{"servers":["10.0.2.2"],"synced_with":"10.0.2.2","offset_ms":12.5,
//!         "last_sync_unix":1700000000,"error":null}}
//! ```
//!
//! A reader takes a missing field as the agent's state before it found a
//! NIC ([`NetworkStatus::default`]) and ignores fields it does not know;
//! the document must be a JSON object ([`NetworkStatus::parse`]).

use serde::{Deserialize, Serialize};

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
#[serde(default)]
pub struct NtpStatus {
    pub servers: Vec<String>,
    pub synced_with: Option<String>,
    pub offset_ms: Option<f64>,
    pub last_sync_unix: Option<i64>,
    pub error: Option<String>,
}

/// The whole document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
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
    /// The agent's state before it found a NIC.
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
    /// The document's text (without a newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// Reads the document's text, which must be a JSON object.
    pub fn parse(text: &str) -> Result<NetworkStatus, serde_json::Error> {
        let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)?;
        serde_json::from_value(serde_json::Value::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// As carapace-net wrote them before the record moved here (a
    /// configured NIC, the state before one is found, a failed static
    /// configuration).
    const CONFIGURED: &str = r#"{"interface":"eth0","mac":"52:54:00:12:34:56","mode":"dhcp","state":"configured","addresses":["10.0.2.15/24"],"gateway":"10.0.2.2","dns":["10.0.2.3"],"lease_seconds":86400,"error":null,"ntp":{"servers":["10.0.2.2"],"synced_with":"10.0.2.2","offset_ms":12.5,"last_sync_unix":1700000000,"error":null}}"#;
    const WAITING: &str = r#"{"interface":null,"mac":null,"mode":"dhcp","state":"waiting","addresses":[],"gateway":null,"dns":[],"lease_seconds":null,"error":null,"ntp":{"servers":[],"synced_with":null,"offset_ms":null,"last_sync_unix":null,"error":null}}"#;
    const FAILED: &str = r#"{"interface":"eth0","mac":null,"mode":"static","state":"error","addresses":["192.0.2.10/24"],"gateway":null,"dns":[],"lease_seconds":null,"error":"adding 192.0.2.10/24: File exists","ntp":{"servers":["pool.ntp.org"],"synced_with":null,"offset_ms":null,"last_sync_unix":null,"error":"no answer"}}"#;

    #[test]
    fn the_documents_carapace_net_writes_read_back_and_write_the_same() {
        for text in [CONFIGURED, WAITING, FAILED] {
            let status = NetworkStatus::parse(text).expect("parses");
            assert_eq!(status.to_json(), text);
        }
        assert_eq!(NetworkStatus::default().to_json(), WAITING);
        let failed = NetworkStatus::parse(FAILED).expect("parses");
        assert_eq!(
            (failed.mode, failed.state),
            (Mode::Static, LinkState::Error)
        );
    }

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
    fn missing_fields_read_as_the_state_before_a_nic_and_only_objects_are_documents() {
        let partial =
            NetworkStatus::parse(r#"{"interface":"eth0","addresses":["10.0.2.15/24"],"new":1}"#)
                .expect("lenient");
        assert_eq!(partial.interface.as_deref(), Some("eth0"));
        assert_eq!(partial.addresses, ["10.0.2.15/24"]);
        assert_eq!(
            (partial.mode, partial.state),
            (Mode::Dhcp, LinkState::Waiting)
        );
        assert!(NetworkStatus::parse("[]").is_err());
        assert!(NetworkStatus::parse("[1]").is_err());
        assert!(NetworkStatus::parse("{torn").is_err());
        assert!(NetworkStatus::parse(r#"{"state":"dancing"}"#).is_err());
    }
}
