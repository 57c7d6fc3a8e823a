//! The client side of `org.carapace.Update1` on the node's system bus (the
//! `dbus` feature): the connection, the checks a caller makes before it
//! calls, and the proxy. The API's `/v1/update…` endpoints and the test
//! image's probe use it; the server is carapace-update's.
//!
//! | member | what it does |
//! |---|---|
//! | `Check(force: b) → s` | asks the source; the newer version it offers, or "" |
//! | `Download(force: b)` | starts writing the newest version into the inactive slot and proving it (returns at once; follow `StateChanged`) |
//! | `Apply() → s` | installs the downloaded version's UKI with a boot counter: the next boot tries it |
//! | `Cancel()` | stops a download at its next chunk |
//! | `Status() → (sdssbsssss)` | [`Status`] |
//! | signal `StateChanged((sdssbsssss))` | every change of the status |
//!
//! Only root may call it: the daemon answers anyone else with
//! `org.freedesktop.DBus.Error.AccessDenied`.

use crate::update::{Status, NAME};
use zbus::names::OwnedUniqueName;
use zbus::{fdo, Connection};

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

/// A client of the daemon. The attribute's names are [`NAME`] and
/// [`crate::update::PATH`] (a test holds them equal).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_calls_the_daemon_by_the_contracts_names() {
        assert_eq!(
            <Update1ClientProxy<'static> as zbus::proxy::Defaults>::INTERFACE
                .as_ref()
                .map(|i| i.as_str()),
            Some(NAME)
        );
        assert_eq!(
            <Update1ClientProxy<'static> as zbus::proxy::Defaults>::DESTINATION
                .as_ref()
                .map(|d| d.as_str()),
            Some(NAME)
        );
        assert_eq!(
            <Update1ClientProxy<'static> as zbus::proxy::Defaults>::PATH
                .as_ref()
                .map(|p| p.as_str()),
            Some(crate::update::PATH)
        );
        assert_eq!(
            SYSTEM_BUS.strip_prefix("unix:path="),
            Some(crate::paths::SYSTEM_BUS_SOCKET)
        );
    }
}
