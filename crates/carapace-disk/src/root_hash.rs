//! The dm-verity root hash of a slot, and the partition UUIDs it names: the
//! data partition's is its first 128 bits, the hash partition's its last
//! (the Discoverable Partitions Specification, as systemd-repart writes it).
//! The hash itself comes from the signed UKI's `roothash=`; reading that
//! command line is carapace-init's (`carapace_init::cmdline`).

use std::fmt;

/// A dm-verity root hash: 16 to 64 bytes (SHA-256 gives 32).
#[derive(Clone, PartialEq, Eq)]
pub struct RootHash(Vec<u8>);

/// A root hash written in something other than hexadecimal of an even
/// length between 32 and 128 characters.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("root hash {value:?} is not hexadecimal of an even length between 32 and 128 characters")]
pub struct MalformedRootHash {
    /// The text refused.
    pub value: String,
}

impl RootHash {
    /// Parses a hexadecimal root hash (SHA-256 gives 64 characters).
    pub fn from_hex(value: &str) -> Result<Self, MalformedRootHash> {
        let bad = || MalformedRootHash {
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

/// A SHA-256 root hash, as a tree built here or a signed manifest gives it.
impl From<[u8; 32]> for RootHash {
    fn from(bytes: [u8; 32]) -> RootHash {
        RootHash(bytes.to_vec())
    }
}

impl fmt::Debug for RootHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootHash({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0b6e1c5f8a0f4e1d9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081";

    #[test]
    fn the_halves_of_the_hash_name_the_partitions() {
        let hash = RootHash::from_hex(HASH).expect("parses");
        assert_eq!(hash.to_hex(), HASH);
        assert_eq!(hash.as_bytes().len(), 32);
        assert_eq!(hash.data_partition_uuid()[..], hash.as_bytes()[..16]);
        assert_eq!(hash.hash_partition_uuid()[..], hash.as_bytes()[16..]);
        let bytes: [u8; 32] = hash.as_bytes().try_into().expect("32 bytes");
        assert_eq!(RootHash::from(bytes), hash);
        assert_eq!(
            RootHash::from_hex(&HASH.to_uppercase()).expect("upper case"),
            hash
        );
    }

    #[test]
    fn malformed_hex_is_refused_with_the_text() {
        for bad in ["", "xyz", "abc", &HASH[..30], &format!("+{}", &HASH[1..])] {
            assert_eq!(
                RootHash::from_hex(bad),
                Err(MalformedRootHash {
                    value: bad.to_string()
                }),
                "{bad}"
            );
        }
        // The longest: SHA-512.
        assert!(RootHash::from_hex(&"ab".repeat(64)).is_ok());
        assert!(RootHash::from_hex(&"ab".repeat(65)).is_err());
    }
}
