//! The dm-verity superblock — the 512 bytes that `veritysetup format` and
//! systemd-repart write at the start of a hash partition — and the
//! device-mapper table that creates a verity device from it.
//!
//! Pure: bytes in, a validated [`Superblock`] or an error naming the field
//! and why it is refused; a superblock and a root hash in, the kernel's
//! `verity` target parameters out (Documentation/admin-guide/device-mapper/
//! verity.rst), in the same form cryptsetup's `veritysetup open` loads and
//! `dmsetup table` prints. The superblock is not trusted: it only says how
//! the tree is laid out, and the kernel checks every block against the root
//! hash from the signed command line.

use std::fmt::{self, Write as _};

/// The size of the on-disk superblock.
pub const SUPERBLOCK_SIZE: usize = 512;
/// The device-mapper target type.
pub const TARGET: &str = "verity";
/// The largest data block the kernel accepts: one page (4 KiB on x86-64).
pub const MAX_DATA_BLOCK_SIZE: u32 = 4096;
/// The largest hash block veritysetup accepts.
pub const MAX_HASH_BLOCK_SIZE: u32 = 512 * 1024;
/// The salt field's size.
pub const MAX_SALT_SIZE: usize = 256;

const SIGNATURE: &[u8; 8] = b"verity\0\0";

/// The hash algorithms the verity target is used with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            "sha1" => Some(Algorithm::Sha1),
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    /// The kernel crypto API name, as the superblock and the table spell it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// The length of a digest, and so of the root hash, in bytes.
    pub fn digest_size(self) -> usize {
        match self {
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed, validated superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// 1: the format veritysetup and systemd-repart write (salt first, each
    /// digest padded to a power of two); 0: the original Chromium OS format.
    /// It is the `<version>` of the table.
    pub hash_type: u32,
    /// The UUID veritysetup gave the hash device, canonical byte order.
    pub uuid: [u8; 16],
    pub algorithm: Algorithm,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    /// The number of data blocks the tree covers.
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SuperblockError {
    #[error("verity superblock is {0} bytes, need {SUPERBLOCK_SIZE}")]
    Truncated(usize),
    #[error("no verity superblock: the signature is {0:?}, not \"verity\\0\\0\"")]
    Signature(String),
    #[error("verity superblock version is {0}, only version 1 exists")]
    Version(u32),
    #[error("verity hash type is {0}, the kernel knows only 0 (Chromium OS) and 1")]
    HashType(u32),
    #[error("verity hash algorithm {0:?} is not one of sha1, sha256, sha512")]
    Algorithm(String),
    #[error("verity data block size {0} is not a power of two from 512 to {MAX_DATA_BLOCK_SIZE} (the page size)")]
    DataBlockSize(u32),
    #[error("verity hash block size {size} is not a power of two from 512 to {MAX_HASH_BLOCK_SIZE} holding two {algorithm} digests")]
    HashBlockSize { size: u32, algorithm: Algorithm },
    #[error("verity superblock says the data has no blocks")]
    NoData,
    #[error("verity data of {blocks} blocks of {block_size} bytes is larger than any device")]
    DataTooLarge { blocks: u64, block_size: u32 },
    #[error("verity salt size {0} exceeds the {MAX_SALT_SIZE}-byte salt field")]
    SaltSize(u16),
}

/// Why a superblock does not fit the partitions it was found with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FitError {
    #[error("the data partition holds {available} bytes but the verity superblock covers {needed} ({blocks} blocks of {block_size} bytes)")]
    Data {
        available: u64,
        needed: u64,
        blocks: u64,
        block_size: u32,
    },
    #[error("the hash partition holds {available} bytes but the hash tree needs {needed}")]
    Hash { available: u64, needed: u64 },
}

/// Why no table can be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("root hash is {actual} bytes, but {algorithm} digests are {expected}")]
    RootHashLength {
        algorithm: Algorithm,
        expected: usize,
        actual: usize,
    },
    #[error("device path {0:?} is empty or contains white space")]
    DevicePath(String),
}

fn le32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl Superblock {
    /// Parses the on-disk layout (little-endian, packed): signature[8],
    /// version u32, hash_type u32, uuid[16], algorithm[32] (NUL-padded),
    /// data_block_size u32, hash_block_size u32, data_blocks u64,
    /// salt_size u16, padding[6], salt[256], padding[168].
    pub fn parse(b: &[u8]) -> Result<Superblock, SuperblockError> {
        if b.len() < SUPERBLOCK_SIZE {
            return Err(SuperblockError::Truncated(b.len()));
        }
        if &b[0..8] != SIGNATURE {
            return Err(SuperblockError::Signature(
                String::from_utf8_lossy(&b[0..8]).into_owned(),
            ));
        }
        let version = le32(b, 8);
        if version != 1 {
            return Err(SuperblockError::Version(version));
        }
        let hash_type = le32(b, 12);
        if hash_type > 1 {
            return Err(SuperblockError::HashType(hash_type));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let name_field = &b[32..64];
        let name_len = name_field.iter().position(|&c| c == 0).unwrap_or(32);
        let name = String::from_utf8_lossy(&name_field[..name_len]).into_owned();
        let algorithm = Algorithm::from_name(&name).ok_or(SuperblockError::Algorithm(name))?;
        let data_block_size = le32(b, 64);
        if !data_block_size.is_power_of_two()
            || !(512..=MAX_DATA_BLOCK_SIZE).contains(&data_block_size)
        {
            return Err(SuperblockError::DataBlockSize(data_block_size));
        }
        let hash_block_size = le32(b, 68);
        // The kernel refuses a hash block that cannot hold two digests.
        if !hash_block_size.is_power_of_two()
            || !(512..=MAX_HASH_BLOCK_SIZE).contains(&hash_block_size)
            || (hash_block_size as usize) < 2 * algorithm.digest_size()
        {
            return Err(SuperblockError::HashBlockSize {
                size: hash_block_size,
                algorithm,
            });
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&b[72..80]);
        let data_blocks = u64::from_le_bytes(n);
        if data_blocks == 0 {
            return Err(SuperblockError::NoData);
        }
        if data_blocks
            .checked_mul(u64::from(data_block_size))
            .is_none()
        {
            return Err(SuperblockError::DataTooLarge {
                blocks: data_blocks,
                block_size: data_block_size,
            });
        }
        let salt_size = u16::from_le_bytes([b[80], b[81]]);
        if usize::from(salt_size) > MAX_SALT_SIZE {
            return Err(SuperblockError::SaltSize(salt_size));
        }
        let salt = b[88..88 + usize::from(salt_size)].to_vec();
        Ok(Superblock {
            hash_type,
            uuid,
            algorithm,
            data_block_size,
            hash_block_size,
            data_blocks,
            salt,
        })
    }

    /// The size of the verified data, and of the verity device, in bytes.
    pub fn data_bytes(&self) -> u64 {
        // Cannot overflow: checked by `parse`.
        self.data_blocks * u64::from(self.data_block_size)
    }

    /// The length of the verity device in 512-byte sectors.
    pub fn data_sectors(&self) -> u64 {
        self.data_bytes() / 512
    }

    /// Where the tree starts on the hash device, in hash blocks: after the
    /// 512-byte superblock, rounded up to a whole hash block — so 1, since a
    /// hash block is at least 512 bytes (cryptsetup's VERITY_hash_offset_block).
    pub fn hash_start_block(&self) -> u64 {
        (SUPERBLOCK_SIZE as u64).div_ceil(u64::from(self.hash_block_size))
    }

    /// The number of blocks of the hash tree, computed as the kernel does:
    /// each hash block holds a power of two of digests, and each level
    /// hashes the level below until one block remains (whose digest is the
    /// root hash).
    pub fn hash_tree_blocks(&self) -> u64 {
        let per_block = u64::from(self.hash_block_size) / self.algorithm.digest_size() as u64;
        // A power of two of digests per block (rounded down).
        let bits = 63 - per_block.leading_zeros();
        let mut levels = 0;
        while bits * levels < 64 && (self.data_blocks - 1) >> (bits * levels) != 0 {
            levels += 1;
        }
        (0..levels)
            .map(|level| {
                let shift = bits * (level + 1);
                if shift >= 64 {
                    1
                } else {
                    (self.data_blocks - 1) / (1u64 << shift) + 1
                }
            })
            .sum()
    }

    /// The smallest hash device that holds the superblock and the tree.
    pub fn hash_device_bytes(&self) -> u64 {
        (self.hash_start_block() + self.hash_tree_blocks())
            .saturating_mul(u64::from(self.hash_block_size))
    }

    /// Checks that a data partition of `data_len` bytes and a hash partition
    /// of `hash_len` bytes can hold what this superblock describes (the
    /// kernel would refuse the table otherwise, with only a log line).
    pub fn check_fits(&self, data_len: u64, hash_len: u64) -> Result<(), FitError> {
        if data_len < self.data_bytes() {
            return Err(FitError::Data {
                available: data_len,
                needed: self.data_bytes(),
                blocks: self.data_blocks,
                block_size: self.data_block_size,
            });
        }
        if hash_len < self.hash_device_bytes() {
            return Err(FitError::Hash {
                available: hash_len,
                needed: self.hash_device_bytes(),
            });
        }
        Ok(())
    }

    /// The verity table over `data_dev` and `hash_dev` (paths such as
    /// /dev/vda2, or `major:minor`) that trusts `root_hash`.
    pub fn table(
        &self,
        data_dev: &str,
        hash_dev: &str,
        root_hash: &[u8],
    ) -> Result<Table, TableError> {
        let expected = self.algorithm.digest_size();
        if root_hash.len() != expected {
            return Err(TableError::RootHashLength {
                algorithm: self.algorithm,
                expected,
                actual: root_hash.len(),
            });
        }
        for dev in [data_dev, hash_dev] {
            if dev.is_empty() || dev.contains(char::is_whitespace) {
                return Err(TableError::DevicePath(dev.to_string()));
            }
        }
        let salt = if self.salt.is_empty() {
            "-".to_string()
        } else {
            hex(&self.salt)
        };
        let params = format!(
            "{} {data_dev} {hash_dev} {} {} {} {} {} {} {salt}",
            self.hash_type,
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            self.hash_start_block(),
            self.algorithm,
            hex(root_hash),
        );
        Ok(Table {
            sectors: self.data_sectors(),
            params,
        })
    }
}

/// A one-target device-mapper table for the `verity` target, starting at sector 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The device's length in 512-byte sectors.
    pub sectors: u64,
    /// `<version> <data_dev> <hash_dev> <data_block_size> <hash_block_size>
    /// <num_data_blocks> <hash_start_block> <algorithm> <digest> <salt>`.
    pub params: String,
}

/// The line `dmsetup table` prints: `0 <sectors> verity <params>`.
impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0 {} {TARGET} {}", self.sectors, self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256_SB: &[u8] = include_bytes!("../testdata/veritysetup-sha256.superblock.bin");
    const SHA256_REPORT: &str = include_str!("../testdata/veritysetup-sha256.txt");
    const SHA512_SB: &[u8] = include_bytes!("../testdata/veritysetup-sha512.superblock.bin");
    const SHA512_REPORT: &str = include_str!("../testdata/veritysetup-sha512.txt");
    const REPART_512_SB: &[u8] = include_bytes!("../testdata/repart-512.verity-superblock.bin");
    const REPART_512_DUMP: &str = include_str!("../testdata/repart-512.veritysetup-dump.txt");
    const REPART_4096_SB: &[u8] = include_bytes!("../testdata/repart-4096.verity-superblock.bin");
    const REPART_4096_DUMP: &str = include_str!("../testdata/repart-4096.veritysetup-dump.txt");

    /// A field of a `veritysetup format` or `veritysetup dump` report.
    fn reported(report: &str, field: &str) -> String {
        report
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(|v| v.trim().trim_end_matches(" [bytes]").to_string())
            .unwrap_or_else(|| panic!("{field} missing from:\n{report}"))
    }

    fn root_hash(report: &str) -> Vec<u8> {
        crate::root_hash::RootHash::from_hex(&reported(report, "Root hash"))
            .expect("hex")
            .as_bytes()
            .to_vec()
    }

    #[test]
    fn every_field_matches_what_veritysetup_reported() {
        for (sb, report) in [
            (SHA256_SB, SHA256_REPORT),
            (SHA512_SB, SHA512_REPORT),
            (REPART_512_SB, REPART_512_DUMP),
            (REPART_4096_SB, REPART_4096_DUMP),
        ] {
            let sb = Superblock::parse(sb).expect("parses");
            let field = |f| reported(report, f);
            assert_eq!(crate::gpt::Guid(sb.uuid).to_string(), field("UUID"));
            assert_eq!(sb.hash_type.to_string(), field("Hash type"));
            assert_eq!(sb.data_blocks.to_string(), field("Data blocks"));
            assert_eq!(sb.data_block_size.to_string(), field("Data block size"));
            assert_eq!(sb.hash_block_size.to_string(), field("Hash block size"));
            assert_eq!(sb.algorithm.name(), field("Hash algorithm"));
            let salt = if sb.salt.is_empty() {
                "-".into()
            } else {
                hex(&sb.salt)
            };
            assert_eq!(salt, field("Salt"));
            // The tree geometry, computed as the kernel does, matches too.
            assert_eq!(sb.hash_tree_blocks().to_string(), field("Hash blocks"));
            assert_eq!(
                sb.hash_device_bytes().to_string(),
                field("Hash device size")
            );
        }
    }

    #[test]
    fn systemd_repart_uses_the_sector_size_as_verity_block_size() {
        let sb = Superblock::parse(REPART_512_SB).expect("parses");
        assert_eq!((sb.data_block_size, sb.hash_block_size), (512, 512));
        assert_eq!(sb.data_bytes(), 8 << 20, "the whole 8 MiB root partition");
        let sb = Superblock::parse(REPART_4096_SB).expect("parses");
        assert_eq!((sb.data_block_size, sb.hash_block_size), (4096, 4096));
        assert_eq!(sb.algorithm, Algorithm::Sha256);
    }

    /// The table veritysetup would load for the fixture: cryptsetup formats
    /// it as "%u %s %s %u %u %lu %lu %s %s %s" from hash type, devices,
    /// block sizes, data blocks, hash offset in blocks (1 after a
    /// superblock), algorithm, root hash and salt ("-" when empty), over
    /// data_blocks * data_block_size / 512 sectors.
    #[test]
    fn the_table_is_the_one_veritysetup_loads() {
        let sb = Superblock::parse(SHA256_SB).expect("parses");
        let table = sb
            .table("/dev/vda2", "/dev/vda3", &root_hash(SHA256_REPORT))
            .expect("table");
        assert_eq!(table.sectors, 64 * 4096 / 512);
        assert_eq!(
            table.to_string(),
            "0 512 verity 1 /dev/vda2 /dev/vda3 4096 4096 64 1 sha256 \
             423877b78dac3fd3ed907fbf5452d3714a55ed1b05f00b21569ff791506d9b3e \
             5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed"
        );

        let sb = Superblock::parse(SHA512_SB).expect("parses");
        let root = root_hash(SHA512_REPORT);
        let table = sb.table("253:1", "253:2", &root).expect("table");
        assert_eq!(table.sectors, 16 * 1024 / 512);
        assert_eq!(
            table.params,
            format!("1 253:1 253:2 1024 512 16 1 sha512 {} -", hex(&root))
        );
    }

    /// The example of Documentation/admin-guide/device-mapper/verity.rst.
    #[test]
    fn the_kernel_documentation_example_comes_out_the_same() {
        let mut salt = vec![0u8; 32];
        salt[..2].copy_from_slice(&[0x12, 0x34]);
        let sb = Superblock {
            hash_type: 1,
            uuid: [0; 16],
            algorithm: Algorithm::Sha256,
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 262_144,
            salt,
        };
        let root = crate::root_hash::RootHash::from_hex(
            "4392712ba01368efdf14b05c76f9e4df0d53664630b5d48632ed17a137f39076",
        )
        .expect("hex");
        let table = sb
            .table("/dev/sda1", "/dev/sda2", root.as_bytes())
            .expect("table");
        assert_eq!(
            table.to_string(),
            "0 2097152 verity 1 /dev/sda1 /dev/sda2 4096 4096 262144 1 sha256 \
             4392712ba01368efdf14b05c76f9e4df0d53664630b5d48632ed17a137f39076 \
             1234000000000000000000000000000000000000000000000000000000000000"
        );
    }

    #[test]
    fn a_root_hash_of_the_wrong_length_or_a_bad_device_path_makes_no_table() {
        let sb = Superblock::parse(SHA256_SB).expect("parses");
        let err = sb.table("/dev/vda2", "/dev/vda3", &[0xab; 64]);
        assert_eq!(
            err,
            Err(TableError::RootHashLength {
                algorithm: Algorithm::Sha256,
                expected: 32,
                actual: 64
            })
        );
        assert_eq!(
            err.expect_err("refused").to_string(),
            "root hash is 64 bytes, but sha256 digests are 32"
        );
        assert!(matches!(
            sb.table("/dev/vda2 extra", "/dev/vda3", &[0; 32]),
            Err(TableError::DevicePath(_))
        ));
        assert!(matches!(
            sb.table("/dev/vda2", "", &[0; 32]),
            Err(TableError::DevicePath(_))
        ));
    }

    #[test]
    fn partitions_too_small_for_the_superblock_are_refused() {
        let sb = Superblock::parse(SHA256_SB).expect("parses");
        assert_eq!(sb.check_fits(64 * 4096, 8192), Ok(()));
        assert_eq!(
            sb.check_fits(63 * 4096, 8192),
            Err(FitError::Data {
                available: 63 * 4096,
                needed: 64 * 4096,
                blocks: 64,
                block_size: 4096
            })
        );
        assert_eq!(
            sb.check_fits(1 << 20, 4096),
            Err(FitError::Hash {
                available: 4096,
                needed: 8192
            })
        );
    }

    /// The fixture with one field replaced.
    fn edited(at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut b = SHA256_SB.to_vec();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    }

    #[test]
    fn bad_superblocks_are_refused_with_the_field_that_is_wrong() {
        use SuperblockError as E;
        let cases: Vec<(Vec<u8>, SuperblockError, &str)> = vec![
            (
                edited(0, b"Xerity"),
                E::Signature("Xerity\0\0".into()),
                "no verity superblock: the signature is",
            ),
            (
                edited(8, &2u32.to_le_bytes()),
                E::Version(2),
                "verity superblock version is 2",
            ),
            (
                edited(12, &7u32.to_le_bytes()),
                E::HashType(7),
                "verity hash type is 7",
            ),
            (
                edited(32, b"md5\0\0\0"),
                E::Algorithm("md5".into()),
                "verity hash algorithm \"md5\" is not one of",
            ),
            (
                edited(32, &[b'a'; 32]),
                E::Algorithm("a".repeat(32)),
                "verity hash algorithm",
            ),
            (
                edited(64, &0u32.to_le_bytes()),
                E::DataBlockSize(0),
                "verity data block size 0 is not a power of two",
            ),
            (
                edited(64, &8192u32.to_le_bytes()),
                E::DataBlockSize(8192),
                "from 512 to 4096 (the page size)",
            ),
            (
                edited(64, &1000u32.to_le_bytes()),
                E::DataBlockSize(1000),
                "verity data block size 1000",
            ),
            (
                edited(68, &256u32.to_le_bytes()),
                E::HashBlockSize {
                    size: 256,
                    algorithm: Algorithm::Sha256,
                },
                "verity hash block size 256",
            ),
            (
                edited(72, &0u64.to_le_bytes()),
                E::NoData,
                "verity superblock says the data has no blocks",
            ),
            (
                edited(72, &u64::MAX.to_le_bytes()),
                E::DataTooLarge {
                    blocks: u64::MAX,
                    block_size: 4096,
                },
                "larger than any device",
            ),
            (
                edited(80, &300u16.to_le_bytes()),
                E::SaltSize(300),
                "verity salt size 300 exceeds",
            ),
        ];
        for (bytes, error, words) in cases {
            let got = Superblock::parse(&bytes);
            assert_eq!(got, Err(error), "{words}");
            let msg = got.expect_err("refused").to_string();
            assert!(msg.starts_with(words) || msg.contains(words), "{msg}");
        }
        assert_eq!(Superblock::parse(&SHA256_SB[..100]), Err(E::Truncated(100)));
    }

    #[test]
    fn the_chromium_os_hash_type_is_accepted_and_becomes_the_table_version() {
        let sb = Superblock::parse(&edited(12, &0u32.to_le_bytes())).expect("parses");
        assert_eq!(sb.hash_type, 0);
        let table = sb.table("a", "b", &[0; 32]).expect("table");
        assert!(table.params.starts_with("0 a b 4096 "), "{}", table.params);
    }

    #[test]
    fn tree_geometry_at_the_edges() {
        let mut sb = Superblock::parse(SHA256_SB).expect("parses");
        sb.data_blocks = 1;
        assert_eq!(
            sb.hash_tree_blocks(),
            0,
            "one block: its digest is the root"
        );
        sb.data_blocks = 128;
        assert_eq!(sb.hash_tree_blocks(), 1);
        sb.data_blocks = 129;
        assert_eq!(sb.hash_tree_blocks(), 2 + 1);
        sb.data_blocks = 262_144; // 1 GiB: 2048 + 16 + 1 blocks
        assert_eq!(sb.hash_tree_blocks(), 2048 + 16 + 1);
        sb.data_blocks = u64::MAX / 4096;
        assert!(sb.hash_tree_blocks() > 0, "no overflow");
    }
}
