//! The listeners under hostile clients, on the host: the real
//! `remote::serve_with_limits` and `local::serve` with short timeouts and
//! small caps. Silent TCP connections, half-done handshakes and idle TLS
//! connections are closed by the server within their timeouts; silent
//! connections give their place to a client that speaks; connections that
//! serve keep theirs; a refused caller's connection is closed.

use carapace_api::admission::{Caps, Limits};
use carapace_api::tls::Identity;
use carapace_api::{local, remote, router, Access, AppState};
use carapace_ctl::{Client, Endpoint, Fingerprint};
use carapace_model::settings::TokenHash;
use carapace_model::{Settings, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{NoApply, Node};

const TOKEN: &str = "limits-token-0123456789";

fn state(name: &str) -> AppState {
    // An older version's SHA-256: cheap to verify in a debug build.
    let settings = Settings::from_value(serde_json::json!({
        "api": { "token_sha256": TokenHash::of(TOKEN).as_str() }
    }))
    .expect("settings");
    let dir = std::env::temp_dir().join(format!("carapace-limits-{name}-{}", std::process::id()));
    AppState::new(
        Store::new(settings),
        dir.join("settings.json"),
        Box::new(NoApply),
        Arc::new(Node),
    )
}

fn limits(handshake_ms: u64, header_ms: u64, loopback: usize) -> Limits {
    Limits {
        loopback: Caps {
            total: loopback,
            per_peer: loopback,
        },
        handshake_timeout: Duration::from_millis(handshake_ms),
        header_timeout: Duration::from_millis(header_ms),
        ..Limits::default()
    }
}

/// A TLS listener on 127.0.0.1 (the loopback pool); its port and pin.
async fn start(name: &str, limits: Limits) -> (u16, Fingerprint) {
    let identity = Identity::generate(&["carapace".into()]).expect("identity");
    let fingerprint = Fingerprint::parse(&identity.fingerprint()).expect("fingerprint");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(remote::serve_with_limits(
        listener,
        identity.server_config().expect("config"),
        router(state(name), Access::Remote),
        limits,
        std::future::pending(),
    ));
    (port, fingerprint)
}

/// Reads until the server closes; how long that took. Fails after `within`.
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, read_all)
        .await
        .expect("the server closes the connection in time");
    start.elapsed()
}

async fn tls(port: u16, fingerprint: &Fingerprint) -> tokio_rustls::client::TlsStream<TcpStream> {
    let verifier = Arc::new(carapace_ctl::tls::PinnedCertVerifier::new(*fingerprint));
    let config = carapace_ctl::tls::client_config(verifier).expect("client config");
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tokio_rustls::TlsConnector::from(config)
        .connect(carapace_ctl::tls::server_name("127.0.0.1"), tcp)
        .await
        .expect("handshake")
}

async fn status_answers(port: u16, fingerprint: &Fingerprint) {
    let endpoint = Endpoint::Https {
        host: "127.0.0.1".into(),
        port,
    };
    let mut client = Client::connect(&endpoint, Some(TOKEN), Some(fingerprint))
        .await
        .expect("connected");
    client.get_json("/v1/status").await.expect("status");
}

#[tokio::test]
async fn a_silent_tcp_connection_is_closed_after_the_handshake_timeout() {
    let (port, _) = start("silent", limits(400, 60_000, 8)).await;
    let mut tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let took = closed_by_server(&mut tcp, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(300), "{took:?}");
}

#[tokio::test]
async fn a_half_done_tls_handshake_is_closed_after_the_handshake_timeout() {
    let (port, _) = start("half", limits(400, 60_000, 8)).await;
    let mut tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    // A TLS record header announcing a 512-byte ClientHello, and its first bytes.
    tcp.write_all(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ])
    .await
    .expect("write");
    let took = closed_by_server(&mut tcp, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(300), "{took:?}");
}

#[tokio::test]
async fn a_tls_connection_that_sends_no_request_is_closed_after_the_header_timeout() {
    let (port, fingerprint) = start("norequest", limits(60_000, 500, 8)).await;
    let mut stream = tls(port, &fingerprint).await;
    let took = closed_by_server(&mut stream, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(400), "{took:?}");
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_when_idle() {
    let (port, fingerprint) = start("idle", limits(60_000, 500, 8)).await;
    let mut stream = tls(port, &fingerprint).await;
    let request = format!(
        "GET /v1/status HTTP/1.1\r\nHost: carapace\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.expect("answer");
    assert_eq!(&head, b"HTTP/1.1 200");
    let took = closed_by_server(&mut stream, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(400),
        "kept alive a while: {took:?}"
    );
}

#[tokio::test]
async fn a_caller_without_the_token_is_answered_and_disconnected() {
    let (port, fingerprint) = start("refused", limits(60_000, 60_000, 8)).await;
    let mut stream = tls(port, &fingerprint).await;
    stream
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: carapace\r\n\r\n")
        .await
        .expect("request");
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.expect("answer");
    assert_eq!(&head, b"HTTP/1.1 401");
    let took = closed_by_server(&mut stream, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn silent_connections_give_their_place_to_a_client_that_speaks() {
    let (port, fingerprint) = start("evict", limits(60_000, 60_000, 3)).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(
            TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        );
    }
    // Every place is taken by a silent connection; a client still gets in.
    status_answers(port, &fingerprint).await;
    status_answers(port, &fingerprint).await;
    // The oldest silent ones were closed for it, long before their timeout.
    let took = closed_by_server(&mut silent[0], Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(5));
}

#[tokio::test]
async fn serving_connections_keep_their_place_and_newcomers_are_closed() {
    let (port, fingerprint) = start("full", limits(60_000, 60_000, 2)).await;
    let endpoint = Endpoint::Https {
        host: "127.0.0.1".into(),
        port,
    };
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(&endpoint, Some(TOKEN), Some(&fingerprint))
            .await
            .expect("connected");
        c.get_json("/v1/status").await.expect("status");
        clients.push(c);
    }
    let mut newcomer = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let took = closed_by_server(&mut newcomer, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(5));
    for c in &mut clients {
        c.get_json("/v1/status").await.expect("still served");
    }
}

#[tokio::test]
async fn the_unix_socket_serves_with_its_own_budget() {
    let dir = std::env::temp_dir().join(format!("carapace-limits-sock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("api.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let limits = Limits {
        local: Caps {
            total: 2,
            per_peer: 2,
        },
        header_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    tokio::spawn(local::serve(
        listener,
        router(state("sock"), Access::Local),
        limits,
        std::future::pending(),
    ));
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(
            tokio::net::UnixStream::connect(&path)
                .await
                .expect("connect"),
        );
    }
    let mut client = Client::connect(&Endpoint::Unix(path.clone()), None, None)
        .await
        .expect("connected");
    client.get_json("/v1/status").await.expect("status");
    // The silent one that stayed is closed by the header timeout.
    let took = closed_by_server(&mut silent[1], Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(5));
    std::fs::remove_dir_all(&dir).ok();
}
