//! TODO(gpt): being written.
