//! Reading the update source: plain HTTP/1.1 GETs (any web server, object
//! store or CDN serves a bundle directory), streamed, with the body's length
//! known up front. Host names are resolved with the network agent's DNS
//! client against the servers it publishes in /run/carapace/network.json
//! (the binary is static: no NSS).

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How long connecting and each wait for bytes may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// An update source, `http://host[:port]/path/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub host: String,
    pub port: u16,
    /// The path prefix, starting and ending with `/`.
    pub prefix: String,
}

impl Source {
    /// Parses the `updates.source` setting.
    pub fn parse(url: &str) -> Result<Source, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!(
                "update source {url:?}: only http:// sources are supported (bundles are signed)"
            )
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p
                    .parse()
                    .map_err(|_| format!("update source {url:?}: bad port {p:?}"))?;
                (h, port)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("update source {url:?} has no host"));
        }
        let mut prefix = path.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Source {
            host: host.to_string(),
            port,
            prefix,
        })
    }

    /// The URL of `name` under the source, for messages.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}:{}{}{name}", self.host, self.port, self.prefix)
    }
}

/// A response being read.
pub struct Body {
    pub length: Option<u64>,
    body: Incoming,
}

impl Body {
    /// The next chunk of bytes; None at the end.
    pub async fn chunk(&mut self) -> Result<Option<hyper::body::Bytes>, String> {
        loop {
            let frame = tokio::time::timeout(TIMEOUT, self.body.frame())
                .await
                .map_err(|_| "the download stalled".to_string())?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(format!("the download broke: {e}")),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The whole body, up to `max` bytes.
    pub async fn all(mut self, max: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await? {
            if out.len() + c.len() > max {
                return Err(format!("the answer is longer than {max} bytes"));
            }
            out.extend_from_slice(&c);
        }
        Ok(out)
    }
}

async fn resolve(host: &str, dns: &[IpAddr]) -> Result<IpAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let seed = (std::process::id() & 0xffff) as u16;
    carapace_net::dns::resolve(host, dns, seed)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

/// GETs `name` under `source`; a status other than 200 is an error.
pub async fn get(source: &Source, name: &str, dns: &[IpAddr]) -> Result<Body, String> {
    let url = source.url(name);
    let ip = resolve(&source.host, dns).await?;
    let stream = tokio::time::timeout(
        TIMEOUT,
        tokio::net::TcpStream::connect(SocketAddr::new(ip, source.port)),
    )
    .await
    .map_err(|_| format!("{url}: timed out connecting"))?
    .map_err(|e| format!("{url}: cannot connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(conn);
    let request = hyper::Request::get(format!("{}{name}", source.prefix))
        .header(
            hyper::header::HOST,
            format!("{}:{}", source.host, source.port),
        )
        .header(hyper::header::USER_AGENT, "carapace-update")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| format!("{url}: {e}"))?;
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| format!("{url}: no answer"))?
        .map_err(|e| format!("{url}: {e}"))?;
    if response.status() != hyper::StatusCode::OK {
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
    })
}

/// The DNS servers the network agent published, for resolving the source.
pub fn published_dns(network_json: &str) -> Vec<IpAddr> {
    serde_json::from_str::<serde_json::Value>(network_json)
        .ok()
        .and_then(|v| {
            v.get("dns")?
                .as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str()?.parse().ok()).collect())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_into_host_port_and_prefix() {
        assert_eq!(
            Source::parse("http://10.0.2.2:8080/carapace").expect("source"),
            Source {
                host: "10.0.2.2".into(),
                port: 8080,
                prefix: "/carapace/".into()
            }
        );
        let s = Source::parse("http://updates.example.org").expect("source");
        assert_eq!((s.port, s.prefix.as_str()), (80, "/"));
        assert_eq!(
            s.url("index.json"),
            "http://updates.example.org:80/index.json"
        );
        let v6 = Source::parse("http://[fd00::1]:81/x/").expect("v6");
        assert_eq!((v6.host.as_str(), v6.port), ("fd00::1", 81));
        for bad in ["https://x/", "ftp://x", "http://", "http://h:port/"] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
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

    #[tokio::test]
    async fn a_body_is_streamed_from_a_real_http_server() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            ] {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(request.starts_with("GET /bundles/"), "{request}");
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        let source = Source::parse(&format!("http://127.0.0.1:{port}/bundles")).expect("source");
        let body = get(&source, "index.json", &[]).await.expect("200");
        assert_eq!(body.length, Some(5));
        assert_eq!(body.all(100).await.expect("body"), b"hello");
        let missing = get(&source, "nope", &[]).await.err().expect("404");
        assert!(missing.contains("HTTP 404"), "{missing}");
    }
}
