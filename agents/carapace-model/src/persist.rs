//! Committed settings on /var: written to a temporary file, fsynced, renamed
//! over the old file and the directory fsynced, so a power cut leaves either
//! the old or the new settings, never a torn file.

use crate::settings::Settings;
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

/// Saves `settings` at `path` atomically and durably.
pub fn save(path: &Path, settings: &Settings) -> Result<(), PersistError> {
    let write_err = |err| PersistError::Write {
        path: path.to_path_buf(),
        err,
    };
    let text =
        serde_json::to_vec_pretty(settings).map_err(|e| write_err(std::io::Error::other(e)))?;
    let tmp = tmp_path(path);
    let mut f = std::fs::File::create(&tmp).map_err(write_err)?;
    f.write_all(&text).map_err(write_err)?;
    f.write_all(b"\n").map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(write_err)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err)?;
    Ok(())
}

/// Loads the settings at `path`: None if there are none yet. A leftover
/// temporary file from an interrupted save is ignored.
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
    Settings::from_value(value)
        .map(Some)
        .map_err(|e| PersistError::Invalid {
            path: path.to_path_buf(),
            err: e.to_string(),
        })
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
