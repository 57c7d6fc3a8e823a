//! Containers are confined by default, and loosened only when their
//! settings say so (issue 10). One boot, the test image pushed to a
//! registry on the host (as in `containers.rs`):
//!
//! - `probe` runs the test container's `probe`: `unshare(CLONE_NEWUSER)`,
//!   `keyctl`, a raw socket, `mknod` of a character device and a tmpfs
//!   `mount` are each refused (seccomp, the capability set without NET_RAW
//!   and MKNOD);
//! - `loose` runs the same probe with `capabilities_add: ["NET_RAW"]`: its
//!   raw socket is allowed, everything else still refused;
//! - `userns-probe`, with no `userns` setting (a user namespace is the
//!   default off the host network), runs the test container's
//!   `userns`: its uid_map is a range of the node's ids (not the
//!   identity `0 0 4294967295`), it is uid 0 inside, and a file it
//!   creates in its writable layer (the idmapped overlay) is owned by 0 as
//!   it sees it;
//! - `bomb` forks until the kernel refuses: it stops at its `pids.max`
//!   (1024 by default) while the API keeps answering over TLS;
//! - `hog`, with no `memory_max` of its own, eats more than the whole
//!   containers' slice may have: the kernel kills it for memory (status
//!   says so) and the API keeps answering.

use anyhow::{Context, Result};
use qemu_tests::containers::{container, status, wait_container, wait_log};
use qemu_tests::{test_oci_layout, Registry, TestDisk};
use serde_json::Value;
use std::time::{Duration, Instant};

const TOKEN: &str = "confinement-token-0123456789";

/// The outcome of `probe <what>` in a probe log: `allowed` or `refused (…)`.
fn probed<'a>(logs: &'a str, what: &str) -> Option<&'a str> {
    let prefix = format!("probe {what}: ");
    logs.lines()
        .find_map(|l| l.split_once(&prefix).map(|(_, outcome)| outcome.trim()))
}

const PROBES: [&str; 5] = [
    "unshare(CLONE_NEWUSER)",
    "keyctl",
    "raw socket",
    "mknod",
    "mount",
];

#[test]
fn containers_are_confined_by_default_and_loosened_only_on_request() -> Result<()> {
    let registry = Registry::start("confinement")?;
    registry.push(&test_oci_layout(), "1", "test/hello", "1")?;
    let image = registry.reference_for_node("test/hello", "1");
    let disk = TestDisk::fresh("confinement")?;
    let mut node = disk.boot_with_user_data(&format!(
        "hostname = \"confinement-node\"\n[api]\ntoken = \"{TOKEN}\"\n[registries.\"{}\"]\ninsecure = true\n",
        registry.host_for_node()
    ))?;
    node.wait_ready()?;
    let fingerprint = node.wait_api_reachable()?;
    node.wait_until("the checker is done", |t| t.contains("checker: done"))?;
    node.wait_until("the containers' slice is limited", |t| {
        t.contains("carapace-containers: carapace.slice: memory.max ")
    })?;
    let ctl = node.ctl(&fingerprint, Some(TOKEN));

    // The probes, confined and loosened by one capability.
    let probe = serde_json::json!({ "image": image, "args": ["probe"], "restart": "never" });
    let loose = serde_json::json!({
        "image": image, "args": ["probe"], "restart": "never", "capabilities_add": ["NET_RAW"]
    });
    node.ctl_ok(
        &ctl,
        &[
            "set",
            &format!("containers.probe={probe}"),
            &format!("containers.loose={loose}"),
        ],
    )?;
    let logs = wait_log(&mut node, &ctl, "probe", "probe done")?;
    for what in PROBES {
        let outcome = probed(&logs, what).with_context(|| format!("no {what} probe: {logs}"))?;
        assert!(
            outcome.starts_with("refused"),
            "a default container: {what} must be refused, was {outcome}: {logs}"
        );
    }
    let loose_logs = wait_log(&mut node, &ctl, "loose", "probe done")?;
    assert_eq!(
        probed(&loose_logs, "raw socket"),
        Some("allowed"),
        "capabilities_add NET_RAW gives raw sockets: {loose_logs}"
    );
    for what in ["unshare(CLONE_NEWUSER)", "keyctl", "mknod", "mount"] {
        assert!(
            probed(&loose_logs, what).is_some_and(|o| o.starts_with("refused")),
            "NET_RAW loosens nothing else ({what}): {loose_logs}"
        );
    }

    // Its own user namespace: root inside, a range of ids on the node.
    let mapped = serde_json::json!({
        "image": image, "args": ["userns"], "restart": "never"
    });
    node.ctl_ok(
        &ctl,
        &[
            "set",
            "containers.probe=null",
            "containers.loose=null",
            &format!("containers.userns-probe={mapped}"),
        ],
    )?;
    let userns_logs = wait_log(&mut node, &ctl, "userns-probe", "userns done")?;
    let said = |what: &str| {
        let prefix = format!("userns {what}: ");
        userns_logs
            .lines()
            .find_map(|l| l.split_once(&prefix).map(|(_, v)| v.trim().to_string()))
            .with_context(|| format!("no {what} line: {userns_logs}"))
    };
    let map = said("uid_map")?;
    let fields: Vec<&str> = map.split_whitespace().collect();
    assert!(
        map != "0 0 4294967295" && fields.len() == 3 && fields[0] == "0" && fields[2] == "65536",
        "a container maps its 65536 ids to a range of the node's, not the identity: {map:?}: {userns_logs}"
    );
    assert!(
        fields[1].parse::<u32>().is_ok_and(|first| first >= 100_000),
        "its root is not one of the node's own ids: {map:?}"
    );
    assert_eq!(said("uid")?, "0", "root inside: {userns_logs}");
    assert_eq!(
        said("owner")?,
        "0",
        "what it writes in its layer is its root's: {userns_logs}"
    );

    // A fork bomb stops at pids.max; the API answers meanwhile.
    let bomb = serde_json::json!({ "image": image, "args": ["forkbomb"], "restart": "never" });
    node.ctl_ok(
        &ctl,
        &[
            "set",
            "containers.userns-probe=null",
            &format!("containers.bomb={bomb}"),
        ],
    )?;
    let bomb_logs = wait_log(&mut node, &ctl, "bomb", "forkbomb stopped at ")?;
    let stopped: u64 = bomb_logs
        .lines()
        .find_map(|l| l.split("forkbomb stopped at ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no count in the bomb's log: {bomb_logs}"))?;
    assert!(
        (512..=1024).contains(&stopped),
        "the bomb stops at pids.max 1024 (its own processes, crun's aside): {stopped}: {bomb_logs}"
    );
    for _ in 0..3 {
        let asked = Instant::now();
        let s = status(&mut node, &ctl)?;
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "status answers while the bomb sits at its limit"
        );
        assert_eq!(
            container(&s, "bomb").map(|c| c["state"].clone()),
            Some(Value::from("running")),
            "{}",
            s["containers"]
        );
    }

    // A memory hog without a limit of its own meets the slice's.
    let hog = serde_json::json!({ "image": image, "args": ["eat", "1536"], "restart": "never" });
    node.ctl_ok(
        &ctl,
        &[
            "set",
            "containers.bomb=null",
            &format!("containers.hog={hog}"),
        ],
    )?;
    let hog = wait_container(&mut node, &ctl, "hog", "killed", |c| {
        c["last_exit"].as_str().is_some_and(|e| !e.is_empty())
    })?;
    assert!(
        hog["last_exit"]
            .as_str()
            .unwrap_or_default()
            .contains("out of memory"),
        "the hog was killed for memory: {hog}"
    );
    let hog_logs = node.ctl_ok(&ctl, &["logs", "container_hog"])?;
    assert!(
        !hog_logs.contains("ate all"),
        "the hog never got all it asked for: {hog_logs}"
    );
    // The node's own services were not the ones killed.
    status(&mut node, &ctl)?;
    node.drain();
    assert!(
        !node.transcript.contains("carapace: service api exited")
            && !node
                .transcript
                .contains("carapace: service containers exited"),
        "no agent died for the containers' memory"
    );

    node.press_power_button()?;
    node.wait_exit()?;
    Ok(())
}
