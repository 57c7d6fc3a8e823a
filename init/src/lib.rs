//! carapace-init: the PID 1 of a Carapace node, in two stages.
//!
//! Stage 1 runs as `/init` from the initrd: it finds the root partition named by
//! `roothash=` on the kernel command line, puts dm-verity in front of it, mounts it
//! read-only together with the state partition on /var, switches root and execs
//! stage 2. Stage 2 runs as PID 1 on the verified root: it finishes the mounts,
//! supervises the services of the image's manifest, reaps orphans and shuts the
//! machine down in order.
//!
//! Invariant: PID 1 never panics on bad input and never exits; every failure is
//! reported on the console in one line, then the machine carries on, or ends:
//! a reboot on a trial boot that the boot loader counts (so it falls back to
//! the previous version), a power-off otherwise.
//! Everything that decides (parsing, choosing, restart policy) is a pure function
//! in its own module, unit-tested on the host; the modules that touch the kernel
//! (`dm`, `stage1`, `stage2`, `supervisor`, `shutdown`, `power`, `watchdog`)
//! stay thin.

pub mod backoff;
pub mod boot_counting;
pub mod boot_file;
pub mod clock;
pub mod cmdline;
pub mod console;
pub mod dm;
pub mod logs;
pub mod loopback;
pub mod manifest;
pub mod power;
pub mod power_button;
pub mod privileges;
pub mod services_file;
pub mod shutdown;
pub mod stage1;
pub mod stage2;
pub mod supervisor;
pub mod watchdog;

/// Where stage 2 lives on the verified root.
pub const STAGE2_PATH: &str = "/usr/lib/carapace/carapace-init";
/// The declarative list of services on the verified root.
pub const MANIFEST_PATH: &str = "/usr/lib/carapace/services.toml";
/// Present only in the initrd: its existence is how the binary knows it is stage 1.
pub const INITRD_MARKER: &str = "/etc/initrd-release";
/// Where stage 1 assembles the new root before switching into it.
pub const SYSROOT: &str = "/sysroot";

/// carapace-init's entry: picks stage 1 (in the initrd, which has
/// [`INITRD_MARKER`]) or stage 2, and makes sure that a panic of PID 1 ends
/// the machine with a message instead of killing PID 1: a reboot on a trial
/// boot that a reboot can help (so the boot loader counts the try), a
/// power-off otherwise (see [`power`]).
pub fn main() -> ! {
    std::panic::set_hook(Box::new(|info| {
        console::say(&format!("internal error: {info}"));
        if rustix::process::getpid().is_init() {
            power::give_up();
        }
    }));
    if std::path::Path::new(INITRD_MARKER).exists() {
        stage1::run()
    } else {
        stage2::run()
    }
}
