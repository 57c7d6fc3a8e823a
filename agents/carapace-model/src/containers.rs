//! The `containers` and `registries` settings: what the container agent runs
//! and where it may pull images from. Every leaf validates itself when it is
//! deserialized; `check` adds the rules that span fields (how many
//! containers, duplicate mount targets, credentials given whole).
//!
//! ```json
//! { "containers": {
//!     "web": { "image": "nginx:1.27",
//!              "command": ["/docker-entrypoint.sh"], "args": ["nginx", "-g", "daemon off;"],
//!              "env": { "TZ": "UTC" },
//!              "restart": "on-failure:5",
//!              "host_network": false,
//!              "mounts": [{ "source": "web/html", "target": "/usr/share/nginx/html", "read_only": true }],
//!              "memory_max": 268435456, "cpu_max": 0.5, "enabled": true,
//!              "capabilities_add": ["NET_RAW"], "capabilities_drop": ["SETFCAP"],
//!              "seccomp": "default", "pids_max": 1024, "no_new_privileges": true,
//!              "userns": false } },
//!   "registries": {
//!     "registry.example.org:5000": { "insecure": true, "username": "robot", "password": "…" } } }
//! ```
//!
//! Choices:
//! - `restart` is one string, Docker's own syntax: `"always"`, `"never"` or
//!   `"on-failure:<max retries>"`. A single leaf is replaced whole by a merge
//!   patch, so switching policy never leaves a stale retry limit behind (as a
//!   `max_retries` next to the policy would).
//! - `memory_max` is a byte count (an integer), exactly what cgroup v2
//!   `memory.max` takes; no K/M/G suffixes to disagree about (1000 or 1024).
//! - `cpu_max` is a number of CPUs, whole microseconds of a 100 ms period
//!   (at most 5 decimal places), from 0.01 (the kernel's 1 ms minimum quota)
//!   to 1024.
//! - Confinement is on by default and each part is loosened explicitly,
//!   per container: `capabilities_add` / `capabilities_drop` against
//!   [`DEFAULT_CAPABILITIES`] (Docker's without `NET_RAW` and `MKNOD`;
//!   names as Docker takes them, `NET_RAW` or `CAP_NET_RAW`, or `ALL`; a
//!   capability in both lists is refused), `seccomp` (`"default"` or
//!   `"unconfined"`), `pids_max` (a number, or `"max"`; [`DEFAULT_PIDS_MAX`]
//!   when absent), `no_new_privileges` (true when absent), `userns` (a
//!   user namespace of the container's own; when absent, on unless the
//!   container is on the host network). These fields are
//!   written only when they differ from the default, so a settings file
//!   stays what older versions wrote until someone loosens something (an
//!   older version keeps such a field without knowing it).
//! - A registry password must be kept as given (the agent presents it to the
//!   registry), so it is stored in the settings file (mode 0600) but left out
//!   of [`crate::Settings::to_value`], the view the API serves.

use crate::error::SettingsError;
use crate::settings::string_type;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;

/// At most this many containers.
pub const MAX_CONTAINERS: usize = 64;

/// Where mount sources live on the node.
pub const VOLUMES_DIR: &str = "/var/lib/carapace/volumes";

/// The registry of images whose reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// The cgroup v2 `cpu.max` period, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The smallest `memory_max`: 4 MiB.
pub const MIN_MEMORY_MAX: u64 = 4 * 1024 * 1024;

/// The longest string execve takes (`MAX_ARG_STRLEN` less the NUL).
const MAX_EXEC_STRING: usize = 128 * 1024 - 1;

/// One container to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    pub image: ImageRef,
    /// Replaces the image's entrypoint; None keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<ExecString>>,
    /// Replaces the image's arguments (`CMD`); None keeps them, an empty
    /// list runs the entrypoint without any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<ExecString>>,
    #[serde(default)]
    pub env: BTreeMap<EnvName, ExecString>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Share the node's network namespace instead of getting one's own.
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<MemoryMax>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<CpuMax>,
    /// A disabled container is kept in the settings but not run.
    #[serde(default = "crate::settings::yes")]
    pub enabled: bool,
    /// Capabilities given beyond the default set ([`DEFAULT_CAPABILITIES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities_add: Vec<CapabilityName>,
    /// Capabilities of the default set taken away.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities_drop: Vec<CapabilityName>,
    /// The system call filter: the default profile, or none.
    #[serde(default, skip_serializing_if = "SeccompProfile::is_default")]
    pub seccomp: SeccompProfile,
    /// The most processes and threads the container may have at once;
    /// None is [`DEFAULT_PIDS_MAX`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<PidsMax>,
    /// Whether no process of the container can gain privileges by
    /// execve (setuid binaries, file capabilities).
    #[serde(default = "crate::settings::yes", skip_serializing_if = "is_true")]
    pub no_new_privileges: bool,
    /// Whether the container runs in a user namespace of its own: its
    /// uids and gids 0–65535 are a range of the node's that no other
    /// container has, so its root is nobody on the node. None: on, unless
    /// the container is on the host network (see [`Container::user_namespace`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<bool>,
}

impl Container {
    /// Whether the container gets a user namespace: as its settings say,
    /// else yes when it has a network namespace of its own. A container on
    /// the host network is left out by default: its root would lose
    /// CAP_NET_BIND_SERVICE in the node's network namespace (no port below
    /// 1024) and the node's /sys would be bound read-only.
    pub fn user_namespace(&self) -> bool {
        self.userns.unwrap_or(!self.host_network)
    }

    /// The contents of the container's cgroup v2 `memory.max`: the byte
    /// count, or `max` without a limit (as the kernel reads it back).
    pub fn memory_max_file(&self) -> String {
        match self.memory_max {
            Some(m) => format!("{}\n", m.bytes()),
            None => "max\n".to_string(),
        }
    }

    /// The container's capability set: [`DEFAULT_CAPABILITIES`] with
    /// `capabilities_add`, less `capabilities_drop` (`ALL` in `add` is
    /// every known capability, in `drop` the whole default set), as
    /// `CAP_…` names, sorted.
    pub fn capabilities(&self) -> Vec<&'static str> {
        let all = |list: &[CapabilityName]| list.iter().any(CapabilityName::is_all);
        let mut set: BTreeSet<&'static str> = if all(&self.capabilities_drop) {
            BTreeSet::new()
        } else {
            DEFAULT_CAPABILITIES.iter().copied().collect()
        };
        if all(&self.capabilities_add) {
            set.extend(KNOWN_CAPABILITIES);
        }
        set.extend(
            self.capabilities_add
                .iter()
                .filter_map(CapabilityName::known),
        );
        for dropped in self
            .capabilities_drop
            .iter()
            .filter_map(CapabilityName::known)
        {
            set.remove(dropped);
        }
        set.into_iter().collect()
    }

    /// The container's `pids.max`: None without a limit.
    pub fn pids_limit(&self) -> Option<u64> {
        match self.pids_max {
            None => Some(DEFAULT_PIDS_MAX),
            Some(PidsMax::Limit(n)) => Some(n),
            Some(PidsMax::Unlimited) => None,
        }
    }

    /// The contents of the container's cgroup v2 `cpu.max`: `$QUOTA $PERIOD`
    /// in microseconds, quota `max` without a limit.
    pub fn cpu_max_file(&self) -> String {
        match self.cpu_max {
            Some(c) => format!("{} {CPU_PERIOD_US}\n", c.quota_us()),
            None => format!("max {CPU_PERIOD_US}\n"),
        }
    }
}

/// The capabilities a container has unless its settings say otherwise:
/// Docker's default set without `CAP_NET_RAW` and `CAP_MKNOD` (raw sockets
/// and device nodes are for the few containers that ask for them).
pub const DEFAULT_CAPABILITIES: [&str; 12] = [
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// Every capability Linux knows (6.12), as the OCI runtime spec names them.
pub const KNOWN_CAPABILITIES: [&str; 41] = [
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_PERFMON",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYSLOG",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_WAKE_ALARM",
];

/// `pids.max` of a container whose settings give none.
pub const DEFAULT_PIDS_MAX: u64 = 1024;

/// The largest `pids_max`: the kernel's own limit on process IDs.
pub const MAX_PIDS_MAX: u64 = 4_194_304;

/// A capability as the settings name it: `NET_RAW` or `CAP_NET_RAW`
/// (upper case, one of [`KNOWN_CAPABILITIES`]), or `ALL`. It serializes as
/// given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CapabilityName(String);

fn known_capability(s: &str) -> Option<&'static str> {
    let full = if s.starts_with("CAP_") {
        s.to_string()
    } else {
        format!("CAP_{s}")
    };
    KNOWN_CAPABILITIES.iter().copied().find(|c| *c == full)
}

fn check_capability_name(s: &str) -> Result<(), String> {
    if s == "ALL" || known_capability(s).is_some() {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a capability (like \"NET_RAW\" or \"CAP_NET_RAW\", upper case, or \"ALL\")"
        ))
    }
}
string_type!(CapabilityName, check_capability_name);

impl CapabilityName {
    /// Whether this is `ALL`.
    pub fn is_all(&self) -> bool {
        self.0 == "ALL"
    }

    /// The capability as the runtime spec names it (`CAP_NET_RAW`); None for `ALL`.
    pub fn known(&self) -> Option<&'static str> {
        known_capability(&self.0)
    }
}

/// The system call filter of a container. JSON: `"default"` (the default
/// profile, like Docker's) or `"unconfined"` (no filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompProfile {
    #[default]
    Default,
    Unconfined,
}

impl SeccompProfile {
    pub fn is_default(&self) -> bool {
        *self == SeccompProfile::Default
    }
}

/// A container's `pids.max`: a number from 1 to [`MAX_PIDS_MAX`], or
/// `"max"` for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidsMax {
    Limit(u64),
    Unlimited,
}

impl Serialize for PidsMax {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PidsMax::Limit(n) => s.serialize_u64(*n),
            PidsMax::Unlimited => s.serialize_str("max"),
        }
    }
}

impl<'de> Deserialize<'de> for PidsMax {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pids;
        impl Visitor<'_> for Pids {
            type Value = PidsMax;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a number of processes from 1 to {MAX_PIDS_MAX}, or \"max\" for no limit"
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PidsMax, E> {
                if (1..=MAX_PIDS_MAX).contains(&v) {
                    Ok(PidsMax::Limit(v))
                } else {
                    Err(E::invalid_value(de::Unexpected::Unsigned(v), &self))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PidsMax, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PidsMax, E> {
                if v == "max" {
                    Ok(PidsMax::Unlimited)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_any(Pids)
    }
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A container's name: 1 to 63 characters of a-z, 0-9 and `-`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerName(String);

fn check_container_name(s: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a container name (1-63 characters of a-z, 0-9 and '-', starting with a letter)"
        ))
    }
}
string_type!(ContainerName, check_container_name);

impl Borrow<str> for ContainerName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// An OCI image reference, `[registry[:port]/]repository[:tag][@sha256:<hex>]`,
/// with Docker's defaults made explicit: no registry is `docker.io`, a
/// one-component repository on `docker.io` is under `library/`, and no tag
/// and no digest is tag `latest`. It serializes back as it was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
    given: String,
}

impl ImageRef {
    /// The registry host, with its port if one was given (`docker.io`,
    /// `registry.example.org:5000`): the key of its [`Registry`] settings.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path (`library/nginx`, `team/app`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag; `latest` when neither a tag nor a digest was given, None
    /// when only a digest was.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, `sha256:<64 hex>`, if one was given. It wins over the
    /// tag when pulling.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The reference as the user gave it.
    pub fn as_str(&self) -> &str {
        &self.given
    }

    /// The reference with every default spelled out:
    /// `docker.io/library/nginx:latest`.
    pub fn canonical(&self) -> String {
        let mut s = format!("{}/{}", self.registry, self.repository);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// What the registry API calls the manifest: the digest if there is
    /// one, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.given)
    }
}

impl From<ImageRef> for String {
    fn from(i: ImageRef) -> String {
        i.given
    }
}

impl TryFrom<String> for ImageRef {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_image_ref(&s).map_err(|why| format!("{s:?} is not an image reference: {why}"))
    }
}

fn parse_image_ref(s: &str) -> Result<ImageRef, String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => {
            check_digest(digest)?;
            (rest, Some(digest.to_string()))
        }
        None => (s, None),
    };
    // A tag follows the last ':' after the last '/' (a ':' before it is a port).
    let last_slash = rest.rfind('/');
    let (name, tag) = match rest.rfind(':') {
        Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
            let tag = &rest[colon + 1..];
            check_tag(tag)?;
            (&rest[..colon], Some(tag.to_string()))
        }
        _ => (rest, None),
    };
    if name.len() > 255 {
        return Err("the name is longer than 255 characters".into());
    }
    let (registry, path) = match name.split_once('/') {
        Some((first, path))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            check_registry_host(first)?;
            (Some(first), path)
        }
        _ => (None, name),
    };
    check_repository(path)?;
    if registry.is_none() && path.len() == 64 && is_lower_hex(path) {
        return Err("a 64-hex-digit name without a registry reads as an image ID".into());
    }
    let registry = registry.unwrap_or(DEFAULT_REGISTRY);
    let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    let tag = match (tag, &digest) {
        (None, None) => Some("latest".to_string()),
        (tag, _) => tag,
    };
    Ok(ImageRef {
        registry: registry.to_string(),
        repository,
        tag,
        digest,
        given: s.to_string(),
    })
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_digest(d: &str) -> Result<(), String> {
    match d.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && is_lower_hex(hex) => Ok(()),
        Some(("sha256", hex)) => Err(format!(
            "digest sha256:{hex} is not 64 lowercase hex digits"
        )),
        Some((algorithm, _)) => Err(format!(
            "digest algorithm {algorithm:?} is not accepted (only sha256)"
        )),
        None => Err(format!("digest {d:?} is not sha256:<64 hex digits>")),
    }
}

fn check_tag(t: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = (1..=128).contains(&t.len())
        && t.bytes().next().is_some_and(word)
        && t.bytes().all(|b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {t:?} is not 1-128 characters of A-Z, a-z, 0-9, '_', '.' and '-' starting with neither '.' nor '-'"
        ))
    }
}

/// A repository path: components of lowercase letters and digits, joined
/// inside a component by `.`, `_`, `__` or a run of `-` (the OCI
/// distribution grammar).
fn check_repository(path: &str) -> Result<(), String> {
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return false;
        }
        // Every run of non-alphanumerics must be one separator.
        c.split(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            .all(|sep| {
                sep.is_empty()
                    || sep == "."
                    || sep == "_"
                    || sep == "__"
                    || sep.bytes().all(|x| x == b'-')
            })
    };
    match path.split('/').find(|c| !component_ok(c)) {
        None => Ok(()),
        Some(bad) => Err(format!(
            "repository component {bad:?} is not lowercase letters and digits joined by '.', '_', '__' or '-'"
        )),
    }
}

/// Checks a registry host as it appears in an image reference and as a key
/// of `registries`: a lowercase DNS name, an IPv4 address or a bracketed
/// IPv6 address, with an optional port.
fn check_registry_host(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("registry {s:?} is not host[:port]: {why}"));
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return bad("'[' without ']'");
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return bad("not an IPv6 address in brackets");
        }
        match after {
            "" => (None, None),
            p => match p.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return bad("junk after ']'"),
            },
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(s), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if host.len() > 253 || !host.split('.').all(label_ok) {
            return bad("the host is not a lowercase DNS name or an address");
        }
    }
    if let Some(port) = port {
        let ok = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !ok {
            return bad("the port is not 1-65535");
        }
    }
    Ok(())
}

/// A string handed to execve (an argument, an environment value): no NUL,
/// at most 128 KiB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExecString(String);

fn check_exec_string(s: &str) -> Result<(), String> {
    if s.contains('\0') {
        Err("contains a NUL character".into())
    } else if s.len() > MAX_EXEC_STRING {
        Err(format!("longer than {MAX_EXEC_STRING} bytes"))
    } else {
        Ok(())
    }
}
string_type!(ExecString, check_exec_string);

/// An environment variable's name: `[A-Za-z_][A-Za-z0-9_]*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EnvName(String);

fn check_env_name(s: &str) -> Result<(), String> {
    let ok = s
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && s.len() <= 255
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*, at most 255)"
        ))
    }
}
string_type!(EnvName, check_env_name);

impl Borrow<str> for EnvName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// When a container that stopped is started again. JSON: `"always"`,
/// `"never"` or `"on-failure:<max retries>"` (retries at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RestartPolicy {
    /// Whatever the exit status.
    #[default]
    Always,
    Never,
    /// Only after a failure (non-zero exit or killed by a signal), at most
    /// `max_retries` times in a row.
    OnFailure {
        max_retries: u32,
    },
}

impl RestartPolicy {
    /// Whether a container that just exited is to be started again, given
    /// how it exited and how many times it has been restarted since it last
    /// ran successfully.
    pub fn restarts(&self, exited_successfully: bool, restarts_so_far: u32) -> bool {
        match *self {
            RestartPolicy::Always => true,
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure { max_retries } => {
                !exited_successfully && restarts_so_far < max_retries
            }
        }
    }
}

impl TryFrom<String> for RestartPolicy {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "always" => return Ok(RestartPolicy::Always),
            "never" => return Ok(RestartPolicy::Never),
            "on-failure" => {
                return Err("\"on-failure\" needs its retry limit, like \"on-failure:5\"".into())
            }
            _ => {}
        }
        match s.strip_prefix("on-failure:").map(str::parse::<u32>) {
            Some(Ok(0)) => Err("\"on-failure:0\" never restarts; say \"never\"".into()),
            Some(Ok(max_retries)) => Ok(RestartPolicy::OnFailure { max_retries }),
            Some(Err(_)) => Err(format!(
                "{s:?}: the retry limit is not an integer from 1 to {}",
                u32::MAX
            )),
            None => Err(format!(
                "{s:?} is not a restart policy (\"always\", \"never\" or \"on-failure:<max retries>\")"
            )),
        }
    }
}

impl From<RestartPolicy> for String {
    fn from(p: RestartPolicy) -> String {
        match p {
            RestartPolicy::Always => "always".into(),
            RestartPolicy::Never => "never".into(),
            RestartPolicy::OnFailure { max_retries } => format!("on-failure:{max_retries}"),
        }
    }
}

/// A volume bound into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub source: VolumePath,
    pub target: ContainerPath,
    #[serde(default)]
    pub read_only: bool,
}

/// A path relative to [`VOLUMES_DIR`]: no leading `/`, no empty, `.` or
/// `..` components.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VolumePath(String);

fn check_components(s: &str) -> Result<(), String> {
    if s.contains('\0') {
        return Err(format!("{s:?} contains a NUL character"));
    }
    if s.len() > 1024 {
        return Err(format!("{s:?} is longer than 1024 bytes"));
    }
    match s
        .split('/')
        .find(|c| c.is_empty() || *c == "." || *c == "..")
    {
        Some(c) => Err(format!(
            "{s:?} has a {} component",
            if c.is_empty() { "empty" } else { c }
        )),
        None => Ok(()),
    }
}

fn check_volume_path(s: &str) -> Result<(), String> {
    if s.starts_with('/') {
        return Err(format!(
            "{s:?} must be relative to {VOLUMES_DIR} (no leading '/')"
        ));
    }
    check_components(s)
}
string_type!(VolumePath, check_volume_path);

impl VolumePath {
    /// The directory on the node: `/var/lib/carapace/volumes/<source>`.
    pub fn host_path(&self) -> PathBuf {
        PathBuf::from(VOLUMES_DIR).join(&self.0)
    }
}

/// An absolute path inside a container, not `/` itself, no empty, `.` or
/// `..` components.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerPath(String);

fn check_container_path(s: &str) -> Result<(), String> {
    match s.strip_prefix('/') {
        None => Err(format!("{s:?} is not an absolute path")),
        Some("") => Err("a volume cannot be mounted over the container's root".into()),
        Some(rest) => check_components(rest),
    }
}
string_type!(ContainerPath, check_container_path);

/// A memory limit in bytes, at least 4 MiB (JSON: an integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemoryMax(u64);

impl MemoryMax {
    pub fn new(bytes: u64) -> Result<MemoryMax, String> {
        if bytes < MIN_MEMORY_MAX {
            Err(format!(
                "{bytes} bytes is below the minimum of {MIN_MEMORY_MAX} (4 MiB)"
            ))
        } else {
            Ok(MemoryMax(bytes))
        }
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl Serialize for MemoryMax {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for MemoryMax {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl Visitor<'_> for Bytes {
            type Value = MemoryMax;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a byte count: an integer of at least {MIN_MEMORY_MAX} (4 MiB)"
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MemoryMax, E> {
                MemoryMax::new(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MemoryMax, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
        }
        d.deserialize_u64(Bytes)
    }
}

/// A CPU limit as a number of CPUs, from 0.01 to 1024 in whole
/// microseconds of the [`CPU_PERIOD_US`] period (JSON: a number, `0.5`, `2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuMax {
    quota_us: u64,
}

impl CpuMax {
    /// The smallest quota the kernel takes: 1 ms.
    const MIN_QUOTA_US: u64 = 1_000;
    const MAX_CPUS: u64 = 1024;

    pub fn from_cpus(cpus: f64) -> Result<CpuMax, String> {
        let max = Self::MAX_CPUS as f64;
        if !cpus.is_finite() || !(0.01..=max).contains(&cpus) {
            return Err(format!("{cpus} CPUs is not from 0.01 to {max}"));
        }
        let quota = cpus * CPU_PERIOD_US as f64;
        if (quota - quota.round()).abs() > 1e-6 {
            return Err(format!(
                "{cpus} CPUs has more than 5 decimal places (whole microseconds of a {CPU_PERIOD_US} µs period)"
            ));
        }
        // In range by the checks above: 1_000 ..= 102_400_000.
        let quota_us = quota.round() as u64;
        debug_assert!(quota_us >= Self::MIN_QUOTA_US);
        Ok(CpuMax { quota_us })
    }

    /// The quota per [`CPU_PERIOD_US`], in microseconds.
    pub fn quota_us(self) -> u64 {
        self.quota_us
    }

    /// The number of CPUs.
    pub fn cpus(self) -> f64 {
        self.quota_us as f64 / CPU_PERIOD_US as f64
    }
}

impl Serialize for CpuMax {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.quota_us.is_multiple_of(CPU_PERIOD_US) {
            s.serialize_u64(self.quota_us / CPU_PERIOD_US)
        } else {
            s.serialize_f64(self.cpus())
        }
    }
}

impl<'de> Deserialize<'de> for CpuMax {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Cpus;
        impl Visitor<'_> for Cpus {
            type Value = CpuMax;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of CPUs from 0.01 to 1024, like 0.5")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<CpuMax, E> {
                CpuMax::from_cpus(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CpuMax, E> {
                if v > CpuMax::MAX_CPUS {
                    return Err(E::custom(format!(
                        "{v} CPUs is not from 0.01 to {}",
                        CpuMax::MAX_CPUS
                    )));
                }
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CpuMax, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
        }
        d.deserialize_f64(Cpus)
    }
}

/// A registry host as a key of `registries`: `host[:port]`, exactly as
/// image references name it ([`ImageRef::registry`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RegistryHost(String);
string_type!(RegistryHost, check_registry_host);

impl Borrow<str> for RegistryHost {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// How to reach one registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Plain HTTP (no TLS) is allowed.
    #[serde(default)]
    pub insecure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<RegistryUsername>,
    /// Kept in the settings file, never served back by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<RegistryPassword>,
}

/// A registry user name: 1 to 256 printable characters, no ':'.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RegistryUsername(String);

fn check_registry_username(s: &str) -> Result<(), String> {
    if (1..=256).contains(&s.len()) && !s.contains(':') && !s.chars().any(char::is_control) {
        Ok(())
    } else {
        Err("a user name is 1 to 256 characters without ':' or control characters".into())
    }
}
string_type!(RegistryUsername, check_registry_username);

/// A registry password or token: 1 to 8192 characters, no control
/// characters. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RegistryPassword(String);

impl RegistryPassword {
    /// The password itself, to present to the registry.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RegistryPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RegistryPassword(…)")
    }
}

impl TryFrom<String> for RegistryPassword {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if (1..=8192).contains(&s.len()) && !s.chars().any(char::is_control) {
            Ok(RegistryPassword(s))
        } else {
            Err("a password is 1 to 8192 characters without control characters".into())
        }
    }
}

impl From<RegistryPassword> for String {
    fn from(p: RegistryPassword) -> String {
        p.0
    }
}

/// The rules that span fields, each refused with the path of the field at fault.
pub(crate) fn check(
    containers: &BTreeMap<ContainerName, Container>,
    registries: &BTreeMap<RegistryHost, Registry>,
) -> Result<(), SettingsError> {
    if containers.len() > MAX_CONTAINERS {
        return Err(SettingsError::new(
            "containers",
            format!(
                "at most {MAX_CONTAINERS} containers ({} given)",
                containers.len()
            ),
        ));
    }
    for (name, c) in containers {
        match c.command.as_deref() {
            Some([]) => {
                return Err(SettingsError::new(
                    format!("containers.{name}.command"),
                    "an empty command runs nothing; leave it out to keep the image's entrypoint",
                ))
            }
            Some([program, ..]) if program.as_str().is_empty() => {
                return Err(SettingsError::new(
                    format!("containers.{name}.command[0]"),
                    "the program to run is an empty string",
                ))
            }
            _ => {}
        }
        for (i, dropped) in c.capabilities_drop.iter().enumerate() {
            let both = c
                .capabilities_add
                .iter()
                .any(|added| added.known().is_some() && added.known() == dropped.known());
            if both {
                return Err(SettingsError::new(
                    format!("containers.{name}.capabilities_drop[{i}]"),
                    format!("{dropped} is also in capabilities_add: say it once"),
                ));
            }
        }
        let mut targets = BTreeSet::new();
        for (i, m) in c.mounts.iter().enumerate() {
            if !targets.insert(m.target.as_str()) {
                return Err(SettingsError::new(
                    format!("containers.{name}.mounts[{i}].target"),
                    format!("{} is already a mount target", m.target),
                ));
            }
        }
    }
    for (host, r) in registries {
        match (&r.username, &r.password) {
            (Some(_), None) => {
                return Err(SettingsError::new(
                    format!("registries.{host}.password"),
                    "a user name needs its password",
                ))
            }
            (None, Some(_)) => {
                return Err(SettingsError::new(
                    format!("registries.{host}.username"),
                    "a password needs its user name",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Leaves the registry passwords out of a settings tree as JSON: the view
/// the API serves.
pub(crate) fn redact_secrets(tree: &mut serde_json::Value) {
    if let Some(serde_json::Value::Object(registries)) = tree.get_mut("registries") {
        for registry in registries.values_mut() {
            if let serde_json::Value::Object(r) = registry {
                r.remove("password");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(s: &str) -> ImageRef {
        ImageRef::try_from(s.to_string()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn bad_image(s: &str) -> String {
        ImageRef::try_from(s.to_string()).expect_err(s)
    }

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn image_refs_spell_out_docker_defaults() {
        let i = image("nginx");
        assert_eq!(
            (i.registry(), i.repository(), i.tag(), i.digest()),
            ("docker.io", "library/nginx", Some("latest"), None)
        );
        assert_eq!(i.canonical(), "docker.io/library/nginx:latest");
        assert_eq!(i.as_str(), "nginx");

        let i = image("docker.io/nginx:1.27");
        assert_eq!(i.repository(), "library/nginx");
        assert_eq!(i.tag(), Some("1.27"));

        let i = image("team/app:v2");
        assert_eq!(
            (i.registry(), i.repository(), i.tag()),
            ("docker.io", "team/app", Some("v2"))
        );

        let i = image("registry.example.org:5000/team/app");
        assert_eq!(
            (i.registry(), i.repository(), i.tag()),
            ("registry.example.org:5000", "team/app", Some("latest"))
        );
        assert_eq!(
            i.canonical(),
            "registry.example.org:5000/team/app:latest",
            "only docker.io gets library/"
        );

        let i = image("localhost/app");
        assert_eq!((i.registry(), i.repository()), ("localhost", "app"));

        let i = image(&format!("ghcr.io/o/a@sha256:{HEX}"));
        assert_eq!(i.tag(), None, "a digest alone means no tag");
        assert_eq!(i.digest(), Some(format!("sha256:{HEX}").as_str()));
        assert_eq!(i.manifest_reference(), format!("sha256:{HEX}"));

        let i = image(&format!(
            "[fd00::1]:5000/a.b__c-d--e_f:V1.0-rc_1@sha256:{HEX}"
        ));
        assert_eq!(i.registry(), "[fd00::1]:5000");
        assert_eq!(i.repository(), "a.b__c-d--e_f");
        assert_eq!(i.tag(), Some("V1.0-rc_1"));
        assert!(i.digest().is_some());
        assert_eq!(i.manifest_reference(), format!("sha256:{HEX}"));

        let i = image("10.0.2.2:5000/app:1");
        assert_eq!(
            (i.registry(), i.manifest_reference()),
            ("10.0.2.2:5000", "1")
        );
    }

    #[test]
    fn bad_image_refs_are_refused_saying_why() {
        assert!(bad_image("").contains("empty"));
        assert!(bad_image("Nginx").contains("component \"Nginx\""));
        assert!(bad_image("team//app").contains("component \"\""));
        assert!(bad_image("-app").contains("component"));
        assert!(bad_image("app-").contains("component"));
        assert!(bad_image("a...b").contains("component"));
        assert!(bad_image("a___b").contains("component"));
        assert!(bad_image("app:").contains("tag"));
        assert!(bad_image("app:.x").contains("tag"));
        assert!(bad_image(&format!("app:{}", "x".repeat(129))).contains("tag"));
        assert!(
            bad_image("app:a/b").contains("port"),
            "a ':' before a '/' is a port"
        );
        assert!(bad_image("app@sha512:abcd").contains("only sha256"));
        assert!(
            bad_image(&format!("app@sha256:{}", HEX.to_uppercase())).contains("64 lowercase hex")
        );
        assert!(bad_image("app@sha256:abc").contains("64 lowercase hex"));
        assert!(bad_image("app@latest").contains("sha256:<64 hex"));
        assert!(bad_image("registry.example.org:99999/app").contains("port"));
        assert!(bad_image("Registry.example.org/app").contains("lowercase DNS name"));
        assert!(bad_image("[fd00::zz]/app").contains("IPv6"));
        assert!(bad_image(HEX).contains("image ID"));
        assert!(bad_image(&format!("r.io/{}", "a".repeat(252))).contains("255"));
        assert_eq!(
            image(&format!("r.io/{HEX}")).repository(),
            HEX,
            "with a registry a hex name is a name"
        );
    }

    #[test]
    fn image_refs_serialize_as_given() {
        let i = image("nginx:1.27");
        assert_eq!(serde_json::to_value(&i).expect("json"), "nginx:1.27");
        assert_eq!(i.to_string(), "nginx:1.27");
    }

    #[test]
    fn restart_policies() {
        let p = |s: &str| RestartPolicy::try_from(s.to_string());
        assert_eq!(p("always"), Ok(RestartPolicy::Always));
        assert_eq!(p("never"), Ok(RestartPolicy::Never));
        assert_eq!(
            p("on-failure:5"),
            Ok(RestartPolicy::OnFailure { max_retries: 5 })
        );
        assert!(p("on-failure").expect_err("limit").contains("on-failure:5"));
        assert!(p("on-failure:0").expect_err("zero").contains("never"));
        assert!(p("on-failure:-1")
            .expect_err("negative")
            .contains("integer"));
        assert!(p("on-failure:x").is_err());
        assert!(p("Always")
            .expect_err("case")
            .contains("not a restart policy"));
        assert_eq!(RestartPolicy::default(), RestartPolicy::Always);
        assert_eq!(
            String::from(RestartPolicy::OnFailure { max_retries: 3 }),
            "on-failure:3"
        );

        let on_failure = RestartPolicy::OnFailure { max_retries: 2 };
        assert!(on_failure.restarts(false, 0));
        assert!(on_failure.restarts(false, 1));
        assert!(!on_failure.restarts(false, 2), "the limit is reached");
        assert!(!on_failure.restarts(true, 0), "success is not a failure");
        assert!(RestartPolicy::Always.restarts(true, 1000));
        assert!(!RestartPolicy::Never.restarts(false, 0));
    }

    #[test]
    fn mount_paths() {
        let v = |s: &str| VolumePath::try_from(s.to_string());
        let t = |s: &str| ContainerPath::try_from(s.to_string());
        assert_eq!(
            v("web/html").expect("valid").host_path(),
            PathBuf::from("/var/lib/carapace/volumes/web/html")
        );
        assert!(v("/etc").expect_err("absolute").contains("relative"));
        assert!(v("../etc").expect_err("up").contains(".."));
        assert!(v("a/../../etc").expect_err("up").contains(".."));
        assert!(v("a/./b").is_err());
        assert!(v("a//b").expect_err("empty").contains("empty"));
        assert!(v("").is_err());
        assert!(v("a\0b").is_err());
        assert!(t("/usr/share/html").is_ok());
        assert!(t("data").expect_err("relative").contains("absolute"));
        assert!(t("/").expect_err("root").contains("root"));
        assert!(t("/a/../b").is_err());
        assert!(t("/a/").is_err());
    }

    #[test]
    fn names_and_exec_strings() {
        let n = |s: &str| ContainerName::try_from(s.to_string());
        assert!(n("web-1").is_ok());
        assert!(n(&"a".repeat(63)).is_ok());
        assert!(n(&"a".repeat(64)).is_err());
        assert!(n("1web").is_err());
        assert!(n("-web").is_err());
        assert!(n("Web").is_err());
        assert!(n("web_1").is_err());
        assert!(n("").is_err());
        let e = |s: &str| EnvName::try_from(s.to_string());
        assert!(e("PATH").is_ok() && e("_x1").is_ok());
        assert!(e("1X").is_err() && e("A-B").is_err() && e("").is_err() && e("A=B").is_err());
        let x = |s: &str| ExecString::try_from(s.to_string());
        assert!(x("").is_ok() && x("daemon off;").is_ok());
        assert!(x("a\0b").expect_err("nul").contains("NUL"));
        assert!(x(&"a".repeat(MAX_EXEC_STRING + 1)).is_err());
    }

    #[test]
    fn limits_render_as_cgroup_files() {
        let mut c: Container =
            serde_json::from_value(serde_json::json!({ "image": "nginx" })).expect("valid");
        assert_eq!(c.memory_max_file(), "max\n");
        assert_eq!(c.cpu_max_file(), "max 100000\n");
        c.memory_max = Some(MemoryMax::new(268_435_456).expect("valid"));
        c.cpu_max = Some(CpuMax::from_cpus(0.5).expect("valid"));
        assert_eq!(c.memory_max_file(), "268435456\n");
        assert_eq!(c.cpu_max_file(), "50000 100000\n");
        c.cpu_max = Some(CpuMax::from_cpus(2.0).expect("valid"));
        assert_eq!(c.cpu_max_file(), "200000 100000\n");
        c.cpu_max = Some(CpuMax::from_cpus(0.01).expect("the kernel's minimum"));
        assert_eq!(c.cpu_max_file(), "1000 100000\n");
        c.cpu_max = Some(CpuMax::from_cpus(1024.0).expect("the most"));
        assert_eq!(c.cpu_max_file(), "102400000 100000\n");
        assert_eq!(
            CpuMax::from_cpus(0.29)
                .expect("float noise is rounded")
                .quota_us(),
            29_000
        );
        assert!(CpuMax::from_cpus(0.009).is_err());
        assert!(CpuMax::from_cpus(1024.5).is_err());
        assert!(CpuMax::from_cpus(f64::NAN).is_err());
        assert!(CpuMax::from_cpus(0.123456)
            .expect_err("too precise")
            .contains("5 decimal places"));
        assert!(MemoryMax::new(MIN_MEMORY_MAX - 1).is_err());
        assert_eq!(
            MemoryMax::new(MIN_MEMORY_MAX).map(MemoryMax::bytes),
            Ok(4_194_304)
        );
    }

    #[test]
    fn cpu_max_serializes_as_the_number_given() {
        for v in [
            serde_json::json!(0.5),
            serde_json::json!(2),
            serde_json::json!(0.12345),
        ] {
            let c: CpuMax = serde_json::from_value(v.clone()).expect("valid");
            assert_eq!(serde_json::to_value(c).expect("json"), v);
        }
    }

    #[test]
    fn registry_passwords_do_not_show_in_debug() {
        let p = RegistryPassword::try_from("hunter2-secret".to_string()).expect("valid");
        assert_eq!(p.expose(), "hunter2-secret");
        assert!(!format!("{p:?}").contains("hunter2"));
        assert!(RegistryPassword::try_from(String::new()).is_err());
        assert!(RegistryPassword::try_from("a\nb".to_string()).is_err());
        assert!(RegistryUsername::try_from("a:b".to_string()).is_err());
        let h = |s: &str| RegistryHost::try_from(s.to_string());
        assert!(h("docker.io").is_ok() && h("localhost:5000").is_ok() && h("[::1]:443").is_ok());
        assert!(h("Docker.io").is_err() && h("host:").is_err() && h("a..b").is_err());
    }

    // The tree as the API and the store see it.

    use crate::settings::{Area, Settings};
    use crate::store::Store;
    use serde_json::{json, Value};

    fn refused(v: Value) -> SettingsError {
        Settings::from_value(v).expect_err("must be refused")
    }

    fn web(fields: Value) -> Value {
        let mut c = json!({ "image": "nginx" });
        crate::store::merge_patch(&mut c, &fields);
        json!({ "containers": { "web": c } })
    }

    #[test]
    fn a_container_gets_its_defaults() {
        let s = Settings::from_value(web(json!({}))).expect("valid");
        let c = s.containers.get("web").expect("web");
        assert_eq!(c.image.canonical(), "docker.io/library/nginx:latest");
        assert_eq!(c.command, None);
        assert_eq!(c.args, None);
        assert!(c.env.is_empty() && c.mounts.is_empty());
        assert_eq!(c.restart, RestartPolicy::Always);
        assert!(!c.host_network);
        assert!(c.enabled);
        assert_eq!((c.memory_max, c.cpu_max), (None, None));
        assert_eq!(
            s.to_value()["containers"]["web"],
            json!({ "image": "nginx", "env": {}, "restart": "always",
                    "host_network": false, "mounts": [], "enabled": true })
        );
        assert!(Settings::default().containers.is_empty());
        assert!(Settings::default().registries.is_empty());
    }

    #[test]
    fn every_bad_field_is_refused_with_its_path() {
        let cases = [
            (
                json!({ "containers": { "Web": { "image": "nginx" } } }),
                "containers.Web",
                "container name",
            ),
            (
                json!({ "containers": { "web": {} } }),
                "containers.web",
                "image",
            ),
            (
                web(json!({ "image": "nginx:" })),
                "containers.web.image",
                "tag",
            ),
            (
                web(json!({ "image": 5 })),
                "containers.web.image",
                "invalid type",
            ),
            (
                web(json!({ "command": ["/bin/sh", "a\0b"] })),
                "containers.web.command[1]",
                "NUL",
            ),
            (
                web(json!({ "command": [""] })),
                "containers.web.command[0]",
                "empty string",
            ),
            (
                web(json!({ "command": [] })),
                "containers.web.command",
                "entrypoint",
            ),
            (
                web(json!({ "args": "nginx -g" })),
                "containers.web.args",
                "sequence",
            ),
            (
                web(json!({ "args": ["ok", 7] })),
                "containers.web.args[1]",
                "invalid type",
            ),
            (
                web(json!({ "env": { "1X": "v" } })),
                "containers.web.env.1X",
                "environment variable name",
            ),
            (
                web(json!({ "env": { "X": "a\0" } })),
                "containers.web.env.X",
                "NUL",
            ),
            (
                web(json!({ "env": { "X": 1 } })),
                "containers.web.env.X",
                "invalid type",
            ),
            (
                web(json!({ "restart": "sometimes" })),
                "containers.web.restart",
                "restart policy",
            ),
            (
                web(json!({ "restart": { "policy": "always" } })),
                "containers.web.restart",
                "invalid type",
            ),
            (
                web(json!({ "host_network": "yes" })),
                "containers.web.host_network",
                "invalid type",
            ),
            (
                web(json!({ "mounts": [{ "source": "../etc", "target": "/etc" }] })),
                "containers.web.mounts[0].source",
                "..",
            ),
            (
                web(json!({ "mounts": [{ "source": "a", "target": "etc" }] })),
                "containers.web.mounts[0].target",
                "absolute",
            ),
            (
                web(json!({ "mounts": [{ "source": "a", "target": "/a", "read_only": 1 }] })),
                "containers.web.mounts[0].read_only",
                "invalid type",
            ),
            (
                web(json!({ "mounts": [{ "source": "a" }] })),
                "containers.web.mounts[0]",
                "target",
            ),
            (
                web(json!({ "memory_max": 1024 })),
                "containers.web.memory_max",
                "minimum",
            ),
            (
                web(json!({ "memory_max": -1 })),
                "containers.web.memory_max",
                "byte count",
            ),
            (
                web(json!({ "memory_max": "512M" })),
                "containers.web.memory_max",
                "byte count",
            ),
            (
                web(json!({ "cpu_max": 0 })),
                "containers.web.cpu_max",
                "0.01",
            ),
            (
                web(json!({ "cpu_max": 1025 })),
                "containers.web.cpu_max",
                "1024",
            ),
            (
                web(json!({ "cpu_max": "1" })),
                "containers.web.cpu_max",
                "number of CPUs",
            ),
            (
                web(json!({ "enabled": "no" })),
                "containers.web.enabled",
                "invalid type",
            ),
            (
                json!({ "registries": { "Registry.Example": {} } }),
                "registries.Registry.Example",
                "lowercase",
            ),
            (
                json!({ "registries": { "r.io": { "insecure": "no" } } }),
                "registries.r.io.insecure",
                "invalid type",
            ),
            (
                json!({ "registries": { "r.io": { "password": "p4ssword" } } }),
                "registries.r.io.username",
                "user name",
            ),
            (
                json!({ "registries": { "r.io": { "username": "a:b", "password": "p" } } }),
                "registries.r.io.username",
                "':'",
            ),
        ];
        for (doc, path, message) in cases {
            let e = refused(doc.clone());
            assert_eq!(e.path, path, "{doc}: {e}");
            assert!(e.message.contains(message), "{doc}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let e = refused(web(json!({ "memory": 1 })));
        assert_eq!(e.path, "containers.web.memory");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = refused(web(
            json!({ "mounts": [{ "source": "a", "target": "/a", "ro": true }] }),
        ));
        assert_eq!(e.path, "containers.web.mounts[0].ro");
        let e = refused(json!({ "registries": { "r.io": { "tls": false } } }));
        assert_eq!(e.path, "registries.r.io.tls");
    }

    #[test]
    fn mount_targets_are_unique() {
        let e = refused(web(json!({ "mounts": [
            { "source": "a", "target": "/data" },
            { "source": "b", "target": "/logs" },
            { "source": "c", "target": "/data", "read_only": true }
        ] })));
        assert_eq!(e.path, "containers.web.mounts[2].target");
        assert!(e.message.contains("/data"), "{e}");
        let s = Settings::from_value(web(json!({ "mounts": [
            { "source": "a", "target": "/data" },
            { "source": "a", "target": "/data2", "read_only": true }
        ] })))
        .expect("one source at two targets is fine");
        let m = &s.containers.get("web").expect("web").mounts;
        assert_eq!(
            m[0].source.host_path(),
            PathBuf::from("/var/lib/carapace/volumes/a")
        );
        assert!(!m[0].read_only && m[1].read_only);
    }

    #[test]
    fn confinement_is_the_default_and_each_part_loosens_explicitly() {
        let s = Settings::from_value(web(json!({}))).expect("valid");
        let c = s.containers.get("web").expect("web");
        assert_eq!(c.capabilities(), DEFAULT_CAPABILITIES.to_vec());
        assert!(!c.capabilities().contains(&"CAP_NET_RAW"));
        assert!(!c.capabilities().contains(&"CAP_MKNOD"));
        assert_eq!(c.seccomp, SeccompProfile::Default);
        assert_eq!(c.pids_limit(), Some(DEFAULT_PIDS_MAX));
        assert!(c.no_new_privileges);

        let s = Settings::from_value(web(json!({
            "capabilities_add": ["NET_RAW", "CAP_SYS_PTRACE"],
            "capabilities_drop": ["CAP_CHOWN", "SETFCAP"],
            "seccomp": "unconfined",
            "pids_max": "max",
            "no_new_privileges": false,
        })))
        .expect("valid");
        let c = s.containers.get("web").expect("web");
        let caps = c.capabilities();
        assert!(caps.contains(&"CAP_NET_RAW") && caps.contains(&"CAP_SYS_PTRACE"));
        assert!(!caps.contains(&"CAP_CHOWN") && !caps.contains(&"CAP_SETFCAP"));
        assert_eq!(caps.len(), 12);
        assert_eq!(c.seccomp, SeccompProfile::Unconfined);
        assert_eq!(c.pids_limit(), None);
        assert!(!c.no_new_privileges);
        // Written back as given.
        let served = &s.to_value()["containers"]["web"];
        assert_eq!(
            served["capabilities_add"],
            json!(["NET_RAW", "CAP_SYS_PTRACE"])
        );
        assert_eq!(served["seccomp"], "unconfined");
        assert_eq!(served["pids_max"], "max");
        assert_eq!(served["no_new_privileges"], false);

        let limited = Settings::from_value(web(json!({ "pids_max": 64 }))).expect("valid");
        let c = limited.containers.get("web").expect("web");
        assert_eq!(c.pids_limit(), Some(64));
        assert_eq!(limited.to_value()["containers"]["web"]["pids_max"], 64);
    }

    #[test]
    fn userns_is_on_unless_on_the_host_network_validated_and_written_only_when_given() {
        let get = |s: &Settings| s.containers.get("web").expect("web").user_namespace();
        let s = Settings::from_value(web(json!({}))).expect("valid");
        assert!(get(&s), "on by default");
        assert!(s.to_value()["containers"]["web"].get("userns").is_none());
        let s = Settings::from_value(web(json!({ "host_network": true }))).expect("valid");
        assert!(!get(&s), "off by default on the host network");
        let s = Settings::from_value(web(json!({ "userns": false }))).expect("valid");
        assert!(!get(&s));
        assert_eq!(s.to_value()["containers"]["web"]["userns"], false);
        let s = Settings::from_value(web(json!({ "userns": true, "host_network": true })))
            .expect("valid");
        assert!(get(&s), "asked for on the host network too");
        assert_eq!(s.to_value()["containers"]["web"]["userns"], true);
        let e = refused(web(json!({ "userns": "yes" })));
        assert_eq!(e.path, "containers.web.userns", "{e}");
        assert!(e.message.contains("invalid type"), "{e}");
    }

    #[test]
    fn all_drops_the_default_set_and_adds_every_capability() {
        let caps = |fields: Value| {
            let s = Settings::from_value(web(fields)).expect("valid");
            s.containers.get("web").expect("web").capabilities()
        };
        assert_eq!(
            caps(json!({ "capabilities_drop": ["ALL"] })),
            Vec::<&str>::new()
        );
        assert_eq!(
            caps(json!({ "capabilities_drop": ["ALL"], "capabilities_add": ["KILL"] })),
            ["CAP_KILL"]
        );
        let everything =
            caps(json!({ "capabilities_add": ["ALL"], "capabilities_drop": ["SYS_ADMIN"] }));
        assert_eq!(everything.len(), KNOWN_CAPABILITIES.len() - 1);
        assert!(!everything.contains(&"CAP_SYS_ADMIN"));
    }

    #[test]
    fn bad_confinement_settings_are_refused_with_their_path() {
        let cases = [
            (
                json!({ "capabilities_add": ["NET_RAWW"] }),
                "containers.web.capabilities_add[0]",
                "not a capability",
            ),
            (
                json!({ "capabilities_add": ["net_raw"] }),
                "containers.web.capabilities_add[0]",
                "upper case",
            ),
            (
                json!({ "capabilities_drop": ["CAP_"] }),
                "containers.web.capabilities_drop[0]",
                "not a capability",
            ),
            (
                json!({ "capabilities_add": "NET_RAW" }),
                "containers.web.capabilities_add",
                "sequence",
            ),
            (
                json!({ "capabilities_add": ["NET_RAW"], "capabilities_drop": ["CAP_NET_RAW"] }),
                "containers.web.capabilities_drop[0]",
                "also in capabilities_add",
            ),
            (
                json!({ "seccomp": "none" }),
                "containers.web.seccomp",
                "unknown variant",
            ),
            (
                json!({ "seccomp": true }),
                "containers.web.seccomp",
                "invalid type",
            ),
            (
                json!({ "pids_max": 0 }),
                "containers.web.pids_max",
                "from 1 to",
            ),
            (
                json!({ "pids_max": -5 }),
                "containers.web.pids_max",
                "from 1 to",
            ),
            (
                json!({ "pids_max": 4194305 }),
                "containers.web.pids_max",
                "from 1 to",
            ),
            (
                json!({ "pids_max": "unlimited" }),
                "containers.web.pids_max",
                "\"max\"",
            ),
            (
                json!({ "pids_max": 1.5 }),
                "containers.web.pids_max",
                "from 1 to",
            ),
            (
                json!({ "no_new_privileges": "no" }),
                "containers.web.no_new_privileges",
                "invalid type",
            ),
        ];
        for (fields, path, message) in cases {
            let e = refused(web(fields.clone()));
            assert_eq!(e.path, path, "{fields}: {e}");
            assert!(e.message.contains(message), "{fields}: {e}");
        }
    }

    #[test]
    fn at_most_64_containers() {
        let many = |n: usize| {
            let map: serde_json::Map<String, Value> = (0..n)
                .map(|i| (format!("c{i}"), json!({ "image": "busybox" })))
                .collect();
            json!({ "containers": map })
        };
        assert_eq!(
            Settings::from_value(many(64))
                .expect("64 is fine")
                .containers
                .len(),
            64
        );
        let e = refused(many(65));
        assert_eq!(e.path, "containers");
        assert!(e.message.contains("65 given"), "{e}");
    }

    #[test]
    fn restart_policies_in_the_tree() {
        let restart = |v: Value| {
            Settings::from_value(web(json!({ "restart": v })))
                .map(|s| s.containers.get("web").expect("web").restart)
        };
        assert_eq!(restart(json!("never")), Ok(RestartPolicy::Never));
        assert_eq!(
            restart(json!("on-failure:3")),
            Ok(RestartPolicy::OnFailure { max_retries: 3 })
        );
        assert_eq!(
            restart(json!("on-failure")).expect_err("no limit").path,
            "containers.web.restart"
        );
        // One leaf: a patch replaces the policy and its limit together.
        let mut store = Store::new(
            Settings::from_value(web(json!({ "restart": "on-failure:3" }))).expect("valid"),
        );
        let s = store
            .stage(json!({ "containers": { "web": { "restart": "always" } } }))
            .expect("valid");
        assert_eq!(
            s.containers.get("web").expect("web").restart,
            RestartPolicy::Always
        );
    }

    #[test]
    fn containers_are_added_and_removed_by_merge_patch() {
        let mut store = Store::new(Settings::default());
        store
            .stage(json!({ "containers": { "web": { "image": "nginx:1.27", "cpu_max": 0.5 } } }))
            .expect("valid");
        let areas = store.commit(|_, _, _| Ok(())).expect("commits");
        assert_eq!(areas, vec![Area::Containers]);
        assert_eq!(
            store
                .committed()
                .containers
                .get("web")
                .map(|c| c.image.as_str()),
            Some("nginx:1.27")
        );

        // A field at a time; other fields stay.
        let s = store
            .stage(json!({ "containers": { "web": { "memory_max": 67108864 },
                                            "db": { "image": "postgres:16" } } }))
            .expect("valid");
        let web = s.containers.get("web").expect("web");
        assert_eq!(web.memory_max.map(MemoryMax::bytes), Some(67_108_864));
        assert_eq!(web.cpu_max_file(), "50000 100000\n");
        assert!(s.containers.contains_key("db"));

        // One bad field stages nothing, not even the good ones beside it.
        let before = store.pending().cloned();
        let e = store
            .stage(json!({ "containers": { "web": { "memory_max": 1 }, "cache": { "image": "redis" } } }))
            .expect_err("refused");
        assert_eq!(e.path, "containers.web.memory_max");
        assert_eq!(store.pending().cloned(), before);

        // null removes a field, and a whole container.
        let s = store
            .stage(json!({ "containers": { "web": { "cpu_max": null }, "db": null } }))
            .expect("valid");
        assert_eq!(s.containers.get("web").expect("web").cpu_max, None);
        assert!(!s.containers.contains_key("db"));
        store.commit(|_, _, _| Ok(())).expect("commits");
        store
            .stage(json!({ "containers": { "web": null } }))
            .expect("valid");
        let areas = store.commit(|_, _, _| Ok(())).expect("commits");
        assert_eq!(areas, vec![Area::Containers]);
        assert!(store.committed().containers.is_empty());
    }

    #[test]
    fn registry_passwords_are_kept_but_never_served() {
        let mut store = Store::new(Settings::default());
        let s = store
            .stage(json!({ "registries": { "registry.example.org:5000":
                { "insecure": true, "username": "robot", "password": "s3cret-token" } } }))
            .expect("valid");
        assert!(
            !s.to_value().to_string().contains("s3cret-token"),
            "not in the served view"
        );
        assert!(!format!("{s:?}").contains("s3cret-token"), "not in Debug");
        // Staging something else keeps it: the store patches the whole tree.
        let s = store
            .stage(
                json!({ "registries": { "registry.example.org:5000": { "username": "robot2" } } }),
            )
            .expect("the password is still there");
        let r = s
            .registries
            .get("registry.example.org:5000")
            .expect("registry");
        assert_eq!(
            r.password.as_ref().map(RegistryPassword::expose),
            Some("s3cret-token")
        );
        assert_eq!(
            r.username.as_ref().map(RegistryUsername::as_str),
            Some("robot2")
        );
        // The settings file keeps it.
        let path = std::env::temp_dir().join(format!(
            "carapace-model-registries-{}.json",
            std::process::id()
        ));
        crate::persist::save(&path, s).expect("saved");
        let loaded = crate::persist::load(&path)
            .expect("loads")
            .expect("present");
        std::fs::remove_file(&path).ok();
        assert_eq!(&loaded, s);
        // Credentials go as a pair.
        let s = store
            .stage(json!({ "registries": { "registry.example.org:5000": { "username": null, "password": null } } }))
            .expect("valid");
        assert_eq!(
            s.registries.get("registry.example.org:5000"),
            Some(&Registry {
                insecure: true,
                username: None,
                password: None
            })
        );
        let e = store
            .stage(
                json!({ "registries": { "registry.example.org:5000": { "username": "robot" } } }),
            )
            .expect_err("no password");
        assert_eq!(e.path, "registries.registry.example.org:5000.password");
    }

    #[test]
    fn an_old_settings_file_without_containers_loads() {
        let path = std::env::temp_dir().join(format!(
            "carapace-model-old-settings-{}.json",
            std::process::id()
        ));
        std::fs::write(
            &path,
            br#"{ "hostname": "node-1",
                  "network": { "dhcp": true, "addresses": [], "routes": [], "dns": [] },
                  "ntp": { "servers": [] }, "sysctl": {}, "api": {}, "updates": {} }"#,
        )
        .expect("write");
        let loaded = crate::persist::load(&path)
            .expect("loads")
            .expect("present");
        std::fs::remove_file(&path).ok();
        assert_eq!(loaded.hostname.as_str(), "node-1");
        assert!(loaded.containers.is_empty());
        assert!(loaded.registries.is_empty());
        assert_eq!(loaded.to_value()["containers"], json!({}));
    }

    #[test]
    fn images_are_looked_up_in_registries_by_their_host() {
        let s = Settings::from_value(json!({
            "containers": { "app": { "image": "registry.example.org:5000/team/app:v1" },
                            "web": { "image": "nginx" } },
            "registries": { "registry.example.org:5000": { "insecure": true },
                            "docker.io": { "username": "me", "password": "hub-token" } }
        }))
        .expect("valid");
        let registry_of = |name: &str| {
            let c = s.containers.get(name).expect("container");
            s.registries.get(c.image.registry()).expect("registry")
        };
        assert!(registry_of("app").insecure);
        assert_eq!(
            registry_of("web")
                .password
                .as_ref()
                .map(RegistryPassword::expose),
            Some("hub-token")
        );
    }
}
