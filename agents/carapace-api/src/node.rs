//! What the API reports about the node and how it asks for a reboot or a
//! power-off. The facts are gathered by thin readers and shaped by a pure
//! function; power requests go to PID 1 the documented way (SIGTERM reboots,
//! SIGUSR2 powers off): only carapace-init shuts a node down.

use serde::Serialize;

/// A power request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    PowerOff,
}

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
    pub boot_id: String,
    pub uptime_seconds: f64,
    pub var: Option<Usage>,
    /// Every service's state and restart count, as carapace-init publishes
    /// them in /run/carapace/services.json (an empty list if it has not yet).
    pub services: serde_json::Value,
}

/// Space on a filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// The value of `key=` in os-release text, unquoted.
fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?;
        Some(v.trim().trim_matches('"').to_string())
    })
}

/// Shapes the status from what the node's files say.
pub fn status_from(
    os_release: &str,
    cmdline: &str,
    boot_id: &str,
    uptime: &str,
    var: Option<Usage>,
    services: &str,
) -> Status {
    let version = os_release_value(os_release, "IMAGE_VERSION")
        .or_else(|| os_release_value(os_release, "VERSION_ID"))
        .unwrap_or_else(|| "unknown".into());
    let roothash = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("roothash="))
        .unwrap_or("none")
        .to_string();
    let uptime_seconds = uptime
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or(0.0);
    let services = serde_json::from_str::<serde_json::Value>(services)
        .ok()
        .filter(serde_json::Value::is_array)
        .unwrap_or_else(|| serde_json::Value::Array(Vec::new()));
    Status {
        version,
        roothash,
        boot_id: boot_id.trim().to_string(),
        uptime_seconds,
        var,
        services,
    }
}

/// Where carapace-init publishes the services' states.
pub const SERVICES_FILE: &str = "/run/carapace/services.json";

/// The real node.
pub struct RealNode;

impl NodeOps for RealNode {
    fn status(&self) -> Status {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let var = rustix::fs::statvfs("/var").ok().map(|s| Usage {
            total_bytes: s.f_blocks * s.f_frsize,
            free_bytes: s.f_bavail * s.f_frsize,
        });
        status_from(
            &read("/usr/lib/os-release"),
            &read("/proc/cmdline"),
            &read("/proc/sys/kernel/random/boot_id"),
            &read("/proc/uptime"),
            var,
            &read(SERVICES_FILE),
        )
    }

    fn power(&self, action: PowerAction) -> Result<(), String> {
        let signal = match action {
            PowerAction::Reboot => rustix::process::Signal::TERM,
            PowerAction::PowerOff => rustix::process::Signal::USR2,
        };
        let init = rustix::process::Pid::from_raw(1).ok_or("no PID 1")?;
        rustix::process::kill_process(init, signal).map_err(|e| format!("cannot signal PID 1: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_read_from_the_nodes_files() {
        let s = status_from(
            "NAME=\"Carapace\"\nIMAGE_VERSION=\"0.2.0\"\n",
            "console=ttyS0 roothash=abcd quiet\n",
            "6b0e-boot\n",
            "12.34 20.00\n",
            Some(Usage {
                total_bytes: 100,
                free_bytes: 40,
            }),
            r#"[{"name":"api","state":"running","restarts":0}]"#,
        );
        assert_eq!(s.version, "0.2.0");
        assert_eq!(s.roothash, "abcd");
        assert_eq!(s.boot_id, "6b0e-boot");
        assert!((s.uptime_seconds - 12.34).abs() < 1e-9);
        assert_eq!(s.services[0]["state"], "running");
        let none = status_from("", "", "", "", None, "{ torn");
        assert_eq!(
            none.services,
            serde_json::json!([]),
            "a missing or torn file is no services"
        );
        assert_eq!(
            (none.version.as_str(), none.roothash.as_str()),
            ("unknown", "none")
        );
    }
}
