//! Builds the binaries that run on the node: statically linked against glibc,
//! so the root needs no shared libraries and no dynamic loader.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds `bins` of `package` in release mode for the node; returns their paths.
pub fn build(root: &Path, package: &str, bins: &[&str]) -> Result<Vec<PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec![
        "build".to_string(),
        "--release".into(),
        "--quiet".into(),
        "--target".into(),
        TARGET.into(),
        "-p".into(),
        package.into(),
    ];
    for b in bins {
        args.push("--bin".into());
        args.push(b.to_string());
    }
    eprintln!("binaries: building {} ({})", package, bins.join(", "));
    // An explicit --target keeps these flags away from build scripts and from
    // the host build in target/debug, so neither rebuilds the other.
    duct::cmd(&cargo, &args)
        .dir(root)
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        .run()
        .with_context(|| format!("building {package} for the node failed"))?;
    Ok(bins
        .iter()
        .map(|b| root.join("target").join(TARGET).join("release").join(b))
        .collect())
}
