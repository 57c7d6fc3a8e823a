//! Boots that must stop: a tampered root, a missing or wrong `roothash=`, an
//! unmountable state partition.
//! Each stops with one clear line, powers off, and runs nothing from the root.

use qemu_tests::{find_file_block_in_root, find_uki_roothash, node_binary, part_type, TestDisk};

fn assert_stopped_before_stage2(transcript: &str) {
    assert!(
        !transcript.contains("carapace: stage 2"),
        "stage 2 must not run:\n{transcript}"
    );
    assert!(
        !transcript.contains("carapace: ready"),
        "the node must not become ready:\n{transcript}"
    );
    assert!(
        !transcript.contains("[checker]"),
        "no service may run:\n{transcript}"
    );
}

#[test]
fn tampered_root_refuses_to_boot() -> anyhow::Result<()> {
    let disk = TestDisk::fresh("tampered")?;
    // Flip one byte in the middle of the node's binary in slot A
    // (/usr/lib/carapace/carapace, which carapace-init links to).
    let at = find_file_block_in_root(&disk, &node_binary())? + 1234;
    let byte = disk.read_at(at, 1)?[0];
    disk.write_at(at, &[byte ^ 0x5a])?;

    let mut node = disk.boot()?;
    let failed = node.expect_line("carapace: boot failed: ")?;
    let (_, _) = node.wait_exit()?;
    let t = node.transcript.clone();
    assert!(
        t.contains("verity"),
        "the kernel's dm-verity error is on the console:\n{t}"
    );
    assert!(
        failed.contains("carapace-init"),
        "the line names what could not be read: {failed}"
    );
    assert_stopped_before_stage2(&t);
    Ok(())
}

#[test]
fn missing_roothash_stops_the_boot_with_a_clear_line() -> anyhow::Result<()> {
    let disk = TestDisk::fresh("no-roothash")?;
    let (at, _) = find_uki_roothash(&disk)?;
    // "roothash=" becomes "roothasX=": the command line has no roothash= any more.
    disk.write_at(at - 2, b"X")?;
    let mut node = disk.boot()?;
    let failed = node.expect_line("carapace: boot failed: ")?;
    assert!(failed.contains("no roothash="), "{failed}");
    node.wait_exit()?;
    assert_stopped_before_stage2(&node.transcript);
    Ok(())
}

#[test]
fn wrong_roothash_stops_the_boot_with_a_clear_line() -> anyhow::Result<()> {
    let disk = TestDisk::fresh("wrong-roothash")?;
    let (at, hash) = find_uki_roothash(&disk)?;
    let first = hash.as_bytes()[0];
    let other = if first == b'0' { b'1' } else { b'0' };
    disk.write_at(at, &[other])?;
    let mut node = disk.boot()?;
    let failed = node.expect_line("carapace: boot failed: ")?;
    assert!(failed.contains("not found"), "{failed}");
    node.wait_exit()?;
    assert_stopped_before_stage2(&node.transcript);
    Ok(())
}

#[test]
fn unmountable_state_partition_stops_the_boot_with_a_clear_line() -> anyhow::Result<()> {
    let disk = TestDisk::fresh("bad-var")?;
    // Zero the ext4 superblock (1 KiB at offset 1024) of the state partition.
    let var = disk.partition(part_type::VAR, None)?;
    disk.write_at(var.offset + 1024, &[0u8; 1024])?;
    let mut node = disk.boot()?;
    let failed = node.expect_line("carapace: boot failed: ")?;
    assert!(
        failed.contains("/sysroot/var") && failed.contains("ext4"),
        "the line names the state partition's mount: {failed}"
    );
    node.wait_exit()?;
    assert_stopped_before_stage2(&node.transcript);
    Ok(())
}
