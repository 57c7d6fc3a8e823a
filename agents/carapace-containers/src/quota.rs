//! The disk bound: images, writable layers and volumes cannot crowd the
//! node's own state off /var.
//!
//! The state partition is ext4 made with the `quota` and `project` features
//! (image/mkosi.repart/30-var.conf), so the kernel tracks every project's
//! usage from the mount on. At the agent's start, [`bound_on_node`]:
//!
//! 1. asks the kernel whether /var tracks project quota (`quotactl_fd`
//!    `Q_GETFMT`); a node whose /var was made without the features (one
//!    made by an older image) gets [`Outcome::Unavailable`] and nothing is
//!    changed;
//! 2. puts the store ([`crate::STORE_ROOT`], bundles and writable layers
//!    included) and the volumes ([`VOLUMES_DIR`]) in project
//!    [`PROJECT_ID`]: each directory gets the project and
//!    `FS_XFLAG_PROJINHERIT` (so everything made in it later is in the
//!    project too, and ext4 refuses to rename or link anything from outside
//!    into it), each regular file the project, walked through descriptors
//!    without following symlinks and without opening anything but
//!    directories and regular files; a walk that put everything in leaves
//!    [`WALKED`] in the directory, so later starts skip it (what is made
//!    there afterwards inherits the project) while an interrupted or
//!    partly failed walk is done again at the next start;
//! 3. sets the project's hard limits ([`project_limits`], pure: the
//!    filesystem less a reserve for settings.json, the API's certificate,
//!    the update daemon's staged manifest and the rest of the node's state)
//!    and turns enforcement on (`Q_QUOTAON`; the limits persist in the
//!    filesystem, enforcement lasts until unmount);
//! 4. drops `CAP_SYS_RESOURCE` from the agent's effective set. The quota
//!    code lets that capability pass any hard limit, and overlayfs writes to
//!    the upper layer with the credentials of whoever mounted the overlay,
//!    the agent: without the drop, a container's writes to its writable
//!    layer, and the agent's own unpacking, would not be bounded. crun gets
//!    the capability back at exec (it is still permitted and in the bounding
//!    set); the containers' own capabilities are their spec's.
//!
//! ext4's statfs of a directory that inherits an enforced project reports
//! the project's limit and usage, so `statvfs` of the store says how much
//! the bound has left. Removing a container frees blocks and allocates none,
//! and settings.json lives outside the project, in the reserve: both work
//! when the bound is reached.
//!
//! Does not: bound one container against another (they share the project),
//! or make /var (its size and features are the image's).

use carapace_model::containers::VOLUMES_DIR;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{FileType, Mode, OFlags, CWD};
use std::ffi::{CStr, OsStr};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The project quota ID of images, writable layers and volumes.
pub const PROJECT_ID: u32 = 4242;

/// The filesystem the bound is on.
pub const FILESYSTEM: &str = "/var";

/// Never less than this is kept outside the bound.
pub const RESERVE_MIN_BYTES: u64 = 32 << 20;
/// Never fewer inodes than this are kept outside the bound.
pub const RESERVE_MIN_INODES: u64 = 1024;
/// The share of the filesystem's bytes and inodes kept outside the bound,
/// in percent, when it is more than the minimum.
pub const RESERVE_PERCENT: u64 = 15;

/// How deep below a bounded directory the walk goes. What is deeper was
/// made after its directory joined the project (it inherits), or is
/// reported as left outside.
pub const MAX_DEPTH: usize = 128;

/// `FS_XFLAG_PROJINHERIT` (linux/fs.h): what is made in the directory gets
/// its project.
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;
/// `PRJQUOTA` (linux/quota.h).
const PRJQUOTA: u32 = 2;
/// `QFMT_VFS_V1` (linux/quota.h), the format ext4's hidden quota inodes use.
const QFMT_VFS_V1: u32 = 4;
/// `Q_GETFMT` (linux/quota.h); libc has the other commands.
const Q_GETFMT: u32 = 0x80_0004;
/// Quota block limits are in units of 1 KiB (`QIF_DQBLKSIZE`).
const QUOTA_BLOCK: u64 = 1024;

/// The project's hard limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A whole number of KiB, never 0 (to the kernel 0 means no limit).
    pub bytes: u64,
    /// Never 0.
    pub inodes: u64,
}

/// The project's limits on a filesystem of `fs_bytes` and `fs_inodes`: all
/// of it but a reserve of [`RESERVE_PERCENT`] percent, at least
/// [`RESERVE_MIN_BYTES`] and [`RESERVE_MIN_INODES`]. On a filesystem no
/// bigger than the reserve the bound is 1 KiB and 1 inode: no limit at all
/// would be the opposite of what a tiny /var needs.
pub fn project_limits(fs_bytes: u64, fs_inodes: u64) -> Limits {
    let share = |total: u64| {
        u64::try_from(u128::from(total) * u128::from(RESERVE_PERCENT) / 100).unwrap_or(total)
    };
    let reserve_bytes = share(fs_bytes).max(RESERVE_MIN_BYTES);
    let bytes = fs_bytes.saturating_sub(reserve_bytes) / QUOTA_BLOCK * QUOTA_BLOCK;
    let reserve_inodes = share(fs_inodes).max(RESERVE_MIN_INODES);
    Limits {
        bytes: bytes.max(QUOTA_BLOCK),
        inodes: fs_inodes.saturating_sub(reserve_inodes).max(1),
    }
}

/// The `Q_SETQUOTA` argument that sets exactly these hard limits (and no
/// soft limits, which would only add a grace period).
pub fn quota_block(limits: Limits) -> libc::dqblk {
    libc::dqblk {
        dqb_bhardlimit: limits.bytes / QUOTA_BLOCK,
        dqb_bsoftlimit: 0,
        dqb_curspace: 0,
        dqb_ihardlimit: limits.inodes,
        dqb_isoftlimit: 0,
        dqb_curinodes: 0,
        dqb_btime: 0,
        dqb_itime: 0,
        dqb_valid: libc::QIF_BLIMITS | libc::QIF_ILIMITS,
    }
}

/// What failed, on what.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot stat {path}: {source}")]
    Stat { path: PathBuf, source: io::Error },
    #[error("{path} is not on {filesystem}, which the bound is on")]
    OtherFilesystem { path: PathBuf, filesystem: PathBuf },
    #[error("cannot ask whether {path} tracks project quota: {source}")]
    Detect { path: PathBuf, source: io::Error },
    #[error("cannot read the directory {path}: {source}")]
    ReadDir { path: PathBuf, source: io::Error },
    #[error("cannot read the project of {path}: {source}")]
    GetProject { path: PathBuf, source: io::Error },
    #[error("cannot put {path} in project {project}: {source}")]
    SetProject {
        path: PathBuf,
        project: u32,
        source: io::Error,
    },
    #[error("{path} is more than {MAX_DEPTH} directories below a bounded directory: not walked")]
    TooDeep { path: PathBuf },
    #[error("cannot statvfs {path}: {source}")]
    Statfs { path: PathBuf, source: io::Error },
    #[error("cannot set the limits of project {project} on {path}: {source}")]
    SetLimits {
        path: PathBuf,
        project: u32,
        source: io::Error,
    },
    #[error("cannot turn on project quota enforcement on {path}: {source}")]
    Enforce { path: PathBuf, source: io::Error },
    #[error("cannot read the usage of project {project} on {path}: {source}")]
    Usage {
        path: PathBuf,
        project: u32,
        source: io::Error,
    },
    #[error("cannot drop CAP_SYS_RESOURCE, which passes any quota: {source}")]
    DropCapability { source: io::Error },
}

/// What [`bound`] did.
#[derive(Debug)]
pub enum Outcome {
    /// The bound is enforced.
    Enforced(Report),
    /// The filesystem cannot have the bound; nothing was changed.
    Unavailable { filesystem: PathBuf, why: String },
}

/// The bound as set.
#[derive(Debug)]
pub struct Report {
    pub dirs: Vec<PathBuf>,
    pub filesystem: PathBuf,
    pub project: u32,
    pub limits: Limits,
    pub fs_bytes: u64,
    pub fs_inodes: u64,
    /// What the project holds now.
    pub used_bytes: u64,
    pub used_inodes: u64,
    pub walk: WalkReport,
}

/// What the walk changed, and what it could not.
#[derive(Debug, Default)]
pub struct WalkReport {
    /// Directories and files put in the project (already there: not counted).
    pub moved: u64,
    /// Entries the walk could not put in the project (or walk below).
    pub failed: u64,
    pub first_failure: Option<QuotaError>,
}

impl WalkReport {
    fn failure(&mut self, error: QuotaError) {
        self.failed += 1;
        self.first_failure.get_or_insert(error);
    }
}

/// A file's project and whether what is made in it inherits the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectAttr {
    pub project: u32,
    pub inherit: bool,
}

/// Reading and setting a file's project, on a descriptor of it: the
/// kernel's `FS_IOC_FSGETXATTR`/`FS_IOC_FSSETXATTR` ([`KernelAttrs`]), or a
/// fake in tests (no host filesystem here can hold project IDs).
pub trait ProjectAttrs {
    fn get(&self, fd: BorrowedFd<'_>) -> io::Result<ProjectAttr>;
    /// Sets the project and the inherit flag, keeping every other flag.
    fn set(&self, fd: BorrowedFd<'_>, attr: ProjectAttr) -> io::Result<()>;
}

/// `struct fsxattr` (linux/fs.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsXattr {
    fsx_xflags: u32,
    fsx_extsize: u32,
    fsx_nextents: u32,
    fsx_projid: u32,
    fsx_cowextsize: u32,
    fsx_pad: [u8; 8],
}

/// `_IOR('X', 31, struct fsxattr)`.
const FS_IOC_FSGETXATTR: rustix::ioctl::Opcode = rustix::ioctl::opcode::read::<FsXattr>(b'X', 31);
/// `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSSETXATTR: rustix::ioctl::Opcode = rustix::ioctl::opcode::write::<FsXattr>(b'X', 32);

/// The kernel's file attribute ioctls.
pub struct KernelAttrs;

impl KernelAttrs {
    fn get_raw(fd: BorrowedFd<'_>) -> io::Result<FsXattr> {
        // SAFETY: FS_IOC_FSGETXATTR is _IOR('X', 31, struct fsxattr) and
        // FsXattr is struct fsxattr, field for field with #[repr(C)]: the
        // kernel writes exactly size_of::<FsXattr>() bytes into it.
        let getter = unsafe { rustix::ioctl::Getter::<FS_IOC_FSGETXATTR, FsXattr>::new() };
        // SAFETY: as above; the descriptor is borrowed for the call only.
        Ok(unsafe { rustix::ioctl::ioctl(fd, getter) }?)
    }
}

impl ProjectAttrs for KernelAttrs {
    fn get(&self, fd: BorrowedFd<'_>) -> io::Result<ProjectAttr> {
        let x = Self::get_raw(fd)?;
        Ok(ProjectAttr {
            project: x.fsx_projid,
            inherit: x.fsx_xflags & FS_XFLAG_PROJINHERIT != 0,
        })
    }

    fn set(&self, fd: BorrowedFd<'_>, attr: ProjectAttr) -> io::Result<()> {
        // Read, change the project and the one flag, write back: what the
        // kernel reported for the rest is what it accepts unchanged.
        let mut x = Self::get_raw(fd)?;
        x.fsx_projid = attr.project;
        if attr.inherit {
            x.fsx_xflags |= FS_XFLAG_PROJINHERIT;
        } else {
            x.fsx_xflags &= !FS_XFLAG_PROJINHERIT;
        }
        // SAFETY: FS_IOC_FSSETXATTR is _IOW('X', 32, struct fsxattr) and
        // FsXattr is struct fsxattr with #[repr(C)]: the kernel reads
        // exactly size_of::<FsXattr>() bytes from it.
        let setter = unsafe { rustix::ioctl::Setter::<FS_IOC_FSSETXATTR, FsXattr>::new(x) };
        // SAFETY: as above; the descriptor is borrowed for the call only.
        unsafe { rustix::ioctl::ioctl(fd, setter) }?;
        Ok(())
    }
}

/// `QCMD(cmd, type)` (linux/quota.h).
fn qcmd(cmd: u32, quota_type: u32) -> u32 {
    (cmd << 8) | (quota_type & 0xff)
}

/// `quotactl_fd(2)` (Linux 5.14): a quota command on the filesystem `fd` is on.
///
/// # Safety
///
/// `addr` must be null or point to what `cmd` reads or writes (a `u32` for
/// `Q_GETFMT`, a `libc::dqblk` for `Q_GETQUOTA` and `Q_SETQUOTA`), valid for
/// the call.
unsafe fn quotactl_fd(
    fd: BorrowedFd<'_>,
    cmd: u32,
    id: u32,
    addr: *mut libc::c_void,
) -> io::Result<()> {
    // SAFETY: quotactl_fd takes (unsigned int fd, unsigned int cmd, qid_t
    // id, void *addr), each passed as a full register-width integer; the
    // descriptor is open for the call (borrowed) and the caller vouches for
    // `addr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            libc::c_long::from(fd.as_raw_fd()),
            libc::c_long::from(cmd),
            libc::c_long::from(id),
            addr,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether the filesystem of `fd` tracks project quota: `Err(why not)` when
/// it cannot (the kernel's answer, in words).
fn tracks_project_quota(fd: BorrowedFd<'_>, path: &Path) -> Result<Result<(), String>, QuotaError> {
    let mut format: u32 = 0;
    // SAFETY: Q_GETFMT writes one u32, and `format` is one, alive for the call.
    let asked = unsafe { quotactl_fd(fd, qcmd(Q_GETFMT, PRJQUOTA), 0, (&raw mut format).cast()) };
    match asked {
        Ok(()) => Ok(Ok(())),
        Err(e) => match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(Err(format!(
                "project quota is not tracked on {} (an ext4 made without the quota and project features)",
                path.display()
            ))),
            Some(libc::ENOSYS) => Ok(Err(format!(
                "the kernel or the filesystem of {} has no quota support",
                path.display()
            ))),
            Some(libc::EINVAL) => Ok(Err(format!(
                "the filesystem of {} has no project quota",
                path.display()
            ))),
            _ => Err(QuotaError::Detect {
                path: path.to_path_buf(),
                source: e,
            }),
        },
    }
}

fn open_dir(at: BorrowedFd<'_>, name: &Path, path: &Path) -> Result<OwnedFd, QuotaError> {
    rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| QuotaError::Open {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// Opens the file an `O_PATH` handle holds, for reading, through procfs:
/// the same inode, whatever its name now points to. Only ever called on
/// directories and regular files (opening them has no side effect).
fn reopen(handle: &OwnedFd, flags: OFlags, path: &Path) -> Result<OwnedFd, QuotaError> {
    let proc = format!("/proc/self/fd/{}", handle.as_raw_fd());
    rustix::fs::openat(
        CWD,
        proc.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK | flags,
        Mode::empty(),
    )
    .map_err(|e| QuotaError::Open {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// The names in a directory, `.` and `..` left out.
fn entries(dir: &OwnedFd, path: &Path) -> Result<Vec<Vec<u8>>, QuotaError> {
    let read_error = |e: rustix::io::Errno| QuotaError::ReadDir {
        path: path.to_path_buf(),
        source: e.into(),
    };
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let name: &CStr = entry.file_name();
        let name = name.to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

/// Puts the directory `dir` (at `path`, `depth` below a bounded root) and
/// everything below it in `project`: the directory first, with the inherit
/// flag, so that what is made in it meanwhile is inside too; then each
/// entry. Failures below are counted in `report`; the directory's own is
/// returned.
fn bound_dir(
    attrs: &dyn ProjectAttrs,
    dir: &OwnedFd,
    path: &Path,
    project: u32,
    depth: usize,
    report: &mut WalkReport,
) -> Result<(), QuotaError> {
    let wanted = ProjectAttr {
        project,
        inherit: true,
    };
    let attr = attrs
        .get(dir.as_fd())
        .map_err(|source| QuotaError::GetProject {
            path: path.to_path_buf(),
            source,
        })?;
    if depth > MAX_DEPTH {
        return if attr == wanted {
            Ok(())
        } else {
            Err(QuotaError::TooDeep {
                path: path.to_path_buf(),
            })
        };
    }
    if attr != wanted {
        attrs
            .set(dir.as_fd(), wanted)
            .map_err(|source| QuotaError::SetProject {
                path: path.to_path_buf(),
                project,
                source,
            })?;
        report.moved += 1;
    }
    for name in entries(dir, path)? {
        let name = Path::new(OsStr::from_bytes(&name));
        let child = path.join(name);
        if let Err(e) = bound_entry(attrs, dir, name, &child, project, depth + 1, report) {
            report.failure(e);
        }
    }
    Ok(())
}

/// One entry of a directory being walked: opened as an `O_PATH` handle
/// without following a symlink, looked at, and only a directory or a
/// regular file opened for real. Symlinks, device nodes, FIFOs and sockets
/// hold no data blocks worth bounding and are left alone.
fn bound_entry(
    attrs: &dyn ProjectAttrs,
    dir: &OwnedFd,
    name: &Path,
    path: &Path,
    project: u32,
    depth: usize,
    report: &mut WalkReport,
) -> Result<(), QuotaError> {
    let handle = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| QuotaError::Open {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    let stat = rustix::fs::fstat(&handle).map_err(|e| QuotaError::Stat {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Directory => {
            let fd = reopen(&handle, OFlags::DIRECTORY, path)?;
            // One descriptor per level while the walk goes down, not two.
            drop(handle);
            bound_dir(attrs, &fd, path, project, depth, report)
        }
        FileType::RegularFile => {
            let fd = reopen(&handle, OFlags::empty(), path)?;
            let wanted = ProjectAttr {
                project,
                inherit: false,
            };
            let attr = attrs
                .get(fd.as_fd())
                .map_err(|source| QuotaError::GetProject {
                    path: path.to_path_buf(),
                    source,
                })?;
            if attr.project != project {
                attrs
                    .set(fd.as_fd(), wanted)
                    .map_err(|source| QuotaError::SetProject {
                        path: path.to_path_buf(),
                        project,
                        source,
                    })?;
                report.moved += 1;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The file a complete walk leaves in a bounded root: from then on
/// everything made below inherits the project, so no start walks it again.
pub const WALKED: &str = ".project-walked";

/// Puts `root` (created if missing) and everything below it in `project`,
/// unless a walk already did ([`WALKED`], and the root still in the
/// project). A failure on the root itself is returned; those below are
/// counted, and leave no [`WALKED`], so the next start tries again.
pub fn bound_tree(
    attrs: &dyn ProjectAttrs,
    root: &Path,
    project: u32,
    report: &mut WalkReport,
) -> Result<(), QuotaError> {
    std::fs::create_dir_all(root).map_err(|source| QuotaError::Create {
        path: root.to_path_buf(),
        source,
    })?;
    let fd = open_dir(CWD, root, root)?;
    let walked = root.join(WALKED);
    let in_project = ProjectAttr {
        project,
        inherit: true,
    };
    let root_attr = attrs
        .get(fd.as_fd())
        .map_err(|source| QuotaError::GetProject {
            path: root.to_path_buf(),
            source,
        })?;
    if root_attr == in_project && walked.exists() {
        return Ok(());
    }
    let failed_before = report.failed;
    bound_dir(attrs, &fd, root, project, 0, report)?;
    if report.failed == failed_before {
        std::fs::write(&walked, b"").map_err(|source| QuotaError::Create {
            path: walked.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Sets the bound of `project` on `dirs`, which must all be on the
/// filesystem mounted at `filesystem`: detect, walk, limit, enforce, as the
/// module says (all but the capability drop, which is
/// [`bound_on_node`]'s). A filesystem without project quota gives
/// [`Outcome::Unavailable`] and is left as it was.
pub fn bound(
    attrs: &dyn ProjectAttrs,
    filesystem: &Path,
    dirs: &[&Path],
    project: u32,
) -> Result<Outcome, QuotaError> {
    let fs = open_dir(CWD, filesystem, filesystem)?;
    if let Err(why) = tracks_project_quota(fs.as_fd(), filesystem)? {
        return Ok(Outcome::Unavailable {
            filesystem: filesystem.to_path_buf(),
            why,
        });
    }
    let fs_stat = rustix::fs::fstat(&fs).map_err(|e| QuotaError::Stat {
        path: filesystem.to_path_buf(),
        source: e.into(),
    })?;

    let mut walk = WalkReport::default();
    for dir in dirs {
        std::fs::create_dir_all(dir).map_err(|source| QuotaError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
        let stat = rustix::fs::stat(*dir).map_err(|e| QuotaError::Stat {
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
        if stat.st_dev != fs_stat.st_dev {
            return Err(QuotaError::OtherFilesystem {
                path: dir.to_path_buf(),
                filesystem: filesystem.to_path_buf(),
            });
        }
        bound_tree(attrs, dir, project, &mut walk)?;
    }

    // The mount point itself inherits no project: its statvfs is the
    // whole filesystem's.
    let vfs = rustix::fs::fstatvfs(&fs).map_err(|e| QuotaError::Statfs {
        path: filesystem.to_path_buf(),
        source: e.into(),
    })?;
    let fs_bytes = vfs.f_blocks.saturating_mul(vfs.f_frsize);
    let limits = project_limits(fs_bytes, vfs.f_files);
    let mut block = quota_block(limits);
    // SAFETY: Q_SETQUOTA reads one struct if_dqblk, which libc::dqblk is,
    // and `block` is alive for the call.
    unsafe {
        quotactl_fd(
            fs.as_fd(),
            qcmd(libc::Q_SETQUOTA as u32, PRJQUOTA),
            project,
            (&raw mut block).cast(),
        )
    }
    .map_err(|source| QuotaError::SetLimits {
        path: filesystem.to_path_buf(),
        project,
        source,
    })?;
    // SAFETY: Q_QUOTAON on a filesystem with hidden quota inodes reads
    // nothing through `addr` (null here).
    let on = unsafe {
        quotactl_fd(
            fs.as_fd(),
            qcmd(libc::Q_QUOTAON as u32, PRJQUOTA),
            QFMT_VFS_V1,
            std::ptr::null_mut(),
        )
    };
    match on {
        // EEXIST: enforced already (an earlier start, or a `prjquota` mount).
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
            return Err(QuotaError::Enforce {
                path: filesystem.to_path_buf(),
                source: e,
            })
        }
        _ => {}
    }
    let mut usage = quota_block(limits);
    // SAFETY: Q_GETQUOTA writes one struct if_dqblk, which libc::dqblk is,
    // and `usage` is alive for the call.
    unsafe {
        quotactl_fd(
            fs.as_fd(),
            qcmd(libc::Q_GETQUOTA as u32, PRJQUOTA),
            project,
            (&raw mut usage).cast(),
        )
    }
    .map_err(|source| QuotaError::Usage {
        path: filesystem.to_path_buf(),
        project,
        source,
    })?;

    Ok(Outcome::Enforced(Report {
        dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
        filesystem: filesystem.to_path_buf(),
        project,
        limits,
        fs_bytes,
        fs_inodes: vfs.f_files,
        used_bytes: usage.dqb_curspace,
        used_inodes: usage.dqb_curinodes,
        walk,
    }))
}

/// Drops `CAP_SYS_RESOURCE` from the calling thread's effective set (it
/// stays permitted, so programs the agent runs get it back at exec).
/// Capabilities are per thread: called before any other thread exists,
/// every thread the process starts later is without it.
pub fn drop_quota_override() -> Result<(), QuotaError> {
    let mut sets = rustix::thread::capabilities(None)
        .map_err(|e| QuotaError::DropCapability { source: e.into() })?;
    sets.effective
        .remove(rustix::thread::CapabilitySet::SYS_RESOURCE);
    rustix::thread::set_capabilities(None, sets)
        .map_err(|e| QuotaError::DropCapability { source: e.into() })
}

/// The bound on the node: the store and the volumes on /var, then the
/// capability drop. Call it first thing in `main`, before any thread.
pub fn bound_on_node() -> Result<Outcome, QuotaError> {
    let dirs = [Path::new(crate::STORE_ROOT), Path::new(VOLUMES_DIR)];
    let outcome = bound(&KernelAttrs, Path::new(FILESYSTEM), &dirs, PROJECT_ID);
    // Whatever happened above: an enforcement left on by an earlier start
    // must bind this one's overlays too.
    drop_quota_override()?;
    outcome
}

const MIB: u64 = 1 << 20;

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Unavailable { why, .. } => write!(
                f,
                "not available: {why}: images, writable layers and volumes can fill it"
            ),
            Outcome::Enforced(r) => {
                let dirs: Vec<String> = r.dirs.iter().map(|d| d.display().to_string()).collect();
                write!(
                    f,
                    "{} (project {}) at most {} MiB and {} inodes of {}'s {} MiB and {} inodes, {} MiB and {} inodes used, enforced",
                    dirs.join(" and "),
                    r.project,
                    r.limits.bytes / MIB,
                    r.limits.inodes,
                    r.filesystem.display(),
                    r.fs_bytes / MIB,
                    r.fs_inodes,
                    r.used_bytes.div_ceil(MIB),
                    r.used_inodes,
                )?;
                if r.walk.moved > 0 {
                    write!(f, "; {} entries moved into the project", r.walk.moved)?;
                }
                if let Some(first) = &r.walk.first_failure {
                    write!(
                        f,
                        "; {} entries left outside it (first: {first})",
                        r.walk.failed
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// The agent's console line for [`bound_on_node`]'s result (after
/// `carapace-containers: `).
pub fn console_line(result: &Result<Outcome, QuotaError>) -> String {
    match result {
        Ok(outcome) => format!("disk bound: {outcome}"),
        Err(e) => format!("disk bound: not applied: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::os::unix::fs::symlink;

    #[test]
    fn the_nodes_var_keeps_15_percent_for_its_own_state() {
        // 256 MiB of 4 KiB blocks less what ext4 keeps for itself, as the
        // node's statvfs reports it; 16384 inodes.
        let fs = 250 * MIB;
        let l = project_limits(fs, 16384);
        assert_eq!(l.bytes, (fs - fs * 15 / 100) / 1024 * 1024);
        assert!(fs - l.bytes >= 37 * MIB, "{l:?}");
        assert_eq!(l.inodes, 16384 - 2457);
    }

    #[test]
    fn a_small_filesystem_keeps_at_least_32_mib_and_1024_inodes() {
        let l = project_limits(100 * MIB, 4000);
        assert_eq!(l.bytes, 68 * MIB);
        assert_eq!(l.inodes, 4000 - 1024);
    }

    #[test]
    fn a_filesystem_no_bigger_than_the_reserve_gets_the_smallest_bound_not_none() {
        // 0 would mean "no limit" to the kernel.
        for (bytes, inodes) in [(0, 0), (10 * MIB, 100), (32 * MIB, 1024)] {
            let l = project_limits(bytes, inodes);
            assert_eq!(
                l,
                Limits {
                    bytes: 1024,
                    inodes: 1
                },
                "{bytes} {inodes}"
            );
        }
    }

    #[test]
    fn limits_are_whole_kib_and_never_overflow() {
        let l = project_limits(1000 * MIB + 1234, 100_000);
        assert_eq!(l.bytes % 1024, 0);
        let huge = project_limits(u64::MAX, u64::MAX);
        assert!(huge.bytes < u64::MAX && huge.bytes > u64::MAX / 100 * 84);
        assert!(huge.inodes < u64::MAX);
    }

    #[test]
    fn the_quota_block_sets_hard_limits_in_kib_and_nothing_else() {
        let b = quota_block(Limits {
            bytes: 200 * MIB,
            inodes: 5000,
        });
        assert_eq!(b.dqb_bhardlimit, 200 * 1024);
        assert_eq!(b.dqb_ihardlimit, 5000);
        assert_eq!((b.dqb_bsoftlimit, b.dqb_isoftlimit), (0, 0));
        assert_eq!(b.dqb_valid, libc::QIF_BLIMITS | libc::QIF_ILIMITS);
    }

    #[test]
    fn the_commands_are_the_kernels() {
        // linux/fs.h and linux/quota.h, as the kernel computes them.
        assert_eq!(FS_IOC_FSGETXATTR, 0x801c_581f);
        assert_eq!(FS_IOC_FSSETXATTR, 0x401c_5820);
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!(qcmd(libc::Q_SETQUOTA as u32, PRJQUOTA), 0x8000_0802);
        assert_eq!(qcmd(libc::Q_QUOTAON as u32, PRJQUOTA), 0x8000_0202);
        assert_eq!(qcmd(Q_GETFMT, PRJQUOTA), 0x8000_0402);
    }

    fn scratch(label: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("carapace-quota-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    fn inode(path: &Path) -> (u64, u64) {
        let s = rustix::fs::lstat(path).expect("lstat");
        (s.st_dev, s.st_ino)
    }

    /// Keeps projects per inode, as the filesystem would; can refuse one.
    #[derive(Default)]
    struct FakeAttrs {
        attrs: RefCell<HashMap<(u64, u64), ProjectAttr>>,
        refuse: Option<(u64, u64)>,
    }

    impl FakeAttrs {
        fn key(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
            let s = rustix::fs::fstat(fd)?;
            Ok((s.st_dev, s.st_ino))
        }

        fn of(&self, path: &Path) -> ProjectAttr {
            self.attrs
                .borrow()
                .get(&inode(path))
                .copied()
                .unwrap_or(ProjectAttr {
                    project: 0,
                    inherit: false,
                })
        }

        fn touched(&self, path: &Path) -> bool {
            self.attrs.borrow().contains_key(&inode(path))
        }
    }

    impl ProjectAttrs for FakeAttrs {
        fn get(&self, fd: BorrowedFd<'_>) -> io::Result<ProjectAttr> {
            let key = Self::key(fd)?;
            Ok(self
                .attrs
                .borrow()
                .get(&key)
                .copied()
                .unwrap_or(ProjectAttr {
                    project: 0,
                    inherit: false,
                }))
        }

        fn set(&self, fd: BorrowedFd<'_>, attr: ProjectAttr) -> io::Result<()> {
            let key = Self::key(fd)?;
            if self.refuse == Some(key) {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            self.attrs.borrow_mut().insert(key, attr);
            Ok(())
        }
    }

    const IN: ProjectAttr = ProjectAttr {
        project: PROJECT_ID,
        inherit: true,
    };
    const FILE_IN: ProjectAttr = ProjectAttr {
        project: PROJECT_ID,
        inherit: false,
    };

    #[test]
    fn the_walk_puts_every_directory_and_file_below_the_root_in_the_project() {
        let d = scratch("walk");
        let root = d.join("containers");
        std::fs::create_dir_all(root.join("layers/sha256/ab/usr/bin")).expect("dirs");
        std::fs::write(root.join("layers/sha256/ab/usr/bin/sh"), b"x").expect("file");
        std::fs::create_dir_all(root.join("run/web/upper")).expect("dirs");
        std::fs::write(root.join("run/web/upper/data"), b"y").expect("file");
        std::fs::hard_link(root.join("run/web/upper/data"), root.join("run/web/link"))
            .expect("link");

        let fake = FakeAttrs::default();
        let mut report = WalkReport::default();
        bound_tree(&fake, &root, PROJECT_ID, &mut report).expect("walk");

        for dir in [
            "",
            "layers",
            "layers/sha256",
            "layers/sha256/ab/usr/bin",
            "run/web/upper",
        ] {
            assert_eq!(fake.of(&root.join(dir)), IN, "{dir}");
        }
        assert_eq!(fake.of(&root.join("layers/sha256/ab/usr/bin/sh")), FILE_IN);
        assert_eq!(fake.of(&root.join("run/web/upper/data")), FILE_IN);
        assert_eq!(report.failed, 0, "{:?}", report.first_failure);
        // 9 directories and 2 files (the hard link is the same file).
        assert_eq!(report.moved, 11);

        // A second start changes nothing, and walks nothing: a file put
        // out of the project behind its back stays out (in the kernel,
        // what is made below inherits the project).
        assert!(root.join(WALKED).exists(), "a complete walk says so");
        let file = root.join("run/web/upper/data");
        let fd = rustix::fs::open(&file, OFlags::RDONLY, Mode::empty()).expect("open");
        fake.set(
            fd.as_fd(),
            ProjectAttr {
                project: 0,
                inherit: false,
            },
        )
        .expect("set");
        let mut again = WalkReport::default();
        bound_tree(&fake, &root, PROJECT_ID, &mut again).expect("walk");
        assert_eq!(again.moved, 0);
        assert_eq!(fake.of(&file).project, 0, "not walked again");
        // Without the mark (a walk cut short) the next start walks again.
        std::fs::remove_file(root.join(WALKED)).expect("unmark");
        let mut redo = WalkReport::default();
        bound_tree(&fake, &root, PROJECT_ID, &mut redo).expect("walk");
        assert_eq!(redo.moved, 1);
        assert_eq!(fake.of(&file), FILE_IN);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_walk_creates_a_missing_root() {
        let d = scratch("create");
        let root = d.join("volumes");
        let fake = FakeAttrs::default();
        bound_tree(&fake, &root, PROJECT_ID, &mut WalkReport::default()).expect("walk");
        assert!(root.is_dir());
        assert_eq!(fake.of(&root), IN);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_walk_follows_no_symlink_and_opens_no_special_file() {
        let d = scratch("links");
        let root = d.join("containers");
        let outside = d.join("outside");
        std::fs::create_dir_all(root.join("upper")).expect("dirs");
        std::fs::create_dir_all(&outside).expect("dirs");
        std::fs::write(outside.join("secret"), b"s").expect("file");
        symlink(&outside, root.join("upper/to-dir")).expect("symlink");
        symlink(outside.join("secret"), root.join("upper/to-file")).expect("symlink");
        // A FIFO: opening it for reading would block the walk forever.
        rustix::fs::mknodat(
            CWD,
            root.join("upper/fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");

        let fake = FakeAttrs::default();
        let mut report = WalkReport::default();
        bound_tree(&fake, &root, PROJECT_ID, &mut report).expect("walk");

        assert_eq!(fake.of(&root.join("upper")), IN);
        assert!(!fake.touched(&outside), "the symlinked directory");
        assert!(!fake.touched(&outside.join("secret")), "the symlinked file");
        assert!(!fake.touched(&root.join("upper/to-dir")), "the symlink");
        assert!(!fake.touched(&root.join("upper/fifo")), "the FIFO");
        assert_eq!(report.failed, 0, "{:?}", report.first_failure);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn one_file_that_cannot_join_is_counted_and_the_rest_still_joins() {
        let d = scratch("refuse");
        let root = d.join("containers");
        std::fs::create_dir_all(root.join("a")).expect("dirs");
        std::fs::write(root.join("a/immutable"), b"i").expect("file");
        std::fs::write(root.join("a/plain"), b"p").expect("file");

        let fake = FakeAttrs {
            refuse: Some(inode(&root.join("a/immutable"))),
            ..FakeAttrs::default()
        };
        let mut report = WalkReport::default();
        bound_tree(&fake, &root, PROJECT_ID, &mut report).expect("walk");

        assert_eq!(fake.of(&root.join("a/plain")), FILE_IN);
        assert_eq!(report.failed, 1);
        let first = report
            .first_failure
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            first.contains("a/immutable") && first.contains("project 4242"),
            "{first}"
        );
        assert!(
            !root.join(WALKED).exists(),
            "a walk with a failure is done again at the next start"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_tree_deeper_than_the_walk_goes_is_reported_not_a_crash() {
        let d = scratch("deep");
        let root = d.join("containers");
        let mut deep = root.clone();
        for _ in 0..MAX_DEPTH + 3 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).expect("deep dirs");

        let fake = FakeAttrs::default();
        let mut report = WalkReport::default();
        bound_tree(&fake, &root, PROJECT_ID, &mut report).expect("walk");

        assert_eq!(report.failed, 1);
        assert!(matches!(
            report.first_failure,
            Some(QuotaError::TooDeep { .. })
        ));
        assert!(!fake.touched(&deep), "not walked below the limit");
        assert_eq!(fake.of(&root.join("d/d/d")), IN);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_ioctls_read_and_write_a_host_directory() {
        // No filesystem this host can mount holds project IDs, but every
        // one that has the ioctls answers them: a wrong command or struct
        // size would be ENOTTY or EINVAL.
        let d = scratch("ioctl");
        let fd = open_dir(CWD, &d, &d).expect("open");
        let attr = KernelAttrs.get(fd.as_fd()).expect("FS_IOC_FSGETXATTR");
        assert_eq!(
            attr,
            ProjectAttr {
                project: 0,
                inherit: false
            }
        );
        KernelAttrs
            .set(fd.as_fd(), attr)
            .expect("FS_IOC_FSSETXATTR with what was read");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_filesystem_without_project_quota_is_left_alone() {
        // The host's temporary directory is an older node's /var: ext4
        // without the quota feature (or another filesystem without quota).
        let d = scratch("old-node");
        let containers = d.join("containers");
        let volumes = d.join("volumes");
        let outcome = bound(
            &KernelAttrs,
            &d,
            &[containers.as_path(), volumes.as_path()],
            PROJECT_ID,
        )
        .expect("an answer");
        let Outcome::Unavailable { why, .. } = &outcome else {
            panic!("the bound cannot be on this filesystem: {outcome:?}");
        };
        let ext4 = rustix::fs::statfs(&d).expect("statfs").f_type == 0xef53;
        if ext4 {
            assert!(why.contains("is not tracked on"), "{why}");
        }
        assert!(why.contains(&d.display().to_string()), "{why}");
        assert!(!containers.exists() && !volumes.exists(), "nothing made");
        let line = console_line(&Ok(outcome));
        assert!(
            line.starts_with("disk bound: not available: ")
                && line.ends_with("images, writable layers and volumes can fill it"),
            "{line}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_console_line_says_what_is_bounded_and_what_is_left() {
        let report = Report {
            dirs: vec![
                PathBuf::from("/var/lib/carapace/containers"),
                PathBuf::from("/var/lib/carapace/volumes"),
            ],
            filesystem: PathBuf::from("/var"),
            project: PROJECT_ID,
            limits: project_limits(250 * MIB, 16384),
            fs_bytes: 250 * MIB,
            fs_inodes: 16384,
            used_bytes: 3 * MIB + 1,
            used_inodes: 40,
            walk: WalkReport {
                moved: 2,
                failed: 1,
                first_failure: Some(QuotaError::TooDeep {
                    path: PathBuf::from("/var/lib/carapace/volumes/x"),
                }),
            },
        };
        let line = console_line(&Ok(Outcome::Enforced(report)));
        assert_eq!(
            line,
            "disk bound: /var/lib/carapace/containers and /var/lib/carapace/volumes (project 4242) \
             at most 212 MiB and 13927 inodes of /var's 250 MiB and 16384 inodes, 4 MiB and 40 inodes used, enforced; \
             2 entries moved into the project; 1 entries left outside it \
             (first: /var/lib/carapace/volumes/x is more than 128 directories below a bounded directory: not walked)"
        );
        let failed = console_line(&Err(QuotaError::Enforce {
            path: PathBuf::from("/var"),
            source: io::Error::from_raw_os_error(libc::EPERM),
        }));
        assert!(
            failed.starts_with(
                "disk bound: not applied: cannot turn on project quota enforcement on /var: "
            ),
            "{failed}"
        );
    }
}
