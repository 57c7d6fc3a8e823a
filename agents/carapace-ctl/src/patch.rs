//! From the command line to requests: dotted setting keys, `KEY=VALUE`
//! pairs folded into one JSON merge patch (RFC 7396), and request paths.
//!
//! A key is a dotted path (`network.dns`). A segment that itself holds dots,
//! like a sysctl name, is written in double quotes:
//! `sysctl."net.ipv4.ip_forward"=1`. (Or set the parent to an object:
//! `sysctl='{"net.ipv4.ip_forward": "1"}'`; a merge patch merges objects.)

use crate::Error;
use serde_json::{Map, Value};

/// Splits a dotted key into its segments.
pub fn parse_key(key: &str) -> Result<Vec<String>, Error> {
    let bad = |why: &str| Error::Usage(format!("invalid key {key:?}: {why}"));
    let mut segments = Vec::new();
    let mut rest = key;
    loop {
        let segment;
        if let Some(quoted) = rest.strip_prefix('"') {
            let Some((inner, after)) = quoted.split_once('"') else {
                return Err(bad("unclosed quote"));
            };
            segment = inner;
            rest = after;
            if !(rest.is_empty() || rest.starts_with('.')) {
                return Err(bad("a quoted segment must be followed by a dot or the end"));
            }
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            segment = &rest[..end];
            rest = &rest[end..];
            if segment.contains('"') {
                return Err(bad("a quote inside a segment"));
            }
        }
        if segment.is_empty() {
            return Err(bad("an empty segment"));
        }
        segments.push(segment.to_string());
        match rest.strip_prefix('.') {
            Some(r) => rest = r,
            None => break,
        }
    }
    Ok(segments)
}

/// The value of a `KEY=VALUE` pair: JSON if it parses as JSON (numbers,
/// booleans, null, arrays, objects, "quoted strings"), else the text itself.
pub fn parse_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// Folds `KEY=VALUE` pairs into one merge patch: dotted keys become nested
/// objects. A key given twice, or a key and a key below it (`a=1 a.b=2`),
/// is refused as ambiguous.
pub fn merge_patch<S: AsRef<str>>(pairs: &[S]) -> Result<Value, Error> {
    if pairs.is_empty() {
        return Err(Error::Usage("nothing to set: give KEY=VALUE pairs".into()));
    }
    let mut patch = Map::new();
    let mut assigned: Vec<(Vec<String>, &str)> = Vec::new();
    for pair in pairs {
        let pair = pair.as_ref();
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Error::Usage(format!(
                "{pair:?} is not KEY=VALUE (e.g. hostname=node1, network.dns='[\"9.9.9.9\"]')"
            )));
        };
        let path = parse_key(key)?;
        for (other, other_key) in &assigned {
            let shorter = path.len().min(other.len());
            if path[..shorter] == other[..shorter] {
                return Err(Error::Usage(if path.len() == other.len() {
                    format!("{key} is given twice")
                } else {
                    format!("{other_key} and {key} conflict: one is inside the other")
                }));
            }
        }
        insert(&mut patch, &path, parse_value(value));
        assigned.push((path, key));
    }
    Ok(Value::Object(patch))
}

/// Puts `value` at `path` in `map`, creating objects on the way. The
/// conflict check in [`merge_patch`] guarantees every step is an object it
/// created itself.
fn insert(map: &mut Map<String, Value>, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            map.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = map
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// The request path of a setting: `/v1/settings` for none,
/// `/v1/settings/network/dns` for `network.dns`.
pub fn settings_path(key: Option<&str>) -> Result<String, Error> {
    let mut path = String::from("/v1/settings");
    if let Some(key) = key.filter(|k| !k.is_empty()) {
        for segment in parse_key(key)? {
            path.push('/');
            path.push_str(&percent_encode(&segment));
        }
    }
    Ok(path)
}

/// The request path of `GET /v1/logs`.
pub fn logs_path(service: Option<&str>, lines: Option<usize>, follow: bool) -> String {
    let mut path = format!("/v1/logs?follow={follow}");
    if let Some(n) = lines {
        path.push_str(&format!("&lines={n}"));
    }
    if let Some(s) = service {
        path.push_str("&service=");
        path.push_str(&percent_encode(s));
    }
    path
}

/// Percent-encodes all but RFC 3986's unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn usage(r: Result<Value, Error>) -> String {
        match r {
            Err(Error::Usage(m)) => m,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn values_are_json_when_they_parse_and_strings_otherwise() {
        assert_eq!(parse_value("42"), json!(42));
        assert_eq!(parse_value("-1.5"), json!(-1.5));
        assert_eq!(parse_value("true"), json!(true));
        assert_eq!(parse_value("null"), Value::Null);
        assert_eq!(
            parse_value(r#"["1.1.1.1", "9.9.9.9"]"#),
            json!(["1.1.1.1", "9.9.9.9"])
        );
        assert_eq!(parse_value(r#"{"a": {"b": 1}}"#), json!({"a": {"b": 1}}));
        assert_eq!(parse_value(r#""true""#), json!("true"));
        assert_eq!(parse_value("node1"), json!("node1"));
        assert_eq!(parse_value("01"), json!("01"), "not JSON: a leading zero");
        assert_eq!(parse_value("10.0.0.1/24"), json!("10.0.0.1/24"));
        assert_eq!(parse_value("[unclosed"), json!("[unclosed"));
        assert_eq!(parse_value(""), json!(""));
        assert_eq!(parse_value("a=b"), json!("a=b"));
    }

    #[test]
    fn pairs_fold_into_one_nested_patch() {
        let patch = merge_patch(&[
            "hostname=node1",
            "network.dhcp=false",
            r#"network.dns=["9.9.9.9"]"#,
            "ntp.servers=null",
            "api.token=s3cr=t",
        ]);
        assert_eq!(
            patch.ok(),
            Some(json!({
                "hostname": "node1",
                "network": {"dhcp": false, "dns": ["9.9.9.9"]},
                "ntp": {"servers": null},
                "api": {"token": "s3cr=t"},
            }))
        );
    }

    #[test]
    fn quoted_segments_keep_their_dots() {
        assert_eq!(
            merge_patch(&[r#"sysctl."net.ipv4.ip_forward"=1"#]).ok(),
            Some(json!({"sysctl": {"net.ipv4.ip_forward": 1}}))
        );
        assert_eq!(
            parse_key(r#"a."b.c".d"#).ok(),
            Some(vec!["a".to_string(), "b.c".into(), "d".into()])
        );
    }

    #[test]
    fn overlapping_keys_are_refused() {
        let m = usage(merge_patch(&["a=1", "a.b=2"]));
        assert!(m.contains("conflict"), "{m}");
        let m = usage(merge_patch(&["a.b=2", "a=1"]));
        assert!(m.contains("conflict"), "{m}");
        let m = usage(merge_patch(&["a.b.c=1", "a.b=2"]));
        assert!(m.contains("conflict"), "{m}");
        let m = usage(merge_patch(&["a.b=1", "a.b=1"]));
        assert!(m.contains("twice"), "{m}");
        // Siblings do not overlap.
        assert_eq!(
            merge_patch(&["a.b=1", "a.c=2", "ab=3"]).ok(),
            Some(json!({"a": {"b": 1, "c": 2}, "ab": 3}))
        );
    }

    #[test]
    fn malformed_pairs_are_refused() {
        usage(merge_patch::<&str>(&[]));
        let m = usage(merge_patch(&["hostname"]));
        assert!(m.contains("KEY=VALUE"), "{m}");
        for bad in [
            "=1",
            ".a=1",
            "a.=1",
            "a..b=1",
            r#""a=1"#,
            r#""a"b=1"#,
            r#"a"b"=1"#,
            r#""".a=1"#,
        ] {
            usage(merge_patch(&[bad]));
        }
    }

    #[test]
    fn keys_become_request_paths() {
        assert_eq!(settings_path(None).ok().as_deref(), Some("/v1/settings"));
        assert_eq!(
            settings_path(Some("")).ok().as_deref(),
            Some("/v1/settings")
        );
        assert_eq!(
            settings_path(Some("network.dns")).ok().as_deref(),
            Some("/v1/settings/network/dns")
        );
        assert_eq!(
            settings_path(Some("a b.c/d")).ok().as_deref(),
            Some("/v1/settings/a%20b/c%2Fd")
        );
        assert!(matches!(settings_path(Some("a..b")), Err(Error::Usage(_))));
    }

    #[test]
    fn log_queries_are_built_and_encoded() {
        assert_eq!(logs_path(None, None, false), "/v1/logs?follow=false");
        assert_eq!(
            logs_path(Some("ntp d&x"), Some(20), true),
            "/v1/logs?follow=true&lines=20&service=ntp%20d%26x"
        );
    }
}
