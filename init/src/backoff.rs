//! TODO(backoff): being written.
