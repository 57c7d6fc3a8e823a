//! carapace-model: the settings of a Carapace node, declared once and
//! validated by their types, shared by the API server, its client and every
//! agent that applies a setting.
//!
//! The flow is Bottlerocket's: a change is a JSON merge patch, *staged* into a
//! pending transaction (validated at once: a bad field is refused with its
//! path and nothing is staged), then *committed* as a whole. The model decides
//! and never acts: applying a setting, persisting it and rolling back are the
//! server's, with the pure helpers here (`Settings::changed_areas`,
//! `persist::save`) to keep them small.
//!
//! Invariant: a `Settings` value that exists is valid; there is no way to
//! build one that fails validation.

pub mod containers;
pub mod error;
pub mod persist;
pub mod settings;
pub mod store;
pub mod sysctl;
pub mod user_data;

pub use error::SettingsError;
pub use settings::{Area, Settings};
pub use store::Store;
