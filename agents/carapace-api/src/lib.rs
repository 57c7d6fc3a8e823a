//! carapace-api: the node's HTTP API for settings, as a library the
//! `carapace-api` daemon serves. It parses and validates requests and hands
//! them to the settings store; it never touches the kernel itself — applying
//! a committed change is the job of an [`Applier`].
//!
//! Endpoints (versioned under `/v1`, JSON bodies, documented in
//! `openapi.json`, served at `/v1/openapi.json`):
//! - `GET /v1/settings` — the committed settings; `GET /v1/settings/{path}` a subtree
//! - `PATCH /v1/settings` — stage a JSON merge patch (400 with the field's path if refused)
//! - `GET /v1/settings/pending`, `DELETE /v1/settings/pending`
//! - `POST /v1/settings/commit` — apply and persist the whole transaction, or nothing
//! - `GET /v1/status` — version, root hash, boot id, uptime, /var usage
//! - `POST /v1/power/reboot`, `POST /v1/power/poweroff` — ask PID 1 for an orderly one
//! - `GET /v1/logs` — the services' console lines (`follow=true` streams)
//! - `/v1/update…` — the update daemon over D-Bus ([`updates`])
//!
//! Remote callers (`Access::Remote`) must send `Authorization: Bearer <token>`
//! matching the committed token hash ([`auth`]: argon2id, bounded and
//! remembered once verified); local callers on the root-only Unix socket
//! need none. Neither listener can be starved: every connection counts
//! against a budget ([`admission`]), silent ones time out or give their
//! place to newer ones ([`connection`]), and the Unix socket ([`local`]) is
//! served apart from TCP ([`remote`]).

pub mod admission;
pub mod apply;
pub mod auth;
pub mod config_drive;
pub mod connection;
pub mod daemon;
pub mod first_boot;
pub mod local;
pub mod logs;
pub mod node;
pub mod remote;
pub mod routes;
pub mod tls;
pub mod updates;

pub use apply::{Applier, NodeApplier};
pub use node::{NodeOps, PowerAction, RealNode};
pub use routes::{router, Access, AppState};

/// The OpenAPI document of the API.
pub const OPENAPI: &str = include_str!("openapi.json");
