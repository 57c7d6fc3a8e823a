//! Putting committed settings into effect on the node.

use carapace_model::{Area, Settings};

/// Applies a settings change. Must either apply everything in `areas` or
/// leave the node as it was and say why.
pub trait Applier: Send {
    fn apply(&mut self, old: &Settings, new: &Settings, areas: &[Area]) -> Result<(), String>;
}

/// The real node: the hostname and the allowed sysctls take effect at once.
/// The API token and the update source are read from the committed settings
/// by whoever needs them; networking and NTP are applied by their agents.
pub struct NodeApplier;

fn set_sysctls(settings: &Settings) -> Result<(), String> {
    for (key, value) in &settings.sysctl {
        let path = carapace_model::sysctl::proc_path(key);
        std::fs::write(&path, value)
            .map_err(|e| format!("cannot write {value:?} to {path}: {e}"))?;
    }
    Ok(())
}

impl Applier for NodeApplier {
    fn apply(&mut self, old: &Settings, new: &Settings, areas: &[Area]) -> Result<(), String> {
        if areas.contains(&Area::Hostname) {
            rustix::system::sethostname(new.hostname.as_str().as_bytes())
                .map_err(|e| format!("cannot set the hostname {}: {e}", new.hostname))?;
        }
        if areas.contains(&Area::Sysctl) {
            if let Err(e) = set_sysctls(new) {
                // Put back what the old settings said, then report.
                let _ = set_sysctls(old);
                if areas.contains(&Area::Hostname) {
                    let _ = rustix::system::sethostname(old.hostname.as_str().as_bytes());
                }
                return Err(e);
            }
        }
        Ok(())
    }
}
