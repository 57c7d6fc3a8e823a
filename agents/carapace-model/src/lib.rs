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
//! Input is strict, the file lenient. A change through the API or first-boot
//! user data that names a field this version does not know is refused with
//! its path. The settings file on /var (`settings_file`, saved by
//! `persist`) carries a `schema` number, and reading it keeps the fields a
//! newer version wrote instead of failing: after a rollback or a downgrade
//! the older version runs with every setting it knows, and its commits
//! write the newer fields back where they were.
//!
//! Invariant: a `Settings` value that exists is valid; there is no way to
//! build one that fails validation.

pub mod containers;
pub mod error;
pub mod persist;
pub mod settings;
pub mod settings_file;
pub mod store;
pub mod sysctl;
pub mod user_data;

pub use error::SettingsError;
pub use settings::{Area, Settings};
pub use store::Store;
