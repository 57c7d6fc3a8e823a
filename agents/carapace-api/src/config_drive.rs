//! User data for machines without fw_cfg (bare metal, clouds): a small FAT
//! filesystem labelled `CARAPACE` — a whole drive or a partition — holding
//! `user-data.toml`. The node finds it by the volume label in the FAT boot
//! sector, mounts it read-only for the moment of reading, and unmounts it.
//!
//! Make one: `mkfs.vfat -n CARAPACE drive.img && mcopy -i drive.img user-data.toml ::`.

use std::path::Path;

/// The volume label that marks a config drive.
pub const LABEL: &str = "CARAPACE";
/// The file read from it.
pub const FILE: &str = "user-data.toml";
/// Where it is mounted while being read.
pub const MOUNT_POINT: &str = "/run/carapace/config-drive";
/// The most user data read, in bytes.
pub const MAX_BYTES: u64 = 1 << 20;

/// The volume label of a FAT boot sector, if `sector` is one (FAT12/16 keep
/// it at offset 43, FAT32 at 71, each followed by the type name).
pub fn fat_label(sector: &[u8]) -> Option<String> {
    if sector.len() < 512 || sector[510..512] != [0x55, 0xaa] {
        return None;
    }
    let label_at = if &sector[82..87] == b"FAT32" {
        71
    } else if &sector[54..57] == b"FAT" {
        43
    } else {
        return None;
    };
    let label = String::from_utf8_lossy(&sector[label_at..label_at + 11]);
    Some(label.trim_end().to_string())
}

fn first_sector(dev: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0u8; 512];
    std::fs::File::open(dev).ok()?.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// The block devices whose filesystem is labelled [`LABEL`].
pub fn find() -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir("/sys/class/block")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| !name.starts_with("dm-") && !name.starts_with("loop"))
        .map(|name| format!("/dev/{name}"))
        .filter(|dev| {
            first_sector(Path::new(dev))
                .and_then(|s| fat_label(&s))
                .is_some_and(|l| l == LABEL)
        })
        .collect();
    found.sort();
    found
}

/// Reads `user-data.toml` from the first config drive, if there is one.
/// Errors (a drive that does not mount, no such file) are reported as text.
pub fn read() -> Option<Result<Vec<u8>, String>> {
    let dev = find().into_iter().next()?;
    Some(read_from(&dev))
}

fn read_from(dev: &str) -> Result<Vec<u8>, String> {
    use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};
    use std::io::Read;
    std::fs::create_dir_all(MOUNT_POINT).map_err(|e| format!("{MOUNT_POINT}: {e}"))?;
    let flags = MountFlags::RDONLY | MountFlags::NOEXEC | MountFlags::NOSUID | MountFlags::NODEV;
    mount(dev, MOUNT_POINT, "vfat", flags, None)
        .map_err(|e| format!("cannot mount the config drive {dev}: {e}"))?;
    let path = Path::new(MOUNT_POINT).join(FILE);
    let mut bytes = Vec::new();
    let read =
        std::fs::File::open(&path).and_then(|f| f.take(MAX_BYTES + 1).read_to_end(&mut bytes));
    let _ = unmount(MOUNT_POINT, UnmountFlags::empty());
    let _ = std::fs::remove_dir(MOUNT_POINT);
    match read {
        Ok(_) if bytes.len() as u64 > MAX_BYTES => Err(format!(
            "{FILE} on the config drive {dev} is larger than {MAX_BYTES} bytes"
        )),
        Ok(_) => Ok(bytes),
        Err(e) => Err(format!("cannot read {FILE} on the config drive {dev}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot_sector(fat32: bool, label: &[u8; 11]) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        s[510] = 0x55;
        s[511] = 0xaa;
        if fat32 {
            s[71..82].copy_from_slice(label);
            s[82..90].copy_from_slice(b"FAT32   ");
        } else {
            s[43..54].copy_from_slice(label);
            s[54..62].copy_from_slice(b"FAT16   ");
        }
        s
    }

    #[test]
    fn the_label_is_read_from_fat16_and_fat32_boot_sectors() {
        assert_eq!(
            fat_label(&boot_sector(false, b"CARAPACE   ")).as_deref(),
            Some("CARAPACE")
        );
        assert_eq!(
            fat_label(&boot_sector(true, b"CARAPACE   ")).as_deref(),
            Some("CARAPACE")
        );
        assert_eq!(
            fat_label(&boot_sector(false, b"OTHER      ")).as_deref(),
            Some("OTHER")
        );
    }

    #[test]
    fn anything_else_has_no_label() {
        let mut not_fat = boot_sector(false, b"CARAPACE   ");
        not_fat[54..57].copy_from_slice(b"EXT");
        assert_eq!(fat_label(&not_fat), None);
        let mut no_signature = boot_sector(false, b"CARAPACE   ");
        no_signature[511] = 0;
        assert_eq!(fat_label(&no_signature), None);
        assert_eq!(fat_label(&[0u8; 100]), None, "too short");
    }
}
