//! The TCP listener for remote callers: TLS (rustls) in front of the same
//! router, with the bearer-token layer ([`crate::Access::Remote`]). Every
//! connection is admitted against its budget first ([`crate::admission`]:
//! loopback peers have their own, remote peers a total and a per-peer cap,
//! and a connection that has not sent a request gives its place to a newer
//! one); one over its budget is accepted and closed at once, so the
//! kernel's backlog never fills. Each connection is its own task: a
//! handshake that does not finish within the handshake timeout, or a
//! request head that does not arrive within the header timeout (also the
//! idle timeout between requests), ends it, so a slow or silent client holds
//! nothing but its own socket, and that only for a while. When `shutdown`
//! completes (SIGTERM from PID 1), the listener stops accepting and every
//! connection finishes the request it is serving — the answer to a power
//! request included — before it closes.

use crate::admission::{self, Connections, Limits};
use axum::Router;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The port remote callers use unless told otherwise.
pub const DEFAULT_PORT: u16 = 8443;
/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = admission::HANDSHAKE_TIMEOUT;

/// Serves `app` over TLS on `listener` with the default [`Limits`] until
/// `shutdown` completes, then waits for the connections to finish what they
/// are answering.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    serve_with_limits(listener, config, app, Limits::default(), shutdown).await;
}

/// [`serve`] with the given caps and timeouts.
pub async fn serve_with_limits(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let connections = Connections::new(limits);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: wait a little, go on.
                eprintln!("carapace-api: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (pool, who) = admission::classify(peer.ip());
        // Over its budget: closed now (no log line per stranger).
        let Some(ticket) = connections.admit(pool, who) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
            let tls = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(tls)) => tls,
                    // A failed or slow handshake is the client's problem.
                    _ => return,
                },
                () = ticket.evicted() => return,
            };
            crate::connection::serve(tls, app, ticket, limits.header_timeout, watcher).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
