//! Ed25519 signatures over the manifest's exact bytes (ring).
//!
//! - The private key is a PKCS#8 v2 document ([`SigningKey::generate`]),
//!   kept by the release builder only.
//! - The public key travels as 64 lowercase hex digits and a newline: the
//!   root filesystem carries it as `/usr/lib/carapace/update-key.pub`.
//! - A signature travels as 128 lowercase hex digits and a newline
//!   (`manifest.json.sig`, and in the same form `index.json.sig`).
//!
//! [`verify`] checks the signature over the raw bytes first and only then
//! parses them: nothing from an unsigned manifest is ever looked at. The
//! index is signed with the same key and checked the same way
//! ([`crate::Index::verify`]).

use crate::{from_hex, to_hex, BundleError, Manifest};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use std::fmt;

/// An Ed25519 public key: 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

/// An Ed25519 signature: 64 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 64]);

/// An Ed25519 key pair that signs manifests.
pub struct SigningKey(Ed25519KeyPair);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> PublicKey {
        PublicKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 hexadecimal digits, with or without one trailing newline
    /// (the form of `update-key.pub`).
    pub fn parse_hex(text: &str) -> Result<PublicKey, BundleError> {
        let digits = text.strip_suffix('\n').unwrap_or(text);
        from_hex::<32>(digits)
            .map(PublicKey)
            .ok_or_else(|| BundleError::PublicKey(shorten(text)))
    }

    /// 64 lowercase hex digits (no newline).
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Checks `signature` over `message`.
    pub fn verify_signature(
        &self,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), BundleError> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, &signature.0)
            .map_err(|_| BundleError::BadSignature)
    }
}

/// 64 lowercase hex digits.
impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl Signature {
    pub fn from_bytes(bytes: [u8; 64]) -> Signature {
        Signature(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }

    /// Parses the text of `manifest.json.sig`: exactly 128 hexadecimal
    /// digits, optionally followed by one newline. Anything else (white
    /// space around it, a second line, another length) is refused.
    pub fn parse_text(text: &str) -> Result<Signature, BundleError> {
        let digits = text.strip_suffix('\n').unwrap_or(text);
        if digits.len() != 128 {
            return Err(BundleError::SignatureText(format!(
                "{} characters",
                text.chars().count()
            )));
        }
        from_hex::<64>(digits).map(Signature).ok_or_else(|| {
            BundleError::SignatureText("it holds a character that is not a hex digit".into())
        })
    }

    /// The text of `manifest.json.sig`: 128 lowercase hex digits and a newline.
    pub fn to_text(&self) -> String {
        format!("{}\n", to_hex(&self.0))
    }
}

/// 128 lowercase hex digits.
impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl SigningKey {
    /// A new random key pair as a PKCS#8 v2 document (private and public
    /// key): the bytes to keep in the release builder's key file.
    pub fn generate() -> Result<Vec<u8>, BundleError> {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| BundleError::KeyGeneration)
    }

    /// Loads a key pair from its PKCS#8 v2 document (as
    /// [`SigningKey::generate`] makes it; ring checks that the public key
    /// in it belongs to the private key).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<SigningKey, BundleError> {
        Ed25519KeyPair::from_pkcs8(pkcs8)
            .map(SigningKey)
            .map_err(|e| BundleError::SigningKey(e.to_string()))
    }

    /// The public half, for `update-key.pub`.
    pub fn public_key(&self) -> PublicKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.0.public_key().as_ref());
        PublicKey(bytes)
    }

    /// Signs `message` (the manifest's exact bytes).
    pub fn sign(&self, message: &[u8]) -> Signature {
        let mut bytes = [0u8; 64];
        bytes.copy_from_slice(self.0.sign(message).as_ref());
        Signature(bytes)
    }
}

/// Shows only the public half.
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public_key())
    }
}

/// Checks `signature_text` (the content of `manifest.json.sig`) over
/// `manifest_bytes` with `public_key`, and only if it matches parses and
/// validates the manifest.
pub fn verify(
    public_key: &PublicKey,
    manifest_bytes: &[u8],
    signature_text: &str,
) -> Result<Manifest, BundleError> {
    let signature = Signature::parse_text(signature_text)?;
    public_key.verify_signature(manifest_bytes, &signature)?;
    Manifest::parse(manifest_bytes)
}

/// The start of `text`, for a message that must not echo a whole file.
fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_signs_and_verifies() {
        let pkcs8 = SigningKey::generate().expect("key");
        let key = SigningKey::from_pkcs8(&pkcs8).expect("loads");
        let sig = key.sign(b"hello");
        let public = key.public_key();
        public.verify_signature(b"hello", &sig).expect("good");
        assert_eq!(
            public.verify_signature(b"hellp", &sig),
            Err(BundleError::BadSignature)
        );
        // The same document gives the same key.
        let again = SigningKey::from_pkcs8(&pkcs8).expect("loads");
        assert_eq!(again.public_key(), public);
        assert!(format!("{key:?}").contains(&public.to_hex()));
    }

    #[test]
    fn public_key_text_round_trips() {
        let key = PublicKey::from_bytes([0xa5; 32]);
        let text = format!("{key}\n");
        assert_eq!(text.len(), 65);
        assert_eq!(PublicKey::parse_hex(&text).expect("parses"), key);
        assert_eq!(PublicKey::parse_hex(text.trim()).expect("parses"), key);
        for bad in [
            "",
            "a5",
            &"a5".repeat(33),
            &format!(" {}", "a5".repeat(32)),
            &format!("{}\n\n", "a5".repeat(32)),
            &format!("{}zz", "a5".repeat(31)),
        ] {
            let err = PublicKey::parse_hex(bad).expect_err(bad);
            assert!(
                err.to_string().starts_with("the update key is not"),
                "{err}"
            );
        }
    }

    #[test]
    fn signature_text_round_trips_and_refuses_malformed_text() {
        let sig = Signature::from_bytes([0x3c; 64]);
        let text = sig.to_text();
        assert_eq!(text.len(), 129);
        assert!(text.ends_with('\n'));
        assert_eq!(Signature::parse_text(&text).expect("parses"), sig);
        assert_eq!(Signature::parse_text(text.trim_end()).expect("parses"), sig);
        let long = "3c".repeat(65);
        let spaced = format!(" {}", "3c".repeat(64));
        let crlf = format!("{}\r\n", "3c".repeat(64));
        let two_newlines = format!("{}\n\n", "3c".repeat(64));
        let bad_digit = format!("{}3g", "3c".repeat(63));
        let plus = format!("+{}", &"3c".repeat(64)[1..]);
        for bad in [
            "",
            "\n",
            "3c3c",
            &long,
            &spaced,
            &crlf,
            &two_newlines,
            &bad_digit,
            &plus,
        ] {
            let err = Signature::parse_text(bad).expect_err(bad);
            assert!(
                matches!(err, BundleError::SignatureText(_)),
                "{bad:?}: {err}"
            );
            assert!(err
                .to_string()
                .starts_with("the signature is not 128 hexadecimal digits"));
        }
    }

    #[test]
    fn a_bad_pkcs8_document_is_refused() {
        let err = SigningKey::from_pkcs8(b"not a key").expect_err("refused");
        assert!(
            err.to_string().starts_with("the signing key is not"),
            "{err}"
        );
    }
}
