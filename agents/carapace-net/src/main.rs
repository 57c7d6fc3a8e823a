//! The carapace-net daemon, supervised by carapace-init (which restarts it
//! with backoff if it exits). See [`carapace_net::agent`] for what it does
//! and the console lines it prints.

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("carapace-net: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(carapace_net::run(carapace_net::Paths::default())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("carapace-net: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
