//! `cargo xtask`: every chore of Carapace as Rust code — install host tools,
//! build the kernel, the binaries, the initrd and the disk image (mkosi), boot
//! it in QEMU, run the tests, and measure.
//!
//! It drives external tools (make, cargo, mkosi, qemu) through duct and never
//! runs on the node itself.

mod bench;
mod bench_api;
mod bench_containers;
mod bench_update;
mod binaries;
mod bundle;
mod cpio;
mod host;
mod image;
mod kernel;
mod oci_layout;
mod qemu;
mod reverity;
mod tidy;
mod uki;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  deps              install the host packages the build needs (as root)
  kernel            build the kernel from kernel-config/ (cached)
  image [--test]    build the disk image (release, or the test variant)
  run [--test] [--user-data FILE] [--api-port PORT]
                    build what is stale and boot the image in QEMU on this terminal;
                    FILE (TOML) becomes the node's first settings; the node's API
                    is forwarded to 127.0.0.1:PORT (default 8443)
  test [FILTER]     run the unit tests, then build the test image (and the versions the
                    update tests install) and run qemu-tests (those whose name has FILTER)
  bundle [--test]   turn the built image into a signed update bundle under build/bundles/
  bench boot [N]    boot the release image N times (default 5) and report medians and sizes
  bench api [CLIENTS] [SECONDS]
                    measure the API over TLS: read and commit latency, then CLIENTS
                    (default 32) concurrent clients for SECONDS (default 30)
  bench update      measure an A/B update: bundle size, download-and-apply time,
                    reboot to blessed, and our verity check against veritysetup
  bench containers  commit to first log line (cold pull and cached), and the node's
                    memory in use with no containers and with ten idle ones
";

fn main() {
    if let Err(err) = real_main() {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

/// The root of the workspace (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let variant = if flag("--test") {
        image::Variant::Test
    } else {
        image::Variant::Release
    };
    match args.first().map(String::as_str) {
        Some("deps") => {
            host::ensure_backports_suite()?;
            host::ensure_backports_packages(host::IMAGE_TOOLS)?;
            host::ensure_packages(kernel::HOST_PACKAGES)?;
            host::ensure_packages(host::TEST_TOOLS)?;
        }
        Some("kernel") => {
            let k = kernel::build(&root)?;
            println!("{}", k.bzimage.display());
        }
        Some("image") => {
            let img = image::build(&root, variant)?;
            println!("{}", img.disk.display());
        }
        Some("bundle") => {
            let img = image::build(&root, variant)?;
            let version = variant.version();
            let uki = img.out_dir.join("carapace.efi");
            let dir = bundle::bundle(
                &img.disk,
                &uki,
                &version,
                &root.join("keys"),
                &root.join("build/bundles"),
            )?;
            println!("{}", dir.display());
        }
        Some("run") => {
            let user_data = args
                .iter()
                .position(|a| a == "--user-data")
                .map(|i| args.get(i + 1).map(PathBuf::from))
                .map(|f| f.context("--user-data needs a file"))
                .transpose()?;
            let api_port = match args.iter().position(|a| a == "--api-port") {
                Some(i) => args
                    .get(i + 1)
                    .and_then(|p| p.parse::<u16>().ok())
                    .context("--api-port needs a port number")?,
                None => qemu_tests::NODE_API_PORT,
            };
            let img = image::build(&root, variant)?;
            qemu::run_interactive(&img, user_data.as_deref(), api_port)?;
        }
        Some("test") => test(&root, args.get(1).map(String::as_str))?,
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("boot") => {
                let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
                bench::boot(&root, n)?;
            }
            Some("api") => {
                let clients = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
                let secs = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(30);
                bench_api::api(&root, clients, secs)?;
            }
            Some("update") => bench_update::update(&root)?,
            Some("containers") => bench_containers::containers(&root)?,
            _ => bail!(
                "usage: cargo xtask bench boot [N] | bench api [CLIENTS] [SECONDS] | bench update | bench containers"
            ),
        },
        Some("-h") | Some("--help") | Some("help") | None => print!("{USAGE}"),
        Some(other) => bail!("unknown command {other:?}\n{USAGE}"),
    }
    Ok(())
}

/// The whole test suite: host unit tests first (fast), then the real image in QEMU.
fn test(root: &Path, filter: Option<&str>) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    duct::cmd!(&cargo, "test", "--workspace", "--exclude", "qemu-tests")
        .dir(root)
        .run()?;
    let img = image::build(root, image::Variant::Test)?;
    let roothash = image::check_reproducible(root, image::Variant::Test)?;
    eprintln!("image: built twice, the same image: roothash={roothash}");
    let sources = update_sources(root)?;
    // The container tests push this image to a registry on the host.
    host::ensure_packages(host::TEST_TOOLS)?;
    let bins = binaries::build(root, &[("qemu-tests", "carapace-test-container")])?;
    let layout = oci_layout::write(&bins[0], &root.join("build/test-container-oci"))?;
    // The tests drive the node with the host's CLI, as an operator would.
    duct::cmd!(
        &cargo,
        "build",
        "-p",
        "carapace-ctl",
        "--bin",
        "carapace-ctl"
    )
    .dir(root)
    .run()?;
    let ctl = root.join("target/debug/carapace-ctl");
    // Every scenario runs even when one fails, so one run shows them all.
    let mut args = vec![
        "test",
        "-p",
        "qemu-tests",
        "--no-fail-fast",
        "--",
        "--test-threads=2",
    ];
    args.extend(filter);
    duct::cmd(&cargo, &args)
        .dir(root)
        .env("CARAPACE_TEST_IMAGE", &img.disk)
        .env("CARAPACE_CTL", &ctl)
        .env("CARAPACE_UPDATE_SOURCES", &sources)
        .env("CARAPACE_TEST_OCI_LAYOUT", &layout)
        .run()?;
    Ok(())
}

/// The update sources the update tests download from: `good/` offers the
/// test image as version 0.2.0 (with a changed file), `next/` as 0.4.0 (the
/// update after that, back into the first slot), and three versions that
/// never become healthy: `broken/` 0.3.0 (its API never answers), `hang/`
/// 0.3.1 (its PID 1 hangs before `ready`) and `no-nic/` 0.3.2 (its NIC never
/// gets an address); `expired/` is `good/` with an index whose signed expiry
/// has passed.
pub(crate) fn update_sources(root: &Path) -> Result<PathBuf> {
    use image::{Fault, Variant};
    let sources = root.join("build/updates");
    if sources.exists() {
        std::fs::remove_dir_all(&sources)?;
    }
    let keys = root.join("keys");
    for (dir, version, fault) in [
        ("good", "0.2.0", None),
        ("next", "0.4.0", None),
        ("broken", "0.3.0", Some(Fault::ApiNeverAnswers)),
        ("hang", "0.3.1", Some(Fault::Pid1Hangs)),
        ("no-nic", "0.3.2", Some(Fault::NicNeverUp)),
    ] {
        let variant = Variant::TestUpdate { version, fault };
        let img = image::build(root, variant)?;
        let version = variant.version();
        let uki = img.out_dir.join("carapace.efi");
        bundle::bundle(&img.disk, &uki, &version, &keys, &sources.join(dir))?;
    }
    // `expired/`: `good/` with its index signed again, expired an hour ago.
    duct::cmd!("cp", "-a", sources.join("good"), sources.join("expired")).run()?;
    bundle::resign_index(&sources.join("expired"), &keys, -3600)?;
    Ok(sources)
}
