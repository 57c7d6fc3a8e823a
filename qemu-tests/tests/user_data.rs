//! First-boot user data from QEMU's fw_cfg becomes the node's first settings;
//! broken user data does not brick the node.

use qemu_tests::TestDisk;

#[test]
fn user_data_from_fw_cfg_sets_the_first_settings() -> anyhow::Result<()> {
    let disk = TestDisk::fresh("user-data")?;
    let mut node = disk
        .boot_with_user_data("hostname = \"node-ud\"\n\n[api]\ntoken = \"0123456789abcdef\"\n")?;
    node.wait_ready()?;
    // The API daemon and the checker print in no fixed order relative to ready.
    node.wait_until("the API took the user data and the checker looked", |t| {
        t.contains("carapace-api: first boot: settings from user data")
            && t.contains("checker: done")
    })?;
    // The checker's first look, before it changes anything itself.
    let first = node
        .transcript
        .lines()
        .find(|l| l.contains("checker: api hostname="))
        .unwrap_or_default()
        .to_string();
    assert!(
        first.contains("checker: api hostname=\"node-ud\" uname=node-ud"),
        "{first}"
    );
    assert!(
        node.transcript
            .contains("checker: api user-data outcome=applied slot=a"),
        "status reports the user data taken and the slot booted"
    );
    node.press_power_button()?;
    node.wait_exit()?;
    Ok(())
}

#[test]
fn broken_user_data_still_boots_with_defaults_and_says_why() -> anyhow::Result<()> {
    let disk = TestDisk::fresh("bad-user-data")?;
    let mut node = disk.boot_with_user_data("hostname = 5\n")?;
    node.wait_ready()?;
    node.wait_until(
        "the API refused the user data and the checker looked",
        |t| t.contains("first boot: user data refused: ") && t.contains("checker: done"),
    )?;
    let t = node.transcript.clone();
    let refused = t
        .lines()
        .find(|l| l.contains("user data refused"))
        .unwrap_or_default();
    assert!(
        refused.contains("hostname"),
        "the error names the field: {refused}"
    );
    let first = t
        .lines()
        .find(|l| l.contains("checker: api hostname="))
        .unwrap_or_default();
    assert!(
        first.contains("checker: api hostname=\"carapace\" uname=carapace"),
        "{first}"
    );
    assert!(
        t.contains("checker: api user-data outcome=refused"),
        "status reports the refusal"
    );
    node.press_power_button()?;
    node.wait_exit()?;
    Ok(())
}
