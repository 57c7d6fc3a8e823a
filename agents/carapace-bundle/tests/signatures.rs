//! The whole chain as the daemon uses it: a release builder signs a
//! manifest's bytes; the node verifies them with the key baked into its root
//! before it parses them, then applies the policy and hashes the parts.

use carapace_bundle::{
    check_update, verify, BundleError, Manifest, Part, PartHasher, PublicKey, RootPart, Signature,
    SigningKey, Version,
};
use sha2::{Digest, Sha256};

fn key() -> SigningKey {
    let pkcs8 = SigningKey::generate().expect("generates");
    SigningKey::from_pkcs8(&pkcs8).expect("loads")
}

fn part(file: &str, content: &[u8]) -> Part {
    Part {
        file: file.into(),
        bytes: content.len() as u64,
        sha256: carapace_bundle::to_hex(Sha256::digest(content).as_slice()),
    }
}

const ROOT: &[u8] = b"erofs image bytes";
const VERITY: &[u8] = b"verity\0\0 superblock and tree";
const UKI: &[u8] = b"MZ ... roothash=...";

fn manifest() -> Manifest {
    let root = part("root.img", ROOT);
    Manifest {
        format: 1,
        version: Version::new(0, 2, 0),
        architecture: "x86_64".into(),
        min_from_version: Version::new(0, 1, 0),
        roothash: "5793783745b7237dac1722d51256d6b597e0f13952a6263216564037ad2d80e9".into(),
        root: RootPart {
            file: root.file,
            stored_bytes: root.bytes,
            sha256: root.sha256,
            data_bytes: 8 << 20,
        },
        verity: part("root.verity", VERITY),
        uki: part("carapace_0.2.0.efi", UKI),
    }
}

/// The bytes and signature text a source would serve.
fn signed(key: &SigningKey, m: &Manifest) -> (Vec<u8>, String) {
    let bytes = m.to_bytes().expect("valid");
    let sig = key.sign(&bytes).to_text();
    (bytes, sig)
}

#[test]
fn a_good_signature_yields_the_manifest() {
    let key = key();
    let (bytes, sig) = signed(&key, &manifest());
    // The key as the node reads it from update-key.pub.
    let public = PublicKey::parse_hex(&format!("{}\n", key.public_key())).expect("key");
    let m = verify(&public, &bytes, &sig).expect("verified");
    assert_eq!(m, manifest());
    // The signature file without its newline is fine too.
    verify(&public, &bytes, sig.trim_end()).expect("verified");
    // And the chain goes on: policy, then each part streamed and checked.
    check_update(&Version::new(0, 1, 0), &m, false).expect("an update");
    for (p, content) in [
        (m.root.as_part(), ROOT),
        (m.verity.as_part(), VERITY),
        (m.uki.as_part(), UKI),
    ] {
        let mut h = PartHasher::new(&p).expect("hasher");
        h.update(content).expect("fits");
        h.finish().expect("matches");
    }
}

#[test]
fn one_flipped_byte_anywhere_in_the_manifest_is_refused() {
    let key = key();
    let public = key.public_key();
    let (bytes, sig) = signed(&key, &manifest());
    for i in 0..bytes.len() {
        let mut tampered = bytes.clone();
        tampered[i] ^= 0x01;
        assert_eq!(
            verify(&public, &tampered, &sig),
            Err(BundleError::BadSignature),
            "byte {i}"
        );
    }
    // Appending, even white space, breaks it too.
    let mut longer = bytes.clone();
    longer.push(b'\n');
    assert_eq!(
        verify(&public, &longer, &sig),
        Err(BundleError::BadSignature)
    );
    assert_eq!(
        BundleError::BadSignature.to_string(),
        "the signature does not match the update key"
    );
}

#[test]
fn a_signature_by_another_key_is_refused() {
    let (bytes, sig) = signed(&key(), &manifest());
    let other = key().public_key();
    assert_eq!(verify(&other, &bytes, &sig), Err(BundleError::BadSignature));
}

#[test]
fn a_flipped_bit_in_the_signature_is_refused() {
    let key = key();
    let (bytes, sig) = signed(&key, &manifest());
    let mut raw = *Signature::parse_text(&sig).expect("parses").as_bytes();
    raw[17] ^= 0x80;
    let bad = Signature::from_bytes(raw).to_text();
    assert_eq!(
        verify(&key.public_key(), &bytes, &bad),
        Err(BundleError::BadSignature)
    );
}

#[test]
fn malformed_signature_text_is_refused_before_anything_else() {
    let key = key();
    let public = key.public_key();
    let (bytes, sig) = signed(&key, &manifest());
    let digits = sig.trim_end();
    let upper_ok = digits.to_uppercase();
    // Upper-case digits are the same signature.
    verify(&public, &bytes, &upper_ok).expect("same signature");
    for bad in [
        String::new(),
        "\n".to_string(),
        digits[..126].to_string(),
        format!("{digits}00"),
        format!("{digits}\n\n"),
        format!("{digits} \n"),
        format!(" {digits}"),
        format!("{digits}\r\n"),
        format!("{}zz", &digits[..126]),
        "-----BEGIN SIGNATURE-----".to_string(),
    ] {
        let err = verify(&public, &bytes, &bad).expect_err(&bad);
        assert!(
            matches!(err, BundleError::SignatureText(_)),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn nothing_unsigned_is_parsed() {
    let key = key();
    let public = key.public_key();
    // Junk with a signature that does not match: the answer is the
    // signature, not a parse error about the junk.
    let (_, sig) = signed(&key, &manifest());
    assert_eq!(
        verify(&public, b"{ not json", &sig),
        Err(BundleError::BadSignature)
    );
}

#[test]
fn a_signed_but_invalid_manifest_is_still_refused() {
    // A key holder's mistake: the signature matches, the content breaks a rule.
    let key = key();
    let bytes = serde_json::to_vec(&serde_json::json!({
        "format": 1, "version": "0.2.0", "architecture": "x86_64",
        "min_from_version": "0.1.0", "roothash": "00",
        "root": {"file": "root.img", "stored_bytes": 1, "sha256": "00", "data_bytes": 512},
        "verity": {"file": "root.verity", "bytes": 1, "sha256": "00"},
        "uki": {"file": "u.efi", "bytes": 1, "sha256": "00"}
    }))
    .expect("serializes");
    let sig = key.sign(&bytes).to_text();
    let err = verify(&key.public_key(), &bytes, &sig).expect_err("invalid");
    assert!(
        matches!(
            err,
            BundleError::Hex {
                field: "roothash",
                ..
            }
        ),
        "{err}"
    );
}
