//! The human-readable output: settings as `key.path = value` lines (values
//! in JSON, so they read back with `set`), a diff of staged changes, and a
//! status summary with a services table.

use serde_json::Value;
use std::fmt::Write as _;

/// Flattens `value` found at `prefix` into `key.path = value` lines. Objects
/// are walked; everything else (arrays included) is one JSON value. An
/// empty object shows as `{}`.
pub fn settings_lines(prefix: &[String], value: &Value) -> Vec<String> {
    flatten(prefix, value)
        .into_iter()
        .map(|(k, v)| {
            if k.is_empty() {
                v
            } else {
                format!("{k} = {v}")
            }
        })
        .collect()
}

/// `(key, value)` pairs, both rendered.
fn flatten(prefix: &[String], value: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut path = prefix.to_vec();
    walk(&mut path, value, &mut out);
    out
}

fn walk(path: &mut Vec<String>, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                path.push(k.clone());
                walk(path, v, out);
                path.pop();
            }
        }
        other => out.push((render_key(path), other.to_string())),
    }
}

/// A dotted key; segments that would not read back (dots, quotes, `=`,
/// spaces, empty) are quoted.
pub fn render_key(path: &[String]) -> String {
    let rendered: Vec<String> = path
        .iter()
        .map(|s| {
            if s.is_empty() || s.contains(['.', '"', '=', ' ', '\t']) {
                format!("\"{s}\"")
            } else {
                s.clone()
            }
        })
        .collect();
    rendered.join(".")
}

/// What staging changed: `key = new (was old)` lines, for keys added,
/// changed or removed between `committed` and `pending`.
pub fn diff_lines(committed: &Value, pending: &Value) -> Vec<String> {
    let before = flatten(&[], committed);
    let after = flatten(&[], pending);
    let mut out = Vec::new();
    for (k, v) in &after {
        match before.iter().find(|(bk, _)| bk == k) {
            Some((_, old)) if old == v => {}
            Some((_, old)) => out.push(format!("{k} = {v} (was {old})")),
            None => out.push(format!("{k} = {v} (new)")),
        }
    }
    for (k, old) in &before {
        if !after.iter().any(|(ak, _)| ak == k) {
            out.push(format!("{k} removed (was {old})"));
        }
    }
    out
}

/// `/v1/status` for people: the version first, the other fields as
/// `key = value` lines, then the services as a table. It shows whatever
/// fields the node sends, so it stays a walk over JSON rather than
/// carapace-contract's records: a node of another version shows all it has.
pub fn status_text(status: &Value) -> String {
    let mut out = String::new();
    let Value::Object(map) = status else {
        return format!("{status}\n");
    };
    if let Some(v) = map.get("version") {
        let _ = writeln!(out, "version = {}", scalar(v));
    }
    for (k, v) in map {
        if k == "version" || k == "services" {
            continue;
        }
        for line in settings_lines(std::slice::from_ref(k), v) {
            let _ = writeln!(out, "{line}");
        }
    }
    if let Some(Value::Array(services)) = map.get("services") {
        let rows: Vec<[String; 3]> = services
            .iter()
            .map(|s| {
                [
                    s.get("name").map(scalar).unwrap_or_else(|| "?".into()),
                    s.get("state").map(scalar).unwrap_or_else(|| "-".into()),
                    s.get("restarts").map(scalar).unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        let header = ["SERVICE".to_string(), "STATE".into(), "RESTARTS".into()];
        let width = |i: usize| {
            rows.iter()
                .chain(std::iter::once(&header))
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        };
        let (w0, w1) = (width(0), width(1));
        let _ = writeln!(out);
        for row in std::iter::once(&header).chain(rows.iter()) {
            let _ = writeln!(out, "{:w0$}  {:w1$}  {}", row[0], row[1], row[2]);
        }
    }
    out
}

/// A string without its quotes; anything else as JSON.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_flatten_to_key_value_lines() {
        let tree = json!({
            "hostname": "node1",
            "network": {"dhcp": true, "dns": ["9.9.9.9"], "routes": []},
            "sysctl": {"net.ipv4.ip_forward": "1"},
            "updates": {},
            "api": {"token_sha256": null},
        });
        assert_eq!(
            settings_lines(&[], &tree),
            vec![
                "api.token_sha256 = null",
                "hostname = \"node1\"",
                "network.dhcp = true",
                "network.dns = [\"9.9.9.9\"]",
                "network.routes = []",
                "sysctl.\"net.ipv4.ip_forward\" = \"1\"",
                "updates = {}",
            ]
        );
    }

    #[test]
    fn a_subtree_keeps_its_key() {
        let prefix = vec!["network".to_string(), "dns".into()];
        assert_eq!(
            settings_lines(&prefix, &json!(["1.1.1.1"])),
            vec!["network.dns = [\"1.1.1.1\"]"]
        );
        assert_eq!(settings_lines(&[], &json!(3)), vec!["3"]);
    }

    #[test]
    fn diffs_show_changes_additions_and_removals() {
        let committed =
            json!({"hostname": "a", "ntp": {"servers": ["x"]}, "network": {"dhcp": true}});
        let pending = json!({"hostname": "b", "ntp": {"servers": ["x"]}, "network": {}, "sysctl": {"k": "1"}});
        assert_eq!(
            diff_lines(&committed, &pending),
            vec![
                "hostname = \"b\" (was \"a\")",
                "network = {} (new)",
                "sysctl.k = \"1\" (new)",
                "network.dhcp removed (was true)",
            ]
        );
        assert!(diff_lines(&committed, &committed).is_empty());
    }

    #[test]
    fn status_shows_version_fields_and_a_services_table() {
        let status = json!({
            "version": "0.1.0",
            "uptime_seconds": 42,
            "var": {"free_bytes": 10},
            "services": [
                {"name": "api", "state": "running", "restarts": 0},
                {"name": "chronyd", "state": "backoff"},
            ],
        });
        let text = status_text(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.first(), Some(&"version = 0.1.0"));
        assert!(lines.contains(&"uptime_seconds = 42"), "{text}");
        assert!(lines.contains(&"var.free_bytes = 10"), "{text}");
        assert!(lines.contains(&"SERVICE  STATE    RESTARTS"), "{text}");
        assert!(lines.contains(&"api      running  0"), "{text}");
        assert!(lines.contains(&"chronyd  backoff  -"), "{text}");
        assert_eq!(status_text(&json!("odd")), "\"odd\"\n");
    }
}
