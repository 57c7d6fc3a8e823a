//! Reading the services' log files that carapace-init keeps in
//! /run/carapace/logs (`<service>.log`, rotated to `<service>.log.1`; each
//! line `<ms since boot> <text>`, the format of [`carapace_contract::logs`]):
//! the recent lines of one service or of all, and a follower that returns
//! what was appended since it last looked, across rotations.

use carapace_contract::logs;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where carapace-init writes the files.
pub const DIR: &str = logs::DIR;

/// One log line, as `GET /v1/logs` sends it.
pub use carapace_contract::logs::Entry;

fn parse(service: &str, record: &str) -> Entry {
    Entry::from_record(service, record)
}

/// The log files of one directory.
#[derive(Debug, Clone)]
pub struct LogDir {
    dir: PathBuf,
}

/// Where a follower has read up to in one service's current file.
#[derive(Debug, Clone, Copy)]
struct Position {
    ino: u64,
    offset: u64,
}

impl LogDir {
    pub fn new(dir: impl Into<PathBuf>) -> LogDir {
        LogDir { dir: dir.into() }
    }

    fn current(&self, service: &str) -> PathBuf {
        self.dir.join(logs::file_name(service))
    }

    fn older(&self, service: &str) -> PathBuf {
        self.dir.join(logs::rotated_file_name(service))
    }

    /// The services that have a log, sorted.
    pub fn services(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                logs::log_of_file(&name).map(str::to_string)
            })
            .collect();
        names.sort();
        names
    }

    /// Whether `service` names a log (and nothing else: no paths).
    pub fn has(&self, service: &str) -> bool {
        !service.is_empty()
            && service
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && self.current(service).exists()
    }

    /// The last `lines` lines of `service`, or of every service merged in
    /// time order when `service` is None.
    pub fn recent(&self, service: Option<&str>, lines: usize) -> Vec<Entry> {
        let services = match service {
            Some(s) => vec![s.to_string()],
            None => self.services(),
        };
        let mut all: Vec<Entry> = Vec::new();
        for s in &services {
            let mut text = std::fs::read_to_string(self.older(s)).unwrap_or_default();
            text.push_str(&std::fs::read_to_string(self.current(s)).unwrap_or_default());
            let records: Vec<&str> = text.lines().collect();
            let start = records.len().saturating_sub(lines);
            all.extend(records[start..].iter().map(|r| parse(s, r)));
        }
        // Stable: lines of one service with the same stamp keep their order.
        all.sort_by_key(|e| e.ms);
        let start = all.len().saturating_sub(lines);
        all.split_off(start)
    }

    /// A follower that will return what is appended from now on.
    pub fn follow(&self, service: Option<&str>) -> Follower {
        let mut f = Follower {
            logs: self.clone(),
            only: service.map(str::to_string),
            positions: BTreeMap::new(),
        };
        for s in f.watched() {
            if let Ok(meta) = std::fs::metadata(self.current(&s)) {
                f.positions.insert(
                    s,
                    Position {
                        ino: meta.ino(),
                        offset: meta.len(),
                    },
                );
            }
        }
        f
    }
}

/// Returns the complete lines of `path` from `offset` on, and the offset just
/// past the last complete line. A file that is gone reads as nothing.
fn read_from(path: &Path, offset: u64) -> (Vec<String>, u64) {
    let mut buf = Vec::new();
    let read = std::fs::File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(offset))?;
        f.read_to_end(&mut buf)
    });
    if read.is_err() {
        return (Vec::new(), offset);
    }
    let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&buf[..complete]);
    (
        text.lines().map(str::to_string).collect(),
        offset + complete as u64,
    )
}

/// Follows one service's log or all of them.
#[derive(Debug)]
pub struct Follower {
    logs: LogDir,
    only: Option<String>,
    positions: BTreeMap<String, Position>,
}

impl Follower {
    fn watched(&self) -> Vec<String> {
        match &self.only {
            Some(s) => vec![s.clone()],
            None => self.logs.services(),
        }
    }

    /// What was appended since the last call, in time order. A file that
    /// was rotated is read to its end under its new name first; a service
    /// whose log appeared since is read from its start.
    pub fn poll(&mut self) -> Vec<Entry> {
        let mut out = Vec::new();
        for s in self.watched() {
            let path = self.logs.current(&s);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let mut pos = self.positions.get(&s).copied().unwrap_or(Position {
                ino: meta.ino(),
                offset: 0,
            });
            if pos.ino != meta.ino() {
                let older = self.logs.older(&s);
                if std::fs::metadata(&older).is_ok_and(|m| m.ino() == pos.ino) {
                    let (lines, _) = read_from(&older, pos.offset);
                    out.extend(lines.iter().map(|l| parse(&s, l)));
                }
                pos = Position {
                    ino: meta.ino(),
                    offset: 0,
                };
            }
            let (lines, offset) = read_from(&path, pos.offset);
            out.extend(lines.iter().map(|l| parse(&s, l)));
            self.positions.insert(
                s,
                Position {
                    ino: pos.ino,
                    offset,
                },
            );
        }
        out.sort_by_key(|e| e.ms);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("carapace-api-logs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open");
        f.write_all(text.as_bytes()).expect("write");
    }

    fn lines(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| format!("{}@{} {}", e.service, e.ms, e.line))
            .collect()
    }

    #[test]
    fn recent_lines_span_the_rotated_file_and_merge_services_by_time() {
        let d = dir("recent");
        append(&d.join("api.log.1"), "1 a1\n3 a3\n");
        append(&d.join("api.log"), "5 a5\n");
        append(&d.join("net.log"), "2 n2\n4 n4 with spaces\n");
        let logs = LogDir::new(&d);
        assert_eq!(logs.services(), vec!["api", "net"]);
        assert_eq!(
            lines(&logs.recent(Some("api"), 2)),
            vec!["api@3 a3", "api@5 a5"]
        );
        assert_eq!(
            lines(&logs.recent(None, 3)),
            vec!["api@3 a3", "net@4 n4 with spaces", "api@5 a5"]
        );
        assert!(logs.has("api"));
        assert!(!logs.has("nope"));
        assert!(!logs.has("../api"), "no paths");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_follower_sees_only_new_complete_lines_across_a_rotation() {
        let d = dir("follow");
        append(&d.join("svc.log"), "1 before\n");
        let logs = LogDir::new(&d);
        let mut f = logs.follow(Some("svc"));
        assert!(f.poll().is_empty(), "lines from before are not repeated");
        append(&d.join("svc.log"), "2 new\n3 half");
        assert_eq!(lines(&f.poll()), vec!["svc@2 new"]);
        append(&d.join("svc.log"), " done\n4 last before rotation\n");
        // Rotation as carapace-init does it, then more lines in a new file.
        std::fs::rename(d.join("svc.log"), d.join("svc.log.1")).expect("rotate");
        append(&d.join("svc.log"), "5 after rotation\n");
        assert_eq!(
            lines(&f.poll()),
            vec![
                "svc@3 half done",
                "svc@4 last before rotation",
                "svc@5 after rotation"
            ]
        );
        assert!(f.poll().is_empty());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn following_all_picks_up_a_service_that_starts_later() {
        let d = dir("follow-all");
        append(&d.join("api.log"), "1 old\n");
        let logs = LogDir::new(&d);
        let mut f = logs.follow(None);
        append(&d.join("new.log"), "7 first words\n");
        append(&d.join("api.log"), "8 more\n");
        assert_eq!(lines(&f.poll()), vec!["new@7 first words", "api@8 more"]);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_line_without_a_stamp_is_kept_whole() {
        assert_eq!(
            parse("x", "no stamp here"),
            Entry {
                service: "x".into(),
                ms: 0,
                line: "no stamp here".into()
            }
        );
    }
}
