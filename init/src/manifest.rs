//! The service manifest: the declarative list of what PID 1 runs, at
//! [`crate::MANIFEST_PATH`] on the verified root (so it is as trusted as the
//! binaries it names).
//!
//! ```toml
//! [[service]]
//! name = "api"                       # 1–32 of a-z, 0-9, -; unique
//! exec = ["/usr/lib/carapace/carapace-api", "--listen", "/run/carapace/api.sock"]
//! restart = "always"                 # default; or "on-failure", "never"
//! stop_timeout_ms = 5000             # default; grace between SIGTERM and SIGKILL
//! env = { RUST_LOG = "info" }        # optional; added to PATH, nothing else inherited
//! ```
//!
//! Parsing is pure and strict: unknown fields are refused (a typo must not
//! silently become a default), and every error names the service and the field.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// The default grace between SIGTERM and SIGKILL at shutdown.
pub const DEFAULT_STOP_TIMEOUT_MS: u64 = 5000;
/// The longest grace a service may ask for: shutdown waits for the longest one.
pub const MAX_STOP_TIMEOUT_MS: u64 = 600_000;
/// The longest service name (it prefixes every console line of the service).
pub const MAX_NAME_LEN: usize = 32;

/// When a service that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// After any end (the default).
    #[default]
    Always,
    /// After a nonzero exit status or a signal.
    OnFailure,
    /// Never: the service runs once.
    Never,
}

impl Restart {
    /// The spelling of the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Always => "always",
            Restart::OnFailure => "on-failure",
            Restart::Never => "never",
        }
    }
}

/// One `[[service]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    /// The program (an absolute path) and its arguments.
    pub exec: Vec<String>,
    #[serde(default)]
    pub restart: Restart,
    #[serde(default = "default_stop_timeout_ms")]
    pub stop_timeout_ms: u64,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_stop_timeout_ms() -> u64 {
    DEFAULT_STOP_TIMEOUT_MS
}

impl Service {
    /// The program to run: the first element of `exec` (validated non-empty).
    pub fn program(&self) -> &str {
        self.exec.first().map(String::as_str).unwrap_or("")
    }

    /// The arguments after the program.
    pub fn args(&self) -> &[String] {
        self.exec.get(1..).unwrap_or(&[])
    }
}

/// The whole manifest, in the order services are started.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub service: Vec<Service>,
}

/// Which service an error is about: its position (from 1) and, once known,
/// its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Which {
    pub index: usize,
    pub name: String,
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "service #{} {:?}", self.index, self.name)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    /// TOML syntax, a wrong type, an unknown field or restart value: the
    /// message of the TOML parser, which names the line and the key.
    #[error("{0}")]
    Syntax(String),
    #[error("{which}: field `{field}`: {problem}")]
    Invalid {
        which: Which,
        field: &'static str,
        problem: String,
    },
}

impl ManifestError {
    /// The field an `Invalid` error is about.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ManifestError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The first problem with one service, as (field, problem).
fn check(service: &Service) -> Option<(&'static str, String)> {
    if !valid_name(&service.name) {
        return Some((
            "name",
            format!("must be 1 to {MAX_NAME_LEN} characters of a-z, 0-9 and -"),
        ));
    }
    let Some(program) = service.exec.first() else {
        return Some(("exec", "must name a program: it is empty".into()));
    };
    if !program.starts_with('/') {
        return Some((
            "exec",
            format!("the program {program:?} must be an absolute path"),
        ));
    }
    if let Some(arg) = service.exec.iter().find(|a| a.contains('\0')) {
        return Some(("exec", format!("{arg:?} contains a NUL byte")));
    }
    if service.stop_timeout_ms > MAX_STOP_TIMEOUT_MS {
        return Some((
            "stop_timeout_ms",
            format!(
                "{} is more than the {MAX_STOP_TIMEOUT_MS} ms allowed",
                service.stop_timeout_ms
            ),
        ));
    }
    for (key, value) in &service.env {
        if key.is_empty() || key.contains(['=', '\0']) {
            return Some((
                "env",
                format!("{key:?} is not a variable name (empty, or has = or NUL)"),
            ));
        }
        if value.contains('\0') {
            return Some(("env", format!("the value of {key} contains a NUL byte")));
        }
    }
    None
}

impl Manifest {
    /// Parses and validates a manifest.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| {
            // The parser's message spans several lines (a snippet of the
            // file); the console gets one.
            let message = e.to_string();
            let words: Vec<&str> = message.split_whitespace().collect();
            ManifestError::Syntax(words.join(" "))
        })?;
        for (i, service) in manifest.service.iter().enumerate() {
            let which = || Which {
                index: i + 1,
                name: service.name.clone(),
            };
            if let Some((field, problem)) = check(service) {
                return Err(ManifestError::Invalid {
                    which: which(),
                    field,
                    problem,
                });
            }
            if let Some(first) = manifest.service[..i]
                .iter()
                .position(|s| s.name == service.name)
            {
                return Err(ManifestError::Invalid {
                    which: which(),
                    field: "name",
                    problem: format!("already used by service #{}", first + 1),
                });
            }
        }
        Ok(manifest)
    }

    /// Reads and parses the manifest at `path`.
    pub fn read(path: &str) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError::Read {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        Manifest::parse(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(body: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(&format!("[[service]]\n{body}\n"))
    }

    #[test]
    fn a_valid_manifest_parses_with_defaults() {
        let m = Manifest::parse(
            r#"
            [[service]]
            name = "api"
            exec = ["/usr/lib/carapace/carapace-api", "--listen", "/run/api.sock"]
            env = { RUST_LOG = "info" }

            [[service]]
            name = "checker-2"
            exec = ["/usr/lib/carapace/test/carapace-test-checker"]
            restart = "never"
            stop_timeout_ms = 100

            [[service]]
            name = "flaky"
            exec = ["/flaky"]
            restart = "on-failure"
            "#,
        )
        .expect("valid manifest");
        let [api, checker, flaky] = &m.service[..] else {
            panic!("three services: {m:?}");
        };
        assert_eq!(api.program(), "/usr/lib/carapace/carapace-api");
        assert_eq!(api.args(), ["--listen", "/run/api.sock"]);
        assert_eq!(api.restart, Restart::Always);
        assert_eq!(api.stop_timeout_ms, DEFAULT_STOP_TIMEOUT_MS);
        assert_eq!(api.env.get("RUST_LOG").map(String::as_str), Some("info"));
        assert_eq!(checker.restart, Restart::Never);
        assert_eq!(checker.stop_timeout_ms, 100);
        assert!(checker.env.is_empty());
        assert_eq!(flaky.restart, Restart::OnFailure);
        assert_eq!(flaky.restart.as_str(), "on-failure");
    }

    #[test]
    fn an_empty_manifest_has_no_services() {
        assert_eq!(Manifest::parse("# nothing yet\n"), Ok(Manifest::default()));
        assert_eq!(Manifest::parse(""), Ok(Manifest::default()));
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let err = one("name = \"a\"\nexec = [\"/a\"]\nrestrat = \"never\"").expect_err("typo");
        assert!(matches!(err, ManifestError::Syntax(_)), "{err:?}");
        assert!(err.to_string().contains("restrat"), "{err}");
        assert!(!err.to_string().contains('\n'), "one console line: {err}");
        let err = Manifest::parse("[[services]]\nname = \"a\"\n").expect_err("top-level typo");
        assert!(err.to_string().contains("services"), "{err}");
    }

    #[test]
    fn an_unknown_restart_policy_is_refused() {
        let err = one("name = \"a\"\nexec = [\"/a\"]\nrestart = \"sometimes\"").expect_err("bad");
        assert!(err.to_string().contains("sometimes"), "{err}");
    }

    #[test]
    fn a_duplicate_name_is_refused_naming_both_services() {
        let err = Manifest::parse(
            "[[service]]\nname = \"a\"\nexec = [\"/a\"]\n\
             [[service]]\nname = \"b\"\nexec = [\"/b\"]\n\
             [[service]]\nname = \"a\"\nexec = [\"/c\"]\n",
        )
        .expect_err("duplicate");
        assert_eq!(err.field(), Some("name"));
        assert_eq!(
            err.to_string(),
            "service #3 \"a\": field `name`: already used by service #1"
        );
    }

    #[test]
    fn a_bad_name_is_refused() {
        for bad in ["", "Api", "my service", "api_server", "ä", &"x".repeat(33)] {
            let err = one(&format!("name = {bad:?}\nexec = [\"/a\"]")).expect_err(bad);
            assert_eq!(err.field(), Some("name"), "{bad:?}: {err}");
            assert!(err.to_string().starts_with("service #1 "), "{err}");
        }
        assert!(one("name = \"a-1\"\nexec = [\"/a\"]").is_ok());
        let err = one("exec = [\"/a\"]").expect_err("no name");
        assert!(err.to_string().contains("name"), "{err}");
    }

    #[test]
    fn a_relative_or_empty_exec_is_refused() {
        let err = one("name = \"a\"\nexec = [\"bin/a\", \"-x\"]").expect_err("relative");
        assert_eq!(err.field(), Some("exec"));
        assert_eq!(
            err.to_string(),
            "service #1 \"a\": field `exec`: the program \"bin/a\" must be an absolute path"
        );
        let err = one("name = \"a\"\nexec = []").expect_err("empty");
        assert_eq!(err.field(), Some("exec"));
        let err = one("name = \"a\"\nexec = \"/bin/a\"").expect_err("not an array");
        assert!(
            err.to_string().contains("exec") || err.to_string().contains("sequence"),
            "{err}"
        );
        let err = one("name = \"a\"\nexec = [\"/a\", \"x\\u0000y\"]").expect_err("NUL");
        assert_eq!(err.field(), Some("exec"));
    }

    #[test]
    fn a_bad_stop_timeout_or_env_is_refused() {
        let err =
            one("name = \"a\"\nexec = [\"/a\"]\nstop_timeout_ms = 9999999").expect_err("long");
        assert_eq!(err.field(), Some("stop_timeout_ms"));
        let err = one("name = \"a\"\nexec = [\"/a\"]\nstop_timeout_ms = -1").expect_err("negative");
        assert!(
            err.to_string().contains("stop_timeout_ms") || err.to_string().contains("-1"),
            "{err}"
        );
        let err = one("name = \"a\"\nexec = [\"/a\"]\nenv = { \"A=B\" = \"c\" }").expect_err("env");
        assert_eq!(err.field(), Some("env"));
        let err = one("name = \"a\"\nexec = [\"/a\"]\nenv = { A = 1 }").expect_err("number");
        assert!(matches!(err, ManifestError::Syntax(_)), "{err:?}");
    }

    #[test]
    fn a_missing_file_is_a_read_error_with_its_path() {
        let err = Manifest::read("/nonexistent/services.toml").expect_err("missing");
        assert!(
            err.to_string()
                .starts_with("cannot read /nonexistent/services.toml: "),
            "{err}"
        );
    }

    #[test]
    fn the_images_manifests_are_valid() {
        for file in ["services.toml", "services-test.toml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../image")
                .join(file);
            let text = std::fs::read_to_string(&path).expect("manifest readable");
            if let Err(e) = Manifest::parse(&text) {
                panic!("image/{file}: {e}");
            }
        }
    }
}
