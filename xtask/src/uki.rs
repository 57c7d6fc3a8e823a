//! The unified kernel image, assembled here: the systemd-stub with our
//! sections appended (`.osrel`, `.cmdline`, `.uname`, `.initrd`, `.linux`),
//! each after the last at the stub's section alignment. mkosi 24.3 builds
//! the UKI with systemd 254's ukify, which merges its SBAT lines into the
//! stub's `.sbat` in place: the grown section runs into the stub's
//! `.sdmagic`, and the stub prints "Overlapping PE sections detected" on
//! every boot. Appending every section, the stub's own left as they are,
//! gives a UKI whose sections never overlap ([`check_layout`] refuses one
//! that does). It also lets the command line carry the root hash of slot A's
//! 4 KiB verity tree ([`crate::reverity`]) from the start.
//!
//! The stub's headers are read and written through the `object` crate's
//! PE structures.

use anyhow::{bail, ensure, Context, Result};
use object::pe::{
    ImageDosHeader, ImageNtHeaders64, ImageSectionHeader, SectionFlags, IMAGE_SCN_CNT_CODE,
    IMAGE_SCN_CNT_INITIALIZED_DATA, IMAGE_SCN_MEM_READ,
};
use object::pod::{from_bytes, from_bytes_mut, slice_from_bytes};
use object::LittleEndian as LE;

/// What goes into a UKI besides the stub.
pub struct Parts<'a> {
    pub os_release: &'a [u8],
    /// Without the terminating NUL, which is added (systemd-stub 252 wants it).
    pub cmdline: &'a str,
    /// The kernel release (`uname -r`).
    pub uname: &'a str,
    pub initrd: &'a [u8],
    pub linux: &'a [u8],
}

fn round_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

/// Where the NT headers and the section table are.
struct Layout {
    nt: usize,
    table: usize,
    sections: usize,
}

fn layout(pe: &[u8]) -> Result<Layout> {
    let (dos, _) = from_bytes::<ImageDosHeader>(pe)
        .ok()
        .context("the stub is too short for a DOS header")?;
    ensure!(dos.e_magic.get(LE) == 0x5a4d, "the stub has no MZ header");
    let nt = usize::try_from(dos.e_lfanew.get(LE))?;
    let (headers, _) = from_bytes::<ImageNtHeaders64>(pe.get(nt..).unwrap_or_default())
        .ok()
        .context("the stub is too short for its PE headers")?;
    ensure!(
        headers.signature.get(LE) == 0x0000_4550,
        "the stub has no PE signature"
    );
    ensure!(
        headers.optional_header.magic.get(LE) == 0x20b,
        "the stub is not a PE32+ image"
    );
    let table = nt + 4 + 20 + usize::from(headers.file_header.size_of_optional_header.get(LE));
    Ok(Layout {
        nt,
        table,
        sections: usize::from(headers.file_header.number_of_sections.get(LE)),
    })
}

fn section_headers(pe: &[u8], at: &Layout) -> Result<Vec<ImageSectionHeader>> {
    let (table, _) =
        slice_from_bytes::<ImageSectionHeader>(pe.get(at.table..).unwrap_or_default(), at.sections)
            .ok()
            .context("the section table lies past the end of the file")?;
    Ok(table.to_vec())
}

fn name_of(section: &ImageSectionHeader) -> String {
    let end = section.name.iter().position(|&b| b == 0).unwrap_or(8);
    String::from_utf8_lossy(&section.name[..end]).into_owned()
}

/// Refuses a PE image two of whose sections overlap in memory.
pub fn check_layout(pe: &[u8]) -> Result<()> {
    let at = layout(pe)?;
    let mut spans: Vec<(u64, u64, String)> = section_headers(pe, &at)?
        .iter()
        .map(|s| {
            let start = u64::from(s.virtual_address.get(LE));
            let size = u64::from(s.virtual_size.get(LE)).max(1);
            (start, start + size, name_of(s))
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        if pair[1].0 < pair[0].1 {
            bail!(
                "sections {} ({:#x}..{:#x}) and {} (from {:#x}) overlap",
                pair[0].2,
                pair[0].0,
                pair[0].1,
                pair[1].2,
                pair[1].0
            );
        }
    }
    Ok(())
}

/// Drops the COFF symbol table (and its string table) at the end of the
/// file, as ukify does: an image file should carry none, and Debian's
/// stub does. One anywhere but at the end is refused.
fn strip_symbols(pe: &mut Vec<u8>, nt: usize) -> Result<()> {
    let (symbols, count) = {
        let (h, _) = from_bytes::<ImageNtHeaders64>(&pe[nt..])
            .ok()
            .context("PE headers")?;
        (
            usize::try_from(h.file_header.pointer_to_symbol_table.get(LE))?,
            usize::try_from(h.file_header.number_of_symbols.get(LE))?,
        )
    };
    let strings = symbols + 18 * count;
    let strings_len = pe
        .get(strings..strings + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    ensure!(
        strings + strings_len == pe.len(),
        "the stub's symbol table is not at the end of the file"
    );
    pe.truncate(symbols);
    let (h, _) = from_bytes_mut::<ImageNtHeaders64>(&mut pe[nt..])
        .ok()
        .context("PE headers")?;
    h.file_header.pointer_to_symbol_table.set(LE, 0);
    h.file_header.number_of_symbols.set(LE, 0);
    let flags = h.file_header.characteristics.get(LE);
    h.file_header
        .characteristics
        .set(LE, flags | object::pe::IMAGE_FILE_LOCAL_SYMS_STRIPPED);
    Ok(())
}

/// Appends the UKI's sections to `stub`.
pub fn assemble(stub: &[u8], parts: &Parts) -> Result<Vec<u8>> {
    let at = layout(stub)?;
    let mut pe = stub.to_vec();
    let existing = section_headers(&pe, &at)?;
    let (section_align, file_align, size_of_headers, symbols) = {
        let (h, _) = from_bytes::<ImageNtHeaders64>(&pe[at.nt..])
            .ok()
            .context("PE headers")?;
        (
            u64::from(h.optional_header.section_alignment.get(LE)),
            u64::from(h.optional_header.file_alignment.get(LE)),
            u64::from(h.optional_header.size_of_headers.get(LE)),
            h.file_header.pointer_to_symbol_table.get(LE),
        )
    };
    ensure!(
        section_align.is_power_of_two() && file_align.is_power_of_two(),
        "the stub's alignments ({section_align}, {file_align}) are not powers of two"
    );
    if symbols != 0 {
        strip_symbols(&mut pe, at.nt)?;
    }
    let mut cmdline = parts.cmdline.trim().as_bytes().to_vec();
    cmdline.push(0);
    let added: [(&[u8; 8], &[u8], SectionFlags); 5] = [
        (
            b".osrel\0\0",
            parts.os_release,
            IMAGE_SCN_CNT_INITIALIZED_DATA,
        ),
        (b".cmdline", &cmdline, IMAGE_SCN_CNT_INITIALIZED_DATA),
        (
            b".uname\0\0",
            parts.uname.as_bytes(),
            IMAGE_SCN_CNT_INITIALIZED_DATA,
        ),
        (b".initrd\0", parts.initrd, IMAGE_SCN_CNT_INITIALIZED_DATA),
        (b".linux\0\0", parts.linux, IMAGE_SCN_CNT_CODE),
    ];
    // The new headers go after the stub's, before its first section's data.
    let first_data = existing
        .iter()
        .map(|s| u64::from(s.pointer_to_raw_data.get(LE)))
        .filter(|&p| p != 0)
        .min()
        .unwrap_or(pe.len() as u64);
    let table_end = (at.table + 40 * (at.sections + added.len())) as u64;
    ensure!(
        table_end <= first_data,
        "the stub has no room for {} more section headers",
        added.len()
    );
    let mut end_va = existing
        .iter()
        .map(|s| u64::from(s.virtual_address.get(LE)) + u64::from(s.virtual_size.get(LE)))
        .max()
        .unwrap_or(size_of_headers);
    let mut initialized = 0u64;
    let mut headers = Vec::new();
    for (name, data, kind) in added {
        let va = round_up(end_va, section_align);
        let raw_at = round_up(pe.len() as u64, file_align);
        let raw_len = round_up(data.len() as u64, file_align);
        pe.resize(usize::try_from(raw_at)?, 0);
        pe.extend_from_slice(data);
        pe.resize(usize::try_from(raw_at + raw_len)?, 0);
        let mut header = ImageSectionHeader {
            name: *name,
            ..Default::default()
        };
        header.virtual_size.set(LE, u32::try_from(data.len())?);
        header.virtual_address.set(LE, u32::try_from(va)?);
        header.size_of_raw_data.set(LE, u32::try_from(raw_len)?);
        header.pointer_to_raw_data.set(LE, u32::try_from(raw_at)?);
        header.characteristics.set(LE, kind | IMAGE_SCN_MEM_READ);
        if kind == IMAGE_SCN_CNT_INITIALIZED_DATA {
            initialized += data.len() as u64;
        }
        headers.push(header);
        end_va = va + data.len() as u64;
    }
    for (i, header) in headers.iter().enumerate() {
        let off = at.table + 40 * (at.sections + i);
        let (slot, _) = from_bytes_mut::<ImageSectionHeader>(&mut pe[off..])
            .ok()
            .context("section table")?;
        *slot = *header;
    }
    let (h, _) = from_bytes_mut::<ImageNtHeaders64>(&mut pe[at.nt..])
        .ok()
        .context("PE headers")?;
    h.file_header
        .number_of_sections
        .set(LE, u16::try_from(at.sections + headers.len())?);
    let o = &mut h.optional_header;
    o.size_of_image
        .set(LE, u32::try_from(round_up(end_va, section_align))?);
    o.size_of_initialized_data.set(
        LE,
        u32::try_from(u64::from(o.size_of_initialized_data.get(LE)) + initialized)?,
    );
    o.check_sum.set(LE, 0);
    check_layout(&pe)?;
    Ok(pe)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small PE32+ image like a stub: two sections, 0x1000/0x200 alignment,
    /// room for more section headers.
    fn stub() -> Vec<u8> {
        let mut pe = vec![0u8; 0x400];
        let nt = 0x80usize;
        {
            let (dos, _) = from_bytes_mut::<ImageDosHeader>(&mut pe).expect("dos");
            dos.e_magic.set(LE, 0x5a4d);
            dos.e_lfanew.set(LE, nt as u32);
        }
        let (h, _) = from_bytes_mut::<ImageNtHeaders64>(&mut pe[nt..]).expect("nt");
        h.signature.set(LE, 0x4550);
        h.file_header.number_of_sections.set(LE, 2);
        h.file_header.size_of_optional_header.set(
            LE,
            std::mem::size_of::<object::pe::ImageOptionalHeader64>() as u16,
        );
        h.optional_header.magic.set(LE, 0x20b);
        h.optional_header.section_alignment.set(LE, 0x1000);
        h.optional_header.file_alignment.set(LE, 0x200);
        h.optional_header.size_of_headers.set(LE, 0x400);
        let table = nt + 4 + 20 + std::mem::size_of::<object::pe::ImageOptionalHeader64>();
        for (i, (name, va, len)) in [
            (b".text\0\0\0", 0x1000u32, 0x300u32),
            (b".sbat\0\0\0", 0x2000, 0x80),
        ]
        .iter()
        .enumerate()
        {
            let raw_at = pe.len() as u32;
            pe.resize(pe.len() + 0x400, 0xcc);
            let (s, _) =
                from_bytes_mut::<ImageSectionHeader>(&mut pe[table + 40 * i..]).expect("s");
            s.name = **name;
            s.virtual_address.set(LE, *va);
            s.virtual_size.set(LE, *len);
            s.size_of_raw_data.set(LE, 0x400);
            s.pointer_to_raw_data.set(LE, raw_at);
        }
        pe
    }

    #[test]
    fn sections_are_appended_aligned_and_never_overlap() {
        let stub = stub();
        let kernel = vec![0x90u8; 5000];
        let uki = assemble(
            &stub,
            &Parts {
                os_release: b"ID=carapace\n",
                cmdline: "console=ttyS0 roothash=ab",
                uname: "6.12.117",
                initrd: &[7u8; 3000],
                linux: &kernel,
            },
        )
        .expect("assemble");
        // Each section holds its content, then the file alignment's zeros.
        let holds = |name: &str, content: &[u8]| {
            let data = carapace_disk::pe::section(&uki, name)
                .expect("a PE image")
                .unwrap_or_else(|| panic!("no {name} section"));
            assert!(data.starts_with(content), "{name}");
            assert!(data[content.len()..].iter().all(|&b| b == 0), "{name}");
        };
        holds(".cmdline", b"console=ttyS0 roothash=ab\0");
        holds(".linux", &kernel);
        holds(".uname", b"6.12.117");
        holds(".osrel", b"ID=carapace\n");
        holds(".initrd", &[7u8; 3000]);
        check_layout(&uki).expect("no overlap");
        let at = layout(&uki).expect("layout");
        assert_eq!(at.sections, 7);
        let all = section_headers(&uki, &at).expect("table");
        for s in &all[2..] {
            assert_eq!(s.virtual_address.get(LE) % 0x1000, 0, "{}", name_of(s));
            assert_eq!(s.pointer_to_raw_data.get(LE) % 0x200, 0, "{}", name_of(s));
        }
        let (h, _) = from_bytes::<ImageNtHeaders64>(&uki[at.nt..]).expect("nt");
        let last = &all[6];
        assert!(
            u64::from(h.optional_header.size_of_image.get(LE))
                >= u64::from(last.virtual_address.get(LE)) + u64::from(last.virtual_size.get(LE))
        );
    }

    #[test]
    fn a_symbol_table_at_the_end_is_dropped() {
        let mut stub = stub();
        let at = stub.len();
        stub.extend_from_slice(&[0xab; 18 * 2]);
        stub.extend_from_slice(&8u32.to_le_bytes());
        stub.extend_from_slice(b"SYMB");
        {
            let (h, _) = from_bytes_mut::<ImageNtHeaders64>(&mut stub[0x80..]).expect("nt");
            h.file_header.pointer_to_symbol_table.set(LE, at as u32);
            h.file_header.number_of_symbols.set(LE, 2);
        }
        let parts = Parts {
            os_release: b"ID=carapace\n",
            cmdline: "console=ttyS0",
            uname: "6.12.117",
            initrd: &[1],
            linux: &[2],
        };
        let uki = assemble(&stub, &parts).expect("assemble");
        let (h, _) = from_bytes::<ImageNtHeaders64>(&uki[0x80..]).expect("nt");
        assert_eq!(h.file_header.pointer_to_symbol_table.get(LE), 0);
        assert_eq!(h.file_header.number_of_symbols.get(LE), 0);
        assert!(
            !uki.windows(4).any(|w| w == b"SYMB"),
            "the string table is gone"
        );
        // A symbol table anywhere but at the end is refused.
        stub.push(0);
        assert!(assemble(&stub, &parts).is_err());
    }

    #[test]
    fn overlapping_sections_are_refused() {
        let mut pe = stub();
        // What ukify 254 does: .sbat grows in place past the next section.
        let (h, _) = from_bytes::<ImageNtHeaders64>(&pe[0x80..]).expect("nt");
        let table = 0x80 + 4 + 20 + usize::from(h.file_header.size_of_optional_header.get(LE));
        let (text, _) = from_bytes_mut::<ImageSectionHeader>(&mut pe[table..]).expect("s");
        text.virtual_size.set(LE, 0x1134);
        let err = check_layout(&pe).expect_err("overlap");
        assert!(err.to_string().contains("overlap"), "{err}");
    }
}
