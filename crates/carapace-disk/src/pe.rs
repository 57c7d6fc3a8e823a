//! The sections of a PE image, read with the `object` crate: a unified
//! kernel image (UKI) is an EFI program (systemd-stub) whose sections carry
//! the kernel (`.linux`), the initrd (`.initrd`) and the kernel command line
//! (`.cmdline`), which names the root (`roothash=`) and so ties the UKI to a
//! slot.
//!
//! Only sections are read, by name, and only their content: at most the
//! section's virtual size (its raw data is padded to the file alignment).
//! PE32 and PE32+ images are read; anything else (a COFF object, an ELF
//! file, a truncated image, a section past the end of the file) is refused
//! with an error saying so.

use object::read::pe::{ImageNtHeaders, PeFile, PeFile32, PeFile64};
use object::{FileKind, Object, ObjectSection};

/// The section holding a UKI's kernel command line.
pub const CMDLINE_SECTION: &str = ".cmdline";

/// Why a section cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeError {
    #[error("not a PE image ({0})")]
    NotPe(String),
    #[error("malformed PE image: {0}")]
    Malformed(String),
    #[error("the UKI has no {CMDLINE_SECTION} section")]
    NoCmdline,
    #[error("the UKI's command line is not UTF-8")]
    CmdlineNotUtf8,
}

/// The content of the section called `name` of the PE image `image`, or
/// `None` when it has no such section (the first one, if several share the
/// name).
pub fn section<'a>(image: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, PeError> {
    match FileKind::parse(image) {
        Ok(FileKind::Pe32) => section_of(PeFile32::parse(image), name),
        Ok(FileKind::Pe64) => section_of(PeFile64::parse(image), name),
        Ok(kind) => Err(PeError::NotPe(format!("{kind:?}"))),
        Err(e) => Err(PeError::NotPe(e.to_string())),
    }
}

fn section_of<'a, Pe: ImageNtHeaders>(
    file: object::Result<PeFile<'a, Pe>>,
    name: &str,
) -> Result<Option<&'a [u8]>, PeError> {
    let malformed = |e: object::Error| PeError::Malformed(e.to_string());
    let file = file.map_err(malformed)?;
    file.section_by_name(name)
        .map(|s| s.data().map_err(malformed))
        .transpose()
}

/// The kernel command line a UKI carries: its `.cmdline` section up to the
/// first NUL (ukify and objcopy may end it with one, or with a newline,
/// which is kept), as text.
pub fn uki_cmdline(uki: &[u8]) -> Result<&str, PeError> {
    let section = section(uki, CMDLINE_SECTION)?.ok_or(PeError::NoCmdline)?;
    let end = section
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(section.len());
    std::str::from_utf8(&section[..end]).map_err(|_| PeError::CmdlineNotUtf8)
}

/// A minimal PE32+ EFI application holding `sections` (name of at most 8
/// bytes, content) and nothing else: for the tests of the crates that read
/// UKIs (feature `test-pe`), and of this module. Written independently of
/// the reader, from the PE format's layout.
///
/// Panics on a name longer than 8 bytes.
#[cfg(any(test, feature = "test-pe"))]
pub fn minimal_image(sections: &[(&str, &[u8])]) -> Vec<u8> {
    const NT: usize = 0x40;
    const OPTIONAL_HEADER_SIZE: usize = 240;
    const FILE_ALIGN: usize = 0x200;
    const SECTION_ALIGN: usize = 0x1000;
    fn put(image: &mut [u8], at: usize, bytes: &[u8]) {
        image[at..at + bytes.len()].copy_from_slice(bytes);
    }
    let table = NT + 4 + 20 + OPTIONAL_HEADER_SIZE;
    let headers = (table + 40 * sections.len()).next_multiple_of(FILE_ALIGN);
    let mut image = vec![0u8; headers];
    // DOS header: the magic, and where the NT headers are.
    put(&mut image, 0, b"MZ");
    put(&mut image, 0x3c, &(NT as u32).to_le_bytes());
    // Signature and COFF file header: x86-64, an executable image.
    put(&mut image, NT, b"PE\0\0");
    let coff = NT + 4;
    put(&mut image, coff, &0x8664u16.to_le_bytes());
    put(&mut image, coff + 2, &(sections.len() as u16).to_le_bytes());
    put(
        &mut image,
        coff + 16,
        &(OPTIONAL_HEADER_SIZE as u16).to_le_bytes(),
    );
    put(&mut image, coff + 18, &0x0022u16.to_le_bytes());
    // PE32+ optional header, 16 (empty) data directories.
    let opt = coff + 20;
    put(&mut image, opt, &0x020bu16.to_le_bytes());
    put(&mut image, opt + 32, &(SECTION_ALIGN as u32).to_le_bytes());
    put(&mut image, opt + 36, &(FILE_ALIGN as u32).to_le_bytes());
    put(&mut image, opt + 60, &(headers as u32).to_le_bytes());
    put(&mut image, opt + 68, &10u16.to_le_bytes()); // EFI application
    put(&mut image, opt + 108, &16u32.to_le_bytes());
    let mut virtual_address = SECTION_ALIGN;
    for (i, (name, content)) in sections.iter().enumerate() {
        assert!(
            name.len() <= 8,
            "section name {name:?} is longer than 8 bytes"
        );
        let raw_size = content.len().next_multiple_of(FILE_ALIGN);
        let raw_at = image.len();
        let entry = table + 40 * i;
        put(&mut image, entry, name.as_bytes());
        put(&mut image, entry + 8, &(content.len() as u32).to_le_bytes());
        put(
            &mut image,
            entry + 12,
            &(virtual_address as u32).to_le_bytes(),
        );
        put(&mut image, entry + 16, &(raw_size as u32).to_le_bytes());
        put(&mut image, entry + 20, &(raw_at as u32).to_le_bytes());
        // Initialised data, readable.
        put(&mut image, entry + 36, &0x4000_0040u32.to_le_bytes());
        image.extend_from_slice(content);
        image.resize(raw_at + raw_size, 0);
        virtual_address += content.len().max(1).next_multiple_of(SECTION_ALIGN);
    }
    put(
        &mut image,
        opt + 56,
        &(virtual_address as u32).to_le_bytes(),
    );
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_is_its_content_without_the_file_alignment_padding() {
        let image = minimal_image(&[
            (".linux", b"kernel"),
            (".cmdline", b"console=ttyS0 quiet\n"),
            (".empty", b""),
        ]);
        assert_eq!(image.len() % 0x200, 0);
        assert_eq!(section(&image, ".linux"), Ok(Some(&b"kernel"[..])));
        assert_eq!(
            section(&image, ".cmdline"),
            Ok(Some(&b"console=ttyS0 quiet\n"[..]))
        );
        assert_eq!(section(&image, ".empty"), Ok(Some(&b""[..])));
        assert_eq!(section(&image, ".initrd"), Ok(None));
        // The name is matched whole.
        assert_eq!(section(&image, ".cmd"), Ok(None));
    }

    #[test]
    fn the_command_line_ends_at_its_first_nul() {
        let image = minimal_image(&[(".cmdline", b"roothash=00 quiet\0\0junk")]);
        assert_eq!(uki_cmdline(&image), Ok("roothash=00 quiet"));
        let image = minimal_image(&[(".cmdline", b"console=ttyS0\n")]);
        assert_eq!(uki_cmdline(&image), Ok("console=ttyS0\n"));
    }

    #[test]
    fn a_uki_without_a_readable_command_line_is_refused() {
        let image = minimal_image(&[(".linux", b"kernel")]);
        assert_eq!(uki_cmdline(&image), Err(PeError::NoCmdline));
        assert_eq!(
            PeError::NoCmdline.to_string(),
            "the UKI has no .cmdline section"
        );
        let image = minimal_image(&[(".cmdline", b"roothash=\xff")]);
        assert_eq!(uki_cmdline(&image), Err(PeError::CmdlineNotUtf8));
    }

    #[test]
    fn what_is_not_a_whole_pe_image_is_refused() {
        for bad in [&b""[..], b"not a PE", b"MZ", b"\x7fELF\x02\x01\x01"] {
            assert!(
                matches!(section(bad, ".cmdline"), Err(PeError::NotPe(_))),
                "{bad:?}: {:?}",
                section(bad, ".cmdline")
            );
        }
        let image = minimal_image(&[(".cmdline", b"roothash=00")]);
        // Cut inside the section table, and inside the section's data.
        for len in [0x150, 0x205] {
            let cut = &image[..len];
            assert!(
                matches!(section(cut, ".cmdline"), Err(PeError::Malformed(_))),
                "{len}: {:?}",
                section(cut, ".cmdline")
            );
        }
        // A section whose data lies past the end of the file.
        let mut far = image.clone();
        let pointer = 0x40 + 4 + 20 + 240 + 20;
        far[pointer..pointer + 4].copy_from_slice(&0x10_0000u32.to_le_bytes());
        assert!(matches!(uki_cmdline(&far), Err(PeError::Malformed(_))));
    }
}
