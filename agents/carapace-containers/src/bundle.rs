//! The on-disk bundle of one container, `<root>/<name>/` (on the node
//! /var/lib/carapace/containers/run/<name>/):
//!
//! | path | what |
//! |---|---|
//! | `config.json` | the runtime spec ([`crate::spec`]), written whole and renamed into place |
//! | `rootfs/` | an overlayfs: the image layers read-only, `upper/` on top |
//! | `upper/`, `work/` | the container's writable layer and overlayfs' scratch directory |
//! | `overlay` | the mount options `rootfs` was last mounted with |
//! | `volumes/<i>` | staging mount points: volume `i` of the settings, bound here through a descriptor |
//! | `resolv.conf`, `hosts` | bound over the container's /etc files with `host_network`; rewritten in place, so a running container sees a change |
//! | `crun.log` | crun's own error messages of the last run ([`crate::runtime`]) |
//! | `userns` | with `userns`: the container's range of the node's ids ([`crate::userns`]) |
//! | `idmap/<i>`, `idmap/rw` | with `userns`, only while the overlay is mounted: layer `i` and the bundle itself, idmapped |
//!
//! The writable layer outlives a restart of the container, as Docker's does,
//! but not a change of image: when the layers differ from the ones
//! recorded in `overlay`, `upper/` and `work/` start empty. [`Bundle::remove`]
//! unmounts and deletes everything, and refuses to delete while `rootfs` is
//! still a mount point (which would delete through the overlay).
//!
//! **Volumes are bound through descriptors, never paths.** A volume source
//! is a directory under the volumes root that a container may be able to
//! write (its own volume, or a parent of another's): a symbolic link put
//! there between a check and crun's mount would bind any directory of the
//! node into the container. So the agent opens each source one component
//! at a time from the volumes root with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` (creating what is missing),
//! clones the directory that descriptor refers to with `open_tree` and
//! attaches the clone with `move_mount` on `volumes/<i>` in the bundle, a
//! directory no container can reach; then remounts it `nosuid,nodev` (and
//! read-only when asked). crun binds that staging mount point, whose path
//! holds nothing a container controls. The staging mounts are unmounted
//! with the rootfs ([`Bundle::unmount_rootfs`]), and removal refuses to
//! delete while one is still mounted, which would delete the volume's
//! contents through it.
//!
//! **With `userns`** ([`crate::userns`]) the container's range is assigned
//! (recorded in `userns`), a user namespace with its mapping made, and
//! the overlay stacks idmapped mounts instead: each layer bound read-only
//! on `idmap/<i>`, the bundle's own directory (with `upper/` and `work/`,
//! which overlayfs wants on one mount) on `idmap/rw`; the overlay is
//! mounted as the range's root, then those staging mounts are detached
//! (the overlay keeps private copies). The volumes' staging binds are
//! idmapped too. On disk nothing changes owner: the layers stay shared,
//! the writable layer and volumes hold the ids the container sees.
//!
//! The overlay is mounted with mount(2), whose option string must fit in one
//! page: with layer paths of about 100 bytes that is about 40 layers. A
//! longer string is refused by name ([`BundleError::OverlayTooLong`]) rather
//! than truncated by the kernel. (Linux 6.8 and later could take each layer
//! on its own through fsconfig `lowerdir+`, without that limit.)
//!
//! The mount calls go through [`Mounter`], so that what is mounted where, and
//! in which order, is tested on the host with a recording fake.

use crate::image_user::{self, UserError};
use crate::spec::{self, HostFiles, SpecError};
use crate::userns::{self, IdRange, MountAttributes, UsernsError};
use carapace_model::containers::{Container, ContainerName, VolumePath, VOLUMES_DIR};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::Spec;
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, StatxAttributes, StatxFlags};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The longest mount(2) option string: one 4 KiB page less the NUL.
pub const MAX_MOUNT_DATA: usize = 4095;

/// What failed while making, mounting or removing a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the image has no layers to mount")]
    NoLayers,
    #[error("layer directory {path:?} cannot be an overlayfs lowerdir: {why}")]
    BadLayerPath { path: PathBuf, why: &'static str },
    #[error("the overlayfs options for {layers} layers are {len} bytes, more than mount(2) takes ({MAX_MOUNT_DATA}): the image has too many layers")]
    OverlayTooLong { layers: usize, len: usize },
    #[error("{path} is still mounted: not deleting through it")]
    StillMounted { path: PathBuf },
    #[error("volume source {path}: {why}")]
    Volume { path: PathBuf, why: String },
    #[error("container {name}: {source}")]
    User { name: String, source: UserError },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Userns(#[from] UsernsError),
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BundleError {
    let path = path.to_path_buf();
    move |source| BundleError::Io { what, path, source }
}

/// The mount system calls a bundle needs.
pub trait Mounter {
    /// Mounts an overlayfs with `options` on `target`.
    fn mount_overlay(&self, target: &Path, options: &str) -> io::Result<()>;
    /// Unmounts `target` (lazily if it is busy).
    fn unmount(&self, target: &Path) -> io::Result<()>;
    /// Whether `path` is the root of a mount.
    fn is_mount_point(&self, path: &Path) -> io::Result<bool>;
    /// Binds the directory `source` refers to on `target` (an empty
    /// directory), `nosuid` and `nodev`, read-only if `read_only`.
    fn bind_directory(
        &self,
        source: BorrowedFd<'_>,
        target: &Path,
        read_only: bool,
    ) -> io::Result<()>;
    /// A user namespace whose maps are `range` ([`userns::create_user_namespace`]).
    fn user_namespace(&self, range: IdRange) -> io::Result<OwnedFd>;
    /// Binds the directory `source` refers to on `target` (an empty
    /// directory), idmapped with the mapping of user namespace `userns`.
    fn bind_idmapped(
        &self,
        source: BorrowedFd<'_>,
        target: &Path,
        userns: BorrowedFd<'_>,
        attributes: MountAttributes,
    ) -> io::Result<()>;
    /// Mounts an overlayfs with `options` on `target` as the root of
    /// `range` ([`userns::as_range_root`]).
    fn mount_overlay_as(&self, target: &Path, options: &str, range: IdRange) -> io::Result<()>;
}

/// The real thing, through rustix.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelMounter;

impl Mounter for KernelMounter {
    fn mount_overlay(&self, target: &Path, options: &str) -> io::Result<()> {
        let data = std::ffi::CString::new(options)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in mount options"))?;
        rustix::mount::mount(
            "overlay",
            target,
            "overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )?;
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        use rustix::mount::UnmountFlags;
        match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
            Err(rustix::io::Errno::BUSY) => {
                rustix::mount::unmount(target, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH)?;
                Ok(())
            }
            other => Ok(other?),
        }
    }

    fn is_mount_point(&self, path: &Path) -> io::Result<bool> {
        let st = rustix::fs::statx(
            rustix::fs::CWD,
            path,
            AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT,
            StatxFlags::BASIC_STATS,
        )?;
        if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
            return Ok(st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT));
        }
        // Older kernels: a mount root has another device than its parent.
        let parent = path.parent().unwrap_or(Path::new("/"));
        let up = rustix::fs::stat(parent)?;
        Ok(
            u64::from(st.stx_dev_major) != u64::from(rustix::fs::major(up.st_dev))
                || u64::from(st.stx_dev_minor) != u64::from(rustix::fs::minor(up.st_dev)),
        )
    }

    fn bind_directory(
        &self,
        source: BorrowedFd<'_>,
        target: &Path,
        read_only: bool,
    ) -> io::Result<()> {
        use rustix::mount::{MountFlags, MoveMountFlags, OpenTreeFlags};
        // A detached copy of the mount at the directory the descriptor
        // holds: no path is looked up again.
        let tree = rustix::mount::open_tree(
            source,
            "",
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_EMPTY_PATH,
        )?;
        rustix::mount::move_mount(
            &tree,
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )?;
        let mut flags = MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV;
        if read_only {
            flags |= MountFlags::RDONLY;
        }
        rustix::mount::mount_remount(target, flags, "")?;
        Ok(())
    }

    fn user_namespace(&self, range: IdRange) -> io::Result<OwnedFd> {
        userns::create_user_namespace(range).map_err(io::Error::other)
    }

    fn bind_idmapped(
        &self,
        source: BorrowedFd<'_>,
        target: &Path,
        userns: BorrowedFd<'_>,
        attributes: MountAttributes,
    ) -> io::Result<()> {
        use rustix::mount::{MoveMountFlags, OpenTreeFlags};
        let tree = rustix::mount::open_tree(
            source,
            "",
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_EMPTY_PATH,
        )?;
        // Only a mount not yet attached can be idmapped.
        userns::set_idmap(tree.as_fd(), userns, attributes)?;
        rustix::mount::move_mount(
            &tree,
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )?;
        Ok(())
    }

    fn mount_overlay_as(&self, target: &Path, options: &str, range: IdRange) -> io::Result<()> {
        userns::as_range_root(range, || self.mount_overlay(target, options))
            .map_err(io::Error::other)?
    }
}

/// The overlayfs options: `lowerdir=<top>:…:<bottom>,upperdir=…,workdir=…`.
/// `layers` is in image order, lowest (the base) first; overlayfs wants
/// the topmost first.
pub fn overlay_options(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Result<String, BundleError> {
    if layers.is_empty() {
        return Err(BundleError::NoLayers);
    }
    let text = |p: &Path| -> Result<String, BundleError> {
        let bad = |why| BundleError::BadLayerPath {
            path: p.to_path_buf(),
            why,
        };
        let s = p.to_str().ok_or_else(|| bad("not UTF-8"))?;
        if !s.starts_with('/') {
            return Err(bad("not an absolute path"));
        }
        // ',' separates mount options, ':' layers, '\' escapes: none can be given plainly.
        if s.contains([',', ':', '\\', '\0', '\n']) {
            return Err(bad("contains ',', ':', '\\' or a control character"));
        }
        Ok(s.to_string())
    };
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| text(p))
        .collect::<Result<_, _>>()?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        text(upper)?,
        text(work)?
    );
    if options.len() > MAX_MOUNT_DATA {
        return Err(BundleError::OverlayTooLong {
            layers: layers.len(),
            len: options.len(),
        });
    }
    Ok(options)
}

/// `/etc/hosts` of a container on the host network: loopback names and its own.
pub fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
}

/// Opens the directory of a volume under `volumes_dir`, creating it if
/// missing, one component at a time, refusing any component that is a
/// symbolic link or another filesystem: a container that can write to one
/// volume must not make another volume's source point anywhere else on the
/// node. The descriptor is what gets bound ([`Mounter::bind_directory`]):
/// whatever happens to the path afterwards, it is this directory.
pub fn open_volume_source(volumes_dir: &Path, source: &VolumePath) -> Result<OwnedFd, BundleError> {
    let full = volumes_dir.join(source.as_str());
    let fail = |why: String| BundleError::Volume {
        path: full.clone(),
        why,
    };
    std::fs::create_dir_all(volumes_dir).map_err(io_error("create", volumes_dir))?;
    let mut dir = rustix::fs::open(
        volumes_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(format!("cannot open {}: {e}", volumes_dir.display())))?;
    for component in source.as_str().split('/') {
        match rustix::fs::mkdirat(&dir, component, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(fail(format!("cannot create {component:?}: {e}"))),
        }
        let st = rustix::fs::statat(&dir, component, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| fail(format!("cannot inspect {component:?}: {e}")))?;
        match rustix::fs::FileType::from_raw_mode(st.st_mode) {
            rustix::fs::FileType::Directory => {}
            rustix::fs::FileType::Symlink => {
                return Err(fail(format!("{component:?} is a symbolic link: refused")))
            }
            _ => return Err(fail(format!("{component:?} is not a directory"))),
        }
        // Opened refusing links, in case one replaced the directory since.
        dir = rustix::fs::openat2(
            &dir,
            component,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS
                | ResolveFlags::BENEATH
                | ResolveFlags::NO_MAGICLINKS
                | ResolveFlags::NO_XDEV,
        )
        .map_err(|e| fail(format!("cannot open {component:?}: {e}")))?;
    }
    Ok(dir)
}

/// Creates the directory `path` (absolute, as the container sees it) in
/// `rootfs` if it is missing, as Docker does for a `WorkingDir` the image
/// lacks (crun refuses a missing one). Every component is resolved as if
/// `rootfs` were `/`, links included: nothing is created outside it.
pub fn ensure_dir_in_rootfs(rootfs: &Path, path: &str) -> Result<(), BundleError> {
    let fail = |why: String| BundleError::Io {
        what: "create the working directory in",
        path: rootfs.to_path_buf(),
        source: io::Error::other(format!("{path}: {why}")),
    };
    let root = rustix::fs::open(
        rootfs,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(e.to_string()))?;
    let open_in_root = |relative: &str| {
        rustix::fs::openat2(
            &root,
            if relative.is_empty() { "." } else { relative },
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    };
    let mut so_far = String::new();
    for component in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        let parent = open_in_root(&so_far).map_err(|e| fail(e.to_string()))?;
        match rustix::fs::mkdirat(&parent, component, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(fail(format!("cannot create {component:?}: {e}"))),
        }
        if !so_far.is_empty() {
            so_far.push('/');
        }
        so_far.push_str(component);
    }
    open_in_root(&so_far)
        .map(drop)
        .map_err(|e| fail(format!("not a directory: {e}")))
}

/// The image a container runs: its unpacked layer directories, lowest
/// first, and its configuration.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    pub layers: &'a [PathBuf],
    pub config: &'a ImageConfiguration,
}

/// The bundle directory of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    name: ContainerName,
    run_root: PathBuf,
    dir: PathBuf,
    volumes_dir: PathBuf,
}

impl Bundle {
    /// The bundle of `name` under `root` ([`crate::RUN_ROOT`] on the node),
    /// with volumes under [`VOLUMES_DIR`].
    pub fn new(root: &Path, name: &ContainerName) -> Bundle {
        Bundle::with_volumes_dir(root, name, Path::new(VOLUMES_DIR))
    }

    /// The same with volumes under `volumes_dir` (for tests).
    pub fn with_volumes_dir(root: &Path, name: &ContainerName, volumes_dir: &Path) -> Bundle {
        Bundle {
            name: name.clone(),
            run_root: root.to_path_buf(),
            dir: root.join(name.as_str()),
            volumes_dir: volumes_dir.to_path_buf(),
        }
    }

    pub fn name(&self) -> &ContainerName {
        &self.name
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn config_json(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    /// The options `rootfs` was last mounted with.
    pub fn overlay_record(&self) -> PathBuf {
        self.dir.join("overlay")
    }
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
    pub fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }
    pub fn crun_log(&self) -> PathBuf {
        self.dir.join("crun.log")
    }
    /// The directory of the volumes' staging mount points.
    pub fn volume_staging(&self) -> PathBuf {
        self.dir.join("volumes")
    }
    /// With `userns`, the directory of the idmapped layers' staging mount
    /// points while the overlay is mounted.
    pub fn idmap_staging(&self) -> PathBuf {
        self.dir.join("idmap")
    }

    /// The node's files the spec of this bundle points at.
    pub fn host_files(&self) -> HostFiles {
        HostFiles {
            volumes_dir: self.volumes_dir.clone(),
            ..HostFiles::for_bundle(&self.dir)
        }
    }

    /// The overlayfs options for `layers` (lowest first) in this bundle.
    pub fn overlay_options(&self, layers: &[PathBuf]) -> Result<String, BundleError> {
        overlay_options(layers, &self.upper(), &self.work())
    }

    fn create_dir(path: &Path) -> Result<(), BundleError> {
        std::fs::create_dir_all(path).map_err(io_error("create", path))
    }

    /// Mounts the overlay of `layers` on `rootfs` (unmounting an earlier
    /// one first). The writable layer is kept if it was made over the same
    /// layers, and started afresh otherwise.
    pub fn mount_rootfs(
        &self,
        mounter: &dyn Mounter,
        layers: &[PathBuf],
    ) -> Result<(), BundleError> {
        let options = self.ready_for_overlay(mounter, layers)?;
        let rootfs = self.rootfs();
        mounter
            .mount_overlay(&rootfs, &options)
            .map_err(io_error("mount the overlay on", &rootfs))
    }

    /// [`Bundle::mount_rootfs`] for a container in a user namespace of
    /// `range`, whose descriptor is `userns`: the layers and the writable
    /// layer idmapped (see the module documentation).
    pub fn mount_rootfs_mapped(
        &self,
        mounter: &dyn Mounter,
        layers: &[PathBuf],
        range: IdRange,
        userns: BorrowedFd<'_>,
    ) -> Result<(), BundleError> {
        self.ready_for_overlay(mounter, layers)?;
        let rootfs = self.rootfs();
        let mounted = self
            .stage_idmapped_layers(mounter, layers, userns)
            .and_then(|lower| {
                let rw = self.idmap_staging().join("rw");
                let options = overlay_options(&lower, &rw.join("upper"), &rw.join("work"))?;
                mounter
                    .mount_overlay_as(&rootfs, &options, range)
                    .map_err(io_error("mount the overlay on", &rootfs))
            });
        // The overlay holds its own copies: the staging mounts go either way.
        let unstaged = self.unmount_idmap_staging(mounter);
        mounted.and(unstaged)
    }

    /// Binds each layer (read-only) on `idmap/<i>` and the bundle's own
    /// directory on `idmap/rw`, idmapped; returns the layers' points in
    /// the order of `layers`.
    fn stage_idmapped_layers(
        &self,
        mounter: &dyn Mounter,
        layers: &[PathBuf],
        userns: BorrowedFd<'_>,
    ) -> Result<Vec<PathBuf>, BundleError> {
        let staging = self.idmap_staging();
        Self::create_dir(&staging)?;
        let bind = |source: &Path, point: &Path, read_only: bool| -> Result<(), BundleError> {
            let dir = rustix::fs::open(
                source,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
            )
            .map_err(|e| io_error("open", source)(e.into()))?;
            Self::create_dir(point)?;
            let attributes = MountAttributes {
                read_only,
                nosuid_nodev: false,
            };
            mounter
                .bind_idmapped(dir.as_fd(), point, userns, attributes)
                .map_err(|e| BundleError::Io {
                    what: "bind idmapped on",
                    path: point.to_path_buf(),
                    source: io::Error::new(e.kind(), format!("{} ({e})", source.display())),
                })
        };
        let mut points = Vec::with_capacity(layers.len());
        for (index, layer) in layers.iter().enumerate() {
            let point = staging.join(index.to_string());
            bind(layer, &point, true)?;
            points.push(point);
        }
        bind(&self.dir, &staging.join("rw"), false)?;
        Ok(points)
    }

    /// Unmounts what is staged in `idmap/` and removes the directory.
    fn unmount_idmap_staging(&self, mounter: &dyn Mounter) -> Result<(), BundleError> {
        let staging = self.idmap_staging();
        self.unmount_points_in(mounter, &staging)?;
        match std::fs::remove_dir(&staging) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("remove", &staging)(e)),
        }
    }

    /// Everything before the overlay's mount: the directories, an earlier
    /// mount gone, the writable layer kept or started afresh, and the
    /// record; returns the overlay's options.
    fn ready_for_overlay(
        &self,
        mounter: &dyn Mounter,
        layers: &[PathBuf],
    ) -> Result<String, BundleError> {
        let options = self.overlay_options(layers)?;
        Self::create_dir(&self.dir)?;
        let rootfs = self.rootfs();
        Self::create_dir(&rootfs)?;
        self.unmount_rootfs(mounter)?;
        let record = self.overlay_record();
        let previous = std::fs::read_to_string(&record).ok();
        if previous.as_deref() != Some(options.as_str()) {
            for dir in [self.upper(), self.work()] {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error("remove", &dir)(e)),
                }
            }
        }
        Self::create_dir(&self.upper())?;
        Self::create_dir(&self.work())?;
        write_atomically(&record, options.as_bytes())?;
        Ok(options)
    }

    /// Binds the source of every volume of `container` on its staging mount
    /// point (`volumes/<i>`), through a descriptor (see the module
    /// documentation). Earlier staging mounts must be gone
    /// ([`Bundle::unmount_volumes`]).
    pub fn stage_volumes(
        &self,
        mounter: &dyn Mounter,
        container: &Container,
    ) -> Result<(), BundleError> {
        self.stage_volumes_mapped(mounter, container, None)
    }

    /// [`Bundle::stage_volumes`], the binds idmapped with the mapping of
    /// user namespace `userns` when one is given.
    pub fn stage_volumes_mapped(
        &self,
        mounter: &dyn Mounter,
        container: &Container,
        userns: Option<BorrowedFd<'_>>,
    ) -> Result<(), BundleError> {
        let staging = self.volume_staging();
        Self::create_dir(&staging)?;
        let files = self.host_files();
        for (index, m) in container.mounts.iter().enumerate() {
            let source = open_volume_source(&self.volumes_dir, &m.source)?;
            let point = files.volume_mount_point(index);
            match std::fs::create_dir(&point) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error("create", &point)(e)),
            }
            let bound = match userns {
                None => mounter.bind_directory(source.as_fd(), &point, m.read_only),
                Some(userns) => mounter.bind_idmapped(
                    source.as_fd(),
                    &point,
                    userns,
                    MountAttributes {
                        read_only: m.read_only,
                        nosuid_nodev: true,
                    },
                ),
            };
            bound.map_err(|e| BundleError::Volume {
                path: files.volume_source(&m.source),
                why: format!("cannot bind it on {}: {e}", point.display()),
            })?;
        }
        Ok(())
    }

    /// Unmounts every staging mount point in `volumes/` and removes the
    /// (then empty) directories; refuses when one stays mounted.
    pub fn unmount_volumes(&self, mounter: &dyn Mounter) -> Result<(), BundleError> {
        self.unmount_points_in(mounter, &self.volume_staging())
    }

    /// Unmounts every mount point in `staging` and removes the (then
    /// empty) directories; refuses when one stays mounted.
    fn unmount_points_in(&self, mounter: &dyn Mounter, staging: &Path) -> Result<(), BundleError> {
        let entries = match std::fs::read_dir(staging) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("list", staging)(e)),
        };
        for entry in entries {
            let point = entry.map_err(io_error("list", staging))?.path();
            let mounted = |p: &Path| mounter.is_mount_point(p).map_err(io_error("inspect", p));
            if mounted(&point)? {
                mounter
                    .unmount(&point)
                    .map_err(io_error("unmount", &point))?;
            }
            if mounted(&point)? {
                return Err(BundleError::StillMounted { path: point });
            }
            // Only an empty directory goes: never anything through a mount.
            match std::fs::remove_dir(&point) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("remove", &point)(e)),
            }
        }
        Ok(())
    }

    /// Unmounts the volumes' staging mounts and `rootfs` if it is mounted.
    pub fn unmount_rootfs(&self, mounter: &dyn Mounter) -> Result<(), BundleError> {
        self.unmount_volumes(mounter)?;
        // Left only by an agent that died while mounting.
        self.unmount_idmap_staging(mounter)?;
        let rootfs = self.rootfs();
        match mounter.is_mount_point(&rootfs) {
            Ok(true) => mounter
                .unmount(&rootfs)
                .map_err(io_error("unmount", &rootfs)),
            Ok(false) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("inspect", &rootfs)(e)),
        }
    }

    /// Writes `resolv.conf` (the node's, as given) and `hosts` in place, so
    /// that the files a running container has bound change with them.
    pub fn write_host_files(&self, resolv_conf: &str) -> Result<(), BundleError> {
        Self::create_dir(&self.dir)?;
        let resolv = self.resolv_conf();
        std::fs::write(&resolv, resolv_conf).map_err(io_error("write", &resolv))?;
        let hosts = self.hosts();
        std::fs::write(&hosts, hosts_file(self.name.as_str())).map_err(io_error("write", &hosts))
    }

    /// Writes `config.json` whole.
    pub fn write_config(&self, spec: &Spec) -> Result<(), BundleError> {
        Self::create_dir(&self.dir)?;
        write_atomically(&self.config_json(), spec::to_config_json(spec).as_bytes())
    }

    /// Everything a run needs: the rootfs mounted, the user resolved in it,
    /// the volume sources created and bound on their staging mount points,
    /// `resolv.conf` and `hosts`, the working directory present, and
    /// `config.json`. Returns the spec written.
    pub fn prepare(
        &self,
        mounter: &dyn Mounter,
        container: &Container,
        image: Image<'_>,
        resolv_conf: &str,
    ) -> Result<Spec, BundleError> {
        let mapping = if container.user_namespace() {
            let range = userns::assign(&self.run_root, &self.name)?;
            let ns = mounter
                .user_namespace(range)
                .map_err(|source| UsernsError::Kernel {
                    what: "make the container's user namespace",
                    source,
                })?;
            Some((range, ns))
        } else {
            None
        };
        match &mapping {
            None => self.mount_rootfs(mounter, image.layers)?,
            Some((range, ns)) => {
                self.mount_rootfs_mapped(mounter, image.layers, *range, ns.as_fd())?
            }
        }
        let user_field = image
            .config
            .config()
            .as_ref()
            .and_then(|c| c.user().clone());
        let user = image_user::resolve_in_rootfs(user_field.as_deref(), &self.rootfs()).map_err(
            |source| BundleError::User {
                name: self.name.to_string(),
                source,
            },
        )?;
        self.stage_volumes_mapped(
            mounter,
            container,
            mapping.as_ref().map(|(_, ns)| ns.as_fd()),
        )?;
        self.write_host_files(resolv_conf)?;
        let spec = spec::generate_with_ids(
            &self.name,
            container,
            image.config,
            &user,
            &self.host_files(),
            mapping.as_ref().map(|(range, _)| *range),
        )?;
        if let Some(process) = spec.process() {
            let cwd = process.cwd().to_string_lossy();
            match &mapping {
                None => ensure_dir_in_rootfs(&self.rootfs(), &cwd)?,
                // The node's root cannot create in the idmapped writable
                // layer: the container's root can.
                Some((range, _)) => {
                    userns::as_range_root(*range, || ensure_dir_in_rootfs(&self.rootfs(), &cwd))??
                }
            }
        }
        self.write_config(&spec)?;
        Ok(spec)
    }

    /// Unmounts `rootfs` and deletes the bundle, the writable layer with it.
    pub fn remove(&self, mounter: &dyn Mounter) -> Result<(), BundleError> {
        if !self.dir.exists() {
            return Ok(());
        }
        self.unmount_rootfs(mounter)?;
        let rootfs = self.rootfs();
        if matches!(mounter.is_mount_point(&rootfs), Ok(true)) {
            return Err(BundleError::StillMounted { path: rootfs });
        }
        // unmount_rootfs removed every staging point it could unmount.
        if let Some(left) = std::fs::read_dir(self.volume_staging())
            .ok()
            .and_then(|mut entries| entries.next())
        {
            let path = left
                .map(|e| e.path())
                .unwrap_or_else(|_| self.volume_staging());
            return Err(BundleError::StillMounted { path });
        }
        // unmount_rootfs removed it unless something stayed mounted there.
        if self.idmap_staging().exists() {
            return Err(BundleError::StillMounted {
                path: self.idmap_staging(),
            });
        }
        std::fs::remove_dir_all(&self.dir).map_err(io_error("remove", &self.dir))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(io_error("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error("rename into place", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    /// Records calls; "mounts" by remembering the target.
    #[derive(Default)]
    struct FakeMounter {
        calls: RefCell<Vec<String>>,
        mounted: RefCell<BTreeSet<PathBuf>>,
        /// unmount leaves the target mounted (a stuck mount).
        stuck: bool,
    }

    impl Mounter for FakeMounter {
        fn mount_overlay(&self, target: &Path, options: &str) -> io::Result<()> {
            self.calls
                .borrow_mut()
                .push(format!("mount {} {options}", target.display()));
            self.mounted.borrow_mut().insert(target.to_path_buf());
            Ok(())
        }
        fn unmount(&self, target: &Path) -> io::Result<()> {
            self.calls
                .borrow_mut()
                .push(format!("unmount {}", target.display()));
            if !self.stuck {
                self.mounted.borrow_mut().remove(target);
            }
            Ok(())
        }
        fn is_mount_point(&self, path: &Path) -> io::Result<bool> {
            Ok(self.mounted.borrow().contains(path))
        }
        fn bind_directory(
            &self,
            source: BorrowedFd<'_>,
            target: &Path,
            read_only: bool,
        ) -> io::Result<()> {
            // Which directory the descriptor holds, by inode.
            let st = rustix::fs::fstat(source)?;
            self.calls.borrow_mut().push(format!(
                "bind inode {} on {}{}",
                st.st_ino,
                target.display(),
                if read_only { " ro" } else { "" }
            ));
            self.mounted.borrow_mut().insert(target.to_path_buf());
            Ok(())
        }
        fn user_namespace(&self, range: IdRange) -> io::Result<OwnedFd> {
            self.calls
                .borrow_mut()
                .push(format!("userns {}", range.map_line().trim()));
            Ok(rustix::fs::open(
                "/dev/null",
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?)
        }
        fn bind_idmapped(
            &self,
            source: BorrowedFd<'_>,
            target: &Path,
            _userns: BorrowedFd<'_>,
            attributes: MountAttributes,
        ) -> io::Result<()> {
            let st = rustix::fs::fstat(source)?;
            self.calls.borrow_mut().push(format!(
                "idmap inode {} on {}{}{}",
                st.st_ino,
                target.display(),
                if attributes.read_only { " ro" } else { "" },
                if attributes.nosuid_nodev {
                    " nosuid,nodev"
                } else {
                    ""
                }
            ));
            self.mounted.borrow_mut().insert(target.to_path_buf());
            Ok(())
        }
        fn mount_overlay_as(&self, target: &Path, options: &str, range: IdRange) -> io::Result<()> {
            self.calls.borrow_mut().push(format!(
                "mount as {} {} {options}",
                range.first(),
                target.display()
            ));
            self.mounted.borrow_mut().insert(target.to_path_buf());
            Ok(())
        }
    }

    fn inode(path: &Path) -> u64 {
        std::fs::metadata(path)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .expect("stat")
    }

    fn name(s: &str) -> ContainerName {
        ContainerName::try_from(s.to_string()).expect("name")
    }

    fn temp(label: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("carapace-bundle-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    fn layers(n: usize) -> Vec<PathBuf> {
        (0..n)
            .map(|i| PathBuf::from(format!("/var/lib/carapace/images/layers/{i:064}")))
            .collect()
    }

    #[test]
    fn bundle_paths_are_under_the_root_by_container_name() {
        let b = Bundle::new(Path::new(crate::RUN_ROOT), &name("web"));
        let dir = "/var/lib/carapace/containers/run/web";
        assert_eq!(b.dir(), Path::new(dir));
        assert_eq!(b.config_json(), Path::new(dir).join("config.json"));
        assert_eq!(b.rootfs(), Path::new(dir).join("rootfs"));
        assert_eq!(b.upper(), Path::new(dir).join("upper"));
        assert_eq!(b.work(), Path::new(dir).join("work"));
        assert_eq!(b.crun_log(), Path::new(dir).join("crun.log"));
        assert_eq!(
            b.host_files().volumes_dir,
            Path::new("/var/lib/carapace/volumes")
        );
        assert_eq!(b.host_files().hosts, Path::new(dir).join("hosts"));
    }

    #[test]
    fn lowerdir_lists_the_topmost_layer_first() {
        let layers = vec![
            PathBuf::from("/l/base"),
            PathBuf::from("/l/middle"),
            PathBuf::from("/l/top"),
        ];
        assert_eq!(
            overlay_options(&layers, Path::new("/b/upper"), Path::new("/b/work")).expect("options"),
            "lowerdir=/l/top:/l/middle:/l/base,upperdir=/b/upper,workdir=/b/work"
        );
    }

    #[test]
    fn an_option_string_longer_than_a_page_is_refused_by_name() {
        let b = Bundle::new(Path::new(crate::RUN_ROOT), &name("web"));
        // 97 bytes a layer: 41 fit (4087 bytes in all), 42 do not.
        assert_eq!(b.overlay_options(&layers(41)).expect("fits").len(), 4087);
        let err = b.overlay_options(&layers(42)).expect_err("too long");
        assert!(
            matches!(
                err,
                BundleError::OverlayTooLong {
                    layers: 42,
                    len: 4184
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("too many layers"), "{err}");
    }

    #[test]
    fn layer_paths_that_overlayfs_would_misread_are_refused() {
        for bad in ["/l/a:b", "/l/a,b", "relative", "/l/a\\b"] {
            let err = overlay_options(&[PathBuf::from(bad)], Path::new("/u"), Path::new("/w"))
                .expect_err(bad);
            assert!(
                matches!(err, BundleError::BadLayerPath { .. }),
                "{bad}: {err}"
            );
        }
        assert!(matches!(
            overlay_options(&[], Path::new("/u"), Path::new("/w")),
            Err(BundleError::NoLayers)
        ));
    }

    #[test]
    fn mounting_keeps_the_writable_layer_for_the_same_image_only() {
        let root = temp("keep");
        let b = Bundle::new(&root, &name("web"));
        let m = FakeMounter::default();
        b.mount_rootfs(&m, &[PathBuf::from("/l/a")])
            .expect("first mount");
        std::fs::write(b.upper().join("written"), "x").expect("write in upper");
        // A restart: same layers, the file stays; the old mount goes first.
        b.mount_rootfs(&m, &[PathBuf::from("/l/a")])
            .expect("second mount");
        assert!(b.upper().join("written").exists());
        let rootfs = b.rootfs().display().to_string();
        let options = format!(
            "lowerdir=/l/a,upperdir={},workdir={}",
            b.upper().display(),
            b.work().display()
        );
        assert_eq!(
            *m.calls.borrow(),
            [
                format!("mount {rootfs} {options}"),
                format!("unmount {rootfs}"),
                format!("mount {rootfs} {options}"),
            ]
        );
        // Another image: the writable layer starts empty.
        b.mount_rootfs(&m, &[PathBuf::from("/l/b")])
            .expect("new image");
        assert!(!b.upper().join("written").exists());
        assert!(b.work().is_dir());
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn removal_unmounts_first_and_refuses_to_delete_through_a_mount() {
        let root = temp("remove");
        let b = Bundle::new(&root, &name("web"));
        let stuck = FakeMounter {
            stuck: true,
            ..FakeMounter::default()
        };
        b.mount_rootfs(&stuck, &[PathBuf::from("/l/a")])
            .expect("mount");
        let err = b.remove(&stuck).expect_err("still mounted");
        assert!(matches!(err, BundleError::StillMounted { .. }), "{err}");
        assert!(b.dir().exists(), "nothing deleted");

        let m = FakeMounter::default();
        b.mount_rootfs(&m, &[PathBuf::from("/l/a")]).expect("mount");
        b.remove(&m).expect("remove");
        assert!(!b.dir().exists());
        assert_eq!(
            m.calls.borrow().last().map(String::as_str),
            Some(format!("unmount {}", b.rootfs().display()).as_str())
        );
        b.remove(&m).expect("removing nothing is fine");
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn volume_sources_are_created_and_links_out_are_refused() {
        let root = temp("volumes");
        let volumes = root.join("volumes");
        let source = VolumePath::try_from("web/html".to_string()).expect("path");
        let fd = open_volume_source(&volumes, &source).expect("created");
        assert!(volumes.join("web/html").is_dir());
        assert_eq!(
            rustix::fs::fstat(&fd).expect("fstat").st_ino,
            inode(&volumes.join("web/html")),
            "the descriptor is the volume's directory"
        );
        open_volume_source(&volumes, &source).expect("existing is fine");

        std::os::unix::fs::symlink("/etc", volumes.join("web/evil")).expect("link");
        let evil = VolumePath::try_from("web/evil/sub".to_string()).expect("path");
        let err = open_volume_source(&volumes, &evil).expect_err("link refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!Path::new("/etc/sub").exists());
        // A link as the last component is refused too.
        let last = VolumePath::try_from("web/evil".to_string()).expect("path");
        let err = open_volume_source(&volumes, &last).expect_err("link refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn volumes_are_staged_by_descriptor_and_unstaged_with_the_rootfs() {
        let root = temp("stage");
        let b = Bundle::with_volumes_dir(&root.join("run"), &name("web"), &root.join("volumes"));
        let container: Container = serde_json::from_value(json!({
            "image": "app:1",
            "mounts": [
                { "source": "web/data", "target": "/data" },
                { "source": "shared", "target": "/shared", "read_only": true },
            ],
        }))
        .expect("settings");
        let m = FakeMounter::default();
        b.mount_rootfs(&m, &[PathBuf::from("/l/a")]).expect("mount");
        b.stage_volumes(&m, &container).expect("staged");
        let staging = b.volume_staging();
        let calls = m.calls.borrow().clone();
        assert_eq!(
            calls[1..],
            [
                format!(
                    "bind inode {} on {}",
                    inode(&root.join("volumes/web/data")),
                    staging.join("0").display()
                ),
                format!(
                    "bind inode {} on {} ro",
                    inode(&root.join("volumes/shared")),
                    staging.join("1").display()
                ),
            ]
        );
        // Removal unmounts the staging points before deleting anything.
        b.remove(&m).expect("remove");
        let calls = m.calls.borrow().clone();
        assert!(calls.contains(&format!("unmount {}", staging.join("0").display())));
        assert!(calls.contains(&format!("unmount {}", staging.join("1").display())));
        assert!(!b.dir().exists());
        assert!(root.join("volumes/web/data").is_dir(), "the volume stays");
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn removal_refuses_while_a_volume_stays_mounted() {
        let root = temp("stuckvol");
        let b = Bundle::with_volumes_dir(&root.join("run"), &name("web"), &root.join("volumes"));
        let container: Container = serde_json::from_value(json!({
            "image": "app:1", "mounts": [{ "source": "data", "target": "/data" }],
        }))
        .expect("settings");
        let stuck = FakeMounter {
            stuck: true,
            ..FakeMounter::default()
        };
        b.stage_volumes(&stuck, &container).expect("staged");
        std::fs::write(root.join("volumes/data/precious"), "x").expect("file");
        let err = b.remove(&stuck).expect_err("still mounted");
        assert!(matches!(err, BundleError::StillMounted { .. }), "{err}");
        assert!(b.volume_staging().join("0").exists(), "nothing deleted");
        assert!(root.join("volumes/data/precious").exists());
        std::fs::remove_dir_all(&root).ok();
    }

    /// The real bind (the tests run as root): a source swapped for a link
    /// after it was opened still binds the directory that was opened, and
    /// the staging mount is nosuid, nodev and read-only when asked.
    #[test]
    fn a_volume_swapped_for_a_link_after_opening_binds_what_was_opened() {
        let root = temp("swap");
        let volumes = root.join("volumes");
        let secret = root.join("secret");
        std::fs::create_dir_all(volumes.join("web/data")).expect("volume");
        std::fs::create_dir_all(&secret).expect("secret");
        std::fs::write(volumes.join("web/data/inside"), "volume").expect("file");
        std::fs::write(secret.join("node-file"), "node").expect("file");
        let source = VolumePath::try_from("web/data".to_string()).expect("path");
        let fd = open_volume_source(&volumes, &source).expect("opened");
        // The container that owns web/ swaps data for a link to the node.
        std::fs::rename(volumes.join("web/data"), volumes.join("web/moved")).expect("rename");
        std::os::unix::fs::symlink(&secret, volumes.join("web/data")).expect("link");

        let b = Bundle::with_volumes_dir(&root.join("run"), &name("web"), &volumes);
        /// Unmounts even when an assertion fails.
        struct Cleanup(Bundle);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = self.0.unmount_volumes(&KernelMounter);
            }
        }
        let _cleanup = Cleanup(b.clone());
        let point = b.volume_staging().join("0");
        std::fs::create_dir_all(&point).expect("point");
        let m = KernelMounter;
        m.bind_directory(fd.as_fd(), &point, true).expect("bind");
        assert!(m.is_mount_point(&point).expect("statx"));
        assert!(point.join("inside").exists(), "the opened directory");
        assert!(!point.join("node-file").exists(), "not the link's target");
        let flags = rustix::fs::statvfs(&point).expect("statvfs").f_flag;
        use rustix::fs::StatVfsMountFlags as F;
        assert!(
            flags.contains(F::NOSUID | F::NODEV | F::RDONLY),
            "{flags:?}"
        );
        assert!(std::fs::write(point.join("new"), "x").is_err(), "read-only");

        b.unmount_volumes(&m).expect("unmounted");
        assert!(!point.exists(), "the staging point is gone");
        assert!(
            volumes.join("web/moved/inside").exists(),
            "the volume is intact"
        );
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn a_real_staged_volume_takes_writes_and_is_removed_with_the_bundle() {
        let root = temp("realvol");
        let b = Bundle::with_volumes_dir(&root.join("run"), &name("web"), &root.join("volumes"));
        let container: Container = serde_json::from_value(json!({
            "image": "app:1", "mounts": [{ "source": "web/data", "target": "/data" }],
        }))
        .expect("settings");
        struct Cleanup(Bundle);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = self.0.unmount_volumes(&KernelMounter);
            }
        }
        let _cleanup = Cleanup(b.clone());
        b.stage_volumes(&KernelMounter, &container).expect("staged");
        let point = b.volume_staging().join("0");
        std::fs::write(point.join("written"), "x").expect("write through");
        assert!(root.join("volumes/web/data/written").exists());
        let flags = rustix::fs::statvfs(&point).expect("statvfs").f_flag;
        use rustix::fs::StatVfsMountFlags as F;
        assert!(flags.contains(F::NOSUID | F::NODEV) && !flags.contains(F::RDONLY));
        b.remove(&KernelMounter).expect("removed");
        assert!(!b.dir().exists());
        assert!(
            root.join("volumes/web/data/written").exists(),
            "removing the bundle leaves the volume's contents"
        );
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn prepare_writes_config_hosts_and_resolv_conf_from_the_mounted_image() {
        let root = temp("prepare");
        let b = Bundle::with_volumes_dir(&root.join("run"), &name("web"), &root.join("volumes"));
        // The fake mounter mounts nothing: put the image's passwd where the
        // overlay would show it.
        std::fs::create_dir_all(b.rootfs().join("etc")).expect("etc");
        std::fs::write(
            b.rootfs().join("etc/passwd"),
            "app:x:1000:1000::/home/app:/bin/sh\n",
        )
        .expect("passwd");
        let config: ImageConfiguration = serde_json::from_value(json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [] },
            "config": { "User": "app", "Cmd": ["/app"], "WorkingDir": "/work/dir" },
        }))
        .expect("image config");
        let container: Container = serde_json::from_value(json!({
            "image": "app:1", "host_network": true,
            "mounts": [{ "source": "web/data", "target": "/data" }],
        }))
        .expect("settings");
        let m = FakeMounter::default();
        let layers = [PathBuf::from("/l/a")];
        let image = Image {
            layers: &layers,
            config: &config,
        };
        let spec = b
            .prepare(&m, &container, image, "nameserver 10.0.2.3\n")
            .expect("prepare");
        assert_eq!(spec.process().as_ref().map(|p| p.user().uid()), Some(1000));
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(b.config_json()).expect("config.json"))
                .expect("json");
        assert_eq!(written["process"]["args"], json!(["/app"]));
        assert_eq!(written["process"]["user"]["uid"], 1000);
        assert!(root.join("volumes/web/data").is_dir());
        assert!(
            m.calls
                .borrow()
                .iter()
                .any(|c| c.ends_with(&format!("on {}", b.volume_staging().join("0").display()))),
            "the volume is bound on its staging point"
        );
        assert_eq!(
            written["mounts"]
                .as_array()
                .expect("mounts")
                .iter()
                .find(|m| m["destination"] == "/data")
                .map(|m| m["source"].clone()),
            Some(json!(b.volume_staging().join("0")))
        );
        assert!(b.rootfs().join("work/dir").is_dir(), "working dir made");
        assert_eq!(
            std::fs::read_to_string(b.resolv_conf()).expect("resolv.conf"),
            "nameserver 10.0.2.3\n"
        );
        assert!(std::fs::read_to_string(b.hosts())
            .expect("hosts")
            .contains("127.0.1.1\tweb\n"));
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn a_missing_working_dir_is_made_inside_the_rootfs_even_through_links() {
        let root = temp("workdir");
        let rootfs = root.join("rootfs");
        std::fs::create_dir_all(rootfs.join("usr")).expect("usr");
        // An absolute link must lead inside the rootfs, not to the host's /srv.
        std::os::unix::fs::symlink("/usr", rootfs.join("srv")).expect("link");
        ensure_dir_in_rootfs(&rootfs, "/srv/app/../app/data").expect("made");
        assert!(rootfs.join("usr/app/data").is_dir());
        ensure_dir_in_rootfs(&rootfs, "/").expect("the root exists");
        std::fs::write(rootfs.join("file"), "").expect("file");
        let err = ensure_dir_in_rootfs(&rootfs, "/file").expect_err("a file");
        assert!(err.to_string().contains("/file: not a directory"), "{err}");
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn an_unknown_image_user_fails_prepare_naming_the_container() {
        let root = temp("nouser");
        let b = Bundle::with_volumes_dir(&root.join("run"), &name("db"), &root.join("volumes"));
        let config: ImageConfiguration = serde_json::from_value(json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [] },
            "config": { "User": "postgres", "Cmd": ["postgres"] },
        }))
        .expect("image config");
        let container: Container =
            serde_json::from_value(json!({ "image": "postgres:17", "userns": false }))
                .expect("settings");
        let layers = [PathBuf::from("/l/a")];
        let err = b
            .prepare(
                &FakeMounter::default(),
                &container,
                Image {
                    layers: &layers,
                    config: &config,
                },
                "",
            )
            .expect_err("unknown user");
        assert_eq!(
            err.to_string(),
            "container db: user \"postgres\" of the image is not in the image's /etc/passwd"
        );
        assert!(!b.config_json().exists());
        std::fs::remove_dir_all(&root).ok();
    }

    /// The real overlayfs (the tests run as root, here and in CI).
    #[test]
    fn a_real_overlay_shows_the_top_layer_and_takes_writes_in_upper() {
        let root = temp("real");
        let low = root.join("low");
        let high = root.join("high");
        std::fs::create_dir_all(&low).expect("low");
        std::fs::create_dir_all(&high).expect("high");
        std::fs::write(low.join("a"), "low").expect("a");
        std::fs::write(low.join("b"), "low").expect("b");
        std::fs::write(high.join("a"), "high").expect("a");
        let b = Bundle::new(&root.join("run"), &name("web"));
        /// Unmounts even when an assertion fails.
        struct Cleanup(Bundle);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = self.0.remove(&KernelMounter);
            }
        }
        let _cleanup = Cleanup(b.clone());
        let m = KernelMounter;
        b.mount_rootfs(&m, &[low.clone(), high.clone()])
            .expect("mount");
        assert!(m.is_mount_point(&b.rootfs()).expect("statx"));
        assert_eq!(
            std::fs::read_to_string(b.rootfs().join("a")).expect("a"),
            "high"
        );
        assert_eq!(
            std::fs::read_to_string(b.rootfs().join("b")).expect("b"),
            "low"
        );
        std::fs::write(b.rootfs().join("c"), "new").expect("write");
        assert!(b.upper().join("c").exists());
        assert!(!low.join("c").exists() && !high.join("c").exists());
        b.remove(&m).expect("remove");
        assert!(!b.dir().exists());
        assert!(low.join("a").exists(), "layers untouched");
        std::fs::remove_dir_all(&root).ok();
    }

    fn app_config() -> ImageConfiguration {
        serde_json::from_value(json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [] },
            "config": { "Cmd": ["/app"], "WorkingDir": "/work/dir" },
        }))
        .expect("image config")
    }

    #[test]
    fn a_userns_container_stacks_idmapped_layers_and_gives_its_range_back_on_removal() {
        let root = temp("mapped");
        let layers = [root.join("layers/base"), root.join("layers/top")];
        for l in &layers {
            std::fs::create_dir_all(l).expect("layer");
        }
        let run = root.join("run");
        // Another container already holds the first range.
        let other = Bundle::with_volumes_dir(&run, &name("db"), &root.join("volumes"));
        std::fs::create_dir_all(other.dir()).expect("db");
        std::fs::write(other.dir().join("userns"), "0 100000 65536\n").expect("record");
        let b = Bundle::with_volumes_dir(&run, &name("web"), &root.join("volumes"));
        let container: Container = serde_json::from_value(json!({
            "image": "app:1", "userns": true,
            "mounts": [{ "source": "web/data", "target": "/data", "read_only": true }],
        }))
        .expect("settings");
        let m = FakeMounter::default();
        let config = app_config();
        let spec = b
            .prepare(
                &m,
                &container,
                Image {
                    layers: &layers,
                    config: &config,
                },
                "",
            )
            .expect("prepare");
        let first = 165_536;
        assert_eq!(
            std::fs::read_to_string(b.dir().join("userns")).expect("record"),
            format!("0 {first} 65536\n")
        );
        let idmap = b.idmap_staging();
        let calls = m.calls.borrow().clone();
        assert_eq!(
            calls[..5],
            [
                format!("userns 0 {first} 65536"),
                format!(
                    "idmap inode {} on {} ro",
                    inode(&layers[0]),
                    idmap.join("0").display()
                ),
                format!(
                    "idmap inode {} on {} ro",
                    inode(&layers[1]),
                    idmap.join("1").display()
                ),
                format!(
                    "idmap inode {} on {}",
                    inode(b.dir()),
                    idmap.join("rw").display()
                ),
                format!(
                    "mount as {first} {} lowerdir={}:{},upperdir={},workdir={}",
                    b.rootfs().display(),
                    idmap.join("1").display(),
                    idmap.join("0").display(),
                    idmap.join("rw/upper").display(),
                    idmap.join("rw/work").display()
                ),
            ]
        );
        // The staging mounts are gone once the overlay is up.
        for point in ["0", "1", "rw"] {
            assert!(calls.contains(&format!("unmount {}", idmap.join(point).display())));
        }
        assert!(!idmap.exists());
        // The record keeps what the layers were, as without userns.
        assert_eq!(
            std::fs::read_to_string(b.overlay_record()).expect("record"),
            b.overlay_options(&layers).expect("options")
        );
        assert!(calls.contains(&format!(
            "idmap inode {} on {} ro nosuid,nodev",
            inode(&root.join("volumes/web/data")),
            b.volume_staging().join("0").display()
        )));
        let mappings = spec.linux().as_ref().and_then(|l| l.uid_mappings().clone());
        assert_eq!(
            mappings.map(|m| (m[0].host_id(), m[0].container_id(), m[0].size())),
            Some((first, 0, 65536))
        );
        assert!(b.rootfs().join("work/dir").is_dir(), "working dir made");
        // Removal frees the range: the next container gets it.
        b.remove(&m).expect("remove");
        let next = crate::userns::assign(&run, &name("cache")).expect("cache");
        assert_eq!(next.first(), first);
        std::fs::remove_dir_all(&root).ok();
    }

    /// The real thing (the tests run as root): an overlay of idmapped
    /// layers shows the image's root files as the range's root, takes
    /// writes of the range's root into `upper/` as owned by 0, and leaves
    /// the layers untouched and nothing staged.
    #[test]
    fn a_real_idmapped_overlay_shows_root_as_the_range_and_stores_writes_unshifted() {
        use std::os::unix::fs::MetadataExt;
        let root = temp("realmapped");
        let low = root.join("low");
        std::fs::create_dir_all(low.join("etc")).expect("low");
        std::fs::write(low.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").expect("passwd");
        std::os::unix::fs::chown(low.join("etc/passwd"), Some(0), Some(0)).expect("chown");
        let b = Bundle::new(&root.join("run"), &name("web"));
        struct Cleanup(Bundle);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = self.0.remove(&KernelMounter);
            }
        }
        let _cleanup = Cleanup(b.clone());
        let m = KernelMounter;
        let range = IdRange::slot(4).expect("slot");
        let ns = m.user_namespace(range).expect("user namespace");
        b.mount_rootfs_mapped(&m, std::slice::from_ref(&low), range, ns.as_fd())
            .expect("mount");
        assert!(m.is_mount_point(&b.rootfs()).expect("statx"));
        assert!(!b.idmap_staging().exists(), "nothing left staged");
        let owner = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| (m.uid(), m.gid()))
                .expect("stat")
        };
        let first = range.first();
        assert_eq!(owner(&b.rootfs().join("etc/passwd")), (first, first));
        // What the container's root writes, new or copied up, is 0 on disk.
        userns::as_range_root(range, || {
            std::fs::write(b.rootfs().join("new"), "x").expect("create");
            std::fs::OpenOptions::new()
                .append(true)
                .open(b.rootfs().join("etc/passwd"))
                .expect("copy up");
        })
        .expect("switched");
        assert_eq!(owner(&b.upper().join("new")), (0, 0));
        assert_eq!(owner(&b.upper().join("etc/passwd")), (0, 0));
        assert_eq!(owner(&b.rootfs().join("new")), (first, first));
        assert_eq!(owner(&low.join("etc/passwd")), (0, 0), "layer untouched");
        assert!(!low.join("new").exists());
        b.remove(&m).expect("remove");
        assert!(!b.dir().exists());
        std::fs::remove_dir_all(&root).ok();
    }
}
