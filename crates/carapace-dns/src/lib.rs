//! carapace-dns: a minimal DNS stub resolver (RFC 1035), one A query over
//! UDP to the DNS servers the node knows, for the net agent's NTP server
//! names and the update daemon's update source. The node's binary is linked
//! statically with glibc and has no NSS configuration, so getaddrinfo is
//! not used.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const FLAG_RD: u16 = 0x0100;
const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;

/// Why an answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("{0:?} is not a valid host name")]
    BadName(String),
    #[error("answer truncated or malformed")]
    Malformed,
    #[error("answer to another query")]
    WrongId,
    #[error("server error (rcode {0})")]
    Rcode(u8),
    #[error("no address for the name")]
    NoAddress,
    #[error("answer truncated (TC), and TCP is not supported")]
    Truncated,
}

/// Encodes a recursive query for the A records of `name`.
pub fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let name = name.trim_end_matches('.');
    let bad = || DnsError::BadName(name.to_string());
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&FLAG_RD.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    q.extend_from_slice(&[0; 6]); // AN, NS, AR counts
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad());
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&TYPE_A.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(q)
}

fn be16(b: &[u8], at: usize) -> Result<u16, DnsError> {
    match b.get(at..at + 2) {
        Some([x, y]) => Ok(u16::from_be_bytes([*x, *y])),
        _ => Err(DnsError::Malformed),
    }
}

/// Skips a (possibly compressed) name starting at `at`; returns the offset after it.
fn skip_name(b: &[u8], mut at: usize) -> Result<usize, DnsError> {
    loop {
        let len = *b.get(at).ok_or(DnsError::Malformed)?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => {
                b.get(at + 1).ok_or(DnsError::Malformed)?;
                return Ok(at + 2);
            }
            l if l & 0xc0 == 0 => at += 1 + usize::from(l),
            _ => return Err(DnsError::Malformed),
        }
    }
}

/// The A records in an answer to query `id`. Answers are trusted only for
/// their A records; CNAME chains the resolver followed show up as extra A
/// records in the answer section, which are taken too.
pub fn parse_answer(b: &[u8], id: u16) -> Result<Vec<Ipv4Addr>, DnsError> {
    if be16(b, 0)? != id {
        return Err(DnsError::WrongId);
    }
    let flags = be16(b, 2)?;
    if flags & FLAG_QR == 0 {
        return Err(DnsError::Malformed);
    }
    if flags & FLAG_TC != 0 {
        return Err(DnsError::Truncated);
    }
    let rcode = (flags & 0xf) as u8;
    if rcode != 0 {
        return Err(DnsError::Rcode(rcode));
    }
    let qd = be16(b, 4)?;
    let an = be16(b, 6)?;
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(b, at)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        at = skip_name(b, at)?;
        let kind = be16(b, at)?;
        let class = be16(b, at + 2)?;
        let rdlen = usize::from(be16(b, at + 8)?);
        let rdata = b.get(at + 10..at + 10 + rdlen).ok_or(DnsError::Malformed)?;
        if kind == TYPE_A && class == CLASS_IN {
            if let [w, x, y, z] = rdata {
                out.push(Ipv4Addr::new(*w, *x, *y, *z));
            }
        }
        at += 10 + rdlen;
    }
    if out.is_empty() {
        Err(DnsError::NoAddress)
    } else {
        Ok(out)
    }
}

/// Resolves `name` to IPv4 addresses by asking each of `servers` in turn
/// (two tries each, 2 s apart). An IP address is returned as is.
pub async fn resolve(name: &str, servers: &[IpAddr], id_seed: u16) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    if servers.is_empty() {
        return Err(format!("cannot resolve {name}: no DNS servers"));
    }
    let mut last = String::from("no answer");
    for (i, server) in servers.iter().enumerate() {
        let id = id_seed.wrapping_add(i as u16);
        match ask(name, *server, id).await {
            Ok(a) => return Ok(a.into_iter().map(IpAddr::V4).collect()),
            Err(e) => last = format!("{server}: {e}"),
        }
    }
    Err(format!("cannot resolve {name}: {last}"))
}

async fn ask(name: &str, server: IpAddr, id: u16) -> Result<Vec<Ipv4Addr>, String> {
    let query = encode_query(id, name).map_err(|e| e.to_string())?;
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    sock.connect((server, 53))
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1500];
    for _ in 0..2 {
        sock.send(&query).await.map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(n)) => match parse_answer(buf.get(..n).unwrap_or(&[]), id) {
                    Err(DnsError::WrongId) => continue,
                    other => return other.map_err(|e| e.to_string()),
                },
            }
        }
    }
    Err("timed out".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_layout() {
        let q = encode_query(0xabcd, "pool.ntp.org.").expect("valid");
        let mut want = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(b"\x04pool\x03ntp\x03org\x00");
        want.extend_from_slice(&[0, 1, 0, 1]);
        assert_eq!(q, want);
        assert!(encode_query(1, "").is_err());
        assert!(encode_query(1, "a..b").is_err());
        assert!(encode_query(1, &"x".repeat(64)).is_err());
    }

    /// An answer as a recursive resolver gives it: the question, a CNAME
    /// with a compressed owner, then two A records.
    fn answer(id: u16) -> Vec<u8> {
        let mut b = encode_query(id, "time.example.org").expect("valid");
        b[2] = 0x81; // QR, RD
        b[3] = 0x80; // RA, rcode 0
        b[7] = 3; // ANCOUNT
                  // time.example.org CNAME ntp.example.org (owner: pointer to offset 12)
        b.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 6]);
        b.extend_from_slice(b"\x03ntp\xc0\x11");
        let cname_target = b.len() - 6;
        for last in [1u8, 2] {
            b.extend_from_slice(&[0xc0, cname_target as u8, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            b.extend_from_slice(&[192, 0, 2, last]);
        }
        b
    }

    #[test]
    fn parses_a_records_through_a_cname() {
        assert_eq!(
            parse_answer(&answer(7), 7),
            Ok(vec![
                Ipv4Addr::new(192, 0, 2, 1),
                Ipv4Addr::new(192, 0, 2, 2)
            ])
        );
    }

    #[test]
    fn refuses_bad_answers() {
        let good = answer(7);
        assert_eq!(parse_answer(&good, 8), Err(DnsError::WrongId));
        let mut nx = good.clone();
        nx[3] = 0x83;
        assert_eq!(parse_answer(&nx, 7), Err(DnsError::Rcode(3)));
        let mut tc = good.clone();
        tc[2] |= 0x02;
        assert_eq!(parse_answer(&tc, 7), Err(DnsError::Truncated));
        let mut query = good.clone();
        query[2] = 0x01;
        assert_eq!(parse_answer(&query, 7), Err(DnsError::Malformed));
        let mut none = good[..34].to_vec(); // the question only
        none[7] = 0;
        assert_eq!(parse_answer(&none, 7), Err(DnsError::NoAddress));
        for n in 0..good.len() {
            assert!(parse_answer(&good[..n], 7).is_err(), "cut at {n}");
        }
        let mut bad_label = good.clone();
        bad_label[12] = 0x80;
        assert_eq!(parse_answer(&bad_label, 7), Err(DnsError::Malformed));
    }

    #[test]
    fn resolve_passes_addresses_through() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let got = rt.block_on(resolve("192.0.2.7", &[], 1));
        assert_eq!(got, Ok(vec!["192.0.2.7".parse::<IpAddr>().expect("ip")]));
        let err = rt.block_on(resolve("time.example.org", &[], 1));
        assert!(err.is_err_and(|e| e.contains("no DNS servers")));
    }
}
