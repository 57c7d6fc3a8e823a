//! A writer for the cpio "newc" format, enough to build our initrd without
//! root: regular files, directories and device nodes with chosen owners.

/// One entry of the archive.
pub enum Entry<'a> {
    Dir {
        path: &'a str,
        mode: u32,
    },
    File {
        path: &'a str,
        mode: u32,
        data: &'a [u8],
    },
    CharDev {
        path: &'a str,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime: reproducible
        size as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

/// Serialises `entries` (parents before children) into a newc archive.
pub fn archive(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match entry {
            Entry::Dir { path, mode } => header(&mut out, ino, S_IFDIR | mode, 2, 0, (0, 0), path),
            Entry::File { path, mode, data } => {
                header(&mut out, ino, S_IFREG | mode, 1, data.len(), (0, 0), path);
                out.extend_from_slice(data);
                pad4(&mut out);
            }
            Entry::CharDev {
                path,
                mode,
                major,
                minor,
            } => header(&mut out, ino, S_IFCHR | mode, 1, 0, (*major, *minor), path),
        }
    }
    header(&mut out, 0, 0, 1, 0, (0, 0), "TRAILER!!!");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpio_tool_lists_the_initrd_we_write() {
        let bytes = crate::image::initrd_archive(b"#!hello\n");
        assert!(bytes.len().is_multiple_of(4));
        let dir = std::env::temp_dir().join(format!("cpio-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("a.cpio");
        std::fs::write(&file, &bytes).expect("write");
        // The real cpio tool must read back every entry with the right type.
        let listing = duct::cmd!("cpio", "-itv", "-F", &file)
            .stdout_capture()
            .stderr_null()
            .read()
            .expect("cpio lists the archive");
        std::fs::remove_dir_all(&dir).ok();
        let line = |name: &str| {
            listing
                .lines()
                .find(|l| l.ends_with(&format!(" {name}")))
                .unwrap_or_else(|| panic!("{name} missing from:\n{listing}"))
                .to_string()
        };
        assert_eq!(listing.lines().count(), 9, "{listing}");
        assert!(line("dev").starts_with('d'), "{listing}");
        let console = line("dev/console");
        assert!(
            console.starts_with("crw-------") && console.contains("5,"),
            "{listing}"
        );
        assert!(line("init").starts_with("-rwxr-xr-x"), "{listing}");
        assert!(
            line("etc/initrd-release").starts_with("-rw-r--r--"),
            "{listing}"
        );
        assert!(line("sysroot").starts_with('d'), "{listing}");
    }
}
