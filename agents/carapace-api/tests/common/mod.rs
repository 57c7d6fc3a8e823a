//! What the listener tests share: a node that applies nothing and reports
//! an empty status, so the tests exercise only the listeners and the router.

use carapace_api::node::{ApiInfo, Facts, Status, UserDataReport};
use carapace_api::{Applier, NodeOps, PowerAction};
use carapace_model::{Area, Settings};

/// An applier that puts nothing into effect.
pub struct NoApply;
impl Applier for NoApply {
    fn apply(&mut self, _: &Settings, _: &Settings, _: &[Area]) -> Result<(), String> {
        Ok(())
    }
}

/// A node with an empty status that accepts every power request.
pub struct Node;
impl NodeOps for Node {
    fn status(&self) -> Status {
        carapace_api::node::status_from(
            &Facts::default(),
            &ApiInfo::default(),
            &UserDataReport::default(),
        )
    }
    fn power(&self, _: PowerAction) -> Result<(), String> {
        Ok(())
    }
}
