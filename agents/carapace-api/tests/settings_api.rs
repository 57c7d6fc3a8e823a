//! The settings endpoints on the host, without a VM: staging, commits that
//! apply all or nothing, persistence, tokens and the OpenAPI document.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use carapace_api::node::{ApiInfo, Facts, Status, UserDataReport};
use carapace_api::updates::{UpdateError, UpdateOp, UpdateResult, Updates};
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
        let facts = Facts {
            boot: r#"{"version":"9.9.9","roothash":"feed","slot":"a"}"#.into(),
            boot_id: "boot-1".into(),
            uptime: "5.5 1".into(),
            services: r#"[{"name":"api","state":"running"}]"#.into(),
            ..Facts::default()
        };
        carapace_api::node::status_from(&facts, &ApiInfo::default(), &UserDataReport::default())
    }
    fn power(&self, action: PowerAction) -> Result<(), String> {
        self.requests.lock().expect("lock").push(action);
        Ok(())
    }
}

/// Answers update requests from a script and records them.
#[derive(Default)]
struct FakeUpdates {
    ops: Mutex<Vec<UpdateOp>>,
}

impl Updates for FakeUpdates {
    fn call(
        &self,
        op: UpdateOp,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = UpdateResult> + Send + '_>> {
        self.ops.lock().expect("lock").push(op);
        let answer = match op {
            UpdateOp::Status => Ok(json!({"state": "idle", "running": "9.9.9"})),
            UpdateOp::Check { force: false } => Ok(json!({"available": null})),
            UpdateOp::Check { force: true } => Ok(json!({"available": "9.8.0"})),
            UpdateOp::Download { .. } => Ok(json!({"started": "download"})),
            UpdateOp::Apply => Err(UpdateError::Refused(
                "nothing is downloaded: download an update first".into(),
            )),
            UpdateOp::Cancel => Err(UpdateError::Unavailable("the system bus: gone".into())),
        };
        Box::pin(async move { answer })
    }
}

/// The API token the tests set.
const TOKEN: &str = "0123456789abcdef";

struct Fixture {
    dir: PathBuf,
    state: AppState,
    recorder: Recorder,
    node: Arc<FakeNode>,
    updates: Arc<FakeUpdates>,
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
        )
        .with_logs(dir.join("logs"));
        let updates = Arc::new(FakeUpdates::default());
        let state = state.with_updates(updates.clone());
        Fixture {
            dir,
            state,
            recorder,
            node,
            updates,
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
    // A new token through the API replaces the old one at once.
    let other = "another-token-0123456789";
    f.remote(
        Method::PATCH,
        "/v1/settings",
        Some(json!({ "api": { "token": other } })),
        Some(TOKEN),
    )
    .await;
    let (s, _) = f
        .remote(Method::POST, "/v1/settings/commit", None, Some(TOKEN))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = f
        .remote(Method::GET, "/v1/settings", None, Some(TOKEN))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the old token is forgotten");
    let (s, _) = f
        .remote(Method::GET, "/v1/settings", None, Some(other))
        .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn a_refused_caller_is_told_to_close_the_connection() {
    let f = Fixture::new("close", Settings::default());
    let req = Request::builder()
        .uri("/v1/status")
        .header("authorization", "Bearer wrong-token-0000000")
        .body(Body::empty())
        .expect("request");
    let resp = router(f.state.clone(), Access::Remote)
        .oneshot(req)
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
}

#[tokio::test]
async fn settings_from_an_older_version_still_authenticate_until_a_new_token() {
    let old = Settings::from_value(json!({
        "api": { "token_sha256": carapace_model::settings::TokenHash::of(TOKEN).as_str() }
    }))
    .expect("an older version's settings");
    let f = Fixture::new("sha256", old);
    let (s, _) = f
        .remote(Method::GET, "/v1/settings", None, Some(TOKEN))
        .await;
    assert_eq!(s, StatusCode::OK, "an upgrade locks no one out");
    let (s, _) = f
        .remote(
            Method::GET,
            "/v1/settings",
            None,
            Some("wrong-token-0000000"),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Setting the same token again stores it salted and drops the SHA-256.
    f.local(
        Method::PATCH,
        "/v1/settings",
        Some(json!({ "api": { "token": TOKEN } })),
    )
    .await;
    let (s, _) = f.local(Method::POST, "/v1/settings/commit", None).await;
    assert_eq!(s, StatusCode::OK);
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(f.dir.join("settings.json")).expect("settings file"))
            .expect("JSON");
    assert!(on_disk["api"].get("token_sha256").is_none(), "{on_disk}");
    let stored = on_disk["api"]["token_hash"].as_str().unwrap_or_default();
    assert!(stored.starts_with("$argon2id$"), "{on_disk}");
    let (s, _) = f
        .remote(Method::GET, "/v1/settings", None, Some(TOKEN))
        .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn no_answer_ever_contains_a_hash_of_the_token() {
    let f = Fixture::new("nohash", Settings::default());
    let (_, api) = f.local(Method::GET, "/v1/settings/api", None).await;
    assert_eq!(api, json!({ "token_set": false }));
    let (s, pending) = f
        .local(
            Method::PATCH,
            "/v1/settings",
            Some(json!({ "api": { "token": TOKEN } })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, committed) = f.local(Method::POST, "/v1/settings/commit", None).await;
    assert_eq!(s, StatusCode::OK);
    let stored = f.state.verifier().check(Some(TOKEN)).await;
    assert_eq!(stored, carapace_api::auth::Verdict::Allowed);
    let on_disk = std::fs::read_to_string(f.dir.join("settings.json")).expect("file");
    let hash = serde_json::from_str::<Value>(&on_disk).expect("JSON")["api"]["token_hash"]
        .as_str()
        .expect("the file keeps the hash")
        .to_string();
    let (_, all) = f
        .remote(Method::GET, "/v1/settings", None, Some(TOKEN))
        .await;
    let (_, api) = f
        .remote(Method::GET, "/v1/settings/api", None, Some(TOKEN))
        .await;
    let (s, _) = f
        .remote(
            Method::GET,
            "/v1/settings/api/token_hash",
            None,
            Some(TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(api, json!({ "token_set": true }));
    assert_eq!(all["api"], json!({ "token_set": true }));
    for answer in [&pending, &committed, &all, &api] {
        let text = answer.to_string();
        assert!(
            !text.contains(&hash) && !text.contains("argon2") && !text.contains("sha256"),
            "{text}"
        );
        assert!(!text.contains(TOKEN), "{text}");
    }
    // A client that sends back what it read is told what to do instead.
    let (s, body) = f
        .local(
            Method::PATCH,
            "/v1/settings",
            Some(json!({ "api": { "token_set": true } })),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["path"], "api.token_set");
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_before_it_is_read() {
    let f = Fixture::new("body", Settings::default());
    let big = json!({ "hostname": "x".repeat(carapace_api::routes::MAX_BODY) });
    let req = Request::builder()
        .method(Method::PATCH)
        .uri("/v1/settings")
        .body(Body::from(big.to_string()))
        .expect("request");
    let resp = router(f.state.clone(), Access::Local)
        .oneshot(req)
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _) = f.local(Method::GET, "/v1/settings/pending", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing was staged");
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
    assert_eq!(status["active_slot"], "a");
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

/// GET /v1/logs against a log directory laid out as carapace-init keeps it.
async fn logs_request(f: &Fixture, uri: &str) -> (StatusCode, String) {
    let req = Request::builder()
        .uri(uri)
        .body(Body::empty())
        .expect("request");
    let resp = router(f.state.clone(), Access::Local)
        .oneshot(req)
        .await
        .expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn logs_of_one_service_or_all_and_their_errors() {
    let f = Fixture::new("logs", Settings::default());
    let logs = f.dir.join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    std::fs::write(logs.join("api.log"), "10 listening\n30 third\n").expect("api");
    std::fs::write(logs.join("net.log"), "20 eth0 configured\n").expect("net");
    let (s, body) = logs_request(&f, "/v1/logs?service=api").await;
    assert_eq!(s, StatusCode::OK);
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(
        lines,
        vec![
            json!({"service": "api", "ms": 10, "line": "listening"}),
            json!({"service": "api", "ms": 30, "line": "third"}),
        ]
    );
    let (_, body) = logs_request(&f, "/v1/logs?lines=2").await;
    let services: Vec<String> = body
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json")["service"].to_string())
        .collect();
    assert_eq!(
        services,
        vec!["\"net\"", "\"api\""],
        "merged by time, last 2"
    );
    let (s, body) = logs_request(&f, "/v1/logs?service=nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    let (s, body) = logs_request(&f, "/v1/logs?service=../../etc/passwd").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no paths: {body}");
    let (s, _) = logs_request(&f, "/v1/logs?lines=many").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = logs_request(&f, "/v1/logs?lines=10001").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = logs_request(&f, "/v1/logs?colour=blue").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "unknown parameters are refused");
}

#[tokio::test]
async fn following_logs_streams_lines_appended_later() {
    let f = Fixture::new("follow", Settings::default());
    let logs = f.dir.join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    std::fs::write(logs.join("svc.log"), "1 before\n").expect("svc");
    let req = Request::builder()
        .uri("/v1/logs?service=svc&follow=true")
        .body(Body::empty())
        .expect("request");
    let resp = router(f.state.clone(), Access::Local)
        .oneshot(req)
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    let first = String::from_utf8_lossy(first.data_ref().expect("data")).into_owned();
    assert!(first.contains("\"before\""), "{first}");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(logs.join("svc.log"))
        .expect("open");
    std::io::Write::write_all(&mut file, b"2 after\n").expect("append");
    let next = body.frame().await.expect("a frame").expect("data");
    let next = String::from_utf8_lossy(next.data_ref().expect("data")).into_owned();
    assert_eq!(
        serde_json::from_str::<Value>(next.trim()).expect("json"),
        json!({"service": "svc", "ms": 2, "line": "after"})
    );
}

#[tokio::test]
async fn update_requests_reach_the_daemon_and_its_answers_map_to_statuses() {
    let f = Fixture::new("updates", Settings::default());
    let (s, body) = f.local(Method::GET, "/v1/update", None).await;
    assert_eq!(
        (s, body["running"].as_str()),
        (StatusCode::OK, Some("9.9.9"))
    );
    let (s, body) = f.local(Method::POST, "/v1/update/check", None).await;
    assert_eq!((s, body), (StatusCode::OK, json!({"available": null})));
    let (s, body) = f
        .local(
            Method::POST,
            "/v1/update/check",
            Some(json!({"force": true})),
        )
        .await;
    assert_eq!(
        (s, body["available"].as_str()),
        (StatusCode::OK, Some("9.8.0"))
    );
    let (s, _) = f.local(Method::POST, "/v1/update/download", None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, body) = f.local(Method::POST, "/v1/update/apply", None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(body["error"]
        .as_str()
        .is_some_and(|e| e.contains("nothing is downloaded")));
    let (s, _) = f.local(Method::POST, "/v1/update/cancel", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _) = f
        .local(
            Method::POST,
            "/v1/update/download",
            Some(json!({"forse": true})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a misspelt body is refused");
    let (s, _) = f
        .remote(Method::POST, "/v1/update/download", None, Some("wrong"))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        f.updates.ops.lock().expect("lock").as_slice(),
        &[
            UpdateOp::Status,
            UpdateOp::Check { force: false },
            UpdateOp::Check { force: true },
            UpdateOp::Download { force: false },
            UpdateOp::Apply,
            UpdateOp::Cancel,
        ],
        "refused requests never reached the daemon"
    );
}
