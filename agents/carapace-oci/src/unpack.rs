//! Unpacking one layer (a tar stream, plain, gzip or zstd) into a directory
//! that overlayfs can use as a lower layer.
//!
//! Every entry is placed by our own code, one path component at a time from
//! the layer directory down: an entry whose path is absolute or holds `..`,
//! or whose parent is a symlink (even one made earlier by the same layer),
//! is refused, so nothing is ever written outside the layer directory.
//! Modes (setuid included), ownership, mtimes, symlinks, hard links, device
//! nodes and `SCHILY.xattr` extended attributes are kept, except
//! `trusted.overlay.*`: those are overlayfs' own, and only the whiteout
//! conversion sets them. OCI whiteouts become what overlayfs reads:
//! `.wh.<name>` a 0/0 character device `<name>`, `.wh..wh..opq` the
//! `trusted.overlay.opaque=y` attribute on its directory; a whiteout of `.`
//! or `..` (`.wh..`, `.wh...`) refuses the layer, since it would remove the
//! directory or its parent — for a layer's root, the shared store. Needs
//! root (mknod, chown, trusted xattrs).
//!
//! The uncompressed stream is hashed as it is read: the result is the
//! layer's diff ID, which the caller checks against the image config.

use crate::digest::Sha256Digest;
use crate::error::UnpackError;
use flate2::read::MultiGzDecoder;
use rustix::fs::{AtFlags, FileType, Mode, Timestamps, XattrFlags, CWD};
use sha2::{Digest as _, Sha256};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use tar::EntryType;

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a layer media type; None for anything that is not
    /// a tar layer.
    pub(crate) fn of_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }

    fn format(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "gzip tar",
            Compression::Zstd => "zstd tar",
        }
    }
}

/// Unpacks the layer blob at `blob` into `dest`, which must not exist yet,
/// and returns the layer's diff ID (the digest of the uncompressed tar).
/// On error `dest` may hold part of the layer: the caller removes it.
pub(crate) fn unpack_layer(
    blob: &Path,
    compression: Compression,
    dest: &Path,
) -> Result<Sha256Digest, UnpackError> {
    let file = File::open(blob).map_err(io_error("open", blob))?;
    let input = BufReader::with_capacity(256 * 1024, file);
    let decompressed: Box<dyn Read> = match compression {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(ZstdFrames::new(input)),
    };
    let mut stream = HashingReader {
        inner: decompressed,
        hasher: Sha256::new(),
    };
    let corrupt = |e: io::Error| UnpackError::Corrupt {
        format: compression.format(),
        reason: error_chain(&e),
    };

    fs::create_dir(dest).map_err(io_error("create", dest))?;
    fs::set_permissions(dest, Permissions::from_mode(0o755)).map_err(io_error("chmod", dest))?;
    let mut unpacker = Unpacker {
        root: dest,
        dirs: Vec::new(),
        format: compression.format(),
    };
    {
        let mut archive = tar::Archive::new(&mut stream);
        for entry in archive.entries().map_err(corrupt)? {
            unpacker.entry(entry.map_err(corrupt)?)?;
        }
    }
    unpacker.finish_directories()?;
    // The diff ID covers the whole stream, padding after the end marker too.
    io::copy(&mut stream, &mut io::sink()).map_err(corrupt)?;
    Ok(Sha256Digest::finish(stream.hasher))
}

/// Metadata applied to directories once all entries are in place, so that
/// a read-only mode or an mtime is not spoiled by what is created inside.
struct DirectoryMeta {
    path: PathBuf,
    meta: Meta,
}

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

struct Unpacker<'a> {
    root: &'a Path,
    dirs: Vec<DirectoryMeta>,
    format: &'static str,
}

impl Unpacker<'_> {
    fn corrupt(&self, e: &io::Error) -> UnpackError {
        UnpackError::Corrupt {
            format: self.format,
            reason: error_chain(e),
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let raw = entry.path().map_err(|e| self.corrupt(&e))?.into_owned();
        let name = raw.display().to_string();
        let Some(rel) = relative(&raw, &name)? else {
            // The layer root itself (`./`): its attributes are not the layer's to set.
            return Ok(());
        };
        let parent = self.parent_directory(&rel, &name)?;
        let file_name = rel.file_name().unwrap_or_default().to_owned();

        if let Some(hidden) = file_name.as_bytes().strip_prefix(b".wh.") {
            if hidden == b".wh..opq" {
                rustix::fs::lsetxattr(&parent, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                    .map_err(|e| UnpackError::Io {
                        action: "mark opaque",
                        entry: name.clone(),
                        source: e.into(),
                    })?;
            } else if hidden == b"." || hidden == b".." {
                // `.wh..` and `.wh...` would whiteout the directory itself or
                // its parent: outside the entry's own directory, and for
                // `layers/sha256/<digest>` that parent is the shared store.
                return Err(UnpackError::Escapes { entry: name });
            } else if !hidden.starts_with(b".wh.") && !hidden.is_empty() {
                let target = parent.join(OsStr::from_bytes(hidden));
                remove_existing(&target).map_err(io_error_entry("replace", &name))?;
                rustix::fs::mknodat(
                    CWD,
                    &target,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(|e| UnpackError::Io {
                    action: "create the whiteout for",
                    entry: name.clone(),
                    source: e.into(),
                })?;
            }
            // Other `.wh..wh.` names are AUFS bookkeeping with nothing to apply.
            return Ok(());
        }

        let dst = parent.join(&file_name);
        let meta = self.meta(&mut entry)?;
        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&dst) {
                    Ok(m) if m.is_dir() => {}
                    _ => {
                        remove_existing(&dst).map_err(io_error_entry("replace", &name))?;
                        fs::create_dir(&dst).map_err(io_error_entry("create", &name))?;
                    }
                }
                self.dirs.push(DirectoryMeta { path: dst, meta });
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                remove_existing(&dst).map_err(io_error_entry("replace", &name))?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&dst)
                    .map_err(io_error_entry("create", &name))?;
                self.copy_data(&mut entry, &mut file, &name)?;
                apply_meta(&dst, &meta, true, &name)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.corrupt(&e))?
                    .ok_or_else(|| UnpackError::Corrupt {
                        format: self.format,
                        reason: format!("symlink {name:?} has no target"),
                    })?
                    .into_owned();
                remove_existing(&dst).map_err(io_error_entry("replace", &name))?;
                std::os::unix::fs::symlink(&target, &dst)
                    .map_err(io_error_entry("create symlink", &name))?;
                apply_meta(&dst, &meta, false, &name)?;
            }
            EntryType::Link => {
                let target_raw = entry
                    .link_name()
                    .map_err(|e| self.corrupt(&e))?
                    .ok_or_else(|| UnpackError::Corrupt {
                        format: self.format,
                        reason: format!("hard link {name:?} has no target"),
                    })?
                    .into_owned();
                let target_name = target_raw.display().to_string();
                let bad = |why| UnpackError::BadHardLink {
                    entry: name.clone(),
                    target: target_name.clone(),
                    why,
                };
                let target_rel = match relative(&target_raw, &target_name) {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err(bad("is the layer directory")),
                    Err(_) => return Err(bad("is outside the layer directory")),
                };
                let target = self.existing(&target_rel).map_err(bad)?;
                if target == dst {
                    return Ok(());
                }
                remove_existing(&dst).map_err(io_error_entry("replace", &name))?;
                fs::hard_link(&target, &dst).map_err(io_error_entry("hard link", &name))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let header = entry.header();
                // A FIFO has no device number (writers may leave the fields empty).
                let device = if kind == EntryType::Fifo {
                    rustix::fs::makedev(0, 0)
                } else {
                    rustix::fs::makedev(
                        header
                            .device_major()
                            .map_err(|e| self.corrupt(&e))?
                            .unwrap_or(0),
                        header
                            .device_minor()
                            .map_err(|e| self.corrupt(&e))?
                            .unwrap_or(0),
                    )
                };
                let file_type = match kind {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                remove_existing(&dst).map_err(io_error_entry("replace", &name))?;
                rustix::fs::mknodat(CWD, &dst, file_type, Mode::empty(), device).map_err(|e| {
                    UnpackError::Io {
                        action: "create device node",
                        entry: name.clone(),
                        source: e.into(),
                    }
                })?;
                apply_meta(&dst, &meta, true, &name)?;
            }
            other => {
                return Err(UnpackError::UnsupportedEntry {
                    entry: name,
                    kind: format!("{other:?}"),
                })
            }
        }
        Ok(())
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Result<Meta, UnpackError> {
        let mut xattrs = Vec::new();
        if let Some(extensions) = entry.pax_extensions().map_err(|e| self.corrupt(&e))? {
            for ext in extensions {
                let ext = ext.map_err(|e| self.corrupt(&e))?;
                let Some(attr) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                    continue;
                };
                if attr.starts_with(b"trusted.overlay.") {
                    continue;
                }
                xattrs.push((
                    OsStr::from_bytes(attr).to_owned(),
                    ext.value_bytes().to_vec(),
                ));
            }
        }
        let header = entry.header();
        let id = |v: io::Result<u64>, what: &str| -> Result<u32, UnpackError> {
            let v = v.map_err(|e| self.corrupt(&e))?;
            u32::try_from(v).map_err(|_| UnpackError::Corrupt {
                format: self.format,
                reason: format!("{what} {v} does not fit 32 bits"),
            })
        };
        Ok(Meta {
            mode: header.mode().map_err(|e| self.corrupt(&e))? & 0o7777,
            uid: id(header.uid(), "uid")?,
            gid: id(header.gid(), "gid")?,
            mtime: i64::try_from(header.mtime().map_err(|e| self.corrupt(&e))?).unwrap_or(0),
            xattrs,
        })
    }

    /// Copies an entry's data; a read error is the stream's fault, a write
    /// error the store's.
    fn copy_data(
        &self,
        from: &mut impl Read,
        to: &mut File,
        name: &str,
    ) -> Result<(), UnpackError> {
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.corrupt(&e)),
            };
            to.write_all(&buf[..n])
                .map_err(io_error_entry("write", name))?;
        }
    }

    /// The directory an entry goes in, created (0755, root) where missing;
    /// refused if any component is a symlink or not a directory.
    fn parent_directory(&self, rel: &Path, entry: &str) -> Result<PathBuf, UnpackError> {
        let mut dir = self.root.to_path_buf();
        let Some(parent) = rel.parent() else {
            return Ok(dir);
        };
        for component in parent.components() {
            dir.push(component);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(UnpackError::ThroughSymlink {
                        entry: entry.to_string(),
                        link: self.shown(&dir),
                    })
                }
                Ok(_) => {
                    return Err(UnpackError::ParentNotDirectory {
                        entry: entry.to_string(),
                        parent: self.shown(&dir),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&dir).map_err(io_error_entry("create parent of", entry))?;
                    fs::set_permissions(&dir, Permissions::from_mode(0o755))
                        .map_err(io_error_entry("create parent of", entry))?;
                }
                Err(e) => {
                    return Err(UnpackError::Io {
                        action: "inspect parent of",
                        entry: entry.to_string(),
                        source: e,
                    })
                }
            }
        }
        Ok(dir)
    }

    /// An existing non-directory inside the layer, reached without symlinks.
    fn existing(&self, rel: &Path) -> Result<PathBuf, &'static str> {
        let mut path = self.root.to_path_buf();
        let mut components = rel.components().peekable();
        while let Some(component) = components.next() {
            path.push(component);
            let m = fs::symlink_metadata(&path).map_err(|_| "does not exist (yet)")?;
            let last = components.peek().is_none();
            if !last && m.file_type().is_symlink() {
                return Err("is reached through a symlink");
            }
            if !last && !m.is_dir() {
                return Err("does not exist (yet)");
            }
            if last && m.is_dir() {
                return Err("is a directory");
            }
        }
        Ok(path)
    }

    fn shown(&self, path: &Path) -> String {
        path.strip_prefix(self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// Deepest first, so a parent's mtime is set after its children's.
    fn finish_directories(&mut self) -> Result<(), UnpackError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by(|a, b| b.path.cmp(&a.path));
        for dir in dirs {
            // A later entry of the same layer may have replaced it.
            if fs::symlink_metadata(&dir.path).is_ok_and(|m| m.is_dir()) {
                let name = self.shown(&dir.path);
                apply_meta(&dir.path, &dir.meta, true, &name)?;
            }
        }
        Ok(())
    }
}

/// Ownership first (chown clears setuid), then mode, xattrs, mtime.
/// Symlinks get ownership and mtime only.
fn apply_meta(path: &Path, meta: &Meta, with_mode: bool, entry: &str) -> Result<(), UnpackError> {
    std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))
        .map_err(io_error_entry("chown", entry))?;
    if with_mode {
        fs::set_permissions(path, Permissions::from_mode(meta.mode))
            .map_err(io_error_entry("chmod", entry))?;
        for (attr, value) in &meta.xattrs {
            match rustix::fs::lsetxattr(path, attr.as_os_str(), value, XattrFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => {}
                Err(e) => {
                    return Err(UnpackError::Io {
                        action: "set extended attribute on",
                        entry: entry.to_string(),
                        source: e.into(),
                    })
                }
            }
        }
    }
    let t = rustix::fs::Timespec {
        tv_sec: meta.mtime,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
        UnpackError::Io {
            action: "set mtime of",
            entry: entry.to_string(),
            source: e.into(),
        }
    })
}

/// The entry's path relative to the layer root: `./` and empty components
/// dropped; None for the root itself; refused if absolute or holding `..`.
fn relative(raw: &Path, name: &str) -> Result<Option<PathBuf>, UnpackError> {
    let mut rel = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => rel.push(part),
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::Escapes {
                    entry: name.to_string(),
                })
            }
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

/// Removes whatever is at `path` (a directory with its contents, never
/// following a symlink); nothing there is fine.
fn remove_existing(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io {
        action,
        entry: path.display().to_string(),
        source,
    }
}

fn io_error_entry<'a>(
    action: &'static str,
    entry: &'a str,
) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io {
        action,
        entry: entry.to_string(),
        source,
    }
}

/// An error with its sources, `outer: inner: innermost`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A zstd stream of any number of frames (skippable frames skipped), as
/// `zstd:chunked` layers are.
struct ZstdFrames<R> {
    source: R,
    decoder: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(source: R) -> Self {
        ZstdFrames {
            source,
            decoder: ruzstd::decoding::FrameDecoder::new(),
            in_frame: false,
        }
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        loop {
            if self.in_frame {
                if self.decoder.can_collect() > 0 {
                    return self.decoder.read(buf);
                }
                if self.decoder.is_finished() {
                    if let (Some(stored), Some(computed)) = (
                        self.decoder.get_checksum_from_data(),
                        self.decoder.get_calculated_checksum(),
                    ) {
                        if stored != computed {
                            return Err(io::Error::other("zstd frame checksum mismatch"));
                        }
                    }
                    self.in_frame = false;
                    continue;
                }
                self.decoder
                    .decode_blocks(
                        &mut self.source,
                        ruzstd::decoding::BlockDecodingStrategy::UptoBlocks(1),
                    )
                    .map_err(io::Error::other)?;
            } else {
                if self.source.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                match self.decoder.reset(&mut self.source) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(
                        ReadFrameHeaderError::SkipFrame { length, .. },
                    )) => {
                        let skipped = io::copy(
                            &mut (&mut self.source).take(u64::from(length)),
                            &mut io::sink(),
                        )?;
                        if skipped != u64::from(length) {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                    }
                    Err(e) => return Err(io::Error::other(e)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    struct Scratch(PathBuf);
    impl Scratch {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir()
                .join(format!("carapace-oci-unpack-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).expect("scratch dir");
            Scratch(p)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn header(kind: EntryType, path: &str, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        // Raw name bytes: `set_path` refuses `..`, which these tests need.
        let name = &mut h.as_gnu_mut().expect("gnu").name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        h
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
        let mut h = header(EntryType::Regular, path, mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).expect("append");
    }

    fn dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) {
        let mut h = header(EntryType::Directory, path, mode);
        h.set_cksum();
        b.append(&h, io::empty()).expect("append");
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, path: &str, target: &str) {
        let mut h = header(kind, path, 0o777);
        h.set_link_name(target).expect("link name");
        h.set_cksum();
        b.append(&h, io::empty()).expect("append");
    }

    fn unpack(scratch: &Scratch, tar: Vec<u8>) -> Result<Sha256Digest, UnpackError> {
        let blob = scratch.0.join("layer.tar");
        fs::write(&blob, &tar).expect("write blob");
        let dest = scratch.0.join("layer");
        let r = unpack_layer(&blob, Compression::None, &dest);
        if let Ok(d) = &r {
            assert_eq!(
                d,
                &Sha256Digest::of(&tar),
                "the diff ID is the tar's digest"
            );
        }
        r
    }

    #[test]
    fn modes_ownership_links_and_devices_are_kept() {
        let s = Scratch::new("kept");
        let mut b = tar::Builder::new(Vec::new());
        dir(&mut b, "./", 0o755);
        dir(&mut b, "./usr/bin/", 0o711);
        file(&mut b, "./usr/bin/su", 0o4755, b"#!/bin/true\n");
        link(&mut b, EntryType::Symlink, "./bin", "usr/bin");
        link(&mut b, EntryType::Link, "./usr/bin/su2", "./usr/bin/su");
        let mut h = header(EntryType::Char, "./dev/null", 0o666);
        h.set_device_major(1).expect("major");
        h.set_device_minor(3).expect("minor");
        h.set_cksum();
        b.append(&h, io::empty()).expect("append");
        let mut h = header(EntryType::Fifo, "./run/fifo", 0o600);
        h.set_cksum();
        b.append(&h, io::empty()).expect("append");
        unpack(&s, b.into_inner().expect("tar")).expect("unpacks");

        let root = s.0.join("layer");
        let su = fs::symlink_metadata(root.join("usr/bin/su")).expect("su");
        assert_eq!(su.mode() & 0o7777, 0o4755, "setuid kept");
        assert_eq!((su.uid(), su.gid()), (1000, 1001));
        assert_eq!(su.mtime(), 1_700_000_000);
        assert_eq!(su.nlink(), 2, "hard link");
        let bin = fs::symlink_metadata(root.join("usr/bin")).expect("usr/bin");
        assert_eq!(bin.mode() & 0o7777, 0o711);
        assert_eq!(bin.mtime(), 1_700_000_000, "directory mtime set last");
        assert_eq!(
            fs::read_link(root.join("bin")).expect("symlink"),
            PathBuf::from("usr/bin")
        );
        let null = fs::symlink_metadata(root.join("dev/null")).expect("dev/null");
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        assert!(fs::symlink_metadata(root.join("run/fifo"))
            .expect("fifo")
            .file_type()
            .is_fifo());
    }

    #[test]
    fn whiteouts_become_overlayfs_whiteouts() {
        let s = Scratch::new("whiteouts");
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "etc/.wh.hello", 0o644, b"");
        file(&mut b, "var/cache/.wh..wh..opq", 0o644, b"");
        file(&mut b, "var/cache/new", 0o644, b"new");
        unpack(&s, b.into_inner().expect("tar")).expect("unpacks");
        let root = s.0.join("layer");
        let wh = fs::symlink_metadata(root.join("etc/hello")).expect("whiteout");
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        assert!(!root.join("etc/.wh.hello").exists());
        let mut value = [0u8; 4];
        let n = rustix::fs::lgetxattr(root.join("var/cache"), "trusted.overlay.opaque", &mut value)
            .expect("opaque xattr");
        assert_eq!(&value[..n], b"y");
        assert!(!root.join("var/cache/.wh..wh..opq").exists());
        assert_eq!(fs::read(root.join("var/cache/new")).expect("new"), b"new");
    }

    #[test]
    fn escaping_entries_are_refused() {
        let outside = Scratch::new("outside");
        type Build<'a> = Box<dyn Fn(&mut tar::Builder<Vec<u8>>) + 'a>;
        let cases: Vec<(&str, Build)> = vec![
            (
                "dotdot",
                Box::new(|b| file(b, "a/../../escape", 0o644, b"x")),
            ),
            ("absolute", Box::new(|b| file(b, "/escape", 0o644, b"x"))),
            (
                "symlink parent",
                Box::new(|b| {
                    link(
                        b,
                        EntryType::Symlink,
                        "evil",
                        &outside.0.display().to_string(),
                    );
                    file(b, "evil/escape", 0o644, b"x");
                }),
            ),
            (
                "symlink whiteout",
                Box::new(|b| {
                    link(
                        b,
                        EntryType::Symlink,
                        "evil",
                        &outside.0.display().to_string(),
                    );
                    file(b, "evil/.wh.escape", 0o644, b"");
                }),
            ),
            (
                "whiteout of the parent",
                Box::new(|b| file(b, ".wh...", 0o644, b"")),
            ),
            (
                "whiteout of a parent below",
                Box::new(|b| {
                    dir(b, "a/", 0o755);
                    file(b, "a/.wh...", 0o644, b"");
                }),
            ),
            (
                "whiteout of the directory itself",
                Box::new(|b| {
                    dir(b, "a/", 0o755);
                    file(b, "a/.wh..", 0o644, b"");
                }),
            ),
            (
                "hard link out",
                Box::new(|b| link(b, EntryType::Link, "passwd", "../../../etc/passwd")),
            ),
        ];
        for (what, build) in cases {
            let s = Scratch::new("escape");
            let mut b = tar::Builder::new(Vec::new());
            build(&mut b);
            let e = unpack(&s, b.into_inner().expect("tar")).expect_err(what);
            assert!(
                matches!(
                    e,
                    UnpackError::Escapes { .. }
                        | UnpackError::ThroughSymlink { .. }
                        | UnpackError::BadHardLink { .. }
                ),
                "{what}: {e}"
            );
            assert!(!outside.0.join("escape").exists(), "{what}");
            assert!(
                s.0.is_dir(),
                "{what}: the directory holding the layer (the store) is still there"
            );
        }
    }

    #[test]
    fn layer_xattrs_are_kept_but_overlay_ones_dropped() {
        let s = Scratch::new("xattrs");
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([
            ("SCHILY.xattr.user.note", b"hi".as_slice()),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y".as_slice()),
        ])
        .expect("pax");
        dir(&mut b, "d/", 0o755);
        unpack(&s, b.into_inner().expect("tar")).expect("unpacks");
        let d = s.0.join("layer/d");
        let mut v = [0u8; 8];
        let n = rustix::fs::lgetxattr(&d, "user.note", &mut v).expect("user xattr");
        assert_eq!(&v[..n], b"hi");
        assert!(rustix::fs::lgetxattr(&d, "trusted.overlay.opaque", &mut v).is_err());
    }

    #[test]
    fn gzip_and_multi_frame_zstd_layers_unpack() {
        let s = Scratch::new("compressed");
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "hello", 0o644, b"hello world");
        let tar = b.into_inner().expect("tar");

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip");
        let blob = s.0.join("layer.tar.gz");
        fs::write(&blob, gz.finish().expect("gzip")).expect("write");
        let d = unpack_layer(&blob, Compression::Gzip, &s.0.join("gz")).expect("gzip unpacks");
        assert_eq!(d, Sha256Digest::of(&tar));
        assert_eq!(
            fs::read(s.0.join("gz/hello")).expect("file"),
            b"hello world"
        );

        // Two frames with a skippable frame between them.
        let (first, second) = tar.split_at(700);
        let mut zst =
            ruzstd::encoding::compress_to_vec(first, ruzstd::encoding::CompressionLevel::Fastest);
        zst.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        zst.extend_from_slice(&3u32.to_le_bytes());
        zst.extend_from_slice(b"abc");
        zst.extend(ruzstd::encoding::compress_to_vec(
            second,
            ruzstd::encoding::CompressionLevel::Fastest,
        ));
        let blob = s.0.join("layer.tar.zst");
        fs::write(&blob, zst).expect("write");
        let d = unpack_layer(&blob, Compression::Zstd, &s.0.join("zst")).expect("zstd unpacks");
        assert_eq!(d, Sha256Digest::of(&tar));
        assert_eq!(
            fs::read(s.0.join("zst/hello")).expect("file"),
            b"hello world"
        );
    }

    #[test]
    fn a_corrupt_stream_is_refused() {
        let s = Scratch::new("corrupt");
        let blob = s.0.join("layer.tar.gz");
        fs::write(&blob, b"\x1f\x8b\x08\x00garbage").expect("write");
        let e = unpack_layer(&blob, Compression::Gzip, &s.0.join("gz")).expect_err("corrupt");
        assert!(
            matches!(
                e,
                UnpackError::Corrupt {
                    format: "gzip tar",
                    ..
                }
            ),
            "{e}"
        );
    }
}
