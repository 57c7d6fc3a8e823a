//! The carapace-api daemon: serves the node API on the root-only Unix socket
//! /run/carapace/api.sock and, for remote callers with the token, over TLS
//! on TCP port 8443. The committed settings are kept in
//! /var/lib/carapace/settings.json; on first boot they come from the user
//! data (fw_cfg, else a config drive), which may also bring the TLS
//! certificate; otherwise one is generated and kept on /var.
//!
//! Neither listener can be starved (see [`crate::admission`]): the
//! soft descriptor limit is raised to the hard one at start and the
//! connection caps sized to fit it; the Unix socket is served on a thread
//! and runtime of its own, with its own D-Bus connection, so TCP load can
//! neither take its descriptors nor keep its accept loop from running.
//!
//! Console lines (after `carapace-api: `):
//! - `first boot: settings from user data (<source>)` / `first boot: no user data, default settings`
//!   / `first boot: user data refused: <why>: default settings`
//! - `listening on /run/carapace/api.sock`
//! - `listening on 0.0.0.0:8443 (TLS), certificate sha256 <64 hex digits>`

use crate::admission::Limits;
use crate::first_boot::{self, FirstBoot};
use crate::node::{ApiInfo, UserDataReport};
use crate::tls::{self, Identity};
use crate::updates::DbusUpdates;
use crate::{
    config_drive, local, remote, router, Access, AppState, Applier, NodeApplier, RealNode,
};
use carapace_model::{persist, Area, Settings, Store};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

const SOCKET: &str = carapace_contract::paths::API_SOCKET;
const SETTINGS: &str = carapace_contract::paths::SETTINGS_JSON;

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; the connection limits
/// that fit the descriptors the process then has.
fn limits() -> Limits {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let soft = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum,
        Err(e) => {
            eprintln!("carapace-api: cannot raise the descriptor limit: {e}");
            limit.current
        }
    };
    // None is "unlimited".
    let limits = Limits::default().within_descriptors(soft.unwrap_or(u64::MAX));
    if limits != Limits::default() {
        eprintln!(
            "carapace-api: {} descriptors allow only {} remote connections",
            soft.unwrap_or(0),
            limits.remote.total
        );
    }
    limits
}

pub fn main() -> std::process::ExitCode {
    let limits = limits();
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("carapace-api: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(limits)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("carapace-api: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The user data, from fw_cfg or else a config drive.
fn find_user_data() -> Result<Option<(&'static str, Vec<u8>)>, String> {
    if let Some(bytes) = first_boot::read_fw_cfg() {
        return Ok(Some(("fw_cfg", bytes)));
    }
    match config_drive::read() {
        None => Ok(None),
        Some(Ok(bytes)) => Ok(Some(("config-drive", bytes))),
        Some(Err(e)) => Err(e),
    }
}

/// No settings were ever committed: take them from the user data, commit
/// them, keep the TLS identity it brings, and say what happened.
fn first_boot(settings_file: &Path) -> (Settings, UserDataReport, Option<String>) {
    let first = match find_user_data() {
        Ok(found) => first_boot::from_user_data(found.as_ref().map(|(s, b)| (*s, b.as_slice()))),
        Err(why) => FirstBoot {
            settings: Settings::default(),
            tls: None,
            report: UserDataReport {
                source: Some("config-drive".into()),
                outcome: "refused".into(),
                error: Some(why),
            },
        },
    };
    match (
        &first.report.outcome[..],
        &first.report.source,
        &first.report.error,
    ) {
        ("applied", Some(source), _) => {
            eprintln!("carapace-api: first boot: settings from user data ({source})")
        }
        ("refused", _, Some(why)) => {
            eprintln!("carapace-api: first boot: user data refused: {why}: default settings")
        }
        _ => eprintln!("carapace-api: first boot: no user data, default settings"),
    }
    let mut tls_problem = None;
    if let Some(pair) = &first.tls {
        let kept = Identity::from_pem(&pair.certificate, &pair.key)
            .and_then(|id| tls::store(Path::new(tls::DIR), &id));
        if let Err(e) = kept {
            tls_problem = Some(format!("the certificate in the user data was refused: {e}"));
        }
    }
    if let Err(e) = persist::save(settings_file, &first.settings) {
        eprintln!("carapace-api: {e}");
    }
    if let Err(e) = first_boot::save_report(Path::new(first_boot::REPORT), &first.report) {
        eprintln!("carapace-api: {e}");
    }
    (first.settings, first.report, tls_problem)
}

/// Completes when SIGTERM (PID 1 stopping the service) has arrived.
async fn terminated(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|t| *t).await;
}

/// Starts the TLS listener; what status should say about it.
async fn start_remote(
    state: AppState,
    hostname: &str,
    earlier: Option<String>,
    limits: Limits,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (ApiInfo, Option<tokio::task::JoinHandle<()>>) {
    let names = vec!["carapace".to_string(), hostname.to_string()];
    let failed = |e: String| {
        let info = ApiInfo {
            tls_listen: None,
            certificate_sha256: None,
            tls_error: Some(e),
        };
        (info, None)
    };
    let (identity, problem) = match tls::load_or_create(Path::new(tls::DIR), &names) {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    let config = match identity.server_config() {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let listen = format!("0.0.0.0:{}", remote::DEFAULT_PORT);
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => return failed(format!("cannot listen on {listen}: {e}")),
    };
    let fingerprint = identity.fingerprint();
    let task = tokio::spawn(remote::serve_with_limits(
        listener,
        config,
        router(state, Access::Remote),
        limits,
        terminated(stop),
    ));
    eprintln!("carapace-api: listening on {listen} (TLS), certificate sha256 {fingerprint}");
    let tls_error = earlier.or(problem);
    if let Some(e) = &tls_error {
        eprintln!("carapace-api: {e}");
    }
    let info = ApiInfo {
        tls_listen: Some(listen),
        certificate_sha256: Some(fingerprint),
        tls_error,
    };
    (info, Some(task))
}

/// Serves the Unix socket on a thread of its own with its own runtime and
/// its own D-Bus connection (zbus runs its connection on the runtime that
/// made it): whatever load the TCP listener carries, this accept loop and
/// its requests get their turn. The receiver completes when it has stopped.
fn start_local(
    listener: std::os::unix::net::UnixListener,
    state: AppState,
    limits: Limits,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::sync::oneshot::Receiver<Result<(), String>>, String> {
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let state = state.with_updates(std::sync::Arc::new(DbusUpdates::default()));
    let run = move || -> Result<(), String> {
        let rt = runtime()?;
        rt.block_on(async {
            let listener = tokio::net::UnixListener::from_std(listener)
                .map_err(|e| format!("cannot serve {SOCKET}: {e}"))?;
            local::serve(
                listener,
                router(state, Access::Local),
                limits,
                terminated(stop),
            )
            .await;
            Ok(())
        })
    };
    std::thread::Builder::new()
        .name("api.sock".into())
        .spawn(move || {
            let _ = done_tx.send(run());
        })
        .map_err(|e| format!("cannot start the thread serving {SOCKET}: {e}"))?;
    Ok(done)
}

async fn serve(limits: Limits) -> Result<(), String> {
    // On SIGTERM both listeners stop accepting and finish the requests in
    // flight (the answer to a power request is one), for at most
    // STOP_GRACE; then the process ends.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        term.recv().await;
        let _ = stop_tx.send(true);
    });
    let settings_file = Path::new(SETTINGS);
    if let Some(dir) = settings_file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let (committed, report, tls_problem) = match persist::load(settings_file) {
        Ok(Some(s)) => (
            s,
            first_boot::load_report(Path::new(first_boot::REPORT)),
            None,
        ),
        Ok(None) => first_boot(settings_file),
        Err(e) => {
            // Never brick the node over a bad file: defaults, and say why.
            eprintln!("carapace-api: {e}: using the default settings");
            (
                Settings::default(),
                first_boot::load_report(Path::new(first_boot::REPORT)),
                None,
            )
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
    let hostname = committed.hostname.to_string();
    let node = Arc::new(RealNode {
        api: Mutex::new(ApiInfo::default()),
        user_data: report,
    });
    let state = AppState::new(
        Store::new(committed),
        settings_file.to_path_buf(),
        Box::new(applier),
        node.clone(),
    );
    let socket = Path::new(SOCKET);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket)
        .map_err(|e| format!("cannot listen on {SOCKET}: {e}"))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {SOCKET} to root: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot serve {SOCKET}: {e}"))?;
    let local = start_local(listener, state.clone(), limits, stop.clone())?;
    eprintln!("carapace-api: listening on {SOCKET}");
    // A node without its TLS listener still answers locally, and says why.
    let (info, remote) =
        start_remote(state.clone(), &hostname, tls_problem, limits, stop.clone()).await;
    if let Some(e) = info
        .tls_error
        .as_ref()
        .filter(|_| info.tls_listen.is_none())
    {
        eprintln!("carapace-api: no TLS listener: {e}");
    }
    if let Ok(mut api) = node.api.lock() {
        *api = info;
    }
    let grace = async {
        terminated(stop).await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    let both = async {
        let served = local
            .await
            .unwrap_or_else(|_| Err(format!("the thread serving {SOCKET} ended")));
        if let Some(remote) = remote {
            let _ = remote.await;
        }
        served
    };
    tokio::select! {
        served = both => served,
        () = grace => Ok(()),
    }
}

/// How long requests in flight may take to finish after SIGTERM (a log
/// follower never finishes by itself).
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
