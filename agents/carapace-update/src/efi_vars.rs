//! systemd-boot's EFI variables, read and written through efivarfs (which
//! carapace-init mounts at /sys/firmware/efi/efivars). The daemon sets
//! `LoaderEntryOneShot` when it installs a version, so that the version
//! `apply` installed is the one the next boot tries, whatever order the boot
//! loader would give it (a downgrade, or a pre-release that systemd-boot's
//! version comparison ranks differently from semantic versioning).
//!
//! An efivarfs file holds 4 bytes of attributes (little endian) and the
//! value; systemd-boot's string values are UTF-16LE, NUL-terminated. Reading
//! them (the vendor GUID, the decoder) is `carapace_init::boot_counting`'s;
//! this module adds only the writing. It must
//! be written in one `write`; existing variables are usually immutable files
//! and get the flag cleared first.

use std::io::Write;
use std::path::{Path, PathBuf};

use carapace_init::boot_counting::{decode_string, efivarfs_name};

/// Where efivarfs is mounted (carapace-init mounts it there).
pub const DIR: &str = carapace_init::boot_counting::EFIVARS_DIR;
/// The entry id the next boot starts, once (systemd-boot deletes it on read).
pub const ONE_SHOT: &str = "LoaderEntryOneShot";
/// EFI_VARIABLE_NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
const ATTRIBUTES: u32 = 0x7;

/// The efivarfs file of systemd-boot's variable `name` under `dir`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(efivarfs_name(name))
}

/// The file content for string `value`: attributes, UTF-16LE, NUL.
pub fn encode_string(value: &str) -> Vec<u8> {
    let mut out = ATTRIBUTES.to_le_bytes().to_vec();
    for unit in value.encode_utf16().chain([0]) {
        out.extend_from_slice(&unit.to_le_bytes());
    }
    out
}

/// Reads the string variable `name`; None when it is not set.
pub fn read(dir: &Path, name: &str) -> std::io::Result<Option<String>> {
    match std::fs::read(path(dir, name)) {
        Ok(raw) => Ok(decode_string(&raw).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets the string variable `name` to `value` (non-volatile).
pub fn write(dir: &Path, name: &str, value: &str) -> std::io::Result<()> {
    let file = path(dir, name);
    if let Ok(existing) = std::fs::File::open(&file) {
        // efivarfs marks most existing variables immutable.
        if let Ok(flags) = rustix::fs::ioctl_getflags(&existing) {
            if flags.contains(rustix::fs::IFlags::IMMUTABLE) {
                rustix::fs::ioctl_setflags(&existing, flags - rustix::fs::IFlags::IMMUTABLE)?;
            }
        }
    }
    let bytes = encode_string(value);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        // efivarfs replaces the variable on write and cannot truncate.
        .truncate(false)
        .open(&file)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
    let n = f.write(&bytes)?;
    if n != bytes.len() {
        return Err(std::io::Error::other(format!(
            "{}: wrote {n} of {} bytes",
            file.display(),
            bytes.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_as_systemd_boot_stores_them() {
        let raw = encode_string("carapace_0.2.0+3.efi");
        assert_eq!(&raw[..4], &[7, 0, 0, 0]);
        assert_eq!(&raw[4..8], &[b'c', 0, b'a', 0]);
        assert_eq!(&raw[raw.len() - 2..], &[0, 0], "NUL-terminated");
        assert_eq!(
            decode_string(&raw).ok().as_deref(),
            Some("carapace_0.2.0+3.efi"),
            "what carapace-init decodes"
        );
        assert!(decode_string(&[7, 0]).is_err(), "no room for attributes");
    }

    #[test]
    fn a_variable_is_written_whole_and_read_back() {
        let dir = std::env::temp_dir().join(format!("carapace-efivars-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        assert_eq!(read(&dir, ONE_SHOT).expect("read"), None);
        write(&dir, ONE_SHOT, "carapace_0.1.0+3.efi").expect("write");
        assert_eq!(
            read(&dir, ONE_SHOT).expect("read").as_deref(),
            Some("carapace_0.1.0+3.efi")
        );
        assert!(path(&dir, ONE_SHOT)
            .to_string_lossy()
            .ends_with("LoaderEntryOneShot-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
