//! The EFI system partition, where systemd-boot finds one UKI per version in
//! `/EFI/Linux`. The daemon mounts it (vfat) only for the moment of a change
//! and unmounts it again, so a power cut at any other time finds it clean.
//! Every change is a whole file written under a temporary name, synced and
//! renamed, then the directory synced: a cut leaves the old or the new name.

use carapace_disk::pe::{self, PeError};
use carapace_disk::root_hash::RootHash;
use carapace_init::cmdline::CmdlineError;
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

/// Why a UKI names no root hash.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UkiError {
    /// Not a PE image, no `.cmdline` section, or not text.
    #[error("{0}")]
    Pe(#[from] PeError),
    /// No `roothash=`, more than one, or not a root hash: stage 1 would
    /// refuse to boot it.
    #[error("the UKI's command line {cmdline:?}: {error}")]
    Cmdline {
        cmdline: String,
        error: CmdlineError,
    },
}

/// The root hash a UKI's command line (its `.cmdline` section) names with
/// `roothash=`, read as stage 1 reads it: what ties a UKI to a slot.
pub fn uki_roothash(uki: &[u8]) -> Result<RootHash, UkiError> {
    let cmdline = pe::uki_cmdline(uki)?;
    carapace_init::cmdline::roothash(cmdline).map_err(|error| UkiError::Cmdline {
        cmdline: cmdline.trim_end().to_string(),
        error,
    })
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
        let cmdline = format!("console=ttyS0 roothash={hash} quiet\0");
        // Another section mentions a root hash too (the initrd holds our
        // own binary's strings): only .cmdline counts.
        let decoy = format!("roothash={}", "f".repeat(64));
        let uki = pe::minimal_image(&[
            (".linux", b"kernel"),
            (".initrd", decoy.as_bytes()),
            (".cmdline", cmdline.as_bytes()),
        ]);
        assert_eq!(uki_roothash(&uki).expect("read").to_hex(), hash);
    }

    #[test]
    fn a_uki_that_names_no_root_hash_says_why() {
        let no_cmdline = pe::minimal_image(&[(".linux", b"kernel")]);
        assert_eq!(
            uki_roothash(&no_cmdline),
            Err(UkiError::Pe(PeError::NoCmdline))
        );
        assert!(matches!(
            uki_roothash(b"MZ no command line"),
            Err(UkiError::Pe(PeError::NotPe(_)))
        ));
        // The root hash only elsewhere in the file is not the UKI's.
        let elsewhere = pe::minimal_image(&[
            (".cmdline", b"console=ttyS0\n"),
            (".initrd", format!("roothash={}", "f".repeat(64)).as_bytes()),
        ]);
        let err = uki_roothash(&elsewhere).expect_err("no roothash=");
        assert_eq!(
            err,
            UkiError::Cmdline {
                cmdline: "console=ttyS0".into(),
                error: CmdlineError::Missing
            }
        );
        assert_eq!(
            err.to_string(),
            "the UKI's command line \"console=ttyS0\": no roothash= on the kernel command line"
        );
        let twice = format!("roothash={0} roothash={0}", "ab".repeat(32));
        let twice = pe::minimal_image(&[(".cmdline", twice.as_bytes())]);
        assert!(matches!(
            uki_roothash(&twice),
            Err(UkiError::Cmdline {
                error: CmdlineError::Repeated,
                ..
            })
        ));
    }
}
