//! `cargo xtask kernel`: builds the node's monolithic kernel from Debian's
//! pinned linux-source package, `make tinyconfig` and our fragment in
//! kernel-config/. The result is cached under target/kernel/<key>/, where the
//! key hashes the fragment, the pin and the installed package version, so a
//! second run returns at once. Every option the fragment asks for must be in
//! the final .config, or the build fails and names the missing ones.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Debian packages the kernel build needs on the host.
pub const HOST_PACKAGES: &[&str] = &[
    "linux-source-6.12",
    "bc",
    "flex",
    "bison",
    "libelf-dev",
    "libssl-dev",
    "cpio",
    "xz-utils",
    "make",
    "gcc",
];

/// A built kernel.
pub struct Kernel {
    pub bzimage: PathBuf,
    /// `make kernelrelease`, e.g. 6.12.117.
    pub release: String,
}

/// The pin in kernel-config/source: `key=value` lines.
fn read_pin(root: &Path) -> Result<(String, PathBuf)> {
    let path = root.join("kernel-config/source");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut package = None;
    let mut tarball = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.split_once('=') {
            Some(("package", v)) => package = Some(v.trim().to_string()),
            Some(("tarball", v)) => tarball = Some(PathBuf::from(v.trim())),
            _ => bail!("{}: unexpected line {line:?}", path.display()),
        }
    }
    match (package, tarball) {
        (Some(p), Some(t)) => Ok((p, t)),
        _ => bail!("{} must name package= and tarball=", path.display()),
    }
}

/// The options a fragment asks for: (name, wanted) where wanted is false for
/// `# CONFIG_X is not set`.
pub fn fragment_options(fragment: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for line in fragment.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some(name) = rest.strip_suffix(" is not set") {
                if name.starts_with("CONFIG_") {
                    out.push((name.to_string(), None));
                }
            }
        } else if let Some((name, value)) = line.split_once('=') {
            if name.starts_with("CONFIG_") {
                out.push((name.to_string(), Some(value.to_string())));
            }
        }
    }
    out
}

/// The options of the fragment that the final .config does not honour.
pub fn missing_options(fragment: &str, config: &str) -> Vec<String> {
    let set: std::collections::HashMap<&str, &str> = config
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("CONFIG_"))
        .collect();
    fragment_options(fragment)
        .into_iter()
        .filter(|(name, want)| match want {
            Some(v) => set.get(name.as_str()) != Some(&v.as_str()),
            None => set.contains_key(name.as_str()),
        })
        .map(|(name, want)| match want {
            Some(v) => format!("{name}={v}"),
            None => format!("{name} (should be unset)"),
        })
        .collect()
}

fn run_logged(cmd: duct::Expression, log: &Path, what: &str) -> Result<()> {
    let out = cmd
        .stderr_to_stdout()
        .stdout_path(log)
        .unchecked()
        .run()
        .with_context(|| format!("cannot start {what}"))?;
    if !out.status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{what} failed ({}); the end of {}:\n{}",
            out.status,
            log.display(),
            tail.join("\n")
        );
    }
    Ok(())
}

/// Builds (or reuses) the kernel.
pub fn build(root: &Path) -> Result<Kernel> {
    crate::host::ensure_packages(HOST_PACKAGES)?;
    let (package, tarball) = read_pin(root)?;
    let fragment_path = root.join("kernel-config/carapace.config");
    let fragment = std::fs::read_to_string(&fragment_path)
        .with_context(|| format!("cannot read {}", fragment_path.display()))?;
    let pkg_version = duct::cmd!("dpkg-query", "-W", "-f=${Version}", &package)
        .read()
        .with_context(|| format!("{package} is not installed"))?;

    let mut h = Sha256::new();
    h.update(fragment.as_bytes());
    h.update(std::fs::read(root.join("kernel-config/source"))?);
    h.update(pkg_version.as_bytes());
    let key: String = h
        .finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();

    let base = root.join("target/kernel");
    let cache = base.join(&key);
    let bzimage = cache.join("bzImage");
    let release_file = cache.join("release");
    if bzimage.exists() && release_file.exists() {
        let release = std::fs::read_to_string(&release_file)?.trim().to_string();
        return Ok(Kernel { bzimage, release });
    }
    std::fs::create_dir_all(&base)?;

    // The source tree, extracted once per package version.
    let src_root = base.join("src");
    let stamp = base.join("src.version");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(pkg_version.as_str()) {
        if src_root.exists() {
            std::fs::remove_dir_all(&src_root)?;
        }
        std::fs::create_dir_all(&src_root)?;
        eprintln!("kernel: extracting {}", tarball.display());
        duct::cmd!("tar", "-C", &src_root, "-xf", &tarball)
            .run()
            .with_context(|| format!("cannot extract {}", tarball.display()))?;
        std::fs::write(&stamp, &pkg_version)?;
    }
    let src = std::fs::read_dir(&src_root)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("Makefile").exists())
        .with_context(|| format!("no kernel source tree under {}", src_root.display()))?;

    let out = base.join("build");
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(&out)?;
    let o = format!("O={}", out.display());
    let log = base.join("build.log");
    let jobs = format!(
        "-j{}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    );
    run_logged(
        duct::cmd!("make", &o, "tinyconfig").dir(&src),
        &log,
        "make tinyconfig",
    )?;
    run_logged(
        duct::cmd!(
            src.join("scripts/kconfig/merge_config.sh"),
            "-m",
            "-O",
            &out,
            out.join(".config"),
            &fragment_path
        )
        .dir(&src),
        &log,
        "merge_config.sh",
    )?;
    run_logged(
        duct::cmd!("make", &o, "olddefconfig").dir(&src),
        &log,
        "make olddefconfig",
    )?;
    let config = std::fs::read_to_string(out.join(".config"))?;
    let missing = missing_options(&fragment, &config);
    if !missing.is_empty() {
        bail!(
            "these options of {} are not in the final .config (a dependency is missing or they hide behind a menu): {}",
            fragment_path.display(),
            missing.join(", ")
        );
    }
    let release = duct::cmd!("make", "-s", &o, "kernelrelease")
        .dir(&src)
        .read()?
        .trim()
        .to_string();
    eprintln!(
        "kernel: building {release} (about 5 minutes on 2 cores; log in {})",
        log.display()
    );
    let started = std::time::Instant::now();
    run_logged(
        duct::cmd!("make", &o, &jobs, "bzImage").dir(&src),
        &log,
        "make bzImage",
    )?;
    eprintln!("kernel: built in {:.0} s", started.elapsed().as_secs_f64());

    // Publish atomically: a half-written cache entry is never taken for a result.
    let tmp = base.join(format!("{key}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    std::fs::copy(out.join("arch/x86/boot/bzImage"), tmp.join("bzImage"))?;
    std::fs::copy(out.join(".config"), tmp.join("config"))?;
    std::fs::write(tmp.join("release"), &release)?;
    std::fs::rename(&tmp, &cache)?;
    Ok(Kernel {
        bzimage: cache.join("bzImage"),
        release,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_options_the_config_dropped() {
        let fragment =
            "# comment\nCONFIG_A=y\nCONFIG_B=y\n# CONFIG_MODULES is not set\nCONFIG_NR=64\n";
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_NR=64\n";
        assert_eq!(
            missing_options(fragment, config),
            vec!["CONFIG_B=y".to_string()]
        );
        let config2 = "CONFIG_A=y\nCONFIG_B=y\nCONFIG_MODULES=y\nCONFIG_NR=32\n";
        assert_eq!(
            missing_options(fragment, config2),
            vec![
                "CONFIG_MODULES (should be unset)".to_string(),
                "CONFIG_NR=64".to_string()
            ]
        );
    }

    #[test]
    fn the_checked_in_fragment_is_monolithic_and_has_verity() {
        let text =
            std::fs::read_to_string(crate::workspace_root().join("kernel-config/carapace.config"))
                .expect("fragment readable");
        let opts = fragment_options(&text);
        assert!(opts.contains(&("CONFIG_MODULES".to_string(), None)));
        for needed in [
            "CONFIG_DM_VERITY",
            "CONFIG_EROFS_FS",
            "CONFIG_EFI_STUB",
            "CONFIG_VIRTIO_BLK",
        ] {
            assert!(
                opts.contains(&(needed.to_string(), Some("y".to_string()))),
                "{needed}"
            );
        }
    }
}
