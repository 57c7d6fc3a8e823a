//! carapace-net: the network agent of a Carapace node. It configures the
//! node's one Ethernet interface from the `network` settings — DHCPv4 by
//! default (a client of our own, [`dhcp_client`] over [`dhcp_packet`]) or
//! static addresses and routes — through rtnetlink ([`netlink`]), writes
//! /run/carapace/resolv.conf ([`resolv`]) and publishes its state in
//! /run/carapace/network.json ([`status`]). It also keeps the clock right
//! with SNTP ([`sntp`]), resolving server names with the node's DNS stub
//! ([`dns`], the carapace-dns crate). [`agent::run`] is the daemon; everything else is I/O-free or
//! thin, and tested on its own.

pub mod agent;
pub mod config;
pub mod dhcp_client;
pub mod dhcp_packet;
pub mod iface;
pub mod netlink;
pub mod resolv;
pub mod sntp;
pub mod status;

/// The DNS stub resolver, shared with the update daemon.
pub use carapace_dns as dns;

pub use agent::{run, Paths};

/// The `net` service: [`run`] on a current-thread runtime; the exit status
/// tells carapace-init whether to count a failure.
pub fn main() -> std::process::ExitCode {
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
    match runtime.block_on(run(Paths::default())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("carapace-net: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
