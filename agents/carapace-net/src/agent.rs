//! The agent itself: the event loop that ties the pieces together on a
//! current-thread tokio runtime. One task watches the settings (polled once
//! a second), waits for the NIC, runs the DHCP client or applies the static
//! configuration, and writes resolv.conf and network.json; a second task
//! runs SNTP. Nothing here panics on bad input: errors are printed, put in
//! network.json, and retried.
//!
//! Console lines (stdout, each prefixed `carapace-net: `):
//! - `waiting for an Ethernet interface`
//! - `using <if> (<mac>)`
//! - `<if> requesting a DHCP lease`
//! - `<if> configured <addr/prefix>[ <addr/prefix>…] via <gw|none> dns <ip …|none> (dhcp|static)`
//! - `<if> lease lost (<reason>), addresses removed`
//! - `<if> error: <what>`
//! - `settings error: <what> (keeping the current configuration)`
//! - `settings: network changed` / `settings: ntp changed`
//! - `ntp: synchronized with <ip> (offset <±s.sss> s)`
//! - `ntp: stepped the clock by <±s.sss> s (server <ip>)`
//! - `ntp error: <what>`

use crate::config::{self, Applied, Plan, SettingsWatch};
use crate::dhcp_client::{Action, Client, Lease};
use crate::dhcp_packet::{CLIENT_PORT, SERVER_PORT};
use crate::iface::{self, Nic};
use crate::netlink::Netlink;
use crate::status::{LinkState, Mode, NetworkStatus, NtpStatus};
use crate::{dns, resolv, sntp};
use carapace_model::Settings;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How often a failed configuration is tried again.
const RETRY_APPLY: Duration = Duration::from_secs(30);

/// Where the agent reads and writes; the defaults are the node's paths,
/// tests point them elsewhere.
#[derive(Debug, Clone)]
pub struct Paths {
    pub settings: PathBuf,
    pub sys_class_net: PathBuf,
    pub resolv_conf: PathBuf,
    pub network_json: PathBuf,
    pub applied_json: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            settings: config::SETTINGS_JSON.into(),
            sys_class_net: iface::SYS_CLASS_NET.into(),
            resolv_conf: resolv::RESOLV_CONF.into(),
            network_json: crate::status::NETWORK_JSON.into(),
            applied_json: config::APPLIED_JSON.into(),
        }
    }
}

/// Prints one console line.
pub fn say(line: &str) {
    println!("carapace-net: {line}");
}

/// What the NTP task needs to know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NtpConfig {
    pub servers: Vec<String>,
    pub dns: Vec<IpAddr>,
    /// Whether the network is configured, so queries can get out.
    pub ready: bool,
}

/// The published state, shared by the two tasks; every change is written out.
#[derive(Clone)]
struct Shared {
    status: Arc<Mutex<NetworkStatus>>,
    path: PathBuf,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut NetworkStatus)) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let before = s.clone();
        f(&mut s);
        if *s != before {
            if let Err(e) = crate::status::write(&s, &self.path) {
                say(&format!("cannot write {}: {e}", self.path.display()));
            }
        }
    }

    fn write_now(&self) {
        let s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = crate::status::write(&s, &self.path) {
            say(&format!("cannot write {}: {e}", self.path.display()));
        }
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

struct Dhcp {
    client: Client,
    sock: tokio::net::UdpSocket,
}

struct Agent {
    paths: Paths,
    watch: SettingsWatch,
    settings: Settings,
    settings_error: Option<String>,
    shared: Shared,
    nl: Netlink,
    nic: Option<Nic>,
    said_waiting: bool,
    link_up: bool,
    applied: Applied,
    /// The plan last applied (successfully or not).
    plan: Option<Plan>,
    apply_error: Option<String>,
    last_attempt: Option<Instant>,
    dhcp: Option<Dhcp>,
    lease: Option<Lease>,
    last_send_error: Option<String>,
    ntp: watch::Sender<NtpConfig>,
}

/// Runs the agent until SIGTERM; returns an error only when it cannot start.
pub async fn run(paths: Paths) -> anyhow::Result<()> {
    let shared = Shared {
        status: Arc::new(Mutex::new(NetworkStatus::default())),
        path: paths.network_json.clone(),
    };
    shared.write_now();
    let nl = Netlink::open().map_err(|e| anyhow::anyhow!("cannot open rtnetlink: {e}"))?;
    let (ntp_tx, ntp_rx) = watch::channel(NtpConfig::default());
    tokio::spawn(ntp_task(ntp_rx, shared.clone()));
    let mut agent = Agent {
        watch: SettingsWatch::new(&paths.settings),
        applied: Applied::load(&paths.applied_json),
        paths,
        settings: Settings::default(),
        settings_error: None,
        shared,
        nl,
        nic: None,
        said_waiting: false,
        link_up: false,
        plan: None,
        apply_error: None,
        last_attempt: None,
        dhcp: None,
        lease: None,
        last_send_error: None,
        ntp: ntp_tx,
    };
    agent.initial_settings();
    agent.event_loop().await;
    Ok(())
}

enum Event {
    Tick,
    Packet(std::io::Result<usize>),
    DhcpTimer,
    Terminate,
}

async fn recv_opt(d: Option<&Dhcp>, buf: &mut [u8]) -> std::io::Result<usize> {
    match d {
        Some(d) => d.sock.recv_from(buf).await.map(|(n, _)| n),
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

async fn terminated(sig: &mut Option<tokio::signal::unix::Signal>) {
    match sig {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

impl Agent {
    fn initial_settings(&mut self) {
        match self.watch.poll() {
            Some(Ok(s)) => self.settings = s,
            Some(Err(e)) => self.settings_failed(e),
            None => {}
        }
        self.update_ntp();
        self.shared.update(|st| {
            st.mode = if self.settings.network.dhcp {
                Mode::Dhcp
            } else {
                Mode::Static
            };
        });
    }

    async fn event_loop(&mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut buf = vec![0u8; 1500];
        loop {
            let deadline = self.dhcp.as_ref().map(|d| d.client.deadline());
            let event = tokio::select! {
                _ = tick.tick() => Event::Tick,
                r = recv_opt(self.dhcp.as_ref(), &mut buf) => Event::Packet(r),
                _ = sleep_until_opt(deadline) => Event::DhcpTimer,
                _ = terminated(&mut term) => Event::Terminate,
            };
            match event {
                Event::Tick => self.on_tick(),
                Event::Packet(Ok(n)) => {
                    let now = Instant::now();
                    if let Some(d) = self.dhcp.as_mut() {
                        // Packets not for us or malformed are dropped quietly:
                        // the segment may carry other clients' traffic.
                        if let Ok(actions) = d.client.on_packet(now, buf.get(..n).unwrap_or(&[])) {
                            self.dhcp_actions(actions);
                        }
                    }
                }
                Event::Packet(Err(e)) => {
                    self.fail(format!("DHCP socket: {e}"));
                    self.dhcp = None;
                }
                Event::DhcpTimer => {
                    let now = Instant::now();
                    if let Some(d) = self.dhcp.as_mut() {
                        let actions = d.client.on_timeout(now);
                        self.dhcp_actions(actions);
                    }
                }
                Event::Terminate => {
                    say("stopping (SIGTERM)");
                    return;
                }
            }
        }
    }

    fn ifname(&self) -> String {
        self.nic
            .as_ref()
            .map(|n| n.name.clone())
            .unwrap_or_else(|| "-".into())
    }

    fn on_tick(&mut self) {
        self.check_settings();
        if self.nic.is_none() {
            match iface::find(&self.paths.sys_class_net) {
                Some(nic) => {
                    say(&format!("using {} ({})", nic.name, nic.mac_string()));
                    let (name, mac) = (nic.name.clone(), nic.mac_string());
                    self.shared.update(|st| {
                        st.interface = Some(name);
                        st.mac = Some(mac);
                    });
                    self.nic = Some(nic);
                }
                None => {
                    if !self.said_waiting {
                        say("waiting for an Ethernet interface");
                        self.said_waiting = true;
                    }
                    return;
                }
            }
        }
        if !self.link_up {
            let Some(index) = self.nic.as_ref().map(|n| n.index) else {
                return;
            };
            match self.nl.set_up(index) {
                Ok(()) => {
                    self.link_up = true;
                    self.start_network();
                }
                Err(e) => self.fail(format!("cannot bring the link up: {e}")),
            }
            return;
        }
        if self.settings.network.dhcp && self.dhcp.is_none() {
            self.start_network();
        } else if self.apply_error.is_some()
            && self.last_attempt.is_none_or(|t| t.elapsed() >= RETRY_APPLY)
        {
            if let Some(plan) = self.plan.clone() {
                self.apply_plan(plan);
            }
        }
    }

    fn settings_failed(&mut self, e: String) {
        if self.settings_error.as_ref() != Some(&e) {
            say(&format!(
                "settings error: {e} (keeping the current configuration)"
            ));
        }
        self.settings_error = Some(e);
        self.refresh_error();
    }

    fn check_settings(&mut self) {
        let new = match self.watch.poll() {
            None => return,
            Some(Err(e)) => return self.settings_failed(e),
            Some(Ok(s)) => s,
        };
        if self.settings_error.take().is_some() {
            self.refresh_error();
        }
        let ch = config::changes(&self.settings, &new);
        let was_dhcp = self.settings.network.dhcp;
        self.settings = new;
        if ch.ntp {
            say("settings: ntp changed");
            self.update_ntp();
        }
        if ch.network {
            say("settings: network changed");
            if self.link_up {
                if was_dhcp && !self.settings.network.dhcp {
                    self.dhcp = None;
                    self.lease = None;
                }
                self.start_network();
            } else {
                let dhcp = self.settings.network.dhcp;
                self.shared
                    .update(|st| st.mode = if dhcp { Mode::Dhcp } else { Mode::Static });
            }
        }
    }

    /// Puts the current settings' network part in place.
    fn start_network(&mut self) {
        let network = self.settings.network.clone();
        if !network.dhcp {
            self.dhcp = None;
            self.lease = None;
            match config::plan_static(&network) {
                Ok(plan) => self.apply_plan(plan),
                Err(e) => {
                    // What is on the interface stays; nothing to retry
                    // until the settings change.
                    self.plan = None;
                    self.fail(e);
                    self.update_ntp();
                }
            }
            return;
        }
        if self.dhcp.is_none() {
            match self.open_dhcp() {
                Ok(d) => {
                    say(&format!("{} requesting a DHCP lease", self.ifname()));
                    self.dhcp = Some(d);
                    // A new client starts from INIT and knows no lease.
                    self.lease = None;
                }
                Err(e) => {
                    self.fail(format!("cannot start DHCP: {e}"));
                    return;
                }
            }
        }
        if let Some(lease) = self.lease.clone() {
            // Still DHCP, another part of the network settings changed (DNS).
            self.apply_plan(config::plan_dhcp(&lease, &network));
            return;
        }
        // Nothing of ours stays on the interface while we wait for a lease.
        self.unapply();
        self.plan = None;
        self.apply_error = None;
        self.shared.update(|st| {
            st.mode = Mode::Dhcp;
            st.state = LinkState::Waiting;
        });
        self.refresh_error();
    }

    fn open_dhcp(&self) -> std::io::Result<Dhcp> {
        let Some(nic) = &self.nic else {
            return Err(std::io::Error::other("no interface"));
        };
        let std_sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, CLIENT_PORT))?;
        std_sock.set_nonblocking(true)?;
        let sock = tokio::net::UdpSocket::from_std(std_sock)?;
        sock.set_broadcast(true)?;
        sock.bind_device(Some(nic.name.as_bytes()))?;
        let hostname = Some(self.settings.hostname.as_str().to_string());
        Ok(Dhcp {
            client: Client::new(nic.mac, hostname, random_seed(), Instant::now()),
            sock,
        })
    }

    fn dhcp_actions(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send { to, packet } => {
                    let Some(d) = &self.dhcp else { continue };
                    match d.sock.try_send_to(&packet, (to, SERVER_PORT).into()) {
                        Ok(_) => self.last_send_error = None,
                        Err(e) => {
                            let msg = format!("DHCP send to {to}: {e}");
                            if self.last_send_error.as_ref() != Some(&msg) {
                                say(&format!("{} error: {msg}", self.ifname()));
                            }
                            self.last_send_error = Some(msg);
                        }
                    }
                }
                Action::Configure(lease) => {
                    self.lease = Some(lease.clone());
                    let plan = config::plan_dhcp(&lease, &self.settings.network);
                    self.apply_plan(plan);
                }
                Action::Deconfigure { reason } => {
                    self.lease = None;
                    say(&format!(
                        "{} lease lost ({reason}), addresses removed",
                        self.ifname()
                    ));
                    self.unapply();
                    self.plan = None;
                    self.apply_error = None;
                    self.shared.update(|st| st.state = LinkState::Waiting);
                    self.refresh_error();
                }
            }
        }
    }

    /// Removes everything we added, clears the published addresses and
    /// leaves only the settings' DNS servers in resolv.conf.
    fn unapply(&mut self) {
        let index = self
            .nic
            .as_ref()
            .map(|n| n.index)
            .unwrap_or(self.applied.index);
        if !self.applied.is_empty() {
            let (left, err) = config::apply(&mut self.nl, &self.applied, index, &[], &[]);
            if let Some(e) = err {
                say(&format!("{} error: {e}", self.ifname()));
            }
            self.applied = left;
            self.save_applied();
        }
        let dns = self.settings.network.dns.clone();
        if let Err(e) = resolv::write(&self.paths.resolv_conf, &dns, None) {
            say(&format!(
                "cannot write {}: {e}",
                self.paths.resolv_conf.display()
            ));
        }
        self.shared.update(|st| {
            st.addresses.clear();
            st.gateway = None;
            st.dns = dns.iter().map(|d| d.to_string()).collect();
            st.lease_seconds = None;
        });
        self.update_ntp();
    }

    fn save_applied(&self) {
        if let Err(e) = self.applied.save(&self.paths.applied_json) {
            say(&format!(
                "cannot write {}: {e}",
                self.paths.applied_json.display()
            ));
        }
    }

    fn apply_plan(&mut self, plan: Plan) {
        let Some(index) = self.nic.as_ref().map(|n| n.index) else {
            return;
        };
        self.last_attempt = Some(Instant::now());
        let (applied, mut err) = config::apply(
            &mut self.nl,
            &self.applied,
            index,
            &plan.addresses,
            &plan.routes,
        );
        self.applied = applied;
        self.save_applied();
        if let Err(e) = resolv::write(&self.paths.resolv_conf, &plan.dns, plan.search.as_deref()) {
            err.get_or_insert(format!(
                "cannot write {}: {e}",
                self.paths.resolv_conf.display()
            ));
        }
        let same = |a: &Plan, b: &Plan| {
            Plan {
                lease_seconds: None,
                ..a.clone()
            } == Plan {
                lease_seconds: None,
                ..b.clone()
            }
        };
        let was_configured =
            self.apply_error.is_none() && self.plan.as_ref().is_some_and(|old| same(old, &plan));
        let state = match err {
            Some(e) => {
                if self.apply_error.as_ref() != Some(&e) {
                    say(&format!("{} error: {e}", self.ifname()));
                }
                self.apply_error = Some(e);
                LinkState::Error
            }
            None => {
                if !was_configured {
                    say(&config::configured_line(&self.ifname(), &plan));
                }
                self.apply_error = None;
                LinkState::Configured
            }
        };
        self.shared.update(|st| {
            st.mode = plan.mode;
            st.state = state;
            st.addresses = plan
                .addresses
                .iter()
                .map(|a| format!("{}/{}", a.addr, a.prefix))
                .collect();
            st.gateway = plan.gateway.map(|g| g.to_string());
            st.dns = plan.dns.iter().map(|d| d.to_string()).collect();
            st.lease_seconds = plan.lease_seconds;
        });
        self.plan = Some(plan);
        self.refresh_error();
        self.update_ntp();
    }

    /// A configuration failure: printed once, published, retried later.
    fn fail(&mut self, e: String) {
        if self.apply_error.as_ref() != Some(&e) {
            say(&format!("{} error: {e}", self.ifname()));
        }
        self.apply_error = Some(e);
        self.last_attempt = Some(Instant::now());
        self.shared.update(|st| st.state = LinkState::Error);
        self.refresh_error();
    }

    fn refresh_error(&self) {
        let error = self
            .apply_error
            .clone()
            .or_else(|| self.settings_error.clone());
        self.shared.update(|st| st.error = error);
    }

    fn update_ntp(&self) {
        let ready = self.plan.is_some() && self.apply_error.is_none();
        let cfg = NtpConfig {
            servers: self
                .settings
                .ntp
                .servers
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
            dns: self
                .plan
                .as_ref()
                .map(|p| p.dns.clone())
                .unwrap_or_else(|| self.settings.network.dns.clone()),
            ready,
        };
        self.ntp.send_if_modified(|old| {
            if *old == cfg {
                false
            } else {
                *old = cfg;
                true
            }
        });
    }
}

/// One round: the first server that answers wins.
async fn sync_once(cfg: &NtpConfig, seed: u16) -> Result<(IpAddr, sntp::Sample), String> {
    let mut errors = Vec::new();
    for (i, name) in cfg.servers.iter().enumerate() {
        let addrs = match dns::resolve(
            name,
            &cfg.dns,
            seed.wrapping_add((i as u16).wrapping_mul(8)),
        )
        .await
        {
            Ok(a) => a,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for addr in addrs.into_iter().take(2) {
            match sntp::query(addr).await {
                Ok(sample) => return Ok((addr, sample)),
                Err(e) => errors.push(format!("{name} ({addr}): {e}")),
            }
        }
    }
    Err(errors.join("; "))
}

async fn ntp_task(mut rx: watch::Receiver<NtpConfig>, shared: Shared) {
    let mut interval = sntp::MIN_POLL;
    let mut last_error: Option<String> = None;
    let mut last_server: Option<IpAddr> = None;
    loop {
        let cfg = rx.borrow_and_update().clone();
        let servers = cfg.servers.clone();
        shared.update(|st| {
            if st.ntp.servers != servers {
                st.ntp = NtpStatus {
                    servers,
                    ..NtpStatus::default()
                };
            }
        });
        let wait = if cfg.servers.is_empty() || !cfg.ready {
            None
        } else {
            match sync_once(&cfg, random_seed() as u16).await {
                Ok((server, sample)) => {
                    last_error = None;
                    let mut offset = sample.offset_secs;
                    let mut err = None;
                    if sntp::needs_step(offset) {
                        match sntp::step_clock(offset) {
                            Ok(()) => say(&format!(
                                "ntp: stepped the clock by {offset:+.3} s (server {server})"
                            )),
                            Err(e) => {
                                let msg = format!("cannot step the clock: {e}");
                                say(&format!("ntp error: {msg}"));
                                err = Some(msg);
                            }
                        }
                    } else if last_server != Some(server) {
                        say(&format!(
                            "ntp: synchronized with {server} (offset {offset:+.3} s)"
                        ));
                    }
                    if !offset.is_finite() {
                        offset = 0.0;
                    }
                    last_server = Some(server);
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(0);
                    shared.update(|st| {
                        st.ntp.synced_with = Some(server.to_string());
                        st.ntp.offset_ms = Some((offset * 1e6).round() / 1e3);
                        st.ntp.last_sync_unix = Some(now);
                        st.ntp.error = err;
                    });
                    let wait = interval;
                    interval = sntp::next_interval(interval, true);
                    Some(wait)
                }
                Err(e) => {
                    if last_error.as_ref() != Some(&e) {
                        say(&format!("ntp error: {e}"));
                    }
                    last_error = Some(e.clone());
                    shared.update(|st| st.ntp.error = Some(e));
                    interval = sntp::next_interval(interval, false);
                    Some(sntp::MIN_POLL)
                }
            }
        };
        let changed = match wait {
            Some(w) => {
                tokio::select! {
                    _ = tokio::time::sleep(w) => Ok(false),
                    r = rx.changed() => r.map(|_| true),
                }
            }
            None => rx.changed().await.map(|_| true),
        };
        match changed {
            Err(_) => return,
            Ok(true) => interval = sntp::MIN_POLL,
            Ok(false) => {}
        }
    }
}
