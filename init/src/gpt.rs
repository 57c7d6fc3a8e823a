//! The GUID partition table, parsed from bytes: the primary header at LBA 1
//! (signature, CRC32, geometry), the partition entry array (its own CRC32),
//! and lookups by partition UUID and by type — how stage 1 finds the
//! partitions that `roothash=` names.
//!
//! Pure: nothing here opens a device except [`read`], which only reads the
//! bytes the header points at from any `Read + Seek`. GUIDs are kept in
//! canonical order (the order they are printed in, RFC 4122), converted from
//! the mixed-endian form the GPT stores. Only the primary header is read: a
//! disk whose primary table is damaged is refused, not repaired from the
//! backup, because a root disk that does not match what was built is no disk
//! to boot from.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};

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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
        let lba1 = &head[sector_size..need];
        if &lba1[0..8] != SIGNATURE {
            return Err(GptError::NoSignature);
        }
        let size = le32(lba1, 12);
        if !(92..=sector_size as u32).contains(&size) {
            return Err(GptError::HeaderSize(size));
        }
        let stored = le32(lba1, 16);
        let mut copy = lba1[..size as usize].to_vec();
        copy[16..20].fill(0); // The CRC covers the header with its own field zeroed.
        let computed = crc32(&copy);
        if stored != computed {
            return Err(GptError::HeaderCrc { stored, computed });
        }
        let my_lba = le64(lba1, 24);
        if my_lba != 1 {
            return Err(GptError::NotPrimary(my_lba));
        }
        let header = Header {
            sector_size,
            alternate_lba: le64(lba1, 32),
            first_usable_lba: le64(lba1, 40),
            last_usable_lba: le64(lba1, 48),
            disk_guid: guid_at(lba1, 56),
            entries_lba: le64(lba1, 72),
            entry_count: le32(lba1, 80),
            entry_size: le32(lba1, 84),
            entries_crc: le32(lba1, 88),
        };
        if header.first_usable_lba > header.last_usable_lba {
            return Err(GptError::UsableArea {
                first: header.first_usable_lba,
                last: header.last_usable_lba,
            });
        }
        if header.entries_lba < 2 {
            return Err(GptError::EntriesLba(header.entries_lba));
        }
        let es = header.entry_size;
        if es < 128 || !es.is_power_of_two() || es > 4096 {
            return Err(GptError::EntrySize(es));
        }
        if header.entry_count > MAX_ENTRIES {
            return Err(GptError::TooManyEntries(header.entry_count));
        }
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
/// [`crate::cmdline::RootHash::data_partition_uuid`] gives it).
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
            let hash = crate::cmdline::RootHash::from_hex(hex).expect("root hash");
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
