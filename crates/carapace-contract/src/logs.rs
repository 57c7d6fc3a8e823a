//! The log files behind `GET /v1/logs`: every console line of a service
//! (PID 1 writes them, and its own stage-2 lines as [`INIT`]) and of a
//! container (the container agent writes them, as [`container_log`]) is
//! appended to `/run/carapace/logs/<name>.log` as one record, `<ms since
//! boot> <text>\n` ([`record`]), in one `write` on an `O_APPEND` file, so a
//! reader never sees half a line. When a file passes [`CAP`] bytes it is
//! renamed `<name>.log.1` (replacing the older one) and a new file starts
//! ([`Sink`]): at most twice the cap per log stays in memory (/run is a
//! tmpfs). The API reads the files ([`parse_record`]) and serves each line
//! as an [`Entry`].
//!
//! Service names are a-z, 0-9 and `-` only, so no service can ever be
//! named like a container's log (`container_web`): the two writers never
//! append to, or rotate, the same file.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the files live on the node.
pub const DIR: &str = crate::paths::LOGS_DIR;
/// The size at which a file is rotated.
pub const CAP: u64 = 256 * 1024;
/// The log of PID 1's own lines.
pub const INIT: &str = "init";
/// What every container's log name starts with.
pub const CONTAINER_PREFIX: &str = "container_";

/// The log name of container `name`: `container_<name>`.
pub fn container_log(name: &str) -> String {
    format!("{CONTAINER_PREFIX}{name}")
}

/// The container a log name belongs to, if it is a container's.
pub fn container_of(log: &str) -> Option<&str> {
    log.strip_prefix(CONTAINER_PREFIX)
}

/// The current file of log `name`: `<name>.log`.
pub fn file_name(name: &str) -> String {
    format!("{name}.log")
}

/// The file log `name` is rotated to: `<name>.log.1`.
pub fn rotated_file_name(name: &str) -> String {
    format!("{name}.log.1")
}

/// The log a file name is the current file of (`api.log` → `api`).
pub fn log_of_file(file: &str) -> Option<&str> {
    file.strip_suffix(".log")
}

/// One record: `<ms> <text>\n`.
pub fn record(ms: u64, text: &str) -> String {
    format!("{ms} {text}\n")
}

/// A record's stamp and text (without its newline). A line that does not
/// start with a stamp (digits, then a space) is all text, stamped 0.
pub fn parse_record(record: &str) -> (u64, &str) {
    match record.split_once(' ') {
        Some((ms, text)) if !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()) => {
            (ms.parse().unwrap_or(0), text)
        }
        _ => (0, record),
    }
}

/// One log line as `GET /v1/logs` sends it, a JSON object a line
/// (`{"service":"api","ms":1234,"line":"started"}`); carapace-ctl reads it
/// as its `LogEntry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The log it is from: a service, `init`, or `container_<name>`.
    pub service: String,
    /// Milliseconds since boot when the writer read the line.
    pub ms: u64,
    /// The text, without newline.
    pub line: String,
}

impl Entry {
    /// The entry of one record of log `service`.
    pub fn from_record(service: &str, record: &str) -> Entry {
        let (ms, line) = parse_record(record);
        Entry {
            service: service.to_string(),
            ms,
            line: line.to_string(),
        }
    }
}

struct Open {
    file: File,
    size: u64,
}

/// The open log files of one directory: the writer of both PID 1 and the
/// container agent.
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

    fn open(path: &Path) -> std::io::Result<Open> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Open { file, size })
    }

    /// Appends one line of `name`, stamped `ms`. Errors are returned once
    /// per file; after that the file is skipped silently.
    pub fn append(&mut self, name: &str, ms: u64, line: &str) -> std::io::Result<()> {
        let path = self.dir.join(file_name(name));
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
        let record = record(ms, line);
        let rotate = match self.files.get(name) {
            Some(Some(open)) => open.size > 0 && open.size + record.len() as u64 > self.cap,
            _ => return Ok(()),
        };
        if rotate {
            let old = self.dir.join(rotated_file_name(name));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("carapace-logs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_record_is_its_stamp_a_space_and_its_text() {
        assert_eq!(record(10, "listening"), "10 listening\n");
        assert_eq!(parse_record("10 listening"), (10, "listening"));
        assert_eq!(parse_record("12 two  spaces "), (12, "two  spaces "));
        assert_eq!(parse_record("7 "), (7, ""));
        assert_eq!(parse_record("no stamp here"), (0, "no stamp here"));
        assert_eq!(parse_record(" 5 leading space"), (0, " 5 leading space"));
        assert_eq!(
            parse_record("99999999999999999999999 overflow"),
            (0, "overflow")
        );
        assert_eq!(
            Entry::from_record("api", "1234 started"),
            Entry {
                service: "api".into(),
                ms: 1234,
                line: "started".into()
            }
        );
    }

    #[test]
    fn an_entry_is_the_json_the_api_has_always_sent() {
        let text = r#"{"service":"api","ms":1234,"line":"started"}"#;
        let entry: Entry = serde_json::from_str(text).expect("parses");
        assert_eq!(serde_json::to_string(&entry).expect("json"), text);
    }

    #[test]
    fn file_and_container_log_names() {
        assert_eq!(file_name("api"), "api.log");
        assert_eq!(rotated_file_name("api"), "api.log.1");
        assert_eq!(log_of_file("api.log"), Some("api"));
        assert_eq!(log_of_file("api.log.1"), None);
        assert_eq!(container_log("web"), "container_web");
        assert_eq!(container_of("container_web"), Some("web"));
        assert_eq!(container_of("api"), None);
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
