//! Stage 2: carapace-init as PID 1 on the verified, read-only root. Stage 1
//! mounted /proc, /sys, /dev, / (erofs behind dm-verity) and /var (the state
//! partition), then exec'd us. Stage 2 makes the remaining mounts, names the
//! host, brings up loopback, starts the services of the manifest, prints
//! `carapace: ready …`, reaps every child, and shuts down in order when asked.
//!
//! First of all it makes itself the one process the OOM killer never takes
//! (`oom_score_adj` -1000; every service sets its own, see
//! [`crate::privileges`]). Early, it learns from the boot loader's variables
//! (efivarfs, mounted by stage 1 and moved here with /sys) whether this boot
//! is a counted trial
//! ([`crate::power::learn_boot_counting`]), and opens the hardware watchdog
//! again, which a task of the event loop pings ([`crate::watchdog`]).
//!
//! Nothing here may stop a blessed boot: a mount, the hostname, loopback or
//! the manifest failing is reported in one console line and the node
//! carries on (with no services, if the manifest is broken), so that it
//! stays reachable. On a trial boot a broken or unreadable manifest is
//! fatal instead ([`crate::power::fail`], which reboots so that the boot
//! loader counts the try): without services nothing would ever bless the
//! new version or reboot to fall back. A tokio runtime that cannot be built
//! at all is fatal on any boot.
//!
//! Console lines, in order:
//! - `carapace: stage 2 at <ms> ms` (the first line of stage 2)
//! - the watchdog's line (`carapace: watchdog <dev> armed, timeout <n> s,
//!   pinged every <s> s`, or why there is none)
//! - only on trouble: `carapace: cannot set the oom_score_adj of PID 1 to
//!   -1000: <error>`, `carapace: cannot mount <fstype> on <target>: <error>`,
//!   `carapace: <target> is already mounted: leaving it`,
//!   `carapace: cannot set the hostname <name>: <error>`,
//!   `carapace: cannot bring up lo: <error>`,
//!   `carapace: cannot read /usr/lib/carapace/services.toml: <error>: starting no services`,
//!   `carapace: /usr/lib/carapace/services.toml: <error>: starting no services`
//!   (on a trial boot these two are `carapace: boot failed: …: without
//!   services this trial boot can never be blessed`, then the reboot or
//!   power-off line of [`crate::power::fail`])
//! - `carapace: ready version=<version> roothash=<hex> at <ms> ms`, once, when
//!   every service has been spawned
//!
//! # Power requests
//!
//! | request                                  | action    | shutdown reason  |
//! |------------------------------------------|-----------|------------------|
//! | SIGINT (ctrl-alt-del, see below)         | reboot    | `ctrl-alt-del`   |
//! | SIGTERM                                  | reboot    | `SIGTERM`        |
//! | SIGUSR1 (halt)                           | power off | `SIGUSR1`        |
//! | SIGUSR2                                  | power off | `SIGUSR2`        |
//! | SIGPWR                                   | power off | `SIGPWR`         |
//! | ACPI power button (QEMU `system_powerdown`, a cloud's stop) | power off | `power button` |
//!
//! Stage 2 calls `reboot(LINUX_REBOOT_CMD_CAD_OFF)`, so the kernel turns
//! ctrl-alt-del into SIGINT to PID 1 instead of rebooting at once. The first
//! request wins; later ones are ignored while the shutdown runs.

use crate::console::say;
use crate::manifest::{Manifest, ManifestError};
use crate::power::PowerAction;
use crate::supervisor::{Event, PowerRequest, Supervisor};
use rustix::io::Errno;
use rustix::mount::MountFlags;
use rustix::process::Signal;
use std::ffi::CStr;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::UnboundedSender;

/// One mount of stage 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MountFlags,
    pub data: &'static CStr,
    /// Create the mount point first: it lives on devtmpfs, which starts empty
    /// (mount points on the read-only root are made when the image is built).
    pub create_target: bool,
}

/// The mounts of stage 2, in order.
pub fn mount_plan() -> Vec<MountSpec> {
    let nosuid_nodev = MountFlags::NOSUID | MountFlags::NODEV;
    let tmpfs = |target, data| MountSpec {
        source: "tmpfs",
        target,
        fstype: "tmpfs",
        flags: nosuid_nodev,
        data,
        create_target: false,
    };
    vec![
        tmpfs("/run", c"mode=0755"),
        tmpfs("/tmp", c"mode=1777"),
        MountSpec {
            source: "cgroup2",
            target: "/sys/fs/cgroup",
            fstype: "cgroup2",
            flags: nosuid_nodev | MountFlags::NOEXEC,
            data: c"nsdelegate",
            create_target: false,
        },
        MountSpec {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MountFlags::NOSUID | MountFlags::NOEXEC,
            data: c"mode=0620,ptmxmode=0666",
            create_target: true,
        },
        MountSpec {
            create_target: true,
            ..tmpfs("/dev/shm", c"mode=1777")
        },
    ]
}

/// The mount points listed in the text of /proc/self/mountinfo (field 5,
/// with the kernel's octal escapes such as `\040` for a space undone).
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .collect()
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0')));
        match octal.and_then(|n| u8::try_from(n).ok()) {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes the mounts of [`mount_plan`]; reports and skips what is already
/// mounted or fails.
fn mount_all() {
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| mount_points(&text))
        .unwrap_or_default();
    for m in mount_plan() {
        if mounted.iter().any(|p| p == m.target) {
            say(&format!("{} is already mounted: leaving it", m.target));
            continue;
        }
        if m.create_target {
            if let Err(e) = std::fs::create_dir(m.target) {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    say(&format!("cannot create {}: {e}", m.target));
                }
            }
        }
        let result = rustix::mount::mount(m.source, m.target, m.fstype, m.flags, m.data);
        match result {
            Ok(()) => {}
            Err(Errno::BUSY) => say(&format!("{} is already mounted: leaving it", m.target)),
            Err(e) => say(&format!("cannot mount {} on {}: {e}", m.fstype, m.target)),
        }
    }
}

/// The hostname: the image's /etc/hostname if it holds a valid one (letters,
/// digits, `-` and `.`, at most 64), else "carapace".
pub fn hostname_from(etc_hostname: Option<&str>) -> String {
    let name = etc_hostname.map(str::trim).unwrap_or("");
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        name.to_string()
    } else {
        "carapace".to_string()
    }
}

/// The value of `key=` in os-release text, without quotes.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix(key)?.strip_prefix('=')?.trim();
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        (!unquoted.is_empty()).then(|| unquoted.to_string())
    })
}

/// The ready line (after `carapace: `) from the texts of /usr/lib/os-release
/// and /proc/cmdline. The version is `IMAGE_VERSION` (which mkosi writes), or
/// `VERSION_ID` for an image that has only that, else "unknown"; the root
/// hash is "none" when `roothash=` is missing or malformed.
pub fn ready_line(os_release: Option<&str>, cmdline: Option<&str>, ms: u64) -> String {
    format!(
        "ready version={} roothash={} at {ms} ms",
        version_of(os_release),
        roothash_of(cmdline)
    )
}

/// The version in os-release: `IMAGE_VERSION`, else `VERSION_ID`, else "unknown".
pub fn version_of(os_release: Option<&str>) -> String {
    os_release
        .and_then(|t| {
            os_release_value(t, "IMAGE_VERSION").or_else(|| os_release_value(t, "VERSION_ID"))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The root hash of the command line in hex, or "none".
pub fn roothash_of(cmdline: Option<&str>) -> String {
    cmdline
        .and_then(|c| crate::cmdline::roothash(c).ok())
        .map(|h| h.to_hex())
        .unwrap_or_else(|| "none".into())
}

/// What is wrong with the manifest, in words: the read error names the
/// path itself, a parse or validation error does not.
pub fn manifest_problem(e: &ManifestError) -> String {
    match e {
        ManifestError::Read { .. } => e.to_string(),
        _ => format!("{}: {e}", crate::MANIFEST_PATH),
    }
}

/// What stage 2 does about a manifest it cannot use: on a blessed boot,
/// start no services and stay reachable; on a trial boot, fail, so that the
/// try is counted (nothing else would bless the version or reboot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestFallback {
    /// `carapace: <line>`, then no services.
    StartNothing(String),
    /// `carapace: boot failed: <line>`.
    Fail(String),
}

/// Decides [`ManifestFallback`] for `problem` (from [`manifest_problem`]).
pub fn manifest_fallback(problem: &str, on_trial: bool) -> ManifestFallback {
    if on_trial {
        ManifestFallback::Fail(format!(
            "{problem}: without services this trial boot can never be blessed"
        ))
    } else {
        ManifestFallback::StartNothing(format!("{problem}: starting no services"))
    }
}

fn without_manifest(problem: &str, on_trial: bool) -> Manifest {
    match manifest_fallback(problem, on_trial) {
        ManifestFallback::StartNothing(line) => {
            say(&line);
            Manifest::default()
        }
        ManifestFallback::Fail(msg) => crate::power::fail(&msg),
    }
}

/// The signals that ask PID 1 to end the machine (see the table above):
/// [`carapace_contract::power::SIGNALS`], with the reason each gives.
pub fn power_signals() -> [(Signal, PowerAction, &'static str); 5] {
    carapace_contract::power::SIGNALS.map(|s| (s.signal, s.action, s.reason))
}

/// Reopens stdin, stdout and stderr on /dev/console.
fn reopen_console() {
    use rustix::fs::{Mode, OFlags};
    use std::os::fd::{AsRawFd, IntoRawFd};
    let Ok(console) =
        rustix::fs::open("/dev/console", OFlags::RDWR | OFlags::NOCTTY, Mode::empty())
    else {
        return; // Keep whatever stage 1 handed over.
    };
    let _ = rustix::stdio::dup2_stdin(&console);
    let _ = rustix::stdio::dup2_stdout(&console);
    let _ = rustix::stdio::dup2_stderr(&console);
    if console.as_raw_fd() <= 2 {
        // It is one of 0, 1, 2 itself: keep it open.
        let _ = console.into_raw_fd();
    }
}

/// Forwards every delivery of `kind` into the event channel.
fn forward_signal(kind: SignalKind, event: Event, events: &UnboundedSender<Event>) {
    let events = events.clone();
    match signal(kind) {
        Ok(mut deliveries) => {
            tokio::spawn(async move {
                while deliveries.recv().await.is_some() {
                    if events.send(event.clone()).is_err() {
                        break;
                    }
                }
            });
        }
        Err(e) => say(&format!(
            "cannot listen for signal {}: {e}",
            kind.as_raw_value()
        )),
    }
}

/// Starts the services and handles events until a power request comes.
async fn supervise(manifest: Manifest, stage2_ms: u64) -> (Supervisor, PowerRequest) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // From now on a hung event loop stops the pings, and the watchdog resets.
    crate::watchdog::spawn_pinger();
    // Listen before the first child exists, so that no SIGCHLD is missed.
    forward_signal(SignalKind::child(), Event::ChildExited, &tx);
    for (sig, action, reason) in power_signals() {
        let request = PowerRequest {
            action,
            reason: reason.into(),
        };
        forward_signal(
            SignalKind::from_raw(sig.as_raw()),
            Event::Power(request),
            &tx,
        );
    }
    let button = tx.clone();
    crate::power_button::watch(move || {
        let _ = button.send(Event::Power(PowerRequest {
            action: PowerAction::PowerOff,
            reason: "power button".into(),
        }));
    });

    if let Err(e) = crate::logs::start(crate::logs::DIR) {
        say(&format!(
            "cannot keep log files in {}: {e}",
            crate::logs::DIR
        ));
    }
    let os_release = std::fs::read_to_string("/usr/lib/os-release").ok();
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok();
    let boot =
        crate::boot_file::render(os_release.as_deref(), cmdline.as_deref(), stage2_ms, |k| {
            std::env::var(k).ok()
        });
    crate::services_file::publish(
        std::path::Path::new(crate::boot_file::PATH),
        &boot.to_json(),
    );
    let mut supervisor = Supervisor::new(manifest, tx);
    supervisor.publish_states_to(crate::services_file::PATH);
    supervisor.start_all();
    say(&ready_line(
        os_release.as_deref(),
        cmdline.as_deref(),
        crate::clock::ms_since_boot(),
    ));
    let request = supervisor.run(&mut rx).await;
    (supervisor, request)
}

/// Runs stage 2 as PID 1; never returns.
pub fn run() -> ! {
    reopen_console();
    let stage2_ms = crate::clock::ms_since_boot();
    say(&format!("stage 2 at {stage2_ms} ms"));
    // The OOM killer must never take PID 1; each service sets its own score.
    if let Err(e) = crate::privileges::protect_pid1_from_oom_killer() {
        say(&format!(
            "cannot set the oom_score_adj of PID 1 to -1000: {e}"
        ));
    }
    let on_trial = crate::power::learn_boot_counting().is_counted();
    crate::watchdog::arm_for_stage2();
    mount_all();
    let hostname = hostname_from(std::fs::read_to_string("/etc/hostname").ok().as_deref());
    if let Err(e) = rustix::system::sethostname(hostname.as_bytes()) {
        say(&format!("cannot set the hostname {hostname}: {e}"));
    }
    if let Err(e) = crate::loopback::up() {
        say(&format!("cannot bring up lo: {e}"));
    }
    if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::CadOff) {
        say(&format!("cannot take over ctrl-alt-del: {e}"));
    }
    let manifest = Manifest::read(crate::MANIFEST_PATH)
        .unwrap_or_else(|e| without_manifest(&manifest_problem(&e), on_trial));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => crate::power::fail(&format!("cannot build the event loop: {e}")),
    };
    let (mut supervisor, request) = runtime.block_on(supervise(manifest, stage2_ms));
    // The runtime stays alive (its signal handlers stay installed, so a second
    // request is ignored rather than killing us); the shutdown is synchronous.
    crate::shutdown::run(&mut supervisor, &request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_plan_mounts_run_tmp_cgroup_pts_and_shm_in_order() {
        let plan = mount_plan();
        let targets: Vec<&str> = plan.iter().map(|m| m.target).collect();
        assert_eq!(
            targets,
            ["/run", "/tmp", "/sys/fs/cgroup", "/dev/pts", "/dev/shm"]
        );
        let fstypes: Vec<&str> = plan.iter().map(|m| m.fstype).collect();
        assert_eq!(fstypes, ["tmpfs", "tmpfs", "cgroup2", "devpts", "tmpfs"]);
        assert_eq!(plan[0].data, c"mode=0755");
        assert_eq!(plan[1].data, c"mode=1777");
        assert_eq!(plan[4].data, c"mode=1777");
        assert!(plan.iter().all(|m| m.flags.contains(MountFlags::NOSUID)));
        assert!(!plan.iter().any(|m| m.flags.contains(MountFlags::RDONLY)));
        let created: Vec<&str> = plan
            .iter()
            .filter(|m| m.create_target)
            .map(|m| m.target)
            .collect();
        assert_eq!(
            created,
            ["/dev/pts", "/dev/shm"],
            "only devtmpfs needs its mount points made"
        );
    }

    #[test]
    fn mount_points_are_read_from_mountinfo_with_escapes_undone() {
        let mountinfo = "\
22 1 253:0 / / ro,relatime - erofs /dev/dm-0 ro
23 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,mode=755
24 22 254:6 / /var rw,relatime - ext4 /dev/vda6 rw
25 22 0:30 / /mnt/with\\040space rw - tmpfs tmpfs rw
";
        assert_eq!(
            mount_points(mountinfo),
            ["/", "/dev", "/var", "/mnt/with space"]
        );
        assert_eq!(mount_points(""), Vec::<String>::new());
        assert_eq!(unescape_mountinfo("a\\134b\\9"), "a\\b\\9");
    }

    #[test]
    fn hostname_comes_from_etc_hostname_or_is_carapace() {
        assert_eq!(hostname_from(Some("node-1\n")), "node-1");
        assert_eq!(hostname_from(Some("node-1.example")), "node-1.example");
        assert_eq!(hostname_from(Some("")), "carapace");
        assert_eq!(hostname_from(Some("bad name")), "carapace");
        assert_eq!(hostname_from(Some(&"a".repeat(65))), "carapace");
        assert_eq!(hostname_from(None), "carapace");
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let text = "NAME=\"Carapace\"\nIMAGE_VERSION='0.2.0'\nVERSION_ID=0.1\nEMPTY=\"\"\n";
        assert_eq!(
            os_release_value(text, "IMAGE_VERSION").as_deref(),
            Some("0.2.0")
        );
        assert_eq!(os_release_value(text, "VERSION_ID").as_deref(), Some("0.1"));
        assert_eq!(os_release_value(text, "NAME").as_deref(), Some("Carapace"));
        assert_eq!(
            os_release_value(text, "VERSION"),
            None,
            "a prefix of another key"
        );
        assert_eq!(os_release_value(text, "EMPTY"), None);
    }

    #[test]
    fn the_ready_line_names_version_roothash_and_time() {
        let hash = "ab".repeat(32);
        let cmdline = format!("console=ttyS0 roothash={hash} quiet\n");
        assert_eq!(
            ready_line(
                Some("ID=carapace\nIMAGE_VERSION=0.1.0\n"),
                Some(&cmdline),
                1234
            ),
            format!("ready version=0.1.0 roothash={hash} at 1234 ms")
        );
        assert_eq!(
            ready_line(Some("VERSION_ID=0.3.0\n"), Some("roothash=xyz"), 7),
            "ready version=0.3.0 roothash=none at 7 ms"
        );
        assert_eq!(
            ready_line(None, None, 0),
            "ready version=unknown roothash=none at 0 ms"
        );
    }

    #[test]
    fn a_broken_manifest_starts_nothing_when_blessed_and_fails_a_trial_boot() {
        let read = ManifestError::Read {
            path: crate::MANIFEST_PATH.into(),
            reason: "No such file or directory".into(),
        };
        let problem = manifest_problem(&read);
        assert!(problem.starts_with("cannot read /usr/lib/carapace/services.toml: "));
        match manifest_fallback(&problem, false) {
            ManifestFallback::StartNothing(line) => {
                assert_eq!(line, format!("{problem}: starting no services"))
            }
            other => panic!("{other:?}"),
        }
        match manifest_fallback(&problem, true) {
            ManifestFallback::Fail(msg) => assert_eq!(
                msg,
                format!("{problem}: without services this trial boot can never be blessed")
            ),
            other => panic!("{other:?}"),
        }
        let broken = Manifest::parse("[[service]]\nname = 1\n").expect_err("broken");
        let problem = manifest_problem(&broken);
        assert!(
            problem.starts_with("/usr/lib/carapace/services.toml: "),
            "{problem}"
        );
    }

    #[test]
    fn power_signals_reboot_or_power_off_as_documented() {
        let table: Vec<(i32, PowerAction)> = power_signals()
            .iter()
            .map(|(s, a, _)| (s.as_raw(), *a))
            .collect();
        assert_eq!(
            table,
            [
                (Signal::INT.as_raw(), PowerAction::Reboot),
                (Signal::TERM.as_raw(), PowerAction::Reboot),
                (Signal::USR1.as_raw(), PowerAction::PowerOff),
                (Signal::USR2.as_raw(), PowerAction::PowerOff),
                (Signal::POWER.as_raw(), PowerAction::PowerOff),
            ]
        );
    }
}
