//! The settings tree and its types. Every leaf type validates itself when it
//! is deserialized, and `Settings::from_value` adds the checks that span
//! fields, so a `Settings` that exists is valid.
//!
//! ```json
//! { "hostname": "node-1",
//!   "network": { "dhcp": false, "addresses": ["10.0.2.15/24"],
//!                "routes": [{ "to": "0.0.0.0/0", "via": "10.0.2.2" }], "dns": ["10.0.2.3"] },
//!   "ntp": { "servers": ["time.example.org"] },
//!   "sysctl": { "net.ipv4.ip_forward": "1" },
//!   "api": { "token_hash": "$argon2id$v=19$m=19456,t=2,p=1$…" },
//!   "updates": { "source": "https://updates.example.org/carapace/",
//!                "ca": "-----BEGIN CERTIFICATE-----\nMIIBmj…\n-----END CERTIFICATE-----\n" },
//!   "containers": { "web": { "image": "nginx:1.27", "restart": "on-failure:5" } },
//!   "registries": { "registry.example.org:5000": { "insecure": true } } }
//! ```
//!
//! The settings file adds a `schema` number and keeps fields this version
//! does not know; see [`crate::settings_file`].
//!
//! Registry passwords are the one secret kept as given (the container agent
//! presents them); [`Settings::to_value`], the view the API serves, leaves
//! them out. See [`crate::containers`].
//!
//! The API token is never kept: only its salted slow hash (`api.token_hash`,
//! argon2id in PHC string format), or, in a file an older version wrote, its
//! unsalted SHA-256 (`api.token_sha256`), still accepted so that an upgrade
//! locks no one out and dropped when a new token is set. Neither is served:
//! [`Settings::to_value`] shows `"api": { "token_set": true|false }` instead.

use crate::containers::{Container, ContainerName, Registry, RegistryHost};
use crate::error::SettingsError;
use crate::settings_file::{Preserved, UnknownField};
use rustls_pki_types::pem::{PemObject, SectionKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// The whole settings tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub hostname: Hostname,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub ntp: Ntp,
    /// Kernel sysctls from the allow list in [`crate::sysctl`].
    #[serde(default)]
    pub sysctl: BTreeMap<String, String>,
    #[serde(default)]
    pub api: Api,
    #[serde(default)]
    pub updates: Updates,
    /// The containers the node runs, by name.
    #[serde(default)]
    pub containers: BTreeMap<ContainerName, Container>,
    /// How to reach image registries, by `host[:port]`.
    #[serde(default)]
    pub registries: BTreeMap<RegistryHost, Registry>,
    /// What the settings file held that this version does not know, kept to
    /// be written back (see [`crate::settings_file`]). Never served, never
    /// patched; empty for settings that did not come from the file.
    #[serde(skip)]
    pub(crate) preserved: Preserved,
}

/// The parts of the tree that are applied separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Area {
    Hostname,
    Network,
    Ntp,
    Sysctl,
    Api,
    Updates,
    Containers,
    Registries,
}

impl Settings {
    /// Builds settings from a JSON value, refusing any bad field with its
    /// path, an unknown one included: what the API and user data give. The
    /// settings file is read leniently instead ([`crate::settings_file`]).
    pub fn from_value(value: serde_json::Value) -> Result<Settings, SettingsError> {
        let settings = Settings::from_tree(&value).map_err(path_error)?;
        settings.check_across_fields()?;
        Ok(settings)
    }

    /// The tree deserialized field by field, before the checks across
    /// fields; the error keeps the path as serde saw it.
    pub(crate) fn from_tree(value: &serde_json::Value) -> Result<Settings, PathError> {
        serde_path_to_error::deserialize(value)
    }

    /// The unknown fields the settings file held, which a save writes back
    /// (see [`crate::settings_file`]); empty for settings that did not come
    /// from the file.
    pub fn unknown_fields(&self) -> &[UnknownField] {
        self.preserved.fields()
    }

    /// The schema number a save writes: this version's
    /// ([`crate::settings_file::SCHEMA`]), or the newer one of the file the
    /// settings were read from.
    pub fn file_schema(&self) -> u32 {
        self.preserved.schema()
    }

    pub(crate) fn check_across_fields(&self) -> Result<(), SettingsError> {
        if !self.network.dhcp && self.network.addresses.is_empty() {
            return Err(SettingsError::new(
                "network.addresses",
                "static networking (dhcp = false) needs at least one address",
            ));
        }
        if self.network.dns.len() > 3 {
            return Err(SettingsError::new("network.dns", "at most 3 DNS servers"));
        }
        for (key, value) in &self.sysctl {
            crate::sysctl::check(key, value)
                .map_err(|m| SettingsError::new(format!("sysctl.{key}"), m))?;
        }
        crate::containers::check(&self.containers, &self.registries)
    }

    /// The tree as JSON, as the API serves it: registry passwords left out,
    /// the token's hashes replaced by `api.token_set`.
    pub fn to_value(&self) -> serde_json::Value {
        let mut tree = self.to_value_with_secrets();
        crate::containers::redact_secrets(&mut tree);
        redact_token(&mut tree, self.api.token_set());
        tree
    }

    /// The whole tree as JSON, registry passwords included: what a merge
    /// patch applies to and what the settings file holds.
    pub fn to_value_with_secrets(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// One subtree by a dotted path (`network.dns`), or None if there is no
    /// such field. A key with dots in it (`sysctl.net.ipv4.ip_forward`,
    /// `registries.registry.example.org:5000`) is found too: at each level
    /// the shortest run of parts that names a key is taken.
    pub fn get(&self, path: &str) -> Option<serde_json::Value> {
        let mut v = self.to_value();
        if path.is_empty() {
            return Some(v);
        }
        let parts: Vec<&str> = path.split('.').collect();
        let mut start = 0;
        while start < parts.len() {
            let end = (start + 1..=parts.len())
                .find(|&end| v.get(parts[start..end].join(".")).is_some())?;
            v = v.get_mut(parts[start..end].join("."))?.take();
            start = end;
        }
        Some(v)
    }

    /// Which areas differ between `self` and `new`: what a commit must re-apply.
    pub fn changed_areas(&self, new: &Settings) -> Vec<Area> {
        let mut out = Vec::new();
        if self.hostname != new.hostname {
            out.push(Area::Hostname);
        }
        if self.network != new.network {
            out.push(Area::Network);
        }
        if self.ntp != new.ntp {
            out.push(Area::Ntp);
        }
        if self.sysctl != new.sysctl {
            out.push(Area::Sysctl);
        }
        if self.api != new.api {
            out.push(Area::Api);
        }
        if self.updates != new.updates {
            out.push(Area::Updates);
        }
        if self.containers != new.containers {
            out.push(Area::Containers);
        }
        if self.registries != new.registries {
            out.push(Area::Registries);
        }
        out
    }
}

/// A deserialization error with the path of the field at fault.
pub(crate) type PathError = serde_path_to_error::Error<serde_json::Error>;

/// The model's error for a field refused while deserializing.
pub(crate) fn path_error(e: PathError) -> SettingsError {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    SettingsError::new(path, e.into_inner().to_string())
}

macro_rules! string_type {
    ($name:ident, $check:path) => {
        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                $check(&s)?;
                Ok($name(s))
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}
pub(crate) use string_type;

/// A host name: 1 to 63 characters of a-z, 0-9, `-` and `.`, labels not
/// starting or ending with `-`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Hostname(String);

fn check_hostname(s: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&s.len())
        && s.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a host name (1-63 characters of a-z, 0-9, '-' and '.')"
        ))
    }
}
string_type!(Hostname, check_hostname);

impl Default for Hostname {
    fn default() -> Self {
        Hostname("carapace".into())
    }
}

/// An address with its prefix length, `10.0.2.15/24` or `fd00::1/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an address with a prefix length, like 10.0.2.15/24");
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{s:?}: prefix length {prefix} exceeds {max}"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        format!("{}/{}", c.addr, c.prefix)
    }
}

/// A static route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub to: Cidr,
    pub via: IpAddr,
}

/// Networking: DHCP (the default) or static addresses; DNS servers given here
/// override those DHCP offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    #[serde(default = "yes")]
    pub dhcp: bool,
    #[serde(default)]
    pub addresses: Vec<Cidr>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Vec<IpAddr>,
}

pub(crate) fn yes() -> bool {
    true
}

impl Default for Network {
    fn default() -> Self {
        Network {
            dhcp: true,
            addresses: Vec::new(),
            routes: Vec::new(),
            dns: Vec::new(),
        }
    }
}

/// An NTP server: a host name or an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NtpServer(String);

fn check_ntp_server(s: &str) -> Result<(), String> {
    if s.parse::<IpAddr>().is_ok() || check_hostname(s).is_ok() {
        Ok(())
    } else {
        Err(format!("{s:?} is neither an IP address nor a host name"))
    }
}
string_type!(NtpServer, check_ntp_server);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Ntp {
    #[serde(default)]
    pub servers: Vec<NtpServer>,
}

/// The unsalted SHA-256 of the API token, lowercase hex, as versions before
/// the salted hash ([`SaltedTokenHash`]) stored it. Still read from the
/// settings file and accepted for authentication, never written for a new
/// token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TokenHash(String);

fn check_token_hash(s: &str) -> Result<(), String> {
    if s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err("not a SHA-256 in lowercase hex".to_string())
    }
}
string_type!(TokenHash, check_token_hash);

/// Checks a token as a user gives it: 16 to 256 printable ASCII characters, no spaces.
pub fn check_token(token: &str) -> Result<(), String> {
    if (16..=256).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err("a token must be 16 to 256 printable ASCII characters without spaces".into())
    }
}

impl TokenHash {
    /// The hash of a token.
    pub fn of(token: &str) -> TokenHash {
        TokenHash(
            Sha256::digest(token.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    /// Whether `token` hashes to this, compared in constant time.
    pub fn matches(&self, token: &str) -> bool {
        let other = TokenHash::of(token);
        self.0
            .bytes()
            .zip(other.0.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// argon2id memory cost in KiB: 19 MiB, the first of OWASP's recommended
/// argon2id settings. Two verifications at a time (the API's bound) take
/// 38 MiB of a node's memory.
pub const TOKEN_HASH_MEMORY_KIB: u32 = 19 * 1024;
/// argon2id passes over that memory: expected tens of milliseconds native
/// and a few hundred under QEMU's TCG (about ten times slower) per
/// verification — well under a second on a small VM, costly for offline
/// guessing. (Not yet timed on a node.)
pub const TOKEN_HASH_PASSES: u32 = 2;
/// argon2id lanes: one, as the API verifies on one blocking thread.
pub const TOKEN_HASH_LANES: u32 = 1;
/// The most memory (KiB) a stored hash may ask a verification for: a
/// settings file with a hostile cost must not make every request allocate
/// gigabytes.
pub const TOKEN_HASH_MAX_MEMORY_KIB: u32 = 64 * 1024;
/// The most passes a stored hash may ask for (same reason).
pub const TOKEN_HASH_MAX_PASSES: u32 = 8;
/// The most lanes a stored hash may ask for (same reason).
pub const TOKEN_HASH_MAX_LANES: u32 = 4;

/// The API token's salted slow hash: argon2id in PHC string format
/// (`$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>`). A new one gets a fresh
/// random salt, so two hashes of the same token differ. A stored one is
/// accepted only as argon2id with a salt, an output and costs within the
/// bounds above.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SaltedTokenHash(String);

impl fmt::Debug for SaltedTokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not secret, but no reason to spread it through logs either.
        f.write_str("SaltedTokenHash(argon2id)")
    }
}

fn check_salted_token_hash(s: &str) -> Result<(), String> {
    argon2_params(s).map(|_| ())
}

/// The argon2id parameters of a PHC string, refused unless it is a complete
/// argon2id hash with costs within bounds.
fn argon2_params(s: &str) -> Result<argon2::Params, String> {
    let bad = |why: &str| Err(format!("not an argon2id hash in PHC string format: {why}"));
    if s.len() > 512 {
        return bad("too long");
    }
    let Ok(phc) = argon2::PasswordHash::new(s) else {
        return bad("unparsable");
    };
    if phc.algorithm.as_str() != "argon2id" {
        return bad("another algorithm");
    }
    if phc.salt.is_none() || phc.hash.is_none() {
        return bad("no salt or no hash");
    }
    let Ok(params) = argon2::Params::try_from(&phc) else {
        return bad("bad parameters");
    };
    if params.m_cost() > TOKEN_HASH_MAX_MEMORY_KIB
        || params.t_cost() > TOKEN_HASH_MAX_PASSES
        || params.p_cost() > TOKEN_HASH_MAX_LANES
    {
        return bad("costs above the bounds a node verifies");
    }
    Ok(params)
}
string_type!(SaltedTokenHash, check_salted_token_hash);

impl SaltedTokenHash {
    /// Hashes `token` with a fresh random salt. Slow on purpose (see
    /// [`TOKEN_HASH_PASSES`]); fails only when the system's random source
    /// does.
    pub fn of(token: &str) -> Result<SaltedTokenHash, String> {
        use argon2::PasswordHasher;
        let params = argon2::Params::new(
            TOKEN_HASH_MEMORY_KIB,
            TOKEN_HASH_PASSES,
            TOKEN_HASH_LANES,
            None,
        )
        .map_err(|e| format!("argon2 parameters: {e}"))?;
        let hasher =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let hash = hasher
            .hash_password(token.as_bytes())
            .map_err(|e| format!("cannot hash the token: {e}"))?;
        Ok(SaltedTokenHash(hash.to_string()))
    }

    /// Whether `token` is the token this hashes (slow: one argon2id run with
    /// the stored costs; the comparison is constant-time).
    pub fn verify(&self, token: &str) -> bool {
        use argon2::PasswordVerifier;
        let Ok(phc) = argon2::PasswordHash::new(&self.0) else {
            return false;
        };
        argon2::Argon2::default()
            .verify_password(token.as_bytes(), &phc)
            .is_ok()
    }
}

/// What a presented token is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck<'a> {
    /// No token is set: remote access is refused.
    None,
    /// The salted slow hash.
    Salted(&'a SaltedTokenHash),
    /// An older settings file's unsalted SHA-256.
    Sha256(&'a TokenHash),
}

impl TokenCheck<'_> {
    /// The stored text checked against (the PHC string or the hex
    /// SHA-256): what a cache of verified tokens must be keyed on, so that
    /// a new token invalidates it.
    pub fn stored(&self) -> Option<&str> {
        match self {
            TokenCheck::None => None,
            TokenCheck::Salted(h) => Some(h.as_str()),
            TokenCheck::Sha256(h) => Some(h.as_str()),
        }
    }

    /// Whether `token` matches; slow for [`TokenCheck::Salted`].
    pub fn verify(&self, token: &str) -> bool {
        match self {
            TokenCheck::None => false,
            TokenCheck::Salted(h) => h.verify(token),
            TokenCheck::Sha256(h) => h.matches(token),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// The token's salted slow hash; set from `api.token` in a change or
    /// the user data. None and no `token_sha256`: remote access is refused
    /// until a token is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<SaltedTokenHash>,
    /// The unsalted SHA-256 an older version stored; accepted until a new
    /// token is set, which drops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<TokenHash>,
}

impl Api {
    /// Whether remote callers can authenticate at all.
    pub fn token_set(&self) -> bool {
        self.token_hash.is_some() || self.token_sha256.is_some()
    }

    /// What a presented token is checked against: the salted hash when
    /// there is one, else an older file's SHA-256.
    pub fn token_check(&self) -> TokenCheck<'_> {
        match (&self.token_hash, &self.token_sha256) {
            (Some(h), _) => TokenCheck::Salted(h),
            (None, Some(h)) => TokenCheck::Sha256(h),
            (None, None) => TokenCheck::None,
        }
    }
}

/// The served tree's `api`: whether a token is set, never a hash of it.
fn redact_token(tree: &mut serde_json::Value, token_set: bool) {
    let Some(root) = tree.as_object_mut() else {
        return;
    };
    let api = root
        .entry("api")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    if let Some(api) = api.as_object_mut() {
        api.remove("token_hash");
        api.remove("token_sha256");
        api.insert("token_set".into(), serde_json::Value::Bool(token_set));
    }
}

/// Where updates come from: an http(s) URL of a directory with an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UpdateSource(String);

fn check_update_source(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    match rest {
        Some(r)
            if !r.is_empty()
                && s.len() <= 2048
                && !s.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok(())
        }
        _ => Err(format!("{s:?} is not an http:// or https:// URL")),
    }
}
string_type!(UpdateSource, check_update_source);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Updates {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<UpdateSource>,
    /// CA certificates to trust for an `https://` source besides the
    /// built-in Mozilla roots (a private update server's own CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaCertificates>,
}

/// The longest `updates.ca` text: 256 KiB, room for a whole CA bundle.
pub const MAX_CA_TEXT: usize = 256 * 1024;

/// CA certificates as PEM text, kept as given: one or more
/// `-----BEGIN CERTIFICATE-----` blocks whose base64 decodes to a DER
/// SEQUENCE. Text between the blocks (a bundle's comments) is ignored; a
/// block of any other kind (a private key above all) is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CaCertificates(String);

impl CaCertificates {
    /// The certificates, DER, in the order given.
    pub fn der(&self) -> Vec<Vec<u8>> {
        ca_certificates(&self.0).unwrap_or_default()
    }
}

fn check_ca_certificates(s: &str) -> Result<(), String> {
    ca_certificates(s).map(|_| ())
}
string_type!(CaCertificates, check_ca_certificates);

fn ca_certificates(s: &str) -> Result<Vec<Vec<u8>>, String> {
    if s.len() > MAX_CA_TEXT {
        return Err(format!(
            "{} bytes of PEM exceed the limit of {MAX_CA_TEXT}",
            s.len()
        ));
    }
    let mut certificates = Vec::new();
    for (n, block) in
        <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(s.as_bytes()).enumerate()
    {
        let n = n + 1;
        let (kind, der) = block.map_err(|e| format!("PEM block {n}: {e}"))?;
        if kind != SectionKind::Certificate {
            return Err(format!(
                "PEM block {n} is a {kind:?}, not a CERTIFICATE (only CA certificates belong here)"
            ));
        }
        check_der_sequence(&der).map_err(|why| format!("PEM block {n}: {why}"))?;
        certificates.push(der);
    }
    // The PEM reader skips blocks of a kind it does not know: count them
    // (a BEGIN line, as for the reader, starts at the start of its line).
    let begins = s.lines().filter(|l| l.starts_with("-----BEGIN ")).count();
    if certificates.is_empty() {
        Err("not PEM text of CA certificates (no -----BEGIN CERTIFICATE----- block)".into())
    } else if begins != certificates.len() {
        Err(format!(
            "{} of {begins} PEM blocks are not CERTIFICATE blocks",
            begins - certificates.len()
        ))
    } else {
        Ok(certificates)
    }
}

/// Checks that `der` is one DER SEQUENCE (what an X.509 certificate is) and
/// nothing after it: enough to tell a certificate from base64 of anything.
fn check_der_sequence(der: &[u8]) -> Result<(), String> {
    let not = |why: &str| Err(format!("not a DER certificate ({why})"));
    let [0x30, first, rest @ ..] = der else {
        return not("no SEQUENCE");
    };
    let (length, content) = if first & 0x80 == 0 {
        (usize::from(*first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return not("bad length");
        }
        let length = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (length, &rest[n..])
    };
    if length == content.len() {
        Ok(())
    } else {
        not("its length does not match")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: serde_json::Value) -> SettingsError {
        Settings::from_value(v).expect_err("must be refused")
    }

    #[test]
    fn empty_document_gives_the_defaults() {
        let s = Settings::from_value(json!({})).expect("valid");
        assert_eq!(s, Settings::default());
        assert_eq!(s.hostname.as_str(), "carapace");
        assert!(s.network.dhcp);
    }

    #[test]
    fn a_full_document_round_trips() {
        let v = json!({
            "hostname": "node-1",
            "network": { "dhcp": false, "addresses": ["10.0.2.15/24", "fd00::2/64"],
                         "routes": [{ "to": "0.0.0.0/0", "via": "10.0.2.2" }], "dns": ["10.0.2.3"] },
            "ntp": { "servers": ["time.example.org", "192.0.2.1"] },
            "sysctl": { "net.ipv4.ip_forward": "1" },
            "api": { "token_sha256": TokenHash::of("0123456789abcdef").as_str() },
            "updates": { "source": "https://updates.example.org/carapace/" },
            "containers": {
                "web": { "image": "nginx:1.27",
                         "command": ["/docker-entrypoint.sh"], "args": ["nginx", "-g", "daemon off;"],
                         "env": { "TZ": "UTC" },
                         "restart": "on-failure:5",
                         "host_network": false,
                         "mounts": [{ "source": "web/html", "target": "/usr/share/nginx/html", "read_only": true }],
                         "memory_max": 268435456, "cpu_max": 0.5, "enabled": true },
                "probe": { "image": "registry.example.org:5000/tools/probe@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                           "env": {}, "restart": "never", "host_network": true, "mounts": [],
                           "enabled": false }
            },
            "registries": { "registry.example.org:5000": { "insecure": true, "username": "robot" } }
        });
        assert_eq!(
            err(v.clone()).path,
            "registries.registry.example.org:5000.password",
            "a user name needs its password"
        );
        // The password is stored but not served: the served view is the
        // document less it, and says that a token is set but not its hash.
        let mut stored = v.clone();
        stored["registries"]["registry.example.org:5000"]["password"] = json!("s3cret-token");
        let s = Settings::from_value(stored.clone()).expect("valid");
        let mut served = v.clone();
        served["api"] = json!({ "token_set": true });
        assert_eq!(s.to_value(), served);
        assert_eq!(s.to_value_with_secrets(), stored);
        assert_eq!(s.get("network.dns"), Some(json!(["10.0.2.3"])));
        assert_eq!(s.get("network.nope"), None);
        assert_eq!(s.get("containers.web.cpu_max"), Some(json!(0.5)));
        assert_eq!(
            s.get("registries.registry.example.org:5000"),
            Some(json!({ "insecure": true, "username": "robot" })),
            "a key with dots and no password"
        );
        assert_eq!(s.get("sysctl.net.ipv4.ip_forward"), Some(json!("1")));
        assert_eq!(s.get("registries.registry.example.org:5000.password"), None);
        let back: Settings = serde_json::from_value(s.to_value_with_secrets()).expect("reads back");
        assert_eq!(back, s);
    }

    #[test]
    fn bad_fields_are_refused_with_their_path() {
        let e = err(json!({ "hostname": "Bad_Name" }));
        assert_eq!(e.path, "hostname");
        let e = err(json!({ "network": { "addresses": ["10.0.2.15/24", "10.0.2.16/33"] } }));
        assert_eq!(e.path, "network.addresses[1]");
        assert!(e.message.contains("exceeds 32"), "{e}");
        let e = err(json!({ "network": { "dhcp": "yes" } }));
        assert_eq!(e.path, "network.dhcp");
        let e = err(json!({ "ntp": { "servers": ["not a host"] } }));
        assert_eq!(e.path, "ntp.servers[0]");
        let e = err(json!({ "updates": { "source": "ftp://x" } }));
        assert_eq!(e.path, "updates.source");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let e = err(json!({ "hostnmae": "x" }));
        assert!(e.message.contains("hostnmae"), "{e}");
        let e = err(json!({ "network": { "dhpc": true } }));
        assert_eq!(e.path, "network.dhpc");
        assert!(e.message.contains("dhpc"), "{e}");
    }

    #[test]
    fn checks_across_fields() {
        let e = err(json!({ "network": { "dhcp": false } }));
        assert_eq!(e.path, "network.addresses");
        let e = err(json!({ "network": { "dns": ["1.1.1.1", "1.0.0.1", "8.8.8.8", "8.8.4.4"] } }));
        assert_eq!(e.path, "network.dns");
        let e = err(json!({ "sysctl": { "kernel.modules_disabled": "0" } }));
        assert_eq!(e.path, "sysctl.kernel.modules_disabled");
        let e = err(json!({ "sysctl": { "vm.swappiness": "101" } }));
        assert_eq!(e.path, "sysctl.vm.swappiness");
    }

    /// A self-signed EC certificate (openssl req -x509, CN "Carapace Test Update CA").
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBmjCCAUGgAwIBAgIUP78iz8XWUk809oLAC3kuHDHwrzcwCgYIKoZIzj0EAwIw
IjEgMB4GA1UEAwwXQ2FyYXBhY2UgVGVzdCBVcGRhdGUgQ0EwIBcNMjYxMjAyMDEx
MTQ5WhgPMjEyNjExMDgwMTExNDlaMCIxIDAeBgNVBAMMF0NhcmFwYWNlIFRlc3Qg
VXBkYXRlIENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEY22J8ztHflvcO6Y7
LEORmtOIdFoQTf1Xyhrxoypv4x0ixmqeRJw8yVN3zedaHQpyARX0yFDRpRq1SrCp
5H8nSKNTMFEwHQYDVR0OBBYEFOeRcapwn0+dQBVZ0r2A49aGm8JeMB8GA1UdIwQY
MBaAFOeRcapwn0+dQBVZ0r2A49aGm8JeMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZI
zj0EAwIDRwAwRAIgYNbc8n0ngjL+Q/Pjc6XIcqab5wTDItSbaIwRxohNsvYCIHcx
rawXA/G634PBMkoVfSz5WyiAzGWseraMHMBoQ7cZ
-----END CERTIFICATE-----
";

    #[test]
    fn an_https_update_source_may_bring_its_own_ca() {
        let bundle = format!("# Carapace test CA\n{TEST_CA}\n# the same again\n{TEST_CA}");
        let s = Settings::from_value(json!({
            "updates": { "source": "https://updates.internal:8443/carapace/", "ca": bundle }
        }))
        .expect("valid");
        let ca = s.updates.ca.as_ref().expect("ca kept");
        assert_eq!(ca.as_str(), bundle, "kept as given");
        let der = ca.der();
        assert_eq!(der.len(), 2);
        assert_eq!(der[0].len(), 414);
        assert_eq!(der[0].first(), Some(&0x30));
        assert_eq!(s.get("updates.ca"), Some(json!(bundle)));
        assert_eq!(
            s.updates.source.as_ref().map(UpdateSource::as_str),
            Some("https://updates.internal:8443/carapace/")
        );
    }

    #[test]
    fn an_update_ca_that_is_not_pem_certificates_is_refused() {
        let ca_err = |ca: &str| err(json!({ "updates": { "ca": ca } }));
        for garbage in [
            "",
            "hello",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        ] {
            let e = ca_err(garbage);
            assert_eq!(e.path, "updates.ca", "{garbage:?}: {e}");
        }
        // Base64 of something that is not a certificate.
        let e =
            ca_err("-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n");
        assert!(e.message.contains("not a DER certificate"), "{e}");
        // A certificate cut short.
        let e = ca_err(&TEST_CA.replace("-----END CERTIFICATE-----\n", ""));
        assert_eq!(e.path, "updates.ca");
        // A private key is never a CA.
        let key =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        let e = ca_err(&format!("{TEST_CA}{key}"));
        assert!(e.message.contains("not a CERTIFICATE"), "{e}");
        // Nor is a block of a kind the PEM reader skips.
        let e = ca_err(&format!(
            "{TEST_CA}-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n"
        ));
        assert!(e.message.contains("not CERTIFICATE blocks"), "{e}");
        let e = ca_err(&"x".repeat(MAX_CA_TEXT + 1));
        assert!(e.message.contains("exceed"), "{e}");
    }

    #[test]
    fn a_salted_hash_verifies_its_token_only() {
        let h = SaltedTokenHash::of("correct-horse-battery-staple").expect("hashed");
        assert!(h.as_str().starts_with("$argon2id$"), "PHC string");
        assert!(h.verify("correct-horse-battery-staple"));
        assert!(!h.verify("correct-horse-battery-stapl"));
        let again = SaltedTokenHash::of("correct-horse-battery-staple").expect("hashed");
        assert_ne!(h, again, "salted: the same token hashes differently");
        // A stored hash reads back, and verifies the same.
        let s = Settings::from_value(json!({ "api": { "token_hash": h.as_str() } }))
            .expect("a stored hash");
        assert_eq!(s.api.token_check(), TokenCheck::Salted(&h));
        assert!(s.api.token_check().verify("correct-horse-battery-staple"));
        assert_eq!(s.api.token_check().stored(), Some(h.as_str()));
    }

    #[test]
    fn a_stored_hash_that_is_not_a_bounded_argon2id_is_refused() {
        let salt_and_hash = "$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A";
        for bad in [
            "",
            "0123",
            &format!("$argon2i$v=19$m=19456,t=2,p=1{salt_and_hash}"),
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ",
            &format!("$argon2id$v=19$m=4194304,t=2,p=1{salt_and_hash}"),
            &format!("$argon2id$v=19$m=19456,t=1000,p=1{salt_and_hash}"),
            &format!("$argon2id$v=19$m=19456,t=2,p=64{salt_and_hash}"),
        ] {
            assert_eq!(
                err(json!({ "api": { "token_hash": bad } })).path,
                "api.token_hash",
                "{bad:?}"
            );
        }
        let fine = format!("$argon2id$v=19$m=19456,t=2,p=1{salt_and_hash}");
        assert!(Settings::from_value(json!({ "api": { "token_hash": fine } })).is_ok());
    }

    #[test]
    fn neither_hash_of_the_token_is_served() {
        let salted = SaltedTokenHash::of("0123456789abcdef").expect("hashed");
        let old = TokenHash::of("0123456789abcdef");
        for api in [
            json!({ "token_hash": salted.as_str() }),
            json!({ "token_sha256": old.as_str() }),
            json!({ "token_hash": salted.as_str(), "token_sha256": old.as_str() }),
        ] {
            let s = Settings::from_value(json!({ "api": api })).expect("valid");
            let served = s.to_value();
            assert_eq!(served["api"], json!({ "token_set": true }), "{api}");
            let text = served.to_string();
            assert!(!text.contains(salted.as_str()) && !text.contains(old.as_str()));
            assert!(!text.contains("argon2") && !text.contains("token_sha256"));
            assert_eq!(s.get("api"), Some(json!({ "token_set": true })));
            assert_eq!(s.get("api.token_hash"), None);
            assert_eq!(s.get("api.token_sha256"), None);
            // The file keeps them.
            assert_eq!(s.to_value_with_secrets()["api"], api);
        }
        assert_eq!(
            Settings::default().to_value()["api"],
            json!({ "token_set": false })
        );
    }

    #[test]
    fn tokens_are_kept_as_hashes_and_compared() {
        let h = TokenHash::of("correct horse battery staple".replace(' ', "-").as_str());
        assert!(h.matches("correct-horse-battery-staple"));
        assert!(!h.matches("correct-horse-battery-stapl"));
        assert!(check_token("short").is_err());
        assert!(check_token("has a space in it!!").is_err());
        assert!(check_token("0123456789abcdef").is_ok());
    }

    #[test]
    fn changed_areas_name_what_differs() {
        let a = Settings::default();
        let mut b = a.clone();
        assert!(a.changed_areas(&b).is_empty());
        b.hostname = Hostname::try_from("node-2".to_string()).expect("valid");
        b.sysctl.insert("vm.swappiness".into(), "10".into());
        assert_eq!(a.changed_areas(&b), vec![Area::Hostname, Area::Sysctl]);
        let c = Settings::from_value(json!({
            "containers": { "web": { "image": "nginx" } },
            "registries": { "docker.io": {} }
        }))
        .expect("valid");
        assert_eq!(
            a.changed_areas(&c),
            vec![Area::Containers, Area::Registries]
        );
    }
}
