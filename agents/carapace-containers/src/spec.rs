//! The OCI runtime spec (`config.json`) of one container, made from its
//! settings and its image configuration. Pure: nothing here touches a file.
//!
//! What it decides, and after whom:
//! - **Process** (Docker): the settings' `command` replaces the image's
//!   `Entrypoint`, the settings' `args` replace its `Cmd`; a `command`
//!   without `args` drops the image's `Cmd`. Environment: `PATH` (Docker's
//!   default when the image sets none), `HOSTNAME`, the image's `Env`
//!   overlaid by the settings' `env` (a variable keeps the image's place),
//!   `HOME` from the image's /etc/passwd when nothing set it. Working
//!   directory: the image's `WorkingDir`, else `/`. User: [`UserIds`] as
//!   [`crate::image_user`] resolved it. `RLIMIT_NOFILE` 1024 soft, 524288
//!   hard (systemd's and containerd's default). `oomScoreAdj`
//!   [`OOM_SCORE_ADJ`], set explicitly: crun would otherwise pass on the
//!   agent's own (negative) value, and a container is what the kernel
//!   should kill first when the node runs out of memory.
//! - **Isolation**: namespaces pid, mount, ipc, uts, cgroup, and network
//!   unless `host_network` (a private network namespace has only `lo`);
//!   with `userns`, a user namespace too, whose `uidMappings` and
//!   `gidMappings` map container ids 0–65535 to the container's range of
//!   the node's ([`crate::userns`]: the caller gives it, [`generate_with_ids`]);
//!   the container's capabilities ([`Container::capabilities`]: Docker's
//!   default set without `NET_RAW` and `MKNOD` unless the settings add or
//!   drop some) in the bounding set, and in the effective and permitted
//!   sets for uid 0 only, as a non-root process loses them at execve
//!   anyway; never inheritable or ambient. `noNewPrivileges` unless the
//!   settings say `no_new_privileges: false`. The default system call
//!   filter ([`crate::seccomp`], decided from the same capabilities) unless
//!   `seccomp: "unconfined"`. runc's masked and read-only paths plus
//!   `/sys/devices/virtual/powercap` as Docker does; every device denied
//!   but the ones crun always allows (null, zero, full, tty, random,
//!   urandom, ptmx, pts).
//! - **Mounts**: /proc, /dev (tmpfs), /dev/pts, /dev/shm, /dev/mqueue,
//!   /sys read-only, /sys/fs/cgroup read-only (the container's own cgroup,
//!   through its cgroup namespace); the settings' volumes as recursive bind
//!   mounts, `nosuid` and `nodev` (parents before children), read-only when
//!   asked, of the bundle's staging mount points `volumes/<i>` (`i` the
//!   volume's index in the settings): the agent has bound each source
//!   there through a descriptor ([`crate::bundle`]), so crun never
//!   resolves a path a container can change; with `host_network`, the bundle's
//!   `resolv.conf` and `hosts` bound read-only over /etc/resolv.conf and
//!   /etc/hosts.
//! - **Limits** (cgroup v2, `cgroupsPath` `/carapace.slice/<name>/container`,
//!   a cgroupfs path, not systemd's `slice:prefix:name`): `memory.max` from
//!   `memory_max`, `cpu.max` quota and period from `cpu_max`, `pids.max`
//!   from `pids_max` ([`carapace_model::containers::DEFAULT_PIDS_MAX`]
//!   unless the settings say `"max"`). No swap limit
//!   is set: the node has no swap, and crun would write `memory.swap.max`,
//!   which a kernel without swap does not have. The container's processes
//!   live in the leaf `container`, which crun makes and removes with each
//!   run; `/carapace.slice/<name>` stays, so its hierarchical
//!   `memory.events` still counts an OOM kill after crun has removed the
//!   leaf ([`crate::policy`]).
//! - **Version**: `ociVersion` 1.0.2, which every crun takes (crun before
//!   1.9 refuses any version but 1.0.x).
//! - **Root**: `rootfs` in the bundle, writable (the overlay's upper layer
//!   takes the writes).
//!
//! - **In a user namespace** (`userns`), the same spec but for /sys: with
//!   `host_network` the container does not own the network namespace,
//!   and the kernel mounts sysfs only for the owner of the current network
//!   namespace, so /sys is the node's, bound (recursively: a user
//!   namespace cannot bind a mount without what is mounted under it),
//!   read-only, `nosuid`, `nodev`, `noexec`; what the node owns there
//!   stays the node's (the container's root is nobody to it). With its own
//!   network namespace, sysfs is mounted as without `userns`.
//!
//! Not applied (yet): AppArmor/SELinux.

use crate::image_user::UserIds;
use crate::userns::{IdRange, RANGE_SIZE};
use carapace_model::containers::{
    Container, ContainerName, SeccompProfile, CPU_PERIOD_US, VOLUMES_DIR,
};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::Spec;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// `PATH` when the image sets none (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `oom_score_adj` of every container's processes: above the node's
/// own (0 for PID 1, negative for the agents), so that when the node runs
/// out of memory the kernel kills in containers first.
pub const OOM_SCORE_ADJ: i32 = 500;

// Above the node's own, within what the kernel takes.
const _: () = assert!(OOM_SCORE_ADJ > 0 && OOM_SCORE_ADJ <= 1000);

/// Paths a container cannot read (runc's defaults, plus powercap as Docker).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths a container can read but not write (runc's defaults).
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The soft and hard `RLIMIT_NOFILE`.
pub const NOFILE: (u64, u64) = (1024, 524_288);

/// The files on the node a spec points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFiles {
    /// Where volume sources live: [`VOLUMES_DIR`] on the node.
    pub volumes_dir: PathBuf,
    /// The bundle's directory of staging mount points, `volumes/`: volume
    /// `i` of the settings is bound at `volumes/<i>`.
    pub volume_staging: PathBuf,
    /// Bound over /etc/resolv.conf with `host_network`.
    pub resolv_conf: PathBuf,
    /// Bound over /etc/hosts with `host_network`.
    pub hosts: PathBuf,
}

impl HostFiles {
    /// The node's volumes directory, and `resolv.conf` and `hosts` in `bundle_dir`.
    pub fn for_bundle(bundle_dir: &Path) -> HostFiles {
        HostFiles {
            volumes_dir: PathBuf::from(VOLUMES_DIR),
            volume_staging: bundle_dir.join("volumes"),
            resolv_conf: bundle_dir.join("resolv.conf"),
            hosts: bundle_dir.join("hosts"),
        }
    }

    /// Where the source of a volume is on the node.
    pub fn volume_source(&self, source: &carapace_model::containers::VolumePath) -> PathBuf {
        self.volumes_dir.join(source.as_str())
    }

    /// The staging mount point of volume `index` (its place in the settings).
    pub fn volume_mount_point(&self, index: usize) -> PathBuf {
        self.volume_staging.join(index.to_string())
    }
}

/// Why no spec can be made.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("container {name}: nothing to run: the settings give no command and the image has neither Entrypoint nor Cmd")]
    NoCommand { name: String },
    #[error("container {name}: the image's StopSignal {signal:?} is not a signal")]
    StopSignal { name: String, signal: String },
    #[error("container {name}: runs in a user namespace but was given no range of ids")]
    NoIdRange { name: String },
    #[error("container {name}: the generated runtime spec does not parse: {source}")]
    Invalid {
        name: String,
        source: serde_json::Error,
    },
}

/// The `ociVersion` of the specs made here.
pub const OCI_VERSION: &str = "1.0.2";

/// The container's `cgroupsPath`: `/carapace.slice/<name>/container`.
pub fn cgroup_path(name: &ContainerName) -> String {
    format!("/{}/{name}/{}", crate::CGROUP_PARENT, crate::CGROUP_LEAF)
}

/// The command line: entrypoint then arguments, with Docker's rules. Empty
/// when there is nothing to run.
pub fn process_args(container: &Container, image: &ImageConfiguration) -> Vec<String> {
    let config = image.config().as_ref();
    let strings = |v: &Option<Vec<carapace_model::containers::ExecString>>| {
        v.as_ref()
            .map(|v| v.iter().map(|s| s.as_str().to_string()).collect::<Vec<_>>())
    };
    let (entrypoint, cmd) = match strings(&container.command) {
        Some(command) => (command, strings(&container.args).unwrap_or_default()),
        None => (
            config
                .and_then(|c| c.entrypoint().clone())
                .unwrap_or_default(),
            strings(&container.args)
                .or_else(|| config.and_then(|c| c.cmd().clone()))
                .unwrap_or_default(),
        ),
    };
    entrypoint.into_iter().chain(cmd).collect()
}

/// The environment, `NAME=value` each: see the module documentation.
pub fn environment(
    container: &Container,
    image: &ImageConfiguration,
    hostname: &str,
    home: &str,
) -> Vec<String> {
    let image_env = image
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    let mut env: Vec<(String, String)> = Vec::new();
    fn set(name: &str, value: &str, env: &mut Vec<(String, String)>) {
        match env.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.to_string(),
            None => env.push((name.to_string(), value.to_string())),
        }
    }
    set("PATH", DEFAULT_PATH, &mut env);
    set("HOSTNAME", hostname, &mut env);
    for entry in &image_env {
        // An entry without '=' names no value; Docker's runtime drops it too.
        if let Some((name, value)) = entry.split_once('=') {
            if !name.is_empty() {
                set(name, value, &mut env);
            }
        }
    }
    for (name, value) in &container.env {
        set(name.as_str(), value.as_str(), &mut env);
    }
    if !env.iter().any(|(n, _)| n == "HOME") {
        set("HOME", home, &mut env);
    }
    env.into_iter().map(|(n, v)| format!("{n}={v}")).collect()
}

/// The signal that asks the container to stop: the image's `StopSignal`
/// (`SIGQUIT`, `QUIT` or `3`), else SIGTERM.
pub fn stop_signal(name: &ContainerName, image: &ImageConfiguration) -> Result<i32, SpecError> {
    let given = image
        .config()
        .as_ref()
        .and_then(|c| c.stop_signal().clone());
    let Some(given) = given else {
        return Ok(rustix::process::Signal::TERM.as_raw());
    };
    let s = given.trim();
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let wanted = if s.starts_with("SIG") {
        s.to_string()
    } else {
        format!("SIG{s}")
    };
    (1..=31)
        .find(|&n| carapace_init::backoff::signal_name(n) == wanted)
        .ok_or(SpecError::StopSignal {
            name: name.to_string(),
            signal: given.clone(),
        })
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Value {
    json!({ "destination": destination, "type": typ, "source": source, "options": options })
}

/// The mounts, in the order crun makes them; `mapped`: in a user namespace.
fn mounts(container: &Container, files: &HostFiles, mapped: bool) -> Vec<Value> {
    let sys = if mapped && container.host_network {
        mount(
            "/sys",
            "bind",
            "/sys",
            &["rbind", "rprivate", "nosuid", "noexec", "nodev", "ro"],
        )
    } else {
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )
    };
    let mut all = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        sys,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ];
    // Parents before children: a volume at /data/logs must land on the one at /data.
    let mut volumes: Vec<(usize, &carapace_model::containers::Mount)> =
        container.mounts.iter().enumerate().collect();
    volumes.sort_by_key(|(_, m)| m.target.as_str().split('/').count());
    for (index, m) in volumes {
        let source = files.volume_mount_point(index);
        all.push(mount(
            m.target.as_str(),
            "bind",
            &source.to_string_lossy(),
            &[
                "rbind",
                "rprivate",
                "nosuid",
                "nodev",
                if m.read_only { "ro" } else { "rw" },
            ],
        ));
    }
    if container.host_network {
        let options = ["rbind", "rprivate", "ro", "nosuid", "nodev", "noexec"];
        all.push(mount(
            "/etc/resolv.conf",
            "bind",
            &files.resolv_conf.to_string_lossy(),
            &options,
        ));
        all.push(mount(
            "/etc/hosts",
            "bind",
            &files.hosts.to_string_lossy(),
            &options,
        ));
    }
    all
}

fn namespaces(container: &Container, mapped: bool) -> Vec<Value> {
    let mut kinds = vec!["pid", "mount", "ipc", "uts", "cgroup"];
    if !container.host_network {
        kinds.push("network");
    }
    if mapped {
        kinds.push("user");
    }
    kinds.into_iter().map(|t| json!({ "type": t })).collect()
}

fn resources(container: &Container) -> Value {
    let mut r = json!({ "devices": [{ "allow": false, "access": "rwm" }] });
    if let Some(m) = container.memory_max {
        r["memory"] = json!({ "limit": i64::try_from(m.bytes()).unwrap_or(i64::MAX) });
    }
    if let Some(c) = container.cpu_max {
        r["cpu"] = json!({
            "quota": i64::try_from(c.quota_us()).unwrap_or(i64::MAX),
            "period": CPU_PERIOD_US,
        });
    }
    if let Some(limit) = container.pids_limit() {
        r["pids"] = json!({ "limit": i64::try_from(limit).unwrap_or(i64::MAX) });
    }
    r
}

/// The runtime spec of container `name`, as JSON: see the module
/// documentation. A container with `userns` needs [`generate_json_with_ids`].
pub fn generate_json(
    name: &ContainerName,
    container: &Container,
    image: &ImageConfiguration,
    user: &UserIds,
    files: &HostFiles,
) -> Result<Value, SpecError> {
    generate_json_with_ids(name, container, image, user, files, None)
}

/// The same, for a container whose settings may say `userns`: `ids` is
/// its range of the node's ids ([`crate::userns::assign`]), which it must
/// have then, and which is not used otherwise.
pub fn generate_json_with_ids(
    name: &ContainerName,
    container: &Container,
    image: &ImageConfiguration,
    user: &UserIds,
    files: &HostFiles,
    ids: Option<IdRange>,
) -> Result<Value, SpecError> {
    let ids = match (container.user_namespace(), ids) {
        (true, None) => {
            return Err(SpecError::NoIdRange {
                name: name.to_string(),
            })
        }
        (true, ids) => ids,
        (false, _) => None,
    };
    let mapped = ids.is_some();
    let args = process_args(container, image);
    if args.is_empty() {
        return Err(SpecError::NoCommand {
            name: name.to_string(),
        });
    }
    let config = image.config().as_ref();
    let cwd = config
        .and_then(|c| c.working_dir().clone())
        .filter(|d| d.starts_with('/'))
        .unwrap_or_else(|| "/".to_string());
    let all_caps: Vec<&str> = container.capabilities();
    let own_caps: Vec<&str> = if user.uid == 0 {
        all_caps.clone()
    } else {
        Vec::new()
    };
    let mut user_json = json!({ "uid": user.uid, "gid": user.gid });
    if !user.additional_gids.is_empty() {
        user_json["additionalGids"] = json!(user.additional_gids);
    }
    let mut linux = json!({
        "namespaces": namespaces(container, mapped),
        "cgroupsPath": cgroup_path(name),
        "resources": resources(container),
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
    });
    if container.seccomp == SeccompProfile::Default {
        linux["seccomp"] = crate::seccomp::profile(&all_caps);
    }
    if let Some(ids) = ids {
        let map = json!([{ "containerID": 0, "hostID": ids.first(), "size": RANGE_SIZE }]);
        linux["uidMappings"] = map.clone();
        linux["gidMappings"] = map;
    }
    Ok(json!({
        "ociVersion": OCI_VERSION,
        "root": { "path": "rootfs", "readonly": false },
        "hostname": name.as_str(),
        "process": {
            "terminal": false,
            "user": user_json,
            "args": args,
            "env": environment(container, image, name.as_str(), &user.home),
            "cwd": cwd,
            "capabilities": {
                "bounding": all_caps,
                "effective": own_caps,
                "permitted": own_caps,
                "inheritable": [],
                "ambient": [],
            },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "soft": NOFILE.0, "hard": NOFILE.1 }],
            "noNewPrivileges": container.no_new_privileges,
            "oomScoreAdj": OOM_SCORE_ADJ,
        },
        "mounts": mounts(container, files, mapped),
        "linux": linux,
    }))
}

/// The runtime spec of container `name`, typed: [`generate_json`] read back
/// as an `oci_spec` [`Spec`] (which checks every field's type).
pub fn generate(
    name: &ContainerName,
    container: &Container,
    image: &ImageConfiguration,
    user: &UserIds,
    files: &HostFiles,
) -> Result<Spec, SpecError> {
    generate_with_ids(name, container, image, user, files, None)
}

/// [`generate_json_with_ids`] read back as a [`Spec`].
pub fn generate_with_ids(
    name: &ContainerName,
    container: &Container,
    image: &ImageConfiguration,
    user: &UserIds,
    files: &HostFiles,
    ids: Option<IdRange>,
) -> Result<Spec, SpecError> {
    let value = generate_json_with_ids(name, container, image, user, files, ids)?;
    serde_json::from_value(value).map_err(|source| SpecError::Invalid {
        name: name.to_string(),
        source,
    })
}

/// `config.json` text of `spec`, deterministic (capability sets sorted), so
/// that equal specs are equal files.
pub fn to_config_json(spec: &Spec) -> String {
    let mut value = serde_json::to_value(spec).unwrap_or(Value::Null);
    if let Some(caps) = value
        .pointer_mut("/process/capabilities")
        .and_then(Value::as_object_mut)
    {
        for set in caps.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ContainerName {
        ContainerName::try_from(s.to_string()).expect("name")
    }

    /// A container's settings; without a user namespace unless `json`
    /// asks for one (most tests are about the rest of the spec).
    fn container(json: Value) -> Container {
        let mut base = json!({ "image": "nginx:1.27", "userns": false });
        if let (Some(b), Some(extra)) = (base.as_object_mut(), json.as_object()) {
            for (k, v) in extra {
                b.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(base).expect("container settings")
    }

    fn image(config: Value) -> ImageConfiguration {
        serde_json::from_value(json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [] },
            "config": config,
        }))
        .expect("image configuration")
    }

    fn nginx() -> ImageConfiguration {
        image(json!({
            "Entrypoint": ["/docker-entrypoint.sh"],
            "Cmd": ["nginx", "-g", "daemon off;"],
            "Env": ["PATH=/usr/local/sbin:/usr/bin", "NGINX_VERSION=1.27.0", "NOVALUE"],
            "WorkingDir": "/srv",
            "StopSignal": "SIGQUIT",
        }))
    }

    fn files() -> HostFiles {
        HostFiles::for_bundle(Path::new("/var/lib/carapace/containers/run/web"))
    }

    fn spec_json(c: &Container, i: &ImageConfiguration, user: &UserIds) -> Value {
        let spec = generate(&name("web"), c, i, user, &files()).expect("spec");
        serde_json::from_str(&to_config_json(&spec)).expect("config.json parses")
    }

    fn args(c: Value, i: &ImageConfiguration) -> Vec<String> {
        process_args(&container(c), i)
    }

    #[test]
    fn the_image_entrypoint_and_cmd_run_when_the_settings_say_nothing() {
        assert_eq!(
            args(json!({}), &nginx()),
            ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]
        );
    }

    #[test]
    fn settings_args_replace_the_image_cmd_but_keep_the_entrypoint() {
        assert_eq!(
            args(json!({ "args": ["nginx", "-T"] }), &nginx()),
            ["/docker-entrypoint.sh", "nginx", "-T"]
        );
        // An empty list runs the entrypoint without arguments.
        assert_eq!(
            args(json!({ "args": [] }), &nginx()),
            ["/docker-entrypoint.sh"]
        );
    }

    #[test]
    fn a_settings_command_drops_the_image_cmd_as_docker_does() {
        assert_eq!(
            args(json!({ "command": ["/bin/sh"] }), &nginx()),
            ["/bin/sh"]
        );
        assert_eq!(
            args(
                json!({ "command": ["/bin/sh"], "args": ["-c", "echo hi"] }),
                &nginx()
            ),
            ["/bin/sh", "-c", "echo hi"]
        );
    }

    #[test]
    fn cmd_alone_runs_without_an_entrypoint_and_nothing_at_all_is_refused() {
        let busybox = image(json!({ "Cmd": ["sh"] }));
        assert_eq!(args(json!({}), &busybox), ["sh"]);
        assert_eq!(args(json!({ "args": ["top"] }), &busybox), ["top"]);
        let empty = image(json!({}));
        let err = generate(
            &name("web"),
            &container(json!({})),
            &empty,
            &UserIds::root(),
            &files(),
        )
        .expect_err("nothing to run");
        assert!(
            err.to_string().contains("container web: nothing to run"),
            "{err}"
        );
    }

    #[test]
    fn settings_env_overlays_the_image_env_in_place() {
        let c = container(json!({ "env": { "NGINX_VERSION": "mine", "TZ": "UTC", "HOME": "/h" } }));
        assert_eq!(
            environment(&c, &nginx(), "web", "/root"),
            [
                "PATH=/usr/local/sbin:/usr/bin",
                "HOSTNAME=web",
                "NGINX_VERSION=mine",
                "HOME=/h",
                "TZ=UTC",
            ]
        );
    }

    #[test]
    fn path_and_home_get_defaults_when_nothing_sets_them() {
        let c = container(json!({}));
        assert_eq!(
            environment(&c, &image(json!({ "Cmd": ["sh"] })), "db", "/var/lib/db"),
            [
                format!("PATH={DEFAULT_PATH}"),
                "HOSTNAME=db".into(),
                "HOME=/var/lib/db".into()
            ]
        );
    }

    #[test]
    fn the_process_runs_as_the_resolved_user_in_the_working_dir() {
        let user = UserIds {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![29],
            home: "/home/app".into(),
        };
        let v = spec_json(&container(json!({})), &nginx(), &user);
        let p = &v["process"];
        assert_eq!(
            p["user"],
            json!({ "uid": 1000, "gid": 1000, "additionalGids": [29] })
        );
        assert_eq!(p["cwd"], "/srv");
        assert_eq!(p["terminal"], false);
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(
            p["rlimits"],
            json!([{ "type": "RLIMIT_NOFILE", "soft": 1024, "hard": 524288 }])
        );
        // A non-root process keeps only the bounding set.
        assert_eq!(
            p["capabilities"]["bounding"].as_array().map(Vec::len),
            Some(12)
        );
        assert_eq!(p["capabilities"]["effective"], json!([]));
        assert_eq!(p["capabilities"]["permitted"], json!([]));
        let no_workdir = spec_json(
            &container(json!({})),
            &image(json!({ "Cmd": ["sh"] })),
            &UserIds::root(),
        );
        assert_eq!(no_workdir["process"]["cwd"], "/");
    }

    #[test]
    fn root_gets_dockers_default_capabilities_but_raw_sockets_and_mknod() {
        let v = spec_json(&container(json!({})), &nginx(), &UserIds::root());
        let caps = &v["process"]["capabilities"];
        let expected = json!([
            "CAP_AUDIT_WRITE",
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FOWNER",
            "CAP_FSETID",
            "CAP_KILL",
            "CAP_NET_BIND_SERVICE",
            "CAP_SETFCAP",
            "CAP_SETGID",
            "CAP_SETPCAP",
            "CAP_SETUID",
            "CAP_SYS_CHROOT",
        ]);
        for set in ["bounding", "effective", "permitted"] {
            assert_eq!(caps[set], expected, "{set}");
        }
        assert_eq!(caps["inheritable"], json!([]));
        assert_eq!(caps["ambient"], json!([]));
    }

    #[test]
    fn capabilities_added_and_dropped_in_the_settings_are_the_containers() {
        let c = container(json!({
            "capabilities_add": ["NET_RAW"],
            "capabilities_drop": ["CAP_SETFCAP", "KILL"],
        }));
        let v = spec_json(&c, &nginx(), &UserIds::root());
        let bounding = v["process"]["capabilities"]["bounding"]
            .as_array()
            .expect("bounding")
            .clone();
        assert!(bounding.contains(&json!("CAP_NET_RAW")));
        assert!(!bounding.contains(&json!("CAP_SETFCAP")));
        assert!(!bounding.contains(&json!("CAP_KILL")));
        assert_eq!(bounding.len(), 11);
        assert_eq!(v["process"]["capabilities"]["effective"], json!(bounding));
    }

    #[test]
    fn the_default_seccomp_profile_applies_unless_unconfined() {
        let v = spec_json(&container(json!({})), &nginx(), &UserIds::root());
        let seccomp = &v["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
        let names: Vec<&str> = seccomp["syscalls"]
            .as_array()
            .expect("rules")
            .iter()
            .flat_map(|r| r["names"].as_array().expect("names").iter())
            .filter_map(Value::as_str)
            .collect();
        assert!(names.contains(&"read") && !names.contains(&"unshare"));
        // The filter follows the capabilities: CAP_SYS_ADMIN opens mount.
        let admin = spec_json(
            &container(json!({ "capabilities_add": ["SYS_ADMIN"] })),
            &nginx(),
            &UserIds::root(),
        );
        assert!(admin["linux"]["seccomp"]["syscalls"]
            .as_array()
            .expect("rules")
            .iter()
            .any(|r| r["names"]
                .as_array()
                .expect("names")
                .contains(&json!("mount"))));
        let unconfined = spec_json(
            &container(json!({ "seccomp": "unconfined" })),
            &nginx(),
            &UserIds::root(),
        );
        assert!(unconfined["linux"].get("seccomp").is_none());
    }

    #[test]
    fn no_new_privileges_and_oom_score_adj_are_set_explicitly() {
        let v = spec_json(&container(json!({})), &nginx(), &UserIds::root());
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["process"]["oomScoreAdj"], OOM_SCORE_ADJ);
        let loose = spec_json(
            &container(json!({ "no_new_privileges": false })),
            &nginx(),
            &UserIds::root(),
        );
        assert_eq!(loose["process"]["noNewPrivileges"], false);
    }

    #[test]
    fn a_container_gets_its_own_network_namespace_unless_host_network() {
        let types = |v: &Value| -> Vec<String> {
            v["linux"]["namespaces"]
                .as_array()
                .expect("namespaces")
                .iter()
                .map(|n| n["type"].as_str().unwrap_or("").to_string())
                .collect()
        };
        let own = spec_json(&container(json!({})), &nginx(), &UserIds::root());
        assert_eq!(
            types(&own),
            ["pid", "mount", "ipc", "uts", "cgroup", "network"]
        );
        let host = spec_json(
            &container(json!({ "host_network": true })),
            &nginx(),
            &UserIds::root(),
        );
        assert_eq!(types(&host), ["pid", "mount", "ipc", "uts", "cgroup"]);
        assert_eq!(own["hostname"], "web");
        assert_eq!(host["hostname"], "web");
    }

    fn destinations(v: &Value) -> Vec<String> {
        v["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .map(|m| m["destination"].as_str().unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn the_standard_mounts_come_first_and_sys_is_read_only() {
        let v = spec_json(&container(json!({})), &nginx(), &UserIds::root());
        assert_eq!(
            destinations(&v),
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        assert_eq!(v["mounts"][1]["type"], "tmpfs");
        assert_eq!(v["mounts"][5]["type"], "sysfs");
        assert!(v["mounts"][5]["options"]
            .as_array()
            .expect("options")
            .contains(&json!("ro")));
        assert!(v["mounts"][6]["options"]
            .as_array()
            .expect("options")
            .contains(&json!("ro")));
        assert_eq!(v["root"], json!({ "path": "rootfs", "readonly": false }));
        assert_eq!(v["ociVersion"], "1.0.2");
    }

    #[test]
    fn volumes_are_nosuid_nodev_bind_mounts_of_staging_points_parents_first() {
        let c = container(json!({ "mounts": [
            { "source": "web/logs", "target": "/data/logs" },
            { "source": "web/html", "target": "/data", "read_only": true },
        ] }));
        let v = spec_json(&c, &nginx(), &UserIds::root());
        let mounts = v["mounts"].as_array().expect("mounts");
        // The sources are the bundle's staging mount points, by index in
        // the settings, never the volume paths themselves.
        assert_eq!(
            mounts[7],
            json!({ "destination": "/data", "type": "bind",
                    "source": "/var/lib/carapace/containers/run/web/volumes/1",
                    "options": ["rbind", "rprivate", "nosuid", "nodev", "ro"] })
        );
        assert_eq!(
            mounts[8],
            json!({ "destination": "/data/logs", "type": "bind",
                    "source": "/var/lib/carapace/containers/run/web/volumes/0",
                    "options": ["rbind", "rprivate", "nosuid", "nodev", "rw"] })
        );
        assert_eq!(mounts.len(), 9, "no resolv.conf without host_network");
    }

    #[test]
    fn host_network_binds_the_bundles_resolv_conf_and_hosts_read_only() {
        let v = spec_json(
            &container(json!({ "host_network": true })),
            &nginx(),
            &UserIds::root(),
        );
        let mounts = v["mounts"].as_array().expect("mounts");
        let resolv = &mounts[mounts.len() - 2];
        let hosts = &mounts[mounts.len() - 1];
        assert_eq!(resolv["destination"], "/etc/resolv.conf");
        assert_eq!(
            resolv["source"],
            "/var/lib/carapace/containers/run/web/resolv.conf"
        );
        assert_eq!(hosts["destination"], "/etc/hosts");
        assert_eq!(
            hosts["source"],
            "/var/lib/carapace/containers/run/web/hosts"
        );
        for m in [resolv, hosts] {
            assert_eq!(m["type"], "bind");
            assert!(m["options"]
                .as_array()
                .expect("options")
                .contains(&json!("ro")));
        }
    }

    fn mapped_json(c: &Container, k: u32) -> Value {
        let ids = IdRange::slot(k).expect("slot");
        let spec = generate_with_ids(
            &name("web"),
            c,
            &nginx(),
            &UserIds::root(),
            &files(),
            Some(ids),
        )
        .expect("spec");
        serde_json::from_str(&to_config_json(&spec)).expect("config.json parses")
    }

    fn namespace_types(v: &Value) -> Vec<String> {
        v["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .map(|n| n["type"].as_str().unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn userns_adds_a_user_namespace_mapping_the_containers_range() {
        let v = mapped_json(&container(json!({ "userns": true })), 2);
        assert_eq!(
            namespace_types(&v),
            ["pid", "mount", "ipc", "uts", "cgroup", "network", "user"]
        );
        let map = json!([{ "containerID": 0, "hostID": 231072, "size": 65536 }]);
        assert_eq!(v["linux"]["uidMappings"], map);
        assert_eq!(v["linux"]["gidMappings"], map);
        // Its own network namespace: sysfs as ever.
        assert_eq!(v["mounts"][5]["type"], "sysfs");
        // Everything else is the spec without userns.
        let plain = spec_json(&container(json!({})), &nginx(), &UserIds::root());
        let mut same = v.clone();
        for key in ["uidMappings", "gidMappings"] {
            same["linux"].as_object_mut().expect("linux").remove(key);
        }
        same["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces")
            .pop();
        assert_eq!(same, plain);
    }

    #[test]
    fn a_user_namespace_is_the_default_except_on_the_host_network() {
        let settings = |extra: Value| -> Container {
            let mut c = json!({ "image": "nginx:1.27" });
            if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
                c.extend(extra.clone());
            }
            serde_json::from_value(c).expect("container settings")
        };
        let own = mapped_json(&settings(json!({})), 1);
        assert!(namespace_types(&own).contains(&"user".to_string()));
        assert_eq!(own["linux"]["uidMappings"][0]["hostID"], 165536);
        let host = mapped_json(&settings(json!({ "host_network": true })), 1);
        assert!(!namespace_types(&host).contains(&"user".to_string()));
        assert!(host["linux"].get("uidMappings").is_none());
    }

    #[test]
    fn userns_with_host_network_binds_the_nodes_sys_read_only() {
        let v = mapped_json(
            &container(json!({ "userns": true, "host_network": true })),
            0,
        );
        assert_eq!(
            namespace_types(&v),
            ["pid", "mount", "ipc", "uts", "cgroup", "user"]
        );
        assert_eq!(
            v["mounts"][5],
            json!({ "destination": "/sys", "type": "bind", "source": "/sys",
                    "options": ["rbind", "rprivate", "nosuid", "noexec", "nodev", "ro"] })
        );
        assert_eq!(v["mounts"][6]["destination"], "/sys/fs/cgroup");
    }

    #[test]
    fn userns_without_a_range_is_refused_and_a_range_alone_changes_nothing() {
        let err = generate(
            &name("web"),
            &container(json!({ "userns": true })),
            &nginx(),
            &UserIds::root(),
            &files(),
        )
        .expect_err("no range");
        assert!(matches!(err, SpecError::NoIdRange { .. }), "{err}");
        // A range given to a container without userns is not used.
        let v = mapped_json(&container(json!({})), 1);
        assert_eq!(
            v,
            spec_json(&container(json!({})), &nginx(), &UserIds::root())
        );
    }

    #[test]
    fn limits_become_cgroup_v2_resources_under_carapace_slice() {
        let c = container(json!({ "memory_max": 268435456, "cpu_max": 0.5 }));
        let v = spec_json(&c, &nginx(), &UserIds::root());
        let linux = &v["linux"];
        assert_eq!(linux["cgroupsPath"], "/carapace.slice/web/container");
        assert_eq!(linux["resources"]["memory"], json!({ "limit": 268435456 }));
        assert_eq!(
            linux["resources"]["cpu"],
            json!({ "quota": 50000, "period": 100000 })
        );
        assert_eq!(
            linux["resources"]["devices"],
            json!([{ "allow": false, "access": "rwm" }])
        );
        let unlimited = spec_json(&container(json!({})), &nginx(), &UserIds::root());
        assert!(unlimited["linux"]["resources"]["memory"].is_null());
        assert!(unlimited["linux"]["resources"]["cpu"].is_null());
    }

    #[test]
    fn pids_max_is_1024_by_default_a_given_number_or_none() {
        let pids = |fields: Value| {
            spec_json(&container(fields), &nginx(), &UserIds::root())["linux"]["resources"]["pids"]
                .clone()
        };
        assert_eq!(pids(json!({})), json!({ "limit": 1024 }));
        assert_eq!(pids(json!({ "pids_max": 50 })), json!({ "limit": 50 }));
        assert!(pids(json!({ "pids_max": "max" })).is_null());
    }

    #[test]
    fn masked_and_read_only_paths_are_runcs() {
        let v = spec_json(&container(json!({})), &nginx(), &UserIds::root());
        assert!(v["linux"]["maskedPaths"]
            .as_array()
            .expect("masked")
            .contains(&json!("/proc/kcore")));
        assert_eq!(v["linux"]["readonlyPaths"], json!(READONLY_PATHS));
    }

    #[test]
    fn config_json_is_the_same_text_for_the_same_inputs() {
        let c = container(json!({}));
        let a = generate(&name("web"), &c, &nginx(), &UserIds::root(), &files()).expect("a");
        let b = generate(&name("web"), &c, &nginx(), &UserIds::root(), &files()).expect("b");
        assert_eq!(to_config_json(&a), to_config_json(&b));
    }

    #[test]
    fn the_stop_signal_is_the_images_or_sigterm() {
        let n = name("web");
        assert_eq!(stop_signal(&n, &nginx()).expect("quit"), 3);
        assert_eq!(stop_signal(&n, &image(json!({}))).expect("term"), 15);
        assert_eq!(
            stop_signal(&n, &image(json!({ "StopSignal": "INT" }))).expect("int"),
            2
        );
        assert_eq!(
            stop_signal(&n, &image(json!({ "StopSignal": "9" }))).expect("kill"),
            9
        );
        assert!(stop_signal(&n, &image(json!({ "StopSignal": "SIGNOPE" }))).is_err());
    }
}
