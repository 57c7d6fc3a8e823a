//! The HTTP routes and their handlers.

use crate::apply::Applier;
use crate::auth::{TokenVerifier, Verdict};
use crate::logs::{Entry, LogDir};
use crate::node::{NodeOps, PowerAction};
use crate::updates::{DbusUpdates, UpdateError, UpdateOp, Updates};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use carapace_model::store::{prepare_patch, CommitError};
use carapace_model::{persist, SettingsError, Store};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Mutex;

/// Every route, as `METHOD path`: the OpenAPI document must list exactly these.
pub const ROUTES: &[&str] = &[
    "GET /v1/settings",
    "PATCH /v1/settings",
    "GET /v1/settings/{path}",
    "GET /v1/settings/pending",
    "DELETE /v1/settings/pending",
    "POST /v1/settings/commit",
    "GET /v1/openapi.json",
    "GET /v1/status",
    "GET /v1/logs",
    "GET /v1/update",
    "POST /v1/update/check",
    "POST /v1/update/download",
    "POST /v1/update/apply",
    "POST /v1/update/cancel",
    "POST /v1/power/reboot",
    "POST /v1/power/poweroff",
];

/// Who is calling: the root-only Unix socket, or the network (token required).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Local,
    Remote,
}

struct Inner {
    store: Store,
    settings_file: PathBuf,
    applier: Box<dyn Applier>,
    node: Arc<dyn NodeOps>,
}

/// The largest request body: a settings change with a whole CA bundle
/// (`updates.ca`, at most 256 KiB) and many containers fits; anything
/// bigger is refused (413) before it is buffered.
pub const MAX_BODY: usize = 1024 * 1024;

/// The state the handlers share. The token verifier keeps its own copy of
/// the committed `api` settings, so checking a remote caller's token never
/// takes the store's lock.
#[derive(Clone)]
pub struct AppState(
    Arc<Mutex<Inner>>,
    LogDir,
    Arc<dyn Updates>,
    Arc<TokenVerifier>,
);

impl AppState {
    /// `store` holds the committed settings (loaded from `settings_file`);
    /// `node` answers status and power requests.
    pub fn new(
        store: Store,
        settings_file: PathBuf,
        applier: Box<dyn Applier>,
        node: Arc<dyn NodeOps>,
    ) -> AppState {
        let verifier = Arc::new(TokenVerifier::new(&store.committed().api));
        AppState(
            Arc::new(Mutex::new(Inner {
                store,
                settings_file,
                applier,
                node,
            })),
            LogDir::new(crate::logs::DIR),
            Arc::new(DbusUpdates::default()),
            verifier,
        )
    }

    /// The verifier of remote callers' tokens.
    pub fn verifier(&self) -> &TokenVerifier {
        &self.3
    }

    /// Talks to `updates` instead of the update daemon on the system bus.
    pub fn with_updates(mut self, updates: Arc<dyn Updates>) -> AppState {
        self.2 = updates;
        self
    }

    /// Reads service logs from `dir` instead of carapace-init's directory.
    pub fn with_logs(mut self, dir: impl Into<PathBuf>) -> AppState {
        self.1 = LogDir::new(dir);
        self
    }
}

fn error(status: StatusCode, path: &str, message: &str) -> Response {
    let mut body = json!({ "error": message });
    if !path.is_empty() {
        body["path"] = json!(path);
    }
    (status, Json(body)).into_response()
}

fn refused(e: SettingsError) -> Response {
    error(StatusCode::BAD_REQUEST, &e.path, &e.to_string())
}

async fn get_settings(State(state): State<AppState>) -> Response {
    Json(state.0.lock().await.store.committed().to_value()).into_response()
}

async fn get_subtree(State(state): State<AppState>, Path(path): Path<String>) -> Response {
    let dotted = path.trim_matches('/').replace('/', ".");
    match state.0.lock().await.store.committed().get(&dotted) {
        Some(v) => Json(v).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            &dotted,
            &format!("no setting {dotted}"),
        ),
    }
}

async fn patch_settings(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "",
                &format!("the body is not JSON: {e}"),
            )
        }
    };
    // Hashing a new token is the slow part: done on a blocking thread,
    // before the lock the other requests (the Unix socket's too) need.
    let prepared = match tokio::task::spawn_blocking(move || prepare_patch(patch)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return refused(e),
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "",
                &format!("preparing the change failed: {e}"),
            )
        }
    };
    let mut inner = state.0.lock().await;
    match inner.store.stage_prepared(&prepared) {
        Ok(pending) => Json(pending.to_value()).into_response(),
        Err(e) => refused(e),
    }
}

async fn get_pending(State(state): State<AppState>) -> Response {
    match state.0.lock().await.store.pending() {
        Some(p) => Json(p.to_value()).into_response(),
        None => error(StatusCode::NOT_FOUND, "", "nothing is staged"),
    }
}

async fn discard_pending(State(state): State<AppState>) -> Response {
    state.0.lock().await.store.discard();
    StatusCode::NO_CONTENT.into_response()
}

async fn commit(State(state): State<AppState>) -> Response {
    let mut guard = state.0.lock().await;
    let Inner {
        store,
        settings_file,
        applier,
        ..
    } = &mut *guard;
    let result = store.commit(|old, new, areas| {
        applier.apply(old, new, areas)?;
        if let Err(e) = persist::save(settings_file, new) {
            // Not on disk means not committed: undo what was applied.
            let _ = applier.apply(new, old, areas);
            return Err(e.to_string());
        }
        Ok(())
    });
    match result {
        Ok(areas) => {
            state.3.set(&store.committed().api);
            let names: Vec<String> = areas
                .iter()
                .map(|a| format!("{a:?}").to_lowercase())
                .collect();
            Json(json!({ "applied": names, "settings": store.committed().to_value() }))
                .into_response()
        }
        Err(CommitError::NothingStaged) => error(StatusCode::CONFLICT, "", "nothing is staged"),
        Err(e @ CommitError::Apply(_)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "", &e.to_string())
        }
    }
}

async fn status(State(state): State<AppState>) -> Response {
    let node = state.0.lock().await.node.clone();
    Json(node.status()).into_response()
}

async fn power(state: AppState, action: PowerAction) -> Response {
    let node = state.0.lock().await.node.clone();
    match node.power(action) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({ "requested": format!("{action:?}").to_lowercase() })),
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "", &e),
    }
}

async fn reboot(State(state): State<AppState>) -> Response {
    power(state, PowerAction::Reboot).await
}

async fn poweroff(State(state): State<AppState>) -> Response {
    power(state, PowerAction::PowerOff).await
}

/// The query of GET /v1/logs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    service: Option<String>,
    lines: Option<usize>,
    #[serde(default)]
    follow: bool,
}

/// The most lines one request returns from the past.
const MAX_LINES: usize = 10_000;
/// How often a follower looks for new lines.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(200);

fn ndjson(entries: &[Entry]) -> String {
    let mut out = String::new();
    for e in entries {
        out.push_str(&serde_json::to_string(e).unwrap_or_default());
        out.push('\n');
    }
    out
}

async fn logs(
    State(state): State<AppState>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, "", &e.body_text()),
    };
    let dir = state.1.clone();
    if let Some(s) = &query.service {
        if !dir.has(s) {
            return error(
                StatusCode::NOT_FOUND,
                "",
                &format!("no log of a service named {s:?}"),
            );
        }
    }
    let lines = query.lines.unwrap_or(100);
    if lines > MAX_LINES {
        return error(
            StatusCode::BAD_REQUEST,
            "lines",
            &format!("at most {MAX_LINES} lines"),
        );
    }
    let service = query.service.as_deref();
    let recent = ndjson(&dir.recent(service, lines));
    let content_type = [(header::CONTENT_TYPE, "application/x-ndjson")];
    if !query.follow {
        return (content_type, recent).into_response();
    }
    let follower = dir.follow(service);
    let first = futures_util::stream::once(async move {
        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(recent))
    });
    let rest = futures_util::stream::unfold(follower, |mut f| async move {
        loop {
            let entries = f.poll();
            if !entries.is_empty() {
                let chunk = axum::body::Bytes::from(ndjson(&entries));
                return Some((Ok(chunk), f));
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    });
    (
        content_type,
        axum::body::Body::from_stream(futures_util::StreamExt::chain(first, rest)),
    )
        .into_response()
}

/// The optional body of the update requests that take one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default)]
    force: bool,
}

fn update_body(body: &[u8]) -> Result<UpdateBody, Box<Response>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(UpdateBody::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "",
            &format!("the body must be {{\"force\": true|false}}: {e}"),
        ))
    })
}

async fn update_call(state: &AppState, op: UpdateOp, ok: StatusCode) -> Response {
    match state.2.call(op).await {
        Ok(v) => (ok, Json(v)).into_response(),
        Err(UpdateError::Unavailable(why)) => error(StatusCode::SERVICE_UNAVAILABLE, "", &why),
        Err(UpdateError::Refused(why)) => error(StatusCode::CONFLICT, "", &why),
    }
}

async fn update_status(State(state): State<AppState>) -> Response {
    update_call(&state, UpdateOp::Status, StatusCode::OK).await
}

async fn update_check(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    match update_body(&body) {
        Ok(b) => update_call(&state, UpdateOp::Check { force: b.force }, StatusCode::OK).await,
        Err(r) => *r,
    }
}

async fn update_download(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    match update_body(&body) {
        Ok(b) => {
            update_call(
                &state,
                UpdateOp::Download { force: b.force },
                StatusCode::ACCEPTED,
            )
            .await
        }
        Err(r) => *r,
    }
}

async fn update_apply(State(state): State<AppState>) -> Response {
    update_call(&state, UpdateOp::Apply, StatusCode::OK).await
}

async fn update_cancel(State(state): State<AppState>) -> Response {
    update_call(&state, UpdateOp::Cancel, StatusCode::ACCEPTED).await
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI).into_response()
}

/// A refusal that also closes the connection: a caller without a valid
/// token keeps no connection open on the node.
fn refusal(
    status: StatusCode,
    message: &str,
    header: (header::HeaderName, &'static str),
) -> Response {
    let mut resp = error(status, "", message);
    let headers = resp.headers_mut();
    headers.insert(header.0, header::HeaderValue::from_static(header.1));
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    match state.3.check(presented.as_deref()).await {
        Verdict::Allowed => next.run(req).await,
        Verdict::Refused => refusal(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required",
            (header::WWW_AUTHENTICATE, "Bearer"),
        ),
        Verdict::Busy => refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many token verifications at once; try again",
            (header::RETRY_AFTER, "1"),
        ),
    }
}

/// The API for callers of the given kind.
pub fn router(state: AppState, access: Access) -> Router {
    let routes = Router::new()
        .route("/v1/settings", get(get_settings).patch(patch_settings))
        .route(
            "/v1/settings/pending",
            get(get_pending).delete(discard_pending),
        )
        .route("/v1/settings/commit", post(commit))
        .route("/v1/settings/{*path}", get(get_subtree))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/status", get(status))
        .route("/v1/logs", get(logs))
        .route("/v1/update", get(update_status))
        .route("/v1/update/check", post(update_check))
        .route("/v1/update/download", post(update_download))
        .route("/v1/update/apply", post(update_apply))
        .route("/v1/update/cancel", post(update_cancel))
        .route("/v1/power/reboot", post(reboot))
        .route("/v1/power/poweroff", post(poweroff))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    let routes = match access {
        Access::Local => routes,
        Access::Remote => {
            routes.layer(middleware::from_fn_with_state(state.clone(), require_token))
        }
    };
    routes.with_state(state)
}
