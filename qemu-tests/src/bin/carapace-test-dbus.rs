//! carapace-test-dbus: a guest-side probe of the update daemon's D-Bus
//! interface, in the test image only. It is a real D-Bus client (zbus) on
//! the node's system bus, reporting over the console:
//!
//! - `dbus-probe: as root: running=<v> slot=<s> state=<state>` — Status,
//!   called as root, answers;
//! - `dbus-probe: as uid 65534: refused: <error>` — the same call from an
//!   unprivileged process is refused (or `… ALLOWED`, which a test rejects);
//! - `dbus-probe: on trial: download refused: <error>` and `… apply refused:
//!   <error>` — when the running version is not blessed, both are tried as
//!   root and must be refused (`… ALLOWED`, which a test rejects);
//! - `dbus-probe: signal state=<state>` — each StateChanged signal whose state
//!   differs from the one before, for as long as the node runs.

use carapace_contract::dbus::{self, Update1ClientProxy};
use futures_util::StreamExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

const AS_NOBODY: &str = "--as-nobody";
const NOBODY: u32 = 65534;

fn say(msg: &str) {
    println!("dbus-probe: {msg}");
}

/// A proxy on the system bus, once the daemon owns its name (a call to a
/// name nobody owns yet is not answered by every broker).
async fn proxy() -> Result<(zbus::Connection, Update1ClientProxy<'static>), String> {
    let mut last = String::new();
    for _ in 0..240 {
        let attempt = async {
            let conn = dbus::system_bus()
                .build()
                .await
                .map_err(|e| e.to_string())?;
            if !dbus::daemon_present(&conn)
                .await
                .map_err(|e| e.to_string())?
            {
                return Err(format!(
                    "{} has no owner yet",
                    carapace_contract::update::NAME
                ));
            }
            let p = Update1ClientProxy::new(&conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok((conn, p))
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(found)) => return Ok(found),
            Ok(Err(e)) => last = e,
            Err(_) => last = "the bus did not answer within 10 s".into(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("the update daemon never appeared: {last}"))
}

/// The unprivileged half: one Status call, reported.
async fn as_nobody() {
    let uid = rustix::process::getuid().as_raw();
    let result = match proxy().await {
        Ok((_conn, p)) => match tokio::time::timeout(Duration::from_secs(30), p.status()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("no answer within 30 s".into()),
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(s) => say(&format!("as uid {uid}: ALLOWED: running={}", s.running)),
        Err(e) => say(&format!("as uid {uid}: refused: {e}")),
    }
}

async fn as_root() -> Result<(), String> {
    let (_conn, p) = proxy().await?;
    let mut signals = p
        .receive_state_changed()
        .await
        .map_err(|e| format!("cannot subscribe to StateChanged: {e}"))?;
    let s = p
        .status()
        .await
        .map_err(|e| format!("Status as root: {e}"))?;
    say(&format!(
        "as root: running={} slot={} state={}",
        s.running, s.slot, s.state
    ));
    if !s.blessed {
        match p.download(false).await {
            Ok(()) => say("on trial: download ALLOWED"),
            Err(e) => say(&format!("on trial: download refused: {e}")),
        }
        match p.apply().await {
            Ok(v) => say(&format!("on trial: apply ALLOWED: {v}")),
            Err(e) => say(&format!("on trial: apply refused: {e}")),
        }
    }

    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    match std::process::Command::new(me)
        .arg(AS_NOBODY)
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
    {
        Ok(st) if st.success() => {}
        Ok(st) => say(&format!("error: the unprivileged probe ended with {st}")),
        Err(e) => say(&format!("error: cannot start the unprivileged probe: {e}")),
    }

    let mut last = s.state;
    while let Some(signal) = signals.next().await {
        match signal.args() {
            Ok(args) => {
                if args.status.state != last {
                    last = args.status.state.clone();
                    say(&format!("signal state={last}"));
                }
            }
            Err(e) => say(&format!("error: a StateChanged signal I cannot read: {e}")),
        }
    }
    Ok(())
}

fn main() {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!("error: cannot start the runtime: {e}"));
            return;
        }
    };
    if std::env::args().nth(1).as_deref() == Some(AS_NOBODY) {
        runtime.block_on(as_nobody());
        return;
    }
    if let Err(e) = runtime.block_on(as_root()) {
        say(&format!("error: {e}"));
    }
}
