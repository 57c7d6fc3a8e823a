//! The kernel command line: the only input stage 1 trusts, because it sits
//! inside the signed unified kernel image.

use std::fmt;

/// The dm-verity root hash named by `roothash=`.
#[derive(Clone, PartialEq, Eq)]
pub struct RootHash(Vec<u8>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("no roothash= on the kernel command line")]
    Missing,
    #[error("roothash= given more than once on the kernel command line")]
    Repeated,
    #[error(
        "roothash={value:?} is not hexadecimal of an even length between 32 and 128 characters"
    )]
    Malformed { value: String },
}

impl RootHash {
    /// Parses a hexadecimal root hash (SHA-256 gives 64 characters).
    pub fn from_hex(value: &str) -> Result<Self, CmdlineError> {
        let bad = || CmdlineError::Malformed {
            value: value.to_string(),
        };
        // Every character checked: from_str_radix alone would take a leading '+'.
        if !value.len().is_multiple_of(2)
            || !(32..=128).contains(&value.len())
            || !value.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad());
        }
        let bytes = (0..value.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(value.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())
            })
            .collect::<Result<Vec<u8>, _>>()?;
        Ok(RootHash(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The partition UUID of the data partition: the first 128 bits of the
    /// hash (Discoverable Partitions Specification, as systemd-repart writes it).
    pub fn data_partition_uuid(&self) -> [u8; 16] {
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&self.0[..16]);
        uuid
    }

    /// The partition UUID of the hash partition: the last 128 bits.
    pub fn hash_partition_uuid(&self) -> [u8; 16] {
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&self.0[self.0.len() - 16..]);
        uuid
    }
}

impl fmt::Debug for RootHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootHash({})", self.to_hex())
    }
}

/// Splits a kernel command line into words, honouring double quotes the way
/// the kernel does (`foo="a b"` is one word, quotes removed).
pub fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// The value of `key=` if it appears exactly once.
pub fn value<'a>(words: &'a [String], key: &str) -> Result<Option<&'a str>, CmdlineError> {
    let mut found = None;
    for w in words {
        if let Some((k, v)) = w.split_once('=') {
            if k == key {
                if found.is_some() {
                    return Err(CmdlineError::Repeated);
                }
                found = Some(v);
            }
        }
    }
    Ok(found)
}

/// Finds and parses `roothash=` in a whole kernel command line.
pub fn roothash(cmdline: &str) -> Result<RootHash, CmdlineError> {
    let words = words(cmdline);
    match value(&words, "roothash")? {
        Some(v) => RootHash::from_hex(v),
        None => Err(CmdlineError::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0b6e1c5f8a0f4e1d9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081";

    #[test]
    fn finds_roothash_among_other_words() {
        let line = format!("console=ttyS0 quiet roothash={HASH} rw\n");
        let hash = roothash(&line).expect("parses");
        assert_eq!(hash.to_hex(), HASH);
        assert_eq!(hash.as_bytes().len(), 32);
        assert_eq!(hash.data_partition_uuid()[0], 0x0b);
        assert_eq!(hash.hash_partition_uuid()[15], 0x81);
        assert_eq!(hash.hash_partition_uuid()[0], 0x92);
    }

    #[test]
    fn missing_roothash_is_an_error() {
        assert_eq!(
            roothash("console=ttyS0 root=/dev/vda"),
            Err(CmdlineError::Missing)
        );
        assert_eq!(roothash(""), Err(CmdlineError::Missing));
    }

    #[test]
    fn malformed_roothash_is_an_error() {
        for bad in [
            "roothash=+b6e1c5f8a0f4e1d9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081",
            "roothash=",
            "roothash=xyz",
            "roothash=abc",
            "roothash=0b6e1c5f8a0f4e1d9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708g",
        ] {
            assert!(
                matches!(roothash(bad), Err(CmdlineError::Malformed { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn repeated_roothash_is_an_error() {
        let line = format!("roothash={HASH} roothash={HASH}");
        assert_eq!(roothash(&line), Err(CmdlineError::Repeated));
    }

    #[test]
    fn quotes_group_words() {
        assert_eq!(
            words(r#"a="b c" d"#),
            vec!["a=b c".to_string(), "d".to_string()]
        );
    }
}
