//! A healthy boot: the verified root, read-only; the state partition, writable
//! and kept across an orderly power-off by the ACPI power button and a reboot
//! asked for through the API; status from the API; a setting committed
//! through the API in force at once and again after the power cycle; every
//! agent with only its manifest's capabilities, no_new_privs and its OOM
//! score, PID 1 out of the OOM killer's reach; the root verified in 4 KiB
//! blocks and a UKI the stub boots without a warning.

use qemu_tests::{find_uki_roothash, part_type, TestDisk};

fn line_with<'a>(transcript: &'a str, prefix: &str) -> Option<&'a str> {
    transcript.lines().find(|l| l.contains(prefix))
}

/// The kernel's numbers (include/uapi/linux/capability.h) of the
/// capabilities the test image's manifest gives its agents.
const CAPABILITY_NUMBERS: [(&str, u32); 7] = [
    ("CAP_SETGID", 6),
    ("CAP_SETUID", 7),
    ("CAP_LINUX_IMMUTABLE", 9),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_ADMIN", 12),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_SYS_TIME", 25),
];

/// The mask /proc/<pid>/status shows for `names`, as 16 hex digits.
fn caps_hex(names: &[&str]) -> String {
    let mask = names.iter().fold(0u64, |mask, name| {
        let bit = CAPABILITY_NUMBERS
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, bit)| *bit)
            .unwrap_or_else(|| panic!("{name} is not in CAPABILITY_NUMBERS"));
        mask | (1 << bit)
    });
    format!("{mask:016x}")
}

/// Every capability the kernel has, CAP_CHOWN (0) to CAP_CHECKPOINT_RESTORE (40).
const ALL_CAPABILITIES_HEX: &str = "000001ffffffffff";

/// What `checker: caps <service> pid …` says of one service, checked against
/// its manifest entry: effective, bounding and ambient sets exactly `caps`,
/// no_new_privs on, the OOM score as set.
fn assert_privileges(transcript: &str, service: &str, caps: &str, oom: i32) {
    assert_privileges_of(transcript, service, caps, caps, oom, true)
}

/// The same, with the effective set and no_new_privs given apart.
fn assert_privileges_of(
    transcript: &str,
    service: &str,
    caps: &str,
    effective: &str,
    oom: i32,
    no_new_privs: bool,
) {
    let prefix = format!("checker: caps {service} pid ");
    let line = line_with(transcript, &prefix)
        .unwrap_or_else(|| panic!("no privileges line for {service}:\n{transcript}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let value = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .copied()
            .unwrap_or("missing")
    };
    assert_eq!(value("eff"), effective, "{service}'s effective set: {line}");
    assert_eq!(value("bnd"), caps, "{service}'s bounding set: {line}");
    assert_eq!(value("amb"), caps, "{service}'s ambient set: {line}");
    assert_eq!(
        value("nnp"),
        if no_new_privs { "1" } else { "0" },
        "{service}'s no_new_privs: {line}"
    );
    assert_eq!(
        value("oom"),
        oom.to_string(),
        "{service}'s oom_score_adj: {line}"
    );
}

#[test]
fn boots_to_ready_on_a_read_only_verity_root_and_keeps_var_across_power_off_and_reboot(
) -> anyhow::Result<()> {
    let disk = TestDisk::fresh("boot")?;
    let (_, uki_hash) = find_uki_roothash(&disk)?;
    let root_a = disk.partition(part_type::ROOT_X86_64, None)?;
    let verity_a = disk.partition(part_type::ROOT_VERITY_X86_64, None)?;

    // First boot.
    let mut node = disk.boot()?;
    let stage1 = node.expect_line("carapace: stage 1 ")?;
    assert!(
        stage1.contains(" at ") && stage1.contains(" ms"),
        "{stage1}"
    );
    let ready = node.wait_ready()?;
    assert_eq!(
        ready.roothash, uki_hash,
        "ready reports the root hash of the UKI"
    );
    assert_eq!(ready.version, env!("CARGO_PKG_VERSION"));
    // The partitions stage 1 used are the ones named by the root hash.
    assert_eq!(root_a.uuid.replace('-', ""), uki_hash[..32]);
    assert_eq!(verity_a.uuid.replace('-', ""), uki_hash[32..]);
    // dm-verity checks the root in 4 KiB data and hash blocks (the
    // superblock's block sizes, at bytes 64 and 68).
    let sb = disk.read_at(verity_a.offset, 512)?;
    assert_eq!(
        &sb[..8],
        b"verity\0\0",
        "slot A's hash partition has a superblock"
    );
    let u32_at = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    assert_eq!(
        (u32_at(64), u32_at(68)),
        (4096, 4096),
        "4 KiB verity blocks"
    );
    // The UKI's sections do not overlap, so the stub has nothing to warn of.
    assert!(
        !node.transcript.contains("Overlapping PE sections"),
        "the stub warned of overlapping sections:\n{}",
        node.transcript
    );

    node.expect("checker: done")?;
    let t = node.transcript.clone();
    let root = line_with(&t, "checker: root ").unwrap_or_default();
    assert!(
        root.contains("/dev/dm-") || root.contains("/dev/mapper/"),
        "root is the verity device: {root}"
    );
    assert!(root.contains("erofs"), "root is erofs: {root}");
    assert!(
        root.split_whitespace()
            .any(|w| w == "ro" || w.starts_with("ro,")),
        "root is read-only: {root}"
    );
    assert!(
        t.contains("checker: crun runs: crun version "),
        "crun and its libraries are whole in the root:\n{t}"
    );
    let write = line_with(&t, "checker: write to / ").unwrap_or_default();
    assert!(write.contains("failed"), "a write to / must fail: {write}");
    assert!(
        t.contains("checker: var boots=1"),
        "first boot counts 1 on /var:\n{t}"
    );
    // The API reports the version and root hash the node booted.
    assert!(
        t.contains(&format!(
            "checker: api status version={} roothash={uki_hash}",
            ready.version
        )),
        "status names the running version and root hash:\n{t}"
    );
    // ... and the services' states that PID 1 publishes.
    let services = line_with(&t, "checker: api services ").unwrap_or_default();
    assert!(
        services.contains("api:running")
            && services.contains("checker:running")
            && services.contains("crasher:"),
        "status lists every service with its state: {services}"
    );
    // Each agent runs with only the capabilities of image/services-test.toml,
    // cannot gain more (no_new_privs), and the OOM killer takes containers
    // before any agent, and PID 1 never.
    assert_privileges(
        &t,
        "net",
        &caps_hex(&["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_SYS_TIME"]),
        -900,
    );
    assert_privileges(&t, "bus", &caps_hex(&[]), -900);
    assert_privileges(&t, "api", &caps_hex(&["CAP_SYS_ADMIN"]), -900);
    assert_privileges(
        &t,
        "update",
        &caps_hex(&["CAP_SYS_ADMIN", "CAP_LINUX_IMMUTABLE"]),
        -900,
    );
    // The container agent keeps every capability a container may be given,
    // without no_new_privs (each container decides it), and puts
    // CAP_SYS_RESOURCE out of effect itself so that the disk bound holds
    // for what it writes (it stays permitted, for crun).
    let all = u64::from_str_radix(ALL_CAPABILITIES_HEX, 16).expect("hex");
    let without_sys_resource = format!("{:016x}", all & !(1u64 << 24));
    assert_privileges_of(
        &t,
        "containers",
        ALL_CAPABILITIES_HEX,
        &without_sys_resource,
        -900,
        false,
    );
    assert_privileges(&t, "checker", &caps_hex(&[]), 0);
    if line_with(&t, "checker: caps dbus-probe pid ").is_some_and(|l| !l.contains("unreadable")) {
        assert_privileges(
            &t,
            "dbus-probe",
            &caps_hex(&["CAP_SETUID", "CAP_SETGID"]),
            0,
        );
    }
    assert!(
        t.contains("checker: pid1 oom -1000"),
        "PID 1 is never taken by the OOM killer:\n{t}"
    );
    // A setting changed through the API (its Unix socket) takes effect at once.
    assert!(
        t.contains("checker: api patch 200 commit 200"),
        "the API staged and committed:\n{t}"
    );
    assert!(
        t.contains("checker: api hostname=\"node-from-api\" uname=node-from-api"),
        "the new hostname is committed and in force:\n{t}"
    );

    // The power button shuts the node down in order.
    node.press_power_button()?;
    node.expect("carapace: shutting down")?;
    node.expect("/var unmounted cleanly")?;
    let (_, exited_ok) = node.wait_exit()?;
    assert!(exited_ok, "QEMU exits cleanly after the power-off");

    // The state filesystem is clean on the host.
    disk.check_var_is_clean()?;

    // Second boot: what was written to /var is still there. The checker then
    // asks for a reboot through the API, which signals PID 1: the node reboots
    // in order.
    let mut node = disk.boot()?;
    node.wait_ready()?;
    node.expect("checker: var boots=2")?;
    // The committed setting survived the power cycle and is applied again.
    node.expect("checker: api hostname=\"node-from-api\" uname=node-from-api")?;
    // (The checker may be stopped before it can print the API's answer: the
    // shutdown line, with the API's SIGTERM as reason, is the proof.)
    node.expect("carapace: shutting down (SIGTERM)")?;
    node.expect("/var unmounted cleanly")?;
    node.expect("carapace: reboot")?;
    // QEMU runs with -no-reboot: the guest's reboot(2) ends it.
    node.wait_exit()?;
    disk.check_var_is_clean()?;
    Ok(())
}
