//! Every way a bundle, a key, a signature or an update can be refused, each
//! with a message an operator understands without reading the code.

use semver::Version;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    // --- Parsing the manifest and the index (a malformed document).
    /// Not JSON, a missing, unknown or repeated field, a value of the wrong
    /// type; `detail` names the field's path.
    #[error("the {what} is not valid: {detail}")]
    Json { what: &'static str, detail: String },
    #[error("the {what} has format {found}, but this node knows only format {known}")]
    Format {
        what: &'static str,
        found: String,
        known: u32,
    },
    #[error("{field} {value:?} is not a semantic version: {reason}")]
    NotSemver {
        field: String,
        value: String,
        reason: String,
    },
    #[error("{field} {value} carries build metadata (after '+'), which the boot loader's file names cannot hold")]
    BuildMetadata { field: &'static str, value: Version },
    #[error("min_from_version {min_from} is newer than the version {version} itself")]
    MinFromAboveVersion { min_from: Version, version: Version },
    #[error("architecture {0:?} is not an architecture name (lowercase letters, digits and '_')")]
    ArchitectureName(String),
    #[error("{field} {value:?} is not a plain file name (letters, digits, '.', '_', '-', '+'; no '/', not starting with '.')")]
    FileName { field: &'static str, value: String },
    #[error("{field} {value:?} is not {digits} lowercase hexadecimal digits")]
    Hex {
        field: &'static str,
        value: String,
        digits: usize,
    },
    #[error("{field} is 0: a part cannot be empty")]
    Empty { field: &'static str },
    #[error("{field} is {bytes} bytes, more than the {max} bytes a part may have")]
    TooLarge {
        field: &'static str,
        bytes: u64,
        max: u64,
    },
    #[error("root.stored_bytes {stored} is more than root.data_bytes {data}")]
    StoredAboveData { stored: u64, data: u64 },
    #[error("root.data_bytes {0} is not a multiple of 512")]
    DataNotSectors(u64),

    // --- Keys and signatures.
    #[error("the update key is not an Ed25519 public key of 64 hexadecimal digits (got {0:?})")]
    PublicKey(String),
    #[error("the signing key is not an Ed25519 key in PKCS#8 form: {0}")]
    SigningKey(String),
    #[error("cannot generate a signing key: the system's random number generator failed")]
    KeyGeneration,
    #[error("the signature is not 128 hexadecimal digits and a newline ({0})")]
    SignatureText(String),
    #[error("the signature does not match the update key")]
    BadSignature,

    // --- The signed index.
    /// `index.json.sig` is missing, malformed or made by another key; the
    /// reason is the signature's own error.
    #[error("index.json is not signed by the update key ({0})")]
    IndexNotSigned(String),
    /// The node's clock is at or past the index's `expires`: whoever serves
    /// it has not re-signed it in time, or replays an old one.
    #[error("index.json expired at {}, {ago} s ago: the source is stale or replayed", crate::index::rfc3339(*.expires))]
    IndexExpired { expires: u64, ago: u64 },

    // --- The update policy.
    #[error("this bundle is for {bundle}, but this node is {node}")]
    Architecture { bundle: String, node: &'static str },
    #[error("{offered} is older than the running {running}: refusing a downgrade")]
    Downgrade { offered: Version, running: Version },
    #[error("{0} is already running: refusing to install it again")]
    SameVersion(Version),
    #[error("{offered} is below {minimum}, the minimum_version of the signed index: refusing it, even as a forced downgrade")]
    BelowMinimumVersion { offered: Version, minimum: Version },
    #[error("{offered} can only be installed over {min_from} or newer, and this node runs {running}: update to {min_from} first")]
    RunningTooOld {
        offered: Version,
        min_from: Version,
        running: Version,
    },

    // --- Downloaded parts.
    #[error("truncated: got {got} of {expected} bytes")]
    Truncated { got: u64, expected: u64 },
    #[error("too long: more than the {expected} bytes the manifest says")]
    Oversized { expected: u64 },
    #[error("SHA-256 mismatch: the data hashes to {actual}, the manifest says {expected}")]
    Digest { actual: String, expected: String },
}
