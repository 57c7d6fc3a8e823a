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
//! capabilities = ["CAP_SYS_ADMIN"]   # required, may be []: all it keeps, see below
//! oom_score_adj = -900               # default 0; -1000 to 1000
//! user = 1000                        # optional numeric uid; default 0 (root)
//! group = 1000                       # optional numeric gid; default: the user's id
//! no_new_privs = false               # default true; only for a service that must
//!                                    # let its children gain privileges (crun)
//! ```
//!
//! `capabilities` is required, so that every service states what it may do:
//! the service runs with exactly these in its bounding, permitted,
//! effective, inheritable and ambient sets, with `no_new_privs`
//! ([`crate::privileges`]). Names are the kernel's, CAP_CHOWN to
//! CAP_CHECKPOINT_RESTORE.
//!
//! Parsing is pure and strict: unknown fields are refused (a typo must not
//! silently become a default), and every error names the service and the field.

use crate::privileges::{Capability, OomScoreAdj};
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
    /// Every capability the service keeps; all others are gone for good.
    pub capabilities: Vec<Capability>,
    /// The OOM killer's preference (PID 1 itself is at -1000).
    #[serde(default)]
    pub oom_score_adj: OomScoreAdj,
    /// The uid to run as; None runs as root.
    #[serde(default)]
    pub user: Option<u32>,
    /// The gid to run as (with no supplementary groups); defaults to `user`.
    #[serde(default)]
    pub group: Option<u32>,
    /// Whether no exec of the service or its children may gain privileges
    /// (set-user-ID, file capabilities). On unless the manifest says
    /// otherwise: the container agent turns it off so that a container's own
    /// `no_new_privileges: false` setting can take effect.
    #[serde(default = "default_no_new_privs")]
    pub no_new_privs: bool,
}

fn default_no_new_privs() -> bool {
    true
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
    if let Some(twice) = service
        .capabilities
        .iter()
        .enumerate()
        .find_map(|(i, c)| service.capabilities[..i].contains(c).then_some(c))
    {
        return Some(("capabilities", format!("{twice} is listed twice")));
    }
    // u32::MAX is "no change" to setresuid and setresgid.
    if service.user == Some(u32::MAX) {
        return Some(("user", format!("{} is not a uid", u32::MAX)));
    }
    if service.group == Some(u32::MAX) {
        return Some(("group", format!("{} is not a gid", u32::MAX)));
    }
    if service.group.is_some() && service.user.is_none() {
        return Some((
            "group",
            "is set without `user`: a root service keeps gid 0".into(),
        ));
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

    /// One service; `capabilities = []` unless the body says otherwise.
    fn one(body: &str) -> Result<Manifest, ManifestError> {
        let caps = if body.contains("capabilities") {
            ""
        } else {
            "capabilities = []\n"
        };
        Manifest::parse(&format!("[[service]]\n{caps}{body}\n"))
    }

    #[test]
    fn a_valid_manifest_parses_with_defaults() {
        let m = Manifest::parse(
            r#"
            [[service]]
            name = "api"
            exec = ["/usr/lib/carapace/carapace-api", "--listen", "/run/api.sock"]
            env = { RUST_LOG = "info" }
            capabilities = ["CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE"]
            oom_score_adj = -900

            [[service]]
            name = "checker-2"
            exec = ["/usr/lib/carapace/test/carapace-test-checker"]
            restart = "never"
            stop_timeout_ms = 100
            capabilities = []
            user = 65534

            [[service]]
            name = "flaky"
            exec = ["/flaky"]
            restart = "on-failure"
            capabilities = []
            user = 1000
            group = 100
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
        let names: Vec<&str> = api.capabilities.iter().map(|c| c.name()).collect();
        assert_eq!(names, ["CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE"]);
        assert_eq!(api.oom_score_adj.value(), -900);
        assert_eq!((api.user, api.group), (None, None));
        assert!(checker.capabilities.is_empty());
        assert_eq!(checker.oom_score_adj.value(), 0, "the default");
        assert_eq!((checker.user, checker.group), (Some(65534), None));
        assert_eq!((flaky.user, flaky.group), (Some(1000), Some(100)));
    }

    #[test]
    fn capabilities_must_be_listed_by_their_kernel_names() {
        let err = Manifest::parse("[[service]]\nname = \"a\"\nexec = [\"/a\"]\n")
            .expect_err("no capabilities field");
        assert!(err.to_string().contains("capabilities"), "{err}");
        let err =
            one("name = \"a\"\nexec = [\"/a\"]\ncapabilities = [\"CAP_NET_ADMIN\", \"NET_RAW\"]")
                .expect_err("no CAP_ prefix");
        assert!(matches!(err, ManifestError::Syntax(_)), "{err:?}");
        assert!(
            err.to_string().contains("unknown capability \"NET_RAW\""),
            "{err}"
        );
        let err = one("name = \"a\"\nexec = [\"/a\"]\ncapabilities = [\"CAP_FOO\"]")
            .expect_err("unknown");
        assert!(err.to_string().contains("CAP_FOO"), "{err}");
        let err = one("name = \"a\"\nexec = [\"/a\"]\ncapabilities = [\"CAP_KILL\", \"CAP_KILL\"]")
            .expect_err("twice");
        assert_eq!(err.field(), Some("capabilities"));
        assert!(
            err.to_string().contains("CAP_KILL is listed twice"),
            "{err}"
        );
        let m = one("name = \"a\"\nexec = [\"/a\"]\ncapabilities = [\"CAP_CHECKPOINT_RESTORE\", \"CAP_CHOWN\"]")
            .expect("the first and the last the kernel has");
        assert_eq!(
            crate::privileges::mask_of(&m.service[0].capabilities),
            (1 << 40) | 1
        );
    }

    #[test]
    fn oom_score_adj_user_and_group_are_checked() {
        for bad in ["-1001", "1001", "\"-900\"", "1.5"] {
            let err = one(&format!(
                "name = \"a\"\nexec = [\"/a\"]\noom_score_adj = {bad}"
            ))
            .expect_err(bad);
            assert!(
                err.to_string().contains("oom_score_adj") || err.to_string().contains(bad),
                "{err}"
            );
        }
        for good in [-1000, 0, 1000] {
            let m = one(&format!(
                "name = \"a\"\nexec = [\"/a\"]\noom_score_adj = {good}"
            ))
            .expect("in range");
            assert_eq!(i64::from(m.service[0].oom_score_adj.value()), good);
        }
        let err = one("name = \"a\"\nexec = [\"/a\"]\nuser = -1").expect_err("negative uid");
        assert!(err.to_string().contains("user"), "{err}");
        let err = one("name = \"a\"\nexec = [\"/a\"]\nuser = 4294967295").expect_err("-1");
        assert_eq!(err.field(), Some("user"));
        let err =
            one("name = \"a\"\nexec = [\"/a\"]\nuser = 1\ngroup = 4294967295").expect_err("-1");
        assert_eq!(err.field(), Some("group"));
        let err = one("name = \"a\"\nexec = [\"/a\"]\ngroup = 5").expect_err("group alone");
        assert_eq!(err.field(), Some("group"));
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
            "[[service]]\nname = \"a\"\nexec = [\"/a\"]\ncapabilities = []\n\
             [[service]]\nname = \"b\"\nexec = [\"/b\"]\ncapabilities = []\n\
             [[service]]\nname = \"a\"\nexec = [\"/c\"]\ncapabilities = []\n",
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
        for file in [
            "services.toml",
            "services-test.toml",
            "services-test-broken.toml",
            "services-test-no-nic.toml",
        ] {
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
