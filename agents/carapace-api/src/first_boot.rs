//! First boot: when no settings were ever committed, the node's first
//! settings come from its user data — QEMU's fw_cfg entry
//! `opt/carapace/user-data`, or a config drive ([`crate::config_drive`]) — a
//! TOML document mirroring the settings tree, which may also bring the API's
//! TLS certificate and key. Invalid user data never bricks a node: it boots
//! with the defaults and the error is reported in status, on this boot and
//! every later one (the report is kept on /var).

use crate::node::UserDataReport;
use carapace_model::user_data::{self, TlsPair};
use carapace_model::Settings;
use std::path::Path;

/// Where the kernel exposes the fw_cfg entry (CONFIG_FW_CFG_SYSFS).
pub const FW_CFG_USER_DATA: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/carapace/user-data/raw";
/// Where the report of the first boot is kept.
pub const REPORT: &str = "/var/lib/carapace/user-data.json";

/// What the first boot starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstBoot {
    pub settings: Settings,
    pub tls: Option<TlsPair>,
    pub report: UserDataReport,
}

/// The first settings of a node given its user data, if any was found
/// (`source` says where).
pub fn from_user_data(found: Option<(&str, &[u8])>) -> FirstBoot {
    let Some((source, bytes)) = found else {
        return FirstBoot {
            settings: Settings::default(),
            tls: None,
            report: UserDataReport {
                source: None,
                outcome: "absent".into(),
                error: None,
            },
        };
    };
    let parsed = std::str::from_utf8(bytes)
        .map_err(|e| format!("user data is not UTF-8: {e}"))
        .and_then(|text| user_data::parse(text).map_err(|e| e.to_string()));
    match parsed {
        Ok(u) => FirstBoot {
            settings: u.settings,
            tls: u.tls,
            report: UserDataReport {
                source: Some(source.into()),
                outcome: "applied".into(),
                error: None,
            },
        },
        Err(why) => FirstBoot {
            settings: Settings::default(),
            tls: None,
            report: UserDataReport {
                source: Some(source.into()),
                outcome: "refused".into(),
                error: Some(why),
            },
        },
    }
}

/// Reads the fw_cfg user data, if QEMU was given any.
pub fn read_fw_cfg() -> Option<Vec<u8>> {
    std::fs::read(FW_CFG_USER_DATA).ok()
}

/// Keeps the report on /var, whole and durable.
pub fn save_report(path: &Path, report: &UserDataReport) -> Result<(), String> {
    let text = serde_json::to_string(report).map_err(|e| e.to_string())?;
    carapace_model::persist::write_file(path, text.as_bytes(), 0o644)
        .map_err(|e| format!("cannot keep {}: {e}", path.display()))
}

/// The report kept by the first boot; a node from before reports were kept,
/// or one whose report is unreadable, says so.
pub fn load_report(path: &Path) -> UserDataReport {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| UserDataReport {
            source: None,
            outcome: "unknown".into(),
            error: Some(format!("{} is unreadable: {e}", path.display())),
        }),
        Err(_) => UserDataReport {
            source: None,
            outcome: "unknown".into(),
            error: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_becomes_the_first_settings() {
        let first = from_user_data(Some((
            "fw_cfg",
            b"hostname = \"node-1\"\n[api]\ntoken = \"0123456789abcdef\"\n",
        )));
        assert_eq!(first.report.outcome, "applied");
        assert_eq!(first.report.source.as_deref(), Some("fw_cfg"));
        assert_eq!(first.settings.hostname.as_str(), "node-1");
        assert!(first.settings.api.token_hash.is_some());
        assert_eq!(first.tls, None);
    }

    #[test]
    fn broken_user_data_gives_defaults_and_says_why() {
        let first = from_user_data(Some(("config-drive", b"hostname = 5\n")));
        assert_eq!(first.settings, Settings::default());
        assert_eq!(first.report.outcome, "refused");
        let why = first.report.error.expect("a reason");
        assert!(why.contains("hostname"), "{why}");
        let binary = from_user_data(Some(("fw_cfg", &[0xff, 0xfe, 0x00])));
        assert!(binary.report.error.expect("a reason").contains("UTF-8"));
        let none = from_user_data(None);
        assert_eq!(none.settings, Settings::default());
        assert_eq!(none.report.outcome, "absent");
    }

    #[test]
    fn the_report_is_kept_across_boots() {
        let dir = std::env::temp_dir().join(format!("carapace-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("user-data.json");
        assert_eq!(load_report(&path).outcome, "unknown");
        let report = from_user_data(Some(("fw_cfg", b"colour = 1"))).report;
        save_report(&path, &report).expect("saved");
        assert_eq!(load_report(&path), report);
        std::fs::remove_dir_all(&dir).ok();
    }
}
