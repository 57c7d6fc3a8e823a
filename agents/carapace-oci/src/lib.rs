//! carapace-oci: pulls OCI images from a registry that speaks the OCI
//! distribution protocol into the node's content-addressed image store on
//! the state partition (/var/lib/carapace/containers).
//!
//! The registry protocol (manifests, blobs, the bearer token flow, basic
//! auth, redirects) is a small client of our own over hyper and rustls with
//! ring ([`Store::with_tls_roots`] gives the only roots trusted; plain HTTP
//! only for registries marked insecure); the documents are `oci-spec`'s
//! types. Ours too: the store layout (see [`Store`]), choosing the node's
//! platform from an index, verification, and unpacking layers for overlayfs.
//!
//! The invariant it keeps: a name in the store means complete, verified
//! content. Every manifest, config and layer blob is hashed (SHA-256) while
//! it streams and refused unless it matches the digest it was fetched by and
//! the size its descriptor gives (a pinned `@sha256:` reference is pulled
//! exactly); a layer must also unpack to the diff ID its config lists,
//! within its [`Limits`], and cannot act outside its directory: it is
//! unpacked through directory handles that never follow a symlink, and a
//! refused layer leaves the store exactly as it was. Credentials go only to
//! the registry's own origin, to a token realm elsewhere only over HTTPS,
//! and never over plain HTTP unless the registry is marked insecure. Content is written under a
//! temporary name, synced, then renamed. A layer is stored once, by digest,
//! and shared by every image that lists it; what the store has is never
//! fetched again.
//!
//! It does not: run containers or mount layers (the container agent does),
//! decide which images to keep (the caller gives [`Store::gc`] the list),
//! or read settings (the caller passes credentials and trusted roots).

mod beneath;
mod digest;
mod error;
mod manifest;
mod pull;
mod registry;
mod store;
mod unpack;

pub use error::{PullError, StoreError, UnpackError};
pub use manifest::Platform;
pub use registry::DOCKER_HUB_API;
pub use store::{GcReport, Pulled, Store};
pub use unpack::Limits;
