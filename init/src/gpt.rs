//! The GUID partition table, parsed from bytes: the header at LBA 1 (checked
//! by its CRC32), the entry array (checked too), and lookups by partition UUID
//! and type, the way stage 1 finds the partitions a root hash names.

use std::fmt;

/// A GUID in canonical (RFC 4122, as printed) byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// From GPT's on-disk, mixed-endian form: the first three fields are little-endian.
    pub fn from_gpt_bytes(b: &[u8; 16]) -> Guid {
        let mut c = *b;
        c[0..4].reverse();
        c[4..6].reverse();
        c[6..8].reverse();
        Guid(c)
    }

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub fn parse(s: &str) -> Option<Guid> {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || s.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Guid(out))
    }

    pub const fn from_canonical(bytes: [u8; 16]) -> Guid {
        Guid(bytes)
    }
}

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

/// Partition types of the Discoverable Partitions Specification.
pub mod types {
    use super::Guid;

    const fn g(b: [u8; 16]) -> Guid {
        Guid::from_canonical(b)
    }
    /// 4f68bce3-e8cd-4db1-96e7-fbcaf984b709
    pub const ROOT_X86_64: Guid = g([
        0x4f, 0x68, 0xbc, 0xe3, 0xe8, 0xcd, 0x4d, 0xb1, 0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84, 0xb7,
        0x09,
    ]);
    /// 2c7357ed-ebd2-46d9-aec1-23d437ec2bf5
    pub const ROOT_VERITY_X86_64: Guid = g([
        0x2c, 0x73, 0x57, 0xed, 0xeb, 0xd2, 0x46, 0xd9, 0xae, 0xc1, 0x23, 0xd4, 0x37, 0xec, 0x2b,
        0xf5,
    ]);
    /// 4d21b016-b534-45c2-a9fb-5c16e091fd2d
    pub const VAR: Guid = g([
        0x4d, 0x21, 0xb0, 0x16, 0xb5, 0x34, 0x45, 0xc2, 0xa9, 0xfb, 0x5c, 0x16, 0xe0, 0x91, 0xfd,
        0x2d,
    ]);
    /// c12a7328-f81f-11d2-ba4b-00a0c93ec93b
    pub const ESP: Guid = g([
        0xc1, 0x2a, 0x73, 0x28, 0xf8, 0x1f, 0x11, 0xd2, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9,
        0x3b,
    ]);
}

/// One used entry of the partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as the kernel numbers partition devices.
    pub number: u32,
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GptError {
    #[error("too short for a GPT ({len} bytes, need {need})")]
    Truncated { len: usize, need: usize },
    #[error("no GPT signature at LBA 1")]
    NoSignature,
    #[error("GPT header CRC mismatch (stored {stored:08x}, computed {computed:08x})")]
    HeaderCrc { stored: u32, computed: u32 },
    #[error("GPT header size {0} is out of range")]
    HeaderSize(u32),
    #[error("GPT entry size {0} is invalid")]
    EntrySize(u32),
    #[error("GPT has {0} entries, more than the 1024 we accept")]
    TooManyEntries(u32),
    #[error("GPT entry array CRC mismatch (stored {stored:08x}, computed {computed:08x})")]
    EntriesCrc { stored: u32, computed: u32 },
}

/// CRC-32 (IEEE 802.3, reflected), as the GPT uses.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Where the header says the entry array is, so the caller can read enough:
/// (byte offset, byte length). `head` holds at least the first two sectors.
pub fn entries_location(head: &[u8], sector: usize) -> Result<(u64, usize), GptError> {
    let hdr = header(head, sector)?;
    let lba = u64_at(hdr, 72);
    let count = u32_at(hdr, 80);
    let size = u32_at(hdr, 84);
    check_entry_geometry(count, size)?;
    Ok((lba * sector as u64, count as usize * size as usize))
}

fn check_entry_geometry(count: u32, size: u32) -> Result<(), GptError> {
    if size < 128 || !size.is_multiple_of(8) || size > 4096 {
        return Err(GptError::EntrySize(size));
    }
    if count > 1024 {
        return Err(GptError::TooManyEntries(count));
    }
    Ok(())
}

fn header(head: &[u8], sector: usize) -> Result<&[u8], GptError> {
    if head.len() < sector + 92 {
        return Err(GptError::Truncated {
            len: head.len(),
            need: sector + 92,
        });
    }
    let hdr = &head[sector..];
    if &hdr[0..8] != b"EFI PART" {
        return Err(GptError::NoSignature);
    }
    let size = u32_at(hdr, 12);
    if !(92..=sector as u32).contains(&size) || hdr.len() < size as usize {
        return Err(GptError::HeaderSize(size));
    }
    let stored = u32_at(hdr, 16);
    let mut copy = hdr[..size as usize].to_vec();
    copy[16..20].fill(0);
    let computed = crc32(&copy);
    if stored != computed {
        return Err(GptError::HeaderCrc { stored, computed });
    }
    Ok(&hdr[..size as usize])
}

/// Parses the partition table from the first sectors of a disk (`head`) and
/// the entry array bytes (`entries`, as located by [`entries_location`]).
pub fn parse(head: &[u8], entries: &[u8], sector: usize) -> Result<Vec<Partition>, GptError> {
    let hdr = header(head, sector)?;
    let count = u32_at(hdr, 80);
    let size = u32_at(hdr, 84);
    check_entry_geometry(count, size)?;
    let need = count as usize * size as usize;
    if entries.len() < need {
        return Err(GptError::Truncated {
            len: entries.len(),
            need,
        });
    }
    let stored = u32_at(hdr, 88);
    let computed = crc32(&entries[..need]);
    if stored != computed {
        return Err(GptError::EntriesCrc { stored, computed });
    }
    let mut out = Vec::new();
    for i in 0..count as usize {
        let e = &entries[i * size as usize..(i + 1) * size as usize];
        let mut t = [0u8; 16];
        t.copy_from_slice(&e[0..16]);
        if t == [0u8; 16] {
            continue;
        }
        let mut u = [0u8; 16];
        u.copy_from_slice(&e[16..32]);
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        out.push(Partition {
            number: i as u32 + 1,
            type_guid: Guid::from_gpt_bytes(&t),
            unique_guid: Guid::from_gpt_bytes(&u),
            first_lba: u64_at(e, 32),
            last_lba: u64_at(e, 40),
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(out)
}

/// The partition whose unique GUID is `uuid`.
pub fn partition_by_uuid<'a>(parts: &'a [Partition], uuid: &Guid) -> Option<&'a Partition> {
    parts.iter().find(|p| p.unique_guid == *uuid)
}

/// The partitions of type `t`, in table order.
pub fn partitions_by_type(parts: &[Partition], t: Guid) -> impl Iterator<Item = &Partition> {
    parts.iter().filter(move |p| p.type_guid == t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first 34 sectors of a disk made by systemd-repart (see
    /// testdata/make-fixtures.sh): ESP, root with Verity=data, its root-verity,
    /// and var.
    const DISK_HEAD: &[u8] = include_bytes!("../testdata/repart-disk-head.bin");
    /// The root hash repart printed for that disk.
    const ROOT_HASH: &str = include_str!("../testdata/repart-disk-roothash.txt");

    fn parse_fixture() -> Vec<Partition> {
        let (off, len) = entries_location(DISK_HEAD, 512).expect("header");
        parse(DISK_HEAD, &DISK_HEAD[off as usize..off as usize + len], 512).expect("table")
    }

    #[test]
    fn crc32_matches_the_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn reads_the_table_systemd_repart_wrote() {
        let parts = parse_fixture();
        let types: Vec<Guid> = parts.iter().map(|p| p.type_guid).collect();
        assert_eq!(
            types,
            vec![
                types::ESP,
                types::ROOT_X86_64,
                types::ROOT_VERITY_X86_64,
                types::VAR
            ]
        );
        assert_eq!(parts[0].number, 1);
        assert_eq!(parts[3].number, 4);
        assert_eq!(parts[1].name, "root-x86-64");
        assert!(parts.iter().all(|p| p.last_lba >= p.first_lba));
    }

    #[test]
    fn partition_uuids_are_the_halves_of_the_root_hash() {
        let parts = parse_fixture();
        let hash = crate::cmdline::RootHash::from_hex(ROOT_HASH.trim()).expect("fixture hash");
        let data =
            partition_by_uuid(&parts, &Guid(hash.data_partition_uuid())).expect("data partition");
        assert_eq!(data.type_guid, types::ROOT_X86_64);
        let verity =
            partition_by_uuid(&parts, &Guid(hash.hash_partition_uuid())).expect("hash partition");
        assert_eq!(verity.type_guid, types::ROOT_VERITY_X86_64);
    }

    #[test]
    fn corrupted_header_is_refused() {
        let mut disk = DISK_HEAD.to_vec();
        disk[512 + 40] ^= 1;
        assert!(matches!(
            entries_location(&disk, 512),
            Err(GptError::HeaderCrc { .. })
        ));
    }

    #[test]
    fn corrupted_entries_are_refused() {
        let (off, len) = entries_location(DISK_HEAD, 512).expect("header");
        let mut entries = DISK_HEAD[off as usize..off as usize + len].to_vec();
        entries[200] ^= 0x80;
        assert!(matches!(
            parse(DISK_HEAD, &entries, 512),
            Err(GptError::EntriesCrc { .. })
        ));
    }

    #[test]
    fn a_disk_without_gpt_is_refused() {
        assert_eq!(
            entries_location(&[0u8; 1024], 512),
            Err(GptError::NoSignature)
        );
        assert!(matches!(
            entries_location(&[0u8; 100], 512),
            Err(GptError::Truncated { .. })
        ));
    }

    #[test]
    fn guids_print_and_parse_canonically() {
        let g = Guid::parse("4f68bce3-e8cd-4db1-96e7-fbcaf984b709").expect("parses");
        assert_eq!(g, types::ROOT_X86_64);
        assert_eq!(g.to_string(), "4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
        assert!(Guid::parse("4f68bce3e8cd4db196e7fbcaf984b709").is_none());
    }
}
