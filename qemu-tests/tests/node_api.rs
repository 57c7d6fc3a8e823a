//! The node API from the host, the way an operator reaches it: carapace-ctl
//! over TLS on the forwarded port, pinned to the certificate fingerprint the
//! node printed, with the token from the user data. Settings survive a
//! reboot and a power cut; refused requests change nothing.

use anyhow::{ensure, Context, Result};
use qemu_tests::{Ctl, Node, TestDisk};
use serde_json::Value;

const TOKEN: &str = "host-token-0123456789";

fn user_data(hostname: &str) -> String {
    format!("hostname = \"{hostname}\"\n\n[api]\ntoken = \"{TOKEN}\"\n")
}

fn json(node: &mut Node, ctl: &Ctl, args: &[&str]) -> Result<Value> {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let out = node.ctl_ok(ctl, &all)?;
    serde_json::from_str(&out).with_context(|| format!("carapace-ctl {args:?} printed {out:?}"))
}

fn hostname(node: &mut Node, ctl: &Ctl) -> Result<String> {
    let v = json(node, ctl, &["get", "hostname"])?;
    v.as_str()
        .map(str::to_string)
        .with_context(|| format!("hostname is not a string: {v}"))
}

#[test]
fn the_cli_on_the_host_reads_and_changes_settings_over_tls() -> Result<()> {
    let disk = TestDisk::fresh("node-api")?;
    let mut node = disk.boot_with_user_data(&user_data("node-ud"))?;
    node.wait_ready()?;
    let fingerprint = node.wait_api_reachable()?;
    let ctl = node.ctl(&fingerprint, Some(TOKEN));

    // The user data's hostname and token are in force.
    assert_eq!(hostname(&mut node, &ctl)?, "node-ud");
    let status = json(&mut node, &ctl, &["status"])?;
    assert_eq!(status["api"]["certificate_sha256"], fingerprint.as_str());
    assert_eq!(status["user_data"]["outcome"], "applied");
    assert_eq!(status["user_data"]["source"], "fw_cfg");
    assert_eq!(status["active_slot"], "a");
    assert_eq!(status["network"]["mode"], "dhcp");
    assert_eq!(status["network"]["addresses"][0], "10.0.2.15/24");
    let services: Vec<(String, String)> = status["services"]
        .as_array()
        .context("services")?
        .iter()
        .map(|s| (s["name"].to_string(), s["state"].to_string()))
        .collect();
    for name in ["api", "net"] {
        assert!(
            services
                .iter()
                .any(|(n, st)| n == &format!("\"{name}\"") && st == "\"running\""),
            "{name} runs: {services:?}"
        );
    }

    // Without the token, or with a wrong one: refused (exit 4), nothing changes.
    for bad in [None, Some("wrong-token-0123456789")] {
        let out = node.run_ctl(&ctl.with_token(bad), &["set", "hostname=intruder"])?;
        assert_eq!(out.code, 4, "token {bad:?}: {out:?}");
    }
    // Another certificate than the one pinned: not even connected (exit 3).
    let other = Ctl {
        fingerprint: "00".repeat(32),
        ..ctl.clone()
    };
    let out = node.run_ctl(&other, &["get", "hostname"])?;
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(hostname(&mut node, &ctl)?, "node-ud");

    // A transaction with one bad field is refused whole, naming the field.
    let out = node.run_ctl(
        &ctl,
        &["set", "hostname=node-two", "network.dns=[\"not-an-ip\"]"],
    )?;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("network.dns"), "{out:?}");
    assert_eq!(hostname(&mut node, &ctl)?, "node-ud");
    let pending = node.run_ctl(&ctl, &["pending"])?;
    assert_eq!(pending.code, 1, "nothing was staged: {pending:?}");

    // A good one takes effect at once.
    node.ctl_ok(&ctl, &["set", "hostname=node-two"])?;
    assert_eq!(hostname(&mut node, &ctl)?, "node-two");

    // The services' console lines are readable through the API.
    let logs = node.ctl_ok(&ctl, &["logs", "-n", "500", "api"])?;
    assert!(
        logs.contains("listening on /run/carapace/api.sock"),
        "{logs}"
    );
    let init_logs = node.ctl_ok(&ctl, &["logs", "init"])?;
    assert!(init_logs.contains("ready version="), "{init_logs}");

    // Reboot through the CLI: orderly, and everything is still there after.
    node.ctl_ok(&ctl, &["reboot"])?;
    node.wait_until("the node shut down in order", |t| {
        t.contains("carapace: /var unmounted cleanly")
    })?;
    node.wait_exit()?;
    let mut node = disk.boot()?;
    node.wait_ready()?;
    let again = node.wait_api_reachable()?;
    assert_eq!(again, fingerprint, "the certificate is kept on /var");
    let ctl = node.ctl(&again, Some(TOKEN));
    assert_eq!(hostname(&mut node, &ctl)?, "node-two");
    let status = json(&mut node, &ctl, &["status"])?;
    assert_eq!(
        status["user_data"]["outcome"], "applied",
        "the first boot's report is kept"
    );
    node.ctl_ok(&ctl, &["poweroff"])?;
    node.wait_exit()?;
    disk.check_var_is_clean()?;
    Ok(())
}

#[test]
fn a_power_cut_around_a_commit_leaves_whole_settings() -> Result<()> {
    let disk = TestDisk::fresh("power-cut")?;
    let mut node = disk.boot_with_user_data(&user_data("before-cut"))?;
    node.wait_ready()?;
    let fingerprint = node.wait_api_reachable()?;
    let ctl = node.ctl(&fingerprint, Some(TOKEN));

    // Cut right after the commit answered: the commit was synced, so the new
    // settings must be there.
    node.ctl_ok(&ctl, &["set", "hostname=after-cut"])?;
    node.monitor("quit")?;
    node.wait_exit()?;

    let mut node = disk.boot()?;
    node.wait_ready()?;
    let fp = node.wait_api_reachable()?;
    let ctl = node.ctl(&fp, Some(TOKEN));
    assert_eq!(hostname(&mut node, &ctl)?, "after-cut");

    // Cut while a commit is on its way: the old or the new settings, never
    // a broken file (which would show as the defaults and a console line).
    let mut cmd = ctl.command(&["set", "hostname=mid-cut"])?;
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(150));
    node.monitor("quit")?;
    node.wait_exit()?;
    let _ = child.kill();
    let _ = child.wait();

    let mut node = disk.boot()?;
    node.wait_ready()?;
    let fp = node.wait_api_reachable()?;
    let ctl = node.ctl(&fp, Some(TOKEN));
    let name = hostname(&mut node, &ctl)?;
    ensure!(
        name == "after-cut" || name == "mid-cut",
        "after a cut mid-commit the hostname is {name:?}"
    );
    assert!(
        !node.transcript.contains("using the default settings"),
        "the settings file was whole"
    );
    node.press_power_button()?;
    node.wait_exit()?;
    Ok(())
}

#[test]
fn user_data_from_a_config_drive() -> Result<()> {
    let disk = TestDisk::fresh("config-drive")?;
    let drive = disk.dir.join("config-drive.img");
    let toml = disk.dir.join("user-data.toml");
    std::fs::write(&toml, user_data("from-drive"))?;
    let made = std::process::Command::new("mkfs.vfat")
        .args(["-C", "-n", "CARAPACE"])
        .arg(&drive)
        .arg("1440")
        .output()
        .context("mkfs.vfat (package dosfstools)")?;
    ensure!(made.status.success(), "mkfs.vfat: {made:?}");
    let copied = std::process::Command::new("mcopy")
        .arg("-i")
        .arg(&drive)
        .arg(&toml)
        .arg("::user-data.toml")
        .output()
        .context("mcopy (package mtools)")?;
    ensure!(copied.status.success(), "mcopy: {copied:?}");
    let mut node = Node::boot(
        &disk,
        &[
            "-drive".into(),
            format!("file={},format=raw,if=virtio,readonly=on", drive.display()),
        ],
    )?;
    node.wait_ready()?;
    let fingerprint = node.wait_api_reachable()?;
    assert!(node
        .transcript
        .contains("first boot: settings from user data (config-drive)"));
    let ctl = node.ctl(&fingerprint, Some(TOKEN));
    assert_eq!(hostname(&mut node, &ctl)?, "from-drive");
    let status = json(&mut node, &ctl, &["status"])?;
    assert_eq!(status["user_data"]["source"], "config-drive");
    node.press_power_button()?;
    node.wait_exit()?;
    Ok(())
}

/// Answers SNTP requests on the host's 127.0.0.1:123 (the node reaches it as
/// 10.0.2.2) with a clock one hour ahead of the host's.
fn sntp_server_an_hour_ahead() -> Result<()> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:123")
        .context("cannot bind UDP 127.0.0.1:123 for the test's SNTP server")?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            if n < 48 {
                continue;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                + std::time::Duration::from_secs(3600);
            // NTP time: seconds since 1900, then a 32-bit fraction.
            let secs = (now.as_secs() + 2_208_988_800) as u32;
            let frac = ((u64::from(now.subsec_nanos()) << 32) / 1_000_000_000) as u32;
            let mut stamp = [0u8; 8];
            stamp[..4].copy_from_slice(&secs.to_be_bytes());
            stamp[4..].copy_from_slice(&frac.to_be_bytes());
            let mut reply = [0u8; 48];
            reply[0] = 0x24; // no leap warning, version 4, mode 4 (server)
            reply[1] = 1; // stratum 1
            reply[12..16].copy_from_slice(b"TEST");
            reply[16..24].copy_from_slice(&stamp);
            reply[24..32].copy_from_slice(&buf[40..48]); // originate = their transmit
            reply[32..40].copy_from_slice(&stamp);
            reply[40..48].copy_from_slice(&stamp);
            let _ = socket.send_to(&reply, peer);
        }
    });
    Ok(())
}

#[test]
fn network_and_ntp_settings_take_effect_without_a_reboot() -> Result<()> {
    sntp_server_an_hour_ahead()?;
    let disk = TestDisk::fresh("net-settings")?;
    let mut node = disk.boot_with_user_data(&user_data("net-node"))?;
    node.wait_ready()?;
    let fingerprint = node.wait_api_reachable()?;
    let ctl = node.ctl(&fingerprint, Some(TOKEN));
    let status = json(&mut node, &ctl, &["status"])?;
    assert_eq!(status["network"]["mode"], "dhcp");
    assert_eq!(
        status["network"]["dns"][0], "10.0.2.3",
        "DNS from the lease"
    );

    // Static addressing (keeping the address the port forward goes to, and
    // adding one), a route, DNS servers and an NTP server, in one commit.
    node.ctl_ok(
        &ctl,
        &[
            "set",
            "network.dhcp=false",
            "network.addresses=[\"10.0.2.15/24\",\"10.0.2.99/24\"]",
            "network.routes=[{\"to\":\"0.0.0.0/0\",\"via\":\"10.0.2.2\"}]",
            "network.dns=[\"10.0.2.3\",\"10.0.2.4\"]",
            "ntp.servers=[\"10.0.2.2\"]",
        ],
    )?;
    node.wait_until("the net agent applied the static settings", |t| {
        t.contains(
            "carapace-net: eth0 configured 10.0.2.15/24 10.0.2.99/24 via 10.0.2.2 dns 10.0.2.3 10.0.2.4 (static)",
        )
    })?;
    node.wait_until("the clock was stepped to the test's NTP server", |t| {
        t.lines()
            .any(|l| l.contains("ntp: stepped the clock by +3") && l.contains("(server 10.0.2.2)"))
    })?;
    let status = json(&mut node, &ctl, &["status"])?;
    let network = &status["network"];
    assert_eq!(network["mode"], "static", "{network}");
    assert_eq!(network["state"], "configured", "{network}");
    assert_eq!(
        network["addresses"],
        serde_json::json!(["10.0.2.15/24", "10.0.2.99/24"]),
        "{network}"
    );
    assert_eq!(network["gateway"], "10.0.2.2", "{network}");
    assert_eq!(network["dns"], serde_json::json!(["10.0.2.3", "10.0.2.4"]));
    assert_eq!(network["ntp"]["synced_with"], "10.0.2.2", "{network}");
    let offset = network["ntp"]["offset_ms"].as_f64().context("ntp offset")?;
    assert!(
        (3_000_000.0..4_200_000.0).contains(&offset),
        "the offset is the hour the test server is ahead: {offset} ms"
    );
    node.press_power_button()?;
    node.wait_exit()?;
    Ok(())
}
