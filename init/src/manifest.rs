//! The service manifest: the declarative list of what PID 1 runs, at
//! /usr/lib/carapace/services.toml on the verified root.
//!
//! ```toml
//! [[service]]
//! name = "api"
//! exec = ["/usr/lib/carapace/carapace-api", "--listen", "/run/carapace/api.sock"]
//! restart = "always"        # or "on-failure", "never"
//! stop_timeout_ms = 5000    # grace between SIGTERM and SIGKILL
//! env = { RUST_LOG = "info" }
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;

/// When a service that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// One service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub exec: Vec<String>,
    #[serde(default)]
    pub restart: Restart,
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_ms: u64,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_stop_timeout() -> u64 {
    5000
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub service: Vec<Service>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("{0}")]
    Syntax(String),
    #[error("service #{index}: name {name:?} must be 1 to 32 characters of a-z, 0-9 and -")]
    Name { index: usize, name: String },
    #[error("service {name}: name used twice")]
    Duplicate { name: String },
    #[error("service {name}: exec must not be empty")]
    EmptyExec { name: String },
    #[error("service {name}: exec[0] {path:?} must be an absolute path")]
    RelativeExec { name: String, path: String },
    #[error("service {name}: stop_timeout_ms {value} exceeds 600000")]
    StopTimeout { name: String, value: u64 },
}

fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Manifest {
    /// Parses and validates a manifest.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest = toml::from_str(text).map_err(|e| ManifestError::Syntax(e.to_string().trim().replace('\n', " ")))?;
        let mut seen = std::collections::HashSet::new();
        for (index, s) in m.service.iter().enumerate() {
            if !valid_name(&s.name) {
                return Err(ManifestError::Name {
                    index: index + 1,
                    name: s.name.clone(),
                });
            }
            if !seen.insert(s.name.as_str()) {
                return Err(ManifestError::Duplicate { name: s.name.clone() });
            }
            let Some(first) = s.exec.first() else {
                return Err(ManifestError::EmptyExec { name: s.name.clone() });
            };
            if !first.starts_with('/') {
                return Err(ManifestError::RelativeExec {
                    name: s.name.clone(),
                    path: first.clone(),
                });
            }
            if s.stop_timeout_ms > 600_000 {
                return Err(ManifestError::StopTimeout {
                    name: s.name.clone(),
                    value: s.stop_timeout_ms,
                });
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_manifest_with_defaults() {
        let m = Manifest::parse(
            r#"
            [[service]]
            name = "api"
            exec = ["/usr/lib/carapace/api", "--x"]
            env = { A = "b" }

            [[service]]
            name = "checker"
            exec = ["/bin/checker"]
            restart = "never"
            stop_timeout_ms = 100
            "#,
        )
        .expect("valid");
        assert_eq!(m.service.len(), 2);
        assert_eq!(m.service[0].restart, Restart::Always);
        assert_eq!(m.service[0].stop_timeout_ms, 5000);
        assert_eq!(m.service[0].env.get("A").map(String::as_str), Some("b"));
        assert_eq!(m.service[1].restart, Restart::Never);
        assert_eq!(Manifest::parse("# nothing\n").expect("empty is fine").service.len(), 0);
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let err = Manifest::parse("[[service]]\nname = \"a\"\nexec = [\"/a\"]\nrestrat = \"never\"\n").expect_err("typo");
        assert!(err.to_string().contains("restrat"), "{err}");
        let err = Manifest::parse("[[service]]\nname = \"a\"\nexec = [\"/a\"]\nrestart = \"sometimes\"\n").expect_err("bad value");
        assert!(err.to_string().contains("sometimes"), "{err}");
    }

    #[test]
    fn bad_services_are_refused() {
        let dup = "[[service]]\nname = \"a\"\nexec = [\"/a\"]\n[[service]]\nname = \"a\"\nexec = [\"/b\"]\n";
        assert_eq!(Manifest::parse(dup), Err(ManifestError::Duplicate { name: "a".into() }));
        assert!(matches!(
            Manifest::parse("[[service]]\nname = \"A b\"\nexec = [\"/a\"]\n"),
            Err(ManifestError::Name { index: 1, .. })
        ));
        assert_eq!(
            Manifest::parse("[[service]]\nname = \"a\"\nexec = []\n"),
            Err(ManifestError::EmptyExec { name: "a".into() })
        );
        assert!(matches!(
            Manifest::parse("[[service]]\nname = \"a\"\nexec = [\"bin/a\"]\n"),
            Err(ManifestError::RelativeExec { .. })
        ));
        assert!(matches!(
            Manifest::parse("[[service]]\nname = \"a\"\nexec = [\"/a\"]\nstop_timeout_ms = 9999999\n"),
            Err(ManifestError::StopTimeout { .. })
        ));
    }

    #[test]
    fn the_images_manifests_are_valid() {
        for file in ["services.toml", "services-test.toml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../image").join(file);
            let text = std::fs::read_to_string(&path).expect("manifest readable");
            Manifest::parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
}
