//! The unified kernel images in the ESP's `/EFI/Linux`, one per version, and
//! systemd-boot's boot counting on their names: `carapace_<version>.efi` is a
//! blessed version; `carapace_<version>+<left>[-<done>].efi` is on trial —
//! systemd-boot counts a try down at every boot of it and, once none are
//! left, sorts it after every good entry, so the previous version boots
//! again without any code of ours. Pure: names in, decisions out.

use semver::Version;
use std::cmp::Ordering;

/// The tries a freshly installed version gets.
pub const TRIES: u32 = 3;

/// One UKI of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub file_name: String,
    pub version: Version,
    /// None when blessed; Some((left, done)) while on trial.
    pub counter: Option<(u32, u32)>,
}

impl Entry {
    /// Parses `carapace_<version>[+L[-D]].efi`; anything else is not ours.
    pub fn parse(file_name: &str) -> Option<Entry> {
        let stem = file_name.strip_prefix("carapace_")?.strip_suffix(".efi")?;
        let (version, counter) = match stem.rsplit_once('+') {
            // A '+' followed by digits is a counter; semver build metadata
            // (`1.0.0+build`) never is all digits with an optional -digits.
            Some((v, c)) if counter_of(c).is_some() => (v, counter_of(c)),
            _ => (stem, None),
        };
        Some(Entry {
            file_name: file_name.to_string(),
            version: Version::parse(version).ok()?,
            counter,
        })
    }

    /// Whether systemd-boot would still pick it: blessed, or tries left.
    pub fn bootable(&self) -> bool {
        self.counter.is_none_or(|(left, _)| left > 0)
    }

    /// The name of a freshly installed version.
    pub fn trial_name(version: &Version) -> String {
        format!("carapace_{version}+{TRIES}.efi")
    }

    /// The name once blessed.
    pub fn blessed_name(&self) -> String {
        format!("carapace_{}.efi", self.version)
    }
}

fn counter_of(c: &str) -> Option<(u32, u32)> {
    let (left, done) = match c.split_once('-') {
        Some((l, d)) => (l, Some(d)),
        None => (c, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(left) || !done.is_none_or(digits) {
        return None;
    }
    Some((
        left.parse().ok()?,
        done.map_or(Some(0), |d| d.parse().ok())?,
    ))
}

/// All our entries among `names`, newest version first.
pub fn entries<S: AsRef<str>>(names: &[S]) -> Vec<Entry> {
    let mut out: Vec<Entry> = names
        .iter()
        .filter_map(|n| Entry::parse(n.as_ref()))
        .collect();
    out.sort_by(|a, b| b.version.cmp(&a.version));
    out
}

/// What the ESP says about the running version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// The entry of the running version, if it is in the ESP.
    pub running: Option<Entry>,
    /// The newest other bootable version older than the running one: what
    /// systemd-boot falls back to.
    pub fallback: Option<Version>,
    /// A newer version whose tries ran out: the update that was rolled back.
    pub rolled_back: Option<Version>,
}

/// Reads the picture for `running` from the entries.
pub fn picture(entries: &[Entry], running: &Version) -> Picture {
    let this = entries.iter().find(|e| &e.version == running).cloned();
    let fallback = entries
        .iter()
        .filter(|e| e.version < *running && e.bootable())
        .map(|e| e.version.clone())
        .max();
    let rolled_back = entries
        .iter()
        .filter(|e| e.version > *running && !e.bootable())
        .map(|e| e.version.clone())
        .max();
    Picture {
        running: this,
        fallback,
        rolled_back,
    }
}

/// The entries to delete once `running` is blessed: every version older
/// than the fallback (the running one and its fallback stay).
pub fn to_remove_after_blessing(entries: &[Entry], running: &Version) -> Vec<String> {
    let p = picture(entries, running);
    entries
        .iter()
        .filter(|e| match &p.fallback {
            Some(fallback) => e.version.cmp(fallback) == Ordering::Less,
            None => e.version < *running && !e.bootable(),
        })
        .map(|e| e.file_name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("version")
    }

    #[test]
    fn names_parse_with_and_without_counters() {
        let e = Entry::parse("carapace_0.2.0+3.efi").expect("trial");
        assert_eq!((e.version.clone(), e.counter), (v("0.2.0"), Some((3, 0))));
        let e = Entry::parse("carapace_0.2.0+1-2.efi").expect("tried twice");
        assert_eq!(e.counter, Some((1, 2)));
        assert!(e.bootable());
        let e = Entry::parse("carapace_0.2.0+0-3.efi").expect("spent");
        assert!(!e.bootable());
        let e = Entry::parse("carapace_1.0.0.efi").expect("blessed");
        assert_eq!(e.counter, None);
        assert_eq!(e.blessed_name(), "carapace_1.0.0.efi");
        let e = Entry::parse("carapace_1.0.0+build.5.efi").expect("build metadata");
        assert_eq!(e.counter, None);
        assert_eq!(e.version, v("1.0.0+build.5"));
        for other in [
            "systemd-bootx64.efi",
            "carapace_.efi",
            "carapace_x.efi",
            "carapace_1.0.0",
        ] {
            assert_eq!(Entry::parse(other), None, "{other}");
        }
        assert_eq!(Entry::trial_name(&v("0.3.0")), "carapace_0.3.0+3.efi");
    }

    #[test]
    fn an_update_on_trial_then_rolled_back_is_seen_as_such() {
        let names = ["carapace_0.1.0.efi", "carapace_0.2.0+0-3.efi"];
        let p = picture(&entries(&names), &v("0.1.0"));
        assert_eq!(p.rolled_back, Some(v("0.2.0")));
        assert_eq!(p.fallback, None);
        assert_eq!(p.running.map(|e| e.counter), Some(None));
    }

    #[test]
    fn a_new_version_on_trial_falls_back_to_the_blessed_one() {
        let names = ["carapace_0.1.0.efi", "carapace_0.2.0+2-1.efi", "README"];
        let all = entries(&names);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].version, v("0.2.0"), "newest first");
        let p = picture(&all, &v("0.2.0"));
        assert_eq!(p.fallback, Some(v("0.1.0")));
        assert_eq!(p.rolled_back, None);
        assert_eq!(p.running.and_then(|e| e.counter), Some((2, 1)));
    }

    #[test]
    fn blessing_keeps_the_running_and_the_previous_version_only() {
        let names = [
            "carapace_0.1.0.efi",
            "carapace_0.2.0.efi",
            "carapace_0.3.0+2-1.efi",
            "carapace_0.0.9+0-3.efi",
        ];
        let all = entries(&names);
        let mut gone = to_remove_after_blessing(&all, &v("0.3.0"));
        gone.sort();
        assert_eq!(gone, vec!["carapace_0.0.9+0-3.efi", "carapace_0.1.0.efi"]);
        // Version order is semantic, not textual.
        let all = entries(&["carapace_0.9.0.efi", "carapace_0.10.0+3.efi"]);
        assert_eq!(all[0].version, v("0.10.0"));
        assert!(to_remove_after_blessing(&all, &v("0.10.0")).is_empty());
    }
}
