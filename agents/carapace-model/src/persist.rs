//! Committed settings on /var: written to a temporary file, fsynced, renamed
//! over the old file and the directory fsynced, so a power cut leaves either
//! the old or the new settings, never a torn file. What the file holds and
//! how versions share it (the schema, fields this version does not know) is
//! [`crate::settings_file`]'s.

use crate::settings::Settings;
use crate::settings_file;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot write {path}: {err}")]
    Write { path: PathBuf, err: std::io::Error },
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{path} holds invalid settings: {err}")]
    Invalid { path: PathBuf, err: String },
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `data` to `path` whole or not at all, and durably: a temporary
/// file in the same directory (created with `mode`), fsynced, renamed over
/// `path`, then the directory fsynced. A failed write leaves no temporary
/// file behind. Every file the agents keep on /var or publish under /run is
/// written this way.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = tmp_path(path);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

/// Saves `settings` at `path` atomically and durably, as
/// [`settings_file::to_json`] makes them: with the schema, and with the
/// fields the file held that this version does not know.
pub fn save(path: &Path, settings: &Settings) -> Result<(), PersistError> {
    let write_err = |err| PersistError::Write {
        path: path.to_path_buf(),
        err,
    };
    let mut text = serde_json::to_vec_pretty(&settings_file::to_json(settings))
        .map_err(|e| write_err(std::io::Error::other(e)))?;
    text.push(b'\n');
    write_file(path, &text, 0o600).map_err(write_err)
}

/// Loads the settings at `path`: None if there are none yet. The file is
/// read leniently ([`settings_file::from_json`]): fields a newer version
/// wrote are kept for the next save, not an error. A leftover temporary
/// file from an interrupted save is ignored.
pub fn load(path: &Path) -> Result<Option<Settings>, PersistError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(PersistError::Read {
                path: path.to_path_buf(),
                err,
            })
        }
    };
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| PersistError::Invalid {
            path: path.to_path_buf(),
            err: e.to_string(),
        })?;
    settings_file::from_json(value)
        .map(Some)
        .map_err(|e| PersistError::Invalid {
            path: path.to_path_buf(),
            err: e.to_string(),
        })
}

/// Identity of a file: a rename gives a new inode, an in-place write a new
/// mtime or size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    size: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
        size: m.size(),
    })
}

/// Polls a settings file for the agents that apply what the API commits
/// (about once a second is plenty: commits are rare).
#[derive(Debug)]
pub struct SettingsWatch {
    path: PathBuf,
    /// None before the first poll; Some(None) while the file is absent.
    last: Option<Option<Stamp>>,
}

impl SettingsWatch {
    pub fn new(path: impl Into<PathBuf>) -> SettingsWatch {
        SettingsWatch {
            path: path.into(),
            last: None,
        }
    }

    /// None when the file is as at the last call; otherwise (and always on
    /// the first call) what [`load`] makes of it now.
    pub fn poll(&mut self) -> Option<Result<Option<Settings>, PersistError>> {
        let now = stamp(&self.path);
        if self.last == Some(now) {
            return None;
        }
        self.last = Some(now);
        Some(load(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("carapace-model-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn a_file_is_written_whole_with_its_mode_or_not_at_all() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("write-file");
        let path = d.join("key.pem");
        write_file(&path, b"secret", 0o600).expect("written");
        assert_eq!(std::fs::read(&path).expect("read"), b"secret");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A directory in the way of the rename: the old file stays, no
        // temporary file is left behind.
        let blocked = d.join("blocked");
        std::fs::create_dir_all(blocked.join("inner")).expect("blocker");
        assert!(write_file(&blocked, b"new", 0o644).is_err());
        assert!(blocked.is_dir());
        assert!(!tmp_path(&blocked).exists(), "no temporary file left");
    }

    #[test]
    fn saves_and_loads_back() {
        let d = dir("roundtrip");
        let path = d.join("settings.json");
        assert!(load(&path).expect("no file is fine").is_none());
        let mut s = Settings::default();
        s.sysctl.insert("vm.swappiness".into(), "10".into());
        save(&path, &s).expect("saved");
        assert_eq!(load(&path).expect("loads"), Some(s));
        assert!(!tmp_path(&path).exists());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn an_interrupted_save_leaves_the_old_settings() {
        let d = dir("interrupted");
        let path = d.join("settings.json");
        let old = Settings::default();
        save(&path, &old).expect("saved");
        // A power cut after the temporary file was partly written.
        std::fs::write(tmp_path(&path), b"{\"hostname\": \"node-").expect("torn temp file");
        assert_eq!(load(&path).expect("loads"), Some(old));
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_field_from_a_newer_version_survives_load_and_commit() {
        use crate::settings::TokenHash;
        use crate::store::Store;
        use serde_json::json;
        let d = dir("newer");
        let path = d.join("settings.json");
        let hash = TokenHash::of("0123456789abcdef");
        let newer = json!({
            "schema": 2,
            "fleet": { "group": "edge" },
            "api": { "token_sha256": hash.as_str(), "rate_limit": 50 },
            "network": { "dhcp": false, "addresses": ["10.0.2.15/24"],
                         "routes": [{ "to": "0.0.0.0/0", "via": "10.0.2.2" }] },
            "containers": { "web": { "image": "nginx:1.27", "gpu": "any" } }
        });
        std::fs::write(&path, newer.to_string()).expect("written by a newer version");

        // Rolled back: this version loads what it knows and keeps the rest.
        let loaded = load(&path).expect("loads").expect("settings");
        assert!(loaded
            .api
            .token_sha256
            .as_ref()
            .is_some_and(|h| h.matches("0123456789abcdef")));
        assert!(!loaded.network.dhcp);
        assert_eq!(loaded.network.addresses.len(), 1);
        assert!(loaded.containers.contains_key("web"));

        // An unrelated change, committed as the API commits.
        let mut store = Store::new(loaded);
        let commit = |store: &mut Store, patch| {
            store.stage(patch).expect("valid");
            store
                .commit(|_, new, _| save(&path, new).map_err(|e| e.to_string()))
                .expect("commits");
            let text = std::fs::read(&path).expect("read back");
            serde_json::from_slice::<serde_json::Value>(&text).expect("JSON")
        };
        let on_disk = commit(&mut store, json!({ "hostname": "node-2" }));
        assert_eq!(on_disk["hostname"], json!("node-2"));
        assert_eq!(on_disk["schema"], json!(2), "the newer schema stays");
        assert_eq!(on_disk["fleet"], json!({ "group": "edge" }));
        assert_eq!(on_disk["api"]["rate_limit"], json!(50));
        assert_eq!(on_disk["api"]["token_sha256"], json!(hash.as_str()));
        assert_eq!(on_disk["containers"]["web"]["gpu"], json!("any"));
        assert_eq!(on_disk["network"]["addresses"], json!(["10.0.2.15/24"]));

        // The container removed: its unknown field goes with it.
        let on_disk = commit(&mut store, json!({ "containers": { "web": null } }));
        assert_eq!(on_disk["containers"], json!({}));
        assert_eq!(on_disk["fleet"], json!({ "group": "edge" }));
        assert_eq!(on_disk["api"]["rate_limit"], json!(50));
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let d = dir("corrupt");
        let path = d.join("settings.json");
        std::fs::write(&path, b"{\"hostname\": 5}").expect("write");
        let err = load(&path).expect_err("invalid");
        assert!(
            err.to_string().contains("settings.json") && err.to_string().contains("hostname"),
            "{err}"
        );
        std::fs::remove_dir_all(&d).ok();
    }
}
