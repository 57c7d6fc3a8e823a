//! What this boot is, published for the agents as /run/carapace/boot.json:
//! the version and root hash (as the ready line gives them), the slot and
//! the devices stage 1 booted from (handed over in the environment of the
//! exec, since /run starts empty in stage 2), and the stage times. The API's
//! status and the update daemon read this file instead of parsing the
//! command line and os-release again. The record and its JSON are
//! [`carapace_contract::boot`]'s.

use carapace_contract::boot::Boot;

/// Where the file is published.
pub const PATH: &str = carapace_contract::paths::BOOT_JSON;

/// The environment variables of the handover from stage 1.
pub const ENV_SLOT: &str = "CARAPACE_SLOT";
pub const ENV_DISK: &str = "CARAPACE_BOOT_DISK";
pub const ENV_ROOT: &str = "CARAPACE_ROOT_DEVICE";
pub const ENV_VERITY: &str = "CARAPACE_VERITY_DEVICE";
pub const ENV_VAR: &str = "CARAPACE_VAR_DEVICE";
pub const ENV_STAGE1_MS: &str = "CARAPACE_STAGE1_MS";

/// The file's contents; `env` looks up a handover variable (missing ones
/// are null: a boot without stage 1, as in tests, has none).
pub fn render(
    os_release: Option<&str>,
    cmdline: Option<&str>,
    stage2_ms: u64,
    env: impl Fn(&str) -> Option<String>,
) -> Boot {
    let ms = |key: &str| env(key).and_then(|v| v.parse::<u64>().ok());
    Boot {
        version: Some(crate::stage2::version_of(os_release)),
        roothash: Some(crate::stage2::roothash_of(cmdline)),
        slot: env(ENV_SLOT),
        disk: env(ENV_DISK),
        root_device: env(ENV_ROOT),
        verity_device: env(ENV_VERITY),
        var_device: env(ENV_VAR),
        stage1_ms: ms(ENV_STAGE1_MS),
        stage2_ms: Some(stage2_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The file as JSON.
    fn json(boot: Boot) -> Value {
        serde_json::from_str(&boot.to_json()).expect("valid JSON")
    }

    #[test]
    fn the_handover_and_the_image_facts_make_the_file() {
        let hash = "ab".repeat(32);
        let env = |k: &str| match k {
            ENV_SLOT => Some("b".to_string()),
            ENV_DISK => Some("/dev/vda".to_string()),
            ENV_ROOT => Some("/dev/vda4".to_string()),
            ENV_STAGE1_MS => Some("1650".to_string()),
            _ => None,
        };
        let v = json(render(
            Some("IMAGE_VERSION=\"0.4.2\"\n"),
            Some(&format!("console=ttyS0 roothash={hash} quiet")),
            1700,
            env,
        ));
        assert_eq!(v["version"], "0.4.2");
        assert_eq!(v["roothash"], hash.as_str());
        assert_eq!(v["slot"], "b");
        assert_eq!(v["root_device"], "/dev/vda4");
        assert_eq!(v["verity_device"], Value::Null);
        assert_eq!(v["stage1_ms"], 1650);
        assert_eq!(v["stage2_ms"], 1700);
    }

    #[test]
    fn the_file_is_written_as_it_always_was() {
        let hash = "ab".repeat(32);
        let env = |k: &str| match k {
            ENV_SLOT => Some("b".to_string()),
            ENV_DISK => Some("/dev/vda".to_string()),
            ENV_ROOT => Some("/dev/vda4".to_string()),
            ENV_VERITY => Some("/dev/vda5".to_string()),
            ENV_VAR => Some("/dev/vda6".to_string()),
            ENV_STAGE1_MS => Some("1650".to_string()),
            _ => None,
        };
        let boot = render(
            Some("IMAGE_VERSION=\"0.4.2\"\n"),
            Some(&format!("roothash={hash}")),
            1700,
            env,
        );
        // The text of the writer before the record existed (serde_json::json!).
        assert_eq!(
            boot.to_json(),
            format!(
                r#"{{"disk":"/dev/vda","root_device":"/dev/vda4","roothash":"{hash}","slot":"b","stage1_ms":1650,"stage2_ms":1700,"var_device":"/dev/vda6","verity_device":"/dev/vda5","version":"0.4.2"}}"#
            )
        );
        assert_eq!(
            render(None, None, 5, |_| None).to_json(),
            r#"{"disk":null,"root_device":null,"roothash":"none","slot":null,"stage1_ms":null,"stage2_ms":5,"var_device":null,"verity_device":null,"version":"unknown"}"#
        );
    }

    #[test]
    fn without_a_handover_the_slot_is_unknown() {
        let v = json(render(None, None, 5, |_| None));
        assert_eq!(v["slot"], Value::Null);
        assert_eq!(v["version"], "unknown");
        assert_eq!(v["roothash"], "none");
    }
}
