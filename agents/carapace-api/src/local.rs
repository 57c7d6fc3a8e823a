//! The root-only Unix socket listener (`Access::Local`): the same router
//! without the token layer, its own budget of connections
//! ([`crate::admission::LOCAL_TOTAL`], a silent connection giving its place
//! to a newer one) and the same header timeout as TCP. The daemon serves it
//! on a thread and runtime of its own, so that nothing the TCP listener
//! does — thousands of strangers, slow handshakes — can keep it from
//! accepting.

use crate::admission::{Connections, Limits, Peer, Pool};
use axum::Router;
use std::time::Duration;
use tokio::net::UnixListener;

/// Serves `app` on `listener` until `shutdown` completes, then waits for
/// the connections to finish what they are answering.
pub async fn serve(
    listener: UnixListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let connections = Connections::new(limits);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("carapace-api: cannot accept a connection on the socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(ticket) = connections.admit(Pool::Local, Peer::Local) else {
            continue;
        };
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(crate::connection::serve(
            stream,
            app,
            ticket,
            limits.header_timeout,
            watcher,
        ));
    }
    drop(listener);
    graceful.shutdown().await;
}
