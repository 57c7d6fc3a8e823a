//! Time since the kernel started, for the `ready` line, the boot benchmark
//! and every stamp PID 1 publishes: the node's one clock, defined in
//! [`carapace_contract::clock`].

pub use carapace_contract::clock::ms_since_boot;
