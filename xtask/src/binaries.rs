//! Builds the binaries that run on the node: statically linked against glibc,
//! so the root needs no shared libraries and no dynamic loader.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds the `(package, binary)` pairs in release mode for the node, in one
/// cargo invocation; returns the binaries' paths in the same order.
pub fn build(root: &Path, bins: &[(&str, &str)]) -> Result<Vec<PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec![
        "build".to_string(),
        "--release".into(),
        "--quiet".into(),
        "--target".into(),
        TARGET.into(),
    ];
    let mut packages: Vec<&str> = bins.iter().map(|(p, _)| *p).collect();
    packages.dedup();
    for p in &packages {
        args.push("-p".into());
        args.push(p.to_string());
    }
    for (_, b) in bins {
        args.push("--bin".into());
        args.push(b.to_string());
    }
    let names: Vec<&str> = bins.iter().map(|(_, b)| *b).collect();
    eprintln!("binaries: building {}", names.join(", "));
    // An explicit --target keeps these flags away from build scripts and from
    // the host build in target/debug, so neither rebuilds the other. The
    // binaries name their sources (in panic messages) by paths relative to
    // fixed prefixes, not by where this checkout and the crate cache happen
    // to be, so that another machine builds the same bytes.
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let flags = format!(
        "-C target-feature=+crt-static --remap-path-prefix={}=/carapace --remap-path-prefix={}=/cargo",
        root.display(),
        cargo_home.display()
    );
    duct::cmd(&cargo, &args)
        .dir(root)
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", flags)
        .run()
        .with_context(|| format!("building {} for the node failed", names.join(", ")))?;
    Ok(names
        .iter()
        .map(|b| root.join("target").join(TARGET).join("release").join(b))
        .collect())
}
