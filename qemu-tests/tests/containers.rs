//! Containers declared in the settings, driven from the host CLI: the test
//! image (a static binary packed by `cargo xtask test`) is pushed to a real
//! registry on the host (docker-registry, skopeo), the node pulls it over
//! QEMU's user network and runs it under crun. It serves a port on the host
//! network, logs, is restarted when killed, comes back after a reboot
//! without a second pull, keeps running when its new tag does not exist,
//! and is stopped and removed with its writable layer; a memory limit is
//! enforced and reported.

use anyhow::{ensure, Result};
use qemu_tests::containers::{ask, container, status, wait_container};
use qemu_tests::{test_oci_layout, Registry, TestDisk};
use std::io::Read;
use std::time::Duration;

const TOKEN: &str = "containers-token-0123456789";

fn blob_pulls(registry: &Registry) -> usize {
    registry
        .log()
        .lines()
        .filter(|l| l.contains("GET /v2/test/hello/blobs/"))
        .count()
}

#[test]
fn a_declared_container_runs_restarts_survives_reboot_and_is_removed() -> Result<()> {
    let registry = Registry::start("containers")?;
    registry.push(&test_oci_layout(), "1", "test/hello", "1")?;
    let image = registry.reference_for_node("test/hello", "1");
    let disk = TestDisk::fresh("containers")?;
    // A hostname in the user data keeps the checker from committing one of
    // its own (the API has one staging area for all callers).
    let mut node = disk.boot_with_user_data(&format!(
        "hostname = \"containers-node\"\n[api]\ntoken = \"{TOKEN}\"\n[registries.\"{}\"]\ninsecure = true\n",
        registry.host_for_node()
    ))?;
    node.wait_ready()?;
    let fingerprint = node.wait_api_reachable()?;
    node.wait_until("the checker is done", |t| t.contains("checker: done"))?;
    assert!(
        node.transcript
            .contains("checker: api patch skipped: the hostname came from user data"),
        "the checker left the settings alone"
    );
    let ctl = node.ctl(&fingerprint, Some(TOKEN));

    // Declare two containers and commit: a server on the host network, and
    // one that eats more memory than its limit.
    let web = serde_json::json!({
        "image": image, "args": ["serve", "8080", "pong"], "host_network": true
    });
    let hog = serde_json::json!({
        "image": image, "args": ["eat", "256"], "memory_max": 64 << 20, "restart": "never"
    });
    node.ctl_ok(
        &ctl,
        &[
            "set",
            &format!("containers.web={web}"),
            &format!("containers.hog={hog}"),
        ],
    )?;
    let running = wait_container(&mut node, &ctl, "web", "running", |c| {
        c["state"] == "running"
    })?;
    let digest = running["image_digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        digest.starts_with("sha256:"),
        "status names the digest: {running}"
    );
    assert_eq!(
        ask(&mut node, "hello")?.trim(),
        "pong",
        "the port answers from the host"
    );
    let logs = node.ctl_ok(&ctl, &["logs", "container_web"])?;
    assert!(
        logs.contains("hello from the test container (pong)"),
        "the container's output is in the logs: {logs}"
    );

    // The memory limit is enforced and status says why the hog ended.
    let hog = wait_container(&mut node, &ctl, "hog", "killed", |c| {
        c["last_exit"].as_str().is_some_and(|e| !e.is_empty())
    })?;
    let reason = hog["last_exit"].as_str().unwrap_or_default();
    assert!(
        reason.contains("out of memory"),
        "the hog was killed for memory: {hog}"
    );
    let hog_logs = node.ctl_ok(&ctl, &["logs", "container_hog"])?;
    assert!(
        !hog_logs.contains("ate all"),
        "the hog never got all it asked for: {hog_logs}"
    );

    // It dies: restarted by the agent.
    let _ = ask(&mut node, "crash");
    let restarted = wait_container(&mut node, &ctl, "web", "restarted", |c| {
        c["restarts"].as_u64().unwrap_or(0) >= 1 && c["state"] == "running"
    })?;
    assert!(
        restarted["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("exited with status 3")),
        "{restarted}"
    );
    assert_eq!(ask(&mut node, "again")?.trim(), "pong");

    // A reboot: it runs again, from the store, with no second pull.
    let pulls = blob_pulls(&registry);
    ensure!(pulls > 0, "the first start pulled from the registry");
    node.ctl_ok(&ctl, &["reboot"])?;
    node.wait_exit()?;
    let mut node = disk.boot()?;
    node.wait_ready()?;
    let fingerprint = node.wait_api_reachable()?;
    let ctl = node.ctl(&fingerprint, Some(TOKEN));
    wait_container(&mut node, &ctl, "web", "running after the reboot", |c| {
        c["state"] == "running"
    })?;
    assert_eq!(ask(&mut node, "back")?.trim(), "pong");
    assert_eq!(
        blob_pulls(&registry),
        pulls,
        "no second pull after the reboot"
    );

    // A tag that does not exist: the pull error shows, the old one runs on.
    let missing = registry.reference_for_node("test/hello", "nope");
    node.ctl_ok(&ctl, &["set", &format!("containers.web.image={missing}")])?;
    let failed = wait_container(&mut node, &ctl, "web", "the pull error", |c| {
        c["error"].as_str().is_some_and(|e| !e.is_empty())
    })?;
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or_default()
            .contains("nope"),
        "the error names the tag: {failed}"
    );
    assert_eq!(
        ask(&mut node, "still")?.trim(),
        "pong",
        "the old container keeps running"
    );

    // Removed from the settings: stopped, and its writable layer removed.
    node.ctl_ok(&ctl, &["set", "containers.web=null"])?;
    node.wait_until("the agent removed web", |t| {
        t.contains("carapace-containers: web: stopped and removed")
    })?;
    let s = status(&mut node, &ctl)?;
    assert!(
        container(&s, "web").is_none(),
        "web is gone: {}",
        s["containers"]
    );
    ensure!(
        std::net::TcpStream::connect(("127.0.0.1", node.app_port))
            .and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut b = String::new();
                c.read_to_string(&mut b).map(|_| b)
            })
            .map(|b| b.is_empty())
            .unwrap_or(true),
        "nothing serves the port any more"
    );
    node.press_power_button()?;
    node.wait_exit()?;
    let bundles = disk.list_var_dir("/lib/carapace/containers/run")?;
    assert!(
        !bundles.iter().any(|b| b == "web"),
        "web's bundle and writable layer are gone from /var: {bundles:?}"
    );
    let layers = disk.list_var_dir("/lib/carapace/containers/layers/sha256")?;
    assert!(
        !layers.is_empty(),
        "the hog still uses the shared layer: {layers:?}"
    );
    Ok(())
}
