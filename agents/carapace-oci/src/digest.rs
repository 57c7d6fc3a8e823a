//! SHA-256 digests as the OCI specs write them (`sha256:<64 lowercase hex>`).
//! A digest that names a file in the store is parsed here first, so no
//! descriptor can smuggle a path (`sha256:../../etc`) into the store.

use sha2::{Digest as _, Sha256};
use std::fmt;

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Sha256Digest {
    hex: String,
}

impl Sha256Digest {
    /// Parses `sha256:<64 lowercase hex>`; any other algorithm or spelling is refused.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("sha256", hex)) if is_sha256_hex(hex) => Ok(Sha256Digest {
                hex: hex.to_string(),
            }),
            Some(("sha256", _)) => Err(format!(
                "digest {s:?} is not sha256:<64 lowercase hex digits>"
            )),
            Some((algorithm, _)) => Err(format!(
                "digest {s:?} uses {algorithm:?}; only sha256 is supported"
            )),
            None => Err(format!("{s:?} is not a digest (sha256:<64 hex digits>)")),
        }
    }

    /// The digest of `bytes`.
    pub(crate) fn of(bytes: &[u8]) -> Self {
        Self::finish(Sha256::new_with_prefix(bytes))
    }

    /// The digest of everything fed to `hasher`.
    pub(crate) fn finish(hasher: Sha256) -> Self {
        Sha256Digest {
            hex: lower_hex(&hasher.finalize()),
        }
    }

    /// The 64 hex digits: the file name in the store.
    pub(crate) fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// 64 lowercase hex digits: a file name in `blobs/sha256/` or `layers/sha256/`.
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_and_lowercase_hex_only() {
        let empty = Sha256Digest::of(b"");
        assert_eq!(
            empty.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Sha256Digest::parse(&empty.to_string()), Ok(empty.clone()));
        assert!(Sha256Digest::parse(&empty.to_string().to_uppercase()).is_err());
        assert!(Sha256Digest::parse("sha256:../../../etc/passwd").is_err());
        let e = Sha256Digest::parse(&format!("sha512:{}", empty.hex())).expect_err("sha512");
        assert!(e.contains("only sha256"), "{e}");
        assert!(Sha256Digest::parse(empty.hex()).is_err(), "no algorithm");
    }
}
