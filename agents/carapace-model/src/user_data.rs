//! First-boot user data: a TOML document whose tables mirror the settings
//! tree (`hostname = "node-1"`, `[api]` with `token = "…"`, `[network]`, …).
//! It becomes the first committed settings of a node.

use crate::error::SettingsError;
use crate::settings::Settings;
use crate::store::{merge_patch, prepare_patch};

/// Turns user data into settings (defaults for whatever it leaves out).
pub fn settings_from_toml(text: &str) -> Result<Settings, SettingsError> {
    let doc: toml::Value = toml::from_str(text).map_err(|e| {
        SettingsError::new("", format!("user data is not valid TOML: {}", e.message()))
    })?;
    let patch = serde_json::to_value(doc).map_err(|e| SettingsError::new("", e.to_string()))?;
    let patch = prepare_patch(patch)?;
    let mut tree = Settings::default().to_value();
    merge_patch(&mut tree, &patch);
    Settings::from_value(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_sets_hostname_token_and_network() {
        let s = settings_from_toml(
            r#"
            hostname = "node-1"
            [api]
            token = "0123456789abcdef"
            [network]
            dhcp = false
            addresses = ["10.0.2.15/24"]
            dns = ["10.0.2.3"]
            [[network.routes]]
            to = "0.0.0.0/0"
            via = "10.0.2.2"
            [sysctl]
            "net.ipv4.ip_forward" = "1"
            "#,
        )
        .expect("valid");
        assert_eq!(s.hostname.as_str(), "node-1");
        assert!(s
            .api
            .token_sha256
            .as_ref()
            .is_some_and(|h| h.matches("0123456789abcdef")));
        assert!(!s.network.dhcp);
        assert_eq!(s.network.routes.len(), 1);
        assert_eq!(
            s.sysctl.get("net.ipv4.ip_forward").map(String::as_str),
            Some("1")
        );
    }

    #[test]
    fn broken_user_data_is_an_error_with_a_path() {
        assert!(settings_from_toml("hostname = ")
            .expect_err("syntax")
            .message
            .contains("not valid TOML"));
        assert_eq!(
            settings_from_toml("hostname = 5").expect_err("type").path,
            "hostname"
        );
        assert_eq!(
            settings_from_toml("[network]\ndhcp = false\n")
                .expect_err("no address")
                .path,
            "network.addresses"
        );
        assert!(settings_from_toml("colour = \"blue\"")
            .expect_err("unknown")
            .message
            .contains("colour"));
    }

    #[test]
    fn empty_user_data_gives_defaults() {
        assert_eq!(settings_from_toml("").expect("valid"), Settings::default());
    }
}
