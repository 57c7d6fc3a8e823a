//! TODO(dm): being written.
