//! The settings file (/var/lib/carapace/settings.json) as every version of
//! Carapace shares it: an update, a rollback or a downgrade must never
//! strand a node by making its settings unreadable.
//!
//! ```json
//! { "schema": 1, "hostname": "node-1", "api": { "token_sha256": "…" }, … }
//! ```
//!
//! - **`schema`**, a whole number at the top of the file, names the layout
//!   of the tree: [`SCHEMA`] for this version. A file without it predates
//!   the field and is schema 1 (the same tree). `schema` is a property of
//!   the file, not a setting: the API neither serves nor accepts it.
//! - **Reading is lenient** ([`from_json`]): a field this version does not
//!   know, at any depth (top level, inside `api`, `network`, `updates`, one
//!   container, one route, …), is set aside with its path and value, and
//!   every field this version knows is kept. So is a sysctl outside this
//!   version's allow list (a newer version's list is longer). A field this
//!   version knows whose value is invalid is still an error, as is a file
//!   that is not a JSON object.
//! - **Writing loses nothing** ([`to_json`], what every save writes): the
//!   fields set aside go back where they were, as long as the object that
//!   held them is still there. When a change removes that object (a
//!   container deleted), they go with it, and a later change that creates
//!   an object of the same name does not bring them back: the store drops
//!   them when the change is staged. A field inside a list element (a
//!   route) stays only while that list is unchanged, since its index may
//!   then name another element.
//! - **The schema written** is the larger of [`SCHEMA`] and the file's:
//!   after a rollback the file is still mostly the newer version's (its
//!   fields are all kept), so the newer version, reading it back, must not
//!   run its migrations over it a second time.
//! - **An older schema** is first brought to this version's layout by
//!   `migrate` (the identity today: schema 1 is the first). A **newer
//!   schema** is read as it is, leniently.
//!
//! What this asks of future versions: a new setting is a new field (older
//! versions keep it without knowing it); a field whose meaning changes gets
//! a new name, with a schema bump and a migration, never a new meaning
//! under its old name, because an older version still reads and writes the
//! old name. New values in an existing field (a restart policy, a higher
//! limit) are refused by an older version like any invalid value.
//!
//! Only the file is read this way: a change through the API and first-boot
//! user data name unknown fields by mistake, and stay refused with the
//! field's path ([`Settings::from_value`]).

use crate::error::SettingsError;
use crate::settings::{path_error, PathError, Settings};
use serde_json::Value;
use std::fmt::Write as _;

/// The schema of the settings tree this version writes.
pub const SCHEMA: u32 = 1;

/// The top-level field of the settings file that holds its schema.
pub const SCHEMA_FIELD: &str = "schema";

/// At most this many unknown fields are set aside; a file with more is
/// refused (each costs a pass over the tree).
pub const MAX_UNKNOWN_FIELDS: usize = 1024;

/// One step of a path into the settings tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep {
    /// A field of an object, or a key of a map.
    Key(String),
    /// An element of a list.
    Index(usize),
}

/// A field of the settings file this version does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    steps: Vec<PathStep>,
    value: Value,
    /// For a field inside a list element: the outermost list on its path,
    /// as this version knew it when the file was read.
    list_as_read: Option<Value>,
}

impl UnknownField {
    /// Where the field is, as errors name fields: `api.colour`,
    /// `containers.web.gpu`, `network.routes[0].metric`.
    pub fn path(&self) -> String {
        let mut out = String::new();
        for step in &self.steps {
            match step {
                PathStep::Key(key) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
                }
                PathStep::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
            }
        }
        out
    }

    /// Where the field is, step by step (keys may hold dots).
    pub fn steps(&self) -> &[PathStep] {
        &self.steps
    }

    /// The field's value, as the file held it.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Whether the field still has its place in `known`, a tree as this
    /// version writes it: the object that held it exists and, inside a
    /// list, the list is as it was read.
    fn belongs_in(&self, known: &Value) -> bool {
        let Some((PathStep::Key(_), parent)) = self.steps.split_last() else {
            return false;
        };
        if let Some(at) = self
            .steps
            .iter()
            .position(|s| matches!(s, PathStep::Index(_)))
        {
            if lookup(known, &self.steps[..at]) != self.list_as_read.as_ref() {
                return false;
            }
        }
        matches!(lookup(known, parent), Some(Value::Object(_)))
    }
}

/// What settings read from the file keep without understanding: the schema
/// to write back and the unknown fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Preserved {
    schema: u32,
    fields: Vec<UnknownField>,
}

impl Default for Preserved {
    fn default() -> Self {
        Preserved {
            schema: SCHEMA,
            fields: Vec::new(),
        }
    }
}

impl Preserved {
    pub(crate) fn schema(&self) -> u32 {
        self.schema
    }

    pub(crate) fn fields(&self) -> &[UnknownField] {
        &self.fields
    }

    /// What stays of it once the known tree has become `known`: the fields
    /// whose place is still there.
    pub(crate) fn kept_in(&self, known: &Value) -> Preserved {
        Preserved {
            schema: self.schema,
            fields: self
                .fields
                .iter()
                .filter(|f| f.belongs_in(known))
                .cloned()
                .collect(),
        }
    }
}

/// Reads the settings file's JSON leniently (see the module's doc): the
/// settings this version knows, with the unknown fields and the schema to
/// write back kept in them ([`Settings::unknown_fields`],
/// [`Settings::file_schema`]).
pub fn from_json(mut tree: Value) -> Result<Settings, SettingsError> {
    let Value::Object(root) = &mut tree else {
        return Err(SettingsError::new(
            "",
            "the settings file does not hold a JSON object",
        ));
    };
    let schema = match root.remove(SCHEMA_FIELD) {
        None => 1,
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                SettingsError::new(
                    SCHEMA_FIELD,
                    format!("{v} is not a schema number (a whole number from 1)"),
                )
            })?,
    };
    let mut tree = migrate(schema, tree);
    // Deserialize; on an unknown field, set it aside and try again. Every
    // pass either ends or takes one field out, so this ends.
    let mut set_aside: Vec<(Vec<PathStep>, Value)> = Vec::new();
    let mut settings = loop {
        let err = match Settings::from_tree(&tree) {
            Ok(settings) => break settings,
            Err(err) => err,
        };
        let Some(steps) = unknown_field(&err) else {
            return Err(path_error(err));
        };
        if set_aside.len() == MAX_UNKNOWN_FIELDS {
            return Err(SettingsError::new(
                path_error(err).path,
                format!("more than {MAX_UNKNOWN_FIELDS} fields this version does not know"),
            ));
        }
        let Some(value) = take(&mut tree, &steps) else {
            return Err(path_error(err));
        };
        set_aside.push((steps, value));
    };
    let foreign_sysctls: Vec<String> = settings
        .sysctl
        .keys()
        .filter(|key| !crate::sysctl::ALLOWED.iter().any(|(k, _)| k == key))
        .cloned()
        .collect();
    for key in foreign_sysctls {
        if let Some(value) = settings.sysctl.remove(&key) {
            let steps = vec![PathStep::Key("sysctl".into()), PathStep::Key(key)];
            set_aside.push((steps, Value::String(value)));
        }
    }
    settings.check_across_fields()?;
    let known = settings.to_value_with_secrets();
    let fields = set_aside
        .into_iter()
        .map(|(steps, value)| {
            let list_as_read = steps
                .iter()
                .position(|s| matches!(s, PathStep::Index(_)))
                .and_then(|at| lookup(&known, &steps[..at]).cloned());
            UnknownField {
                steps,
                value,
                list_as_read,
            }
        })
        .collect();
    settings.preserved = Preserved {
        schema: schema.max(SCHEMA),
        fields,
    };
    Ok(settings)
}

/// The settings file's JSON for `settings`: the tree (registry passwords
/// included), its schema, and the unknown fields it was read with that
/// still have their place.
pub fn to_json(settings: &Settings) -> Value {
    let known = settings.to_value_with_secrets();
    let mut tree = known.clone();
    for field in settings.unknown_fields() {
        if !field.belongs_in(&known) {
            continue;
        }
        let Some((PathStep::Key(key), parent)) = field.steps.split_last() else {
            continue;
        };
        if let Some(Value::Object(object)) = lookup_mut(&mut tree, parent) {
            // A field this version writes wins over one it kept.
            object
                .entry(key.clone())
                .or_insert_with(|| field.value.clone());
        }
    }
    if let Value::Object(root) = &mut tree {
        root.insert(SCHEMA_FIELD.into(), Value::from(settings.file_schema()));
    }
    tree
}

/// Brings a tree written under an older `schema` to this version's layout,
/// one schema step after another. Schema 1 is the first, so there is no
/// step yet; a version that brings schema 2 adds `if schema < 2 { … }`
/// here. A newer schema passes unchanged.
fn migrate(schema: u32, tree: Value) -> Value {
    let _ = schema;
    tree
}

/// The path of the field `err` reports as unknown, if that is its error.
fn unknown_field(err: &PathError) -> Option<Vec<PathStep>> {
    use serde_path_to_error::Segment;
    let steps = err
        .path()
        .iter()
        .map(|segment| match segment {
            Segment::Seq { index } => Some(PathStep::Index(*index)),
            Segment::Map { key } => Some(PathStep::Key(key.clone())),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    let Some(PathStep::Key(key)) = steps.last() else {
        return None;
    };
    // serde's own wording for a field `deny_unknown_fields` refuses.
    err.inner()
        .to_string()
        .starts_with(&format!("unknown field `{key}`"))
        .then_some(steps)
}

fn lookup<'a>(tree: &'a Value, steps: &[PathStep]) -> Option<&'a Value> {
    steps.iter().try_fold(tree, |v, step| match step {
        PathStep::Key(key) => v.get(key.as_str()),
        PathStep::Index(i) => v.get(*i),
    })
}

fn lookup_mut<'a>(tree: &'a mut Value, steps: &[PathStep]) -> Option<&'a mut Value> {
    steps.iter().try_fold(tree, |v, step| match step {
        PathStep::Key(key) => v.get_mut(key.as_str()),
        PathStep::Index(i) => v.get_mut(*i),
    })
}

/// Takes the field at `steps` out of its object.
fn take(tree: &mut Value, steps: &[PathStep]) -> Option<Value> {
    let (PathStep::Key(key), parent) = steps.split_last()? else {
        return None;
    };
    match lookup_mut(tree, parent)? {
        Value::Object(object) => object.remove(key),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::TokenHash;
    use crate::store::Store;
    use serde_json::json;

    fn token_hash() -> String {
        TokenHash::of("0123456789abcdef").as_str().to_string()
    }

    /// A file as a newer version writes it: known settings with fields this
    /// version does not know at several depths.
    fn newer_file() -> Value {
        json!({
            "schema": 7,
            "hostname": "node-1",
            "telemetry": { "endpoint": "https://t.example.org" },
            "api": { "token_sha256": token_hash(), "allowed_clients": ["10.0.0.0/8"] },
            "network": { "dhcp": false, "addresses": ["10.0.2.15/24"],
                         "routes": [{ "to": "0.0.0.0/0", "via": "10.0.2.2", "metric": 100 }],
                         "mtu": 9000 },
            "updates": { "source": "https://updates.example.org/", "channel": "beta" },
            "sysctl": { "vm.swappiness": "10", "net.ipv4.tcp_fastopen": "3" },
            "containers": {
                "web": { "image": "nginx:1.27", "gpu": true },
                "db": { "image": "postgres:17" }
            }
        })
    }

    fn paths(s: &Settings) -> Vec<String> {
        let mut p: Vec<String> = s.unknown_fields().iter().map(UnknownField::path).collect();
        p.sort();
        p
    }

    /// Whether `written` holds every unknown field of `read` where it was,
    /// with its value.
    fn holds_unknown_fields_of(written: &Value, read: &Settings) -> bool {
        read.unknown_fields()
            .iter()
            .all(|f| lookup(written, f.steps()) == Some(f.value()))
    }

    fn commit(store: &mut Store, patch: Value) -> Value {
        store.stage(patch).expect("valid change");
        store.commit(|_, _, _| Ok(())).expect("commits");
        to_json(store.committed())
    }

    #[test]
    fn unknown_fields_at_any_depth_are_set_aside_and_known_ones_kept() {
        let s = from_json(newer_file()).expect("a newer file reads");
        assert_eq!(
            paths(&s),
            [
                "api.allowed_clients",
                "containers.web.gpu",
                "network.mtu",
                "network.routes[0].metric",
                "sysctl.net.ipv4.tcp_fastopen",
                "telemetry",
                "updates.channel",
            ]
        );
        assert_eq!(s.hostname.as_str(), "node-1");
        assert!(s
            .api
            .token_sha256
            .as_ref()
            .is_some_and(|h| h.matches("0123456789abcdef")));
        assert!(!s.network.dhcp);
        assert_eq!(s.network.routes.len(), 1);
        assert_eq!(s.sysctl.len(), 1, "the allowed sysctl is applied");
        assert_eq!(s.containers.len(), 2);
        assert_eq!(s.file_schema(), 7, "a newer schema is written back");
        let telemetry = s.unknown_fields().iter().find(|f| f.path() == "telemetry");
        assert_eq!(
            telemetry.map(UnknownField::value),
            Some(&json!({ "endpoint": "https://t.example.org" }))
        );
        assert!(
            !s.to_value().to_string().contains("gpu"),
            "the API serves only what this version knows"
        );
    }

    #[test]
    fn writing_back_puts_every_unknown_field_where_it_was() {
        let s = from_json(newer_file()).expect("reads");
        let written = to_json(&s);
        assert_eq!(s.unknown_fields().len(), 7);
        assert!(holds_unknown_fields_of(&written, &s), "{written:#}");
        assert_eq!(written[SCHEMA_FIELD], json!(7));
        assert_eq!(
            from_json(written).expect("reads again"),
            s,
            "nothing lost, nothing moved"
        );
    }

    #[test]
    fn a_known_field_with_a_bad_value_is_still_an_error() {
        let mut file = newer_file();
        file["network"]["addresses"] = json!(["10.0.2.15/33"]);
        assert_eq!(
            from_json(file).expect_err("invalid").path,
            "network.addresses[0]"
        );
        let mut file = newer_file();
        file["sysctl"]["vm.swappiness"] = json!("101");
        assert_eq!(
            from_json(file).expect_err("invalid").path,
            "sysctl.vm.swappiness"
        );
        let mut file = newer_file();
        file["containers"]["web"]["restart"] = json!("unless-stopped");
        assert_eq!(
            from_json(file).expect_err("invalid").path,
            "containers.web.restart"
        );
        assert_eq!(
            from_json(json!({ "schema": "two" }))
                .expect_err("bad schema")
                .path,
            "schema"
        );
        assert_eq!(
            from_json(json!({ "schema": 0 }))
                .expect_err("bad schema")
                .path,
            "schema"
        );
        assert!(from_json(json!(["not", "an", "object"])).is_err());
    }

    #[test]
    fn a_file_without_a_schema_is_schema_1_and_gets_ours_written() {
        let s = from_json(json!({ "hostname": "node-1" })).expect("reads");
        assert_eq!(s.file_schema(), SCHEMA);
        assert!(s.unknown_fields().is_empty());
        assert_eq!(
            to_json(&s)[SCHEMA_FIELD],
            json!(SCHEMA),
            "the current version writes its own schema"
        );
        assert_eq!(to_json(&Settings::default())[SCHEMA_FIELD], json!(SCHEMA));
    }

    #[test]
    fn the_api_still_refuses_unknown_fields_and_the_schema() {
        let s = from_json(newer_file()).expect("reads");
        let mut store = Store::new(s);
        assert_eq!(
            store
                .stage(json!({ "network": { "mtu": 1500 } }))
                .expect_err("unknown here")
                .path,
            "network.mtu"
        );
        assert_eq!(
            store
                .stage(json!({ "schema": 2 }))
                .expect_err("not a setting")
                .path,
            "schema"
        );
        assert!(store.pending().is_none());
    }

    #[test]
    fn an_unrelated_change_keeps_every_unknown_field() {
        let read = from_json(newer_file()).expect("reads");
        let mut store = Store::new(read.clone());
        let written = commit(&mut store, json!({ "hostname": "node-2" }));
        assert!(holds_unknown_fields_of(&written, &read), "{written:#}");
        assert_eq!(written["hostname"], json!("node-2"));
    }

    #[test]
    fn a_removed_container_takes_its_unknown_fields_and_does_not_get_them_back() {
        let mut store = Store::new(from_json(newer_file()).expect("reads"));
        let written = commit(&mut store, json!({ "containers": { "web": null } }));
        assert_eq!(written["containers"].get("web"), None);
        assert!(!paths(store.committed()).contains(&"containers.web.gpu".to_string()));
        assert_eq!(
            written["telemetry"],
            newer_file()["telemetry"],
            "the rest stays"
        );
        let written = commit(
            &mut store,
            json!({ "containers": { "web": { "image": "nginx:1.28" } } }),
        );
        assert_eq!(
            written["containers"]["web"].get("gpu"),
            None,
            "not resurrected"
        );
    }

    #[test]
    fn removed_and_recreated_in_one_transaction_is_still_removed() {
        let mut store = Store::new(from_json(newer_file()).expect("reads"));
        store
            .stage(json!({ "containers": { "web": null } }))
            .expect("valid");
        store
            .stage(json!({ "containers": { "web": { "image": "nginx:1.28" } } }))
            .expect("valid");
        store.commit(|_, _, _| Ok(())).expect("commits");
        assert_eq!(
            to_json(store.committed())["containers"]["web"].get("gpu"),
            None
        );
    }

    #[test]
    fn a_changed_list_drops_the_unknown_fields_of_its_elements() {
        let mut store = Store::new(from_json(newer_file()).expect("reads"));
        // Same list: the route keeps its metric.
        let written = commit(&mut store, json!({ "network": { "dns": ["10.0.2.3"] } }));
        assert_eq!(written["network"]["routes"][0]["metric"], json!(100));
        assert_eq!(written["network"]["mtu"], json!(9000));
        // A route put before it: index 0 is another route now.
        let written = commit(
            &mut store,
            json!({ "network": { "routes": [
                { "to": "192.0.2.0/24", "via": "10.0.2.1" },
                { "to": "0.0.0.0/0", "via": "10.0.2.2" } ] } }),
        );
        assert_eq!(written["network"]["routes"][0].get("metric"), None);
        assert_eq!(written["network"]["routes"][1].get("metric"), None);
        assert_eq!(written["network"]["mtu"], json!(9000), "the rest stays");
    }

    #[test]
    fn too_many_unknown_fields_are_refused() {
        let mut file = serde_json::Map::new();
        for i in 0..=MAX_UNKNOWN_FIELDS {
            file.insert(format!("f{i}"), json!(i));
        }
        let err = from_json(Value::Object(file)).expect_err("too many");
        assert!(err.message.contains("more than"), "{err}");
    }
}
