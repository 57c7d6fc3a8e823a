//! carapace-bundle: the format of a Carapace update bundle, shared by
//! `cargo xtask bundle` (which writes and signs bundles) and the update
//! daemon (which checks and installs them).
//!
//! A released version is served from any HTTP or HTTPS directory:
//!
//! ```text
//! <source>/index.json                      {"format":2,"expires":<unix s>,"minimum_version":"0.1.0","versions":["0.1.0","0.2.0"]}
//! <source>/index.json.sig                  Ed25519 signature of index.json, as for a manifest
//! <source>/<version>/manifest.json         the manifest, the exact bytes that were signed
//! <source>/<version>/manifest.json.sig     Ed25519 signature: 128 lowercase hex digits and a newline
//! <source>/<version>/root.img              the verity-covered data area, trailing zero blocks cut off
//! <source>/<version>/root.verity           verity superblock + hash tree
//! <source>/<version>/carapace_<version>.efi  the UKI (its command line carries roothash=)
//! ```
//!
//! - [`manifest`]: the signed [`Manifest`], validated whole on parse.
//! - [`signing`]: Ed25519 keys and signatures (ring); [`verify`] checks the
//!   signature over the raw bytes *before* anything in them is parsed.
//! - [`policy`]: [`check_update`], whether this node may take a version, and
//!   [`check_minimum_version`], the index's anti-rollback floor.
//! - [`index`]: the source's signed, expiring list of versions;
//!   [`Index::verify`] checks signature, document and expiry.
//! - [`hasher`]: [`PartHasher`], streaming size and SHA-256 checks of a
//!   downloaded part.
//!
//! Pure: nothing here touches the network or a disk.

pub mod error;
pub mod hasher;
pub mod index;
pub mod manifest;
pub mod policy;
pub mod signing;

pub use error::BundleError;
pub use hasher::PartHasher;
pub use index::Index;
pub use manifest::{Manifest, Part, RootPart, MAX_PART_BYTES};
pub use policy::{check_minimum_version, check_update, NODE_ARCHITECTURE};
pub use semver::Version;
pub use signing::{verify, PublicKey, Signature, SigningKey};

/// The only manifest format this code knows.
pub const FORMAT: u32 = 1;
/// The only index format this code knows: 2, the signed index with an
/// expiry (format 1 was the unsigned list of versions).
pub const INDEX_FORMAT: u32 = 2;

/// File names inside a version's directory (and at the top of the source,
/// the index and its signature).
pub const MANIFEST_FILE: &str = "manifest.json";
pub const SIGNATURE_FILE: &str = "manifest.json.sig";
pub const INDEX_FILE: &str = "index.json";
/// The signature of `index.json`, beside it at the top of the source.
pub const INDEX_SIGNATURE_FILE: &str = "index.json.sig";
pub const ROOT_FILE: &str = "root.img";
pub const VERITY_FILE: &str = "root.verity";

/// The name of a version's UKI in the bundle: `carapace_<version>.efi`.
pub fn uki_file_name(version: &Version) -> String {
    format!("carapace_{version}.efi")
}

/// Lowercase hexadecimal of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Decodes exactly `N` bytes of hexadecimal (either case); `None` for any
/// other length or a character that is not a hex digit.
pub fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
    }
    Some(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// True if `text` is exactly `len` lowercase hexadecimal digits.
pub fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        let bytes = [0x00, 0x7f, 0x80, 0xff, 0x0a];
        assert_eq!(to_hex(&bytes), "007f80ff0a");
        assert_eq!(from_hex::<5>("007f80ff0a"), Some(bytes));
        assert_eq!(from_hex::<5>("007F80FF0A"), Some(bytes));
        assert_eq!(from_hex::<5>("007f80ff0"), None);
        assert_eq!(from_hex::<5>("007f80ff0a0"), None);
        assert_eq!(from_hex::<2>("+1ff"), None);
        assert_eq!(from_hex::<2>("0g00"), None);
        assert_eq!(from_hex::<1>("é"), None);
        assert!(is_lower_hex("00ff", 4));
        assert!(!is_lower_hex("00FF", 4));
        assert!(!is_lower_hex("00ff", 6));
    }

    #[test]
    fn uki_name_carries_the_version() {
        let v = Version::new(0, 2, 0);
        assert_eq!(uki_file_name(&v), "carapace_0.2.0.efi");
    }
}
