//! The log files behind `GET /v1/logs`: every console line of a service is
//! also appended to `/run/carapace/logs/<service>.log`, and PID 1's own
//! `carapace: …` lines of stage 2 to `init.log`. Each line is written as
//! `<ms since boot> <text>\n` in one `write` on an `O_APPEND` file, so a
//! reader never sees half a line. When a file passes [`CAP`] bytes it becomes
//! `<service>.log.1` (replacing the older one) and a new file starts: at most
//! twice the cap per service stays in memory (/run is a tmpfs).
//!
//! Logging never stops PID 1: a file that cannot be written is given up on
//! (said once on the console) and the console line still goes out.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where the files live on the node.
pub const DIR: &str = "/run/carapace/logs";
/// The size at which a file is rotated.
pub const CAP: u64 = 256 * 1024;
/// The file of PID 1's own lines.
pub const INIT: &str = "init";

struct Open {
    file: File,
    size: u64,
}

/// The open log files of one directory.
pub struct Sink {
    dir: PathBuf,
    cap: u64,
    files: HashMap<String, Option<Open>>,
}

impl Sink {
    /// A sink writing into `dir` (created if missing), rotating at `cap` bytes.
    pub fn new(dir: impl Into<PathBuf>, cap: u64) -> std::io::Result<Sink> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Sink {
            dir,
            cap,
            files: HashMap::new(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    fn open(path: &Path) -> std::io::Result<Open> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Open { file, size })
    }

    /// Appends one line of `name`, stamped `ms`. Errors are returned once
    /// per file; after that the file is skipped silently.
    pub fn append(&mut self, name: &str, ms: u64, line: &str) -> std::io::Result<()> {
        let path = self.path(name);
        if !self.files.contains_key(name) {
            let opened = Self::open(&path);
            let failed = opened
                .as_ref()
                .err()
                .map(|e| std::io::Error::new(e.kind(), e.to_string()));
            self.files.insert(name.to_string(), opened.ok());
            if let Some(e) = failed {
                return Err(e);
            }
        }
        let record = format!("{ms} {line}\n");
        let rotate = match self.files.get(name) {
            Some(Some(open)) => open.size > 0 && open.size + record.len() as u64 > self.cap,
            _ => return Ok(()),
        };
        if rotate {
            let old = self.dir.join(format!("{name}.log.1"));
            let reopened = std::fs::rename(&path, &old).and_then(|()| Self::open(&path));
            match reopened {
                Ok(open) => {
                    self.files.insert(name.to_string(), Some(open));
                }
                Err(e) => {
                    self.files.insert(name.to_string(), None);
                    return Err(e);
                }
            }
        }
        if let Some(Some(open)) = self.files.get_mut(name) {
            if let Err(e) = open.file.write_all(record.as_bytes()) {
                self.files.insert(name.to_string(), None);
                return Err(e);
            }
            open.size += record.len() as u64;
        }
        Ok(())
    }
}

static SINK: Mutex<Option<Sink>> = Mutex::new(None);

/// Starts writing log files into `dir` (stage 2 calls this once /run is up).
pub fn start(dir: &str) -> std::io::Result<()> {
    let sink = Sink::new(dir, CAP)?;
    if let Ok(mut guard) = SINK.lock() {
        *guard = Some(sink);
    }
    Ok(())
}

/// Appends a line of `name` to its file, if logging has started. Reports a
/// failure on the console (never through this function again for that file).
pub fn append(name: &str, line: &str) {
    let result = match SINK.lock() {
        Ok(mut guard) => match guard.as_mut() {
            Some(sink) => sink.append(name, crate::clock::ms_since_boot(), line),
            None => Ok(()),
        },
        Err(_) => Ok(()),
    };
    if let Err(e) = result {
        crate::console::write_line(&format!("carapace: cannot keep the log of {name}: {e}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("carapace-logs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn lines_are_stamped_and_appended_per_service() {
        let d = dir("append");
        let mut sink = Sink::new(&d, CAP).expect("sink");
        sink.append("api", 10, "listening").expect("append");
        sink.append("net", 11, "up").expect("append");
        sink.append("api", 12, "second line").expect("append");
        let api = std::fs::read_to_string(d.join("api.log")).expect("api.log");
        assert_eq!(api, "10 listening\n12 second line\n");
        let net = std::fs::read_to_string(d.join("net.log")).expect("net.log");
        assert_eq!(net, "11 up\n");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_full_file_is_rotated_and_the_older_one_replaced() {
        let d = dir("rotate");
        // Each record is "N line-N\n": 9 or 10 bytes; a cap of 30 holds three.
        let mut sink = Sink::new(&d, 30).expect("sink");
        for i in 0..8u64 {
            sink.append("svc", i, &format!("line-{i}")).expect("append");
        }
        let current = std::fs::read_to_string(d.join("svc.log")).expect("svc.log");
        let older = std::fs::read_to_string(d.join("svc.log.1")).expect("svc.log.1");
        assert_eq!(current, "6 line-6\n7 line-7\n");
        assert_eq!(older, "3 line-3\n4 line-4\n5 line-5\n");
        assert!(!d.join("svc.log.2").exists());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn an_unwritable_directory_is_reported_once_then_skipped() {
        let d = dir("unwritable");
        let mut sink = Sink::new(&d, CAP).expect("sink");
        // A directory where the file should be: opening it for append fails.
        std::fs::create_dir_all(d.join("svc.log")).expect("blocker");
        assert!(sink.append("svc", 1, "a").is_err());
        assert!(sink.append("svc", 2, "b").is_ok(), "reported once only");
        sink.append("other", 3, "c")
            .expect("other files still work");
        std::fs::remove_dir_all(&d).ok();
    }
}
