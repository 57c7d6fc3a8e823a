//! The carapace-init binary: picks stage 1 or stage 2 and makes sure that a
//! panic powers the machine off with a message instead of killing PID 1.

fn main() {
    std::panic::set_hook(Box::new(|info| {
        carapace_init::console::say(&format!("internal error: {info}"));
        if rustix::process::getpid().is_init() {
            carapace_init::power::final_action(carapace_init::power::PowerAction::PowerOff);
        }
    }));
    if std::path::Path::new(carapace_init::INITRD_MARKER).exists() {
        carapace_init::stage1::run()
    } else {
        carapace_init::stage2::run()
    }
}
