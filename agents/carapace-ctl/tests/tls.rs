//! The client and the command against a fake node over TLS with a
//! self-signed certificate: the pinned fingerprint is accepted in any of
//! its spellings, another one is refused before any request is sent, the
//! token travels as a bearer token, and 401 exits with 4.

mod common;

use carapace_ctl::{Client, Endpoint, Error, Fingerprint, Method};
use common::{json, settings, Node, Reply, Seen};
use serde_json::json;

fn with_token(s: &Seen) -> Reply {
    if s.authorization.as_deref() != Some("Bearer s3cret") {
        return json(401, json!({"error": "a valid bearer token is required"}));
    }
    match s.path.as_str() {
        "/v1/settings" => json(200, settings()),
        "/v1/status" => json(200, json!({"version": "0.1.0", "services": []})),
        _ => json(404, json!({"error": "no such route"})),
    }
}

fn colon_upper(hex: &str) -> String {
    let pairs: Vec<String> = hex
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect();
    pairs.join(":")
}

#[tokio::test]
async fn the_pinned_certificate_is_accepted_and_the_token_sent() {
    let node = Node::tls(with_token);
    let endpoint = Endpoint::parse(&node.endpoint).expect("endpoint");
    let fingerprint = node.fingerprint.clone().expect("fingerprint");
    // Upper case with colons, as openssl prints it.
    let pin = Fingerprint::parse(&colon_upper(&fingerprint)).expect("pin");
    let mut client = Client::connect(&endpoint, Some("s3cret"), Some(&pin))
        .await
        .expect("connect");
    assert_eq!(
        client.get_json("/v1/settings").await.expect("get"),
        settings()
    );
    let status = client.get_json("/v1/status").await.expect("status");
    assert_eq!(status["version"], "0.1.0");
    let seen = node.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|s| s.authorization.as_deref() == Some("Bearer s3cret")),
        "{seen:?}"
    );
    assert_eq!(node.connections(), 1);
}

#[tokio::test]
async fn another_certificate_is_refused_before_any_request() {
    let node = Node::tls(with_token);
    let endpoint = Endpoint::parse(&node.endpoint).expect("endpoint");
    let actual = Fingerprint::parse(node.fingerprint.as_deref().expect("fp")).expect("fp");
    let wrong = Fingerprint::of(b"some other certificate");
    match Client::connect(&endpoint, Some("s3cret"), Some(&wrong)).await {
        Err(e @ Error::FingerprintMismatch { .. }) => {
            assert_eq!(e.exit_code(), 3);
            let Error::FingerprintMismatch {
                actual: a,
                expected,
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((*a, *expected), (actual, wrong));
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert!(
        node.seen().is_empty(),
        "nothing may reach an unverified peer"
    );
}

#[tokio::test]
async fn https_without_a_fingerprint_is_a_usage_error() {
    let endpoint = Endpoint::parse("https://127.0.0.1:1").expect("endpoint");
    match Client::connect(&endpoint, None, None).await {
        Err(Error::Usage(m)) => assert!(m.contains("status"), "{m}"),
        other => panic!("expected a usage error, got {other:?}"),
    }
}

#[test]
fn the_command_talks_to_a_pinned_node_with_its_token() {
    let node = Node::tls(with_token);
    let run = node.ctl(&["--token", "s3cret", "--output", "json", "get"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(printed, settings());
    assert_eq!(node.seen().len(), 1);
    assert_eq!(node.seen()[0].path, "/v1/settings");

    // The token from the environment.
    let mut command = common::ctl_command();
    command
        .env("CARAPACE_ENDPOINT", &node.endpoint)
        .env(
            "CARAPACE_FINGERPRINT",
            node.fingerprint.as_deref().expect("fp"),
        )
        .env("CARAPACE_TOKEN", "s3cret")
        .arg("status");
    let run = common::run(&mut command);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.starts_with("version = 0.1.0\n"), "{run:?}");
}

#[test]
fn a_wrong_fingerprint_exits_3_naming_both() {
    let node = Node::tls(with_token);
    let actual = node.fingerprint.clone().expect("fp");
    let wrong = "ab".repeat(32);
    let mut command = common::ctl_command();
    command.args([
        "--endpoint",
        &node.endpoint,
        "--fingerprint",
        &wrong,
        "--token",
        "s3cret",
        "status",
    ]);
    let run = common::run(&mut command);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("fingerprint is {actual}, expected {wrong}")),
        "{run:?}"
    );
    assert!(node.seen().is_empty());
}

#[test]
fn a_missing_or_wrong_token_exits_4() {
    let node = Node::tls(with_token);
    let run = node.ctl(&["status"]);
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(
        run.stderr.contains("a valid bearer token is required"),
        "{run:?}"
    );
    let run = node.ctl(&["--token", "wrong", "status"]);
    assert_eq!(run.code, Some(4), "{run:?}");
    let auth: Vec<Option<String>> = node.seen().into_iter().map(|s| s.authorization).collect();
    assert_eq!(auth, vec![None, Some("Bearer wrong".to_string())]);
}

#[test]
fn https_without_fingerprint_exits_2_saying_where_to_find_it() {
    let run =
        common::run(common::ctl_command().args(["--endpoint", "https://127.0.0.1:1", "status"]));
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.contains("printed on the node's console"),
        "{run:?}"
    );
    assert!(run.stderr.contains("`status`"), "{run:?}");
}

#[test]
fn an_unreachable_tls_node_exits_3() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let run = common::run(common::ctl_command().args([
        "--endpoint",
        &format!("https://127.0.0.1:{port}"),
        "--fingerprint",
        &"00".repeat(32),
        "status",
    ]));
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.stderr.contains("cannot reach the node"), "{run:?}");
}

#[tokio::test]
async fn patch_bodies_travel_over_tls() {
    let node = Node::tls(with_token);
    let endpoint = Endpoint::parse(&node.endpoint).expect("endpoint");
    let pin = Fingerprint::parse(node.fingerprint.as_deref().expect("fp")).expect("pin");
    let mut client = Client::connect(&endpoint, Some("s3cret"), Some(&pin))
        .await
        .expect("connect");
    let patch = json!({"api": {"token": "n3w"}});
    let answer = client
        .request(Method::PATCH, "/v1/settings", Some(&patch))
        .await
        .expect("patch");
    assert_eq!(answer.status, 200);
    assert_eq!(node.seen()[0].json(), patch);
    assert_eq!(node.seen()[0].method, "PATCH");
}
