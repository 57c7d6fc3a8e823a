//! The update endpoints, handed to the update daemon over D-Bus
//! (`org.carapace.Update1` on the system bus):
//!
//! - `GET /v1/update` — the daemon's status (state, progress, running,
//!   fallback, available, staged, rolled-back versions, last error)
//! - `POST /v1/update/check` — asks the source; `{"available": "0.2.0"}` or null
//! - `POST /v1/update/download` — starts writing the newest version into the
//!   inactive slot (202; follow `GET /v1/update`); `{"force": true}` allows a downgrade
//! - `POST /v1/update/apply` — makes the downloaded version boot next (then
//!   `POST /v1/power/reboot`)
//! - `POST /v1/update/cancel` — stops a download
//!
//! A daemon that is not there is a 503; one that refuses (nothing newer,
//! busy, a bad signature…) is a 409 with its reason. The client (bus,
//! proxy, the root-owner check) is [`carapace_contract::dbus`].

use carapace_contract::dbus::{self, Update1ClientProxy};
use std::future::Future;
use std::pin::Pin;

/// One request to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOp {
    Status,
    Check { force: bool },
    Download { force: bool },
    Apply,
    Cancel,
}

/// Why the daemon did not do it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateError {
    /// The daemon (or the bus) cannot be reached.
    Unavailable(String),
    /// The daemon refused, and said why.
    Refused(String),
}

/// What an update request answers with.
pub type UpdateResult = Result<serde_json::Value, UpdateError>;

/// The update daemon as the API sees it.
pub trait Updates: Send + Sync {
    fn call(&self, op: UpdateOp) -> Pin<Box<dyn Future<Output = UpdateResult> + Send + '_>>;
}

/// The real daemon on the system bus.
#[derive(Default)]
pub struct DbusUpdates {
    conn: tokio::sync::Mutex<Option<zbus::Connection>>,
}

impl DbusUpdates {
    async fn proxy(&self) -> Result<Update1ClientProxy<'static>, UpdateError> {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            let c = dbus::system_bus()
                .build()
                .await
                .map_err(|e| UpdateError::Unavailable(format!("the system bus: {e}")))?;
            *conn = Some(c);
        }
        let c = conn
            .clone()
            .ok_or_else(|| UpdateError::Unavailable("no bus connection".into()))?;
        // Only a daemon running as root is asked, by its unique name.
        let owner = match dbus::root_owner(&c).await {
            Ok(Some(owner)) => owner,
            Ok(None) => {
                return Err(UpdateError::Unavailable(
                    "the update daemon is not on the system bus (not running yet?)".into(),
                ))
            }
            Err(zbus::Error::Failure(why)) => return Err(UpdateError::Unavailable(why)),
            Err(e) => {
                *conn = None;
                return Err(UpdateError::Unavailable(format!("the system bus: {e}")));
            }
        };
        Update1ClientProxy::builder(&c)
            .destination(owner)
            .build()
            .await
            .map_err(|e| UpdateError::Unavailable(e.to_string()))
    }

    async fn run(&self, op: UpdateOp) -> UpdateResult {
        let proxy = self.proxy().await?;
        let result = match op {
            UpdateOp::Status => proxy
                .status()
                .await
                .map(|s| serde_json::to_value(s).unwrap_or_default()),
            UpdateOp::Check { force } => proxy
                .check(force)
                .await
                .map(|v| serde_json::json!({ "available": (!v.is_empty()).then_some(v) })),
            UpdateOp::Download { force } => proxy
                .download(force)
                .await
                .map(|()| serde_json::json!({ "started": "download" })),
            UpdateOp::Apply => proxy
                .apply()
                .await
                .map(|v| serde_json::json!({ "staged": v, "next": "POST /v1/power/reboot" })),
            UpdateOp::Cancel => proxy
                .cancel()
                .await
                .map(|()| serde_json::json!({ "requested": "cancel" })),
        };
        let result = result.map_err(map_error);
        if matches!(result, Err(UpdateError::Unavailable(_))) {
            *self.conn.lock().await = None;
        }
        result
    }
}

/// The daemon refuses with org.freedesktop.DBus.Error.Failed (a refusal the
/// caller can act on), which zbus hands over in either of two forms; any
/// other error means the daemon could not be asked.
fn map_error(e: zbus::Error) -> UpdateError {
    match e {
        zbus::Error::MethodError(name, message, _)
            if name.as_str() == "org.freedesktop.DBus.Error.Failed" =>
        {
            UpdateError::Refused(message.unwrap_or_default())
        }
        zbus::Error::FDO(fdo) => match *fdo {
            zbus::fdo::Error::Failed(message) => UpdateError::Refused(message),
            other => UpdateError::Unavailable(format!("the update daemon: {other}")),
        },
        other => UpdateError::Unavailable(format!("the update daemon: {other}")),
    }
}

impl Updates for DbusUpdates {
    fn call(&self, op: UpdateOp) -> Pin<Box<dyn Future<Output = UpdateResult> + Send + '_>> {
        Box::pin(self.run(op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_by_the_daemon_is_a_refusal_and_anything_else_unavailable() {
        let failed = zbus::Error::FDO(Box::new(zbus::fdo::Error::Failed(
            "nothing is downloaded".into(),
        )));
        assert!(
            matches!(map_error(failed), UpdateError::Refused(m) if m == "nothing is downloaded")
        );
        let denied = zbus::Error::FDO(Box::new(zbus::fdo::Error::AccessDenied("no".into())));
        assert!(matches!(map_error(denied), UpdateError::Unavailable(_)));
        assert!(matches!(
            map_error(zbus::Error::InvalidReply),
            UpdateError::Unavailable(_)
        ));
    }
}
