//! PID 1 as a supervisor: a crashing service is restarted with growing delays
//! and never takes PID 1 down; orphans are reaped.

use qemu_tests::TestDisk;

/// The `restarting in N ms` delays logged for `service`, in order.
fn restart_delays(transcript: &str, service: &str) -> Vec<u64> {
    transcript
        .lines()
        .filter(|l| l.contains(&format!("service {service} ")) && l.contains("restarting in "))
        .filter_map(|l| {
            l.split("restarting in ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn crashing_service_is_restarted_with_backoff_and_orphans_are_reaped() -> anyhow::Result<()> {
    let disk = TestDisk::fresh("supervision")?;
    let mut node = disk.boot()?;
    node.wait_ready()?;
    // The checker's report and the crasher's restarts interleave in no fixed order.
    node.wait_until(
        "the checker is done and the crasher restarted 5 times",
        |t| t.contains("checker: done") && t.contains("(restart 5)"),
    )?;
    let t = node.transcript.clone();

    let delays = restart_delays(&t, "crasher");
    assert!(delays.len() >= 5, "at least five restarts logged:\n{t}");
    assert!(
        delays.windows(2).all(|w| w[1] >= w[0]) && delays[4] > delays[0],
        "restart delays grow: {delays:?}"
    );
    assert!(
        t.contains("[crasher] crasher: started"),
        "service output reaches the console with its name"
    );

    // The orphaned grandchild of the checker was reaped by PID 1: gone, not a zombie.
    let orphan = t
        .lines()
        .find(|l| l.contains("checker: orphan "))
        .unwrap_or_default();
    assert!(orphan.contains("reaped"), "orphan reaped: {orphan}\n{t}");
    assert!(t.contains("checker: zombies=0"), "no zombies:\n{t}");

    // PID 1 is still in charge after all those crashes: it shuts down in order.
    node.press_power_button()?;
    node.expect("carapace: shutting down")?;
    node.expect("/var unmounted cleanly")?;
    let (_, ok) = node.wait_exit()?;
    assert!(ok);
    Ok(())
}
