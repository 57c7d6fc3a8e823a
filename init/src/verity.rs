//! TODO(verity): being written.
