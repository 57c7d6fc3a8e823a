//! carapace-bus: the node's D-Bus system bus, the `bus` service. A thin
//! runner around the busd broker library: it listens on the standard system
//! bus socket, /run/dbus/system_bus_socket, authenticates peers by their
//! Unix credentials (EXTERNAL), and routes messages. Any local process may
//! connect; each service decides whom it answers (the update daemon answers
//! only root, checking the caller's uid through the bus). One policy is the
//! bus's own ([`name_policy`]): only root may own `org.carapace.Update1`; a
//! peer of another uid that takes it is disconnected and the name freed.
//!
//! Console lines (after `carapace-bus: `): `listening on <socket>`, or why it
//! cannot; `<unique name> (uid <n>) took <name>, which only root may own:
//! disconnected`.

mod name_policy;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The system bus socket every D-Bus client looks for first.
const SOCKET: &str = carapace_contract::paths::SYSTEM_BUS_SOCKET;

async fn serve() -> Result<(), String> {
    serve_at(SOCKET).await
}

/// Runs the bus on the socket `path` with its name policy, until either fails.
async fn serve_at(path: &str) -> Result<(), String> {
    let socket = Path::new(path);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    // A socket left by a previous run of the bus would stop the bind.
    let _ = std::fs::remove_file(socket);
    let address = format!("unix:path={path}");
    let mut bus = busd::bus::Bus::for_address(Some(&address))
        .await
        .map_err(|e| format!("cannot listen on {path}: {e}"))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("cannot open {path} to local clients: {e}"))?;
    println!("carapace-bus: listening on {path}");
    let policy = name_policy::enforce(bus.peers().clone(), &address);
    tokio::select! {
        result = bus.run() => result.map_err(|e| format!("the bus stopped: {e}")),
        result = policy => Err(match result {
            Ok(()) => "the name policy stopped".to_string(),
            Err(e) => format!("the name policy stopped: {e}"),
        }),
    }
}

pub fn main() -> std::process::ExitCode {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use zbus::fdo::DBusProxy;

    const UPDATE: &str = carapace_contract::update::NAME;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Starts the bus with its policy on a socket of its own, on a thread.
    fn start_bus(name: &str) -> String {
        let dir = std::env::temp_dir().join(format!("carapace-bus-{name}-{}", std::process::id()));
        let path = dir.join("bus").display().to_string();
        let serve_path = path.clone();
        std::thread::spawn(move || {
            let result = runtime().block_on(serve_at(&serve_path));
            eprintln!("test bus ended: {result:?}");
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&path).is_err() {
            assert!(
                Instant::now() < deadline,
                "the bus does not listen on {path}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        path
    }

    /// A connection to the bus at `path` made as the calling thread's uid.
    async fn connect(path: &str) -> zbus::Connection {
        let stream = std::os::unix::net::UnixStream::connect(path).expect("connect");
        zbus::connection::Builder::unix_stream(stream)
            .build()
            .await
            .expect("join the bus")
    }

    /// As uid 65534 (this thread only): takes the update daemon's name,
    /// then reports whether the bus still serves the connection after 2 s.
    fn take_the_name_as_nobody(path: String) -> (Result<(), String>, bool) {
        std::thread::spawn(move || {
            // Real and effective uid of this thread only (the raw system
            // call, not libc's process-wide one); the kernel records the
            // effective uid for the socket at connect.
            rustix::thread::set_thread_res_uid(
                rustix::process::Uid::from_raw(65534),
                rustix::process::Uid::from_raw(65534),
                rustix::process::Uid::ROOT,
            )
            .expect("become uid 65534 on this thread");
            runtime().block_on(async {
                let conn = connect(&path).await;
                let took = conn.request_name(UPDATE).await.map_err(|e| e.to_string());
                let deadline = Instant::now() + Duration::from_secs(2);
                let mut alive = true;
                while alive && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    alive = match DBusProxy::new(&conn).await {
                        Ok(proxy) => proxy.get_id().await.is_ok(),
                        Err(_) => false,
                    };
                }
                (took, alive)
            })
        })
        .join()
        .expect("the unprivileged client thread")
    }

    #[test]
    fn only_root_keeps_the_update_daemons_name() {
        let path = start_bus("policy");
        let (took, alive) = take_the_name_as_nobody(path.clone());
        // busd grants the name (it has no policy of its own) ...
        assert_eq!(took, Ok(()), "the request itself is answered");
        // ... and the policy takes it back at once, disconnecting the peer.
        assert!(!alive, "a non-root owner of {UPDATE} is disconnected");
        runtime().block_on(async {
            let root = connect(&path).await;
            let proxy = DBusProxy::new(&root).await.expect("proxy");
            let name = zbus::names::BusName::try_from(UPDATE).expect("name");
            assert!(
                proxy.get_name_owner(name.clone()).await.is_err(),
                "the name is free again"
            );
            root.request_name(UPDATE)
                .await
                .expect("root takes the name");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let owner = proxy.get_name_owner(name).await.expect("root keeps it");
            assert_eq!(
                Some(owner.as_str()),
                root.unique_name().map(|n| n.as_str()),
                "root owns it"
            );
        });
    }

    #[test]
    fn other_names_stay_open_to_every_uid() {
        let path = start_bus("open");
        let (took, alive) = std::thread::spawn(move || {
            rustix::thread::set_thread_res_uid(
                rustix::process::Uid::from_raw(65534),
                rustix::process::Uid::from_raw(65534),
                rustix::process::Uid::ROOT,
            )
            .expect("become uid 65534 on this thread");
            runtime().block_on(async {
                let conn = connect(&path).await;
                let took = conn
                    .request_name("org.example.Unprivileged")
                    .await
                    .map_err(|e| e.to_string());
                tokio::time::sleep(Duration::from_millis(500)).await;
                let alive = match DBusProxy::new(&conn).await {
                    Ok(proxy) => proxy.get_id().await.is_ok(),
                    Err(_) => false,
                };
                (took, alive)
            })
        })
        .join()
        .expect("the unprivileged client thread");
        assert_eq!(took, Ok(()));
        assert!(alive, "a name nobody guards is left alone");
    }
}
