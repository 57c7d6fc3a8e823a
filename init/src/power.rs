//! The last thing PID 1 does: sync and ask the kernel to power off or
//! reboot; and, after a fatal boot error, which of the two.
//!
//! A fatal error ([`fail`], and the panic hook through [`give_up`]) reboots
//! when this is a counted trial boot that a reboot can help (the boot
//! loader counts the try and eventually falls back to the previous
//! version), and powers off otherwise (see [`crate::boot_counting`]). The
//! boot loader's variables are read once, early, by [`learn_boot_counting`]
//! (stage 1 after mounting efivarfs, stage 2 at its start) and kept, so the
//! failure path does no fresh I/O when it can avoid it.
//!
//! Console lines (after `carapace: `), after `boot failed: <msg>` or an
//! `internal error: …`:
//! - `rebooting: <entry> is on trial (<n> tries left)`
//! - `rebooting: <entry> is on trial with no tries left: the boot loader falls back to <entry>`
//! - `powering off` (not a trial boot), or `powering off: <entry> is on
//!   trial with no tries left and there is no other version to fall back to`

use crate::boot_counting::{self, AfterFailure, LoaderState};
use rustix::system::RebootCommand;
use std::path::Path;
use std::sync::OnceLock;

/// What the machine does at the end of a shutdown (the contract's: the
/// same action a power signal asks for).
pub use carapace_contract::power::PowerAction;

/// Syncs filesystems and powers off or reboots. Never returns: if the kernel
/// refuses (we are not PID 1, or lack the capability), it says so and halts
/// the calling thread forever rather than exiting, since PID 1 exiting panics
/// the kernel.
pub fn final_action(action: PowerAction) -> ! {
    rustix::fs::sync();
    let cmd = match action {
        PowerAction::PowerOff => RebootCommand::PowerOff,
        PowerAction::Reboot => RebootCommand::Restart,
    };
    if let Err(err) = rustix::system::reboot(cmd) {
        crate::console::say(&format!("cannot {}: {err}", action.as_str()));
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// What the boot loader said about this boot, once learnt.
static LOADER_STATE: OnceLock<LoaderState> = OnceLock::new();

/// Reads systemd-boot's variables from an efivarfs directory (normally
/// [`boot_counting::EFIVARS_DIR`]). A variable that is absent, unreadable
/// or malformed counts as absent; no directory at all (no UEFI, or
/// efivarfs not mounted) is the default state: not on trial.
pub fn read_loader_state(efivars: &Path) -> LoaderState {
    let read = |variable: &str| std::fs::read(efivars.join(boot_counting::efivarfs_name(variable)));
    LoaderState {
        boot_count_path: read(boot_counting::BOOT_COUNT_PATH)
            .ok()
            .and_then(|b| boot_counting::decode_string(&b).ok()),
        entry_selected: read(boot_counting::ENTRY_SELECTED)
            .ok()
            .and_then(|b| boot_counting::decode_string(&b).ok()),
        entries: read(boot_counting::ENTRIES)
            .ok()
            .and_then(|b| boot_counting::decode_list(&b).ok()),
    }
}

/// Reads the boot loader's variables from /sys/firmware/efi/efivars once
/// and keeps them for [`fail`] and [`give_up`]; later calls return what
/// was kept. Call it early: after /sys (and efivarfs) is mounted.
pub fn learn_boot_counting() -> &'static LoaderState {
    LOADER_STATE.get_or_init(|| read_loader_state(Path::new(boot_counting::EFIVARS_DIR)))
}

/// What a fatal error does now. Never initialises the kept state (a panic
/// inside that initialisation must not wait on itself): if it was not
/// learnt yet, the variables are read without keeping them.
pub fn after_failure() -> AfterFailure {
    match LOADER_STATE.get() {
        Some(state) => boot_counting::after_failure(state),
        None => {
            boot_counting::after_failure(&read_loader_state(Path::new(boot_counting::EFIVARS_DIR)))
        }
    }
}

/// Says what happens next and does it: reboots a trial boot that a reboot
/// can help, powers off anything else. For the panic hook and [`fail`].
pub fn give_up() -> ! {
    let decision = after_failure();
    crate::console::say(&decision.to_string());
    match decision {
        AfterFailure::Reboot(_) => final_action(PowerAction::Reboot),
        AfterFailure::PowerOff(_) => final_action(PowerAction::PowerOff),
    }
}

/// Reports why the boot cannot go on (`carapace: boot failed: <msg>`),
/// then reboots or powers off as [`give_up`] decides.
pub fn fail(msg: &str) -> ! {
    crate::console::say(&format!("boot failed: {msg}"));
    give_up()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch efivarfs directory, removed when dropped.
    struct Dir(std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn efivar(strings: &[&str]) -> Vec<u8> {
        let mut file = vec![0x06, 0, 0, 0];
        for s in strings {
            for unit in s.encode_utf16().chain([0]) {
                file.extend_from_slice(&unit.to_le_bytes());
            }
        }
        file
    }

    #[test]
    fn the_loader_state_is_read_from_efivarfs_files() {
        let dir =
            Dir(std::env::temp_dir().join(format!("carapace-efivars-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).expect("dir");
        let write = |var: &str, bytes: &[u8]| {
            std::fs::write(dir.0.join(boot_counting::efivarfs_name(var)), bytes).expect("write")
        };
        write(
            boot_counting::BOOT_COUNT_PATH,
            &efivar(&[r"\EFI\Linux\carapace_0.2.0+2-1.efi"]),
        );
        write(
            boot_counting::ENTRY_SELECTED,
            &efivar(&["carapace_0.2.0+3.efi"]),
        );
        write(
            boot_counting::ENTRIES,
            &efivar(&["carapace_0.2.0+3.efi", "carapace_0.1.0.efi"]),
        );
        let state = read_loader_state(&dir.0);
        assert_eq!(
            state,
            LoaderState {
                boot_count_path: Some(r"\EFI\Linux\carapace_0.2.0+2-1.efi".into()),
                entry_selected: Some("carapace_0.2.0+3.efi".into()),
                entries: Some(vec![
                    "carapace_0.2.0+3.efi".into(),
                    "carapace_0.1.0.efi".into()
                ]),
            }
        );
        // A malformed variable counts as absent.
        write(boot_counting::BOOT_COUNT_PATH, b"\x06\x00");
        assert_eq!(read_loader_state(&dir.0).boot_count_path, None);
        // No efivarfs at all: not on trial.
        assert_eq!(
            read_loader_state(&dir.0.join("missing")),
            LoaderState::default()
        );
    }
}
