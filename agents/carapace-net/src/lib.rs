//! carapace-net: the network agent of a Carapace node. It configures the
//! node's one Ethernet interface from the `network` settings — DHCPv4 by
//! default (a client of our own, [`dhcp_client`] over [`dhcp_packet`]) or
//! static addresses and routes — through rtnetlink ([`netlink`]), writes
//! /run/carapace/resolv.conf ([`resolv`]) and publishes its state in
//! /run/carapace/network.json ([`status`]). It also keeps the clock right
//! with SNTP ([`sntp`]), resolving server names with its own DNS stub
//! ([`dns`]). [`agent::run`] is the daemon; everything else is I/O-free or
//! thin, and tested on its own.

pub mod agent;
pub mod config;
pub mod dhcp_client;
pub mod dhcp_packet;
pub mod dns;
pub mod iface;
pub mod netlink;
pub mod resolv;
pub mod sntp;
pub mod status;

pub use agent::{run, Paths};
