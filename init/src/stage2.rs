//! Stage 2: carapace-init as PID 1 on the verified root. It finishes the
//! mounts, names the host, brings up loopback, supervises the services of the
//! manifest, reaps orphans, prints `carapace: ready …`, and shuts down in
//! order when asked.
//!
//! Power requests (see ARCHITECTURE.md): SIGINT (ctrl-alt-del, once CAD is
//! handed to us) and SIGTERM reboot; SIGUSR1, SIGUSR2, SIGPWR and the ACPI
//! power button power off.

use crate::console::say;
use crate::manifest::Manifest;
use crate::power::PowerAction;
use crate::supervisor::{Event, Supervisor};
use rustix::mount::MountFlags;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::UnboundedSender;

/// One mount stage 2 makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MountFlags,
    pub data: &'static str,
}

/// The mounts of stage 2, in order (stage 1 already mounted /, /var, /proc,
/// /sys and /dev).
pub fn mount_plan() -> Vec<MountSpec> {
    let nosuid_nodev = MountFlags::NOSUID | MountFlags::NODEV;
    vec![
        MountSpec { source: "tmpfs", target: "/run", fstype: "tmpfs", flags: nosuid_nodev, data: "mode=0755,size=20%" },
        MountSpec { source: "tmpfs", target: "/tmp", fstype: "tmpfs", flags: nosuid_nodev, data: "mode=1777,size=20%" },
        MountSpec { source: "devpts", target: "/dev/pts", fstype: "devpts", flags: MountFlags::NOSUID | MountFlags::NOEXEC, data: "mode=0620,ptmxmode=0666" },
        MountSpec { source: "tmpfs", target: "/dev/shm", fstype: "tmpfs", flags: nosuid_nodev, data: "mode=1777" },
        MountSpec { source: "cgroup2", target: "/sys/fs/cgroup", fstype: "cgroup2", flags: nosuid_nodev | MountFlags::NOEXEC, data: "nsdelegate" },
    ]
}

fn do_mounts() {
    for m in mount_plan() {
        if m.target.starts_with("/dev/") {
            // devtmpfs is writable: make the mount point if it is missing.
            let _ = std::fs::create_dir(m.target);
        }
        let data = std::ffi::CString::new(m.data).unwrap_or_default();
        match rustix::mount::mount(m.source, m.target, m.fstype, m.flags, Some(data.as_c_str())) {
            Ok(()) | Err(rustix::io::Errno::BUSY) => {}
            Err(e) => say(&format!("cannot mount {} on {}: {e}", m.fstype, m.target)),
        }
    }
}

/// The hostname from the image's /etc/hostname, if it is a valid one.
pub fn hostname_from(text: Option<&str>) -> String {
    let name = text.map(str::trim).unwrap_or("");
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid { name.to_string() } else { "carapace".to_string() }
}

/// The value of `key=` in os-release text, unquoted.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?;
        Some(v.trim().trim_matches('"').trim_matches('\'').to_string())
    })
}

fn reopen_console() {
    if let Ok(fd) = rustix::fs::open("/dev/console", rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY, rustix::fs::Mode::empty()) {
        let _ = rustix::stdio::dup2_stdin(&fd);
        let _ = rustix::stdio::dup2_stdout(&fd);
        let _ = rustix::stdio::dup2_stderr(&fd);
    }
}

fn forward_signal(kind: SignalKind, event: Event, tx: UnboundedSender<Event>) {
    match signal(kind) {
        Ok(mut stream) => {
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(event.clone()).is_err() {
                        break;
                    }
                }
            });
        }
        Err(e) => say(&format!("cannot listen for signal {}: {e}", kind.as_raw_value())),
    }
}

fn power(action: PowerAction, reason: &str) -> Event {
    Event::Power { action, reason: reason.to_string() }
}

async fn supervise(manifest: Manifest) -> PowerAction {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Listen before the first child exists, so no SIGCHLD is missed.
    forward_signal(SignalKind::child(), Event::ChildExited, tx.clone());
    forward_signal(SignalKind::interrupt(), power(PowerAction::Reboot, "ctrl-alt-del"), tx.clone());
    forward_signal(SignalKind::terminate(), power(PowerAction::Reboot, "SIGTERM"), tx.clone());
    forward_signal(SignalKind::user_defined1(), power(PowerAction::PowerOff, "SIGUSR1"), tx.clone());
    forward_signal(SignalKind::user_defined2(), power(PowerAction::PowerOff, "SIGUSR2"), tx.clone());
    forward_signal(SignalKind::from_raw(libc_sigpwr()), power(PowerAction::PowerOff, "SIGPWR"), tx.clone());
    let button_tx = tx.clone();
    let buttons = crate::power_button::watch(move || {
        let _ = button_tx.send(power(PowerAction::PowerOff, "power button"));
    });
    if buttons == 0 {
        say("no ACPI power button found: power off by signal only");
    }

    let mut sup = Supervisor::new(manifest, tx.clone());
    sup.start_all();
    say(&ready_line());

    let (action, reason) = loop {
        match rx.recv().await {
            Some(Event::ChildExited) => sup.reap(),
            Some(Event::RestartDue(i)) => sup.restart_due(i),
            Some(Event::Power { action, reason }) => break (action, reason),
            None => break (PowerAction::PowerOff, "event channel closed".to_string()),
        }
    };
    say(&format!("shutting down ({reason}): stopping services"));
    let grace = sup.begin_stop();
    let deadline = tokio::time::Instant::now() + grace;
    sup.reap();
    while !sup.all_stopped() {
        tokio::select! {
            ev = rx.recv() => if let Some(Event::ChildExited) = ev { sup.reap() },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    if !sup.all_stopped() {
        sup.kill_remaining();
        let kill_deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while !sup.all_stopped() && tokio::time::Instant::now() < kill_deadline {
            sup.reap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    action
}

/// SIGPWR's number on Linux (x86 and most others).
const fn libc_sigpwr() -> i32 {
    30
}

fn ready_line() -> String {
    let version = std::fs::read_to_string("/usr/lib/os-release")
        .ok()
        .and_then(|t| os_release_value(&t, "IMAGE_VERSION").or_else(|| os_release_value(&t, "VERSION_ID")))
        .unwrap_or_else(|| "unknown".into());
    let roothash = std::fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| crate::cmdline::roothash(&c).ok())
        .map(|h| h.to_hex())
        .unwrap_or_else(|| "none".into());
    format!("ready version={version} roothash={roothash} at {} ms", crate::clock::ms_since_boot())
}

fn load_manifest() -> Manifest {
    match std::fs::read_to_string(crate::MANIFEST_PATH) {
        Ok(text) => Manifest::parse(&text).unwrap_or_else(|e| {
            say(&format!("{}: {e}: starting no services", crate::MANIFEST_PATH));
            Manifest::default()
        }),
        Err(e) => {
            say(&format!("cannot read {}: {e}: starting no services", crate::MANIFEST_PATH));
            Manifest::default()
        }
    }
}

/// Runs stage 2; never returns.
pub fn run() -> ! {
    reopen_console();
    say(&format!("stage 2 at {} ms", crate::clock::ms_since_boot()));
    do_mounts();
    let hostname = hostname_from(std::fs::read_to_string("/etc/hostname").ok().as_deref());
    if let Err(e) = rustix::system::sethostname(hostname.as_bytes()) {
        say(&format!("cannot set hostname {hostname}: {e}"));
    }
    if let Err(e) = crate::loopback::up() {
        say(&format!("cannot bring up lo: {e}"));
    }
    // ctrl-alt-del becomes SIGINT to us instead of an immediate reboot.
    if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::CadOff) {
        say(&format!("cannot take over ctrl-alt-del: {e}"));
    }
    let manifest = load_manifest();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => crate::power::fail(&format!("cannot start the event loop: {e}")),
    };
    let action = runtime.block_on(supervise(manifest));
    crate::shutdown::finish(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_made_in_a_sensible_order() {
        let plan = mount_plan();
        let targets: Vec<&str> = plan.iter().map(|m| m.target).collect();
        assert_eq!(targets, vec!["/run", "/tmp", "/dev/pts", "/dev/shm", "/sys/fs/cgroup"]);
        assert!(plan.iter().all(|m| m.flags.contains(MountFlags::NOSUID)));
        assert_eq!(plan[4].fstype, "cgroup2");
    }

    #[test]
    fn hostname_falls_back_to_carapace() {
        assert_eq!(hostname_from(Some("node-1\n")), "node-1");
        assert_eq!(hostname_from(Some("")), "carapace");
        assert_eq!(hostname_from(Some("bad name")), "carapace");
        assert_eq!(hostname_from(None), "carapace");
    }

    #[test]
    fn reads_os_release_values() {
        let t = "NAME=\"Carapace\"\nIMAGE_VERSION=\"0.2.0\"\nVERSION_ID=0.1\n";
        assert_eq!(os_release_value(t, "IMAGE_VERSION").as_deref(), Some("0.2.0"));
        assert_eq!(os_release_value(t, "VERSION_ID").as_deref(), Some("0.1"));
        assert_eq!(os_release_value(t, "ID"), None);
    }
}
