//! The update daemon's report and its names on the system bus: it serves
//! `org.carapace.Update1` at `/org/carapace/Update1` (carapace-update's
//! `dbus`, the server); the API (`/v1/update…`) and the test image's probe
//! call it through [`crate::dbus`], and carapace-ctl reads the report as
//! `GET /v1/update` sends it.
//!
//! [`Status`] is the state machine of an update (idle, checking,
//! downloading, verifying, writing, ready-to-reboot, error) with progress,
//! and the versions involved: the answer of `Status()` and the body of
//! every `StateChanged` signal, the D-Bus struct `(sdssbsssss)`, and as
//! JSON the body of `GET /v1/update`:
//!
//! ```json
//! {"state":"downloading","progress":0.5,"running":"0.1.0","slot":"a","blessed":true,
//!  "fallback":"","available":"0.2.0","staged":"","rolled_back":"","error":""}
//! ```
//!
//! Empty strings stand for "none" (D-Bus has no null). A JSON reader takes
//! a missing field as empty, and ignores fields it does not know.

use serde::{Deserialize, Serialize};

/// The daemon's well-known name on the system bus, and its interface.
pub const NAME: &str = "org.carapace.Update1";
/// The object the daemon serves.
pub const PATH: &str = "/org/carapace/Update1";

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

/// The daemon's report. Empty strings stand for "none".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "dbus", derive(zbus::Type))]
#[serde(default)]
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

    /// As `GET /v1/update` has always sent it.
    const SERVED: &str = r#"{"state":"downloading","progress":0.5,"running":"0.1.0","slot":"a","blessed":true,"fallback":"","available":"0.2.0","staged":"","rolled_back":"","error":""}"#;

    #[test]
    fn the_status_the_api_serves_reads_back_and_writes_the_same() {
        let s: Status = serde_json::from_str(SERVED).expect("parses");
        assert_eq!(serde_json::to_string(&s).expect("json"), SERVED);
        assert!(s.busy() && s.blessed);
        let older: Status =
            serde_json::from_str(r#"{"state":"idle","running":"0.1.0","new":1}"#).expect("lenient");
        assert_eq!(
            (
                older.state.as_str(),
                older.rolled_back.as_str(),
                older.progress
            ),
            ("idle", "", 0.0)
        );
    }

    #[cfg(feature = "dbus")]
    #[test]
    fn the_status_is_a_dbus_struct_of_strings_a_double_and_a_bool() {
        use zbus::Type;
        assert_eq!(Status::SIGNATURE.to_string(), "(sdssbsssss)");
    }
}
