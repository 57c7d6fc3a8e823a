//! `carapace-ctl`: the client of a Carapace node's HTTP API, as a library
//! (used by the command line tool, the test harness and the benchmarks) and
//! as the `carapace-ctl` command.
//!
//! # Reaching a node
//!
//! - `unix:/run/carapace/api.sock` ([`DEFAULT_ENDPOINT`]): the node's local
//!   socket, root only, no token.
//! - `https://HOST[:PORT]` (port 8443 by default): the remote listener. Its
//!   certificate is self-signed; the client pins it by the SHA-256 of its
//!   DER ([`Fingerprint`], printed on the node's console and shown in
//!   `status`), and sends the API token as `Authorization: Bearer …`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), carapace_ctl::Error> {
//! use carapace_ctl::{Client, Endpoint, Fingerprint, Method};
//! let endpoint = Endpoint::parse("https://10.0.0.5")?;
//! let pin = Fingerprint::parse("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")?;
//! let mut client = Client::connect(&endpoint, Some("token"), Some(&pin)).await?;
//! let status = client.get_json("/v1/status").await?;
//! let patch = carapace_ctl::merge_patch(&["hostname=node1"])?;
//! client.call(Method::PATCH, "/v1/settings", Some(&patch)).await?;
//! client.call(Method::POST, "/v1/settings/commit", None).await?;
//! # let _ = status; Ok(()) }
//! ```
//!
//! # Exit codes of the command
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | the node refused the request (a 4xx answer other than 401): its message, and the offending field's path for validation errors, go to stderr |
//! | 2 | usage error (bad arguments, endpoint, fingerprint or `KEY=VALUE`) |
//! | 3 | the node cannot be reached: connection, TLS or certificate fingerprint mismatch |
//! | 4 | authentication refused (401): missing or wrong token |
//! | 5 | the node failed (a 5xx answer, e.g. applying a commit failed and was rolled back) |
//!
//! [`Error::exit_code`] gives the code of each failure.

pub mod client;
pub mod endpoint;
pub mod error;
pub mod patch;
pub mod text;
pub mod tls;

pub use client::{BodyStream, Client, LogEntry, Response};
pub use endpoint::{Endpoint, Fingerprint, DEFAULT_ENDPOINT, DEFAULT_PORT};
pub use error::{
    Error, EXIT_NODE_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_UNAUTHORIZED, EXIT_UNREACHABLE, EXIT_USAGE,
};
pub use hyper::Method;
pub use patch::{logs_path, merge_patch, parse_key, parse_value, settings_path};

/// The exit codes, as `--help` shows them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  the node refused the request (its message and the field's path on stderr)
  2  usage error
  3  cannot reach the node (connection, TLS, certificate fingerprint mismatch)
  4  authentication refused (missing or wrong token)
  5  the node failed (5xx; e.g. applying a commit failed and was rolled back)";
