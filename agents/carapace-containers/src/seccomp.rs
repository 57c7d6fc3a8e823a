//! The default system call filter of a container (`linux.seccomp` of the
//! runtime spec), as data. Pure.
//!
//! The same effect as the default profiles of Docker and Podman: every
//! system call not named here fails with `EPERM`; the ones a process needs
//! to run (files, memory, processes, signals, time, sockets, System V and
//! POSIX IPC) are allowed; the ones that reach past the container are not,
//! unless the container holds the capability they are meant for:
//!
//! - namespaces and mounts (`unshare`, `setns`, `mount`, `umount2`, the new
//!   mount API, `clone` with a `CLONE_NEW*` flag) only with `CAP_SYS_ADMIN`;
//!   `clone` without those flags is allowed, `clone3` fails with `ENOSYS`
//!   (its flags are in memory a filter cannot read), so libc falls back to
//!   `clone`;
//! - the kernel keyring (`keyctl`, `add_key`, `request_key`), `userfaultfd`,
//!   `io_uring_*`, `kexec_*`, swap, `vm86` and the like: never;
//! - `bpf`, `perf_event_open`, `syslog`, `quotactl`, `sethostname`, … only
//!   with `CAP_SYS_ADMIN` (or `CAP_BPF`, `CAP_PERFMON`, `CAP_SYSLOG`);
//! - modules (`CAP_SYS_MODULE`), `reboot` (`CAP_SYS_BOOT`), `acct`
//!   (`CAP_SYS_PACCT`), clock setting (`CAP_SYS_TIME`), `iopl`/`ioperm`
//!   (`CAP_SYS_RAWIO`), `vhangup` (`CAP_SYS_TTY_CONFIG`), NUMA policy
//!   (`CAP_SYS_NICE`), `open_by_handle_at` (`CAP_DAC_READ_SEARCH`), `kcmp`,
//!   `pidfd_getfd` and `process_madvise` (`CAP_SYS_PTRACE`), `chroot`
//!   (`CAP_SYS_CHROOT`, in the default set);
//! - `ptrace` and `process_vm_readv`/`writev` are allowed: since Linux 4.8 a
//!   traced process cannot use them to get around the filter, and the
//!   container's PID namespace limits them to its own processes;
//! - `socket` for every family but `AF_VSOCK` (the hypervisor's channel);
//! - `personality` only with the values programs use (Linux, 32-bit
//!   Linux, `UNAME26`, and the query `0xffffffff`).
//!
//! The capability conditions are decided here, from the container's
//! capability set, so the runtime gets plain rules. Architectures: x86_64
//! with its 32-bit (x86) and x32 ABIs, so a 32-bit binary meets the same
//! rules (the node is x86_64 only).
//!
//! Names are the ones the libseccomp of Debian bookworm (2.5.4-1+deb12u1,
//! which crun 1.8 uses; its table reaches `futex_requeue`, Linux 6.7) knows:
//! crun skips a name it cannot resolve with a warning in its log, which the
//! agent would take for the reason a failed run failed. System calls newer
//! than that table (`statmount`, `listmount`, `mseal`, …) therefore fail
//! with `EPERM`, as in Docker's profile of the same age.

use serde_json::{json, Value};

/// `errno` of every system call the filter does not allow: `EPERM`.
pub const DEFAULT_ERRNO: u32 = 1;

/// `ENOSYS`: what `clone3` returns, so that libc uses `clone`.
pub const ENOSYS: u32 = 38;

/// The ABIs the filter covers.
pub const ARCHITECTURES: [&str; 3] = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"];

/// Every `CLONE_NEW*` flag `clone` takes in its first argument: cgroup,
/// mount, UTS, IPC, user, PID and network namespaces.
pub const CLONE_NAMESPACE_FLAGS: u64 =
    0x0200_0000 | 0x0002_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

/// `AF_VSOCK`, the one socket family refused.
pub const AF_VSOCK: u64 = 40;

/// The `personality` values allowed: `PER_LINUX`, `PER_LINUX32`,
/// `UNAME26`, `UNAME26 | PER_LINUX32`, and `0xffffffff` (query only).
pub const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Files, directories, links, attributes and their descriptors.
const FILES: &[&str] = &[
    "_llseek",
    "access",
    "cachestat",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "close",
    "close_range",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futimesat",
    "getcwd",
    "getdents",
    "getdents64",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    // Device nodes still need CAP_MKNOD; FIFOs and sockets do not.
    "mknod",
    "mknodat",
    "mkdir",
    "mkdirat",
    "name_to_handle_at",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "readahead",
    "readlink",
    "readlinkat",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "rmdir",
    "sendfile",
    "sendfile64",
    "setxattr",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "tee",
    "truncate",
    "truncate64",
    "umask",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vmsplice",
];

/// Reading, writing, waiting on descriptors, asynchronous I/O.
const IO: &[&str] = &[
    "_newselect",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "poll",
    "ppoll",
    "ppoll_time64",
    "pread64",
    "preadv",
    "preadv2",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readv",
    "select",
    "write",
    "writev",
];

/// Address space.
const MEMORY: &[&str] = &[
    "brk",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mremap",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "remap_file_pages",
];

/// Processes and threads: running, waiting, scheduling, limits, identity.
const PROCESSES: &[&str] = &[
    "arch_prctl",
    "capget",
    "capset",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "fork",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "gettid",
    "getuid",
    "getuid32",
    "ioprio_get",
    "ioprio_set",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "modify_ldt",
    "pidfd_open",
    "pidfd_send_signal",
    "prctl",
    "prlimit64",
    "process_mrelease",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "restart_syscall",
    "rseq",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setuid",
    "setuid32",
    "sysinfo",
    "times",
    "ugetrlimit",
    "uname",
    "vfork",
    "wait4",
    "waitid",
    "waitpid",
];

/// Signals, timers, clocks (reading them; `adjtimex` and `clock_adjtime`
/// change nothing without `CAP_SYS_TIME`, which the kernel checks), futexes.
const SIGNALS_AND_TIME: &[&str] = &[
    "adjtimex",
    "alarm",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "getitimer",
    "gettimeofday",
    "kill",
    "nanosleep",
    "pause",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "setitimer",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "tkill",
];

/// Sockets (`socket` itself has its own rule) and IPC.
const SOCKETS_AND_IPC: &[&str] = &[
    "accept",
    "accept4",
    "bind",
    "connect",
    "getpeername",
    "getsockname",
    "getsockopt",
    "ipc",
    "listen",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "pipe",
    "pipe2",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setsockopt",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "socketcall",
    "socketpair",
];

/// What a capability opens, beyond the groups above.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "finit_module", "init_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &["kcmp", "pidfd_getfd", "process_madvise"],
    ),
    ("CAP_SYS_RAWIO", &["ioperm", "iopl"]),
    (
        "CAP_SYS_TIME",
        &["clock_settime", "clock_settime64", "settimeofday", "stime"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
];

/// The system calls allowed whatever the capabilities, without conditions
/// on their arguments.
pub fn always_allowed() -> impl Iterator<Item = &'static str> {
    [
        FILES,
        IO,
        MEMORY,
        PROCESSES,
        SIGNALS_AND_TIME,
        SOCKETS_AND_IPC,
    ]
    .into_iter()
    .flatten()
    .copied()
}

/// The system calls `capabilities` (the container's set, `CAP_…` names)
/// allow beyond [`always_allowed`], sorted, each once.
pub fn allowed_by(capabilities: &[&str]) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = BY_CAPABILITY
        .iter()
        .filter(|(cap, _)| capabilities.contains(cap))
        .flat_map(|(_, names)| names.iter().copied())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn rule(names: &[&str], action: &str) -> Value {
    json!({ "names": names, "action": action })
}

/// `linux.seccomp` for a container with `capabilities` (`CAP_…` names).
pub fn profile(capabilities: &[&str]) -> Value {
    let sys_admin = capabilities.contains(&"CAP_SYS_ADMIN");
    let mut always: Vec<&str> = always_allowed().collect();
    always.sort_unstable();
    let mut syscalls = vec![rule(&always, "SCMP_ACT_ALLOW")];
    syscalls.push(json!({
        "names": ["socket"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{ "index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE" }],
    }));
    for value in PERSONALITIES {
        // One rule each: conditions within a rule must all hold.
        syscalls.push(json!({
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": value, "op": "SCMP_CMP_EQ" }],
        }));
    }
    if !sys_admin {
        syscalls.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{
                "index": 0,
                "value": CLONE_NAMESPACE_FLAGS,
                "valueTwo": 0,
                "op": "SCMP_CMP_MASKED_EQ",
            }],
        }));
        syscalls.push(json!({
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
        }));
    }
    let extra = allowed_by(capabilities);
    if !extra.is_empty() {
        syscalls.push(rule(&extra, "SCMP_ACT_ALLOW"));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": DEFAULT_ERRNO,
        "architectures": ARCHITECTURES,
        "syscalls": syscalls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use carapace_model::containers::DEFAULT_CAPABILITIES;
    use std::collections::BTreeSet;

    fn names_of(profile: &Value) -> Vec<(String, &Value)> {
        profile["syscalls"]
            .as_array()
            .expect("syscalls")
            .iter()
            .flat_map(|r| {
                r["names"]
                    .as_array()
                    .expect("names")
                    .iter()
                    .map(move |n| (n.as_str().expect("name").to_string(), r))
            })
            .collect()
    }

    /// The rules that name `syscall`.
    fn rules_for<'a>(profile: &'a Value, syscall: &str) -> Vec<&'a Value> {
        names_of(profile)
            .into_iter()
            .filter(|(n, _)| n == syscall)
            .map(|(_, r)| r)
            .collect()
    }

    fn allowed_plainly(profile: &Value, syscall: &str) -> bool {
        rules_for(profile, syscall)
            .iter()
            .any(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
    }

    fn default_profile() -> Value {
        profile(&DEFAULT_CAPABILITIES)
    }

    #[test]
    fn everything_not_named_fails_with_eperm_on_every_x86_abi() {
        let p = default_profile();
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], 1);
        assert_eq!(
            p["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
    }

    #[test]
    fn what_every_program_needs_is_allowed() {
        let p = default_profile();
        for syscall in [
            "read",
            "write",
            "openat",
            "close",
            "execve",
            "exit_group",
            "mmap",
            "brk",
            "futex",
            "rt_sigaction",
            "wait4",
            "fork",
            "getpid",
            "clock_gettime",
            "epoll_wait",
            "connect",
            "accept4",
            "setuid",
            "chown",
            "mknodat",
            "arch_prctl",
            "ptrace",
        ] {
            assert!(allowed_plainly(&p, syscall), "{syscall} is allowed");
        }
    }

    #[test]
    fn namespaces_keys_and_mounts_are_refused_by_default() {
        let p = default_profile();
        for syscall in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "move_mount",
            "open_tree",
            "fsopen",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "io_uring_setup",
            "kexec_load",
            "init_module",
            "reboot",
            "swapon",
            "settimeofday",
            "syslog",
            "open_by_handle_at",
            "iopl",
            "sethostname",
            "pivot_root",
        ] {
            assert!(
                rules_for(&p, syscall).is_empty(),
                "{syscall} is not in any rule: it fails with EPERM"
            );
        }
    }

    #[test]
    fn clone_is_allowed_only_without_namespace_flags_and_clone3_says_enosys() {
        let p = default_profile();
        let clone = rules_for(&p, "clone");
        assert_eq!(clone.len(), 1, "{clone:?}");
        assert_eq!(clone[0]["action"], "SCMP_ACT_ALLOW");
        assert_eq!(
            clone[0]["args"],
            json!([{ "index": 0, "value": 0x7E02_0000_u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ" }])
        );
        let clone3 = rules_for(&p, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3[0]["errnoRet"], 38);
    }

    #[test]
    fn socket_refuses_only_vsock_and_personality_only_known_values() {
        let p = default_profile();
        let socket = rules_for(&p, "socket");
        assert_eq!(socket.len(), 1);
        assert_eq!(
            socket[0]["args"],
            json!([{ "index": 0, "value": 40, "op": "SCMP_CMP_NE" }])
        );
        let personality = rules_for(&p, "personality");
        let values: Vec<u64> = personality
            .iter()
            .map(|r| {
                assert_eq!(r["args"][0]["op"], "SCMP_CMP_EQ");
                r["args"][0]["value"].as_u64().expect("value")
            })
            .collect();
        assert_eq!(values, [0, 8, 0x20000, 0x20008, 0xffff_ffff]);
    }

    #[test]
    fn sys_admin_opens_namespaces_and_mounts_like_docker() {
        let mut caps = DEFAULT_CAPABILITIES.to_vec();
        caps.push("CAP_SYS_ADMIN");
        let p = profile(&caps);
        for syscall in [
            "unshare", "setns", "mount", "umount2", "clone", "clone3", "bpf",
        ] {
            assert!(allowed_plainly(&p, syscall), "{syscall}");
        }
        assert_eq!(rules_for(&p, "clone").len(), 1, "no masked rule beside");
        assert!(rules_for(&p, "keyctl").is_empty(), "the keyring stays shut");
        let ptrace = profile(&["CAP_SYS_PTRACE", "CAP_SYS_TIME"]);
        for syscall in ["kcmp", "pidfd_getfd", "settimeofday", "clock_settime"] {
            assert!(allowed_plainly(&ptrace, syscall), "{syscall}");
        }
        assert!(
            !allowed_plainly(&ptrace, "chroot"),
            "without CAP_SYS_CHROOT"
        );
        assert!(allowed_plainly(&default_profile(), "chroot"));
    }

    #[test]
    fn no_name_is_listed_twice() {
        for caps in [
            DEFAULT_CAPABILITIES.to_vec(),
            carapace_model::containers::KNOWN_CAPABILITIES.to_vec(),
        ] {
            let p = profile(&caps);
            let plain: Vec<String> = names_of(&p)
                .into_iter()
                .filter(|(_, r)| r.get("args").is_none())
                .map(|(n, _)| n)
                .collect();
            let unique: BTreeSet<&String> = plain.iter().collect();
            assert_eq!(unique.len(), plain.len(), "a name in two plain rules");
        }
        let all: Vec<&str> = always_allowed().collect();
        let unique: BTreeSet<&str> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "a name in two groups");
    }

    #[test]
    fn the_profile_is_a_valid_oci_seccomp_section() {
        let parsed: oci_spec::runtime::LinuxSeccomp =
            serde_json::from_value(default_profile()).expect("oci-spec takes it");
        assert_eq!(parsed.architectures().as_ref().map(Vec::len), Some(3));
    }
}
