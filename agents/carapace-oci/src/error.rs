//! What can go wrong, each variant saying what failed, on what, and why.

use std::io;
use std::path::PathBuf;
use thiserror::Error;

/// A file operation in the store failed.
#[derive(Debug, Error)]
#[error("image store: cannot {action} {}: {source}", path.display())]
pub struct StoreError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl StoreError {
    pub(crate) fn new(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Why a pull failed. Whatever failed, nothing unverified is left in the
/// store: a blob or layer is only ever renamed into place once checked.
#[derive(Debug, Error)]
pub enum PullError {
    #[error("registry {registry} unreachable: {reason}")]
    Unreachable { registry: String, reason: String },

    #[error("manifest unknown: {reference} of {repository} at {registry}")]
    ManifestUnknown {
        registry: String,
        repository: String,
        /// `tag <tag>` or `digest sha256:…`.
        reference: String,
    },

    #[error("repository unknown: {repository} at {registry}")]
    RepositoryUnknown {
        registry: String,
        repository: String,
    },

    #[error("blob unknown: {digest} of {repository} at {registry}")]
    BlobUnknown {
        registry: String,
        repository: String,
        digest: String,
    },

    #[error("registry {registry} refused access to {repository}: {reason}")]
    Unauthorized {
        registry: String,
        repository: String,
        reason: String,
    },

    #[error("registry {registry} failed to serve {what}: {reason}")]
    Registry {
        registry: String,
        what: String,
        reason: String,
    },

    /// `what` is `manifest` or `blob`; `expected` is the digest it was
    /// fetched by (for a pinned reference, the pinned digest).
    #[error("digest mismatch for {what} {expected}: got {actual}")]
    DigestMismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },

    #[error("{what} {digest} is longer than the {size} bytes its descriptor gives")]
    TooLong {
        what: &'static str,
        digest: String,
        size: u64,
    },

    #[error("{what} {digest} is {got} bytes, its descriptor gives {size}")]
    SizeMismatch {
        what: &'static str,
        digest: String,
        size: u64,
        got: u64,
    },

    #[error("{what} {digest} is {size} bytes, more than the {limit} this store accepts")]
    TooLarge {
        what: &'static str,
        digest: String,
        size: u64,
        limit: u64,
    },

    #[error("{image}: {what} {digest} is not usable: {reason}")]
    BadDocument {
        image: String,
        what: &'static str,
        digest: String,
        reason: String,
    },

    #[error(
        "{image} has no {platform} image (the index lists {})",
        list_or_none(available)
    )]
    NoPlatform {
        image: String,
        platform: String,
        available: Vec<String>,
    },

    #[error("{image} is built for {image_platform}, this node runs {node_platform}")]
    WrongPlatform {
        image: String,
        image_platform: String,
        node_platform: String,
    },

    #[error("layer {digest} has media type {media_type:?}, not a tar, tar+gzip or tar+zstd layer")]
    UnsupportedLayer { digest: String, media_type: String },

    #[error("layer {digest} refused: {source}")]
    Layer {
        digest: String,
        #[source]
        source: UnpackError,
    },

    #[error("layer {digest} unpacks to {actual} but the image config says {expected}")]
    DiffIdMismatch {
        digest: String,
        expected: String,
        actual: String,
    },

    #[error("TLS setup for registry {registry} failed: {reason}")]
    Tls { registry: String, reason: String },

    #[error(transparent)]
    Store(#[from] StoreError),
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "no platforms".to_string()
    } else {
        v.join(", ")
    }
}

/// Why a layer could not be unpacked. Whatever the reason, the layer's
/// temporary directory is removed and the store is as it was.
#[derive(Debug, Error)]
pub enum UnpackError {
    /// An absolute path, or one with a `..` component.
    #[error("entry {entry:?} leaves the layer: {why}")]
    Escapes { entry: String, why: &'static str },

    #[error("entry {entry:?} leaves the layer: it goes through the symlink {link:?}, which unpacking never follows")]
    ThroughSymlink { entry: String, link: String },

    #[error("entry {entry:?} is under {parent:?}, which is not a directory")]
    ParentNotDirectory { entry: String, parent: String },

    #[error("hard link {entry:?} points to {target:?}, which {why}")]
    BadHardLink {
        entry: String,
        target: String,
        why: &'static str,
    },

    /// `.wh.`, `.wh..`, `.wh...`: not the name of one file in the directory.
    #[error("whiteout {entry:?} does not name one file of its directory")]
    BadWhiteout { entry: String },

    #[error("entry {entry:?} is a {kind} device node, which a layer may not hold")]
    DeviceNode { entry: String, kind: &'static str },

    #[error("entry {entry:?} has type {kind}, which a layer may not hold")]
    UnsupportedEntry { entry: String, kind: String },

    #[error("the layer has more than {limit} entries, its limit")]
    TooManyEntries { limit: u64 },

    /// A PAX extended or global header, or a GNU long name or link.
    #[error("a {kind} of {size} bytes is over the limit of {limit} bytes")]
    HeaderTooLarge {
        kind: &'static str,
        size: u64,
        limit: u64,
    },

    #[error("entry {entry:?}… has a name of {size} bytes, over the limit of {limit} bytes")]
    NameTooLong {
        entry: String,
        size: u64,
        limit: u64,
    },

    #[error("the uncompressed layer is over the limit of {limit} bytes")]
    TooLarge { limit: u64 },

    /// `budget` says which bound it was: the per-layer limit or the space
    /// free in the store.
    #[error("entry {entry:?} takes the layer's files over {limit} bytes, {budget}")]
    FilesTooLarge {
        entry: String,
        limit: u64,
        budget: &'static str,
    },

    #[error("the layer is not a valid {format} stream: {reason}")]
    Corrupt {
        format: &'static str,
        reason: String,
    },

    #[error("cannot {action} {entry:?}: {source}")]
    Io {
        action: &'static str,
        entry: String,
        #[source]
        source: io::Error,
    },
}
