//! The EFI system partition, where systemd-boot finds one UKI per version in
//! `/EFI/Linux`. The daemon mounts it (vfat) only for the moment of a change
//! and unmounts it again, so a power cut at any other time finds it clean.
//! Every change is a whole file written under a temporary name, synced and
//! renamed, then the directory synced: a cut leaves the old or the new name.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Where the ESP is mounted while it is changed.
pub const MOUNT_POINT: &str = "/run/carapace/esp";
/// The UKI directory inside it.
pub const LINUX_DIR: &str = "EFI/Linux";

/// The ESP of the boot disk.
#[derive(Debug, Clone)]
pub struct Esp {
    pub device: String,
    pub mount_point: PathBuf,
}

impl Esp {
    /// Mounts the ESP, runs `f` on its `/EFI/Linux`, and unmounts it again
    /// (also when `f` fails).
    pub fn with_linux_dir<T>(
        &self,
        f: impl FnOnce(&Path) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};
        std::fs::create_dir_all(&self.mount_point)?;
        let flags = MountFlags::NOEXEC | MountFlags::NOSUID | MountFlags::NODEV;
        mount(self.device.as_str(), &self.mount_point, "vfat", flags, None).map_err(|e| {
            std::io::Error::other(format!("cannot mount the ESP {}: {e}", self.device))
        })?;
        let dir = self.mount_point.join(LINUX_DIR);
        let result = std::fs::create_dir_all(&dir).and_then(|()| f(&dir));
        rustix::fs::sync();
        let unmounted = unmount(&self.mount_point, UnmountFlags::empty());
        let result = result?;
        unmounted.map_err(|e| std::io::Error::other(format!("cannot unmount the ESP: {e}")))?;
        Ok(result)
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The file names in `dir`.
pub fn list(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        if let Ok(name) = entry?.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Writes `source` as `dir/name`: a temporary file first, synced, then
/// renamed. Returns the bytes written.
pub fn install(dir: &Path, name: &str, mut source: impl Read) -> std::io::Result<u64> {
    let tmp = dir.join(format!("{name}.tmp"));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        let n = std::io::copy(&mut source, &mut f)?;
        f.flush()?;
        f.sync_all()?;
        Ok::<u64, std::io::Error>(n)
    })();
    let n = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)?;
    Ok(n)
}

/// Renames `from` to `to` in `dir` and syncs the directory.
pub fn rename(dir: &Path, from: &str, to: &str) -> std::io::Result<()> {
    std::fs::rename(dir.join(from), dir.join(to))?;
    sync_dir(dir)
}

/// Removes `names` from `dir` (ones already gone are fine) and syncs it.
pub fn remove(dir: &Path, names: &[String]) -> std::io::Result<()> {
    for name in names {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    sync_dir(dir)
}

/// The root hash a UKI's command line names (`roothash=<64 hex>`), found by
/// scanning the file: what ties a UKI to a slot.
pub fn uki_roothash(mut uki: impl Read) -> std::io::Result<Option<String>> {
    let mut bytes = Vec::new();
    uki.read_to_end(&mut bytes)?;
    let needle = b"roothash=";
    Ok(bytes
        .windows(needle.len() + 64)
        .find(|w| w.starts_with(needle) && w[needle.len()..].iter().all(u8::is_ascii_hexdigit))
        .map(|w| String::from_utf8_lossy(&w[needle.len()..]).to_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("carapace-esp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn install_rename_and_remove_leave_only_whole_files() {
        let d = dir("ops");
        let n = install(&d, "carapace_0.2.0+3.efi", &b"uki bytes"[..]).expect("installed");
        assert_eq!(n, 9);
        assert_eq!(list(&d).expect("list"), vec!["carapace_0.2.0+3.efi"]);
        rename(&d, "carapace_0.2.0+3.efi", "carapace_0.2.0.efi").expect("renamed");
        assert_eq!(
            std::fs::read(d.join("carapace_0.2.0.efi")).expect("read"),
            b"uki bytes"
        );
        remove(&d, &["carapace_0.2.0.efi".into(), "never-there.efi".into()]).expect("removed");
        assert!(list(&d).expect("list").is_empty());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_failed_install_leaves_nothing() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("the download broke"))
            }
        }
        let d = dir("failing");
        assert!(install(&d, "carapace_0.2.0+3.efi", Failing).is_err());
        assert!(list(&d).expect("list").is_empty(), "no temporary file left");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn the_root_hash_is_read_from_the_uki_command_line() {
        let hash = "0123456789abcdef".repeat(4);
        let uki = format!("MZ\0\0.cmdline\0console=ttyS0 roothash={hash} quiet\0");
        assert_eq!(
            uki_roothash(uki.as_bytes()).expect("read"),
            Some(hash.clone())
        );
        assert_eq!(
            uki_roothash(&b"MZ no command line"[..]).expect("read"),
            None
        );
    }
}
