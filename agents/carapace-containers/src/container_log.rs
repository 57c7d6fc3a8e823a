//! Containers' output, kept where the services' logs are: one file per
//! container in /run/carapace/logs, written by the same writer as PID 1's
//! ([`carapace_contract::logs::Sink`]: `<ms since boot> <text>` a line, one
//! `write` on an `O_APPEND` file, rotated to `.log.1` at 256 KiB), so that
//! `GET /v1/logs` and `carapace-ctl logs` show them as they show a service.
//!
//! The log of container `web` is `container_web` (`container_web.log`,
//! [`carapace_contract::logs::container_log`]). Service names are a-z, 0-9
//! and `-` only, so no service can ever be named like a container's log:
//! the two writers (PID 1 for the services, the container agent for the
//! containers) never append to, or rotate, the same file. The API's log
//! names allow `_`, so `carapace-ctl logs container_web` works as it is.
//!
//! A container's stdout and stderr share one pipe, as a service's do, so
//! their lines keep their order. Lines are split at
//! [`carapace_init::supervisor::MAX_LINE`] bytes (on a character boundary),
//! a trailing `\r` is dropped, and bytes that are not UTF-8 are replaced.

use carapace_contract::logs::{self, Sink};
use carapace_model::containers::ContainerName;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt};

/// What every container's log name starts with.
pub const PREFIX: &str = logs::CONTAINER_PREFIX;

/// The longest line kept whole.
pub const MAX_LINE: usize = carapace_init::supervisor::MAX_LINE;

/// The log name of a container: `container_<name>`.
pub fn log_name(name: &ContainerName) -> String {
    logs::container_log(name.as_str())
}

/// The container a log name belongs to, if it is a container's.
pub fn container_of(log: &str) -> Option<&str> {
    logs::container_of(log)
}

/// Cuts a byte stream into lines of at most `max` bytes.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

fn text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

impl LineSplitter {
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            buf: Vec::new(),
            max: max.max(4),
        }
    }

    /// The complete lines that `bytes` finishes.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut lines = Vec::new();
        loop {
            if let Some(nl) = self.buf.iter().take(self.max + 1).position(|&b| b == b'\n') {
                lines.push(text(&self.buf[..nl]));
                self.buf.drain(..=nl);
            } else if self.buf.len() > self.max {
                // Too long: cut at the last character boundary within max.
                let mut cut = self.max;
                while cut > 0 && (self.buf[cut] & 0xC0) == 0x80 {
                    cut -= 1;
                }
                if cut == 0 {
                    cut = self.max;
                }
                lines.push(text(&self.buf[..cut]));
                self.buf.drain(..cut);
            } else {
                return lines;
            }
        }
    }

    /// What is left when the stream ends, if anything.
    pub fn finish(&mut self) -> Option<String> {
        if self.buf.is_empty() {
            None
        } else {
            let line = text(&self.buf);
            self.buf.clear();
            Some(line)
        }
    }
}

/// The log files the agent writes, shared by every container's reader.
#[derive(Clone)]
pub struct LogWriter {
    sink: Arc<Mutex<Sink>>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogWriter")
    }
}

impl LogWriter {
    /// Writes into `dir` (created if missing), rotating at `cap` bytes.
    pub fn new(dir: impl Into<PathBuf>, cap: u64) -> io::Result<LogWriter> {
        Ok(LogWriter {
            sink: Arc::new(Mutex::new(Sink::new(dir, cap)?)),
        })
    }

    /// The node's: /run/carapace/logs, rotated as PID 1 rotates.
    pub fn on_node() -> io::Result<LogWriter> {
        LogWriter::new(logs::DIR, logs::CAP)
    }

    /// Appends `line` to `log`, stamped `ms` since boot. An error is
    /// returned once per file; the file is then skipped.
    pub fn append_at(&self, log: &str, ms: u64, line: &str) -> io::Result<()> {
        match self.sink.lock() {
            Ok(mut sink) => sink.append(log, ms, line),
            Err(_) => Err(io::Error::other("the log writer panicked")),
        }
    }

    /// Appends `line` to `log`, stamped now.
    pub fn append(&self, log: &str, line: &str) -> io::Result<()> {
        self.append_at(log, carapace_contract::clock::ms_since_boot(), line)
    }
}

/// Reads `reader` to its end into `log`. Returns the first error, of
/// reading or of writing the log; it goes on reading after a write error
/// (so the container never blocks on a full pipe).
pub async fn pump(
    mut reader: impl AsyncRead + Unpin,
    writer: LogWriter,
    log: String,
) -> Option<String> {
    let mut splitter = LineSplitter::new(MAX_LINE);
    let mut first_error: Option<String> = None;
    let mut buf = vec![0u8; 8192];
    let keep = |line: &str, first_error: &mut Option<String>| {
        if let Err(e) = writer.append(&log, line) {
            first_error.get_or_insert_with(|| format!("cannot keep the log {log}: {e}"));
        }
    };
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                for line in splitter.push(&buf[..n]) {
                    keep(&line, &mut first_error);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                first_error.get_or_insert_with(|| format!("cannot read the output for {log}: {e}"));
                break;
            }
        }
    }
    if let Some(rest) = splitter.finish() {
        keep(&rest, &mut first_error);
    }
    first_error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ContainerName {
        ContainerName::try_from(s.to_string()).expect("name")
    }

    fn temp(label: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("carapace-clog-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_containers_log_name_cannot_be_a_service_name() {
        assert_eq!(log_name(&name("web")), "container_web");
        assert_eq!(container_of("container_web"), Some("web"));
        assert_eq!(container_of("api"), None);
        // Service names are a-z, 0-9 and '-': never '_'.
        assert!(log_name(&name("api")).contains('_'));
    }

    #[test]
    fn bytes_become_lines_across_reads() {
        let mut s = LineSplitter::new(100);
        assert!(s.push(b"hel").is_empty());
        assert_eq!(s.push(b"lo\r\nworld\nha"), ["hello", "world"]);
        assert_eq!(s.push(b"lf\n\n"), ["half", ""]);
        assert_eq!(s.push(b"no newline at the end"), Vec::<String>::new());
        assert_eq!(s.finish().as_deref(), Some("no newline at the end"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn long_lines_are_split_on_character_boundaries() {
        let mut s = LineSplitter::new(8);
        assert_eq!(
            s.push(b"0123456789abcdefXY\n"),
            ["01234567", "89abcdef", "XY"]
        );
        // "é" is two bytes; a cut at 8 would fall inside the fifth one.
        let lines = s.push("aééé\u{e9}b\n".as_bytes());
        assert_eq!(lines, ["aééé", "éb"]);
        assert_eq!(text(b"bad \xff byte"), "bad \u{fffd} byte");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pumped_output_lands_in_the_log_file_as_stamped_lines() {
        let dir = temp("pump");
        let writer = LogWriter::new(&dir, logs::CAP).expect("writer");
        let output: &[u8] = b"starting\nlistening on :80\npartial";
        let err = pump(output, writer.clone(), log_name(&name("web"))).await;
        assert_eq!(err, None);
        let text = std::fs::read_to_string(dir.join("container_web.log")).expect("log file");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        for (line, want) in lines
            .iter()
            .zip(["starting", "listening on :80", "partial"])
        {
            let (ms, rest) = line.split_once(' ').expect("stamp");
            assert!(ms.parse::<u64>().is_ok(), "{line}");
            assert_eq!(rest, want);
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_writer_uses_the_service_log_format_and_rotation() {
        let dir = temp("format");
        let writer = LogWriter::new(&dir, 30).expect("writer");
        for i in 0..5u64 {
            writer
                .append_at("container_web", i, &format!("line-{i}"))
                .expect("append");
        }
        assert_eq!(
            std::fs::read_to_string(dir.join("container_web.log.1")).expect("rotated"),
            "0 line-0\n1 line-1\n2 line-2\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("container_web.log")).expect("current"),
            "3 line-3\n4 line-4\n"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
