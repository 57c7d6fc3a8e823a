//! The TLS listener end to end on the host: the real `remote::serve` with a
//! generated identity, reached by the real client library pinned to the
//! certificate's fingerprint. The token is required; a wrong pin never
//! reaches the API.

use carapace_api::tls::Identity;
use carapace_api::{remote, router, Access, AppState};
use carapace_ctl::{Client, Endpoint, Error, Fingerprint, Method};
use carapace_model::Store;

mod common;
use common::{NoApply, Node};

const TOKEN: &str = "remote-token-0123456789";

#[tokio::test]
async fn remote_callers_pin_the_certificate_and_bring_the_token() {
    let dir = std::env::temp_dir().join(format!("carapace-remote-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let settings = carapace_model::user_data::settings_from_toml(&format!(
        "hostname = \"remote\"\n[api]\ntoken = \"{TOKEN}\"\n"
    ))
    .expect("settings");
    let state = AppState::new(
        Store::new(settings),
        dir.join("settings.json"),
        Box::new(NoApply),
        std::sync::Arc::new(Node),
    );
    let identity = Identity::generate(&["carapace".into()]).expect("identity");
    let fingerprint = Fingerprint::parse(&identity.fingerprint()).expect("fingerprint");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(remote::serve(
        listener,
        identity.server_config().expect("config"),
        router(state, Access::Remote),
        std::future::pending(),
    ));
    let endpoint = Endpoint::Https {
        host: "127.0.0.1".into(),
        port,
    };

    let mut client = Client::connect(&endpoint, Some(TOKEN), Some(&fingerprint))
        .await
        .expect("connected");
    let hostname = client
        .get_json("/v1/settings/hostname")
        .await
        .expect("read");
    assert_eq!(hostname, "remote");
    // Several requests on one connection.
    let patch = serde_json::json!({ "hostname": "changed" });
    client
        .call(Method::PATCH, "/v1/settings", Some(&patch))
        .await
        .expect("staged");
    client
        .call(Method::POST, "/v1/settings/commit", None)
        .await
        .expect("committed");

    let mut anonymous = Client::connect(&endpoint, None, Some(&fingerprint))
        .await
        .expect("connected without a token");
    match anonymous.call(Method::GET, "/v1/settings", None).await {
        Err(e @ Error::Unauthorized { .. }) => assert_eq!(e.exit_code(), 4),
        other => panic!("expected 401, got {other:?}"),
    }

    let wrong = Fingerprint([0u8; 32]);
    match Client::connect(&endpoint, Some(TOKEN), Some(&wrong)).await {
        Err(e @ Error::FingerprintMismatch { .. }) => assert_eq!(e.exit_code(), 3),
        Err(other) => panic!("expected a mismatch, got {other}"),
        Ok(_) => panic!("a wrong pin connected"),
    }
    assert_eq!(
        client
            .get_json("/v1/settings/hostname")
            .await
            .expect("read"),
        "changed"
    );
    std::fs::remove_dir_all(&dir).ok();
}
