//! carapace-containers: the container agent's library. From a container's
//! settings (`carapace_model::containers::Container`) and its image (the
//! unpacked layer directories and the OCI image configuration, which the
//! image store hands over) it makes an OCI runtime bundle, runs it with crun,
//! keeps its output as a log, decides about restarts and reports status.
//!
//! - [`spec`] — the OCI runtime spec (`config.json`) of one container, pure:
//!   Docker's entrypoint/command semantics, environment overlay, namespaces,
//!   mounts, Docker's default capabilities, runc's masked paths, cgroup v2
//!   limits in `/carapace.slice/<name>/container`.
//! - [`seccomp`] — the default system call filter (Docker's in effect),
//!   as data, decided from the container's capabilities.
//! - [`image_user`] — the image's `User` as uid/gid, resolved against the
//!   image's own /etc/passwd and /etc/group (read without leaving the rootfs).
//! - [`bundle`] — the directory of one container (`config.json`, `upper/`,
//!   `work/`, `rootfs/`), the overlayfs over the image layers, and removal.
//! - [`runtime`] — the crun command line: `run` in the foreground with the
//!   output piped into the log, `kill`, `delete`, `state`.
//! - [`container_log`] — containers' output in the files the services' logs
//!   live in (/run/carapace/logs), under a name no service can have.
//! - [`policy`] — restart backoff and how a run ended (out of memory,
//!   signal, status), pure but for reading `memory.events`.
//! - [`quota`] — the disk bound: the store and the volumes in one ext4
//!   project quota that leaves a reserve of /var to the node's own state.
//! - [`status`] — the record per container that the agent publishes as
//!   /run/carapace/containers.json.
//! - [`userns`] — user namespaces for the containers that ask for one:
//!   a range of the node's ids per container, recorded in its bundle, and
//!   the idmapped mounts that show the shared layers, the writable layer
//!   and the volumes to it without a chown.
//! - [`reconcile`] — the agent's decisions, pure: settings and what the
//!   agent knows of each container → the next action (look the image up,
//!   pull, start, stop, kill, clear), and what each outcome changes, with
//!   its console line.
//!
//! The agent binary (`src/main.rs`, the `containers` service) is the
//! imperative shell around [`reconcile`]: it watches the settings file,
//! pulls with carapace-oci, runs crun and publishes the status.
//!
//! Does not: pull or store images (carapace-oci does; the library takes
//! the layer directories and the configuration as plain inputs, and
//! [`reconcile`] only reads the store through
//! [`reconcile::ImageCache`]), or read the settings file (the binary does).

pub mod bundle;
pub mod container_log;
pub mod daemon;
pub mod image_user;
pub mod policy;
pub mod quota;
pub mod reconcile;
pub mod runtime;
pub mod seccomp;
pub mod spec;
pub mod status;
pub mod userns;

/// The image store on the node (carapace-oci's `blobs/`, `layers/` and
/// `images/`), and the bundles beside them in [`RUN_ROOT`].
pub const STORE_ROOT: &str = "/var/lib/carapace/containers";

/// Where the bundles of the containers live on the node, one directory per
/// container name: inside [`STORE_ROOT`] (the layers the overlays stack are
/// on the same filesystem) under a name the store does not use.
pub const RUN_ROOT: &str = "/var/lib/carapace/containers/run";

/// The cgroup v2 hierarchy.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup (relative to [`CGROUP_ROOT`]) under which every container gets
/// its own, `carapace.slice/<name>`.
pub const CGROUP_PARENT: &str = "carapace.slice";

/// The cgroup under `carapace.slice/<name>` that crun puts the container's
/// processes in (and removes when they are gone).
pub const CGROUP_LEAF: &str = "container";
