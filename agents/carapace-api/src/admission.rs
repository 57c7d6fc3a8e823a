//! Which connections the API holds: every accepted connection counts against
//! a budget (a pool, and within it its peer), so that no client can take the
//! descriptors the others need. A connection over a cap is accepted and
//! closed at once (the kernel's backlog never fills), unless an older
//! connection of the same peer (or, at the pool's cap, of any peer) has not
//! sent a request yet: that one gives its place instead. A silent or
//! half-done connection therefore never keeps a client that speaks out,
//! even one behind the same address (QEMU's user network, a NAT).
//!
//! Three pools, each with its own budget: remote peers, loopback peers (the
//! update daemon's health check dials 127.0.0.1:8443, so no remote load can
//! take its place) and the Unix socket. [`decide`] is the pure rule;
//! [`Connections`] keeps the table and hands out [`Ticket`]s.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// Remote connections held at once, all peers together: enough for a fleet
/// manager and a few operators, small enough that 512 descriptors are all a
/// flood can take.
pub const REMOTE_TOTAL: usize = 512;
/// Remote connections one peer (an IPv4 address, an IPv6 /64) holds at
/// once: a fleet manager's connection pool, or several clients behind one
/// NAT, fit with room (`bench api` holds 33: 32 clients and the one it
/// measured alone, idle in keep-alive); a flood from one address holds no
/// more than a quarter of [`REMOTE_TOTAL`].
pub const PER_PEER: usize = 128;
/// Loopback connections (the health check, agents on the node): their own
/// budget outside [`REMOTE_TOTAL`], so remote load never reaches them.
pub const LOOPBACK_TOTAL: usize = 64;
/// Connections on the root-only Unix socket.
pub const LOCAL_TOTAL: usize = 64;
/// How long a client may take to finish the TLS handshake: a slow link
/// needs a few round trips; a silent client gives its socket back after this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may take to send a request's headers, counted from
/// when the server starts waiting for them: on a new connection and between
/// requests of a kept-alive one, so it is the idle timeout too.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Descriptors kept for everything but connections: the listeners, the
/// settings and log files a request reads, the D-Bus connection, the
/// runtime's own, and connections already evicted but not yet closed.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// A budget: how many connections a pool holds, and how many of them one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub total: usize,
    pub per_peer: usize,
}

/// The caps and timeouts of the listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub remote: Caps,
    pub loopback: Caps,
    pub local: Caps,
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            remote: Caps {
                total: REMOTE_TOTAL,
                per_peer: PER_PEER,
            },
            loopback: Caps {
                total: LOOPBACK_TOTAL,
                per_peer: LOOPBACK_TOTAL,
            },
            local: Caps {
                total: LOCAL_TOTAL,
                per_peer: LOCAL_TOTAL,
            },
            handshake_timeout: HANDSHAKE_TIMEOUT,
            header_timeout: HEADER_TIMEOUT,
        }
    }
}

impl Limits {
    /// Every connection the caps allow at once, all pools together.
    pub fn connections(&self) -> u64 {
        (self.remote.total + self.loopback.total + self.local.total) as u64
    }

    /// These limits shrunk so that all connections together, plus
    /// [`RESERVED_DESCRIPTORS`], fit in `descriptors` (the soft
    /// RLIMIT_NOFILE): the remote pool gives way first, the loopback and
    /// local pools only when nothing remote is left.
    pub fn within_descriptors(mut self, descriptors: u64) -> Limits {
        let mut room = descriptors.saturating_sub(RESERVED_DESCRIPTORS);
        let take = |caps: &mut Caps, room: &mut u64| {
            let total = (caps.total as u64).min(*room);
            *room -= total;
            caps.total = usize::try_from(total).unwrap_or(0);
            caps.per_peer = caps.per_peer.min(caps.total);
        };
        take(&mut self.local, &mut room);
        take(&mut self.loopback, &mut room);
        take(&mut self.remote, &mut room);
        self
    }

    fn caps(&self, pool: Pool) -> Caps {
        match pool {
            Pool::Remote => self.remote,
            Pool::Loopback => self.loopback,
            Pool::Local => self.local,
        }
    }
}

/// The budget a connection counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pool {
    Remote,
    Loopback,
    Local,
}

/// Who a connection is counted as: an IPv4 address, an IPv6 /64 (a host
/// usually has the whole prefix), or the Unix socket's one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    V4(Ipv4Addr),
    V6Prefix([u8; 8]),
    Local,
}

/// The pool and peer of a TCP connection from `ip`. An IPv4-mapped IPv6
/// address counts as the IPv4 address it maps.
pub fn classify(ip: IpAddr) -> (Pool, Peer) {
    let ip = ip.to_canonical();
    let pool = if ip.is_loopback() {
        Pool::Loopback
    } else {
        Pool::Remote
    };
    let peer = match ip {
        IpAddr::V4(v4) => Peer::V4(v4),
        IpAddr::V6(v6) => {
            let mut prefix = [0u8; 8];
            prefix.copy_from_slice(&v6.octets()[..8]);
            Peer::V6Prefix(prefix)
        }
    };
    (pool, peer)
}

/// What to do with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admit,
    /// Admit it, and close the connection with this id, which has not sent
    /// a request yet, to make room.
    AdmitEvicting(u64),
    /// Close it at once: its budget is full of connections that are
    /// serving requests.
    Refuse,
}

/// The rule: a peer at its cap makes room from its own oldest connection
/// without a request, else is refused; a pool at its cap makes room from its
/// oldest such connection of any peer, else refuses; otherwise admit.
/// `in_pool` and `of_peer` count the connections held; the oldest ids are
/// of connections that have not sent a request.
pub fn decide(
    caps: Caps,
    in_pool: usize,
    of_peer: usize,
    oldest_silent_of_peer: Option<u64>,
    oldest_silent_in_pool: Option<u64>,
) -> Decision {
    if of_peer >= caps.per_peer {
        oldest_silent_of_peer.map_or(Decision::Refuse, Decision::AdmitEvicting)
    } else if in_pool >= caps.total {
        oldest_silent_in_pool.map_or(Decision::Refuse, Decision::AdmitEvicting)
    } else {
        Decision::Admit
    }
}

struct Entry {
    pool: Pool,
    peer: Peer,
    /// No request has arrived on it yet (handshake, or waiting for the
    /// first request's headers): it may give its place to a newer one.
    silent: bool,
    evict: Arc<Notify>,
}

#[derive(Default)]
struct Table {
    next: u64,
    entries: HashMap<u64, Entry>,
}

/// The connections a listener holds, by pool and peer.
pub struct Connections {
    limits: Limits,
    table: Mutex<Table>,
}

impl Connections {
    pub fn new(limits: Limits) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            table: Mutex::new(Table::default()),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent at every step: a panic elsewhere
        // cannot leave it half-changed, so a poisoned lock is still good.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection from `pool`/`peer`: a ticket to serve it
    /// with (dropping the ticket ends the count), or None to close it now.
    /// Evicting an older connection wakes its [`Ticket::evicted`].
    pub fn admit(self: &Arc<Self>, pool: Pool, peer: Peer) -> Option<Ticket> {
        let mut table = self.lock();
        let (mut in_pool, mut of_peer) = (0, 0);
        let (mut oldest_of_peer, mut oldest_in_pool) = (None::<u64>, None::<u64>);
        for (&id, e) in table.entries.iter().filter(|(_, e)| e.pool == pool) {
            in_pool += 1;
            let same_peer = e.peer == peer;
            of_peer += usize::from(same_peer);
            if e.silent {
                oldest_in_pool = Some(oldest_in_pool.map_or(id, |o| o.min(id)));
                if same_peer {
                    oldest_of_peer = Some(oldest_of_peer.map_or(id, |o| o.min(id)));
                }
            }
        }
        let caps = self.limits.caps(pool);
        match decide(caps, in_pool, of_peer, oldest_of_peer, oldest_in_pool) {
            Decision::Refuse => return None,
            Decision::Admit => {}
            Decision::AdmitEvicting(old) => {
                if let Some(e) = table.entries.remove(&old) {
                    e.evict.notify_one();
                }
            }
        }
        let id = table.next;
        table.next += 1;
        let evict = Arc::new(Notify::new());
        table.entries.insert(
            id,
            Entry {
                pool,
                peer,
                silent: true,
                evict: evict.clone(),
            },
        );
        Some(Ticket {
            connections: self.clone(),
            id,
            evict,
        })
    }

    /// How many connections `pool` holds.
    pub fn held(&self, pool: Pool) -> usize {
        self.lock()
            .entries
            .values()
            .filter(|e| e.pool == pool)
            .count()
    }
}

/// One admitted connection's place in the table, given back on drop.
pub struct Ticket {
    connections: Arc<Connections>,
    id: u64,
    evict: Arc<Notify>,
}

impl Ticket {
    /// A request arrived: from now on the connection keeps its place.
    pub fn served(&self) {
        if let Some(e) = self.connections.lock().entries.get_mut(&self.id) {
            e.silent = false;
        }
    }

    /// Completes when a newer connection took this one's place: close it.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.connections.lock().entries.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    const CAPS: Caps = Caps {
        total: 4,
        per_peer: 2,
    };

    #[test]
    fn the_rule_admits_under_the_caps_and_makes_room_from_silent_connections() {
        assert_eq!(decide(CAPS, 0, 0, None, None), Decision::Admit);
        assert_eq!(decide(CAPS, 3, 1, None, Some(7)), Decision::Admit);
        // A peer at its cap: its own oldest silent connection goes, never
        // another peer's.
        assert_eq!(
            decide(CAPS, 2, 2, Some(5), Some(1)),
            Decision::AdmitEvicting(5)
        );
        assert_eq!(decide(CAPS, 2, 2, None, Some(1)), Decision::Refuse);
        // The pool at its cap: the oldest silent connection of anyone.
        assert_eq!(
            decide(CAPS, 4, 1, None, Some(1)),
            Decision::AdmitEvicting(1)
        );
        assert_eq!(decide(CAPS, 4, 1, None, None), Decision::Refuse);
    }

    #[test]
    fn loopback_has_its_own_pool_and_ipv6_counts_by_64() {
        let v4 = |s: &str| s.parse::<IpAddr>().expect("address");
        assert_eq!(classify(v4("127.0.0.1")).0, Pool::Loopback);
        assert_eq!(classify(v4("::1")).0, Pool::Loopback);
        assert_eq!(classify(v4("::ffff:127.0.0.1")).0, Pool::Loopback);
        assert_eq!(
            classify(v4("::ffff:10.0.2.2")),
            (Pool::Remote, Peer::V4(Ipv4Addr::new(10, 0, 2, 2)))
        );
        assert_eq!(classify(v4("10.0.2.2")).0, Pool::Remote);
        let a = classify(IpAddr::V6(
            "2001:db8:1:2::1".parse::<Ipv6Addr>().expect("v6"),
        ));
        let b = classify(IpAddr::V6(
            "2001:db8:1:2:ffff::9".parse::<Ipv6Addr>().expect("v6"),
        ));
        let c = classify(IpAddr::V6(
            "2001:db8:1:3::1".parse::<Ipv6Addr>().expect("v6"),
        ));
        assert_eq!(a, b, "one /64 is one peer");
        assert_ne!(a, c);
    }

    fn limits(remote: Caps, loopback: Caps) -> Limits {
        Limits {
            remote,
            loopback,
            ..Limits::default()
        }
    }

    #[test]
    fn a_peer_at_its_cap_evicts_its_oldest_silent_connection_or_is_refused() {
        let table = Connections::new(limits(CAPS, CAPS));
        let peer = Peer::V4(Ipv4Addr::new(10, 0, 2, 2));
        let first = table.admit(Pool::Remote, peer).expect("first");
        let second = table.admit(Pool::Remote, peer).expect("second");
        first.served();
        // Full: the silent second gives its place, the serving first stays.
        let third = table.admit(Pool::Remote, peer).expect("third");
        assert_eq!(table.held(Pool::Remote), 2);
        let woken = futures_util::FutureExt::now_or_never(second.evicted());
        assert!(woken.is_some(), "the evicted connection is told");
        let still = futures_util::FutureExt::now_or_never(first.evicted());
        assert!(still.is_none(), "the serving one is not");
        third.served();
        assert!(
            table.admit(Pool::Remote, peer).is_none(),
            "every connection of the peer is serving: refused"
        );
        // Another peer still has room in the pool.
        let other = table.admit(Pool::Remote, Peer::V4(Ipv4Addr::new(10, 0, 2, 3)));
        assert!(other.is_some());
        drop((first, second, third, other));
        assert_eq!(
            table.held(Pool::Remote),
            0,
            "tickets give their places back"
        );
    }

    #[test]
    fn remote_load_never_takes_the_loopback_budget() {
        let table = Connections::new(limits(
            Caps {
                total: 2,
                per_peer: 1,
            },
            Caps {
                total: 1,
                per_peer: 1,
            },
        ));
        let a = table
            .admit(Pool::Remote, Peer::V4(Ipv4Addr::new(192, 0, 2, 1)))
            .expect("a");
        let b = table
            .admit(Pool::Remote, Peer::V4(Ipv4Addr::new(192, 0, 2, 2)))
            .expect("b");
        a.served();
        b.served();
        assert!(table
            .admit(Pool::Remote, Peer::V4(Ipv4Addr::new(192, 0, 2, 3)))
            .is_none());
        let (pool, peer) = classify(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let health = table.admit(pool, peer);
        assert!(health.is_some(), "the health check still gets in");
        assert_eq!(table.held(Pool::Loopback), 1);
    }

    #[test]
    fn the_caps_fit_the_descriptor_limit() {
        let all = Limits::default();
        assert!(
            all.connections() + RESERVED_DESCRIPTORS <= 1024,
            "the defaults fit even the kernel's default soft limit"
        );
        assert_eq!(all.within_descriptors(4096), all);
        let small = all.within_descriptors(600);
        assert_eq!(small.connections() + RESERVED_DESCRIPTORS, 600);
        assert_eq!(small.local.total, LOCAL_TOTAL);
        assert_eq!(small.loopback.total, LOOPBACK_TOTAL);
        assert_eq!(small.remote.total, 600 - 256 - 128);
        assert_eq!(small.remote.per_peer, PER_PEER);
        let tiny = all.within_descriptors(300);
        assert_eq!(tiny.remote.total, 0);
        assert_eq!(tiny.loopback.total, 0);
        assert_eq!(
            tiny.local.total,
            300 - 256,
            "the Unix socket is served first"
        );
        assert!(tiny.local.per_peer <= tiny.local.total);
    }
}
