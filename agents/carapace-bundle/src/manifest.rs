//! The manifest: what a version consists of, signed as a whole.
//!
//! ```json
//! { "format": 1, "version": "0.2.0", "architecture": "x86_64", "min_from_version": "0.1.0",
//!   "roothash": "<64 hex: the dm-verity root hash>",
//!   "root":   { "file": "root.img", "stored_bytes": N, "sha256": "<hex>", "data_bytes": M },
//!   "verity": { "file": "root.verity", "bytes": N, "sha256": "<hex>" },
//!   "uki":    { "file": "carapace_0.2.0.efi", "bytes": N, "sha256": "<hex>" } }
//! ```
//!
//! Parsing refuses unknown and repeated fields and then validates every
//! rule (see [`Manifest::validate`]), so a `Manifest` that came out of
//! [`Manifest::parse`] can be acted on. Parsing alone does not make it
//! trusted: [`crate::verify`] checks the signature over the bytes first.

use crate::{is_lower_hex, BundleError, FORMAT};
use semver::Version;
use serde::{Deserialize, Serialize};

/// The largest part (and root data area) a manifest may describe: 4 GiB,
/// far above any slot, low enough that no size arithmetic can overflow.
pub const MAX_PART_BYTES: u64 = 4 << 30;

/// The signed description of one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: u32,
    #[serde(with = "version_text")]
    pub version: Version,
    /// `x86_64`: the node refuses a bundle for another architecture.
    pub architecture: String,
    /// The oldest running version that may update to this one.
    #[serde(with = "version_text")]
    pub min_from_version: Version,
    /// The dm-verity root hash (SHA-256), 64 lowercase hex digits: the UKI's
    /// `roothash=` and, split in halves, the slot's partition UUIDs.
    pub roothash: String,
    pub root: RootPart,
    pub verity: Part,
    pub uki: Part,
}

/// The root filesystem part: the data area dm-verity covers
/// (`data_bytes`), stored without its trailing zero blocks
/// (`stored_bytes`); the receiver writes zeros for the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootPart {
    pub file: String,
    /// The size of the file, which `sha256` covers.
    pub stored_bytes: u64,
    /// 64 lowercase hex digits: the SHA-256 of the file.
    pub sha256: String,
    /// The size of the verity-covered data area: a multiple of 512, at
    /// least `stored_bytes`.
    pub data_bytes: u64,
}

/// A part that is downloaded as it is (the verity hash device, the UKI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub file: String,
    pub bytes: u64,
    /// 64 lowercase hex digits: the SHA-256 of the file.
    pub sha256: String,
}

impl RootPart {
    /// The file as downloaded: its name, stored size and digest.
    pub fn as_part(&self) -> Part {
        Part {
            file: self.file.clone(),
            bytes: self.stored_bytes,
            sha256: self.sha256.clone(),
        }
    }
}

impl Part {
    /// The same part (for symmetry with [`RootPart::as_part`]).
    pub fn as_part(&self) -> Part {
        self.clone()
    }
}

/// Deserializes `bytes` as `T`, naming the path of a bad field; `what` is
/// "manifest" or "index", `known` the one format number accepted.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    known: u32,
    bytes: &[u8],
) -> Result<T, BundleError> {
    let json_error = |detail: String| BundleError::Json { what, detail };
    // Only `format` is looked at first, so that a newer format is refused
    // for its number and not for a field this code does not know.
    let probe: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| json_error(e.to_string()))?;
    let Some(object) = probe.as_object() else {
        return Err(json_error("it is not a JSON object".into()));
    };
    match object.get("format") {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(known)) => {}
        Some(other) => {
            return Err(BundleError::Format {
                what,
                found: other.to_string(),
                known,
            })
        }
        None => return Err(json_error("missing field `format`".into())),
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            json_error(inner)
        } else {
            json_error(format!("{path}: {inner}"))
        }
    })?;
    de.end().map_err(|e| json_error(e.to_string()))?;
    Ok(value)
}

impl Manifest {
    /// Parses and validates a manifest. Unknown fields, repeated fields and
    /// trailing garbage are refused; so is anything [`Manifest::validate`] refuses.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, BundleError> {
        let manifest: Manifest = from_json("manifest", FORMAT, bytes)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The canonical bytes: pretty JSON (two-space indent) in the field order
    /// of the structs, and a trailing newline. Refuses an invalid manifest,
    /// so that what is signed always parses.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BundleError> {
        self.validate()?;
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| BundleError::Json {
            what: "manifest",
            detail: e.to_string(),
        })?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Checks every rule:
    /// - `format` is [`FORMAT`];
    /// - `version` and `min_from_version` carry no build metadata (a `+` in
    ///   a UKI's name is systemd-boot's boot counter), and `min_from_version`
    ///   is not newer than `version`;
    /// - `architecture` is a name (the policy decides whether it is this node's);
    /// - `roothash` and each `sha256` are 64 lowercase hex digits;
    /// - file names are plain names;
    /// - no part is empty or larger than [`MAX_PART_BYTES`];
    /// - `root.stored_bytes <= root.data_bytes`, and `data_bytes` is a
    ///   multiple of 512.
    pub fn validate(&self) -> Result<(), BundleError> {
        if self.format != FORMAT {
            return Err(BundleError::Format {
                what: "manifest",
                found: self.format.to_string(),
                known: FORMAT,
            });
        }
        for (field, value) in [
            ("version", &self.version),
            ("min_from_version", &self.min_from_version),
        ] {
            if !value.build.is_empty() {
                return Err(BundleError::BuildMetadata {
                    field,
                    value: value.clone(),
                });
            }
        }
        if self.min_from_version > self.version {
            return Err(BundleError::MinFromAboveVersion {
                min_from: self.min_from_version.clone(),
                version: self.version.clone(),
            });
        }
        let arch_ok = !self.architecture.is_empty()
            && self.architecture.len() <= 32
            && self
                .architecture
                .bytes()
                .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_'));
        if !arch_ok {
            return Err(BundleError::ArchitectureName(self.architecture.clone()));
        }
        check_hex("roothash", &self.roothash)?;
        let root = &self.root;
        check_file_name("root.file", &root.file)?;
        check_hex("root.sha256", &root.sha256)?;
        check_size("root.stored_bytes", root.stored_bytes)?;
        check_size("root.data_bytes", root.data_bytes)?;
        if root.stored_bytes > root.data_bytes {
            return Err(BundleError::StoredAboveData {
                stored: root.stored_bytes,
                data: root.data_bytes,
            });
        }
        if !root.data_bytes.is_multiple_of(512) {
            return Err(BundleError::DataNotSectors(root.data_bytes));
        }
        for (part, [file, bytes, sha256]) in [
            (
                &self.verity,
                ["verity.file", "verity.bytes", "verity.sha256"],
            ),
            (&self.uki, ["uki.file", "uki.bytes", "uki.sha256"]),
        ] {
            check_file_name(file, &part.file)?;
            check_size(bytes, part.bytes)?;
            check_hex(sha256, &part.sha256)?;
        }
        Ok(())
    }
}

pub(crate) fn check_hex(field: &'static str, value: &str) -> Result<(), BundleError> {
    if is_lower_hex(value, 64) {
        Ok(())
    } else {
        Err(BundleError::Hex {
            field,
            value: value.to_string(),
            digits: 64,
        })
    }
}

pub(crate) fn check_size(field: &'static str, bytes: u64) -> Result<(), BundleError> {
    if bytes == 0 {
        return Err(BundleError::Empty { field });
    }
    if bytes > MAX_PART_BYTES {
        return Err(BundleError::TooLarge {
            field,
            bytes,
            max: MAX_PART_BYTES,
        });
    }
    Ok(())
}

/// A plain file name, safe to append to a URL or a directory: 1 to 255
/// characters among ASCII letters, digits, `.`, `_`, `-` and `+`, not
/// starting with `.` (so never `.` or `..`), and so never holding `/`, `\`,
/// `%`, `?`, `#` or white space.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'+'))
}

fn check_file_name(field: &'static str, value: &str) -> Result<(), BundleError> {
    if is_plain_file_name(value) {
        Ok(())
    } else {
        Err(BundleError::FileName {
            field,
            value: value.to_string(),
        })
    }
}

/// (De)serializes a [`Version`] as its text, refusing text that is not a
/// semantic version with the reason semver gives.
mod version_text {
    use semver::Version;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Version, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Version, D::Error> {
        let text = String::deserialize(d)?;
        Version::parse(&text).map_err(|e| {
            serde::de::Error::custom(format_args!("{text:?} is not a semantic version: {e}"))
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format: 1,
            version: Version::new(0, 2, 0),
            architecture: "x86_64".into(),
            min_from_version: Version::new(0, 1, 0),
            roothash: "ab".repeat(32),
            root: RootPart {
                file: "root.img".into(),
                stored_bytes: 4096 * 3,
                sha256: "01".repeat(32),
                data_bytes: 128 << 20,
            },
            verity: Part {
                file: "root.verity".into(),
                bytes: 4096 * 11,
                sha256: "02".repeat(32),
            },
            uki: Part {
                file: "carapace_0.2.0.efi".into(),
                bytes: 12_345_678,
                sha256: "03".repeat(32),
            },
        }
    }

    #[test]
    fn round_trips_through_canonical_bytes() {
        let m = sample();
        let bytes = m.to_bytes().expect("valid");
        assert_eq!(bytes.last(), Some(&b'\n'));
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        // Stable field order, as documented.
        let order = [
            "\"format\"",
            "\"version\"",
            "\"architecture\"",
            "\"min_from_version\"",
            "\"roothash\"",
            "\"root\"",
            "\"stored_bytes\"",
            "\"data_bytes\"",
            "\"verity\"",
            "\"uki\"",
        ];
        let positions: Vec<usize> = order
            .iter()
            .map(|k| text.find(k).unwrap_or_else(|| panic!("{k} in {text}")))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(text.starts_with("{\n  \"format\": 1,\n  \"version\": \"0.2.0\","));
        let back = Manifest::parse(&bytes).expect("parses");
        assert_eq!(back, m);
        assert_eq!(back.to_bytes().expect("valid"), bytes);
    }

    #[test]
    fn as_part_gives_what_is_downloaded() {
        let m = sample();
        let root = m.root.as_part();
        assert_eq!(root.file, "root.img");
        assert_eq!(root.bytes, m.root.stored_bytes);
        assert_eq!(root.sha256, m.root.sha256);
        assert_eq!(m.uki.as_part(), m.uki);
    }

    #[test]
    fn plain_file_names() {
        for ok in ["root.img", "carapace_0.2.0.efi", "a", "x+y-z_1.2"] {
            assert!(is_plain_file_name(ok), "{ok}");
        }
        let long = "a".repeat(256);
        for bad in [
            "", ".", "..", ".hidden", "a/b", "../x", "a\\b", "a b", "a%2f", "é", "a?b", "a#b",
            &long,
        ] {
            assert!(!is_plain_file_name(bad), "{bad}");
        }
    }
}
