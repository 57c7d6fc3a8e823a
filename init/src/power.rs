//! The last thing PID 1 does: sync and ask the kernel to power off or reboot.

use rustix::system::RebootCommand;

/// What the machine does at the end of a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
}

impl PowerAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::PowerOff => "power off",
            PowerAction::Reboot => "reboot",
        }
    }
}

/// Syncs filesystems and powers off or reboots. Never returns: if the kernel
/// refuses (we are not PID 1, or lack the capability), it says so and halts
/// the calling thread forever rather than exiting, since PID 1 exiting panics
/// the kernel.
pub fn final_action(action: PowerAction) -> ! {
    rustix::fs::sync();
    let cmd = match action {
        PowerAction::PowerOff => RebootCommand::PowerOff,
        PowerAction::Reboot => RebootCommand::Restart,
    };
    if let Err(err) = rustix::system::reboot(cmd) {
        crate::console::say(&format!("cannot {}: {err}", action.as_str()));
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Reports why the boot cannot go on and powers the machine off.
pub fn fail(msg: &str) -> ! {
    crate::console::say(&format!("boot failed: {msg}"));
    crate::console::say("powering off");
    final_action(PowerAction::PowerOff)
}
