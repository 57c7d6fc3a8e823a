//! What the root filesystem of the image holds, read on the host without
//! booting: only our binaries, the manifest, os-release, mount points, and
//! the OCI runtime crun with the shared libraries it loads — no shell, no
//! package manager, no perl, no other program.

use qemu_tests::{part_type, TestDisk};
use std::process::Command;

#[test]
fn the_root_holds_only_what_the_node_runs() -> anyhow::Result<()> {
    let disk = TestDisk::fresh("contents")?;
    let root = disk.partition(part_type::ROOT_X86_64, None)?;
    let fs = disk.dir.join("root.erofs");
    disk.extract(&root, &fs)?;
    let tree = disk.dir.join("root");
    let out = Command::new("fsck.erofs")
        .arg(format!("--extract={}", tree.display()))
        .arg(&fs)
        .output()?;
    assert!(
        out.status.success(),
        "fsck.erofs: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut files = Vec::new();
    let mut stack = vec![tree.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            } else {
                files.push(path.strip_prefix(&tree)?.to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    for forbidden in [
        "bin/sh",
        "usr/bin/sh",
        "usr/bin/bash",
        "usr/bin/dpkg",
        "usr/bin/apt",
        "usr/bin/perl",
        "usr/bin/ldd",
    ] {
        assert!(
            !files.iter().any(|f| f == forbidden),
            "{forbidden} must not be in the root: {files:?}"
        );
    }
    let runtime_library = |f: &str| f.starts_with("usr/lib/x86_64-linux-gnu/") && f.contains(".so");
    assert!(
        files.iter().all(|f| f.starts_with("usr/lib/carapace/")
            || f == "usr/lib/os-release"
            || f == "etc/os-release"
            || f == "etc/resolv.conf"
            || f == "usr/bin/crun"
            || runtime_library(f)
            || f == "usr/lib64/ld-linux-x86-64.so.2"
            || f == "lib"
            || f == "lib64"),
        "only our files, os-release, the resolver link, crun and its libraries: {files:?}"
    );
    assert!(files.iter().any(|f| f == "usr/bin/crun"), "the OCI runtime");
    assert!(
        files.iter().filter(|f| runtime_library(f)).count() < 30,
        "only the libraries crun loads: {files:?}"
    );
    assert_eq!(
        std::fs::read_link(tree.join("etc/resolv.conf"))?,
        std::path::PathBuf::from("../run/carapace/resolv.conf"),
        "the resolver configuration is the network agent's, under /run"
    );
    // One binary for PID 1 and every agent, run by the names linked to it.
    let lib = tree.join("usr/lib/carapace");
    assert!(
        std::fs::symlink_metadata(lib.join("carapace"))?.is_file(),
        "usr/lib/carapace/carapace is the node's binary"
    );
    for program in [
        "carapace-init",
        "carapace-api",
        "carapace-net",
        "carapace-bus",
        "carapace-update",
        "carapace-containers",
    ] {
        assert_eq!(
            std::fs::read_link(lib.join(program)).ok(),
            Some(std::path::PathBuf::from("carapace")),
            "usr/lib/carapace/{program} is a link to the node's binary"
        );
    }
    let binaries = files
        .iter()
        .filter(|f| f.starts_with("usr/lib/carapace/") && !f.starts_with("usr/lib/carapace/test/"))
        .filter(|f| {
            std::fs::symlink_metadata(tree.join(f)).is_ok_and(|m| m.is_file())
                && std::fs::read(tree.join(f)).is_ok_and(|b| b.starts_with(b"\x7fELF"))
        })
        .count();
    assert_eq!(binaries, 1, "one ELF binary of ours on the root: {files:?}");
    assert!(files.iter().any(|f| f == "usr/lib/carapace/services.toml"));
    for mount_point in ["proc", "sys", "dev", "run", "tmp", "var"] {
        assert!(
            tree.join(mount_point).is_dir(),
            "mount point /{mount_point} exists"
        );
    }
    Ok(())
}
