//! `cargo xtask kernel`: the node's monolithic kernel, built from Debian's
//! pinned `linux-source-6.12` package (kernel-config/source) with
//! `make tinyconfig` plus our fragment (kernel-config/carapace.config).
//!
//! The result is cached outside the checkout, in `/var/cache/carapace/kernel/<key>/`
//! (`CARAPACE_KERNEL_CACHE` overrides the directory), so that every clone on
//! the machine, CI's fresh one included, builds a kernel once. The key is a SHA-256
//! of the fragment, the pin and the installed package version: an unchanged
//! tree returns at once, and a security update of the source package rebuilds.
//! Every option the fragment sets must survive `make olddefconfig` (which drops
//! options whose dependencies are off without a word); otherwise the build
//! fails and names all of them.
//!
//! Layout under the cache directory: `src/` (the extracted tarball, once per
//! package version), `build/` (the `O=` object tree, reused between builds of
//! the same source so a fragment tweak rebuilds only what it touches),
//! `build.log` (make's output), `fragment.config` (the fragment as hashed),
//! `lock` (one build at a time), and one directory per key holding `bzImage`,
//! `release` and the final `config`.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    // Compresses the kernel image (CONFIG_KERNEL_ZSTD).
    "zstd",
    "make",
    "gcc",
];

/// A built kernel, as found in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The bootable image (`arch/x86/boot/bzImage`), EFI-stub capable.
    pub bzimage: PathBuf,
    /// `make kernelrelease`, e.g. `6.12.117`: the name of
    /// `/usr/lib/modules/<release>/` in the image.
    pub release: String,
}

/// The fragment, relative to the workspace root.
const FRAGMENT: &str = "kernel-config/carapace.config";
/// Where built kernels are kept: outside any checkout, shared by every clone
/// on the machine.
fn cache_dir() -> PathBuf {
    std::env::var_os("CARAPACE_KERNEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/carapace/kernel"))
}

/// The source pin, relative to the workspace root.
const PIN: &str = "kernel-config/source";
/// Lines of make's log quoted in an error.
const LOG_TAIL_LINES: usize = 40;

/// Builds the kernel, or returns the cached build of the same inputs.
pub fn build(workspace_root: &Path) -> Result<Kernel> {
    crate::host::ensure_packages(HOST_PACKAGES)?;

    let pin_path = workspace_root.join(PIN);
    let pin_bytes =
        fs::read(&pin_path).with_context(|| format!("cannot read {}", pin_path.display()))?;
    let pin = Pin::parse(&String::from_utf8_lossy(&pin_bytes))
        .with_context(|| format!("in {}", pin_path.display()))?;
    let fragment_path = workspace_root.join(FRAGMENT);
    let fragment = fs::read_to_string(&fragment_path)
        .with_context(|| format!("cannot read {}", fragment_path.display()))?;
    let version = installed_version(&pin.package)?;
    let key = cache_key(fragment.as_bytes(), &pin_bytes, &version);

    let base = cache_dir();
    let entry = base.join(&key);
    if let Some(kernel) = cached(&entry)? {
        return Ok(kernel);
    }
    fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let _lock = BuildLock::acquire(&base.join("lock"))?;
    // Another xtask may have built the same key while we waited for the lock.
    if let Some(kernel) = cached(&entry)? {
        return Ok(kernel);
    }

    let started = Instant::now();
    let src = extract(&base, &pin, &version)?;
    let out = base.join("build");
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let log = base.join("build.log");
    File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let make = Make {
        src: &src,
        out: &out,
        log: &log,
        timestamp: build_timestamp(&pin.tarball)?,
    };

    // Merge exactly the bytes that were hashed, even if the file changes now.
    let merged_fragment = base.join("fragment.config");
    fs::write(&merged_fragment, &fragment)
        .with_context(|| format!("cannot write {}", merged_fragment.display()))?;

    make.run(&["tinyconfig"])?;
    make.logged(
        duct::cmd!(
            src.join("scripts/kconfig/merge_config.sh"),
            "-m",
            "-O",
            &out,
            out.join(".config"),
            &merged_fragment
        )
        .dir(&src),
        "merge_config.sh",
    )?;
    make.run(&["olddefconfig"])?;
    let config_path = out.join(".config");
    let config = fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let missing = missing_options(&fragment, &config);
    if !missing.is_empty() {
        bail!(
            "{} option(s) of {} did not survive `make olddefconfig` (a dependency or the \
             menu that shows them is off; see {}):\n  {}",
            missing.len(),
            fragment_path.display(),
            config_path.display(),
            missing.join("\n  ")
        );
    }

    let release = make.read(&["-s", "kernelrelease"])?;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    if out.join("vmlinux").is_file() {
        eprintln!(
            "kernel: rebuilding {release} from {} {version} (only what the configuration change touches; log in {})…",
            pin.package,
            log.display()
        );
    } else {
        eprintln!(
            "kernel: building {release} from {} {version} (about {} to {} minutes on {jobs} core{}, once: it is cached; log in {})…",
            pin.package,
            (20 / jobs).clamp(2, 20),
            (32 / jobs).clamp(3, 32),
            if jobs == 1 { "" } else { "s" },
            log.display()
        );
    }
    make.run(&[&format!("-j{jobs}"), "bzImage"])?;

    let kernel = publish(&base, &key, &out, &release)?;
    let size = fs::metadata(&kernel.bzimage).map_or(0, |m| m.len());
    eprintln!(
        "kernel: {release} built in {:.0} s, bzImage {:.1} MiB",
        started.elapsed().as_secs_f64(),
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(kernel)
}

/// kernel-config/source: `key=value` lines; `#` starts a comment line.
#[derive(Debug, PartialEq)]
struct Pin {
    /// The Debian package that ships the source tarball.
    package: String,
    /// Where that package puts the tarball.
    tarball: PathBuf,
}

impl Pin {
    fn parse(text: &str) -> Result<Pin> {
        let mut package = None;
        let mut tarball = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                Some(("package", v)) if !v.is_empty() => package = Some(v.to_string()),
                Some(("tarball", v)) if !v.is_empty() => tarball = Some(PathBuf::from(v)),
                _ => bail!(
                    "line {}: expected package=… or tarball=…, found {line:?}",
                    n + 1
                ),
            }
        }
        match (package, tarball) {
            (Some(package), Some(tarball)) => Ok(Pin { package, tarball }),
            _ => bail!("both package= and tarball= are required"),
        }
    }
}

/// The installed version of a Debian package, e.g. `6.12.117-1~deb12u1`.
fn installed_version(package: &str) -> Result<String> {
    let version = duct::cmd!("dpkg-query", "-W", "-f=${Version}", package)
        .stderr_null()
        .read()
        .with_context(|| format!("{package} is not installed (cargo xtask deps)"))?;
    if version.trim().is_empty() {
        bail!("{package} is not installed (cargo xtask deps)");
    }
    Ok(version.trim().to_string())
}

/// The cache key: a SHA-256 over the inputs, each prefixed by its length so
/// that no two different sets of inputs hash the same bytes.
fn cache_key(fragment: &[u8], pin: &[u8], version: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"carapace-kernel-1\0");
    for part in [fragment, pin, version.as_bytes()] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The cache entry at `dir`, if it is complete.
fn cached(dir: &Path) -> Result<Option<Kernel>> {
    let bzimage = dir.join("bzImage");
    let release_file = dir.join("release");
    if !(bzimage.is_file() && release_file.is_file()) {
        return Ok(None);
    }
    let release = fs::read_to_string(&release_file)
        .with_context(|| format!("cannot read {}", release_file.display()))?
        .trim()
        .to_string();
    if release.is_empty() {
        return Ok(None);
    }
    Ok(Some(Kernel { bzimage, release }))
}

/// An exclusive lock on `<cache>/lock`, held until dropped, so that two
/// xtask processes never share the source and object trees.
struct BuildLock {
    _file: File,
}

impl BuildLock {
    fn acquire(path: &Path) -> Result<BuildLock> {
        use rustix::fs::{flock, FlockOperation};
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            eprintln!("kernel: waiting for another kernel build to finish…");
            flock(&file, FlockOperation::LockExclusive)
                .with_context(|| format!("cannot lock {}", path.display()))?;
        }
        Ok(BuildLock { _file: file })
    }
}

/// Extracts the pinned tarball into `base/src` unless the tree there already
/// comes from `version`, and returns the top of the source tree.
fn extract(base: &Path, pin: &Pin, version: &str) -> Result<PathBuf> {
    let src_root = base.join("src");
    let stamp = base.join("src.version");
    let current = fs::read_to_string(&stamp).ok();
    if current.as_deref().map(str::trim) != Some(version) {
        if !pin.tarball.is_file() {
            bail!(
                "{} is missing although {} {version} is installed",
                pin.tarball.display(),
                pin.package
            );
        }
        eprintln!("kernel: extracting {} ({version})", pin.tarball.display());
        remove_if_present(&stamp)?;
        remove_if_present(&src_root)?;
        // Objects compiled from another source version are not to be trusted:
        // the extracted files keep the tarball's old modification times.
        remove_if_present(&base.join("build"))?;
        let partial = base.join("src.partial");
        remove_if_present(&partial)?;
        fs::create_dir_all(&partial)?;
        duct::cmd!("tar", "-C", &partial, "-xf", &pin.tarball)
            .run()
            .with_context(|| format!("cannot extract {}", pin.tarball.display()))?;
        fs::rename(&partial, &src_root)?;
        fs::write(&stamp, version)?;
    }
    let entries =
        fs::read_dir(&src_root).with_context(|| format!("cannot read {}", src_root.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.join("Makefile").is_file() && path.join("Kconfig").is_file() {
            return Ok(path);
        }
    }
    bail!("no kernel source tree under {}", src_root.display())
}

/// A fixed build timestamp (the tarball's modification time, which dpkg
/// takes from the package), so the same inputs give the same `uname -v`.
fn build_timestamp(tarball: &Path) -> Result<String> {
    let modified = fs::metadata(tarball)
        .and_then(|m| m.modified())
        .with_context(|| format!("cannot stat {}", tarball.display()))?;
    let secs = modified
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let text = duct::cmd!("date", "-u", "-R", "-d", format!("@{secs}"))
        .read()
        .context("date failed")?;
    Ok(text.trim().to_string())
}

/// Runs make in the source tree with `O=` pointing at the object tree, its
/// output appended to the build log.
struct Make<'a> {
    src: &'a Path,
    out: &'a Path,
    log: &'a Path,
    timestamp: String,
}

impl Make<'_> {
    fn cmd(&self, args: &[&str]) -> duct::Expression {
        let mut argv = vec![
            "-C".to_string(),
            self.src.display().to_string(),
            format!("O={}", self.out.display()),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        duct::cmd("make", argv)
            // A make that runs xtask must not pass its jobserver down.
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL")
            .env("KBUILD_BUILD_USER", "carapace")
            .env("KBUILD_BUILD_HOST", "carapace")
            .env("KBUILD_BUILD_TIMESTAMP", &self.timestamp)
            // Otherwise every relink in a reused tree bumps `#N` in `uname -v`.
            .env("KBUILD_BUILD_VERSION", "1")
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        self.logged(self.cmd(args), &format!("make {}", args.join(" ")))
    }

    /// make's standard output, trimmed (e.g. `kernelrelease`).
    fn read(&self, args: &[&str]) -> Result<String> {
        let text = self
            .cmd(args)
            .stderr_null()
            .read()
            .with_context(|| format!("make {} failed", args.join(" ")))?;
        let text = text.trim();
        if text.is_empty() {
            bail!("make {} printed nothing", args.join(" "));
        }
        Ok(text.to_string())
    }

    /// Runs `cmd` with both outputs appended to the log; on failure the error
    /// quotes the end of the log.
    fn logged(&self, cmd: duct::Expression, what: &str) -> Result<()> {
        let mut file = OpenOptions::new()
            .append(true)
            .open(self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        writeln!(file, "\n### {what}")?;
        let from = file.metadata().map_or(0, |m| m.len());
        let handle = cmd
            .stderr_to_stdout()
            .stdout_file(file)
            .unchecked()
            .start()
            .with_context(|| format!("cannot start {what}"))?;
        // A long step says how far it got once a minute.
        let started = std::time::Instant::now();
        let mut said = 0;
        let status = loop {
            if let Some(output) = handle.try_wait()? {
                break output.status;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
            let minutes = started.elapsed().as_secs() / 60;
            if minutes > said {
                said = minutes;
                let text = fs::read(self.log).unwrap_or_default();
                let text = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default());
                eprintln!(
                    "kernel: {what}: {minutes} min, {} files compiled so far",
                    compiled(&text)
                );
            }
        };
        if !status.success() {
            let text = fs::read_to_string(self.log).unwrap_or_default();
            bail!(
                "{what} failed ({status}); the end of {}:\n{}",
                self.log.display(),
                tail(&text, LOG_TAIL_LINES)
            );
        }
        Ok(())
    }
}

/// How many files kbuild's log `text` says it compiled or assembled.
fn compiled(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("  CC ") || l.starts_with("  AS "))
        .count()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Moves the finished build into the cache entry `base/key` in one rename, so
/// a cache entry is never half written.
fn publish(base: &Path, key: &str, out: &Path, release: &str) -> Result<Kernel> {
    let tmp = base.join(format!("{key}.partial"));
    remove_if_present(&tmp)?;
    fs::create_dir_all(&tmp)?;
    let built = out.join("arch/x86/boot/bzImage");
    fs::copy(&built, tmp.join("bzImage"))
        .with_context(|| format!("cannot copy {}", built.display()))?;
    fs::copy(out.join(".config"), tmp.join("config"))?;
    fs::write(tmp.join("release"), format!("{release}\n"))?;
    let entry = base.join(key);
    // Only an incomplete entry can be here (a complete one returns early).
    remove_if_present(&entry)?;
    fs::rename(&tmp, &entry)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), entry.display()))?;
    cached(&entry)?.context("the cache entry just written is incomplete")
}

fn remove_if_present(path: &Path) -> Result<()> {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// What a fragment line asks for.
#[derive(Debug, PartialEq)]
pub enum Want {
    /// `CONFIG_X=value` (`y`, a number, a quoted string).
    Value(String),
    /// `# CONFIG_X is not set`.
    Unset,
}

/// The options a fragment (or a .config) sets, in order. Other comments and
/// blank lines are skipped.
pub fn fragment_options(text: &str) -> Vec<(String, Want)> {
    let mut options = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("# ")
            .and_then(|rest| rest.strip_suffix(" is not set"))
        {
            if is_option_name(name) {
                options.push((name.to_string(), Want::Unset));
            }
        } else if let Some((name, value)) = line.split_once('=') {
            if is_option_name(name) {
                options.push((name.to_string(), Want::Value(value.to_string())));
            }
        }
    }
    options
}

fn is_option_name(name: &str) -> bool {
    name.strip_prefix("CONFIG_").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// The fragment's options that the final .config does not honour, each with
/// what was asked and what the .config has.
pub fn missing_options(fragment: &str, config: &str) -> Vec<String> {
    let actual: HashMap<String, String> = fragment_options(config)
        .into_iter()
        .filter_map(|(name, want)| match want {
            Want::Value(v) => Some((name, v)),
            Want::Unset => None,
        })
        .collect();
    fragment_options(fragment)
        .into_iter()
        .filter_map(|(name, want)| {
            let have = actual.get(&name);
            match (&want, have) {
                (Want::Value(v), Some(h)) if v == h => None,
                (Want::Value(v), Some(h)) => Some(format!("{name}={v} (is {h})")),
                (Want::Value(v), None) => Some(format!("{name}={v} (is not set)")),
                (Want::Unset, None) => None,
                (Want::Unset, Some(h)) => Some(format!("{name} should not be set (is {h})")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_files_are_counted_from_kbuild_lines() {
        let log = "  SYNC    include/config/auto.conf\n  CC      init/main.o\n  AS      arch/x86/entry/entry_64.o\n  LD      vmlinux.o\n  CC      kernel/fork.o\n";
        assert_eq!(compiled(log), 3);
        assert_eq!(compiled(""), 0);
    }

    #[test]
    fn reports_every_option_the_config_dropped() {
        let fragment = "# header\n\nCONFIG_A=y\nCONFIG_B=y\n# CONFIG_MODULES is not set\n\
                        CONFIG_NR=64\nCONFIG_S=\"x\"\n";
        let good = "CONFIG_A=y\n# CONFIG_MODULES is not set\nCONFIG_B=y\nCONFIG_NR=64\n\
                    CONFIG_S=\"x\"\n";
        assert!(missing_options(fragment, good).is_empty());
        let bad = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_MODULES=y\nCONFIG_NR=32\n";
        assert_eq!(
            missing_options(fragment, bad),
            vec![
                "CONFIG_B=y (is not set)".to_string(),
                "CONFIG_MODULES should not be set (is y)".to_string(),
                "CONFIG_NR=64 (is 32)".to_string(),
                "CONFIG_S=\"x\" (is not set)".to_string(),
            ]
        );
    }

    #[test]
    fn ordinary_comments_are_not_options() {
        let opts = fragment_options("# CONFIG_X is set elsewhere\n# a comment\n#CONFIG_Y=y\n");
        assert!(opts.is_empty(), "{opts:?}");
    }

    #[test]
    fn pin_parses_and_rejects_junk() -> Result<()> {
        let pin = Pin::parse("# c\npackage=linux-source-6.12\n tarball = /usr/src/x.tar.xz\n")?;
        assert_eq!(
            pin,
            Pin {
                package: "linux-source-6.12".into(),
                tarball: PathBuf::from("/usr/src/x.tar.xz"),
            }
        );
        assert!(Pin::parse("package=a\n").is_err());
        assert!(Pin::parse("package=a\ntarball=b\nversion=c\n").is_err());
        Ok(())
    }

    #[test]
    fn cache_key_depends_on_every_input() {
        let k = cache_key(b"CONFIG_A=y\n", b"package=p\n", "1");
        assert_eq!(k.len(), 32);
        assert_ne!(k, cache_key(b"CONFIG_A=y\n", b"package=p\n", "2"));
        assert_ne!(k, cache_key(b"CONFIG_A=n\n", b"package=p\n", "1"));
        assert_ne!(k, cache_key(b"CONFIG_A=y\n", b"package=q\n", "1"));
        // Moving bytes from one input to the next changes the key.
        assert_ne!(k, cache_key(b"CONFIG_A=y\np", b"ackage=p\n", "1"));
    }

    #[test]
    fn the_checked_in_files_are_valid() -> Result<()> {
        let root = crate::workspace_root();
        let pin = Pin::parse(&fs::read_to_string(root.join(PIN))?)?;
        assert_eq!(pin.package, "linux-source-6.12");
        assert!(HOST_PACKAGES.contains(&pin.package.as_str()));
        let opts = fragment_options(&fs::read_to_string(root.join(FRAGMENT))?);
        assert!(opts.contains(&("CONFIG_MODULES".to_string(), Want::Unset)));
        for needed in [
            "CONFIG_DM_VERITY",
            "CONFIG_EROFS_FS",
            "CONFIG_MISC_FILESYSTEMS",
            "CONFIG_EFI_STUB",
            "CONFIG_VIRTIO_BLK",
            "CONFIG_SERIAL_8250_CONSOLE",
            "CONFIG_ACPI_BUTTON",
            "CONFIG_INPUT_EVDEV",
        ] {
            assert!(
                opts.contains(&(needed.to_string(), Want::Value("y".into()))),
                "{needed}"
            );
        }
        let mut names: Vec<&str> = opts.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "an option is listed twice");
        Ok(())
    }
}
