//! Unpacking one layer (a tar stream, plain, gzip or zstd) into a directory
//! that overlayfs can use as a lower layer.
//!
//! Every entry is placed through handles, never paths: the caller gives the
//! layer's root as an open directory, each parent directory is entered one
//! normal component at a time from it without following a symlink
//! ([`crate::beneath`]), and the entry is created, replaced, linked or
//! given its metadata with `*at` calls on its one last name or through its
//! own descriptor. So no entry can act outside the layer root: an absolute
//! name or a `..` component, a path through a symlink (even one the layer
//! itself just made), a hard link whose target is outside or reached
//! through a symlink, and a whiteout that is not exactly one normal name
//! each refuse the layer, with an error naming the entry and why. Symlinks
//! may point anywhere (they are data), but unpacking never follows one.
//! Device nodes are refused too: a container has no use for them in an
//! image, and they are a way to the host's devices.
//!
//! Modes (setuid included), ownership, mtimes, symlinks, hard links, FIFOs
//! and `SCHILY.xattr` extended attributes are kept, except
//! `trusted.overlay.*`: those are overlayfs' own, and only the whiteout
//! conversion sets them. OCI whiteouts become what overlayfs reads:
//! `.wh.<name>` a 0/0 character device `<name>`, `.wh..wh..opq` the
//! `trusted.overlay.opaque=y` attribute on its directory. Needs root
//! (mknod, chown, trusted xattrs).
//!
//! Each layer is bounded ([`Limits`]): its number of entries, the size of
//! each PAX extended header and GNU long name or link (the tar stream is
//! read raw, and these are read here, never more than the limit), the
//! length of an entry's name, the size of the uncompressed stream, and the
//! file contents written, which also stop at the space free in the store.
//!
//! The uncompressed stream is hashed as it is read: the result is the
//! layer's diff ID, which the caller checks against the image config.

use crate::beneath::{is_normal_name, kind_at, open_dir_at, remove_at};
use crate::digest::Sha256Digest;
use crate::error::UnpackError;
use flate2::read::MultiGzDecoder;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};
use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tar::EntryType;

/// The longest entry name (or hard link target) a layer may use: Linux's
/// PATH_MAX. It also bounds how deep a layer's tree can go.
pub(crate) const MAX_NAME_BYTES: u64 = 4096;

/// Bounds on one layer, checked while it unpacks; the first one passed
/// refuses the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Tar entries, extension headers included.
    pub entries: u64,
    /// One PAX extended (or global) header, GNU long name or GNU long link.
    pub header_bytes: u64,
    /// The uncompressed tar stream, and so the file contents in it.
    pub bytes: u64,
    /// What unpacking leaves free on the store's filesystem (or of its
    /// quota): file contents stop at the space `statvfs` reports available
    /// less this much.
    pub keep_free: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            entries: 1_000_000,
            header_bytes: 1024 * 1024,
            bytes: 8 * 1024 * 1024 * 1024,
            keep_free: 16 * 1024 * 1024,
        }
    }
}

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

/// Unpacks the layer blob at `blob` into the empty directory `root`, and
/// returns the layer's diff ID (the digest of the uncompressed tar). File
/// contents may take at most `space_free` bytes besides `limits.bytes`. On
/// error `root` may hold part of the layer: the caller removes it.
pub(crate) fn unpack_layer(
    blob: &Path,
    compression: Compression,
    root: BorrowedFd<'_>,
    limits: &Limits,
    space_free: u64,
) -> Result<Sha256Digest, UnpackError> {
    let file = File::open(blob).map_err(|source| UnpackError::Io {
        action: "open",
        entry: blob.display().to_string(),
        source,
    })?;
    let input = BufReader::with_capacity(256 * 1024, file);
    let decompressed: Box<dyn Read> = match compression {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(ZstdFrames::new(input)),
    };
    let over = Rc::new(Cell::new(false));
    let mut stream = HashingReader {
        inner: Capped {
            inner: decompressed,
            left: limits.bytes,
            over: over.clone(),
        },
        hasher: Sha256::new(),
    };
    rustix::fs::fchmod(root, Mode::from_bits_truncate(0o755)).map_err(|e| UnpackError::Io {
        action: "chmod",
        entry: "./".to_string(),
        source: e.into(),
    })?;
    let (files_limit, files_budget) = if space_free < limits.bytes {
        (space_free, "more than the space free in the store")
    } else {
        (limits.bytes, "the limit of a layer")
    };
    let mut unpacker = Unpacker {
        root,
        cached: None,
        dirs: Vec::new(),
        format: compression.format(),
        over,
        stream_limit: limits.bytes,
        files_limit,
        files_budget,
        written: 0,
    };
    {
        let mut archive = tar::Archive::new(&mut stream);
        let entries = archive
            .entries()
            .map_err(|e| unpacker.stream_error(&e))?
            .raw(true);
        let mut pending = Extensions::default();
        let mut count: u64 = 0;
        for entry in entries {
            let mut entry = entry.map_err(|e| unpacker.stream_error(&e))?;
            count += 1;
            if count > limits.entries {
                return Err(UnpackError::TooManyEntries {
                    limit: limits.entries,
                });
            }
            let kind = entry.header().entry_type();
            let slot = match kind {
                EntryType::GNULongName => Some((&mut pending.long_name, "GNU long name")),
                EntryType::GNULongLink => Some((&mut pending.long_link, "GNU long link")),
                EntryType::XHeader => Some((&mut pending.pax, "PAX extended header")),
                _ => None,
            };
            if let Some((slot, what)) = slot {
                if slot.is_some() {
                    return Err(UnpackError::Corrupt {
                        format: unpacker.format,
                        reason: format!("two {what}s describe the same entry"),
                    });
                }
                *slot = Some(unpacker.read_extension(&mut entry, what, limits.header_bytes)?);
                continue;
            }
            if kind == EntryType::XGlobalHeader {
                // Nothing to apply; its data is skipped, never held.
                if entry.size() > limits.header_bytes {
                    return Err(UnpackError::HeaderTooLarge {
                        kind: "PAX global header",
                        size: entry.size(),
                        limit: limits.header_bytes,
                    });
                }
                continue;
            }
            unpacker.entry(&mut entry, std::mem::take(&mut pending))?;
        }
        if pending.long_name.is_some() || pending.long_link.is_some() || pending.pax.is_some() {
            return Err(UnpackError::Corrupt {
                format: unpacker.format,
                reason: "extension headers at the end describe no entry".to_string(),
            });
        }
    }
    unpacker.finish_directories()?;
    // The diff ID covers the whole stream, padding after the end marker too.
    io::copy(&mut stream, &mut io::sink()).map_err(|e| unpacker.stream_error(&e))?;
    Ok(Sha256Digest::finish(stream.hasher))
}

/// The extension headers read before an entry, which describe it.
#[derive(Default)]
struct Extensions {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

/// What a PAX extended header says about its entry.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    uid: Option<u64>,
    gid: Option<u64>,
    size: Option<u64>,
    xattrs: Vec<(OsString, Vec<u8>)>,
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
    root: BorrowedFd<'a>,
    /// The parent directory of the last entry (most entries share theirs),
    /// dropped whenever a directory is removed.
    cached: Option<(PathBuf, OwnedFd)>,
    dirs: Vec<DirectoryMeta>,
    format: &'static str,
    /// Set when the uncompressed stream passed `stream_limit`.
    over: Rc<Cell<bool>>,
    stream_limit: u64,
    files_limit: u64,
    files_budget: &'static str,
    written: u64,
}

impl Unpacker<'_> {
    fn corrupt(&self, reason: String) -> UnpackError {
        UnpackError::Corrupt {
            format: self.format,
            reason,
        }
    }

    /// A read error of the stream: the size limit, or a broken stream.
    fn stream_error(&self, e: &io::Error) -> UnpackError {
        if self.over.get() {
            UnpackError::TooLarge {
                limit: self.stream_limit,
            }
        } else {
            self.corrupt(error_chain(e))
        }
    }

    /// The data of an extension header, refused unread if over `limit`.
    fn read_extension(
        &self,
        entry: &mut impl Read,
        kind: &'static str,
        limit: u64,
    ) -> Result<Vec<u8>, UnpackError> {
        let mut data = Vec::new();
        // At most limit + 1 bytes are read whatever the header claims.
        entry
            .take(limit.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| self.stream_error(&e))?;
        if data.len() as u64 > limit {
            return Err(UnpackError::HeaderTooLarge {
                kind,
                size: data.len() as u64,
                limit,
            });
        }
        Ok(data)
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        ext: Extensions,
    ) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        let pax = match &ext.pax {
            Some(data) => self.pax(data)?,
            None => Pax::default(),
        };
        if let Some(size) = pax.size {
            // The stream is framed by the header's size; a reader that
            // honours the PAX size would see other entries.
            if size != entry.size() {
                return Err(self.corrupt(format!(
                    "a PAX size of {size} bytes for an entry whose header says {}",
                    entry.size()
                )));
            }
        }
        let raw_name = match (&pax.path, &ext.long_name) {
            (Some(p), _) => p.clone(),
            (None, Some(long)) => until_nul(long).to_vec(),
            (None, None) => entry.header().path_bytes().into_owned(),
        };
        let name = shown_name(&raw_name);
        let Some(rel) = relative(&raw_name, &name)? else {
            // The layer root itself (`./`): its attributes are not the layer's to set.
            return Ok(());
        };
        let parent = self.parent_directory(rel.parent().unwrap_or(Path::new("")), &name)?;
        let file_name = rel.file_name().unwrap_or_default().to_owned();

        if let Some(hidden) = file_name.as_bytes().strip_prefix(b".wh.") {
            return self.whiteout(parent.as_fd(), hidden, &name);
        }

        match kind {
            EntryType::Directory => {
                let meta = self.meta(entry, &pax)?;
                if kind_at(parent.as_fd(), &file_name).map_err(io_error("inspect", &name))?
                    != Some(FileType::Directory)
                {
                    self.remove_existing(parent.as_fd(), &file_name, &name)?;
                    rustix::fs::mkdirat(&parent, &file_name, Mode::from_bits_truncate(0o700))
                        .map_err(errno("create", &name))?;
                }
                self.dirs.push(DirectoryMeta { path: rel, meta });
            }
            EntryType::Regular | EntryType::Continuous => {
                let meta = self.meta(entry, &pax)?;
                let size = entry.size();
                if self.written.saturating_add(size) > self.files_limit {
                    return Err(self.files_too_large(&name));
                }
                self.remove_existing(parent.as_fd(), &file_name, &name)?;
                let fd = rustix::fs::openat(
                    &parent,
                    &file_name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(errno("create", &name))?;
                let mut file = File::from(fd);
                self.copy_data(entry, &mut file, &name)?;
                apply_meta(file.as_fd(), &meta, &name)?;
            }
            EntryType::Symlink => {
                let meta = self.meta(entry, &pax)?;
                let target = self.link_target(entry, &pax, &ext, "symlink", &name)?;
                self.remove_existing(parent.as_fd(), &file_name, &name)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, &file_name)
                    .map_err(errno("create symlink", &name))?;
                let owner = (Uid::from_raw(meta.uid), Gid::from_raw(meta.gid));
                rustix::fs::chownat(
                    &parent,
                    &file_name,
                    Some(owner.0),
                    Some(owner.1),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(errno("chown", &name))?;
                rustix::fs::utimensat(
                    &parent,
                    &file_name,
                    &times(meta.mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(errno("set mtime of", &name))?;
            }
            EntryType::Link => {
                let target_raw = self.link_target(entry, &pax, &ext, "hard link", &name)?;
                self.hard_link(parent.as_fd(), &file_name, &rel, &name, &target_raw)?;
            }
            EntryType::Fifo => {
                let meta = self.meta(entry, &pax)?;
                self.remove_existing(parent.as_fd(), &file_name, &name)?;
                rustix::fs::mknodat(
                    &parent,
                    &file_name,
                    FileType::Fifo,
                    Mode::from_bits_truncate(0o600),
                    0,
                )
                .map_err(errno("create FIFO", &name))?;
                // Opened to read without blocking: no writer is waited for.
                let fd = rustix::fs::openat(
                    &parent,
                    &file_name,
                    OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno("open", &name))?;
                apply_meta(fd.as_fd(), &meta, &name)?;
            }
            EntryType::Char => {
                return Err(UnpackError::DeviceNode {
                    entry: name,
                    kind: "character",
                })
            }
            EntryType::Block => {
                return Err(UnpackError::DeviceNode {
                    entry: name,
                    kind: "block",
                })
            }
            EntryType::GNUSparse => {
                return Err(UnpackError::UnsupportedEntry {
                    entry: name,
                    kind: "GNU sparse file".to_string(),
                })
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

    /// `.wh.<hidden>` in the directory `parent`.
    fn whiteout(
        &mut self,
        parent: BorrowedFd<'_>,
        hidden: &[u8],
        name: &str,
    ) -> Result<(), UnpackError> {
        if hidden == b".wh..opq" {
            return rustix::fs::fsetxattr(
                parent,
                "trusted.overlay.opaque",
                b"y",
                XattrFlags::empty(),
            )
            .map_err(errno("mark opaque", name));
        }
        if hidden.starts_with(b".wh.") {
            // Other `.wh..wh.` names are AUFS bookkeeping with nothing to apply.
            return Ok(());
        }
        let hidden = OsStr::from_bytes(hidden);
        if !is_normal_name(hidden) {
            // `.wh.`, `.wh..` and `.wh...` name no file of the directory:
            // the directory itself or its parent (for a layer's root, the
            // store every image shares).
            return Err(UnpackError::BadWhiteout {
                entry: name.to_string(),
            });
        }
        self.remove_existing(parent, hidden, name)?;
        rustix::fs::mknodat(
            parent,
            hidden,
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(errno("create the whiteout for", name))
    }

    fn hard_link(
        &mut self,
        parent: BorrowedFd<'_>,
        file_name: &OsStr,
        rel: &Path,
        name: &str,
        target_raw: &[u8],
    ) -> Result<(), UnpackError> {
        let target_name = shown_name(target_raw);
        let bad = |why| UnpackError::BadHardLink {
            entry: name.to_string(),
            target: target_name.clone(),
            why,
        };
        let target_rel = match relative(target_raw, &target_name) {
            Ok(Some(r)) => r,
            Ok(None) => return Err(bad("is the layer directory")),
            Err(_) => return Err(bad("is outside the layer directory")),
        };
        if target_rel == rel {
            return Ok(());
        }
        let target_parent = self
            .existing_directory(target_rel.parent().unwrap_or(Path::new("")))
            .map_err(bad)?;
        let target_file = target_rel.file_name().unwrap_or_default();
        match kind_at(target_parent.as_fd(), target_file) {
            Ok(None) | Err(_) => return Err(bad("does not exist (yet)")),
            Ok(Some(FileType::Directory)) => return Err(bad("is a directory")),
            Ok(Some(_)) => {}
        }
        self.remove_existing(parent, file_name, name)?;
        // linkat without AT_SYMLINK_FOLLOW links a symlink itself, never
        // what it points to.
        rustix::fs::linkat(
            &target_parent,
            target_file,
            parent,
            file_name,
            AtFlags::empty(),
        )
        .map_err(errno("hard link", name))
    }

    fn files_too_large(&self, name: &str) -> UnpackError {
        UnpackError::FilesTooLarge {
            entry: name.to_string(),
            limit: self.files_limit,
            budget: self.files_budget,
        }
    }

    /// The target of a symlink or hard link: PAX `linkpath`, a GNU long
    /// link, or the header's.
    fn link_target<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        pax: &Pax,
        ext: &Extensions,
        what: &str,
        name: &str,
    ) -> Result<Vec<u8>, UnpackError> {
        let target = match (&pax.linkpath, &ext.long_link) {
            (Some(p), _) => p.clone(),
            (None, Some(long)) => until_nul(long).to_vec(),
            (None, None) => entry
                .header()
                .link_name_bytes()
                .map(|b| b.into_owned())
                .unwrap_or_default(),
        };
        if target.is_empty() {
            return Err(self.corrupt(format!("{what} {name:?} has no target")));
        }
        if target.len() as u64 > MAX_NAME_BYTES {
            return Err(UnpackError::NameTooLong {
                entry: name.to_string(),
                size: target.len() as u64,
                limit: MAX_NAME_BYTES,
            });
        }
        Ok(target)
    }

    fn pax(&self, data: &[u8]) -> Result<Pax, UnpackError> {
        let mut pax = Pax::default();
        for ext in tar::PaxExtensions::new(data) {
            let ext = ext.map_err(|e| self.corrupt(error_chain(&e)))?;
            let number = |v: &[u8]| -> Result<u64, UnpackError> {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        self.corrupt(format!(
                            "PAX {} is not a number",
                            String::from_utf8_lossy(ext.key_bytes())
                        ))
                    })
            };
            match ext.key_bytes() {
                b"path" => pax.path = Some(ext.value_bytes().to_vec()),
                b"linkpath" => pax.linkpath = Some(ext.value_bytes().to_vec()),
                b"uid" => pax.uid = Some(number(ext.value_bytes())?),
                b"gid" => pax.gid = Some(number(ext.value_bytes())?),
                b"size" => pax.size = Some(number(ext.value_bytes())?),
                key => {
                    if let Some(attr) = key.strip_prefix(b"SCHILY.xattr.") {
                        if !attr.starts_with(b"trusted.overlay.") {
                            pax.xattrs.push((
                                OsStr::from_bytes(attr).to_owned(),
                                ext.value_bytes().to_vec(),
                            ));
                        }
                    }
                }
            }
        }
        Ok(pax)
    }

    fn meta<R: Read>(&self, entry: &tar::Entry<'_, R>, pax: &Pax) -> Result<Meta, UnpackError> {
        let header = entry.header();
        let id = |v: u64, what: &str| -> Result<u32, UnpackError> {
            match u32::try_from(v) {
                // -1 means "leave as is" to chown, not a user.
                Ok(id) if id != u32::MAX => Ok(id),
                _ => Err(self.corrupt(format!("{what} {v} is not a valid id"))),
            }
        };
        let header_id = |v: io::Result<u64>| v.map_err(|e| self.corrupt(error_chain(&e)));
        let uid = match pax.uid {
            Some(v) => v,
            None => header_id(header.uid())?,
        };
        let gid = match pax.gid {
            Some(v) => v,
            None => header_id(header.gid())?,
        };
        Ok(Meta {
            mode: header.mode().map_err(|e| self.corrupt(error_chain(&e)))? & 0o7777,
            uid: id(uid, "uid")?,
            gid: id(gid, "gid")?,
            mtime: i64::try_from(header.mtime().map_err(|e| self.corrupt(error_chain(&e)))?)
                .unwrap_or(0),
            xattrs: pax.xattrs.clone(),
        })
    }

    /// Copies an entry's data; a read error is the stream's fault, a write
    /// error the store's.
    fn copy_data(
        &mut self,
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
                Err(e) => return Err(self.stream_error(&e)),
            };
            self.written = self.written.saturating_add(n as u64);
            if self.written > self.files_limit {
                return Err(self.files_too_large(name));
            }
            to.write_all(&buf[..n]).map_err(io_error("write", name))?;
        }
    }

    /// Removes what is at `file_name` in `parent`; forgets the cached
    /// directory if it was a directory (the cache may be inside).
    fn remove_existing(
        &mut self,
        parent: BorrowedFd<'_>,
        file_name: &OsStr,
        name: &str,
    ) -> Result<(), UnpackError> {
        if remove_at(parent, file_name).map_err(io_error("replace", name))? {
            self.cached = None;
        }
        Ok(())
    }

    /// The directory `rel` of the layer, entered from the root one
    /// component at a time, never through a symlink, and created (0755,
    /// root) where missing; refused if a component is a symlink or not a
    /// directory.
    fn parent_directory(&mut self, rel: &Path, entry: &str) -> Result<OwnedFd, UnpackError> {
        if let Some((path, fd)) = &self.cached {
            if path == rel {
                return dup(fd.as_fd()).map_err(io_error("open the parent of", entry));
            }
        }
        let mut dir = dup(self.root).map_err(io_error("open the parent of", entry))?;
        let mut walked = PathBuf::new();
        for component in rel.components() {
            let c = component.as_os_str();
            walked.push(c);
            let next = match open_dir_at(dir.as_fd(), c) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                    rustix::fs::mkdirat(&dir, c, Mode::from_bits_truncate(0o755))
                        .map_err(errno("create parent of", entry))?;
                    let fd =
                        open_dir_at(dir.as_fd(), c).map_err(io_error("create parent of", entry))?;
                    rustix::fs::fchmod(&fd, Mode::from_bits_truncate(0o755))
                        .map_err(errno("create parent of", entry))?;
                    fd
                }
                Err(e)
                    if e.raw_os_error() == Some(Errno::LOOP.raw_os_error())
                        || e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) =>
                {
                    let shown = walked.display().to_string();
                    return Err(match kind_at(dir.as_fd(), c) {
                        Ok(Some(FileType::Symlink)) => UnpackError::ThroughSymlink {
                            entry: entry.to_string(),
                            link: shown,
                        },
                        _ => UnpackError::ParentNotDirectory {
                            entry: entry.to_string(),
                            parent: shown,
                        },
                    });
                }
                Err(e) => return Err(io_error("open the parent of", entry)(e)),
            };
            dir = next;
        }
        let kept = dup(dir.as_fd()).map_err(io_error("open the parent of", entry))?;
        self.cached = Some((rel.to_path_buf(), kept));
        Ok(dir)
    }

    /// An existing directory of the layer, reached without symlinks.
    fn existing_directory(&self, rel: &Path) -> Result<OwnedFd, &'static str> {
        let mut dir = dup(self.root).map_err(|_| "cannot be opened")?;
        for component in rel.components() {
            dir = match open_dir_at(dir.as_fd(), component.as_os_str()) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {
                    return Err("is reached through a symlink")
                }
                Err(_) => match kind_at(dir.as_fd(), component.as_os_str()) {
                    Ok(Some(FileType::Symlink)) => return Err("is reached through a symlink"),
                    _ => return Err("does not exist (yet)"),
                },
            };
        }
        Ok(dir)
    }

    /// Deepest first, so a parent's mtime is set after its children's.
    fn finish_directories(&mut self) -> Result<(), UnpackError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by(|a, b| b.path.cmp(&a.path));
        for dir in dirs {
            // A later entry of the same layer may have replaced it.
            let Ok(fd) = self.existing_directory(&dir.path) else {
                continue;
            };
            apply_meta(fd.as_fd(), &dir.meta, &dir.path.display().to_string())?;
        }
        Ok(())
    }
}

/// Through the entry's own descriptor: ownership first (chown clears
/// setuid), then mode, xattrs, mtime.
fn apply_meta(fd: BorrowedFd<'_>, meta: &Meta, entry: &str) -> Result<(), UnpackError> {
    rustix::fs::fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(errno("chown", entry))?;
    rustix::fs::fchmod(fd, Mode::from_bits_truncate(meta.mode)).map_err(errno("chmod", entry))?;
    for (attr, value) in &meta.xattrs {
        match rustix::fs::fsetxattr(fd, attr.as_os_str(), value, XattrFlags::empty()) {
            Ok(()) | Err(Errno::OPNOTSUPP) => {}
            Err(e) => {
                return Err(UnpackError::Io {
                    action: "set extended attribute on",
                    entry: entry.to_string(),
                    source: e.into(),
                })
            }
        }
    }
    rustix::fs::futimens(fd, &times(meta.mtime)).map_err(errno("set mtime of", entry))
}

fn times(mtime: i64) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)
}

/// A GNU long name or link: up to its terminating NUL.
fn until_nul(b: &[u8]) -> &[u8] {
    b.split(|&c| c == 0).next().unwrap_or_default()
}

/// An entry name for messages: lossy UTF-8, cut to 256 characters.
fn shown_name(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    match s.char_indices().nth(256) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.into_owned(),
    }
}

/// The entry's path relative to the layer root, every component a normal
/// name (`.` and empty ones dropped); None for the root itself; refused if
/// absolute, holding `..`, or too long.
fn relative(raw: &[u8], name: &str) -> Result<Option<PathBuf>, UnpackError> {
    if raw.len() as u64 > MAX_NAME_BYTES {
        return Err(UnpackError::NameTooLong {
            entry: name.to_string(),
            size: raw.len() as u64,
            limit: MAX_NAME_BYTES,
        });
    }
    if raw.starts_with(b"/") {
        return Err(UnpackError::Escapes {
            entry: name.to_string(),
            why: "its name is absolute",
        });
    }
    let mut rel = PathBuf::new();
    for part in raw.split(|&c| c == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(UnpackError::Escapes {
                    entry: name.to_string(),
                    why: "its name has a `..` component",
                })
            }
            _ if part.contains(&0) => {
                return Err(UnpackError::Escapes {
                    entry: name.to_string(),
                    why: "its name holds a NUL byte",
                })
            }
            _ => rel.push(OsString::from_vec(part.to_vec())),
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

fn io_error<'a>(
    action: &'static str,
    entry: &'a str,
) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io {
        action,
        entry: entry.to_string(),
        source,
    }
}

fn errno<'a>(action: &'static str, entry: &'a str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |e| UnpackError::Io {
        action,
        entry: entry.to_string(),
        source: e.into(),
    }
}

/// Refuses a stream longer than `left` bytes, and says so through `over`.
struct Capped<R> {
    inner: R,
    left: u64,
    over: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte more than allowed tells a stream at the limit from one past it.
        let room = usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX);
        let want = buf.len().min(room);
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            self.over.set(true);
            return Err(io::Error::other("the uncompressed layer is over its limit"));
        }
        self.left -= n as u64;
        Ok(n)
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
    use std::fs;
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

    /// Unpacks `blob` into a new directory `dest` of the scratch directory.
    fn unpack_blob(
        scratch: &Scratch,
        blob: &Path,
        compression: Compression,
        dest: &str,
        limits: &Limits,
        space_free: u64,
    ) -> Result<Sha256Digest, UnpackError> {
        let dest = scratch.0.join(dest);
        fs::create_dir(&dest).expect("layer dir");
        let root = File::open(&dest).expect("open layer dir");
        unpack_layer(blob, compression, root.as_fd(), limits, space_free)
    }

    fn unpack_limited(
        scratch: &Scratch,
        tar: Vec<u8>,
        limits: &Limits,
        space_free: u64,
    ) -> Result<Sha256Digest, UnpackError> {
        let blob = scratch.0.join("layer.tar");
        fs::write(&blob, &tar).expect("write blob");
        let r = unpack_blob(
            scratch,
            &blob,
            Compression::None,
            "layer",
            limits,
            space_free,
        );
        if let Ok(d) = &r {
            assert_eq!(
                d,
                &Sha256Digest::of(&tar),
                "the diff ID is the tar's digest"
            );
        }
        r
    }

    fn unpack(scratch: &Scratch, tar: Vec<u8>) -> Result<Sha256Digest, UnpackError> {
        unpack_limited(scratch, tar, &Limits::default(), u64::MAX)
    }

    #[test]
    fn modes_ownership_links_and_fifos_are_kept() {
        let s = Scratch::new("kept");
        let mut b = tar::Builder::new(Vec::new());
        dir(&mut b, "./", 0o755);
        dir(&mut b, "./usr/bin/", 0o711);
        file(&mut b, "./usr/bin/su", 0o4755, b"#!/bin/true\n");
        link(&mut b, EntryType::Symlink, "./bin", "usr/bin");
        link(&mut b, EntryType::Link, "./usr/bin/su2", "./usr/bin/su");
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
        let fifo = fs::symlink_metadata(root.join("run/fifo")).expect("fifo");
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.mode() & 0o7777, 0o600);
        assert_eq!((fifo.uid(), fifo.gid()), (1000, 1001));
        let link = fs::symlink_metadata(root.join("bin")).expect("bin");
        assert_eq!((link.uid(), link.gid()), (1000, 1001), "the symlink itself");
        assert_eq!(link.mtime(), 1_700_000_000);
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

    /// Every name under `dir`, with what it is, its mode, owner, mtime and
    /// content or target: what must not change.
    fn snapshot(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).expect("list") {
                let p = e.expect("entry").path();
                let m = fs::symlink_metadata(&p).expect("meta");
                let what = if m.is_dir() {
                    stack.push(p.clone());
                    "dir".to_string()
                } else if m.file_type().is_symlink() {
                    format!("-> {:?}", fs::read_link(&p).expect("link"))
                } else if m.is_file() {
                    format!("{:?}", fs::read(&p).expect("read"))
                } else {
                    format!("rdev {}", m.rdev())
                };
                out.push(format!(
                    "{} {:o} {}:{} {} {what}",
                    p.display(),
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.mtime()
                ));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn hostile_entries_are_refused_and_touch_nothing_outside() {
        let outside = Scratch::new("outside");
        fs::write(outside.0.join("victim"), b"precious").expect("victim");
        let before = snapshot(&outside.0);
        let target = outside.0.display().to_string();
        type Build<'a> = Box<dyn Fn(&mut tar::Builder<Vec<u8>>) + 'a>;
        type Expected = fn(&UnpackError) -> bool;
        let cases: Vec<(&str, Build, Expected)> = vec![
            (
                "dotdot",
                Box::new(|b| file(b, "a/../../escape", 0o644, b"x")),
                |e| matches!(e, UnpackError::Escapes { why, .. } if why.contains("..")),
            ),
            (
                "absolute",
                Box::new(|b| file(b, "/escape", 0o644, b"x")),
                |e| matches!(e, UnpackError::Escapes { why, .. } if why.contains("absolute")),
            ),
            (
                "through a symlink it just made",
                Box::new(|b| {
                    link(b, EntryType::Symlink, "evil", &target);
                    file(b, "evil/escape", 0o644, b"x");
                }),
                |e| matches!(e, UnpackError::ThroughSymlink { link, .. } if link == "evil"),
            ),
            (
                "a directory through a symlink it just made",
                Box::new(|b| {
                    link(b, EntryType::Symlink, "evil", &target);
                    dir(b, "evil/escape/", 0o755);
                }),
                |e| matches!(e, UnpackError::ThroughSymlink { .. }),
            ),
            (
                "symlink replaced under a cached parent",
                Box::new(|b| {
                    dir(b, "d/", 0o755);
                    file(b, "d/one", 0o644, b"1");
                    link(b, EntryType::Symlink, "d", &target);
                    file(b, "d/escape", 0o644, b"x");
                }),
                |e| matches!(e, UnpackError::ThroughSymlink { .. }),
            ),
            (
                "whiteout through a symlink",
                Box::new(|b| {
                    link(b, EntryType::Symlink, "evil", &target);
                    file(b, "evil/.wh.victim", 0o644, b"");
                }),
                |e| matches!(e, UnpackError::ThroughSymlink { .. }),
            ),
            (
                "whiteout of the parent",
                Box::new(|b| file(b, ".wh...", 0o644, b"")),
                |e| matches!(e, UnpackError::BadWhiteout { .. }),
            ),
            (
                "whiteout of a parent below",
                Box::new(|b| {
                    dir(b, "a/", 0o755);
                    file(b, "a/.wh...", 0o644, b"");
                }),
                |e| matches!(e, UnpackError::BadWhiteout { .. }),
            ),
            (
                "whiteout of the directory itself",
                Box::new(|b| {
                    dir(b, "a/", 0o755);
                    file(b, "a/.wh..", 0o644, b"");
                }),
                |e| matches!(e, UnpackError::BadWhiteout { .. }),
            ),
            (
                "hard link out",
                Box::new(|b| link(b, EntryType::Link, "passwd", "../../../etc/passwd")),
                |e| matches!(e, UnpackError::BadHardLink { why, .. } if why.contains("outside")),
            ),
            (
                "hard link to an absolute path",
                Box::new(|b| link(b, EntryType::Link, "victim", &format!("{target}/victim"))),
                |e| matches!(e, UnpackError::BadHardLink { why, .. } if why.contains("outside")),
            ),
            (
                "hard link through a symlink",
                Box::new(|b| {
                    link(b, EntryType::Symlink, "evil", &target);
                    link(b, EntryType::Link, "victim", "evil/victim");
                }),
                |e| matches!(e, UnpackError::BadHardLink { why, .. } if why.contains("symlink")),
            ),
            (
                "character device",
                Box::new(|b| {
                    let mut h = header(EntryType::Char, "dev/mem", 0o666);
                    h.set_device_major(1).expect("major");
                    h.set_device_minor(1).expect("minor");
                    h.set_cksum();
                    b.append(&h, io::empty()).expect("append");
                }),
                |e| {
                    matches!(
                        e,
                        UnpackError::DeviceNode {
                            kind: "character",
                            ..
                        }
                    )
                },
            ),
            (
                "block device",
                Box::new(|b| {
                    let mut h = header(EntryType::Block, "dev/vda", 0o660);
                    h.set_device_major(253).expect("major");
                    h.set_cksum();
                    b.append(&h, io::empty()).expect("append");
                }),
                |e| matches!(e, UnpackError::DeviceNode { kind: "block", .. }),
            ),
        ];
        for (what, build, expected) in cases {
            let s = Scratch::new("escape");
            let mut b = tar::Builder::new(Vec::new());
            build(&mut b);
            let e = unpack(&s, b.into_inner().expect("tar")).expect_err(what);
            assert!(expected(&e), "{what}: {e:?}");
            assert_eq!(snapshot(&outside.0), before, "{what}: outside untouched");
            assert!(!outside.0.join("escape").exists(), "{what}");
            assert!(
                s.0.is_dir(),
                "{what}: the directory holding the layer (the store) is still there"
            );
        }
    }

    #[test]
    fn the_error_names_the_entry_and_why() {
        let s = Scratch::new("message");
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "a/../../x", 0o644, b"x");
        let e = unpack(&s, b.into_inner().expect("tar")).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "entry \"a/../../x\" leaves the layer: its name has a `..` component"
        );
    }

    /// A tar whose first entry is a PAX extended header of `size` bytes.
    fn with_pax_header(size: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let value = vec![b'v'; size];
        b.append_pax_extensions([("SCHILY.xattr.user.big", value.as_slice())])
            .expect("pax");
        file(&mut b, "f", 0o644, b"x");
        b.into_inner().expect("tar")
    }

    #[test]
    fn limits_refuse_the_layer_and_say_which() {
        let small = Limits {
            entries: 3,
            header_bytes: 4096,
            bytes: 64 * 1024,
            keep_free: 0,
        };
        // Too many entries.
        let s = Scratch::new("entries");
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..4 {
            file(&mut b, &format!("f{i}"), 0o644, b"x");
        }
        let e = unpack_limited(&s, b.into_inner().expect("tar"), &small, u64::MAX)
            .expect_err("entries");
        assert!(matches!(e, UnpackError::TooManyEntries { limit: 3 }), "{e}");

        // An oversize PAX header: refused before it is read.
        let s = Scratch::new("pax");
        let e = unpack_limited(&s, with_pax_header(8192), &small, u64::MAX).expect_err("pax");
        assert!(
            matches!(
                e,
                UnpackError::HeaderTooLarge {
                    kind: "PAX extended header",
                    limit: 4096,
                    ..
                }
            ),
            "{e}"
        );
        // One under the limit is fine.
        let s = Scratch::new("pax-ok");
        unpack_limited(&s, with_pax_header(2048), &small, u64::MAX).expect("small pax");

        // An oversize GNU long name.
        let s = Scratch::new("longname");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::GNULongName);
        h.as_gnu_mut().expect("gnu").name[..13].copy_from_slice(b"././@LongLink");
        h.set_size(10_000);
        h.set_cksum();
        b.append(&h, vec![b'a'; 10_000].as_slice()).expect("append");
        file(&mut b, "short", 0o644, b"x");
        let e = unpack_limited(&s, b.into_inner().expect("tar"), &small, u64::MAX)
            .expect_err("long name");
        assert!(
            matches!(
                e,
                UnpackError::HeaderTooLarge {
                    kind: "GNU long name",
                    ..
                }
            ),
            "{e}"
        );

        // A decompression bomb: a gzip of 1 MiB of zeros against 64 KiB.
        let s = Scratch::new("bomb");
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "zeros", 0o644, &vec![0u8; 1024 * 1024]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&b.into_inner().expect("tar")).expect("gzip");
        let blob = s.0.join("bomb.tar.gz");
        fs::write(&blob, gz.finish().expect("gzip")).expect("write");
        assert!(fs::metadata(&blob).expect("blob").len() < 64 * 1024);
        let e =
            unpack_blob(&s, &blob, Compression::Gzip, "layer", &small, u64::MAX).expect_err("bomb");
        assert!(
            matches!(e, UnpackError::FilesTooLarge { limit: 65536, budget, .. } if budget.contains("limit")),
            "{e}"
        );
        assert!(
            !s.0.join("layer/zeros").exists(),
            "refused before anything is written"
        );
        // The stream itself is capped too (a huge entry that is only skipped).
        let s = Scratch::new("stream");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(EntryType::Directory, "d/", 0o755);
        h.set_size(1024 * 1024);
        h.set_cksum();
        b.append(&h, vec![0u8; 1024 * 1024].as_slice())
            .expect("append");
        let e =
            unpack_limited(&s, b.into_inner().expect("tar"), &small, u64::MAX).expect_err("stream");
        assert!(matches!(e, UnpackError::TooLarge { limit: 65536 }), "{e}");

        // File contents stop at the space free in the store.
        let s = Scratch::new("space");
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "a", 0o644, &[1u8; 3000]);
        file(&mut b, "b", 0o644, &[2u8; 3000]);
        let e = unpack_limited(&s, b.into_inner().expect("tar"), &Limits::default(), 5000)
            .expect_err("space");
        assert!(
            matches!(&e, UnpackError::FilesTooLarge { entry, limit: 5000, budget } if entry == "b" && budget.contains("space free")),
            "{e}"
        );
        assert!(e.to_string().contains("space free in the store"), "{e}");
    }

    #[test]
    fn long_names_from_pax_and_gnu_headers_are_used() {
        let s = Scratch::new("long");
        let deep = format!("{}/file", "d".repeat(150));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(EntryType::Regular, "", 0o644);
        h.set_size(2);
        // The GNU builder writes a long name as a `././@LongLink` entry.
        b.append_data(&mut h, &deep, b"hi".as_slice())
            .expect("append");
        let target = format!("{}/target", "t".repeat(150));
        b.append_pax_extensions([("path", target.as_bytes())])
            .expect("pax");
        file(&mut b, "short-name", 0o644, b"pax");
        unpack(&s, b.into_inner().expect("tar")).expect("unpacks");
        assert_eq!(fs::read(s.0.join("layer").join(&deep)).expect("gnu"), b"hi");
        assert_eq!(
            fs::read(s.0.join("layer").join(&target)).expect("pax"),
            b"pax"
        );
        assert!(!s.0.join("layer/short-name").exists());
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
        let d = unpack_blob(
            &s,
            &blob,
            Compression::Gzip,
            "gz",
            &Limits::default(),
            u64::MAX,
        )
        .expect("gzip unpacks");
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
        let d = unpack_blob(
            &s,
            &blob,
            Compression::Zstd,
            "zst",
            &Limits::default(),
            u64::MAX,
        )
        .expect("zstd unpacks");
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
        let e = unpack_blob(
            &s,
            &blob,
            Compression::Gzip,
            "gz",
            &Limits::default(),
            u64::MAX,
        )
        .expect_err("corrupt");
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
