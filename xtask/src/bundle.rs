//! `cargo xtask bundle`: turns a built disk image and its UKI into a signed
//! update bundle under a source directory any web server can serve
//! (format: the `carapace-bundle` crate), and keeps the update signing key.
//!
//! From the disk image it takes slot A — the first partition of type
//! root-x86-64 and the first of type root-x86-64-verity — and:
//!
//! - reads `roothash=` from the UKI's `.cmdline` PE section
//!   (`carapace_disk::pe`) and refuses to go on unless slot A's partition
//!   UUIDs are its two halves (the disk and the UKI come from the same
//!   build);
//! - parses the verity superblock (`carapace_disk::verity`) and takes the
//!   hash device as long as the superblock says: the superblock block plus
//!   the tree whose size follows from data blocks, block sizes and digest
//!   size, exactly as the kernel lays it out (and as `veritysetup dump`
//!   reports "Hash device size"). The alternative, cutting at the last
//!   non-zero block, is a guess about the content: it would ship whatever
//!   stale bytes followed the tree;
//! - rebuilds the whole hash tree from the data with the node's own
//!   verifier (`carapace_disk::verity_tree`, which also checks that tree
//!   size against the superblock's) and compares it, block by block, with
//!   the hash partition, and its top with the root hash: a bundle that
//!   would fail on the node is never published;
//! - stores the data area without its trailing all-zero 4096-byte blocks
//!   (the node writes zeros for the rest).
//!
//! The version's directory is written under a hidden staging name and
//! renamed into place whole. Then the version is added to the source's
//! `index.json`, which is signed with the same key (`index.json.sig`) and
//! carries an expiry and an optional anti-rollback floor:
//!
//! - `CARAPACE_INDEX_EXPIRES`: seconds from now until the index expires
//!   (default 30 days); 0 or a negative number makes an index that is
//!   already expired, for tests of a stale source.
//! - `CARAPACE_MIN_VERSION`: the index's `minimum_version`, below which no
//!   node installs anything, not even a forced downgrade (unset or empty:
//!   no floor). It may not be above the newest version listed.
//!
//! The index and its signature are each replaced atomically, one after the
//! other: a node reading between the two renames finds a signature that does
//! not match, refuses the index, and succeeds on its next check. An index
//! of the old unsigned format 1 is read for its versions and rewritten.

use anyhow::{bail, ensure, Context, Result};
use carapace_bundle::{Index, Manifest, Part, RootPart, SigningKey, Version};
use carapace_disk::gpt::{self, types, Partition};
use carapace_disk::pe;
use carapace_disk::root_hash::RootHash;
use carapace_disk::verity::{Algorithm, Superblock, SUPERBLOCK_SIZE};
use carapace_disk::verity_tree::{self, TreeParams};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The public half of the update key: 64 lowercase hex digits.
pub type PublicKeyHex = String;

/// The private key (PKCS#8 v2, mode 0600) in the key directory.
pub const SIGNING_KEY_FILE: &str = "update-signing.pk8";
/// The public key (64 hex digits and a newline) in the key directory; the
/// image build copies it to /usr/lib/carapace/update-key.pub.
pub const PUBLIC_KEY_FILE: &str = "update-key.pub";
/// The oldest version the bundles made here may update from: every
/// Carapace version so far. Raise it when a release needs a stepping stone.
pub const MIN_FROM_VERSION: Version = Version::new(0, 1, 0);
/// How long a signed index is valid unless `CARAPACE_INDEX_EXPIRES` says
/// otherwise: 30 days, in seconds.
pub const INDEX_VALIDITY_SECONDS: i64 = 30 * 86_400;
/// The unit in which trailing zeros are cut from the root data.
const ZERO_BLOCK: u64 = 4096;
/// The read buffer for streaming the data area.
const CHUNK: usize = 1 << 20;

/// Makes the update signing key on first use (`key_dir/update-signing.pk8`,
/// mode 0600, and `key_dir/update-key.pub`) and returns the public key.
/// Keeps `update-key.pub` equal to the private key's public half.
pub fn ensure_key(key_dir: &Path) -> Result<PublicKeyHex> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(key_dir)
        .with_context(|| format!("cannot create {}", key_dir.display()))?;
    let private = key_dir.join(SIGNING_KEY_FILE);
    let public = key_dir.join(PUBLIC_KEY_FILE);
    if !private.exists() {
        if public.exists() {
            bail!(
                "{} exists but the signing key {} does not: the key is lost. Nodes that carry \
                 this public key accept only bundles signed by it. To start over with a new key \
                 pair, remove {} (and reinstall the nodes).",
                public.display(),
                private.display(),
                public.display()
            );
        }
        let pkcs8 = SigningKey::generate()?;
        write_atomically(&private, &pkcs8, 0o600)?;
        eprintln!(
            "xtask: made a new update signing key {} (keep it safe; it is not in git)",
            private.display()
        );
    }
    let key = load_signing_key(key_dir)?;
    let hex = key.public_key().to_hex();
    let text = format!("{hex}\n");
    match fs::read_to_string(&public) {
        Ok(existing) if existing == text => {}
        Ok(_) => {
            eprintln!(
                "xtask: {} did not match {}: rewriting it",
                public.display(),
                private.display()
            );
            write_atomically(&public, text.as_bytes(), 0o644)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomically(&public, text.as_bytes(), 0o644)?;
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", public.display())),
    }
    Ok(hex)
}

/// The signing key of `key_dir`.
fn load_signing_key(key_dir: &Path) -> Result<SigningKey> {
    let private = key_dir.join(SIGNING_KEY_FILE);
    let pkcs8 = fs::read(&private).with_context(|| format!("cannot read {}", private.display()))?;
    SigningKey::from_pkcs8(&pkcs8).with_context(|| format!("{}", private.display()))
}

/// Writes the bundle of `version` from `disk_image` (slot A) and `uki` into
/// `source_dir/<version>/`, signs its manifest with the key of `key_dir`
/// (made on first use), adds the version to `source_dir/index.json` and
/// signs that (`index.json.sig`, expiry and floor from the environment, see
/// the module's doc), and returns the version's directory.
pub fn bundle(
    disk_image: &Path,
    uki: &Path,
    version: &str,
    key_dir: &Path,
    source_dir: &Path,
) -> Result<PathBuf> {
    let version = Version::parse(version)
        .with_context(|| format!("version {version:?} is not a semantic version"))?;
    ensure!(
        version.build.is_empty(),
        "version {version} carries build metadata ('+…'), which systemd-boot would read as a boot counter"
    );
    ensure!(
        version >= MIN_FROM_VERSION,
        "version {version} is older than {MIN_FROM_VERSION}, the oldest version bundles update from"
    );
    // The index's terms first: a typo in the environment fails fast.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let terms = IndexTerms::from_env(
        now,
        env_text("CARAPACE_INDEX_EXPIRES")?.as_deref(),
        env_text("CARAPACE_MIN_VERSION")?.as_deref(),
    )?;
    ensure_key(key_dir)?;
    let key = load_signing_key(key_dir)?;

    // The disk's slot A and the UKI must be the same build.
    let mut disk =
        File::open(disk_image).with_context(|| format!("cannot open {}", disk_image.display()))?;
    let slot = SlotA::read(&mut disk).with_context(|| format!("{}", disk_image.display()))?;
    let uki_bytes = fs::read(uki).with_context(|| format!("cannot read {}", uki.display()))?;
    let roothash = uki_roothash(&uki_bytes).with_context(|| format!("{}", uki.display()))?;
    check_slot_names_roothash(&roothash, &slot.data, &slot.verity)
        .with_context(|| format!("{} and {}", uki.display(), disk_image.display()))?;
    let root: [u8; 32] = roothash
        .as_bytes()
        .try_into()
        .context("the root hash is not a SHA-256 digest")?;

    // The verity superblock says how much of each partition is used.
    let data_offset = slot.data.first_lba * slot.sector_size;
    let hash_offset = slot.verity.first_lba * slot.sector_size;
    let mut sb_bytes = [0u8; SUPERBLOCK_SIZE];
    disk.read_exact_at(&mut sb_bytes, hash_offset)
        .context("cannot read the verity superblock")?;
    let sb = Superblock::parse(&sb_bytes)
        .with_context(|| format!("verity partition {}", slot.verity.number))?;
    ensure!(
        sb.algorithm == Algorithm::Sha256,
        "the verity tree uses {}, but bundles carry SHA-256 root hashes",
        sb.algorithm
    );
    sb.check_fits(
        slot.data.size_bytes(slot.sector_size),
        slot.verity.size_bytes(slot.sector_size),
    )?;
    let hash_bytes = sb.hash_device_bytes();
    // The tree as the node rebuilds it: the same format and the same size
    // as the superblock's arithmetic (the kernel's) gives.
    let params = TreeParams::from_superblock(&sb)
        .with_context(|| format!("verity partition {}", slot.verity.number))?;
    ensure!(
        params.hash_device_bytes() == hash_bytes,
        "the verity tree takes {} bytes as the node builds it, {hash_bytes} by the superblock's arithmetic",
        params.hash_device_bytes()
    );
    let mut hash_image = vec![0u8; usize::try_from(hash_bytes)?];
    disk.read_exact_at(&mut hash_image, hash_offset)
        .context("cannot read the verity hash tree")?;

    // One pass over the data: the tree rebuilt and compared, and where the
    // trailing zeros start.
    let data_bytes = sb.data_bytes();
    disk.seek(SeekFrom::Start(data_offset))?;
    let last_nonzero_end = check_tree((&disk).take(data_bytes), &hash_image, &root)
        .context("the disk's verity data does not match the UKI's root hash")?;
    let stored_bytes = trimmed_len(last_nonzero_end, data_bytes);

    // Write the parts into a staging directory.
    fs::create_dir_all(source_dir)
        .with_context(|| format!("cannot create {}", source_dir.display()))?;
    let staging = source_dir.join(format!(".{version}.partial"));
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot clear {}", staging.display()))?;
    }
    fs::create_dir(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    disk.seek(SeekFrom::Start(data_offset))?;
    let root_part = write_part(
        &staging,
        carapace_bundle::ROOT_FILE,
        &mut (&disk).take(stored_bytes),
        stored_bytes,
    )?;
    let verity_part = write_part(
        &staging,
        carapace_bundle::VERITY_FILE,
        &mut hash_image.as_slice(),
        hash_bytes,
    )?;
    let uki_len = u64::try_from(uki_bytes.len())?;
    let uki_part = write_part(
        &staging,
        &carapace_bundle::uki_file_name(&version),
        &mut uki_bytes.as_slice(),
        uki_len,
    )?;
    let manifest = Manifest {
        format: carapace_bundle::FORMAT,
        version: version.clone(),
        architecture: carapace_bundle::NODE_ARCHITECTURE.into(),
        min_from_version: MIN_FROM_VERSION,
        roothash: roothash.to_hex(),
        root: RootPart {
            file: root_part.file,
            stored_bytes: root_part.bytes,
            sha256: root_part.sha256,
            data_bytes,
        },
        verity: verity_part,
        uki: uki_part,
    };
    let manifest_bytes = manifest.to_bytes()?;
    let signature = key.sign(&manifest_bytes).to_text();
    // What a node will do, before anything is published.
    let checked = carapace_bundle::verify(&key.public_key(), &manifest_bytes, &signature)?;
    ensure!(
        checked == manifest,
        "the signed manifest does not read back"
    );
    write_file(
        &staging.join(carapace_bundle::MANIFEST_FILE),
        &manifest_bytes,
    )?;
    write_file(
        &staging.join(carapace_bundle::SIGNATURE_FILE),
        signature.as_bytes(),
    )?;

    // Publish: the version's directory whole, then the index.
    let dir = source_dir.join(version.to_string());
    if dir.exists() {
        eprintln!("xtask: replacing the existing bundle {}", dir.display());
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    fs::rename(&staging, &dir)
        .with_context(|| format!("cannot rename {} to {}", staging.display(), dir.display()))?;
    let index = add_to_index(source_dir, &version, &key, &terms)?;
    eprintln!(
        "xtask: bundle {version}: root {} of {} bytes stored, verity {} bytes, UKI {} bytes, roothash {}",
        manifest.root.stored_bytes,
        manifest.root.data_bytes,
        manifest.verity.bytes,
        manifest.uki.bytes,
        manifest.roothash
    );
    let listed: Vec<String> = index.versions().iter().map(Version::to_string).collect();
    eprintln!(
        "xtask: {} lists {}; expires {} ({} s from now); minimum version {}",
        source_dir.join(carapace_bundle::INDEX_FILE).display(),
        listed.join(", "),
        carapace_bundle::index::rfc3339(index.expires),
        i128::from(index.expires) - i128::from(now),
        index
            .minimum_version
            .as_ref()
            .map_or_else(|| "none".to_string(), Version::to_string)
    );
    Ok(dir)
}

/// What the index is signed with: when it expires, and its floor.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IndexTerms {
    /// Unix seconds, at least 1.
    expires: u64,
    minimum_version: Option<Version>,
}

impl IndexTerms {
    /// From the values of `CARAPACE_INDEX_EXPIRES` (seconds from `now`,
    /// which may be 0 or negative; default [`INDEX_VALIDITY_SECONDS`]) and
    /// `CARAPACE_MIN_VERSION` (a semantic version; unset or empty: none).
    fn from_env(now: u64, expires_in: Option<&str>, minimum: Option<&str>) -> Result<IndexTerms> {
        let seconds = match expires_in.map(str::trim).filter(|t| !t.is_empty()) {
            None => INDEX_VALIDITY_SECONDS,
            Some(text) => text.parse::<i64>().with_context(|| {
                format!("CARAPACE_INDEX_EXPIRES {text:?} is not a number of seconds from now")
            })?,
        };
        let expires = (i128::from(now) + i128::from(seconds)).clamp(1, i128::from(u64::MAX));
        let minimum_version = match minimum.map(str::trim).filter(|t| !t.is_empty()) {
            None => None,
            Some(text) => Some(Version::parse(text).with_context(|| {
                format!("CARAPACE_MIN_VERSION {text:?} is not a semantic version")
            })?),
        };
        Ok(IndexTerms {
            expires: u64::try_from(expires)?,
            minimum_version,
        })
    }
}

/// The value of the environment variable `name`, if set.
fn env_text(name: &str) -> Result<Option<String>> {
    match std::env::var(name) {
        Ok(text) => Ok(Some(text)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("environment variable {name}")),
    }
}

/// Slot A of a disk image, and the logical sector size its GPT was made for.
struct SlotA {
    sector_size: u64,
    data: Partition,
    verity: Partition,
}

impl SlotA {
    /// Reads the GPT (trying 512-byte, then 4096-byte sectors) and picks
    /// the first root-x86-64 and the first root-x86-64-verity partition.
    fn read(disk: &mut File) -> Result<SlotA> {
        let mut first_error = None;
        for sector_size in [512u64, 4096] {
            let parts = match gpt::read(disk, sector_size as usize) {
                Ok((_, parts)) => parts,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            let data = gpt::partition_by_type(&parts, &types::ROOT_X86_64)
                .context("no root-x86-64 partition (slot A) on the disk")?;
            let verity = gpt::partition_by_type(&parts, &types::ROOT_VERITY_X86_64)
                .context("no root-x86-64-verity partition (slot A's verity) on the disk")?;
            return Ok(SlotA {
                sector_size,
                data: data.clone(),
                verity: verity.clone(),
            });
        }
        match first_error {
            Some(e) => Err(e).context("no GPT on the disk image"),
            None => bail!("no GPT on the disk image"),
        }
    }
}

/// The `roothash=` of a UKI: the command line is the PE section `.cmdline`.
fn uki_roothash(uki: &[u8]) -> Result<RootHash> {
    let cmdline = pe::uki_cmdline(uki)?;
    carapace_init::cmdline::roothash(cmdline)
        .with_context(|| format!("the UKI's command line {:?}", cmdline.trim_end()))
}

/// Refuses a disk whose slot A partition UUIDs are not the halves of the
/// root hash: first 128 bits for the data partition, last 128 bits for the
/// verity partition, in canonical (printed) order, which is how stage 1
/// finds them.
fn check_slot_names_roothash(
    roothash: &RootHash,
    data: &Partition,
    verity: &Partition,
) -> Result<()> {
    ensure!(
        roothash.as_bytes().len() == 32,
        "roothash={} is not a SHA-256 digest (64 hex digits)",
        roothash.to_hex()
    );
    let want_data = gpt::Guid(roothash.data_partition_uuid());
    let want_verity = gpt::Guid(roothash.hash_partition_uuid());
    ensure!(
        data.unique_guid == want_data && verity.unique_guid == want_verity,
        "the UKI's roothash={} names data partition {want_data} and verity partition \
         {want_verity}, but slot A is partition {} ({}) with verity partition {} ({}): \
         the UKI and the disk are not from the same build",
        roothash.to_hex(),
        data.number,
        data.unique_guid,
        verity.number,
        verity.unique_guid,
    );
    Ok(())
}

/// Checks the data area (exactly the `data_bytes` the superblock covers,
/// read once) and the hash image against `root` with the node's own
/// verifier, so a bundle the node would refuse is never made; returns where
/// the data's last non-zero byte ends (0 if all of it is zero).
fn check_tree(data: impl Read, hash_image: &[u8], root: &[u8; 32]) -> Result<u64> {
    let mut data = NonZeroEnd {
        inner: data,
        read: 0,
        last_nonzero_end: 0,
    };
    verity_tree::verify(&mut data, hash_image, root)?;
    Ok(data.last_nonzero_end)
}

/// A reader that notes where the last non-zero byte read through it ends.
struct NonZeroEnd<R> {
    inner: R,
    read: u64,
    last_nonzero_end: u64,
}

impl<R: Read> Read for NonZeroEnd<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = &buf[..n.min(buf.len())];
        if let Some(i) = got.iter().rposition(|&b| b != 0) {
            self.last_nonzero_end = self.read + i as u64 + 1;
        }
        self.read += got.len() as u64;
        Ok(n)
    }
}

/// The stored size of a data area of `data_bytes` whose last non-zero byte
/// ends at `last_nonzero_end`: whole 4096-byte blocks from the start, so
/// only all-zero blocks are cut (a last partial block is kept whole).
fn trimmed_len(last_nonzero_end: u64, data_bytes: u64) -> u64 {
    last_nonzero_end
        .div_ceil(ZERO_BLOCK)
        .saturating_mul(ZERO_BLOCK)
        .min(data_bytes)
}

/// Copies exactly `len` bytes from `from` into `dir/name`, hashing them.
fn write_part(dir: &Path, name: &str, from: &mut impl Read, len: u64) -> Result<Part> {
    let path = dir.join(name);
    let mut out =
        File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from((len - done).min(CHUNK as u64))?;
        from.read_exact(&mut buf[..n])
            .with_context(|| format!("{name}: cannot read byte {done} of {len}"))?;
        sha.update(&buf[..n]);
        out.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", path.display()))?;
        done += n as u64;
    }
    out.sync_all()?;
    Ok(Part {
        file: name.to_string(),
        bytes: len,
        sha256: carapace_bundle::to_hex(sha.finalize().as_slice()),
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Writes `path` whole or not at all (a temporary file in the same
/// directory, created with `mode`, then renamed).
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Adds `version` to `source_dir/index.json` (made if missing), gives it
/// `terms`, signs it with `key` into `index.json.sig`, and returns it.
fn add_to_index(
    source_dir: &Path,
    version: &Version,
    key: &SigningKey,
    terms: &IndexTerms,
) -> Result<Index> {
    let path = source_dir.join(carapace_bundle::INDEX_FILE);
    let mut index = match fs::read(&path) {
        Ok(bytes) => read_index(&bytes).with_context(|| format!("{}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    index.add(version.clone());
    index.expires = terms.expires;
    index.minimum_version = terms.minimum_version.clone();
    if let (Some(minimum), Some(latest)) = (&index.minimum_version, index.latest()) {
        ensure!(
            minimum <= latest,
            "CARAPACE_MIN_VERSION {minimum} is above {latest}, the newest version of {}: \
             nodes could install nothing from it",
            path.display()
        );
    }
    let bytes = index.to_bytes()?;
    let signature = key.sign(&bytes).to_text();
    // What a node will do, as it would just before the index expires (a
    // test may want an index that has expired already).
    let checked = Index::verify(&key.public_key(), &bytes, &signature, index.expires - 1)?;
    ensure!(checked == index, "the signed index does not read back");
    write_atomically(&path, &bytes, 0o644)?;
    write_atomically(
        &source_dir.join(carapace_bundle::INDEX_SIGNATURE_FILE),
        signature.as_bytes(),
        0o644,
    )?;
    Ok(index)
}

/// Signs `source_dir`'s index again, keeping its versions and floor, with
/// an expiry `expires_in` seconds from now (negative: expired already):
/// what the update tests serve as a stale or replayed index.
pub fn resign_index(source_dir: &Path, key_dir: &Path, expires_in: i64) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let key = load_signing_key(key_dir)?;
    let path = source_dir.join(carapace_bundle::INDEX_FILE);
    let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut index = read_index(&bytes).with_context(|| format!("{}", path.display()))?;
    index.expires = u64::try_from((i128::from(now) + i128::from(expires_in)).max(1))?;
    let bytes = index.to_bytes()?;
    let signature = key.sign(&bytes).to_text();
    write_atomically(&path, &bytes, 0o644)?;
    write_atomically(
        &source_dir.join(carapace_bundle::INDEX_SIGNATURE_FILE),
        signature.as_bytes(),
        0o644,
    )
}

/// The index this tool wrote before (it is not checked: the release
/// builder trusts its own output), also of the old unsigned format 1,
/// whose versions are kept.
fn read_index(bytes: &[u8]) -> Result<Index> {
    match Index::parse_unverified(bytes) {
        Ok(index) => Ok(index),
        Err(carapace_bundle::BundleError::Format { found, .. }) if found == "1" => {
            let old: serde_json::Value = serde_json::from_slice(bytes)?;
            let mut index = Index::new();
            for text in old["versions"].as_array().into_iter().flatten() {
                let text = text.as_str().context("a version that is not a string")?;
                index.add(Version::parse(text).with_context(|| format!("version {text:?}"))?);
            }
            Ok(index)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISK_512: &[u8] =
        include_bytes!("../../crates/carapace-disk/testdata/repart-512.head.bin");
    const SFDISK_512: &str =
        include_str!("../../crates/carapace-disk/testdata/repart-512.sfdisk.json");
    const ROOT_HASH_512: &str =
        include_str!("../../crates/carapace-disk/testdata/repart-512.roothash");
    const DISK_4096: &[u8] =
        include_bytes!("../../crates/carapace-disk/testdata/repart-4096.head.bin");
    const SFDISK_4096: &str =
        include_str!("../../crates/carapace-disk/testdata/repart-4096.sfdisk.json");
    const ROOT_HASH_4096: &str =
        include_str!("../../crates/carapace-disk/testdata/repart-4096.roothash");
    const SB_4096: &[u8] =
        include_bytes!("../../crates/carapace-disk/testdata/repart-4096.verity-superblock.bin");
    const DUMP_4096: &str =
        include_str!("../../crates/carapace-disk/testdata/repart-4096.veritysetup-dump.txt");
    const SB_512: &[u8] =
        include_bytes!("../../crates/carapace-disk/testdata/repart-512.verity-superblock.bin");
    const DUMP_512: &str =
        include_str!("../../crates/carapace-disk/testdata/repart-512.veritysetup-dump.txt");

    fn slot_of(head: &[u8], sector: usize) -> (Partition, Partition) {
        let parts = gpt::parse(head, sector).expect("gpt");
        let data = gpt::partition_by_type(&parts, &types::ROOT_X86_64).expect("root");
        let verity = gpt::partition_by_type(&parts, &types::ROOT_VERITY_X86_64).expect("verity");
        (data.clone(), verity.clone())
    }

    fn sfdisk_uuid(json: &str, type_guid: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(json).expect("json");
        v["partitiontable"]["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .find(|p| p["type"] == type_guid)
            .and_then(|p| p["uuid"].as_str())
            .expect("uuid")
            .to_string()
    }

    #[test]
    fn slot_uuids_agree_with_the_roothash_as_sfdisk_shows_them() {
        for (head, sector, sfdisk, hash) in [
            (DISK_512, 512, SFDISK_512, ROOT_HASH_512),
            (DISK_4096, 4096, SFDISK_4096, ROOT_HASH_4096),
        ] {
            let roothash = RootHash::from_hex(hash.trim()).expect("hash");
            let (data, verity) = slot_of(head, sector);
            check_slot_names_roothash(&roothash, &data, &verity).expect("agree");
            // sfdisk prints the halves of the root hash as they are.
            let hex = hash.trim().to_uppercase();
            let printed = |s: &str| s.replace('-', "");
            assert_eq!(
                printed(&sfdisk_uuid(sfdisk, "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")),
                hex[..32]
            );
            assert_eq!(
                printed(&sfdisk_uuid(sfdisk, "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5")),
                hex[32..]
            );
            assert_eq!(
                data.unique_guid.to_string().to_uppercase(),
                sfdisk_uuid(sfdisk, "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")
            );
        }
    }

    #[test]
    fn another_roothash_is_refused() {
        let (data, verity) = slot_of(DISK_4096, 4096);
        // The 512-byte disk's hash does not name the 4096-byte disk's slot.
        let other = RootHash::from_hex(ROOT_HASH_512.trim()).expect("hash");
        let err = check_slot_names_roothash(&other, &data, &verity).expect_err("disagree");
        assert!(err.to_string().contains("not from the same build"), "{err}");
        // Swapped halves: right UUIDs, wrong partitions.
        let hex = ROOT_HASH_4096.trim();
        let swapped = format!("{}{}", &hex[32..], &hex[..32]);
        let swapped = RootHash::from_hex(&swapped).expect("hash");
        assert!(check_slot_names_roothash(&swapped, &data, &verity).is_err());
        // A SHA-512 sized hash is refused outright.
        let long = RootHash::from_hex(&"ab".repeat(64)).expect("hash");
        assert!(check_slot_names_roothash(&long, &data, &verity)
            .expect_err("not sha256")
            .to_string()
            .contains("not a SHA-256 digest"));
    }

    fn dump_field(dump: &str, field: &str) -> u64 {
        dump.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(|v| v.trim().trim_end_matches(" [bytes]").to_string())
            .expect("field")
            .parse()
            .expect("number")
    }

    #[test]
    fn the_hash_device_size_is_what_veritysetup_reports() {
        for (sb, dump) in [(SB_4096, DUMP_4096), (SB_512, DUMP_512)] {
            let sb = Superblock::parse(sb).expect("superblock");
            assert_eq!(sb.hash_device_bytes(), dump_field(dump, "Hash device size"));
            assert_eq!(sb.hash_tree_blocks(), dump_field(dump, "Hash blocks"));
        }
    }

    #[test]
    fn trailing_zero_blocks_are_cut_in_4096_byte_units() {
        let data = 128u64 << 20;
        assert_eq!(trimmed_len(0, data), 0);
        assert_eq!(trimmed_len(1, data), 4096);
        assert_eq!(trimmed_len(4096, data), 4096);
        assert_eq!(trimmed_len(4097, data), 8192);
        assert_eq!(trimmed_len(data, data), data);
        // A data area that is not a multiple of 4096 keeps its last partial block.
        assert_eq!(trimmed_len(8192 + 10, 8192 + 512), 8192 + 512);
    }

    /// A superblock for `blocks` data blocks of 512 bytes, 512-byte hash
    /// blocks (16 digests each), a salt.
    fn small_sb(blocks: u64, hash_type: u32) -> Superblock {
        Superblock {
            hash_type,
            uuid: [7; 16],
            algorithm: Algorithm::Sha256,
            data_block_size: 512,
            hash_block_size: 512,
            data_blocks: blocks,
            salt: b"pepper".to_vec(),
        }
    }

    /// A verity digest of one block: the salt first for hash type 1, last
    /// for type 0 (the Chromium OS format), as the kernel's verity_hash does.
    fn salted(sb: &Superblock, block: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        if sb.hash_type == 1 {
            h.update(&sb.salt);
            h.update(block);
        } else {
            h.update(block);
            h.update(&sb.salt);
        }
        h.finalize().into()
    }

    /// Builds data and its hash image the way veritysetup would, written
    /// independently of the verifier: level by level into a map keyed by
    /// level, then laid out top first after the superblock.
    fn build(sb: &Superblock, data: &[u8]) -> (Vec<u8>, [u8; 32]) {
        let mut levels: Vec<Vec<u8>> = Vec::new();
        let mut digests: Vec<[u8; 32]> = data.chunks(512).map(|b| salted(sb, b)).collect();
        while digests.len() > 1 {
            let mut level = Vec::new();
            for group in digests.chunks(16) {
                let mut block = group.concat();
                block.resize(512, 0);
                level.push(block);
            }
            digests = level.iter().map(|b| salted(sb, b)).collect();
            levels.push(level.concat());
        }
        let mut image = TreeParams::new(512, 512, sb.data_blocks, sb.salt.clone(), sb.uuid)
            .expect("params")
            .superblock_bytes()
            .to_vec();
        image[12..16].copy_from_slice(&sb.hash_type.to_le_bytes());
        assert_eq!(Superblock::parse(&image).as_ref(), Ok(sb));
        for level in levels.iter().rev() {
            image.extend_from_slice(level);
        }
        (image, digests[0])
    }

    fn data_of(blocks: usize) -> Vec<u8> {
        let mut data = vec![0u8; blocks * 512];
        for (i, b) in data.iter_mut().enumerate().take(blocks * 512 / 3) {
            *b = (i % 253) as u8 + 1;
        }
        data
    }

    #[test]
    fn the_tree_check_accepts_a_right_tree_and_refuses_any_change() {
        // 1 block (no tree), 16 (one level), 17 and 300 (two and three levels).
        for blocks in [1, 16, 17, 300] {
            let sb = small_sb(blocks as u64, 1);
            let data = data_of(blocks);
            let (image, root) = build(&sb, &data);
            assert_eq!(image.len() as u64, sb.hash_device_bytes(), "{blocks}");
            let last_nonzero_end = check_tree(data.as_slice(), &image, &root).expect("right tree");
            assert_eq!(last_nonzero_end, (blocks * 512 / 3) as u64);
            let mut wrong_root = root;
            wrong_root[0] ^= 1;
            assert!(check_tree(data.as_slice(), &image, &wrong_root).is_err());
            // The first and last byte of the tree (there is none for one block).
            let tree = if image.len() > 512 {
                vec![512, image.len() - 1]
            } else {
                vec![]
            };
            for at in tree {
                let mut bad = image.clone();
                bad[at] ^= 1;
                assert!(
                    check_tree(data.as_slice(), &bad, &root).is_err(),
                    "{blocks} blocks, byte {at}"
                );
            }
            let mut bad_data = data.clone();
            bad_data[0] ^= 1;
            assert!(check_tree(bad_data.as_slice(), &image, &root).is_err());
        }
    }

    #[test]
    fn a_tree_the_node_cannot_check_is_refused() {
        // Right by the Chromium OS format's rule, but the node's verifier
        // knows only hash type 1: such a bundle would fail on every node.
        let sb = small_sb(300, 0);
        let data = data_of(300);
        let (image, root) = build(&sb, &data);
        let err = check_tree(data.as_slice(), &image, &root).expect_err("hash type 0");
        assert!(format!("{err:#}").contains("hash type 0"), "{err:#}");
    }

    #[test]
    fn the_end_of_the_data_is_found_across_reads() {
        // 300 blocks are read in several chunks; the last non-zero byte is
        // far from the first one.
        let sb = small_sb(300, 1);
        let mut data = data_of(300);
        data[100_000] = 0xff;
        let (image, root) = build(&sb, &data);
        assert_eq!(
            check_tree(data.as_slice(), &image, &root).expect("right"),
            100_001
        );
        let zeros = vec![0u8; 300 * 512];
        let (image, root) = build(&sb, &zeros);
        assert_eq!(
            check_tree(zeros.as_slice(), &image, &root).expect("right"),
            0
        );
    }

    #[test]
    fn a_short_data_area_is_an_error() {
        let sb = small_sb(4, 1);
        let (image, root) = build(&sb, &[1u8; 4 * 512]);
        let data = vec![1u8; 3 * 512];
        assert!(check_tree(data.as_slice(), &image, &root).is_err());
    }

    #[test]
    fn roothash_comes_from_the_cmdline_section() {
        let hash = ROOT_HASH_4096.trim();
        let cmdline = format!("console=ttyS0 roothash={hash} quiet\n");
        // Another section mentions a roothash too (the initrd holds our own
        // binary's strings): only .cmdline counts.
        let decoy = format!("roothash={}", "0".repeat(64));
        let pe = pe::minimal_image(&[
            (".linux", b"kernel"),
            (".initrd", decoy.as_bytes()),
            (".cmdline", cmdline.as_bytes()),
        ]);
        assert_eq!(uki_roothash(&pe).expect("found").to_hex(), hash);
    }

    #[test]
    fn a_uki_without_roothash_is_refused() {
        let pe = pe::minimal_image(&[(".cmdline", b"console=ttyS0")]);
        assert!(uki_roothash(&pe).is_err());
        let pe = pe::minimal_image(&[(".linux", b"kernel")]);
        let err = uki_roothash(&pe).expect_err("no cmdline");
        assert!(
            format!("{err:#}").contains("no .cmdline section"),
            "{err:#}"
        );
        assert!(uki_roothash(b"not a PE").is_err());
        assert!(uki_roothash(b"MZ").is_err());
        let mut truncated = pe::minimal_image(&[(".cmdline", b"roothash=00")]);
        truncated.truncate(0x50);
        assert!(uki_roothash(&truncated).is_err());
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-bundle-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_key_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("key");
        let first = ensure_key(&dir).expect("made");
        assert_eq!(first.len(), 64);
        let mode = fs::metadata(dir.join(SIGNING_KEY_FILE))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            fs::read_to_string(dir.join(PUBLIC_KEY_FILE)).expect("pub"),
            format!("{first}\n")
        );
        // Same key on the next run; a damaged public file is rewritten.
        fs::write(dir.join(PUBLIC_KEY_FILE), "junk\n").expect("write");
        assert_eq!(ensure_key(&dir).expect("kept"), first);
        assert_eq!(
            fs::read_to_string(dir.join(PUBLIC_KEY_FILE)).expect("pub"),
            format!("{first}\n")
        );
        // A lost private key is not silently replaced.
        fs::remove_file(dir.join(SIGNING_KEY_FILE)).expect("rm");
        let err = ensure_key(&dir).expect_err("lost");
        assert!(err.to_string().contains("the key is lost"), "{err}");
        fs::remove_dir_all(&dir).ok();
    }

    /// 2026-01-01T00:00:00Z.
    const NOW: u64 = 1_767_225_600;

    fn signing_key() -> SigningKey {
        SigningKey::from_pkcs8(&SigningKey::generate().expect("key")).expect("loads")
    }

    fn v(text: &str) -> Version {
        Version::parse(text).expect("version")
    }

    /// The index of `dir` as a node reads it at `now`.
    fn node_reads(
        dir: &Path,
        key: &SigningKey,
        now: u64,
    ) -> Result<Index, Box<carapace_bundle::BundleError>> {
        let bytes = fs::read(dir.join("index.json")).expect("index");
        let sig = fs::read_to_string(dir.join("index.json.sig")).expect("signature");
        Index::verify(&key.public_key(), &bytes, &sig, now).map_err(Box::new)
    }

    #[test]
    fn the_index_gains_versions_in_order_and_is_signed() {
        let dir = temp_dir("index");
        fs::create_dir_all(&dir).expect("dir");
        let key = signing_key();
        let terms = IndexTerms::from_env(NOW, None, None).expect("terms");
        for version in ["0.10.0", "0.9.0", "0.10.0"] {
            add_to_index(&dir, &v(version), &key, &terms).expect("added");
        }
        assert_eq!(
            fs::read_to_string(dir.join("index.json")).expect("index"),
            "{\"format\":2,\"expires\":1769817600,\"versions\":[\"0.9.0\",\"0.10.0\"]}\n"
        );
        let read = node_reads(&dir, &key, NOW).expect("a node takes it");
        assert_eq!(read.versions(), &[v("0.9.0"), v("0.10.0")]);
        assert_eq!(read.minimum_version, None);
        // Thirty days later it has expired.
        let err = node_reads(&dir, &key, NOW + INDEX_VALIDITY_SECONDS as u64).expect_err("old");
        assert!(
            err.to_string()
                .starts_with("index.json expired at 2026-01-31T00:00:00Z, 0 s ago"),
            "{err}"
        );
        // Another key's node refuses it.
        let other = signing_key();
        assert!(matches!(
            node_reads(&dir, &other, NOW).map_err(|e| *e),
            Err(carapace_bundle::BundleError::IndexNotSigned(_))
        ));
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_environment_sets_expiry_and_floor() {
        let terms = |e: Option<&str>, m: Option<&str>| IndexTerms::from_env(NOW, e, m);
        let default = terms(None, None).expect("default");
        assert_eq!(default.expires, NOW + 30 * 86_400);
        assert_eq!(default.minimum_version, None);
        assert_eq!(terms(Some(""), Some("")).expect("empty"), default);
        assert_eq!(terms(Some("3600"), None).expect("hour").expires, NOW + 3600);
        assert_eq!(terms(Some("0"), None).expect("now").expires, NOW);
        assert_eq!(terms(Some("-60"), None).expect("past").expires, NOW - 60);
        assert_eq!(terms(Some("-99999999999"), None).expect("epoch").expires, 1);
        assert_eq!(
            terms(None, Some("0.2.0")).expect("floor").minimum_version,
            Some(v("0.2.0"))
        );
        let err = terms(Some("30d"), None).expect_err("not seconds");
        assert!(
            err.to_string().contains("CARAPACE_INDEX_EXPIRES \"30d\""),
            "{err}"
        );
        let err = terms(None, Some("0.2")).expect_err("not semver");
        assert!(
            err.to_string().contains("CARAPACE_MIN_VERSION \"0.2\""),
            "{err}"
        );
    }

    #[test]
    fn an_expired_index_can_be_made_for_tests() {
        let dir = temp_dir("index-expired");
        fs::create_dir_all(&dir).expect("dir");
        let key = signing_key();
        let terms = IndexTerms::from_env(NOW, Some("-60"), Some("0.1.0")).expect("terms");
        add_to_index(&dir, &v("0.2.0"), &key, &terms).expect("written");
        let err = node_reads(&dir, &key, NOW).expect_err("expired");
        assert_eq!(
            *err,
            carapace_bundle::BundleError::IndexExpired {
                expires: NOW - 60,
                ago: 60
            }
        );
        let read = node_reads(&dir, &key, NOW - 61).expect("fresh a minute earlier");
        assert_eq!(read.minimum_version, Some(v("0.1.0")));
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_floor_above_every_version_is_refused() {
        let dir = temp_dir("index-floor");
        fs::create_dir_all(&dir).expect("dir");
        let key = signing_key();
        let terms = IndexTerms::from_env(NOW, None, Some("0.5.0")).expect("terms");
        let err = add_to_index(&dir, &v("0.4.0"), &key, &terms).expect_err("floor too high");
        assert!(
            err.to_string()
                .starts_with("CARAPACE_MIN_VERSION 0.5.0 is above 0.4.0, the newest version of"),
            "{err}"
        );
        assert!(!dir.join("index.json").exists(), "nothing written");
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn an_unsigned_old_index_keeps_its_versions() {
        let dir = temp_dir("index-old");
        fs::create_dir_all(&dir).expect("dir");
        fs::write(
            dir.join("index.json"),
            "{\"format\":1,\"versions\":[\"0.1.0\",\"0.2.0\"]}\n",
        )
        .expect("old index");
        let key = signing_key();
        let terms = IndexTerms::from_env(NOW, None, None).expect("terms");
        add_to_index(&dir, &v("0.3.0"), &key, &terms).expect("upgraded");
        let read = node_reads(&dir, &key, NOW).expect("signed now");
        assert_eq!(read.versions(), &[v("0.1.0"), v("0.2.0"), v("0.3.0")]);
        fs::remove_dir_all(&dir).ok();
    }
}
