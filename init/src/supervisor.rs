//! TODO(supervisor): being written.
