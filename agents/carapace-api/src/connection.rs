//! Serving one admitted connection (TLS or the Unix socket) with HTTP/1.1:
//! hyper with a timer, so that the header-read timeout holds — on a new
//! connection and between the requests of a kept-alive one, which makes it
//! the idle timeout as well (hyper 1 starts it whenever it waits for a
//! request head). The connection closes early when a newer one took its
//! place ([`crate::admission::Ticket::evicted`]); its first request marks
//! it as serving, which keeps its place.

use crate::admission::Ticket;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;

/// The router as a hyper service that tells the ticket when a request arrives.
struct Served {
    app: TowerToHyperService<Router>,
    ticket: Arc<Ticket>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Served {
    type Response = <TowerToHyperService<Router> as hyper::service::Service<
        hyper::Request<Incoming>,
    >>::Response;
    type Error =
        <TowerToHyperService<Router> as hyper::service::Service<hyper::Request<Incoming>>>::Error;
    type Future =
        <TowerToHyperService<Router> as hyper::service::Service<hyper::Request<Incoming>>>::Future;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.ticket.served();
        self.app.call(req)
    }
}

/// Serves HTTP/1.1 on `io` until the client or the server closes it, the
/// header timeout passes, or the ticket is evicted; `watcher` lets a
/// graceful shutdown finish the request in flight.
pub async fn serve<IO>(
    io: IO,
    app: Router,
    ticket: Ticket,
    header_timeout: Duration,
    watcher: Watcher,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ticket = Arc::new(ticket);
    let service = Served {
        app: TowerToHyperService::new(app),
        ticket: ticket.clone(),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::select! {
        _ = watcher.watch(connection) => {}
        () = ticket.evicted() => {}
    }
}
