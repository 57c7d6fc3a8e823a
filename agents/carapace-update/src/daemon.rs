//! The carapace-update daemon (the `update` service): serves
//! `org.carapace.Update1` on the system bus and, when the running version is
//! on trial (its UKI still carries a boot counter), blesses it once the node
//! is healthy — or asks PID 1 for a reboot when it is not healthy in time,
//! so that systemd-boot counts the try and, when none are left, falls back.
//!
//! Health is defined in one place, `crate::health` (the agents
//! run steadily, the API answers on its socket and over TCP with the node's
//! own certificate, the NIC has an address, every declared container runs
//! or finished as its restart policy allows); a trial version is blessed
//! when it holds twice in a row, 2 s apart. The deadline is
//! `CARAPACE_HEALTH_DEADLINE_S` seconds (default 180) counted from boot, so
//! a restart of the daemon does not extend it; a blessing that fails is
//! retried until it is done. Download and apply are refused while the
//! running version is on trial. On SIGTERM a running download is stopped
//! and its slot left `_empty`.
//!
//! Console lines (after `carapace-update: `):
//! - `running <version> from slot <a|b>, blessed|on trial, fallback <v|none>`
//! - `<version> is downloaded and verified: staged for apply` (a download
//!   kept across a reboot)
//! - `serving org.carapace.Update1`
//! - `<version>: healthy` or `<version>: <what fails>; …` (each time it changes)
//! - `<version> is healthy: blessed`
//! - `cannot bless <version> yet: <error>: trying again in 5 s`
//! - `<version> is not healthy after <n> s (<what fails>): rebooting to count the try`
//! - `update <version> was rolled back`

use crate::dbus::{Update1, Update1Signals};
use crate::engine::{Boot, Engine, Paths};
use crate::health;
use carapace_contract::power::{signal_for, PowerAction};
use carapace_contract::update::{NAME, PATH};
use carapace_contract::{boot, paths};
use std::sync::Arc;
use std::time::Duration;

fn say(msg: &str) {
    println!("carapace-update: {msg}");
}

/// Time since the machine booted (CLOCK_BOOTTIME): the health deadline is
/// measured from boot, so a daemon that restarts does not start it over.
fn since_boot() -> Duration {
    Duration::from_millis(carapace_contract::clock::ms_since_boot())
}

/// One round of the trial watch, decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Not healthy yet, time is left: look again.
    Wait,
    /// Healthy twice in a row: bless (and retry the blessing until it is done).
    Bless,
    /// Not healthy when the deadline from boot passed: reboot to count the try.
    GiveUp,
}

fn verdict(healthy_in_a_row: u32, since_boot: Duration, deadline: Duration) -> Verdict {
    if healthy_in_a_row >= 2 {
        Verdict::Bless
    } else if since_boot >= deadline {
        Verdict::GiveUp
    } else {
        Verdict::Wait
    }
}

/// On a trial boot: bless when healthy, or reboot when the deadline passes.
/// A blessing that fails (the ESP cannot be written) is tried again until it
/// is done; once healthy, the node never reboots for the deadline.
async fn watch_trial(engine: Arc<Engine>, version: String) {
    let deadline = Duration::from_secs(
        std::env::var("CARAPACE_HEALTH_DEADLINE_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(180u64),
    );
    let probes = health::Probes::from_env();
    let mut good_in_a_row = 0;
    let mut blessing = false;
    let mut last = String::new();
    loop {
        if !blessing {
            let assessment = health::assess(&probes).await;
            if assessment.is_healthy() {
                good_in_a_row += 1;
            } else {
                good_in_a_row = 0;
            }
            // Said when what fails changes, not when only its numbers do.
            let now = assessment.to_string();
            if shape(&now) != shape(&last) {
                say(&format!("{version}: {now}"));
            }
            last = now;
        }
        match verdict(good_in_a_row, since_boot(), deadline) {
            Verdict::Wait => {}
            Verdict::Bless => {
                blessing = true;
                match engine.bless() {
                    Ok(()) => {
                        say(&format!("{version} is healthy: blessed"));
                        return;
                    }
                    Err(e) => say(&format!(
                        "cannot bless {version} yet: {e}: trying again in 5 s"
                    )),
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Verdict::GiveUp => {
                say(&format!(
                    "{version} is not healthy after {} s ({last}): rebooting to count the try",
                    deadline.as_secs()
                ));
                if let Some(init) = rustix::process::Pid::from_raw(1) {
                    if let Err(e) =
                        rustix::process::kill_process(init, signal_for(PowerAction::Reboot))
                    {
                        say(&format!("error: cannot ask PID 1 to reboot: {e}"));
                    }
                }
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// An assessment without its numbers (seconds running, restarts): what
/// fails, for deciding whether to say it again.
fn shape(assessment: &str) -> String {
    assessment.chars().filter(|c| !c.is_ascii_digit()).collect()
}

/// On SIGTERM (an orderly shutdown): stop a running download at its next
/// chunk and wait, a few seconds at most, for the engine to be idle. A
/// download stopped this way leaves its slot `_empty` (it is marked so
/// before the first byte), and the GPT writes that give it an identity run
/// to their end before the signal is looked at.
async fn stop_on_sigterm(engine: Arc<Engine>) {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        say("error: cannot listen for SIGTERM");
        return;
    };
    term.recv().await;
    engine.cancel_running();
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while engine.status().busy() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if engine.status().busy() {
        say("stopping with an operation still running: its slot stays _empty");
    }
    std::process::exit(0);
}

/// Serves the interface on the system bus; the bus is a sibling service,
/// so a failure is tried again for a while.
async fn connect(engine: &Arc<Engine>) -> Result<zbus::Connection, String> {
    let mut last = String::new();
    for _ in 0..30 {
        let object = Update1 {
            engine: engine.clone(),
        };
        let built = carapace_contract::dbus::system_bus()
            .name(NAME)
            .serve_at(PATH, object)
            .build()
            .await;
        match built {
            Ok(conn) => return Ok(conn),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(format!("cannot serve {NAME} on the system bus: {last}"))
}

async fn wait_for_bus() {
    for _ in 0..100 {
        if std::path::Path::new(paths::SYSTEM_BUS_SOCKET).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn serve() -> Result<(), String> {
    let paths = Paths::default();
    let boot = Boot::read(&paths.boot_json)?;
    let slot = std::fs::read_to_string(&paths.boot_json)
        .ok()
        .and_then(|t| boot::Boot::parse(&t).ok())
        .and_then(|b| b.slot)
        .unwrap_or_default();
    let version = boot.version.to_string();
    let (engine, mut changes) = Engine::new(paths, boot, &slot);
    let engine = Arc::new(engine);
    match engine.repair_gpt() {
        Ok(Some(what)) => say(&what),
        Ok(None) => {}
        Err(e) => say(&format!("error: {e}")),
    }
    let running = match engine.survey() {
        Ok(entry) => entry,
        Err(e) => {
            say(&format!("error: cannot read the ESP: {e}"));
            None
        }
    };
    let status = engine.status();
    say(&format!(
        "running {version} from slot {slot}, {}, fallback {}",
        if status.blessed {
            "blessed"
        } else {
            "on trial"
        },
        if status.fallback.is_empty() {
            "none"
        } else {
            &status.fallback
        }
    ));
    if !status.rolled_back.is_empty() {
        say(&format!("update {} was rolled back", status.rolled_back));
    }
    match engine.restore_staged() {
        Ok(Some(v)) => say(&format!("{v} is downloaded and verified: staged for apply")),
        Ok(None) => {}
        Err(e) => say(&format!("error: {e}")),
    }
    tokio::spawn(stop_on_sigterm(engine.clone()));
    if running.as_ref().is_some_and(|e| e.counter.is_some()) {
        tokio::spawn(watch_trial(engine.clone(), version));
    }

    wait_for_bus().await;
    let conn = connect(&engine).await?;
    say(&format!("serving {NAME}"));
    let iface = conn
        .object_server()
        .interface::<_, Update1>(PATH)
        .await
        .map_err(|e| e.to_string())?;
    // Every change of the status goes out as a signal.
    while changes.changed().await.is_ok() {
        let status = changes.borrow_and_update().clone();
        if let Err(e) = iface.state_changed(status).await {
            say(&format!("error: cannot signal a state change: {e}"));
        }
    }
    Ok(())
}

pub fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("carapace-update: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("carapace-update: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_counts_from_boot_and_health_wins_over_it() {
        let deadline = Duration::from_secs(180);
        let at = Duration::from_secs;
        assert_eq!(verdict(0, at(10), deadline), Verdict::Wait);
        assert_eq!(verdict(1, at(179), deadline), Verdict::Wait);
        assert_eq!(verdict(0, at(180), deadline), Verdict::GiveUp);
        assert_eq!(verdict(2, at(10), deadline), Verdict::Bless);
        assert_eq!(
            verdict(2, at(999), deadline),
            Verdict::Bless,
            "healthy past the deadline still blesses"
        );
        // A daemon that starts late in the boot has only what is left.
        assert!(since_boot() > Duration::ZERO);
    }
}
