//! Guest-side probe of the test image: reports, one `checker: …` line each,
//! what the host cannot see from outside the node — how / is mounted, whether
//! it can be written, a boot counter kept on /var, and whether PID 1 reaps an
//! orphaned grandchild. Ends with `checker: done`.

use std::io::Write;
use std::time::Duration;

fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "checker: {msg}");
    let _ = out.flush();
}

/// The mount source, type and options of `/` from /proc/self/mountinfo.
fn root_mount() -> Result<String, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    // Fields: id parent major:minor root mountpoint options ... - fstype source superopts
    let line = text
        .lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some("/"))
        .ok_or("no mount on /")?;
    let (left, right) = line.split_once(" - ").ok_or("malformed mountinfo")?;
    let opts = left.split_whitespace().nth(5).unwrap_or("?");
    let mut r = right.split_whitespace();
    let fstype = r.next().unwrap_or("?");
    let source = r.next().unwrap_or("?");
    Ok(format!("{source} {fstype} {opts}"))
}

fn write_root() -> String {
    match std::fs::File::create("/checker-was-here") {
        Ok(_) => "write to / SUCCEEDED".into(),
        Err(e) => format!("write to / failed: {e}"),
    }
}

fn var_boots() -> Result<u64, String> {
    let dir = "/var/lib/carapace-test";
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
    let path = format!("{dir}/boots");
    let n: u64 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
        + 1;
    let tmp = format!("{path}.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("create {tmp}: {e}"))?;
    f.write_all(format!("{n}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("rename: {e}"))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| e.to_string())?;
    Ok(n)
}

fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().next()?.chars().next()
}

/// Forks a child that forks a grandchild and exits at once: the grandchild is
/// reparented to PID 1 and exits a little later. Returns the grandchild's pid.
fn make_orphan() -> Result<i32, String> {
    // The child reports the grandchild's pid through a pipe.
    let (r, w) = rustix::pipe::pipe().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(exe)
        .arg("--fork-grandchild")
        .stdout(std::process::Stdio::from(w))
        .spawn()
        .map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("child failed: {status}"));
    }
    let mut text = String::new();
    use std::io::Read;
    std::fs::File::from(r)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    text.trim().parse().map_err(|_| format!("bad pid {text:?}"))
}

fn zombies() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&pid| proc_state(pid) == Some('Z'))
                .collect()
        })
        .unwrap_or_default()
}

/// Zombies that stay zombies for half a second: a process that just ended
/// (a crashing service, say) is a zombie for an instant before PID 1 reaps it.
fn lasting_zombies() -> usize {
    let first = zombies();
    std::thread::sleep(Duration::from_millis(500));
    let second = zombies();
    first.iter().filter(|p| second.contains(p)).count()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--fork-grandchild") {
        // The middle generation: start the grandchild, print its pid, exit.
        let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
        match std::process::Command::new(exe)
            .arg("--grandchild")
            .stdout(std::process::Stdio::null())
            .spawn()
        {
            Ok(gc) => {
                println!("{}", gc.id());
                std::process::exit(0);
            }
            Err(_) => std::process::exit(1),
        }
    }
    if args.get(1).map(String::as_str) == Some("--grandchild") {
        std::thread::sleep(Duration::from_millis(300));
        std::process::exit(0);
    }

    match root_mount() {
        Ok(m) => say(&format!("root {m}")),
        Err(e) => say(&format!("error reading the root mount: {e}")),
    }
    say(&write_root());
    match var_boots() {
        Ok(n) => say(&format!("var boots={n}")),
        Err(e) => say(&format!("error keeping the boot count on /var: {e}")),
    }
    match make_orphan() {
        Ok(pid) => {
            std::thread::sleep(Duration::from_millis(1500));
            match proc_state(pid) {
                None => say(&format!("orphan {pid} reaped")),
                Some('Z') => say(&format!("orphan {pid} is a zombie")),
                Some(s) => say(&format!("orphan {pid} still running (state {s})")),
            }
        }
        Err(e) => say(&format!("error making an orphan: {e}")),
    }
    say(&format!("zombies={}", lasting_zombies()));
    say("done");
}
