//! The daemon's D-Bus interface, `org.carapace.Update1` at
//! `/org/carapace/Update1` on the system bus: the server. The names, the
//! status it reports and the client proxy (the API's, the test probe's) are
//! carapace-contract's ([`carapace_contract::update`],
//! `carapace_contract::dbus`, which lists the members).
//!
//! Only root may call it: every method asks the bus for the caller's uid
//! (or, on a direct connection, the peer's credentials) and answers anyone
//! else with `org.freedesktop.DBus.Error.AccessDenied`.

use crate::engine::Engine;
use carapace_contract::update::{State, Status, NAME};
use std::sync::Arc;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{fdo, interface, Connection};

/// The object served at [`carapace_contract::update::PATH`].
pub struct Update1 {
    pub engine: Arc<Engine>,
}

/// Refuses every caller but root.
async fn require_root(header: &Header<'_>, connection: &Connection) -> fdo::Result<()> {
    let uid = match header.sender() {
        Some(sender) => {
            let bus = fdo::DBusProxy::new(connection).await?;
            bus.get_connection_unix_user(sender.clone().into()).await?
        }
        None => connection
            .peer_creds()
            .await
            .map_err(|e| fdo::Error::AccessDenied(format!("the caller's credentials: {e}")))?
            .unix_user_id()
            .ok_or_else(|| fdo::Error::AccessDenied("the caller's uid is unknown".into()))?,
    };
    if uid == 0 {
        Ok(())
    } else {
        Err(fdo::Error::AccessDenied(format!(
            "only root may call {NAME}, not uid {uid}"
        )))
    }
}

fn failed(e: String) -> fdo::Error {
    fdo::Error::Failed(e)
}

#[interface(name = "org.carapace.Update1")]
impl Update1 {
    async fn check(
        &self,
        force: bool,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> fdo::Result<String> {
        require_root(&header, connection).await?;
        self.engine.begin(State::Checking).map_err(failed)?;
        let result = self.engine.check(force).await;
        let outcome = result.as_ref().map(drop).map_err(Clone::clone);
        self.engine.end(&outcome, State::Idle);
        let found = result.map_err(failed)?;
        Ok(found
            .map(|offer| offer.manifest.version.to_string())
            .unwrap_or_default())
    }

    async fn download(
        &self,
        force: bool,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> fdo::Result<()> {
        require_root(&header, connection).await?;
        self.engine.may_update().map_err(failed)?;
        self.engine.begin(State::Checking).map_err(failed)?;
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let result = engine.download(force).await.map(drop);
            engine.end(&result, State::Idle);
        });
        Ok(())
    }

    async fn apply(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> fdo::Result<String> {
        require_root(&header, connection).await?;
        self.engine.may_update().map_err(failed)?;
        self.engine.begin(State::Writing).map_err(failed)?;
        let result = self.engine.apply().await;
        let outcome = result.as_ref().map(drop).map_err(Clone::clone);
        self.engine.end(&outcome, State::ReadyToReboot);
        result.map_err(failed)
    }

    async fn cancel(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> fdo::Result<()> {
        require_root(&header, connection).await?;
        self.engine.cancel().map_err(failed)
    }

    async fn status(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> fdo::Result<Status> {
        require_root(&header, connection).await?;
        Ok(self.engine.status())
    }

    #[zbus(signal)]
    pub async fn state_changed(emitter: &SignalEmitter<'_>, status: Status) -> zbus::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interface_is_served_under_the_contracts_name() {
        use zbus::object_server::Interface;
        assert_eq!(Update1::name().as_str(), NAME);
    }
}
