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

/// systemd-boot's version comparison (`strverscmp_improved`, as in systemd
/// 254): segments of digits compare as numbers and beat letters; `~` sorts
/// before anything, even the end of the string; `-`, `^` and `.` separate
/// segments and sort before alphanumerics; other characters (such as `+`)
/// are skipped; a longer string is newer. Unlike semantic versioning it puts
/// `1.0.0-rc.1` after (newer than) `1.0.0`, which is why the daemon never
/// relies on this order for what boots next (see `Engine::apply`).
pub fn sd_boot_version_cmp(a: &str, b: &str) -> Ordering {
    let valid = |c: u8| c.is_ascii_alphanumeric() || b"~-^.".contains(&c);
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let at = |s: &[u8], k: usize| s.get(k).copied().unwrap_or(0);
    loop {
        while i < a.len() && !valid(a[i]) {
            i += 1;
        }
        while j < b.len() && !valid(b[j]) {
            j += 1;
        }
        // '~' marks a pre-release: older than anything, even the end.
        if at(a, i) == b'~' || at(b, j) == b'~' {
            let r = (at(a, i) != b'~').cmp(&(at(b, j) != b'~'));
            if r != Ordering::Equal {
                return r;
            }
            i += 1;
            j += 1;
        }
        if i >= a.len() || j >= b.len() {
            return at(a, i).cmp(&at(b, j));
        }
        for sep in [b'-', b'^', b'.'] {
            if at(a, i) == sep || at(b, j) == sep {
                let r = (at(a, i) != sep).cmp(&(at(b, j) != sep));
                if r != Ordering::Equal {
                    return r;
                }
                i += 1;
                j += 1;
            }
        }
        if at(a, i).is_ascii_digit() || at(b, j).is_ascii_digit() {
            let r = at(a, i).is_ascii_digit().cmp(&at(b, j).is_ascii_digit());
            if r != Ordering::Equal {
                return r;
            }
            while at(a, i) == b'0' {
                i += 1;
            }
            while at(b, j) == b'0' {
                j += 1;
            }
            let (ei, ej) = (
                i + a[i..].iter().take_while(|c| c.is_ascii_digit()).count(),
                j + b[j..].iter().take_while(|c| c.is_ascii_digit()).count(),
            );
            let r = (ei - i).cmp(&(ej - j)).then(a[i..ei].cmp(&b[j..ej]));
            if r != Ordering::Equal {
                return r;
            }
            (i, j) = (ei, ej);
        } else {
            let (ei, ej) = (
                i + a[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphabetic())
                    .count(),
                j + b[j..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphabetic())
                    .count(),
            );
            let n = (ei - i).min(ej - j);
            let r = a[i..i + n].cmp(&b[j..j + n]).then((ei - i).cmp(&(ej - j)));
            if r != Ordering::Equal {
                return r;
            }
            (i, j) = (ei, ej);
        }
    }
}

impl Entry {
    /// Whether every try is spent (`+0-N`): systemd-boot sorts it last and
    /// boots it only when nothing else is there.
    pub fn exhausted(&self) -> bool {
        !self.bootable()
    }

    /// The boot loader's entry id: the file name, lower-cased.
    pub fn id(&self) -> String {
        self.file_name.to_lowercase()
    }
}

/// The order in which systemd-boot 254 lists our entries (and boots the
/// first, with no default set): entries with no tries left last, then the
/// newest version by its own version comparison (all our UKIs share one
/// sort key), then the id, then more tries left and fewer done first.
pub fn boot_order(a: &Entry, b: &Entry) -> Ordering {
    a.exhausted()
        .cmp(&b.exhausted())
        .then_with(|| sd_boot_version_cmp(&b.version.to_string(), &a.version.to_string()))
        .then_with(|| sd_boot_version_cmp(&b.id(), &a.id()))
        .then_with(|| match (a.counter, b.counter) {
            (Some((la, da)), Some((lb, db))) => lb.cmp(&la).then(da.cmp(&db)),
            _ => Ordering::Equal,
        })
}

/// All our entries among `names`, in the boot loader's order.
pub fn entries<S: AsRef<str>>(names: &[S]) -> Vec<Entry> {
    let mut out: Vec<Entry> = names
        .iter()
        .filter_map(|n| Entry::parse(n.as_ref()))
        .collect();
    out.sort_by(boot_order);
    out
}

/// What the ESP says about the running version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// The entry of the running version, if it is in the ESP.
    pub running: Option<Entry>,
    /// What systemd-boot boots when the running version is not there or
    /// has no tries left: the first other bootable entry in its order.
    pub fallback: Option<Version>,
    /// A version that was tried and is not the one running: it failed its
    /// trial (its tries ran out, or it fell back after a one-shot try).
    pub rolled_back: Option<Version>,
}

impl Picture {
    /// Whether the running version still carries a boot counter.
    pub fn on_trial(&self) -> bool {
        self.running.as_ref().is_some_and(|e| e.counter.is_some())
    }
}

/// Reads the picture for `running` from the entries (in boot order).
pub fn picture(entries: &[Entry], running: &Version) -> Picture {
    let this = entries.iter().find(|e| &e.version == running).cloned();
    let others = || entries.iter().filter(|e| &e.version != running);
    Picture {
        running: this,
        fallback: others().find(|e| e.bootable()).map(|e| e.version.clone()),
        rolled_back: others()
            .find(|e| e.counter.is_some_and(|(_, done)| done > 0))
            .map(|e| e.version.clone()),
    }
}

/// The entries to delete once `running` is blessed, so that it is the
/// entry systemd-boot boots and exactly one fallback stays: every entry the
/// boot loader would put before it (a newer version left behind by a
/// downgrade), and every entry after the first bootable one behind it.
pub fn to_remove_after_blessing(entries: &[Entry], running: &Version) -> Vec<String> {
    let Some(at) = entries.iter().position(|e| &e.version == running) else {
        return Vec::new();
    };
    let fallback = entries[at + 1..]
        .iter()
        .find(|e| e.bootable())
        .map(|e| e.file_name.clone());
    entries
        .iter()
        .enumerate()
        .filter(|(i, e)| *i != at && Some(&e.file_name) != fallback.as_ref())
        .map(|(_, e)| e.file_name.clone())
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

    #[test]
    fn versions_compare_as_systemd_boot_compares_them() {
        use Ordering::*;
        for (a, b, want) in [
            ("0.10.0", "0.9.0", Greater),
            ("1.0.0", "1.0.0", Equal),
            ("1.0.0-rc.1", "1.0.0", Greater),
            ("123~rc1", "123", Less),
            ("123~rc1", "123~rc2", Less),
            ("123-9", "123.1-1", Less),
            ("123.a", "123.1", Less),
            ("1.0.0+build.5", "1.0.0", Greater),
            ("007", "7", Equal),
            ("1.2alpha", "1.2beta", Less),
            ("1.2a", "1.2ab", Less),
        ] {
            assert_eq!(sd_boot_version_cmp(a, b), want, "{a} vs {b}");
            assert_eq!(sd_boot_version_cmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn the_boot_loader_puts_spent_entries_last_and_pre_releases_after_releases() {
        let all = entries(&[
            "carapace_0.3.0+0-3.efi",
            "carapace_0.1.0.efi",
            "carapace_1.0.0.efi",
            "carapace_1.0.0-rc.1.efi",
        ]);
        let order: Vec<&str> = all.iter().map(|e| e.file_name.as_str()).collect();
        assert_eq!(
            order,
            [
                "carapace_1.0.0-rc.1.efi",
                "carapace_1.0.0.efi",
                "carapace_0.1.0.efi",
                "carapace_0.3.0+0-3.efi"
            ]
        );
    }

    #[test]
    fn a_blessed_downgrade_removes_the_newer_version_that_would_boot_first() {
        // 0.1.0 was applied over 0.2.0 and booted once (one-shot), then blessed.
        let all = entries(&["carapace_0.2.0.efi", "carapace_0.1.0+2-1.efi"]);
        let p = picture(&all, &v("0.1.0"));
        assert!(p.on_trial());
        assert_eq!(p.fallback, Some(v("0.2.0")));
        let after = ["carapace_0.2.0.efi", "carapace_0.1.0.efi"];
        assert_eq!(
            to_remove_after_blessing(&entries(&after), &v("0.1.0")),
            vec!["carapace_0.2.0.efi"]
        );
    }

    #[test]
    fn a_one_shot_try_that_fell_back_is_reported_as_rolled_back() {
        let all = entries(&["carapace_0.2.0.efi", "carapace_0.1.0+2-1.efi"]);
        let p = picture(&all, &v("0.2.0"));
        assert!(!p.on_trial());
        assert_eq!(p.rolled_back, Some(v("0.1.0")));
        // A version installed but not tried yet is no rollback.
        let all = entries(&["carapace_0.2.0.efi", "carapace_0.3.0+3.efi"]);
        assert_eq!(picture(&all, &v("0.2.0")).rolled_back, None);
    }

    #[test]
    fn a_release_blessed_after_its_pre_release_is_what_boots_next() {
        // Semantic versioning calls 1.0.0 an update of 1.0.0-rc.1; the boot
        // loader sorts the pre-release first. The one-shot entry gives 1.0.0
        // its try, and its blessing removes what the loader would prefer.
        let applied = entries(&["carapace_1.0.0-rc.1.efi", "carapace_1.0.0+3.efi"]);
        assert_eq!(applied[0].file_name, "carapace_1.0.0-rc.1.efi");
        let blessed = entries(&["carapace_1.0.0-rc.1.efi", "carapace_1.0.0.efi"]);
        assert_eq!(
            to_remove_after_blessing(&blessed, &v("1.0.0")),
            vec!["carapace_1.0.0-rc.1.efi"]
        );
    }
}
