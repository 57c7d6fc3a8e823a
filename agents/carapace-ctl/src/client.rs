//! The HTTP/1.1 client: one connection to a node (its Unix socket, or TLS
//! with a pinned certificate), many sequential requests on it, and a
//! streaming variant that hands the body over line by line.

use crate::endpoint::{Endpoint, Fingerprint};
use crate::tls::{self, PinnedCertVerifier};
use crate::Error;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// How long connecting (including the TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A complete answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (`null` for an empty body).
    pub fn json(&self) -> Result<serde_json::Value, Error> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::BadResponse(format!("the body is not JSON: {e}")))
    }

    /// Self if the status is 2xx, else the error it stands for.
    pub fn check(self) -> Result<Response, Error> {
        match Error::from_status(self.status, &self.body) {
            None => Ok(self),
            Some(e) => Err(e),
        }
    }
}

/// A connection to one node.
pub struct Client {
    endpoint: Endpoint,
    sender: SendRequest<Full<Bytes>>,
    authorization: Option<header::HeaderValue>,
    host: header::HeaderValue,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `endpoint`. A remote (https) endpoint needs the
    /// certificate `fingerprint` to pin, and sends `token` as a bearer
    /// token with every request; a Unix socket needs neither.
    ///
    /// Must be called within a tokio runtime: the connection is driven by a
    /// task spawned on it.
    pub async fn connect(
        endpoint: &Endpoint,
        token: Option<&str>,
        fingerprint: Option<&Fingerprint>,
    ) -> Result<Client, Error> {
        let unreachable = |reason: String| Error::Unreachable {
            endpoint: endpoint.to_string(),
            reason,
        };
        let (sender, host, authorization) = match endpoint {
            Endpoint::Unix(path) => {
                let stream =
                    tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path))
                        .await
                        .map_err(|_| unreachable("timed out connecting".into()))?
                        .map_err(|e| {
                            if e.kind() == std::io::ErrorKind::PermissionDenied {
                                unreachable(format!(
                                    "{e}: the local socket is for root; run as root, or use an \
                             https:// endpoint with a token"
                                ))
                            } else {
                                unreachable(e.to_string())
                            }
                        })?;
                let sender = handshake(stream, endpoint).await?;
                (sender, header::HeaderValue::from_static("localhost"), None)
            }
            Endpoint::Https { host, port } => {
                let Some(expected) = fingerprint else {
                    return Err(Error::Usage(format!(
                        "{endpoint} needs the node's certificate fingerprint (--fingerprint or \
                         CARAPACE_FINGERPRINT): it is printed on the node's console and shown in \
                         `status`"
                    )));
                };
                let stream =
                    tokio::time::timeout(CONNECT_TIMEOUT, tls_connect(host, *port, *expected))
                        .await
                        .map_err(|_| unreachable("timed out connecting".into()))?
                        .map_err(|e| match e {
                            TlsFailure::Mismatch(actual) => Error::FingerprintMismatch {
                                actual,
                                expected: *expected,
                            },
                            TlsFailure::Other(reason) => unreachable(reason),
                        })?;
                let sender = handshake(stream, endpoint).await?;
                let authority = endpoint.to_string();
                let authority = authority.trim_start_matches("https://");
                let host = header::HeaderValue::from_str(authority)
                    .map_err(|_| Error::Usage(format!("invalid host in {endpoint}")))?;
                let authorization = match token {
                    None => None,
                    Some(t) => {
                        let mut v = header::HeaderValue::from_str(&format!("Bearer {t}")).map_err(
                            |_| Error::Usage("the token holds characters a header cannot".into()),
                        )?;
                        v.set_sensitive(true);
                        Some(v)
                    }
                };
                (sender, host, authorization)
            }
        };
        Ok(Client {
            endpoint: endpoint.clone(),
            sender,
            authorization,
            host,
        })
    }

    /// The endpoint this client is connected to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends one request (`path` with its query, e.g. `/v1/status`) with an
    /// optional JSON body and reads the whole answer, whatever its status.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, Error> {
        let response = self.send(method, path, body).await?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.lost(&e))?
            .to_bytes()
            .to_vec();
        Ok(Response { status, body })
    }

    /// Like [`Client::request`], but a non-2xx answer is an error.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, Error> {
        self.request(method, path, body).await?.check()
    }

    /// `GET path`, a 2xx answer parsed as JSON.
    pub async fn get_json(&mut self, path: &str) -> Result<serde_json::Value, Error> {
        self.call(Method::GET, path, None).await?.json()
    }

    /// Sends a request and, if the answer is 2xx, returns its body as it
    /// arrives (for `GET /v1/logs?follow=true`). A non-2xx answer is read
    /// whole and returned as an error. The connection carries nothing else
    /// until the stream is dropped or ends.
    pub async fn stream(&mut self, method: Method, path: &str) -> Result<BodyStream, Error> {
        let response = self.send(method, path, None).await?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| self.lost(&e))?
                .to_bytes();
            return Err(Error::from_status(status, &body)
                .unwrap_or_else(|| Error::BadResponse(format!("HTTP status {status}"))));
        }
        Ok(BodyStream {
            endpoint: self.endpoint.to_string(),
            body: response.into_body(),
            buffer: Vec::new(),
            ended: false,
        })
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<hyper::Response<Incoming>, Error> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.host.clone())
            .header(header::ACCEPT, "application/json, application/x-ndjson");
        if let Some(auth) = &self.authorization {
            builder = builder.header(header::AUTHORIZATION, auth.clone());
        }
        let bytes = match body {
            Some(v) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).map_err(|e| Error::Usage(e.to_string()))?)
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(bytes))
            .map_err(|e| Error::Usage(format!("invalid request {path:?}: {e}")))?;
        self.sender.ready().await.map_err(|e| self.lost(&e))?;
        self.sender
            .send_request(request)
            .await
            .map_err(|e| self.lost(&e))
    }

    fn lost(&self, e: &hyper::Error) -> Error {
        Error::Unreachable {
            endpoint: self.endpoint.to_string(),
            reason: format!("the connection failed: {}", describe(e)),
        }
    }
}

/// A hyper error with its causes, which hold the useful part.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn handshake<S>(stream: S, endpoint: &Endpoint) -> Result<SendRequest<Full<Bytes>>, Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) =
        http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::Unreachable {
                endpoint: endpoint.to_string(),
                reason: describe(&e),
            })?;
    // Errors surface through the sender; nothing to do with them here.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

enum TlsFailure {
    Mismatch(Fingerprint),
    Other(String),
}

async fn tls_connect(
    host: &str,
    port: u16,
    expected: Fingerprint,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, TlsFailure> {
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| TlsFailure::Other(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let verifier = Arc::new(PinnedCertVerifier::new(expected));
    let config = tls::client_config(verifier.clone())
        .map_err(|e| TlsFailure::Other(format!("TLS setup: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    match connector.connect(tls::server_name(host), tcp).await {
        Ok(stream) => Ok(stream),
        Err(e) => match verifier.seen() {
            Some(actual) if actual != expected => Err(TlsFailure::Mismatch(actual)),
            _ => Err(TlsFailure::Other(format!(
                "TLS handshake failed: {}",
                describe(&e)
            ))),
        },
    }
}

/// A response body read as it arrives.
pub struct BodyStream {
    endpoint: String,
    body: Incoming,
    buffer: Vec<u8>,
    ended: bool,
}

impl BodyStream {
    /// The next piece of the body as it came off the wire, or None at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(Error::Unreachable {
                        endpoint: self.endpoint.clone(),
                        reason: format!("the stream broke: {}", describe(&e)),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                    // Trailers: nothing to hand over.
                }
            }
        }
    }

    /// The next line (without its newline), or None at the end of the body.
    /// A last line without a newline is returned too. Invalid UTF-8 is
    /// replaced, not refused.
    pub async fn next_line(&mut self) -> Result<Option<String>, Error> {
        loop {
            if let Some(i) = self.buffer.iter().position(|b| *b == b'\n') {
                let rest = self.buffer.split_off(i + 1);
                let mut line = std::mem::replace(&mut self.buffer, rest);
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            if self.ended {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                let line = std::mem::take(&mut self.buffer);
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            match self.next_chunk().await? {
                Some(data) => self.buffer.extend_from_slice(&data),
                None => self.ended = true,
            }
        }
    }
}

/// One line of a service's log, as `GET /v1/logs` sends it
/// ([`carapace_contract::logs::Entry`], which it is read as).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "carapace_contract::logs::Entry")]
pub struct LogEntry {
    /// The service that wrote it.
    pub service: String,
    /// When, in milliseconds since boot.
    pub ms: u64,
    /// The text, without newline.
    pub line: String,
}

impl From<carapace_contract::logs::Entry> for LogEntry {
    fn from(e: carapace_contract::logs::Entry) -> LogEntry {
        LogEntry {
            service: e.service,
            ms: e.ms,
            line: e.line,
        }
    }
}

impl LogEntry {
    /// Parses one ndjson line.
    pub fn parse(line: &str) -> Result<LogEntry, Error> {
        serde_json::from_str(line)
            .map_err(|e| Error::BadResponse(format!("not a log entry ({e}): {line}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_entries_parse() {
        assert_eq!(
            LogEntry::parse(r#"{"service":"api","ms":1234,"line":"started"}"#).ok(),
            Some(LogEntry {
                service: "api".into(),
                ms: 1234,
                line: "started".into()
            })
        );
        assert!(matches!(
            LogEntry::parse("plain text"),
            Err(Error::BadResponse(_))
        ));
    }

    #[test]
    fn log_entries_are_read_as_the_api_writes_them() {
        let sent = carapace_contract::logs::Entry::from_record("container_web", "53120 listening");
        let text = serde_json::to_string(&sent).expect("json");
        assert_eq!(
            LogEntry::parse(&text).ok(),
            Some(LogEntry {
                service: "container_web".into(),
                ms: 53120,
                line: "listening".into()
            })
        );
    }

    #[test]
    fn responses_check_their_status_and_parse_json() {
        let ok = Response {
            status: 200,
            body: br#"{"a":1}"#.to_vec(),
        };
        assert_eq!(ok.json().ok(), Some(serde_json::json!({"a": 1})));
        assert!(ok.check().is_ok());
        let empty = Response {
            status: 204,
            body: Vec::new(),
        };
        assert_eq!(empty.json().ok(), Some(serde_json::Value::Null));
        let bad = Response {
            status: 200,
            body: b"<html>".to_vec(),
        };
        assert!(matches!(bad.json(), Err(Error::BadResponse(_))));
        let refused = Response {
            status: 400,
            body: br#"{"error":"bad","path":"hostname"}"#.to_vec(),
        };
        assert_eq!(
            refused.check().err().map(|e| e.to_string()).as_deref(),
            Some("hostname: bad")
        );
    }
}
