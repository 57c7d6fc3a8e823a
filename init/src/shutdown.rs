//! The end of an orderly shutdown, after the services were stopped: end every
//! other process, sync, unmount /var cleanly (or at least make it read-only),
//! then power off or reboot.

use crate::console::say;
use crate::power::{final_action, PowerAction};
use rustix::process::{Pid, Signal, WaitOptions};
use std::time::{Duration, Instant};

/// The parent pid and whether the process is a kernel thread, from the text of
/// /proc/<pid>/stat (`pid (comm) state ppid …`; comm may hold spaces and parens).
pub fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut words = after.split_whitespace();
    let state = words.next()?.chars().next()?;
    let ppid = words.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether a process may be signalled at shutdown: not PID 1, not kthreadd
/// (2) and not one of its children (kernel threads).
pub fn is_user_process(pid: i32, ppid: i32) -> bool {
    pid > 2 && ppid != 2
}

/// Every user process other than PID 1 that has not yet exited.
pub fn other_processes() -> Vec<Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (state, ppid) = parse_stat(&stat)?;
            (is_user_process(pid, ppid) && state != 'Z').then_some(pid)
        })
        .filter_map(Pid::from_raw)
        .collect()
}

fn reap_all() {
    while let Ok(Some(_)) = rustix::process::wait(WaitOptions::NOHANG) {}
}

/// Sends `sig` to every other process, then reaps until they are gone or
/// `wait` has passed; returns how many were left.
pub fn signal_everything(sig: Signal, wait: Duration) -> usize {
    for pid in other_processes() {
        let _ = rustix::process::kill_process(pid, sig);
    }
    let deadline = Instant::now() + wait;
    loop {
        reap_all();
        let left = other_processes().len();
        if left == 0 || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ends every remaining process, syncs, unmounts /var and powers off or reboots.
pub fn finish(action: PowerAction) -> ! {
    let left = signal_everything(Signal::TERM, Duration::from_secs(2));
    if left > 0 {
        say(&format!("{left} processes ignored SIGTERM: killing them"));
        signal_everything(Signal::KILL, Duration::from_secs(1));
    }
    rustix::fs::sync();
    match rustix::mount::unmount("/var", rustix::mount::UnmountFlags::empty()) {
        Ok(()) => say("/var unmounted cleanly"),
        Err(e) => {
            let ro = rustix::mount::mount_remount("/var", rustix::mount::MountFlags::RDONLY, "");
            match ro {
                Ok(()) => say(&format!("cannot unmount /var ({e}): remounted it read-only")),
                Err(e2) => say(&format!("cannot unmount /var ({e}) nor make it read-only ({e2})")),
            }
        }
    }
    say(&format!("{}", action.as_str()));
    final_action(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_state_and_parent_even_with_odd_names() {
        assert_eq!(parse_stat("42 (sh) S 1 42 42 0"), Some(('S', 1)));
        assert_eq!(parse_stat("43 (a) b) (c) Z 7 0"), Some(('Z', 7)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn kernel_threads_and_init_are_spared() {
        assert!(!is_user_process(1, 0));
        assert!(!is_user_process(2, 0));
        assert!(!is_user_process(57, 2));
        assert!(is_user_process(300, 1));
        assert!(is_user_process(301, 300));
    }

    #[test]
    fn this_test_process_is_listed() {
        let me = rustix::process::getpid();
        assert!(other_processes().contains(&me) || me.is_init());
    }
}
