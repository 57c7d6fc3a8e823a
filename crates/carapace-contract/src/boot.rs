//! /run/carapace/boot.json: what this boot is, as carapace-init publishes
//! it once stage 2 starts. Written by carapace-init (`boot_file`); read by
//! the API (`/v1/status`: version, root hash, slot) and the update daemon
//! (the running version, its root hash and the boot disk).
//!
//! ```json
//! {"disk":"/dev/vda","root_device":"/dev/vda2","roothash":"…","slot":"a",
//!  "stage1_ms":1650,"stage2_ms":1700,"var_device":"/dev/vda6",
//!  "verity_device":"/dev/vda3","version":"0.1.0"}
//! ```
//!
//! carapace-init always writes every field, `null` where it does not know
//! (a boot without stage 1 has no slot or devices); `version` is `unknown`
//! and `roothash` `none` when the image or the command line do not say.
//! A reader takes a field that is missing as unknown too, and ignores
//! fields it does not know.

use serde::{Deserialize, Serialize};

/// The whole file. Fields in the file's order (alphabetical, the order it
/// has always had).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    /// The disk stage 1 booted from, `/dev/vda`.
    pub disk: Option<String>,
    /// The root (slot) partition's device.
    pub root_device: Option<String>,
    /// The verified root hash, lowercase hex, as `roothash=` gave it.
    pub roothash: Option<String>,
    /// The slot booted: `a` or `b`.
    pub slot: Option<String>,
    /// When stage 1 had mounted the root, in ms since boot.
    pub stage1_ms: Option<u64>,
    /// When stage 2 started, in ms since boot.
    pub stage2_ms: Option<u64>,
    /// The state partition's device (mounted on /var).
    pub var_device: Option<String>,
    /// The verity hash partition's device.
    pub verity_device: Option<String>,
    /// The image's version (os-release `IMAGE_VERSION`).
    pub version: Option<String>,
}

impl Boot {
    /// Reads the file's text.
    pub fn parse(text: &str) -> Result<Boot, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The file's text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As carapace-init wrote it before the record existed (through
    /// `serde_json::json!`, keys sorted).
    const WRITTEN: &str = r#"{"disk":"/dev/vda","root_device":"/dev/vda4","roothash":"abababababababababababababababababababababababababababababababab","slot":"b","stage1_ms":1650,"stage2_ms":1700,"var_device":"/dev/vda6","verity_device":"/dev/vda5","version":"0.4.2"}"#;
    const WITHOUT_STAGE_1: &str = r#"{"disk":null,"root_device":null,"roothash":"none","slot":null,"stage1_ms":null,"stage2_ms":5,"var_device":null,"verity_device":null,"version":"unknown"}"#;

    #[test]
    fn the_file_carapace_init_writes_reads_back_and_writes_the_same() {
        for text in [WRITTEN, WITHOUT_STAGE_1] {
            let boot = Boot::parse(text).expect("parses");
            assert_eq!(boot.to_json(), text);
        }
        let boot = Boot::parse(WRITTEN).expect("parses");
        assert_eq!(boot.version.as_deref(), Some("0.4.2"));
        assert_eq!(boot.slot.as_deref(), Some("b"));
        assert_eq!(boot.stage1_ms, Some(1650));
        let none = Boot::parse(WITHOUT_STAGE_1).expect("parses");
        assert_eq!((none.slot, none.stage2_ms), (None, Some(5)));
    }

    #[test]
    fn missing_and_unknown_fields_are_no_error() {
        let boot =
            Boot::parse(r#"{"version":"0.2.0","slot":"b","later":{"x":1}}"#).expect("lenient");
        assert_eq!(boot.version.as_deref(), Some("0.2.0"));
        assert_eq!(boot.roothash, None);
        assert!(Boot::parse("{torn").is_err());
    }
}
