//! Where the node's shared files are: one definition of each path that one
//! program writes and another reads. A file only its own program uses (the
//! net agent's applied state, the update daemon's staged record) keeps its
//! path in that program.

/// Where PID 1 and the agents publish their state: a tmpfs, empty at boot.
pub const RUN_DIR: &str = "/run/carapace";

/// What this boot is ([`crate::boot::Boot`]); written by carapace-init.
pub const BOOT_JSON: &str = "/run/carapace/boot.json";

/// Every service's state ([`crate::services::Service`]); written by carapace-init.
pub const SERVICES_JSON: &str = "/run/carapace/services.json";

/// The network agent's state ([`crate::network::NetworkStatus`]).
pub const NETWORK_JSON: &str = "/run/carapace/network.json";

/// Every container's state ([`crate::containers::ContainerStatus`]);
/// written by the container agent.
pub const CONTAINERS_JSON: &str = "/run/carapace/containers.json";

/// The log files of the services (PID 1) and containers (the container
/// agent): see [`crate::logs`].
pub const LOGS_DIR: &str = "/run/carapace/logs";

/// The API's root-only Unix socket.
pub const API_SOCKET: &str = "/run/carapace/api.sock";

/// The DNS servers the network agent found, as a resolver reads them; the
/// image links /etc/resolv.conf here, and containers get a copy.
pub const RESOLV_CONF: &str = "/run/carapace/resolv.conf";

/// The committed settings (`carapace_model`), written by the API and read
/// by the agents that put them into effect.
pub const SETTINGS_JSON: &str = "/var/lib/carapace/settings.json";

/// The API's TLS identity (`cert.pem`, `key.pem`).
pub const API_TLS_DIR: &str = "/var/lib/carapace/api";

/// The API's certificate (PEM, leaf first): what clients and the update
/// daemon's health check pin.
pub const API_CERTIFICATE: &str = "/var/lib/carapace/api/cert.pem";

/// The system bus socket, served by carapace-bus.
pub const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_published_files_are_under_the_run_directory() {
        for path in [
            BOOT_JSON,
            SERVICES_JSON,
            NETWORK_JSON,
            CONTAINERS_JSON,
            LOGS_DIR,
            API_SOCKET,
            RESOLV_CONF,
        ] {
            assert_eq!(Path::new(path).parent(), Some(Path::new(RUN_DIR)), "{path}");
        }
        assert_eq!(
            Path::new(API_CERTIFICATE).parent(),
            Some(Path::new(API_TLS_DIR))
        );
    }
}
