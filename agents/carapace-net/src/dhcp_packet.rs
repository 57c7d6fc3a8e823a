//! DHCPv4 messages (RFC 2131, options from RFC 2132): encoding the client's
//! DISCOVER and REQUEST, and parsing the server's replies. Parsing never
//! panics: a packet that is too short, has a bad cookie or a truncated option
//! is refused with a [`PacketError`].

use std::net::Ipv4Addr;

/// Port the client listens on.
pub const CLIENT_PORT: u16 = 68;
/// Port the server listens on.
pub const SERVER_PORT: u16 = 67;

const OP_BOOTREQUEST: u8 = 1;
const OP_BOOTREPLY: u8 = 2;
const HTYPE_ETHERNET: u8 = 1;
const HLEN_ETHERNET: u8 = 6;
const FLAG_BROADCAST: u16 = 0x8000;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Size of the fixed BOOTP header before the magic cookie.
const FIXED_LEN: usize = 236;
/// BOOTP's minimum message size; some servers drop shorter requests.
const MIN_LEN: usize = 300;

/// Option codes used here.
pub mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN_NAME: u8 = 15;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_LIST: u8 = 55;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const RENEWAL_TIME: u8 = 58;
    pub const REBINDING_TIME: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const END: u8 = 255;
}

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<MessageType> {
        Some(match v {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            _ => return None,
        })
    }
}

/// Why a received packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet too short ({0} bytes)")]
    TooShort(usize),
    #[error("not a BOOTREPLY (op {0})")]
    NotReply(u8),
    #[error("not Ethernet (htype {0}, hlen {1})")]
    NotEthernet(u8, u8),
    #[error("bad magic cookie")]
    BadCookie,
    #[error("option {0} truncated")]
    TruncatedOption(u8),
    #[error("no DHCP message type")]
    NoMessageType,
    #[error("unknown DHCP message type {0}")]
    BadMessageType(u8),
    #[error("option {0} has a bad length {1}")]
    BadOptionLength(u8, usize),
}

/// What the client asks for in a request it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub kind: MessageType,
    pub xid: u32,
    pub mac: [u8; 6],
    /// Seconds since the client began acquiring or renewing.
    pub secs: u16,
    /// Our current address when renewing or rebinding, else unspecified.
    pub ciaddr: Ipv4Addr,
    /// Option 50, only in SELECTING's REQUEST.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54, only in SELECTING's REQUEST.
    pub server_id: Option<Ipv4Addr>,
    /// Option 12.
    pub hostname: Option<&'a str>,
}

/// Encodes a client message (BOOTREQUEST) with the broadcast flag set.
pub fn encode_request(r: &Request<'_>) -> Vec<u8> {
    let mut b = Vec::with_capacity(MIN_LEN + 64);
    b.push(OP_BOOTREQUEST);
    b.push(HTYPE_ETHERNET);
    b.push(HLEN_ETHERNET);
    b.push(0); // hops
    b.extend_from_slice(&r.xid.to_be_bytes());
    b.extend_from_slice(&r.secs.to_be_bytes());
    b.extend_from_slice(&FLAG_BROADCAST.to_be_bytes());
    b.extend_from_slice(&r.ciaddr.octets());
    b.extend_from_slice(&[0; 4]); // yiaddr
    b.extend_from_slice(&[0; 4]); // siaddr
    b.extend_from_slice(&[0; 4]); // giaddr
    let mut chaddr = [0u8; 16];
    chaddr[..6].copy_from_slice(&r.mac);
    b.extend_from_slice(&chaddr);
    b.extend_from_slice(&[0; 64]); // sname
    b.extend_from_slice(&[0; 128]); // file
    debug_assert_eq!(b.len(), FIXED_LEN);
    b.extend_from_slice(&MAGIC_COOKIE);

    b.extend_from_slice(&[opt::MESSAGE_TYPE, 1, r.kind as u8]);
    let mut client_id = [0u8; 7];
    client_id[0] = HTYPE_ETHERNET;
    client_id[1..].copy_from_slice(&r.mac);
    push_option(&mut b, opt::CLIENT_ID, &client_id);
    if let Some(ip) = r.requested_ip {
        push_option(&mut b, opt::REQUESTED_IP, &ip.octets());
    }
    if let Some(ip) = r.server_id {
        push_option(&mut b, opt::SERVER_ID, &ip.octets());
    }
    push_option(&mut b, opt::MAX_MESSAGE_SIZE, &1500u16.to_be_bytes());
    if let Some(h) = r.hostname.filter(|h| !h.is_empty()) {
        let h = &h.as_bytes()[..h.len().min(255)];
        push_option(&mut b, opt::HOSTNAME, h);
    }
    push_option(
        &mut b,
        opt::PARAMETER_LIST,
        &[
            opt::SUBNET_MASK,
            opt::ROUTER,
            opt::DNS,
            opt::DOMAIN_NAME,
            opt::LEASE_TIME,
            opt::SERVER_ID,
            opt::RENEWAL_TIME,
            opt::REBINDING_TIME,
        ],
    );
    b.push(opt::END);
    if b.len() < MIN_LEN {
        b.resize(MIN_LEN, opt::PAD);
    }
    b
}

fn push_option(b: &mut Vec<u8>, code: u8, value: &[u8]) {
    // Every value we send is far below 255 bytes.
    let len = value.len().min(255);
    b.push(code);
    b.push(len as u8);
    b.extend_from_slice(&value[..len]);
}

/// A parsed server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: MessageType,
    pub xid: u32,
    pub chaddr: [u8; 6],
    /// The address offered or acknowledged.
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub subnet_mask: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_secs: Option<u32>,
    pub server_id: Option<Ipv4Addr>,
    pub t1_secs: Option<u32>,
    pub t2_secs: Option<u32>,
}

/// Parses a packet received on the client port.
pub fn parse_reply(p: &[u8]) -> Result<Reply, PacketError> {
    if p.len() < FIXED_LEN + MAGIC_COOKIE.len() {
        return Err(PacketError::TooShort(p.len()));
    }
    if p[0] != OP_BOOTREPLY {
        return Err(PacketError::NotReply(p[0]));
    }
    if p[1] != HTYPE_ETHERNET || p[2] != HLEN_ETHERNET {
        return Err(PacketError::NotEthernet(p[1], p[2]));
    }
    if p[FIXED_LEN..FIXED_LEN + 4] != MAGIC_COOKIE {
        return Err(PacketError::BadCookie);
    }
    let ip_at = |i: usize| Ipv4Addr::new(p[i], p[i + 1], p[i + 2], p[i + 3]);
    let mut chaddr = [0u8; 6];
    chaddr.copy_from_slice(&p[28..34]);
    let mut reply = Reply {
        kind: MessageType::Discover,
        xid: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        chaddr,
        yiaddr: ip_at(16),
        siaddr: ip_at(20),
        subnet_mask: None,
        routers: Vec::new(),
        dns: Vec::new(),
        domain: None,
        lease_secs: None,
        server_id: None,
        t1_secs: None,
        t2_secs: None,
    };
    let mut kind = None;
    for (code, value) in options(&p[FIXED_LEN + 4..])? {
        match code {
            opt::MESSAGE_TYPE => {
                let v = one_byte(code, &value)?;
                kind = Some(MessageType::from_u8(v).ok_or(PacketError::BadMessageType(v))?);
            }
            opt::SUBNET_MASK => reply.subnet_mask = Some(one_addr(code, &value)?),
            opt::SERVER_ID => reply.server_id = Some(one_addr(code, &value)?),
            opt::ROUTER => reply.routers = addr_list(code, &value)?,
            opt::DNS => reply.dns = addr_list(code, &value)?,
            opt::LEASE_TIME => reply.lease_secs = Some(one_u32(code, &value)?),
            opt::RENEWAL_TIME => reply.t1_secs = Some(one_u32(code, &value)?),
            opt::REBINDING_TIME => reply.t2_secs = Some(one_u32(code, &value)?),
            opt::DOMAIN_NAME => {
                let s = String::from_utf8_lossy(&value);
                let s = s.trim_end_matches('\0').trim();
                if !s.is_empty() {
                    reply.domain = Some(s.to_string());
                }
            }
            _ => {}
        }
    }
    reply.kind = kind.ok_or(PacketError::NoMessageType)?;
    Ok(reply)
}

/// Splits the options area into (code, value) pairs, concatenating repeated
/// options as RFC 3396 says. Stops at END; a missing END is tolerated.
fn options(mut o: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, PacketError> {
    let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
    while let Some((&code, rest)) = o.split_first() {
        match code {
            opt::PAD => o = rest,
            opt::END => break,
            _ => {
                let (&len, rest) = rest
                    .split_first()
                    .ok_or(PacketError::TruncatedOption(code))?;
                let len = usize::from(len);
                let value = rest.get(..len).ok_or(PacketError::TruncatedOption(code))?;
                match out.iter_mut().find(|(c, _)| *c == code) {
                    Some((_, v)) => v.extend_from_slice(value),
                    None => out.push((code, value.to_vec())),
                }
                o = &rest[len..];
            }
        }
    }
    Ok(out)
}

fn one_byte(code: u8, v: &[u8]) -> Result<u8, PacketError> {
    match v {
        [b] => Ok(*b),
        _ => Err(PacketError::BadOptionLength(code, v.len())),
    }
}

fn one_addr(code: u8, v: &[u8]) -> Result<Ipv4Addr, PacketError> {
    match v {
        [a, b, c, d] => Ok(Ipv4Addr::new(*a, *b, *c, *d)),
        _ => Err(PacketError::BadOptionLength(code, v.len())),
    }
}

fn one_u32(code: u8, v: &[u8]) -> Result<u32, PacketError> {
    match v {
        [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(PacketError::BadOptionLength(code, v.len())),
    }
}

fn addr_list(code: u8, v: &[u8]) -> Result<Vec<Ipv4Addr>, PacketError> {
    if v.is_empty() || !v.len().is_multiple_of(4) {
        return Err(PacketError::BadOptionLength(code, v.len()));
    }
    Ok(v.chunks_exact(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect())
}

/// The prefix length of a contiguous netmask, or None for a mask like 255.0.255.0.
pub fn mask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let ones = m.leading_ones();
    if m.checked_shl(ones).unwrap_or(0) == 0 {
        Some(ones as u8)
    } else {
        None
    }
}

/// The classful prefix for an address, used when a server sends no (or a
/// bad) subnet mask.
pub fn classful_prefix(addr: Ipv4Addr) -> u8 {
    match addr.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// Encodes a server reply; the tests' fake server uses it.
#[cfg(test)]
pub fn encode_reply(r: &Reply) -> Vec<u8> {
    let mut b = vec![0u8; FIXED_LEN];
    b[0] = OP_BOOTREPLY;
    b[1] = HTYPE_ETHERNET;
    b[2] = HLEN_ETHERNET;
    b[4..8].copy_from_slice(&r.xid.to_be_bytes());
    b[10..12].copy_from_slice(&FLAG_BROADCAST.to_be_bytes());
    b[16..20].copy_from_slice(&r.yiaddr.octets());
    b[20..24].copy_from_slice(&r.siaddr.octets());
    b[28..34].copy_from_slice(&r.chaddr);
    b.extend_from_slice(&MAGIC_COOKIE);
    b.extend_from_slice(&[opt::MESSAGE_TYPE, 1, r.kind as u8]);
    if let Some(m) = r.subnet_mask {
        push_option(&mut b, opt::SUBNET_MASK, &m.octets());
    }
    let list = |v: &[Ipv4Addr]| v.iter().flat_map(|a| a.octets()).collect::<Vec<u8>>();
    if !r.routers.is_empty() {
        push_option(&mut b, opt::ROUTER, &list(&r.routers));
    }
    if !r.dns.is_empty() {
        push_option(&mut b, opt::DNS, &list(&r.dns));
    }
    if let Some(d) = &r.domain {
        push_option(&mut b, opt::DOMAIN_NAME, d.as_bytes());
    }
    for (code, v) in [
        (opt::LEASE_TIME, r.lease_secs),
        (opt::RENEWAL_TIME, r.t1_secs),
        (opt::REBINDING_TIME, r.t2_secs),
    ] {
        if let Some(v) = v {
            push_option(&mut b, code, &v.to_be_bytes());
        }
    }
    if let Some(s) = r.server_id {
        push_option(&mut b, opt::SERVER_ID, &s.octets());
    }
    b.push(opt::END);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn discover() -> Vec<u8> {
        encode_request(&Request {
            kind: MessageType::Discover,
            xid: 0x1234_5678,
            mac: MAC,
            secs: 3,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            requested_ip: None,
            server_id: None,
            hostname: Some("node-1"),
        })
    }

    /// A reply as slirp sends it, laid out by hand from RFC 2131's figure 1.
    fn slirp_offer() -> Vec<u8> {
        let mut p = vec![0u8; 236];
        p[0] = 2;
        p[1] = 1;
        p[2] = 6;
        p[4..8].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        p[20..24].copy_from_slice(&[10, 0, 2, 2]);
        p[28..34].copy_from_slice(&MAC);
        p.extend_from_slice(&[99, 130, 83, 99]);
        p.extend_from_slice(&[53, 1, 2]);
        p.extend_from_slice(&[54, 4, 10, 0, 2, 2]);
        p.extend_from_slice(&[51, 4, 0, 1, 0x51, 0x80]); // 86400
        p.extend_from_slice(&[1, 4, 255, 255, 255, 0]);
        p.extend_from_slice(&[3, 4, 10, 0, 2, 2]);
        p.extend_from_slice(&[6, 4, 10, 0, 2, 3]);
        p.extend_from_slice(&[0, 0]); // padding is skipped
        p.push(255);
        p.resize(300, 0);
        p
    }

    #[test]
    fn discover_layout() {
        let p = discover();
        assert_eq!(p.len(), 300, "padded to the BOOTP minimum");
        assert_eq!(&p[..4], &[1, 1, 6, 0], "op, htype, hlen, hops");
        assert_eq!(&p[4..8], &[0x12, 0x34, 0x56, 0x78], "xid");
        assert_eq!(&p[8..10], &[0, 3], "secs");
        assert_eq!(&p[10..12], &[0x80, 0], "broadcast flag");
        assert_eq!(&p[12..28], &[0; 16], "ciaddr yiaddr siaddr giaddr");
        assert_eq!(&p[28..34], &MAC);
        assert_eq!(&p[34..44], &[0; 10], "chaddr padding");
        assert_eq!(&p[236..240], &[99, 130, 83, 99]);
        assert_eq!(&p[240..243], &[53, 1, 1], "DHCPDISCOVER");
        assert_eq!(
            &p[243..252],
            &[61, 7, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
        );
        assert_eq!(&p[252..256], &[57, 2, 0x05, 0xdc]);
        assert_eq!(&p[256..264], &[12, 6, b'n', b'o', b'd', b'e', b'-', b'1']);
        assert_eq!(&p[264..274], &[55, 8, 1, 3, 6, 15, 51, 54, 58, 59]);
        assert_eq!(p[274], 255);
        assert!(p[275..].iter().all(|&b| b == 0));
    }

    #[test]
    fn selecting_request_carries_requested_ip_and_server_id() {
        let p = encode_request(&Request {
            kind: MessageType::Request,
            xid: 1,
            mac: MAC,
            secs: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            requested_ip: Some(Ipv4Addr::new(10, 0, 2, 15)),
            server_id: Some(Ipv4Addr::new(10, 0, 2, 2)),
            hostname: None,
        });
        assert_eq!(&p[240..243], &[53, 1, 3]);
        assert_eq!(&p[252..258], &[50, 4, 10, 0, 2, 15]);
        assert_eq!(&p[258..264], &[54, 4, 10, 0, 2, 2]);
        let renew = encode_request(&Request {
            kind: MessageType::Request,
            xid: 1,
            mac: MAC,
            secs: 0,
            ciaddr: Ipv4Addr::new(10, 0, 2, 15),
            requested_ip: None,
            server_id: None,
            hostname: None,
        });
        assert_eq!(&renew[12..16], &[10, 0, 2, 15], "ciaddr when renewing");
        assert_eq!(&renew[252..254], &[57, 2], "no option 50/54 when renewing");
    }

    #[test]
    fn parses_a_slirp_offer() {
        let r = parse_reply(&slirp_offer()).expect("valid offer");
        assert_eq!(r.kind, MessageType::Offer);
        assert_eq!(r.xid, 0x1234_5678);
        assert_eq!(r.chaddr, MAC);
        assert_eq!(r.yiaddr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(r.server_id, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(r.lease_secs, Some(86400));
        assert_eq!(r.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(r.routers, vec![Ipv4Addr::new(10, 0, 2, 2)]);
        assert_eq!(r.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(r.t1_secs, None);
    }

    #[test]
    fn encode_reply_round_trips() {
        let mut r = parse_reply(&slirp_offer()).expect("valid");
        r.kind = MessageType::Ack;
        r.t1_secs = Some(100);
        r.t2_secs = Some(200);
        r.domain = Some("example.org".into());
        r.dns.push(Ipv4Addr::new(1, 1, 1, 1));
        assert_eq!(parse_reply(&encode_reply(&r)), Ok(r));
    }

    #[test]
    fn refuses_malformed_packets() {
        let good = slirp_offer();
        assert_eq!(parse_reply(&[]), Err(PacketError::TooShort(0)));
        assert_eq!(parse_reply(&good[..239]), Err(PacketError::TooShort(239)));
        let mut p = good.clone();
        p[0] = 1;
        assert_eq!(parse_reply(&p), Err(PacketError::NotReply(1)));
        let mut p = good.clone();
        p[2] = 16;
        assert_eq!(parse_reply(&p), Err(PacketError::NotEthernet(1, 16)));
        let mut p = good.clone();
        p[237] = 0;
        assert_eq!(parse_reply(&p), Err(PacketError::BadCookie));
        // Cut inside the lease time option's value (after 53 and 54).
        assert_eq!(
            parse_reply(&good[..240 + 3 + 6 + 4]),
            Err(PacketError::TruncatedOption(51))
        );
        // Cut right after an option code, before its length.
        assert_eq!(
            parse_reply(&good[..240 + 3 + 1]),
            Err(PacketError::TruncatedOption(54))
        );
        // No message type at all.
        let mut p = good[..240].to_vec();
        p.extend_from_slice(&[54, 4, 10, 0, 2, 2, 255]);
        assert_eq!(parse_reply(&p), Err(PacketError::NoMessageType));
        let mut p = good[..240].to_vec();
        p.extend_from_slice(&[53, 1, 42, 255]);
        assert_eq!(parse_reply(&p), Err(PacketError::BadMessageType(42)));
        let mut p = good[..240].to_vec();
        p.extend_from_slice(&[53, 1, 2, 1, 3, 255, 255, 255, 255]);
        assert_eq!(parse_reply(&p), Err(PacketError::BadOptionLength(1, 3)));
        let mut p = good[..240].to_vec();
        p.extend_from_slice(&[53, 1, 2, 3, 0, 255]);
        assert_eq!(parse_reply(&p), Err(PacketError::BadOptionLength(3, 0)));
    }

    #[test]
    fn no_truncation_of_a_valid_packet_panics() {
        let good = slirp_offer();
        for n in 0..good.len() {
            let _ = parse_reply(&good[..n]);
        }
        // And every single-byte corruption is either parsed or refused.
        for i in 0..good.len() {
            let mut p = good.clone();
            p[i] = 0xff;
            let _ = parse_reply(&p);
        }
        assert!(parse_reply(&good).is_ok());
    }

    #[test]
    fn repeated_options_are_concatenated() {
        let mut p = slirp_offer()[..240].to_vec();
        p.extend_from_slice(&[53, 1, 5, 6, 4, 1, 1, 1, 1, 6, 4, 8, 8, 8, 8, 255]);
        let r = parse_reply(&p).expect("valid");
        assert_eq!(
            r.dns,
            vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(8, 8, 8, 8)]
        );
    }

    #[test]
    fn masks_and_classes() {
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 240, 0)), Some(20));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(classful_prefix(Ipv4Addr::new(10, 0, 2, 15)), 8);
        assert_eq!(classful_prefix(Ipv4Addr::new(172, 16, 0, 1)), 16);
        assert_eq!(classful_prefix(Ipv4Addr::new(192, 168, 1, 1)), 24);
    }
}
