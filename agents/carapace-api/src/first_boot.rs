//! First boot: when no settings were ever committed, the node's first
//! settings come from its user data — QEMU's fw_cfg entry
//! `opt/carapace/user-data`, a TOML document mirroring the settings tree.
//! Invalid user data never bricks a node: it boots with the defaults and the
//! error is reported.

use carapace_model::{user_data, Settings};

/// Where the kernel exposes the fw_cfg entry (CONFIG_FW_CFG_SYSFS).
pub const FW_CFG_USER_DATA: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/carapace/user-data/raw";

/// The outcome of reading user data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserData {
    /// There was none: defaults.
    Absent,
    /// It was read and became the settings.
    Applied,
    /// It was refused, with why: defaults.
    Refused(String),
}

/// The first settings of a node given its user data, if any.
pub fn initial_settings(text: Option<&str>) -> (Settings, UserData) {
    match text {
        None => (Settings::default(), UserData::Absent),
        Some(text) => match user_data::settings_from_toml(text) {
            Ok(s) => (s, UserData::Applied),
            Err(e) => (Settings::default(), UserData::Refused(e.to_string())),
        },
    }
}

/// Reads the fw_cfg user data; None when there is none (or it is not UTF-8,
/// which is reported as refused by the caller via `initial_settings`).
pub fn read_fw_cfg() -> Option<String> {
    let bytes = std::fs::read(FW_CFG_USER_DATA).ok()?;
    Some(String::from_utf8(bytes).unwrap_or_else(|_| "# not UTF-8\n= invalid".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_becomes_the_first_settings() {
        let (s, outcome) = initial_settings(Some(
            "hostname = \"node-1\"\n[api]\ntoken = \"0123456789abcdef\"\n",
        ));
        assert_eq!(outcome, UserData::Applied);
        assert_eq!(s.hostname.as_str(), "node-1");
        assert!(s.api.token_sha256.is_some());
    }

    #[test]
    fn broken_user_data_gives_defaults_and_says_why() {
        let (s, outcome) = initial_settings(Some("hostname = 5\n"));
        assert_eq!(s, Settings::default());
        match outcome {
            UserData::Refused(why) => assert!(why.contains("hostname"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(
            initial_settings(None),
            (Settings::default(), UserData::Absent)
        );
    }
}
