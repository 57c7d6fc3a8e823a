//! A flood of hostile connections against a node's forwarded API port, held
//! from the host: TCP connections that never send a byte, and connections
//! that send the first bytes of a TLS ClientHello and stop. Whatever the
//! server closes is opened again, at most [`REOPEN_PER_SECOND`] a second
//! (enough to keep the node's budgets full, not a connection storm), until
//! the [`Flood`] is dropped.
//!
//! The host needs a descriptor per connection in this process and another
//! in QEMU (its user network has a socket per forwarded connection): call
//! [`raise_descriptor_limit`] before the node boots, so QEMU inherits it.
//!
//! [`connect`] and [`closed`] are also what the node's own flood probe
//! (`carapace-test-flood`) uses from inside.

use anyhow::{bail, Context, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How many closed connections are opened again per second, at most.
pub const REOPEN_PER_SECOND: usize = 20;
/// How often the flood looks for connections the server closed.
const SWEEP: Duration = Duration::from_millis(250);
/// How long one connect may take before the slot waits for its next turn.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A TLS record header announcing a 512-byte handshake message, and the
/// start of a ClientHello (type 1, length, TLS 1.2): then nothing more.
pub const HALF_CLIENT_HELLO: [u8; 11] = [
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
];

/// Raises this process's soft RLIMIT_NOFILE to its hard limit and checks
/// that it allows `needed` descriptors; processes started afterwards (QEMU)
/// inherit it.
pub fn raise_descriptor_limit(needed: u64) -> Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .context("cannot raise RLIMIT_NOFILE to the hard limit")?;
    let soft = limit.maximum.unwrap_or(u64::MAX);
    if soft < needed {
        bail!(
            "RLIMIT_NOFILE's hard limit {soft} is below the {needed} descriptors the flood needs"
        );
    }
    Ok(soft)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    IdleTcp,
    HalfTls,
}

struct Slot {
    kind: Kind,
    stream: Option<TcpStream>,
}

/// Counters of a running flood.
#[derive(Default)]
pub struct Stats {
    open: AtomicUsize,
    closed_by_server: AtomicUsize,
    opened: AtomicUsize,
    filled: AtomicBool,
}

impl Stats {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections the server (or QEMU) closed so far.
    pub fn closed_by_server(&self) -> usize {
        self.closed_by_server.load(Ordering::Relaxed)
    }

    /// Connections opened so far, first ones included.
    pub fn opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }

    /// Whether every slot has had its first connection attempt.
    pub fn filled(&self) -> bool {
        self.filled.load(Ordering::Relaxed)
    }
}

/// A flood in progress; dropping it closes every connection.
pub struct Flood {
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<()>>,
}

fn open(addr: SocketAddr, kind: Kind) -> Option<TcpStream> {
    connect(addr, kind == Kind::HalfTls)
}

/// One hostile connection to `addr`: silent, or (`half_tls`) the first bytes
/// of a ClientHello and nothing more; non-blocking, for [`closed`]. None
/// when it cannot connect within a few seconds.
pub fn connect(addr: SocketAddr, half_tls: bool) -> Option<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).ok()?;
    if half_tls {
        stream.write_all(&HALF_CLIENT_HELLO).ok()?;
    }
    stream.set_nonblocking(true).ok()?;
    Some(stream)
}

/// Whether the peer has closed `stream` (EOF or an error); what it sends
/// (a TLS alert) is read and dropped.
pub fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

impl Flood {
    /// Starts opening `idle_tcp` silent connections and `half_tls` half
    /// handshakes to `addr` on a thread of its own, and keeps them open.
    /// Returns at once: [`Stats::filled`] says when the first round is done.
    pub fn start(addr: SocketAddr, idle_tcp: usize, half_tls: usize) -> Result<Flood> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let mut slots: Vec<Slot> = std::iter::repeat_n(Kind::IdleTcp, idle_tcp)
            .chain(std::iter::repeat_n(Kind::HalfTls, half_tls))
            .map(|kind| Slot { kind, stream: None })
            .collect();
        let thread = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name("flood".into())
                .spawn(move || {
                    for slot in &mut slots {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        slot.stream = open(addr, slot.kind);
                        if slot.stream.is_some() {
                            stats.opened.fetch_add(1, Ordering::Relaxed);
                            stats.open.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    stats.filled.store(true, Ordering::Relaxed);
                    let mut window = Instant::now();
                    let mut reopened = 0;
                    while !stop.load(Ordering::Relaxed) {
                        for slot in &mut slots {
                            if slot.stream.as_mut().is_some_and(closed) {
                                slot.stream = None;
                                stats.open.fetch_sub(1, Ordering::Relaxed);
                                stats.closed_by_server.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        for slot in slots.iter_mut().filter(|s| s.stream.is_none()) {
                            if window.elapsed() >= Duration::from_secs(1) {
                                window = Instant::now();
                                reopened = 0;
                            }
                            if reopened >= REOPEN_PER_SECOND || stop.load(Ordering::Relaxed) {
                                break;
                            }
                            reopened += 1;
                            slot.stream = open(addr, slot.kind);
                            if slot.stream.is_some() {
                                stats.opened.fetch_add(1, Ordering::Relaxed);
                                stats.open.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        std::thread::sleep(SWEEP);
                    }
                })
                .context("cannot start the flood thread")?
        };
        Ok(Flood {
            stop,
            stats,
            thread: Some(thread),
        })
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
