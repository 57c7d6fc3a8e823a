//! File operations confined beneath a directory handle: what unpacking a
//! layer (and clearing one away) is made of.
//!
//! Every operation takes an open directory and one *normal* name in it (not
//! empty, not `.` or `..`, no `/`), checked here, so no name can reach out
//! of that directory. A directory is entered with `openat2` and
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` (and `O_NOFOLLOW | O_DIRECTORY`),
//! so a symlink is never followed, whoever made it; where the kernel lacks
//! `openat2` (ENOSYS), `openat` with `O_NOFOLLOW | O_DIRECTORY` on the same
//! single normal name is exactly as confined. Removing a tree never follows
//! a symlink either, and holds two descriptors however deep the tree is.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Whether `name` is one normal path component: what every function here
/// requires.
pub(crate) fn is_normal_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b != b"." && b != b".." && !b.contains(&b'/') && !b.contains(&0)
}

fn check_name(name: &OsStr) -> io::Result<()> {
    if is_normal_name(name) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a single normal file name"),
        ))
    }
}

/// Set once the kernel says it has no `openat2`.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens the directory `name` in `dir` without following a symlink: ELOOP
/// (or ENOTDIR) if `name` is a symlink, ENOTDIR if it is anything else but
/// a directory.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    check_name(name)?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match rustix::fs::openat2(
            dir,
            name,
            flags,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            // openat2 may fail with EAGAIN when a rename raced its lookup.
            Err(Errno::AGAIN) => {}
            other => return other.map_err(io::Error::from),
        }
    }
    Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?)
}

/// What is at `name` in `dir`, not following a symlink; None if nothing.
pub(crate) fn kind_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileType>> {
    check_name(name)?;
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes whatever is at `name` in `dir` (a directory with everything in
/// it); nothing there is fine. Returns whether it removed a directory.
pub(crate) fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    match kind_at(dir, name)? {
        None => Ok(false),
        Some(FileType::Directory) => {
            remove_tree_at(dir, name)?;
            Ok(true)
        }
        Some(_) => match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        },
    }
}

/// Removes the directory `name` in `dir` and everything in it. Symlinks
/// inside are removed, never followed. Instead of descending (one
/// descriptor per level, which a deep enough tree would exhaust), each
/// subdirectory that is not empty has its own subdirectories moved up into
/// the top one, until every directory is empty.
pub(crate) fn remove_tree_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let top = match open_dir_at(dir, name) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => return Ok(()),
        Err(e) => return Err(e),
    };
    loop {
        let entries = list(top.as_fd())?;
        if entries.is_empty() {
            break;
        }
        for (child, is_dir) in entries {
            if !is_dir {
                unlink_quietly(top.as_fd(), &child, AtFlags::empty())?;
                continue;
            }
            match rustix::fs::unlinkat(&top, &child, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => continue,
                Err(Errno::NOTEMPTY | Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let sub = open_dir_at(top.as_fd(), OsStr::from_bytes(child.as_bytes()))?;
            for (grandchild, is_dir) in list(sub.as_fd())? {
                if is_dir {
                    move_up(sub.as_fd(), &grandchild, top.as_fd())?;
                } else {
                    unlink_quietly(sub.as_fd(), &grandchild, AtFlags::empty())?;
                }
            }
            // `child` is empty now; the next round removes it.
        }
    }
    drop(top);
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn unlink_quietly(dir: BorrowedFd<'_>, name: &CString, flags: AtFlags) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name.as_c_str(), flags) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Renames the directory `name` of `from` into `to` under a fresh name.
fn move_up(from: BorrowedFd<'_>, name: &CString, to: BorrowedFd<'_>) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let fresh = format!(".removing-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        match rustix::fs::renameat_with(from, name.as_c_str(), to, &fresh, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The names in a directory (without `.` and `..`) and whether each is a
/// directory (never following a symlink).
fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<(CString, bool)>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => FileType::from_raw_mode(st.st_mode) == FileType::Directory,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            },
            _ => false,
        };
        out.push((name.to_owned(), is_dir));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    struct Scratch(PathBuf);
    impl Scratch {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "carapace-oci-beneath-{name}-{}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).expect("scratch dir");
            Scratch(p)
        }
        fn fd(&self) -> OwnedFd {
            fs::File::open(&self.0).expect("open scratch").into()
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn only_single_normal_names_are_accepted() {
        for bad in ["", ".", "..", "a/b", "/a", "a\0b"] {
            assert!(!is_normal_name(OsStr::new(bad)), "{bad:?}");
        }
        assert!(is_normal_name(OsStr::new("...")));
        assert!(is_normal_name(OsStr::new(".wh.x")));
        let s = Scratch::new("names");
        let e = open_dir_at(s.fd().as_fd(), OsStr::new("..")).expect_err("..");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_symlink_to_a_directory_is_not_entered() {
        let s = Scratch::new("symlink");
        fs::create_dir(s.0.join("real")).expect("dir");
        std::os::unix::fs::symlink(s.0.join("real"), s.0.join("link")).expect("symlink");
        let fd = s.fd();
        assert!(open_dir_at(fd.as_fd(), OsStr::new("real")).is_ok());
        let e = open_dir_at(fd.as_fd(), OsStr::new("link")).expect_err("symlink");
        assert!(
            matches!(e.raw_os_error(), Some(n) if n == Errno::LOOP.raw_os_error() || n == Errno::NOTDIR.raw_os_error()),
            "{e}"
        );
    }

    #[test]
    fn removing_a_tree_never_follows_its_symlinks_and_handles_any_depth() {
        let s = Scratch::new("remove");
        let outside = s.0.join("outside");
        fs::create_dir(&outside).expect("outside");
        fs::write(outside.join("keep"), b"keep").expect("keep");
        let tree = s.0.join("tree");
        let mut deep = tree.clone();
        // Deeper than a descriptor per level would allow under a low limit.
        for i in 0..300 {
            deep.push(format!("d{}", i % 3));
            fs::create_dir_all(&deep).expect("deep");
            fs::write(deep.join("f"), b"x").expect("file");
        }
        std::os::unix::fs::symlink(&outside, tree.join("to-outside")).expect("symlink");
        std::os::unix::fs::symlink(&outside, deep.join("to-outside")).expect("symlink");
        remove_tree_at(s.fd().as_fd(), OsStr::new("tree")).expect("removes");
        assert!(!tree.exists());
        assert_eq!(fs::read(outside.join("keep")).expect("kept"), b"keep");
        // Nothing there is fine.
        remove_tree_at(s.fd().as_fd(), OsStr::new("tree")).expect("already gone");
        assert!(!remove_at(s.fd().as_fd(), OsStr::new("tree")).expect("nothing"));
    }
}
