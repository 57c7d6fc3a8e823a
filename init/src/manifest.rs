//! TODO(manifest): being written.
