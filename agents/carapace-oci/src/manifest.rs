//! Reading what the registry serves as a manifest: an OCI image index or
//! Docker manifest list (several platforms), or an OCI or Docker v2 image
//! manifest (one platform); and picking the node's platform from an index.
//! Pure: bytes in, typed documents and decisions out.

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use std::fmt;

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What the manifest endpoint is asked for, most preferred first.
pub(crate) const ACCEPTED: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// The largest manifest or index kept (registries cap them at 4 MiB).
pub(crate) const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// One manifest document.
#[derive(Debug)]
pub(crate) enum Document {
    Index(Box<ImageIndex>),
    Manifest(Box<ImageManifest>),
}

/// Reads a manifest or an index; a Docker schema 1 manifest and anything
/// else is refused with the reason.
pub(crate) fn parse_document(bytes: &[u8]) -> Result<Document, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    match value
        .get("schemaVersion")
        .and_then(serde_json::Value::as_u64)
    {
        Some(2) => {}
        Some(1) => return Err("Docker schema 1 manifests are not supported".into()),
        Some(v) => return Err(format!("schemaVersion {v} is not 2")),
        None => return Err("no schemaVersion".into()),
    }
    let is_index = match value.get("mediaType").and_then(serde_json::Value::as_str) {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => {
            return Err(format!(
                "media type {other:?} is not an image manifest or index"
            ))
        }
        None => value.get("manifests").is_some(),
    };
    if is_index {
        serde_json::from_value(value)
            .map(|i| Document::Index(Box::new(i)))
            .map_err(|e| format!("not an image index: {e}"))
    } else {
        serde_json::from_value(value)
            .map(|m| Document::Manifest(Box::new(m)))
            .map_err(|e| format!("not an image manifest: {e}"))
    }
}

/// The OS, architecture and CPU variant images are chosen for, in the
/// spellings of Go's GOOS and GOARCH that image indexes use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// linux/amd64: the architecture Carapace nodes run.
    pub fn linux_amd64() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    /// Linux on the architecture this program was built for.
    pub fn this_machine() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "riscv64" => ("riscv64", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(Into::into),
        }
    }

    fn accepts(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        os == self.os
            && architecture == self.architecture
            && (variant.is_none() || variant == self.variant.as_deref())
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The index entry for `platform`: an exact variant match first, else an
/// entry that names no variant. Err lists the platforms the index has.
pub(crate) fn select_manifest<'a>(
    index: &'a ImageIndex,
    platform: &Platform,
) -> Result<&'a Descriptor, Vec<String>> {
    let entries: Vec<(&Descriptor, String, String, Option<&str>)> = index
        .manifests()
        .iter()
        .filter_map(|d| {
            let p = d.platform().as_ref()?;
            Some((
                d,
                p.os().to_string(),
                p.architecture().to_string(),
                p.variant().as_deref(),
            ))
        })
        .collect();
    let exact = entries
        .iter()
        .find(|(_, os, arch, v)| platform.accepts(os, arch, *v) && v.is_some());
    let any = entries
        .iter()
        .find(|(_, os, arch, v)| platform.accepts(os, arch, *v));
    match exact.or(any) {
        Some((d, ..)) => Ok(d),
        None => Err(entries
            .iter()
            .map(|(_, os, arch, v)| match v {
                Some(v) => format!("{os}/{arch}/{v}"),
                None => format!("{os}/{arch}"),
            })
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn index(entries: &[(&str, &str, Option<&str>, char)]) -> ImageIndex {
        let manifests: Vec<_> = entries
            .iter()
            .map(|(os, arch, variant, fill)| {
                let mut platform = json!({ "os": os, "architecture": arch });
                if let Some(v) = variant {
                    platform["variant"] = json!(v);
                }
                json!({ "mediaType": OCI_MANIFEST, "size": 100,
                        "digest": format!("sha256:{}", fill.to_string().repeat(64)),
                        "platform": platform })
            })
            .collect();
        let doc = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
        match parse_document(doc.to_string().as_bytes()).expect("parses") {
            Document::Index(i) => *i,
            Document::Manifest(_) => panic!("not an index"),
        }
    }

    #[test]
    fn the_node_platform_is_picked_from_an_index() {
        let i = index(&[
            ("linux", "arm64", Some("v8"), 'a'),
            ("linux", "amd64", None, 'b'),
            ("unknown", "unknown", None, 'c'),
        ]);
        let d = select_manifest(&i, &Platform::linux_amd64()).expect("amd64");
        assert_eq!(d.digest().to_string(), format!("sha256:{}", "b".repeat(64)));
        let arm = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        };
        let d = select_manifest(&i, &arm).expect("arm64");
        assert_eq!(d.digest().to_string(), format!("sha256:{}", "a".repeat(64)));
    }

    #[test]
    fn a_variant_is_matched_exactly_before_an_entry_without_one() {
        let i = index(&[
            ("linux", "arm", None, 'a'),
            ("linux", "arm", Some("v6"), 'b'),
            ("linux", "arm", Some("v7"), 'c'),
        ]);
        let v7 = Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: Some("v7".into()),
        };
        let d = select_manifest(&i, &v7).expect("v7");
        assert_eq!(d.digest().to_string(), format!("sha256:{}", "c".repeat(64)));
    }

    #[test]
    fn a_missing_platform_lists_what_there_is() {
        let i = index(&[
            ("linux", "arm64", Some("v8"), 'a'),
            ("windows", "amd64", None, 'b'),
        ]);
        let available = select_manifest(&i, &Platform::linux_amd64()).expect_err("none");
        assert_eq!(available, vec!["linux/arm64/v8", "windows/amd64"]);
    }

    #[test]
    fn documents_are_told_apart_and_schema_1_is_refused() {
        let m = json!({ "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": { "mediaType": "application/vnd.docker.container.image.v1+json", "size": 2,
                        "digest": format!("sha256:{}", "1".repeat(64)) },
            "layers": [] });
        assert!(matches!(
            parse_document(m.to_string().as_bytes()),
            Ok(Document::Manifest(_))
        ));
        let e = parse_document(br#"{"schemaVersion":1,"name":"x"}"#).expect_err("schema 1");
        assert!(e.contains("schema 1"), "{e}");
        let e = parse_document(br#"{"schemaVersion":2,"mediaType":"text/plain"}"#)
            .expect_err("other type");
        assert!(e.contains("text/plain"), "{e}");
        assert!(parse_document(b"<html>").is_err());
    }
}
