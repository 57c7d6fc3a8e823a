//! The carapace-update daemon (the `update` service): serves
//! `org.carapace.Update1` on the system bus and, when the running version is
//! on trial (its UKI still carries a boot counter), blesses it once the node
//! is healthy — or asks PID 1 for a reboot when it is not healthy in time,
//! so that systemd-boot counts the try and, when none are left, falls back.
//!
//! Health: the node's agents (`net`, `bus`, `api`, `update`, or the names in
//! `CARAPACE_HEALTH_SERVICES`, comma-separated) are running as carapace-init
//! reports them, and the API answers `GET /v1/status` on its socket — twice
//! in a row, 2 s apart. The deadline is `CARAPACE_HEALTH_DEADLINE_S` seconds
//! (default 180).
//!
//! Console lines (after `carapace-update: `):
//! - `running <version> from slot <a|b>, blessed|on trial, fallback <v|none>`
//! - `serving org.carapace.Update1`
//! - `<version> is healthy: blessed`
//! - `<version> is not healthy after <n> s: rebooting to count the try`
//! - `update <version> was rolled back`

use carapace_update::dbus::{Update1, Update1Signals, NAME, PATH};
use carapace_update::engine::{Boot, Engine, Paths};
use std::sync::Arc;
use std::time::Duration;

const API_SOCKET: &str = "/run/carapace/api.sock";
const SERVICES: &str = "/run/carapace/services.json";

fn say(msg: &str) {
    println!("carapace-update: {msg}");
}

/// The agents that must run for the node to be healthy.
const AGENTS: &str = "net,bus,api,update";

/// Whether every one of `names` runs (from PID 1's services.json).
fn services_running(text: &str, names: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return false;
    };
    let Some(list) = v.as_array() else {
        return false;
    };
    names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .all(|name| {
            list.iter()
                .any(|s| s["name"] == name && s["state"] == "running")
        })
}

/// Whether the API answers its status on the local socket.
async fn api_answers() -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::UnixStream::connect(API_SOCKET).await.ok()?;
        s.write_all(b"GET /v1/status HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

async fn healthy() -> bool {
    let names = std::env::var("CARAPACE_HEALTH_SERVICES").unwrap_or_else(|_| AGENTS.into());
    services_running(
        &std::fs::read_to_string(SERVICES).unwrap_or_default(),
        &names,
    ) && api_answers().await
}

/// On a trial boot: bless when healthy, or reboot when the deadline passes.
async fn watch_trial(engine: Arc<Engine>, version: String) {
    let deadline = std::env::var("CARAPACE_HEALTH_DEADLINE_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180u64);
    let start = tokio::time::Instant::now();
    let mut good_in_a_row = 0;
    while start.elapsed() < Duration::from_secs(deadline) {
        if healthy().await {
            good_in_a_row += 1;
            if good_in_a_row >= 2 {
                match engine.bless() {
                    Ok(()) => say(&format!("{version} is healthy: blessed")),
                    Err(e) => say(&format!("error: {e}")),
                }
                return;
            }
        } else {
            good_in_a_row = 0;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    say(&format!(
        "{version} is not healthy after {deadline} s: rebooting to count the try"
    ));
    if let Some(init) = rustix::process::Pid::from_raw(1) {
        if let Err(e) = rustix::process::kill_process(init, rustix::process::Signal::TERM) {
            say(&format!("error: cannot ask PID 1 to reboot: {e}"));
        }
    }
}

/// Serves the interface on the system bus; the bus is a sibling service,
/// so a failure is tried again for a while.
async fn connect(engine: &Arc<Engine>) -> Result<zbus::Connection, String> {
    let mut last = String::new();
    for _ in 0..30 {
        let object = Update1 {
            engine: engine.clone(),
        };
        let built = carapace_update::dbus::system_bus()
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
        if std::path::Path::new("/run/dbus/system_bus_socket").exists() {
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
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["slot"].as_str().map(str::to_string))
        .unwrap_or_default();
    let version = boot.version.to_string();
    let (engine, mut changes) = Engine::new(paths, boot, &slot);
    let engine = Arc::new(engine);
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

fn main() -> std::process::ExitCode {
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
    fn every_agent_must_run_for_the_node_to_be_healthy() {
        let both = r#"[{"name":"api","state":"running"},{"name":"net","state":"running"},
                       {"name":"crasher","state":"restart-pending"}]"#;
        assert!(services_running(both, "api,net"), "others do not count");
        assert!(!services_running(both, "api,net,crasher"));
        assert!(!services_running(
            r#"[{"name":"api","state":"restart-pending"},{"name":"net","state":"running"}]"#,
            "api,net"
        ));
        assert!(
            !services_running("[]", "api"),
            "a missing agent is not running"
        );
        assert!(!services_running("{torn", "api"));
    }
}
