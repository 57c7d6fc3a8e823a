//! First-boot user data: a TOML document whose tables mirror the settings
//! tree (`hostname = "node-1"`, `[api]` with `token = "…"`, `[network]`,
//! `[containers.<name>]`, `[registries."<host>"]`, …).
//! It becomes the first committed settings of a node. Two keys of `[api]`
//! are not settings: `certificate` and `key`, the PEM certificate chain and
//! private key of the API's TLS listener, which the server keeps in files of
//! its own (a private key never appears in the settings tree).

use crate::error::SettingsError;
use crate::settings::Settings;
use crate::store::{merge_patch, prepare_patch};

/// A TLS certificate chain and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPair {
    pub certificate: String,
    pub key: String,
}

/// Everything user data gives a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserData {
    pub settings: Settings,
    pub tls: Option<TlsPair>,
}

/// Turns user data into settings (defaults for whatever it leaves out) and
/// the API's TLS identity, if it brings one.
pub fn parse(text: &str) -> Result<UserData, SettingsError> {
    let mut doc: toml::Value = toml::from_str(text).map_err(|e| {
        SettingsError::new("", format!("user data is not valid TOML: {}", e.message()))
    })?;
    let tls = take_tls(&mut doc)?;
    let settings = settings_of(doc)?;
    Ok(UserData { settings, tls })
}

/// Turns user data into settings alone.
pub fn settings_from_toml(text: &str) -> Result<Settings, SettingsError> {
    parse(text).map(|u| u.settings)
}

fn take_tls(doc: &mut toml::Value) -> Result<Option<TlsPair>, SettingsError> {
    let Some(api) = doc.get_mut("api").and_then(toml::Value::as_table_mut) else {
        return Ok(None);
    };
    let mut take = |key: &str| -> Result<Option<String>, SettingsError> {
        match api.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(pem)) if pem.contains("-----BEGIN ") => Ok(Some(pem)),
            Some(_) => Err(SettingsError::new(
                format!("api.{key}"),
                "must be a PEM text (-----BEGIN …)",
            )),
        }
    };
    match (take("certificate")?, take("key")?) {
        (None, None) => Ok(None),
        (Some(certificate), Some(key)) => Ok(Some(TlsPair { certificate, key })),
        (Some(_), None) => Err(SettingsError::new(
            "api.key",
            "api.certificate needs its private key",
        )),
        (None, Some(_)) => Err(SettingsError::new(
            "api.certificate",
            "api.key needs its certificate",
        )),
    }
}

fn settings_of(doc: toml::Value) -> Result<Settings, SettingsError> {
    let patch = serde_json::to_value(doc).map_err(|e| SettingsError::new("", e.to_string()))?;
    let patch = prepare_patch(patch)?;
    let mut tree = Settings::default().to_value_with_secrets();
    merge_patch(&mut tree, patch.value());
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
        let hash = s.api.token_hash.as_ref().expect("the token's salted hash");
        assert!(hash.verify("0123456789abcdef"));
        assert!(s.api.token_sha256.is_none());
        assert!(
            !s.to_value_with_secrets()
                .to_string()
                .contains("0123456789abcdef"),
            "the token itself is not kept"
        );
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
    fn user_data_runs_containers_and_names_registries() {
        let s = settings_from_toml(
            r#"
            [containers.web]
            image = "nginx:1.27"
            args = ["nginx", "-g", "daemon off;"]
            restart = "on-failure:5"
            memory_max = 268435456
            cpu_max = 0.5
            [containers.web.env]
            TZ = "UTC"
            [[containers.web.mounts]]
            source = "web/html"
            target = "/usr/share/nginx/html"
            read_only = true

            [containers.probe]
            image = "registry.example.org:5000/tools/probe:v1"
            host_network = true
            enabled = false
            cpu_max = 2

            [registries."registry.example.org:5000"]
            insecure = true
            username = "robot"
            password = "s3cret-token"
            "#,
        )
        .expect("valid");
        let same = crate::Settings::from_value(serde_json::json!({
            "containers": {
                "web": { "image": "nginx:1.27", "args": ["nginx", "-g", "daemon off;"],
                         "restart": "on-failure:5", "memory_max": 268435456, "cpu_max": 0.5,
                         "env": { "TZ": "UTC" },
                         "mounts": [{ "source": "web/html", "target": "/usr/share/nginx/html",
                                      "read_only": true }] },
                "probe": { "image": "registry.example.org:5000/tools/probe:v1",
                           "host_network": true, "enabled": false, "cpu_max": 2 }
            },
            "registries": { "registry.example.org:5000":
                { "insecure": true, "username": "robot", "password": "s3cret-token" } }
        }))
        .expect("valid");
        assert_eq!(s, same, "TOML user data mirrors the JSON tree");
        let web = s.containers.get("web").expect("web");
        assert_eq!(web.memory_max_file(), "268435456\n");
        assert_eq!(web.cpu_max_file(), "50000 100000\n");
        let probe = s.containers.get("probe").expect("probe");
        assert_eq!(probe.cpu_max_file(), "200000 100000\n");
        assert_eq!(probe.image.registry(), "registry.example.org:5000");
        assert_eq!(
            s.to_value_with_secrets()["containers"]["probe"]["cpu_max"],
            serde_json::json!(2),
            "a whole TOML integer stays an integer"
        );
        let registry = s
            .registries
            .get("registry.example.org:5000")
            .expect("registry");
        assert_eq!(
            registry.password.as_ref().map(|p| p.expose()),
            Some("s3cret-token")
        );
        assert_eq!(
            settings_from_toml("[containers.web]\nimage = \"nginx\"\nmemory_max = \"512M\"\n")
                .expect_err("a byte count")
                .path,
            "containers.web.memory_max"
        );
    }

    #[test]
    fn empty_user_data_gives_defaults() {
        assert_eq!(settings_from_toml("").expect("valid"), Settings::default());
    }

    #[test]
    fn a_tls_identity_is_taken_out_of_the_settings() {
        let u = parse(
            "hostname = \"n\"\n[api]\ntoken = \"0123456789abcdef\"\n\
             certificate = \"-----BEGIN CERTIFICATE-----\\nMII\\n\"\n\
             key = \"-----BEGIN PRIVATE KEY-----\\nMII\\n\"\n",
        )
        .expect("valid");
        let tls = u.tls.expect("a TLS pair");
        assert!(tls.certificate.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(tls.key.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(u.settings.api.token_hash.is_some());
        assert!(!u.settings.to_value().to_string().contains("PRIVATE KEY"));
        assert_eq!(
            parse("[api]\ncertificate = \"-----BEGIN CERTIFICATE-----\"\n")
                .expect_err("half a pair")
                .path,
            "api.key"
        );
        assert_eq!(
            parse("[api]\ncertificate = \"x\"\nkey = \"y\"\n")
                .expect_err("not PEM")
                .path,
            "api.certificate"
        );
        assert_eq!(parse("").expect("empty").tls, None);
    }
}
