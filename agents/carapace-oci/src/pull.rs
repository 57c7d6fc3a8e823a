//! A pull: reference → manifest (through the index for this node's
//! platform) → config → layers, each checked against the digest it was
//! fetched by before it gets a name in the store, and nothing fetched that
//! the store already has.

use crate::digest::Sha256Digest;
use crate::error::{PullError, StoreError};
use crate::manifest::{parse_document, select_manifest, Document, MAX_MANIFEST_BYTES};
use crate::registry::Remote;
use crate::store::{
    fsync_dir, rename_into_place, write_atomically, ImageRecord, Pulled, Store, TempPath,
    MAX_CONFIG_BYTES,
};
use crate::unpack::Compression;
use carapace_model::containers::{ImageRef, Registry};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};
use std::fs;
use std::io;
use std::path::PathBuf;

impl Store {
    /// Pulls `image` into the store and returns it. A pinned reference
    /// (`…@sha256:`) is pulled exactly: the manifest (or index) must hash to
    /// the pinned digest, and one already in the store is not asked for
    /// again. A tag is always resolved by the registry (tags move); only
    /// blobs and layers the store lacks are downloaded. `credentials` (user,
    /// password) are used for basic auth or to get a bearer token;
    /// `insecure` means plain HTTP.
    pub async fn pull(
        &self,
        image: &ImageRef,
        credentials: Option<(&str, &str)>,
        insecure: bool,
    ) -> Result<Pulled, PullError> {
        let _shared = self.lock.read().await;
        let mut remote = Remote::new(image, credentials, insecure, self.tls.clone());
        let name = image.canonical();
        let bad = |what: &'static str, digest: &dyn std::fmt::Display, reason: String| {
            PullError::BadDocument {
                image: name.clone(),
                what,
                digest: digest.to_string(),
                reason,
            }
        };

        let (top_digest, top) = match image.digest() {
            Some(pinned) => {
                let digest = Sha256Digest::parse(pinned)
                    .map_err(|reason| bad("manifest", &pinned, reason))?;
                let bytes = self.manifest_by_digest(&mut remote, &digest, None).await?;
                (digest, bytes)
            }
            None => {
                let tag = image.tag().unwrap_or("latest");
                let (bytes, digest) = remote.manifest(tag).await?;
                check_manifest_size(&digest, bytes.len() as u64)?;
                self.keep_blob(&digest, &bytes).await?;
                (digest, bytes)
            }
        };

        let (index_digest, manifest_digest, manifest) = match parse_document(&top)
            .map_err(|reason| bad("manifest", &top_digest, reason))?
        {
            Document::Manifest(m) => (None, top_digest, m),
            Document::Index(index) => {
                let entry = select_manifest(&index, &self.platform).map_err(|available| {
                    PullError::NoPlatform {
                        image: name.clone(),
                        platform: self.platform.to_string(),
                        available,
                    }
                })?;
                let digest =
                    descriptor_digest(entry).map_err(|reason| bad("index", &top_digest, reason))?;
                let bytes = self
                    .manifest_by_digest(&mut remote, &digest, Some(entry.size()))
                    .await?;
                match parse_document(&bytes).map_err(|reason| bad("manifest", &digest, reason))? {
                    Document::Manifest(m) => (Some(top_digest), digest, m),
                    Document::Index(_) => {
                        return Err(bad("manifest", &digest, "an index inside an index".into()))
                    }
                }
            }
        };

        let (config_digest, config) = self
            .config(&mut remote, &name, &manifest_digest, &manifest)
            .await?;
        if config.os().to_string() != self.platform.os
            || config.architecture().to_string() != self.platform.architecture
        {
            return Err(PullError::WrongPlatform {
                image: name,
                image_platform: format!("{}/{}", config.os(), config.architecture()),
                node_platform: self.platform.to_string(),
            });
        }
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(bad(
                "config",
                &config_digest,
                format!(
                    "it lists {} layer diff IDs, the manifest {} layers",
                    diff_ids.len(),
                    manifest.layers().len()
                ),
            ));
        }

        let mut layers = Vec::with_capacity(manifest.layers().len());
        let mut layer_digests = Vec::with_capacity(manifest.layers().len());
        for (descriptor, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let digest = descriptor_digest(descriptor)
                .map_err(|reason| bad("manifest", &manifest_digest, reason))?;
            layers.push(
                self.layer(&mut remote, &digest, descriptor, diff_id)
                    .await?,
            );
            layer_digests.push(digest.to_string());
        }

        let record = ImageRecord {
            reference: name.clone(),
            manifest_digest: manifest_digest.to_string(),
            index_digest: index_digest.as_ref().map(ToString::to_string),
            config_digest: config_digest.to_string(),
            layers: layer_digests.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&record).map_err(|e| {
            StoreError::new("serialize", self.record_path(&name), io::Error::other(e))
        })?;
        let dir = self.images_dir();
        let file_name = crate::store::record_file_name(&name);
        blocking(move || write_atomically(&dir, &file_name, &bytes)).await?;

        Ok(Pulled {
            reference: name,
            manifest_digest: record.manifest_digest,
            index_digest: record.index_digest,
            config_digest: record.config_digest,
            config,
            layers,
            layer_digests,
        })
    }

    /// [`Store::pull`] with the `registries` settings entry of the image's
    /// registry (credentials, plain HTTP), if there is one.
    pub async fn pull_with(
        &self,
        image: &ImageRef,
        registry: Option<&Registry>,
    ) -> Result<Pulled, PullError> {
        let credentials = registry
            .and_then(|r| Some((r.username.as_ref()?.as_str(), r.password.as_ref()?.expose())));
        self.pull(image, credentials, registry.is_some_and(|r| r.insecure))
            .await
    }

    /// A manifest or index by digest: from the store if there, else from
    /// the registry (checked against the digest and, from an index entry,
    /// the entry's size) and then kept.
    async fn manifest_by_digest(
        &self,
        remote: &mut Remote,
        digest: &Sha256Digest,
        size: Option<u64>,
    ) -> Result<Vec<u8>, PullError> {
        if let Some(size) = size {
            check_manifest_size(digest, size)?;
        }
        if let Some(bytes) = self.stored_blob(digest, MAX_MANIFEST_BYTES).await {
            return Ok(bytes);
        }
        let (bytes, _) = remote.manifest(&digest.to_string()).await?;
        let got = bytes.len() as u64;
        check_manifest_size(digest, got)?;
        if let Some(size) = size.filter(|&s| s != got) {
            return Err(PullError::SizeMismatch {
                what: "manifest",
                digest: digest.to_string(),
                size,
                got,
            });
        }
        self.keep_blob(digest, &bytes).await?;
        Ok(bytes)
    }

    async fn config(
        &self,
        remote: &mut Remote,
        image: &str,
        manifest_digest: &Sha256Digest,
        manifest: &ImageManifest,
    ) -> Result<(Sha256Digest, ImageConfiguration), PullError> {
        let descriptor = manifest.config();
        let digest = descriptor_digest(descriptor).map_err(|reason| PullError::BadDocument {
            image: image.to_string(),
            what: "manifest",
            digest: manifest_digest.to_string(),
            reason,
        })?;
        if descriptor.size() > MAX_CONFIG_BYTES {
            return Err(PullError::TooLarge {
                what: "config",
                digest: digest.to_string(),
                size: descriptor.size(),
                limit: MAX_CONFIG_BYTES,
            });
        }
        let bytes = match self.stored_blob(&digest, MAX_CONFIG_BYTES).await {
            Some(bytes) => bytes,
            None => {
                let temp = TempPath::new(&self.blobs_dir(), "download", digest.hex());
                remote
                    .blob_to_file(&digest, descriptor.size(), "config", temp.path())
                    .await?;
                let bytes = tokio::fs::read(temp.path())
                    .await
                    .map_err(|e| StoreError::new("read", temp.path(), e))?;
                let path = self.blob_path(&digest);
                let dir = self.blobs_dir();
                blocking(move || {
                    rename_into_place(&temp, &path)?;
                    temp.disarm();
                    fsync_dir(&dir)
                })
                .await?;
                bytes
            }
        };
        let config = serde_json::from_slice(&bytes).map_err(|e| PullError::BadDocument {
            image: image.to_string(),
            what: "config",
            digest: digest.to_string(),
            reason: e.to_string(),
        })?;
        Ok((digest, config))
    }

    /// The unpacked directory of one layer: there already, or downloaded
    /// (verified) and installed ([`Store::install_layer`]).
    async fn layer(
        &self,
        remote: &mut Remote,
        digest: &Sha256Digest,
        descriptor: &Descriptor,
        diff_id: &str,
    ) -> Result<PathBuf, PullError> {
        let path = self.layer_path(digest);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            return Ok(path);
        }
        let media_type = descriptor.media_type().to_string();
        let compression =
            Compression::of_media_type(&media_type).ok_or_else(|| PullError::UnsupportedLayer {
                digest: digest.to_string(),
                media_type: media_type.clone(),
            })?;
        let blob = TempPath::new(&self.blobs_dir(), "download", digest.hex());
        remote
            .blob_to_file(digest, descriptor.size(), "blob", blob.path())
            .await?;

        let store = self.clone();
        let (blob_path, digest_owned, diff_id) = (
            blob.path().to_path_buf(),
            digest.clone(),
            diff_id.to_string(),
        );
        let layers_dir = self.layers_dir();
        let installed = tokio::task::spawn_blocking(move || {
            store.install_layer(&blob_path, compression, &digest_owned, &diff_id)
        })
        .await
        .map_err(|e| StoreError::new("unpack into", &layers_dir, io::Error::other(e)))?;
        drop(blob);
        installed
    }

    /// A blob the store has, checked against its digest again; None if it
    /// is missing or damaged (a damaged one is removed, to be fetched anew).
    async fn stored_blob(&self, digest: &Sha256Digest, limit: u64) -> Option<Vec<u8>> {
        let path = self.blob_path(digest);
        let meta = tokio::fs::symlink_metadata(&path).await.ok()?;
        if meta.is_file() && meta.len() <= limit {
            if let Ok(bytes) = tokio::fs::read(&path).await {
                if &Sha256Digest::of(&bytes) == digest {
                    return Some(bytes);
                }
            }
        }
        let _ = tokio::fs::remove_file(&path).await;
        None
    }

    /// Keeps verified bytes as the blob `digest`.
    async fn keep_blob(&self, digest: &Sha256Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let dir = self.blobs_dir();
        let name = digest.hex().to_string();
        let bytes = bytes.to_vec();
        blocking(move || write_atomically(&dir, &name, &bytes)).await
    }
}

fn descriptor_digest(d: &Descriptor) -> Result<Sha256Digest, String> {
    Sha256Digest::parse(d.digest().as_ref())
}

fn check_manifest_size(digest: &Sha256Digest, size: u64) -> Result<(), PullError> {
    if size > MAX_MANIFEST_BYTES {
        return Err(PullError::TooLarge {
            what: "manifest",
            digest: digest.to_string(),
            size,
            limit: MAX_MANIFEST_BYTES,
        });
    }
    Ok(())
}

/// Runs file work that fsyncs off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::new(
            "finish writing",
            PathBuf::from("the image store"),
            io::Error::other(e),
        ))
    })
}
