//! An in-process OCI registry on 127.0.0.1 for the pull tests: serves
//! manifests by tag or digest and blobs by digest, optionally behind the
//! bearer token flow with basic credentials, records every request, and
//! can be told to serve wrong bytes. Also builds the synthetic images it
//! serves (tar.gz layers, config, manifest, index).

#![allow(dead_code)]

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub fn sha256(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::from("sha256:");
    for b in d.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

/// Credentials the token endpoint wants, and the token it gives for them.
#[derive(Clone)]
pub struct TokenAuth {
    pub user: String,
    pub password: String,
    pub token: String,
}

#[derive(Default)]
pub struct State {
    /// By repository, then tag or digest: (media type, bytes).
    manifests: HashMap<String, HashMap<String, (String, Vec<u8>)>>,
    /// By digest.
    blobs: HashMap<String, Vec<u8>>,
    auth: Option<TokenAuth>,
    /// User and password for plain basic auth (no token service).
    basic: Option<(String, String)>,
    /// `GET /v2/…` paths (and the Authorization header, if any).
    pub requests: Vec<(String, Option<String>)>,
    /// The realm the Bearer challenge names, if not this registry's `/token`.
    realm: Option<String>,
    /// Blob requests are answered with a redirect to this base URL.
    redirect_blobs: Option<String>,
}

pub struct FakeRegistry {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

impl FakeRegistry {
    /// Plain HTTP.
    pub async fn start() -> FakeRegistry {
        Self::serve(None, "127.0.0.1").await
    }

    /// Plain HTTP on another loopback address (another host, to the client).
    pub async fn start_on(ip: &str) -> FakeRegistry {
        Self::serve(None, ip).await
    }

    /// HTTPS with a certificate self-signed for 127.0.0.1, returned (DER)
    /// for the client to trust.
    pub async fn start_tls() -> (FakeRegistry, CertificateDer<'static>) {
        Self::start_tls_on("127.0.0.1").await
    }

    /// HTTPS on `ip`, with a certificate self-signed for it.
    pub async fn start_tls_on(ip: &str) -> (FakeRegistry, CertificateDer<'static>) {
        let generated = rcgen::generate_simple_self_signed(vec![ip.to_string()]).expect("cert");
        let cert = generated.cert.der().clone();
        let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der()).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (Self::serve(Some(acceptor), ip).await, cert)
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>, ip: &str) -> FakeRegistry {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let response = handle(&state, scheme, addr, &req);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        // A client refusing the certificate ends here.
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
        FakeRegistry { addr, state }
    }

    /// `127.0.0.1:<port>`: the registry part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn require_basic(&self, user: &str, password: &str) {
        self.lock().basic = Some((user.to_string(), password.to_string()));
    }

    pub fn require_token(&self, auth: TokenAuth) {
        self.lock().auth = Some(auth);
    }

    /// Names `realm` in the Bearer challenge instead of this registry's `/token`.
    pub fn set_realm(&self, realm: &str) {
        self.lock().realm = Some(realm.to_string());
    }

    /// Answers blob requests with a redirect to the same path under `base`
    /// (`http://host:port`), as registries do to a CDN.
    pub fn redirect_blobs_to(&self, base: &str) {
        self.lock().redirect_blobs = Some(base.to_string());
    }

    /// Every request with the Authorization header it carried.
    pub fn requests_with_authorization(&self) -> Vec<(String, Option<String>)> {
        self.lock().requests.clone()
    }

    pub fn put_blob(&self, digest: &str, bytes: Vec<u8>) {
        self.lock().blobs.insert(digest.to_string(), bytes);
    }

    pub fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) {
        self.lock()
            .manifests
            .entry(repository.to_string())
            .or_default()
            .insert(reference.to_string(), (media_type.to_string(), bytes));
    }

    /// Serves `image` as `repository:tag` (and by its digest), with its blobs.
    pub fn push(&self, repository: &str, tag: &str, image: &TestImage) {
        self.put_blob(&image.config_digest, image.config.clone());
        for layer in &image.layers {
            self.put_blob(&layer.digest, layer.blob.clone());
        }
        self.put_manifest(repository, tag, OCI_MANIFEST, image.manifest.clone());
        self.put_manifest(
            repository,
            &image.manifest_digest,
            OCI_MANIFEST,
            image.manifest.clone(),
        );
    }

    pub fn requests(&self) -> Vec<String> {
        self.lock()
            .requests
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }

    pub fn blob_requests(&self) -> usize {
        self.requests()
            .iter()
            .filter(|p| p.contains("/blobs/"))
            .count()
    }

    pub fn manifest_requests(&self) -> usize {
        self.requests()
            .iter()
            .filter(|p| p.contains("/manifests/"))
            .count()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("registry state")
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

fn error(status: StatusCode, code: &str) -> Response<Full<Bytes>> {
    let body = json!({ "errors": [{ "code": code, "message": code.to_lowercase() }] });
    respond(status, "application/json", body.to_string().into_bytes())
}

fn handle(
    state: &Mutex<State>,
    scheme: &str,
    addr: SocketAddr,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let mut state = state.lock().expect("registry state");
    let path = req.uri().path().to_string();
    let authorization = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state.requests.push((
        req.uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or(path.clone()),
        authorization.clone(),
    ));

    if path == "/token" {
        let Some(auth) = &state.auth else {
            return error(StatusCode::NOT_FOUND, "NOT_FOUND");
        };
        let expected = format!(
            "Basic {}",
            base64(&format!("{}:{}", auth.user, auth.password))
        );
        if authorization.as_deref() != Some(expected.as_str()) {
            return respond(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                b"bad credentials".to_vec(),
            );
        }
        let body = json!({ "token": auth.token, "expires_in": 300 });
        return respond(
            StatusCode::OK,
            "application/json",
            body.to_string().into_bytes(),
        );
    }

    if let Some((user, password)) = &state.basic {
        let expected = format!("Basic {}", base64(&format!("{user}:{password}")));
        if authorization.as_deref() != Some(expected.as_str()) {
            let mut r = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
            r.headers_mut().insert(
                "WWW-Authenticate",
                "Basic realm=\"fake\"".parse().expect("header"),
            );
            return r;
        }
    }

    if let Some(auth) = &state.auth {
        if authorization.as_deref() != Some(format!("Bearer {}", auth.token).as_str()) {
            let mut r = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
            let realm = state
                .realm
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{addr}/token"));
            let challenge = format!("Bearer realm=\"{realm}\",service=\"fake\"");
            r.headers_mut()
                .insert("WWW-Authenticate", challenge.parse().expect("header"));
            return r;
        }
    }

    if path == "/v2/" {
        return respond(StatusCode::OK, "application/json", b"{}".to_vec());
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND");
    };
    if let Some(i) = rest.rfind("/manifests/") {
        let (repository, reference) = (&rest[..i], &rest[i + "/manifests/".len()..]);
        let Some(repo) = state.manifests.get(repository) else {
            return error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
        };
        return match repo.get(reference) {
            Some((media_type, bytes)) => respond(StatusCode::OK, media_type, bytes.clone()),
            None => error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        };
    }
    if let Some(i) = rest.rfind("/blobs/") {
        let digest = &rest[i + "/blobs/".len()..];
        if let Some(base) = &state.redirect_blobs {
            return Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header("Location", format!("{base}{path}"))
                .body(Full::new(Bytes::new()))
                .expect("response");
        }
        return match state.blobs.get(digest) {
            Some(bytes) => respond(StatusCode::OK, "application/octet-stream", bytes.clone()),
            None => error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        };
    }
    error(StatusCode::NOT_FOUND, "NOT_FOUND")
}

fn base64(s: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A gzipped tar layer, its digest and its diff ID.
#[derive(Clone)]
pub struct Layer {
    pub blob: Vec<u8>,
    pub digest: String,
    pub diff_id: String,
}

/// One entry of a synthetic layer.
pub enum Entry<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    Symlink(&'a str, &'a str),
    /// A raw name, written as is (`..` and all).
    RawFile(&'a str, &'a [u8]),
}

pub fn layer(entries: &[Entry<'_>]) -> Layer {
    let mut b = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        match entry {
            Entry::Dir(path, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_path(path).expect("path");
                h.set_cksum();
                b.append(&h, std::io::empty()).expect("append");
            }
            Entry::File(path, mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                h.set_path(path).expect("path");
                h.set_cksum();
                b.append(&h, *data).expect("append");
            }
            Entry::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_path(path).expect("path");
                h.set_link_name(target).expect("target");
                h.set_cksum();
                b.append(&h, std::io::empty()).expect("append");
            }
            Entry::RawFile(path, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                let name = &mut h.as_gnu_mut().expect("gnu").name;
                name[..path.len()].copy_from_slice(path.as_bytes());
                h.set_cksum();
                b.append(&h, *data).expect("append");
            }
        }
    }
    layer_of_tar(b.into_inner().expect("tar"))
}

/// A layer whose uncompressed tar is `tar`, as it is (hostile ones too).
pub fn layer_of_tar(tar: Vec<u8>) -> Layer {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar).expect("gzip");
    let blob = gz.finish().expect("gzip");
    Layer {
        digest: sha256(&blob),
        diff_id: sha256(&tar),
        blob,
    }
}

pub struct TestImage {
    pub layers: Vec<Layer>,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
}

/// An image of `layers` for `architecture`, whose config lists `diff_ids`
/// (the layers' own unless given).
pub fn image_with(
    layers: Vec<Layer>,
    architecture: &str,
    diff_ids: Option<Vec<String>>,
) -> TestImage {
    let diff_ids = diff_ids.unwrap_or_else(|| layers.iter().map(|l| l.diff_id.clone()).collect());
    let config = json!({
        "architecture": architecture, "os": "linux",
        "config": { "Cmd": ["/bin/hello"], "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids }
    })
    .to_string()
    .into_bytes();
    let config_digest = sha256(&config);
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": layers.iter().map(|l| json!({
            "mediaType": OCI_LAYER_GZIP, "digest": l.digest, "size": l.blob.len()
        })).collect::<Vec<_>>()
    })
    .to_string()
    .into_bytes();
    TestImage {
        manifest_digest: sha256(&manifest),
        manifest,
        config,
        config_digest,
        layers,
    }
}

pub fn image(layers: Vec<Layer>) -> TestImage {
    image_with(layers, "amd64", None)
}

/// An OCI index of `(image, architecture)` entries, and its digest.
pub fn index(entries: &[(&TestImage, &str)]) -> (Vec<u8>, String) {
    let doc = json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": entries.iter().map(|(image, arch)| json!({
            "mediaType": OCI_MANIFEST, "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "platform": { "os": "linux", "architecture": arch }
        })).collect::<Vec<_>>()
    })
    .to_string()
    .into_bytes();
    let digest = sha256(&doc);
    (doc, digest)
}
