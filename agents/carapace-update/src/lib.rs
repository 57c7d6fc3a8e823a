//! carapace-update: the update daemon's library. A node never changes a file
//! of its root: it writes a whole new, signed version into the inactive slot,
//! installs that version's UKI with a boot counter, and lets systemd-boot try
//! it; once the new version is up and healthy the daemon blesses it, and if
//! it never is, the boot loader falls back to the version that worked.
//!
//! - `slots` — the two root slots of the boot disk; which one runs.
//! - `boot_entries` — UKI names and systemd-boot's boot counting, pure.
//! - `esp` — the EFI system partition, mounted only while it changes, and the
//!   root hash a UKI names (its `.cmdline` section).
//! - `efi_vars` — systemd-boot's EFI variables (the one-shot entry of `apply`).
//! - `staged` — the record of a verified download on /var, so it survives a reboot.
//! - `fetch` — streaming HTTP GETs from the update source.
//! - the state machine and report, `carapace_contract::update::Status`
//!   (shared with the API and the client proxy).
//! - `engine` — check, download into the inactive slot and prove it, apply, bless.
//! - `health` — what a healthy node is (services, API over its socket and TLS,
//!   network, containers), the one definition the bless waits for.
//! - `dbus` — `org.carapace.Update1`, served (its client is
//!   `carapace_contract::dbus`).

pub mod boot_entries;
pub mod daemon;
pub mod dbus;
pub mod efi_vars;
pub mod engine;
pub mod esp;
pub mod fetch;
pub mod health;
pub mod slots;
pub mod staged;
