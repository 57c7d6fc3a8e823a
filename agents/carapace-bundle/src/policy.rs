//! The update policy, pure: may a node running one version install a
//! (verified) manifest?
//!
//! In order:
//! 1. the bundle must be for this node's architecture;
//! 2. it must be newer than the running version, unless a downgrade (or a
//!    reinstall of the same version) is forced;
//! 3. the running version must be at least the manifest's
//!    `min_from_version` — never bypassed, since it says the new version
//!    cannot take over the state an older one left. (A downgrade always
//!    passes it: a valid manifest has `min_from_version <= version`.)
//!
//! Beside it, [`check_minimum_version`]: the signed index's anti-rollback
//! floor, which no version below it passes — forced or not — so that a
//! downgrade cannot bring back a version the release builder withdrew
//! (one with a known hole, say).

use crate::{BundleError, Index, Manifest};
use semver::Version;
use std::cmp::Ordering;

/// The architecture of every Carapace node (the only one the image is built for).
pub const NODE_ARCHITECTURE: &str = "x86_64";

/// Whether a node running `running` may install `manifest`.
pub fn check_update(
    running: &Version,
    manifest: &Manifest,
    force_downgrade: bool,
) -> Result<(), BundleError> {
    if manifest.architecture != NODE_ARCHITECTURE {
        return Err(BundleError::Architecture {
            bundle: manifest.architecture.clone(),
            node: NODE_ARCHITECTURE,
        });
    }
    let offered = &manifest.version;
    match offered.cmp(running) {
        Ordering::Greater => {}
        Ordering::Equal if !force_downgrade => {
            return Err(BundleError::SameVersion(offered.clone()));
        }
        Ordering::Less if !force_downgrade => {
            return Err(BundleError::Downgrade {
                offered: offered.clone(),
                running: running.clone(),
            });
        }
        Ordering::Equal | Ordering::Less => {}
    }
    if running < &manifest.min_from_version {
        return Err(BundleError::RunningTooOld {
            offered: offered.clone(),
            min_from: manifest.min_from_version.clone(),
            running: running.clone(),
        });
    }
    Ok(())
}

/// Whether `offered` is at or above the `minimum_version` of the signed
/// `index` (always, when the index sets no floor). A forced downgrade does
/// not bypass it: call it for every version a node would install.
pub fn check_minimum_version(offered: &Version, index: &Index) -> Result<(), BundleError> {
    match &index.minimum_version {
        Some(minimum) if offered < minimum => Err(BundleError::BelowMinimumVersion {
            offered: offered.clone(),
            minimum: minimum.clone(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::sample;

    fn v(text: &str) -> Version {
        Version::parse(text).expect("version")
    }

    fn offering(version: &str, min_from: &str) -> Manifest {
        let mut m = sample();
        m.version = v(version);
        m.min_from_version = v(min_from);
        m
    }

    #[test]
    fn a_newer_version_is_taken() {
        let m = offering("0.2.0", "0.1.0");
        assert_eq!(check_update(&v("0.1.0"), &m, false), Ok(()));
        assert_eq!(check_update(&v("0.1.5"), &m, false), Ok(()));
        // Numeric, not textual, order.
        let m = offering("0.10.0", "0.1.0");
        assert_eq!(check_update(&v("0.9.0"), &m, false), Ok(()));
        // A release is newer than its pre-releases.
        let m = offering("1.0.0", "0.1.0");
        assert_eq!(check_update(&v("1.0.0-rc.1"), &m, false), Ok(()));
    }

    #[test]
    fn a_downgrade_is_refused_unless_forced() {
        let m = offering("0.1.0", "0.1.0");
        let err = check_update(&v("0.2.0"), &m, false).expect_err("downgrade");
        assert_eq!(
            err.to_string(),
            "0.1.0 is older than the running 0.2.0: refusing a downgrade"
        );
        assert_eq!(check_update(&v("0.2.0"), &m, true), Ok(()));
        let m = offering("0.9.0", "0.1.0");
        assert!(matches!(
            check_update(&v("0.10.0"), &m, false),
            Err(BundleError::Downgrade { .. })
        ));
    }

    #[test]
    fn the_same_version_is_refused_unless_forced() {
        let m = offering("0.2.0", "0.1.0");
        let err = check_update(&v("0.2.0"), &m, false).expect_err("same");
        assert_eq!(
            err.to_string(),
            "0.2.0 is already running: refusing to install it again"
        );
        assert_eq!(check_update(&v("0.2.0"), &m, true), Ok(()));
    }

    #[test]
    fn a_running_version_below_min_from_is_refused_even_when_forced() {
        let m = offering("0.3.0", "0.2.0");
        for force in [false, true] {
            let err = check_update(&v("0.1.0"), &m, force).expect_err("too old");
            assert_eq!(
                err.to_string(),
                "0.3.0 can only be installed over 0.2.0 or newer, and this node runs 0.1.0: update to 0.2.0 first"
            );
        }
        assert_eq!(check_update(&v("0.2.0"), &m, false), Ok(()));
    }

    #[test]
    fn another_architecture_is_refused_even_when_forced() {
        let mut m = offering("0.3.0", "0.1.0");
        m.architecture = "aarch64".into();
        for force in [false, true] {
            let err = check_update(&v("0.2.0"), &m, force).expect_err("arch");
            assert_eq!(
                err.to_string(),
                "this bundle is for aarch64, but this node is x86_64"
            );
        }
    }

    #[test]
    fn the_index_floor_refuses_older_versions_even_when_forced() {
        let mut index = Index::new();
        assert_eq!(check_minimum_version(&v("0.0.1"), &index), Ok(()));
        index.minimum_version = Some(v("0.2.0"));
        let err = check_minimum_version(&v("0.1.9"), &index).expect_err("below the floor");
        assert_eq!(
            err.to_string(),
            "0.1.9 is below 0.2.0, the minimum_version of the signed index: refusing it, even as a forced downgrade"
        );
        // A pre-release of the floor is below it; the floor itself is fine.
        assert!(check_minimum_version(&v("0.2.0-rc.1"), &index).is_err());
        assert_eq!(check_minimum_version(&v("0.2.0"), &index), Ok(()));
        assert_eq!(check_minimum_version(&v("0.10.0"), &index), Ok(()));
        // check_update lets the forced downgrade through; the floor does not.
        let m = offering("0.1.0", "0.1.0");
        assert_eq!(check_update(&v("0.3.0"), &m, true), Ok(()));
        assert!(matches!(
            check_minimum_version(&m.version, &index),
            Err(BundleError::BelowMinimumVersion { .. })
        ));
    }
}
