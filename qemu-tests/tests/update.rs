//! A/B updates of the booted image, driven from the host CLI the way an
//! operator would: version 0.1.0 downloads the next version from an HTTP
//! server on the host, applies it, reboots into it and blesses it; a broken
//! version is rolled back by the boot loader with no human action; a
//! tampered, unsigned or truncated bundle is refused and nothing becomes
//! bootable. The sources are prepared by `cargo xtask test`.

use anyhow::{ensure, Context, Result};
use qemu_tests::{update_sources, Ctl, FileServer, Node, TestDisk};
use serde_json::Value;
use std::path::Path;

const TOKEN: &str = "update-token-0123456789";

fn user_data(source: &str) -> String {
    format!(
        "hostname = \"updated-node\"\n[api]\ntoken = \"{TOKEN}\"\n[updates]\nsource = \"{source}\"\n"
    )
}

fn update_status(node: &mut Node, ctl: &Ctl) -> Result<Value> {
    let out = node.ctl_ok(ctl, &["--output", "json", "update", "status"])?;
    serde_json::from_str(&out).with_context(|| format!("update status printed {out:?}"))
}

/// Boots, waits until the API answers from the host, returns the CLI for it.
fn reach(node: &mut Node) -> Result<Ctl> {
    Ok(node.reach_update_daemon(TOKEN)?.1)
}

/// The version the ready line names.
fn ready_version(node: &mut Node) -> Result<(Ctl, String)> {
    let (ready, ctl) = node.reach_update_daemon(TOKEN)?;
    Ok((ctl, ready.version))
}

/// Copies a source directory so a test may damage its copy.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[test]
fn a_new_version_is_downloaded_applied_booted_and_blessed() -> Result<()> {
    let server = FileServer::start(&update_sources())?;
    let disk = TestDisk::fresh("update-ab")?;
    let mut node = disk.boot_with_user_data(&user_data(&server.url_for_node("good/")))?;
    let ctl = reach(&mut node)?;
    node.wait_until("the checker read the release", |t| {
        t.contains("checker: release ")
    })?;
    assert!(node.transcript.contains("checker: release 0.1.0"));

    let status = update_status(&mut node, &ctl)?;
    assert_eq!(status["running"], "0.1.0");
    assert_eq!(status["slot"], "a");
    assert_eq!(
        status["blessed"], true,
        "the first version is blessed as built"
    );

    // The daemon answers a real D-Bus client on the node, as root only.
    node.wait_until("the D-Bus probe called as uid 65534", |t| {
        t.contains("dbus-probe: as uid 65534: ")
    })?;
    assert!(
        node.transcript
            .contains("dbus-probe: as root: running=0.1.0 slot=a state=idle"),
        "Status answers root over D-Bus"
    );
    assert!(
        node.transcript
            .contains("dbus-probe: as uid 65534: refused: org.freedesktop.DBus.Error.AccessDenied"),
        "a non-root caller is refused"
    );

    let out = node.ctl_ok(&ctl, &["update", "check"])?;
    assert!(out.contains("0.2.0 is available"), "{out}");
    node.ctl_ok(&ctl, &["update", "download", "--wait"])?;
    let status = update_status(&mut node, &ctl)?;
    assert_eq!(status["staged"], "0.2.0", "{status}");
    node.ctl_ok(&ctl, &["update", "apply"])?;
    // Every step went out as a StateChanged signal.
    node.wait_until("the probe saw ready-to-reboot", |t| {
        t.contains("dbus-probe: signal state=ready-to-reboot")
    })?;
    for state in ["downloading", "verifying"] {
        assert!(
            node.transcript
                .contains(&format!("dbus-probe: signal state={state}")),
            "a StateChanged signal for {state}"
        );
    }
    node.ctl_ok(&ctl, &["reboot"])?;
    node.wait_exit()?;

    // The next boot tries 0.2.0 from slot b, which blesses itself.
    let mut node = disk.boot()?;
    let (ctl, version) = ready_version(&mut node)?;
    assert_eq!(version, "0.2.0");
    node.wait_until("0.2.0 blessed itself", |t| {
        t.contains("carapace-update: 0.2.0 is healthy: blessed")
    })?;
    assert!(
        node.transcript.contains("checker: release 0.2.0"),
        "the changed file"
    );
    let status = update_status(&mut node, &ctl)?;
    assert_eq!(status["running"], "0.2.0");
    assert_eq!(status["slot"], "b");
    assert_eq!(status["blessed"], true);
    assert_eq!(status["fallback"], "0.1.0");
    assert_eq!(status["rolled_back"], "");
    // Settings on /var were kept.
    let hostname = node.ctl_ok(&ctl, &["--output", "json", "get", "hostname"])?;
    assert_eq!(hostname.trim(), "\"updated-node\"");
    assert!(
        server
            .requests
            .lock()
            .map(|r| r.iter().any(|p| p.ends_with("root.img")))
            .unwrap_or(false),
        "the root came from the host's server"
    );

    // And again, from 0.2.0 on slot b to 0.4.0 back on slot a.
    node.ctl_ok(
        &ctl,
        &[
            "set",
            &format!("updates.source={}", server.url_for_node("next/")),
        ],
    )?;
    node.ctl_ok(&ctl, &["update", "download", "--wait"])?;
    // A reboot between download and apply loses nothing: the download is
    // kept on /var and the slot keeps its identity.
    node.ctl_ok(&ctl, &["reboot"])?;
    node.wait_exit()?;
    let mut node = disk.boot()?;
    let (ctl, version) = ready_version(&mut node)?;
    assert_eq!(version, "0.2.0");
    node.wait_until("the daemon took the download back", |t| {
        t.contains("carapace-update: 0.4.0 is downloaded and verified: staged for apply")
    })?;
    let status = update_status(&mut node, &ctl)?;
    assert_eq!(status["staged"], "0.4.0", "{status}");
    node.ctl_ok(&ctl, &["update", "apply"])?;
    node.ctl_ok(&ctl, &["reboot"])?;
    node.wait_exit()?;
    let mut node = disk.boot()?;
    let (ctl, version) = ready_version(&mut node)?;
    assert_eq!(version, "0.4.0");
    node.wait_until("0.4.0 blessed itself", |t| {
        t.contains("carapace-update: 0.4.0 is healthy: blessed")
    })?;
    let status = update_status(&mut node, &ctl)?;
    assert_eq!(status["running"], "0.4.0");
    assert_eq!(status["slot"], "a", "the slots alternate");
    assert_eq!(status["fallback"], "0.2.0");
    let hostname = node.ctl_ok(&ctl, &["--output", "json", "get", "hostname"])?;
    assert_eq!(hostname.trim(), "\"updated-node\"");

    // Installing the running version again is refused before anything is
    // touched: the fallback 0.2.0 stays.
    let again = node.run_ctl(&ctl, &["update", "download", "--force", "--wait"])?;
    assert_ne!(
        again.code, 0,
        "a reinstall of the running version: {again:?}"
    );
    assert!(
        again.stderr.contains("is the running version"),
        "the refusal says why: {again:?}"
    );
    let status = update_status(&mut node, &ctl)?;
    assert_eq!(status["fallback"], "0.2.0", "{status}");

    // A forced downgrade really boots the older version, and keeps booting
    // it once blessed.
    node.ctl_ok(
        &ctl,
        &[
            "set",
            &format!("updates.source={}", server.url_for_node("good/")),
        ],
    )?;
    let refused = node.run_ctl(&ctl, &["update", "download", "--wait"])?;
    assert_ne!(
        refused.code, 0,
        "an older version needs --force: {refused:?}"
    );
    node.ctl_ok(&ctl, &["update", "download", "--force", "--wait"])?;
    node.ctl_ok(&ctl, &["update", "apply"])?;
    node.ctl_ok(&ctl, &["reboot"])?;
    node.wait_exit()?;
    let mut node = disk.boot()?;
    let (ctl, version) = ready_version(&mut node)?;
    assert_eq!(version, "0.2.0", "the downgrade boots");
    node.wait_until("0.2.0 blessed itself", |t| {
        t.contains("carapace-update: 0.2.0 is healthy: blessed")
    })?;
    let status = update_status(&mut node, &ctl)?;
    assert_eq!(
        (status["running"].as_str(), status["slot"].as_str()),
        (Some("0.2.0"), Some("b"))
    );
    node.ctl_ok(&ctl, &["reboot"])?;
    node.wait_exit()?;
    let mut node = disk.boot()?;
    let (_, version) = ready_version(&mut node)?;
    assert_eq!(
        version, "0.2.0",
        "the blessed downgrade stays the version that boots"
    );
    node.press_power_button()?;
    node.wait_exit()?;
    Ok(())
}

#[test]
fn a_version_that_never_becomes_healthy_is_rolled_back() -> Result<()> {
    let server = FileServer::start(&update_sources())?;
    let disk = TestDisk::fresh("update-rollback")?;
    let mut node = disk.boot_with_user_data(&user_data(&server.url_for_node("broken/")))?;
    let ctl = reach(&mut node)?;
    node.ctl_ok(&ctl, &["update", "download", "--wait"])?;
    node.ctl_ok(&ctl, &["update", "apply"])?;
    node.ctl_ok(&ctl, &["reboot"])?;
    node.wait_exit()?;

    // Each try of the broken version ends in the daemon's reboot; QEMU runs
    // with -no-reboot, so every try is a boot of its own here.
    let mut tries = 0;
    let mut node = loop {
        let mut node = disk.boot()?;
        let ready = node.wait_ready()?;
        if ready.version == "0.1.0" {
            break node;
        }
        ensure!(ready.version == "0.3.0", "booted {}", ready.version);
        tries += 1;
        ensure!(tries <= 3, "the broken version was tried more than 3 times");
        node.wait_until("the daemon gave up on the try", |t| {
            t.contains("is not healthy after")
        })?;
        node.wait_exit()?;
    };
    assert_eq!(tries, 3, "systemd-boot gave the broken version its 3 tries");
    let fingerprint = node.wait_api_reachable()?;
    node.wait_until("the daemon saw the rollback and serves D-Bus", |t| {
        t.contains("carapace-update: update 0.3.0 was rolled back")
            && t.contains("carapace-update: serving org.carapace.Update1")
    })?;
    let ctl = node.ctl(&fingerprint, Some(TOKEN));
    let status = update_status(&mut node, &ctl)?;
    assert_eq!(status["running"], "0.1.0");
    assert_eq!(status["rolled_back"], "0.3.0");
    node.press_power_button()?;
    node.wait_exit()?;
    Ok(())
}

#[test]
fn tampered_unsigned_and_truncated_bundles_are_refused() -> Result<()> {
    let work = std::env::temp_dir().join(format!("carapace-tamper-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let good = update_sources().join("good");
    for case in ["flipped", "unsigned", "truncated"] {
        copy_dir(&good, &work.join(case))?;
    }
    let index: Value = serde_json::from_str(&std::fs::read_to_string(good.join("index.json"))?)?;
    let version = index["versions"]
        .as_array()
        .and_then(|v| v.last())
        .and_then(Value::as_str)
        .context("a version in the index")?
        .to_string();
    // One flipped byte inside the root part.
    let root = work.join("flipped").join(&version).join("root.img");
    let mut bytes = std::fs::read(&root)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&root, bytes)?;
    // A signature by another key.
    let sig = work
        .join("unsigned")
        .join(&version)
        .join("manifest.json.sig");
    std::fs::write(&sig, format!("{}\n", "ab".repeat(64)))?;
    // Half of the root part.
    let root = work.join("truncated").join(&version).join("root.img");
    let bytes = std::fs::read(&root)?;
    std::fs::write(&root, &bytes[..bytes.len() / 2])?;

    let server = FileServer::start(&work)?;
    let disk = TestDisk::fresh("update-tamper")?;
    let mut node = disk.boot_with_user_data(&user_data(&server.url_for_node("flipped/")))?;
    let ctl = reach(&mut node)?;
    for (case, expected) in [
        ("flipped", "sha-256 mismatch"),
        ("unsigned", "signature does not match"),
        ("truncated", "truncated: got"),
    ] {
        let source = format!(
            "updates.source={}",
            server.url_for_node(&format!("{case}/"))
        );
        node.ctl_ok(&ctl, &["set", &source])?;
        let out = node.run_ctl(&ctl, &["update", "download", "--wait"])?;
        assert_ne!(out.code, 0, "{case}: {out:?}");
        assert!(
            out.stderr.to_lowercase().contains(expected),
            "{case}: the error says {expected}: {out:?}"
        );
        let status = update_status(&mut node, &ctl)?;
        assert_eq!(status["staged"], "", "{case}: nothing staged");
        let apply = node.run_ctl(&ctl, &["update", "apply"])?;
        assert_eq!(apply.code, 1, "{case}: nothing to apply: {apply:?}");
    }
    // Stale or unsigned metadata, and a server that trickles: each refused
    // with its own error in `update status`, and nothing staged.
    copy_dir(&good, &work.join("unsigned-index"))?;
    std::fs::remove_file(work.join("unsigned-index/index.json.sig"))?;
    let expired = FileServer::start(&update_sources().join("expired"))?;
    let trickle = FileServer::start_paced(&good, Some(2))?;
    for (case, url, expected) in [
        (
            "unsigned index",
            server.url_for_node("unsigned-index/"),
            "index.json is not signed by the update key",
        ),
        (
            "expired index",
            expired.url_for_node(""),
            "index.json expired at",
        ),
        (
            "trickling server",
            trickle.url_for_node(""),
            ": the download did not finish within 30 s",
        ),
    ] {
        node.ctl_ok(&ctl, &["set", &format!("updates.source={url}")])?;
        let out = node.run_ctl(&ctl, &["update", "download", "--wait"])?;
        assert_ne!(out.code, 0, "{case}: {out:?}");
        let status = update_status(&mut node, &ctl)?;
        assert!(
            status["error"]
                .as_str()
                .is_some_and(|e| e.contains(expected)),
            "{case}: update status says {expected}: {status}"
        );
        assert_eq!(status["staged"], "", "{case}: nothing staged");
    }

    // An https:// source: refused until its CA is in the settings.
    let (https, ca) = FileServer::start_https(&update_sources())?;
    node.ctl_ok(
        &ctl,
        &[
            "set",
            &format!("updates.source={}", https.url_for_node("good/")),
        ],
    )?;
    let out = node.run_ctl(&ctl, &["update", "check"])?;
    assert_ne!(out.code, 0, "an unknown CA: {out:?}");
    assert!(out.stderr.contains("invalid peer certificate"), "{out:?}");
    node.ctl_ok(&ctl, &["set", &format!("updates.ca={ca}")])?;
    let out = node.ctl_ok(&ctl, &["update", "check"])?;
    assert!(out.contains("0.2.0 is available"), "over https: {out}");

    // Nothing became bootable: the next boot is the same version.
    node.ctl_ok(&ctl, &["reboot"])?;
    node.wait_exit()?;
    let mut node = disk.boot()?;
    let ready = node.wait_ready()?;
    assert_eq!(ready.version, "0.1.0");
    node.press_power_button()?;
    node.wait_exit()?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

#[test]
fn a_power_cut_mid_write_or_after_the_uki_leaves_a_good_version() -> Result<()> {
    // Paced at 512 KiB/s, so the cut lands while the root part is written.
    let server = FileServer::start_paced(&update_sources(), Some(512 * 1024))?;
    let disk = TestDisk::fresh("update-power-cut")?;
    let mut node = disk.boot_with_user_data(&user_data(&server.url_for_node("good/")))?;
    let ctl = reach(&mut node)?;
    node.ctl_ok(&ctl, &["update", "download"])?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while server.bytes_sent() < 1 << 20 {
        ensure!(
            std::time::Instant::now() < deadline,
            "the download never got going"
        );
        node.drain();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = update_status(&mut node, &ctl)?;
    assert_eq!(status["state"], "downloading", "cut mid-write: {status}");
    node.monitor("quit")?;
    node.wait_exit()?;

    // Back on 0.1.0, with nothing of the half-written slot bootable.
    let mut node = disk.boot()?;
    let (ctl, version) = ready_version(&mut node)?;
    assert_eq!(version, "0.1.0");
    let status = update_status(&mut node, &ctl)?;
    assert_eq!(status["blessed"], true, "{status}");
    assert_eq!(status["staged"], "", "{status}");

    // An orderly reboot mid-download: on SIGTERM the daemon stops at its
    // next chunk and exits in time (not killed), and nothing is staged.
    let before = server.bytes_sent();
    node.ctl_ok(&ctl, &["update", "download"])?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while server.bytes_sent() < before + (1 << 20) {
        ensure!(
            std::time::Instant::now() < deadline,
            "the second download never got going"
        );
        node.drain();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    node.ctl_ok(&ctl, &["reboot"])?;
    node.wait_exit()?;
    assert!(
        node.transcript
            .contains("carapace: service update exited with status 0"),
        "the daemon stopped by itself on SIGTERM:\n{}",
        node.transcript
    );
    let mut node = disk.boot()?;
    let (ctl, version) = ready_version(&mut node)?;
    assert_eq!(version, "0.1.0");
    let status = update_status(&mut node, &ctl)?;
    assert_eq!(status["staged"], "", "{status}");

    // Again, whole this time, cut right after the UKI went in: the next boot
    // tries the new version, which comes up and blesses itself.
    node.ctl_ok(&ctl, &["update", "download", "--wait"])?;
    node.ctl_ok(&ctl, &["update", "apply"])?;
    node.monitor("quit")?;
    node.wait_exit()?;
    let mut node = disk.boot()?;
    let (ctl, version) = ready_version(&mut node)?;
    assert_eq!(version, "0.2.0");
    node.wait_until("0.2.0 blessed itself", |t| {
        t.contains("carapace-update: 0.2.0 is healthy: blessed")
    })?;
    let status = update_status(&mut node, &ctl)?;
    assert_eq!(status["fallback"], "0.1.0", "{status}");
    node.press_power_button()?;
    node.wait_exit()?;
    Ok(())
}

#[test]
fn settings_written_by_a_newer_version_keep_working_and_keep_their_unknown_fields() -> Result<()> {
    // What a newer version (one that added settings) left on /var after a
    // rollback: fields this version does not know, at the top, inside the
    // API's settings and inside a container.
    let disk = TestDisk::fresh("update-newer-settings")?;
    let mut node = disk.boot_with_user_data(&format!(
        "hostname = \"newer-node\"\n[api]\ntoken = \"{TOKEN}\"\n[ntp]\nservers = [\"10.0.2.2\"]\n\
         [containers.web]\nimage = \"10.0.2.2:5000/team/web:1\"\nenabled = false\n"
    ))?;
    node.wait_ready()?;
    node.wait_api_reachable()?;
    node.press_power_button()?;
    node.wait_exit()?;
    let path = "/lib/carapace/settings.json";
    let mut settings: Value = serde_json::from_slice(&disk.read_var_file(path)?)?;
    settings["from_the_future"] = serde_json::json!({"level": 3});
    settings["api"]["future_rate_limit"] = serde_json::json!(100);
    settings["containers"]["web"]["future_sandbox"] = serde_json::json!("strict");
    disk.write_var_file(path, &serde_json::to_vec_pretty(&settings)?)?;

    let mut node = disk.boot()?;
    let ready = node.wait_ready()?;
    assert_eq!(ready.version, "0.1.0");
    let fingerprint = node.wait_api_reachable()?;
    let ctl = node.ctl(&fingerprint, Some(TOKEN));
    // The token still opens the API: the settings were not replaced by defaults.
    let hostname = node.ctl_ok(&ctl, &["--output", "json", "get", "hostname"])?;
    assert_eq!(hostname.trim(), "\"newer-node\"");
    let servers = node.ctl_ok(&ctl, &["--output", "json", "get", "ntp"])?;
    assert!(servers.contains("10.0.2.2"), "{servers}");
    let web = node.ctl_ok(&ctl, &["--output", "json", "get", "containers"])?;
    assert!(web.contains("team/web:1"), "{web}");
    // A commit writes the unknown fields back where they were.
    node.ctl_ok(&ctl, &["set", "hostname=older-node"])?;
    node.press_power_button()?;
    node.wait_exit()?;
    let after: Value = serde_json::from_slice(&disk.read_var_file(path)?)?;
    assert_eq!(after["hostname"], "older-node", "{after}");
    assert_eq!(after["from_the_future"]["level"], 3, "{after}");
    assert_eq!(after["api"]["future_rate_limit"], 100, "{after}");
    assert_eq!(
        after["containers"]["web"]["future_sandbox"], "strict",
        "{after}"
    );
    Ok(())
}

#[test]
fn a_power_cut_between_the_gpt_copies_keeps_the_old_version_and_drops_the_download() -> Result<()> {
    let server = FileServer::start(&update_sources())?;
    let disk = TestDisk::fresh("update-gpt-cut")?;
    // The primary GPT (header and entries) as built, before the download.
    let primary = disk.read_at(512, 33 * 512)?;
    let mut node = disk.boot_with_user_data(&user_data(&server.url_for_node("good/")))?;
    let ctl = reach(&mut node)?;
    node.ctl_ok(&ctl, &["update", "download", "--wait"])?;
    node.press_power_button()?;
    node.wait_exit()?;
    // As if the power went when the backup copy had the new identity and
    // the primary copy did not yet: both copies are whole, and differ.
    disk.write_at(512, &primary)?;

    let mut node = disk.boot()?;
    let (ctl, version) = ready_version(&mut node)?;
    assert_eq!(version, "0.1.0", "the running slot was never touched");
    node.wait_until(
        "the daemon mended the GPT, dropped the download and serves D-Bus",
        |t| {
            t.contains("carapace-update: rewrote the backup GPT")
                && t.contains("dropped the staged download")
                && t.contains("carapace-update: serving org.carapace.Update1")
        },
    )?;
    let status = update_status(&mut node, &ctl)?;
    assert_eq!(status["staged"], "", "{status}");
    assert_eq!(status["blessed"], true, "{status}");
    // The slot is written again from the start, and the version boots.
    node.ctl_ok(&ctl, &["update", "download", "--wait"])?;
    node.ctl_ok(&ctl, &["update", "apply"])?;
    node.ctl_ok(&ctl, &["reboot"])?;
    node.wait_exit()?;
    let mut node = disk.boot()?;
    let (_, version) = ready_version(&mut node)?;
    assert_eq!(version, "0.2.0");
    node.wait_until("0.2.0 blessed itself", |t| {
        t.contains("carapace-update: 0.2.0 is healthy: blessed")
    })?;
    node.press_power_button()?;
    node.wait_exit()?;
    Ok(())
}
