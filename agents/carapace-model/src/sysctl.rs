//! The kernel sysctls a node lets its API set: an allow list, each key with
//! the values it accepts. Anything else is refused, so the API cannot switch
//! off a protection the image relies on.

/// What values a sysctl accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepts {
    /// An integer in an inclusive range.
    Range(i64, i64),
    /// Two integers `low high` with low <= high, both in the range.
    Pair(i64, i64),
}

/// The allow list: key, accepted values.
pub const ALLOWED: &[(&str, Accepts)] = &[
    ("net.ipv4.ip_forward", Accepts::Range(0, 1)),
    ("net.ipv6.conf.all.forwarding", Accepts::Range(0, 1)),
    ("net.core.somaxconn", Accepts::Range(128, 65535)),
    ("net.ipv4.tcp_keepalive_time", Accepts::Range(1, 32767)),
    ("net.ipv4.ip_local_port_range", Accepts::Pair(1024, 65535)),
    ("vm.max_map_count", Accepts::Range(65530, 2_147_483_647)),
    ("vm.swappiness", Accepts::Range(0, 100)),
    (
        "fs.inotify.max_user_watches",
        Accepts::Range(8192, 4_194_304),
    ),
    ("fs.inotify.max_user_instances", Accepts::Range(128, 65536)),
    ("kernel.pid_max", Accepts::Range(32768, 4_194_304)),
];

/// Checks one sysctl; the error message says what is accepted.
pub fn check(key: &str, value: &str) -> Result<(), String> {
    let Some((_, accepts)) = ALLOWED.iter().find(|(k, _)| *k == key) else {
        let names: Vec<&str> = ALLOWED.iter().map(|(k, _)| *k).collect();
        return Err(format!(
            "{key} is not an allowed sysctl (allowed: {})",
            names.join(", ")
        ));
    };
    let int = |s: &str| s.trim().parse::<i64>().ok();
    match *accepts {
        Accepts::Range(lo, hi) => match int(value) {
            Some(v) if (lo..=hi).contains(&v) => Ok(()),
            _ => Err(format!("{value:?} is not an integer from {lo} to {hi}")),
        },
        Accepts::Pair(lo, hi) => {
            let parts: Vec<&str> = value.split_whitespace().collect();
            match parts.as_slice() {
                [a, b] => match (int(a), int(b)) {
                    (Some(a), Some(b)) if lo <= a && a <= b && b <= hi => Ok(()),
                    _ => Err(format!(
                        "{value:?} is not two integers `low high` from {lo} to {hi}"
                    )),
                },
                _ => Err(format!(
                    "{value:?} is not two integers `low high` from {lo} to {hi}"
                )),
            }
        }
    }
}

/// The /proc/sys path of a key (dots become slashes).
pub fn proc_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_keys_accept_their_ranges_only() {
        assert!(check("net.ipv4.ip_forward", "1").is_ok());
        assert!(check("net.ipv4.ip_forward", "2").is_err());
        assert!(check("vm.swappiness", "abc").is_err());
        assert!(check("net.ipv4.ip_local_port_range", "32768 60999").is_ok());
        assert!(check("net.ipv4.ip_local_port_range", "60999 32768").is_err());
        assert!(check("net.ipv4.ip_local_port_range", "1 2 3").is_err());
    }

    #[test]
    fn other_keys_are_refused_with_the_list() {
        let err = check("kernel.modules_disabled", "0").expect_err("not allowed");
        assert!(
            err.contains("not an allowed sysctl") && err.contains("vm.swappiness"),
            "{err}"
        );
    }

    #[test]
    fn proc_paths() {
        assert_eq!(
            proc_path("net.ipv4.ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
    }
}
