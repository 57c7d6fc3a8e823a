//! Transactions: changes are staged into a pending settings tree, validated
//! as they arrive, and committed all at once or not at all.

use crate::error::SettingsError;
use crate::settings::{check_token, Area, SaltedTokenHash, Settings};
use serde_json::{Map, Value};

/// RFC 7396 JSON merge patch: objects merge key by key, `null` deletes, any
/// other value replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// A change as the store stages it: a JSON object in which a plain
/// `api.token` has been replaced by its salted hash. Preparing is the slow
/// part of staging (argon2id, when the change sets a token), so a server can
/// do it before it takes the lock that guards its [`Store`].
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared(Value);

impl Prepared {
    /// The patch to merge.
    pub fn value(&self) -> &Value {
        &self.0
    }
}

/// The `api` keys derived from `api.token`, which a change may not set itself.
const DERIVED_TOKEN_KEYS: [&str; 3] = ["token_hash", "token_sha256", "token_set"];

/// Turns a patch as users write it into one the tree accepts: the document
/// must be an object, and a plain `api.token` is replaced by its salted
/// hash (`api.token_hash`; the token itself is never kept), which also drops
/// an older version's unsalted `api.token_sha256`; `"token": null` removes
/// both. Setting a hash, or the served `token_set`, directly is refused.
pub fn prepare_patch(mut patch: Value) -> Result<Prepared, SettingsError> {
    let Value::Object(root) = &mut patch else {
        return Err(SettingsError::new(
            "",
            "a settings change must be a JSON object",
        ));
    };
    if let Some(Value::Object(api)) = root.get_mut("api") {
        if let Some(key) = DERIVED_TOKEN_KEYS.iter().find(|k| api.contains_key(**k)) {
            return Err(SettingsError::new(
                format!("api.{key}"),
                "derived from api.token; set api.token instead",
            ));
        }
        if let Some(token) = api.remove("token") {
            let hash = match token {
                Value::String(t) => {
                    check_token(&t).map_err(|m| SettingsError::new("api.token", m))?;
                    let hash =
                        SaltedTokenHash::of(&t).map_err(|m| SettingsError::new("api.token", m))?;
                    Value::String(hash.as_str().to_string())
                }
                Value::Null => Value::Null,
                _ => return Err(SettingsError::new("api.token", "must be a string")),
            };
            api.insert("token_hash".into(), hash);
            api.insert("token_sha256".into(), Value::Null);
        }
    }
    Ok(Prepared(patch))
}

/// Why a commit did not take effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    #[error("nothing is staged")]
    NothingStaged,
    #[error("applying the new settings failed, the previous settings stay in force: {0}")]
    Apply(String),
}

/// The committed settings and the transaction being staged.
#[derive(Debug, Clone)]
pub struct Store {
    committed: Settings,
    pending: Option<Settings>,
}

impl Store {
    pub fn new(committed: Settings) -> Store {
        Store {
            committed,
            pending: None,
        }
    }

    pub fn committed(&self) -> &Settings {
        &self.committed
    }

    pub fn pending(&self) -> Option<&Settings> {
        self.pending.as_ref()
    }

    /// Merges `patch` into the pending transaction (started from the committed
    /// settings if there is none). A bad patch changes nothing.
    pub fn stage(&mut self, patch: Value) -> Result<&Settings, SettingsError> {
        let patch = prepare_patch(patch)?;
        self.stage_prepared(&patch)
    }

    /// [`Store::stage`] of a change already prepared ([`prepare_patch`]).
    pub fn stage_prepared(&mut self, patch: &Prepared) -> Result<&Settings, SettingsError> {
        let base = self.pending.as_ref().unwrap_or(&self.committed);
        let mut tree = base.to_value_with_secrets();
        merge_patch(&mut tree, &patch.0);
        let mut staged = Settings::from_value(tree)?;
        // What the settings file held that this version does not know stays
        // only where its place survived the change (a removed container
        // takes its unknown fields with it, for good).
        staged.preserved = base.preserved.kept_in(&staged.to_value_with_secrets());
        Ok(self.pending.insert(staged))
    }

    /// Drops the pending transaction.
    pub fn discard(&mut self) {
        self.pending = None;
    }

    /// Commits the pending transaction: `apply(old, new, areas)` must put the
    /// new settings into effect — and, if it fails part-way, restore the old
    /// ones — before they become the committed settings. On failure nothing
    /// changes and the transaction stays pending.
    pub fn commit(
        &mut self,
        apply: impl FnOnce(&Settings, &Settings, &[Area]) -> Result<(), String>,
    ) -> Result<Vec<Area>, CommitError> {
        let new = self.pending.as_ref().ok_or(CommitError::NothingStaged)?;
        let areas = self.committed.changed_areas(new);
        apply(&self.committed, new, &areas).map_err(CommitError::Apply)?;
        if let Some(new) = self.pending.take() {
            self.committed = new;
        }
        Ok(areas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut t = json!({ "a": "b", "c": { "d": "e", "f": "g" } });
        merge_patch(&mut t, &json!({ "a": "z", "c": { "f": null } }));
        assert_eq!(t, json!({ "a": "z", "c": { "d": "e" } }));
        let mut t = json!({ "a": ["b"] });
        merge_patch(&mut t, &json!({ "a": ["c", "d"] }));
        assert_eq!(t, json!({ "a": ["c", "d"] }));
    }

    #[test]
    fn staging_accumulates_and_commit_applies_once() {
        let mut store = Store::new(Settings::default());
        store.stage(json!({ "hostname": "node-1" })).expect("valid");
        store
            .stage(json!({ "sysctl": { "vm.swappiness": "10" } }))
            .expect("valid");
        assert_eq!(
            store.committed().hostname.as_str(),
            "carapace",
            "nothing applies before commit"
        );
        let mut calls = 0;
        let areas = store
            .commit(|old, new, areas| {
                calls += 1;
                assert_eq!(old.hostname.as_str(), "carapace");
                assert_eq!(new.hostname.as_str(), "node-1");
                assert_eq!(areas, [Area::Hostname, Area::Sysctl]);
                Ok(())
            })
            .expect("commits");
        assert_eq!(calls, 1);
        assert_eq!(areas, vec![Area::Hostname, Area::Sysctl]);
        assert_eq!(store.committed().hostname.as_str(), "node-1");
        assert!(store.pending().is_none());
    }

    #[test]
    fn a_bad_field_stages_nothing() {
        let mut store = Store::new(Settings::default());
        store.stage(json!({ "hostname": "node-1" })).expect("valid");
        let err = store
            .stage(json!({ "hostname": "node-2", "network": { "addresses": ["nonsense"] } }))
            .expect_err("refused");
        assert_eq!(err.path, "network.addresses[0]");
        assert_eq!(
            store.pending().map(|p| p.hostname.as_str()),
            Some("node-1"),
            "the earlier stage stands, the bad one left no trace"
        );
    }

    #[test]
    fn a_failed_apply_keeps_the_committed_settings() {
        let mut store = Store::new(Settings::default());
        store.stage(json!({ "hostname": "node-1" })).expect("valid");
        let err = store
            .commit(|_, _, _| Err("sethostname: EPERM".into()))
            .expect_err("fails");
        assert!(err.to_string().contains("previous settings stay in force"));
        assert_eq!(store.committed().hostname.as_str(), "carapace");
        assert!(store.pending().is_some());
        assert_eq!(
            Store::new(Settings::default()).commit(|_, _, _| Ok(())),
            Err(CommitError::NothingStaged)
        );
    }

    #[test]
    fn tokens_are_hashed_on_the_way_in() {
        let mut store = Store::new(Settings::default());
        let staged = store
            .stage(json!({ "api": { "token": "0123456789abcdef" } }))
            .expect("valid");
        let hash = staged.api.token_hash.clone().expect("hash stored");
        assert!(hash.as_str().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(hash.verify("0123456789abcdef"));
        assert!(!hash.verify("0123456789abcdeF"));
        assert!(
            !staged
                .to_value_with_secrets()
                .to_string()
                .contains("0123456789abcdef"),
            "the token itself is not kept"
        );
        assert_eq!(
            store
                .stage(json!({ "api": { "token": "short" } }))
                .expect_err("too short")
                .path,
            "api.token"
        );
        for derived in ["token_hash", "token_sha256", "token_set"] {
            assert_eq!(
                store
                    .stage(json!({ "api": { derived: hash.as_str() } }))
                    .expect_err("derived")
                    .path,
                format!("api.{derived}")
            );
        }
        let cleared = store
            .stage(json!({ "api": { "token": null } }))
            .expect("valid");
        assert!(cleared.api.token_hash.is_none());
        assert!(!cleared.api.token_set());
        assert!(store.stage(json!(["not", "an", "object"])).is_err());
    }

    #[test]
    fn the_same_token_set_twice_is_stored_under_different_salts() {
        let mut store = Store::new(Settings::default());
        let patch = json!({ "api": { "token": "0123456789abcdef" } });
        let first = store.stage(patch.clone()).expect("valid").clone();
        let second = store.stage(patch).expect("valid").clone();
        let (a, b) = (
            first.api.token_hash.expect("hash"),
            second.api.token_hash.expect("hash"),
        );
        assert_ne!(a.as_str(), b.as_str(), "a fresh salt each time");
        assert!(a.verify("0123456789abcdef") && b.verify("0123456789abcdef"));
    }

    #[test]
    fn a_new_token_drops_an_older_versions_sha256() {
        use crate::settings::{TokenCheck, TokenHash};
        let old = Settings::from_value(json!({
            "api": { "token_sha256": TokenHash::of("old-token-0123456789").as_str() }
        }))
        .expect("an older version's settings");
        assert!(matches!(old.api.token_check(), TokenCheck::Sha256(_)));
        assert!(old.api.token_check().verify("old-token-0123456789"));
        let mut store = Store::new(old);
        let staged = store
            .stage(json!({ "api": { "token": "new-token-0123456789" } }))
            .expect("valid");
        assert!(
            staged.api.token_sha256.is_none(),
            "the unsalted hash is gone"
        );
        assert!(matches!(staged.api.token_check(), TokenCheck::Salted(_)));
        assert!(staged.api.token_check().verify("new-token-0123456789"));
        assert!(!staged.api.token_check().verify("old-token-0123456789"));
        let cleared = store
            .stage(json!({ "api": { "token": null } }))
            .expect("valid");
        assert_eq!(cleared.api.token_check(), TokenCheck::None);
    }

    #[test]
    fn null_resets_a_setting_to_its_default() {
        let mut store = Store::new(Settings::default());
        store.stage(json!({ "hostname": "node-1" })).expect("valid");
        let s = store.stage(json!({ "hostname": null })).expect("valid");
        assert_eq!(s.hostname.as_str(), "carapace");
    }
}
