//! Failed trial boots roll back with no human action. Version 0.1.0 installs
//! a version that fails its trial in one of the ways a real update fails —
//! stage 1 cannot verify its root, its PID 1 hangs before `ready`, its NIC
//! never comes up — and the test only boots the machine again whenever QEMU
//! ends (QEMU runs with -no-reboot, so a reboot or a watchdog reset ends it
//! as a power cycle would), the way a machine restarts by itself. Every
//! failed try must end in a reboot or a reset, never a power-off; after the
//! third, systemd-boot falls back to 0.1.0, which names the update as rolled
//! back. The sources are prepared by `cargo xtask test`.

use anyhow::{bail, ensure, Context, Result};
use qemu_tests::{part_type, update_sources, Ctl, FileServer, Node, TestDisk};
use serde_json::Value;

const TOKEN: &str = "rollback-token-0123456789";

fn user_data(source: &str) -> String {
    format!("[api]\ntoken = \"{TOKEN}\"\n[updates]\nsource = \"{source}\"\n")
}

fn update_status(node: &mut Node, ctl: &Ctl) -> Result<Value> {
    let out = node.ctl_ok(ctl, &["--output", "json", "update", "status"])?;
    serde_json::from_str(&out).with_context(|| format!("update status printed {out:?}"))
}

/// Boots 0.1.0 with the source `dir/`, downloads and applies its version,
/// and powers off in order; returns the disk, ready for the trial boots.
fn install(name: &str, server: &FileServer, dir: &str) -> Result<TestDisk> {
    let disk = TestDisk::fresh(name)?;
    let mut node = disk.boot_with_user_data(&user_data(&server.url_for_node(dir)))?;
    let (ready, ctl) = node.reach_update_daemon(TOKEN)?;
    ensure!(ready.version == "0.1.0", "booted {}", ready.version);
    node.ctl_ok(&ctl, &["update", "download", "--wait"])?;
    node.ctl_ok(&ctl, &["update", "apply"])?;
    node.press_power_button()?;
    node.wait_exit()?;
    Ok(disk)
}

/// How one boot ended up.
enum Boot {
    /// The ready line came, naming this version.
    Ready(Node, String),
    /// The failure the test looks for came first.
    Failed(Node),
}

fn next_boot(disk: &TestDisk, failure: Option<&str>) -> Result<Boot> {
    let mut node = disk.boot()?;
    node.wait_until("the boot is ready or fails", |t| {
        t.contains("carapace: ready ") || failure.is_some_and(|f| t.contains(f))
    })?;
    if let Some(line) = node
        .transcript
        .lines()
        .find(|l| l.contains("carapace: ready "))
    {
        let ready = qemu_tests::parse_ready(line.trim())
            .with_context(|| format!("malformed ready line {line:?}"))?;
        return Ok(Boot::Ready(node, ready.version));
    }
    Ok(Boot::Failed(node))
}

/// Boots until 0.1.0 is ready again; every other boot is a try of `bad`,
/// which `each_try` checks and which must end by itself. Returns the node
/// on 0.1.0 and the number of tries.
fn boot_until_fallback(
    disk: &TestDisk,
    bad: &str,
    failure: Option<&str>,
    each_try: impl Fn(&mut Node) -> Result<()>,
) -> Result<(Node, u32)> {
    let mut tries = 0;
    loop {
        let mut node = match next_boot(disk, failure)? {
            Boot::Ready(node, version) if version == "0.1.0" => return Ok((node, tries)),
            Boot::Ready(node, version) => {
                ensure!(version == bad, "booted {version}, neither {bad} nor 0.1.0");
                node
            }
            Boot::Failed(node) => node,
        };
        tries += 1;
        ensure!(tries <= 3, "{bad} was tried more than 3 times");
        each_try(&mut node)?;
        node.wait_exit()?;
        if node.transcript.contains("carapace: powering off") {
            bail!(
                "try {tries} of {bad} powered the machine off instead of rebooting:\n{}",
                node.transcript
            );
        }
    }
}

/// On 0.1.0 again: the daemon names `bad` as rolled back, and the node
/// takes updates again.
fn check_rolled_back(mut node: Node, bad: &str) -> Result<()> {
    let fingerprint = node.wait_api_reachable()?;
    node.wait_until("the daemon saw the rollback and serves D-Bus", |t| {
        t.contains(&format!("carapace-update: update {bad} was rolled back"))
            && t.contains("carapace-update: serving org.carapace.Update1")
    })?;
    let ctl = node.ctl(&fingerprint, Some(TOKEN));
    let status = update_status(&mut node, &ctl)?;
    assert_eq!(status["running"], "0.1.0", "{status}");
    assert_eq!(status["rolled_back"], bad, "{status}");
    assert_eq!(status["blessed"], true, "{status}");
    node.press_power_button()?;
    node.wait_exit()?;
    Ok(())
}

#[test]
fn a_trial_whose_stage_1_cannot_verify_its_root_reboots_until_the_fallback_boots() -> Result<()> {
    let server = FileServer::start(&update_sources())?;
    let disk = install("rollback-stage1", &server, "good/")?;
    // Break the new slot behind the boot loader's back: its verity
    // superblock is zeros, so stage 1 of 0.2.0 cannot set up its root.
    let verity = disk.partition(part_type::ROOT_VERITY_X86_64, Some("carapace_0.2.0_verity"))?;
    disk.write_at(verity.offset, &[0u8; 4096])?;
    let (node, tries) =
        boot_until_fallback(&disk, "0.2.0", Some("carapace: boot failed:"), |node| {
            node.wait_until("stage 1 reboots to count the try", |t| {
                t.contains("carapace: rebooting")
            })
        })?;
    assert_eq!(tries, 3, "systemd-boot gave 0.2.0 its 3 tries");
    check_rolled_back(node, "0.2.0")
}

#[test]
fn a_trial_whose_pid_1_hangs_is_reset_by_the_watchdog_until_the_fallback_boots() -> Result<()> {
    let server = FileServer::start(&update_sources())?;
    let disk = install("rollback-hang", &server, "hang/")?;
    let (node, tries) = boot_until_fallback(&disk, "0.3.1", Some("standing still"), |node| {
        ensure!(
            node.transcript.contains("carapace: watchdog "),
            "stage 1 armed the watchdog:\n{}",
            node.transcript
        );
        Ok(())
    })?;
    assert_eq!(tries, 3, "systemd-boot gave 0.3.1 its 3 tries");
    check_rolled_back(node, "0.3.1")
}

#[test]
fn a_trial_whose_nic_never_comes_up_is_not_blessed_and_refuses_updates() -> Result<()> {
    let server = FileServer::start(&update_sources())?;
    let disk = install("rollback-no-nic", &server, "no-nic/")?;
    let (node, tries) = boot_until_fallback(&disk, "0.3.2", None, |node| {
        // The API answers on the node, but the NIC has no address.
        node.wait_until("updates are refused while on trial", |t| {
            t.contains("dbus-probe: on trial: apply refused")
        })?;
        for op in ["download", "apply"] {
            ensure!(
                node.transcript
                    .contains(&format!("dbus-probe: on trial: {op} refused:"))
                    && node.transcript.contains("is on trial"),
                "{op} while on trial is refused, naming why:\n{}",
                node.transcript
            );
        }
        node.wait_until("the daemon gives up on the try", |t| {
            t.contains("carapace-update: 0.3.2 is not healthy after")
        })?;
        ensure!(
            !node.transcript.contains("0.3.2 is healthy: blessed"),
            "a version without network was blessed"
        );
        Ok(())
    })?;
    assert_eq!(tries, 3, "systemd-boot gave 0.3.2 its 3 tries");
    check_rolled_back(node, "0.3.2")
}
