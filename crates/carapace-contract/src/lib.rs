//! carapace-contract: what the node's programs agree on, defined once. PID 1
//! (carapace-init), the agents, the API and the CLI talk through files
//! under /run/carapace, signals to PID 1 and the system bus; this crate
//! holds each of those shapes so that the writer and every reader use the
//! same definition instead of string literals and `serde_json::Value`:
//!
//! - [`paths`] — where the shared files and sockets are;
//! - [`boot`], [`services`], [`network`], [`containers`] — the records of
//!   boot.json, services.json, network.json and containers.json, written
//!   by one program and read by others (the JSON keeps the names and shapes
//!   it has always had; readers ignore fields they do not know);
//! - [`logs`] — the log files' record format, rotation and writer, and the
//!   entries `GET /v1/logs` sends;
//! - [`clock`] — the milliseconds since boot everything is stamped with;
//! - [`power`] — which signal to PID 1 reboots and which powers off;
//! - [`update`] — the update daemon's names on the bus and its report;
//!   with the `dbus` feature, [`dbus`]: its client (the proxy and the
//!   helpers callers need), so that programs that do not talk D-Bus never
//!   compile zbus.
//!
//! Data and its (de)serialization only, plus the few lines that stamp and
//! append log records: it decides nothing, and knows no program's internal
//! types (a writer converts its own state into the record).

pub mod boot;
pub mod clock;
pub mod containers;
#[cfg(feature = "dbus")]
pub mod dbus;
pub mod logs;
pub mod network;
pub mod paths;
pub mod power;
pub mod services;
pub mod update;
