//! A scripted stand-in for a node's API, for the integration tests: a hyper
//! server on a Unix socket in a temporary directory, or on TCP behind TLS
//! with a freshly generated self-signed certificate. It records every
//! request and answers what the test's handler says. It runs on a thread of
//! its own, so tests may block (running the real binary) while it serves.

#![allow(dead_code)]

use http_body_util::BodyExt;
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::mpsc::UnboundedReceiver;

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
}

impl Seen {
    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body {:?}: {e}", self.body))
    }
}

/// What the handler answers.
pub enum Reply {
    /// A status with a JSON body.
    Json(u16, String),
    /// A status without body.
    Empty(u16),
    /// 200 with an ndjson body sent piece by piece as the test pushes them
    /// into the channel; it ends when the sender is dropped.
    Stream(UnboundedReceiver<String>),
}

pub type Handler = Box<dyn FnMut(&Seen) -> Reply + Send>;

struct State {
    handler: Mutex<Handler>,
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
}

/// A running fake node.
pub struct Node {
    state: Arc<State>,
    /// What to pass as --endpoint.
    pub endpoint: String,
    /// The certificate fingerprint, for a TLS node.
    pub fingerprint: Option<String>,
    dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

fn temp_dir() -> PathBuf {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "carapace-ctl-test-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the temporary directory");
    dir
}

fn new_state(handler: Handler) -> Arc<State> {
    Arc::new(State {
        handler: Mutex::new(handler),
        seen: Mutex::new(Vec::new()),
        connections: AtomicUsize::new(0),
    })
}

impl Node {
    /// A node listening on a Unix socket.
    pub fn unix(handler: impl FnMut(&Seen) -> Reply + Send + 'static) -> Node {
        let dir = temp_dir();
        let socket = dir.join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind the socket");
        listener.set_nonblocking(true).expect("nonblocking");
        let state = new_state(Box::new(handler));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let s = state.clone();
        spawn_server(stopped, async move {
            let listener = tokio::net::UnixListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, s.clone()));
            }
        });
        Node {
            state,
            endpoint: format!("unix:{}", socket.display()),
            fingerprint: None,
            dir,
            stop: Some(stop),
        }
    }

    /// A node listening on 127.0.0.1 with TLS, certificate self-signed for
    /// "carapace".
    pub fn tls(handler: impl FnMut(&Seen) -> Reply + Send + 'static) -> Node {
        let generated =
            rcgen::generate_simple_self_signed(vec!["carapace".to_string()]).expect("cert");
        let cert: CertificateDer<'static> = generated.cert.der().clone();
        let fingerprint: String = Sha256::digest(cert.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der()).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind TCP");
        let port = listener.local_addr().expect("address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let state = new_state(Box::new(handler));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let s = state.clone();
        spawn_server(stopped, async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let s = s.clone();
                tokio::spawn(async move {
                    // A client refusing the certificate ends here.
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls, s).await;
                    }
                });
            }
        });
        Node {
            state,
            endpoint: format!("https://127.0.0.1:{port}"),
            fingerprint: Some(fingerprint),
            dir: temp_dir(),
            stop: Some(stop),
        }
    }

    /// The requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen").clone()
    }

    /// How many connections were accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Runs the real binary against this node (with its fingerprint, if
    /// TLS) with `args`.
    pub fn ctl(&self, args: &[&str]) -> Run {
        let mut command = ctl_command();
        command.env("CARAPACE_ENDPOINT", &self.endpoint);
        if let Some(f) = &self.fingerprint {
            command.env("CARAPACE_FINGERPRINT", f);
        }
        run(command.args(args))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_server(
    stopped: tokio::sync::oneshot::Receiver<()>,
    server: impl std::future::Future<Output = ()> + Send + 'static,
) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            tokio::select! {
                _ = server => {}
                _ = stopped => {}
            }
        });
    });
}

async fn serve<S>(io: S, state: Arc<State>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(req, state).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Response<ReplyBody> {
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let mut seen = Seen {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        authorization: header(hyper::header::AUTHORIZATION),
        content_type: header(hyper::header::CONTENT_TYPE),
        body: String::new(),
    };
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    seen.body = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
    state.seen.lock().expect("seen").push(seen.clone());
    let reply = (state.handler.lock().expect("handler"))(&seen);
    let (status, content_type, body) = match reply {
        Reply::Json(status, text) => (
            status,
            "application/json",
            ReplyBody::Full(Some(Bytes::from(text))),
        ),
        Reply::Empty(status) => (status, "application/json", ReplyBody::Full(None)),
        Reply::Stream(rx) => (200, "application/x-ndjson", ReplyBody::Stream(rx)),
    };
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(body)
        .expect("response")
}

enum ReplyBody {
    Full(Option<Bytes>),
    Stream(UnboundedReceiver<String>),
}

impl hyper::body::Body for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ReplyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReplyBody::Stream(rx) => rx
                .poll_recv(cx)
                .map(|o| o.map(|s| Ok(Frame::data(Bytes::from(s))))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ReplyBody::Full(None))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ReplyBody::Full(b) => {
                hyper::body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            ReplyBody::Stream(_) => hyper::body::SizeHint::default(),
        }
    }
}

/// The outcome of running the binary.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// The binary, with no CARAPACE_* variables from the environment.
pub fn ctl_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_carapace-ctl"));
    for var in [
        "CARAPACE_ENDPOINT",
        "CARAPACE_TOKEN",
        "CARAPACE_FINGERPRINT",
    ] {
        command.env_remove(var);
    }
    command
}

pub fn run(command: &mut Command) -> Run {
    let output = command.output().expect("run carapace-ctl");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A JSON reply.
pub fn json(status: u16, value: serde_json::Value) -> Reply {
    Reply::Json(status, value.to_string())
}

/// The settings tree the fake nodes serve.
pub fn settings() -> serde_json::Value {
    serde_json::json!({
        "hostname": "node1",
        "network": {"dhcp": true, "addresses": [], "routes": [], "dns": ["9.9.9.9"]},
        "ntp": {"servers": ["pool.ntp.org"]},
        "sysctl": {"net.ipv4.ip_forward": "1"},
        "api": {"token_sha256": null},
        "updates": {"source": null},
    })
}
