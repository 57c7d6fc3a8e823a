//! Pulling from an in-process registry on 127.0.0.1 into a store in a
//! scratch directory: what ends up on disk, what is fetched, and what is
//! refused. Runs as root (whiteouts are device nodes, opaque directories
//! trusted xattrs, layers keep their owners).

mod fake_registry;

use carapace_model::containers::{ImageRef, Registry};
use carapace_oci::{Limits, Platform, PullError, Store};
use fake_registry::{hex, image, image_with, index, layer, Entry, FakeRegistry, TokenAuth};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("carapace-oci-pull-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }

    fn store(&self) -> Store {
        Store::open(&self.0)
            .expect("store opens")
            .with_platform(Platform::linux_amd64())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn image_ref(s: &str) -> ImageRef {
    ImageRef::try_from(s.to_string()).expect("image reference")
}

/// Every name in a store directory.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn base_layer() -> fake_registry::Layer {
    layer(&[
        Entry::Dir("bin/", 0o755),
        Entry::File("bin/hello", 0o755, b"#!/bin/sh\necho hello\n"),
        Entry::Dir("etc/", 0o755),
        Entry::File("etc/motd", 0o644, b"welcome\n"),
        Entry::Dir("var/cache/", 0o755),
        Entry::File("var/cache/old", 0o644, b"stale"),
        Entry::Symlink("usr/bin", "/bin"),
    ])
}

fn app_layer() -> fake_registry::Layer {
    layer(&[
        Entry::File("etc/.wh.motd", 0o644, b""),
        Entry::File("var/cache/.wh..wh..opq", 0o644, b""),
        Entry::File("var/cache/new", 0o644, b"fresh"),
        Entry::File("app/run", 0o755, b"run"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_stores_verifies_and_unpacks_an_image() {
    let registry = FakeRegistry::start().await;
    let img = image(vec![base_layer(), app_layer()]);
    registry.push("test/hello", "v1", &img);
    let scratch = Scratch::new("basic");
    let store = scratch.store();
    let reference = image_ref(&format!("{}/test/hello:v1", registry.host()));

    let pulled = store.pull(&reference, None, true).await.expect("pulls");

    assert_eq!(
        pulled.reference,
        format!("{}/test/hello:v1", registry.host())
    );
    assert_eq!(pulled.manifest_digest, img.manifest_digest);
    assert_eq!(pulled.index_digest, None);
    assert_eq!(pulled.config_digest, img.config_digest);
    let cmd = pulled
        .config
        .config()
        .as_ref()
        .and_then(|c| c.cmd().clone());
    assert_eq!(cmd, Some(vec!["/bin/hello".to_string()]));
    let layers_dir = scratch.0.join("layers/sha256");
    assert_eq!(
        pulled.layers,
        vec![
            layers_dir.join(hex(&img.layers[0].digest)),
            layers_dir.join(hex(&img.layers[1].digest))
        ],
        "lowest first, named by the compressed digest"
    );
    let base = &pulled.layers[0];
    assert_eq!(
        fs::read(base.join("bin/hello")).expect("file"),
        b"#!/bin/sh\necho hello\n"
    );
    assert_eq!(
        fs::metadata(base.join("bin/hello")).expect("meta").mode() & 0o777,
        0o755
    );
    assert_eq!(
        fs::read_link(base.join("usr/bin")).expect("symlink"),
        PathBuf::from("/bin")
    );
    assert_eq!(
        fs::read(pulled.layers[1].join("app/run")).expect("file"),
        b"run"
    );

    // Manifest and config are kept by digest; layer blobs are dropped once unpacked.
    let mut blobs = vec![
        hex(&img.manifest_digest).to_string(),
        hex(&img.config_digest).to_string(),
    ];
    blobs.sort();
    assert_eq!(names(&scratch.0.join("blobs/sha256")), blobs);
    assert_eq!(
        fs::read(scratch.0.join("blobs/sha256").join(hex(&img.config_digest))).expect("config"),
        img.config
    );
    let records = names(&scratch.0.join("images"));
    assert_eq!(records.len(), 1);
    let record: serde_json::Value = serde_json::from_slice(
        &fs::read(scratch.0.join("images").join(&records[0])).expect("record"),
    )
    .expect("json");
    assert_eq!(record["manifest_digest"], img.manifest_digest.as_str());
    assert_eq!(record["layers"][1], img.layers[1].digest.as_str());

    // Offline, and after a restart.
    assert_eq!(store.lookup(&reference), Some(pulled.clone()));
    let requests = registry.requests().len();
    assert_eq!(scratch.store().lookup(&reference), Some(pulled));
    assert_eq!(
        registry.requests().len(),
        requests,
        "lookup asks no registry"
    );
    let other = image_ref(&format!("{}/test/hello:v2", registry.host()));
    assert_eq!(store.lookup(&other), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whiteouts_and_opaque_directories_become_overlayfs_markers() {
    let registry = FakeRegistry::start().await;
    registry.push("test/hello", "v1", &image(vec![base_layer(), app_layer()]));
    let scratch = Scratch::new("whiteouts");
    let reference = image_ref(&format!("{}/test/hello:v1", registry.host()));
    let pulled = scratch
        .store()
        .pull(&reference, None, true)
        .await
        .expect("pulls");

    let upper = &pulled.layers[1];
    let whiteout = fs::symlink_metadata(upper.join("etc/motd")).expect("whiteout");
    assert!(whiteout.file_type().is_char_device(), "a character device");
    assert_eq!(whiteout.rdev(), 0, "device 0/0");
    assert!(!upper.join("etc/.wh.motd").exists());
    let mut value = [0u8; 8];
    let n = rustix::fs::lgetxattr(
        upper.join("var/cache"),
        "trusted.overlay.opaque",
        &mut value,
    )
    .expect("opaque xattr");
    assert_eq!(&value[..n], b"y");
    assert!(!upper.join("var/cache/.wh..wh..opq").exists());
    assert_eq!(
        fs::read(upper.join("var/cache/new")).expect("new"),
        b"fresh"
    );
    // The lower layer is untouched.
    assert_eq!(
        fs::read(pulled.layers[0].join("etc/motd")).expect("motd"),
        b"welcome\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pull_fetches_no_blobs_and_shared_layers_are_fetched_once() {
    let registry = FakeRegistry::start().await;
    let base = base_layer();
    let first = image(vec![base.clone(), app_layer()]);
    let second = image(vec![
        base.clone(),
        layer(&[Entry::File("other", 0o644, b"2")]),
    ]);
    registry.push("test/hello", "v1", &first);
    registry.push("test/other", "v1", &second);
    let scratch = Scratch::new("second");
    let store = scratch.store();
    let hello = image_ref(&format!("{}/test/hello:v1", registry.host()));
    let other = image_ref(&format!("{}/test/other:v1", registry.host()));

    let pulled = store.pull(&hello, None, true).await.expect("first pull");
    assert_eq!(registry.blob_requests(), 3, "config and two layers");

    registry.clear_requests();
    let again = store.pull(&hello, None, true).await.expect("second pull");
    assert_eq!(again, pulled);
    assert_eq!(registry.blob_requests(), 0, "nothing fetched twice");
    assert_eq!(registry.manifest_requests(), 1, "the tag is resolved again");

    registry.clear_requests();
    let pulled_other = store.pull(&other, None, true).await.expect("other image");
    let fetched: Vec<String> = registry
        .requests()
        .into_iter()
        .filter(|p| p.contains("/blobs/"))
        .collect();
    assert_eq!(
        fetched.len(),
        2,
        "config and the one new layer: {fetched:?}"
    );
    assert!(
        !fetched.iter().any(|p| p.ends_with(&base.digest)),
        "{fetched:?}"
    );
    assert_eq!(
        pulled_other.layers[0], pulled.layers[0],
        "one copy of the shared layer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_arch_index_yields_the_nodes_platform() {
    let registry = FakeRegistry::start().await;
    // The arm64 image's blobs are not served: choosing it would fail.
    let arm = image_with(
        vec![layer(&[Entry::File("arm", 0o644, b"arm")])],
        "arm64",
        None,
    );
    let amd = image(vec![base_layer()]);
    registry.push("test/multi", &amd.manifest_digest, &amd);
    registry.put_manifest(
        "test/multi",
        &arm.manifest_digest,
        fake_registry::OCI_MANIFEST,
        arm.manifest.clone(),
    );
    let (idx, idx_digest) = index(&[(&arm, "arm64"), (&amd, "amd64")]);
    registry.put_manifest(
        "test/multi",
        "latest",
        fake_registry::OCI_INDEX,
        idx.clone(),
    );
    let scratch = Scratch::new("multi");
    let reference = image_ref(&format!("{}/test/multi", registry.host()));

    let pulled = scratch
        .store()
        .pull(&reference, None, true)
        .await
        .expect("pulls");
    assert_eq!(pulled.index_digest.as_deref(), Some(idx_digest.as_str()));
    assert_eq!(pulled.manifest_digest, amd.manifest_digest);
    assert!(pulled.layers[0].join("bin/hello").is_file());
    assert!(
        scratch
            .0
            .join("blobs/sha256")
            .join(hex(&idx_digest))
            .is_file(),
        "index kept"
    );

    let s390x = Platform {
        os: "linux".into(),
        architecture: "s390x".into(),
        variant: None,
    };
    let e = scratch
        .store()
        .with_platform(s390x)
        .pull(&reference, None, true)
        .await
        .expect_err("no s390x image");
    assert!(matches!(e, PullError::NoPlatform { .. }), "{e}");
    assert!(e.to_string().contains("linux/arm64, linux/amd64"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_for_another_architecture_is_refused() {
    let registry = FakeRegistry::start().await;
    let arm = image_with(vec![base_layer()], "arm64", None);
    registry.push("test/arm", "v1", &arm);
    let scratch = Scratch::new("arch");
    let reference = image_ref(&format!("{}/test/arm:v1", registry.host()));
    let e = scratch
        .store()
        .pull(&reference, None, true)
        .await
        .expect_err("arm64");
    assert!(matches!(e, PullError::WrongPlatform { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("built for linux/arm64, this node runs linux/amd64"),
        "{e}"
    );
    assert!(
        names(&scratch.0.join("layers/sha256")).is_empty(),
        "no layer fetched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_that_does_not_match_its_digest_is_refused_and_not_kept() {
    let registry = FakeRegistry::start().await;
    let img = image(vec![base_layer(), app_layer()]);
    registry.push("test/hello", "v1", &img);
    // Same length, other bytes.
    let mut tampered = img.layers[1].blob.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    registry.put_blob(&img.layers[1].digest, tampered.clone());
    let scratch = Scratch::new("tampered");
    let reference = image_ref(&format!("{}/test/hello:v1", registry.host()));

    let e = scratch
        .store()
        .pull(&reference, None, true)
        .await
        .expect_err("refused");
    assert!(
        matches!(e, PullError::DigestMismatch { what: "blob", .. }),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "digest mismatch for blob {}: got {}",
            img.layers[1].digest,
            fake_registry::sha256(&tampered)
        )
    );
    let digest = hex(&img.layers[1].digest);
    assert!(!scratch.0.join("blobs/sha256").join(digest).exists());
    assert!(!scratch.0.join("layers/sha256").join(digest).exists());
    assert!(
        names(&scratch.0.join("blobs/sha256"))
            .iter()
            .all(|n| !n.starts_with('.')),
        "no download left behind"
    );
    assert_eq!(
        names(&scratch.0.join("layers/sha256")),
        vec![hex(&img.layers[0].digest).to_string()],
        "only the good layer"
    );
    assert!(scratch.store().lookup(&reference).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_longer_than_its_descriptor_is_cut_off() {
    let registry = FakeRegistry::start().await;
    let img = image(vec![base_layer()]);
    registry.push("test/hello", "v1", &img);
    let mut longer = img.layers[0].blob.clone();
    longer.extend_from_slice(&[0u8; 4096]);
    registry.put_blob(&img.layers[0].digest, longer);
    let scratch = Scratch::new("longer");
    let reference = image_ref(&format!("{}/test/hello:v1", registry.host()));

    let e = scratch
        .store()
        .pull(&reference, None, true)
        .await
        .expect_err("refused");
    assert!(matches!(e, PullError::TooLong { .. }), "{e:?}");
    assert!(e.to_string().contains("is longer than the"), "{e}");
    assert!(names(&scratch.0.join("layers/sha256")).is_empty());
    assert!(names(&scratch.0.join("blobs/sha256"))
        .iter()
        .all(|n| !n.starts_with('.')));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_tag_is_manifest_unknown() {
    let registry = FakeRegistry::start().await;
    registry.push("test/hello", "v1", &image(vec![base_layer()]));
    let scratch = Scratch::new("unknown");
    let reference = image_ref(&format!("{}/test/hello:nope", registry.host()));
    let e = scratch
        .store()
        .pull(&reference, None, true)
        .await
        .expect_err("unknown");
    assert_eq!(
        e.to_string(),
        format!(
            "manifest unknown: tag nope of test/hello at {}",
            registry.host()
        )
    );
    let reference = image_ref(&format!("{}/test/absent:v1", registry.host()));
    let e = scratch
        .store()
        .pull(&reference, None, true)
        .await
        .expect_err("unknown");
    assert!(matches!(e, PullError::RepositoryUnknown { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_digest_is_pulled_exactly() {
    let registry = FakeRegistry::start().await;
    let img = image(vec![base_layer()]);
    registry.push("test/hello", "v1", &img);
    let scratch = Scratch::new("pinned");
    let store = scratch.store();
    let pinned = image_ref(&format!(
        "{}/test/hello@{}",
        registry.host(),
        img.manifest_digest
    ));
    let pulled = store.pull(&pinned, None, true).await.expect("pulls");
    assert_eq!(pulled.manifest_digest, img.manifest_digest);

    // Everything is in the store: a pinned pull asks nothing at all.
    registry.clear_requests();
    store.pull(&pinned, None, true).await.expect("again");
    assert!(registry.requests().is_empty(), "{:?}", registry.requests());

    // The registry serves other bytes under a pinned digest.
    let other = image(vec![layer(&[Entry::File("x", 0o644, b"x")])]);
    let wanted = fake_registry::sha256(b"the manifest that was pinned");
    registry.put_manifest(
        "test/hello",
        &wanted,
        fake_registry::OCI_MANIFEST,
        other.manifest.clone(),
    );
    let wrong = image_ref(&format!("{}/test/hello@{wanted}", registry.host()));
    let e = store.pull(&wrong, None, true).await.expect_err("refused");
    assert_eq!(
        e.to_string(),
        format!(
            "digest mismatch for manifest {wanted}: got {}",
            other.manifest_digest
        )
    );
    assert!(!scratch.0.join("blobs/sha256").join(hex(&wanted)).exists());
    assert!(!scratch
        .0
        .join("blobs/sha256")
        .join(hex(&other.manifest_digest))
        .exists());
}

/// Every name under `dir` with what it is, its mode, owner, mtime and
/// content or target: what must not change.
fn snapshot(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("list") {
            let p = e.expect("entry").path();
            let m = fs::symlink_metadata(&p).expect("meta");
            let what = if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!("-> {:?}", fs::read_link(&p).expect("link"))
            } else if m.is_file() {
                format!("{:?}", fs::read(&p).expect("read"))
            } else {
                format!("rdev {}", m.rdev())
            };
            out.push(format!(
                "{} {:o} {}:{} {} {} {what}",
                p.display(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
                m.nlink()
            ));
        }
    }
    out.sort();
    out
}

/// A tar of hostile entries, names written raw (the tar crate refuses to
/// write `..` and absolute names).
struct HostileTar(tar::Builder<Vec<u8>>);

impl HostileTar {
    fn new() -> Self {
        HostileTar(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, name: &str, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.as_gnu_mut().expect("gnu").name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }

    fn file(mut self, name: &str, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, name, data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).expect("append");
        self
    }

    fn link(mut self, kind: tar::EntryType, name: &str, target: &str) -> Self {
        let mut h = Self::header(kind, name, 0);
        h.set_link_name(target).expect("target");
        h.set_cksum();
        self.0.append(&h, std::io::empty()).expect("append");
        self
    }

    fn char_device(mut self, name: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Char, name, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        h.set_cksum();
        self.0.append(&h, std::io::empty()).expect("append");
        self
    }

    fn pax(mut self, key: &str, value: &[u8]) -> Self {
        self.0.append_pax_extensions([(key, value)]).expect("pax");
        self
    }

    fn layer(self) -> fake_registry::Layer {
        fake_registry::layer_of_tar(self.0.into_inner().expect("tar"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_are_refused_and_leave_the_store_as_it_was() {
    let registry = FakeRegistry::start().await;
    let base = base_layer();
    let good = image(vec![base.clone(), app_layer()]);
    registry.push("test/good", "v1", &good);
    let scratch = Scratch::new("hostile");
    let limits = Limits {
        entries: 50,
        header_bytes: 64 * 1024,
        bytes: 1024 * 1024,
        keep_free: 0,
    };
    let store = scratch.store().with_limits(limits);
    let good_ref = image_ref(&format!("{}/test/good:v1", registry.host()));
    let pulled = store.pull(&good_ref, None, true).await.expect("good image");
    let layers = scratch.0.join("layers");
    let store_layers = layers.join("sha256");
    let before = snapshot(&layers);
    let base_hex = hex(&base.digest).to_string();

    let many = (0..60).fold(HostileTar::new(), |t, i| t.file(&format!("f{i}"), b"x"));
    let cases: Vec<(&str, fake_registry::Layer, &str)> = vec![
        (
            "whiteout of ..",
            HostileTar::new().file(".wh...", b"").layer(),
            "whiteout \".wh...\" does not name one file",
        ),
        (
            "write through a symlink it just made",
            HostileTar::new()
                .link(
                    tar::EntryType::Symlink,
                    "evil",
                    &store_layers.display().to_string(),
                )
                .file("evil/escape", b"x")
                .layer(),
            "goes through the symlink \"evil\"",
        ),
        (
            "whiteout of a stored layer through a symlink",
            HostileTar::new()
                .link(
                    tar::EntryType::Symlink,
                    "evil",
                    &store_layers.display().to_string(),
                )
                .file(&format!("evil/.wh.{base_hex}"), b"")
                .layer(),
            "goes through the symlink",
        ),
        (
            "hard link to a stored layer's file",
            HostileTar::new()
                .link(
                    tar::EntryType::Link,
                    "motd",
                    &format!("../sha256/{base_hex}/etc/motd"),
                )
                .layer(),
            "is outside the layer directory",
        ),
        (
            "hard link to an absolute path",
            HostileTar::new()
                .link(tar::EntryType::Link, "passwd", "/etc/passwd")
                .layer(),
            "is outside the layer directory",
        ),
        (
            "absolute name",
            HostileTar::new().file("/escape", b"x").layer(),
            "its name is absolute",
        ),
        (
            "dot-dot name",
            HostileTar::new().file("a/../../escape", b"x").layer(),
            "has a `..` component",
        ),
        (
            "character device",
            HostileTar::new().char_device("dev/mem", 1, 1).layer(),
            "is a character device node",
        ),
        (
            "gzip bomb",
            HostileTar::new()
                .file("zeros", &vec![0u8; 4 * 1024 * 1024])
                .layer(),
            "over 1048576 bytes, the limit of a layer",
        ),
        ("too many entries", many.layer(), "more than 50 entries"),
        (
            "oversize PAX header",
            HostileTar::new()
                .pax("comment", &vec![b'x'; 100 * 1024])
                .file("f", b"x")
                .layer(),
            "PAX extended header of",
        ),
    ];
    for (i, (what, layer, reason)) in cases.into_iter().enumerate() {
        let repository = format!("test/evil{i}");
        registry.push(&repository, "v1", &image(vec![base.clone(), layer]));
        let reference = image_ref(&format!("{}/{repository}:v1", registry.host()));
        let e = store.pull(&reference, None, true).await.expect_err(what);
        assert!(matches!(e, PullError::Layer { .. }), "{what}: {e:?}");
        assert!(e.to_string().contains(reason), "{what}: {e}");
        assert_eq!(
            snapshot(&layers),
            before,
            "{what}: the stored layers are untouched and no temporary directory is left"
        );
        assert!(
            names(&scratch.0.join("blobs/sha256"))
                .iter()
                .all(|n| !n.starts_with('.')),
            "{what}: no download left behind"
        );
        assert!(store.lookup(&reference).is_none(), "{what}");
    }
    assert!(!scratch.0.join("escape").exists() && !Path::new("/escape").exists());
    assert_eq!(store.lookup(&good_ref), Some(pulled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_unpack_is_cleared_when_the_store_opens() {
    let scratch = Scratch::new("interrupted");
    let outside = scratch.0.join("outside");
    fs::create_dir_all(&outside).expect("outside");
    fs::write(outside.join("keep"), b"keep").expect("keep");
    scratch.store();
    let temp = scratch.0.join("layers/.unpack-0123-1-1");
    fs::create_dir_all(temp.join("a/b/c")).expect("half a layer");
    fs::write(temp.join("a/b/c/file"), b"x").expect("file");
    std::os::unix::fs::symlink(&outside, temp.join("a/to-outside")).expect("symlink");
    scratch.store();
    assert!(!temp.exists(), "the interrupted unpack is gone");
    assert_eq!(names(&scratch.0.join("layers")), vec!["sha256".to_string()]);
    assert_eq!(fs::read(outside.join("keep")).expect("kept"), b"keep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_that_does_not_unpack_to_its_diff_id_is_refused() {
    let registry = FakeRegistry::start().await;
    let l = base_layer();
    let img = image_with(
        vec![l.clone()],
        "amd64",
        Some(vec![fake_registry::sha256(b"other")]),
    );
    registry.push("test/hello", "v1", &img);
    let scratch = Scratch::new("diffid");
    let reference = image_ref(&format!("{}/test/hello:v1", registry.host()));
    let e = scratch
        .store()
        .pull(&reference, None, true)
        .await
        .expect_err("refused");
    assert!(matches!(e, PullError::DiffIdMismatch { .. }), "{e}");
    assert!(names(&scratch.0.join("layers/sha256")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_with_credentials() {
    let registry = FakeRegistry::start().await;
    registry.push("team/app", "v1", &image(vec![base_layer()]));
    registry.require_token(TokenAuth {
        user: "robot".into(),
        password: "s3cret".into(),
        token: "tok-123".into(),
    });
    let scratch = Scratch::new("token");
    let store = scratch.store();
    let reference = image_ref(&format!("{}/team/app:v1", registry.host()));

    let e = store
        .pull(&reference, Some(("robot", "wrong")), true)
        .await
        .expect_err("refused");
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with(&format!(
            "registry {} refused access to team/app",
            registry.host()
        )),
        "{e}"
    );
    let e = store
        .pull(&reference, None, true)
        .await
        .expect_err("anonymous");
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e:?}");

    registry.clear_requests();
    let settings: Registry = serde_json::from_value(serde_json::json!({
        "insecure": true, "username": "robot", "password": "s3cret"
    }))
    .expect("registry settings");
    let pulled = store
        .pull_with(&reference, Some(&settings))
        .await
        .expect("pulls");
    assert!(pulled.layers[0].join("bin/hello").is_file());
    let state = registry.state.lock().expect("state");
    let token_request = state
        .requests
        .iter()
        .find(|(p, _)| p.starts_with("/token"))
        .expect("a token was asked for");
    assert!(
        token_request
            .0
            .contains("scope=repository%3Ateam%2Fapp%3Apull"),
        "{}",
        token_request.0
    );
    assert!(token_request
        .1
        .as_deref()
        .is_some_and(|a| a.starts_with("Basic ")));
    // The first request meets the challenge; one token serves all others.
    let api: Vec<&(String, Option<String>)> = state
        .requests
        .iter()
        .filter(|(p, _)| p.starts_with("/v2/"))
        .collect();
    assert_eq!(api[0].1, None, "{api:?}");
    assert!(
        api[1..]
            .iter()
            .all(|(_, a)| a.as_deref() == Some("Bearer tok-123")),
        "{api:?}"
    );
    assert_eq!(
        state
            .requests
            .iter()
            .filter(|(p, _)| p.starts_with("/token"))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_sends_the_credentials_when_challenged() {
    let registry = FakeRegistry::start().await;
    registry.push("team/app", "v1", &image(vec![base_layer()]));
    registry.require_basic("robot", "s3cret");
    let scratch = Scratch::new("basic-auth");
    let store = scratch.store();
    let reference = image_ref(&format!("{}/team/app:v1", registry.host()));

    let e = store
        .pull(&reference, None, true)
        .await
        .expect_err("no credentials");
    assert!(e.to_string().contains("none are configured"), "{e}");
    let e = store
        .pull(&reference, Some(("robot", "wrong")), true)
        .await
        .expect_err("wrong password");
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e:?}");

    let pulled = store
        .pull(&reference, Some(("robot", "s3cret")), true)
        .await
        .expect("pulls");
    assert!(pulled.layers[0].join("bin/hello").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_what_no_kept_image_uses() {
    let registry = FakeRegistry::start().await;
    let base = base_layer();
    let first = image(vec![base.clone(), app_layer()]);
    let second = image(vec![
        base.clone(),
        layer(&[Entry::File("other", 0o644, b"2")]),
    ]);
    registry.push("test/hello", "v1", &first);
    registry.push("test/other", "v1", &second);
    let scratch = Scratch::new("gc");
    let store = scratch.store();
    let hello = image_ref(&format!("{}/test/hello:v1", registry.host()));
    let other = image_ref(&format!("{}/test/other:v1", registry.host()));
    let kept = store.pull(&hello, None, true).await.expect("hello");
    let dropped = store.pull(&other, None, true).await.expect("other");
    // Leftovers of an interrupted pull.
    fs::write(scratch.0.join("blobs/sha256/.download-x-1-1"), b"partial").expect("leftover");

    let report = store.gc(std::slice::from_ref(&kept)).await.expect("gc");
    assert_eq!((report.images, report.blobs, report.layers), (1, 2, 1));
    assert_eq!(store.lookup(&hello), Some(kept.clone()));
    assert_eq!(store.lookup(&other), None);
    for layer in &kept.layers {
        assert!(layer.is_dir(), "{}", layer.display());
    }
    assert!(!dropped.layers[1].exists(), "the unshared layer is gone");
    let mut blobs = vec![
        hex(&first.manifest_digest).to_string(),
        hex(&first.config_digest).to_string(),
    ];
    blobs.sort();
    assert_eq!(names(&scratch.0.join("blobs/sha256")), blobs);

    let report = store.gc(&[]).await.expect("gc all");
    assert_eq!((report.images, report.blobs, report.layers), (1, 2, 2));
    assert!(names(&scratch.0.join("layers/sha256")).is_empty());
    assert!(names(&scratch.0.join("images")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_says_so() {
    // A port nothing listens on: bind, note, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let scratch = Scratch::new("unreachable");
    let reference = image_ref(&format!("127.0.0.1:{port}/test/hello:v1"));
    let e = scratch
        .store()
        .pull(&reference, None, true)
        .await
        .expect_err("unreachable");
    assert!(matches!(e, PullError::Unreachable { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("registry 127.0.0.1:{port} unreachable: ")),
        "{e}"
    );
}
