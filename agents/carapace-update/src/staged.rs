//! The record of a version that was downloaded into the inactive slot and
//! verified, but not applied yet: kept on /var so that a reboot (or a
//! restart of the daemon) between `download` and `apply` loses nothing.
//!
//! It holds the signed manifest and its signature exactly as served, and
//! the source directory its files came from. On load the signature is
//! checked again with the key of the running root and the inactive slot
//! must still carry the identity the download gave it (partition UUIDs
//! from the root hash, label `carapace_<version>`); anything else means the
//! record is stale and it is dropped.

use carapace_bundle::{Manifest, PublicKey};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where the record lives.
pub const PATH: &str = "/var/lib/carapace/update/staged.json";

/// What is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// `manifest.json` as served.
    pub manifest: String,
    /// `manifest.json.sig` as served.
    pub signature: String,
    /// The update source (the `updates.source` setting when downloaded).
    pub source: String,
    /// The version's directory under it, `<version>/`.
    pub dir: String,
}

impl Record {
    /// Checks the signature again and returns the manifest.
    pub fn manifest(&self, key: &PublicKey) -> Result<Manifest, String> {
        carapace_bundle::verify(key, self.manifest.as_bytes(), &self.signature)
            .map_err(|e| e.to_string())
    }
}

/// Writes the record durably.
pub fn save(path: &Path, record: &Record) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let json = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    carapace_model::persist::write_file(path, &json, 0o600)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Reads the record; None when there is none.
pub fn load(path: &Path) -> Result<Option<Record>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Removes the record (none is fine) durably.
pub fn clear(path: &Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot remove {}: {e}", path.display())),
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_a_round_trip_and_clearing_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("carapace-staged-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("update/staged.json");
        assert_eq!(load(&path).expect("load"), None);
        let record = Record {
            manifest: "{\"format\":1}".into(),
            signature: "ab".repeat(64),
            source: "http://10.0.2.2:8000/good/".into(),
            dir: "0.2.0/".into(),
        };
        save(&path, &record).expect("save");
        assert_eq!(load(&path).expect("load"), Some(record));
        clear(&path).expect("clear");
        clear(&path).expect("clear again");
        assert_eq!(load(&path).expect("load"), None);
        std::fs::write(&path, "{torn").expect("write");
        assert!(
            load(&path).is_err(),
            "a torn record is an error, not a version"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
