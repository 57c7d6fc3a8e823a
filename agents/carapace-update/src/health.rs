//! What "healthy" means for a node: the one place that defines it. The
//! update daemon blesses a version booted on trial only once the node is
//! healthy, so a version that never brings up its NIC, whose API is not
//! reachable, or whose containers crash-loop is never blessed and the boot
//! loader falls back.
//!
//! Health means the node does its job. A node is healthy when every one of
//! these holds:
//!
//! 1. **services** — each required agent (`net`, `bus`, `api`, `update`,
//!    `containers`; or the comma-separated names in
//!    `CARAPACE_HEALTH_SERVICES`) is `running` in carapace-init's
//!    /run/carapace/services.json, and its run *counts* (below).
//! 2. **api (local socket)** — the API answers `GET /v1/status` with 200 on
//!    /run/carapace/api.sock.
//! 3. **api (tcp)** — the remote listener on 127.0.0.1:8443 completes a TLS
//!    handshake with the node's own certificate (pinned: the SHA-256 of the
//!    DER of the first certificate in /var/lib/carapace/api/cert.pem, as
//!    clients pin it; any other certificate fails) and answers `GET
//!    /v1/status`, sent without a token, with 401 (or 2xx): the request
//!    went through TLS, HTTP and the router.
//! 4. **network** — the net agent's /run/carapace/network.json says its NIC
//!    is `configured` and lists at least one address on it that is neither
//!    loopback nor unspecified.
//! 5. **containers** — every container declared and enabled in the
//!    committed settings (/var/lib/carapace/settings.json) is in the
//!    container agent's /run/carapace/containers.json and is either
//!    `running` with no error, its run counting (below); or `exited` with
//!    status 0 under a policy that leaves a clean exit so (`never`,
//!    `on-failure:N`): a job that finished. Anything else fails:
//!    `restarting` (a crash loop), `failed` (a pull or start that failed),
//!    `pulling`/`starting` (not running yet), `exited` after a failure (the
//!    declared work is not done, whatever the policy; under `on-failure:N`
//!    the retries ran out), a running container whose new image cannot be
//!    pulled (its `error`), or missing from the report. No containers
//!    declared (or all disabled) is healthy on this count.
//!
//! A run *counts* when it has lasted [`STEADY_RUN_MS`] (10 s: carapace-init's
//! own `STABLE_RUN`, after which a service's failures start again from zero)
//! — so a process that dies a few seconds after each start is never caught
//! healthy between two deaths — and, for a process restarted
//! [`CRASH_LOOP_RESTARTS`] (3) times or more this boot, [`PROVEN_RUN_MS`]
//! (60 s: the container agent's `HEALTHY_RUN`): a crash loop that recovered
//! (a container waiting for its database, say) has to prove it. A run whose
//! start time is not reported is judged by its restarts alone. The restart
//! counts are those of this boot (neither writer ever resets them), which
//! is what a trial boot asks about.
//!
//! A consequence to know: a declared container that fails on every boot
//! whatever the version (a wrong image, a broken command) makes every
//! update roll back until it is fixed or disabled.
//!
//! [`assess`] runs every check — the file checks are pure functions over the
//! files' texts, the API probes thin async functions bounded by
//! [`Probes::probe_timeout`] each — within [`ASSESSMENT_TIMEOUT`] in all,
//! and returns an [`Assessment`] whose `failing` lines say, one condition
//! each, what is wrong: `network: no address on eth0 yet (dhcp, waiting)`,
//! `container web: restarting (3 restarts; last run exited with status 1)`.
//! An assessment is a snapshot; how long it must hold before a bless is the
//! caller's choice.

use carapace_contract::containers::{self as container_report, ContainerStatus, State};
use carapace_contract::network::{LinkState, NetworkStatus};
use carapace_contract::paths;
use carapace_contract::services as service_report;
use carapace_ctl::{Client, Endpoint, Fingerprint, Method};
use carapace_model::containers::{Container, ContainerName, RestartPolicy};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The agents that must run, as `CARAPACE_HEALTH_SERVICES` would list them.
pub const AGENTS: &str = "net,bus,api,update,containers";
/// The environment variable that replaces [`AGENTS`] (comma-separated names).
pub const SERVICES_ENV: &str = "CARAPACE_HEALTH_SERVICES";
/// The API's root-only local socket.
pub const API_SOCKET: &str = paths::API_SOCKET;
/// The API's TLS port.
pub const API_PORT: u16 = 8443;
/// The API's certificate on /var (PEM, leaf first), the one to pin.
pub const API_CERTIFICATE: &str = paths::API_CERTIFICATE;
/// What both API probes ask for.
pub const STATUS_PATH: &str = "/v1/status";
/// How long a run must have lasted to count.
pub const STEADY_RUN_MS: u64 = 10_000;
/// From this many restarts on, a process is crash-looping unless its run
/// has lasted [`PROVEN_RUN_MS`].
pub const CRASH_LOOP_RESTARTS: u32 = 3;
/// How long the run of a process restarted [`CRASH_LOOP_RESTARTS`] times
/// must have lasted to count.
pub const PROVEN_RUN_MS: u64 = 60_000;
/// How long each API probe may take, by default.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole assessment may take.
pub const ASSESSMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the container agent words a clean exit (`policy::ExitReason::Exited(0)`).
const CLEAN_EXIT: &str = "exited with status 0";

/// The verdict: healthy when nothing fails.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assessment {
    /// One line per condition that does not hold, in the order of the
    /// module documentation, each saying what is wrong in words.
    pub failing: Vec<String>,
}

impl Assessment {
    pub fn is_healthy(&self) -> bool {
        self.failing.is_empty()
    }
}

/// `healthy`, or the failing conditions joined by `; ` (for one console line).
impl fmt::Display for Assessment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_healthy() {
            f.write_str("healthy")
        } else {
            f.write_str(&self.failing.join("; "))
        }
    }
}

/// Where the checks look; [`Probes::default`] is the node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probes {
    /// The agents that must run ([`AGENTS`]).
    pub services: Vec<String>,
    /// carapace-init's report of the services.
    pub services_json: PathBuf,
    /// The API's local socket.
    pub api_socket: PathBuf,
    /// The API's TLS listener, as the node reaches itself.
    pub api_tcp: SocketAddr,
    /// The certificate the TLS listener must present.
    pub api_certificate: PathBuf,
    /// The net agent's report.
    pub network_json: PathBuf,
    /// The committed settings: which containers are declared.
    pub settings_json: PathBuf,
    /// The container agent's report.
    pub containers_json: PathBuf,
    /// How long each API probe may take.
    pub probe_timeout: Duration,
}

impl Default for Probes {
    fn default() -> Probes {
        Probes {
            services: required_services(AGENTS),
            services_json: paths::SERVICES_JSON.into(),
            api_socket: API_SOCKET.into(),
            api_tcp: SocketAddr::from((Ipv4Addr::LOCALHOST, API_PORT)),
            api_certificate: API_CERTIFICATE.into(),
            network_json: paths::NETWORK_JSON.into(),
            settings_json: paths::SETTINGS_JSON.into(),
            containers_json: paths::CONTAINERS_JSON.into(),
            probe_timeout: PROBE_TIMEOUT,
        }
    }
}

impl Probes {
    /// The node's, with the required services from `CARAPACE_HEALTH_SERVICES`
    /// when it is set.
    pub fn from_env() -> Probes {
        let mut probes = Probes::default();
        if let Ok(list) = std::env::var(SERVICES_ENV) {
            probes.services = required_services(&list);
        }
        probes
    }
}

/// The names of a comma-separated list, trimmed, empty ones left out.
pub fn required_services(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

/// Runs every check (module documentation) within [`ASSESSMENT_TIMEOUT`].
pub async fn assess(probes: &Probes) -> Assessment {
    match tokio::time::timeout(ASSESSMENT_TIMEOUT, assess_unbounded(probes)).await {
        Ok(assessment) => assessment,
        Err(_) => Assessment {
            failing: vec![format!(
                "health: the assessment did not finish within {} s",
                ASSESSMENT_TIMEOUT.as_secs()
            )],
        },
    }
}

async fn assess_unbounded(probes: &Probes) -> Assessment {
    let (local, tcp) = tokio::join!(
        api_local(&probes.api_socket, probes.probe_timeout),
        api_tcp(
            probes.api_tcp,
            &probes.api_certificate,
            probes.probe_timeout
        ),
    );
    let now_ms = carapace_contract::clock::ms_since_boot();
    let mut failing = services(
        as_report(&read(&probes.services_json)),
        &probes.services,
        now_ms,
    );
    failing.extend(local.err());
    failing.extend(tcp.err());
    failing.extend(network(as_report(&read(&probes.network_json))));
    match carapace_model::persist::load(&probes.settings_json) {
        Err(e) => failing.push(format!("containers: cannot tell which are declared: {e}")),
        Ok(settings) => {
            let declared = settings.map(|s| s.containers).unwrap_or_default();
            failing.extend(containers(
                &declared,
                as_report(&read(&probes.containers_json)),
                now_ms,
            ));
        }
    }
    Assessment { failing }
}

/// A file's text, or why it could not be read.
fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn as_report(read: &Result<String, String>) -> Result<&str, &str> {
    read.as_deref().map_err(String::as_str)
}

/// Whether a process's run counts (module documentation): None if it does,
/// else why not, to follow `what: `.
fn run_falls_short(restarts: u32, started_at_ms: Option<u64>, now_ms: u64) -> Option<String> {
    let crash_looped = restarts >= CRASH_LOOP_RESTARTS;
    let Some(started) = started_at_ms else {
        return crash_looped.then(|| format!("crash-looping: {restarts} restarts"));
    };
    let ran = now_ms.saturating_sub(started);
    if crash_looped && ran < PROVEN_RUN_MS {
        Some(format!(
            "crash-looping: running again after {restarts} restarts, for {} s so far \
             (counts after {} s)",
            ran / 1000,
            PROVEN_RUN_MS / 1000
        ))
    } else if ran < STEADY_RUN_MS {
        Some(format!(
            "running for {} s, not yet steady (counts after {} s)",
            ran / 1000,
            STEADY_RUN_MS / 1000
        ))
    } else {
        None
    }
}

/// `3 restarts; last run exited with status 1`, or what of it is known.
fn history(restarts: u32, last_exit: Option<&str>) -> String {
    match last_exit {
        Some(how) => format!("{restarts} restarts; last run {how}"),
        None => format!("{restarts} restarts"),
    }
}

/// Condition 1: every `required` service runs and its run counts, from the
/// text of services.json (or why it could not be read).
pub fn services(report: Result<&str, &str>, required: &[String], now_ms: u64) -> Vec<String> {
    if required.is_empty() {
        return Vec::new();
    }
    let text = match report {
        Ok(text) => text,
        Err(why) => return vec![format!("services: no report from carapace-init ({why})")],
    };
    let list = match service_report::parse(text) {
        Ok(list) => list,
        Err(e) => {
            return vec![format!(
                "services: services.json is not carapace-init's report ({e})"
            )]
        }
    };
    let mut failing = Vec::new();
    for name in required {
        let Some(s) = list.iter().find(|s| s.name == *name) else {
            failing.push(format!(
                "service {name}: not supervised (services.json does not list it)"
            ));
            continue;
        };
        if s.state != service_report::State::Running {
            failing.push(format!(
                "service {name}: {} ({})",
                s.state,
                history(s.restarts, s.last_exit.as_deref())
            ));
        } else if let Some(why) = run_falls_short(s.restarts, s.started_at_ms, now_ms) {
            failing.push(format!("service {name}: {why}"));
        }
    }
    failing
}

/// Condition 4: the NIC is configured with an address that is not loopback,
/// from the text of network.json (or why it could not be read).
pub fn network(report: Result<&str, &str>) -> Vec<String> {
    let text = match report {
        Ok(text) => text,
        Err(why) => return vec![format!("network: no report from the net agent ({why})")],
    };
    let status = match NetworkStatus::parse(text) {
        Ok(s) => s,
        Err(e) => {
            return vec![format!(
                "network: network.json is not the net agent's report ({e})"
            )]
        }
    };
    let nic = status.interface.as_deref().unwrap_or("the NIC");
    let usable = status.addresses.iter().any(|a| {
        let ip = a.split_once('/').map_or(a.as_str(), |(ip, _)| ip);
        ip.parse::<IpAddr>()
            .is_ok_and(|ip| !ip.is_loopback() && !ip.is_unspecified())
    });
    let failing = match status.state {
        LinkState::Waiting if status.interface.is_none() => {
            "network: no Ethernet interface found (net agent waiting)".to_string()
        }
        LinkState::Waiting => format!(
            "network: no address on {nic} yet ({}, waiting)",
            status.mode
        ),
        LinkState::Error => format!(
            "network: {nic} is not configured: {} ({})",
            status
                .error
                .as_deref()
                .unwrap_or("the net agent reports an error"),
            status.mode
        ),
        LinkState::Configured if !usable => format!(
            "network: no address on {nic} (network.json lists {:?})",
            status.addresses
        ),
        LinkState::Configured => return Vec::new(),
    };
    vec![failing]
}

/// Condition 5: every declared, enabled container runs (its run counting)
/// or finished as its restart policy allows, from the settings' containers
/// and the text of containers.json (or why it could not be read).
pub fn containers(
    declared: &BTreeMap<ContainerName, Container>,
    report: Result<&str, &str>,
    now_ms: u64,
) -> Vec<String> {
    let enabled: Vec<(&ContainerName, &Container)> =
        declared.iter().filter(|(_, c)| c.enabled).collect();
    if enabled.is_empty() {
        return Vec::new();
    }
    let text = match report {
        Ok(text) => text,
        Err(why) => {
            return vec![format!(
                "containers: no report from the container agent ({why})"
            )]
        }
    };
    let list = match container_report::parse(text) {
        Ok(list) => list,
        Err(e) => {
            return vec![format!(
                "containers: containers.json is not the container agent's report ({e})"
            )]
        }
    };
    let mut failing = Vec::new();
    for (name, container) in enabled {
        let Some(c) = list.iter().find(|c| c.name == name.as_str()) else {
            failing.push(format!(
                "container {name}: not in containers.json (the container agent has not taken it up)"
            ));
            continue;
        };
        if let Some(why) = container_falls_short(c, container.restart, now_ms) {
            failing.push(format!("container {name}: {why}"));
        }
    }
    failing
}

/// A state this version does not know fails by name (the record keeps
/// its word) instead of failing the whole report.
fn container_falls_short(
    c: &ContainerStatus,
    policy: RestartPolicy,
    now_ms: u64,
) -> Option<String> {
    let last = c.last_exit.as_deref();
    match &c.state {
        State::Running => match &c.error {
            Some(error) => Some(format!("{error} (the previous instance still runs)")),
            None => run_falls_short(c.restarts, c.started_at_ms, now_ms),
        },
        State::Exited => {
            let clean = last == Some(CLEAN_EXIT);
            let how = last.unwrap_or("exited (how is not reported)");
            match policy {
                RestartPolicy::Never | RestartPolicy::OnFailure { .. } if clean => None,
                RestartPolicy::Never => Some(format!("{how}; restart = never leaves it so")),
                RestartPolicy::OnFailure { .. } => Some(format!(
                    "{how}; restart = {} gave up after {} restarts",
                    String::from(policy),
                    c.restarts
                )),
                RestartPolicy::Always => Some(format!("{how}, although restart = always")),
            }
        }
        State::Restarting => Some(format!("restarting ({})", history(c.restarts, last))),
        State::Failed => Some(format!(
            "failed: {}",
            c.error
                .as_deref()
                .unwrap_or("the container agent gives no reason")
        )),
        State::Pulling => Some(format!("pulling {}, not running yet", c.image)),
        State::Starting => Some("starting, not running yet".to_string()),
        State::Disabled => Some(
            "reported disabled, but the settings enable it (the agent has not caught up)"
                .to_string(),
        ),
        other @ (State::Stopped | State::Other(_)) => Some(format!("{other}, not running")),
    }
}

/// The pin: the fingerprint of the first (leaf) certificate of a PEM text.
pub fn certificate_fingerprint(pem: &str) -> Result<Fingerprint, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let leaf = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or("holds no certificate")?
        .map_err(|e| format!("is not valid PEM: {e}"))?;
    Ok(Fingerprint::of(leaf.as_ref()))
}

/// Whether the remote listener's answer to `GET /v1/status` without a
/// token shows the API serving: 401 (the token layer ran) or 2xx.
pub fn remote_answer_serves(status: u16) -> bool {
    status == 401 || (200..300).contains(&status)
}

/// Condition 2: the API answers `GET /v1/status` with 200 on `socket`
/// within `timeout`; else why not.
pub async fn api_local(socket: &Path, timeout: Duration) -> Result<(), String> {
    let endpoint = Endpoint::Unix(socket.to_path_buf());
    let attempt = async {
        let mut client = Client::connect(&endpoint, None, None)
            .await
            .map_err(|e| e.to_string())?;
        let answer = client
            .request(Method::GET, STATUS_PATH, None)
            .await
            .map_err(|e| e.to_string())?;
        match answer.status {
            200 => Ok(()),
            status => Err(format!("GET {STATUS_PATH} answered {status}")),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(format!("api (local socket): {why}")),
        Err(_) => Err(format!(
            "api (local socket): no answer on {} within {} ms",
            socket.display(),
            timeout.as_millis()
        )),
    }
}

/// Condition 3: the TLS listener at `addr` presents the certificate of the
/// PEM file `certificate` and answers `GET /v1/status` (without a token)
/// within `timeout`; else why not.
pub async fn api_tcp(
    addr: SocketAddr,
    certificate: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let what = format!("api (tcp {addr})");
    let pem = read(certificate).map_err(|why| format!("{what}: no certificate to pin: {why}"))?;
    let pin = certificate_fingerprint(&pem).map_err(|why| {
        format!(
            "{what}: no certificate to pin: {} {why}",
            certificate.display()
        )
    })?;
    let endpoint = Endpoint::Https {
        host: addr.ip().to_string(),
        port: addr.port(),
    };
    let attempt = async {
        let mut client =
            Client::connect(&endpoint, None, Some(&pin))
                .await
                .map_err(|e| match e {
                    carapace_ctl::Error::FingerprintMismatch { actual, expected } => format!(
                        "the listener presents certificate sha256 {actual}, not the node's own \
                     ({expected}, {})",
                        certificate.display()
                    ),
                    other => other.to_string(),
                })?;
        let answer = client
            .request(Method::GET, STATUS_PATH, None)
            .await
            .map_err(|e| e.to_string())?;
        if remote_answer_serves(answer.status) {
            Ok(())
        } else {
            Err(format!(
                "GET {STATUS_PATH} without a token answered {} (expected 401)",
                answer.status
            ))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(format!("{what}: {why}")),
        Err(_) => Err(format!(
            "{what}: no answer within {} ms",
            timeout.as_millis()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carapace_containers::policy::ExitReason;
    use carapace_init::backoff::Exit;
    use carapace_init::supervisor::{ServiceState, Status};
    use carapace_model::containers::ImageRef;
    use serde_json::json;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A moment well into the boot, in ms since the kernel started.
    const NOW: u64 = 600_000;

    fn service(name: &str, status: Status, restarts: u32, started_at_ms: u64) -> ServiceState {
        ServiceState {
            name: name.into(),
            status,
            restarts,
            last_exit: (restarts > 0).then_some(Exit::Code(1)),
            started_at_ms: Some(started_at_ms),
        }
    }

    fn running(name: &str) -> ServiceState {
        service(name, Status::Running { pid: 100 }, 0, 2_000)
    }

    fn names(list: &str) -> Vec<String> {
        required_services(list)
    }

    #[test]
    fn every_agent_of_the_release_image_is_required_by_default() {
        let manifest = include_str!("../../../image/services.toml");
        let agents = names(AGENTS);
        let declared: Vec<&str> = manifest
            .lines()
            .filter_map(|l| l.strip_prefix("name = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .collect();
        assert_eq!(agents, declared, "every service of the release image");
        assert_eq!(names(" api, ,net "), ["api", "net"]);
        assert_eq!(Probes::default().services, agents);
    }

    #[test]
    fn every_required_agent_must_run_for_the_node_to_be_healthy() {
        let text = carapace_init::services_file::render(&[
            running("api"),
            running("net"),
            service(
                "crasher",
                Status::RestartPending { delay_ms: 400 },
                3,
                NOW - 500,
            ),
        ]);
        assert_eq!(
            services(Ok(&text), &names("api,net"), NOW),
            Vec::<String>::new(),
            "others do not count"
        );
        assert_eq!(
            services(Ok(&text), &names("api,net,crasher,bus"), NOW),
            [
                "service crasher: restart-pending (3 restarts; last run exited with status 1)",
                "service bus: not supervised (services.json does not list it)",
            ]
        );
        assert!(services(Ok("{torn"), &names("api"), NOW)[0]
            .starts_with("services: services.json is not carapace-init's report ("));
        assert_eq!(
            services(Err("cannot read /run/carapace/services.json: gone"), &names("api"), NOW),
            ["services: no report from carapace-init (cannot read /run/carapace/services.json: gone)"]
        );
        assert!(
            services(Err("gone"), &[], NOW).is_empty(),
            "nothing required"
        );
        // The shape of older reports, without restarts or start times.
        assert!(services(
            Ok(r#"[{"name":"api","state":"running"}]"#),
            &names("api"),
            NOW
        )
        .is_empty());
    }

    #[test]
    fn an_agent_counts_once_it_has_run_steadily_and_a_crash_loop_once_it_proves_itself() {
        let fresh = service("net", Status::Running { pid: 7 }, 0, NOW - 3_000);
        let steady = service("net", Status::Running { pid: 7 }, 2, NOW - STEADY_RUN_MS);
        let looping = service("net", Status::Running { pid: 7 }, 5, NOW - 20_000);
        let recovered = service("net", Status::Running { pid: 7 }, 5, NOW - PROVEN_RUN_MS);
        let verdict = |s: ServiceState| {
            services(
                Ok(&carapace_init::services_file::render(&[s])),
                &names("net"),
                NOW,
            )
        };
        assert_eq!(
            verdict(fresh),
            ["service net: running for 3 s, not yet steady (counts after 10 s)"]
        );
        assert!(verdict(steady).is_empty());
        assert_eq!(
            verdict(looping),
            [
                "service net: crash-looping: running again after 5 restarts, for 20 s so far \
              (counts after 60 s)"
            ]
        );
        assert!(verdict(recovered).is_empty());
    }

    fn network_report(state: &str, addresses: serde_json::Value) -> String {
        json!({"interface":"eth0","mac":"52:54:00:12:34:56","mode":"dhcp","state":state,
               "addresses":addresses,"gateway":"10.0.2.2","dns":["10.0.2.3"],
               "lease_seconds":86400,"error":null,
               "ntp":{"servers":["10.0.2.2"],"synced_with":"10.0.2.2","offset_ms":12.5,
                      "last_sync_unix":1_700_000_000,"error":null}})
        .to_string()
    }

    #[test]
    fn the_network_is_up_when_the_nic_is_configured_with_a_real_address() {
        assert!(network(Ok(&network_report("configured", json!(["10.0.2.15/24"])))).is_empty());
        assert!(
            network(Ok(&network_report("configured", json!(["fd00::15/64"])))).is_empty(),
            "IPv6 counts"
        );
        assert_eq!(
            network(Ok(&network_report("configured", json!(["127.0.0.2/8"])))),
            [r#"network: no address on eth0 (network.json lists ["127.0.0.2/8"])"#]
        );
        assert_eq!(
            network(Ok(&network_report("waiting", json!([])))),
            ["network: no address on eth0 yet (dhcp, waiting)"]
        );
        // The agent's own default, before it found a NIC.
        let none = NetworkStatus::default().to_json();
        assert_eq!(
            network(Ok(&none)),
            ["network: no Ethernet interface found (net agent waiting)"]
        );
        let error = NetworkStatus {
            interface: Some("eth0".into()),
            mode: carapace_contract::network::Mode::Static,
            state: LinkState::Error,
            addresses: vec!["192.0.2.10/24".into()],
            error: Some("adding 192.0.2.10/24: File exists".into()),
            ..NetworkStatus::default()
        };
        assert_eq!(
            network(Ok(&error.to_json())),
            ["network: eth0 is not configured: adding 192.0.2.10/24: File exists (static)"],
            "listed addresses do not count while the agent reports an error"
        );
        assert_eq!(
            network(Err("cannot read /run/carapace/network.json: gone")),
            ["network: no report from the net agent (cannot read /run/carapace/network.json: gone)"]
        );
        assert!(
            network(Ok("[]"))[0].starts_with("network: network.json is not the net agent's report")
        );
    }

    fn declared(containers: serde_json::Value) -> BTreeMap<ContainerName, Container> {
        carapace_model::Settings::from_value(json!({ "containers": containers }))
            .expect("valid settings")
            .containers
    }

    fn container(name: &str, image: &str, state: State) -> ContainerStatus {
        let mut s = ContainerStatus::new(
            ContainerName::try_from(name.to_string())
                .expect("name")
                .as_str(),
            ImageRef::try_from(image.to_string())
                .expect("image")
                .as_str(),
        );
        s.state = state;
        s.image_digest = Some(format!("sha256:{}", "a".repeat(64)));
        s.started_at_ms = Some(NOW - 30_000);
        s
    }

    fn verdict(
        declared: &BTreeMap<ContainerName, Container>,
        report: &[ContainerStatus],
    ) -> Vec<String> {
        containers(declared, Ok(&container_report::render(report)), NOW)
    }

    #[test]
    fn no_containers_declared_is_healthy_on_that_count() {
        assert!(containers(
            &BTreeMap::new(),
            Err("cannot read containers.json: gone"),
            NOW
        )
        .is_empty());
        let off = declared(json!({"web": {"image": "nginx:1.27", "enabled": false}}));
        assert!(
            containers(&off, Err("gone"), NOW).is_empty(),
            "disabled ones do not count"
        );
    }

    #[test]
    fn running_containers_are_healthy_and_missing_ones_are_not() {
        let two = declared(json!({"web": {"image": "nginx:1.27"}, "db": {"image": "postgres:17"}}));
        let web = container("web", "nginx:1.27", State::Running);
        let db = container("db", "postgres:17", State::Running);
        assert!(verdict(&two, &[web.clone(), db]).is_empty());
        assert_eq!(
            verdict(&two, &[web]),
            ["container db: not in containers.json (the container agent has not taken it up)"]
        );
        assert_eq!(
            containers(
                &two,
                Err("cannot read /run/carapace/containers.json: gone"),
                NOW
            ),
            ["containers: no report from the container agent \
              (cannot read /run/carapace/containers.json: gone)"]
        );
        assert!(containers(&two, Ok("{}"), NOW)[0]
            .starts_with("containers: containers.json is not the container agent's report"));
    }

    #[test]
    fn a_crash_looping_container_is_not_healthy() {
        let web = declared(json!({"web": {"image": "nginx:1.27"}}));
        let mut restarting = container("web", "nginx:1.27", State::Restarting);
        restarting.restarts = 3;
        restarting.last_exit = Some(ExitReason::Exited(1).to_string());
        assert_eq!(
            verdict(&web, &[restarting.clone()]),
            ["container web: restarting (3 restarts; last run exited with status 1)"]
        );
        // Caught running between two crashes.
        let mut between = restarting;
        between.state = State::Running;
        between.started_at_ms = Some(NOW - 2_000);
        assert_eq!(
            verdict(&web, &[between.clone()]),
            [
                "container web: crash-looping: running again after 3 restarts, for 2 s so far \
              (counts after 60 s)"
            ]
        );
        // Once up for a minute it has recovered (it waited for its database).
        between.started_at_ms = Some(NOW - PROVEN_RUN_MS);
        assert!(verdict(&web, &[between]).is_empty());
        // A fresh start is not yet a steady run.
        let mut fresh = container("web", "nginx:1.27", State::Running);
        fresh.started_at_ms = Some(NOW - 4_500);
        assert_eq!(
            verdict(&web, &[fresh]),
            ["container web: running for 4 s, not yet steady (counts after 10 s)"]
        );
    }

    #[test]
    fn failed_pulls_and_containers_not_yet_running_are_not_healthy() {
        let db = declared(json!({"db": {"image": "registry.example.org:5000/team/db"}}));
        let mut failed = container("db", "registry.example.org:5000/team/db", State::Failed);
        failed.error = Some("pull registry.example.org:5000/team/db: 401 unauthorized".into());
        assert_eq!(
            verdict(&db, &[failed.clone()]),
            ["container db: failed: pull registry.example.org:5000/team/db: 401 unauthorized"]
        );
        let mut old_runs = failed;
        old_runs.state = State::Running;
        assert_eq!(
            verdict(&db, &[old_runs]),
            [
                "container db: pull registry.example.org:5000/team/db: 401 unauthorized \
              (the previous instance still runs)"
            ]
        );
        let pulling = container("db", "registry.example.org:5000/team/db", State::Pulling);
        assert_eq!(
            verdict(&db, &[pulling]),
            ["container db: pulling registry.example.org:5000/team/db, not running yet"]
        );
        let starting = container("db", "registry.example.org:5000/team/db", State::Starting);
        assert_eq!(
            verdict(&db, &[starting]),
            ["container db: starting, not running yet"]
        );
        let unknown = r#"[{"name":"db","image":"x","state":"hibernating","restarts":0}]"#;
        assert_eq!(
            containers(&db, Ok(unknown), NOW),
            ["container db: hibernating, not running"]
        );
    }

    #[test]
    fn a_job_that_finished_as_its_policy_allows_is_healthy_and_a_failed_one_is_not() {
        let exited = |how: ExitReason, restarts: u32| {
            let mut s = container("job", "busybox", State::Exited);
            s.last_exit = Some(how.to_string());
            s.restarts = restarts;
            s
        };
        let never = declared(json!({"job": {"image": "busybox", "restart": "never"}}));
        let retries = declared(json!({"job": {"image": "busybox", "restart": "on-failure:5"}}));
        let always = declared(json!({"job": {"image": "busybox"}}));
        assert!(verdict(&never, &[exited(ExitReason::Exited(0), 0)]).is_empty());
        assert!(verdict(&retries, &[exited(ExitReason::Exited(0), 2)]).is_empty());
        assert_eq!(
            verdict(&never, &[exited(ExitReason::Exited(2), 0)]),
            ["container job: exited with status 2; restart = never leaves it so"]
        );
        assert_eq!(
            verdict(
                &retries,
                &[exited(
                    ExitReason::OutOfMemory {
                        memory_max: Some(4_194_304)
                    },
                    5
                )]
            ),
            [
                "container job: killed by the kernel: out of memory (memory.max 4194304 bytes); \
              restart = on-failure:5 gave up after 5 restarts"
            ]
        );
        assert_eq!(
            verdict(&always, &[exited(ExitReason::Exited(0), 0)]),
            ["container job: exited with status 0, although restart = always"]
        );
        assert_eq!(CLEAN_EXIT, ExitReason::Exited(0).to_string());
    }

    #[test]
    fn the_run_lengths_are_the_writers_own() {
        assert_eq!(
            Duration::from_millis(STEADY_RUN_MS),
            carapace_init::backoff::STABLE_RUN
        );
        assert_eq!(
            Duration::from_millis(PROVEN_RUN_MS),
            carapace_containers::policy::HEALTHY_RUN
        );
    }

    #[test]
    fn the_remote_listener_serves_when_it_asks_for_a_token() {
        assert!(remote_answer_serves(401));
        assert!(remote_answer_serves(200));
        assert!(!remote_answer_serves(404), "not the API's router");
        assert!(!remote_answer_serves(502));
    }

    #[test]
    fn an_assessment_says_healthy_or_everything_that_fails() {
        let healthy = Assessment::default();
        assert!(healthy.is_healthy());
        assert_eq!(healthy.to_string(), "healthy");
        let sick = Assessment {
            failing: vec![
                "network: no address on eth0 yet (dhcp, waiting)".into(),
                "b".into(),
            ],
        };
        assert!(!sick.is_healthy());
        assert_eq!(
            sick.to_string(),
            "network: no address on eth0 yet (dhcp, waiting); b"
        );
    }

    // --- the probes, against local servers ---

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("carapace-health-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    /// A self-signed identity: the certificate's PEM and a TLS acceptor serving it.
    fn identity() -> (String, tokio_rustls::TlsAcceptor) {
        let generated =
            rcgen::generate_simple_self_signed(vec!["carapace".to_string()]).expect("certificate");
        let key = rustls::pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der())
            .expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![generated.cert.der().clone()], key)
        .expect("server config");
        (
            generated.cert.pem(),
            tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        )
    }

    /// Answers every request on `stream` with `answer` (a status line).
    async fn answer<S>(mut stream: S, answer: &'static str)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let response = format!("{answer}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}");
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// A TLS listener on 127.0.0.1 answering `status_line` to everything.
    async fn tls_server(
        acceptor: tokio_rustls::TlsAcceptor,
        status_line: &'static str,
    ) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        answer(tls, status_line).await;
                    }
                });
            }
        });
        addr
    }

    /// A Unix socket at `path` answering `status_line` to everything.
    fn unix_server(path: &Path, status_line: &'static str) {
        let listener = tokio::net::UnixListener::bind(path).expect("bind unix");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, status_line));
            }
        });
    }

    const QUICK: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn the_api_over_tcp_counts_only_with_the_nodes_own_certificate() {
        let dir = scratch("tcp");
        let cert = dir.join("cert.pem");
        let (pem, acceptor) = identity();
        std::fs::write(&cert, &pem).expect("cert");
        let addr = tls_server(acceptor, "HTTP/1.1 401 Unauthorized").await;
        assert_eq!(api_tcp(addr, &cert, QUICK).await, Ok(()));

        // Another listener with another certificate is not the node's API.
        let (_, impostor) = identity();
        let other = tls_server(impostor, "HTTP/1.1 401 Unauthorized").await;
        let refused = api_tcp(other, &cert, QUICK).await.expect_err("not pinned");
        assert!(
            refused.starts_with(&format!(
                "api (tcp {other}): the listener presents certificate sha256 "
            )),
            "{refused}"
        );
        let expected = certificate_fingerprint(&pem).expect("pin").to_string();
        assert!(
            refused.contains(&format!("not the node's own ({expected}, ")),
            "{refused}"
        );

        // A listener that serves TLS but not the API.
        let (pem, acceptor) = identity();
        std::fs::write(&cert, &pem).expect("cert");
        let wrong = tls_server(acceptor, "HTTP/1.1 404 Not Found").await;
        assert_eq!(
            api_tcp(wrong, &cert, QUICK).await,
            Err(format!(
                "api (tcp {wrong}): GET /v1/status without a token answered 404 (expected 401)"
            ))
        );

        // No certificate on /var: nothing to pin, nothing to trust.
        let missing = dir.join("none.pem");
        let err = api_tcp(addr, &missing, QUICK).await.expect_err("no pin");
        assert!(err.contains("no certificate to pin: cannot read"), "{err}");
        std::fs::write(&missing, "not PEM").expect("junk");
        let err = api_tcp(addr, &missing, QUICK).await.expect_err("no pin");
        assert!(err.ends_with("holds no certificate"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn a_listener_that_never_answers_fails_within_the_probe_timeout() {
        let dir = scratch("silent");
        let (pem, _) = identity();
        std::fs::write(dir.join("cert.pem"), pem).expect("cert");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepts, then says nothing: the TLS handshake never completes.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let started = std::time::Instant::now();
        let err = api_tcp(addr, &dir.join("cert.pem"), Duration::from_millis(300))
            .await
            .expect_err("silent");
        assert_eq!(err, format!("api (tcp {addr}): no answer within 300 ms"));
        assert!(started.elapsed() < Duration::from_secs(3));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn the_api_on_its_socket_must_answer_200() {
        let dir = scratch("local");
        let good = dir.join("good.sock");
        unix_server(&good, "HTTP/1.1 200 OK");
        assert_eq!(api_local(&good, QUICK).await, Ok(()));
        let sick = dir.join("sick.sock");
        unix_server(&sick, "HTTP/1.1 503 Service Unavailable");
        assert_eq!(
            api_local(&sick, QUICK).await,
            Err("api (local socket): GET /v1/status answered 503".into())
        );
        let err = api_local(&dir.join("none.sock"), QUICK)
            .await
            .expect_err("none");
        assert!(
            err.starts_with("api (local socket): cannot reach the node at unix:"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A node whose files and API all say it does its job, in `dir`.
    async fn healthy_node(dir: &Path) -> Probes {
        let now = carapace_contract::clock::ms_since_boot();
        let long_ago = now.saturating_sub(PROVEN_RUN_MS);
        let states: Vec<ServiceState> = names(AGENTS)
            .iter()
            .map(|n| service(n, Status::Running { pid: 10 }, 0, long_ago))
            .collect();
        std::fs::write(
            dir.join("services.json"),
            carapace_init::services_file::render(&states),
        )
        .expect("services");
        std::fs::write(
            dir.join("network.json"),
            network_report("configured", json!(["10.0.2.15/24"])),
        )
        .expect("network");
        std::fs::write(
            dir.join("settings.json"),
            json!({"containers": {"web": {"image": "nginx:1.27"}}}).to_string(),
        )
        .expect("settings");
        let mut web = container("web", "nginx:1.27", State::Running);
        web.started_at_ms = Some(long_ago);
        std::fs::write(
            dir.join("containers.json"),
            container_report::render(&[web]),
        )
        .expect("containers");
        let (pem, acceptor) = identity();
        std::fs::write(dir.join("cert.pem"), pem).expect("cert");
        unix_server(&dir.join("api.sock"), "HTTP/1.1 200 OK");
        Probes {
            services: names(AGENTS),
            services_json: dir.join("services.json"),
            api_socket: dir.join("api.sock"),
            api_tcp: tls_server(acceptor, "HTTP/1.1 401 Unauthorized").await,
            api_certificate: dir.join("cert.pem"),
            network_json: dir.join("network.json"),
            settings_json: dir.join("settings.json"),
            containers_json: dir.join("containers.json"),
            probe_timeout: QUICK,
        }
    }

    #[tokio::test]
    async fn a_node_that_does_its_job_is_healthy() {
        let dir = scratch("healthy");
        let probes = healthy_node(&dir).await;
        let assessment = assess(&probes).await;
        assert_eq!(assessment.failing, Vec::<String>::new());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn a_node_without_its_nic_or_with_a_crash_looping_container_is_not() {
        let dir = scratch("sick");
        let probes = healthy_node(&dir).await;
        std::fs::write(&probes.network_json, network_report("waiting", json!([]))).expect("net");
        let mut web = container("web", "nginx:1.27", State::Restarting);
        web.restarts = 4;
        web.last_exit = Some(ExitReason::Signaled(11).to_string());
        std::fs::write(&probes.containers_json, container_report::render(&[web]))
            .expect("containers");
        std::fs::remove_file(&probes.api_certificate).expect("cert gone");
        let assessment = assess(&probes).await;
        assert!(!assessment.is_healthy());
        assert_eq!(assessment.failing.len(), 3, "{assessment}");
        assert!(
            assessment.failing[0].starts_with("api (tcp 127.0.0.1:"),
            "{assessment}"
        );
        assert_eq!(
            assessment.failing[1..],
            [
                "network: no address on eth0 yet (dhcp, waiting)".to_string(),
                "container web: restarting (4 restarts; last run killed by signal SIGSEGV)"
                    .to_string(),
            ]
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
