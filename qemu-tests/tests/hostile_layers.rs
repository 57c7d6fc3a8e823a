//! Hostile image layers, pulled by a node that already runs a container:
//! a registry on the host serves the test image and one image per hostile
//! layer (a whiteout of `..`, a write through a symlink the layer made, a
//! hard link out of the layer, an absolute name, a `..` name, a character
//! device, a gzip bomb bigger than /var). Each pull is refused with its
//! reason in status; the running container keeps answering; after power
//! off its layer is in the store byte for byte, nothing was written where
//! the attacks aimed, and no temporary unpack directory is left.

use anyhow::{ensure, Context, Result};
use qemu_tests::containers::{ask, container, status};
use qemu_tests::hostile_layers::{self, HostileLayout};
use qemu_tests::{test_oci_layout, workspace_root, Registry, TestDisk};
use serde_json::Value;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "hostile-layers-token-0123456789";

/// The layer digests (hex) of the test image's layout and each layer's
/// uncompressed tar.
fn test_image_layers(layout: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let blob = |digest: &str| -> Result<Vec<u8>> {
        let hex = digest.strip_prefix("sha256:").context("a sha256 digest")?;
        std::fs::read(layout.join("blobs/sha256").join(hex))
            .with_context(|| format!("blob {digest} of {}", layout.display()))
    };
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let manifest = index["manifests"][0]["digest"]
        .as_str()
        .context("index names a manifest")?;
    let manifest: Value = serde_json::from_slice(&blob(manifest)?)?;
    let mut out = Vec::new();
    for layer in manifest["layers"].as_array().context("layers")? {
        let digest = layer["digest"].as_str().context("layer digest")?;
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(blob(digest)?.as_slice()).read_to_end(&mut tar)?;
        out.push((digest["sha256:".len()..].to_string(), tar));
    }
    Ok(out)
}

/// The regular files of a tar (ustar or GNU headers, short names): name
/// without a leading `./`, and content.
fn tar_files(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= tar.len() && tar[at..at + 512].iter().any(|&b| b != 0) {
        let h = &tar[at..at + 512];
        let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&h[..name_end])
            .trim_start_matches("./")
            .to_string();
        let size_text = String::from_utf8_lossy(&h[124..136]);
        let size = usize::from_str_radix(size_text.trim_matches(|c| c == '\0' || c == ' '), 8)
            .unwrap_or(0);
        let data_at = at + 512;
        if matches!(h[156], b'0' | 0) && data_at + size <= tar.len() {
            out.push((name, tar[data_at..data_at + size].to_vec()));
        }
        at = data_at + size.div_ceil(512) * 512;
    }
    out
}

fn container_name(h: &HostileLayout) -> String {
    format!("evil-{}", h.case)
}

#[test]
fn hostile_layers_are_refused_and_a_running_container_keeps_its_layers() -> Result<()> {
    let registry = Registry::start("hostile-layers")?;
    registry.push(&test_oci_layout(), "1", "test/hello", "1")?;
    let web_layers = test_image_layers(&test_oci_layout())?;
    let layouts_dir = workspace_root()
        .join("target/qemu-tests")
        .join(format!("hostile-layouts-{}", std::process::id()));
    let hostile = hostile_layers::write_all(&layouts_dir)?;
    for h in &hostile {
        registry.push(&h.layout, hostile_layers::TAG, &h.repository, "1")?;
    }
    let image = registry.reference_for_node("test/hello", "1");

    let disk = TestDisk::fresh("hostile-layers")?;
    let mut node = disk.boot_with_user_data(&format!(
        "hostname = \"hostile-layers-node\"\n[api]\ntoken = \"{TOKEN}\"\n[registries.\"{}\"]\ninsecure = true\n",
        registry.host_for_node()
    ))?;
    node.wait_ready()?;
    let fingerprint = node.wait_api_reachable()?;
    node.wait_until("the checker is done", |t| t.contains("checker: done"))?;
    let ctl = node.ctl(&fingerprint, Some(TOKEN));

    // A container runs from the store first.
    let web = serde_json::json!({
        "image": image, "args": ["serve", "8080", "pong"], "host_network": true
    });
    node.ctl_ok(&ctl, &["set", &format!("containers.web={web}")])?;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let s = status(&mut node, &ctl)?;
        if container(&s, "web").is_some_and(|c| c["state"] == "running") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "web did not run within 240 s: {}",
            s["containers"]
        );
        node.drain();
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(ask(&mut node, "hello")?.trim(), "pong");

    // Then every hostile image at once.
    let mut sets = Vec::new();
    for h in &hostile {
        let spec = serde_json::json!({
            "image": registry.reference_for_node(&h.repository, "1"), "restart": "never"
        });
        sets.push(format!("containers.{}={spec}", container_name(h)));
    }
    let mut args = vec!["set"];
    args.extend(sets.iter().map(String::as_str));
    node.ctl_ok(&ctl, &args)?;

    // Each pull is refused with its reason; web answers all along.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut refused: Vec<(String, String)> = Vec::new();
    loop {
        let s = status(&mut node, &ctl)?;
        refused.clear();
        for h in &hostile {
            let name = container_name(h);
            let error = container(&s, &name)
                .and_then(|c| c["error"].as_str())
                .unwrap_or_default()
                .to_string();
            if !error.is_empty() {
                refused.push((name, error));
            }
        }
        if refused.len() == hostile.len() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "not every hostile pull was refused within 300 s: {}",
            s["containers"]
        );
        assert_eq!(
            ask(&mut node, "during")?.trim(),
            "pong",
            "web answers while the hostile layers are pulled"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    for h in &hostile {
        let name = container_name(h);
        let (_, error) = refused
            .iter()
            .find(|(n, _)| *n == name)
            .context("refused")?;
        assert!(
            error.contains("refused") && error.contains(h.reason),
            "{name}: the pull error names the reason ({:?}): {error}",
            h.reason
        );
    }
    let s = status(&mut node, &ctl)?;
    let web = container(&s, "web").context("web in status")?;
    assert_eq!(web["state"], "running", "{web}");
    assert_eq!(
        web["restarts"].as_u64(),
        Some(0),
        "web never stopped: {web}"
    );
    assert_eq!(ask(&mut node, "after")?.trim(), "pong");

    node.press_power_button()?;
    node.wait_exit()?;

    // web's layers are all in the store, byte for byte.
    let store = "/lib/carapace/containers";
    let stored = disk.list_var_dir(&format!("{store}/layers/sha256"))?;
    for (hex, tar) in &web_layers {
        assert!(
            stored.contains(hex),
            "web's layer {hex} is still in the store: {stored:?}"
        );
        for (file, content) in tar_files(tar) {
            let on_disk = disk.read_var_file(&format!("{store}/layers/sha256/{hex}/{file}"))?;
            assert!(
                on_disk == content,
                "{file} of web's layer {hex} is unchanged"
            );
        }
    }
    // No temporary unpack directory is left, and nothing escaped.
    assert_eq!(
        disk.list_var_dir(&format!("{store}/layers"))?,
        vec!["sha256".to_string()],
        "only the named layers under layers/"
    );
    for dir in [
        store.to_string(),
        format!("{store}/layers/sha256"),
        "/lib/carapace".to_string(),
        "/".to_string(),
    ] {
        let names = disk.list_var_dir(&dir)?;
        assert!(
            !names.iter().any(|n| n == "escape"),
            "no escape file in /var{dir}: {names:?}"
        );
    }
    // The hard link aimed at the settings: still a file of its own.
    let settings = disk.read_var_file("/lib/carapace/settings.json")?;
    ensure!(
        String::from_utf8_lossy(&settings).contains("\"web\""),
        "the settings are intact"
    );
    disk.check_var_is_clean()?;
    let _ = std::fs::remove_dir_all(&layouts_dir);
    Ok(())
}
