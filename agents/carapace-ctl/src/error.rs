//! What can go wrong talking to a node, and the exit code each failure
//! maps to (see the crate documentation for the table).

use crate::endpoint::Fingerprint;

/// The request succeeded.
pub const EXIT_OK: i32 = 0;
/// The node refused the request (a 4xx answer other than 401).
pub const EXIT_REFUSED: i32 = 1;
/// The command line was wrong (clap's own usage errors exit with 2 too).
pub const EXIT_USAGE: i32 = 2;
/// The node could not be reached: connection, TLS or fingerprint failure.
pub const EXIT_UNREACHABLE: i32 = 3;
/// The node refused the credentials (401).
pub const EXIT_UNAUTHORIZED: i32 = 4;
/// The node failed (a 5xx answer, or an answer that makes no sense).
pub const EXIT_NODE_FAILED: i32 = 5;

/// A failure of a command or a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller asked for something malformed (exit 2).
    #[error("{0}")]
    Usage(String),
    /// No connection could be made or kept (exit 3).
    #[error("cannot reach the node at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    /// The node presented a certificate other than the pinned one (exit 3).
    #[error(
        "the node's certificate fingerprint is {actual}, expected {expected}: \
         not talking to it (check --fingerprint against the node's console or `status`)"
    )]
    FingerprintMismatch {
        actual: Fingerprint,
        expected: Fingerprint,
    },
    /// The node answered 401 (exit 4).
    #[error(
        "authentication refused: {message} (pass the API token with --token or CARAPACE_TOKEN)"
    )]
    Unauthorized { message: String },
    /// The node answered another 4xx (exit 1). `path` names the offending
    /// field for validation errors.
    #[error("{}", with_path(.path, .message))]
    Refused {
        status: u16,
        message: String,
        path: Option<String>,
    },
    /// The node answered 5xx (exit 5).
    #[error("the node failed: {message}")]
    NodeFailed { status: u16, message: String },
    /// The node's answer could not be understood (exit 5).
    #[error("unexpected answer from the node: {0}")]
    BadResponse(String),
}

fn with_path(path: &Option<String>, message: &str) -> String {
    match path {
        Some(p) if !p.is_empty() => format!("{p}: {message}"),
        _ => message.to_string(),
    }
}

impl Error {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Unreachable { .. } | Error::FingerprintMismatch { .. } => EXIT_UNREACHABLE,
            Error::Unauthorized { .. } => EXIT_UNAUTHORIZED,
            Error::Refused { .. } => EXIT_REFUSED,
            Error::NodeFailed { .. } | Error::BadResponse(_) => EXIT_NODE_FAILED,
        }
    }

    /// The error for a non-success answer: `status` with the body the node
    /// sent (`{"error": "...", "path": "..."}` or anything else). Returns
    /// None for a 2xx status.
    pub fn from_status(status: u16, body: &[u8]) -> Option<Error> {
        if (200..300).contains(&status) {
            return None;
        }
        let (message, path) = error_body(status, body);
        Some(match status {
            401 => Error::Unauthorized { message },
            400..=499 => Error::Refused {
                status,
                message,
                path,
            },
            500..=599 => Error::NodeFailed { status, message },
            _ => Error::BadResponse(format!("HTTP status {status}: {message}")),
        })
    }
}

/// The message and field path of an error body; the raw text (shortened)
/// or the status when the body is not the API's error object.
fn error_body(status: u16, body: &[u8]) -> (String, Option<String>) {
    if let Ok(serde_json::Value::Object(o)) = serde_json::from_slice(body) {
        if let Some(serde_json::Value::String(message)) = o.get("error") {
            let path = match o.get("path") {
                Some(serde_json::Value::String(p)) if !p.is_empty() => Some(p.clone()),
                _ => None,
            };
            return (message.clone(), path);
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return (format!("HTTP status {status}"), None);
    }
    let mut short: String = text.chars().take(200).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    (short, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(status: u16, body: &str) -> Option<i32> {
        Error::from_status(status, body.as_bytes()).map(|e| e.exit_code())
    }

    #[test]
    fn statuses_map_to_the_documented_exit_codes() {
        assert_eq!(code(200, "{}"), None);
        assert_eq!(code(202, "{}"), None);
        assert_eq!(code(204, ""), None);
        assert_eq!(code(400, r#"{"error":"x"}"#), Some(EXIT_REFUSED));
        assert_eq!(code(404, r#"{"error":"x"}"#), Some(EXIT_REFUSED));
        assert_eq!(code(409, r#"{"error":"x"}"#), Some(EXIT_REFUSED));
        assert_eq!(code(401, r#"{"error":"x"}"#), Some(EXIT_UNAUTHORIZED));
        assert_eq!(code(500, r#"{"error":"x"}"#), Some(EXIT_NODE_FAILED));
        assert_eq!(code(503, "garbage"), Some(EXIT_NODE_FAILED));
        assert_eq!(code(302, ""), Some(EXIT_NODE_FAILED));
    }

    #[test]
    fn other_failures_map_to_their_exit_codes() {
        assert_eq!(Error::Usage("x".into()).exit_code(), EXIT_USAGE);
        let unreachable = Error::Unreachable {
            endpoint: "unix:/x".into(),
            reason: "gone".into(),
        };
        assert_eq!(unreachable.exit_code(), EXIT_UNREACHABLE);
        let mismatch = Error::FingerprintMismatch {
            actual: Fingerprint::of(b"a"),
            expected: Fingerprint::of(b"b"),
        };
        assert_eq!(mismatch.exit_code(), EXIT_UNREACHABLE);
        assert_eq!(Error::BadResponse("x".into()).exit_code(), EXIT_NODE_FAILED);
    }

    #[test]
    fn a_validation_error_shows_its_path_and_message() {
        let e = Error::from_status(
            400,
            br#"{"error":"not an IP address","path":"network.dns[0]"}"#,
        );
        let Some(e) = e else {
            panic!("400 must be an error")
        };
        assert_eq!(e.to_string(), "network.dns[0]: not an IP address");
        let Error::Refused { status, path, .. } = e else {
            panic!("400 must be Refused, got {e:?}")
        };
        assert_eq!(status, 400);
        assert_eq!(path.as_deref(), Some("network.dns[0]"));
    }

    #[test]
    fn an_error_without_path_shows_only_the_message() {
        let e = Error::from_status(409, br#"{"error":"nothing is staged"}"#);
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("nothing is staged")
        );
    }

    #[test]
    fn a_body_that_is_not_the_error_object_is_shown_as_text() {
        let e = Error::from_status(502, b"  bad gateway\n");
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("the node failed: bad gateway")
        );
        let e = Error::from_status(500, b"");
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("the node failed: HTTP status 500")
        );
        let long = "x".repeat(1000);
        let e = Error::from_status(500, long.as_bytes()).map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.chars().count() < 250));
    }

    #[test]
    fn unauthorized_tells_how_to_pass_the_token() {
        let e = Error::from_status(401, br#"{"error":"a valid bearer token is required"}"#);
        let m = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(m.contains("a valid bearer token is required"), "{m}");
        assert!(m.contains("--token"), "{m}");
    }
}
