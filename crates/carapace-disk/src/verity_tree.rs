//! The dm-verity hash tree: building the hash device image exactly as
//! `veritysetup format` writes it, from data fed in any chunking, and
//! checking data and a hash image against a root hash.
//!
//! Only what Carapace uses: format (hash type) 1, SHA-256, data and hash
//! blocks of 512 to 4096 bytes (powers of two, independent of each other),
//! a salt of up to 256 bytes, the superblock at the start of the hash device
//! (`--hash-offset 0`).
//!
//! The layout (Documentation/admin-guide/device-mapper/verity.rst, and
//! cryptsetup's `VERITY_create_or_verify_hash`):
//! - hash block 0 holds the 512-byte superblock, zero-padded to a hash block;
//! - level 0 holds the digest of every data block, level 1 the digest of
//!   every level-0 hash block, and so on until a level fits in one block;
//!   a digest is `sha256(salt || block)`, and a hash block holds
//!   `hash_block_size / 32` digests side by side, the last block of a level
//!   zero-padded;
//! - the levels follow the superblock top level first: the single top block
//!   is hash block 1, then the level below it, ..., level 0 last;
//! - the root hash is the digest of the top block, or, when the data is a
//!   single block and there is no tree, the digest of that data block.
//!
//! Memory: the builder keeps one digest per data block (8 MiB for 128 MiB of
//! 512-byte blocks) and never the data; the image it returns is the tree,
//! about 1/16 of the data with 512-byte hash blocks (1/128 with 4096).

use std::fmt::Write as _;
use std::io::Read;
use std::ops::Range;

use sha2::{Digest, Sha256};

use crate::verity::{Algorithm, Superblock, SuperblockError, MAX_SALT_SIZE, SUPERBLOCK_SIZE};

/// The size of a SHA-256 digest, and of its slot in a hash block.
pub const DIGEST_SIZE: usize = 32;
/// The smallest data or hash block.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// The largest data or hash block this builder makes (the kernel's page size).
pub const MAX_BLOCK_SIZE: u32 = 4096;
/// The only format (superblock `hash_type`) built: salt first, as veritysetup does.
pub const HASH_TYPE: u32 = 1;

const SIGNATURE: &[u8; 8] = b"verity\0\0";

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Why a tree cannot be built, or why data and a hash image do not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("verity data block size {0} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}")]
    DataBlockSize(u32),
    #[error("verity hash block size {0} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}")]
    HashBlockSize(u32),
    #[error("verity data must have at least one block")]
    NoData,
    #[error("verity data of {blocks} blocks of {block_size} bytes is larger than any device")]
    DataTooLarge { blocks: u64, block_size: u32 },
    #[error("verity salt of {0} bytes exceeds the {MAX_SALT_SIZE}-byte salt field")]
    SaltSize(usize),
    #[error("verity hash type {0} is not supported, only {HASH_TYPE}")]
    HashType(u32),
    #[error("verity hash algorithm {0} is not supported, only sha256")]
    Algorithm(Algorithm),
    #[error("{0}")]
    Superblock(#[from] SuperblockError),
    #[error("verity data is {expected} bytes, but {offered} were fed")]
    TooMuchData { expected: u64, offered: u64 },
    #[error("verity data is {expected} bytes, but only {got} were fed")]
    TooLittleData { expected: u64, got: u64 },
    #[error("cannot read the verity data at offset {offset}: {reason}")]
    Read { offset: u64, reason: String },
    #[error("verity hash image is {len} bytes, but its superblock describes {need}")]
    HashImageTooShort { len: u64, need: u64 },
    #[error(
        "verity root hash mismatch: data and tree give {}, expected {}",
        hex(computed),
        hex(expected)
    )]
    RootHash {
        expected: [u8; 32],
        computed: [u8; 32],
    },
    #[error("verity hash block {block} (level {level}, at byte {}) is corrupt", block.saturating_mul(u64::from(*block_size)))]
    HashBlock {
        /// Index in hash blocks from the start of the hash device (block 0
        /// is the superblock).
        block: u64,
        /// 0 for the digests of data blocks.
        level: usize,
        block_size: u32,
    },
    #[error("verity data block {block} (at byte {}) does not match the hash tree", block.saturating_mul(u64::from(*block_size)))]
    DataBlock {
        /// Index in data blocks from the start of the data.
        block: u64,
        block_size: u32,
    },
    #[error("verity tree of {0} bytes does not fit in memory")]
    TooLarge(u64),
}

/// What a hash tree is built from: the superblock's fields. Build with
/// [`TreeParams::new`] or [`TreeParams::from_superblock`], which validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeParams {
    pub data_block_size: u32,
    pub hash_block_size: u32,
    /// The number of data blocks the tree covers.
    pub data_blocks: u64,
    /// Up to 256 bytes, possibly none.
    pub salt: Vec<u8>,
    /// The hash device's UUID, canonical byte order (as `veritysetup --uuid`
    /// prints it, and as [`Superblock::uuid`]).
    pub uuid: [u8; 16],
}

/// One level of the tree on the hash device.
#[derive(Debug, Clone, Copy)]
struct Level {
    /// The first hash block, counted from the start of the hash device.
    start: u64,
    blocks: u64,
}

/// Where the levels are. `levels[0]` holds the digests of the data blocks;
/// the last level is the single top block.
#[derive(Debug, Clone)]
struct Geometry {
    /// Digests in one hash block.
    per_block: u64,
    levels: Vec<Level>,
    /// Superblock and tree, in hash blocks.
    total_blocks: u64,
}

impl TreeParams {
    /// Validated parameters for `data_blocks` blocks of `data_block_size`
    /// bytes hashed into blocks of `hash_block_size` bytes.
    pub fn new(
        data_block_size: u32,
        hash_block_size: u32,
        data_blocks: u64,
        salt: Vec<u8>,
        uuid: [u8; 16],
    ) -> Result<TreeParams, TreeError> {
        let params = TreeParams {
            data_block_size,
            hash_block_size,
            data_blocks,
            salt,
            uuid,
        };
        params.validate()?;
        Ok(params)
    }

    /// The parameters of an existing hash device, from its parsed superblock.
    pub fn from_superblock(sb: &Superblock) -> Result<TreeParams, TreeError> {
        if sb.hash_type != HASH_TYPE {
            return Err(TreeError::HashType(sb.hash_type));
        }
        if sb.algorithm != Algorithm::Sha256 {
            return Err(TreeError::Algorithm(sb.algorithm));
        }
        TreeParams::new(
            sb.data_block_size,
            sb.hash_block_size,
            sb.data_blocks,
            sb.salt.clone(),
            sb.uuid,
        )
    }

    fn validate(&self) -> Result<(), TreeError> {
        let ok =
            |size: u32| size.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size);
        if !ok(self.data_block_size) {
            return Err(TreeError::DataBlockSize(self.data_block_size));
        }
        if !ok(self.hash_block_size) {
            return Err(TreeError::HashBlockSize(self.hash_block_size));
        }
        if self.data_blocks == 0 {
            return Err(TreeError::NoData);
        }
        if self
            .data_blocks
            .checked_mul(u64::from(self.data_block_size))
            .is_none()
        {
            return Err(TreeError::DataTooLarge {
                blocks: self.data_blocks,
                block_size: self.data_block_size,
            });
        }
        if self.salt.len() > MAX_SALT_SIZE {
            return Err(TreeError::SaltSize(self.salt.len()));
        }
        Ok(())
    }

    /// The size of the data the tree covers, in bytes.
    pub fn data_bytes(&self) -> u64 {
        // Cannot overflow once validated; saturates otherwise.
        self.data_blocks
            .saturating_mul(u64::from(self.data_block_size))
    }

    /// The number of tree levels (0 when the data is a single block).
    pub fn levels(&self) -> usize {
        self.geometry().levels.len()
    }

    /// The size of the hash device content: superblock block and tree, as
    /// veritysetup reports it ("Hash device size").
    pub fn hash_device_bytes(&self) -> u64 {
        self.geometry()
            .total_blocks
            .saturating_mul(u64::from(self.hash_block_size))
    }

    /// The superblock these parameters describe, as [`Superblock::parse`]
    /// would return it (for [`Superblock::table`]).
    pub fn superblock(&self) -> Superblock {
        Superblock {
            hash_type: HASH_TYPE,
            uuid: self.uuid,
            algorithm: Algorithm::Sha256,
            data_block_size: self.data_block_size,
            hash_block_size: self.hash_block_size,
            data_blocks: self.data_blocks,
            salt: self.salt.clone(),
        }
    }

    /// The on-disk superblock, as veritysetup writes it: signature[8],
    /// version 1, hash_type, uuid[16], algorithm[32], data_block_size,
    /// hash_block_size, data_blocks (u64), salt_size (u16), padding[6],
    /// salt[256], padding[168]; little-endian, zero where unused.
    pub fn superblock_bytes(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        b[0..8].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[12..16].copy_from_slice(&HASH_TYPE.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        let name = Algorithm::Sha256.name().as_bytes();
        b[32..32 + name.len()].copy_from_slice(name);
        b[64..68].copy_from_slice(&self.data_block_size.to_le_bytes());
        b[68..72].copy_from_slice(&self.hash_block_size.to_le_bytes());
        b[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        let salt = &self.salt[..self.salt.len().min(MAX_SALT_SIZE)];
        // At most 256: fits.
        b[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
        b[88..88 + salt.len()].copy_from_slice(salt);
        b
    }

    /// The tree's layout, computed as cryptsetup and the kernel do: level i
    /// has ceil(data_blocks / per_block^(i+1)) blocks, levels are added
    /// until one has a single block, and they are stored top first after
    /// the superblock's block.
    fn geometry(&self) -> Geometry {
        let per_block = (u64::from(self.hash_block_size) / DIGEST_SIZE as u64).max(2);
        let mut counts = Vec::new();
        let mut n = self.data_blocks;
        while n > 1 {
            n = n.div_ceil(per_block);
            counts.push(n);
        }
        // The superblock takes hash block 0: 512 bytes round up to one block.
        let mut position =
            (SUPERBLOCK_SIZE as u64).div_ceil(u64::from(self.hash_block_size.max(1)));
        let mut levels = vec![
            Level {
                start: 0,
                blocks: 0
            };
            counts.len()
        ];
        for (level, &blocks) in levels.iter_mut().zip(&counts).rev() {
            *level = Level {
                start: position,
                blocks,
            };
            position = position.saturating_add(blocks);
        }
        Geometry {
            per_block,
            levels,
            total_blocks: position,
        }
    }

    /// The hasher state after the salt, cloned for every block.
    fn salted(&self) -> Sha256 {
        let mut h = Sha256::new();
        h.update(&self.salt);
        h
    }
}

/// A built tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// The hash to put on the kernel command line (`roothash=`).
    pub root_hash: [u8; 32],
    /// The hash device's content: superblock (padded to a hash block) and
    /// the tree, exactly what veritysetup writes, up to its used size
    /// ([`TreeParams::hash_device_bytes`]).
    pub image: Vec<u8>,
}

/// Builds a tree from data fed in any chunking: `new`, `update` as often as
/// needed, `finish`.
#[derive(Debug, Clone)]
pub struct TreeBuilder {
    params: TreeParams,
    salted: Sha256,
    /// The hasher of the data block being fed.
    current: Sha256,
    /// Bytes of the current data block hashed so far.
    in_block: usize,
    /// Bytes fed so far.
    fed: u64,
    /// The digest of every complete data block.
    level0: Vec<[u8; DIGEST_SIZE]>,
}

impl TreeBuilder {
    /// A builder for `params`, validated again here because its fields are
    /// public: invalid parameters are refused rather than trusted.
    pub fn new(params: TreeParams) -> Result<TreeBuilder, TreeError> {
        params.validate()?;
        let salted = params.salted();
        // Grows with the data actually fed, not with what a superblock claims.
        let capacity = usize::try_from(params.data_blocks.min(1 << 20)).unwrap_or(0);
        Ok(TreeBuilder {
            current: salted.clone(),
            salted,
            in_block: 0,
            fed: 0,
            level0: Vec::with_capacity(capacity),
            params,
        })
    }

    /// The parameters the builder was made with.
    pub fn params(&self) -> &TreeParams {
        &self.params
    }

    /// Bytes fed so far.
    pub fn fed(&self) -> u64 {
        self.fed
    }

    /// Hashes the next `bytes` of the data. A chunk that would go past the
    /// end of the data is refused whole (nothing of it is hashed) with
    /// [`TreeError::TooMuchData`].
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), TreeError> {
        let expected = self.params.data_bytes();
        let offered = self.fed.saturating_add(bytes.len() as u64);
        if offered > expected {
            return Err(TreeError::TooMuchData { expected, offered });
        }
        self.fed = offered;
        let block_size = self.params.data_block_size as usize;
        let mut rest = bytes;
        while !rest.is_empty() {
            let take = (block_size - self.in_block).min(rest.len());
            let (head, tail) = rest.split_at(take);
            self.current.update(head);
            self.in_block += take;
            rest = tail;
            if self.in_block == block_size {
                let done = std::mem::replace(&mut self.current, self.salted.clone());
                self.level0.push(done.finalize().into());
                self.in_block = 0;
            }
        }
        Ok(())
    }

    /// Builds the tree once all `data_blocks * data_block_size` bytes have
    /// been fed; fewer is [`TreeError::TooLittleData`].
    pub fn finish(self) -> Result<Tree, TreeError> {
        let expected = self.params.data_bytes();
        if self.fed != expected {
            return Err(TreeError::TooLittleData {
                expected,
                got: self.fed,
            });
        }
        build(&self.params, &self.salted, self.level0)
    }
}

fn digest(salted: &Sha256, block: &[u8]) -> [u8; DIGEST_SIZE] {
    salted.clone().chain_update(block).finalize().into()
}

/// The byte range of hash block `index` of `size` bytes.
fn block_range(index: u64, size: u32) -> Range<usize> {
    let size = size as usize;
    let start = usize::try_from(index)
        .unwrap_or(usize::MAX)
        .saturating_mul(size);
    start..start.saturating_add(size)
}

fn build(
    params: &TreeParams,
    salted: &Sha256,
    level0: Vec<[u8; DIGEST_SIZE]>,
) -> Result<Tree, TreeError> {
    let geometry = params.geometry();
    let bytes = params.hash_device_bytes();
    let len = usize::try_from(bytes).map_err(|_| TreeError::TooLarge(bytes))?;
    let mut image = vec![0u8; len];
    image[..SUPERBLOCK_SIZE].copy_from_slice(&params.superblock_bytes());
    let per_block = geometry.per_block as usize;
    let mut digests = level0;
    for level in &geometry.levels {
        let mut next = Vec::with_capacity(digests.len().div_ceil(per_block));
        for (j, chunk) in (0u64..).zip(digests.chunks(per_block)) {
            let block = image
                .get_mut(block_range(level.start + j, params.hash_block_size))
                .ok_or(TreeError::TooLarge(bytes))?;
            for (slot, d) in block.chunks_exact_mut(DIGEST_SIZE).zip(chunk) {
                slot.copy_from_slice(d);
            }
            next.push(digest(salted, block));
        }
        digests = next;
    }
    // One digest is left: the top block's, or the single data block's.
    let root_hash = digests.first().copied().ok_or(TreeError::NoData)?;
    Ok(Tree { root_hash, image })
}

/// Checks `data` against the hash device content `hash_image` (superblock
/// and tree, at least up to the superblock's used size) and `root_hash`.
///
/// Reads exactly the `data_blocks * data_block_size` bytes the superblock
/// covers from `data` (what follows is not read: the kernel ignores it too),
/// rebuilds the tree, and says what differs, in the order the kernel would
/// find it walking from the root:
/// - [`TreeError::RootHash`]: the tree and the data agree with each other
///   but not with `root_hash` (or neither agrees with anything);
/// - [`TreeError::HashBlock`]: the first hash block (in device order, top
///   level first) whose digest is not the one its parent holds (or, for
///   the top block, whose digest is not `root_hash` while the data's is);
/// - [`TreeError::DataBlock`]: the tree is consistent with `root_hash`, and
///   this is the first data block whose digest is not the tree's;
/// - also [`TreeError::HashBlock`] for a consistent tree that differs from
///   what veritysetup would write only in a block's zero padding.
pub fn verify(
    mut data: impl Read,
    hash_image: &[u8],
    root_hash: &[u8; 32],
) -> Result<(), TreeError> {
    let sb = Superblock::parse(hash_image)?;
    let params = TreeParams::from_superblock(&sb)?;
    let need = params.hash_device_bytes();
    if (hash_image.len() as u64) < need {
        return Err(TreeError::HashImageTooShort {
            len: hash_image.len() as u64,
            need,
        });
    }
    let mut builder = TreeBuilder::new(params.clone())?;
    let expected = params.data_bytes();
    let mut buf = vec![0u8; 64 * 1024];
    while builder.fed() < expected {
        let left = expected - builder.fed();
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        match data.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(TreeError::TooLittleData {
                    expected,
                    got: builder.fed(),
                })
            }
            Ok(n) => builder.update(&buf[..n.min(want)])?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(TreeError::Read {
                    offset: builder.fed(),
                    reason: e.to_string(),
                })
            }
        }
    }
    let tree = builder.finish()?;
    compare(&params, &tree, hash_image, root_hash)
}

/// Says where `stored` (a hash image at least as long as `tree.image`) and
/// the tree rebuilt from the data differ; see [`verify`].
fn compare(
    params: &TreeParams,
    tree: &Tree,
    stored: &[u8],
    root_hash: &[u8; 32],
) -> Result<(), TreeError> {
    let geometry = params.geometry();
    let size = params.hash_block_size;
    let salted = params.salted();
    let root_mismatch = || TreeError::RootHash {
        expected: *root_hash,
        computed: tree.root_hash,
    };
    let corrupt = |block: u64, level: usize| TreeError::HashBlock {
        block,
        level,
        block_size: size,
    };
    let stored_block = |index: u64| stored.get(block_range(index, size)).unwrap_or_default();
    let Some(top) = geometry.levels.len().checked_sub(1) else {
        // A single data block: its digest is the root hash, there is no tree.
        return if tree.root_hash == *root_hash {
            Ok(())
        } else {
            Err(root_mismatch())
        };
    };
    let top_block = geometry.levels[top].start;
    if digest(&salted, stored_block(top_block)) != *root_hash {
        return Err(if tree.root_hash == *root_hash {
            corrupt(top_block, top)
        } else {
            root_mismatch()
        });
    }
    // Each stored block against the digest its parent holds, top down.
    let per_block = geometry.per_block;
    for level in (0..top).rev() {
        let parent = geometry.levels[level + 1];
        let this = geometry.levels[level];
        for j in 0..this.blocks {
            let slot = ((j % per_block) as usize) * DIGEST_SIZE;
            let held = stored_block(parent.start + j / per_block).get(slot..slot + DIGEST_SIZE);
            if held != Some(&digest(&salted, stored_block(this.start + j))[..]) {
                return Err(corrupt(this.start + j, level));
            }
        }
    }
    // The tree is consistent with the root hash: the data must be what its
    // level 0 says.
    let level0 = geometry.levels[0];
    for i in 0..params.data_blocks {
        let block = level0.start + i / per_block;
        let slot =
            ((i % per_block) as usize) * DIGEST_SIZE..((i % per_block) as usize + 1) * DIGEST_SIZE;
        let ours = tree
            .image
            .get(block_range(block, size))
            .and_then(|b| b.get(slot.clone()));
        if stored_block(block).get(slot) != ours {
            return Err(TreeError::DataBlock {
                block: i,
                block_size: params.data_block_size,
            });
        }
    }
    // What is left to differ is padding in a consistent tree.
    for (level, l) in geometry.levels.iter().enumerate().rev() {
        for index in l.start..l.start + l.blocks {
            if tree.image.get(block_range(index, size)) != Some(stored_block(index)) {
                return Err(corrupt(index, level));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::atomic::{AtomicU64, Ordering};

    const UUID: [u8; 16] = [
        0x5f, 0x1c, 0x3c, 0x3e, 0x7b, 0x0e, 0x4a, 0x9e, 0x8c, 0x55, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e,
        0x6f,
    ];

    /// xorshift64*: pseudo-random, reproducible data.
    struct Rng(u64);

    impl Rng {
        fn fill(&mut self, buf: &mut [u8]) {
            for chunk in buf.chunks_mut(8) {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len];
            self.fill(&mut v);
            v
        }
    }

    /// A directory under the temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "carapace-verity-tree-{}-{name}-{n}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The veritysetup binary; missing is a failure, never a skip.
    fn veritysetup() -> PathBuf {
        let path = std::env::var_os("PATH").unwrap_or_default();
        ["/usr/sbin", "/sbin"]
            .iter()
            .map(PathBuf::from)
            .chain(std::env::split_paths(&path))
            .map(|dir| dir.join("veritysetup"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "veritysetup not found in /usr/sbin, /sbin or PATH: install cryptsetup-bin \
                     (the build's setup does); the verity tree tests compare against it"
                )
            })
    }

    fn from_hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// What `veritysetup format` wrote and printed.
    struct Formatted {
        root_hash: [u8; 32],
        /// "Hash device size".
        used: u64,
        /// "Hash blocks": the tree without the superblock.
        hash_blocks: u64,
        /// The whole hash file.
        hash_file: Vec<u8>,
    }

    fn veritysetup_format(data: &Path, hash: &Path, p: &TreeParams) -> Formatted {
        let salt = if p.salt.is_empty() {
            "-".to_string()
        } else {
            hex(&p.salt)
        };
        let out = Command::new(veritysetup())
            .arg("format")
            .arg("--hash=sha256")
            .arg("--format=1")
            .arg("--hash-offset=0")
            .arg(format!("--data-block-size={}", p.data_block_size))
            .arg(format!("--hash-block-size={}", p.hash_block_size))
            .arg(format!("--data-blocks={}", p.data_blocks))
            .arg(format!("--salt={salt}"))
            .arg(format!("--uuid={}", crate::gpt::Guid(p.uuid)))
            .arg(data)
            .arg(hash)
            .output()
            .expect("runs veritysetup");
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "veritysetup format failed: {report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |name: &str| {
            report
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().trim_end_matches(" [bytes]").to_string())
                .unwrap_or_else(|| panic!("{name} missing from:\n{report}"))
        };
        Formatted {
            root_hash: from_hex(&field("Root hash")).try_into().expect("32 bytes"),
            used: field("Hash device size").parse().expect("number"),
            hash_blocks: field("Hash blocks").parse().expect("number"),
            hash_file: std::fs::read(hash).expect("hash file"),
        }
    }

    /// Writes `data_blocks` blocks of pseudo-random data to a file and to a
    /// builder at the same time, in pieces of uneven sizes, without holding
    /// more than a MiB of it; builds the tree with veritysetup too, and
    /// checks that both agree byte for byte.
    fn check_against_veritysetup(p: &TreeParams, expected_levels: usize, seed: u64) {
        let dir = TempDir::new("format");
        let (data, hash) = (dir.path("data"), dir.path("hash"));
        let mut rng = Rng(seed);
        let mut builder = TreeBuilder::new(p.clone()).expect("builder");
        let mut file = std::io::BufWriter::new(std::fs::File::create(&data).expect("data"));
        let mut left = p.data_bytes();
        let mut piece = 1usize;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = buf.len().min(left as usize);
            rng.fill(&mut buf[..n]);
            file.write_all(&buf[..n]).expect("write data");
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                // 1, 2, ..., 1000 bytes, then 7001, 14001, ...: across block boundaries.
                piece = if piece > 1000 { 1 } else { piece * 7 + 1 };
                let (now, later) = rest.split_at(piece.min(rest.len()));
                builder.update(now).expect("update");
                rest = later;
            }
            left -= n as u64;
        }
        file.flush().expect("flush");
        drop(file);

        let tree = builder.finish().expect("tree");
        let theirs = veritysetup_format(&data, &hash, p);
        let what = format!(
            "{} data blocks of {}, hash blocks of {}, {}-byte salt",
            p.data_blocks,
            p.data_block_size,
            p.hash_block_size,
            p.salt.len()
        );
        assert_eq!(p.levels(), expected_levels, "{what}");
        assert_eq!(tree.root_hash, theirs.root_hash, "root hash of {what}");
        assert_eq!(tree.image.len() as u64, theirs.used, "used size of {what}");
        assert_eq!(
            p.hash_device_bytes(),
            theirs.used,
            "hash device size of {what}"
        );
        let used = theirs
            .hash_file
            .get(..tree.image.len())
            .expect("long enough");
        if let Some(at) = tree.image.iter().zip(used).position(|(a, b)| a != b) {
            panic!(
                "{what}: the images differ first at byte {at} (hash block {})",
                at / p.hash_block_size as usize
            );
        }
        // The superblock parses back to the parameters, and its geometry
        // (verity.rs's) agrees with veritysetup's and with the image.
        let sb = Superblock::parse(&tree.image).expect("superblock");
        assert_eq!(TreeParams::from_superblock(&sb), Ok(p.clone()));
        assert_eq!(sb, p.superblock());
        assert_eq!(sb.hash_tree_blocks(), theirs.hash_blocks, "{what}");
        assert_eq!(sb.hash_device_bytes(), theirs.used, "{what}");
        // And veritysetup's image verifies with ours.
        let data = std::fs::File::open(&data).expect("data");
        assert_eq!(
            verify(
                std::io::BufReader::new(data),
                &theirs.hash_file,
                &theirs.root_hash
            ),
            Ok(())
        );
    }

    fn params(data_block_size: u32, hash_block_size: u32, blocks: u64, salt: usize) -> TreeParams {
        let salt = Rng(salt as u64 + 99).bytes(salt);
        TreeParams::new(data_block_size, hash_block_size, blocks, salt, UUID).expect("params")
    }

    #[test]
    fn same_as_veritysetup_with_512_byte_data_and_hash_blocks() {
        // 16 digests in a 512-byte hash block.
        for (blocks, salt, levels) in [
            (1, 32, 0),
            (13, 32, 1), // a partly filled level-0 block
            (16, 1, 1),
            (17, 0, 2),
            (200, 256, 2),
            (300, 32, 3),
            (4097, 5, 4),
        ] {
            check_against_veritysetup(&params(512, 512, blocks, salt), levels, blocks);
        }
    }

    #[test]
    fn same_as_veritysetup_with_4096_byte_data_and_hash_blocks() {
        // 128 digests in a 4096-byte hash block.
        for (blocks, salt, levels) in [
            (1, 0, 0),
            (100, 32, 1),
            (128, 32, 1),
            (1000, 3, 2),
            (16_385, 32, 3), // 64 MiB: one digest in the last level-0 block
        ] {
            check_against_veritysetup(&params(4096, 4096, blocks, salt), levels, blocks);
        }
    }

    #[test]
    fn same_as_veritysetup_with_512_byte_data_and_4096_byte_hash_blocks() {
        for (blocks, salt, levels) in [(1, 32, 0), (100, 32, 1), (1000, 0, 2), (16_400, 256, 3)] {
            check_against_veritysetup(&params(512, 4096, blocks, salt), levels, blocks);
        }
    }

    #[test]
    fn same_as_veritysetup_with_4096_byte_data_and_512_byte_hash_blocks() {
        for (blocks, salt, levels) in [
            (1, 32, 0),
            (10, 32, 1),
            (200, 17, 2),
            (300, 256, 3),
            (5000, 0, 4),
        ] {
            check_against_veritysetup(&params(4096, 512, blocks, salt), levels, blocks);
        }
    }

    /// The size the update daemon handles: 128 MiB of 512-byte blocks,
    /// streamed (the data is never in memory whole), five levels.
    #[test]
    fn same_as_veritysetup_for_128_mib_of_512_byte_blocks() {
        check_against_veritysetup(&params(512, 512, 128 << 11, 32), 5, 128);
    }

    /// Small data in memory, with its tree: 300 blocks of 512 bytes and
    /// 512-byte hash blocks make three levels (19 + 2 + 1 blocks).
    fn small() -> (TreeParams, Vec<u8>, Tree) {
        let p = params(512, 512, 300, 32);
        let data = Rng(7).bytes(300 * 512);
        let mut b = TreeBuilder::new(p.clone()).expect("builder");
        b.update(&data).expect("update");
        let tree = b.finish().expect("tree");
        (p, data, tree)
    }

    #[test]
    fn chunked_feeding_gives_the_same_tree_as_one_shot() {
        let (p, data, tree) = small();
        for chunk in [1, 3, 511, 512, 513, 4096, 100_000] {
            let mut b = TreeBuilder::new(p.clone()).expect("builder");
            for c in data.chunks(chunk) {
                b.update(c).expect("update");
            }
            b.update(&[]).expect("empty update");
            assert_eq!(b.finish().as_ref(), Ok(&tree), "chunks of {chunk}");
        }
    }

    #[test]
    fn verify_accepts_the_right_data() {
        let (_, data, tree) = small();
        assert_eq!(verify(&data[..], &tree.image, &tree.root_hash), Ok(()));
        // Data beyond what the tree covers is not read; hash image beyond
        // the used size neither.
        let mut longer = data.clone();
        longer.extend_from_slice(&[1, 2, 3]);
        let mut image = tree.image.clone();
        image.extend_from_slice(&[0xff; 4096]);
        assert_eq!(verify(&longer[..], &image, &tree.root_hash), Ok(()));
    }

    #[test]
    fn verify_names_the_data_block_that_changed() {
        let (_, mut data, tree) = small();
        data[123 * 512 + 77] ^= 0x10;
        let err = verify(&data[..], &tree.image, &tree.root_hash);
        assert_eq!(
            err,
            Err(TreeError::DataBlock {
                block: 123,
                block_size: 512
            })
        );
        assert_eq!(
            err.expect_err("refused").to_string(),
            "verity data block 123 (at byte 62976) does not match the hash tree"
        );
        let (_, mut data, tree) = small();
        data[300 * 512 - 1] ^= 1;
        assert_eq!(
            verify(&data[..], &tree.image, &tree.root_hash),
            Err(TreeError::DataBlock {
                block: 299,
                block_size: 512
            })
        );
    }

    #[test]
    fn verify_names_the_hash_block_that_changed() {
        let (p, data, tree) = small();
        // Hash block 0: superblock; 1: top (level 2); 2-3: level 1; 4-22: level 0.
        assert_eq!(p.hash_device_bytes(), 23 * 512);
        for (block, level) in [(1, 2), (3, 1), (4, 0), (17, 0), (22, 0)] {
            let mut image = tree.image.clone();
            image[block * 512 + 200] ^= 4;
            let err = verify(&data[..], &image, &tree.root_hash);
            assert_eq!(
                err,
                Err(TreeError::HashBlock {
                    block: block as u64,
                    level,
                    block_size: 512
                }),
                "block {block}"
            );
            let msg = err.expect_err("refused").to_string();
            assert!(msg.starts_with(&format!("verity hash block {block} (level {level}")));
        }
        // A digest changed and its parents recomputed: a consistent tree
        // that says another thing about data block 5 than the data does.
        let mut image = tree.image.clone();
        image[4 * 512 + 5 * 32] ^= 1;
        let salted = p.salted();
        let d = digest(&salted, &image[4 * 512..5 * 512]);
        image[2 * 512..2 * 512 + 32].copy_from_slice(&d);
        let d = digest(&salted, &image[2 * 512..3 * 512]);
        image[512..512 + 32].copy_from_slice(&d);
        let root = digest(&salted, &image[512..1024]);
        assert_eq!(
            verify(&data[..], &image, &root),
            Err(TreeError::DataBlock {
                block: 5,
                block_size: 512
            })
        );
    }

    #[test]
    fn verify_refuses_another_root_hash() {
        let (_, data, tree) = small();
        let mut other = tree.root_hash;
        other[31] ^= 1;
        let err = verify(&data[..], &tree.image, &other);
        assert_eq!(
            err,
            Err(TreeError::RootHash {
                expected: other,
                computed: tree.root_hash
            })
        );
        assert!(err
            .expect_err("refused")
            .to_string()
            .starts_with("verity root hash mismatch: data and tree give "));
        // With no tree (one data block) the data is the root.
        let p = params(4096, 4096, 1, 0);
        let data = Rng(1).bytes(4096);
        let mut b = TreeBuilder::new(p).expect("builder");
        b.update(&data).expect("update");
        let tree = b.finish().expect("tree");
        assert_eq!(tree.image.len(), 4096, "the superblock only");
        assert_eq!(verify(&data[..], &tree.image, &tree.root_hash), Ok(()));
        let mut bad = data.clone();
        bad[0] ^= 1;
        assert!(matches!(
            verify(&bad[..], &tree.image, &tree.root_hash),
            Err(TreeError::RootHash { .. })
        ));
    }

    #[test]
    fn verify_refuses_short_inputs_and_unsupported_superblocks() {
        let (_, data, tree) = small();
        assert_eq!(
            verify(&data[..1000], &tree.image, &tree.root_hash),
            Err(TreeError::TooLittleData {
                expected: 300 * 512,
                got: 1000
            })
        );
        assert_eq!(
            verify(&data[..], &tree.image[..22 * 512], &tree.root_hash),
            Err(TreeError::HashImageTooShort {
                len: 22 * 512,
                need: 23 * 512
            })
        );
        assert!(matches!(
            verify(&data[..], &tree.image[..100], &tree.root_hash),
            Err(TreeError::Superblock(SuperblockError::Truncated(100)))
        ));
        let mut image = tree.image.clone();
        image[12] = 0; // hash type 0, Chromium OS
        assert_eq!(
            verify(&data[..], &image, &tree.root_hash),
            Err(TreeError::HashType(0))
        );
        let mut image = tree.image.clone();
        image[32..38].copy_from_slice(b"sha512");
        assert_eq!(
            verify(&data[..], &image, &tree.root_hash),
            Err(TreeError::Algorithm(Algorithm::Sha512))
        );

        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        assert_eq!(
            verify(Failing, &tree.image, &tree.root_hash),
            Err(TreeError::Read {
                offset: 0,
                reason: "disk on fire".into()
            })
        );
    }

    #[test]
    fn feeding_the_wrong_amount_is_an_error() {
        let p = params(512, 512, 4, 0);
        let mut b = TreeBuilder::new(p.clone()).expect("builder");
        b.update(&[0; 1000]).expect("fits");
        assert_eq!(
            b.update(&[0; 1049]),
            Err(TreeError::TooMuchData {
                expected: 2048,
                offered: 2049
            })
        );
        // The refused chunk was not hashed: the rest still completes.
        assert_eq!(b.fed(), 1000);
        b.update(&[0; 1048]).expect("fits");
        let tree = b.clone().finish().expect("tree");
        assert_eq!(
            verify(&[0u8; 2048][..], &tree.image, &tree.root_hash),
            Ok(())
        );
        assert!(matches!(b.update(&[0]), Err(TreeError::TooMuchData { .. })));

        let mut b = TreeBuilder::new(p.clone()).expect("builder");
        b.update(&[0; 2047]).expect("fits");
        assert_eq!(
            b.finish(),
            Err(TreeError::TooLittleData {
                expected: 2048,
                got: 2047
            })
        );
        let b = TreeBuilder::new(p).expect("builder");
        assert_eq!(
            b.finish(),
            Err(TreeError::TooLittleData {
                expected: 2048,
                got: 0
            })
        );
    }

    #[test]
    fn invalid_parameters_are_refused() {
        let new = |d, h, n, salt: usize| TreeParams::new(d, h, n, vec![0; salt], UUID);
        assert_eq!(new(1024, 2048, 5, 256).map(|p| p.data_bytes()), Ok(5120));
        assert_eq!(new(256, 512, 1, 0), Err(TreeError::DataBlockSize(256)));
        assert_eq!(new(8192, 512, 1, 0), Err(TreeError::DataBlockSize(8192)));
        assert_eq!(new(1000, 512, 1, 0), Err(TreeError::DataBlockSize(1000)));
        assert_eq!(new(512, 0, 1, 0), Err(TreeError::HashBlockSize(0)));
        assert_eq!(new(512, 8192, 1, 0), Err(TreeError::HashBlockSize(8192)));
        assert_eq!(new(512, 512, 0, 0), Err(TreeError::NoData));
        assert_eq!(
            new(4096, 512, u64::MAX / 1000, 0),
            Err(TreeError::DataTooLarge {
                blocks: u64::MAX / 1000,
                block_size: 4096
            })
        );
        assert_eq!(new(512, 512, 1, 257), Err(TreeError::SaltSize(257)));
        // Public fields set by hand are checked again by the builder.
        let mut p = params(512, 512, 1, 0);
        p.data_block_size = 0;
        assert!(matches!(
            TreeBuilder::new(p),
            Err(TreeError::DataBlockSize(0))
        ));
    }

    /// The committed veritysetup fixture (64 blocks of 4 KiB filled with
    /// 'c') comes out with the same superblock and root hash.
    #[test]
    fn the_committed_veritysetup_fixture_is_rebuilt() {
        let sb_bytes = include_bytes!("../testdata/veritysetup-sha256.superblock.bin");
        let sb = Superblock::parse(sb_bytes).expect("superblock");
        let p = TreeParams::from_superblock(&sb).expect("params");
        assert_eq!(&p.superblock_bytes()[..], &sb_bytes[..]);
        let mut b = TreeBuilder::new(p).expect("builder");
        b.update(&vec![b'c'; 64 * 4096]).expect("update");
        let tree = b.finish().expect("tree");
        assert_eq!(
            hex(&tree.root_hash),
            "423877b78dac3fd3ed907fbf5452d3714a55ed1b05f00b21569ff791506d9b3e"
        );
        assert_eq!(tree.image.len(), 8192);
    }
}
