//! The registry side of a pull: a small client for the OCI distribution
//! protocol (`GET /v2/<repo>/manifests/<ref>`, `GET /v2/<repo>/blobs/<digest>`)
//! over hyper (HTTP/1.1) and rustls (ring).
//!
//! Authentication follows the registry's `WWW-Authenticate` challenge on a
//! 401: `Bearer realm=…,service=…,scope=…` gets a pull token from the realm
//! (with basic credentials when the settings give some), `Basic` sends the
//! credentials themselves; the request is then made again, once. Redirects
//! (Docker Hub sends blobs to a CDN) are followed, without the
//! `Authorization` header once they leave the origin (scheme, host and
//! port) it was meant for.
//!
//! Where secrets go: the token (and basic credentials the registry asks
//! for) only to the registry's own origin. Basic credentials go to a token
//! realm on another host only over HTTPS (as Docker does, e.g.
//! auth.docker.io for Docker Hub); a realm over plain HTTP is refused
//! unless the registry is marked insecure, and even then gets the
//! credentials only on the registry's own host. A registry reached over
//! HTTPS is never followed to plain HTTP.
//!
//! HTTPS is verified against the roots the caller gave the store, and only
//! those: the node has no CA bundle. Plain HTTP is used only for registries
//! marked insecure. Every response body is read with a limit or streamed
//! into a file while it is hashed and counted.
//!
//! Why not `oci-client`: its `Client::try_from(ClientConfig)` always builds
//! a default `reqwest::Client` too, which panics on a system without a CA
//! bundle, so on the node every pull would panic, plain HTTP included.

use crate::digest::Sha256Digest;
use crate::error::{PullError, StoreError};
use crate::manifest::{ACCEPTED, MAX_MANIFEST_BYTES};
use crate::unpack::error_chain;
use carapace_model::containers::{ImageRef, DEFAULT_REGISTRY};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, ACCEPT, AUTHORIZATION, HOST, LOCATION, USER_AGENT, WWW_AUTHENTICATE,
};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use sha2::{Digest as _, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where Docker Hub (`docker.io`) answers the registry API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

const AGENT: &str = concat!("carapace-oci/", env!("CARGO_PKG_VERSION"));
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest wait for a response, and for each piece of a body.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REDIRECTS: usize = 5;
const MAX_TOKEN_BYTES: u64 = 1024 * 1024;
const MAX_ERROR_BYTES: u64 = 16 * 1024;

/// One pull's connection to one repository of one registry.
pub(crate) struct Remote {
    /// The registry as the image reference names it, for messages.
    registry: String,
    repository: String,
    /// `https://registry` or `http://registry` (Docker Hub: its API host).
    base: String,
    /// The host of `base`, lowercase, without port.
    host: String,
    /// Plain HTTP allowed (the registry is marked insecure).
    insecure: bool,
    credentials: Option<(String, String)>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The `Authorization` value the registry's challenge called for.
    authorization: Option<String>,
}

impl Remote {
    pub(crate) fn new(
        image: &ImageRef,
        credentials: Option<(&str, &str)>,
        insecure: bool,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Remote {
        let host = if image.registry() == DEFAULT_REGISTRY {
            DOCKER_HUB_API
        } else {
            image.registry()
        };
        let base = format!("{}://{host}", if insecure { "http" } else { "https" });
        Remote {
            registry: image.registry().to_string(),
            repository: image.repository().to_string(),
            host: base.parse::<Uri>().map(|u| host_of(&u)).unwrap_or_default(),
            base,
            insecure,
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
            tls,
            authorization: None,
        }
    }

    /// The manifest or index named by a tag or a digest, and the digest of
    /// the bytes served. For a digest, the bytes are checked against it.
    pub(crate) async fn manifest(
        &mut self,
        tag_or_digest: &str,
    ) -> Result<(Vec<u8>, Sha256Digest), PullError> {
        let asked = Asked::Manifest(tag_or_digest);
        let path = format!("/v2/{}/manifests/{tag_or_digest}", self.repository);
        let mut response = self.get(&path, Some(&ACCEPTED.join(", ")), asked).await?;
        let bytes = match read_limited(response.body_mut(), MAX_MANIFEST_BYTES).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return Err(PullError::TooLarge {
                    what: "manifest",
                    digest: tag_or_digest.to_string(),
                    size: MAX_MANIFEST_BYTES + 1,
                    limit: MAX_MANIFEST_BYTES,
                })
            }
            Err(reason) => return Err(self.broke_off(asked, reason)),
        };
        let actual = Sha256Digest::of(&bytes);
        if tag_or_digest.starts_with("sha256:") && actual.to_string() != tag_or_digest {
            return Err(PullError::DigestMismatch {
                what: "manifest",
                expected: tag_or_digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok((bytes, actual))
    }

    /// Streams the blob `digest` into the new file `to`, refusing it as
    /// soon as it is longer than `size`, and at the end unless it is
    /// exactly `size` bytes hashing to `digest`. The file is fsynced.
    pub(crate) async fn blob_to_file(
        &mut self,
        digest: &Sha256Digest,
        size: u64,
        what: &'static str,
        to: &Path,
    ) -> Result<(), PullError> {
        let asked = Asked::Blob(what, digest);
        let path = format!("/v2/{}/blobs/{digest}", self.repository);
        let mut response = self.get(&path, None, asked).await?;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(to)
            .await
            .map_err(|e| StoreError::new("create", to, e))?;
        let mut hasher = Sha256::new();
        let mut written: u64 = 0;
        while let Some(chunk) = next_chunk(response.body_mut())
            .await
            .map_err(|reason| self.broke_off(asked, reason))?
        {
            written = written.saturating_add(chunk.len() as u64);
            if written > size {
                return Err(PullError::TooLong {
                    what,
                    digest: digest.to_string(),
                    size,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| StoreError::new("write", to, e))?;
        }
        let actual = Sha256Digest::finish(hasher);
        if &actual != digest {
            return Err(PullError::DigestMismatch {
                what,
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        if written != size {
            return Err(PullError::SizeMismatch {
                what,
                digest: digest.to_string(),
                size,
                got: written,
            });
        }
        file.sync_all()
            .await
            .map_err(|e| StoreError::new("fsync", to, e).into())
    }

    /// A GET on the registry: answers a 401 challenge once, follows
    /// redirects, and turns any other failure status into its error.
    async fn get(
        &mut self,
        path: &str,
        accept: Option<&str>,
        asked: Asked<'_>,
    ) -> Result<Response<Incoming>, PullError> {
        let url = self.url(&format!("{}{path}", self.base), asked)?;
        let mut challenged = false;
        loop {
            let authorization = self.authorization.clone();
            let response = self
                .fetch(&url, accept, authorization.as_deref(), asked)
                .await?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let challenge = response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                self.answer(&challenge).await?;
                continue;
            }
            return Err(self.status_error(response, asked).await);
        }
    }

    /// Sets the `Authorization` the registry's challenge asks for.
    async fn answer(&mut self, challenge: &str) -> Result<(), PullError> {
        let challenges = parse_challenges(challenge);
        let basic = self
            .credentials
            .as_ref()
            .map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes())));
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = bearer.param("realm").ok_or_else(|| {
                self.unauthorized("its Bearer challenge names no realm".to_string())
            })?;
            let scope = bearer
                .param("scope")
                .map(str::to_string)
                .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
            let mut query = format!("scope={}", percent_encode(&scope));
            if let Some(service) = bearer.param("service") {
                query = format!("service={}&{query}", percent_encode(service));
            }
            let asked = Asked::Token;
            let realm_url = self.url(realm, asked)?;
            let realm_https = realm_url.scheme_str() == Some("https");
            if !realm_https && !self.insecure {
                return Err(self.unauthorized(format!(
                    "its token realm {realm} is plain http, and credentials and tokens of a registry not marked insecure go over https only"
                )));
            }
            // Plain HTTP (an insecure registry) carries the password only to
            // the registry's own host.
            let basic = basic.filter(|_| realm_https || host_of(&realm_url) == self.host);
            let separator = if realm.contains('?') { '&' } else { '?' };
            let url = self.url(&format!("{realm}{separator}{query}"), asked)?;
            let mut response = self.fetch(&url, None, basic.as_deref(), asked).await?;
            if !response.status().is_success() {
                let status = response.status();
                let text = read_text(response.body_mut()).await;
                return Err(self.unauthorized(format!(
                    "the token service refused: HTTP {}{}",
                    status.as_u16(),
                    if text.is_empty() {
                        String::new()
                    } else {
                        format!(": {text}")
                    }
                )));
            }
            let body = match read_limited(response.body_mut(), MAX_TOKEN_BYTES).await {
                Ok(Some(body)) => body,
                Ok(None) => return Err(self.unauthorized("the token is too large".into())),
                Err(reason) => return Err(self.broke_off(asked, reason)),
            };
            let token = serde_json::from_slice::<TokenResponse>(&body)
                .ok()
                .and_then(|t| t.token.or(t.access_token))
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    self.unauthorized("the token service answered without a token".into())
                })?;
            self.authorization = Some(format!("Bearer {token}"));
            Ok(())
        } else if challenges.iter().any(|c| c.scheme == "basic") {
            match basic {
                Some(b) => {
                    self.authorization = Some(b);
                    Ok(())
                }
                None => Err(self.unauthorized(
                    "it asks for a user name and password and none are configured".into(),
                )),
            }
        } else {
            Err(self.unauthorized("HTTP 401 without a Bearer or Basic challenge".into()))
        }
    }

    /// One GET, following redirects; `authorization` goes only to the
    /// origin of `url` itself, and from HTTPS never on to plain HTTP
    /// unless the registry is marked insecure.
    async fn fetch(
        &self,
        url: &Uri,
        accept: Option<&str>,
        authorization: Option<&str>,
        asked: Asked<'_>,
    ) -> Result<Response<Incoming>, PullError> {
        let mut url = url.clone();
        let first = origin(&url);
        for _ in 0..=MAX_REDIRECTS {
            let auth = authorization.filter(|_| origin(&url) == first);
            let response = self.send(&url, accept, auth, asked).await?;
            if response.status().is_redirection() {
                if let Some(location) = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                {
                    let next = self.url(&resolve(&url, location), asked)?;
                    if url.scheme_str() == Some("https")
                        && next.scheme_str() != Some("https")
                        && !self.insecure
                    {
                        return Err(PullError::Registry {
                            registry: self.registry.clone(),
                            what: asked.to_string(),
                            reason: format!(
                                "redirected from https to plain http ({}), which only a registry marked insecure may use",
                                next.authority().map(|a| a.as_str()).unwrap_or_default()
                            ),
                        });
                    }
                    url = next;
                    continue;
                }
            }
            return Ok(response);
        }
        Err(PullError::Registry {
            registry: self.registry.clone(),
            what: asked.to_string(),
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// One request on a new connection (TCP, or TLS on TCP).
    async fn send(
        &self,
        url: &Uri,
        accept: Option<&str>,
        authorization: Option<&str>,
        asked: Asked<'_>,
    ) -> Result<Response<Incoming>, PullError> {
        let authority = url.authority().map(|a| a.as_str()).unwrap_or_default();
        let https = url.scheme_str() == Some("https");
        // Never a secret in clear text, unless the registry is marked insecure.
        let authorization = authorization.filter(|_| https || self.insecure);
        let tls = match (https, &self.tls) {
            (false, _) => None,
            (true, Some(tls)) => Some(tls.clone()),
            (true, None) => {
                return Err(PullError::Tls {
                    registry: self.registry.clone(),
                    reason: format!(
                        "no root certificates to check {authority} against (the image store was given none)"
                    ),
                })
            }
        };
        let host = url
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let unreachable = |reason: String| PullError::Unreachable {
            registry: self.registry.clone(),
            reason,
        };
        let tcp =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
                .await
            {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => {
                    return Err(unreachable(format!("cannot connect to {authority}: {e}")))
                }
                Err(_) => {
                    return Err(unreachable(format!(
                        "connecting to {authority} timed out after {} s",
                        CONNECT_TIMEOUT.as_secs()
                    )))
                }
            };
        let mut request = Request::get(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(HOST, authority)
            .header(USER_AGENT, AGENT);
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        if let Some(authorization) = authorization {
            let mut value = HeaderValue::from_str(authorization).map_err(|_| {
                self.unauthorized("the credentials are not valid in a header".into())
            })?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| PullError::Registry {
                registry: self.registry.clone(),
                what: asked.to_string(),
                reason: format!("cannot make a request for {url}: {e}"),
            })?;
        let exchanged = match tls {
            None => exchange(tcp, request).await,
            Some(config) => {
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| unreachable(format!("{host:?} is not a TLS server name: {e}")))?;
                let connector = tokio_rustls::TlsConnector::from(config);
                let stream =
                    match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            return Err(unreachable(format!(
                                "TLS handshake with {authority} failed: {}",
                                error_chain(&e)
                            )))
                        }
                        Err(_) => {
                            return Err(unreachable(format!(
                                "TLS handshake with {authority} timed out"
                            )))
                        }
                    };
                exchange(stream, request).await
            }
        };
        exchanged.map_err(|reason| unreachable(format!("{authority}: {reason}")))
    }

    fn url(&self, s: &str, asked: Asked<'_>) -> Result<Uri, PullError> {
        s.parse::<Uri>()
            .ok()
            .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
            .ok_or_else(|| PullError::Registry {
                registry: self.registry.clone(),
                what: asked.to_string(),
                reason: format!("{s:?} is not an http(s) URL"),
            })
    }

    fn unauthorized(&self, reason: String) -> PullError {
        PullError::Unauthorized {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            reason,
        }
    }

    fn broke_off(&self, asked: Asked<'_>, reason: String) -> PullError {
        PullError::Registry {
            registry: self.registry.clone(),
            what: asked.to_string(),
            reason: format!("the transfer broke off: {reason}"),
        }
    }

    /// The error for a failure status, from the registry's error body
    /// (`{"errors":[{"code":…,"message":…}]}`) where it sent one.
    async fn status_error(&self, mut response: Response<Incoming>, asked: Asked<'_>) -> PullError {
        let status = response.status();
        let text = read_text(response.body_mut()).await;
        let codes: Vec<String> = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.errors.into_iter().map(|e| e.code).collect())
            .unwrap_or_default();
        let has = |code: &str| codes.iter().any(|c| c == code);
        let registry = self.registry.clone();
        let repository = self.repository.clone();
        if has("NAME_UNKNOWN") {
            return PullError::RepositoryUnknown {
                registry,
                repository,
            };
        }
        if status == StatusCode::NOT_FOUND
            || has("MANIFEST_UNKNOWN")
            || has("BLOB_UNKNOWN")
            || has("NOT_FOUND")
        {
            match asked {
                Asked::Manifest(r) => {
                    return PullError::ManifestUnknown {
                        registry,
                        repository,
                        reference: if r.starts_with("sha256:") {
                            format!("digest {r}")
                        } else {
                            format!("tag {r}")
                        },
                    }
                }
                Asked::Blob(_, d) => {
                    return PullError::BlobUnknown {
                        registry,
                        repository,
                        digest: d.to_string(),
                    }
                }
                Asked::Token => {}
            }
        }
        let shown = format!(
            "HTTP {}{}",
            status,
            if text.is_empty() {
                String::new()
            } else {
                format!(": {text}")
            }
        );
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return self.unauthorized(shown);
        }
        PullError::Registry {
            registry,
            what: asked.to_string(),
            reason: shown,
        }
    }
}

/// What a request asked for, for messages.
#[derive(Clone, Copy)]
enum Asked<'a> {
    Token,
    Manifest(&'a str),
    Blob(&'static str, &'a Sha256Digest),
}

impl std::fmt::Display for Asked<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Asked::Token => f.write_str("a pull token"),
            Asked::Manifest(r) => write!(f, "manifest {r}"),
            Asked::Blob(what, d) => write!(f, "{what} {d}"),
        }
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    errors: Vec<ErrorEntry>,
}

#[derive(serde::Deserialize)]
struct ErrorEntry {
    code: String,
}

/// Sends `request` over `io` and waits for the response head.
async fn exchange<T>(io: T, request: Request<Empty<Bytes>>) -> Result<Response<Incoming>, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| error_chain(&e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    match tokio::time::timeout(READ_TIMEOUT, sender.send_request(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err(format!("no answer within {} s", READ_TIMEOUT.as_secs())),
    }
}

/// The next piece of a body; None at its end.
async fn next_chunk(body: &mut Incoming) -> Result<Option<Bytes>, String> {
    loop {
        match tokio::time::timeout(READ_TIMEOUT, body.frame()).await {
            Err(_) => return Err(format!("nothing received for {} s", READ_TIMEOUT.as_secs())),
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(error_chain(&e)),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// The whole body if it is at most `limit` bytes; None if longer.
async fn read_limited(body: &mut Incoming, limit: u64) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = next_chunk(body).await? {
        if (out.len() + chunk.len()) as u64 > limit {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}

/// An error body, shortened, as one line of text.
async fn read_text(body: &mut Incoming) -> String {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = next_chunk(body).await {
        out.extend_from_slice(&chunk);
        if out.len() as u64 > MAX_ERROR_BYTES {
            break;
        }
    }
    let text = String::from_utf8_lossy(&out);
    let mut line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > 300 {
        let mut cut = 300;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

/// The host of a URL, lowercase, without brackets or port.
fn host_of(url: &Uri) -> String {
    url.host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// Scheme, host and port (the scheme's default if none is given): what an
/// `Authorization` header is sent to.
fn origin(url: &Uri) -> (String, String, u16) {
    let scheme = url.scheme_str().unwrap_or_default().to_ascii_lowercase();
    let port = url
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    (scheme, host_of(url), port)
}

/// A `Location` against the URL that answered with it.
fn resolve(base: &Uri, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let scheme = base.scheme_str().unwrap_or("https");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    let path = base.path();
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    format!("{scheme}://{authority}{dir}{location}")
}

/// One `WWW-Authenticate` challenge: its scheme (lowercase) and parameters.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `Bearer realm="…",service="…", Basic realm="…"` (RFC 7235
/// challenges with auth-params; quoted strings with `\` escapes).
fn parse_challenges(header: &str) -> Vec<Challenge> {
    let chars: Vec<char> = header.chars().collect();
    let mut out: Vec<Challenge> = Vec::new();
    let mut i = 0;
    let skip = |i: &mut usize, also_commas: bool| {
        while *i < chars.len() && (chars[*i].is_whitespace() || (also_commas && chars[*i] == ',')) {
            *i += 1;
        }
    };
    loop {
        skip(&mut i, true);
        if i >= chars.len() {
            break;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '=' && chars[i] != ',' {
            i += 1;
        }
        let token: String = chars[start..i].iter().collect();
        skip(&mut i, false);
        if i < chars.len() && chars[i] == '=' {
            i += 1;
            skip(&mut i, false);
            let mut value = String::new();
            if i < chars.len() && chars[i] == '"' {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    value.push(chars[i]);
                    i += 1;
                }
                i += 1;
            } else {
                while i < chars.len() && chars[i] != ',' && !chars[i].is_whitespace() {
                    value.push(chars[i]);
                    i += 1;
                }
            }
            if let Some(c) = out.last_mut() {
                c.params.push((token.to_ascii_lowercase(), value));
            }
        } else if !token.is_empty() {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: Vec::new(),
            });
        }
    }
    out
}

/// Percent-encodes all but the unreserved characters (RFC 3986).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_parsed_with_their_parameters() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/nginx:pull"));

        let c = parse_challenges(r#"Basic realm="Registry \"x\"", Bearer realm=http://t/token"#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some(r#"Registry "x""#));
        assert_eq!(c[1].param("realm"), Some("http://t/token"));
        assert!(parse_challenges("").is_empty());
    }

    #[test]
    fn basic_credentials_and_queries_are_encoded() {
        assert_eq!(base64(b"robot:s3cret"), "cm9ib3Q6czNjcmV0");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(
            percent_encode("repository:team/app:pull"),
            "repository%3Ateam%2Fapp%3Apull"
        );
    }

    #[test]
    fn redirects_resolve_against_the_url_that_sent_them() {
        let base: Uri = "https://r.io:5000/v2/a/blobs/sha256:1"
            .parse()
            .expect("uri");
        assert_eq!(
            resolve(&base, "https://cdn.io/x?sig=1"),
            "https://cdn.io/x?sig=1"
        );
        assert_eq!(resolve(&base, "/elsewhere"), "https://r.io:5000/elsewhere");
        assert_eq!(resolve(&base, "//cdn.io/y"), "https://cdn.io/y");
        assert_eq!(resolve(&base, "z"), "https://r.io:5000/v2/a/blobs/z");
    }

    #[test]
    fn an_origin_is_scheme_host_and_port() {
        let o = |s: &str| origin(&s.parse::<Uri>().expect("uri"));
        assert_eq!(o("https://R.io/v2/"), o("https://r.io:443/x"));
        assert_ne!(o("https://r.io/"), o("http://r.io/"), "the scheme counts");
        assert_ne!(
            o("http://r.io:5000/"),
            o("http://r.io:5001/"),
            "the port counts"
        );
        assert_ne!(o("https://r.io/"), o("https://cdn.r.io/"));
    }

    #[test]
    fn docker_hub_is_reached_at_its_api_host() {
        let image = ImageRef::try_from("nginx:1.27".to_string()).expect("ref");
        let remote = Remote::new(&image, None, false, None);
        assert_eq!(remote.base, "https://registry-1.docker.io");
        assert_eq!(remote.repository, "library/nginx");
        let image = ImageRef::try_from("10.0.2.2:5000/test/hello".to_string()).expect("ref");
        let remote = Remote::new(&image, None, true, None);
        assert_eq!(remote.base, "http://10.0.2.2:5000");
    }
}
