//! Where registry credentials and tokens go: only to the registry's own
//! origin; to a token realm on another host only over HTTPS; never over
//! plain HTTP unless the registry is marked insecure; never along a
//! redirect to another host (a CDN). Registries on 127.0.0.1 and, as
//! "another host", 127.0.0.2.

mod fake_registry;

use carapace_model::containers::ImageRef;
use carapace_oci::{Platform, PullError, Store};
use fake_registry::{image, layer, Entry, FakeRegistry, TestImage, TokenAuth};
use std::fs;
use std::path::PathBuf;

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "carapace-oci-credentials-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&p);
        Scratch(p)
    }

    fn store(&self, roots: &[rustls::pki_types::CertificateDer<'static>]) -> Store {
        let mut store = rustls::RootCertStore::empty();
        for cert in roots {
            store.add(cert.clone()).expect("root certificate");
        }
        Store::open(&self.0)
            .expect("store")
            .with_platform(Platform::linux_amd64())
            .with_tls_roots(store)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn test_image() -> TestImage {
    image(vec![layer(&[Entry::File("hi", 0o644, b"hi")])])
}

fn auth() -> TokenAuth {
    TokenAuth {
        user: "robot".into(),
        password: "s3cret".into(),
        token: "tok".into(),
    }
}

fn reference(registry: &FakeRegistry) -> ImageRef {
    ImageRef::try_from(format!("{}/team/app:v1", registry.host())).expect("reference")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_redirected_to_another_host_carries_no_credentials() {
    let registry = FakeRegistry::start().await;
    let cdn = FakeRegistry::start_on("127.0.0.2").await;
    let img = test_image();
    registry.push("team/app", "v1", &img);
    cdn.push("team/app", "v1", &img);
    registry.require_basic("robot", "s3cret");
    registry.redirect_blobs_to(&format!("http://{}", cdn.host()));
    let scratch = Scratch::new("cdn");

    let pulled = scratch
        .store(&[])
        .pull(&reference(&registry), Some(("robot", "s3cret")), true)
        .await
        .expect("pulls through the redirect");
    assert!(pulled.layers[0].join("hi").is_file());
    let at_cdn = cdn.requests_with_authorization();
    assert!(
        at_cdn.iter().any(|(p, _)| p.contains("/blobs/")),
        "{at_cdn:?}"
    );
    assert!(
        at_cdn.iter().all(|(_, a)| a.is_none()),
        "the CDN got no credentials: {at_cdn:?}"
    );
    assert!(
        registry
            .requests_with_authorization()
            .iter()
            .any(|(p, a)| p.contains("/blobs/")
                && a.as_deref().is_some_and(|a| a.starts_with("Basic "))),
        "the registry itself got them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_registry_sends_no_credentials_to_a_plain_http_realm() {
    let (registry, cert) = FakeRegistry::start_tls().await;
    let tokens = FakeRegistry::start().await;
    registry.push("team/app", "v1", &test_image());
    registry.require_token(auth());
    tokens.require_token(auth());
    registry.set_realm(&format!("http://{}/token", tokens.host()));
    let scratch = Scratch::new("http-realm");

    let e = scratch
        .store(&[cert])
        .pull(&reference(&registry), Some(("robot", "s3cret")), false)
        .await
        .expect_err("refused");
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e:?}");
    assert!(e.to_string().contains("is plain http"), "{e}");
    assert!(
        tokens.requests_with_authorization().is_empty(),
        "the plain http realm was not even asked: {:?}",
        tokens.requests_with_authorization()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_registry_is_not_followed_to_plain_http() {
    let (registry, cert) = FakeRegistry::start_tls().await;
    let cdn = FakeRegistry::start_on("127.0.0.2").await;
    let img = test_image();
    registry.push("team/app", "v1", &img);
    cdn.push("team/app", "v1", &img);
    registry.require_basic("robot", "s3cret");
    registry.redirect_blobs_to(&format!("http://{}", cdn.host()));
    let scratch = Scratch::new("downgrade");

    let e = scratch
        .store(&[cert])
        .pull(&reference(&registry), Some(("robot", "s3cret")), false)
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("to plain http"), "{e}");
    assert!(
        cdn.requests_with_authorization().is_empty(),
        "{:?}",
        cdn.requests_with_authorization()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insecure_registry_sends_its_password_over_http_only_to_its_own_host() {
    let registry = FakeRegistry::start().await;
    let tokens = FakeRegistry::start_on("127.0.0.2").await;
    registry.push("team/app", "v1", &test_image());
    registry.require_token(auth());
    tokens.require_token(auth());
    registry.set_realm(&format!("http://{}/token", tokens.host()));
    let scratch = Scratch::new("insecure-realm");

    let e = scratch
        .store(&[])
        .pull(&reference(&registry), Some(("robot", "s3cret")), true)
        .await
        .expect_err("the realm wants credentials it does not get");
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e:?}");
    let asked = tokens.requests_with_authorization();
    assert!(
        asked.iter().any(|(p, _)| p.starts_with("/token")),
        "{asked:?}"
    );
    assert!(
        asked.iter().all(|(_, a)| a.is_none()),
        "no password over plain http to another host: {asked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_realm_on_another_host_gets_the_credentials() {
    let (registry, cert) = FakeRegistry::start_tls().await;
    let (tokens, tokens_cert) = FakeRegistry::start_tls_on("127.0.0.2").await;
    registry.push("team/app", "v1", &test_image());
    registry.require_token(auth());
    tokens.require_token(auth());
    registry.set_realm(&format!("https://{}/token", tokens.host()));
    let scratch = Scratch::new("https-realm");

    let pulled = scratch
        .store(&[cert, tokens_cert])
        .pull(&reference(&registry), Some(("robot", "s3cret")), false)
        .await
        .expect("pulls with a token from the realm");
    assert!(pulled.layers[0].join("hi").is_file());
    let asked = tokens.requests_with_authorization();
    assert!(
        asked.iter().any(|(p, a)| p.starts_with("/token")
            && a.as_deref().is_some_and(|a| a.starts_with("Basic "))),
        "{asked:?}"
    );
    assert!(
        registry
            .requests_with_authorization()
            .iter()
            .all(|(_, a)| a.as_deref().is_none_or(|a| a == "Bearer tok")),
        "the registry sees only the token"
    );
}
