//! An SNTPv4 client (RFC 4330): the 48-byte request, checks on the reply,
//! the offset and delay computation, and the poll interval (64 s, doubling
//! after each good sync up to 1024 s, back to 64 s after a failure).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from 1900-01-01 (NTP era 0) to 1970-01-01.
pub const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
pub const MIN_POLL: Duration = Duration::from_secs(64);
pub const MAX_POLL: Duration = Duration::from_secs(1024);
/// Offsets beyond this are corrected by stepping the clock.
pub const STEP_THRESHOLD_SECS: f64 = 0.5;

/// A 64-bit NTP timestamp: seconds since 1900 and a binary fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NtpTime(pub u64);

impl NtpTime {
    pub fn from_system(t: SystemTime) -> NtpTime {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs().wrapping_add(NTP_UNIX_OFFSET) & 0xffff_ffff;
        let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
        NtpTime((secs << 32) | frac)
    }

    /// Seconds since the Unix epoch as a float. Era 0 ends in 2036: a
    /// seconds field below 1970's value is taken to be in era 1.
    pub fn to_unix_f64(self) -> f64 {
        let secs = self.0 >> 32;
        let unix_secs = if secs >= NTP_UNIX_OFFSET {
            secs - NTP_UNIX_OFFSET
        } else {
            secs + (1u64 << 32) - NTP_UNIX_OFFSET
        };
        unix_secs as f64 + (self.0 & 0xffff_ffff) as f64 / 4_294_967_296.0
    }
}

/// The client's request: LI 0, version 4, mode 3 (client), with `transmit`
/// as the transmit timestamp (the server echoes it as the originate one).
pub fn encode_request(transmit: NtpTime) -> [u8; 48] {
    let mut p = [0u8; 48];
    p[0] = 0x23;
    p[40..48].copy_from_slice(&transmit.0.to_be_bytes());
    p
}

/// Why a reply was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SntpError {
    #[error("reply too short ({0} bytes)")]
    TooShort(usize),
    #[error("not a server reply (mode {0})")]
    NotServer(u8),
    #[error("server not synchronized")]
    Unsynchronized,
    #[error("kiss-o'-death {0:?}")]
    KissOfDeath(String),
    #[error("reply does not answer our request")]
    NotOurs,
    #[error("reply without a transmit time")]
    NoTime,
}

/// The server's timestamps from a valid reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTimes {
    pub receive: NtpTime,
    pub transmit: NtpTime,
    pub stratum: u8,
}

fn ts(p: &[u8], at: usize) -> NtpTime {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[at..at + 8]);
    NtpTime(u64::from_be_bytes(b))
}

/// Checks a reply to the request sent with `sent` as its transmit time.
pub fn parse_reply(p: &[u8], sent: NtpTime) -> Result<ServerTimes, SntpError> {
    if p.len() < 48 {
        return Err(SntpError::TooShort(p.len()));
    }
    let li = p[0] >> 6;
    let mode = p[0] & 7;
    let stratum = p[1];
    if mode != 4 && mode != 5 {
        return Err(SntpError::NotServer(mode));
    }
    if stratum == 0 {
        let code = String::from_utf8_lossy(&p[12..16]).into_owned();
        return Err(SntpError::KissOfDeath(code));
    }
    if li == 3 || stratum > 15 {
        return Err(SntpError::Unsynchronized);
    }
    if ts(p, 24) != sent {
        return Err(SntpError::NotOurs);
    }
    let transmit = ts(p, 40);
    if transmit.0 == 0 {
        return Err(SntpError::NoTime);
    }
    Ok(ServerTimes {
        receive: ts(p, 32),
        transmit,
        stratum,
    })
}

/// Clock offset and round-trip delay in seconds (RFC 4330 §5):
/// offset = ((T2 − T1) + (T3 − T4)) / 2, delay = (T4 − T1) − (T3 − T2).
/// A positive offset means our clock is behind.
pub fn offset_and_delay(t1: NtpTime, server: &ServerTimes, t4: NtpTime) -> (f64, f64) {
    let (t1, t2, t3, t4) = (
        t1.to_unix_f64(),
        server.receive.to_unix_f64(),
        server.transmit.to_unix_f64(),
        t4.to_unix_f64(),
    );
    (((t2 - t1) + (t3 - t4)) / 2.0, (t4 - t1) - (t3 - t2))
}

/// Whether an offset calls for stepping the clock.
pub fn needs_step(offset_secs: f64) -> bool {
    offset_secs.abs() > STEP_THRESHOLD_SECS
}

/// The next poll interval after a sync attempt.
pub fn next_interval(current: Duration, success: bool) -> Duration {
    if success {
        (current * 2).clamp(MIN_POLL, MAX_POLL)
    } else {
        MIN_POLL
    }
}

/// The result of one good exchange.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub offset_secs: f64,
    pub delay_secs: f64,
}

/// Queries `server`:123 once (two tries, 2 s each).
pub async fn query(server: IpAddr) -> Result<Sample, String> {
    let bind: SocketAddr = match server {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    sock.connect((server, 123))
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 128];
    let mut last = String::from("timed out");
    for _ in 0..2 {
        let t1 = NtpTime::from_system(SystemTime::now());
        sock.send(&encode_request(t1))
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(n)) => {
                    let t4 = NtpTime::from_system(SystemTime::now());
                    match parse_reply(buf.get(..n).unwrap_or(&[]), t1) {
                        Ok(times) => {
                            let (offset_secs, delay_secs) = offset_and_delay(t1, &times, t4);
                            return Ok(Sample {
                                offset_secs,
                                delay_secs,
                            });
                        }
                        Err(SntpError::NotOurs) => continue,
                        Err(e) => {
                            last = e.to_string();
                            break;
                        }
                    }
                }
            }
        }
    }
    Err(last)
}

/// Steps CLOCK_REALTIME by `offset_secs`.
pub fn step_clock(offset_secs: f64) -> std::io::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(std::io::Error::other)?
        .as_secs_f64();
    let target = now + offset_secs;
    if !target.is_finite() || target < 0.0 {
        return Err(std::io::Error::other("offset out of range"));
    }
    let secs = target.floor();
    let nanos = ((target - secs) * 1e9).clamp(0.0, 999_999_999.0);
    rustix::time::clock_settime(
        rustix::time::ClockId::Realtime,
        rustix::time::Timespec {
            tv_sec: secs as i64,
            tv_nsec: nanos as _,
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2023-11-14T22:13:20Z plus a quarter second.
    fn t(unix_secs: u64, quarter_secs: u64) -> NtpTime {
        NtpTime(((unix_secs + NTP_UNIX_OFFSET) << 32) | (quarter_secs << 30))
    }

    #[test]
    fn request_layout() {
        let p = encode_request(NtpTime(0x0102_0304_0506_0708));
        assert_eq!(p[0], 0x23, "LI 0, VN 4, mode 3");
        assert!(p[1..40].iter().all(|&b| b == 0));
        assert_eq!(&p[40..48], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn timestamps_convert() {
        let sys = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let n = NtpTime::from_system(sys);
        assert_eq!(n.0 >> 32, 1_700_000_000 + NTP_UNIX_OFFSET);
        assert_eq!(n, t(1_700_000_000, 1));
        assert_eq!(n.to_unix_f64(), 1_700_000_000.25);
        // Era 1: 2036-02-07T06:28:16Z is seconds field 0.
        assert_eq!(NtpTime(0).to_unix_f64(), 2_085_978_496.0);
    }

    fn reply(sent: NtpTime, receive: NtpTime, transmit: NtpTime) -> [u8; 48] {
        let mut p = [0u8; 48];
        p[0] = 0x24; // LI 0, VN 4, mode 4
        p[1] = 2;
        p[24..32].copy_from_slice(&sent.0.to_be_bytes());
        p[32..40].copy_from_slice(&receive.0.to_be_bytes());
        p[40..48].copy_from_slice(&transmit.0.to_be_bytes());
        p
    }

    #[test]
    fn offset_and_delay_from_four_timestamps() {
        // Our clock is 10 s behind; 0.5 s each way; the server answers at once.
        let t1 = t(1000, 0);
        let t2 = t(1010, 2); // 1010.5
        let t3 = t(1010, 2);
        let t4 = t(1001, 0);
        let s = parse_reply(&reply(t1, t2, t3), t1).expect("valid");
        assert_eq!(s.stratum, 2);
        assert_eq!(offset_and_delay(t1, &s, t4), (10.0, 1.0));
        assert!(needs_step(10.0));
        // Ahead by 0.375 s: no step.
        let s = parse_reply(&reply(t1, t(999, 3), t(999, 3)), t1).expect("valid");
        let (off, delay) = offset_and_delay(t1, &s, t(1000, 1));
        assert_eq!((off, delay), (-0.375, 0.25));
        assert!(!needs_step(off));
        assert!(!needs_step(0.25) && needs_step(-0.75));
    }

    #[test]
    fn refuses_bad_replies() {
        let t1 = t(1000, 0);
        let good = reply(t1, t(1000, 1), t(1000, 1));
        assert_eq!(parse_reply(&good[..47], t1), Err(SntpError::TooShort(47)));
        assert_eq!(parse_reply(&good, t(1000, 1)), Err(SntpError::NotOurs));
        let mut p = good;
        p[0] = 0x23;
        assert_eq!(parse_reply(&p, t1), Err(SntpError::NotServer(3)));
        let mut p = good;
        p[1] = 0;
        p[12..16].copy_from_slice(b"RATE");
        assert_eq!(
            parse_reply(&p, t1),
            Err(SntpError::KissOfDeath("RATE".into()))
        );
        let mut p = good;
        p[0] |= 0xc0;
        assert_eq!(parse_reply(&p, t1), Err(SntpError::Unsynchronized));
        let mut p = good;
        p[40..48].copy_from_slice(&[0; 8]);
        assert_eq!(parse_reply(&p, t1), Err(SntpError::NoTime));
    }

    #[test]
    fn poll_interval_backs_off_and_resets() {
        let mut i = MIN_POLL;
        let mut seen = Vec::new();
        for _ in 0..6 {
            i = next_interval(i, true);
            seen.push(i.as_secs());
        }
        assert_eq!(seen, [128, 256, 512, 1024, 1024, 1024]);
        assert_eq!(next_interval(i, false), MIN_POLL);
    }
}
