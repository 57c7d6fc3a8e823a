//! `cargo xtask bench update`: what an A/B update costs. Reports the size of
//! the bundle the test image's next version makes; the time a node on the
//! test image takes to download-and-verify it and to apply it (driven with
//! the CLI over the forwarded port, from a file server on the host), as the
//! operator sees it and as the daemon reports its own write and verify
//! steps; the time from the reboot request to the new version blessing
//! itself; on the host, the throughput of our verity verifier against
//! `veritysetup verify` on the same root and hash tree; and what a failed
//! trial costs: a version whose stage 1 cannot verify its root, and one
//! whose PID 1 hangs (reset by the watchdog), each timed from its failure
//! to the machine restarting and from its last failure to the fallback's
//! ready line.

use crate::image::{self, Variant};
use anyhow::{bail, Context, Result};
use qemu_tests::{part_type, FileServer, Node, TestDisk};
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-token-0123456789";

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// The bundle's files and their sizes.
fn bundle_sizes(dir: &Path) -> Result<(String, u64)> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<std::io::Result<Vec<_>>>()?;
    names.sort_by_key(|e| e.file_name());
    let mut out = String::new();
    let mut total = 0;
    for e in names {
        let len = e.metadata()?.len();
        total += len;
        out.push_str(&format!(
            "    {}: {:.2} MB\n",
            e.file_name().to_string_lossy(),
            mb(len)
        ));
    }
    Ok((out, total))
}

/// Times our tree check and `veritysetup verify` over the same data.
fn verify_throughput(bundle: &Path, work: &Path) -> Result<String> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json"))?)?;
    let data_bytes = manifest["root"]["data_bytes"]
        .as_u64()
        .context("manifest root.data_bytes")?;
    let roothash_hex = manifest["roothash"].as_str().context("manifest roothash")?;
    let mut roothash = [0u8; 32];
    for (i, b) in roothash.iter_mut().enumerate() {
        *b = u8::from_str_radix(&roothash_hex[2 * i..2 * i + 2], 16)?;
    }
    // The slot as the node has it: the stored root, then zeros.
    std::fs::create_dir_all(work)?;
    let data = work.join("slot-data");
    std::fs::copy(bundle.join("root.img"), &data)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data)?
        .set_len(data_bytes)?;
    let hash_image = std::fs::read(bundle.join("root.verity"))?;

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        carapace_disk::verity_tree::verify(std::fs::File::open(&data)?, &hash_image, &roothash)
            .map_err(|e| anyhow::anyhow!("our verifier refused the bundle: {e}"))?;
        ours.push(t.elapsed());
        let t = Instant::now();
        duct::cmd!(
            "veritysetup",
            "verify",
            &data,
            bundle.join("root.verity"),
            roothash_hex
        )
        .stdout_null()
        .run()
        .context("veritysetup verify (package cryptsetup-bin)")?;
        theirs.push(t.elapsed());
    }
    std::fs::remove_file(&data)?;
    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let rate = |d: Duration| mb(data_bytes) / d.as_secs_f64().max(1e-9);
    Ok(format!(
        "  verifying a slot on the host ({:.1} MB of root + {:.2} MB of tree, best of 3):\n    \
         carapace verity_tree::verify: {} ms ({:.0} MB/s)\n    veritysetup verify: {} ms ({:.0} MB/s)\n",
        mb(data_bytes),
        mb(hash_image.len() as u64),
        best(&ours).as_millis(),
        rate(best(&ours)),
        best(&theirs).as_millis(),
        rate(best(&theirs)),
    ))
}

/// The daemon's own line about the write and the check.
fn daemon_line(transcript: &str) -> String {
    transcript
        .lines()
        .find(|l| l.contains("carapace-update: wrote "))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| "(the daemon did not report its timings)".into())
}

fn timed(node: &mut Node, ctl: &qemu_tests::Ctl, args: &[&str]) -> Result<Duration> {
    let t = Instant::now();
    node.ctl_ok(ctl, args)?;
    Ok(t.elapsed())
}

/// Runs the benchmark and writes the report to build/bench-update.txt.
pub fn update(root: &Path) -> Result<()> {
    let img = image::build(root, Variant::Test)?;
    let sources = crate::update_sources(root)?;
    let good = sources.join("good");
    let version = std::fs::read_dir(&good)?
        .filter_map(|e| e.ok())
        .find(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .context("a version under good/")?;
    let bundle = good.join(&version);
    let mut report = format!(
        "Update benchmark: {} (TCG) updating to {version}\n",
        img.disk.display()
    );
    let (files, total) = bundle_sizes(&bundle)?;
    report.push_str(&format!("  bundle: {:.2} MB in all\n{files}", mb(total)));
    report.push_str(&verify_throughput(
        &bundle,
        &root.join("target/bench-update"),
    )?);

    let server = FileServer::start(&sources)?;
    let disk = TestDisk::copy_of(&img.disk, "bench-update")?;
    let mut node = disk.boot_with_user_data(&format!(
        "[api]\ntoken = \"{TOKEN}\"\n[updates]\nsource = \"{}\"\n",
        server.url_for_node("good/")
    ))?;
    let (_, ctl) = node.reach_update_daemon(TOKEN)?;
    // The first call with the token pays its argon2 check (seconds under
    // TCG) whatever it asks; it is not part of an update.
    node.ctl_ok(&ctl, &["update", "status"])?;
    let download = timed(&mut node, &ctl, &["update", "download", "--wait"])?;
    let apply = timed(&mut node, &ctl, &["update", "apply"])?;
    report.push_str(&format!(
        "  on the node (CLI over the forwarded port, bundle from the host over QEMU's user network):\n    \
         download, write and verify: {} ms\n    apply (fetch, check and install the UKI): {} ms\n    {}\n",
        download.as_millis(),
        apply.as_millis(),
        daemon_line(&node.transcript)
    ));
    let reboot = Instant::now();
    node.ctl_ok(&ctl, &["reboot"])?;
    node.wait_exit()?;
    let mut node = disk.boot()?;
    let ready = node.wait_ready()?;
    if ready.version != version {
        bail!("the node booted {} instead of {version}", ready.version);
    }
    node.wait_until("the new version blessed itself", |t| {
        t.contains("is healthy: blessed")
    })?;
    report.push_str(&format!(
        "  reboot request to {version} blessed: {} ms (firmware, kernel, the agents running 10 s, and health held twice 2 s apart)\n",
        reboot.elapsed().as_millis()
    ));
    node.press_power_button()?;
    node.wait_exit()?;
    report.push_str(&failed_trial(&img.disk, &server, Fault::Stage1)?);
    report.push_str(&failed_trial(&img.disk, &server, Fault::Hang)?);
    print!("{report}");
    std::fs::write(root.join("build/bench-update.txt"), &report)?;
    Ok(())
}

/// How the measured trial fails.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// 0.2.0 with its verity superblock zeroed: stage 1 fails and reboots.
    Stage1,
    /// 0.3.1, whose PID 1 hangs: the watchdog resets the machine.
    Hang,
}

/// Installs a version that fails its trial, lets it fail until systemd-boot
/// falls back, and reports the times of each step.
fn failed_trial(image: &Path, server: &FileServer, fault: Fault) -> Result<String> {
    let (dir, bad, marker, what) = match fault {
        Fault::Stage1 => (
            "good/",
            "0.2.0",
            "carapace: boot failed:",
            "stage 1 cannot verify the root",
        ),
        Fault::Hang => (
            "hang/",
            "0.3.1",
            "standing still",
            "PID 1 hangs, the watchdog resets",
        ),
    };
    let disk = TestDisk::copy_of(image, "bench-rollback")?;
    let mut node = disk.boot_with_user_data(&format!(
        "[api]\ntoken = \"{TOKEN}\"\n[updates]\nsource = \"{}\"\n",
        server.url_for_node(dir)
    ))?;
    let (_, ctl) = node.reach_update_daemon(TOKEN)?;
    node.ctl_ok(&ctl, &["update", "download", "--wait"])?;
    node.ctl_ok(&ctl, &["update", "apply"])?;
    node.press_power_button()?;
    node.wait_exit()?;
    if fault == Fault::Stage1 {
        let verity = disk.partition(
            part_type::ROOT_VERITY_X86_64,
            Some(&format!("carapace_{bad}_verity")),
        )?;
        disk.write_at(verity.offset, &[0u8; 4096])?;
    }
    let mut out = format!("  a failed trial of {bad} ({what}), rolled back by the boot loader:\n");
    let all = Instant::now();
    let mut last_failure = None;
    for attempt in 1..=4 {
        let start = Instant::now();
        let mut node = disk.boot()?;
        node.wait_until("the boot fails or is ready", |t| {
            t.contains(marker) || t.contains("carapace: ready ")
        })?;
        let ready = node
            .transcript
            .lines()
            .find_map(|l| qemu_tests::parse_ready(l.trim()));
        if let Some(ready) = ready {
            let version = ready.version;
            if version != "0.1.0" {
                bail!("try {attempt} booted {version}, not the fallback 0.1.0");
            }
            let since_failure = last_failure.map_or(0, |t: Instant| t.elapsed().as_millis());
            out.push_str(&format!(
                "    last failure to the fallback's ready line: {since_failure} ms (firmware, kernel, 0.1.0 up to ready)\n    \
                 first trial boot to the fallback's ready line: {} ms ({} failed tries)\n",
                all.elapsed().as_millis(),
                attempt - 1
            ));
            node.press_power_button()?;
            node.wait_exit()?;
            return Ok(out);
        }
        let failed = Instant::now();
        node.wait_exit()?;
        out.push_str(&format!(
            "    try {attempt}: boot to failure {} ms, failure to restart {} ms\n",
            (failed - start).as_millis(),
            failed.elapsed().as_millis()
        ));
        last_failure = Some(failed);
    }
    bail!("{bad} was tried more than 3 times")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_line_is_found_in_the_console() {
        let t = "x\n[update] carapace-update: wrote 0.2.0 to slot b: 5 bytes in 1 ms; verified 9 bytes in 2 ms\ny";
        assert!(daemon_line(t).starts_with("[update] carapace-update: wrote 0.2.0"));
        assert!(daemon_line("nothing").contains("did not report"));
    }
}
