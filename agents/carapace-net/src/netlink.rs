//! A small rtnetlink client: encodes RTM_NEWLINK (set up), RTM_NEWADDR /
//! RTM_DELADDR and RTM_NEWROUTE / RTM_DELROUTE requests by hand from the
//! kernel's struct layouts, sends them on an `AF_NETLINK` socket and reads
//! the acknowledgement. Replies are parsed defensively: a truncated or
//! malformed reply is an error, never a panic.
//!
//! Layouts (native endian, everything 4-byte aligned):
//! `struct nlmsghdr` 16 bytes (len u32, type u16, flags u16, seq u32, pid u32);
//! `struct ifinfomsg` 16 (family u8, pad u8, type u16, index i32, flags u32, change u32);
//! `struct ifaddrmsg` 8 (family, prefixlen, flags, scope u8; index u32);
//! `struct rtmsg` 12 (family, dst_len, src_len, tos, table, protocol, scope, type u8; flags u32);
//! `struct rtattr` 4 (len u16, type u16) + payload padded to 4;
//! `struct nlmsgerr` (error i32 + the offending nlmsghdr).

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_CREATE: u16 = 0x400;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IFF_UP: u32 = 0x1;

pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;

pub const RTA_DST: u16 = 1;
pub const RTA_OIF: u16 = 4;
pub const RTA_GATEWAY: u16 = 5;

pub const RT_TABLE_MAIN: u8 = 254;
/// `RTPROT_STATIC`: routes installed by an administrator (our static mode).
pub const RTPROT_STATIC: u8 = 4;
/// `RTPROT_DHCP`: routes from a DHCP lease.
pub const RTPROT_DHCP: u8 = 16;
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;
pub const RTN_UNICAST: u8 = 1;

/// An address on an interface, the unit of RTM_NEWADDR/RTM_DELADDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct AddrSpec {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// A route through the interface: via a gateway, or on-link when `via` is None.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RouteSpec {
    pub dst: IpAddr,
    pub dst_len: u8,
    pub via: Option<IpAddr>,
    pub protocol: u8,
}

fn family(a: &IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

fn ip_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// Builds one netlink message: header, fixed part, attributes.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32) -> Msg {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it in
        Msg { buf }
    }

    fn bytes(mut self, b: &[u8]) -> Msg {
        self.buf.extend_from_slice(b);
        self
    }

    fn attr(mut self, kind: u16, payload: &[u8]) -> Msg {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        let padded = (self.buf.len() + 3) & !3;
        self.buf.resize(padded, 0);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// RTM_NEWLINK setting IFF_UP on interface `index`.
pub fn link_up(seq: u32, index: u32) -> Vec<u8> {
    let mut ifi = [0u8; 16];
    ifi[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    ifi[8..12].copy_from_slice(&IFF_UP.to_ne_bytes());
    ifi[12..16].copy_from_slice(&IFF_UP.to_ne_bytes());
    Msg::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq)
        .bytes(&ifi)
        .finish()
}

/// RTM_NEWADDR (replacing an existing one) or RTM_DELADDR for `a` on `index`.
pub fn addr(seq: u32, add: bool, index: u32, a: &AddrSpec) -> Vec<u8> {
    let (kind, flags) = if add {
        (
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
    } else {
        (RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK)
    };
    let mut ifa = [0u8; 8];
    ifa[0] = family(&a.addr);
    ifa[1] = a.prefix;
    ifa[2] = 0; // flags
    ifa[3] = RT_SCOPE_UNIVERSE;
    ifa[4..8].copy_from_slice(&index.to_ne_bytes());
    let ip = ip_bytes(&a.addr);
    Msg::new(kind, flags, seq)
        .bytes(&ifa)
        .attr(IFA_LOCAL, &ip)
        .attr(IFA_ADDRESS, &ip)
        .finish()
}

/// RTM_NEWROUTE (create or replace) or RTM_DELROUTE for `r` out of `index`,
/// in the main table.
pub fn route(seq: u32, add: bool, index: u32, r: &RouteSpec) -> Vec<u8> {
    let (kind, flags) = if add {
        (
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
    } else {
        (RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK)
    };
    let mut rtm = [0u8; 12];
    rtm[0] = family(&r.dst);
    rtm[1] = r.dst_len;
    rtm[2] = 0; // src_len
    rtm[3] = 0; // tos
    rtm[4] = RT_TABLE_MAIN;
    rtm[5] = r.protocol;
    rtm[6] = if r.via.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    rtm[7] = RTN_UNICAST;
    let mut m = Msg::new(kind, flags, seq).bytes(&rtm);
    if r.dst_len > 0 {
        m = m.attr(RTA_DST, &ip_bytes(&r.dst));
    }
    if let Some(gw) = &r.via {
        m = m.attr(RTA_GATEWAY, &ip_bytes(gw));
    }
    m.attr(RTA_OIF, &index.to_ne_bytes()).finish()
}

/// What the kernel answered to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Done.
    Ok,
    /// Refused with this errno (positive).
    Errno(i32),
}

/// Why a reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("netlink reply truncated")]
    Truncated,
    #[error("netlink message with a bad length {0}")]
    BadLength(u32),
}

/// Looks in a datagram of netlink messages for the acknowledgement of `seq`.
/// Ok(None) when the datagram holds no answer to `seq`.
pub fn find_ack(buf: &[u8], seq: u32) -> Result<Option<Ack>, ReplyError> {
    let mut rest = buf;
    while !rest.is_empty() {
        let hdr = rest.get(..NLMSG_HDRLEN).ok_or(ReplyError::Truncated)?;
        let len = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let kind = u16::from_ne_bytes([hdr[4], hdr[5]]);
        let mseq = u32::from_ne_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
        let ulen = len as usize;
        if ulen < NLMSG_HDRLEN {
            return Err(ReplyError::BadLength(len));
        }
        let msg = rest.get(..ulen).ok_or(ReplyError::Truncated)?;
        if mseq == seq {
            match kind {
                NLMSG_ERROR => {
                    let e = msg
                        .get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)
                        .ok_or(ReplyError::Truncated)?;
                    let errno = i32::from_ne_bytes([e[0], e[1], e[2], e[3]]);
                    return Ok(Some(if errno == 0 {
                        Ack::Ok
                    } else {
                        Ack::Errno(errno.saturating_neg())
                    }));
                }
                NLMSG_DONE => return Ok(Some(Ack::Ok)),
                _ => {}
            }
        }
        let aligned = (ulen + 3) & !3;
        rest = rest.get(aligned..).unwrap_or(&[]);
    }
    Ok(None)
}

/// A NETLINK_ROUTE socket.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

/// errno values a delete may meet when the thing is already gone.
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EADDRNOTAVAIL: i32 = 99;
const ENODEV: i32 = 19;

impl Netlink {
    pub fn open() -> std::io::Result<Netlink> {
        use rustix::net::{
            bind, netlink::SocketAddrNetlink, socket_with, sockopt, AddressFamily, SocketFlags,
            SocketType,
        };
        let fd = socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            None,
        )?;
        bind(&fd, &SocketAddrNetlink::new(0, 0))?;
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(Duration::from_secs(3)))?;
        Ok(Netlink { fd, seq: 1 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends one request and waits for its acknowledgement.
    fn call(&mut self, msg: &[u8], seq: u32) -> std::io::Result<Ack> {
        use rustix::net::{netlink::SocketAddrNetlink, recv, sendto, RecvFlags, SendFlags};
        sendto(
            &self.fd,
            msg,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )?;
        let mut buf = vec![0u8; 8192];
        for _ in 0..16 {
            let (n, _) = recv(&self.fd, &mut buf[..], RecvFlags::empty())?;
            let got = buf.get(..n).unwrap_or(&[]);
            match find_ack(got, seq) {
                Ok(Some(ack)) => return Ok(ack),
                Ok(None) => continue,
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
        Err(std::io::Error::other("no netlink acknowledgement"))
    }

    fn expect_ok(
        &mut self,
        msg: Vec<u8>,
        seq: u32,
        what: &str,
        tolerate: &[i32],
    ) -> std::io::Result<()> {
        match self.call(&msg, seq)? {
            Ack::Ok => Ok(()),
            Ack::Errno(e) if tolerate.contains(&e) => Ok(()),
            Ack::Errno(e) => Err(std::io::Error::new(
                std::io::Error::from_raw_os_error(e).kind(),
                format!("{what}: {}", std::io::Error::from_raw_os_error(e)),
            )),
        }
    }

    pub fn set_up(&mut self, index: u32) -> std::io::Result<()> {
        let seq = self.next_seq();
        self.expect_ok(link_up(seq, index), seq, "set link up", &[])
    }

    pub fn add_addr(&mut self, index: u32, a: &AddrSpec) -> std::io::Result<()> {
        let seq = self.next_seq();
        let what = format!("add address {}/{}", a.addr, a.prefix);
        self.expect_ok(addr(seq, true, index, a), seq, &what, &[])
    }

    /// Removes an address; one already gone is fine.
    pub fn del_addr(&mut self, index: u32, a: &AddrSpec) -> std::io::Result<()> {
        let seq = self.next_seq();
        let what = format!("remove address {}/{}", a.addr, a.prefix);
        let gone = [ENOENT, ESRCH, EADDRNOTAVAIL, ENODEV];
        self.expect_ok(addr(seq, false, index, a), seq, &what, &gone)
    }

    pub fn add_route(&mut self, index: u32, r: &RouteSpec) -> std::io::Result<()> {
        let seq = self.next_seq();
        let what = format!("add route {}", describe_route(r));
        self.expect_ok(route(seq, true, index, r), seq, &what, &[])
    }

    /// Removes a route; one already gone is fine.
    pub fn del_route(&mut self, index: u32, r: &RouteSpec) -> std::io::Result<()> {
        let seq = self.next_seq();
        let what = format!("remove route {}", describe_route(r));
        let gone = [ENOENT, ESRCH, ENODEV];
        self.expect_ok(route(seq, false, index, r), seq, &what, &gone)
    }
}

/// `10.0.0.0/8 via 10.0.2.1` or `10.0.2.2/32 on-link`.
pub fn describe_route(r: &RouteSpec) -> String {
    match r.via {
        Some(gw) => format!("{}/{} via {gw}", r.dst, r.dst_len),
        None => format!("{}/{} on-link", r.dst, r.dst_len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn u16s(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
    }
    fn u32s(v: u32) -> [u8; 4] {
        v.to_ne_bytes()
    }

    /// An nlmsghdr laid out field by field.
    fn hdr(len: u32, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
        [
            &u32s(len)[..],
            &u16s(kind),
            &u16s(flags),
            &u32s(seq),
            &u32s(0),
        ]
        .concat()
    }

    #[test]
    fn link_up_layout() {
        let m = link_up(7, 2);
        let mut want = hdr(32, 16, 0x5, 7);
        want.extend_from_slice(&[AF_UNSPEC_FOR_TEST, 0]); // family, pad
        want.extend_from_slice(&u16s(0)); // ifi_type
        want.extend_from_slice(&2i32.to_ne_bytes()); // ifi_index
        want.extend_from_slice(&u32s(1)); // ifi_flags IFF_UP
        want.extend_from_slice(&u32s(1)); // ifi_change IFF_UP
        assert_eq!(m, want);
    }
    const AF_UNSPEC_FOR_TEST: u8 = 0;

    #[test]
    fn newaddr_ipv4_layout() {
        let a = AddrSpec {
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 2, 15)),
            prefix: 24,
        };
        let m = addr(9, true, 2, &a);
        // 16 header + 8 ifaddrmsg + 2 × (4 + 4) attributes.
        let mut want = hdr(40, 20, 0x1 | 0x4 | 0x400 | 0x100, 9);
        want.extend_from_slice(&[2, 24, 0, 0]);
        want.extend_from_slice(&u32s(2));
        want.extend_from_slice(&u16s(8));
        want.extend_from_slice(&u16s(2)); // IFA_LOCAL
        want.extend_from_slice(&[10, 0, 2, 15]);
        want.extend_from_slice(&u16s(8));
        want.extend_from_slice(&u16s(1)); // IFA_ADDRESS
        want.extend_from_slice(&[10, 0, 2, 15]);
        assert_eq!(m, want);

        let d = addr(10, false, 2, &a);
        assert_eq!(
            &d[..16],
            &hdr(40, 21, 0x5, 10)[..],
            "RTM_DELADDR, no create"
        );
        assert_eq!(&d[16..], &want[16..]);
    }

    #[test]
    fn newaddr_ipv6_layout() {
        let a = AddrSpec {
            addr: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)),
            prefix: 64,
        };
        let m = addr(1, true, 3, &a);
        assert_eq!(m.len(), 16 + 8 + 2 * 20);
        assert_eq!(&m[..4], &u32s(64));
        assert_eq!(&m[16..20], &[10, 64, 0, 0]);
        assert_eq!(&m[24..28], &[&u16s(20)[..], &u16s(2)].concat()[..]);
        assert_eq!(&m[28..30], &[0xfd, 0]);
        assert_eq!(m[43], 2);
    }

    #[test]
    fn default_route_layout() {
        let r = RouteSpec {
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst_len: 0,
            via: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2))),
            protocol: RTPROT_DHCP,
        };
        let m = route(5, true, 2, &r);
        // 16 header + 12 rtmsg + RTA_GATEWAY (8) + RTA_OIF (8); no RTA_DST for /0.
        let mut want = hdr(44, 24, 0x505, 5);
        want.extend_from_slice(&[2, 0, 0, 0, 254, 16, 0, 1]);
        want.extend_from_slice(&u32s(0)); // rtm_flags
        want.extend_from_slice(&u16s(8));
        want.extend_from_slice(&u16s(5)); // RTA_GATEWAY
        want.extend_from_slice(&[10, 0, 2, 2]);
        want.extend_from_slice(&u16s(8));
        want.extend_from_slice(&u16s(4)); // RTA_OIF
        want.extend_from_slice(&u32s(2));
        assert_eq!(m, want);
    }

    #[test]
    fn onlink_route_layout() {
        let r = RouteSpec {
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2)),
            dst_len: 32,
            via: None,
            protocol: RTPROT_STATIC,
        };
        let m = route(6, false, 2, &r);
        let mut want = hdr(44, 25, 0x5, 6);
        want.extend_from_slice(&[2, 32, 0, 0, 254, 4, 253, 1]);
        want.extend_from_slice(&u32s(0));
        want.extend_from_slice(&u16s(8));
        want.extend_from_slice(&u16s(1)); // RTA_DST
        want.extend_from_slice(&[10, 0, 2, 2]);
        want.extend_from_slice(&u16s(8));
        want.extend_from_slice(&u16s(4));
        want.extend_from_slice(&u32s(2));
        assert_eq!(m, want);
    }

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        let m = Msg::new(1, 0, 0).attr(9, &[1, 2, 3, 4, 5]).finish();
        assert_eq!(m.len(), 16 + 12);
        assert_eq!(&m[16..18], &u16s(9), "rta_len excludes the padding");
        assert_eq!(&m[25..28], &[0, 0, 0]);
    }

    fn error_msg(seq: u32, errno: i32) -> Vec<u8> {
        let mut m = hdr(36, NLMSG_ERROR, 0, seq);
        m.extend_from_slice(&errno.to_ne_bytes());
        m.extend_from_slice(&hdr(40, 20, 0, seq));
        m
    }

    #[test]
    fn acks_and_errors_are_found() {
        assert_eq!(find_ack(&error_msg(3, 0), 3), Ok(Some(Ack::Ok)));
        assert_eq!(find_ack(&error_msg(3, -17), 3), Ok(Some(Ack::Errno(17))));
        assert_eq!(find_ack(&error_msg(4, 0), 3), Ok(None), "another request's");
        let two = [error_msg(4, -1), error_msg(3, -99)].concat();
        assert_eq!(find_ack(&two, 3), Ok(Some(Ack::Errno(99))));
        assert_eq!(find_ack(&[], 3), Ok(None));
    }

    #[test]
    fn truncated_replies_are_errors() {
        let m = error_msg(3, 0);
        assert_eq!(find_ack(&m[..10], 3), Err(ReplyError::Truncated));
        assert_eq!(find_ack(&m[..20], 3), Err(ReplyError::Truncated));
        let mut short = m.clone();
        short[..4].copy_from_slice(&u32s(18));
        assert_eq!(find_ack(&short[..18], 3), Err(ReplyError::Truncated));
        let mut bad = m.clone();
        bad[..4].copy_from_slice(&u32s(4));
        assert_eq!(find_ack(&bad, 3), Err(ReplyError::BadLength(4)));
        for n in 0..m.len() {
            let _ = find_ack(&m[..n], 3);
        }
    }
}
