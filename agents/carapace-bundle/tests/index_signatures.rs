//! The signed index as a node reads it: the release builder signs
//! `index.json` with the update key; the node checks the signature, then
//! the document, then the expiry against its clock, and keeps the floor
//! when it picks a version.

use carapace_bundle::{check_minimum_version, BundleError, Index, SigningKey, Version};

/// 2026-01-01T00:00:00Z.
const NOW: u64 = 1_767_225_600;

fn key() -> SigningKey {
    let pkcs8 = SigningKey::generate().expect("generates");
    SigningKey::from_pkcs8(&pkcs8).expect("loads")
}

fn v(text: &str) -> Version {
    Version::parse(text).expect("version")
}

fn index(expires: u64, minimum: Option<&str>) -> Index {
    let mut index = Index::new();
    for version in ["0.1.0", "0.2.0", "0.3.0"] {
        index.add(v(version));
    }
    index.expires = expires;
    index.minimum_version = minimum.map(v);
    index
}

/// `index.json` and `index.json.sig` as a source serves them.
fn signed(key: &SigningKey, index: &Index) -> (Vec<u8>, String) {
    let bytes = index.to_bytes().expect("serializes");
    let sig = key.sign(&bytes).to_text();
    (bytes, sig)
}

/// The bytes of a document the key holder signed as it is.
fn signed_raw(key: &SigningKey, text: &str) -> (Vec<u8>, String) {
    (
        text.as_bytes().to_vec(),
        key.sign(text.as_bytes()).to_text(),
    )
}

#[test]
fn a_signed_fresh_index_yields_its_versions_and_floor() {
    let key = key();
    let expected = index(NOW + 30 * 86_400, Some("0.2.0"));
    let (bytes, sig) = signed(&key, &expected);
    let read = Index::verify(&key.public_key(), &bytes, &sig, NOW).expect("verified");
    assert_eq!(read, expected);
    assert_eq!(read.latest(), Some(&v("0.3.0")));
    assert_eq!(read.minimum_version, Some(v("0.2.0")));
    // Without the newline the signature is the same.
    Index::verify(&key.public_key(), &bytes, sig.trim_end(), NOW).expect("verified");
    // Valid up to the last second before it expires.
    Index::verify(&key.public_key(), &bytes, &sig, NOW + 30 * 86_400 - 1).expect("verified");
}

#[test]
fn an_index_without_a_valid_signature_is_not_signed_by_the_update_key() {
    let key = key();
    let (bytes, sig) = signed(&key, &index(NOW + 60, None));
    let public = key.public_key();
    let other = self::key();
    let (_, by_other) = signed(&other, &index(NOW + 60, None));
    let mut tampered = bytes.clone();
    let at = tampered.len() - 4;
    tampered[at] ^= 0x01;
    let cases = [
        (
            bytes.as_slice(),
            String::new(),
            "index.json.sig is missing or empty",
        ),
        (
            bytes.as_slice(),
            "\n".to_string(),
            "index.json.sig is missing or empty",
        ),
        (
            bytes.as_slice(),
            "<html>404</html>".to_string(),
            "index.json.sig is not 128 hexadecimal digits and a newline: 16 characters",
        ),
        (bytes.as_slice(), by_other, "index.json.sig does not match"),
        (
            tampered.as_slice(),
            sig.clone(),
            "index.json.sig does not match",
        ),
    ];
    for (document, signature, reason) in cases {
        let err = Index::verify(&public, document, &signature, NOW).expect_err(reason);
        assert_eq!(
            err,
            BundleError::IndexNotSigned(reason.to_string()),
            "{signature:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("index.json is not signed by the update key ({reason})")
        );
    }
}

#[test]
fn an_unsigned_old_format_index_is_refused_for_its_signature() {
    // What a source built before signed indexes serves: no index.json.sig.
    let key = key();
    let err = Index::verify(
        &key.public_key(),
        br#"{"format":1,"versions":["0.9.0"]}"#,
        "",
        NOW,
    )
    .expect_err("unsigned");
    assert!(matches!(err, BundleError::IndexNotSigned(_)), "{err}");
}

#[test]
fn an_expired_index_is_refused_as_stale_or_replayed() {
    let key = key();
    let (bytes, sig) = signed(&key, &index(NOW - 3_600, None));
    let err = Index::verify(&key.public_key(), &bytes, &sig, NOW).expect_err("expired");
    assert_eq!(
        err,
        BundleError::IndexExpired {
            expires: NOW - 3_600,
            ago: 3_600
        }
    );
    assert_eq!(
        err.to_string(),
        "index.json expired at 2025-12-31T23:00:00Z, 3600 s ago: the source is stale or replayed"
    );
    // The second it expires, it is expired.
    let (bytes, sig) = signed(&key, &index(NOW, None));
    let err = Index::verify(&key.public_key(), &bytes, &sig, NOW).expect_err("expired");
    assert_eq!(
        err,
        BundleError::IndexExpired {
            expires: NOW,
            ago: 0
        }
    );
}

#[test]
fn the_signature_is_checked_before_the_expiry() {
    // A replayed old index with a broken signature says "not signed".
    let key = key();
    let (bytes, _) = signed(&key, &index(NOW - 3_600, None));
    let err = Index::verify(&key.public_key(), &bytes, &"00".repeat(64), NOW).expect_err("bad");
    assert!(matches!(err, BundleError::IndexNotSigned(_)), "{err}");
}

#[test]
fn a_signed_but_malformed_index_is_refused_as_not_valid() {
    let key = key();
    let public = key.public_key();
    for (text, start) in [
        ("{ not json", "the index is not valid: "),
        (
            r#"{"format":2,"versions":["0.1.0"]}"#,
            "the index is not valid: missing field `expires`",
        ),
        (
            r#"{"format":2,"expires":"tomorrow","versions":[]}"#,
            "the index is not valid: expires: invalid type",
        ),
        (
            r#"{"format":2,"expires":1,"expires":2,"versions":[]}"#,
            "the index is not valid: duplicate field `expires`",
        ),
        (
            r#"{"format":1,"versions":["0.1.0"]}"#,
            "the index has format 1, but this node knows only format 2",
        ),
        (
            r#"{"format":2,"expires":99999999999,"versions":["latest"]}"#,
            "index entry versions[0] \"latest\" is not a semantic version",
        ),
        (
            r#"{"format":2,"expires":99999999999,"minimum_version":"1","versions":[]}"#,
            "index minimum_version \"1\" is not a semantic version",
        ),
    ] {
        let (bytes, sig) = signed_raw(&key, text);
        let err = Index::verify(&public, &bytes, &sig, NOW).expect_err(text);
        assert!(
            matches!(
                err,
                BundleError::Json { .. }
                    | BundleError::Format { .. }
                    | BundleError::NotSemver { .. }
            ),
            "{text}: {err:?}"
        );
        assert!(err.to_string().starts_with(start), "{text}: {err}");
    }
}

#[test]
fn the_floor_of_a_verified_index_holds_against_a_forced_downgrade() {
    let key = key();
    let (bytes, sig) = signed(&key, &index(NOW + 60, Some("0.2.0")));
    let read = Index::verify(&key.public_key(), &bytes, &sig, NOW).expect("verified");
    // 0.1.0 is still listed, but below the floor.
    assert!(read.contains(&v("0.1.0")));
    let err = check_minimum_version(&v("0.1.0"), &read).expect_err("below the floor");
    assert_eq!(
        err,
        BundleError::BelowMinimumVersion {
            offered: v("0.1.0"),
            minimum: v("0.2.0")
        }
    );
    check_minimum_version(&v("0.2.0"), &read).expect("at the floor");
    check_minimum_version(&v("0.3.0"), &read).expect("above the floor");
}
