//! `index.json`: the source's signed list of versions.
//!
//! ```json
//! {"format":2,"expires":1767225600,"minimum_version":"0.2.0","versions":["0.1.0","0.2.0","0.3.0"]}
//! ```
//!
//! - `format`: [`INDEX_FORMAT`] (format 1 was the unsigned index).
//! - `expires`: Unix seconds (UTC, since 1970-01-01T00:00:00Z): a node
//!   refuses the index once its clock reaches it, so that whoever sits
//!   between node and source can neither freeze the node on an old index
//!   nor replay one for longer than its validity.
//! - `minimum_version` (optional): the anti-rollback floor; no version below
//!   it is installed, not even as a forced downgrade
//!   ([`crate::check_minimum_version`]).
//! - `versions`: the directories to look at. What a version holds is still
//!   trusted only through its own signed manifest.
//!
//! Signed like a manifest: `index.json.sig` is the Ed25519 signature of the
//! exact bytes by the update key, 128 lowercase hex digits and a newline.
//! [`Index::verify`] checks the signature before it parses anything, then
//! the expiry; a node reads the index only through it. The list is kept
//! sorted by semantic-version precedence without duplicates (0.10.0 after
//! 0.9.0), whatever order the file has.

use crate::manifest::from_json;
use crate::{BundleError, PublicKey, Signature, INDEX_FORMAT};
use semver::Version;
use serde::{Deserialize, Serialize};

/// The versions a source offers, sorted, oldest first, with the index's
/// expiry and floor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    versions: Vec<Version>,
    /// Unix seconds at which the index stops being valid.
    pub expires: u64,
    /// No version below it may be installed (none: no floor).
    pub minimum_version: Option<Version>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    format: u32,
    expires: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    minimum_version: Option<String>,
    versions: Vec<String>,
}

impl Index {
    /// An index with no versions, no floor, and `expires` 0 (long expired:
    /// set it before signing).
    pub fn new() -> Index {
        Index::default()
    }

    /// What a node does with `index.json` and the text of `index.json.sig`:
    /// checks the signature over the raw bytes with the update key (nothing
    /// unsigned is parsed), parses and validates the document, and refuses
    /// it if `now_unix` (the node's clock, Unix seconds) is at or past
    /// `expires`.
    ///
    /// Errors: [`BundleError::IndexNotSigned`] (signature missing, malformed
    /// or by another key), [`BundleError::IndexExpired`], and for a signed
    /// but malformed document [`BundleError::Json`], [`BundleError::Format`]
    /// or [`BundleError::NotSemver`].
    pub fn verify(
        public_key: &PublicKey,
        bytes: &[u8],
        signature_text: &str,
        now_unix: u64,
    ) -> Result<Index, BundleError> {
        if signature_text.trim().is_empty() {
            return Err(BundleError::IndexNotSigned(
                "index.json.sig is missing or empty".into(),
            ));
        }
        let signature = Signature::parse_text(signature_text).map_err(|e| {
            BundleError::IndexNotSigned(match e {
                BundleError::SignatureText(detail) => {
                    format!("index.json.sig is not 128 hexadecimal digits and a newline: {detail}")
                }
                other => other.to_string(),
            })
        })?;
        public_key
            .verify_signature(bytes, &signature)
            .map_err(|_| BundleError::IndexNotSigned("index.json.sig does not match".into()))?;
        let index = Index::parse_unverified(bytes)?;
        index.check_fresh(now_unix)?;
        Ok(index)
    }

    /// Parses `index.json` without looking at a signature or the expiry:
    /// for the release builder reading back the index it wrote itself.
    /// A node uses [`Index::verify`].
    ///
    /// Format [`INDEX_FORMAT`], no unknown or repeated fields, every version
    /// (and `minimum_version`) a semantic version (one that is not is
    /// refused, naming it).
    pub fn parse_unverified(bytes: &[u8]) -> Result<Index, BundleError> {
        let raw: Raw = from_json("index", INDEX_FORMAT, bytes)?;
        let mut index = Index {
            expires: raw.expires,
            ..Index::new()
        };
        if let Some(text) = &raw.minimum_version {
            index.minimum_version =
                Some(Version::parse(text).map_err(|e| BundleError::NotSemver {
                    field: "index minimum_version".into(),
                    value: text.clone(),
                    reason: e.to_string(),
                })?);
        }
        for (i, text) in raw.versions.iter().enumerate() {
            let version = Version::parse(text).map_err(|e| BundleError::NotSemver {
                field: format!("index entry versions[{i}]"),
                value: text.clone(),
                reason: e.to_string(),
            })?;
            index.add(version);
        }
        Ok(index)
    }

    /// Refuses the index if `now_unix` is at or past `expires`.
    pub fn check_fresh(&self, now_unix: u64) -> Result<(), BundleError> {
        if now_unix >= self.expires {
            return Err(BundleError::IndexExpired {
                expires: self.expires,
                ago: now_unix - self.expires,
            });
        }
        Ok(())
    }

    /// The versions, oldest first.
    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    /// The newest version, if any.
    pub fn latest(&self) -> Option<&Version> {
        self.versions.last()
    }

    pub fn contains(&self, version: &Version) -> bool {
        self.versions.binary_search(version).is_ok()
    }

    /// Adds `version` in its place; false if it was already listed.
    pub fn add(&mut self, version: Version) -> bool {
        match self.versions.binary_search(&version) {
            Ok(_) => false,
            Err(at) => {
                self.versions.insert(at, version);
                true
            }
        }
    }

    /// Removes `version`; false if it was not listed.
    pub fn remove(&mut self, version: &Version) -> bool {
        match self.versions.binary_search(version) {
            Ok(at) => {
                self.versions.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// The bytes to sign and serve: one line of JSON (`format`, `expires`,
    /// `minimum_version` if set, `versions` oldest first) and a newline.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BundleError> {
        let raw = Raw {
            format: INDEX_FORMAT,
            expires: self.expires,
            minimum_version: self.minimum_version.as_ref().map(Version::to_string),
            versions: self.versions.iter().map(Version::to_string).collect(),
        };
        let mut bytes = serde_json::to_vec(&raw).map_err(|e| BundleError::Json {
            what: "index",
            detail: e.to_string(),
        })?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

/// `unix_seconds` as an RFC 3339 UTC time, `2026-01-01T00:00:00Z`, for
/// messages (the proleptic Gregorian calendar, no leap seconds, like Unix
/// time itself).
pub fn rfc3339(unix_seconds: u64) -> String {
    let days = unix_seconds / 86_400;
    let second_of_day = unix_seconds % 86_400;
    // Days to a civil date (H. Hinnant's algorithm), eras of 400 years
    // counted from 0000-03-01, which is 719468 days before 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).expect("version")
    }

    #[test]
    fn parses_sorts_and_finds_the_latest() {
        let index = Index::parse_unverified(
            br#"{"format":2,"expires":1,"versions":["0.10.0","0.9.0","0.2.0","0.9.0"]}"#,
        )
        .expect("parses");
        assert_eq!(index.versions(), &[v("0.2.0"), v("0.9.0"), v("0.10.0")]);
        assert_eq!(index.latest(), Some(&v("0.10.0")));
        assert!(index.contains(&v("0.9.0")));
        assert!(!index.contains(&v("0.9.1")));
        assert_eq!(index.expires, 1);
        assert_eq!(index.minimum_version, None);
    }

    #[test]
    fn a_release_sorts_after_its_pre_releases() {
        let index = Index::parse_unverified(
            br#"{"format":2,"expires":1,"versions":["1.0.0","1.0.0-rc.2","1.0.0-rc.10"]}"#,
        )
        .expect("parses");
        assert_eq!(
            index.versions(),
            &[v("1.0.0-rc.2"), v("1.0.0-rc.10"), v("1.0.0")]
        );
    }

    #[test]
    fn empty_index_has_no_latest() {
        let index =
            Index::parse_unverified(br#"{"format":2,"expires":0,"versions":[]}"#).expect("parses");
        assert_eq!(index.latest(), None);
        assert_eq!(index, Index::new());
    }

    #[test]
    fn add_keeps_order_and_round_trips() {
        let mut index = Index::new();
        assert!(index.add(v("0.9.0")));
        assert!(index.add(v("0.10.0")));
        assert!(index.add(v("0.1.0")));
        assert!(!index.add(v("0.9.0")));
        index.expires = 1_767_225_600;
        let bytes = index.to_bytes().expect("serializes");
        assert_eq!(
            bytes,
            b"{\"format\":2,\"expires\":1767225600,\"versions\":[\"0.1.0\",\"0.9.0\",\"0.10.0\"]}\n"
        );
        assert_eq!(Index::parse_unverified(&bytes).expect("parses"), index);
        index.minimum_version = Some(v("0.9.0"));
        let bytes = index.to_bytes().expect("serializes");
        assert_eq!(
            bytes,
            b"{\"format\":2,\"expires\":1767225600,\"minimum_version\":\"0.9.0\",\"versions\":[\"0.1.0\",\"0.9.0\",\"0.10.0\"]}\n"
        );
        assert_eq!(Index::parse_unverified(&bytes).expect("parses"), index);
        assert!(index.remove(&v("0.9.0")));
        assert!(!index.remove(&v("0.9.0")));
        assert_eq!(index.versions(), &[v("0.1.0"), v("0.10.0")]);
    }

    #[test]
    fn malformed_indexes_are_refused_with_a_reason() {
        let cases: [(&[u8], &str); 10] = [
            (b"", "the index is not valid: EOF"),
            (b"[]", "the index is not valid: it is not a JSON object"),
            (
                br#"{"versions":["0.1.0"]}"#,
                "the index is not valid: missing field `format`",
            ),
            (
                br#"{"format":1,"versions":["0.1.0"]}"#,
                "the index has format 1, but this node knows only format 2",
            ),
            (
                br#"{"format":3,"versions":["0.1.0"],"channels":{}}"#,
                "the index has format 3, but this node knows only format 2",
            ),
            (
                br#"{"format":2,"versions":["0.1.0"]}"#,
                "the index is not valid: missing field `expires`",
            ),
            (
                br#"{"format":2,"expires":1,"versions":["0.1.0"],"extra":true}"#,
                "the index is not valid: extra: unknown field `extra`",
            ),
            (
                br#"{"format":2,"expires":1,"versions":["0.1"]}"#,
                "index entry versions[0] \"0.1\" is not a semantic version",
            ),
            (
                br#"{"format":2,"expires":1,"minimum_version":"one","versions":[]}"#,
                "index minimum_version \"one\" is not a semantic version",
            ),
            (
                br#"{"format":2,"expires":-1,"versions":[]}"#,
                "the index is not valid: expires: invalid value",
            ),
        ];
        for (bytes, start) in cases {
            let err = Index::parse_unverified(bytes).expect_err(start);
            assert!(
                err.to_string().starts_with(start),
                "{:?}: {err}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn freshness_ends_at_expires() {
        let index = Index {
            expires: 1_000,
            ..Index::new()
        };
        assert_eq!(index.check_fresh(999), Ok(()));
        assert_eq!(
            index.check_fresh(1_000),
            Err(BundleError::IndexExpired {
                expires: 1_000,
                ago: 0
            })
        );
        assert_eq!(
            index.check_fresh(4_600).expect_err("expired").to_string(),
            "index.json expired at 1970-01-01T00:16:40Z, 3600 s ago: the source is stale or replayed"
        );
    }

    #[test]
    fn unix_seconds_read_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        // Never panics, whatever a signed document says.
        assert!(rfc3339(u64::MAX).ends_with('Z'));
    }
}
