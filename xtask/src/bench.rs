//! `cargo xtask bench boot`: boots the release image several times, each on a
//! fresh copy, and reports the median milliseconds from kernel start to stage 1,
//! to stage 2 and to `carapace: ready`, plus the sizes that matter.

use crate::image::{self, Variant};
use anyhow::{Context, Result};
use qemu_tests::{part_type, TestDisk};
use std::path::Path;

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

pub fn boot(root: &Path, runs: usize) -> Result<()> {
    let img = image::build(root, Variant::Release)?;
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
    }
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
    let report = format!(
        "boot benchmark: {runs} boots of {} under TCG (median, ms since kernel start)\n  stage 1 (root verified and mounted): {} ms\n  stage 2 (started):                   {} ms\n  ready (all services started):        {} ms\nsizes\n  root filesystem (erofs): {:.2} MB ({} bytes)\n  root slot partition: {} MB\n  UKI: {}\n",
        img.disk.display(),
        median(s1),
        median(s2),
        median(ready),
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
