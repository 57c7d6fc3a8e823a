//! TODO(power_button): being written.
