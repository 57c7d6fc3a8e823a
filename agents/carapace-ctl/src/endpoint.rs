//! Where the node is (`unix:/path` or `https://host:port`) and the
//! certificate fingerprint a TLS connection pins.

use crate::Error;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The endpoint used when none is given: the node's local, root-only socket
/// (`unix:` and [`carapace_contract::paths::API_SOCKET`], joined at compile
/// time: clap takes a `&'static str`).
pub const DEFAULT_ENDPOINT: &str = {
    const PREFIX: &[u8] = b"unix:";
    const SOCKET: &[u8] = carapace_contract::paths::API_SOCKET.as_bytes();
    const JOINED: [u8; PREFIX.len() + SOCKET.len()] = {
        let mut out = [0; PREFIX.len() + SOCKET.len()];
        let mut i = 0;
        while i < out.len() {
            out[i] = if i < PREFIX.len() {
                PREFIX[i]
            } else {
                SOCKET[i - PREFIX.len()]
            };
            i += 1;
        }
        out
    };
    match std::str::from_utf8(&JOINED) {
        Ok(endpoint) => endpoint,
        Err(_) => panic!("the API socket's path is not UTF-8"),
    }
};
/// The port of an `https://` endpoint that names none.
pub const DEFAULT_PORT: u16 = 8443;

/// How to reach a node's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The local Unix socket (no token needed).
    Unix(PathBuf),
    /// The remote TLS listener. `host` is a DNS name or an IP address
    /// (IPv6 without brackets).
    Https { host: String, port: u16 },
}

impl Endpoint {
    /// Parses `unix:/path` or `https://HOST[:PORT][/]` (IPv6 as `[addr]`).
    pub fn parse(s: &str) -> Result<Endpoint, Error> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "invalid endpoint {s:?}: {why} (expected unix:/path/to/api.sock or https://HOST[:PORT])"
            ))
        };
        if let Some(path) = s.strip_prefix("unix:") {
            // Accept the URL-ish unix:///path too.
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(bad("no socket path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if s.starts_with("http://") {
            return Err(bad("the node serves only TLS remotely; use https://"));
        }
        let Some(rest) = s.strip_prefix("https://") else {
            return Err(bad("unknown scheme"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(bad("only a host and a port may follow https://"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return Err(bad("unclosed [ in the host"));
            };
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address inside [ ]"));
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if host.contains(char::is_whitespace) {
            return Err(bad("white space in the host"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(bad("the port must be a number from 1 to 65535")),
            },
        };
        Ok(Endpoint::Https {
            host: host.to_string(),
            port,
        })
    }

    /// Whether requests cross the network (and so carry the token).
    pub fn is_remote(&self) -> bool {
        matches!(self, Endpoint::Https { .. })
    }
}

impl FromStr for Endpoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Endpoint, Error> {
        Endpoint::parse(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Https { host, port } if host.contains(':') => {
                write!(f, "https://[{host}]:{port}")
            }
            Endpoint::Https { host, port } => write!(f, "https://{host}:{port}"),
        }
    }
}

/// The SHA-256 of a certificate's DER: what a client pins.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Parses 64 hex digits, either case, optionally separated by `:`
    /// (as `openssl x509 -fingerprint` prints them).
    pub fn parse(s: &str) -> Result<Fingerprint, Error> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "invalid fingerprint {s:?}: {why} (expected the 64 hex digits of the certificate's \
                 SHA-256, printed on the node's console and shown in `status`)"
            ))
        };
        let digits: Vec<u8> = s.trim().bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 {
            return Err(bad(&format!("{} hex digits", digits.len())));
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks(2)) {
            let (Some(hi), Some(lo)) = (hex_value(pair[0]), hex_value(pair[1])) else {
                return Err(bad("not a hex digit"));
            };
            *byte = (hi << 4) | lo;
        }
        Ok(Fingerprint(out))
    }

    /// The fingerprint of a certificate (its DER bytes).
    pub fn of(der: &[u8]) -> Fingerprint {
        let digest = Sha256::digest(der);
        let mut out = [0u8; 32];
        out.copy_from_slice(&digest);
        Fingerprint(out)
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl FromStr for Fingerprint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Fingerprint, Error> {
        Fingerprint::parse(s)
    }
}

/// Lowercase hex without separators, as the node prints it.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn https(host: &str, port: u16) -> Endpoint {
        Endpoint::Https {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse(DEFAULT_ENDPOINT).ok(),
            Some(Endpoint::Unix("/run/carapace/api.sock".into()))
        );
        assert_eq!(
            Endpoint::parse("unix:///tmp/a.sock").ok(),
            Some(Endpoint::Unix("/tmp/a.sock".into()))
        );
        assert_eq!(
            Endpoint::parse("unix:rel.sock").ok(),
            Some(Endpoint::Unix("rel.sock".into()))
        );
        assert_eq!(
            Endpoint::parse("https://node1.example").ok(),
            Some(https("node1.example", 8443))
        );
        assert_eq!(
            Endpoint::parse("https://10.0.0.5:9443/").ok(),
            Some(https("10.0.0.5", 9443))
        );
        assert_eq!(
            Endpoint::parse("https://[fe80::1]:1234").ok(),
            Some(https("fe80::1", 1234))
        );
        assert_eq!(
            Endpoint::parse("https://[::1]").ok(),
            Some(https("::1", 8443))
        );
    }

    #[test]
    fn bad_endpoints_are_usage_errors() {
        for bad in [
            "",
            "unix:",
            "/run/carapace/api.sock",
            "http://node:8443",
            "ftp://node",
            "https://",
            "https://:8443",
            "https://node:0",
            "https://node:65536",
            "https://node:port",
            "https://node:8443/v1",
            "https://user@node",
            "https://[::1",
            "https://[node]:1",
            "https://[::1]x",
            "https://no de",
        ] {
            match Endpoint::parse(bad) {
                Err(e @ Error::Usage(_)) => assert_eq!(e.exit_code(), crate::EXIT_USAGE),
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
        let Err(e) = Endpoint::parse("http://node") else {
            panic!("plain http accepted")
        };
        assert!(e.to_string().contains("https://"), "{e}");
    }

    #[test]
    fn endpoints_display_as_parsed() {
        for s in [
            "unix:/run/carapace/api.sock",
            "https://node:8443",
            "https://[fe80::1]:8443",
        ] {
            assert_eq!(
                Endpoint::parse(s).map(|e| e.to_string()).ok(),
                Some(s.into())
            );
        }
        assert!(Endpoint::parse("https://n").is_ok_and(|e| e.is_remote()));
        assert!(Endpoint::parse("unix:/s").is_ok_and(|e| !e.is_remote()));
    }

    #[test]
    fn fingerprints_normalise() {
        let lower = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let upper = lower.to_uppercase();
        let colons: Vec<String> = lower
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect();
        let colons = colons.join(":");
        let a = Fingerprint::parse(lower).ok();
        assert!(a.is_some());
        assert_eq!(Fingerprint::parse(&upper).ok(), a);
        assert_eq!(Fingerprint::parse(&colons).ok(), a);
        assert_eq!(Fingerprint::parse(&format!(" {lower}\n")).ok(), a);
        assert_eq!(a.map(|f| f.to_string()).as_deref(), Some(lower));
        assert_eq!(a.map(|f| f.0[10]), Some(0xaa));
    }

    #[test]
    fn bad_fingerprints_are_usage_errors_saying_where_to_look() {
        let ok = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        for bad in [
            "",
            &ok[..62],
            &format!("{ok}00"),
            &ok.replace('a', "g"),
            &ok.replacen("00", "0 ", 1),
        ] {
            match Fingerprint::parse(bad) {
                Err(Error::Usage(m)) => assert!(m.contains("status"), "{m}"),
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn the_fingerprint_of_a_certificate_is_its_sha256() {
        // SHA-256 of the empty input, a well-known value.
        assert_eq!(
            Fingerprint::of(b"").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_ne!(Fingerprint::of(b"a"), Fingerprint::of(b"b"));
    }
}
