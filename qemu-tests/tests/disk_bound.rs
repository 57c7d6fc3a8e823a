//! The node's own state cannot be crowded out (issue 10, item 4): images,
//! writable layers and volumes share one ext4 project quota on /var that
//! leaves a reserve to the node. A container that writes into its writable
//! layer until a write fails stops at that bound with "Disk quota
//! exceeded", well before /var is full; a settings commit still succeeds,
//! and so does the one that removes the container, which frees the space.

use anyhow::{ensure, Context, Result};
use qemu_tests::containers::status;
use qemu_tests::{part_type, test_oci_layout, Ctl, Node, Registry, TestDisk};
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "disk-bound-token-0123456789";
const MIB: u64 = 1 << 20;

/// /var's size and free bytes, as status reports them (statvfs of /var).
fn var_usage(node: &mut Node, ctl: &Ctl) -> Result<(u64, u64)> {
    let s = status(node, ctl)?;
    let total = s["var"]["total_bytes"].as_u64();
    let free = s["var"]["free_bytes"].as_u64();
    match (total, free) {
        (Some(t), Some(f)) => Ok((t, f)),
        _ => anyhow::bail!("status has no /var usage: {}", s["var"]),
    }
}

/// The `filled <n> MiB: <error>` line of the filler's log, as (n, error).
fn filled_line(logs: &str) -> Option<(u64, String)> {
    logs.lines().find_map(|l| {
        let rest = &l[l.find("filled ")? + "filled ".len()..];
        let (n, error) = rest.split_once(" MiB: ")?;
        Some((n.trim().parse().ok()?, error.trim().to_string()))
    })
}

/// The project's byte limit from the agent's `disk bound:` line
/// (`… at most <n> MiB and …`).
fn bound_mib(line: &str) -> Option<u64> {
    let rest = &line[line.find(" at most ")? + " at most ".len()..];
    rest.split(' ').next()?.parse().ok()
}

/// `debugfs -R "stat <path>"` of the state partition (a path relative to
/// /var), after the node is down.
fn var_stat(disk: &TestDisk, path: &str) -> Result<String> {
    let var = disk.partition(part_type::VAR, None)?;
    let copy = disk.dir.join("var-stat.ext4");
    disk.extract(&var, &copy)?;
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(&copy)
        .output()
        .context("cannot run debugfs (package e2fsprogs)")?;
    std::fs::remove_file(&copy)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_container_filling_its_writable_layer_stops_at_the_bound_and_can_be_removed() -> Result<()> {
    let registry = Registry::start("disk-bound")?;
    registry.push(&test_oci_layout(), "1", "test/filler", "1")?;
    let image = registry.reference_for_node("test/filler", "1");
    let disk = TestDisk::fresh("disk-bound")?;
    let mut node = disk.boot_with_user_data(&format!(
        "hostname = \"bound-node\"\n[api]\ntoken = \"{TOKEN}\"\n[registries.\"{}\"]\ninsecure = true\n",
        registry.host_for_node()
    ))?;
    node.wait_ready()?;
    let fingerprint = node.wait_api_reachable()?;
    let ctl = node.ctl(&fingerprint, Some(TOKEN));

    // The agent put the bound in place at its start.
    let prefix = "carapace-containers: disk bound: ";
    node.wait_until("the container agent set the disk bound", |t| {
        t.contains(prefix)
    })?;
    let line = node
        .transcript
        .lines()
        .find(|l| l.contains(prefix))
        .unwrap_or_default()
        .to_string();
    ensure!(
        line.contains("/var/lib/carapace/containers and /var/lib/carapace/volumes (project 4242)")
            && line.contains(", enforced"),
        "the bound is enforced on the store and the volumes: {line}"
    );
    let bound = bound_mib(&line).with_context(|| format!("no limit in {line:?}"))?;
    let (var_total, free_before) = var_usage(&mut node, &ctl)?;
    ensure!(
        bound * MIB + 32 * MIB <= var_total,
        "the bound ({bound} MiB) leaves at least 32 MiB of /var ({var_total} bytes)"
    );

    // A container writes 1 MiB chunks into its writable layer (no volume)
    // until a write fails.
    let filler = serde_json::json!({ "image": image, "args": ["fill", "/data"] });
    node.ctl_ok(&ctl, &["set", &format!("containers.filler={filler}")])?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let (filled, error) = loop {
        let logs = node.container_log(&ctl, "filler")?;
        if let Some(found) = filled_line(&logs) {
            break found;
        }
        ensure!(
            Instant::now() < deadline,
            "the filler did not report within 300 s: {logs}"
        );
        node.drain();
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(
        error.contains("Disk quota exceeded"),
        "the write failed on the quota, not on a full disk: {error}"
    );
    assert!(
        filled <= bound && filled + 48 >= bound,
        "the filler stopped at the bound ({bound} MiB, the image and the node's \
         containers share it): it wrote {filled} MiB"
    );
    let (_, free_full) = var_usage(&mut node, &ctl)?;
    assert!(
        free_full >= 16 * MIB,
        "the reserve is still free on /var: {free_full} bytes"
    );

    // The node's own state can still be written: a settings commit.
    node.ctl_ok(&ctl, &["set", "hostname=full-node"])?;
    let hostname = node.ctl_ok(&ctl, &["--output", "json", "get", "hostname"])?;
    assert_eq!(hostname.trim(), "\"full-node\"", "the commit took");

    // And the commit that removes the filler works, and frees the space.
    node.ctl_ok(&ctl, &["set", "containers.filler=null"])?;
    node.wait_until("the agent removed the filler", |t| {
        t.contains("carapace-containers: filler: stopped and removed")
    })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, free) = var_usage(&mut node, &ctl)?;
        if free + 8 * MIB >= free_before {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the filler's space is free again: {free} bytes free, {free_before} before it ran"
        );
        node.drain();
        std::thread::sleep(Duration::from_secs(1));
    }

    node.press_power_button()?;
    node.wait_exit()?;
    let bundles = disk.list_var_dir("/lib/carapace/containers/run")?;
    assert!(
        !bundles.iter().any(|b| b == "filler"),
        "the filler's bundle and writable layer are gone from /var: {bundles:?}"
    );
    // The store is in the project and passes it on to what is made in it.
    let store = var_stat(&disk, "/lib/carapace/containers")?;
    // debugfs prints `… Flags: 0x…` and `… Project:  4242 …`.
    let field = |name: &str| {
        store
            .split(name)
            .nth(1)
            .and_then(|f| f.split_whitespace().next())
            .map(str::to_string)
    };
    assert_eq!(
        field("Project:").as_deref(),
        Some("4242"),
        "the store is in project 4242: {store}"
    );
    let flags = field("Flags:")
        .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        .with_context(|| format!("no flags in {store}"))?;
    assert!(
        flags & 0x2000_0000 != 0,
        "the store inherits its project (EXT4_PROJINHERIT_FL): flags {flags:#x}"
    );
    Ok(())
}
