//! How a program asks PID 1 to end the machine: by signal, and only so
//! (carapace-init is the one process that reboots). [`SIGNALS`] is every
//! signal PID 1 takes as a power request; a service asking for one sends
//! [`signal_for`] its action: SIGTERM to reboot, SIGUSR2 to power off.
//!
//! | signal | action |
//! |---|---|
//! | SIGINT (ctrl-alt-del), SIGTERM | reboot |
//! | SIGUSR1, SIGUSR2, SIGPWR | power off |

use rustix::process::Signal;

/// How the machine ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    PowerOff,
}

impl PowerAction {
    /// The action in words: `reboot`, `power off`.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::PowerOff => "power off",
            PowerAction::Reboot => "reboot",
        }
    }
}

/// One signal PID 1 takes as a power request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerSignal {
    pub signal: Signal,
    pub action: PowerAction,
    /// Why the machine ends, as PID 1's shutdown line says it.
    pub reason: &'static str,
}

/// Every signal that asks PID 1 to end the machine.
pub const SIGNALS: [PowerSignal; 5] = [
    PowerSignal {
        signal: Signal::INT,
        action: PowerAction::Reboot,
        reason: "ctrl-alt-del",
    },
    PowerSignal {
        signal: Signal::TERM,
        action: PowerAction::Reboot,
        reason: "SIGTERM",
    },
    PowerSignal {
        signal: Signal::USR1,
        action: PowerAction::PowerOff,
        reason: "SIGUSR1",
    },
    PowerSignal {
        signal: Signal::USR2,
        action: PowerAction::PowerOff,
        reason: "SIGUSR2",
    },
    PowerSignal {
        signal: Signal::POWER,
        action: PowerAction::PowerOff,
        reason: "SIGPWR",
    },
];

/// The signal a service sends PID 1 for `action`.
pub fn signal_for(action: PowerAction) -> Signal {
    match action {
        PowerAction::Reboot => Signal::TERM,
        PowerAction::PowerOff => Signal::USR2,
    }
}

/// What PID 1 does on `signal`, if it is a power request.
pub fn action_of(signal: Signal) -> Option<PowerAction> {
    SIGNALS
        .iter()
        .find(|s| s.signal == signal)
        .map(|s| s.action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signal_a_service_sends_is_one_pid_1_takes_for_that_action() {
        for action in [PowerAction::Reboot, PowerAction::PowerOff] {
            assert_eq!(action_of(signal_for(action)), Some(action));
        }
        assert_eq!(signal_for(PowerAction::Reboot), Signal::TERM);
        assert_eq!(signal_for(PowerAction::PowerOff), Signal::USR2);
        assert_eq!(action_of(Signal::HUP), None);
        assert_eq!(action_of(Signal::INT), Some(PowerAction::Reboot));
        assert_eq!(action_of(Signal::POWER), Some(PowerAction::PowerOff));
    }
}
