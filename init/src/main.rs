//! The carapace-init binary: picks stage 1 or stage 2 and makes sure that a
//! panic of PID 1 ends the machine with a message instead of killing PID 1:
//! a reboot on a trial boot that a reboot can help (so the boot loader
//! counts the try), a power-off otherwise (see `carapace_init::power`).

fn main() {
    std::panic::set_hook(Box::new(|info| {
        carapace_init::console::say(&format!("internal error: {info}"));
        if rustix::process::getpid().is_init() {
            carapace_init::power::give_up();
        }
    }));
    if std::path::Path::new(carapace_init::INITRD_MARKER).exists() {
        carapace_init::stage1::run()
    } else {
        carapace_init::stage2::run()
    }
}
