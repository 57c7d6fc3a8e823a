//! The content-addressed image store on the state partition.
//!
//! ```text
//! <root>/blobs/sha256/<hex>      manifests, indexes and image configs, by digest
//! <root>/layers/sha256/<hex>/    one unpacked layer tree, named by the digest of
//!                                the compressed layer blob the manifest lists
//! <root>/layers/.unpack-…/       a layer being unpacked (never in sha256/)
//! <root>/images/<ref>.json       what a reference resolved to: manifest, index
//!                                and config digests and the ordered layer list
//! ```
//!
//! Anything whose name starts with `.` is work in progress (a download, an
//! unpack, a removal) and is never read; [`Store::open`] and [`Store::gc`]
//! clear what a crash left. A blob is written to a temporary file in its
//! directory, fsynced, renamed and the directory fsynced; a layer is
//! unpacked through the handle of a private temporary directory in
//! `layers/` (see [`crate::unpack`]), checked against its diff ID, the
//! filesystem synced, then renamed into `layers/sha256/`: a name in the
//! store always means complete, verified content. A refused layer has only
//! its temporary directory removed, through the handle of `layers/` and
//! without following a symlink, so the store is left exactly as it was. A layer's
//! compressed blob is dropped once unpacked (the tree is what is used, and
//! /var is small); its directory's name keeps its digest, so a layer that
//! is there is never fetched again, whichever image asks for it.

use crate::beneath::{kind_at, open_dir_at, remove_at, remove_tree_at};
use crate::digest::{is_sha256_hex, Sha256Digest};
use crate::error::{PullError, StoreError};
use crate::manifest::Platform;
use crate::unpack::{unpack_layer, Compression, Limits};
use oci_spec::image::ImageConfiguration;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The node's image store. Cheap to clone; clones share one lock, which
/// lets pulls run side by side and [`Store::gc`] run alone. One process
/// owns a store root.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) root: PathBuf,
    pub(crate) platform: Platform,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) lock: Arc<tokio::sync::RwLock<()>>,
    pub(crate) limits: Limits,
}

/// A pulled image: what a container is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct Pulled {
    /// The image reference with every default spelled out
    /// (`docker.io/library/nginx:latest`).
    pub reference: String,
    /// The digest of the image manifest for this node's platform.
    pub manifest_digest: String,
    /// The digest of the index (manifest list) it was chosen from, if any.
    pub index_digest: Option<String>,
    pub config_digest: String,
    pub config: ImageConfiguration,
    /// The unpacked layer directories, lowest first (overlayfs wants them
    /// highest first in `lowerdir=`).
    pub layers: Vec<PathBuf>,
    /// The compressed layer digests, in the same order as `layers`.
    pub layer_digests: Vec<String>,
}

/// What [`Store::gc`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    pub images: usize,
    pub blobs: usize,
    pub layers: usize,
}

/// `images/<ref>.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub(crate) reference: String,
    pub(crate) manifest_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) index_digest: Option<String>,
    pub(crate) config_digest: String,
    pub(crate) layers: Vec<String>,
}

/// The largest image config kept in memory.
pub(crate) const MAX_CONFIG_BYTES: u64 = 8 * 1024 * 1024;

impl Store {
    /// Opens (creating as needed) the store under `root`, on the node
    /// /var/lib/carapace/containers, and clears what an interrupted pull or
    /// collection left behind. Images are chosen for linux on this
    /// program's architecture. HTTPS registries are refused until
    /// [`Store::with_tls_roots`] says which roots to trust (the node has no
    /// CA bundle); plain HTTP ones (insecure) work without.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let store = Store {
            root: root.into(),
            platform: Platform::this_machine(),
            tls: None,
            lock: Arc::new(tokio::sync::RwLock::new(())),
            limits: Limits::default(),
        };
        for dir in [store.blobs_dir(), store.layers_dir(), store.images_dir()] {
            fs::create_dir_all(&dir).map_err(|e| StoreError::new("create", &dir, e))?;
        }
        // `layers/` holds the unpacks a power cut interrupted.
        for dir in [
            store.blobs_dir(),
            store.layers_dir(),
            store.unpack_dir(),
            store.images_dir(),
        ] {
            for entry in read_dir(&dir)? {
                if entry.name.starts_with('.') {
                    remove_any(&entry.path)?;
                }
            }
        }
        Ok(store)
    }

    /// Chooses images for `platform` (default: linux on this machine's
    /// architecture, linux/amd64 on a Carapace node).
    pub fn with_platform(mut self, platform: Platform) -> Store {
        self.platform = platform;
        self
    }

    /// Bounds every layer unpacked from now on (default: [`Limits::default`]).
    pub fn with_limits(mut self, limits: Limits) -> Store {
        self.limits = limits;
        self
    }

    /// Trusts exactly these roots for HTTPS registries (and their token
    /// services and blob redirects), with rustls and the ring provider.
    pub fn with_tls_roots(mut self, roots: rustls::RootCertStore) -> Store {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_or_else(
            // ring supports the default versions; only a rustls build
            // without them would get here, and then HTTPS stays refused.
            |_| None,
            |b| Some(b.with_root_certificates(roots).with_no_client_auth()),
        );
        if let Some(c) = &mut config {
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        self.tls = config.map(Arc::new);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.unpack_dir().join("sha256")
    }

    /// `layers/`: where layers are unpacked before they get their name.
    pub(crate) fn unpack_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub(crate) fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    pub(crate) fn blob_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    pub(crate) fn layer_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.layers_dir().join(digest.hex())
    }

    pub(crate) fn record_path(&self, canonical: &str) -> PathBuf {
        self.images_dir().join(record_file_name(canonical))
    }

    /// The image `image` resolved to when it was last pulled, if all of it
    /// is still in the store: no network, no registry. The config is read
    /// and checked against its digest again (a few small blocking reads).
    pub fn lookup(&self, image: &carapace_model::containers::ImageRef) -> Option<Pulled> {
        let canonical = image.canonical();
        let bytes = fs::read(self.record_path(&canonical)).ok()?;
        let record: ImageRecord = serde_json::from_slice(&bytes).ok()?;
        if record.reference != canonical {
            return None;
        }
        let config_digest = Sha256Digest::parse(&record.config_digest).ok()?;
        let config_bytes = fs::read(self.blob_path(&config_digest)).ok()?;
        if Sha256Digest::of(&config_bytes) != config_digest {
            return None;
        }
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes).ok()?;
        let mut layers = Vec::with_capacity(record.layers.len());
        for layer in &record.layers {
            let path = self.layer_path(&Sha256Digest::parse(layer).ok()?);
            if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                return None;
            }
            layers.push(path);
        }
        Some(Pulled {
            reference: record.reference,
            manifest_digest: record.manifest_digest,
            index_digest: record.index_digest,
            config_digest: record.config_digest,
            config,
            layers,
            layer_digests: record.layers,
        })
    }

    /// Removes every image record, blob and layer that no image in `keep`
    /// uses, and whatever interrupted work left. Waits for running pulls to
    /// finish and holds further pulls until done. A layer is renamed away
    /// before it is deleted, so a crash midway never leaves part of a layer
    /// under its digest.
    pub async fn gc(&self, keep: &[Pulled]) -> Result<GcReport, StoreError> {
        let _alone = self.lock.write().await;
        let mut refs = HashSet::new();
        let mut blobs = HashSet::new();
        let mut layers = HashSet::new();
        let hex = |d: &str| d.strip_prefix("sha256:").unwrap_or(d).to_string();
        for p in keep {
            refs.insert(p.reference.clone());
            blobs.insert(hex(&p.manifest_digest));
            blobs.insert(hex(&p.config_digest));
            if let Some(i) = &p.index_digest {
                blobs.insert(hex(i));
            }
            layers.extend(p.layer_digests.iter().map(|d| hex(d)));
        }
        let store = self.clone();
        let images_dir = self.images_dir();
        tokio::task::spawn_blocking(move || store.collect(&refs, &blobs, &layers))
            .await
            .map_err(|e| StoreError::new("collect garbage in", images_dir, io::Error::other(e)))?
    }

    /// Unpacks the verified layer blob `blob` as the layer `digest`: into a
    /// private temporary directory of `layers/`, through its handle, checked
    /// against `diff_id`, synced, then renamed to `layers/sha256/<hex>`. On
    /// any error only that temporary directory is removed. Blocking.
    pub(crate) fn install_layer(
        &self,
        blob: &Path,
        compression: Compression,
        digest: &Sha256Digest,
        diff_id: &str,
    ) -> Result<PathBuf, PullError> {
        let unpack_dir = self.unpack_dir();
        let layers = open_dir(&unpack_dir)?;
        let named = open_dir_at(layers.as_fd(), OsStr::new("sha256"))
            .map_err(|e| StoreError::new("open", self.layers_dir(), e))?;
        let temp = OsString::from(temp_name("unpack", digest.hex()));
        let temp_path = unpack_dir.join(&temp);
        rustix::fs::mkdirat(&layers, &temp, Mode::from_bits_truncate(0o700))
            .map_err(|e| StoreError::new("create", &temp_path, e.into()))?;
        let guard = TempDir {
            parent: layers.as_fd(),
            name: &temp,
            armed: true,
        };
        let root = open_dir_at(layers.as_fd(), &temp)
            .map_err(|e| StoreError::new("open", &temp_path, e))?;
        let space_free = rustix::fs::fstatvfs(&layers)
            .map(|v| v.f_bavail.saturating_mul(v.f_frsize))
            .map_err(|e| StoreError::new("measure the space free in", &unpack_dir, e.into()))?
            .saturating_sub(self.limits.keep_free);
        let refused = |source| PullError::Layer {
            digest: digest.to_string(),
            source,
        };
        let actual = unpack_layer(blob, compression, root.as_fd(), &self.limits, space_free)
            .map_err(refused)?;
        if actual.to_string() != diff_id {
            return Err(PullError::DiffIdMismatch {
                digest: digest.to_string(),
                expected: diff_id.to_string(),
                actual: actual.to_string(),
            });
        }
        // Everything unpacked reaches the disk before the name does.
        rustix::fs::syncfs(&root).map_err(|e| StoreError::new("sync", &temp_path, e.into()))?;
        drop(root);
        let path = self.layer_path(digest);
        match rustix::fs::renameat_with(
            &layers,
            &temp,
            &named,
            digest.hex(),
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => guard.disarm(),
            // Another pull put the same layer in place first.
            Err(Errno::EXIST | Errno::NOTEMPTY)
                if kind_at(named.as_fd(), OsStr::new(digest.hex()))
                    .is_ok_and(|k| k == Some(FileType::Directory)) => {}
            Err(e) => return Err(StoreError::new("rename into", &path, e.into()).into()),
        }
        rustix::fs::fsync(&named)
            .and_then(|()| rustix::fs::fsync(&layers))
            .map_err(|e| StoreError::new("fsync", &unpack_dir, e.into()))?;
        Ok(path)
    }

    fn collect(
        &self,
        refs: &HashSet<String>,
        blobs: &HashSet<String>,
        layers: &HashSet<String>,
    ) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();

        let images_dir = self.images_dir();
        for entry in read_dir(&images_dir)? {
            let kept = !entry.name.starts_with('.')
                && fs::read(&entry.path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<ImageRecord>(&b).ok())
                    .is_some_and(|r| refs.contains(&r.reference));
            if !kept {
                remove_any(&entry.path)?;
                report.images += usize::from(!entry.name.starts_with('.'));
            }
        }
        fsync_dir(&images_dir)?;

        let blobs_dir = self.blobs_dir();
        for entry in read_dir(&blobs_dir)? {
            if is_sha256_hex(&entry.name) && blobs.contains(&entry.name) {
                continue;
            }
            remove_any(&entry.path)?;
            report.blobs += usize::from(is_sha256_hex(&entry.name));
        }
        fsync_dir(&blobs_dir)?;

        let layers_dir = self.layers_dir();
        for entry in read_dir(&layers_dir)? {
            if is_sha256_hex(&entry.name) && layers.contains(&entry.name) {
                continue;
            }
            if is_sha256_hex(&entry.name) {
                let trash = layers_dir.join(temp_name("gc", &entry.name));
                fs::rename(&entry.path, &trash)
                    .map_err(|e| StoreError::new("move away", &entry.path, e))?;
                fsync_dir(&layers_dir)?;
                remove_any(&trash)?;
                report.layers += 1;
            } else {
                remove_any(&entry.path)?;
            }
        }
        fsync_dir(&layers_dir)?;
        Ok(report)
    }
}

/// The record's file name: the canonical reference with every byte other
/// than `A-Za-z0-9._-` written `%XX` (so `/`, `:` and `@` cannot make
/// paths), or its digest when that would be too long for a file name.
pub(crate) fn record_file_name(canonical: &str) -> String {
    let mut name = String::with_capacity(canonical.len() + 16);
    for b in canonical.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    if name.len() > 200 || name.starts_with('.') {
        name = format!("sha256-{}", Sha256Digest::of(canonical.as_bytes()).hex());
    }
    name.push_str(".json");
    name
}

/// A unique name for work in progress: hidden, so it is never read as content.
pub(crate) fn temp_name(kind: &str, hex: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        ".{kind}-{hex}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A temporary directory (by name in its parent's handle) that is removed
/// when dropped, unless kept.
struct TempDir<'a> {
    parent: BorrowedFd<'a>,
    name: &'a OsStr,
    armed: bool,
}

impl TempDir<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempDir<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = remove_tree_at(self.parent, self.name);
        }
    }
}

/// A directory of the store itself (a trusted path), opened.
fn open_dir(path: &Path) -> Result<OwnedFd, StoreError> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| StoreError::new("open", path, e.into()))
}

/// A file or directory that is removed when dropped, unless kept.
pub(crate) struct TempPath {
    path: PathBuf,
    armed: bool,
}

impl TempPath {
    pub(crate) fn new(dir: &Path, kind: &str, hex: &str) -> Self {
        TempPath {
            path: dir.join(temp_name(kind, hex)),
            armed: true,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// It was renamed into place: nothing to clean.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.armed {
            let _ = remove_any(&self.path);
        }
    }
}

pub(crate) struct DirEntry {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
}

fn read_dir(dir: &Path) -> Result<Vec<DirEntry>, StoreError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StoreError::new("list", dir, e))? {
        let entry = entry.map_err(|e| StoreError::new("list", dir, e))?;
        out.push(DirEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            path: entry.path(),
        });
    }
    Ok(out)
}

/// Removes a file, or a directory and everything in it, through the handle
/// of its directory (never following a symlink, whatever the depth of the
/// tree); already gone is fine.
pub(crate) fn remove_any(path: &Path) -> Result<(), StoreError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(StoreError::new(
            "remove",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "not a file in a directory"),
        ));
    };
    let dir = match open_dir(parent) {
        Ok(dir) => dir,
        Err(e) if e.source.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    remove_at(dir.as_fd(), name)
        .map(|_| ())
        .map_err(|e| StoreError::new("remove", path, e))
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::new("fsync", dir, e))
}

/// Writes `bytes` as `dir/name`, whole or not at all: a temporary file,
/// fsynced, renamed, the directory fsynced.
pub(crate) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let temp = TempPath::new(dir, "new", name);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp.path())
        .map_err(|e| StoreError::new("create", temp.path(), e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::new("write", temp.path(), e))?;
    let path = dir.join(name);
    rename_into_place(&temp, &path)?;
    temp.disarm();
    fsync_dir(dir)
}

pub(crate) fn rename_into_place(temp: &TempPath, path: &Path) -> Result<(), StoreError> {
    fs::rename(temp.path(), path).map_err(|e| StoreError::new("rename into", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_are_single_safe_file_names() {
        assert_eq!(
            record_file_name("10.0.2.2:5000/test/hello:v1"),
            "10.0.2.2%3A5000%2Ftest%2Fhello%3Av1.json"
        );
        let pinned = format!("docker.io/library/nginx@sha256:{}", "a".repeat(64));
        let name = record_file_name(&pinned);
        assert!(!name.contains('/') && !name.contains(':'), "{name}");
        let long = format!("r.io/{}:{}", "x".repeat(200), "t".repeat(100));
        let name = record_file_name(&long);
        assert!(name.starts_with("sha256-") && name.len() < 255, "{name}");
        assert_ne!(record_file_name("r.io/a:b"), record_file_name("r.io/a%3Ab"));
    }
}
