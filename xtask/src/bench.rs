//! `cargo xtask bench boot`: boots the release image several times, each on a
//! fresh copy, and reports the median milliseconds from kernel start to stage 1,
//! to stage 2 and to `carapace: ready`; boots the same kernel as often with a
//! trivial initrd whose init powers off at once, and reports ready ÷ that
//! kernel-to-init time (machines differ, the ratio much less); reads the
//! memory in use once the node is idle (MemTotal − MemAvailable, no
//! containers, from `/v1/status`); and the sizes that matter.

use crate::image::{self, Variant};
use crate::{binaries, kernel};
use anyhow::{bail, Context, Result};
use qemu_tests::{part_type, TestDisk};
use std::path::Path;
use std::time::Duration;

const TOKEN: &str = "bench-token-0123456789";

fn ms_of(line: &str) -> Option<u64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(3)
        .find(|w| w[0] == "at" && w[2].trim_end_matches([':', ',', '.']) == "ms")
        .and_then(|w| w[1].parse().ok())
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    if v.is_empty() {
        0
    } else {
        v[v.len() / 2]
    }
}

/// The size of the erofs filesystem at the start of `bytes` (its superblock
/// sits at 1024: block size bits at +12, block count at +36).
pub fn erofs_size(superblock_area: &[u8]) -> Option<u64> {
    let sb = superblock_area.get(1024..1024 + 64)?;
    if sb[0..4] != 0xE0F5_E1E2u32.to_le_bytes() {
        return None;
    }
    let bits = u32::from(sb[12]);
    let blocks = u32::from_le_bytes([sb[36], sb[37], sb[38], sb[39]]);
    Some(u64::from(blocks) << bits)
}

/// The kernel command line of the image's UKI, without `roothash=` (which
/// mkosi adds): `KernelCommandLine=` of image/mkosi.conf.
fn kernel_command_line(root: &Path) -> Result<String> {
    let conf = std::fs::read_to_string(root.join("image/mkosi.conf"))?;
    conf.lines()
        .find_map(|l| l.strip_prefix("KernelCommandLine="))
        .map(|l| l.trim().to_string())
        .context("image/mkosi.conf has no KernelCommandLine=")
}

/// Boots `kernel` straight from QEMU (no firmware, the node's devices) with
/// the trivial initrd; returns the milliseconds from kernel start to init.
fn trivial_boot(kernel: &Path, initrd: &Path, append: &str, disk: &Path) -> Result<u64> {
    let out = duct::cmd(
        "timeout",
        [
            "300",
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-machine",
            "q35",
            "-cpu",
            "max",
            "-m",
            "1024",
            "-smp",
            "1",
            "-display",
            "none",
            "-nodefaults",
            "-no-user-config",
            "-serial",
            "stdio",
            "-no-reboot",
            "-device",
            "virtio-rng-pci",
            "-device",
            "i6300esb",
            "-netdev",
            "user,id=net0",
            "-device",
            "virtio-net-pci,netdev=net0",
        ],
    )
    .before_spawn({
        let (kernel, initrd, append, disk) = (
            kernel.to_owned(),
            initrd.to_owned(),
            append.to_owned(),
            disk.to_owned(),
        );
        move |cmd| {
            cmd.arg("-drive")
                .arg(format!(
                    "file={},format=raw,if=virtio,snapshot=on",
                    disk.display()
                ))
                .arg("-kernel")
                .arg(&kernel)
                .arg("-initrd")
                .arg(&initrd)
                .arg("-append")
                .arg(&append);
            Ok(())
        }
    })
    .stdout_capture()
    .stderr_to_stdout()
    .unchecked()
    .run()
    .context("cannot run qemu-system-x86_64")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().find(|l| l.contains("trivial init at ")) {
        Some(line) => ms_of(line).with_context(|| format!("malformed line {line:?}")),
        None => bail!("the trivial init never ran: {text}"),
    }
}

/// Boots a fresh copy with a token, waits until the node is idle and reads
/// MemTotal − MemAvailable from `/v1/status`.
fn idle_memory(image: &Path) -> Result<u64> {
    let disk = TestDisk::copy_of(image, "bench-memory")?;
    let mut node = disk.boot_with_user_data(&format!("[api]\ntoken = \"{TOKEN}\"\n"))?;
    node.wait_ready()?;
    let fingerprint = node.wait_api_reachable()?;
    let ctl = node.ctl(&fingerprint, Some(TOKEN));
    // Let the first boot's work (certificate, first DHCP lease) settle.
    let settle = std::time::Instant::now();
    while settle.elapsed() < Duration::from_secs(15) {
        node.drain();
        std::thread::sleep(Duration::from_millis(100));
    }
    let status: serde_json::Value =
        serde_json::from_str(&node.ctl_ok(&ctl, &["--output", "json", "status"])?)
            .context("status is not JSON")?;
    let total = status["memory"]["total_bytes"].as_u64();
    let available = status["memory"]["available_bytes"].as_u64();
    node.press_power_button()?;
    node.wait_exit()?;
    match (total, available) {
        (Some(t), Some(a)) => Ok(t.saturating_sub(a)),
        _ => bail!("status has no memory figures: {status}"),
    }
}

pub fn boot(root: &Path, runs: usize) -> Result<()> {
    let img = image::build(root, Variant::Release)?;
    let kernel = kernel::build(root)?;
    let trivial = binaries::build(root, &[("qemu-tests", "carapace-test-trivial-init")])?;
    let trivial_initrd = root.join("build/bench-trivial-initrd.cpio");
    std::fs::write(
        &trivial_initrd,
        image::initrd_archive(&std::fs::read(&trivial[0])?),
    )?;
    let append = kernel_command_line(root)?;
    let mut to_init = Vec::new();
    let (mut s1, mut s2, mut ready) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let disk = TestDisk::copy_of(&img.disk, &format!("bench-{i}"))?;
        let mut node = disk.boot()?;
        let l1 = node.expect_line("carapace: stage 1 ")?;
        let l2 = node.expect_line("carapace: stage 2 ")?;
        let r = node.wait_ready()?;
        s1.push(ms_of(&l1).context("stage 1 line without `at N ms`")?);
        s2.push(ms_of(&l2).context("stage 2 line without `at N ms`")?);
        ready.push(r.ms);
        node.press_power_button()?;
        node.wait_exit()?;
        eprintln!(
            "bench: run {}: stage 1 {} ms, stage 2 {} ms, ready {} ms",
            i + 1,
            s1[i],
            s2[i],
            r.ms
        );
        let t = trivial_boot(&kernel.bzimage, &trivial_initrd, &append, &img.disk)?;
        eprintln!(
            "bench: run {}: the same kernel reaches a trivial init at {t} ms",
            i + 1
        );
        to_init.push(t);
    }
    let memory = idle_memory(&img.disk)?;
    let disk = TestDisk::copy_of(&img.disk, "bench-sizes")?;
    let root_part = disk.partition(part_type::ROOT_X86_64, None)?;
    let head = disk.read_at(root_part.offset, 4096)?;
    let root_fs = erofs_size(&head).context("slot A holds no erofs filesystem")?;
    let uki = std::fs::read_dir(&img.out_dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "efi"))
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len());
    let (ready, to_init) = (median(ready), median(to_init));
    let report = format!(
        "boot benchmark: {runs} boots of {} under TCG (median, ms since kernel start)\n  stage 1 (root verified and mounted): {} ms\n  stage 2 (started):                   {} ms\n  ready (all services started):        {ready} ms\n  the same kernel to a trivial init:   {to_init} ms\n  ready ÷ kernel to trivial init:      {:.2}\nmemory in use at idle (MemTotal − MemAvailable, no containers): {:.1} MiB\nsizes\n  root filesystem (erofs): {:.2} MB ({} bytes)\n  root slot partition: {} MB\n  UKI: {}\n",
        img.disk.display(),
        median(s1),
        median(s2),
        ready as f64 / to_init.max(1) as f64,
        memory as f64 / (1024.0 * 1024.0),
        root_fs as f64 / 1e6,
        root_fs,
        root_part.size / 1_000_000,
        uki.map(|u| format!("{:.2} MB ({u} bytes)", u as f64 / 1e6)).unwrap_or_else(|| "not found in the output directory".into()),
    );
    print!("{report}");
    std::fs::write(root.join("build/bench-boot.txt"), &report)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_times_and_medians() {
        assert_eq!(ms_of("carapace: stage 2 at 812 ms"), Some(812));
        assert_eq!(ms_of("carapace: stage 1 at 77 ms: root x"), Some(77));
        assert_eq!(ms_of("carapace: stage 1 root x"), None);
        assert_eq!(median(vec![5, 1, 3]), 3);
    }
}
