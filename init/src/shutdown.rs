//! TODO(shutdown): being written.
