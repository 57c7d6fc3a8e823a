//! The daemon's D-Bus interface, `org.carapace.Update1` at
//! `/org/carapace/Update1` on the system bus:
//!
//! | member | what it does |
//! |---|---|
//! | `Check(force: b) → s` | asks the source; the newer version it offers, or "" |
//! | `Download(force: b)` | starts writing the newest version into the inactive slot and proving it (returns at once; follow `StateChanged`) |
//! | `Apply()` | installs the downloaded version's UKI with a boot counter: the next boot tries it |
//! | `Cancel()` | stops a download at its next chunk |
//! | `Status() → (sdssbsssss)` | [`Status`] |
//! | signal `StateChanged((sdssbsssss))` | every change of the status |
//!
//! Only root may call it: every method asks the bus for the caller's uid
//! (or, on a direct connection, the peer's credentials) and answers anyone
//! else with `org.freedesktop.DBus.Error.AccessDenied`.

use crate::engine::Engine;
use crate::status::{State, Status};
use std::sync::Arc;
use zbus::message::Header;
use zbus::names::OwnedUniqueName;
use zbus::object_server::SignalEmitter;
use zbus::{fdo, interface, Connection};

/// The bus name, object path and interface name.
pub const NAME: &str = "org.carapace.Update1";
/// The node's system bus (carapace-bus). Named outright: zbus's default,
/// /var/run/…, is on the state partition here, not a link to /run.
pub const SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";

/// How long a call on the system bus may wait for its answer: the broker
/// (busd) drops a call to a name nobody owns without an error, and the
/// longest call (Apply, fetching and installing a UKI) takes seconds.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A connection builder for the node's system bus.
pub fn system_bus<'a>() -> zbus::connection::Builder<'a> {
    zbus::connection::Builder::address(SYSTEM_BUS).method_timeout(CALL_TIMEOUT)
}

/// Whether the daemon owns its name on the bus now (callers ask before
/// calling, so that a missing daemon is an answer, not a wait).
pub async fn daemon_present(conn: &Connection) -> zbus::Result<bool> {
    let bus = fdo::DBusProxy::new(conn).await?;
    let name = zbus::names::BusName::try_from(NAME)?;
    Ok(bus.name_has_owner(name).await?)
}
/// Who answers for the daemon: the unique name owning [`NAME`] now, if its
/// process runs as root (the bus puts SO_PEERCRED behind
/// GetConnectionUnixUser, which a peer cannot forge). Calling that unique
/// name rather than the well-known one means no other process can answer,
/// not even in the instant before the bus evicts a non-root owner. None:
/// nobody owns the name.
pub async fn root_owner(conn: &Connection) -> zbus::Result<Option<OwnedUniqueName>> {
    let bus = fdo::DBusProxy::new(conn).await?;
    let name = zbus::names::BusName::try_from(NAME)?;
    let owner = match bus.get_name_owner(name).await {
        Ok(owner) => owner,
        Err(fdo::Error::NameHasNoOwner(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let uid = bus
        .get_connection_unix_user(zbus::names::BusName::from(owner.as_ref()))
        .await?;
    if uid != 0 {
        return Err(zbus::Error::Failure(format!(
            "{NAME} is owned by {owner}, which runs as uid {uid}, not root"
        )));
    }
    Ok(Some(owner))
}

pub const PATH: &str = "/org/carapace/Update1";

/// The object served at [`PATH`].
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

/// A client of the daemon (the API server uses it).
#[zbus::proxy(
    interface = "org.carapace.Update1",
    default_service = "org.carapace.Update1",
    default_path = "/org/carapace/Update1"
)]
pub trait Update1Client {
    fn check(&self, force: bool) -> zbus::Result<String>;
    fn download(&self, force: bool) -> zbus::Result<()>;
    fn apply(&self) -> zbus::Result<String>;
    fn cancel(&self) -> zbus::Result<()>;
    fn status(&self) -> zbus::Result<Status>;
    #[zbus(signal)]
    fn state_changed(&self, status: Status) -> zbus::Result<()>;
}
