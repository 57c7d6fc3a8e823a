//! `cargo xtask`: every chore of Carapace as Rust code — install host tools,
//! build the kernel, the binaries, the initrd and the disk image (mkosi), boot
//! it in QEMU, run the tests, and measure.
//!
//! It drives external tools (make, cargo, mkosi, qemu) through duct and never
//! runs on the node itself.

mod bench;
mod binaries;
mod cpio;
mod host;
mod image;
mod kernel;
mod qemu;
mod tidy;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  deps              install the host packages the build needs (as root)
  kernel            build the kernel from kernel-config/ (cached)
  image [--test]    build the disk image (release, or the test variant)
  run [--test] [--user-data FILE]
                    build what is stale and boot the image in QEMU on this terminal;
                    FILE (TOML) becomes the node's first settings
  test              run the unit tests, then build the test image and run qemu-tests
  bench boot [N]    boot the release image N times (default 5) and report medians and sizes
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
        }
        Some("kernel") => {
            let k = kernel::build(&root)?;
            println!("{}", k.bzimage.display());
        }
        Some("image") => {
            let img = image::build(&root, variant)?;
            println!("{}", img.disk.display());
        }
        Some("run") => {
            let user_data = args
                .iter()
                .position(|a| a == "--user-data")
                .map(|i| args.get(i + 1).map(PathBuf::from))
                .map(|f| f.context("--user-data needs a file"))
                .transpose()?;
            let img = image::build(&root, variant)?;
            qemu::run_interactive(&img, user_data.as_deref())?;
        }
        Some("test") => test(&root)?,
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("boot") => {
                let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
                bench::boot(&root, n)?;
            }
            _ => bail!("usage: cargo xtask bench boot [N]"),
        },
        Some("-h") | Some("--help") | Some("help") | None => print!("{USAGE}"),
        Some(other) => bail!("unknown command {other:?}\n{USAGE}"),
    }
    Ok(())
}

/// The whole test suite: host unit tests first (fast), then the real image in QEMU.
fn test(root: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    duct::cmd!(&cargo, "test", "--workspace", "--exclude", "qemu-tests")
        .dir(root)
        .run()?;
    let img = image::build(root, image::Variant::Test)?;
    duct::cmd!(&cargo, "test", "-p", "qemu-tests", "--", "--test-threads=2")
        .dir(root)
        .env("CARAPACE_TEST_IMAGE", &img.disk)
        .run()?;
    Ok(())
}
