//! The disk image: our binaries and kernel staged into an extra tree, our
//! initrd as a cpio, and mkosi (configured in image/) to turn them into a GPT
//! disk with an ESP, two root slots with dm-verity, and the state partition.
//!
//! mkosi is only run again when one of its inputs changed: a hash over every
//! input is kept beside the output.

use crate::{binaries, cpio, host, kernel};
use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Which image: the release image, the test image that adds guest-side
/// probes (never shipped), or the test image as a later version for the
/// update tests: another version number, a marker file that says which
/// (`/usr/lib/carapace/test/release`), and possibly a [`Fault`] that keeps
/// the version from ever becoming healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Release,
    Test,
    TestUpdate {
        version: &'static str,
        fault: Option<Fault>,
    },
}

/// How a test version fails its trial boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Its API service is the crasher: the API never answers.
    ApiNeverAnswers,
    /// Its stage 2 (`/usr/lib/carapace/carapace-init` on the root) is a
    /// program that stands still: PID 1 hangs before `ready`, and only the
    /// watchdog stage 1 armed resets the machine.
    Pid1Hangs,
    /// Its network agent is a program that stands still: every agent runs,
    /// the API answers, but the NIC never gets an address.
    NicNeverUp,
}

impl Fault {
    fn slug(self) -> &'static str {
        match self {
            Fault::ApiNeverAnswers => "broken",
            Fault::Pid1Hangs => "hang",
            Fault::NicNeverUp => "no-nic",
        }
    }
}

impl Variant {
    pub fn name(self) -> String {
        match self {
            Variant::Release => "release".into(),
            Variant::Test => "test".into(),
            Variant::TestUpdate {
                version,
                fault: None,
            } => format!("test-{version}"),
            Variant::TestUpdate {
                version,
                fault: Some(fault),
            } => format!("test-{version}-{}", fault.slug()),
        }
    }

    fn is_test(self) -> bool {
        self != Variant::Release
    }

    /// The image version: the workspace's (or CARAPACE_VERSION), or the update's own.
    pub fn version(self) -> String {
        match self {
            Variant::TestUpdate { version, .. } => version.to_string(),
            _ => version(),
        }
    }
}

/// What `build` produced.
pub struct Image {
    pub disk: PathBuf,
    pub out_dir: PathBuf,
}

/// The version of the image: the workspace version, unless CARAPACE_VERSION says otherwise.
pub fn version() -> String {
    std::env::var("CARAPACE_VERSION").unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_string())
}

/// The binaries of every image: (package, binary). `carapace` is the root's
/// one binary (PID 1 and every agent); carapace-init alone is the initrd's
/// `/init`, which needs none of the agents.
const NODE_BINS: &[(&str, &str)] = &[("carapace", "carapace"), ("carapace-init", "carapace-init")];
/// The names the root's binary is run as, each a link to it in
/// /usr/lib/carapace (the services manifest runs these paths).
pub const PROGRAMS: &[&str] = &[
    "carapace-init",
    "carapace-api",
    "carapace-net",
    "carapace-bus",
    "carapace-update",
    "carapace-containers",
];
/// The guest-side probes only the test image carries.
const TEST_BINS: &[(&str, &str)] = &[
    ("qemu-tests", "carapace-test-checker"),
    ("qemu-tests", "carapace-test-crasher"),
    ("qemu-tests", "carapace-test-dbus"),
    ("qemu-tests", "carapace-test-idle"),
    ("qemu-tests", "carapace-test-flood"),
];

/// Builds (or reuses) the image of `variant`.
pub fn build(root: &Path, variant: Variant) -> Result<Image> {
    build_in(root, variant, &variant.name())
}

/// Builds `variant` a second time from scratch in a directory of its own and
/// requires the same image: the same root hash, slot A byte for byte, the
/// same UKI. Returns the root hash.
pub fn check_reproducible(root: &Path, variant: Variant) -> Result<String> {
    let first = build(root, variant)?;
    let again = format!("{}-again", variant.name());
    // No stamp: mkosi runs again whatever the inputs.
    std::fs::remove_file(root.join("build").join(&again).join("inputs.sha256")).ok();
    let second = build_in(root, variant, &again)?;
    let slot_a = |image: &Image| -> Result<(String, Vec<u8>, Vec<u8>)> {
        let mut disk = std::fs::File::open(&image.disk)?;
        let (_, parts) = carapace_disk::gpt::read(&mut disk, 512)
            .map_err(|e| anyhow::anyhow!("{}: {e}", image.disk.display()))?;
        let find = |t| {
            carapace_disk::gpt::partition_by_type(&parts, &t)
                .cloned()
                .context("slot A is missing")
        };
        let data = find(carapace_disk::gpt::types::ROOT_X86_64)?;
        let verity = find(carapace_disk::gpt::types::ROOT_VERITY_X86_64)?;
        let roothash = crate::reverity::named_by(&data, &verity).to_hex();
        let mut bytes = vec![0u8; usize::try_from(data.size_bytes(512))?];
        use std::io::{Read, Seek};
        disk.seek(std::io::SeekFrom::Start(data.first_lba * 512))?;
        disk.read_exact(&mut bytes)?;
        Ok((
            roothash,
            bytes,
            std::fs::read(image.out_dir.join("carapace.efi"))?,
        ))
    };
    let (hash1, root1, uki1) = slot_a(&first)?;
    let (hash2, root2, uki2) = slot_a(&second)?;
    if hash1 != hash2 {
        let differ = root1
            .chunks(4096)
            .zip(root2.chunks(4096))
            .filter(|(a, b)| a != b)
            .count();
        bail!(
            "two builds of the {} image differ: roothash {hash1} and {hash2} ({differ} of slot A's 4 KiB blocks differ)",
            variant.name()
        );
    }
    if root1 != root2 || uki1 != uki2 {
        bail!(
            "two builds of the {} image share roothash {hash1} but differ in slot A or the UKI",
            variant.name()
        );
    }
    std::fs::remove_dir_all(root.join("build").join(&again)).ok();
    Ok(hash1)
}

fn build_in(root: &Path, variant: Variant, dir_name: &str) -> Result<Image> {
    host::ensure_backports_packages(host::IMAGE_TOOLS)?;
    let kernel = kernel::build(root)?;
    let version = variant.version();
    let build = root.join("build");
    let vdir = build.join(dir_name);
    let out_dir = vdir.join("out");
    let disk = out_dir.join("carapace.raw");

    let mut wanted = NODE_BINS.to_vec();
    if variant.is_test() {
        wanted.extend_from_slice(TEST_BINS);
    }
    let built = binaries::build(root, &wanted)?;
    let (node_bins, test_bins) = built.split_at(NODE_BINS.len());
    let (node, init) = (&node_bins[0], &node_bins[1]);

    // Stage the extra tree.
    let tree = vdir.join("tree");
    if tree.exists() {
        std::fs::remove_dir_all(&tree)
            .with_context(|| format!("cannot clear {}", tree.display()))?;
    }
    let lib = tree.join("usr/lib/carapace");
    std::fs::create_dir_all(&lib)?;
    copy_exec(node, &lib.join("carapace"))?;
    for name in PROGRAMS {
        std::os::unix::fs::symlink("carapace", lib.join(name))
            .with_context(|| format!("cannot link {name} to carapace"))?;
    }
    let fault = match variant {
        Variant::TestUpdate { fault, .. } => fault,
        _ => None,
    };
    let manifest = match (variant, fault) {
        (Variant::Release, _) => "services.toml",
        (_, Some(Fault::ApiNeverAnswers)) => "services-test-broken.toml",
        (_, Some(Fault::NicNeverUp)) => "services-test-no-nic.toml",
        _ => "services-test.toml",
    };
    std::fs::copy(root.join("image").join(manifest), lib.join("services.toml"))
        .with_context(|| format!("cannot copy image/{manifest}"))?;
    // The key update bundles are signed with; made on first use, kept out of git.
    let key = crate::bundle::ensure_key(&root.join("keys"))?;
    std::fs::write(lib.join("update-key.pub"), format!("{key}\n"))?;
    if !test_bins.is_empty() {
        std::fs::create_dir_all(lib.join("test"))?;
        for bin in test_bins {
            let name = bin.file_name().context("binary has a name")?;
            copy_exec(bin, &lib.join("test").join(name))?;
        }
        std::fs::write(lib.join("test/release"), format!("{version}\n"))?;
    }
    if fault == Some(Fault::Pid1Hangs) {
        // Stage 1 (in the initrd) is the real one; what it execs is not.
        std::fs::remove_file(lib.join("carapace-init"))?;
        copy_exec(
            &lib.join("test/carapace-test-idle"),
            &lib.join("carapace-init"),
        )?;
    }
    let mut os_release = std::fs::read_to_string(root.join("image/os-release"))?;
    os_release.push_str(&format!("VERSION_ID={version}\n"));
    std::fs::write(tree.join("usr/lib/os-release"), os_release)?;
    let kdir = tree.join("usr/lib/modules").join(&kernel.release);
    std::fs::create_dir_all(&kdir)?;
    std::fs::copy(&kernel.bzimage, kdir.join("vmlinuz"))?;
    // With these present (and empty) mkosi does not run depmod for our
    // monolithic kernel.
    for f in [
        "modules.dep",
        "modules.dep.bin",
        "modules.symbols",
        "modules.symbols.bin",
    ] {
        std::fs::write(kdir.join(f), b"")?;
    }

    // The initrd: carapace-init as /init.
    let init_bytes = std::fs::read(init)?;
    let initrd = vdir.join("initrd.cpio");
    std::fs::write(&initrd, initrd_archive(&init_bytes))?;

    // The package-manager tree: the host's own mirror for bookworm.
    let pm_tree = build.join("pm-tree");
    write_package_manager_tree(&pm_tree)?;

    let key = input_hash(root, &tree, &initrd, &version)?;
    let stamp = vdir.join("inputs.sha256");
    if disk.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str()) {
        eprintln!("image: {} is up to date", disk.display());
        return Ok(Image { disk, out_dir });
    }
    std::fs::remove_file(&stamp).ok();
    std::fs::create_dir_all(&out_dir)?;
    for d in ["mkosi-cache", "mkosi-packages", "mkosi-workspace"] {
        std::fs::create_dir_all(build.join(d))?;
    }
    eprintln!(
        "image: building the {} image {version} with mkosi",
        variant.name()
    );
    let started = std::time::Instant::now();
    let log = vdir.join("mkosi.log");
    let args: Vec<std::ffi::OsString> = vec![
        "--force".into(),
        "--directory".into(),
        root.join("image").into(),
        "--image-version".into(),
        version.clone().into(),
        "--output".into(),
        "carapace".into(),
        "--output-dir".into(),
        out_dir.clone().into(),
        "--workspace-dir".into(),
        build.join("mkosi-workspace").into(),
        "--cache-dir".into(),
        build.join("mkosi-cache").into(),
        "--package-cache-dir".into(),
        build.join("mkosi-packages").into(),
        "--incremental".into(),
        "--package-manager-tree".into(),
        pm_tree.into(),
        "--extra-tree".into(),
        tree.into(),
        "--initrd".into(),
        initrd.clone().into(),
        "build".into(),
    ];
    let result = duct::cmd("mkosi", &args)
        .dir(root.join("image"))
        .stderr_to_stdout()
        .stdout_path(&log)
        .unchecked()
        .run()
        .context("cannot start mkosi")?;
    if !result.status.success() || !disk.exists() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "mkosi failed ({}); the end of {}:\n{}",
            result.status,
            log.display(),
            tail.join("\n")
        );
    }
    let (old, roothash) = crate::reverity::rehash(&disk)?;
    eprintln!(
        "image: slot A verified in {} KiB blocks, roothash={}",
        crate::reverity::BLOCK / 1024,
        roothash.to_hex()
    );
    let uki = out_dir.join("carapace.efi");
    install_uki(
        &disk,
        &uki,
        &format!("carapace_{version}.efi"),
        &kernel,
        &std::fs::read(&initrd)?,
        (&old, &roothash),
    )?;
    std::fs::write(&stamp, &key)?;
    eprintln!(
        "image: {} built in {:.0} s",
        disk.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(Image { disk, out_dir })
}

/// Assembles the UKI ([`crate::uki`]) from the stub mkosi.finalize left in
/// the output directory, with the command line mkosi put in its own UKI
/// (`old_new.0` replaced by the 4 KiB root hash `old_new.1`) and its
/// os-release, and puts it in place of mkosi's: at `uki` and in the ESP as
/// `EFI/Linux/<name>` (mtools, read back and compared).
fn install_uki(
    disk: &Path,
    uki: &Path,
    name: &str,
    kernel: &kernel::Kernel,
    initrd: &[u8],
    old_new: (
        &carapace_disk::root_hash::RootHash,
        &carapace_disk::root_hash::RootHash,
    ),
) -> Result<()> {
    let out_dir = uki.parent().context("the UKI has a directory")?;
    let theirs = std::fs::read(uki).with_context(|| format!("cannot read {}", uki.display()))?;
    let text = |section: &str| -> Result<String> {
        let bytes = carapace_disk::pe::section(&theirs, section)
            .map_err(|e| anyhow::anyhow!("mkosi's UKI: {e}"))?
            .with_context(|| format!("mkosi's UKI has no {section} section"))?;
        Ok(String::from_utf8_lossy(bytes)
            .trim_end_matches('\0')
            .to_string())
    };
    let (old, new) = old_new;
    let cmdline = text(".cmdline")?.replace(
        &format!("roothash={}", old.to_hex()),
        &format!("roothash={}", new.to_hex()),
    );
    ensure!(
        cmdline.contains(&format!("roothash={}", new.to_hex())),
        "mkosi's UKI command line {cmdline:?} names no roothash={}",
        old.to_hex()
    );
    let os_release = text(".osrel")?;
    let stub_path = out_dir.join("linuxx64.efi.stub");
    let stub = std::fs::read(&stub_path).with_context(|| {
        format!(
            "cannot read {} (left by mkosi.finalize)",
            stub_path.display()
        )
    })?;
    let ours = crate::uki::assemble(
        &stub,
        &crate::uki::Parts {
            os_release: os_release.as_bytes(),
            cmdline: &cmdline,
            uname: &kernel.release,
            initrd,
            linux: &std::fs::read(&kernel.bzimage)?,
        },
    )?;
    std::fs::write(uki, &ours)?;
    std::fs::remove_file(&stub_path)?;

    let mut file = std::fs::File::open(disk)?;
    let (_, parts) = carapace_disk::gpt::read(&mut file, 512)
        .map_err(|e| anyhow::anyhow!("{}: {e}", disk.display()))?;
    let esp = carapace_disk::gpt::partition_by_type(&parts, &carapace_disk::gpt::types::ESP)
        .context("the disk has no ESP")?;
    let image = format!("{}@@{}", disk.display(), esp.first_lba * 512);
    let target = format!("::EFI/Linux/{name}");
    let mtools = |args: &[&str]| {
        duct::cmd("mcopy", args)
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .stderr_to_stdout()
            .stdout_capture()
            .unchecked()
            .run()
    };
    let uki_arg = uki.to_string_lossy().into_owned();
    let put = mtools(&["-o", "-i", &image, &uki_arg, &target])?;
    ensure!(
        put.status.success(),
        "mcopy into the ESP failed: {}",
        String::from_utf8_lossy(&put.stdout)
    );
    let back = out_dir.join("uki-from-esp.efi");
    let back_arg = back.to_string_lossy().into_owned();
    let got = mtools(&["-o", "-n", "-i", &image, &target, &back_arg])?;
    ensure!(
        got.status.success() && std::fs::read(&back)? == ours,
        "the ESP's {target} is not the UKI just written: {}",
        String::from_utf8_lossy(&got.stdout)
    );
    std::fs::remove_file(&back)?;
    // mcopy frees the clusters of mkosi's UKI without clearing them: its
    // `roothash=` of the 512-byte tree would stay readable in the ESP.
    if old != new {
        let stale = format!("roothash={}", old.to_hex());
        let offset = esp.first_lba * 512;
        let mut bytes = vec![0u8; usize::try_from(esp.size_bytes(512))?];
        use std::io::{Read, Seek, Write};
        let mut disk_file = std::fs::File::options().read(true).write(true).open(disk)?;
        disk_file.seek(std::io::SeekFrom::Start(offset))?;
        disk_file.read_exact(&mut bytes)?;
        let mut at = 0;
        while let Some(found) = bytes[at..]
            .windows(stale.len())
            .position(|w| w == stale.as_bytes())
        {
            let start = at + found;
            disk_file.seek(std::io::SeekFrom::Start(offset + start as u64))?;
            disk_file.write_all(&vec![0u8; stale.len()])?;
            at = start + stale.len();
        }
        disk_file.sync_all()?;
    }
    Ok(())
}

fn copy_exec(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The initrd: `/init` is carapace-init; `/etc/initrd-release` tells it that
/// it is stage 1; `/dev/console` lets the kernel give it a console.
pub fn initrd_archive(init: &[u8]) -> Vec<u8> {
    use cpio::Entry;
    let release = b"NAME=\"Carapace initrd\"\nID=carapace\n";
    cpio::archive(&[
        Entry::Dir {
            path: "dev",
            mode: 0o755,
        },
        Entry::CharDev {
            path: "dev/console",
            mode: 0o600,
            major: 5,
            minor: 1,
        },
        Entry::Dir {
            path: "etc",
            mode: 0o755,
        },
        Entry::File {
            path: "etc/initrd-release",
            mode: 0o644,
            data: release,
        },
        Entry::Dir {
            path: "proc",
            mode: 0o755,
        },
        Entry::Dir {
            path: "sys",
            mode: 0o755,
        },
        Entry::Dir {
            path: "run",
            mode: 0o755,
        },
        Entry::Dir {
            path: "sysroot",
            mode: 0o755,
        },
        Entry::File {
            path: "init",
            mode: 0o755,
            data: init,
        },
    ])
}

/// Writes `etc/apt/sources.list.d/mkosi.sources` from the host's apt sources,
/// so mkosi uses the host's mirror instead of its built-in list.
fn write_package_manager_tree(dir: &Path) -> Result<()> {
    let sources = host::host_sources();
    let Some(main) = host::debian_mirror(&sources, "bookworm") else {
        bail!("no Debian bookworm source in the host's apt configuration: mkosi needs one");
    };
    let mut text = host::render_deb822(&main.uri, &["bookworm"], main.signed_by.as_deref());
    if let Some(sec) = host::security_mirror(&sources, "bookworm") {
        text.push('\n');
        text.push_str(&host::render_deb822(
            &sec.uri,
            &["bookworm-security"],
            sec.signed_by.as_deref(),
        ));
    }
    let list = dir.join("etc/apt/sources.list.d");
    std::fs::create_dir_all(&list)?;
    std::fs::write(list.join("mkosi.sources"), text)?;
    Ok(())
}

fn hash_path(h: &mut Sha256, path: &Path) -> Result<()> {
    if path.is_symlink() {
        h.update(b"symlink to ");
        h.update(std::fs::read_link(path)?.to_string_lossy().as_bytes());
    } else if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for e in entries {
            h.update(
                e.strip_prefix(path)
                    .unwrap_or(&e)
                    .to_string_lossy()
                    .as_bytes(),
            );
            hash_path(h, &e)?;
        }
    } else {
        h.update(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?);
    }
    Ok(())
}

fn input_hash(root: &Path, tree: &Path, initrd: &Path, version: &str) -> Result<String> {
    let mut h = Sha256::new();
    h.update(version.as_bytes());
    hash_path(&mut h, &root.join("image"))?;
    // How the disk is finished after mkosi (verity, UKI) is part of it too.
    for step in ["image.rs", "reverity.rs", "uki.rs", "cpio.rs"] {
        hash_path(&mut h, &root.join("xtask/src").join(step))?;
    }
    hash_path(&mut h, tree)?;
    hash_path(&mut h, initrd)?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
