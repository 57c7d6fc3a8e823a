//! The test container image: one static binary (`carapace-test-container`)
//! packed as an OCI image layout (a layer tar.gz, the image config, the
//! manifest and index.json under `blobs/sha256/`), which the container tests
//! push to a registry on the host with skopeo.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The tag the layout's index names.
pub const TAG: &str = "1";

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Stores `bytes` as a blob; returns `(digest, size)`.
fn blob(dir: &Path, bytes: &[u8]) -> Result<(String, usize)> {
    let h = hex(bytes);
    std::fs::write(dir.join("blobs/sha256").join(&h), bytes)?;
    Ok((format!("sha256:{h}"), bytes.len()))
}

/// Writes the layout of an image whose only file is `binary` at `/hello`
/// (its entrypoint) into `out`, replacing what was there.
pub fn write(binary: &Path, out: &Path) -> Result<PathBuf> {
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    std::fs::create_dir_all(out.join("blobs/sha256"))?;
    let work = out.with_extension("work");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    std::fs::copy(binary, work.join("hello"))
        .with_context(|| format!("cannot copy {}", binary.display()))?;
    let tar = out.with_extension("tar");
    duct::cmd!(
        "tar",
        "--create",
        "--file",
        &tar,
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "--mode=0755",
        "--directory",
        &work,
        "hello"
    )
    .run()
    .context("tar (making the test layer)")?;
    let layer_tar = std::fs::read(&tar)?;
    let diff_id = format!("sha256:{}", hex(&layer_tar));
    let gz = duct::cmd!("gzip", "-n", "-c", &tar)
        .stdout_capture()
        .run()
        .context("gzip (compressing the test layer)")?
        .stdout;
    std::fs::remove_file(&tar)?;
    std::fs::remove_dir_all(&work)?;
    let (layer_digest, layer_size) = blob(out, &gz)?;

    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": ["/hello"], "Env": ["PATH=/"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] }
    });
    let (config_digest, config_size) = blob(out, &serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest, "size": config_size
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest, "size": layer_size
        }]
    });
    let (manifest_digest, manifest_size) = blob(out, &serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": { "org.opencontainers.image.ref.name": TAG }
        }]
    });
    std::fs::write(out.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_names_its_blobs_by_their_digests() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("carapace-oci-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let bin = dir.join("bin");
        std::fs::write(&bin, b"\x7fELF not really")?;
        let out = write(&bin, &dir.join("layout"))?;
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("index.json"))?)?;
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], TAG);
        let digest = m["digest"].as_str().context("digest")?;
        let manifest = std::fs::read(out.join("blobs/sha256").join(&digest[7..]))?;
        assert_eq!(format!("sha256:{}", hex(&manifest)), digest);
        let manifest: serde_json::Value = serde_json::from_slice(&manifest)?;
        for d in [&manifest["config"], &manifest["layers"][0]] {
            let digest = d["digest"].as_str().context("digest")?;
            let bytes = std::fs::read(out.join("blobs/sha256").join(&digest[7..]))?;
            assert_eq!(format!("sha256:{}", hex(&bytes)), digest);
            assert_eq!(d["size"].as_u64(), Some(bytes.len() as u64));
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
