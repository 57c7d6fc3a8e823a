//! HTTPS registries: verified against the roots the caller gives the
//! store and only those (the node has no CA bundle of its own); without
//! roots, plain HTTP registries still work and HTTPS ones say why not.

mod fake_registry;

use carapace_model::containers::ImageRef;
use carapace_oci::{Platform, PullError, Store};
use fake_registry::{image, layer, Entry, FakeRegistry, TokenAuth};
use std::fs;
use std::path::PathBuf;

fn roots(cert: rustls::pki_types::CertificateDer<'static>) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root certificate");
    roots
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("carapace-oci-tls-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_registry_is_verified_against_the_given_roots() {
    let (registry, cert) = FakeRegistry::start_tls().await;
    registry.push(
        "test/hello",
        "v1",
        &image(vec![layer(&[Entry::File("hi", 0o644, b"hi")])]),
    );
    registry.require_token(TokenAuth {
        user: "robot".into(),
        password: "s3cret".into(),
        token: "tok".into(),
    });
    let reference =
        ImageRef::try_from(format!("{}/test/hello:v1", registry.host())).expect("reference");

    let trusted = Scratch::new("trusted");
    let store = Store::open(&trusted.0)
        .expect("store")
        .with_platform(Platform::linux_amd64())
        .with_tls_roots(roots(cert));
    let pulled = store
        .pull(&reference, Some(("robot", "s3cret")), false)
        .await
        .expect("pulls over HTTPS");
    assert_eq!(fs::read(pulled.layers[0].join("hi")).expect("file"), b"hi");

    // Another root: the registry's certificate is refused, nothing is fetched.
    let stranger = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .expect("cert")
        .cert
        .der()
        .clone();
    let untrusted = Scratch::new("untrusted");
    let store = Store::open(&untrusted.0)
        .expect("store")
        .with_platform(Platform::linux_amd64())
        .with_tls_roots(roots(stranger));
    registry.clear_requests();
    let e = store
        .pull(&reference, Some(("robot", "s3cret")), false)
        .await
        .expect_err("untrusted certificate");
    assert!(matches!(e, PullError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains("certificate"), "{e}");
    assert!(registry.requests().is_empty(), "no request got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_roots_plain_http_works_and_https_says_why_not() {
    // No CA bundle anywhere this process looks: the store never reads one.
    let registry = FakeRegistry::start().await;
    registry.push(
        "test/hello",
        "v1",
        &image(vec![layer(&[Entry::File("hi", 0o644, b"hi")])]),
    );
    let reference =
        ImageRef::try_from(format!("{}/test/hello:v1", registry.host())).expect("reference");
    let scratch = Scratch::new("no-roots");
    let store = Store::open(&scratch.0)
        .expect("store")
        .with_platform(Platform::linux_amd64());

    let pulled = store
        .pull(&reference, None, true)
        .await
        .expect("plain HTTP pulls");
    assert_eq!(fs::read(pulled.layers[0].join("hi")).expect("file"), b"hi");

    registry.clear_requests();
    let e = store
        .pull(&reference, None, false)
        .await
        .expect_err("HTTPS without roots");
    assert!(matches!(e, PullError::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains("no root certificates"), "{e}");
    assert!(registry.requests().is_empty(), "nothing was sent");
}
