//! The GUID partition table, parsed from bytes: the primary header at LBA 1
//! (signature, CRC32, geometry), the partition entry array (its own CRC32),
//! the backup copy at the end of the disk, and lookups by partition UUID and
//! by type — how stage 1 finds the partitions that `roothash=` names.
//!
//! Pure: nothing here opens a device; the readers and writers take any
//! `Read + Seek` (`+ Write`) and touch only the sectors the headers point at.
//! GUIDs are kept in canonical order (the order they are printed in, RFC
//! 4122), converted from the mixed-endian form the GPT stores.
//!
//! Readers: [`read`] reads only the primary copy. [`read_with_fallback`]
//! (stage 1) reads the backup when the primary fails its checks (a torn
//! write, a zeroed header) and says which copy it used. Trusting the backup
//! is no weaker than trusting the primary: every partition either leads to
//! is verified against `roothash=` anyway, and the kernel falls back the
//! same way.
//!
//! Writers, for the update daemon: [`set_partition_identity`] checks both
//! copies of the table and changes one entry's partition UUID and name in
//! each, backup first; [`restore_primary`] rewrites a damaged primary copy
//! from a good backup.

use std::fmt;
use std::io::{Read, Seek, SeekFrom, Write};

/// A GUID in canonical byte order: `bytes[0]` is the first two hex digits of
/// the printed form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// From the GPT's on-disk form, whose first three fields are little-endian.
    pub fn from_gpt_bytes(b: &[u8; 16]) -> Guid {
        let mut c = *b;
        c[0..4].reverse();
        c[4..6].reverse();
        c[6..8].reverse();
        Guid(c)
    }

    /// The GPT's on-disk form of this GUID (the inverse of [`Guid::from_gpt_bytes`]).
    pub fn to_gpt_bytes(self) -> [u8; 16] {
        // Swapping the three little-endian fields is its own inverse.
        Guid::from_gpt_bytes(&self.0).0
    }

    /// Parses the printed form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, in
    /// either case.
    pub fn parse(s: &str) -> Option<Guid> {
        let b = s.as_bytes();
        if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
            return None;
        }
        let digits: Vec<u8> = b.iter().copied().filter(|&c| c != b'-').collect();
        // Checked here because from_str_radix would also take a leading '+'.
        if digits.len() != 32 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut out = [0u8; 16];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let text = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(text, 16).ok()?;
        }
        Some(Guid(out))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

/// Lowercase `8-4-4-4-12` hexadecimal, as sfdisk and systemd print it (sfdisk in capitals).
impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// Partition type GUIDs of the Discoverable Partitions Specification that
/// a Carapace disk uses.
pub mod types {
    use super::Guid;

    /// Root partition for x86-64: `4f68bce3-e8cd-4db1-96e7-fbcaf984b709`.
    pub const ROOT_X86_64: Guid = Guid([
        0x4f, 0x68, 0xbc, 0xe3, 0xe8, 0xcd, 0x4d, 0xb1, 0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84, 0xb7,
        0x09,
    ]);
    /// Verity hash partition of an x86-64 root: `2c7357ed-ebd2-46d9-aec1-23d437ec2bf5`.
    pub const ROOT_VERITY_X86_64: Guid = Guid([
        0x2c, 0x73, 0x57, 0xed, 0xeb, 0xd2, 0x46, 0xd9, 0xae, 0xc1, 0x23, 0xd4, 0x37, 0xec, 0x2b,
        0xf5,
    ]);
    /// The state partition mounted on /var: `4d21b016-b534-45c2-a9fb-5c16e091fd2d`.
    pub const VAR: Guid = Guid([
        0x4d, 0x21, 0xb0, 0x16, 0xb5, 0x34, 0x45, 0xc2, 0xa9, 0xfb, 0x5c, 0x16, 0xe0, 0x91, 0xfd,
        0x2d,
    ]);
    /// The EFI system partition: `c12a7328-f81f-11d2-ba4b-00a0c93ec93b`.
    pub const ESP: Guid = Guid([
        0xc1, 0x2a, 0x73, 0x28, 0xf8, 0x1f, 0x11, 0xd2, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9,
        0x3b,
    ]);
}

/// One used entry of the partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based index in the entry array: the kernel's partition number (vda2 is 2).
    pub number: u32,
    pub type_guid: Guid,
    /// The partition UUID (`PARTUUID`).
    pub unique_guid: Guid,
    /// First sector, inclusive.
    pub first_lba: u64,
    /// Last sector, inclusive.
    pub last_lba: u64,
    /// Attribute bits (bit 60: read-only, 63: no-auto, as systemd uses them).
    pub attributes: u64,
    /// The label, decoded from UTF-16LE (unpaired surrogates become U+FFFD).
    pub name: String,
}

impl Partition {
    /// The length in sectors.
    pub fn sectors(&self) -> u64 {
        self.last_lba - self.first_lba + 1
    }

    /// The length in bytes on a disk with `sector_size`-byte logical sectors.
    pub fn size_bytes(&self, sector_size: u64) -> u64 {
        self.sectors().saturating_mul(sector_size)
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GptError {
    #[error("sector size {0} is not one of 512 or 4096")]
    SectorSize(usize),
    #[error("{what} is {len} bytes, too short (need {need})")]
    Truncated {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("no GPT: no \"EFI PART\" signature at LBA 1")]
    NoSignature,
    #[error("GPT header size {0} is outside 92..=sector size")]
    HeaderSize(u32),
    #[error("GPT header is corrupt: CRC32 {computed:08x} does not match the stored {stored:08x}")]
    HeaderCrc { stored: u32, computed: u32 },
    #[error("GPT header at LBA 1 says it sits at LBA {0}: not a primary header")]
    NotPrimary(u64),
    #[error("GPT usable area {first}..={last} is empty or inverted")]
    UsableArea { first: u64, last: u64 },
    #[error("GPT entry array at LBA {0} overlaps the protective MBR or the header")]
    EntriesLba(u64),
    #[error("GPT entry size {0} is not 128 times a power of two up to 4096")]
    EntrySize(u32),
    #[error("GPT has {0} entries, more than the {MAX_ENTRIES} this reader accepts")]
    TooManyEntries(u32),
    #[error(
        "GPT entry array is corrupt: CRC32 {computed:08x} does not match the stored {stored:08x}"
    )]
    EntriesCrc { stored: u32, computed: u32 },
    #[error("GPT partition {number} spans LBA {first}..={last}, outside the usable area {usable_first}..={usable_last} or inverted")]
    BadExtent {
        number: u32,
        first: u64,
        last: u64,
        usable_first: u64,
        usable_last: u64,
    },
    #[error("cannot read {len} bytes at offset {offset}: {reason}")]
    Read {
        offset: u64,
        len: usize,
        reason: String,
    },
    #[error("GPT header at LBA {lba} says it sits at LBA {says}")]
    Misplaced { lba: u64, says: u64 },
    #[error("{primary}; the backup GPT at LBA {backup_lba} is no better: {backup}")]
    BothCopies {
        primary: Box<GptError>,
        backup_lba: u64,
        backup: Box<GptError>,
    },
}

/// The largest entry array accepted (the usual one has 128 entries).
pub const MAX_ENTRIES: u32 = 1024;

const SIGNATURE: &[u8; 8] = b"EFI PART";

/// CRC-32 as the GPT (and zlib, Ethernet) computes it: polynomial
/// 0x04c11db7, reflected, initial value and final xor all ones.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            // Subtract the reflected polynomial when the low bit is set.
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

fn le32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn guid_at(b: &[u8], off: usize) -> Guid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    Guid::from_gpt_bytes(&a)
}

/// The validated primary GPT header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The logical sector size the header was found with.
    pub sector_size: usize,
    pub disk_guid: Guid,
    /// LBA of the backup header (normally the last sector of the disk).
    pub alternate_lba: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub entries_lba: u64,
    pub entry_count: u32,
    pub entry_size: u32,
    pub entries_crc: u32,
}

impl Header {
    /// Parses and checks the header in `head`, the first two sectors (or
    /// more) of a disk with `sector_size`-byte sectors (512 or 4096).
    pub fn parse(head: &[u8], sector_size: usize) -> Result<Header, GptError> {
        if sector_size != 512 && sector_size != 4096 {
            return Err(GptError::SectorSize(sector_size));
        }
        let need = 2 * sector_size;
        if head.len() < need {
            return Err(GptError::Truncated {
                what: "the start of the disk",
                len: head.len(),
                need,
            });
        }
        let header = parse_fields(&head[sector_size..need], sector_size, 1)?;
        if header.entries_lba < 2 {
            return Err(GptError::EntriesLba(header.entries_lba));
        }
        check_entry_shape(&header)?;
        Ok(header)
    }

    /// Where the entry array is: (byte offset from the start of the disk, byte length).
    pub fn entries_span(&self) -> (u64, usize) {
        (
            self.entries_lba.saturating_mul(self.sector_size as u64),
            self.entry_count as usize * self.entry_size as usize,
        )
    }

    /// Checks the entry array (the bytes at [`Header::entries_span`]) against
    /// the header's CRC and returns the used entries, in table order.
    pub fn partitions(&self, entries: &[u8]) -> Result<Vec<Partition>, GptError> {
        let (_, need) = self.entries_span();
        if entries.len() < need {
            return Err(GptError::Truncated {
                what: "the GPT entry array",
                len: entries.len(),
                need,
            });
        }
        let entries = &entries[..need];
        let computed = crc32(entries);
        if computed != self.entries_crc {
            return Err(GptError::EntriesCrc {
                stored: self.entries_crc,
                computed,
            });
        }
        let mut out = Vec::new();
        for (i, e) in entries.chunks_exact(self.entry_size as usize).enumerate() {
            if e[0..16] == [0u8; 16] {
                continue; // An all-zero type GUID marks an unused entry.
            }
            let number = i as u32 + 1;
            let (first, last) = (le64(e, 32), le64(e, 40));
            if first > last || first < self.first_usable_lba || last > self.last_usable_lba {
                return Err(GptError::BadExtent {
                    number,
                    first,
                    last,
                    usable_first: self.first_usable_lba,
                    usable_last: self.last_usable_lba,
                });
            }
            let units: Vec<u16> = e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&c| c != 0)
                .collect();
            out.push(Partition {
                number,
                type_guid: guid_at(e, 0),
                unique_guid: guid_at(e, 16),
                first_lba: first,
                last_lba: last,
                attributes: le64(e, 48),
                name: String::from_utf16_lossy(&units),
            });
        }
        Ok(out)
    }
}

/// Parses the partition table from `disk`, the first bytes of a disk: at
/// least up to the end of the entry array (34 sectors for the usual 128
/// entries of 128 bytes).
pub fn parse(disk: &[u8], sector_size: usize) -> Result<Vec<Partition>, GptError> {
    let header = Header::parse(disk, sector_size)?;
    let (offset, len) = header.entries_span();
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let entries = disk.get(start..).unwrap_or_default();
    if entries.len() < len {
        return Err(GptError::Truncated {
            what: "the GPT entry array",
            len: entries.len(),
            need: len,
        });
    }
    header.partitions(entries)
}

fn read_at<R: Read + Seek>(dev: &mut R, offset: u64, len: usize) -> Result<Vec<u8>, GptError> {
    let fail = |e: std::io::Error| GptError::Read {
        offset,
        len,
        reason: e.to_string(),
    };
    dev.seek(SeekFrom::Start(offset)).map_err(fail)?;
    let mut buf = vec![0u8; len];
    dev.read_exact(&mut buf).map_err(fail)?;
    Ok(buf)
}

/// Reads the header and then the entry array from a device with
/// `sector_size`-byte logical sectors: two reads, of only what is needed.
pub fn read<R: Read + Seek>(
    dev: &mut R,
    sector_size: usize,
) -> Result<(Header, Vec<Partition>), GptError> {
    let head = read_at(dev, 0, 2 * sector_size)?;
    let header = Header::parse(&head, sector_size)?;
    let (offset, len) = header.entries_span();
    let entries = read_at(dev, offset, len)?;
    let partitions = header.partitions(&entries)?;
    Ok((header, partitions))
}

/// The partition whose partition UUID is `uuid` (canonical byte order, as
/// [`crate::root_hash::RootHash::data_partition_uuid`] gives it).
pub fn partition_by_uuid<'a>(parts: &'a [Partition], uuid: &[u8; 16]) -> Option<&'a Partition> {
    parts.iter().find(|p| p.unique_guid.0 == *uuid)
}

/// The first partition of type `type_guid`, in table order (how the
/// Discoverable Partitions Specification picks among several).
pub fn partition_by_type<'a>(parts: &'a [Partition], type_guid: &Guid) -> Option<&'a Partition> {
    partitions_by_type(parts, *type_guid).next()
}

/// Every partition of type `type_guid`, in table order.
pub fn partitions_by_type(
    parts: &[Partition],
    type_guid: Guid,
) -> impl Iterator<Item = &Partition> {
    parts.iter().filter(move |p| p.type_guid == type_guid)
}

/// The most UTF-16 code units a partition name holds (72 bytes).
pub const MAX_NAME_UNITS: usize = 36;

/// Why a partition's identity was not changed. Every error but
/// [`IdentityError::Write`] and [`IdentityError::ReadBack`] is found
/// before anything is written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("sector size {0} is not one of 512 or 4096")]
    SectorSize(u64),
    #[error(
        "partition name {name:?} is {units} UTF-16 code units, a GPT entry holds {MAX_NAME_UNITS}"
    )]
    NameTooLong { name: String, units: usize },
    #[error("partition name {name:?} contains {character:?}, which a GPT name (UCS-2, NUL-terminated) cannot hold")]
    NameChar { name: String, character: char },
    #[error("the nil GUID is not a partition UUID")]
    NilGuid,
    #[error("primary GPT: {0}")]
    Primary(GptError),
    #[error("backup GPT: {0}")]
    Backup(GptError),
    #[error("backup GPT header at LBA {lba} says it sits at LBA {says}")]
    BackupLba { lba: u64, says: u64 },
    #[error("backup GPT header disagrees with the primary about {0}")]
    Mismatch(&'static str),
    #[error("the primary and backup GPT entry arrays differ")]
    EntriesDiffer,
    #[error("GPT has no entry {number}: it has {count}")]
    NoEntry { number: u32, count: u32 },
    #[error("GPT entry {0} is unused")]
    Unused(u32),
    #[error("partition UUID {guid} already belongs to partition {number}")]
    DuplicateGuid { guid: Guid, number: u32 },
    #[error("cannot write {len} bytes at offset {offset}: {reason}")]
    Write {
        offset: u64,
        len: usize,
        reason: String,
    },
    #[error("the GPT read back after writing is not what was written: {0}")]
    ReadBack(String),
}

/// `name` as a GPT entry's name field: UTF-16LE, NUL-padded to 72 bytes.
/// The UEFI specification makes the field UCS-2: a character outside the
/// Basic Multilingual Plane (which would need a surrogate pair, and which
/// sfdisk refuses to write) is refused, and so is NUL, which ends a name.
pub fn encode_name(name: &str) -> Result<[u8; 2 * MAX_NAME_UNITS], IdentityError> {
    if let Some(character) = name.chars().find(|&c| c == '\0' || u32::from(c) > 0xffff) {
        return Err(IdentityError::NameChar {
            name: name.to_string(),
            character,
        });
    }
    let units: Vec<u16> = name.encode_utf16().collect();
    if units.len() > MAX_NAME_UNITS {
        return Err(IdentityError::NameTooLong {
            name: name.to_string(),
            units: units.len(),
        });
    }
    let mut out = [0u8; 2 * MAX_NAME_UNITS];
    for (slot, unit) in out.chunks_exact_mut(2).zip(units) {
        slot.copy_from_slice(&unit.to_le_bytes());
    }
    Ok(out)
}

/// The checks every header copy shares, on its sector (`sector_size`
/// bytes): signature, size, CRC, that it says it sits at `lba` (else
/// [`GptError::NotPrimary`]), and a usable area that is not inverted.
fn parse_fields(sector: &[u8], sector_size: usize, lba: u64) -> Result<Header, GptError> {
    if &sector[0..8] != SIGNATURE {
        return Err(GptError::NoSignature);
    }
    let size = le32(sector, 12);
    if !(92..=sector_size as u32).contains(&size) {
        return Err(GptError::HeaderSize(size));
    }
    let stored = le32(sector, 16);
    let mut copy = sector[..size as usize].to_vec();
    copy[16..20].fill(0); // The CRC covers the header with its own field zeroed.
    let computed = crc32(&copy);
    if stored != computed {
        return Err(GptError::HeaderCrc { stored, computed });
    }
    let my_lba = le64(sector, 24);
    if my_lba != lba {
        return Err(GptError::NotPrimary(my_lba));
    }
    let header = Header {
        sector_size,
        alternate_lba: le64(sector, 32),
        first_usable_lba: le64(sector, 40),
        last_usable_lba: le64(sector, 48),
        disk_guid: guid_at(sector, 56),
        entries_lba: le64(sector, 72),
        entry_count: le32(sector, 80),
        entry_size: le32(sector, 84),
        entries_crc: le32(sector, 88),
    };
    if header.first_usable_lba > header.last_usable_lba {
        return Err(GptError::UsableArea {
            first: header.first_usable_lba,
            last: header.last_usable_lba,
        });
    }
    Ok(header)
}

/// Entry size a power of two from 128 to 4096, and not too many entries.
fn check_entry_shape(header: &Header) -> Result<(), GptError> {
    let es = header.entry_size;
    if es < 128 || !es.is_power_of_two() || es > 4096 {
        return Err(GptError::EntrySize(es));
    }
    if header.entry_count > MAX_ENTRIES {
        return Err(GptError::TooManyEntries(header.entry_count));
    }
    Ok(())
}

/// Parses and checks a GPT header found at `lba`: the checks of
/// [`Header::parse`] for a header that may be the primary or the backup,
/// plus that its entry array lies outside the usable area and clear of the
/// header (it is about to be written). A header that says it sits
/// elsewhere than `lba` is [`GptError::NotPrimary`].
fn parse_header_at(sector: &[u8], sector_size: usize, lba: u64) -> Result<Header, GptError> {
    if sector.len() < sector_size {
        return Err(GptError::Truncated {
            what: "the GPT header",
            len: sector.len(),
            need: sector_size,
        });
    }
    let header = parse_fields(&sector[..sector_size], sector_size, lba)?;
    check_entry_shape(&header)?;
    // The array, in whole sectors, must sit between the header and the
    // usable area (primary) or between the usable area and the header
    // (backup), never over a partition.
    let (_, len) = header.entries_span();
    let array_sectors = (len as u64).div_ceil(sector_size as u64);
    let first = header.entries_lba;
    let last = first.saturating_add(array_sectors).saturating_sub(1);
    let before_usable = first > lba && last < header.first_usable_lba;
    let after_usable = first > header.last_usable_lba && last < lba;
    if first < 2 || !(before_usable || after_usable) {
        return Err(GptError::EntriesLba(first));
    }
    Ok(header)
}

fn write_at<W: Write + Seek>(dev: &mut W, offset: u64, bytes: &[u8]) -> Result<(), IdentityError> {
    let fail = |e: std::io::Error| IdentityError::Write {
        offset,
        len: bytes.len(),
        reason: e.to_string(),
    };
    dev.seek(SeekFrom::Start(offset)).map_err(fail)?;
    dev.write_all(bytes).map_err(fail)?;
    dev.flush().map_err(fail)
}

/// One copy of the table as read: header sector, header, entry array, and
/// the partitions it holds.
struct TableCopy {
    lba: u64,
    sector: Vec<u8>,
    header: Header,
    entries: Vec<u8>,
    partitions: Vec<Partition>,
}

impl TableCopy {
    /// Reads and checks the copy whose header is at `lba`.
    fn read<D: Read + Seek>(
        disk: &mut D,
        sector_size: usize,
        lba: u64,
    ) -> Result<TableCopy, GptError> {
        let sector = read_at(disk, lba.saturating_mul(sector_size as u64), sector_size)?;
        let header = parse_header_at(&sector, sector_size, lba)?;
        let (offset, len) = header.entries_span();
        let entries = read_at(disk, offset, len)?;
        // Checks the array's CRC and every used entry's extent.
        let partitions = header.partitions(&entries)?;
        Ok(TableCopy {
            lba,
            sector,
            header,
            entries,
            partitions,
        })
    }

    /// Writes `entry` (the new bytes of entry `index`, 0-based) into this
    /// copy: the entry, then the header with the new array CRC.
    fn write<D: Write + Seek>(
        &self,
        disk: &mut D,
        index: usize,
        entry: &[u8],
        entries_crc: u32,
    ) -> Result<(), IdentityError> {
        let (offset, _) = self.header.entries_span();
        let at = offset + (index as u64) * u64::from(self.header.entry_size);
        write_at(disk, at, entry)?;
        let mut sector = self.sector.clone();
        let size = le32(&sector, 12) as usize;
        sector[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        sector[16..20].fill(0);
        let crc = crc32(&sector[..size]);
        sector[16..20].copy_from_slice(&crc.to_le_bytes());
        write_at(
            disk,
            self.lba.saturating_mul(self.header.sector_size as u64),
            &sector,
        )
    }
}

/// Gives partition `number` (1-based, as in [`Partition::number`]) the
/// partition UUID `unique_guid` and the name `name`, in both the primary
/// and the backup GPT of `disk`, a disk with `sector_size`-byte logical
/// sectors (512 or 4096), with every CRC recomputed. Nothing else changes.
///
/// Refused before anything is written: a name of more than 36 UTF-16 code
/// units or with a character a GPT name cannot hold (see [`encode_name`]),
/// the nil GUID, a GUID another partition already has
/// (two partitions with one PARTUUID make `root=PARTUUID=` ambiguous), a
/// missing or unused entry, and a table that is not sound: either header
/// or entry array corrupt (bad CRC, inconsistent fields), the two headers
/// disagreeing, or the two arrays differing. Such a disk is not repaired
/// from its good half here: [`restore_primary`] does that for a damaged
/// primary, as a step of its own.
///
/// Order of the writes: the backup copy first (its entry, then its header),
/// then the primary copy (entry, header), each write followed by `flush`.
/// - Within a copy, the header comes last: the header's CRC covers the
///   array's CRC, so a copy cut between the two reads as corrupt rather
///   than as a valid table with the wrong content.
/// - The backup goes first because the primary is what everything reads
///   first, and the only copy our own stage 1 reads: while the backup is
///   being rewritten, the primary still holds the old, valid table, so a
///   power cut then leaves the disk booting as before (the firmware and the
///   kernel repair or ignore a bad backup). A cut after the backup and
///   before the primary leaves two valid tables, the old one first; this
///   function refuses such a disk until [`sync_backup`] has made the backup
///   a copy of the primary again, and can then be repeated. Only a cut in the middle of the
///   primary's two small writes leaves a corrupt primary; the backup then
///   holds the complete new table, which the kernel and our stage 1
///   ([`read_with_fallback`]) read instead, and from which
///   [`restore_primary`] rewrites the primary.
/// - `flush` is the barrier between the steps only if it reaches the
///   device: on a `std::fs::File` it does nothing, so open the disk with
///   `O_DSYNC` (`OpenOptionsExt::custom_flags`) for the order to hold
///   across a power cut, and sync it afterwards in any case.
///
/// After writing, both copies are read back and checked.
pub fn set_partition_identity<D: Read + Write + Seek>(
    disk: &mut D,
    sector_size: u64,
    number: u32,
    unique_guid: Guid,
    name: &str,
) -> Result<(), IdentityError> {
    let ss = match sector_size {
        512 => 512usize,
        4096 => 4096usize,
        _ => return Err(IdentityError::SectorSize(sector_size)),
    };
    let name_field = encode_name(name)?;
    if unique_guid == Guid([0; 16]) {
        return Err(IdentityError::NilGuid);
    }

    let primary = TableCopy::read(disk, ss, 1).map_err(IdentityError::Primary)?;
    let backup_lba = primary.header.alternate_lba;
    if backup_lba <= primary.header.last_usable_lba {
        return Err(IdentityError::Mismatch("where the backup header is"));
    }
    let backup = TableCopy::read(disk, ss, backup_lba).map_err(|e| match e {
        GptError::NotPrimary(says) => IdentityError::BackupLba {
            lba: backup_lba,
            says,
        },
        e => IdentityError::Backup(e),
    })?;
    let (p, b) = (&primary.header, &backup.header);
    for (differs, what) in [
        (b.alternate_lba != 1, "where the primary header is"),
        (p.disk_guid != b.disk_guid, "the disk GUID"),
        (
            p.first_usable_lba != b.first_usable_lba,
            "the first usable LBA",
        ),
        (
            p.last_usable_lba != b.last_usable_lba,
            "the last usable LBA",
        ),
        (p.entry_count != b.entry_count, "the number of entries"),
        (p.entry_size != b.entry_size, "the entry size"),
    ] {
        if differs {
            return Err(IdentityError::Mismatch(what));
        }
    }
    if primary.entries != backup.entries {
        return Err(IdentityError::EntriesDiffer);
    }

    if number == 0 || number > p.entry_count {
        return Err(IdentityError::NoEntry {
            number,
            count: p.entry_count,
        });
    }
    let index = (number - 1) as usize;
    let size = p.entry_size as usize;
    for (i, e) in primary.entries.chunks_exact(size).enumerate() {
        if i != index && e[0..16] != [0u8; 16] && guid_at(e, 16) == unique_guid {
            return Err(IdentityError::DuplicateGuid {
                guid: unique_guid,
                number: i as u32 + 1,
            });
        }
    }
    let mut entries = primary.entries.clone();
    let entry = &mut entries[index * size..(index + 1) * size];
    if entry[0..16] == [0u8; 16] {
        return Err(IdentityError::Unused(number));
    }
    entry[16..32].copy_from_slice(&unique_guid.to_gpt_bytes());
    entry[56..128].copy_from_slice(&name_field);
    let entry = entry.to_vec();
    let entries_crc = crc32(&entries);

    backup.write(disk, index, &entry, entries_crc)?;
    primary.write(disk, index, &entry, entries_crc)?;

    // Read both copies back: what a reader will now see.
    let check = |copy: Result<TableCopy, GptError>, which: &str| -> Result<(), IdentityError> {
        let copy = copy.map_err(|e| IdentityError::ReadBack(format!("{which}: {e}")))?;
        if copy.entries != entries {
            return Err(IdentityError::ReadBack(format!("{which}: entries differ")));
        }
        Ok(())
    };
    check(TableCopy::read(disk, ss, 1), "primary")?;
    check(TableCopy::read(disk, ss, backup_lba), "backup")
}

// ---------------------------------------------------------------------------
// The backup copy: reading it when the primary is damaged, and restoring the
// primary from it.

/// Which copy of the GPT a table was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableSource {
    /// The primary copy (header at LBA 1): all is well.
    Primary,
    /// The backup copy, whose header is at `lba`, because the primary failed
    /// its checks with `primary_error`.
    Backup { lba: u64, primary_error: GptError },
}

/// A partition table as [`read_with_fallback`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The header of the copy that was read. A backup's header has
    /// `alternate_lba` 1 and its entry array after the usable area.
    pub header: Header,
    pub partitions: Vec<Partition>,
    pub source: TableSource,
}

/// The LBA of the last sector of `disk`, where the backup header belongs;
/// None if the disk's end cannot be found or it is too small for one.
fn last_lba<D: Seek>(disk: &mut D, sector_size: usize) -> Option<u64> {
    let len = disk.seek(SeekFrom::End(0)).ok()?;
    (len / sector_size as u64)
        .checked_sub(1)
        .filter(|&lba| lba > 1)
}

/// The copy of the table to use, and which it is: the primary if it passes
/// every check of [`read`], else the backup (at the primary header's
/// alternate LBA if that header itself is sound, else at the last LBA).
fn good_copy<D: Read + Seek>(
    disk: &mut D,
    sector_size: usize,
) -> Result<(Table, Option<TableCopy>), GptError> {
    if sector_size != 512 && sector_size != 4096 {
        return Err(GptError::SectorSize(sector_size));
    }
    let header = read_at(disk, 0, 2 * sector_size).and_then(|h| Header::parse(&h, sector_size));
    let primary = header.clone().and_then(|header| {
        let (offset, len) = header.entries_span();
        let entries = read_at(disk, offset, len)?;
        let partitions = header.partitions(&entries)?;
        Ok((header, partitions))
    });
    let primary_error = match primary {
        Ok((header, partitions)) => {
            let source = TableSource::Primary;
            return Ok((
                Table {
                    header,
                    partitions,
                    source,
                },
                None,
            ));
        }
        Err(e) => e,
    };
    let backup_lba = match &header {
        Ok(h) if h.alternate_lba > h.last_usable_lba => h.alternate_lba,
        _ => match last_lba(disk, sector_size) {
            Some(lba) => lba,
            // No end apart from the start: the primary's error says enough.
            None => return Err(primary_error),
        },
    };
    match TableCopy::read(disk, sector_size, backup_lba) {
        Ok(copy) => Ok((
            Table {
                header: copy.header.clone(),
                partitions: copy.partitions.clone(),
                source: TableSource::Backup {
                    lba: backup_lba,
                    primary_error,
                },
            },
            Some(copy),
        )),
        // Neither copy has a signature: no GPT at all, as `read` says.
        Err(GptError::NoSignature) if primary_error == GptError::NoSignature => {
            Err(GptError::NoSignature)
        }
        Err(backup) => Err(GptError::BothCopies {
            primary: Box::new(primary_error),
            backup_lba,
            backup: Box::new(match backup {
                GptError::NotPrimary(says) => GptError::Misplaced {
                    lba: backup_lba,
                    says,
                },
                e => e,
            }),
        }),
    }
}

/// Reads the partition table like [`read`], but when the primary copy
/// fails its checks (a bad CRC of the header or of the entry array, a
/// header of the wrong shape or none at all, an unreadable sector), reads
/// the backup copy instead: its header at the primary header's alternate
/// LBA if that header is sound, else at the last LBA of the disk; its
/// entry array where it says, checked by its own CRCs. Says which copy it
/// used. When both are damaged the error names both problems; a disk with
/// no signature in either place is [`GptError::NoSignature`], as with
/// [`read`].
pub fn read_with_fallback<D: Read + Seek>(
    disk: &mut D,
    sector_size: usize,
) -> Result<Table, GptError> {
    good_copy(disk, sector_size).map(|(table, _)| table)
}

/// What [`restore_primary`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// The primary copy was sound: nothing was written.
    NotNeeded,
    /// The primary copy was damaged (`primary_error`) and has been
    /// rewritten from the backup.
    FromBackup { primary_error: GptError },
}

/// Why the primary GPT was not restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    #[error("sector size {0} is not one of 512 or 4096")]
    SectorSize(u64),
    #[error("no sound GPT copy to restore the primary from: {0}")]
    NoGoodCopy(GptError),
    #[error("the backup GPT's entry array ({sectors} sectors) does not fit between LBA 2 and its first usable LBA {first_usable}")]
    NoRoom { sectors: u64, first_usable: u64 },
    #[error("cannot write {len} bytes at offset {offset}: {reason}")]
    Write {
        offset: u64,
        len: usize,
        reason: String,
    },
    #[error("the primary GPT read back after restoring it is not the backup's table: {0}")]
    ReadBack(String),
}

/// [`write_at`] for the restoring functions, with their error type.
fn restoring_write<W: Write + Seek>(
    disk: &mut W,
    offset: u64,
    bytes: &[u8],
) -> Result<(), RestoreError> {
    write_at(disk, offset, bytes).map_err(|e| match e {
        IdentityError::Write {
            offset,
            len,
            reason,
        } => RestoreError::Write {
            offset,
            len,
            reason,
        },
        other => RestoreError::ReadBack(other.to_string()),
    })
}

/// The primary header that goes with `backup`: the backup's header sector
/// with its own LBA and the alternate LBA swapped back (1 and the backup's
/// LBA), the entry array at LBA 2, and both CRCs recomputed.
fn primary_sector_from(backup: &TableCopy) -> Vec<u8> {
    let mut sector = backup.sector.clone();
    let size = le32(&sector, 12) as usize;
    sector[24..32].copy_from_slice(&1u64.to_le_bytes());
    sector[32..40].copy_from_slice(&backup.lba.to_le_bytes());
    sector[72..80].copy_from_slice(&2u64.to_le_bytes());
    sector[88..92].copy_from_slice(&crc32(&backup.entries).to_le_bytes());
    sector[16..20].fill(0);
    let crc = crc32(&sector[..size]);
    sector[16..20].copy_from_slice(&crc.to_le_bytes());
    sector
}

/// Restores a damaged primary GPT of `disk` (logical sectors of
/// `sector_size` bytes, 512 or 4096) from its backup, for the update
/// daemon after stage 1 had to boot from the backup. Does nothing when the
/// primary is sound ([`Restored::NotNeeded`]); refuses when the backup is
/// damaged too. Everything else than the primary copy is left as it is
/// (the protective MBR at LBA 0 included).
///
/// Writes the backup's entry array to LBA 2 (the primary's place for it),
/// then the primary header built from the backup's ([`TableSource`] says
/// where it is) with its own and the alternate LBA swapped back and both
/// CRCs recomputed; each write is followed by `flush`. The header comes
/// last, so a power cut between the two leaves a primary that still fails
/// its CRC (and a backup that still reads): the call can be repeated. As
/// with [`set_partition_identity`], `flush` is a barrier only on a disk
/// opened with `O_DSYNC`. Afterwards the primary is read back with [`read`]
/// and must give the backup's partitions.
pub fn restore_primary<D: Read + Write + Seek>(
    disk: &mut D,
    sector_size: u64,
) -> Result<Restored, RestoreError> {
    let ss = match sector_size {
        512 => 512usize,
        4096 => 4096usize,
        _ => return Err(RestoreError::SectorSize(sector_size)),
    };
    let (table, backup) = good_copy(disk, ss).map_err(RestoreError::NoGoodCopy)?;
    let (TableSource::Backup { primary_error, .. }, Some(backup)) = (table.source, backup) else {
        return Ok(Restored::NotNeeded);
    };
    let (_, len) = backup.header.entries_span();
    let sectors = (len as u64).div_ceil(ss as u64);
    if 2 + sectors > backup.header.first_usable_lba {
        return Err(RestoreError::NoRoom {
            sectors,
            first_usable: backup.header.first_usable_lba,
        });
    }
    let sector = primary_sector_from(&backup);
    restoring_write(disk, 2 * ss as u64, &backup.entries)?;
    restoring_write(disk, ss as u64, &sector)?;

    let (header, read_back) = read(disk, ss).map_err(|e| RestoreError::ReadBack(e.to_string()))?;
    if read_back != table.partitions || header.alternate_lba != backup.lba {
        return Err(RestoreError::ReadBack(
            "its partitions or its backup's place differ".into(),
        ));
    }
    Ok(Restored::FromBackup { primary_error })
}

/// Makes the backup GPT of `disk` a copy of its sound primary again, for
/// the update daemon at start: after a power cut between the two copies'
/// writes of [`set_partition_identity`] both copies are whole but differ
/// (the backup already new, the primary still old), and that function
/// refuses such a disk. The primary is what the firmware, the kernel and
/// stage 1 booted from, so it wins. Returns whether anything was written
/// (nothing when the copies agree). Refuses when the primary is not sound:
/// [`restore_primary`] is for that case.
///
/// Writes the primary's entry array where the backup's goes (just before
/// the backup header, at the primary's alternate LBA), then the backup
/// header built from the primary's with the two LBAs swapped and both CRCs
/// recomputed; each write is followed by `flush` (a barrier with `O_DSYNC`).
/// The header comes last, so a cut between them leaves a backup that fails
/// its CRC, and the call can be repeated. The backup is read back.
pub fn sync_backup<D: Read + Write + Seek>(
    disk: &mut D,
    sector_size: u64,
) -> Result<bool, RestoreError> {
    let ss = match sector_size {
        512 => 512usize,
        4096 => 4096usize,
        _ => return Err(RestoreError::SectorSize(sector_size)),
    };
    let primary = TableCopy::read(disk, ss, 1).map_err(RestoreError::NoGoodCopy)?;
    let alternate = primary.header.alternate_lba;
    let (_, len) = primary.header.entries_span();
    let sectors = (len as u64).div_ceil(ss as u64);
    let entries_lba = alternate.saturating_sub(sectors);
    if entries_lba <= primary.header.last_usable_lba {
        return Err(RestoreError::NoRoom {
            sectors,
            first_usable: primary.header.first_usable_lba,
        });
    }
    if let Ok(backup) = TableCopy::read(disk, ss, alternate) {
        let same_place = backup.header.alternate_lba == 1;
        if same_place && backup.entries == primary.entries {
            return Ok(false);
        }
    }
    let mut sector = primary.sector.clone();
    let size = le32(&sector, 12) as usize;
    sector[24..32].copy_from_slice(&alternate.to_le_bytes());
    sector[32..40].copy_from_slice(&1u64.to_le_bytes());
    sector[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    sector[16..20].fill(0);
    let crc = crc32(&sector[..size]);
    sector[16..20].copy_from_slice(&crc.to_le_bytes());
    restoring_write(disk, entries_lba * ss as u64, &primary.entries)?;
    restoring_write(disk, alternate * ss as u64, &sector)?;
    let back = TableCopy::read(disk, ss, alternate)
        .map_err(|e| RestoreError::ReadBack(format!("the backup: {e}")))?;
    if back.partitions != primary.partitions {
        return Err(RestoreError::ReadBack(
            "the backup's partitions differ from the primary's".into(),
        ));
    }
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The first 34 sectors of a 512-byte-sector disk made by systemd-repart
    /// (see testdata/make-fixtures.sh): ESP, root with Verity=data, its
    /// root-verity partition, var.
    pub(crate) const DISK_512: &[u8] = include_bytes!("../testdata/repart-512.head.bin");
    /// What `sfdisk --json` said about that disk.
    const SFDISK_512: &str = include_str!("../testdata/repart-512.sfdisk.json");
    /// The root hash systemd-repart printed for it.
    pub(crate) const ROOT_HASH_512: &str = include_str!("../testdata/repart-512.roothash");
    /// The first 6 sectors of the same disk built with 4096-byte sectors.
    pub(crate) const DISK_4096: &[u8] = include_bytes!("../testdata/repart-4096.head.bin");
    /// `sfdisk --json` of that disk, read through a loop device with 4096-byte sectors.
    const SFDISK_4096: &str = include_str!("../testdata/repart-4096.sfdisk.json");
    pub(crate) const ROOT_HASH_4096: &str = include_str!("../testdata/repart-4096.roothash");

    /// The value of `"key": …` in one object of sfdisk's JSON (a string
    /// without its quotes, or a number). sfdisk's output is regular enough
    /// that this avoids a JSON dependency.
    fn json_value<'a>(object: &'a str, key: &str) -> Option<&'a str> {
        let at = object.find(&format!("\"{key}\":"))? + key.len() + 3;
        let rest = object[at..].trim_start();
        match rest.strip_prefix('"') {
            Some(s) => s.split('"').next(),
            None => rest.split([',', '}', '\n']).next().map(str::trim),
        }
    }

    /// The partitions sfdisk listed, as the objects after `"partitions"`.
    fn sfdisk_partitions(json: &str) -> Vec<&str> {
        let list = json.split("\"partitions\":").nth(1).expect("partitions");
        list.split('}').filter(|o| o.contains("\"node\"")).collect()
    }

    /// What `gpt` reads from a fixture must be what sfdisk read from the disk.
    fn agrees_with_sfdisk(disk: &[u8], sector_size: usize, sfdisk: &str) -> Vec<Partition> {
        let table = sfdisk.split("\"partitions\":").next().expect("table");
        assert_eq!(
            json_value(table, "sectorsize"),
            Some(sector_size.to_string().as_str())
        );
        let header = Header::parse(disk, sector_size).expect("header");
        assert_eq!(
            Some(header.disk_guid),
            json_value(table, "id").and_then(Guid::parse)
        );
        assert_eq!(
            Some(header.first_usable_lba.to_string().as_str()),
            json_value(table, "firstlba")
        );
        assert_eq!(
            Some(header.last_usable_lba.to_string().as_str()),
            json_value(table, "lastlba")
        );

        let parts = parse(disk, sector_size).expect("table");
        let listed = sfdisk_partitions(sfdisk);
        assert_eq!(parts.len(), listed.len());
        for (p, s) in parts.iter().zip(&listed) {
            let node = json_value(s, "node").expect("node");
            assert!(
                node.ends_with(&p.number.to_string()),
                "{node} is #{}",
                p.number
            );
            assert_eq!(
                Some(p.first_lba.to_string().as_str()),
                json_value(s, "start")
            );
            assert_eq!(
                Some(p.sectors().to_string().as_str()),
                json_value(s, "size")
            );
            assert_eq!(
                Some(p.type_guid),
                json_value(s, "type").and_then(Guid::parse)
            );
            assert_eq!(
                Some(p.unique_guid),
                json_value(s, "uuid").and_then(Guid::parse)
            );
            assert_eq!(Some(p.name.as_str()), json_value(s, "name"));
            // sfdisk shows attribute bits as "GUID:59" etc.
            let bits: Vec<String> = (0..64)
                .filter(|b| p.attributes & (1u64 << b) != 0)
                .map(|b| format!("GUID:{b}"))
                .collect();
            assert_eq!(
                json_value(s, "attrs").unwrap_or(""),
                bits.join(" "),
                "attributes of #{}",
                p.number
            );
        }
        parts
    }

    #[test]
    fn crc32_matches_the_reference_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn reads_the_table_systemd_repart_wrote_exactly_as_sfdisk_does() {
        let parts = agrees_with_sfdisk(DISK_512, 512, SFDISK_512);
        let types: Vec<Guid> = parts.iter().map(|p| p.type_guid).collect();
        assert_eq!(
            types,
            [
                types::ESP,
                types::ROOT_X86_64,
                types::ROOT_VERITY_X86_64,
                types::VAR
            ]
        );
        assert_eq!(parts[1].name, "root-x86-64");
        assert_eq!(parts[2].name, "root-x86-64-verity");
    }

    #[test]
    fn reads_a_disk_with_4096_byte_sectors() {
        let parts = agrees_with_sfdisk(DISK_4096, 4096, SFDISK_4096);
        assert_eq!(parts.len(), 4);
        // The same bytes read as a 512-byte-sector disk hold no GPT at LBA 1.
        assert_eq!(parse(DISK_4096, 512), Err(GptError::NoSignature));
    }

    /// The Discoverable Partitions Specification convention, as systemd-repart
    /// applies it: the data partition's UUID is the first 128 bits of the
    /// root hash, the hash partition's the last 128 bits.
    #[test]
    fn partition_uuids_are_the_halves_of_the_root_hash() {
        for (disk, sector_size, sfdisk, root_hash) in [
            (DISK_512, 512, SFDISK_512, ROOT_HASH_512),
            (DISK_4096, 4096, SFDISK_4096, ROOT_HASH_4096),
        ] {
            let hex = root_hash.trim();
            assert_eq!(hex.len(), 64, "a SHA-256 root hash");
            // Straight from sfdisk's output, without our parser:
            let listed = sfdisk_partitions(sfdisk);
            let uuid_of = |t: &str| {
                listed
                    .iter()
                    .find(|s| json_value(s, "type") == Some(t))
                    .and_then(|s| json_value(s, "uuid"))
                    .map(|u| u.replace('-', "").to_lowercase())
            };
            assert_eq!(
                uuid_of("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709").as_deref(),
                Some(&hex[..32])
            );
            assert_eq!(
                uuid_of("2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5").as_deref(),
                Some(&hex[32..])
            );
            // And through ours, with the command line's view of the hash:
            let parts = parse(disk, sector_size).expect("table");
            let hash = crate::root_hash::RootHash::from_hex(hex).expect("root hash");
            let data = partition_by_uuid(&parts, &hash.data_partition_uuid()).expect("data");
            assert_eq!(data.type_guid, types::ROOT_X86_64);
            let verity = partition_by_uuid(&parts, &hash.hash_partition_uuid()).expect("hash");
            assert_eq!(verity.type_guid, types::ROOT_VERITY_X86_64);
        }
    }

    #[test]
    fn lookups_by_type() {
        let parts = parse(DISK_512, 512).expect("table");
        assert_eq!(
            partition_by_type(&parts, &types::VAR).map(|p| p.number),
            Some(4)
        );
        assert_eq!(partitions_by_type(&parts, types::ESP).count(), 1);
        let unknown = Guid([7; 16]);
        assert!(partition_by_type(&parts, &unknown).is_none());
        assert!(partition_by_uuid(&parts, &[7; 16]).is_none());
    }

    #[test]
    fn read_fetches_header_then_entries_from_a_device() {
        let mut dev = std::io::Cursor::new(DISK_4096);
        let (header, parts) = read(&mut dev, 4096).expect("reads");
        assert_eq!(header.sector_size, 4096);
        assert_eq!(parts, parse(DISK_4096, 4096).expect("table"));
        let mut short = std::io::Cursor::new(&DISK_512[..2048]);
        assert!(matches!(
            read(&mut short, 512),
            Err(GptError::Read { offset: 1024, .. })
        ));
    }

    #[test]
    fn a_corrupted_header_is_refused_by_its_crc() {
        let mut disk = DISK_512.to_vec();
        disk[512 + 40] ^= 1; // first usable LBA
        assert!(matches!(parse(&disk, 512), Err(GptError::HeaderCrc { .. })));
        let msg = parse(&disk, 512).expect_err("corrupt").to_string();
        assert!(msg.starts_with("GPT header is corrupt: CRC32 "), "{msg}");
    }

    #[test]
    fn a_corrupted_entry_is_refused_by_the_array_crc() {
        let mut disk = DISK_512.to_vec();
        disk[1024 + 128 + 20] ^= 0x80; // the unique GUID of partition 2
        assert!(matches!(
            parse(&disk, 512),
            Err(GptError::EntriesCrc { .. })
        ));
    }

    /// Rewrites header fields of the fixture and fixes up its CRC, to reach
    /// the checks behind the CRC.
    fn with_header(edit: impl Fn(&mut [u8])) -> Vec<u8> {
        let mut disk = DISK_512.to_vec();
        let hdr = &mut disk[512..512 + 92];
        edit(hdr);
        hdr[16..20].fill(0);
        let crc = crc32(hdr);
        hdr[16..20].copy_from_slice(&crc.to_le_bytes());
        disk
    }

    #[test]
    fn inconsistent_headers_are_refused_even_with_a_valid_crc() {
        let backup = with_header(|h| h[24..32].copy_from_slice(&9u64.to_le_bytes()));
        assert_eq!(parse(&backup, 512), Err(GptError::NotPrimary(9)));
        let odd = with_header(|h| h[84..88].copy_from_slice(&100u32.to_le_bytes()));
        assert_eq!(parse(&odd, 512), Err(GptError::EntrySize(100)));
        let huge = with_header(|h| h[80..84].copy_from_slice(&5000u32.to_le_bytes()));
        assert_eq!(parse(&huge, 512), Err(GptError::TooManyEntries(5000)));
        let low = with_header(|h| h[72..80].copy_from_slice(&1u64.to_le_bytes()));
        assert_eq!(parse(&low, 512), Err(GptError::EntriesLba(1)));
        // A usable area that ends before partition 4 does.
        let small = with_header(|h| h[48..56].copy_from_slice(&90_000u64.to_le_bytes()));
        assert!(matches!(
            parse(&small, 512),
            Err(GptError::BadExtent { number: 4, .. })
        ));
    }

    #[test]
    fn a_disk_without_gpt_is_refused() {
        assert_eq!(parse(&[0u8; 1024], 512), Err(GptError::NoSignature));
        assert!(matches!(
            parse(&[0u8; 100], 512),
            Err(GptError::Truncated { len: 100, .. })
        ));
        assert!(matches!(
            parse(&DISK_512[..4096], 512),
            Err(GptError::Truncated {
                what: "the GPT entry array",
                ..
            })
        ));
        assert_eq!(parse(DISK_512, 1024), Err(GptError::SectorSize(1024)));
    }

    #[test]
    fn guids_convert_between_disk_and_canonical_order_and_print_canonically() {
        let g = Guid::parse("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709").expect("parses");
        assert_eq!(g, types::ROOT_X86_64);
        assert_eq!(g.to_string(), "4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
        let disk = g.to_gpt_bytes();
        assert_eq!(&disk[..4], &[0xe3, 0xbc, 0x68, 0x4f]);
        assert_eq!(&disk[4..8], &[0xcd, 0xe8, 0xb1, 0x4d]);
        assert_eq!(&disk[8..], &g.0[8..]);
        assert_eq!(Guid::from_gpt_bytes(&disk), g);
        for bad in [
            "4f68bce3e8cd4db196e7fbcaf984b709",
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b70g",
            "4f68bce3-e8cd-4db1-96e7fbcaf984-b709",
            "+f68bce3-e8cd-4db1-96e7-fbcaf984b709",
        ] {
            assert_eq!(Guid::parse(bad), None, "{bad}");
        }
    }
}

/// The writers, [`set_partition_identity`] and [`restore_primary`], and
/// [`read_with_fallback`], against disks that sfdisk made and checks.
#[cfg(test)]
mod identity_tests {
    use super::*;
    use std::io::Cursor;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A file under the temp dir, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str) -> TempFile {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            TempFile(std::env::temp_dir().join(format!(
                "carapace-gpt-{}-{name}-{n}.img",
                std::process::id()
            )))
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The sfdisk binary; missing is a failure, never a skip.
    fn sfdisk() -> PathBuf {
        let path = std::env::var_os("PATH").unwrap_or_default();
        ["/usr/sbin", "/sbin"]
            .iter()
            .map(PathBuf::from)
            .chain(std::env::split_paths(&path))
            .map(|dir| dir.join("sfdisk"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "sfdisk not found in /usr/sbin, /sbin or PATH: install util-linux's sfdisk \
                     (Debian package fdisk); the GPT writing tests check with it"
                )
            })
    }

    const SCRIPT: &str = "label: gpt
label-id: 0C7E5C0E-0D6F-4B1E-9A36-91A6F1B3C2A1
start=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=11111111-2222-4333-8444-555555555501, name=\"esp\"
size=8192, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=11111111-2222-4333-8444-555555555502, name=\"root-a\"
size=2048, type=2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5, uuid=11111111-2222-4333-8444-555555555503, name=\"root-a-verity\"
size=8192, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=11111111-2222-4333-8444-555555555504, name=\"root-b\"
size=2048, type=2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5, uuid=11111111-2222-4333-8444-555555555505, name=\"root-b-verity\"
type=4D21B016-B534-45C2-A9FB-5C16E091FD2D, uuid=11111111-2222-4333-8444-555555555506, name=\"var\"
";

    /// A 16 MiB disk image with 512-byte sectors, partitioned by sfdisk.
    fn make_disk() -> TempFile {
        let disk = TempFile::new("disk");
        std::fs::File::create(&disk.0)
            .and_then(|f| f.set_len(16 << 20))
            .expect("disk file");
        let mut child = Command::new(sfdisk())
            .args(["--no-reread", "--no-tell-kernel", "--quiet"])
            .arg(&disk.0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs sfdisk");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), SCRIPT.as_bytes())
            .expect("script");
        let out = child.wait_with_output().expect("sfdisk");
        assert!(
            out.status.success(),
            "sfdisk failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        disk
    }

    /// `sfdisk --json`: the partitions as (uuid, name), by number.
    fn sfdisk_identities(disk: &Path) -> Vec<(String, String)> {
        let out = Command::new(sfdisk())
            .arg("--json")
            .arg(disk)
            .output()
            .expect("runs sfdisk");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let parts = json["partitiontable"]["partitions"]
            .as_array()
            .expect("partitions");
        parts
            .iter()
            .map(|p| {
                (
                    p["uuid"].as_str().expect("uuid").to_string(),
                    p["name"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// `sfdisk --verify` finds nothing wrong, on either copy.
    fn sfdisk_verifies(disk: &Path) {
        let out = Command::new(sfdisk())
            .arg("--verify")
            .arg(disk)
            .output()
            .expect("runs sfdisk");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(stdout.contains("No errors detected."), "{stdout}{stderr}");
        // A corrupt copy is only mentioned on stderr.
        assert!(stderr.trim().is_empty(), "{stderr}");
    }

    /// Both copies, read and checked by this module: (primary header,
    /// partitions, backup header, primary array, backup array).
    fn both_copies(disk: &[u8], ss: usize) -> (Header, Vec<Partition>, Header, Vec<u8>, Vec<u8>) {
        let mut dev = Cursor::new(disk);
        let (header, parts) = read(&mut dev, ss).expect("primary");
        let primary = TableCopy::read(&mut dev, ss, 1).expect("primary copy");
        let backup = TableCopy::read(&mut dev, ss, header.alternate_lba).expect("backup copy");
        assert_eq!(backup.header.partitions(&backup.entries), Ok(parts.clone()));
        (
            header,
            parts,
            backup.header,
            primary.entries,
            backup.entries,
        )
    }

    fn set(disk: &Path, number: u32, guid: Guid, name: &str) -> Result<(), IdentityError> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk)
            .expect("open disk");
        set_partition_identity(&mut f, 512, number, guid, name)
    }

    #[test]
    fn one_entry_changes_in_both_copies_and_sfdisk_agrees() {
        let disk = make_disk();
        let before = std::fs::read(&disk.0).expect("read");
        sfdisk_verifies(&disk.0);
        let listed_before = sfdisk_identities(&disk.0);
        let (header, parts_before, ..) = both_copies(&before, 512);

        let guid = Guid::parse("a1b2c3d4-e5f6-4711-8899-aabbccddeeff").expect("guid");
        let name = "carapace_2.0.0 ä€ 36 units long.....";
        assert_eq!(name.encode_utf16().count(), 36);
        set(&disk.0, 4, guid, name).expect("set");
        let after = std::fs::read(&disk.0).expect("read");

        // sfdisk: no errors, and only #4's identity is new.
        sfdisk_verifies(&disk.0);
        let listed = sfdisk_identities(&disk.0);
        let mut expected = listed_before.clone();
        expected[3] = (
            "A1B2C3D4-E5F6-4711-8899-AABBCCDDEEFF".to_string(),
            name.to_string(),
        );
        assert_eq!(listed, expected);

        // Our reader: both copies valid and equal, only #4 changed.
        let (header_after, parts, backup, primary_entries, backup_entries) =
            both_copies(&after, 512);
        assert_eq!(primary_entries, backup_entries);
        assert_eq!(
            Header {
                entries_crc: header_after.entries_crc,
                ..header.clone()
            },
            header_after
        );
        assert_ne!(header.entries_crc, header_after.entries_crc);
        assert_eq!(backup.entries_crc, header_after.entries_crc);
        let mut want = parts_before.clone();
        want[3].unique_guid = guid;
        want[3].name = name.to_string();
        assert_eq!(parts, want);

        // Byte for byte, only the two headers and the two copies of entry 4 changed.
        let backup_entry = (backup.entries_lba * 512 + 3 * 128) as usize;
        let changed = |at: usize| {
            (512..1024).contains(&at)
                || (1024 + 3 * 128..1024 + 4 * 128).contains(&at)
                || (backup_entry..backup_entry + 128).contains(&at)
                || at >= before.len() - 512
        };
        for (at, (a, b)) in before.iter().zip(&after).enumerate() {
            assert!(a == b || changed(at), "byte {at} changed");
        }
        assert_eq!(before.len(), after.len());

        // Again, on another entry, with an empty name.
        let other = Guid([0x42; 16]);
        set(&disk.0, 1, other, "").expect("set");
        sfdisk_verifies(&disk.0);
        expected[0] = (other.to_string().to_uppercase(), String::new());
        assert_eq!(sfdisk_identities(&disk.0), expected);
        // Setting the identity an entry already has is allowed and changes nothing.
        let now = std::fs::read(&disk.0).expect("read");
        set(&disk.0, 1, other, "").expect("set");
        assert_eq!(std::fs::read(&disk.0).expect("read"), now);
    }

    /// Runs `set_partition_identity` on a copy of `disk` and checks that it
    /// fails with `error` and writes nothing.
    fn refused(disk: &[u8], number: u32, guid: Guid, name: &str, error: IdentityError) {
        let mut dev = Cursor::new(disk.to_vec());
        let got = set_partition_identity(&mut dev, 512, number, guid, name);
        assert_eq!(got, Err(error));
        assert!(dev.into_inner() == disk, "nothing may be written");
    }

    /// `disk` with the header at `lba` edited and its CRC fixed.
    fn edit_header(disk: &[u8], lba: usize, edit: impl Fn(&mut [u8])) -> Vec<u8> {
        let mut disk = disk.to_vec();
        let hdr = &mut disk[lba * 512..lba * 512 + 92];
        edit(hdr);
        hdr[16..20].fill(0);
        let crc = crc32(hdr);
        hdr[16..20].copy_from_slice(&crc.to_le_bytes());
        disk
    }

    #[test]
    fn a_corrupt_or_inconsistent_table_is_refused_and_nothing_is_written() {
        let disk = make_disk();
        let good = std::fs::read(&disk.0).expect("read");
        let last = good.len() / 512 - 1;
        let backup_entries = (last - 32) * 512;
        let g = Guid([0x77; 16]);
        let flip = |at: usize| {
            let mut d = good.clone();
            d[at] ^= 0x01;
            d
        };
        type Expected = fn(&IdentityError) -> bool;
        let cases: Vec<(Vec<u8>, Expected, &str)> = vec![
            (
                flip(512 + 60),
                |e| matches!(e, IdentityError::Primary(GptError::HeaderCrc { .. })),
                "primary header",
            ),
            (
                flip(1024 + 128 + 60),
                |e| matches!(e, IdentityError::Primary(GptError::EntriesCrc { .. })),
                "primary entries",
            ),
            (
                flip(last * 512 + 60),
                |e| matches!(e, IdentityError::Backup(GptError::HeaderCrc { .. })),
                "backup header",
            ),
            (
                flip(backup_entries + 300),
                |e| matches!(e, IdentityError::Backup(GptError::EntriesCrc { .. })),
                "backup entries",
            ),
            (
                flip(last * 512),
                |e| matches!(e, IdentityError::Backup(GptError::NoSignature)),
                "backup signature",
            ),
            (
                edit_header(&good, last, |h| {
                    h[40..48].copy_from_slice(&34u64.to_le_bytes())
                }),
                |e| *e == IdentityError::Mismatch("the first usable LBA"),
                "backup geometry",
            ),
            (
                edit_header(&good, last, |h| {
                    h[24..32].copy_from_slice(&5u64.to_le_bytes())
                }),
                |e| matches!(e, IdentityError::BackupLba { says: 5, .. }),
                "backup position",
            ),
            (
                edit_header(&good, 1, |h| {
                    h[72..80].copy_from_slice(&3000u64.to_le_bytes())
                }),
                |e| *e == IdentityError::Primary(GptError::EntriesLba(3000)),
                "primary array inside the usable area",
            ),
        ];
        for (bad, is_expected, what) in cases {
            let mut dev = Cursor::new(bad.clone());
            let got = set_partition_identity(&mut dev, 512, 2, g, "x");
            let err = got.expect_err(what);
            assert!(is_expected(&err), "{what}: {err}");
            assert!(dev.into_inner() == bad, "{what}: nothing may be written");
        }

        // Both arrays valid, each with its own header CRC, but different.
        let mut differ = good.clone();
        differ[backup_entries + 56] ^= 0x20; // the name of entry 1 in the backup
        let crc = crc32(&differ[backup_entries..backup_entries + 128 * 128]);
        let differ = edit_header(&differ, last, |h| {
            h[88..92].copy_from_slice(&crc.to_le_bytes())
        });
        refused(&differ, 2, g, "x", IdentityError::EntriesDiffer);

        // The file on disk is refused the same way, untouched.
        std::fs::write(&disk.0, flip(512 + 60)).expect("write");
        assert!(matches!(
            set(&disk.0, 2, g, "x"),
            Err(IdentityError::Primary(_))
        ));
        assert_eq!(std::fs::read(&disk.0).expect("read"), flip(512 + 60));
    }

    #[test]
    fn bad_requests_are_refused_and_nothing_is_written() {
        let disk = make_disk();
        let good = std::fs::read(&disk.0).expect("read");
        let g = Guid([0x77; 16]);
        let long = "a".repeat(37);
        refused(
            &good,
            2,
            g,
            &long,
            IdentityError::NameTooLong {
                name: long.clone(),
                units: 37,
            },
        );
        refused(
            &good,
            2,
            g,
            "a\0b",
            IdentityError::NameChar {
                name: "a\0b".into(),
                character: '\0',
            },
        );
        refused(
            &good,
            2,
            g,
            "crab 🦀",
            IdentityError::NameChar {
                name: "crab 🦀".into(),
                character: '🦀',
            },
        );
        refused(&good, 2, Guid([0; 16]), "x", IdentityError::NilGuid);
        let esp = Guid::parse("11111111-2222-4333-8444-555555555501").expect("guid");
        refused(
            &good,
            2,
            esp,
            "x",
            IdentityError::DuplicateGuid {
                guid: esp,
                number: 1,
            },
        );
        refused(
            &good,
            0,
            g,
            "x",
            IdentityError::NoEntry {
                number: 0,
                count: 128,
            },
        );
        refused(
            &good,
            129,
            g,
            "x",
            IdentityError::NoEntry {
                number: 129,
                count: 128,
            },
        );
        refused(&good, 7, g, "x", IdentityError::Unused(7));
        let mut dev = Cursor::new(good.clone());
        assert_eq!(
            set_partition_identity(&mut dev, 1024, 2, g, "x"),
            Err(IdentityError::SectorSize(1024))
        );
        assert!(dev.into_inner() == good);
        let msg = IdentityError::NameTooLong {
            name: long.clone(),
            units: 37,
        }
        .to_string();
        assert!(
            msg.contains("37 UTF-16 code units, a GPT entry holds 36"),
            "{msg}"
        );
        // A disk too short to hold its backup.
        let mut short = Cursor::new(good[..good.len() - 512].to_vec());
        assert!(matches!(
            set_partition_identity(&mut short, 512, 2, g, "x"),
            Err(IdentityError::Backup(GptError::Read { .. }))
        ));
    }

    /// A disk with 4096-byte sectors (sfdisk cannot make one in a plain
    /// file): the systemd-repart fixture's table, completed with the
    /// backup copy at the end of a sparse file.
    fn disk_4096() -> (TempFile, std::fs::File) {
        let header = Header::parse(DISK_4096_HEAD, 4096).expect("header");
        let file = TempFile::new("disk4k");
        let size = (header.alternate_lba + 1) * 4096;
        let mut image = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&file.0)
            .expect("create");
        image.set_len(size).expect("size");
        let (offset, len) = header.entries_span();
        let entries = DISK_4096_HEAD[offset as usize..offset as usize + len].to_vec();
        let backup_entries_lba = header.last_usable_lba + 1;
        let mut backup = DISK_4096_HEAD[4096..8192].to_vec();
        backup[24..32].copy_from_slice(&header.alternate_lba.to_le_bytes());
        backup[32..40].copy_from_slice(&1u64.to_le_bytes());
        backup[72..80].copy_from_slice(&backup_entries_lba.to_le_bytes());
        backup[16..20].fill(0);
        let crc = crc32(&backup[..92]);
        backup[16..20].copy_from_slice(&crc.to_le_bytes());
        for (at, bytes) in [
            (0, DISK_4096_HEAD),
            (backup_entries_lba * 4096, &entries[..]),
            (header.alternate_lba * 4096, &backup[..]),
        ] {
            write_at(&mut image, at, bytes).expect("write");
        }
        (file, image)
    }

    #[test]
    fn works_with_4096_byte_sectors() {
        let (file, mut image) = disk_4096();
        let guid = Guid([0x5a; 16]);
        set_partition_identity(&mut image, 4096, 3, guid, "root-b-verity").expect("set");
        let after = std::fs::read(&file.0).expect("read");
        let (_, parts, _, primary, backup) = both_copies(&after, 4096);
        assert_eq!(primary, backup);
        let mut want = parse(DISK_4096_HEAD, 4096).expect("before");
        want[2].unique_guid = guid;
        want[2].name = "root-b-verity".into();
        assert_eq!(parts, want);
        // Read as 512-byte sectors it is no table, and nothing is written.
        let mut dev = Cursor::new(after.clone());
        assert_eq!(
            set_partition_identity(&mut dev, 512, 3, guid, "x"),
            Err(IdentityError::Primary(GptError::NoSignature))
        );
    }

    /// Tears the primary copy of a good disk file with `tear`, checks that
    /// [`read_with_fallback`] reads the backup instead (and why), restores
    /// the primary, and checks that the disk is again byte for byte the
    /// good one, which plain [`read`] reads.
    fn torn_then_restored(
        file: &Path,
        ss: usize,
        tear: impl Fn(&mut Vec<u8>),
        why: impl Fn(&GptError) -> bool,
        what: &str,
    ) {
        let good = std::fs::read(file).expect("read");
        let (good_header, good_parts) = read(&mut Cursor::new(&good), ss).expect("good disk");
        let mut torn = good.clone();
        tear(&mut torn);
        std::fs::write(file, &torn).expect("write");
        assert!(read(&mut Cursor::new(&torn), ss).is_err(), "{what}: torn");

        let mut disk = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(file)
            .expect("open");
        let table = read_with_fallback(&mut disk, ss).expect(what);
        assert_eq!(table.partitions, good_parts, "{what}: the backup's table");
        assert_eq!(table.header.alternate_lba, 1, "{what}: a backup header");
        let TableSource::Backup { lba, primary_error } = &table.source else {
            panic!("{what}: read {:?}", table.source);
        };
        assert_eq!(*lba, good_header.alternate_lba, "{what}");
        assert!(why(primary_error), "{what}: {primary_error}");

        let restored = restore_primary(&mut disk, ss as u64).expect(what);
        assert_eq!(
            restored,
            Restored::FromBackup {
                primary_error: primary_error.clone()
            },
            "{what}"
        );
        drop(disk);
        let after = std::fs::read(file).expect("read");
        assert!(after == good, "{what}: the disk is what it was");
        let (header, parts) = read(&mut Cursor::new(&after), ss).expect(what);
        assert_eq!((header, parts), (good_header, good_parts), "{what}");
        let table = read_with_fallback(&mut Cursor::new(&after), ss).expect(what);
        assert_eq!(table.source, TableSource::Primary, "{what}");
    }

    #[test]
    fn a_torn_primary_is_read_from_the_backup_and_restored() {
        let disk = make_disk();
        let good = std::fs::read(&disk.0).expect("read");
        type Tear = fn(&mut Vec<u8>);
        type Why = fn(&GptError) -> bool;
        let cases: [(Tear, Why, &str); 5] = [
            (
                |d| d[1024 + 128 + 60] ^= 0x01,
                |e| matches!(e, GptError::EntriesCrc { .. }),
                "entries CRC wrong",
            ),
            (
                // A write of the array cut after its first sector.
                |d| d[1024 + 512..1024 + 1024].fill(0xff),
                |e| matches!(e, GptError::EntriesCrc { .. }),
                "entries half written",
            ),
            (
                |d| d[512..1024].fill(0),
                |e| *e == GptError::NoSignature,
                "header zeroed",
            ),
            (
                |d| d[512 + 40] ^= 0x01,
                |e| matches!(e, GptError::HeaderCrc { .. }),
                "header CRC wrong",
            ),
            (
                |d| d[512..1024 + 128 * 128].fill(0),
                |e| *e == GptError::NoSignature,
                "header and entries zeroed",
            ),
        ];
        for (tear, why, what) in cases {
            std::fs::write(&disk.0, &good).expect("write");
            torn_then_restored(&disk.0, 512, tear, why, what);
            sfdisk_verifies(&disk.0);
        }
    }

    #[test]
    fn a_cut_between_the_two_copies_is_mended_from_the_primary() {
        let disk = make_disk();
        let before = std::fs::read(&disk.0).expect("read");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk.0)
            .expect("open");
        assert_eq!(sync_backup(&mut f, 512), Ok(false), "the copies agree");
        set_partition_identity(&mut f, 512, 4, Guid([0x42; 16]), "carapace_0.2.0").expect("set");
        // The cut: the backup has the new identity, the primary the old one.
        let mut now = std::fs::read(&disk.0).expect("read");
        now[512..34 * 512].copy_from_slice(&before[512..34 * 512]);
        std::fs::write(&disk.0, &now).expect("write");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk.0)
            .expect("open");
        assert!(
            set_partition_identity(&mut f, 512, 4, Guid([0x43; 16]), "_empty").is_err(),
            "two whole copies that differ are refused"
        );
        assert_eq!(sync_backup(&mut f, 512), Ok(true));
        assert_eq!(
            std::fs::read(&disk.0).expect("read"),
            before,
            "the disk is as it was before the change"
        );
        set_partition_identity(&mut f, 512, 4, Guid([0x43; 16]), "_empty").expect("writable again");
        sfdisk_verifies(&disk.0);
    }

    #[test]
    fn a_torn_primary_with_4096_byte_sectors_is_restored() {
        let (file, image) = disk_4096();
        drop(image);
        torn_then_restored(
            &file.0,
            4096,
            |d| d[2 * 4096 + 3 * 128 + 20] ^= 0x80,
            |e| matches!(e, GptError::EntriesCrc { .. }),
            "4096: entries CRC wrong",
        );
        torn_then_restored(
            &file.0,
            4096,
            |d| d[4096..8192].fill(0),
            |e| *e == GptError::NoSignature,
            "4096: header zeroed",
        );
    }

    #[test]
    fn a_sound_primary_is_read_and_never_rewritten() {
        let disk = make_disk();
        let good = std::fs::read(&disk.0).expect("read");
        let mut dev = Cursor::new(good.clone());
        let table = read_with_fallback(&mut dev, 512).expect("read");
        assert_eq!(table.source, TableSource::Primary);
        assert_eq!(Ok((table.header, table.partitions)), read(&mut dev, 512));
        assert_eq!(restore_primary(&mut dev, 512), Ok(Restored::NotNeeded));
        assert!(dev.into_inner() == good, "nothing may be written");
        assert_eq!(
            restore_primary(&mut Cursor::new(good.clone()), 1024),
            Err(RestoreError::SectorSize(1024))
        );
    }

    #[test]
    fn both_copies_damaged_is_refused_naming_both_and_nothing_is_written() {
        let disk = make_disk();
        let mut bad = std::fs::read(&disk.0).expect("read");
        let last = bad.len() / 512 - 1;
        bad[1024 + 128 + 60] ^= 0x01; // primary entries
        bad[last * 512 + 60] ^= 0x01; // backup header
        let mut dev = Cursor::new(bad.clone());
        let err = read_with_fallback(&mut dev, 512).expect_err("both bad");
        assert!(
            matches!(
                &err,
                GptError::BothCopies { primary, backup_lba, backup }
                    if matches!(**primary, GptError::EntriesCrc { .. })
                        && *backup_lba == last as u64
                        && matches!(**backup, GptError::HeaderCrc { .. })
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("GPT entry array is corrupt: ")
                && msg.contains(&format!(
                    "; the backup GPT at LBA {last} is no better: GPT header is corrupt: "
                )),
            "{msg}"
        );
        assert_eq!(
            restore_primary(&mut dev, 512),
            Err(RestoreError::NoGoodCopy(err))
        );
        assert!(dev.into_inner() == bad, "nothing may be written");

        // A backup header that says it is somewhere else.
        let mut moved = edit_header(&std::fs::read(&disk.0).expect("read"), last, |h| {
            h[24..32].copy_from_slice(&7u64.to_le_bytes())
        });
        moved[512..1024].fill(0);
        let err = read_with_fallback(&mut Cursor::new(&moved), 512).expect_err("misplaced");
        assert!(
            matches!(&err, GptError::BothCopies { backup, .. }
                if **backup == GptError::Misplaced { lba: last as u64, says: 7 }),
            "{err:?}"
        );
    }

    #[test]
    fn a_disk_with_no_gpt_in_either_place_is_no_gpt() {
        let blank = vec![0u8; 1 << 20];
        assert_eq!(
            read_with_fallback(&mut Cursor::new(&blank), 512),
            Err(GptError::NoSignature)
        );
        assert!(matches!(
            read_with_fallback(&mut Cursor::new(&blank[..600]), 512),
            Err(GptError::Read { offset: 0, .. })
        ));
        let mut dev = Cursor::new(blank.clone());
        assert_eq!(
            restore_primary(&mut dev, 512),
            Err(RestoreError::NoGoodCopy(GptError::NoSignature))
        );
        assert!(dev.into_inner() == blank);
    }

    const DISK_4096_HEAD: &[u8] = super::tests::DISK_4096;
}
