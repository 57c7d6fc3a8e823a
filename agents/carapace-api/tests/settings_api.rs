//! The settings endpoints on the host, without a VM: staging, commits that
//! apply all or nothing, persistence, tokens and the OpenAPI document.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use carapace_api::node::Status;
use carapace_api::{router, Access, AppState, Applier, NodeOps, PowerAction};
use carapace_model::{persist, Area, Settings, Store};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

/// (hostname, areas) of every apply.
type Applied = Vec<(String, Vec<Area>)>;

/// Records what it was asked to apply; fails on demand.
#[derive(Clone, Default)]
struct Recorder {
    applied: Arc<Mutex<Applied>>,
    fail: Arc<Mutex<bool>>,
}

impl Applier for Recorder {
    fn apply(&mut self, _old: &Settings, new: &Settings, areas: &[Area]) -> Result<(), String> {
        if *self.fail.lock().expect("lock") {
            return Err("sysctl write failed".into());
        }
        self.applied
            .lock()
            .expect("lock")
            .push((new.hostname.to_string(), areas.to_vec()));
        Ok(())
    }
}

/// Answers status with fixed facts and records power requests.
#[derive(Default)]
struct FakeNode {
    requests: Mutex<Vec<PowerAction>>,
}

impl NodeOps for FakeNode {
    fn status(&self) -> Status {
        carapace_api::node::status_from(
            "IMAGE_VERSION=9.9.9\n",
            "roothash=feed",
            "boot-1",
            "5.5 1",
            None,
            r#"[{"name":"api","state":"running"}]"#,
        )
    }
    fn power(&self, action: PowerAction) -> Result<(), String> {
        self.requests.lock().expect("lock").push(action);
        Ok(())
    }
}

/// The API token the tests set.
const TOKEN: &str = "0123456789abcdef";

struct Fixture {
    dir: PathBuf,
    state: AppState,
    recorder: Recorder,
    node: Arc<FakeNode>,
}

impl Fixture {
    fn new(name: &str, committed: Settings) -> Fixture {
        let dir = std::env::temp_dir().join(format!("carapace-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let recorder = Recorder::default();
        let node = Arc::new(FakeNode::default());
        let state = AppState::new(
            Store::new(committed),
            dir.join("settings.json"),
            Box::new(recorder.clone()),
            node.clone(),
        );
        Fixture {
            dir,
            state,
            recorder,
            node,
        }
    }

    async fn call(
        &self,
        access: Access,
        method: Method,
        uri: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .expect("request");
        let resp = router(self.state.clone(), access)
            .oneshot(req)
            .await
            .expect("response");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        (status, value)
    }

    async fn remote(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        self.call(Access::Remote, method, uri, body, token).await
    }

    async fn local(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(Access::Local, method, uri, body, None).await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_staged_change_applies_and_persists_only_on_commit() {
    let f = Fixture::new("commit", Settings::default());
    let (s, pending) = f
        .local(
            Method::PATCH,
            "/v1/settings",
            Some(json!({ "hostname": "node-1" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(pending["hostname"], "node-1");
    let (_, committed) = f.local(Method::GET, "/v1/settings", None).await;
    assert_eq!(
        committed["hostname"], "carapace",
        "staging changes nothing yet"
    );
    assert!(f.recorder.applied.lock().expect("lock").is_empty());

    let (s, body) = f.local(Method::POST, "/v1/settings/commit", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["applied"], json!(["hostname"]));
    assert_eq!(
        f.recorder.applied.lock().expect("lock").as_slice(),
        &[("node-1".to_string(), vec![Area::Hostname])]
    );
    let on_disk = persist::load(&f.dir.join("settings.json"))
        .expect("loads")
        .expect("saved");
    assert_eq!(on_disk.hostname.as_str(), "node-1");
    let (_, hostname) = f.local(Method::GET, "/v1/settings/hostname", None).await;
    assert_eq!(hostname, json!("node-1"));
    let (s, _) = f.local(Method::GET, "/v1/settings/pending", None).await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "the transaction is gone after the commit"
    );
}

#[tokio::test]
async fn a_transaction_with_one_bad_field_is_refused_whole() {
    let f = Fixture::new("bad", Settings::default());
    let (s, body) = f
        .local(
            Method::PATCH,
            "/v1/settings",
            Some(json!({ "hostname": "node-1", "sysctl": { "vm.swappiness": "500" } })),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["path"], "sysctl.vm.swappiness");
    let (s, _) = f.local(Method::GET, "/v1/settings/pending", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing was staged");
    let (s, body) = f
        .local(
            Method::PATCH,
            "/v1/settings",
            Some(json!({ "colour": "blue" })),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("colour"));
    let req = Request::builder()
        .method(Method::PATCH)
        .uri("/v1/settings")
        .body(Body::from("{not json"))
        .expect("request");
    let resp = router(f.state.clone(), Access::Local)
        .oneshot(req)
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_commit_that_fails_to_apply_keeps_the_previous_settings() {
    let f = Fixture::new("rollback", Settings::default());
    f.local(
        Method::PATCH,
        "/v1/settings",
        Some(json!({ "hostname": "node-1" })),
    )
    .await;
    *f.recorder.fail.lock().expect("lock") = true;
    let (s, body) = f.local(Method::POST, "/v1/settings/commit", None).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("sysctl write failed"));
    let (_, committed) = f.local(Method::GET, "/v1/settings", None).await;
    assert_eq!(committed["hostname"], "carapace");
    assert!(!f.dir.join("settings.json").exists(), "nothing persisted");
    let (s, _) = f.local(Method::DELETE, "/v1/settings/pending", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = f.local(Method::POST, "/v1/settings/commit", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "nothing staged any more");
}

#[tokio::test]
async fn remote_callers_need_the_right_token() {
    let f = Fixture::new("token", Settings::default());
    // No token set yet: remote access is refused outright.
    let (s, _) = f
        .remote(Method::GET, "/v1/settings", None, Some(TOKEN))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    f.local(
        Method::PATCH,
        "/v1/settings",
        Some(json!({ "api": { "token": TOKEN } })),
    )
    .await;
    f.local(Method::POST, "/v1/settings/commit", None).await;

    let (s, _) = f
        .remote(Method::GET, "/v1/settings", None, Some(TOKEN))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = f.remote(Method::GET, "/v1/settings", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = f
        .remote(
            Method::PATCH,
            "/v1/settings",
            Some(json!({ "hostname": "evil" })),
            Some("wrong-token-0000000"),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = f.local(Method::GET, "/v1/settings/pending", None).await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "a refused request changes nothing"
    );
}

#[tokio::test]
async fn status_and_power_requests() {
    let f = Fixture::new("status", Settings::default());
    let (s, status) = f.local(Method::GET, "/v1/status", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (status["version"].as_str(), status["roothash"].as_str()),
        (Some("9.9.9"), Some("feed"))
    );
    assert_eq!(status["services"][0]["name"], "api");
    let (s, _) = f.local(Method::POST, "/v1/power/reboot", None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _) = f.local(Method::POST, "/v1/power/poweroff", None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _) = f
        .remote(
            Method::POST,
            "/v1/power/reboot",
            None,
            Some("no-token-is-set-yet"),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        f.node.requests.lock().expect("lock").as_slice(),
        &[PowerAction::Reboot, PowerAction::PowerOff],
        "only the authorised requests reached PID 1"
    );
}

#[tokio::test]
async fn unknown_subtrees_are_404() {
    let f = Fixture::new("subtree", Settings::default());
    let (s, body) = f
        .local(Method::GET, "/v1/settings/network/nope", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(body["path"], "network.nope");
    let (s, body) = f
        .local(Method::GET, "/v1/settings/network/dhcp", None)
        .await;
    assert_eq!((s, body), (StatusCode::OK, json!(true)));
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes() {
    let f = Fixture::new("openapi", Settings::default());
    let (s, doc) = f.local(Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("operations").keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut served: Vec<String> = carapace_api::routes::ROUTES
        .iter()
        .map(|r| r.to_string())
        .collect();
    served.sort();
    assert_eq!(documented, served);
    // And every listed route really answers (not 404/405) on the router.
    for route in carapace_api::routes::ROUTES {
        let (method, path) = route.split_once(' ').expect("METHOD path");
        let uri = path.replace("{path}", "hostname");
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let body = (method == Method::PATCH).then(|| json!({}));
        let (s, _) = f.local(method.clone(), &uri, body).await;
        assert!(
            s != StatusCode::METHOD_NOT_ALLOWED
                && !(s == StatusCode::NOT_FOUND && uri == "/v1/settings/hostname"),
            "{route}: {s}"
        );
    }
}
