//! Hostile container images for the hostile-layers test: OCI image layouts
//! (the shape `xtask`'s `oci_layout` writes and [`crate::Registry::push`]
//! takes: blobs under `blobs/sha256/`, `index.json` naming the manifest by
//! tag, `oci-layout`) whose single layer is one hostile tar.gz each.
//!
//! The tars are written by our own ustar header writer, since the `tar`
//! crate refuses to write most of these names; the gzip bomb is compressed
//! on the fly, so the host never holds it uncompressed.

use anyhow::{Context, Result};
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The tag every hostile layout's index names.
pub const TAG: &str = "1";

/// The uncompressed size of the gzip bomb's one file: more than the whole
/// 256 MiB /var of a node.
pub const BOMB_BYTES: u64 = 400 * 1024 * 1024;

/// One hostile image.
#[derive(Debug, Clone)]
pub struct HostileLayout {
    /// What the layer tries, and the container name the test gives it.
    pub case: &'static str,
    /// The repository the test pushes it as (`hostile/<case>`).
    pub repository: String,
    pub layout: PathBuf,
    /// A word the pull error in status must hold: the reason, named.
    pub reason: &'static str,
}

/// One entry of a hostile tar.
enum Entry<'a> {
    File(&'a str, &'a [u8]),
    /// A file of this many zero bytes, written in pieces.
    Zeros(&'a str, u64),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDevice(&'a str, u32, u32),
}

/// The hostile cases: container name, layer entries, the word the refusal
/// names.
fn cases() -> Vec<(&'static str, Vec<Entry<'static>>, &'static str)> {
    vec![
        // `.wh...`: the whiteout of `..`, which once removed the whole
        // shared layer store.
        (
            "whiteout-dotdot",
            vec![Entry::File(".wh...", b"")],
            "whiteout",
        ),
        // A symlink to the store, then a file written through it.
        (
            "through-symlink",
            vec![
                Entry::Symlink("l", "/var/lib/carapace/containers"),
                Entry::File("l/escape", b"escaped through a symlink\n"),
            ],
            "symlink",
        ),
        // A hard link to the node's settings, from the unpack directory
        // (`/var/lib/carapace/containers/layers/<tmp>`).
        (
            "hard-link-out",
            vec![Entry::HardLink("escape", "../../../settings.json")],
            "hard link",
        ),
        (
            "absolute",
            vec![Entry::File(
                "/var/lib/carapace/containers/escape",
                b"escaped by an absolute name\n",
            )],
            "absolute",
        ),
        (
            "dotdot",
            vec![Entry::File("a/../../../escape", b"escaped by ..\n")],
            "`..`",
        ),
        (
            "char-device",
            vec![Entry::CharDevice("dev/mem", 1, 1)],
            "device",
        ),
        (
            "gzip-bomb",
            vec![Entry::Zeros("zeros", BOMB_BYTES)],
            "space free",
        ),
    ]
}

/// Writes every hostile layout under `dir` (replacing what was there).
pub fn write_all(dir: &Path) -> Result<Vec<HostileLayout>> {
    write_cases(dir, |_| true)
}

fn write_cases(dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<Vec<HostileLayout>> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let mut out = Vec::new();
    for (case, entries, reason) in cases() {
        if !wanted(case) {
            continue;
        }
        let layout = dir.join(case);
        write_layout(&layout, &entries).with_context(|| format!("writing the {case} layout"))?;
        out.push(HostileLayout {
            case,
            repository: format!("hostile/{case}"),
            layout,
            reason,
        });
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stores `bytes` as a blob of the layout; returns `(digest, size)`.
fn blob(dir: &Path, bytes: &[u8]) -> Result<(String, u64)> {
    let h = hex(&Sha256::digest(bytes));
    std::fs::write(dir.join("blobs/sha256").join(&h), bytes)?;
    Ok((format!("sha256:{h}"), bytes.len() as u64))
}

fn write_layout(out: &Path, entries: &[Entry<'_>]) -> Result<()> {
    std::fs::create_dir_all(out.join("blobs/sha256"))?;
    let (layer_digest, layer_size, diff_id) = write_layer(&out.join("blobs/sha256"), entries)?;
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":["/hello"],"Env":["PATH=/"]}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
    );
    let (config_digest, config_size) = blob(out, config.as_bytes())?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":{layer_size}}}]}}"#
    );
    let (manifest_digest, manifest_size) = blob(out, manifest.as_bytes())?;
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_size},"annotations":{{"org.opencontainers.image.ref.name":"{TAG}"}}}}]}}"#
    );
    std::fs::write(out.join("index.json"), index)?;
    std::fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}

/// Counts and hashes what is written through it (the compressed blob).
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The layer blob, gzipped as it is written; returns its digest, size and
/// diff ID (the digest of the uncompressed tar).
fn write_layer(blobs: &Path, entries: &[Entry<'_>]) -> Result<(String, u64, String)> {
    let temp = blobs.join("layer.partial");
    let file = Hashing {
        inner: File::create(&temp)?,
        hasher: Sha256::new(),
        written: 0,
    };
    let mut tar = TarWriter {
        gz: GzEncoder::new(file, flate2::Compression::default()),
        diff: Sha256::new(),
    };
    for entry in entries {
        match *entry {
            Entry::File(name, data) => {
                tar.header(name, b'0', data.len() as u64, "", 0o644, (0, 0))?;
                tar.data(data)?;
                tar.pad(data.len() as u64)?;
            }
            Entry::Zeros(name, size) => {
                tar.header(name, b'0', size, "", 0o644, (0, 0))?;
                let chunk = vec![0u8; 1024 * 1024];
                let mut left = size;
                while left > 0 {
                    let n = left.min(chunk.len() as u64);
                    tar.data(&chunk[..n as usize])?;
                    left -= n;
                }
                tar.pad(size)?;
            }
            Entry::Symlink(name, target) => tar.header(name, b'2', 0, target, 0o777, (0, 0))?,
            Entry::HardLink(name, target) => tar.header(name, b'1', 0, target, 0o644, (0, 0))?,
            Entry::CharDevice(name, major, minor) => {
                tar.header(name, b'3', 0, "", 0o666, (major, minor))?
            }
        }
    }
    // The end of the archive: two zero blocks.
    tar.data(&[0u8; 1024])?;
    let diff_id = format!("sha256:{}", hex(&tar.diff.finalize()));
    let mut file = tar.gz.finish()?;
    file.flush()?;
    let digest = hex(&file.hasher.finalize());
    let size = file.written;
    std::fs::rename(&temp, blobs.join(&digest))?;
    Ok((format!("sha256:{digest}"), size, diff_id))
}

/// A tar stream written into a gzip encoder, hashed uncompressed.
struct TarWriter<W: Write> {
    gz: GzEncoder<W>,
    diff: Sha256,
}

impl<W: Write> TarWriter<W> {
    fn data(&mut self, bytes: &[u8]) -> Result<()> {
        self.diff.update(bytes);
        self.gz.write_all(bytes)?;
        Ok(())
    }

    /// Zeros up to the next 512-byte block after `size` bytes of data.
    fn pad(&mut self, size: u64) -> Result<()> {
        let rest = (512 - size % 512) % 512;
        self.data(&vec![0u8; rest as usize])
    }

    fn header(
        &mut self,
        name: &str,
        kind: u8,
        size: u64,
        link: &str,
        mode: u32,
        device: (u32, u32),
    ) -> Result<()> {
        let block = ustar_header(name, kind, size, link, mode, device)?;
        self.data(&block)
    }
}

/// One 512-byte ustar header, names written exactly as given (`..`,
/// absolute and all), with its checksum.
pub fn ustar_header(
    name: &str,
    kind: u8,
    size: u64,
    link: &str,
    mode: u32,
    (major, minor): (u32, u32),
) -> Result<[u8; 512]> {
    anyhow::ensure!(
        name.len() <= 100 && link.len() <= 100,
        "names of at most 100 bytes"
    );
    let mut h = [0u8; 512];
    let mut put = |at: usize, bytes: &[u8]| h[at..at + bytes.len()].copy_from_slice(bytes);
    let octal = |width: usize, v: u64| format!("{v:0w$o}\0", w = width - 1).into_bytes();
    put(0, name.as_bytes());
    put(100, &octal(8, u64::from(mode)));
    put(108, &octal(8, 0));
    put(116, &octal(8, 0));
    put(124, &octal(12, size));
    put(136, &octal(12, 1_700_000_000));
    put(148, b"        ");
    put(156, &[kind]);
    put(157, link.as_bytes());
    put(257, b"ustar\0");
    put(263, b"00");
    put(265, b"root");
    put(297, b"root");
    put(329, &octal(8, u64::from(major)));
    put(337, &octal(8, u64::from(minor)));
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn field(h: &[u8], at: usize, len: usize) -> u64 {
        let s = String::from_utf8_lossy(&h[at..at + len]);
        u64::from_str_radix(s.trim_matches(|c| c == '\0' || c == ' '), 8).expect("octal")
    }

    fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
        let bytes = std::fs::read(layout.join("blobs/sha256").join(&digest["sha256:".len()..]))
            .expect("blob");
        assert_eq!(
            format!("sha256:{}", hex(&Sha256::digest(&bytes))),
            digest,
            "a blob is named by its digest"
        );
        bytes
    }

    fn quoted_after<'a>(json: &'a str, key: &str) -> &'a str {
        let at = json.find(key).expect("key") + key.len();
        let rest = &json[at..];
        let start = rest.find('"').expect("value") + 1;
        let end = start + rest[start..].find('"').expect("end");
        &rest[start..end]
    }

    #[test]
    fn headers_carry_their_names_raw_and_a_valid_checksum() {
        let h = ustar_header("a/../../escape", b'0', 5, "", 0o644, (0, 0)).expect("header");
        assert_eq!(&h[..14], b"a/../../escape");
        assert_eq!(field(&h, 124, 12), 5);
        let mut blanked = h;
        blanked[148..156].copy_from_slice(b"        ");
        let sum: u64 = blanked.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(field(&h, 148, 8), sum);
        assert!(ustar_header(&"x".repeat(101), b'0', 0, "", 0, (0, 0)).is_err());
    }

    #[test]
    fn every_layout_names_its_blobs_by_digest_and_its_layer_by_diff_id() {
        let dir = std::env::temp_dir().join(format!("carapace-hostile-{}", std::process::id()));
        // The bomb is left out here: it only takes longer to write.
        let layouts = write_cases(&dir, |c| c != "gzip-bomb").expect("layouts");
        assert_eq!(layouts.len(), cases().len() - 1);
        for l in &layouts {
            let index = std::fs::read_to_string(l.layout.join("index.json")).expect("index");
            assert!(index.contains(&format!("\"org.opencontainers.image.ref.name\":\"{TAG}\"")));
            let manifest = read_blob(&l.layout, quoted_after(&index, "\"digest\""));
            let manifest = String::from_utf8(manifest).expect("utf-8");
            let config = read_blob(&l.layout, quoted_after(&manifest, "\"digest\""));
            let layers = &manifest[manifest.find("\"layers\"").expect("layers")..];
            let gz = read_blob(&l.layout, quoted_after(layers, "\"digest\""));
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(gz.as_slice())
                .read_to_end(&mut tar)
                .expect("gunzip");
            let diff_id = format!("sha256:{}", hex(&Sha256::digest(&tar)));
            let config = String::from_utf8(config).expect("utf-8");
            assert!(config.contains(&diff_id), "{}: {config}", l.case);
            assert_eq!(tar.len() % 512, 0, "{}", l.case);
        }
        std::fs::remove_dir_all(&dir).expect("clean");
    }
}
