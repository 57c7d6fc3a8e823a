//! Guest-side probe of the test image (a service with `restart = "never"`):
//! it reports from inside the node what the host cannot see, one console
//! line each, all starting `checker: `:
//!
//! - `checker: root <source> <fstype> <mount options>` — how / is mounted
//!   (expected: a /dev/dm-* or /dev/mapper device, erofs, ro);
//! - `checker: write to / failed: EROFS (…)` — or `write to / SUCCEEDED`;
//! - `checker: var boots=<n>` — a counter on /var, one more on every boot;
//! - `checker: orphan <pid> reaped` — or `is a zombie`: a grandchild whose
//!   parent exited is reparented to PID 1, which must collect it;
//! - `checker: zombies=<n>` — zombies that stay zombies for half a second;
//! - `checker: api hostname="<name>" uname=<kernel's hostname>`, what the API
//!   (its Unix socket) and the kernel say; on a disk's first boot without
//!   user data then `checker: api patch <status> commit <status>` for a
//!   change of the hostname to node-from-api, and the hostname line again
//!   (with user data: `checker: api patch skipped: …`);
//! - `checker: release <version>` — the marker file each test image version carries;
//! - `checker: caps <service> pid <pid> eff <hex> bnd <hex> amb <hex> nnp <0|1> oom <adj>`
//!   for every service that runs according to /run/carapace/services.json:
//!   its effective, bounding and ambient capability sets, `NoNewPrivs`
//!   (from /proc/<pid>/status) and /proc/<pid>/oom_score_adj (or
//!   `checker: caps <service> pid <pid> unreadable: <why>` when it just ended),
//!   then `checker: pid1 oom <adj>`;
//! - `checker: done`, then exit status 0;
//! - `checker: api status version=<v> roothash=<hex>` and
//!   `checker: api services <name>:<state> …` and
//!   `checker: api user-data outcome=<applied|absent|refused> slot=<a|b>`, from GET /v1/status;
//! - on the second boot of a disk without user data only: a reboot asked for through the API
//!   (which signals PID 1; the shutdown may stop the checker before it prints
//!   `checker: api reboot <status>`).
//!
//! Failures of the probe itself read `checker: error <what>: <why>`. Only std
//! and rustix; no panics.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The argument that makes the probe the middle generation of the orphan test.
const AS_PARENT: &str = "--orphan-parent";
/// The argument that makes the probe the orphaned grandchild.
const AS_ORPHAN: &str = "--orphan";
/// How long the orphan lives after its parent left.
const ORPHAN_LIFE: Duration = Duration::from_millis(300);
/// How long PID 1 gets to reap it.
const REAP_WAIT: Duration = Duration::from_millis(1500);
const COUNTER_DIR: &str = "/var/lib/carapace-test";

fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "checker: {msg}");
    let _ = out.flush();
}

/// The source, filesystem type and mount options of the topmost mount on /
/// in /proc/self/mountinfo (`id parent dev root mountpoint options … - fstype source super`).
fn root_mount() -> Result<String, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let line = text
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some("/"))
        .ok_or("no mount on / in /proc/self/mountinfo")?;
    let (mount, fs) = line
        .split_once(" - ")
        .ok_or_else(|| format!("no separator in mountinfo line {line:?}"))?;
    let options = mount.split(' ').nth(5).ok_or("no mount options")?;
    let mut fs = fs.split(' ');
    let fstype = fs.next().ok_or("no filesystem type")?;
    let source = fs.next().ok_or("no mount source")?;
    Ok(format!("{source} {fstype} {options}"))
}

/// The symbolic name of the error numbers a write to / may plausibly give.
fn errno_name(e: rustix::io::Errno) -> &'static str {
    use rustix::io::Errno;
    [
        (Errno::ROFS, "EROFS"),
        (Errno::ACCESS, "EACCES"),
        (Errno::PERM, "EPERM"),
        (Errno::EXIST, "EEXIST"),
        (Errno::NOSPC, "ENOSPC"),
        (Errno::IO, "EIO"),
    ]
    .iter()
    .find(|(errno, _)| *errno == e)
    .map_or("error", |(_, name)| name)
}

/// Tries to create a file in /, which must fail on the read-only root.
fn write_to_root() -> String {
    use rustix::fs::{Mode, OFlags};
    let path = "/carapace-checker-was-here";
    match rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    ) {
        Ok(_) => {
            let _ = std::fs::remove_file(path);
            "write to / SUCCEEDED".to_string()
        }
        Err(e) => format!(
            "write to / failed: {} ({})",
            errno_name(e),
            std::io::Error::from(e)
        ),
    }
}

/// Reads the boot counter on /var (missing counts as 0), adds one and
/// writes it back durably: a temporary file, fsync, rename, fsync the directory.
fn count_boot() -> Result<u64, String> {
    std::fs::create_dir_all(COUNTER_DIR).map_err(|e| format!("creating {COUNTER_DIR}: {e}"))?;
    let path = format!("{COUNTER_DIR}/boots");
    let previous = match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map_err(|e| format!("{path} holds {text:?}: {e}"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(format!("reading {path}: {e}")),
    };
    let boots = previous + 1;
    let temporary = format!("{path}.new");
    let mut file =
        std::fs::File::create(&temporary).map_err(|e| format!("creating {temporary}: {e}"))?;
    file.write_all(format!("{boots}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("writing {temporary}: {e}"))?;
    std::fs::rename(&temporary, &path)
        .map_err(|e| format!("renaming {temporary} to {path}: {e}"))?;
    std::fs::File::open(COUNTER_DIR)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| format!("syncing {COUNTER_DIR}: {e}"))?;
    Ok(boots)
}

/// The state letter and command name of a process, from /proc/<pid>/stat
/// (`pid (comm) state …`; comm may hold spaces and parentheses).
fn process_state(pid: i32) -> Option<(char, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let state = stat
        .get(close + 1..)?
        .split_whitespace()
        .next()?
        .chars()
        .next()?;
    Some((state, comm))
}

/// Starts a child that starts the orphan and exits at once, reaps that
/// child, and returns the orphan's pid (which the child sends through a pipe).
fn make_orphan() -> Result<i32, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding myself: {e}"))?;
    let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("making a pipe: {e}"))?;
    let mut parent = Command::new(&exe)
        .arg(AS_PARENT)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .spawn()
        .map_err(|e| format!("starting {}: {e}", exe.display()))?;
    let status = parent
        .wait()
        .map_err(|e| format!("waiting for the orphan's parent: {e}"))?;
    if !status.success() {
        return Err(format!("the orphan's parent failed: {status}"));
    }
    let mut text = String::new();
    std::fs::File::from(reader)
        .read_to_string(&mut text)
        .map_err(|e| format!("reading the orphan's pid: {e}"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("the orphan's parent sent {text:?}, not a pid"))
}

/// The middle generation: starts the orphan, tells its pid, and leaves.
fn orphan_parent() -> i32 {
    let Ok(exe) = std::env::current_exe() else {
        return 1;
    };
    match Command::new(exe)
        .arg(AS_ORPHAN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(orphan) => {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{}", orphan.id())
                .and_then(|()| out.flush())
                .is_err()
            {
                return 1;
            }
            // Exit without waiting: the orphan is reparented to PID 1.
            0
        }
        Err(_) => 1,
    }
}

/// What became of the orphan after PID 1 had time to reap it.
fn orphan_report(pid: i32) -> String {
    let ours = |comm: &str| "carapace-test-checker".starts_with(comm);
    match process_state(pid) {
        Some(('Z', comm)) if ours(&comm) => format!("orphan {pid} is a zombie"),
        Some((state, comm)) if ours(&comm) => format!("orphan {pid} still running (state {state})"),
        // Gone, or the pid already belongs to someone else.
        _ => format!("orphan {pid} reaped"),
    }
}

/// The pids of all zombies now.
fn zombies() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| process_state(pid).is_some_and(|(state, _)| state == 'Z'))
        .collect()
}

/// Zombies that are still zombies half a second later: a service that just
/// ended (the crasher, say) is a zombie for an instant before PID 1 reaps it.
fn lasting_zombies() -> Vec<i32> {
    let first = zombies();
    std::thread::sleep(Duration::from_millis(500));
    let second = zombies();
    first
        .into_iter()
        .filter(|pid| second.contains(pid))
        .collect()
}

/// One HTTP/1.1 request to the API daemon on its Unix socket (waiting up to
/// 10 s for the daemon to listen); returns the status code and the body.
fn api(method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut stream = None;
    for _ in 0..200 {
        match std::os::unix::net::UnixStream::connect(API_SOCKET) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let mut stream = stream.ok_or_else(|| format!("{API_SOCKET} does not answer"))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("malformed response {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

const API_SOCKET: &str = carapace_contract::paths::API_SOCKET;

/// Where PID 1 publishes every service's state and pid.
const SERVICES_JSON: &str = carapace_contract::paths::SERVICES_JSON;

/// (name, pid) of every service with a pid in the text of services.json.
fn service_pids(json: &str) -> Vec<(String, i32)> {
    carapace_contract::services::parse(json)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| Some((s.name, s.pid?)))
        .collect()
}

/// The value of `<field>:` in the text of /proc/<pid>/status.
fn status_field<'a>(status: &'a str, field: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// The capability report of one process.
fn privileges_of(pid: i32) -> Result<String, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let oom = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .map_err(|e| format!("/proc/{pid}/oom_score_adj: {e}"))?;
    let field = |name: &str| status_field(&status, name).unwrap_or("?").to_string();
    Ok(format!(
        "eff {} bnd {} amb {} nnp {} oom {}",
        field("CapEff"),
        field("CapBnd"),
        field("CapAmb"),
        field("NoNewPrivs"),
        oom.trim()
    ))
}

/// What each running service may do, and PID 1's OOM score.
fn report_privileges() {
    match std::fs::read_to_string(SERVICES_JSON) {
        Ok(json) => {
            for (name, pid) in service_pids(&json) {
                match privileges_of(pid) {
                    Ok(report) => say(&format!("caps {name} pid {pid} {report}")),
                    Err(e) => say(&format!("caps {name} pid {pid} unreadable: {e}")),
                }
            }
        }
        Err(e) => say(&format!("error reading {SERVICES_JSON}: {e}")),
    }
    match std::fs::read_to_string("/proc/1/oom_score_adj") {
        Ok(adj) => say(&format!("pid1 oom {}", adj.trim())),
        Err(e) => say(&format!("error reading /proc/1/oom_score_adj: {e}")),
    }
}

fn nodename() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Reports what the API and the kernel say the hostname is; on the first
/// boot of a disk without user data (hostname still the default), then
/// changes it through the API and reports again. A node given user data is
/// left as the user data made it, for the tests that check it from the host.
fn check_api(boots: u64) {
    report_status();
    report_hostname();
    let default_name = nodename() == "carapace";
    if boots == 1 && !default_name {
        say("api patch skipped: the hostname came from user data");
    }
    if boots == 1 && default_name {
        let patched = api("PATCH", "/v1/settings", r#"{"hostname":"node-from-api"}"#);
        let committed = api("POST", "/v1/settings/commit", "");
        match (patched, committed) {
            (Ok((p, _)), Ok((c, _))) => say(&format!("api patch {p} commit {c}")),
            (Err(e), _) | (_, Err(e)) => say(&format!("error talking to the API: {e}")),
        }
        report_hostname();
    }
}

/// Whether the node took first-boot user data (its tests drive it themselves).
fn user_data_applied() -> bool {
    matches!(api("GET", "/v1/status", ""), Ok((200, body)) if body.contains("\"outcome\":\"applied\""))
}

fn report_status() {
    match api("GET", "/v1/status", "") {
        Ok((200, body)) => {
            let field = |name: &str| {
                body.split(&format!("\"{name}\":\""))
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or("?")
                    .to_string()
            };
            say(&format!(
                "api status version={} roothash={}",
                field("version"),
                field("roothash")
            ));
            // name:state of every service, in manifest order.
            let services: Vec<String> = body
                .split("\"name\":\"")
                .skip(1)
                .map(|entry| {
                    let name = entry.split('"').next().unwrap_or("?");
                    let state = entry
                        .split("\"state\":\"")
                        .nth(1)
                        .and_then(|rest| rest.split('"').next())
                        .unwrap_or("?");
                    format!("{name}:{state}")
                })
                .collect();
            say(&format!("api services {}", services.join(" ")));
            say(&format!(
                "api user-data outcome={} slot={}",
                field("outcome"),
                field("active_slot")
            ));
        }
        Ok((code, body)) => say(&format!("error: GET /v1/status gave {code}: {body}")),
        Err(e) => say(&format!("error talking to the API: {e}")),
    }
}

fn report_hostname() {
    match api("GET", "/v1/settings/hostname", "") {
        Ok((200, body)) => say(&format!(
            "api hostname={} uname={}",
            body.trim(),
            nodename()
        )),
        Ok((code, body)) => say(&format!(
            "error: GET /v1/settings/hostname gave {code}: {body}"
        )),
        Err(e) => say(&format!("error talking to the API: {e}")),
    }
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some(AS_PARENT) => std::process::exit(orphan_parent()),
        Some(AS_ORPHAN) => {
            std::thread::sleep(ORPHAN_LIFE);
            std::process::exit(0);
        }
        _ => {}
    }

    // The marker the update tests' versions differ in.
    match std::fs::read_to_string("/usr/lib/carapace/test/release") {
        Ok(v) => say(&format!("release {}", v.trim())),
        Err(e) => say(&format!("release unknown: {e}")),
    }
    // The OCI runtime and the libraries it loads are whole in the image.
    match std::process::Command::new("/usr/bin/crun")
        .arg("--version")
        .output()
    {
        Ok(out) if out.status.success() => say(&format!(
            "crun runs: {}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or("")
        )),
        Ok(out) => say(&format!(
            "crun fails: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => say(&format!("crun fails: {e}")),
    }
    match root_mount() {
        Ok(mount) => say(&format!("root {mount}")),
        Err(e) => say(&format!("error reading the root mount: {e}")),
    }
    say(&write_to_root());
    let boots = match count_boot() {
        Ok(boots) => {
            say(&format!("var boots={boots}"));
            boots
        }
        Err(e) => {
            say(&format!("error counting boots on /var: {e}"));
            0
        }
    };
    check_api(boots);
    match make_orphan() {
        Ok(pid) => {
            std::thread::sleep(REAP_WAIT);
            say(&orphan_report(pid));
        }
        Err(e) => say(&format!("error making an orphan: {e}")),
    }
    let zombies = lasting_zombies();
    if zombies.is_empty() {
        say("zombies=0");
    } else {
        let pids: Vec<String> = zombies.iter().map(i32::to_string).collect();
        say(&format!(
            "zombies={} (pids {})",
            zombies.len(),
            pids.join(" ")
        ));
    }
    report_privileges();
    say("done");
    if boots == 2 && !user_data_applied() {
        // A reboot asked for through the API, which hands it to PID 1 (not
        // on nodes given user data: their tests drive reboots themselves).
        match api("POST", "/v1/power/reboot", "") {
            Ok((code, _)) => say(&format!("api reboot {code}")),
            Err(e) => say(&format!("error talking to the API: {e}")),
        }
    }
}
