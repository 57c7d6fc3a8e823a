//! Reading the update source: HTTP/1.1 GETs over TCP or TLS (any web
//! server, object store or CDN serves a bundle directory), streamed. Host
//! names are resolved with the network agent's DNS client against the
//! servers it publishes in /run/carapace/network.json (the binary is
//! static: no NSS).
//!
//! - `http://` and `https://` sources ([`Source::parse`]). HTTPS is rustls
//!   with the ring provider, verified against the Mozilla roots built in
//!   (webpki-roots) plus an optional extra CA in PEM (the `updates.ca`
//!   setting, [`Source::with_ca`]), with the usual check of the host name
//!   (or IP address) against the certificate. Plain HTTP stays allowed:
//!   the index and the manifests are signed, the parts hashed.
//! - Time limits: every wait (resolving, connecting, the TLS handshake, the
//!   answer, each chunk of the body) ends after [`TIMEOUT`]; on top, every
//!   GET has an overall deadline from its start ([`Deadlines`]), so that a
//!   server that trickles bytes forever is refused: until the answer's
//!   headers and for a document read whole ([`Body::all`]: the index, a
//!   manifest, a signature) 30 s; for a part streamed with [`Body::chunk`]
//!   60 s plus its size at a floor rate of 256 KiB/s (a 40 MiB root part:
//!   220 s). The size is the answer's `Content-Length`, or — better,
//!   since it is signed — the manifest's, given with [`Body::expect_length`].

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{timeout_at, Instant};

/// How long resolving, connecting, the TLS handshake and each wait for
/// bytes may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The overall deadlines of a GET, counted from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Until the answer's headers, and for a whole document ([`Body::all`]).
    pub document: Duration,
    /// A streamed part: this, plus its size at `floor_rate`.
    pub part_base: Duration,
    /// Bytes per second a part must at least average.
    pub floor_rate: u64,
}

impl Deadlines {
    /// 30 s for a document; 60 s plus the size at 256 KiB/s for a part.
    pub const DEFAULT: Deadlines = Deadlines {
        document: Duration::from_secs(30),
        part_base: Duration::from_secs(60),
        floor_rate: 256 * 1024,
    };

    /// The deadline of a part of `bytes` bytes (unknown: `part_base` alone),
    /// to the millisecond, rounded up.
    pub fn for_part(&self, bytes: Option<u64>) -> Duration {
        let millis =
            (u128::from(bytes.unwrap_or(0)) * 1000).div_ceil(u128::from(self.floor_rate.max(1)));
        self.part_base.saturating_add(Duration::from_millis(
            u64::try_from(millis).unwrap_or(u64::MAX),
        ))
    }
}

impl Default for Deadlines {
    fn default() -> Deadlines {
        Deadlines::DEFAULT
    }
}

/// An update source, `http://host[:port]/path/` or `https://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// A name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The path prefix, starting and ending with `/`.
    pub prefix: String,
    /// For `https://`: how the server's certificate is checked.
    pub tls: Option<Tls>,
}

impl Source {
    /// Parses the `updates.source` setting: `http://` (default port 80) or
    /// `https://` (default port 443, trusting the built-in roots; see
    /// [`Source::with_ca`]), a host name, an IPv4 address or an IPv6 address
    /// in brackets, an optional port, an optional path.
    pub fn parse(url: &str) -> Result<Source, String> {
        let bad = |why: &str| format!("update source {url:?}: {why}");
        let (rest, https) = if let Some(rest) = url.strip_prefix("https://") {
            (rest, true)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (rest, false)
        } else {
            return Err(bad("only http:// and https:// sources are supported"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad("a user name or password in the URL is not supported"));
        }
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (host, after) = inner
                .split_once(']')
                .ok_or_else(|| bad("the IPv6 address has no closing ']'"))?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(bad(&format!("[{host}] is not an IPv6 address")));
            }
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad(&format!("{after:?} after the IPv6 address")))?,
                ),
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(bad(
                        "an IPv6 address must be in brackets, as in http://[fd00::1]:8080/",
                    ))
                }
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None if https => 443,
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(&format!("bad port {p:?}")))?,
        };
        let mut prefix = path.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Source {
            host: host.to_string(),
            port,
            prefix,
            tls: if https { Some(Tls::new(None)?) } else { None },
        })
    }

    /// Also trusts the certificates of `ca_pem` (the `updates.ca` setting)
    /// for an `https://` source; refuses PEM text without a certificate. An
    /// `http://` source has no use for it and is returned as it is.
    pub fn with_ca(mut self, ca_pem: Option<&str>) -> Result<Source, String> {
        if self.tls.is_some() {
            self.tls = Some(Tls::new(ca_pem)?);
        }
        Ok(self)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `host:port`, with an IPv6 address in brackets.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The `Host` header: the authority, without the scheme's default port.
    fn host_header(&self) -> String {
        let authority = self.authority();
        let default = if self.tls.is_some() { ":443" } else { ":80" };
        match authority.strip_suffix(default) {
            Some(host) => host.to_string(),
            None => authority,
        }
    }

    /// The URL of `name` under the source, for messages.
    pub fn url(&self, name: &str) -> String {
        format!(
            "{}://{}{}{name}",
            self.scheme(),
            self.authority(),
            self.prefix
        )
    }
}

/// How an HTTPS source's certificate is checked: the built-in roots and an
/// optional extra CA. Two are equal when they trust the same extra CA text.
#[derive(Clone)]
pub struct Tls {
    config: Arc<rustls::ClientConfig>,
    extra_ca: Option<String>,
}

impl Tls {
    /// rustls (ring) trusting webpki-roots plus every certificate in
    /// `extra_ca_pem`.
    pub fn new(extra_ca_pem: Option<&str>) -> Result<Tls, String> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(pem) = extra_ca_pem {
            let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the update CA (updates.ca) is not valid PEM: {e}"))?;
            if certificates.is_empty() {
                return Err(
                    "the update CA (updates.ca) holds no certificate (-----BEGIN CERTIFICATE-----)"
                        .into(),
                );
            }
            for (i, certificate) in certificates.into_iter().enumerate() {
                roots.add(certificate).map_err(|e| {
                    format!("the update CA (updates.ca): certificate {}: {e}", i + 1)
                })?;
            }
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS is not available: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            config: Arc::new(config),
            extra_ca: extra_ca_pem.map(str::to_string),
        })
    }
}

impl PartialEq for Tls {
    fn eq(&self, other: &Tls) -> bool {
        self.extra_ca == other.extra_ca
    }
}

impl Eq for Tls {}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extra = if self.extra_ca.is_some() {
            " and updates.ca"
        } else {
            ""
        };
        write!(f, "Tls(webpki-roots{extra})")
    }
}

/// An answer's body being read, within the GET's deadline.
pub struct Body {
    /// The announced `Content-Length`.
    pub length: Option<u64>,
    body: Incoming,
    /// The file asked for, for messages.
    name: String,
    started: Instant,
    /// How long the whole GET may take, from `started`.
    limit: Duration,
    deadlines: Deadlines,
    received: u64,
    connection: tokio::task::AbortHandle,
}

impl Drop for Body {
    /// A body left unread does not keep its connection open.
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Body {
    /// Sets the deadline from `bytes`, the part's size in the signed
    /// manifest, rather than from what the server announced, and refuses an
    /// answer that announces more (one that announces less is read, and the
    /// part's hasher says how much was missing).
    pub fn expect_length(&mut self, bytes: u64) -> Result<(), String> {
        if let Some(announced) = self.length.filter(|a| *a > bytes) {
            return Err(format!(
                "{}: the server announces {announced} bytes, the manifest says {bytes}",
                self.name
            ));
        }
        self.limit = self.deadlines.for_part(Some(bytes));
        Ok(())
    }

    /// How long the whole GET may take, from its start.
    pub fn deadline(&self) -> Duration {
        self.limit
    }

    /// The next chunk of bytes; None at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, String> {
        let deadline = self.started + self.limit;
        loop {
            let wait_until = deadline.min(Instant::now() + TIMEOUT);
            match timeout_at(wait_until, self.body.frame()).await {
                Err(_) if Instant::now() >= deadline => {
                    return Err(format!(
                        "{}: the download did not finish within {} s ({})",
                        self.name,
                        seconds(self.limit),
                        self.progress()
                    ))
                }
                Err(_) => {
                    return Err(format!(
                        "{}: the download stalled: no data for {} s ({})",
                        self.name,
                        seconds(TIMEOUT),
                        self.progress()
                    ))
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => {
                    return Err(format!(
                        "{}: the download broke: {e} ({})",
                        self.name,
                        self.progress()
                    ))
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.received += data.len() as u64;
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The whole body, up to `max` bytes, within the document deadline.
    pub async fn all(mut self, max: usize) -> Result<Vec<u8>, String> {
        let too_long = |name: &str| format!("{name}: the answer is longer than {max} bytes");
        if self.length.is_some_and(|l| l > max as u64) {
            return Err(too_long(&self.name));
        }
        self.limit = self.limit.min(self.deadlines.document);
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await? {
            if out.len() + c.len() > max {
                return Err(too_long(&self.name));
            }
            out.extend_from_slice(&c);
        }
        Ok(out)
    }

    /// `<m> of <total> bytes`, the total `?` when not announced.
    fn progress(&self) -> String {
        match self.length {
            Some(total) => format!("{} of {total} bytes", self.received),
            None => format!("{} of ? bytes", self.received),
        }
    }
}

/// A duration in seconds as a message shows it: `30`, `0.25`.
fn seconds(d: Duration) -> String {
    d.as_secs_f64().to_string()
}

async fn resolve(host: &str, dns: &[IpAddr]) -> Result<IpAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let seed = (std::process::id() & 0xffff) as u16;
    carapace_dns::resolve(host, dns, seed)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

/// GETs `name` under `source` with the default [`Deadlines`]; a status
/// other than 200 is an error.
pub async fn get(source: &Source, name: &str, dns: &[IpAddr]) -> Result<Body, String> {
    get_with(source, name, dns, Deadlines::DEFAULT).await
}

/// [`get`] with other deadlines.
pub async fn get_with(
    source: &Source,
    name: &str,
    dns: &[IpAddr],
    deadlines: Deadlines,
) -> Result<Body, String> {
    let started = Instant::now();
    let answer_by = started + deadlines.document;
    let step = || answer_by.min(Instant::now() + TIMEOUT);
    let url = source.url(name);
    let ip = timeout_at(step(), resolve(&source.host, dns))
        .await
        .map_err(|_| format!("{url}: timed out resolving {}", source.host))??;
    let tcp = timeout_at(
        step(),
        tokio::net::TcpStream::connect(SocketAddr::new(ip, source.port)),
    )
    .await
    .map_err(|_| format!("{url}: timed out connecting"))?
    .map_err(|e| format!("{url}: cannot connect: {e}"))?;
    let request = hyper::Request::get(format!("{}{name}", source.prefix))
        .header(hyper::header::HOST, source.host_header())
        .header(hyper::header::USER_AGENT, "carapace-update")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{url}: {e}"))?;
    let limit = seconds(deadlines.document.min(TIMEOUT));
    let (response, connection) = match &source.tls {
        None => exchange(tcp, request, step()).await,
        Some(tls) => {
            let server = ServerName::try_from(source.host.clone())
                .map_err(|e| format!("{url}: {:?} is not a TLS server name: {e}", source.host))?;
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            let stream = timeout_at(step(), connector.connect(server, tcp))
                .await
                .map_err(|_| format!("{url}: the TLS handshake timed out"))?
                .map_err(|e| {
                    let hint = if e.to_string().contains("certificate") {
                        " (it must be for this host and chain to a built-in root or to updates.ca)"
                    } else {
                        ""
                    };
                    format!("{url}: TLS handshake failed: {e}{hint}")
                })?;
            exchange(stream, request, step()).await
        }
    }
    .map_err(|e| match e {
        Exchange::Late => format!("{url}: no answer within {limit} s"),
        Exchange::Failed(e) => format!("{url}: {e}"),
    })?;
    if response.status() != hyper::StatusCode::OK {
        connection.abort();
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    let length = response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Ok(Body {
        length,
        body: response.into_body(),
        name: name.to_string(),
        started,
        limit: deadlines.for_part(length),
        deadlines,
        received: 0,
        connection,
    })
}

enum Exchange {
    Late,
    Failed(String),
}

/// Sends `request` over `stream` and waits for the answer's headers until
/// `until`; the connection is driven by a task of its own.
async fn exchange<S>(
    stream: S,
    request: hyper::Request<Empty<Bytes>>,
    until: Instant,
) -> Result<(hyper::Response<Incoming>, tokio::task::AbortHandle), Exchange>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = timeout_at(
        until,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Exchange::Late)?
    .map_err(|e| Exchange::Failed(e.to_string()))?;
    let connection = tokio::spawn(conn).abort_handle();
    match timeout_at(until, sender.send_request(request)).await {
        Ok(Ok(response)) => Ok((response, connection)),
        Ok(Err(e)) => {
            connection.abort();
            Err(Exchange::Failed(e.to_string()))
        }
        Err(_) => {
            connection.abort();
            Err(Exchange::Late)
        }
    }
}

/// The DNS servers the network agent published, for resolving the source.
pub fn published_dns(network_json: &str) -> Vec<IpAddr> {
    carapace_contract::network::NetworkStatus::parse(network_json)
        .map(|status| status.dns.iter().filter_map(|s| s.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn sources_parse_into_scheme_host_port_and_prefix() {
        let s = Source::parse("http://10.0.2.2:8080/carapace").expect("source");
        assert_eq!(
            s,
            Source {
                host: "10.0.2.2".into(),
                port: 8080,
                prefix: "/carapace/".into(),
                tls: None,
            }
        );
        let s = Source::parse("http://updates.example.org").expect("source");
        assert_eq!((s.port, s.prefix.as_str()), (80, "/"));
        assert_eq!(
            s.url("index.json"),
            "http://updates.example.org:80/index.json"
        );
        let s = Source::parse("https://updates.example.org/carapace/stable/").expect("https");
        assert_eq!(
            (s.host.as_str(), s.port, s.prefix.as_str()),
            ("updates.example.org", 443, "/carapace/stable/")
        );
        assert!(s.tls.is_some());
        assert_eq!(
            s.url("index.json"),
            "https://updates.example.org:443/carapace/stable/index.json"
        );
        let s = Source::parse("https://10.0.2.2:8443").expect("https with a port");
        assert_eq!((s.port, s.prefix.as_str()), (8443, "/"));
        let v6 = Source::parse("http://[fd00::1]:81/x/").expect("v6");
        assert_eq!((v6.host.as_str(), v6.port), ("fd00::1", 81));
        assert_eq!(v6.url("index.json"), "http://[fd00::1]:81/x/index.json");
        let v6 = Source::parse("https://[fd00::1]/x").expect("v6 without a port");
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.prefix.as_str()),
            ("fd00::1", 443, "/x/")
        );
        assert_eq!(Source::parse("http://[::1]").expect("v6 loopback").port, 80);
        for (bad, why) in [
            ("ftp://x", "only http:// and https://"),
            ("HTTP://x/", "only http:// and https://"),
            ("http://", "no host"),
            ("https:///path", "no host"),
            ("http://h:port/", "bad port \"port\""),
            ("http://h:0/", "bad port \"0\""),
            ("https://h:65536/", "bad port \"65536\""),
            ("http://h:/", "bad port \"\""),
            ("http://fd00::1/", "must be in brackets"),
            ("http://[fd00::1/", "no closing ']'"),
            ("http://[fd00::1]x/", "\"x\" after the IPv6 address"),
            ("http://[updates]/", "[updates] is not an IPv6 address"),
            ("https://user:secret@h/", "user name or password"),
        ] {
            let err = Source::parse(bad).expect_err(bad);
            assert!(
                err.starts_with(&format!("update source {bad:?}: ")) && err.contains(why),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn an_extra_ca_applies_to_https_only_and_must_hold_a_certificate() {
        let ca = rcgen::generate_simple_self_signed(vec!["updates.example".to_string()])
            .expect("cert")
            .cert
            .pem();
        let plain = Source::parse("http://h/").expect("http");
        assert_eq!(plain.clone().with_ca(Some(&ca)).expect("ignored"), plain);
        let https = Source::parse("https://h/").expect("https");
        let with_ca = https.clone().with_ca(Some(&ca)).expect("trusted");
        assert_ne!(with_ca, https);
        assert_eq!(https.clone().with_ca(None).expect("none"), https);
        assert_eq!(
            format!("{:?}", with_ca.tls.expect("tls")),
            "Tls(webpki-roots and updates.ca)"
        );
        for junk in [
            "",
            "junk",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            let err = https.clone().with_ca(Some(junk)).expect_err(junk);
            assert!(err.contains("holds no certificate"), "{junk:?}: {err}");
        }
        let torn = &ca[..ca.len() - 30];
        let err = https.with_ca(Some(torn)).expect_err("torn");
        assert!(
            err.starts_with("the update CA (updates.ca) is not valid PEM"),
            "{err}"
        );
    }

    #[test]
    fn a_part_gets_a_minute_plus_its_size_at_256_kib_per_second() {
        let d = Deadlines::DEFAULT;
        assert_eq!(d.document, Duration::from_secs(30));
        assert_eq!(d.for_part(None), Duration::from_secs(60));
        assert_eq!(d.for_part(Some(0)), Duration::from_secs(60));
        assert_eq!(d.for_part(Some(256 * 1024)), Duration::from_secs(61));
        assert_eq!(
            d.for_part(Some(256 * 1024 + 1)),
            Duration::from_millis(61_001)
        );
        // A 40 MiB root part, a 100 MiB one, and the largest a manifest allows.
        assert_eq!(d.for_part(Some(40 << 20)), Duration::from_secs(220));
        assert_eq!(d.for_part(Some(100 << 20)), Duration::from_secs(460));
        assert_eq!(
            d.for_part(Some(carapace_bundle::MAX_PART_BYTES)),
            Duration::from_secs(60 + 16_384)
        );
        // No overflow, whatever a server announces, and no division by zero.
        assert!(d.for_part(Some(u64::MAX)) > Duration::from_secs(1 << 40));
        let stopped = Deadlines { floor_rate: 0, ..d };
        assert!(stopped.for_part(Some(1)) >= Duration::from_secs(60));
    }

    #[test]
    fn the_published_dns_servers_are_read_from_network_json() {
        assert_eq!(
            published_dns(r#"{"dns":["10.0.2.3","bad","fd00::3"]}"#),
            vec![
                "10.0.2.3".parse::<IpAddr>().expect("ip"),
                "fd00::3".parse().expect("ip")
            ]
        );
        assert!(published_dns("{torn").is_empty());
    }

    /// Reads one request's head from `s`.
    async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> String {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte).await {
                Ok(1) => buf.push(byte[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// A server on 127.0.0.1 that answers each connection with `head`, then
    /// sends `body` a byte every `pace` (all at once when zero).
    async fn server(head: &'static str, body: &'static [u8], pace: Duration) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    read_request(&mut s).await;
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    if pace.is_zero() {
                        let _ = s.write_all(body).await;
                        return;
                    }
                    for b in body.iter().cycle() {
                        tokio::time::sleep(pace).await;
                        if s.write_all(&[*b]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    fn local(port: u16) -> Source {
        Source::parse(&format!("http://127.0.0.1:{port}/bundles")).expect("source")
    }

    #[tokio::test]
    async fn a_body_is_streamed_from_a_real_http_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            ] {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let request = read_request(&mut s).await;
                assert!(request.starts_with("GET /bundles/"), "{request}");
                assert!(
                    request.contains(&format!("host: 127.0.0.1:{port}\r\n")),
                    "{request}"
                );
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        let source = local(port);
        let body = get(&source, "index.json", &[]).await.expect("200");
        assert_eq!(body.length, Some(5));
        assert_eq!(body.deadline(), Duration::from_millis(60_001));
        assert_eq!(body.all(100).await.expect("body"), b"hello");
        let missing = get(&source, "nope", &[]).await.err().expect("404");
        assert_eq!(
            missing,
            format!("http://127.0.0.1:{port}/bundles/nope: HTTP 404 Not Found")
        );
    }

    const FAST: Deadlines = Deadlines {
        document: Duration::from_millis(300),
        part_base: Duration::from_millis(300),
        floor_rate: 1 << 30,
    };

    #[tokio::test]
    async fn a_part_that_trickles_forever_misses_its_deadline() {
        // A byte every 20 ms: never a stall, never an end.
        let port = server(
            "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n",
            b"x",
            Duration::from_millis(20),
        )
        .await;
        let mut body = get_with(&local(port), "0.2.0/root.img", &[], FAST)
            .await
            .expect("headers");
        // 300 ms plus 100000 bytes at 1 GiB/s, rounded up to the millisecond.
        assert_eq!(body.deadline(), Duration::from_millis(301));
        let t = std::time::Instant::now();
        let err = loop {
            match body.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the trickle ended"),
                Err(e) => break e,
            }
        };
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(
            err.starts_with("0.2.0/root.img: the download did not finish within 0.301 s ("),
            "{err}"
        );
        assert!(err.ends_with(" of 100000 bytes)"), "{err}");
    }

    #[tokio::test]
    async fn a_document_that_trickles_misses_the_document_deadline() {
        let port = server(
            "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            b"{",
            Duration::from_millis(20),
        )
        .await;
        let fast = Deadlines {
            document: Duration::from_millis(250),
            part_base: Duration::from_secs(60),
            ..FAST
        };
        let body = get_with(&local(port), "index.json", &[], fast)
            .await
            .expect("headers");
        let err = body.all(64 * 1024).await.expect_err("too slow");
        assert!(
            err.starts_with("index.json: the download did not finish within 0.25 s ("),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_server_that_never_answers_misses_the_document_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let err = get_with(&local(port), "index.json", &[], FAST)
            .await
            .err()
            .expect("no answer");
        assert_eq!(
            err,
            format!("http://127.0.0.1:{port}/bundles/index.json: no answer within 0.3 s")
        );
    }

    #[tokio::test]
    async fn announced_sizes_are_held_to_what_is_expected() {
        let port = server(
            "HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n",
            b"",
            Duration::ZERO,
        )
        .await;
        // A document announced longer than it may be is refused at once.
        let body = get(&local(port), "index.json", &[]).await.expect("headers");
        let err = body.all(64 * 1024).await.expect_err("too long");
        assert_eq!(err, "index.json: the answer is longer than 65536 bytes");
        // A part announced at another size than the manifest's.
        let mut body = get(&local(port), "root.img", &[]).await.expect("headers");
        let err = body.expect_length(4096).expect_err("another size");
        assert_eq!(
            err,
            "root.img: the server announces 70000 bytes, the manifest says 4096"
        );
        body.expect_length(100_000)
            .expect("a shorter answer is read: the part's hasher judges it");
        body.expect_length(70_000).expect("the same size");
        assert_eq!(body.deadline(), Deadlines::DEFAULT.for_part(Some(70_000)));
    }

    /// An HTTPS server on 127.0.0.1 with a certificate self-signed for
    /// `names`, answering `hello`; returns its port and the certificate PEM.
    async fn https_server(names: &[&str]) -> (u16, String) {
        let generated = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .expect("cert");
        let pem = generated.cert.pem();
        let key = rustls::pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der())
            .expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![generated.cert.der().clone()], key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(s).await else {
                        return;
                    };
                    read_request(&mut s).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                        .await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (port, pem)
    }

    #[tokio::test]
    async fn https_sources_are_verified_against_the_roots_and_updates_ca() {
        let (port, ca) = https_server(&["127.0.0.1"]).await;
        let url = format!("https://127.0.0.1:{port}/bundles/");
        let trusting = Source::parse(&url)
            .and_then(|s| s.with_ca(Some(&ca)))
            .expect("source");
        let body = get(&trusting, "index.json", &[])
            .await
            .expect("200 over TLS");
        assert_eq!(body.all(100).await.expect("body"), b"hello");
        // Only the built-in roots: the self-signed certificate is refused.
        let err = get(&Source::parse(&url).expect("source"), "index.json", &[])
            .await
            .err()
            .expect("untrusted");
        assert!(
            err.starts_with(&format!(
                "{url}index.json: TLS handshake failed: invalid peer certificate"
            )),
            "{err}"
        );
        assert!(err.contains("updates.ca"), "{err}");
        // Plain HTTP to the TLS port gets no 200.
        let plain = Source::parse(&format!("http://127.0.0.1:{port}/")).expect("source");
        assert!(get(&plain, "index.json", &[]).await.is_err());
    }

    #[tokio::test]
    async fn a_certificate_for_another_name_is_refused() {
        let (port, ca) = https_server(&["updates.example"]).await;
        let source = Source::parse(&format!("https://127.0.0.1:{port}/"))
            .and_then(|s| s.with_ca(Some(&ca)))
            .expect("source");
        let err = get(&source, "index.json", &[])
            .await
            .err()
            .expect("wrong name");
        assert!(err.contains("TLS handshake failed"), "{err}");
        assert!(err.contains("not valid for name \"127.0.0.1\""), "{err}");
    }

    #[tokio::test]
    async fn a_dropped_body_closes_its_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            read_request(&mut s).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                .await;
            // Reading returns 0 (or an error) once the client has closed.
            let mut buf = [0u8; 16];
            let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .is_ok_and(|r| r.map_or(true, |n| n == 0));
            let _ = closed_tx.send(closed);
        });
        let body = get(&local(port), "root.img", &[]).await.expect("headers");
        drop(body);
        assert!(
            closed_rx.await.expect("the server reports"),
            "connection closed"
        );
    }
}
