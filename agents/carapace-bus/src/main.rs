//! carapace-bus: the node's D-Bus system bus, the `bus` service. A thin
//! runner around the busd broker library: it listens on the standard system
//! bus socket, /run/dbus/system_bus_socket, authenticates peers by their
//! Unix credentials (EXTERNAL), and routes messages. Any local process may
//! connect; each service decides whom it answers (the update daemon answers
//! only root, checking the caller's uid through the bus).
//!
//! Console lines (after `carapace-bus: `): `listening on <socket>`, or why it
//! cannot.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The system bus socket every D-Bus client looks for first.
const SOCKET: &str = "/run/dbus/system_bus_socket";

async fn serve() -> Result<(), String> {
    let socket = Path::new(SOCKET);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    // A socket left by a previous run of the bus would stop the bind.
    let _ = std::fs::remove_file(socket);
    let mut bus = busd::bus::Bus::for_address(Some(&format!("unix:path={SOCKET}")))
        .await
        .map_err(|e| format!("cannot listen on {SOCKET}: {e}"))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("cannot open {SOCKET} to local clients: {e}"))?;
    println!("carapace-bus: listening on {SOCKET}");
    bus.run().await.map_err(|e| format!("the bus stopped: {e}"))
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("carapace-bus: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("carapace-bus: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
