//! The agent's published state, /run/carapace/network.json, which the API
//! server includes in its status and the update daemon reads: the record
//! and its JSON are [`carapace_contract::network`]'s. Here it is written,
//! with the atomic file writer used for it and for resolv.conf.

use std::path::Path;

pub use carapace_contract::network::{LinkState, Mode, NetworkStatus, NtpStatus};

/// Where the state is published.
pub const NETWORK_JSON: &str = carapace_contract::paths::NETWORK_JSON;

/// Writes `status` to `path` atomically, with a newline.
pub fn write(status: &NetworkStatus, path: &Path) -> std::io::Result<()> {
    let mut text = status.to_json();
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Writes `data` to `path` through a temporary file in the same directory
/// and a rename, creating the directory if needed, so readers see the old
/// or the new content and never a torn file.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    carapace_model::persist::write_file(path, data, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_the_file() {
        let dir = std::env::temp_dir().join(format!("carapace-net-status-{}", std::process::id()));
        let path = dir.join("network.json");
        write(&NetworkStatus::default(), &path).expect("written");
        let s = NetworkStatus {
            interface: Some("eth0".into()),
            ..NetworkStatus::default()
        };
        write(&s, &path).expect("rewritten");
        let back: NetworkStatus =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("parse");
        assert_eq!(back, s);
        assert_eq!(
            std::fs::read_dir(&dir).expect("dir").count(),
            1,
            "no temp file left"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
