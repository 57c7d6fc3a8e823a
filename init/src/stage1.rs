//! Stage 1: carapace-init as `/init` in the initrd, PID 1 until it execs
//! stage 2 on the verified root.
//!
//! It trusts only the kernel command line (inside the signed UKI) and what
//! it can verify against it: `roothash=` names the root partition (the
//! first 128 bits of the hash are its partition UUID) and its verity
//! partition (the last 128 bits); dm-verity then checks every block of the
//! root against the hash. The sequence: mount /proc, /sys, /dev, and
//! efivarfs when booted by UEFI; learn from the boot loader's variables
//! whether this boot is on trial ([`crate::power::learn_boot_counting`]);
//! arm the hardware watchdog ([`crate::watchdog`]); find both partitions
//! and the state partition by reading the GPT of every disk (the backup
//! copy when the primary is damaged; waiting up to [`DISK_WAIT`] for disks
//! to appear); read the verity superblock; create the dm-verity device;
//! mount it (erofs, read-only) on /sysroot and the state partition (ext4)
//! on /sysroot/var; move /dev, /proc, /sys (with efivarfs below it) there;
//! free the initramfs; switch root; close the watchdog, still armed; exec
//! stage 2.
//!
//! The deciding is pure and unit-tested ([`locate`], [`mount_plan`],
//! [`switch_plan`], [`is_whole_disk`]; the formats are carapace-disk's); the rest is
//! a thin shell of syscalls. Any failure is one `boot failed:` line saying
//! what failed, on what, and why, then a reboot if this is a trial boot the
//! boot loader counts (so that it falls back), else a power-off (see
//! [`crate::power::fail`]): never a shell, never a panic, never a hang.
//!
//! Console lines besides the failure (after `carapace: `):
//! - `stage 1 at <ms> ms: root <uuid> on <dev> verified by <dev> as /dev/dm-N, state <dev> on /var`
//! - `primary GPT on /dev/<disk> is damaged (<why>): using the backup`
//! - `cannot mount efivarfs on /sys/firmware/efi/efivars: <error>: a failed boot will power off, not reboot`
//! - the watchdog's lines ([`crate::watchdog`])

use crate::cmdline::CmdlineError;
use carapace_disk::gpt::{self, Guid, Partition};
use carapace_disk::partition_node::partition_node_name;
use carapace_disk::root_hash::RootHash;
use carapace_disk::verity::{FitError, Superblock, SuperblockError, TableError};
use rustix::mount::MountFlags;
use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long stage 1 waits for the disk with the root, and its partitions, to appear.
pub const DISK_WAIT: Duration = Duration::from_secs(10);
/// How often it looks again meanwhile.
pub const POLL: Duration = Duration::from_millis(25);
/// The device-mapper name of the verified root.
pub const VERITY_NAME: &str = "root";

// ---------------------------------------------------------------------------
// Which disks, which partitions: pure.

/// Whether `name` (an entry of /sys/block) is a whole disk that may hold
/// the root: virtio (`vda`), SCSI/SATA/USB (`sda`), Xen (`xvda`), NVMe
/// namespaces (`nvme0n1`), MMC (`mmcblk0`). Not loop, ram, zram, dm, md,
/// optical drives, NVMe multipath paths or MMC boot areas.
pub fn is_whole_disk(name: &str) -> bool {
    let letters = |rest: &str| !rest.is_empty() && rest.bytes().all(|c| c.is_ascii_lowercase());
    let digits = |rest: &str| !rest.is_empty() && rest.bytes().all(|c| c.is_ascii_digit());
    if let Some(rest) = name.strip_prefix("nvme") {
        return rest
            .split_once('n')
            .is_some_and(|(ctrl, ns)| digits(ctrl) && digits(ns));
    }
    if let Some(rest) = name.strip_prefix("mmcblk") {
        return digits(rest);
    }
    ["vd", "sd", "xvd"]
        .iter()
        .any(|p| name.strip_prefix(p).is_some_and(letters))
}

/// Parses a sysfs `dev` file: `major:minor`.
pub fn parse_dev(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// What stage 1 read from one whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The kernel's name, e.g. `vda`.
    pub name: String,
    /// Logical sector size in bytes.
    pub sector_size: u64,
    /// Its partitions, or why they could not be read.
    pub table: Result<Vec<Partition>, String>,
    /// Why the primary GPT failed its checks, when the table was read from
    /// the backup copy.
    pub damaged_primary: Option<String>,
}

/// The partitions the boot uses, all on one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub disk: String,
    pub sector_size: u64,
    /// Why the disk's primary GPT is damaged, when its backup was used.
    pub damaged_primary: Option<String>,
    /// The root filesystem (type root-x86-64), UUID = first half of the root hash.
    pub data: Partition,
    /// Its verity hash tree (type root-x86-64-verity), UUID = second half.
    pub hash: Partition,
    /// The state partition (type var), the first one on the disk.
    pub var: Partition,
    /// Which root slot this is: `a` for the first root partition of the
    /// disk, `b` for the second.
    pub slot: char,
}

impl Located {
    /// The size of a partition of this disk in bytes.
    pub fn bytes(&self, p: &Partition) -> u64 {
        p.size_bytes(self.sector_size)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocateError {
    #[error("root partition {uuid} (the first half of roothash=) not found; {seen}")]
    NoData { uuid: Guid, seen: String },
    #[error("root partition {uuid} is on more than one disk ({disks}); refusing to guess")]
    Ambiguous { uuid: Guid, disks: String },
    #[error("verity partition {uuid} (the second half of roothash=) not found on /dev/{disk} (its GPT has {count} partitions)")]
    NoHash {
        uuid: Guid,
        disk: String,
        count: usize,
    },
    #[error("{what} partition {uuid} on /dev/{disk} has type {actual}, not {expected}")]
    WrongType {
        what: &'static str,
        uuid: Guid,
        disk: String,
        actual: Guid,
        expected: Guid,
    },
    #[error("no state partition (type {}) on /dev/{disk}", gpt::types::VAR)]
    NoVar { disk: String },
}

impl LocateError {
    /// Whether waiting could help: only when the root's disk was not seen
    /// at all (it may still be probing). Anything wrong on a disk that was
    /// read is final.
    pub fn may_appear_later(&self) -> bool {
        matches!(self, LocateError::NoData { .. })
    }
}

/// `disks seen: /dev/sda (no GPT: …), /dev/vda (GPT with 4 partitions)`.
fn describe(disks: &[Disk]) -> String {
    if disks.is_empty() {
        return "no disks seen in /sys/block".into();
    }
    let each: Vec<String> = disks
        .iter()
        .map(|d| match &d.table {
            Ok(p) => format!("/dev/{} (GPT with {} partitions)", d.name, p.len()),
            Err(e) => format!("/dev/{} ({e})", d.name),
        })
        .collect();
    format!("disks seen: {}", each.join(", "))
}

/// Finds, among the partition tables read from `disks`, the root and verity
/// partitions that `hash` names and the state partition on the same disk.
pub fn locate(hash: &RootHash, disks: &[Disk]) -> Result<Located, LocateError> {
    let data_uuid = hash.data_partition_uuid();
    let hash_uuid = hash.hash_partition_uuid();
    let holding: Vec<(&Disk, &[Partition])> = disks
        .iter()
        .filter_map(|d| Some((d, d.table.as_deref().ok()?)))
        .filter(|(_, parts)| gpt::partition_by_uuid(parts, &data_uuid).is_some())
        .collect();
    let (disk, parts) = match holding.as_slice() {
        [] => {
            return Err(LocateError::NoData {
                uuid: Guid(data_uuid),
                seen: describe(disks),
            })
        }
        [one] => *one,
        many => {
            let names: Vec<String> = many
                .iter()
                .map(|(d, _)| format!("/dev/{}", d.name))
                .collect();
            return Err(LocateError::Ambiguous {
                uuid: Guid(data_uuid),
                disks: names.join(", "),
            });
        }
    };
    let found = |uuid: &[u8; 16]| gpt::partition_by_uuid(parts, uuid).cloned();
    let data = found(&data_uuid).ok_or_else(|| LocateError::NoData {
        uuid: Guid(data_uuid),
        seen: describe(disks),
    })?;
    let hash_part = found(&hash_uuid).ok_or_else(|| LocateError::NoHash {
        uuid: Guid(hash_uuid),
        disk: disk.name.clone(),
        count: parts.len(),
    })?;
    for (what, p, expected) in [
        ("root", &data, gpt::types::ROOT_X86_64),
        ("verity", &hash_part, gpt::types::ROOT_VERITY_X86_64),
    ] {
        if p.type_guid != expected {
            return Err(LocateError::WrongType {
                what,
                uuid: p.unique_guid,
                disk: disk.name.clone(),
                actual: p.type_guid,
                expected,
            });
        }
    }
    let var = gpt::partition_by_type(parts, &gpt::types::VAR)
        .cloned()
        .ok_or_else(|| LocateError::NoVar {
            disk: disk.name.clone(),
        })?;
    let slot = slot_of(parts, &data);
    Ok(Located {
        disk: disk.name.clone(),
        sector_size: disk.sector_size,
        damaged_primary: disk.damaged_primary.clone(),
        data,
        hash: hash_part,
        var,
        slot,
    })
}

/// The slot letter of root partition `data`: `a` plus the number of root
/// partitions before it in the table.
pub fn slot_of(parts: &[Partition], data: &Partition) -> char {
    let before = parts
        .iter()
        .filter(|p| p.type_guid == gpt::types::ROOT_X86_64 && p.number < data.number)
        .count();
    (b'a' + before.min(25) as u8) as char
}

/// The environment stage 1 hands to stage 2: what it booted from.
pub fn handover(ms: u64, located: &Located, devices: &Devices) -> Vec<(&'static str, String)> {
    vec![
        (crate::boot_file::ENV_SLOT, located.slot.to_string()),
        (crate::boot_file::ENV_DISK, format!("/dev/{}", located.disk)),
        (crate::boot_file::ENV_ROOT, devices.data.clone()),
        (crate::boot_file::ENV_VERITY, devices.hash.clone()),
        (crate::boot_file::ENV_VAR, devices.var.clone()),
        (crate::boot_file::ENV_STAGE1_MS, ms.to_string()),
    ]
}

// ---------------------------------------------------------------------------
// What to mount where, and the switch into the new root: pure plans.

/// One step of mounting the root and switching into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// mount(2) `source` on `target`.
    Mount {
        source: String,
        target: String,
        fstype: &'static str,
        flags: MountFlags,
    },
    /// Read a whole file, so that dm-verity checks every block of it now
    /// and a tampered block shows up as one clear error, not as a crash of
    /// the program later.
    ReadThrough(String),
    /// Move a mount (MS_MOVE).
    Move {
        from: String,
        to: String,
    },
    /// Delete the initramfs's own files, which live in RAM.
    FreeInitramfs,
    Chdir(String),
    Chroot(String),
    /// Replace this process with the program, same arguments and environment.
    Exec(String),
}

fn mount_options(flags: MountFlags) -> String {
    let mut opts = vec![if flags.contains(MountFlags::RDONLY) {
        "ro"
    } else {
        "rw"
    }];
    for (flag, name) in [
        (MountFlags::NOATIME, "noatime"),
        (MountFlags::NOSUID, "nosuid"),
        (MountFlags::NODEV, "nodev"),
        (MountFlags::NOEXEC, "noexec"),
    ] {
        if flags.contains(flag) {
            opts.push(name);
        }
    }
    opts.join(",")
}

/// What the step does, as the words after "cannot" in an error.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Mount {
                source,
                target,
                fstype,
                flags,
            } => write!(
                f,
                "mount {source} on {target} as {fstype} ({})",
                mount_options(*flags)
            ),
            Step::ReadThrough(path) => write!(f, "read {path}"),
            Step::Move { from, to } => write!(f, "move the mount {from} to {to}"),
            Step::FreeInitramfs => f.write_str("free the initramfs"),
            Step::Chdir(path) => write!(f, "change directory to {path}"),
            Step::Chroot(path) => write!(f, "change root to {path}"),
            Step::Exec(path) => write!(f, "execute stage 2 {path}"),
        }
    }
}

/// Mounts the verified root read-only on /sysroot, checks that stage 2
/// reads back through dm-verity, and mounts the state partition on
/// /sysroot/var (read-write, noatime; not nosuid or nodev, because
/// container images on it may need both).
pub fn mount_plan(root_dev: &str, var_dev: &str) -> Vec<Step> {
    let sysroot = crate::SYSROOT;
    vec![
        Step::Mount {
            source: root_dev.into(),
            target: sysroot.into(),
            fstype: "erofs",
            flags: MountFlags::RDONLY,
        },
        Step::ReadThrough(format!("{sysroot}{}", crate::STAGE2_PATH)),
        Step::Mount {
            source: var_dev.into(),
            target: format!("{sysroot}/var"),
            fstype: "ext4",
            flags: MountFlags::NOATIME,
        },
    ]
}

/// The line (after `carapace: `) for a disk whose table was read from the
/// backup GPT because the primary is damaged (`why`).
pub fn backup_gpt_line(disk: &str, why: &str) -> String {
    format!("primary GPT on /dev/{disk} is damaged ({why}): using the backup")
}

/// Moves the API filesystems into the new root (each with what is mounted
/// below it: efivarfs travels with /sys), frees the initramfs (after
/// the moves, so that nothing mounted is left on it), makes /sysroot the
/// root (the switch_root sequence: chdir, move it onto /, chroot into it)
/// and execs stage 2.
pub fn switch_plan() -> Vec<Step> {
    let sysroot = crate::SYSROOT;
    let mut steps: Vec<Step> = ["/dev", "/proc", "/sys"]
        .iter()
        .map(|api| Step::Move {
            from: (*api).into(),
            to: format!("{sysroot}{api}"),
        })
        .collect();
    steps.extend([
        Step::FreeInitramfs,
        Step::Chdir(sysroot.into()),
        Step::Move {
            from: ".".into(),
            to: "/".into(),
        },
        Step::Chroot(".".into()),
        Step::Chdir("/".into()),
        Step::Exec(crate::STAGE2_PATH.into()),
    ]);
    steps
}

/// Why a step may have failed, where the errno alone does not say it.
fn explain(step: &Step, err: &io::Error) -> String {
    use rustix::io::Errno;
    let verity =
        "a block of the root failed dm-verity verification: the root is tampered with or corrupt";
    match (step, Errno::from_io_error(err)) {
        (
            Step::Mount {
                fstype: "erofs", ..
            },
            Some(Errno::IO),
        )
        | (Step::ReadThrough(_) | Step::Exec(_), Some(Errno::IO)) => format!(" ({verity})"),
        (Step::Mount { fstype, .. }, Some(Errno::NODEV)) => {
            format!(" (the kernel has no {fstype} filesystem)")
        }
        (Step::Mount { fstype, source, .. }, Some(Errno::INVAL)) => {
            format!(" (no valid {fstype} filesystem on {source})")
        }
        (Step::Mount { .. }, Some(Errno::UCLEAN)) => " (the filesystem is corrupt)".into(),
        (Step::ReadThrough(_) | Step::Exec(_), Some(Errno::NOENT)) => {
            " (stage 2 is missing from the root)".into()
        }
        _ => String::new(),
    }
}

/// The line the boot benchmark and the tests read.
pub fn stage1_line(ms: u64, located: &Located, devices: &Devices, verity_dev: &str) -> String {
    format!(
        "stage 1 at {ms} ms: root {} on {} verified by {} as {verity_dev}, state {} on /var",
        located.data.unique_guid, devices.data, devices.hash, devices.var
    )
}

// ---------------------------------------------------------------------------
// The shell: syscalls.

/// The device nodes of the located partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices {
    pub data: String,
    pub hash: String,
    pub var: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Stage1Error {
    #[error("cannot mount {fstype} on {target}: {err}")]
    ApiMount {
        fstype: &'static str,
        target: &'static str,
        err: io::Error,
    },
    #[error("cannot read /proc/cmdline: {0}")]
    ProcCmdline(io::Error),
    #[error("{0}")]
    RootHash(#[from] CmdlineError),
    #[error("{error} (after waiting {waited_ms} ms)")]
    Locate { error: LocateError, waited_ms: u64 },
    #[error(
        "partition {number} of /dev/{disk} has no device: {why} (after waiting {waited_ms} ms)"
    )]
    PartitionDevice {
        disk: String,
        number: u32,
        why: String,
        waited_ms: u64,
    },
    #[error("cannot create the device node {path} ({major}:{minor}): {err}")]
    Node {
        path: String,
        major: u32,
        minor: u32,
        err: io::Error,
    },
    #[error("cannot read the verity superblock from {dev}: {err}")]
    ReadSuperblock { dev: String, err: io::Error },
    #[error("bad verity superblock on {dev}: {err}")]
    Superblock { dev: String, err: SuperblockError },
    #[error("verity superblock on {hash_dev} does not fit {data_dev}: {err}")]
    Fit {
        hash_dev: String,
        data_dev: String,
        err: FitError,
    },
    #[error("cannot build the verity table for {data_dev}: {err}")]
    Table { data_dev: String, err: TableError },
    #[error("cannot create the dm-verity device over {data_dev}: {err}")]
    Dm {
        data_dev: String,
        err: crate::dm::DmError,
    },
    #[error("cannot {step}: {err}{}", explain(.step, .err))]
    Step { step: Step, err: io::Error },
}

/// Runs stage 1: returns only by exec'ing stage 2; on any failure, reports
/// it in one line and powers off.
pub fn run() -> ! {
    match boot() {
        Ok(never) => match never {},
        Err(err) => crate::power::fail(&err.to_string()),
    }
}

fn boot() -> Result<std::convert::Infallible, Stage1Error> {
    mount_api_filesystems()?;
    if let Err(line) = mount_efivarfs() {
        crate::console::say(&line);
    }
    // From here on a failure knows whether this boot is on trial.
    crate::power::learn_boot_counting();
    let mut watchdog = crate::watchdog::arm_for_stage1();
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(Stage1Error::ProcCmdline)?;
    let hash = crate::cmdline::roothash(&cmdline)?;

    // The disk may still be probing: look again until it shows up.
    let start = Instant::now();
    let deadline = start + DISK_WAIT;
    let located = loop {
        let error = match locate(&hash, &scan_disks()) {
            Ok(located) => break located,
            Err(error) => error,
        };
        if !error.may_appear_later() || Instant::now() >= deadline {
            return Err(Stage1Error::Locate {
                error,
                waited_ms: start.elapsed().as_millis() as u64,
            });
        }
        std::thread::sleep(POLL);
    };
    if let Some(why) = &located.damaged_primary {
        crate::console::say(&backup_gpt_line(&located.disk, why));
    }
    let devices = Devices {
        data: partition_device(&located.disk, located.data.number, start, deadline)?,
        hash: partition_device(&located.disk, located.hash.number, start, deadline)?,
        var: partition_device(&located.disk, located.var.number, start, deadline)?,
    };

    let sb = read_superblock(&devices.hash)?;
    sb.check_fits(located.bytes(&located.data), located.bytes(&located.hash))
        .map_err(|err| Stage1Error::Fit {
            hash_dev: devices.hash.clone(),
            data_dev: devices.data.clone(),
            err,
        })?;
    let table = sb
        .table(&devices.data, &devices.hash, hash.as_bytes())
        .map_err(|err| Stage1Error::Table {
            data_dev: devices.data.clone(),
            err,
        })?;
    let target = crate::dm::Target {
        start: 0,
        sectors: table.sectors,
        kind: carapace_disk::verity::TARGET,
        params: &table.params,
    };
    let dm = crate::dm::create_read_only(VERITY_NAME, &target).map_err(|err| Stage1Error::Dm {
        data_dev: devices.data.clone(),
        err,
    })?;
    let verity_dev = dm.node();
    ensure_node(&verity_dev, dm.major, dm.minor)?;

    for step in mount_plan(&verity_dev, &devices.var) {
        execute(&step)?;
    }
    let ms = crate::clock::ms_since_boot();
    crate::console::say(&stage1_line(ms, &located, &devices, &verity_dev));
    for (key, value) in handover(ms, &located, &devices) {
        // Stage 1 runs on this one thread: nothing reads the environment
        // concurrently. Stage 2 inherits it through the exec.
        std::env::set_var(key, value);
    }
    for step in switch_plan() {
        if matches!(step, Step::Exec(_)) {
            // Closed without the magic character: it stays armed for stage 2.
            crate::watchdog::hand_over(watchdog.take());
        }
        execute(&step)?;
    }
    // `Exec` only comes back with an error, and it is the last step.
    Err(Stage1Error::Step {
        step: Step::Exec(crate::STAGE2_PATH.into()),
        err: io::Error::other("stage 2 returned"),
    })
}

fn mount_api_filesystems() -> Result<(), Stage1Error> {
    let api = MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV;
    for (source, target, fstype, flags) in [
        ("proc", "/proc", "proc", api),
        ("sysfs", "/sys", "sysfs", api),
        ("devtmpfs", "/dev", "devtmpfs", MountFlags::NOSUID),
    ] {
        let _ = std::fs::create_dir_all(target);
        match rustix::mount::mount(source, target, fstype, flags, None) {
            // Already mounted (by the kernel, for devtmpfs): fine.
            Ok(()) | Err(rustix::io::Errno::BUSY) => {}
            Err(e) => {
                return Err(Stage1Error::ApiMount {
                    fstype,
                    target,
                    err: e.into(),
                })
            }
        }
    }
    let _ = std::fs::create_dir_all(crate::SYSROOT);
    Ok(())
}

/// Mounts efivarfs on /sys/firmware/efi/efivars when the kernel was booted
/// by UEFI, so that the boot loader's variables say whether this boot is on
/// trial. Not fatal: the error is one console line (after `carapace: `),
/// and the boot then counts as not on trial.
fn mount_efivarfs() -> Result<(), String> {
    use crate::boot_counting::{EFIVARS_DIR, EFI_DIR};
    if !Path::new(EFI_DIR).exists() {
        return Ok(()); // Not booted by UEFI (e.g. QEMU -kernel): no variables.
    }
    let flags = MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV;
    match rustix::mount::mount("efivarfs", EFIVARS_DIR, "efivarfs", flags, None) {
        Ok(()) | Err(rustix::io::Errno::BUSY) => Ok(()),
        Err(e) => Err(format!(
            "cannot mount efivarfs on {EFIVARS_DIR}: {e}: a failed boot will power off, not reboot"
        )),
    }
}

/// Makes sure a block device node exists (devtmpfs normally creates it).
fn ensure_node(path: &str, major: u32, minor: u32) -> Result<(), Stage1Error> {
    // devtmpfs creates the node as the kernel registers the device; give
    // it a moment before making it ourselves.
    for _ in 0..20 {
        if Path::new(path).exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    match rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::BlockDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        rustix::fs::makedev(major, minor),
    ) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(Stage1Error::Node {
            path: path.into(),
            major,
            minor,
            err: e.into(),
        }),
    }
}

fn read_sysfs(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Reads the partition table of one whole disk.
fn read_disk(name: &str) -> Disk {
    let sector_size = read_sysfs(&format!("/sys/block/{name}/queue/logical_block_size"))
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(512);
    let node = format!("/dev/{name}");
    let table = (|| -> Result<gpt::Table, String> {
        if !Path::new(&node).exists() {
            let (major, minor) = read_sysfs(&format!("/sys/block/{name}/dev"))
                .as_deref()
                .and_then(parse_dev)
                .ok_or_else(|| "no device number in /sys/block".to_string())?;
            ensure_node(&node, major, minor).map_err(|e| e.to_string())?;
        }
        let mut file = std::fs::File::open(&node).map_err(|e| format!("cannot open: {e}"))?;
        gpt::read_with_fallback(&mut file, sector_size as usize).map_err(|e| e.to_string())
    })();
    let (table, damaged_primary) = match table {
        Ok(gpt::Table {
            partitions,
            source: gpt::TableSource::Backup { primary_error, .. },
            ..
        }) => (Ok(partitions), Some(primary_error.to_string())),
        Ok(table) => (Ok(table.partitions), None),
        Err(e) => (Err(e), None),
    };
    Disk {
        name: name.into(),
        sector_size,
        table,
        damaged_primary,
    }
}

/// Reads the partition tables of every whole disk in /sys/block, by name.
fn scan_disks() -> Vec<Disk> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_whole_disk(n))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.iter().map(|n| read_disk(n)).collect()
}

/// Waits until the kernel has registered partition `number` of `disk` and
/// returns its device node, creating the node if devtmpfs has not.
fn partition_device(
    disk: &str,
    number: u32,
    start: Instant,
    deadline: Instant,
) -> Result<String, Stage1Error> {
    let name = partition_node_name(disk, number);
    let sys = format!("/sys/block/{disk}/{name}");
    loop {
        let registered = read_sysfs(&format!("{sys}/partition"))
            .and_then(|p| p.trim().parse::<u32>().ok())
            == Some(number);
        let dev = read_sysfs(&format!("{sys}/dev"))
            .as_deref()
            .and_then(parse_dev);
        if let (true, Some((major, minor))) = (registered, dev) {
            let node = format!("/dev/{name}");
            ensure_node(&node, major, minor)?;
            return Ok(node);
        }
        if Instant::now() >= deadline {
            return Err(Stage1Error::PartitionDevice {
                disk: disk.into(),
                number,
                why: format!("the kernel did not register {sys}"),
                waited_ms: start.elapsed().as_millis() as u64,
            });
        }
        std::thread::sleep(POLL);
    }
}

fn read_superblock(dev: &str) -> Result<Superblock, Stage1Error> {
    use std::io::Read;
    let mut bytes = [0u8; carapace_disk::verity::SUPERBLOCK_SIZE];
    std::fs::File::open(dev)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|err| Stage1Error::ReadSuperblock {
            dev: dev.into(),
            err,
        })?;
    Superblock::parse(&bytes).map_err(|err| Stage1Error::Superblock {
        dev: dev.into(),
        err,
    })
}

fn execute(step: &Step) -> Result<(), Stage1Error> {
    let done: io::Result<()> = match step {
        Step::Mount {
            source,
            target,
            fstype,
            flags,
        } => rustix::mount::mount(source.as_str(), target.as_str(), *fstype, *flags, None)
            .map_err(io::Error::from),
        Step::ReadThrough(path) => std::fs::read(path).map(drop),
        Step::Move { from, to } => {
            rustix::mount::mount_move(from.as_str(), to.as_str()).map_err(io::Error::from)
        }
        Step::FreeInitramfs => free_initramfs(),
        Step::Chdir(path) => rustix::process::chdir(path.as_str()).map_err(io::Error::from),
        Step::Chroot(path) => rustix::process::chroot(path.as_str()).map_err(io::Error::from),
        Step::Exec(path) => {
            // Same argv[0] and arguments as the kernel gave /init; the
            // environment is inherited.
            let mut args = std::env::args_os();
            let argv0 = args.next().unwrap_or_else(|| "carapace-init".into());
            Err(std::process::Command::new(path)
                .arg0(argv0)
                .args(args)
                .exec())
        }
    };
    done.map_err(|err| Stage1Error::Step {
        step: step.clone(),
        err,
    })
}

/// `RAMFS_MAGIC` and `TMPFS_MAGIC` (include/uapi/linux/magic.h): the
/// filesystems an initramfs is unpacked into.
const INITRAMFS_MAGICS: [u64; 2] = [0x8584_58f6, 0x0102_1994];

/// Whether a statfs `f_type` is one of [`INITRAMFS_MAGICS`] (compared in
/// 32 bits: the field is signed on some architectures).
fn is_initramfs(f_type: u64) -> bool {
    INITRAMFS_MAGICS.contains(&(f_type & 0xffff_ffff))
}

/// Deletes the files of the initramfs, which live in RAM and are never
/// needed again, without crossing into any other mounted filesystem. Does
/// nothing if / is not a ramfs or tmpfs (so never harms a real root).
fn free_initramfs() -> io::Result<()> {
    let fs = rustix::fs::statfs("/")?;
    if !is_initramfs(fs.f_type as u64) {
        return Ok(());
    }
    let root_dev = std::fs::symlink_metadata("/")?.dev();
    remove_tree(Path::new("/"), root_dev);
    Ok(())
}

/// Best effort: what cannot be removed only costs memory.
fn remove_tree(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue; // A mount point: another filesystem.
        }
        if meta.is_dir() {
            remove_tree(&path, dev);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // Disks made by systemd-repart, as carapace-disk's tests read them
    // (crates/carapace-disk/testdata/make-fixtures.sh).
    const DISK_512: &[u8] =
        include_bytes!("../../crates/carapace-disk/testdata/repart-512.head.bin");
    const ROOT_HASH_512: &str =
        include_str!("../../crates/carapace-disk/testdata/repart-512.roothash");
    const DISK_4096: &[u8] =
        include_bytes!("../../crates/carapace-disk/testdata/repart-4096.head.bin");
    const ROOT_HASH_4096: &str =
        include_str!("../../crates/carapace-disk/testdata/repart-4096.roothash");
    const REPART_512_SB: &[u8] =
        include_bytes!("../../crates/carapace-disk/testdata/repart-512.verity-superblock.bin");
    const REPART_4096_SB: &[u8] =
        include_bytes!("../../crates/carapace-disk/testdata/repart-4096.verity-superblock.bin");

    fn disk(name: &str, sector_size: u64, bytes: &[u8]) -> Disk {
        Disk {
            name: name.into(),
            sector_size,
            table: gpt::parse(bytes, sector_size as usize).map_err(|e| e.to_string()),
            damaged_primary: None,
        }
    }

    /// A machine with an empty SATA disk and the repart-built disk on virtio.
    fn machine() -> Vec<Disk> {
        vec![disk("sda", 512, &[0u8; 1024]), disk("vda", 512, DISK_512)]
    }

    fn root_hash(hex: &str) -> RootHash {
        RootHash::from_hex(hex.trim()).expect("fixture root hash")
    }

    /// The root hash with one hex digit at `at` changed.
    fn altered(hex: &str, at: usize) -> RootHash {
        let mut hex = hex.trim().to_string();
        let new = if &hex[at..at + 1] == "0" { "1" } else { "0" };
        hex.replace_range(at..at + 1, new);
        root_hash(&hex)
    }

    #[test]
    fn finds_root_verity_and_var_on_a_disk_made_by_systemd_repart() {
        let located = locate(&root_hash(ROOT_HASH_512), &machine()).expect("located");
        assert_eq!(located.disk, "vda");
        assert_eq!(located.data.number, 2);
        assert_eq!(located.hash.number, 3);
        assert_eq!(located.var.number, 4);
        assert_eq!(located.bytes(&located.data), 8 << 20);
        assert_eq!(located.bytes(&located.hash), 1 << 20);
        assert_eq!(located.slot, 'a');
    }

    #[test]
    fn a_root_disk_read_from_its_backup_gpt_says_so_in_one_line() {
        let mut disks = machine();
        let why = gpt::GptError::NoSignature.to_string();
        disks[1].damaged_primary = Some(why.clone());
        let located = locate(&root_hash(ROOT_HASH_512), &disks).expect("located");
        assert_eq!(located.damaged_primary.as_deref(), Some(why.as_str()));
        assert_eq!(
            backup_gpt_line(&located.disk, &why),
            "primary GPT on /dev/vda is damaged (no GPT: no \"EFI PART\" signature at LBA 1): \
             using the backup"
        );
        let clean = locate(&root_hash(ROOT_HASH_512), &machine()).expect("located");
        assert_eq!(clean.damaged_primary, None);
    }

    #[test]
    fn the_second_root_partition_is_slot_b() {
        let disk = disk("vda", 512, DISK_512);
        let parts = disk.table.expect("table");
        let root = parts
            .iter()
            .find(|p| p.type_guid == gpt::types::ROOT_X86_64)
            .expect("a root partition")
            .clone();
        assert_eq!(slot_of(&parts, &root), 'a');
        let mut second = root.clone();
        second.number = root.number + 2;
        let mut both = parts.clone();
        both.push(second.clone());
        assert_eq!(slot_of(&both, &second), 'b');
        assert_eq!(slot_of(&both, &root), 'a', "the first stays a");
    }

    #[test]
    fn finds_them_on_a_disk_with_4096_byte_sectors_named_like_nvme() {
        let disks = [disk("nvme0n1", 4096, DISK_4096)];
        let located = locate(&root_hash(ROOT_HASH_4096), &disks).expect("located");
        assert_eq!(located.sector_size, 4096);
        assert_eq!(located.bytes(&located.data), 8 << 20);
        assert_eq!(
            partition_node_name(&located.disk, located.data.number),
            "nvme0n1p2"
        );
    }

    /// What stage 1 checks between locating and creating the device, with
    /// the superblocks systemd-repart wrote into those same disks.
    #[test]
    fn the_superblock_repart_wrote_fits_the_partitions_located_and_makes_a_table() {
        for (disks, hash, sb) in [
            (machine(), ROOT_HASH_512, REPART_512_SB),
            (
                vec![disk("vdb", 4096, DISK_4096)],
                ROOT_HASH_4096,
                REPART_4096_SB,
            ),
        ] {
            let hash = root_hash(hash);
            let located = locate(&hash, &disks).expect("located");
            let sb = Superblock::parse(sb).expect("superblock");
            sb.check_fits(located.bytes(&located.data), located.bytes(&located.hash))
                .expect("fits");
            let table = sb
                .table("/dev/vda2", "/dev/vda3", hash.as_bytes())
                .expect("table");
            assert_eq!(table.sectors * 512, located.bytes(&located.data));
            // A hash partition shrunk below the tree is refused.
            assert!(sb.check_fits(located.bytes(&located.data), 4096).is_err());
        }
    }

    #[test]
    fn a_root_hash_of_another_image_names_the_uuid_and_what_was_seen() {
        let hash = altered(ROOT_HASH_512, 0);
        let err = locate(&hash, &machine()).expect_err("not there");
        assert!(
            err.may_appear_later(),
            "the right disk may not be probed yet"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "root partition {} (the first half of roothash=) not found; disks seen: \
                 /dev/sda (no GPT: no \"EFI PART\" signature at LBA 1), \
                 /dev/vda (GPT with 4 partitions)",
                Guid(hash.data_partition_uuid())
            )
        );
    }

    #[test]
    fn a_wrong_second_half_is_a_missing_verity_partition_and_final() {
        let hash = altered(ROOT_HASH_512, 63);
        let err = locate(&hash, &machine()).expect_err("no hash partition");
        assert!(!err.may_appear_later());
        assert_eq!(
            err.to_string(),
            format!(
                "verity partition {} (the second half of roothash=) not found on /dev/vda \
                 (its GPT has 4 partitions)",
                Guid(hash.hash_partition_uuid())
            )
        );
    }

    #[test]
    fn a_partition_of_the_wrong_type_is_refused() {
        let mut disks = machine();
        if let Ok(parts) = &mut disks[1].table {
            parts[1].type_guid = gpt::types::VAR;
        }
        let err = locate(&root_hash(ROOT_HASH_512), &disks).expect_err("wrong type");
        assert!(matches!(err, LocateError::WrongType { what: "root", .. }));
        assert!(err.to_string().contains(&format!(
            "has type {}, not {}",
            gpt::types::VAR,
            gpt::types::ROOT_X86_64
        )));
    }

    #[test]
    fn a_disk_without_state_partition_is_refused() {
        let mut disks = machine();
        if let Ok(parts) = &mut disks[1].table {
            parts.retain(|p| p.type_guid != gpt::types::VAR);
        }
        let err = locate(&root_hash(ROOT_HASH_512), &disks).expect_err("no var");
        assert_eq!(err, LocateError::NoVar { disk: "vda".into() });
        assert_eq!(
            err.to_string(),
            "no state partition (type 4d21b016-b534-45c2-a9fb-5c16e091fd2d) on /dev/vda"
        );
    }

    #[test]
    fn the_same_root_on_two_disks_is_refused() {
        let mut disks = machine();
        disks.push(disk("vdb", 512, DISK_512));
        let err = locate(&root_hash(ROOT_HASH_512), &disks).expect_err("ambiguous");
        assert!(!err.may_appear_later());
        assert!(err
            .to_string()
            .contains("on more than one disk (/dev/vda, /dev/vdb)"));
    }

    #[test]
    fn no_disks_at_all_says_so() {
        let err = locate(&root_hash(ROOT_HASH_512), &[]).expect_err("nothing");
        assert!(err
            .to_string()
            .ends_with("not found; no disks seen in /sys/block"));
    }

    #[test]
    fn only_whole_disks_are_scanned() {
        for yes in [
            "vda", "vdaa", "sda", "sdb", "xvda", "nvme0n1", "nvme12n3", "mmcblk0",
        ] {
            assert!(is_whole_disk(yes), "{yes}");
        }
        for no in [
            "loop0",
            "ram0",
            "zram0",
            "dm-0",
            "md0",
            "sr0",
            "nbd0",
            "vda2",
            "sda1",
            "nvme0c0n1",
            "nvme0n1p1",
            "mmcblk0boot0",
            "mmcblk0rpmb",
            "mmcblk0p1",
            "vd",
            "nvme",
        ] {
            assert!(!is_whole_disk(no), "{no}");
        }
    }

    #[test]
    fn sysfs_dev_files_give_major_and_minor() {
        assert_eq!(parse_dev("259:3\n"), Some((259, 3)));
        assert_eq!(parse_dev("259"), None);
        assert_eq!(parse_dev("a:b"), None);
    }

    #[test]
    fn the_root_is_mounted_read_only_before_stage_2_is_read_and_var_is_mounted() {
        let plan = mount_plan("/dev/dm-0", "/dev/vda4");
        let words: Vec<String> = plan.iter().map(Step::to_string).collect();
        assert_eq!(
            words,
            [
                "mount /dev/dm-0 on /sysroot as erofs (ro)",
                "read /sysroot/usr/lib/carapace/carapace-init",
                "mount /dev/vda4 on /sysroot/var as ext4 (rw,noatime)",
            ]
        );
    }

    #[test]
    fn the_switch_moves_the_api_filesystems_before_freeing_the_initramfs_and_execs_last() {
        let words: Vec<String> = switch_plan().iter().map(Step::to_string).collect();
        assert_eq!(
            words,
            [
                "move the mount /dev to /sysroot/dev",
                "move the mount /proc to /sysroot/proc",
                "move the mount /sys to /sysroot/sys",
                "free the initramfs",
                "change directory to /sysroot",
                "move the mount . to /",
                "change root to .",
                "change directory to /",
                "execute stage 2 /usr/lib/carapace/carapace-init",
            ]
        );
    }

    #[test]
    fn a_tampered_root_is_named_as_such() {
        let eio = || io::Error::from(rustix::io::Errno::IO);
        let plan = mount_plan("/dev/dm-0", "/dev/vda4");
        for step in [&plan[0], &plan[1], &Step::Exec(crate::STAGE2_PATH.into())] {
            let msg = Stage1Error::Step {
                step: step.clone(),
                err: eio(),
            }
            .to_string();
            assert!(
                msg.ends_with("(a block of the root failed dm-verity verification: the root is tampered with or corrupt)"),
                "{msg}"
            );
            assert!(msg.starts_with(&format!("cannot {step}: ")), "{msg}");
        }
        let msg = Stage1Error::Step {
            step: plan[2].clone(),
            err: io::Error::from(rustix::io::Errno::INVAL),
        }
        .to_string();
        assert!(
            msg.starts_with("cannot mount /dev/vda4 on /sysroot/var as ext4 (rw,noatime): ")
                && msg.ends_with(" (no valid ext4 filesystem on /dev/vda4)"),
            "{msg}"
        );
        let msg = Stage1Error::Step {
            step: Step::Exec("/x".into()),
            err: io::Error::from(rustix::io::Errno::NOENT),
        }
        .to_string();
        assert!(msg.ends_with("(stage 2 is missing from the root)"), "{msg}");
    }

    #[test]
    fn the_stage_1_line_has_what_the_benchmark_reads() {
        let located = locate(&root_hash(ROOT_HASH_512), &machine()).expect("located");
        let devices = Devices {
            data: "/dev/vda2".into(),
            hash: "/dev/vda3".into(),
            var: "/dev/vda4".into(),
        };
        let line = stage1_line(812, &located, &devices, "/dev/dm-0");
        let uuid = &ROOT_HASH_512.trim()[..32];
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            &uuid[..8],
            &uuid[8..12],
            &uuid[12..16],
            &uuid[16..20],
            &uuid[20..]
        );
        assert_eq!(
            line,
            format!(
                "stage 1 at 812 ms: root {uuid} on /dev/vda2 verified by /dev/vda3 as /dev/dm-0, \
                 state /dev/vda4 on /var"
            )
        );
    }

    #[test]
    fn failures_before_the_root_read_as_one_clear_line() {
        let e = Stage1Error::Locate {
            error: LocateError::NoVar { disk: "vda".into() },
            waited_ms: 12,
        };
        assert_eq!(
            e.to_string(),
            "no state partition (type 4d21b016-b534-45c2-a9fb-5c16e091fd2d) on /dev/vda (after waiting 12 ms)"
        );
        let e = Stage1Error::Superblock {
            dev: "/dev/vda3".into(),
            err: SuperblockError::NoData,
        };
        assert_eq!(
            e.to_string(),
            "bad verity superblock on /dev/vda3: verity superblock says the data has no blocks"
        );
        let e = Stage1Error::RootHash(CmdlineError::Missing);
        assert_eq!(e.to_string(), "no roothash= on the kernel command line");
        for e in [
            Stage1Error::ProcCmdline(io::Error::from(rustix::io::Errno::NOENT)),
            Stage1Error::Dm {
                data_dev: "/dev/vda2".into(),
                err: crate::dm::DmError::Name(String::new()),
            },
        ] {
            let msg = e.to_string();
            assert!(!msg.contains('\n') && msg.starts_with("cannot "), "{msg}");
        }
    }

    #[test]
    fn only_a_ramfs_or_tmpfs_root_counts_as_an_initramfs() {
        assert!(is_initramfs(0x8584_58f6), "ramfs");
        assert!(is_initramfs(0x0102_1994), "tmpfs");
        assert!(is_initramfs(0xffff_ffff_8584_58f6), "ramfs, sign-extended");
        assert!(!is_initramfs(0xef53), "ext4");
        assert!(!is_initramfs(0xe0f5_e1e2), "erofs");
        assert!(!is_initramfs(0x794c_7630), "overlayfs");
    }
}
