//! The DHCPv4 client state machine (RFC 2131 §4.4), free of I/O: the caller
//! feeds it the time and the packets it receives, and carries out the
//! [`Action`]s it returns (send a packet, configure a lease, drop it). Time
//! is a monotonic [`Instant`] passed in, so tests drive it with a fake clock.
//!
//! INIT → SELECTING (DISCOVER, retransmitted after 4, 8, 16, 32, 64, 64… s ±1 s)
//! → REQUESTING (REQUEST, 4 tries, then back to INIT) → BOUND; at T1 RENEWING
//! (unicast REQUEST to the server), at T2 REBINDING (broadcast REQUEST), at
//! expiry the lease is dropped and the client starts over. A NAK at any point
//! drops the lease and restarts after a short pause.

use crate::dhcp_packet::{
    classful_prefix, encode_request, mask_to_prefix, parse_reply, MessageType, Reply, Request,
};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Pause before starting over after a NAK, so a server that NAKs every
/// request does not make us spin.
pub const NAK_PAUSE: Duration = Duration::from_secs(3);
/// How many times a REQUEST in REQUESTING is sent before giving up on the offer.
const REQUEST_TRIES: u32 = 4;
/// Lease assumed when an ACK has no lease time option.
const DEFAULT_LEASE_SECS: u32 = 3600;
/// The shortest retransmission interval in RENEWING and REBINDING.
const MIN_RENEW_RETRY: Duration = Duration::from_secs(60);
/// Longest wait we schedule, so an "infinite" lease does not overflow Instant.
const FAR: Duration = Duration::from_secs(10 * 365 * 86400);

/// A lease as the client holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub server: Ipv4Addr,
    pub lease_secs: u32,
    pub t1_secs: u32,
    pub t2_secs: u32,
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `packet` from port 68 to `to`:67 (broadcast or the server).
    Send { to: Ipv4Addr, packet: Vec<u8> },
    /// Configure (or keep) this lease; sent on every ACK, renewals included.
    Configure(Lease),
    /// The lease is gone (NAK or expiry): remove its address and routes.
    Deconfigure { reason: String },
}

/// The RFC 2131 states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Init,
    Selecting,
    Requesting,
    Bound,
    Renewing,
    Rebinding,
}

#[derive(Debug, Clone)]
struct Bound {
    lease: Lease,
    acquired: Instant,
}

impl Bound {
    fn at(&self, secs: u32) -> Instant {
        let d = Duration::from_secs(u64::from(secs)).min(FAR);
        self.acquired + d
    }
    fn t1(&self) -> Instant {
        self.at(self.lease.t1_secs)
    }
    fn t2(&self) -> Instant {
        self.at(self.lease.t2_secs)
    }
    fn expiry(&self) -> Instant {
        self.at(self.lease.lease_secs)
    }
}

/// The client.
#[derive(Debug)]
pub struct Client {
    mac: [u8; 6],
    hostname: Option<String>,
    rng: u64,
    state: State,
    xid: u32,
    /// When the current exchange began, for the `secs` field.
    started: Instant,
    /// Transmissions of the current message so far.
    tries: u32,
    deadline: Instant,
    /// The offer being requested (REQUESTING).
    offer: Option<(Ipv4Addr, Ipv4Addr)>,
    bound: Option<Bound>,
}

impl Client {
    /// A client in INIT that sends its first DISCOVER at `now`. `seed` feeds
    /// the transaction ids and the retransmission jitter.
    pub fn new(mac: [u8; 6], hostname: Option<String>, seed: u64, now: Instant) -> Client {
        Client {
            mac,
            hostname,
            rng: seed | 1,
            state: State::Init,
            xid: 0,
            started: now,
            tries: 0,
            deadline: now,
            offer: None,
            bound: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The lease held, if any.
    pub fn lease(&self) -> Option<&Lease> {
        self.bound.as_ref().map(|b| &b.lease)
    }

    /// When [`Client::on_timeout`] must next be called.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The current transaction id (tests use it to answer).
    pub fn xid(&self) -> u32 {
        self.xid
    }

    fn random(&mut self) -> u64 {
        // xorshift64: plenty for transaction ids and jitter.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// `base` randomized by ±1 s, as RFC 2131 §4.1 asks.
    fn jittered(&mut self, base: Duration) -> Duration {
        let ms = self.random() % 2001;
        (base + Duration::from_millis(ms)).saturating_sub(Duration::from_secs(1))
    }

    fn new_xid(&mut self, now: Instant) {
        self.xid = self.random() as u32;
        self.started = now;
        self.tries = 0;
    }

    fn secs(&self, now: Instant) -> u16 {
        now.saturating_duration_since(self.started)
            .as_secs()
            .min(u64::from(u16::MAX)) as u16
    }

    fn backoff(&mut self) -> Duration {
        let exp = self.tries.saturating_sub(1).min(4);
        self.jittered(Duration::from_secs(4u64 << exp))
    }

    fn request(&self, now: Instant, kind: MessageType, ciaddr: Ipv4Addr) -> Vec<u8> {
        let (requested_ip, server_id) = match (self.state, self.offer) {
            (State::Requesting, Some((ip, server))) => (Some(ip), Some(server)),
            _ => (None, None),
        };
        encode_request(&Request {
            kind,
            xid: self.xid,
            mac: self.mac,
            secs: self.secs(now),
            ciaddr,
            requested_ip,
            server_id,
            hostname: self.hostname.as_deref(),
        })
    }

    fn send_discover(&mut self, now: Instant) -> Action {
        self.tries += 1;
        let packet = self.request(now, MessageType::Discover, Ipv4Addr::UNSPECIFIED);
        self.deadline = now + self.backoff();
        Action::Send {
            to: Ipv4Addr::BROADCAST,
            packet,
        }
    }

    fn send_selecting_request(&mut self, now: Instant) -> Action {
        self.tries += 1;
        let packet = self.request(now, MessageType::Request, Ipv4Addr::UNSPECIFIED);
        self.deadline = now + self.backoff();
        Action::Send {
            to: Ipv4Addr::BROADCAST,
            packet,
        }
    }

    /// A REQUEST in RENEWING (unicast) or REBINDING (broadcast); the next
    /// retransmission is half-way to `limit`, at least 60 s later, never past it.
    fn send_renewal(&mut self, now: Instant, to: Ipv4Addr, limit: Instant) -> Vec<Action> {
        let Some(b) = &self.bound else {
            return self.restart(now, Duration::ZERO, "no lease to renew");
        };
        let ciaddr = b.lease.address;
        self.tries += 1;
        let packet = self.request(now, MessageType::Request, ciaddr);
        let half = limit.saturating_duration_since(now) / 2;
        self.deadline = (now + half.max(MIN_RENEW_RETRY)).min(limit);
        vec![Action::Send { to, packet }]
    }

    /// Drops any lease and starts over in INIT after `pause`.
    fn restart(&mut self, now: Instant, pause: Duration, reason: &str) -> Vec<Action> {
        self.state = State::Init;
        self.offer = None;
        self.tries = 0;
        self.deadline = now + pause;
        match self.bound.take() {
            Some(_) => vec![Action::Deconfigure {
                reason: reason.to_string(),
            }],
            None => Vec::new(),
        }
    }

    /// Called when `now >= deadline()`: (re)transmits or moves on.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Action> {
        if now < self.deadline {
            return Vec::new();
        }
        match self.state {
            State::Init => {
                self.new_xid(now);
                self.state = State::Selecting;
                vec![self.send_discover(now)]
            }
            State::Selecting => vec![self.send_discover(now)],
            State::Requesting => {
                if self.tries >= REQUEST_TRIES {
                    let mut out = self.restart(now, Duration::ZERO, "no answer to REQUEST");
                    out.extend(self.on_timeout(now));
                    out
                } else {
                    vec![self.send_selecting_request(now)]
                }
            }
            State::Bound | State::Renewing | State::Rebinding => {
                let Some(b) = self.bound.clone() else {
                    return self.restart(now, Duration::ZERO, "no lease");
                };
                if now >= b.expiry() {
                    let mut out = self.restart(now, Duration::ZERO, "lease expired");
                    out.extend(self.on_timeout(now));
                    return out;
                }
                if now >= b.t2() {
                    if self.state != State::Rebinding {
                        self.state = State::Rebinding;
                        self.new_xid(now);
                    }
                    self.send_renewal(now, Ipv4Addr::BROADCAST, b.expiry())
                } else if now >= b.t1() {
                    if self.state != State::Renewing {
                        self.state = State::Renewing;
                        self.new_xid(now);
                    }
                    self.send_renewal(now, b.lease.server, b.t2())
                } else {
                    self.deadline = b.t1();
                    Vec::new()
                }
            }
        }
    }

    /// Called with every datagram received on port 68. Packets that are
    /// malformed or not for us are ignored (the error says why).
    pub fn on_packet(&mut self, now: Instant, bytes: &[u8]) -> Result<Vec<Action>, String> {
        let reply = parse_reply(bytes).map_err(|e| e.to_string())?;
        if reply.xid != self.xid || reply.chaddr != self.mac {
            return Err("not our transaction".into());
        }
        match (self.state, reply.kind) {
            (State::Selecting, MessageType::Offer) => {
                if reply.yiaddr.is_unspecified() {
                    return Err("OFFER without an address".into());
                }
                let server = reply
                    .server_id
                    .or((!reply.siaddr.is_unspecified()).then_some(reply.siaddr))
                    .ok_or("OFFER without a server identifier")?;
                self.offer = Some((reply.yiaddr, server));
                self.state = State::Requesting;
                self.tries = 0;
                Ok(vec![self.send_selecting_request(now)])
            }
            (State::Requesting | State::Renewing | State::Rebinding, MessageType::Ack) => {
                let lease = lease_from(&reply, self.bound.as_ref().map(|b| b.lease.server))?;
                if self.state == State::Requesting {
                    if let Some((offered, _)) = self.offer {
                        if offered != lease.address {
                            return Err(format!(
                                "ACK for {} but {offered} was requested",
                                lease.address
                            ));
                        }
                    }
                }
                let b = Bound {
                    lease: lease.clone(),
                    acquired: now,
                };
                self.deadline = b.t1();
                self.bound = Some(b);
                self.offer = None;
                self.state = State::Bound;
                Ok(vec![Action::Configure(lease)])
            }
            (State::Requesting | State::Renewing | State::Rebinding, MessageType::Nak) => {
                Ok(self.restart(now, NAK_PAUSE, "NAK from the server"))
            }
            (_, kind) => Err(format!("unexpected {kind:?} in {:?}", self.state)),
        }
    }
}

/// Builds a lease from an ACK, filling in what the server left out.
fn lease_from(r: &Reply, known_server: Option<Ipv4Addr>) -> Result<Lease, String> {
    if r.yiaddr.is_unspecified() || r.yiaddr.is_broadcast() || r.yiaddr.is_multicast() {
        return Err(format!("ACK with an unusable address {}", r.yiaddr));
    }
    let prefix = r
        .subnet_mask
        .and_then(mask_to_prefix)
        .unwrap_or_else(|| classful_prefix(r.yiaddr));
    let server = r
        .server_id
        .or(known_server)
        .or((!r.siaddr.is_unspecified()).then_some(r.siaddr))
        .ok_or("ACK without a server identifier")?;
    let lease_secs = r.lease_secs.unwrap_or(DEFAULT_LEASE_SECS).max(1);
    let default_t1 = lease_secs / 2;
    let default_t2 = (u64::from(lease_secs) * 7 / 8) as u32;
    let mut t2 = r.t2_secs.unwrap_or(default_t2);
    if t2 >= lease_secs {
        t2 = default_t2;
    }
    let mut t1 = r.t1_secs.unwrap_or(default_t1);
    if t1 >= t2 {
        t1 = default_t1.min(t2);
    }
    Ok(Lease {
        address: r.yiaddr,
        prefix,
        router: r
            .routers
            .iter()
            .copied()
            .find(|a| !a.is_unspecified() && !a.is_broadcast()),
        dns: r.dns.clone(),
        domain: r.domain.clone(),
        server,
        lease_secs,
        t1_secs: t1,
        t2_secs: t2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp_packet::{encode_reply, parse_reply};

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

    /// A fake server: answers the client's last packet the way slirp does.
    fn reply(client: &Client, kind: MessageType, lease: u32) -> Vec<u8> {
        encode_reply(&Reply {
            kind,
            xid: client.xid(),
            chaddr: MAC,
            yiaddr: if kind == MessageType::Nak {
                Ipv4Addr::UNSPECIFIED
            } else {
                ME
            },
            siaddr: SERVER,
            subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            routers: vec![SERVER],
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            domain: None,
            lease_secs: Some(lease),
            server_id: Some(SERVER),
            t1_secs: None,
            t2_secs: None,
        })
    }

    /// The single packet sent in `actions`: where to and what type.
    fn sent(actions: &[Action]) -> (Ipv4Addr, MessageType, Ipv4Addr) {
        match actions {
            [Action::Send { to, packet }] => {
                // Parse our own request with the reply parser by flipping op.
                let mut p = packet.clone();
                p[0] = 2;
                let r = parse_reply(&p).expect("our packet parses");
                let ciaddr = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
                (*to, r.kind, ciaddr)
            }
            other => panic!("expected one Send, got {other:?}"),
        }
    }

    fn bind(now: Instant, lease: u32) -> Client {
        let mut c = Client::new(MAC, Some("node".into()), 42, now);
        let a = c.on_timeout(now);
        assert_eq!(sent(&a).1, MessageType::Discover);
        let a = c
            .on_packet(now, &reply(&c, MessageType::Offer, lease))
            .expect("offer taken");
        assert_eq!(sent(&a).1, MessageType::Request);
        let a = c
            .on_packet(now, &reply(&c, MessageType::Ack, lease))
            .expect("ack taken");
        assert!(matches!(a.as_slice(), [Action::Configure(_)]));
        c
    }

    #[test]
    fn discover_offer_request_ack_binds() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, Some("node".into()), 42, t0);
        assert_eq!(c.state(), State::Init);
        assert_eq!(c.deadline(), t0, "the first DISCOVER goes out at once");
        let a = c.on_timeout(t0);
        assert_eq!(
            sent(&a),
            (
                Ipv4Addr::BROADCAST,
                MessageType::Discover,
                Ipv4Addr::UNSPECIFIED
            )
        );
        assert_eq!(c.state(), State::Selecting);

        let a = c
            .on_packet(t0, &reply(&c, MessageType::Offer, 86400))
            .expect("offer taken");
        assert_eq!(c.state(), State::Requesting);
        let Action::Send { packet, .. } = &a[0] else {
            panic!("a request is sent")
        };
        // Option 50 carries the offered address.
        assert!(packet.windows(6).any(|w| w == [50, 4, 10, 0, 2, 15]));

        let a = c
            .on_packet(t0, &reply(&c, MessageType::Ack, 86400))
            .expect("ack taken");
        let lease = Lease {
            address: ME,
            prefix: 24,
            router: Some(SERVER),
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            domain: None,
            server: SERVER,
            lease_secs: 86400,
            t1_secs: 43200,
            t2_secs: 75600,
        };
        assert_eq!(a, vec![Action::Configure(lease.clone())]);
        assert_eq!(c.state(), State::Bound);
        assert_eq!(c.lease(), Some(&lease));
        assert_eq!(c.deadline(), t0 + Duration::from_secs(43200), "T1");
        assert!(c.on_timeout(t0 + Duration::from_secs(100)).is_empty());
    }

    #[test]
    fn discover_is_retransmitted_with_growing_delays() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, None, 7, t0);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let a = c.on_timeout(now);
            assert_eq!(sent(&a).1, MessageType::Discover);
            let wait = c.deadline() - now;
            waits.push(wait);
            now = c.deadline();
        }
        for (wait, base) in waits.iter().zip([4u64, 8, 16, 32, 64, 64, 64]) {
            let base = Duration::from_secs(base);
            assert!(
                *wait >= base - Duration::from_secs(1) && *wait <= base + Duration::from_secs(1),
                "{wait:?} is {base:?} ± 1 s"
            );
        }
        assert_eq!(c.state(), State::Selecting);
        // Nothing happens before the deadline.
        assert!(c.on_timeout(now - Duration::from_millis(1)).is_empty());
    }

    #[test]
    fn foreign_and_malformed_packets_are_ignored() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, None, 7, t0);
        c.on_timeout(t0);
        let mut other = reply(&c, MessageType::Offer, 60);
        other[4] ^= 1; // another xid
        assert!(c.on_packet(t0, &other).is_err());
        assert!(c.on_packet(t0, &[2, 1, 6]).is_err());
        // An ACK while selecting is not ours to take.
        assert!(c.on_packet(t0, &reply(&c, MessageType::Ack, 60)).is_err());
        assert_eq!(c.state(), State::Selecting);
        assert!(c.lease().is_none());
    }

    #[test]
    fn unanswered_request_goes_back_to_discover() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, None, 7, t0);
        c.on_timeout(t0);
        c.on_packet(t0, &reply(&c, MessageType::Offer, 60))
            .expect("offer");
        for _ in 1..REQUEST_TRIES {
            let now = c.deadline();
            assert_eq!(sent(&c.on_timeout(now)).1, MessageType::Request);
            assert_eq!(c.state(), State::Requesting);
        }
        let a = c.on_timeout(c.deadline());
        assert_eq!(sent(&a).1, MessageType::Discover);
        assert_eq!(c.state(), State::Selecting);
    }

    #[test]
    fn nak_while_requesting_restarts() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, None, 7, t0);
        c.on_timeout(t0);
        c.on_packet(t0, &reply(&c, MessageType::Offer, 60))
            .expect("offer");
        let a = c
            .on_packet(t0, &reply(&c, MessageType::Nak, 60))
            .expect("nak taken");
        assert!(a.is_empty(), "nothing was configured yet: {a:?}");
        assert_eq!(c.state(), State::Init);
        assert_eq!(c.deadline(), t0 + NAK_PAUSE);
        assert_eq!(sent(&c.on_timeout(t0 + NAK_PAUSE)).1, MessageType::Discover);
    }

    #[test]
    fn renewal_at_t1_is_unicast_and_extends_the_lease() {
        let t0 = Instant::now();
        let mut c = bind(t0, 1000);
        let t1 = t0 + Duration::from_secs(500);
        assert_eq!(c.deadline(), t1);
        let a = c.on_timeout(t1);
        assert_eq!(sent(&a), (SERVER, MessageType::Request, ME));
        assert_eq!(c.state(), State::Renewing);
        // Next try half-way to T2 (875 s), but at least 60 s later.
        assert_eq!(
            c.deadline(),
            t1 + Duration::from_secs(187) + Duration::from_millis(500)
        );
        let a = c
            .on_packet(t1, &reply(&c, MessageType::Ack, 1000))
            .expect("ack");
        assert!(matches!(a.as_slice(), [Action::Configure(l)] if l.address == ME));
        assert_eq!(c.state(), State::Bound);
        assert_eq!(c.deadline(), t1 + Duration::from_secs(500), "new T1");
    }

    #[test]
    fn rebinding_at_t2_broadcasts_and_expiry_drops_the_lease() {
        let t0 = Instant::now();
        let mut c = bind(t0, 1000);
        let mut now = c.deadline();
        c.on_timeout(now);
        let t2 = t0 + Duration::from_secs(875);
        while c.deadline() < t2 {
            now = c.deadline();
            let a = c.on_timeout(now);
            assert_eq!(sent(&a).0, SERVER);
            assert!(c.deadline() - now >= MIN_RENEW_RETRY || c.deadline() == t2);
        }
        let a = c.on_timeout(t2);
        assert_eq!(sent(&a), (Ipv4Addr::BROADCAST, MessageType::Request, ME));
        assert_eq!(c.state(), State::Rebinding);
        let expiry = t0 + Duration::from_secs(1000);
        while c.deadline() < expiry {
            now = c.deadline();
            assert_eq!(sent(&c.on_timeout(now)).0, Ipv4Addr::BROADCAST);
        }
        let a = c.on_timeout(expiry);
        assert_eq!(
            a[0],
            Action::Deconfigure {
                reason: "lease expired".into()
            }
        );
        assert_eq!(
            sent(&a[1..]).1,
            MessageType::Discover,
            "starts over at once"
        );
        assert!(c.lease().is_none());
        assert_eq!(c.state(), State::Selecting);
    }

    #[test]
    fn nak_while_renewing_drops_the_lease() {
        let t0 = Instant::now();
        let mut c = bind(t0, 1000);
        let t1 = c.deadline();
        c.on_timeout(t1);
        let a = c
            .on_packet(t1, &reply(&c, MessageType::Nak, 0))
            .expect("nak");
        assert_eq!(
            a,
            vec![Action::Deconfigure {
                reason: "NAK from the server".into()
            }]
        );
        assert_eq!(c.state(), State::Init);
        assert!(c.lease().is_none());
    }

    #[test]
    fn lease_defaults_and_bad_timers() {
        let mut r = parse_reply(&reply(
            &Client::new(MAC, None, 1, Instant::now()),
            MessageType::Ack,
            100,
        ))
        .expect("valid");
        r.subnet_mask = Some(Ipv4Addr::new(255, 0, 255, 0));
        r.t1_secs = Some(500);
        r.t2_secs = Some(50);
        let l = lease_from(&r, None).expect("usable");
        assert_eq!(l.prefix, 8, "a bad mask falls back to the class");
        assert_eq!((l.t1_secs, l.t2_secs), (50, 50), "T1 <= T2 < lease");
        r.lease_secs = None;
        r.t1_secs = None;
        r.t2_secs = None;
        let l = lease_from(&r, None).expect("usable");
        assert_eq!((l.lease_secs, l.t1_secs, l.t2_secs), (3600, 1800, 3150));
        r.yiaddr = Ipv4Addr::UNSPECIFIED;
        assert!(lease_from(&r, None).is_err());
    }
}
