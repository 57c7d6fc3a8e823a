//! User namespaces for the containers whose settings say `userns: true`.
//!
//! - **A range of the node's ids per container.** Container uids and gids
//!   0–65535 are node ids `100000 + 65536·k` onwards ([`IdRange`]), `k`
//!   the lowest slot no other container holds. The slot is recorded in
//!   the bundle (`<bundle>/userns`, the `uid_map` line, written whole and
//!   renamed into place), so a restart of the container, of the agent or
//!   of the node keeps it; [`assign`] reads every bundle's record before
//!   choosing, so two containers never share a range. The record goes
//!   with the bundle: a container removed from the settings or disabled
//!   gives its range back ([`crate::bundle::Bundle::remove`]). A record
//!   that does not read as a range is chosen anew. Nothing on disk depends
//!   on the range (see below), so a container given another range, or
//!   switching `userns` on or off, keeps its writable layer and volumes.
//! - **Nothing is copied or chowned.** The shared image layers, the
//!   writable layer and the volumes are seen through idmapped mounts
//!   (`open_tree(OPEN_TREE_CLONE)` + `mount_setattr(MOUNT_ATTR_IDMAP)`)
//!   whose mapping is the container's: a file owned by 0 on disk is owned
//!   by the range's first id through them, that is by the container's
//!   root inside, and a file the container's root creates is stored as 0.
//!   The mapping is taken from a user namespace made for the purpose
//!   ([`create_user_namespace`]): a child cloned into a new user
//!   namespace, whose `uid_map` and `gid_map` the agent writes before it
//!   opens `/proc/<pid>/ns/user` and lets the child go.
//! - **The overlay is mounted as the range's root** ([`as_range_root`]).
//!   overlayfs does its own work in the upper layer (its `work/` directory,
//!   copy-ups) with the credentials of whoever mounted it, and a file
//!   system reached through an idmapped mount refuses to create anything
//!   for an id the mapping does not hold (`EOVERFLOW`): the agent's fsuid
//!   0 is not in the container's range. So the agent mounts the overlay
//!   (and creates the working directory in it) with fsuid and fsgid set to
//!   the range's first id, capabilities kept, in its own thread only, and
//!   puts them back right after.
//!
//! The kernel (6.12) takes idmapped lower and upper layers for overlayfs
//! (since 5.19), but only layers attached in the mounter's mount namespace
//! (`clone_private_mount`): the idmapped mounts are attached in the bundle
//! (`idmap/<i>` for layer `i`, `idmap/rw` for the bundle's own directory,
//! which holds `upper/` and `work/`) for the length of the overlay mount,
//! and detached right after; the overlay keeps its own private copies.

use carapace_model::containers::ContainerName;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The first node id given to containers' ranges (above any the node uses).
pub const FIRST_HOST_ID: u32 = 100_000;

/// The ids of one container: 0 to 65535 inside.
pub const RANGE_SIZE: u32 = 65_536;

/// How many ranges fit in the 32-bit id space above [`FIRST_HOST_ID`]
/// (leaving 4294967295, which means "no id").
pub const SLOTS: u32 = (u32::MAX - FIRST_HOST_ID) / RANGE_SIZE;

/// The name of the record of a container's range in its bundle.
pub const RECORD: &str = "userns";

/// What failed in giving a container its user namespace.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("container {name}: no user namespace range is free: all {SLOTS} are taken")]
    Exhausted { name: String },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot {what}: {source}")]
    Kernel {
        what: &'static str,
        source: io::Error,
    },
}

/// A container's ids on the node: container id `i` (0 ≤ i < [`RANGE_SIZE`])
/// is node id `first() + i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdRange {
    slot: u32,
}

impl IdRange {
    /// Range number `slot`, if it fits in the id space.
    pub fn slot(slot: u32) -> Option<IdRange> {
        (slot < SLOTS).then_some(IdRange { slot })
    }

    /// Its number, 0 for the range starting at [`FIRST_HOST_ID`].
    pub fn index(&self) -> u32 {
        self.slot
    }

    /// The node id of the container's root.
    pub fn first(&self) -> u32 {
        // In range: slot < SLOTS.
        FIRST_HOST_ID + self.slot * RANGE_SIZE
    }

    /// The line of `uid_map` and `gid_map`: `0 <first> 65536`.
    pub fn map_line(&self) -> String {
        format!("0 {} {RANGE_SIZE}\n", self.first())
    }

    /// The range a `uid_map` line names, if it is one of ours.
    pub fn parse(line: &str) -> Option<IdRange> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [inside, first, size] = fields.as_slice() else {
            return None;
        };
        let first: u32 = first.parse().ok()?;
        if *inside != "0" || size.parse::<u32>().ok()? != RANGE_SIZE || first < FIRST_HOST_ID {
            return None;
        }
        let offset = first - FIRST_HOST_ID;
        if !offset.is_multiple_of(RANGE_SIZE) {
            return None;
        }
        IdRange::slot(offset / RANGE_SIZE)
    }
}

/// The range a container gets, pure: the one it `had` if no other
/// container holds it, else the lowest that none of `others` holds.
pub fn choose(had: Option<IdRange>, others: &[IdRange]) -> Option<IdRange> {
    let taken: std::collections::BTreeSet<IdRange> = others.iter().copied().collect();
    if let Some(had) = had.filter(|h| !taken.contains(h)) {
        return Some(had);
    }
    (0..SLOTS)
        .filter_map(IdRange::slot)
        .find(|r| !taken.contains(r))
}

/// Where the range of the container whose bundle is `bundle_dir` is recorded.
pub fn record_path(bundle_dir: &Path) -> PathBuf {
    bundle_dir.join(RECORD)
}

/// The range recorded in `bundle_dir`, if there is one that reads.
pub fn recorded(bundle_dir: &Path) -> Option<IdRange> {
    std::fs::read_to_string(record_path(bundle_dir))
        .ok()
        .and_then(|text| IdRange::parse(&text))
}

/// The range of container `name`, whose bundles live in `run_root`: the
/// one recorded in its bundle, unless another bundle records the same,
/// else a free one, recorded before it is returned.
pub fn assign(run_root: &Path, name: &ContainerName) -> Result<IdRange, UsernsError> {
    let own_dir = run_root.join(name.as_str());
    let mut others = Vec::new();
    match std::fs::read_dir(run_root) {
        Ok(entries) => {
            for entry in entries.flatten() {
                if entry.file_name() == name.as_str() {
                    continue;
                }
                if let Some(range) = recorded(&entry.path()) {
                    others.push(range);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(UsernsError::Io {
                what: "list",
                path: run_root.to_path_buf(),
                source,
            })
        }
    }
    let had = recorded(&own_dir);
    let range = choose(had, &others).ok_or_else(|| UsernsError::Exhausted {
        name: name.to_string(),
    })?;
    if had != Some(range) {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| UsernsError::Io { what, path, source }
        };
        std::fs::create_dir_all(&own_dir).map_err(io("create", &own_dir))?;
        let path = record_path(&own_dir);
        let tmp = own_dir.join(format!("{RECORD}.tmp"));
        std::fs::write(&tmp, range.map_line()).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
    }
    Ok(range)
}

/// A user namespace whose uid and gid maps are `range`, as a descriptor
/// (what `mount_setattr(MOUNT_ATTR_IDMAP)` takes). No process stays in it.
pub fn create_user_namespace(range: IdRange) -> Result<OwnedFd, UsernsError> {
    let kernel = |what| move |source| UsernsError::Kernel { what, source };
    let (wait_end, release_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| kernel("make a pipe")(e.into()))?;
    let (wait_fd, release_fd) = (wait_end.as_raw_fd(), release_end.as_raw_fd());
    // SAFETY: a raw clone without CLONE_VM is a fork: the child gets a copy
    // of this thread's memory and runs on its copy of the stack. It runs
    // only the three system calls below (no allocation, no lock, no Rust
    // runtime), so that whatever other threads held in the parent at the
    // time does not matter, and it leaves with _exit.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        // The child: wait until the parent closes its end of the pipe (or
        // dies), then leave.
        let mut byte = 0u8;
        // SAFETY: plain system calls on descriptors the child owns, the
        // buffer a local byte, errno read through the thread's own
        // location (async-signal-safe); _exit does not return.
        unsafe {
            libc::close(release_fd);
            while libc::read(wait_fd, (&raw mut byte).cast(), 1) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
            libc::_exit(0);
        }
    }
    if pid < 0 {
        return Err(kernel("clone a process into a new user namespace")(
            io::Error::last_os_error(),
        ));
    }
    drop(wait_end);
    let pid = i32::try_from(pid).map_err(|_| {
        kernel("clone a process into a new user namespace")(io::Error::other(
            "the kernel returned a pid out of range",
        ))
    })?;
    let result = map_and_open(pid, range);
    // Let the child go, and reap it.
    drop(release_end);
    if let Some(child) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::waitpid(Some(child), rustix::process::WaitOptions::empty());
    }
    result
}

fn map_and_open(pid: i32, range: IdRange) -> Result<OwnedFd, UsernsError> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    for map in ["uid_map", "gid_map"] {
        let path = proc.join(map);
        std::fs::write(&path, range.map_line()).map_err(|source| UsernsError::Io {
            what: "write",
            path: path.clone(),
            source,
        })?;
    }
    let ns = proc.join("ns/user");
    std::fs::File::open(&ns)
        .map(OwnedFd::from)
        .map_err(|source| UsernsError::Io {
            what: "open",
            path: ns,
            source,
        })
}

/// What an idmapped mount is besides idmapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountAttributes {
    pub read_only: bool,
    /// `nosuid` and `nodev`.
    pub nosuid_nodev: bool,
}

/// Makes the detached mount `tree` (from `open_tree(OPEN_TREE_CLONE)`, not
/// yet attached) idmapped with the mapping of user namespace `userns`,
/// with `attributes`.
pub fn set_idmap(
    tree: BorrowedFd<'_>,
    userns: BorrowedFd<'_>,
    attributes: MountAttributes,
) -> io::Result<()> {
    let mut set = libc::MOUNT_ATTR_IDMAP;
    if attributes.read_only {
        set |= libc::MOUNT_ATTR_RDONLY;
    }
    if attributes.nosuid_nodev {
        set |= libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    }
    let userns_fd = u64::try_from(userns.as_raw_fd())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "negative descriptor"))?;
    let mut attr = libc::mount_attr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd,
    };
    // SAFETY: mount_setattr(2) reads `size` bytes of `attr`, a live local
    // of exactly that size, and the empty path, a static NUL-terminated
    // string; both descriptors are borrowed for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &raw mut attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs `f` with this thread's fsuid and fsgid set to the first id of
/// `range` (the container's root as the node sees it), its capabilities
/// as they were, and puts both back after (also when `f` panics).
pub fn as_range_root<T>(range: IdRange, f: impl FnOnce() -> T) -> Result<T, UsernsError> {
    let kernel = |what| {
        move |e: rustix::io::Errno| UsernsError::Kernel {
            what,
            source: e.into(),
        }
    };
    let caps = rustix::thread::capabilities(None).map_err(kernel("read the capabilities"))?;
    let guard = FsIds::switch(range.first(), caps);
    // Leaving fsuid 0 drops the file system capabilities from the
    // effective set: they stay permitted, so take them back.
    rustix::thread::set_capabilities(None, caps).map_err(kernel("keep the capabilities"))?;
    let out = f();
    drop(guard);
    Ok(out)
}

/// The fsuid and fsgid of this thread, while switched.
struct FsIds {
    uid: libc::uid_t,
    gid: libc::gid_t,
    caps: rustix::thread::CapabilitySets,
}

impl FsIds {
    fn switch(id: u32, caps: rustix::thread::CapabilitySets) -> FsIds {
        // SAFETY: setfsuid and setfsgid change this thread's credentials
        // only (glibc does not broadcast them to other threads); they take
        // plain integers and return the previous id.
        let (gid, uid) = unsafe { (libc::setfsgid(id), libc::setfsuid(id)) };
        FsIds {
            uid: uid as libc::uid_t,
            gid: gid as libc::gid_t,
            caps,
        }
    }
}

impl Drop for FsIds {
    fn drop(&mut self) {
        // SAFETY: as in `switch`; back to the ids returned then.
        unsafe {
            libc::setfsuid(self.uid);
            libc::setfsgid(self.gid);
        }
        // Returning to fsuid 0 raised every permitted file system
        // capability: back to the effective set there was.
        let _ = rustix::thread::set_capabilities(None, self.caps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    fn name(s: &str) -> ContainerName {
        ContainerName::try_from(s.to_string()).expect("name")
    }

    fn temp(label: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("carapace-userns-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    fn slot(k: u32) -> IdRange {
        IdRange::slot(k).expect("slot")
    }

    #[test]
    fn ranges_are_65536_ids_from_100000_up_to_the_end_of_the_id_space() {
        assert_eq!(slot(0).first(), 100_000);
        assert_eq!(slot(1).first(), 165_536);
        assert_eq!(slot(0).map_line(), "0 100000 65536\n");
        let last = slot(SLOTS - 1);
        assert!(u64::from(last.first()) + u64::from(RANGE_SIZE) <= u64::from(u32::MAX));
        assert_eq!(IdRange::slot(SLOTS), None);
    }

    #[test]
    fn a_record_reads_back_and_anything_else_is_no_range() {
        assert_eq!(IdRange::parse(&slot(7).map_line()), Some(slot(7)));
        for bad in [
            "",
            "0 0 4294967295",
            "0 100000 1000",
            "1 100000 65536",
            "0 100001 65536",
            "0 99999 65536",
            "0 100000 65536 9",
            "0 -1 65536",
        ] {
            assert_eq!(IdRange::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_container_keeps_its_range_unless_another_holds_it_and_never_shares() {
        assert_eq!(choose(None, &[]), Some(slot(0)));
        assert_eq!(choose(None, &[slot(0), slot(2)]), Some(slot(1)));
        assert_eq!(choose(Some(slot(5)), &[slot(0)]), Some(slot(5)));
        assert_eq!(choose(Some(slot(0)), &[slot(0), slot(1)]), Some(slot(2)));
        let all: Vec<IdRange> = (0..SLOTS).map(slot).collect();
        assert_eq!(choose(None, &all), None);
    }

    #[test]
    fn ranges_are_recorded_in_the_bundle_kept_and_freed_with_it() {
        let root = temp("assign");
        let web = assign(&root, &name("web")).expect("web");
        let db = assign(&root, &name("db")).expect("db");
        assert_ne!(web, db, "two containers, two ranges");
        assert_eq!(
            std::fs::read_to_string(root.join("web/userns")).expect("record"),
            web.map_line()
        );
        // A restart (or reboot) keeps each range.
        assert_eq!(assign(&root, &name("web")).expect("again"), web);
        assert_eq!(assign(&root, &name("db")).expect("again"), db);
        // Removing web's bundle frees its range for the next container.
        std::fs::remove_dir_all(root.join("web")).expect("remove web");
        assert_eq!(assign(&root, &name("cache")).expect("cache"), web);
        // A record that does not read is chosen anew, clear of the others.
        std::fs::write(root.join("db/userns"), "garbage").expect("spoil");
        let db_again = assign(&root, &name("db")).expect("db");
        assert!(db_again != web, "not cache's range");
        assert_eq!(recorded(&root.join("db")), Some(db_again));
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn the_descriptor_made_is_a_user_namespace() {
        let ns = create_user_namespace(slot(3)).expect("user namespace");
        // Its mapping is checked through an idmapped mount below.
        const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
        // SAFETY: NS_GET_NSTYPE takes no argument and returns the type.
        let kind = unsafe { libc::ioctl(ns.as_fd().as_raw_fd(), NS_GET_NSTYPE) };
        assert_eq!(kind, libc::CLONE_NEWUSER);
    }

    /// The real idmapped mount (the tests run as root): a root-owned file
    /// is owned by the range's first id through it, and a file created
    /// through it as the range's root is stored as 0.
    #[test]
    fn an_idmapped_mount_shows_root_files_as_the_ranges_root_and_stores_them_unshifted() {
        let root = temp("idmap");
        let source = root.join("source");
        let point = root.join("point");
        std::fs::create_dir_all(&source).expect("source");
        std::fs::create_dir_all(&point).expect("point");
        std::fs::write(source.join("owned-by-root"), "x").expect("file");
        std::os::unix::fs::chown(source.join("owned-by-root"), Some(0), Some(0)).expect("chown");
        let range = slot(1);
        let ns = create_user_namespace(range).expect("user namespace");
        use rustix::mount::{MoveMountFlags, OpenTreeFlags};
        let tree = rustix::mount::open_tree(
            rustix::fs::CWD,
            &source,
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .expect("open_tree");
        set_idmap(tree.as_fd(), ns.as_fd(), MountAttributes::default()).expect("idmap");
        rustix::mount::move_mount(
            &tree,
            "",
            rustix::fs::CWD,
            &point,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .expect("move_mount");
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
            }
        }
        let mounted = Unmount(point.clone());
        let owner = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| (m.uid(), m.gid()))
                .expect("stat")
        };
        assert_eq!(
            owner(&point.join("owned-by-root")),
            (range.first(), range.first())
        );
        assert_eq!(
            owner(&source.join("owned-by-root")),
            (0, 0),
            "disk unchanged"
        );
        // The node's root has no id in the mapping: it cannot create here.
        let err = std::fs::write(point.join("by-node-root"), "x").expect_err("unmapped");
        assert_eq!(err.raw_os_error(), Some(libc::EOVERFLOW), "{err}");
        as_range_root(range, || {
            std::fs::write(point.join("by-container-root"), "x")
        })
        .expect("switched")
        .expect("created as the range's root");
        assert_eq!(
            owner(&source.join("by-container-root")),
            (0, 0),
            "unshifted"
        );
        assert_eq!(
            owner(&point.join("by-container-root")),
            (range.first(), range.first())
        );
        drop(mounted);
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn the_threads_ids_and_capabilities_come_back_after_acting_as_the_range() {
        let before = rustix::thread::capabilities(None).expect("caps");
        let inside = as_range_root(slot(2), || {
            // SAFETY: -1 is no id: setfsuid only reports the current one.
            let fsuid = unsafe { libc::setfsuid(u32::MAX) };
            (fsuid, rustix::thread::capabilities(None).expect("caps"))
        })
        .expect("switched");
        assert_eq!(inside.0 as u32, slot(2).first());
        assert_eq!(inside.1.effective, before.effective, "capabilities kept");
        // SAFETY: as above.
        let after = unsafe { libc::setfsuid(u32::MAX) };
        assert_eq!(after as u32, rustix::process::geteuid().as_raw());
        assert_eq!(rustix::thread::capabilities(None).expect("caps"), before);
    }
}
