//! Slot A's dm-verity in 4 KiB blocks. systemd-repart 254 (the one bookworm
//! has) hashes a verity partition in blocks of its sector size, 512 bytes,
//! and has no setting for it: every read of the root then costs eight
//! times the hashing of 4096-byte blocks. So after mkosi has built the disk,
//! xtask formats slot A's hash partition again with our own verity code
//! (checked byte for byte against `veritysetup format`) in 4096-byte data
//! and hash blocks, salted with the SHA-256 of the data itself (repart's
//! salt and UUID are random, whatever the seed; this keeps the image
//! reproducible); gives the data and
//! hash partitions the UUIDs of the new root hash (first and last 128 bits,
//! as repart names them). The UKI that names the new root hash is then
//! assembled by [`crate::uki`].

use anyhow::{ensure, Context, Result};
use carapace_disk::gpt::{self, types, Guid};
use carapace_disk::root_hash::RootHash;
use carapace_disk::verity::Superblock;
use carapace_disk::verity_tree::{TreeBuilder, TreeParams};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

const SECTOR: u64 = 512;
/// The data and hash block size the root is verified in.
pub const BLOCK: u32 = 4096;

/// The root hash slot A's partition UUIDs are the halves of.
pub fn named_by(data: &gpt::Partition, verity: &gpt::Partition) -> RootHash {
    let mut hash = [0u8; 32];
    hash[..16].copy_from_slice(&data.unique_guid.0);
    hash[16..].copy_from_slice(&verity.unique_guid.0);
    RootHash::from(hash)
}

/// Feeds `len` bytes of `disk` from `offset` to `each`, 1 MiB at a time.
fn for_each_chunk(
    disk: &mut File,
    offset: u64,
    len: u64,
    mut each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    disk.seek(SeekFrom::Start(offset))?;
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(buf.len()));
        disk.read_exact(&mut buf[..n])?;
        each(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// The hash device's UUID for a tree salted with `salt`: a version 4,
/// variant 1 UUID of the salt's hash (canonical byte order).
fn uuid_from(salt: &[u8; 32]) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(b"carapace verity uuid")
        .chain_update(salt)
        .finalize();
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&digest[..16]);
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    uuid
}

/// Rehashes slot A of `disk` in 4 KiB blocks and gives slot A the UUIDs of
/// the new root hash; returns the old and the new root hash (the same for a
/// disk already in 4 KiB blocks, which is left as it is).
pub fn rehash(disk_path: &Path) -> Result<(RootHash, RootHash)> {
    let mut disk = File::options()
        .read(true)
        .write(true)
        .open(disk_path)
        .with_context(|| format!("cannot open {}", disk_path.display()))?;
    let (_, parts) = gpt::read(&mut disk, SECTOR as usize)
        .map_err(|e| anyhow::anyhow!("{}: {e}", disk_path.display()))?;
    let data = gpt::partition_by_type(&parts, &types::ROOT_X86_64)
        .context("the disk has no root partition")?
        .clone();
    let verity = gpt::partition_by_type(&parts, &types::ROOT_VERITY_X86_64)
        .context("the disk has no root verity partition")?
        .clone();
    let old = named_by(&data, &verity);

    let mut head = vec![0u8; 4096];
    disk.seek(SeekFrom::Start(verity.first_lba * SECTOR))?;
    disk.read_exact(&mut head)?;
    let sb = Superblock::parse(&head).map_err(|e| anyhow::anyhow!("slot A's verity: {e}"))?;
    if sb.data_block_size == BLOCK && sb.hash_block_size == BLOCK {
        return Ok((old.clone(), old));
    }
    // The tree covers what repart's did (the filesystem, not the whole
    // partition), rounded up to whole 4 KiB blocks: an update writes and
    // verifies only that much.
    let block = u64::from(BLOCK);
    let data_bytes = sb.data_bytes().div_ceil(block) * block;
    ensure!(
        data_bytes <= data.size_bytes(SECTOR),
        "slot A's verity covers {data_bytes} bytes, more than its partition ({} bytes)",
        data.size_bytes(SECTOR)
    );
    // repart's salt and superblock UUID are random whatever the seed: ours
    // come from the data itself, so the same root gives the same tree.
    let mut digest = Sha256::new();
    for_each_chunk(&mut disk, data.first_lba * SECTOR, data_bytes, |chunk| {
        digest.update(chunk);
        Ok(())
    })?;
    let salt: [u8; 32] = digest.finalize().into();
    let params = TreeParams::new(
        BLOCK,
        BLOCK,
        data_bytes / block,
        salt.to_vec(),
        uuid_from(&salt),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut builder = TreeBuilder::new(params).map_err(|e| anyhow::anyhow!("{e}"))?;
    for_each_chunk(&mut disk, data.first_lba * SECTOR, data_bytes, |chunk| {
        builder.update(chunk).map_err(|e| anyhow::anyhow!("{e}"))
    })?;
    let tree = builder.finish().map_err(|e| anyhow::anyhow!("{e}"))?;
    let hash_room = verity.size_bytes(SECTOR);
    ensure!(
        tree.image.len() as u64 <= hash_room,
        "the 4 KiB tree ({} bytes) does not fit slot A's verity partition ({hash_room} bytes)",
        tree.image.len()
    );
    // The new tree, then zeros over what is left of the 512-byte one.
    let mut image = tree.image.clone();
    image.resize(usize::try_from(hash_room)?, 0);
    disk.seek(SeekFrom::Start(verity.first_lba * SECTOR))?;
    disk.write_all(&image)?;

    let new = RootHash::from(tree.root_hash);
    for (part, uuid) in [
        (&data, new.data_partition_uuid()),
        (&verity, new.hash_partition_uuid()),
    ] {
        gpt::set_partition_identity(&mut disk, SECTOR, part.number, Guid(uuid), &part.name)
            .map_err(|e| anyhow::anyhow!("partition {}: {e}", part.number))?;
    }

    disk.sync_all()?;
    Ok((old, new))
}
