//! `cargo xtask run`: boots an image in QEMU with the serial console (and the
//! QEMU monitor, behind ctrl-a c) on this terminal.

use crate::image::Image;
use anyhow::{Context, Result};
use std::path::Path;

/// Boots `image` on this terminal; `user_data` (a TOML file) is handed to the
/// node through fw_cfg as `opt/carapace/user-data`, read on its first boot.
///
/// The node's API port is forwarded to `api_port` on the host's loopback.
pub fn run_interactive(image: &Image, user_data: Option<&Path>, api_port: u16) -> Result<()> {
    let vars = image.out_dir.join("OVMF_VARS.fd");
    if !vars.exists() {
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
            .context("cannot copy the OVMF variables (package ovmf)")?;
    }
    // The node boots a copy of the image, so the image stays pristine for
    // benchmarks and bundles; the copy (and its /var) lives until the image
    // is rebuilt.
    let node_disk = image.out_dir.join("node.raw");
    let stale = match (
        std::fs::metadata(&node_disk),
        std::fs::metadata(&image.disk),
    ) {
        (Ok(node), Ok(img)) => node.modified()? < img.modified()?,
        _ => true,
    };
    if stale {
        duct::cmd!("cp", "--sparse=always", &image.disk, &node_disk)
            .run()
            .context("cannot copy the image for the node")?;
    }
    let mut cmd = qemu_tests::qemu_command(&node_disk, &vars, None, api_port, &[]);
    // The harness uses -serial stdio and -no-reboot; interactively we want the
    // monitor multiplexed on the terminal and reboots to stay in QEMU.
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-serial" => {
                out.push("-serial".into());
                out.push("mon:stdio".into());
                i += 2;
                continue;
            }
            "-no-reboot" => {}
            a => out.push(a.to_string()),
        }
        i += 1;
    }
    eprintln!(
        "run: booting {} (ctrl-a x quits QEMU; ctrl-a c, then system_powerdown, powers the node off in order)\n\
         run: the node's API is forwarded to https://127.0.0.1:{api_port}",
        node_disk.display()
    );
    if let Some(file) = user_data {
        if !file.exists() {
            anyhow::bail!("user data file {} does not exist", file.display());
        }
        out.push("-fw_cfg".into());
        out.push(format!(
            "name=opt/carapace/user-data,file={}",
            file.display()
        ));
    }
    cmd = std::process::Command::new(cmd.get_program());
    cmd.args(&out);
    let status = cmd.status().context("cannot start qemu-system-x86_64")?;
    if !status.success() {
        anyhow::bail!("qemu exited with {status}");
    }
    Ok(())
}
