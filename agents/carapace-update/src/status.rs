//! What the daemon reports: the state machine of an update (idle, checking,
//! downloading, verifying, writing, ready-to-reboot, error) with progress,
//! and the versions involved. The same value is the answer of `Status` and
//! the body of every `StateChanged` signal on D-Bus.

use serde::{Deserialize, Serialize};
use zbus::zvariant::Type;

/// The steps of an update, as D-Bus and the API spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    Checking,
    Downloading,
    Verifying,
    Writing,
    ReadyToReboot,
    Error,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Checking => "checking",
            State::Downloading => "downloading",
            State::Verifying => "verifying",
            State::Writing => "writing",
            State::ReadyToReboot => "ready-to-reboot",
            State::Error => "error",
        }
    }

    /// Whether a long operation is under way (a second one is refused).
    pub fn busy(self) -> bool {
        matches!(
            self,
            State::Checking | State::Downloading | State::Verifying | State::Writing
        )
    }
}

/// The daemon's report. Empty strings stand for "none" (D-Bus has no null).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Type)]
pub struct Status {
    /// One of [`State::as_str`].
    pub state: String,
    /// Progress of the current step, 0 to 1.
    pub progress: f64,
    /// The running version and slot.
    pub running: String,
    pub slot: String,
    /// Whether the running version is blessed (no boot counter left on it).
    pub blessed: bool,
    /// The version systemd-boot falls back to.
    pub fallback: String,
    /// The newest version the source offers, after a check.
    pub available: String,
    /// The version written to the inactive slot and installed, waiting for a reboot.
    pub staged: String,
    /// A newer version whose boot tries ran out: the update was rolled back.
    pub rolled_back: String,
    /// Why the last operation failed.
    pub error: String,
}

impl Status {
    /// The status of a daemon that has done nothing yet.
    pub fn idle(running: &str, slot: &str) -> Status {
        Status {
            state: State::Idle.as_str().into(),
            progress: 0.0,
            running: running.into(),
            slot: slot.into(),
            blessed: false,
            fallback: String::new(),
            available: String::new(),
            staged: String::new(),
            rolled_back: String::new(),
            error: String::new(),
        }
    }

    /// Enters `state` at progress 0 (an error keeps its message; any other
    /// state clears it).
    pub fn enter(&mut self, state: State) {
        self.state = state.as_str().into();
        self.progress = 0.0;
        if state != State::Error {
            self.error.clear();
        }
    }

    /// Fails the current operation with `why`.
    pub fn fail(&mut self, why: &str) {
        self.enter(State::Error);
        self.error = why.into();
    }

    /// Whether a long operation is under way.
    pub fn busy(&self) -> bool {
        [
            State::Checking,
            State::Downloading,
            State::Verifying,
            State::Writing,
        ]
        .iter()
        .any(|s| s.as_str() == self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entering_a_state_resets_progress_and_clears_old_errors() {
        let mut s = Status::idle("0.1.0", "a");
        assert!(!s.busy());
        s.enter(State::Downloading);
        s.progress = 0.5;
        assert!(s.busy());
        s.fail("the download broke");
        assert_eq!(
            (s.state.as_str(), s.error.as_str()),
            ("error", "the download broke")
        );
        assert!(!s.busy(), "an error ends the operation");
        s.enter(State::Checking);
        assert_eq!((s.progress, s.error.as_str()), (0.0, ""));
        assert!(State::Writing.busy() && !State::ReadyToReboot.busy());
    }

    #[test]
    fn the_status_is_a_dbus_struct_of_strings_a_double_and_a_bool() {
        use zbus::zvariant::Type;
        assert_eq!(Status::SIGNATURE.to_string(), "(sdssbsssss)");
    }
}
