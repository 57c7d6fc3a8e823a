//! Stage 1: carapace-init as `/init` in the initrd. It trusts only the kernel
//! command line (inside the signed UKI) and what it can verify against it:
//! `roothash=` names the root partition (first 128 bits, as its partition
//! UUID) and its verity partition (last 128 bits); dm-verity then checks every
//! block of the root against the hash. Any failure is one line on the console
//! and a power-off: never a shell, never a hang.

use crate::cmdline::RootHash;
use crate::console::say;
use crate::gpt::{self, Guid, Partition};
use crate::verity::Superblock;
use rustix::mount::{mount, mount_move, MountFlags};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long stage 1 waits for the disk holding the root to appear.
const DISK_WAIT: Duration = Duration::from_secs(10);
/// The name of the dm-verity device of the root.
const VERITY_NAME: &str = "root";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocateError {
    #[error("root partition {uuid} (the first half of roothash=) not found on any disk ({seen})")]
    NoData { uuid: Guid, seen: String },
    #[error("verity partition {uuid} (the second half of roothash=) not found on {disk} ({seen})")]
    NoHash {
        uuid: Guid,
        disk: String,
        seen: String,
    },
    #[error("partition {uuid} on {disk} has type {actual}, not {expected}")]
    WrongType {
        uuid: Guid,
        disk: String,
        actual: Guid,
        expected: Guid,
    },
    #[error("no state partition (GPT type var {}) on {disk}", gpt::types::VAR)]
    NoVar { disk: String },
}

/// What stage 1 learned about one disk.
#[derive(Debug, Clone)]
pub struct DiskTable {
    /// The kernel's name, e.g. `vda`.
    pub disk: String,
    /// Its partition table, or why it could not be read.
    pub table: Result<Vec<Partition>, String>,
}

/// The partitions the boot uses, all on `disk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub disk: String,
    pub data: Partition,
    pub hash: Partition,
    pub var: Partition,
}

fn describe(disks: &[DiskTable]) -> String {
    if disks.is_empty() {
        return "no disks seen".into();
    }
    disks
        .iter()
        .map(|d| match &d.table {
            Ok(p) => format!("/dev/{}: GPT with {} partitions", d.disk, p.len()),
            Err(e) => format!("/dev/{}: {e}", d.disk),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Finds the root, verity and state partitions that `hash` names.
pub fn locate(hash: &RootHash, disks: &[DiskTable]) -> Result<Located, LocateError> {
    let data_uuid = Guid(hash.data_partition_uuid());
    let hash_uuid = Guid(hash.hash_partition_uuid());
    let (disk, parts) = disks
        .iter()
        .find_map(|d| {
            let parts = d.table.as_ref().ok()?;
            gpt::partition_by_uuid(parts, &data_uuid).map(|_| (d.disk.clone(), parts))
        })
        .ok_or_else(|| LocateError::NoData {
            uuid: data_uuid,
            seen: describe(disks),
        })?;
    let data = gpt::partition_by_uuid(parts, &data_uuid)
        .cloned()
        .ok_or_else(|| LocateError::NoData {
            uuid: data_uuid,
            seen: describe(disks),
        })?;
    let hash_part = gpt::partition_by_uuid(parts, &hash_uuid)
        .cloned()
        .ok_or_else(|| LocateError::NoHash {
            uuid: hash_uuid,
            disk: format!("/dev/{disk}"),
            seen: describe(disks),
        })?;
    for (p, expected) in [
        (&data, gpt::types::ROOT_X86_64),
        (&hash_part, gpt::types::ROOT_VERITY_X86_64),
    ] {
        if p.type_guid != expected {
            return Err(LocateError::WrongType {
                uuid: p.unique_guid,
                disk: format!("/dev/{disk}"),
                actual: p.type_guid,
                expected,
            });
        }
    }
    let var = gpt::partitions_by_type(parts, gpt::types::VAR)
        .next()
        .cloned()
        .ok_or_else(|| LocateError::NoVar {
            disk: format!("/dev/{disk}"),
        })?;
    Ok(Located {
        disk,
        data,
        hash: hash_part,
        var,
    })
}

/// Whole disks that may hold the root: virtio, SCSI/SATA, NVMe, MMC.
pub fn is_candidate_disk(name: &str) -> bool {
    ["vd", "sd", "nvme", "mmcblk", "xvd", "hd"]
        .iter()
        .any(|p| name.starts_with(p))
}

fn read_exact_at(path: &str, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

fn read_table(disk: &str) -> Result<Vec<Partition>, String> {
    let sector = std::fs::read_to_string(format!("/sys/block/{disk}/queue/logical_block_size"))
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(512);
    let dev = format!("/dev/{disk}");
    let head = read_exact_at(&dev, 0, 2 * sector).map_err(|e| format!("cannot read: {e}"))?;
    let (off, len) = gpt::entries_location(&head, sector).map_err(|e| e.to_string())?;
    let entries =
        read_exact_at(&dev, off, len).map_err(|e| format!("cannot read the GPT entries: {e}"))?;
    gpt::parse(&head, &entries, sector).map_err(|e| e.to_string())
}

fn scan_disks() -> Vec<DiskTable> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_candidate_disk(n))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .map(|disk| DiskTable {
            table: read_table(&disk),
            disk,
        })
        .collect()
}

/// The device node of partition `number` of `disk` (vda2, nvme0n1p2, …),
/// found through sysfs.
fn partition_device(disk: &str, number: u32) -> Option<String> {
    let dir = std::fs::read_dir(format!("/sys/block/{disk}")).ok()?;
    for entry in dir.flatten() {
        let name = entry.file_name().into_string().ok()?;
        let part = std::fs::read_to_string(entry.path().join("partition")).ok();
        if part.and_then(|p| p.trim().parse::<u32>().ok()) == Some(number) {
            return Some(format!("/dev/{name}"));
        }
    }
    None
}

/// Waits for the device node of a partition to show up.
fn wait_partition_device(disk: &str, number: u32, deadline: Instant) -> Result<String, String> {
    loop {
        if let Some(dev) = partition_device(disk, number) {
            if Path::new(&dev).exists() {
                return Ok(dev);
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "partition {number} of /dev/{disk} has no device node"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mount_api_filesystems() -> Result<(), String> {
    let api = MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV;
    for (src, target, fstype, flags) in [
        ("proc", "/proc", "proc", api),
        ("sysfs", "/sys", "sysfs", api),
        ("devtmpfs", "/dev", "devtmpfs", MountFlags::NOSUID),
    ] {
        match mount(src, target, fstype, flags, None) {
            Ok(()) | Err(rustix::io::Errno::BUSY) => {}
            Err(e) => return Err(format!("cannot mount {fstype} on {target}: {e}")),
        }
    }
    Ok(())
}

/// Reads a whole file, so that a block dm-verity rejects shows up here, as a
/// clear error, and not later as a crash of the program it belongs to.
fn read_through(path: &str) -> Result<(), String> {
    std::fs::read(path).map(|_| ()).map_err(|e| {
        if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) {
            format!("cannot read {path}: {e}: a block of the root failed dm-verity verification (tampered or corrupted root)")
        } else {
            format!("cannot read {path}: {e}")
        }
    })
}

/// Removes the initrd's files (they live in RAM) without crossing into other
/// filesystems, so the memory is returned once we switched root.
fn free_initramfs(dir: &Path, root_dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != root_dev {
            continue;
        }
        if meta.is_dir() {
            free_initramfs(&path, root_dev);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn boot() -> Result<std::convert::Infallible, String> {
    mount_api_filesystems()?;
    say(&format!("stage 1 at {} ms", crate::clock::ms_since_boot()));
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("cannot read /proc/cmdline: {e}"))?;
    let hash = crate::cmdline::roothash(&cmdline).map_err(|e| e.to_string())?;

    // The disk may still be probing: look again until it shows up.
    let deadline = Instant::now() + DISK_WAIT;
    let located = loop {
        let disks = scan_disks();
        match locate(&hash, &disks) {
            Ok(l) => break l,
            Err(e) if Instant::now() > deadline => return Err(e.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let data_dev = wait_partition_device(&located.disk, located.data.number, deadline)?;
    let hash_dev = wait_partition_device(&located.disk, located.hash.number, deadline)?;
    let var_dev = wait_partition_device(&located.disk, located.var.number, deadline)?;

    let sb_bytes = read_exact_at(&hash_dev, 0, 512)
        .map_err(|e| format!("cannot read the verity superblock on {hash_dev}: {e}"))?;
    let sb = Superblock::parse(&sb_bytes)
        .map_err(|e| format!("verity superblock on {hash_dev}: {e}"))?;
    let params = sb.table_params(&data_dev, &hash_dev, hash.as_bytes());
    let verity_dev = crate::dm::create_device(VERITY_NAME, "verity", sb.data_sectors(), &params)
        .map_err(|e| format!("cannot create the dm-verity device for {data_dev}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while !Path::new(&verity_dev).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }

    let sysroot = crate::SYSROOT;
    mount(
        verity_dev.as_str(),
        sysroot,
        "erofs",
        MountFlags::RDONLY,
        None,
    )
    .map_err(|e| {
        format!("cannot mount {verity_dev} (verified {data_dev}) as erofs on {sysroot}: {e}")
    })?;
    let stage2 = format!("{sysroot}{}", crate::STAGE2_PATH);
    read_through(&stage2)?;
    let var = format!("{sysroot}/var");
    mount(
        var_dev.as_str(),
        var.as_str(),
        "ext4",
        MountFlags::NOATIME | MountFlags::NOSUID | MountFlags::NODEV,
        None,
    )
    .map_err(|e| format!("cannot mount the state partition {var_dev} as ext4 on /var: {e}"))?;
    say(&format!(
        "root {data_dev} verified by {hash_dev} as {verity_dev}, state {var_dev} on /var, at {} ms",
        crate::clock::ms_since_boot()
    ));

    for api in ["/dev", "/proc", "/sys"] {
        let target = format!("{sysroot}{api}");
        mount_move(api, target.as_str())
            .map_err(|e| format!("cannot move {api} to {target}: {e}"))?;
    }
    let root_dev = std::fs::symlink_metadata("/")
        .map(|m| m.dev())
        .map_err(|e| format!("cannot stat /: {e}"))?;
    free_initramfs(Path::new("/"), root_dev);
    rustix::process::chdir(sysroot).map_err(|e| format!("cannot enter {sysroot}: {e}"))?;
    mount_move(".", "/").map_err(|e| format!("cannot move {sysroot} to /: {e}"))?;
    rustix::process::chroot(".").map_err(|e| format!("cannot chroot into the new root: {e}"))?;
    rustix::process::chdir("/").map_err(|e| format!("cannot chdir to the new /: {e}"))?;
    let err = std::process::Command::new(crate::STAGE2_PATH)
        .arg0("carapace-init")
        .exec();
    Err(format!(
        "cannot start stage 2 {}: {err}",
        crate::STAGE2_PATH
    ))
}

/// Runs stage 1; only returns by exec'ing stage 2, else powers off.
pub fn run() -> ! {
    match boot() {
        Ok(never) => match never {},
        Err(msg) => crate::power::fail(&msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISK_HEAD: &[u8] = include_bytes!("../testdata/repart-disk-head.bin");
    const ROOT_HASH: &str = include_str!("../testdata/repart-disk-roothash.txt");

    fn fixture_disks() -> Vec<DiskTable> {
        let (off, len) = gpt::entries_location(DISK_HEAD, 512).expect("header");
        let parts = gpt::parse(DISK_HEAD, &DISK_HEAD[off as usize..off as usize + len], 512)
            .expect("table");
        vec![
            DiskTable {
                disk: "sda".into(),
                table: Err("no GPT signature at LBA 1".into()),
            },
            DiskTable {
                disk: "vda".into(),
                table: Ok(parts),
            },
        ]
    }

    #[test]
    fn finds_root_verity_and_var_on_a_repart_disk() {
        let hash = RootHash::from_hex(ROOT_HASH.trim()).expect("hash");
        let l = locate(&hash, &fixture_disks()).expect("located");
        assert_eq!(l.disk, "vda");
        assert_eq!(l.data.number, 2);
        assert_eq!(l.hash.number, 3);
        assert_eq!(l.var.number, 4);
    }

    #[test]
    fn a_wrong_hash_names_the_uuid_and_what_was_seen() {
        let mut hex = ROOT_HASH.trim().to_string();
        hex.replace_range(0..1, if hex.starts_with('0') { "1" } else { "0" });
        let hash = RootHash::from_hex(&hex).expect("hash");
        let err = locate(&hash, &fixture_disks()).expect_err("no such partition");
        let msg = err.to_string();
        assert!(msg.contains("not found on any disk"), "{msg}");
        assert!(
            msg.contains(&Guid(hash.data_partition_uuid()).to_string()),
            "{msg}"
        );
        assert!(msg.contains("/dev/vda: GPT with 4 partitions"), "{msg}");
        assert!(msg.contains("/dev/sda: no GPT signature"), "{msg}");
    }

    #[test]
    fn a_wrong_second_half_is_a_missing_verity_partition() {
        let mut hex = ROOT_HASH.trim().to_string();
        let last = hex.len() - 1;
        hex.replace_range(last.., if hex.ends_with('0') { "1" } else { "0" });
        let hash = RootHash::from_hex(&hex).expect("hash");
        let err = locate(&hash, &fixture_disks()).expect_err("no hash partition");
        assert!(matches!(err, LocateError::NoHash { .. }), "{err}");
    }

    #[test]
    fn a_disk_without_state_partition_is_refused() {
        let hash = RootHash::from_hex(ROOT_HASH.trim()).expect("hash");
        let mut disks = fixture_disks();
        if let Ok(parts) = &mut disks[1].table {
            parts.retain(|p| p.type_guid != gpt::types::VAR);
        }
        assert_eq!(
            locate(&hash, &disks),
            Err(LocateError::NoVar {
                disk: "/dev/vda".into()
            })
        );
    }

    #[test]
    fn no_disks_at_all_says_so() {
        let hash = RootHash::from_hex(ROOT_HASH.trim()).expect("hash");
        let err = locate(&hash, &[]).expect_err("nothing");
        assert!(err.to_string().contains("no disks seen"));
    }

    #[test]
    fn candidate_disks() {
        assert!(
            is_candidate_disk("vda") && is_candidate_disk("nvme0n1") && is_candidate_disk("sdb")
        );
        assert!(
            !is_candidate_disk("loop0") && !is_candidate_disk("dm-0") && !is_candidate_disk("ram0")
        );
    }
}
