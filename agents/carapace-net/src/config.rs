//! From settings to what is on the interface: reading and watching
//! /var/lib/carapace/settings.json, deciding whether a change matters to
//! this agent, turning a DHCP lease or the static settings into a [`Plan`],
//! and applying a plan through rtnetlink by difference with what was
//! applied before (so a renewal that changes nothing removes nothing).

use crate::dhcp_client::Lease;
use crate::netlink::{AddrSpec, RouteSpec, RTPROT_DHCP, RTPROT_STATIC};
use crate::status::Mode;
use carapace_model::settings::{Cidr, Network};
use carapace_model::{persist, Area, Settings};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// Where the API server commits settings.
pub const SETTINGS_JSON: &str = carapace_contract::paths::SETTINGS_JSON;
/// Our record of what we put on the interface, so a restarted agent can
/// remove it.
pub const APPLIED_JSON: &str = "/run/carapace/net-applied.json";

/// Which parts of the settings changed, as far as this agent cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Changes {
    pub network: bool,
    pub ntp: bool,
}

impl Changes {
    pub fn any(&self) -> bool {
        self.network || self.ntp
    }
}

/// What differs between the settings applied and new ones.
pub fn changes(old: &Settings, new: &Settings) -> Changes {
    let areas = old.changed_areas(new);
    Changes {
        network: areas.contains(&Area::Network),
        ntp: areas.contains(&Area::Ntp),
    }
}

/// Polls the settings file: the settings when it changed since the last
/// call (always on the first), defaults when there is no file, an error
/// when it cannot be loaded; None when nothing changed.
#[derive(Debug)]
pub struct SettingsWatch(persist::SettingsWatch);

impl SettingsWatch {
    pub fn new(path: impl Into<PathBuf>) -> SettingsWatch {
        SettingsWatch(persist::SettingsWatch::new(path))
    }

    pub fn poll(&mut self) -> Option<Result<Settings, String>> {
        self.0
            .poll()
            .map(|r| r.map(Option::unwrap_or_default).map_err(|e| e.to_string()))
    }
}

/// What should be on the interface, and what to report about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub mode: Mode,
    pub addresses: Vec<AddrSpec>,
    /// In the order they must be added (on-link routes first).
    pub routes: Vec<RouteSpec>,
    pub gateway: Option<IpAddr>,
    pub dns: Vec<IpAddr>,
    pub search: Option<String>,
    pub lease_seconds: Option<u32>,
}

/// The network address of `addr/prefix` (the kernel refuses a route whose
/// destination has host bits set).
pub fn network_of(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let p = u32::from(prefix.min(32));
            let mask = u32::MAX.checked_shl(32 - p).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let p = u32::from(prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - p).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

fn contains(net: &AddrSpec, ip: IpAddr) -> bool {
    net.addr.is_ipv4() == ip.is_ipv4()
        && network_of(net.addr, net.prefix) == network_of(ip, net.prefix)
}

/// DNS: the settings' servers when given, else the lease's.
fn dns_for(network: &Network, offered: &[IpAddr]) -> Vec<IpAddr> {
    if network.dns.is_empty() {
        offered.to_vec()
    } else {
        network.dns.clone()
    }
}

/// The plan for a DHCP lease: its address, a default route via its router
/// (with an on-link route to the router first when it lies outside the
/// subnet), its DNS servers unless the settings name some.
pub fn plan_dhcp(lease: &Lease, network: &Network) -> Plan {
    let addr = AddrSpec {
        addr: IpAddr::V4(lease.address),
        prefix: lease.prefix,
    };
    let mut routes = Vec::new();
    if let Some(router) = lease.router.map(IpAddr::V4) {
        if !contains(&addr, router) {
            routes.push(RouteSpec {
                dst: router,
                dst_len: 32,
                via: None,
                protocol: RTPROT_DHCP,
            });
        }
        routes.push(RouteSpec {
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst_len: 0,
            via: Some(router),
            protocol: RTPROT_DHCP,
        });
    }
    let offered: Vec<IpAddr> = lease.dns.iter().copied().map(IpAddr::V4).collect();
    Plan {
        mode: Mode::Dhcp,
        addresses: vec![addr],
        routes,
        gateway: lease.router.map(IpAddr::V4),
        dns: dns_for(network, &offered),
        search: lease.domain.clone(),
        lease_seconds: Some(lease.lease_secs),
    }
}

fn spec(c: &Cidr) -> AddrSpec {
    AddrSpec {
        addr: c.addr,
        prefix: c.prefix,
    }
}

/// The plan for static settings. Refused when a route's gateway is not of
/// its destination's family.
pub fn plan_static(network: &Network) -> Result<Plan, String> {
    let mut routes = Vec::new();
    for r in &network.routes {
        if r.to.addr.is_ipv4() != r.via.is_ipv4() {
            return Err(format!(
                "route to {}/{} via {}: the gateway is not of the destination's family",
                r.to.addr, r.to.prefix, r.via
            ));
        }
        routes.push(RouteSpec {
            dst: network_of(r.to.addr, r.to.prefix),
            dst_len: r.to.prefix,
            via: Some(r.via),
            protocol: RTPROT_STATIC,
        });
    }
    let gateway = network
        .routes
        .iter()
        .filter(|r| r.to.prefix == 0)
        .min_by_key(|r| !r.via.is_ipv4())
        .map(|r| r.via);
    Ok(Plan {
        mode: Mode::Static,
        addresses: network.addresses.iter().map(spec).collect(),
        routes,
        gateway,
        dns: network.dns.clone(),
        search: None,
        lease_seconds: None,
    })
}

/// `eth0 configured 10.0.2.15/24 via 10.0.2.2 dns 10.0.2.3 (dhcp)`; "none"
/// stands for a missing gateway or DNS list.
pub fn configured_line(ifname: &str, plan: &Plan) -> String {
    let addrs: Vec<String> = plan
        .addresses
        .iter()
        .map(|a| format!("{}/{}", a.addr, a.prefix))
        .collect();
    let gw = plan
        .gateway
        .map(|g| g.to_string())
        .unwrap_or_else(|| "none".into());
    let dns = if plan.dns.is_empty() {
        "none".to_string()
    } else {
        plan.dns
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "{ifname} configured {} via {gw} dns {dns} ({})",
        addrs.join(" "),
        plan.mode
    )
}

/// What we put on an interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub index: u32,
    pub addresses: Vec<AddrSpec>,
    pub routes: Vec<RouteSpec>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.routes.is_empty()
    }

    /// Reads the record a previous run left; none or a bad one is empty.
    pub fn load(path: &Path) -> Applied {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::status::write_atomic(path, &text)
    }
}

/// The rtnetlink operations [`apply`] needs; [`crate::netlink::Netlink`]
/// in the agent, a recorder in tests.
pub trait Rtnl {
    fn add_addr(&mut self, index: u32, a: &AddrSpec) -> std::io::Result<()>;
    fn del_addr(&mut self, index: u32, a: &AddrSpec) -> std::io::Result<()>;
    fn add_route(&mut self, index: u32, r: &RouteSpec) -> std::io::Result<()>;
    fn del_route(&mut self, index: u32, r: &RouteSpec) -> std::io::Result<()>;
}

impl Rtnl for crate::netlink::Netlink {
    fn add_addr(&mut self, index: u32, a: &AddrSpec) -> std::io::Result<()> {
        crate::netlink::Netlink::add_addr(self, index, a)
    }
    fn del_addr(&mut self, index: u32, a: &AddrSpec) -> std::io::Result<()> {
        crate::netlink::Netlink::del_addr(self, index, a)
    }
    fn add_route(&mut self, index: u32, r: &RouteSpec) -> std::io::Result<()> {
        crate::netlink::Netlink::add_route(self, index, r)
    }
    fn del_route(&mut self, index: u32, r: &RouteSpec) -> std::io::Result<()> {
        crate::netlink::Netlink::del_route(self, index, r)
    }
}

/// Moves the interface from `old` to `addresses` + `routes` on `index`:
/// removes the routes and addresses no longer wanted, then (re)adds every
/// wanted address and route (replacing, so re-adding is harmless; routes are
/// re-added because the kernel drops routes whose gateway became
/// unreachable). Returns what is now applied and the first error, if any;
/// it carries on past errors so as much as possible is in place.
pub fn apply(
    nl: &mut impl Rtnl,
    old: &Applied,
    index: u32,
    addresses: &[AddrSpec],
    routes: &[RouteSpec],
) -> (Applied, Option<String>) {
    let mut first_err: Option<String> = None;
    let mut note = |e: std::io::Error| {
        if first_err.is_none() {
            first_err = Some(e.to_string());
        }
    };
    let moved = old.index != index;
    let mut now = Applied {
        index,
        ..Applied::default()
    };
    for r in &old.routes {
        if moved || !routes.contains(r) {
            if let Err(e) = nl.del_route(old.index, r) {
                note(e);
                if !moved {
                    now.routes.push(*r);
                }
            }
        }
    }
    for a in &old.addresses {
        if moved || !addresses.contains(a) {
            if let Err(e) = nl.del_addr(old.index, a) {
                note(e);
                if !moved {
                    now.addresses.push(*a);
                }
            }
        }
    }
    for a in addresses {
        match nl.add_addr(index, a) {
            Ok(()) => now.addresses.push(*a),
            Err(e) => note(e),
        }
    }
    for r in routes {
        match nl.add_route(index, r) {
            Ok(()) => now.routes.push(*r),
            Err(e) => note(e),
        }
    }
    now.addresses.dedup();
    now.routes.dedup();
    (now, first_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(v: serde_json::Value) -> Settings {
        Settings::from_value(v).expect("valid settings")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn slirp_lease() -> Lease {
        Lease {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            router: Some(Ipv4Addr::new(10, 0, 2, 2)),
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            domain: None,
            server: Ipv4Addr::new(10, 0, 2, 2),
            lease_secs: 86400,
            t1_secs: 43200,
            t2_secs: 75600,
        }
    }

    #[test]
    fn only_network_and_ntp_changes_matter() {
        let a = Settings::default();
        let b = settings(json!({"hostname": "other", "sysctl": {"vm.swappiness": "10"}}));
        assert!(!changes(&a, &b).any());
        let c = settings(json!({"network": {"dns": ["1.1.1.1"]}}));
        assert_eq!(
            changes(&a, &c),
            Changes {
                network: true,
                ntp: false
            }
        );
        let d = settings(json!({"ntp": {"servers": ["10.0.2.2"]}}));
        assert_eq!(
            changes(&a, &d),
            Changes {
                network: false,
                ntp: true
            }
        );
    }

    #[test]
    fn watch_notices_creation_rewrites_and_bad_files() {
        let dir = std::env::temp_dir().join(format!("carapace-net-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("settings.json");
        let mut w = SettingsWatch::new(&path);
        assert_eq!(w.poll(), Some(Ok(Settings::default())), "no file: defaults");
        assert_eq!(w.poll(), None, "unchanged");

        let s = settings(json!({"network": {"dhcp": false, "addresses": ["192.0.2.10/24"]}}));
        persist::save(&path, &s).expect("saved");
        assert_eq!(w.poll(), Some(Ok(s.clone())));
        assert_eq!(w.poll(), None);

        // Same content, written anew with tmp + rename: a new inode, noticed,
        // and changes() then says nothing to do.
        persist::save(&path, &s).expect("saved again");
        let again = w.poll().expect("noticed").expect("valid");
        assert!(!changes(&s, &again).any());

        std::fs::write(&path, b"{\"network\": {\"dhcp\": 1}}").expect("bad file");
        let err = w.poll().expect("noticed").expect_err("refused");
        assert!(err.contains("network.dhcp"), "{err}");

        std::fs::remove_file(&path).expect("removed");
        assert_eq!(w.poll(), Some(Ok(Settings::default())), "gone: defaults");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn dhcp_plan_and_its_console_line() {
        let p = plan_dhcp(&slirp_lease(), &Network::default());
        assert_eq!(
            p.routes,
            vec![RouteSpec {
                dst: ip("0.0.0.0"),
                dst_len: 0,
                via: Some(ip("10.0.2.2")),
                protocol: RTPROT_DHCP
            }]
        );
        assert_eq!(
            configured_line("eth0", &p),
            "eth0 configured 10.0.2.15/24 via 10.0.2.2 dns 10.0.2.3 (dhcp)"
        );
        assert_eq!(p.lease_seconds, Some(86400));

        let over = settings(json!({"network": {"dns": ["1.1.1.1", "9.9.9.9"]}}));
        let p = plan_dhcp(&slirp_lease(), &over.network);
        assert_eq!(
            p.dns,
            vec![ip("1.1.1.1"), ip("9.9.9.9")],
            "settings override"
        );
        assert!(configured_line("eth0", &p).ends_with("dns 1.1.1.1 9.9.9.9 (dhcp)"));
    }

    #[test]
    fn router_outside_the_subnet_gets_an_onlink_route_first() {
        let mut l = slirp_lease();
        l.prefix = 32;
        let p = plan_dhcp(&l, &Network::default());
        assert_eq!(p.routes.len(), 2);
        assert_eq!(p.routes[0].via, None);
        assert_eq!((p.routes[0].dst, p.routes[0].dst_len), (ip("10.0.2.2"), 32));
        assert_eq!(p.routes[1].dst_len, 0);
        l.router = None;
        let p = plan_dhcp(&l, &Network::default());
        assert!(p.routes.is_empty());
        assert_eq!(
            configured_line("eth0", &p),
            "eth0 configured 10.0.2.15/32 via none dns 10.0.2.3 (dhcp)"
        );
    }

    #[test]
    fn static_plan() {
        let s = settings(json!({"network": {"dhcp": false,
            "addresses": ["10.0.2.15/24", "fd00::2/64"],
            "routes": [{"to": "192.168.7.9/16", "via": "10.0.2.1"},
                       {"to": "::/0", "via": "fd00::1"},
                       {"to": "0.0.0.0/0", "via": "10.0.2.2"}],
            "dns": ["10.0.2.3"]}}));
        let p = plan_static(&s.network).expect("valid");
        assert_eq!(p.routes[0].dst, ip("192.168.0.0"), "host bits cleared");
        assert_eq!(p.routes[0].protocol, RTPROT_STATIC);
        assert_eq!(p.gateway, Some(ip("10.0.2.2")), "IPv4 default preferred");
        assert_eq!(
            configured_line("eth0", &p),
            "eth0 configured 10.0.2.15/24 fd00::2/64 via 10.0.2.2 dns 10.0.2.3 (static)"
        );
        let bad = settings(
            json!({"network": {"dhcp": false, "addresses": ["10.0.2.15/24"],
            "routes": [{"to": "0.0.0.0/0", "via": "fd00::1"}]}}),
        );
        assert!(plan_static(&bad.network).is_err());
    }

    #[test]
    fn network_addresses() {
        assert_eq!(network_of(ip("10.1.2.3"), 8), ip("10.0.0.0"));
        assert_eq!(network_of(ip("10.1.2.3"), 0), ip("0.0.0.0"));
        assert_eq!(network_of(ip("10.1.2.3"), 32), ip("10.1.2.3"));
        assert_eq!(network_of(ip("fd00::1:2"), 64), ip("fd00::"));
        assert_eq!(network_of(ip("fd00::1:2"), 128), ip("fd00::1:2"));
    }

    /// Records calls; fails the ones named in `fail`.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        fail: Vec<String>,
    }

    impl Recorder {
        fn op(&mut self, s: String) -> std::io::Result<()> {
            let failing = self.fail.contains(&s);
            self.calls.push(s);
            if failing {
                Err(std::io::Error::other("refused"))
            } else {
                Ok(())
            }
        }
    }

    impl Rtnl for Recorder {
        fn add_addr(&mut self, i: u32, a: &AddrSpec) -> std::io::Result<()> {
            self.op(format!("add {i} {}/{}", a.addr, a.prefix))
        }
        fn del_addr(&mut self, i: u32, a: &AddrSpec) -> std::io::Result<()> {
            self.op(format!("del {i} {}/{}", a.addr, a.prefix))
        }
        fn add_route(&mut self, i: u32, r: &RouteSpec) -> std::io::Result<()> {
            self.op(format!("add {i} {}", crate::netlink::describe_route(r)))
        }
        fn del_route(&mut self, i: u32, r: &RouteSpec) -> std::io::Result<()> {
            self.op(format!("del {i} {}", crate::netlink::describe_route(r)))
        }
    }

    #[test]
    fn apply_removes_what_is_no_longer_wanted_first() {
        let p = plan_dhcp(&slirp_lease(), &Network::default());
        let mut nl = Recorder::default();
        let (applied, err) = apply(&mut nl, &Applied::default(), 2, &p.addresses, &p.routes);
        assert_eq!(err, None);
        assert_eq!(
            nl.calls,
            ["add 2 10.0.2.15/24", "add 2 0.0.0.0/0 via 10.0.2.2"]
        );

        // A renewal with the same lease removes nothing.
        let mut nl = Recorder::default();
        let (again, _) = apply(&mut nl, &applied, 2, &p.addresses, &p.routes);
        assert_eq!(again, applied);
        assert!(
            nl.calls.iter().all(|c| c.starts_with("add")),
            "{:?}",
            nl.calls
        );

        // Switching to static removes the lease's route and address first.
        let s = settings(
            json!({"network": {"dhcp": false, "addresses": ["192.0.2.10/24"],
            "routes": [{"to": "0.0.0.0/0", "via": "192.0.2.1"}]}}),
        );
        let sp = plan_static(&s.network).expect("valid");
        let mut nl = Recorder::default();
        let (now, err) = apply(&mut nl, &applied, 2, &sp.addresses, &sp.routes);
        assert_eq!(err, None);
        assert_eq!(
            nl.calls,
            [
                "del 2 0.0.0.0/0 via 10.0.2.2",
                "del 2 10.0.2.15/24",
                "add 2 192.0.2.10/24",
                "add 2 0.0.0.0/0 via 192.0.2.1"
            ]
        );
        assert_eq!(now.addresses, sp.addresses);

        // Dropping everything (lease lost).
        let mut nl = Recorder::default();
        let (empty, _) = apply(&mut nl, &now, 2, &[], &[]);
        assert!(empty.is_empty());
        assert_eq!(nl.calls.len(), 2);
    }

    #[test]
    fn apply_reports_the_first_error_and_records_only_what_took() {
        let p = plan_dhcp(&slirp_lease(), &Network::default());
        let mut nl = Recorder {
            fail: vec!["add 2 0.0.0.0/0 via 10.0.2.2".into()],
            ..Recorder::default()
        };
        let (applied, err) = apply(&mut nl, &Applied::default(), 2, &p.addresses, &p.routes);
        assert_eq!(err.as_deref(), Some("refused"));
        assert_eq!(applied.addresses, p.addresses);
        assert!(applied.routes.is_empty());
    }

    #[test]
    fn applied_record_round_trips() {
        let dir = std::env::temp_dir().join(format!("carapace-net-applied-{}", std::process::id()));
        let path = dir.join("net-applied.json");
        assert!(Applied::load(&path).is_empty(), "none yet");
        let p = plan_dhcp(&slirp_lease(), &Network::default());
        let a = Applied {
            index: 2,
            addresses: p.addresses.clone(),
            routes: p.routes.clone(),
        };
        a.save(&path).expect("saved");
        assert_eq!(Applied::load(&path), a);
        std::fs::write(&path, b"garbage").expect("write");
        assert!(Applied::load(&path).is_empty(), "a bad record is ignored");
        std::fs::remove_dir_all(&dir).ok();
    }
}
