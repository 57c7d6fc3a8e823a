//! `index.json`: the source's list of versions, `{"format":1,"versions":[…]}`.
//!
//! Unsigned: it only says which directories to look at. Whatever it names
//! is trusted only through that version's signed manifest, and the daemon
//! checks that the manifest under `<v>/` is for version `v`. The list is
//! kept sorted by semantic-version precedence without duplicates (0.10.0
//! after 0.9.0), whatever order the file has.

use crate::manifest::from_json;
use crate::{BundleError, FORMAT};
use semver::Version;
use serde::{Deserialize, Serialize};

/// The versions a source offers, sorted, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    versions: Vec<Version>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    format: u32,
    versions: Vec<String>,
}

impl Index {
    /// An index with no versions.
    pub fn new() -> Index {
        Index::default()
    }

    /// Parses `index.json`: format 1, no unknown fields, every entry a
    /// semantic version (an entry that is not is refused, naming it).
    pub fn parse(bytes: &[u8]) -> Result<Index, BundleError> {
        let raw: Raw = from_json("index", bytes)?;
        let mut index = Index::new();
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

    /// `{"format":1,"versions":[…]}` and a newline, oldest version first.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BundleError> {
        let raw = Raw {
            format: FORMAT,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).expect("version")
    }

    #[test]
    fn parses_sorts_and_finds_the_latest() {
        let index = Index::parse(br#"{"format":1,"versions":["0.10.0","0.9.0","0.2.0","0.9.0"]}"#)
            .expect("parses");
        assert_eq!(index.versions(), &[v("0.2.0"), v("0.9.0"), v("0.10.0")]);
        assert_eq!(index.latest(), Some(&v("0.10.0")));
        assert!(index.contains(&v("0.9.0")));
        assert!(!index.contains(&v("0.9.1")));
    }

    #[test]
    fn a_release_sorts_after_its_pre_releases() {
        let index =
            Index::parse(br#"{"format":1,"versions":["1.0.0","1.0.0-rc.2","1.0.0-rc.10"]}"#)
                .expect("parses");
        assert_eq!(
            index.versions(),
            &[v("1.0.0-rc.2"), v("1.0.0-rc.10"), v("1.0.0")]
        );
    }

    #[test]
    fn empty_index_has_no_latest() {
        let index = Index::parse(br#"{"format":1,"versions":[]}"#).expect("parses");
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
        let bytes = index.to_bytes().expect("serializes");
        assert_eq!(
            bytes,
            b"{\"format\":1,\"versions\":[\"0.1.0\",\"0.9.0\",\"0.10.0\"]}\n"
        );
        assert_eq!(Index::parse(&bytes).expect("parses"), index);
        assert!(index.remove(&v("0.9.0")));
        assert!(!index.remove(&v("0.9.0")));
        assert_eq!(index.versions(), &[v("0.1.0"), v("0.10.0")]);
    }

    #[test]
    fn malformed_indexes_are_refused_with_a_reason() {
        let cases: [(&[u8], &str); 7] = [
            (b"", "the index is not valid: EOF"),
            (b"[]", "the index is not valid: it is not a JSON object"),
            (
                br#"{"versions":["0.1.0"]}"#,
                "the index is not valid: missing field `format`",
            ),
            (
                br#"{"format":2,"versions":["0.1.0"],"channels":{}}"#,
                "the index has format 2, but this node knows only format 1",
            ),
            (
                br#"{"format":1,"versions":["0.1.0"],"extra":true}"#,
                "the index is not valid: extra: unknown field `extra`",
            ),
            (
                br#"{"format":1,"versions":["0.1"]}"#,
                "index entry versions[0] \"0.1\" is not a semantic version",
            ),
            (
                br#"{"format":1,"versions":[1]}"#,
                "the index is not valid: versions[0]: invalid type",
            ),
        ];
        for (bytes, start) in cases {
            let err = Index::parse(bytes).expect_err(start);
            assert!(
                err.to_string().starts_with(start),
                "{:?}: {err}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
