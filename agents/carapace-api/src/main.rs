//! The carapace-api daemon: serves the settings API on the root-only Unix
//! socket /run/carapace/api.sock, with the committed settings kept in
//! /var/lib/carapace/settings.json (on first boot, taken from the user data). (The TLS listener for remote callers
//! comes with the rest of the node API.)

use carapace_api::first_boot::{self, UserData};
use carapace_api::{router, Access, AppState, Applier, NodeApplier, RealNode};
use carapace_model::{persist, Area, Settings, Store};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const SOCKET: &str = "/run/carapace/api.sock";
const SETTINGS: &str = "/var/lib/carapace/settings.json";

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("carapace-api: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("carapace-api: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// No settings were ever committed: take them from the user data, commit
/// them, and say what happened.
fn first_boot(settings_file: &Path) -> Settings {
    let (settings, outcome) = first_boot::initial_settings(first_boot::read_fw_cfg().as_deref());
    match outcome {
        UserData::Absent => eprintln!("carapace-api: first boot: no user data, default settings"),
        UserData::Applied => eprintln!("carapace-api: first boot: settings from user data"),
        UserData::Refused(why) => {
            eprintln!("carapace-api: first boot: user data refused: {why}: default settings")
        }
    }
    if let Err(e) = persist::save(settings_file, &settings) {
        eprintln!("carapace-api: {e}");
    }
    settings
}

async fn serve() -> Result<(), String> {
    let settings_file = Path::new(SETTINGS);
    if let Some(dir) = settings_file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let committed = match persist::load(settings_file) {
        Ok(Some(s)) => s,
        Ok(None) => first_boot(settings_file),
        Err(e) => {
            // Never brick the node over a bad file: defaults, and say why.
            eprintln!("carapace-api: {e}: using the default settings");
            Settings::default()
        }
    };
    // The committed settings take effect at every start, before the socket
    // answers: a client that reaches the API sees them in force.
    let all = [
        Area::Hostname,
        Area::Network,
        Area::Ntp,
        Area::Sysctl,
        Area::Api,
        Area::Updates,
    ];
    let mut applier = NodeApplier;
    if let Err(e) = applier.apply(&Settings::default(), &committed, &all) {
        eprintln!("carapace-api: applying the committed settings failed: {e}");
    }
    let state = AppState::new(
        Store::new(committed),
        settings_file.to_path_buf(),
        Box::new(applier),
        std::sync::Arc::new(RealNode),
    );
    let socket = Path::new(SOCKET);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)
        .map_err(|e| format!("cannot listen on {SOCKET}: {e}"))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {SOCKET} to root: {e}"))?;
    eprintln!("carapace-api: listening on {SOCKET}");
    axum::serve(listener, router(state, Access::Local))
        .await
        .map_err(|e| format!("serving {SOCKET} failed: {e}"))
}
