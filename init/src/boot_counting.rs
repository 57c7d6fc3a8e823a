//! systemd-boot's boot counting, as its EFI variables describe this boot,
//! and what a fatal boot error does about it: reboot, so that a failed
//! trial boot counts a try and the boot loader can fall back, or power off.
//!
//! A new version's UKI is installed as `carapace_<version>+3.efi`. Before
//! booting an entry with a counter `+L[-D]`, systemd-boot renames its file
//! to `+(L-1)-(D+1)` (to `+0-(D+1)` when L is already 0) and sets the
//! volatile variable `LoaderBootCountPath` to the new path (for example
//! `\EFI\Linux\carapace_0.2.0+2-1.efi`). It also sets `LoaderEntrySelected`
//! (the booted entry's id: its file name, lowercased) and `LoaderEntries`
//! (every entry id). An entry with no tries left sorts after every other
//! entry, but still boots when it is the only one.
//!
//! So after a fatal error ([`after_failure`]):
//! - **reboot** when this boot is counted (`LoaderBootCountPath` is set)
//!   and a reboot leads somewhere: this entry has tries left, or
//!   `LoaderEntries` lists a `carapace_*.efi` entry of another version that
//!   is not exhausted (the boot loader falls back to it);
//! - **power off** otherwise: a blessed entry (no `LoaderBootCountPath`), no
//!   EFI variables at all (a direct `-kernel` boot), or an exhausted trial
//!   with nothing to fall back to. Rebooting then would only fail again,
//!   forever.
//!
//! Pure: bytes of efivarfs files in, a decision out. Reading the variables
//! is [`crate::power`]'s; the decision is made once, early, and kept.

use std::fmt;

/// The vendor GUID of systemd-boot's variables (the Boot Loader Interface).
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// Where efivarfs is mounted.
pub const EFIVARS_DIR: &str = "/sys/firmware/efi/efivars";
/// Present only when the kernel was booted by UEFI firmware.
pub const EFI_DIR: &str = "/sys/firmware/efi";
/// The path of the booted entry's file after systemd-boot counted the try.
pub const BOOT_COUNT_PATH: &str = "LoaderBootCountPath";
/// The id of the booted entry (its file name before the rename, lowercased).
pub const ENTRY_SELECTED: &str = "LoaderEntrySelected";
/// Every entry id systemd-boot found.
pub const ENTRIES: &str = "LoaderEntries";

/// The efivarfs file name of one of systemd-boot's variables.
pub fn efivarfs_name(variable: &str) -> String {
    format!("{variable}-{LOADER_GUID}")
}

/// Why the content of an efivarfs file is not a string value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VarError {
    #[error("{0} bytes is too short for an EFI variable (4 bytes of attributes first)")]
    Short(usize),
    #[error("a value of {0} bytes is not UTF-16 (an odd length)")]
    OddLength(usize),
    #[error("the value is not valid UTF-16")]
    NotUtf16,
}

/// The value of an efivarfs file (4 bytes of attributes, then the value)
/// as UTF-16LE code units.
fn units(file: &[u8]) -> Result<Vec<u16>, VarError> {
    let value = file.get(4..).ok_or(VarError::Short(file.len()))?;
    if value.len() % 2 != 0 {
        return Err(VarError::OddLength(value.len()));
    }
    Ok(value
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect())
}

/// Decodes a string variable: UTF-16LE up to its terminating NUL (a value
/// without one is taken whole).
pub fn decode_string(file: &[u8]) -> Result<String, VarError> {
    let units = units(file)?;
    let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
    String::from_utf16(&units[..end]).map_err(|_| VarError::NotUtf16)
}

/// Decodes a list variable such as `LoaderEntries`: NUL-terminated
/// UTF-16LE strings, one after the other. Empty strings are dropped.
pub fn decode_list(file: &[u8]) -> Result<Vec<String>, VarError> {
    units(file)?
        .split(|&u| u == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf16(s).map_err(|_| VarError::NotUtf16))
        .collect()
}

/// A boot counter `+L[-D]`: tries left and tries done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub left: u32,
    pub done: u32,
}

/// One of our UKIs, from its file name or entry id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The file name without any path: `carapace_0.2.0+2-1.efi`.
    pub file_name: String,
    /// `0.2.0`.
    pub version: String,
    /// None when blessed.
    pub counter: Option<Counter>,
}

impl Entry {
    /// Whether systemd-boot would still prefer it over an exhausted entry:
    /// blessed, or tries left.
    pub fn has_tries(&self) -> bool {
        self.counter.is_none_or(|c| c.left > 0)
    }
}

/// `L` or `L-D`, all digits.
fn parse_counter(text: &str) -> Option<Counter> {
    let (left, done) = match text.split_once('-') {
        Some((l, d)) => (l, Some(d)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(left) || !done.is_none_or(digits) {
        return None;
    }
    Some(Counter {
        left: left.parse().ok()?,
        done: match done {
            Some(d) => d.parse().ok()?,
            None => 0,
        },
    })
}

/// Parses `carapace_<version>[+L[-D]].efi`, after any path prefix (`\` or
/// `/` separated, as in `LoaderBootCountPath`). The prefix and extension
/// are matched without regard to case (entry ids are lowercased). A `+`
/// that is not followed by a counter belongs to the version. Anything else
/// is not ours: None.
pub fn parse_entry(path: &str) -> Option<Entry> {
    let file_name = path.rsplit(['\\', '/']).next().unwrap_or(path);
    let lower = file_name.to_ascii_lowercase();
    if !lower.starts_with("carapace_") || !lower.ends_with(".efi") {
        return None;
    }
    let stem = &file_name["carapace_".len()..file_name.len() - ".efi".len()];
    let (version, counter) = match stem.rsplit_once('+') {
        Some((v, c)) => match parse_counter(c) {
            Some(counter) => (v, Some(counter)),
            None => (stem, None),
        },
        None => (stem, None),
    };
    if version.is_empty() {
        return None;
    }
    Some(Entry {
        file_name: file_name.to_string(),
        version: version.to_string(),
        counter,
    })
}

/// What systemd-boot told us about this boot: the values of its variables,
/// None where a variable is absent (or unreadable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoaderState {
    /// `LoaderBootCountPath`: set only when the booted entry is counted.
    pub boot_count_path: Option<String>,
    /// `LoaderEntrySelected`.
    pub entry_selected: Option<String>,
    /// `LoaderEntries`.
    pub entries: Option<Vec<String>>,
}

impl LoaderState {
    /// Whether this boot is a counted (trial) boot of a new version.
    pub fn is_counted(&self) -> bool {
        self.boot_count_path.is_some()
    }

    /// The booted entry of a counted boot, as renamed for this boot (its
    /// counter is the tries left after this one).
    pub fn trial_entry(&self) -> Option<Entry> {
        self.boot_count_path.as_deref().and_then(parse_entry)
    }
}

/// What a fatal boot error does to the machine, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// Reboot: the boot loader counts this try and may fall back.
    Reboot(RebootReason),
    /// Power off: a reboot would lead nowhere better.
    PowerOff(PowerOffReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebootReason {
    /// The booted entry has `left` tries after this one.
    TriesLeft { entry: String, left: u32 },
    /// The booted entry (`entry`, or an entry we cannot name) has none
    /// left, but `fallback` (another version, not exhausted) is there.
    FallBack {
        entry: Option<String>,
        fallback: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerOffReason {
    /// Not a counted boot: a blessed entry, or no boot loader variables.
    NotOnTrial,
    /// A counted boot with no tries left and no other version to boot.
    NothingToFallBackTo { entry: String },
}

/// The console line (after `carapace: `) that says what happens next.
impl fmt::Display for AfterFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AfterFailure::Reboot(RebootReason::TriesLeft { entry, left }) => {
                let tries = if *left == 1 { "try" } else { "tries" };
                write!(f, "rebooting: {entry} is on trial ({left} {tries} left)")
            }
            AfterFailure::Reboot(RebootReason::FallBack { entry, fallback }) => {
                let entry = entry.as_deref().unwrap_or("the booted entry");
                write!(
                    f,
                    "rebooting: {entry} is on trial with no tries left: the boot loader falls back to {fallback}"
                )
            }
            AfterFailure::PowerOff(PowerOffReason::NotOnTrial) => f.write_str("powering off"),
            AfterFailure::PowerOff(PowerOffReason::NothingToFallBackTo { entry }) => write!(
                f,
                "powering off: {entry} is on trial with no tries left and there is no other version to fall back to"
            ),
        }
    }
}

/// Decides what a fatal boot error does, from the boot loader's variables.
pub fn after_failure(state: &LoaderState) -> AfterFailure {
    let Some(path) = state.boot_count_path.as_deref() else {
        return AfterFailure::PowerOff(PowerOffReason::NotOnTrial);
    };
    let booted = parse_entry(path);
    if let Some(Entry {
        file_name,
        counter: Some(Counter { left, .. }),
        ..
    }) = &booted
    {
        if *left > 0 {
            return AfterFailure::Reboot(RebootReason::TriesLeft {
                entry: file_name.clone(),
                left: *left,
            });
        }
    }
    // No tries left (or a counted entry whose name we cannot read): a
    // reboot helps only if another version is there to boot.
    let booted_version = booted
        .as_ref()
        .or(state
            .entry_selected
            .as_deref()
            .and_then(parse_entry)
            .as_ref())
        .map(|e| e.version.to_ascii_lowercase());
    let fallback = state
        .entries
        .iter()
        .flatten()
        .filter_map(|id| parse_entry(id))
        .find(|e| e.has_tries() && Some(e.version.to_ascii_lowercase()) != booted_version);
    let entry = booted.map(|e| e.file_name);
    match fallback {
        Some(fallback) => AfterFailure::Reboot(RebootReason::FallBack {
            entry,
            fallback: fallback.file_name,
        }),
        None => AfterFailure::PowerOff(PowerOffReason::NothingToFallBackTo {
            entry: entry.unwrap_or_else(|| path.to_string()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attributes of a volatile boot-loader variable as efivarfs shows them:
    /// EFI_VARIABLE_BOOTSERVICE_ACCESS | EFI_VARIABLE_RUNTIME_ACCESS.
    const VOLATILE: [u8; 4] = [0x06, 0x00, 0x00, 0x00];

    /// An efivarfs file holding `strings`, each NUL-terminated UTF-16LE,
    /// as systemd-boot writes them.
    fn efivar(strings: &[&str]) -> Vec<u8> {
        let mut file = VOLATILE.to_vec();
        for s in strings {
            for unit in s.encode_utf16().chain([0]) {
                file.extend_from_slice(&unit.to_le_bytes());
            }
        }
        file
    }

    fn state(path: Option<&str>, selected: Option<&str>, entries: &[&str]) -> LoaderState {
        LoaderState {
            boot_count_path: path.map(str::to_string),
            entry_selected: selected.map(str::to_string),
            entries: Some(entries.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn a_string_variable_decodes_up_to_its_nul() {
        // LoaderBootCountPath after the first try of 0.2.0, byte for byte.
        let file: &[u8] = b"\x06\x00\x00\x00\
            \\\x00E\x00F\x00I\x00\\\x00L\x00i\x00n\x00u\x00x\x00\\\x00\
            c\x00a\x00r\x00a\x00p\x00a\x00c\x00e\x00_\x000\x00.\x002\x00.\x000\x00\
            +\x002\x00-\x001\x00.\x00e\x00f\x00i\x00\x00\x00";
        assert_eq!(file, efivar(&[r"\EFI\Linux\carapace_0.2.0+2-1.efi"]));
        assert_eq!(
            decode_string(file).as_deref(),
            Ok(r"\EFI\Linux\carapace_0.2.0+2-1.efi")
        );
        // Without a terminating NUL the whole value is the string.
        assert_eq!(decode_string(b"\x06\0\0\0a\0b\0").as_deref(), Ok("ab"));
        assert_eq!(decode_string(&VOLATILE).as_deref(), Ok(""));
        assert_eq!(decode_string(b"\x06\0\0"), Err(VarError::Short(3)));
        assert_eq!(
            decode_string(b"\x06\0\0\0a\0b"),
            Err(VarError::OddLength(3))
        );
        // An unpaired surrogate.
        assert_eq!(
            decode_string(b"\x06\0\0\0\x00\xd8\0\0"),
            Err(VarError::NotUtf16)
        );
    }

    #[test]
    fn a_list_variable_decodes_every_entry() {
        let ids = [
            "carapace_0.2.0+3.efi",
            "carapace_0.1.0.efi",
            "auto-reboot-to-firmware-setup",
        ];
        let file = efivar(&ids);
        assert_eq!(file.len(), 4 + 2 * (20 + 1 + 18 + 1 + 29 + 1));
        assert_eq!(decode_list(&file), Ok(ids.map(String::from).to_vec()));
        assert_eq!(decode_list(&VOLATILE), Ok(vec![]));
        assert_eq!(decode_list(b"\x06\0\0\0a\0"), Ok(vec!["a".to_string()]));
        assert_eq!(decode_list(b"\x06\0"), Err(VarError::Short(2)));
    }

    #[test]
    fn entry_names_give_version_and_counter() {
        let e = parse_entry(r"\EFI\Linux\carapace_0.2.0+2-1.efi").expect("ours");
        assert_eq!(e.file_name, "carapace_0.2.0+2-1.efi");
        assert_eq!(e.version, "0.2.0");
        assert_eq!(e.counter, Some(Counter { left: 2, done: 1 }));
        assert!(e.has_tries());

        let e = parse_entry("carapace_0.2.0+3.efi").expect("ours");
        assert_eq!(e.counter, Some(Counter { left: 3, done: 0 }));
        let e = parse_entry("/efi/linux/carapace_0.2.0+0-3.efi").expect("ours");
        assert_eq!(e.counter, Some(Counter { left: 0, done: 3 }));
        assert!(!e.has_tries());
        let e = parse_entry("carapace_0.1.0.efi").expect("ours");
        assert_eq!((e.version.as_str(), e.counter), ("0.1.0", None));
        assert!(e.has_tries());
        // Build metadata is not a counter.
        let e = parse_entry("carapace_1.0.0+build.5.efi").expect("ours");
        assert_eq!((e.version.as_str(), e.counter), ("1.0.0+build.5", None));
        let e = parse_entry("carapace_1.0.0-rc.1+1.efi").expect("ours");
        assert_eq!(e.version, "1.0.0-rc.1");
        // Case: entry ids are lowercased, file names need not be.
        let e = parse_entry(r"\EFI\LINUX\CARAPACE_0.2.0+1-2.EFI").expect("ours");
        assert_eq!(e.version, "0.2.0");

        for other in [
            "linux.efi",
            r"\EFI\Linux\other_0.2.0+3.efi",
            "carapace_0.2.0+3.conf",
            "carapace_.efi",
            "carapace_+3.efi",
            "auto-reboot-to-firmware-setup",
        ] {
            assert_eq!(parse_entry(other), None, "{other}");
        }
    }

    #[test]
    fn a_trial_with_tries_left_reboots() {
        let s = state(
            Some(r"\EFI\Linux\carapace_0.2.0+2-1.efi"),
            Some("carapace_0.2.0+3.efi"),
            &["carapace_0.2.0+3.efi"],
        );
        assert!(s.is_counted());
        let decision = after_failure(&s);
        assert_eq!(
            decision,
            AfterFailure::Reboot(RebootReason::TriesLeft {
                entry: "carapace_0.2.0+2-1.efi".into(),
                left: 2
            })
        );
        assert_eq!(
            decision.to_string(),
            "rebooting: carapace_0.2.0+2-1.efi is on trial (2 tries left)"
        );
        let one = state(Some(r"\EFI\Linux\carapace_0.2.0+1-2.efi"), None, &[]);
        assert_eq!(
            after_failure(&one).to_string(),
            "rebooting: carapace_0.2.0+1-2.efi is on trial (1 try left)"
        );
    }

    #[test]
    fn the_last_try_reboots_when_the_previous_version_is_there() {
        let s = state(
            Some(r"\EFI\Linux\carapace_0.2.0+0-3.efi"),
            Some("carapace_0.2.0+1-2.efi"),
            &["carapace_0.2.0+1-2.efi", "carapace_0.1.0.efi"],
        );
        let decision = after_failure(&s);
        assert_eq!(
            decision,
            AfterFailure::Reboot(RebootReason::FallBack {
                entry: Some("carapace_0.2.0+0-3.efi".into()),
                fallback: "carapace_0.1.0.efi".into()
            })
        );
        assert_eq!(
            decision.to_string(),
            "rebooting: carapace_0.2.0+0-3.efi is on trial with no tries left: \
             the boot loader falls back to carapace_0.1.0.efi"
        );
    }

    #[test]
    fn the_last_try_with_nothing_else_to_boot_powers_off() {
        // Alone, or beside an exhausted version and entries not ours.
        for entries in [
            &["carapace_0.2.0+1-2.efi"][..],
            &[
                "carapace_0.2.0+1-2.efi",
                "carapace_0.1.5+0-3.efi",
                "auto-reboot-to-firmware-setup",
            ][..],
            &[][..],
        ] {
            let s = state(
                Some(r"\EFI\Linux\carapace_0.2.0+0-3.efi"),
                Some("carapace_0.2.0+1-2.efi"),
                entries,
            );
            let decision = after_failure(&s);
            assert_eq!(
                decision,
                AfterFailure::PowerOff(PowerOffReason::NothingToFallBackTo {
                    entry: "carapace_0.2.0+0-3.efi".into()
                }),
                "{entries:?}"
            );
            assert!(decision.to_string().starts_with("powering off: "));
        }
        // LoaderEntries missing altogether.
        let s = LoaderState {
            boot_count_path: Some(r"\EFI\Linux\carapace_0.2.0+0-1.efi".into()),
            ..LoaderState::default()
        };
        assert!(matches!(after_failure(&s), AfterFailure::PowerOff(_)));
    }

    #[test]
    fn the_same_version_under_another_counter_is_no_fallback() {
        // The entry id systemd-boot listed is the booted one before the rename.
        let s = state(
            Some(r"\EFI\Linux\carapace_0.2.0+0-3.efi"),
            None,
            &["carapace_0.2.0+1-2.efi"],
        );
        assert!(matches!(after_failure(&s), AfterFailure::PowerOff(_)));
    }

    #[test]
    fn a_trial_of_another_version_with_tries_is_a_fallback() {
        let s = state(
            Some(r"\EFI\Linux\carapace_0.3.0+0-3.efi"),
            Some("carapace_0.3.0+1-2.efi"),
            &["carapace_0.3.0+1-2.efi", "carapace_0.2.0+2-1.efi"],
        );
        assert!(matches!(
            after_failure(&s),
            AfterFailure::Reboot(RebootReason::FallBack { fallback, .. })
                if fallback == "carapace_0.2.0+2-1.efi"
        ));
    }

    #[test]
    fn a_counted_entry_we_cannot_read_falls_back_only_to_another_version() {
        let s = state(
            Some(r"\EFI\Linux\strange.efi"),
            Some("carapace_0.2.0+1.efi"),
            &["carapace_0.2.0+1.efi", "carapace_0.1.0.efi"],
        );
        let decision = after_failure(&s);
        assert_eq!(
            decision,
            AfterFailure::Reboot(RebootReason::FallBack {
                entry: None,
                fallback: "carapace_0.1.0.efi".into()
            })
        );
        let alone = state(Some(r"\EFI\Linux\strange.efi"), None, &[]);
        assert_eq!(
            after_failure(&alone).to_string(),
            r"powering off: \EFI\Linux\strange.efi is on trial with no tries left and there is no other version to fall back to"
        );
    }

    #[test]
    fn a_blessed_boot_or_no_boot_loader_powers_off() {
        let blessed = state(
            None,
            Some("carapace_0.1.0.efi"),
            &["carapace_0.1.0.efi", "carapace_0.2.0+3.efi"],
        );
        assert!(!blessed.is_counted());
        assert_eq!(blessed.trial_entry(), None);
        let decision = after_failure(&blessed);
        assert_eq!(decision, AfterFailure::PowerOff(PowerOffReason::NotOnTrial));
        assert_eq!(decision.to_string(), "powering off");
        // A direct -kernel boot: no EFI variables at all.
        assert_eq!(
            after_failure(&LoaderState::default()),
            AfterFailure::PowerOff(PowerOffReason::NotOnTrial)
        );
    }

    #[test]
    fn variable_file_names_carry_the_loader_guid() {
        assert_eq!(
            efivarfs_name(BOOT_COUNT_PATH),
            "LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
        );
    }
}
