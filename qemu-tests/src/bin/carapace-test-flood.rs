//! carapace-test-flood: guest-side probe of the test image that floods the
//! node's own API port from inside, when (and only when) the QEMU test asks
//! for it in fw_cfg `opt/carapace/test-flood` as `<idle> <half-tls>`.
//!
//! Why from inside: QEMU's user network accepts forwarded host connections
//! one at a time (a listen backlog of 1), a few a second under TCG, so
//! thousands of connections cannot come from the host in a test's time.
//! From here they reach port 8443 through the node's TCP stack from the
//! NIC's address, which the API treats as a remote peer like any other
//! (not loopback, whose budget the update daemon's health check uses).
//!
//! It opens `<idle>` TCP connections that never send a byte and `<half-tls>`
//! that send the first bytes of a TLS ClientHello and stop, keeps them open,
//! and opens again what the server closes (at most [`REOPEN_PER_SECOND`]).
//! Lines (the test reads them on the console): `flood: first round done:
//! <opened> opened, <closed> already closed by the server` once every slot
//! has connected once, then `flood: <open> open, <opened> opened, <closed>
//! closed by the server` every 10 s; `flood: not asked for` and exit 0 when
//! the fw_cfg entry is absent.

use qemu_tests::flood::{closed, connect};
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

const REQUEST: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/carapace/test-flood/raw";
const API_PORT: u16 = 8443;
/// How many closed connections are opened again per second, at most.
const REOPEN_PER_SECOND: usize = 50;

fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "flood: {msg}");
    let _ = out.flush();
}

/// The NIC's address: the source the kernel picks for a packet leaving by
/// the default route (a UDP connect sends nothing). None until configured.
fn node_address() -> Option<IpAddr> {
    let probe = UdpSocket::bind("0.0.0.0:0").ok()?;
    probe.connect("192.0.2.1:9").ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

fn parse(request: &str) -> Option<(usize, usize)> {
    let mut words = request.split_whitespace();
    let idle = words.next()?.parse().ok()?;
    let half = words.next()?.parse().ok()?;
    words.next().is_none().then_some((idle, half))
}

fn main() -> std::process::ExitCode {
    let Ok(request) = std::fs::read_to_string(REQUEST) else {
        say("not asked for");
        return std::process::ExitCode::SUCCESS;
    };
    let Some((idle, half)) = parse(&request) else {
        say(&format!(
            "cannot read the request {request:?}: want <idle> <half-tls>"
        ));
        return std::process::ExitCode::FAILURE;
    };
    // Every connection is a descriptor: take the hard limit.
    if let Some(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(limit),
                maximum: Some(limit),
            },
        );
    }
    let ip = loop {
        if let Some(ip) = node_address() {
            break ip;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let addr = SocketAddr::new(ip, API_PORT);
    say(&format!(
        "{idle} idle and {half} half TLS connections to {addr}"
    ));

    let mut slots: Vec<(bool, Option<TcpStream>)> = std::iter::repeat_n(false, idle)
        .chain(std::iter::repeat_n(true, half))
        .map(|half_tls| (half_tls, None))
        .collect();
    let (mut opened, mut closed_by_server) = (0usize, 0usize);
    // The first round: the API may not listen yet on an early boot, so a
    // slot is retried until it connects once.
    for slot in &mut slots {
        loop {
            if let Some(stream) = connect(addr, slot.0) {
                slot.1 = Some(stream);
                opened += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // What the server closed meanwhile is counted (and reopened later).
    }
    for slot in &mut slots {
        if slot.1.as_mut().is_some_and(closed) {
            slot.1 = None;
            closed_by_server += 1;
        }
    }
    say(&format!(
        "first round done: {opened} opened, {closed_by_server} already closed by the server"
    ));
    let mut report = Instant::now();
    loop {
        let second = Instant::now();
        let mut reopened = 0;
        for slot in &mut slots {
            if slot.1.as_mut().is_some_and(closed) {
                slot.1 = None;
                closed_by_server += 1;
            }
            if slot.1.is_none() && reopened < REOPEN_PER_SECOND {
                reopened += 1;
                slot.1 = connect(addr, slot.0);
                if slot.1.is_some() {
                    opened += 1;
                }
            }
        }
        if report.elapsed() >= Duration::from_secs(10) {
            report = Instant::now();
            let open = slots.iter().filter(|s| s.1.is_some()).count();
            say(&format!(
                "{open} open, {opened} opened, {closed_by_server} closed by the server"
            ));
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(second.elapsed()));
    }
}
