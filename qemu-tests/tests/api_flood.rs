//! Hostile clients cannot starve the API (issue 10): with 2,000 TCP
//! connections that never send a byte and 200 half-done TLS handshakes
//! against the node's API port, the API still answers the operator over TLS,
//! never serves a hash of its token, and a trial boot under the same flood
//! is blessed — its health check reached the API both over TLS on
//! 127.0.0.1:8443 and on api.sock. The update sources are prepared by
//! `cargo xtask test`.
//!
//! The thousands come from inside the node (the test image's
//! `carapace-test-flood`, asked for in fw_cfg, connecting from the NIC's
//! address): QEMU's user network accepts forwarded connections one at a
//! time, a few a second under TCG. A smaller flood from the host shares the
//! operator's own peer address (QEMU's gateway), so silent connections there
//! compete with the operator's for the per-peer budget.

use anyhow::{ensure, Result};
use qemu_tests::flood::{raise_descriptor_limit, Flood};
use qemu_tests::{update_sources, FileServer, Node, TestDisk};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const TOKEN: &str = "flood-token-0123456789";
const IDLE_TCP: usize = 2_000;
const HALF_TLS: usize = 200;
/// The flood from the host, from the operator's own peer address: more than
/// the per-peer budget (128), few enough for QEMU to forward within a minute.
const HOST_IDLE_TCP: usize = 144;
const HOST_HALF_TLS: usize = 16;

/// The fw_cfg entry that makes the node's flood probe start.
fn flood_inside() -> Vec<String> {
    vec![
        "-fw_cfg".to_string(),
        format!("name=opt/carapace/test-flood,string={IDLE_TCP} {HALF_TLS}"),
    ]
}

fn user_data(source: &str) -> String {
    format!(
        "hostname = \"flooded-node\"\n[api]\ntoken = \"{TOKEN}\"\n[updates]\nsource = \"{source}\"\n"
    )
}

fn flood(node: &Node) -> Result<Flood> {
    Flood::start(
        SocketAddr::from(([127, 0, 0, 1], node.api_port)),
        HOST_IDLE_TCP,
        HOST_HALF_TLS,
    )
}

/// Keeps reading the console (a full serial line stalls the guest) until
/// the flood has opened its first round, then for `settle` more.
fn hold(node: &mut Node, flood: &Flood, settle: Duration) -> Result<()> {
    let deadline = Instant::now() + qemu_tests::EXPECT_TIMEOUT;
    while !flood.stats().filled() {
        ensure!(
            Instant::now() < deadline,
            "the flood never opened its connections"
        );
        node.drain();
        std::thread::sleep(Duration::from_millis(100));
    }
    let until = Instant::now() + settle;
    while Instant::now() < until {
        node.drain();
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[test]
fn the_api_answers_under_a_connection_flood_and_a_trial_boot_under_it_is_blessed() -> Result<()> {
    // Before QEMU starts: it holds a socket per forwarded connection too.
    raise_descriptor_limit(2 * (HOST_IDLE_TCP + HOST_HALF_TLS) as u64 + 1024)?;
    let server = FileServer::start(&update_sources())?;
    let disk = TestDisk::fresh("api-flood")?;
    let mut node =
        disk.boot_with_user_data_and(&user_data(&server.url_for_node("good/")), &flood_inside())?;
    let (ready, ctl) = node.reach_update_daemon(TOKEN)?;
    assert_eq!(ready.version, "0.1.0");
    node.wait_until("the flood inside made its first round", |t| {
        t.contains("flood: first round done: ")
    })?;
    ensure!(
        node.transcript.contains(&format!(
            "{IDLE_TCP} idle and {HALF_TLS} half TLS connections"
        )),
        "the probe floods with what the test asked for"
    );

    let attack = flood(&node)?;
    hold(&mut node, &attack, Duration::from_secs(5))?;
    assert!(
        attack.stats().opened() >= HOST_IDLE_TCP + HOST_HALF_TLS,
        "the flood reached the node: {} opened",
        attack.stats().opened()
    );
    // The operator is answered over TLS, again and again.
    for _ in 0..5 {
        let status = node.ctl_ok(&ctl, &["status"])?;
        assert!(status.contains("version = 0.1.0"), "{status}");
        node.drain();
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        attack.stats().closed_by_server() > 0,
        "the node closes what it cannot hold"
    );
    // The settings say a token is set, never what hashes to it.
    let settings = node.ctl_ok(&ctl, &["--output", "json", "get"])?;
    let tree: Value = serde_json::from_str(&settings)?;
    assert_eq!(
        tree["api"],
        serde_json::json!({ "token_set": true }),
        "{settings}"
    );
    for secret in [TOKEN, "argon2", "token_hash", "token_sha256"] {
        assert!(!settings.contains(secret), "{secret} served: {settings}");
    }

    // An update downloaded, applied and rebooted into under the flood.
    let out = node.ctl_ok(&ctl, &["update", "check"])?;
    assert!(out.contains("0.2.0 is available"), "{out}");
    node.ctl_ok(&ctl, &["update", "download", "--wait"])?;
    node.ctl_ok(&ctl, &["update", "apply"])?;
    node.ctl_ok(&ctl, &["reboot"])?;
    node.wait_exit()?;
    drop(attack);

    // The trial boot is flooded from its first second (a new QEMU: a new
    // forwarded port) and must still bless itself.
    let mut node = disk.boot_with(&flood_inside())?;
    let attack = flood(&node)?;
    let (ready, ctl) = node.reach_update_daemon(TOKEN)?;
    assert_eq!(ready.version, "0.2.0");
    node.wait_until("0.2.0 blessed itself under the flood", |t| {
        t.contains("carapace-update: 0.2.0 is healthy: blessed")
            || t.contains("is not healthy after")
    })?;
    assert!(
        node.transcript
            .contains("carapace-update: 0.2.0 is healthy: blessed"),
        "the health check answered under load"
    );
    // The flood inside was at it before the blessing, not after.
    let flooded = node.transcript.find("flood: first round done: ");
    let blessed = node
        .transcript
        .find("carapace-update: 0.2.0 is healthy: blessed");
    assert!(
        flooded.is_some_and(|f| blessed.is_some_and(|b| f < b)),
        "the trial boot was flooded before it was blessed"
    );
    assert!(attack.stats().filled() || attack.stats().opened() > 0);
    let status = node.ctl_ok(&ctl, &["status"])?;
    assert!(status.contains("version = 0.2.0"), "{status}");
    drop(attack);
    Ok(())
}
