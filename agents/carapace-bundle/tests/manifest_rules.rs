//! Every rule of the manifest, from the outside: a valid manifest parses
//! and round-trips; each broken variant is refused with the message an
//! operator would see.

use carapace_bundle::{BundleError, Manifest, MAX_PART_BYTES};
use serde_json::{json, Value};

fn valid() -> Value {
    json!({
        "format": 1,
        "version": "0.2.0",
        "architecture": "x86_64",
        "min_from_version": "0.1.0",
        "roothash": "5793783745b7237dac1722d51256d6b597e0f13952a6263216564037ad2d80e9",
        "root": {
            "file": "root.img",
            "stored_bytes": 3_211_264,
            "sha256": "a".repeat(64),
            "data_bytes": 134_217_728
        },
        "verity": { "file": "root.verity", "bytes": 1_101_824, "sha256": "b".repeat(64) },
        "uki": { "file": "carapace_0.2.0.efi", "bytes": 9_000_000, "sha256": "c".repeat(64) }
    })
}

fn with(path: &[&str], value: Value) -> Value {
    let mut m = valid();
    let mut at = &mut m;
    for (i, key) in path.iter().enumerate() {
        let Some(object) = at.as_object_mut() else {
            panic!("{path:?} is not inside an object")
        };
        if i + 1 == path.len() {
            object.insert((*key).to_string(), value);
            return m;
        }
        at = object.get_mut(*key).expect("path exists");
    }
    m
}

fn without(path: &[&str]) -> Value {
    let mut m = valid();
    let mut at = &mut m;
    for (i, key) in path.iter().enumerate() {
        let object = at.as_object_mut().expect("object");
        if i + 1 == path.len() {
            object.remove(*key);
            return m;
        }
        at = object.get_mut(*key).expect("path exists");
    }
    m
}

fn refused(value: &Value) -> String {
    let bytes = serde_json::to_vec(value).expect("serializes");
    Manifest::parse(&bytes)
        .expect_err(&value.to_string())
        .to_string()
}

#[track_caller]
fn assert_refused(value: Value, expected_start: &str) {
    let message = refused(&value);
    assert!(
        message.starts_with(expected_start),
        "expected {expected_start:?}…, got {message:?}"
    );
}

#[test]
fn a_valid_manifest_parses_and_round_trips() {
    let bytes = serde_json::to_vec(&valid()).expect("serializes");
    let m = Manifest::parse(&bytes).expect("valid");
    assert_eq!(m.version.to_string(), "0.2.0");
    assert_eq!(m.min_from_version.to_string(), "0.1.0");
    assert_eq!(m.root.data_bytes, 134_217_728);
    let canonical = m.to_bytes().expect("canonical");
    assert_eq!(Manifest::parse(&canonical).expect("parses"), m);
    // Canonical bytes are stable.
    assert_eq!(
        Manifest::parse(&canonical)
            .expect("parses")
            .to_bytes()
            .expect("canonical"),
        canonical
    );
}

#[test]
fn pre_release_versions_are_fine() {
    let m = with(&["version"], json!("1.0.0-rc.1"));
    let bytes = serde_json::to_vec(&m).expect("serializes");
    let m = Manifest::parse(&bytes).expect("valid");
    assert_eq!(m.version.pre.as_str(), "rc.1");
}

#[test]
fn not_json_or_not_an_object_is_refused() {
    for (bytes, start) in [
        (&b""[..], "the manifest is not valid: EOF"),
        (&b"{"[..], "the manifest is not valid: EOF"),
        (
            &b"[1]"[..],
            "the manifest is not valid: it is not a JSON object",
        ),
        (
            &b"\"x\""[..],
            "the manifest is not valid: it is not a JSON object",
        ),
    ] {
        let err = Manifest::parse(bytes).expect_err("refused");
        assert!(err.to_string().starts_with(start), "{err}");
    }
    let mut trailing = serde_json::to_vec(&valid()).expect("serializes");
    trailing.extend_from_slice(b" {}");
    let err = Manifest::parse(&trailing).expect_err("trailing");
    assert!(
        err.to_string()
            .starts_with("the manifest is not valid: trailing characters"),
        "{err}"
    );
}

#[test]
fn the_format_is_checked_first() {
    assert_refused(
        without(&["format"]),
        "the manifest is not valid: missing field `format`",
    );
    // A newer format is refused for its number, not for its new fields.
    let mut newer = with(&["format"], json!(2));
    newer["signature_scheme"] = json!("pq");
    assert_refused(
        newer,
        "the manifest has format 2, but this node knows only format 1",
    );
    assert_refused(
        with(&["format"], json!("1")),
        "the manifest has format \"1\", but this node knows only format 1",
    );
    assert_refused(
        with(&["format"], json!(1.0)),
        "the manifest has format 1.0, but this node knows only format 1",
    );
}

#[test]
fn unknown_missing_and_repeated_fields_are_refused() {
    let mut extra = valid();
    extra["channel"] = json!("beta");
    assert_refused(
        extra,
        "the manifest is not valid: channel: unknown field `channel`",
    );
    assert_refused(
        with(&["root", "compression"], json!("zstd")),
        "the manifest is not valid: root.compression: unknown field `compression`",
    );
    assert_refused(
        without(&["roothash"]),
        "the manifest is not valid: missing field `roothash`",
    );
    assert_refused(
        without(&["uki", "sha256"]),
        "the manifest is not valid: uki: missing field `sha256`",
    );
    // A repeated field: the JSON text has "version" twice.
    let text = serde_json::to_string(&valid()).expect("serializes");
    let twice = text.replacen(
        "\"version\":\"0.2.0\"",
        "\"version\":\"0.2.0\",\"version\":\"9.9.9\"",
        1,
    );
    assert_ne!(text, twice);
    let err = Manifest::parse(twice.as_bytes()).expect_err("repeated");
    assert!(
        err.to_string().contains("duplicate field `version`"),
        "{err}"
    );
}

#[test]
fn wrong_types_name_the_field() {
    assert_refused(
        with(&["root", "stored_bytes"], json!("12")),
        "the manifest is not valid: root.stored_bytes: invalid type: string \"12\"",
    );
    assert_refused(
        with(&["verity", "bytes"], json!(-1)),
        "the manifest is not valid: verity.bytes: invalid value: integer `-1`",
    );
}

#[test]
fn versions_must_be_semantic_versions() {
    assert_refused(
        with(&["version"], json!("0.2")),
        "the manifest is not valid: version: \"0.2\" is not a semantic version",
    );
    assert_refused(
        with(&["min_from_version"], json!("v0.1.0")),
        "the manifest is not valid: min_from_version: \"v0.1.0\" is not a semantic version",
    );
    assert_refused(
        with(&["version"], json!("0.2.0+5")),
        "version 0.2.0+5 carries build metadata",
    );
    assert_refused(
        with(&["min_from_version"], json!("0.1.0+git")),
        "min_from_version 0.1.0+git carries build metadata",
    );
    assert_refused(
        with(&["min_from_version"], json!("0.3.0")),
        "min_from_version 0.3.0 is newer than the version 0.2.0 itself",
    );
}

#[test]
fn the_architecture_must_be_a_name() {
    for bad in ["", "x86-64", "X86_64", "x86_64 ", "amd64/linux"] {
        assert_refused(
            with(&["architecture"], json!(bad)),
            &format!("architecture {bad:?} is not an architecture name"),
        );
    }
    // Another architecture parses: the policy refuses it on the node.
    let m = with(&["architecture"], json!("aarch64"));
    Manifest::parse(&serde_json::to_vec(&m).expect("serializes")).expect("parses");
}

#[test]
fn hashes_must_be_64_lowercase_hex_digits() {
    let upper = "A".repeat(64);
    let short = "a".repeat(63);
    let long = "a".repeat(65);
    let junk = format!("{}g", "a".repeat(63));
    for bad in [&upper, &short, &long, &junk, ""] {
        assert_refused(
            with(&["roothash"], json!(bad)),
            &format!("roothash {bad:?} is not 64 lowercase hexadecimal digits"),
        );
    }
    for (part, field) in [
        ("root", "root.sha256"),
        ("verity", "verity.sha256"),
        ("uki", "uki.sha256"),
    ] {
        assert_refused(
            with(&[part, "sha256"], json!(upper)),
            &format!("{field} {upper:?} is not 64 lowercase hexadecimal digits"),
        );
    }
}

#[test]
fn file_names_must_be_plain() {
    for (part, field) in [
        ("root", "root.file"),
        ("verity", "verity.file"),
        ("uki", "uki.file"),
    ] {
        for bad in [
            "",
            ".",
            "..",
            "../root.img",
            "/etc/passwd",
            "a/b",
            ".hidden",
            "a b",
            "a%2fb",
        ] {
            assert_refused(
                with(&[part, "file"], json!(bad)),
                &format!("{field} {bad:?} is not a plain file name"),
            );
        }
    }
}

#[test]
fn sizes_are_bounded() {
    assert_refused(
        with(&["root", "stored_bytes"], json!(0)),
        "root.stored_bytes is 0: a part cannot be empty",
    );
    assert_refused(
        with(&["uki", "bytes"], json!(0)),
        "uki.bytes is 0: a part cannot be empty",
    );
    let absurd = MAX_PART_BYTES + 512;
    assert_refused(
        with(&["root", "data_bytes"], json!(absurd)),
        &format!("root.data_bytes is {absurd} bytes, more than the {MAX_PART_BYTES} bytes a part may have"),
    );
    assert_refused(
        with(&["verity", "bytes"], json!(u64::MAX)),
        "verity.bytes is 18446744073709551615 bytes, more than",
    );
    assert_refused(
        with(&["root", "stored_bytes"], json!(134_217_729u64)),
        "root.stored_bytes 134217729 is more than root.data_bytes 134217728",
    );
    assert_refused(
        with(&["root", "data_bytes"], json!(3_210_752u64)),
        "root.stored_bytes 3211264 is more than root.data_bytes 3210752",
    );
    assert_refused(
        with(&["root", "data_bytes"], json!(134_217_000u64)),
        "root.data_bytes 134217000 is not a multiple of 512",
    );
    // Exactly at the limits is fine.
    let mut m = with(&["root", "data_bytes"], json!(MAX_PART_BYTES));
    m["root"]["stored_bytes"] = json!(MAX_PART_BYTES);
    Manifest::parse(&serde_json::to_vec(&m).expect("serializes")).expect("at the limit");
}

#[test]
fn to_bytes_refuses_an_invalid_manifest() {
    let bytes = serde_json::to_vec(&valid()).expect("serializes");
    let mut m = Manifest::parse(&bytes).expect("valid");
    m.uki.file = "../../EFI/BOOT/BOOTX64.EFI".into();
    assert!(matches!(
        m.to_bytes(),
        Err(BundleError::FileName {
            field: "uki.file",
            ..
        })
    ));
}
