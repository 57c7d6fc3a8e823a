//! Who may own which well-known name: only root may own
//! `org.carapace.Update1`, so that no local process can pose as the update
//! daemon and answer the API's update calls.
//!
//! busd 0.6 reads no policy and has no hook on `RequestName`: it grants any
//! free name to any peer. So the rule is kept right after the grant, from
//! inside the bus: [`enforce`] joins the bus as a client of its own,
//! listens for `NameOwnerChanged` of each guarded name, looks up the uid the
//! kernel gave for the new owner's socket (SO_PEERCRED, which the peer
//! cannot forge) in the bus's own table of peers, and when it is not 0,
//! takes every name of that peer back and disconnects it. A name granted
//! before the watch began is checked once the watch is in place.
//!
//! What it does not do: refuse the `RequestName` itself. Between the grant
//! and the eviction (the time for the bus to deliver one signal to its own
//! client, well under a millisecond on an idle node) a call addressed to
//! the name can reach the impostor. A client that must not talk to an
//! impostor even then resolves the owner's unique name, checks its uid with
//! `GetConnectionUnixUser`, and calls that unique name (unique names are
//! never reused).

use busd::name_registry::NameOwnerChanged;
use busd::peers::Peers;
use futures_util::stream::{self, StreamExt};
use std::sync::Arc;
use zbus::message::Type;
use zbus::names::{BusName, UniqueName, WellKnownName};
use zbus::{MatchRule, MessageStream};

/// The names only uid 0 may own: the update daemon's.
pub const ROOT_ONLY: &[&str] = &[carapace_contract::update::NAME];

/// Whether a peer whose socket belongs to `uid` (None: unknown) may own `name`.
pub fn may_own(name: &str, uid: Option<u32>) -> bool {
    !ROOT_ONLY.contains(&name) || uid == Some(0)
}

/// The uid of the socket of the peer `unique`, as the bus recorded it.
async fn uid_of(peers: &Peers, unique: &str) -> Option<u32> {
    let conn = peers.peers().await.get(unique).map(|p| p.conn().clone())?;
    conn.peer_creds().await.ok()?.unix_user_id()
}

/// Takes every name of the peer `unique` back and disconnects it.
async fn evict(peers: &Peers, unique: UniqueName<'_>) -> Result<(), String> {
    let changes = peers
        .name_registry_mut()
        .await
        .release_all(unique.clone())
        .await;
    for change in changes {
        peers
            .notify_name_changes(change)
            .await
            .map_err(|e| format!("cannot announce a released name: {e}"))?;
    }
    // Dropping the peer ends the task that serves it, which closes its socket.
    let removed = peers.peers_mut().await.remove(unique.as_str()).is_some();
    if removed {
        peers
            .notify_name_changes(NameOwnerChanged {
                name: BusName::from(unique.clone()).into(),
                old_owner: Some(unique.clone().into()),
                new_owner: None,
            })
            .await
            .map_err(|e| format!("cannot announce that {unique} left: {e}"))?;
    }
    Ok(())
}

/// Checks the owner `unique` of `name`; evicts it when it may not own it.
async fn check(peers: &Peers, name: &str, unique: &str) -> Result<(), String> {
    let Ok(owner) = UniqueName::try_from(unique) else {
        return Ok(());
    };
    let uid = uid_of(peers, unique).await;
    if may_own(name, uid) {
        return Ok(());
    }
    let who = uid.map_or("unknown".to_string(), |u| u.to_string());
    println!(
        "carapace-bus: {unique} (uid {who}) took {name}, which only root may own: disconnected"
    );
    evict(peers, owner).await
}

/// Keeps [`ROOT_ONLY`] for root on the bus at `address`, whose peers are
/// `peers`; returns only when it can no longer watch (the bus must then
/// stop: a bus without its policy must not go on).
pub async fn enforce(peers: Arc<Peers>, address: &str) -> Result<(), String> {
    let conn = zbus::connection::Builder::address(address)
        .build()
        .await
        .map_err(|e| format!("cannot join the bus to watch names: {e}"))?;
    let mut watches = Vec::new();
    for name in ROOT_ONLY {
        let rule = MatchRule::builder()
            .msg_type(Type::Signal)
            .sender("org.freedesktop.DBus")
            .interface("org.freedesktop.DBus")
            .member("NameOwnerChanged")
            .arg(0, *name)
            .build()
            .map_err(|e| format!("cannot watch {name}: {e}"))?;
        let watch = MessageStream::for_match_rule(rule, &conn, None)
            .await
            .map_err(|e| format!("cannot watch {name}: {e}"))?;
        watches.push(watch);
    }
    // Names taken before the watch began.
    for name in ROOT_ONLY {
        let Ok(well_known) = WellKnownName::try_from(*name) else {
            continue;
        };
        let owner = peers.name_registry().await.lookup(well_known);
        if let Some(owner) = owner {
            check(&peers, name, owner.as_str()).await?;
        }
    }
    let mut changes = stream::select_all(watches);
    while let Some(message) = changes.next().await {
        let message = message.map_err(|e| format!("watching names: {e}"))?;
        let Ok((name, _old, new)) = message.body().deserialize::<(String, String, String)>() else {
            continue;
        };
        if !new.is_empty() {
            check(&peers, &name, &new).await?;
        }
    }
    Err("the bus closed the connection that watches names".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_may_own_the_update_name() {
        assert!(may_own("org.carapace.Update1", Some(0)));
        assert!(!may_own("org.carapace.Update1", Some(65534)));
        assert!(!may_own("org.carapace.Update1", Some(1)));
        assert!(!may_own("org.carapace.Update1", None));
        assert!(may_own("org.example.Anything", Some(65534)));
        assert!(may_own("org.carapace.Update2", Some(1000)));
    }
}
