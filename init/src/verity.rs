//! The dm-verity superblock (the 512 bytes `veritysetup format` and
//! systemd-repart write at the start of a hash partition) and the
//! device-mapper table line that creates a verity device from it.

use std::fmt::Write as _;

/// The parsed, validated superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub version: u32,
    pub hash_type: u32,
    pub uuid: [u8; 16],
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SuperblockError {
    #[error("superblock too short ({0} bytes, need 512)")]
    Truncated(usize),
    #[error("no verity superblock signature (expected \"verity\\0\\0\")")]
    BadSignature,
    #[error("unsupported superblock version {0}")]
    Version(u32),
    #[error("unsupported hash type {0} (only 1, the format veritysetup writes by default)")]
    HashType(u32),
    #[error("unsupported hash algorithm {0:?}")]
    Algorithm(String),
    #[error("invalid {what} block size {size} (must be a power of two from 512 to 1 MiB)")]
    BlockSize { what: &'static str, size: u32 },
    #[error("superblock says the data has no blocks")]
    NoData,
    #[error("salt size {0} exceeds 256 bytes")]
    SaltSize(u16),
}

const SIGNATURE: &[u8; 8] = b"verity\0\0";

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn valid_block_size(size: u32) -> bool {
    size.is_power_of_two() && (512..=1 << 20).contains(&size)
}

impl Superblock {
    /// Parses the on-disk layout: signature[8], version u32, hash_type u32,
    /// uuid[16], algorithm[32], data_block_size u32, hash_block_size u32,
    /// data_blocks u64, salt_size u16, pad[6], salt[256], pad[168].
    pub fn parse(b: &[u8]) -> Result<Superblock, SuperblockError> {
        if b.len() < 512 {
            return Err(SuperblockError::Truncated(b.len()));
        }
        if &b[0..8] != SIGNATURE {
            return Err(SuperblockError::BadSignature);
        }
        let version = le32(b, 8);
        if version != 1 {
            return Err(SuperblockError::Version(version));
        }
        let hash_type = le32(b, 12);
        if hash_type != 1 {
            return Err(SuperblockError::HashType(hash_type));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let alg_bytes: Vec<u8> = b[32..64].iter().copied().take_while(|&c| c != 0).collect();
        let algorithm = String::from_utf8_lossy(&alg_bytes).into_owned();
        if !matches!(algorithm.as_str(), "sha256" | "sha512" | "sha1") {
            return Err(SuperblockError::Algorithm(algorithm));
        }
        let data_block_size = le32(b, 64);
        if !valid_block_size(data_block_size) {
            return Err(SuperblockError::BlockSize {
                what: "data",
                size: data_block_size,
            });
        }
        let hash_block_size = le32(b, 68);
        if !valid_block_size(hash_block_size) {
            return Err(SuperblockError::BlockSize {
                what: "hash",
                size: hash_block_size,
            });
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&b[72..80]);
        let data_blocks = u64::from_le_bytes(n);
        if data_blocks == 0 {
            return Err(SuperblockError::NoData);
        }
        let salt_size = u16::from_le_bytes([b[80], b[81]]);
        if salt_size > 256 {
            return Err(SuperblockError::SaltSize(salt_size));
        }
        let salt = b[88..88 + salt_size as usize].to_vec();
        Ok(Superblock {
            version,
            hash_type,
            uuid,
            algorithm,
            data_block_size,
            hash_block_size,
            data_blocks,
            salt,
        })
    }

    /// The size of the verified device in 512-byte sectors.
    pub fn data_sectors(&self) -> u64 {
        self.data_blocks * u64::from(self.data_block_size) / 512
    }

    /// The parameters of the kernel's `verity` target (Documentation/
    /// admin-guide/device-mapper/verity.rst): version, data device, hash
    /// device, block sizes, data block count, the first hash block (1: the
    /// superblock fills block 0), algorithm, root digest, salt.
    pub fn table_params(&self, data_dev: &str, hash_dev: &str, root_hash: &[u8]) -> String {
        let mut s = format!(
            "{} {} {} {} {} {} 1 {} ",
            self.hash_type,
            data_dev,
            hash_dev,
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            self.algorithm
        );
        for b in root_hash {
            let _ = write!(s, "{b:02x}");
        }
        s.push(' ');
        if self.salt.is_empty() {
            s.push('-');
        } else {
            for b in &self.salt {
                let _ = write!(s, "{b:02x}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SB: &[u8] = include_bytes!("../testdata/verity-superblock.bin");
    const FORMAT: &str = include_str!("../testdata/veritysetup-format.txt");
    const ROOT_HASH: &str = include_str!("../testdata/verity-roothash.txt");

    /// A field of `veritysetup format`'s report.
    fn reported(field: &str) -> String {
        FORMAT
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .map(|v| v.trim_start_matches(':').trim().to_string())
            .unwrap_or_else(|| panic!("{field} missing from the veritysetup report"))
    }

    #[test]
    fn fields_match_what_veritysetup_reported() {
        let sb = Superblock::parse(SB).expect("parses");
        assert_eq!(sb.hash_type.to_string(), reported("Hash type"));
        assert_eq!(sb.data_blocks.to_string(), reported("Data blocks"));
        assert_eq!(sb.data_block_size.to_string(), reported("Data block size"));
        assert_eq!(sb.hash_block_size.to_string(), reported("Hash block size"));
        assert_eq!(sb.algorithm, reported("Hash algorithm"));
        let salt: String = sb.salt.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(salt, reported("Salt"));
        let uuid = crate::gpt::Guid(sb.uuid).to_string();
        assert_eq!(uuid, reported("UUID"));
    }

    #[test]
    fn table_line_has_the_layout_of_the_verity_target() {
        let sb = Superblock::parse(SB).expect("parses");
        let root = crate::cmdline::RootHash::from_hex(ROOT_HASH.trim()).expect("hash");
        let line = sb.table_params("/dev/vda2", "/dev/vda3", root.as_bytes());
        let expected = format!(
            "1 /dev/vda2 /dev/vda3 4096 4096 {} 1 sha256 {} {}",
            reported("Data blocks"),
            ROOT_HASH.trim(),
            reported("Salt")
        );
        assert_eq!(line, expected);
        assert_eq!(sb.data_sectors(), 64 * 8);
    }

    #[test]
    fn empty_salt_is_a_dash() {
        let mut sb = Superblock::parse(SB).expect("parses");
        sb.salt.clear();
        assert!(sb.table_params("a", "b", &[0xab]).ends_with(" ab -"));
    }

    #[test]
    fn bad_superblocks_are_refused() {
        let mut b = SB.to_vec();
        b[0] = b'X';
        assert_eq!(Superblock::parse(&b), Err(SuperblockError::BadSignature));
        let mut b = SB.to_vec();
        b[32..38].copy_from_slice(b"md5\0\0\0");
        assert_eq!(
            Superblock::parse(&b),
            Err(SuperblockError::Algorithm("md5".into()))
        );
        let mut b = SB.to_vec();
        b[64..68].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            Superblock::parse(&b),
            Err(SuperblockError::BlockSize { what: "data", .. })
        ));
        let mut b = SB.to_vec();
        b[72..80].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(Superblock::parse(&b), Err(SuperblockError::NoData));
        let mut b = SB.to_vec();
        b[80..82].copy_from_slice(&300u16.to_le_bytes());
        assert_eq!(Superblock::parse(&b), Err(SuperblockError::SaltSize(300)));
        assert_eq!(
            Superblock::parse(&SB[..100]),
            Err(SuperblockError::Truncated(100))
        );
    }
}
