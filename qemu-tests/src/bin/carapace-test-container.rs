//! carapace-test-container: the program inside the test container image
//! (`cargo xtask test` packs it as an OCI image and pushes it to a registry
//! on the host). Its first argument says what to do:
//!
//! - `serve <port> <word>` (the default, port 8080, word `pong`): prints
//!   `hello from the test container (<word>)`, then answers every TCP
//!   connection on 0.0.0.0:<port> with `<word>\n` and prints `served <n>`;
//!   a client whose first line is `crash` gets `crashing` and the server
//!   dies at once with status 3 (it cannot kill itself: as the first process
//!   of its PID namespace it is immune to its own signals);
//! - `eat <MiB>`: prints `eating <MiB> MiB`, then touches that much memory a
//!   MiB at a time, printing `ate <n> MiB` — under a smaller memory.max the
//!   kernel kills it;
//! - `exit <code>`: prints `exiting with <code>` and exits with it;
//! - `probe`: tries what a confined container must not do and prints one
//!   line each, `probe <what>: allowed` or `probe <what>: refused (<ERRNO>)`,
//!   for `unshare(CLONE_NEWUSER)`, `keyctl` (asking for the session
//!   keyring's id), `raw socket` (AF_INET, SOCK_RAW, IPPROTO_ICMP), `mknod`
//!   (/dev/null's numbers, in /tmp) and `mount` (a tmpfs on /tmp/probe-mnt);
//!   then `probe done`, and sleeps;
//! - `forkbomb`: starts copies of itself that sleep (`sleep`) until the
//!   kernel refuses one, then prints `forkbomb stopped at <n> processes:
//!   <error>` (`n` counting itself) and sleeps;
//! - `fill <dir>`: writes 1 MiB chunks to files `fill-<k>` (64 MiB each) in
//!   `<dir>` until a write fails, prints `filled <n> MiB: <error>` and
//!   sleeps;
//! - `userns`: reports the user namespace it runs in, one line each:
//!   `userns uid_map: <its /proc/self/uid_map, first line, spaces
//!   collapsed>`, `userns uid: <its uid>`, then creates `/userns-written`
//!   (in its writable layer) and prints `userns owner: <the file's uid as
//!   it sees it>` (or `userns owner: error <why>`); then `userns done`, and
//!   sleeps;
//! - `sleep`: sleeps.

use std::io::Write;

fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{msg}");
    let _ = out.flush();
}

fn serve(port: u16, word: &str) -> std::process::ExitCode {
    say(&format!("hello from the test container ({word})"));
    let listener = match std::net::TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            say(&format!("cannot listen on port {port}: {e}"));
            return std::process::ExitCode::from(2);
        }
    };
    say(&format!("listening on port {port}"));
    let mut served = 0u64;
    for mut s in listener.incoming().flatten() {
        let mut first = String::new();
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        if let Ok(clone) = s.try_clone() {
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(clone), &mut first);
        }
        if first.trim() == "crash" {
            let _ = s.write_all(b"crashing\n");
            let _ = s.shutdown(std::net::Shutdown::Both);
            say("crashing with status 3");
            std::process::exit(3);
        }
        let _ = s.write_all(format!("{word}\n").as_bytes());
        served += 1;
        say(&format!("served {served}"));
    }
    std::process::ExitCode::SUCCESS
}

fn eat(mib: usize) -> std::process::ExitCode {
    say(&format!("eating {mib} MiB"));
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    for n in 1..=mib {
        // Written, so the pages are really in use.
        hoard.push(vec![n as u8; 1 << 20]);
        if n % 8 == 0 {
            say(&format!("ate {n} MiB"));
        }
    }
    say(&format!("ate all {} MiB", hoard.len()));
    std::process::ExitCode::SUCCESS
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// The name of an errno the probes may meet.
fn errno_name(e: rustix::io::Errno) -> String {
    use rustix::io::Errno;
    let known = [
        (Errno::PERM, "EPERM"),
        (Errno::ACCESS, "EACCES"),
        (Errno::NOSYS, "ENOSYS"),
        (Errno::INVAL, "EINVAL"),
        (Errno::NOENT, "ENOENT"),
        (Errno::EXIST, "EEXIST"),
        (Errno::NOKEY, "ENOKEY"),
        (Errno::AFNOSUPPORT, "EAFNOSUPPORT"),
        (Errno::PROTONOSUPPORT, "EPROTONOSUPPORT"),
        (Errno::NOSPC, "ENOSPC"),
        (Errno::USERS, "EUSERS"),
        (Errno::AGAIN, "EAGAIN"),
    ];
    known
        .iter()
        .find(|(k, _)| *k == e)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| format!("errno {}", e.raw_os_error()))
}

fn outcome<T>(r: rustix::io::Result<T>) -> String {
    match r {
        Ok(_) => "allowed".into(),
        Err(e) => format!("refused ({})", errno_name(e)),
    }
}

/// `keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)`: rustix
/// has no keyctl, and this crate links no libc binding.
#[cfg(target_arch = "x86_64")]
fn keyctl_session_keyring_id() -> rustix::io::Result<i64> {
    const SYS_KEYCTL: i64 = 250;
    const KEYCTL_GET_KEYRING_ID: i64 = 0;
    const KEY_SPEC_SESSION_KEYRING: i64 = -3;
    let ret: i64;
    // SAFETY: keyctl(KEYCTL_GET_KEYRING_ID, …) takes no pointers and writes
    // no memory of this process; the syscall instruction clobbers only rcx
    // and r11 (declared) and returns in rax.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_KEYCTL => ret,
            in("rdi") KEYCTL_GET_KEYRING_ID,
            in("rsi") KEY_SPEC_SESSION_KEYRING,
            in("rdx") 0i64,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if (-4095..0).contains(&ret) {
        // In range by the check: a small positive errno.
        Err(rustix::io::Errno::from_raw_os_error((-ret) as i32))
    } else {
        Ok(ret)
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn keyctl_session_keyring_id() -> rustix::io::Result<i64> {
    Err(rustix::io::Errno::NOSYS)
}

fn probe() -> ! {
    use rustix::fs::{FileType, Mode, CWD};
    let _ = std::fs::create_dir_all("/tmp/probe-mnt");
    let keyctl = outcome(keyctl_session_keyring_id());
    let raw = outcome(rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::RAW,
        Some(rustix::net::ipproto::ICMP),
    ));
    let node = "/tmp/probe-null";
    let _ = std::fs::remove_file(node);
    let mknod = outcome(rustix::fs::mknodat(
        CWD,
        node,
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(1, 3),
    ));
    let _ = std::fs::remove_file(node);
    let mount = rustix::mount::mount(
        "tmpfs",
        "/tmp/probe-mnt",
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        c"size=1m",
    );
    if mount.is_ok() {
        let _ = rustix::mount::unmount("/tmp/probe-mnt", rustix::mount::UnmountFlags::empty());
    }
    let mount = outcome(mount);
    // Last: if it works, this process is in a user namespace of its own,
    // where the other probes would mean something else.
    // SAFETY: the process has one thread (nothing here spawns any), so no
    // other thread shares what unshare changes.
    let unshare =
        outcome(unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWUSER) });
    say(&format!("probe unshare(CLONE_NEWUSER): {unshare}"));
    say(&format!("probe keyctl: {keyctl}"));
    say(&format!("probe raw socket: {raw}"));
    say(&format!("probe mknod: {mknod}"));
    say(&format!("probe mount: {mount}"));
    say("probe done");
    sleep_forever()
}

fn forkbomb() -> ! {
    let mut children = Vec::new();
    let error = loop {
        match std::process::Command::new("/proc/self/exe")
            .arg("sleep")
            .stdin(std::process::Stdio::null())
            .spawn()
        {
            Ok(child) => children.push(child),
            Err(e) => break e,
        }
        if children.len() > 1_000_000 {
            break std::io::Error::other("a million processes and no limit");
        }
    };
    say(&format!(
        "forkbomb stopped at {} processes: {error}",
        children.len() + 1
    ));
    sleep_forever()
}

fn fill(dir: &str) -> ! {
    use std::io::Write as _;
    const FILE_MIB: u64 = 64;
    let chunk = vec![0x5au8; 1 << 20];
    let mut written = 0u64;
    // The directory may be new (in the writable layer).
    if let Err(e) = std::fs::create_dir_all(dir) {
        say(&format!("filled 0 MiB: cannot create {dir}: {e}"));
        sleep_forever()
    }
    let error = 'fill: loop {
        let path = std::path::Path::new(dir).join(format!("fill-{}", written / FILE_MIB));
        let mut file = match std::fs::File::create(&path) {
            Ok(f) => f,
            Err(e) => break format!("cannot create {}: {e}", path.display()),
        };
        for _ in 0..FILE_MIB {
            if let Err(e) = file.write_all(&chunk) {
                break 'fill format!("write {}: {e}", path.display());
            }
            written += 1;
        }
        if let Err(e) = file.sync_all() {
            break format!("sync {}: {e}", path.display());
        }
    };
    say(&format!("filled {written} MiB: {error}"));
    sleep_forever()
}

fn userns() -> ! {
    use std::os::unix::fs::MetadataExt;
    let map = std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| {
            m.lines()
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|e| format!("error {e}"));
    say(&format!("userns uid_map: {map}"));
    say(&format!(
        "userns uid: {}",
        rustix::process::getuid().as_raw()
    ));
    let path = "/userns-written";
    let owner = std::fs::write(path, "written inside\n")
        .and_then(|()| std::fs::metadata(path))
        .map(|m| m.uid().to_string())
        .unwrap_or_else(|e| format!("error {e}"));
    say(&format!("userns owner: {owner}"));
    say("userns done");
    sleep_forever()
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => serve(8080, "pong"),
        Some("serve") => {
            let port = args.get(1).and_then(|p| p.parse().ok()).unwrap_or(8080);
            let word = args.get(2).map(String::as_str).unwrap_or("pong");
            serve(port, word)
        }
        Some("eat") => eat(args.get(1).and_then(|m| m.parse().ok()).unwrap_or(256)),
        Some("probe") => probe(),
        Some("forkbomb") => forkbomb(),
        Some("fill") => fill(args.get(1).map(String::as_str).unwrap_or("/data")),
        Some("sleep") => sleep_forever(),
        Some("userns") => userns(),
        Some("exit") => {
            let code: u8 = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(1);
            say(&format!("exiting with {code}"));
            std::process::ExitCode::from(code)
        }
        Some(other) => {
            say(&format!("unknown command {other:?}"));
            std::process::ExitCode::from(2)
        }
    }
}
