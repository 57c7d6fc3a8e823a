//! The update engine: check the source for a newer signed version, write it
//! into the inactive slot and prove what was written, install its UKI with a
//! boot counter, and — after a boot into it — bless it once the node is
//! healthy. Every step reports through the shared [`Status`]; every failure
//! leaves the running slot, the ESP's bootable entries and the settings as
//! they were.
//!
//! Order of a download, so that a power cut at any point leaves the node
//! booting a good version:
//! 1. fetch and verify the signed manifest (nothing is written before);
//! 2. make the inactive slot unbootable: remove every UKI that points at it,
//!    then give its partitions fresh random UUIDs and the label `_empty`;
//! 3. stream the root and verity parts into its partitions, hashing them;
//! 4. re-read both and rebuild the verity tree: it must give the manifest's
//!    root hash and equal the written hash partition;
//! 5. set the slot's UUIDs to the root hash halves and its labels to the
//!    version, and keep the signed manifest on /var (`staged`), so that the
//!    download survives a reboot. Only the UKI installed by `apply` makes it
//!    bootable, and `apply` also sets systemd-boot's one-shot entry to it, so
//!    the version installed is the one the next boot tries — also when the
//!    boot loader's own order would put it second (a forced downgrade).
//!
//! While the running version is on trial (its UKI still has a boot counter)
//! the other slot is its only fallback: download and apply are refused until
//! it is blessed or rolled back. Installing the running version again is
//! refused before anything is touched (both slots would carry one root hash).

use crate::boot_entries::{self, Entry};
use crate::esp::{self, Esp};
use crate::fetch::{self, Source};
use crate::slots::{self, Slot, Slots};
use crate::staged::{self, Record};
use carapace_bundle::{Manifest, PartHasher};
use carapace_contract::paths;
use carapace_contract::update::{State, Status};
use carapace_disk::gpt::{self, Guid};
use carapace_disk::partition_node::partition_node_name;
use carapace_disk::root_hash::RootHash;
use carapace_disk::verity_tree;
use semver::Version;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Where the engine reads what it needs.
#[derive(Debug, Clone)]
pub struct Paths {
    pub settings: PathBuf,
    pub boot_json: PathBuf,
    pub network_json: PathBuf,
    pub public_key: PathBuf,
    pub esp_mount: PathBuf,
    /// The record of a verified download (`staged`).
    pub staged: PathBuf,
    /// Where efivarfs is mounted.
    pub efivars: PathBuf,
}

impl Default for Paths {
    fn default() -> Paths {
        Paths {
            settings: paths::SETTINGS_JSON.into(),
            boot_json: paths::BOOT_JSON.into(),
            network_json: paths::NETWORK_JSON.into(),
            public_key: "/usr/lib/carapace/update-key.pub".into(),
            esp_mount: esp::MOUNT_POINT.into(),
            staged: staged::PATH.into(),
            efivars: crate::efi_vars::DIR.into(),
        }
    }
}

/// This boot, as carapace-init published it.
#[derive(Debug, Clone)]
pub struct Boot {
    pub version: Version,
    pub roothash: [u8; 32],
    pub disk: String,
}

impl Boot {
    /// Reads /run/carapace/boot.json.
    pub fn read(path: &Path) -> Result<Boot, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let record = carapace_contract::boot::Boot::parse(&text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let field = |value: Option<String>, k: &str| {
            value.ok_or_else(|| format!("{} has no {k}", path.display()))
        };
        let version = Version::parse(&field(record.version, "version")?)
            .map_err(|e| format!("the running version is not a semantic version: {e}"))?;
        Ok(Boot {
            version,
            roothash: parse_hash(&field(record.roothash, "roothash")?)?,
            disk: field(record.disk, "disk")?,
        })
    }
}

fn parse_hash(hex: &str) -> Result<[u8; 32], String> {
    let bad = || format!("{hex:?} is not a SHA-256 root hash");
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    Ok(out)
}

/// The partition UUIDs of the slot that holds `roothash`, data and verity
/// (the halves of the hash, canonical byte order: how stage 1 finds them).
fn slot_uuids(roothash: &[u8; 32]) -> (Guid, Guid) {
    let hash = RootHash::from(*roothash);
    (
        Guid(hash.data_partition_uuid()),
        Guid(hash.hash_partition_uuid()),
    )
}

/// A version fetched, verified and written, waiting for `apply`.
#[derive(Debug, Clone)]
struct Staged {
    manifest: Manifest,
    source: Source,
}

/// What a check found: the newest version's signed manifest, as served and
/// as parsed, and the directory its files are in.
#[derive(Debug, Clone)]
pub struct Offer {
    pub source: Source,
    pub manifest: Manifest,
    pub record: Record,
}

/// The engine, shared by the D-Bus interface and the background tasks.
pub struct Engine {
    paths: Paths,
    boot: Boot,
    status: Mutex<Status>,
    staged: Mutex<Option<Staged>>,
    cancel: AtomicBool,
    /// Whether the running version is on trial (survey), so updates wait.
    on_trial: AtomicBool,
    changes: tokio::sync::watch::Sender<Status>,
}

/// The largest manifest or index read, in bytes.
const MAX_SMALL: usize = 64 * 1024;
/// The largest UKI accepted.
const MAX_UKI: u64 = 256 << 20;

impl Engine {
    /// An engine for this boot; `changes` receives every new status.
    pub fn new(
        paths: Paths,
        boot: Boot,
        slot: &str,
    ) -> (Engine, tokio::sync::watch::Receiver<Status>) {
        let status = Status::idle(&boot.version.to_string(), slot);
        let (tx, rx) = tokio::sync::watch::channel(status.clone());
        (
            Engine {
                paths,
                boot,
                status: Mutex::new(status),
                staged: Mutex::new(None),
                cancel: AtomicBool::new(false),
                on_trial: AtomicBool::new(false),
                changes: tx,
            },
            rx,
        )
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        let snapshot = match self.status.lock() {
            Ok(mut s) => {
                f(&mut s);
                s.clone()
            }
            Err(p) => {
                let mut s = p.into_inner();
                f(&mut s);
                s.clone()
            }
        };
        self.changes.send_replace(snapshot);
    }

    fn enter(&self, state: State) {
        self.update(|s| s.enter(state));
    }

    fn progress(&self, p: f64) {
        self.update(|s| s.progress = p.clamp(0.0, 1.0));
    }

    /// Marks the start of an operation; refuses a second one at once.
    pub fn begin(&self, state: State) -> Result<(), String> {
        let mut refused = None;
        self.update(|s| {
            if s.busy() {
                refused = Some(format!("busy: {}", s.state));
            } else {
                s.enter(state);
            }
        });
        self.cancel.store(false, Ordering::SeqCst);
        refused.map_or(Ok(()), Err)
    }

    /// Ends an operation: in `done` on success, in error with the reason otherwise.
    pub fn end(&self, result: &Result<(), String>, done: State) {
        match result {
            Ok(()) => self.enter(done),
            Err(e) => self.update(|s| s.fail(e)),
        }
    }

    /// Asks a running operation to stop at its next chunk, and nothing else.
    pub fn cancel_running(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Asks a running download to stop at its next chunk; with nothing
    /// running, forgets a staged version: its UKI (if applied) goes, its
    /// slot becomes `_empty` again, and its record is removed.
    pub fn cancel(&self) -> Result<(), String> {
        self.cancel.store(true, Ordering::SeqCst);
        if self.status().busy() {
            return Ok(());
        }
        let staged = self.staged.lock().map_err(|_| "poisoned")?.take();
        if staged.is_none() && staged::load(&self.paths.staged)?.is_none() {
            return Ok(());
        }
        let (parts, slots) = self.read_slots()?;
        self.unstage(&parts, &slots.inactive)?;
        self.update(|s| s.staged.clear());
        Ok(())
    }

    /// Refuses an update while the running version is on trial: the other
    /// slot is what the boot loader falls back to.
    pub fn may_update(&self) -> Result<(), String> {
        if self.on_trial.load(Ordering::SeqCst) {
            return Err(format!(
                "{} is on trial (not blessed yet): the other slot is its fallback, so updates \
                 wait until it is blessed or rolled back",
                self.boot.version
            ));
        }
        Ok(())
    }

    /// Makes `slot` unbootable and forgets what was staged in it: removes
    /// every UKI that names its root, gives it fresh UUIDs and the label
    /// `_empty`, and removes the staged record.
    fn unstage(&self, parts: &[gpt::Partition], slot: &Slot) -> Result<(), String> {
        staged::clear(&self.paths.staged)?;
        let esp = self.esp(parts)?;
        esp.with_linux_dir(|dir| {
            let mut doomed = Vec::new();
            for name in esp::list(dir)? {
                if Entry::parse(&name).is_none() {
                    continue;
                }
                let uki = std::fs::read(dir.join(&name))?;
                // A UKI that names no root hash boots no slot (stage 1
                // refuses it): it does not point at this one.
                if esp::uki_roothash(&uki)
                    .is_ok_and(|hash| Guid(hash.data_partition_uuid()) == slot.data.unique_guid)
                {
                    doomed.push(name);
                }
            }
            esp::remove(dir, &doomed)
        })
        .map_err(|e| format!("cannot clear the ESP of slot {}: {e}", slot.letter))?;
        self.set_identity(
            slot,
            (random_guid()?, "_empty".into()),
            (random_guid()?, "_empty".into()),
        )
    }

    /// Takes back a download staged before a reboot or a restart of the
    /// daemon, if its record still verifies and the inactive slot still
    /// carries its identity; a stale record is removed. Returns the version.
    pub fn restore_staged(&self) -> Result<Option<String>, String> {
        let Some(record) = staged::load(&self.paths.staged)? else {
            return Ok(None);
        };
        let key = self.public_key()?;
        let checked = record.manifest(&key).and_then(|manifest| {
            let (_, slots) = self.read_slots()?;
            let roothash = parse_hash(&manifest.roothash)?;
            let slot = &slots.inactive;
            let label = format!("carapace_{}", manifest.version);
            let (data_uuid, verity_uuid) = slot_uuids(&roothash);
            if slot.data.unique_guid != data_uuid
                || slot.verity.unique_guid != verity_uuid
                || slot.data.name != label
            {
                return Err(format!(
                    "slot {} no longer holds {} (label {:?})",
                    slot.letter, manifest.version, slot.data.name
                ));
            }
            let (url, mut source) = self.source()?;
            if url != record.source {
                return Err(format!(
                    "the update source changed from {} to {url}",
                    record.source
                ));
            }
            source.prefix.push_str(&record.dir);
            Ok(Staged { manifest, source })
        });
        match checked {
            Ok(staged) => {
                let version = staged.manifest.version.to_string();
                *self.staged.lock().map_err(|_| "poisoned")? = Some(staged);
                self.update(|s| s.staged = version.clone());
                Ok(Some(version))
            }
            Err(e) => {
                staged::clear(&self.paths.staged)?;
                Err(format!("dropped the staged download: {e}"))
            }
        }
    }

    fn public_key(&self) -> Result<carapace_bundle::PublicKey, String> {
        let key = std::fs::read_to_string(&self.paths.public_key).map_err(|e| {
            format!(
                "cannot read the update key {}: {e}",
                self.paths.public_key.display()
            )
        })?;
        carapace_bundle::PublicKey::parse_hex(key.trim()).map_err(|e| e.to_string())
    }

    fn cancelled(&self) -> Result<(), String> {
        if self.cancel.load(Ordering::SeqCst) {
            Err("cancelled".into())
        } else {
            Ok(())
        }
    }

    /// The `updates.source` setting, as written and parsed.
    fn source(&self) -> Result<(String, Source), String> {
        let settings = carapace_model::persist::load(&self.paths.settings)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let url = settings
            .updates
            .source
            .ok_or("no update source is set (settings: updates.source)")?;
        let url = url.as_str().to_string();
        let source =
            Source::parse(&url)?.with_ca(settings.updates.ca.as_ref().map(|c| c.as_str()))?;
        Ok((url, source))
    }

    fn dns(&self) -> Vec<std::net::IpAddr> {
        fetch::published_dns(&std::fs::read_to_string(&self.paths.network_json).unwrap_or_default())
    }

    /// Fetches the index and the newest version's signed manifest; returns
    /// the offer if it is an update this node may take.
    pub async fn check(&self, force_downgrade: bool) -> Result<Option<Offer>, String> {
        let (url, source) = self.source()?;
        let dns = self.dns();
        let key = self.public_key()?;
        let index = fetch::get(&source, "index.json", &dns)
            .await?
            .all(MAX_SMALL)
            .await?;
        let signature = match fetch::get(&source, carapace_bundle::INDEX_SIGNATURE_FILE, &dns).await
        {
            Ok(body) => body.all(1024).await?,
            Err(e) if e.contains("404") => {
                return Err(format!(
                    "index.json is not signed by the update key (no {}: {e})",
                    carapace_bundle::INDEX_SIGNATURE_FILE
                ))
            }
            Err(e) => return Err(e),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let index =
            carapace_bundle::Index::verify(&key, &index, &String::from_utf8_lossy(&signature), now)
                .map_err(|e| e.to_string())?;
        let Some(latest) = index.latest() else {
            return Ok(None);
        };
        if latest <= &self.boot.version && !force_downgrade {
            self.update(|s| s.available.clear());
            return Ok(None);
        }
        let dir = format!("{latest}/");
        let manifest_bytes = fetch::get(&source, &format!("{dir}manifest.json"), &dns)
            .await?
            .all(MAX_SMALL)
            .await?;
        let signature = fetch::get(&source, &format!("{dir}manifest.json.sig"), &dns)
            .await?
            .all(1024)
            .await?;
        let record = Record {
            manifest: String::from_utf8(manifest_bytes)
                .map_err(|_| format!("{dir}manifest.json is not UTF-8"))?,
            signature: String::from_utf8_lossy(&signature).into_owned(),
            source: url,
            dir: dir.clone(),
        };
        let manifest = record.manifest(&key)?;
        if manifest.version != *latest {
            return Err(format!(
                "the manifest under {latest}/ is for version {}",
                manifest.version
            ));
        }
        // The signed floor holds even for a forced downgrade.
        carapace_bundle::check_minimum_version(&manifest.version, &index)
            .map_err(|e| e.to_string())?;
        if manifest.version == self.boot.version
            || parse_hash(&manifest.roothash)? == self.boot.roothash
        {
            return Err(format!(
                "{} is the running version: installing it again would give both slots one \
                 root hash, so it is refused (nothing was changed)",
                manifest.version
            ));
        }
        carapace_bundle::check_update(&self.boot.version, &manifest, force_downgrade)
            .map_err(|e| e.to_string())?;
        let version = manifest.version.to_string();
        self.update(|s| s.available = version);
        Ok(Some(Offer {
            source: Source {
                prefix: format!("{}{dir}", source.prefix),
                ..source
            },
            manifest,
            record,
        }))
    }

    fn disk_device(&self) -> String {
        if self.boot.disk.starts_with("/dev/") {
            self.boot.disk.clone()
        } else {
            format!("/dev/{}", self.boot.disk)
        }
    }

    fn sector_size(&self) -> u64 {
        let name = self.disk_device().trim_start_matches("/dev/").to_string();
        std::fs::read_to_string(format!("/sys/block/{name}/queue/logical_block_size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(512)
    }

    fn read_slots(&self) -> Result<(Vec<gpt::Partition>, Slots), String> {
        let dev = self.disk_device();
        let mut f = std::fs::File::open(&dev).map_err(|e| format!("cannot open {dev}: {e}"))?;
        let parts = gpt::read_with_fallback(&mut f, self.sector_size() as usize)
            .map_err(|e| format!("{dev}: {e}"))?
            .partitions;
        let slots = slots::slots(&parts, &self.boot.roothash).map_err(|e| e.to_string())?;
        Ok((parts, slots))
    }

    fn partition_device(&self, number: u32) -> String {
        let disk = self.disk_device();
        let name = disk.trim_start_matches("/dev/");
        format!("/dev/{}", partition_node_name(name, number))
    }

    fn esp(&self, parts: &[gpt::Partition]) -> Result<Esp, String> {
        let p =
            gpt::partition_by_type(parts, &gpt::types::ESP).ok_or("the boot disk has no ESP")?;
        Ok(Esp {
            device: self.partition_device(p.number),
            mount_point: self.paths.esp_mount.clone(),
        })
    }

    /// The boot disk, opened for GPT writes with O_DSYNC: each write is on
    /// the disk before the next starts, so one copy of the table is whole
    /// before the other changes.
    fn open_disk_for_gpt_writes(&self) -> Result<(String, std::fs::File), String> {
        use std::os::unix::fs::OpenOptionsExt;
        let dev = self.disk_device();
        let disk = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::DSYNC.bits() as i32)
            .open(&dev)
            .map_err(|e| format!("cannot open {dev}: {e}"))?;
        Ok((dev, disk))
    }

    fn set_identity(
        &self,
        slot: &Slot,
        data: (Guid, String),
        verity: (Guid, String),
    ) -> Result<(), String> {
        let (dev, mut disk) = self.open_disk_for_gpt_writes()?;
        let sector = self.sector_size();
        for (p, (uuid, name)) in [(&slot.data, data), (&slot.verity, verity)] {
            gpt::set_partition_identity(&mut disk, sector, p.number, uuid, &name)
                .map_err(|e| format!("cannot relabel partition {}: {e}", p.number))?;
        }
        disk.sync_all()
            .map_err(|e| format!("cannot sync {dev}: {e}"))
    }

    /// Downloads the newest version into the inactive slot and proves it.
    pub async fn download(&self, force_downgrade: bool) -> Result<String, String> {
        self.may_update()?;
        let checking = std::time::Instant::now();
        let Offer {
            source,
            manifest,
            record,
        } = self
            .check(force_downgrade)
            .await?
            .ok_or("no newer version is available")?;
        let check_took = checking.elapsed();
        let (parts, slots) = self.read_slots()?;
        let target = slots.inactive.clone();
        let sector = self.sector_size();
        let data_room = target.data.size_bytes(sector);
        let verity_room = target.verity.size_bytes(sector);
        if manifest.root.data_bytes > data_room || manifest.verity.bytes > verity_room {
            return Err(format!(
                "version {} does not fit slot {}: root {} of {data_room} bytes, verity {} of {verity_room}",
                manifest.version, target.letter, manifest.root.data_bytes, manifest.verity.bytes
            ));
        }

        // Nothing may boot the slot while it is rewritten.
        *self.staged.lock().map_err(|_| "poisoned")? = None;
        self.update(|s| s.staged.clear());
        let clearing = std::time::Instant::now();
        self.unstage(&parts, &target)?;
        let cleared = clearing.elapsed();

        // Stream the parts in.
        self.enter(State::Downloading);
        let started = std::time::Instant::now();
        let data_dev = self.partition_device(target.data.number);
        let verity_dev = self.partition_device(target.verity.number);
        let total = (manifest.root.stored_bytes + manifest.verity.bytes) as f64;
        let mut done = 0u64;
        self.stream_part(
            &source,
            &manifest.root.as_part(),
            &data_dev,
            &mut done,
            total,
        )
        .await?;
        // What the bundle left out of the root is zeros.
        zero_fill(
            &data_dev,
            manifest.root.stored_bytes,
            manifest.root.data_bytes,
        )?;
        self.stream_part(
            &source,
            &manifest.verity.as_part(),
            &verity_dev,
            &mut done,
            total,
        )
        .await?;

        let written = started.elapsed();
        // Re-read what was written and rebuild the tree.
        self.enter(State::Verifying);
        let verifying = std::time::Instant::now();
        let roothash = parse_hash(&manifest.roothash)?;
        let hash_image = read_prefix(&verity_dev, manifest.verity.bytes)?;
        let data = std::fs::File::open(&data_dev).map_err(|e| format!("{data_dev}: {e}"))?;
        let data_bytes = manifest.root.data_bytes;
        // Seconds of hashing: off the runtime, which keeps answering D-Bus
        // and sending signals meanwhile.
        let checked = tokio::task::spawn_blocking(move || {
            verity_tree::verify(data.take(data_bytes), &hash_image, &roothash)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("the verifier stopped: {e}"))?;
        checked.map_err(|e| {
            format!(
                "what was written to slot {} does not verify: {e}",
                target.letter
            )
        })?;

        let verified = verifying.elapsed();
        // Only now does the slot get the identity the new UKI looks for.
        self.enter(State::Writing);
        let naming = std::time::Instant::now();
        let label = format!("carapace_{}", manifest.version);
        let (data_uuid, verity_uuid) = slot_uuids(&roothash);
        self.set_identity(
            &target,
            (data_uuid, label.clone()),
            (verity_uuid, format!("{label}_verity")),
        )?;
        staged::save(&self.paths.staged, &record)?;
        println!(
            "carapace-update: wrote {} to slot {}: {} bytes in {} ms; verified {} bytes in {} ms \
             (checked the source in {} ms, cleared the slot in {} ms, named it in {} ms)",
            manifest.version,
            target.letter,
            manifest.root.stored_bytes + manifest.verity.bytes,
            written.as_millis(),
            manifest.root.data_bytes + manifest.verity.bytes,
            verified.as_millis(),
            check_took.as_millis(),
            cleared.as_millis(),
            naming.elapsed().as_millis()
        );
        let version = manifest.version.to_string();
        *self.staged.lock().map_err(|_| "poisoned")? = Some(Staged { manifest, source });
        self.update(|s| s.staged = version.clone());
        Ok(version)
    }

    async fn stream_part(
        &self,
        source: &Source,
        part: &carapace_bundle::Part,
        device: &str,
        done: &mut u64,
        total: f64,
    ) -> Result<(), String> {
        let file = part.file.as_str();
        let mut hasher = PartHasher::new(part).map_err(|e| e.to_string())?;
        let mut body = fetch::get(source, file, &self.dns()).await?;
        // The deadline follows the signed size, not the server's word.
        body.expect_length(part.bytes)?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .open(device)
            .map_err(|e| format!("cannot open {device}: {e}"))?;
        while let Some(chunk) = body.chunk().await? {
            self.cancelled()?;
            hasher.update(&chunk).map_err(|e| format!("{file}: {e}"))?;
            out.write_all(&chunk)
                .map_err(|e| format!("cannot write {device}: {e}"))?;
            *done += chunk.len() as u64;
            self.progress(*done as f64 / total.max(1.0));
        }
        hasher.finish().map_err(|e| format!("{file}: {e}"))?;
        out.sync_all()
            .map_err(|e| format!("cannot sync {device}: {e}"))
    }

    /// Installs the staged version's UKI with a boot counter: the next boot
    /// tries it.
    pub async fn apply(&self) -> Result<String, String> {
        self.may_update()?;
        let staged = self
            .staged
            .lock()
            .map_err(|_| "poisoned")?
            .clone()
            .ok_or("nothing is downloaded: download an update first")?;
        let m = &staged.manifest;
        if m.uki.bytes > MAX_UKI {
            return Err(format!("the UKI of {} is too large", m.version));
        }
        self.enter(State::Downloading);
        let mut body = fetch::get(&staged.source, &m.uki.file, &self.dns()).await?;
        body.expect_length(m.uki.bytes)?;
        let mut hasher = PartHasher::new(&m.uki.as_part()).map_err(|e| e.to_string())?;
        let mut uki = Vec::new();
        while let Some(chunk) = body.chunk().await? {
            self.cancelled()?;
            hasher
                .update(&chunk)
                .map_err(|e| format!("{}: {e}", m.uki.file))?;
            uki.extend_from_slice(&chunk);
        }
        hasher
            .finish()
            .map_err(|e| format!("{}: {e}", m.uki.file))?;
        self.enter(State::Verifying);
        let names = esp::uki_roothash(&uki)
            .map_err(|e| format!("the UKI of {} names no root hash: {e}", m.version))?
            .to_hex();
        if names != m.roothash {
            return Err(format!(
                "the UKI of {} names root hash {names}, the manifest {}",
                m.version, m.roothash
            ));
        }
        self.enter(State::Writing);
        let (parts, _) = self.read_slots()?;
        let esp = self.esp(&parts)?;
        let name = Entry::trial_name(&m.version);
        esp.with_linux_dir(|dir| {
            let room = rustix::fs::statvfs(dir)
                .map(|s| s.f_bavail * s.f_frsize)
                .unwrap_or(u64::MAX);
            if room < uki.len() as u64 + 1024 * 1024 {
                return Err(std::io::Error::other(format!(
                    "the ESP has {room} bytes free, the UKI needs {}",
                    uki.len()
                )));
            }
            esp::install(dir, &name, uki.as_slice())?;
            // The next boot tries it, whatever the boot loader's order.
            let entries = boot_entries::entries(&esp::list(dir)?);
            let first = entries.first().is_some_and(|e| e.file_name == name);
            match crate::efi_vars::write(
                &self.paths.efivars,
                crate::efi_vars::ONE_SHOT,
                &name.to_lowercase(),
            ) {
                Ok(()) => Ok(()),
                Err(_) if first => Ok(()),
                Err(e) => {
                    // It would never boot: take it out again.
                    esp::remove(dir, std::slice::from_ref(&name))?;
                    Err(std::io::Error::other(format!(
                        "the boot loader lists it after the running version and its one-shot \
                         entry cannot be set: {e}"
                    )))
                }
            }
        })
        .map_err(|e| format!("cannot install {name}: {e}"))?;
        Ok(m.version.to_string())
    }

    /// Mends the boot disk's GPT after a power cut between the writes of
    /// its two copies (or a damaged disk): a damaged primary is restored
    /// from the backup; a whole backup that differs from the whole primary
    /// becomes its copy again (the primary is what booted). Returns what
    /// was mended, if anything.
    pub fn repair_gpt(&self) -> Result<Option<String>, String> {
        let (dev, mut disk) = self.open_disk_for_gpt_writes()?;
        let mended = match gpt::restore_primary(&mut disk, self.sector_size()) {
            Ok(gpt::Restored::NotNeeded) => None,
            Ok(gpt::Restored::FromBackup { primary_error }) => Some(format!(
                "restored the primary GPT from its backup ({primary_error})"
            )),
            Err(e) => return Err(format!("cannot repair the GPT of {dev}: {e}")),
        };
        let synced = gpt::sync_backup(&mut disk, self.sector_size())
            .map_err(|e| format!("cannot make the backup GPT of {dev} agree: {e}"))?;
        disk.sync_all()
            .map_err(|e| format!("cannot sync {dev}: {e}"))?;
        Ok(mended.or(synced.then(|| {
            "rewrote the backup GPT, which differed from the primary (a cut between the two \
             copies' writes)"
                .to_string()
        })))
    }

    /// Reads the ESP to fill in the running, fallback and rolled-back facts;
    /// returns the running entry.
    pub fn survey(&self) -> Result<Option<Entry>, String> {
        let (parts, _) = self.read_slots()?;
        let esp = self.esp(&parts)?;
        let names = esp.with_linux_dir(esp::list).map_err(|e| e.to_string())?;
        let entries = boot_entries::entries(&names);
        let picture = boot_entries::picture(&entries, &self.boot.version);
        let show = |v: &Option<Version>| v.as_ref().map(ToString::to_string).unwrap_or_default();
        self.on_trial.store(picture.on_trial(), Ordering::SeqCst);
        self.update(|s| {
            s.blessed = picture
                .running
                .as_ref()
                .is_some_and(|e| e.counter.is_none());
            s.fallback = show(&picture.fallback);
            s.rolled_back = show(&picture.rolled_back);
        });
        Ok(picture.running)
    }

    /// Blesses the running version: drops the boot counter from its UKI and
    /// removes versions older than the fallback.
    pub fn bless(&self) -> Result<(), String> {
        let (parts, _) = self.read_slots()?;
        let esp = self.esp(&parts)?;
        let version = self.boot.version.clone();
        esp.with_linux_dir(|dir| {
            let entries = boot_entries::entries(&esp::list(dir)?);
            if let Some(running) = entries.iter().find(|e| e.version == version) {
                if running.counter.is_some() {
                    esp::rename(dir, &running.file_name, &running.blessed_name())?;
                }
            }
            let entries = boot_entries::entries(&esp::list(dir)?);
            esp::remove(
                dir,
                &boot_entries::to_remove_after_blessing(&entries, &version),
            )
        })
        .map_err(|e| format!("cannot bless {version}: {e}"))?;
        self.survey().map(drop)
    }
}

fn random_guid() -> Result<Guid, String> {
    let mut g = [0u8; 16];
    let mut filled = 0;
    while filled < g.len() {
        filled += rustix::rand::getrandom(&mut g[filled..], rustix::rand::GetRandomFlags::empty())
            .map_err(|e| format!("no randomness: {e}"))?;
    }
    // RFC 4122 version 4, variant 1, as written in canonical byte order.
    g[6] = (g[6] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    Ok(Guid(g))
}

fn zero_fill(device: &str, from: u64, to: u64) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(|e| format!("cannot open {device}: {e}"))?;
    f.seek(SeekFrom::Start(from)).map_err(|e| e.to_string())?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(zeros.len());
        f.write_all(&zeros[..n])
            .map_err(|e| format!("cannot write {device}: {e}"))?;
        at += n as u64;
    }
    f.sync_all()
        .map_err(|e| format!("cannot sync {device}: {e}"))
}

fn read_prefix(device: &str, len: u64) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    std::fs::File::open(device)
        .and_then(|f| f.take(len).read_to_end(&mut buf))
        .map_err(|e| format!("cannot read {device}: {e}"))?;
    if buf.len() as u64 != len {
        return Err(format!("{device} is shorter than {len} bytes"));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_facts_come_from_boot_json() {
        let dir = std::env::temp_dir().join(format!("carapace-engine-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("boot.json");
        let hash = "ab".repeat(32);
        std::fs::write(
            &path,
            format!(r#"{{"version":"0.2.0","roothash":"{hash}","slot":"b","disk":"/dev/vda"}}"#),
        )
        .expect("write");
        let boot = Boot::read(&path).expect("boot");
        assert_eq!(boot.version, Version::new(0, 2, 0));
        assert_eq!(boot.roothash, [0xab; 32]);
        assert_eq!(boot.disk, "/dev/vda");
        std::fs::write(
            &path,
            r#"{"version":"dev","roothash":"x","disk":"/dev/vda"}"#,
        )
        .expect("write");
        assert!(Boot::read(&path).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn random_guids_are_version_4_and_differ() {
        let a = random_guid().expect("guid");
        let b = random_guid().expect("guid");
        assert_ne!(a, b);
        assert_eq!(a.0[6] >> 4, 4);
        assert_eq!(a.0[8] >> 6, 2);
    }

    #[test]
    fn zero_fill_writes_zeros_after_the_stored_part() {
        let dir = std::env::temp_dir().join(format!("carapace-zero-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let dev = dir.join("slot");
        std::fs::write(&dev, vec![0xffu8; 3 << 20]).expect("write");
        let dev_s = dev.to_string_lossy().to_string();
        zero_fill(&dev_s, 1000, (2 << 20) + 7).expect("filled");
        let back = std::fs::read(&dev).expect("read");
        assert!(back[..1000].iter().all(|&b| b == 0xff));
        assert!(back[1000..(2 << 20) + 7].iter().all(|&b| b == 0));
        assert!(back[(2 << 20) + 7..].iter().all(|&b| b == 0xff));
        assert_eq!(read_prefix(&dev_s, 10).expect("read").len(), 10);
        assert!(read_prefix(&dev_s, 4 << 20).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
