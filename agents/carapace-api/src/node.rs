//! What the API reports about the node and how it asks for a reboot or a
//! power-off. The facts are gathered by thin readers and shaped by a pure
//! function, which reads the node's files as carapace-contract's records;
//! power requests go to PID 1 the documented way
//! ([`carapace_contract::power::signal_for`]: SIGTERM reboots, SIGUSR2
//! powers off): only carapace-init shuts a node down.

use carapace_contract::boot::Boot;
use carapace_contract::containers::{self, ContainerStatus};
use carapace_contract::network::NetworkStatus;
use carapace_contract::paths;
use carapace_contract::services::{self, Service};
use serde::Serialize;

/// A power request.
pub use carapace_contract::power::PowerAction;

/// The side effects of the API beyond settings.
pub trait NodeOps: Send + Sync {
    /// The node's status facts.
    fn status(&self) -> Status;
    /// Asks PID 1 for an orderly reboot or power-off.
    fn power(&self, action: PowerAction) -> Result<(), String>;
}

/// GET /v1/status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub version: String,
    pub roothash: String,
    /// The root slot this boot runs from (`a` or `b`), when carapace-init knows it.
    pub active_slot: Option<String>,
    pub boot_id: String,
    pub uptime_seconds: f64,
    pub var: Option<Usage>,
    /// The node's memory (/proc/meminfo): total, and available to new work.
    pub memory: Option<Memory>,
    /// Every service's state and restart count, as carapace-init publishes
    /// them in /run/carapace/services.json (an empty list if it has not yet).
    pub services: Vec<Service>,
    /// The network agent's report (/run/carapace/network.json), or null.
    pub network: Option<NetworkStatus>,
    /// Each declared container's image digest, state, restarts and last
    /// exit or error, as the container agent publishes them in
    /// /run/carapace/containers.json (an empty list if it has not yet).
    pub containers: Vec<ContainerStatus>,
    /// How remote callers reach this API.
    pub api: ApiInfo,
    /// What became of the first-boot user data.
    pub user_data: UserDataReport,
}

/// The API's own listener facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApiInfo {
    /// `0.0.0.0:8443`, or None when the TLS listener is not running.
    pub tls_listen: Option<String>,
    /// SHA-256 of the TLS certificate (DER), lowercase hex: what clients pin.
    pub certificate_sha256: Option<String>,
    /// Why the TLS listener is not running, if it is not.
    pub tls_error: Option<String>,
}

/// The outcome of the first-boot user data, kept on /var so that status
/// reports it on every later boot too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct UserDataReport {
    /// `fw_cfg` or `config-partition` (where it was found), or None.
    pub source: Option<String>,
    /// `applied`, `absent` or `refused`.
    pub outcome: String,
    /// Why it was refused.
    pub error: Option<String>,
}

/// Memory, in bytes, from /proc/meminfo (`MemTotal`, `MemAvailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

impl Memory {
    /// Reads /proc/meminfo's text; None when either line is missing.
    pub fn parse(meminfo: &str) -> Option<Memory> {
        let field = |name: &str| {
            meminfo.lines().find_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix(':')?;
                let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
                Some(kib * 1024)
            })
        };
        Some(Memory {
            total_bytes: field("MemTotal")?,
            available_bytes: field("MemAvailable")?,
        })
    }
}

/// Space on a filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// The raw contents of the files status is made from.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// /run/carapace/boot.json, written by carapace-init.
    pub boot: String,
    pub boot_id: String,
    /// /proc/uptime.
    pub uptime: String,
    pub var: Option<Usage>,
    /// /run/carapace/services.json.
    pub services: String,
    /// /run/carapace/network.json.
    pub network: String,
    /// /run/carapace/containers.json.
    pub containers: String,
    /// /proc/meminfo.
    pub meminfo: String,
}

/// Shapes the status from what the node's files say; anything missing or
/// torn reads as unknown, never as an error.
pub fn status_from(facts: &Facts, api: &ApiInfo, user_data: &UserDataReport) -> Status {
    let boot = Boot::parse(&facts.boot).unwrap_or_default();
    let uptime_seconds = facts
        .uptime
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or(0.0);
    Status {
        version: boot.version.unwrap_or_else(|| "unknown".into()),
        roothash: boot.roothash.unwrap_or_else(|| "none".into()),
        active_slot: boot.slot,
        boot_id: facts.boot_id.trim().to_string(),
        uptime_seconds,
        var: facts.var,
        memory: Memory::parse(&facts.meminfo),
        services: services::parse(&facts.services).unwrap_or_default(),
        network: NetworkStatus::parse(&facts.network).ok(),
        containers: containers::parse(&facts.containers).unwrap_or_default(),
        api: api.clone(),
        user_data: user_data.clone(),
    }
}

/// The real node, with what the daemon knows of itself.
pub struct RealNode {
    pub api: std::sync::Mutex<ApiInfo>,
    pub user_data: UserDataReport,
}

impl NodeOps for RealNode {
    fn status(&self) -> Status {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let var = rustix::fs::statvfs("/var").ok().map(|s| Usage {
            total_bytes: s.f_blocks * s.f_frsize,
            free_bytes: s.f_bavail * s.f_frsize,
        });
        let facts = Facts {
            boot: read(paths::BOOT_JSON),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            uptime: read("/proc/uptime"),
            var,
            services: read(paths::SERVICES_JSON),
            network: read(paths::NETWORK_JSON),
            containers: read(paths::CONTAINERS_JSON),
            meminfo: read("/proc/meminfo"),
        };
        let api = self.api.lock().map(|a| a.clone()).unwrap_or_default();
        status_from(&facts, &api, &self.user_data)
    }

    fn power(&self, action: PowerAction) -> Result<(), String> {
        let signal = carapace_contract::power::signal_for(action);
        let init = rustix::process::Pid::from_raw(1).ok_or("no PID 1")?;
        rustix::process::kill_process(init, signal).map_err(|e| format!("cannot signal PID 1: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_read_from_the_nodes_files() {
        let facts = Facts {
            boot: r#"{"version":"0.2.0","roothash":"abcd","slot":"b"}"#.into(),
            boot_id: "6b0e-boot\n".into(),
            uptime: "12.34 20.00\n".into(),
            var: Some(Usage {
                total_bytes: 100,
                free_bytes: 40,
            }),
            services: r#"[{"name":"api","state":"running","restarts":0}]"#.into(),
            network: r#"{"interface":"eth0","addresses":["10.0.2.15/24"]}"#.into(),
            containers: r#"[{"name":"web","state":"running","restarts":2}]"#.into(),
            meminfo:
                "MemTotal:        1000 kB\nMemFree:          500 kB\nMemAvailable:     600 kB\n"
                    .into(),
        };
        let api = ApiInfo {
            tls_listen: Some("0.0.0.0:8443".into()),
            certificate_sha256: Some("ff".repeat(32)),
            tls_error: None,
        };
        let user_data = UserDataReport {
            source: Some("fw_cfg".into()),
            outcome: "refused".into(),
            error: Some("hostname: bad".into()),
        };
        let s = status_from(&facts, &api, &user_data);
        // As the API serves it.
        let served = serde_json::to_value(&s).expect("status as JSON");
        assert_eq!(s.version, "0.2.0");
        assert_eq!(s.roothash, "abcd");
        assert_eq!(s.active_slot.as_deref(), Some("b"));
        assert_eq!(s.boot_id, "6b0e-boot");
        assert!((s.uptime_seconds - 12.34).abs() < 1e-9);
        assert_eq!(served["services"][0]["state"], "running");
        assert_eq!(served["network"]["addresses"][0], "10.0.2.15/24");
        assert_eq!(served["containers"][0]["restarts"], 2);
        assert_eq!(
            s.memory,
            Some(Memory {
                total_bytes: 1000 * 1024,
                available_bytes: 600 * 1024
            })
        );
        assert_eq!(s.api, api);
        assert_eq!(s.user_data, user_data);
        let none = status_from(
            &Facts {
                services: "{ torn".into(),
                network: "[1]".into(),
                containers: "{\"torn\"".into(),
                ..Facts::default()
            },
            &ApiInfo::default(),
            &UserDataReport::default(),
        );
        let served = serde_json::to_value(&none).expect("status as JSON");
        assert_eq!(
            served["services"],
            serde_json::json!([]),
            "a missing or torn file is no services"
        );
        assert_eq!(served["network"], serde_json::Value::Null);
        assert_eq!(served["containers"], serde_json::json!([]));
        assert_eq!(none.memory, None, "no meminfo, no memory figures");
        assert_eq!(
            (
                none.version.as_str(),
                none.roothash.as_str(),
                none.active_slot
            ),
            ("unknown", "none", None)
        );
    }
}
