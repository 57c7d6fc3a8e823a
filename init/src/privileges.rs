//! What a service may do: its capabilities, its user and group, and how
//! readily the OOM killer takes it. The manifest declares them
//! ([`crate::manifest::Service`]); [`Privileges::of`] turns a service into
//! plain values before the fork, and [`Privileges::apply`] puts them in force
//! in the child between fork and exec, with system calls only: no
//! allocation, no lock, nothing that is not async-signal-safe.
//!
//! In the child, in this order:
//! 1. `oom_score_adj` is written (lowering it needs CAP_SYS_RESOURCE, which
//!    the child still has from PID 1; PID 1 itself runs at -1000 and every
//!    child would inherit that, so every service gets its own value, 0
//!    unless the manifest says otherwise);
//! 2. `PR_SET_NO_NEW_PRIVS` (unless the manifest turns it off, as for the
//!    container agent, whose containers decide it per container): no exec
//!    of the service or of its children can gain anything (set-user-ID
//!    files and file capabilities are ignored);
//! 3. every capability not listed leaves the bounding set
//!    (`PR_CAPBSET_DROP`, which needs CAP_SETPCAP, so it comes before the
//!    capabilities are reduced): the bounding set is the ceiling that no
//!    process of the service can ever raise again;
//! 4. with a `user`: `PR_SET_KEEPCAPS`, no supplementary groups, then the
//!    group and user ids (real, effective, saved), so the permitted set
//!    survives the change of uid (the kernel still empties the effective
//!    and ambient sets at that moment);
//! 5. permitted, effective and inheritable become exactly the list
//!    (`capset`), and each listed capability is raised in the ambient set.
//!
//! What exec then does (security/commoncap.c, no file capabilities on our
//! binaries): for a process with uid 0 and `SECBIT_NOROOT` unset, the new
//! permitted set is the bounding set plus the inheritable set plus the
//! ambient set, and the effective set equals it — after steps 3 and 5 each
//! of them is the list, so a root service has exactly its list. For any
//! other uid the new permitted and effective sets are the ambient set, which
//! is the list again; that is what the ambient set is for, and why
//! `PR_SET_KEEPCAPS` is needed only for the moment of the uid change (exec
//! clears it). Securebits (`SECBIT_NOROOT`, `SECBIT_KEEP_CAPS`, their
//! locks) are therefore not set: with the bounding set equal to the list,
//! `SECBIT_NOROOT` could take nothing more away from a root exec, and
//! locking bits would need CAP_SETPCAP, which most services do not keep.
//! Note that uid 0 without capabilities still owns what root owns (files,
//! block device nodes): only a `user` takes that away.
//!
//! Any step failing makes the spawn fail with that step's error number, as
//! an exec failure does: the supervisor reports `cannot start service …`
//! and counts it as status 127. PID 1 never panics here.

use rustix::io::Errno;
use rustix::thread::CapabilitySet;
use std::fmt;

/// The capabilities the kernel knows, by number, up to CAP_CHECKPOINT_RESTORE
/// (Linux 5.9; `/proc/sys/kernel/cap_last_cap` is 40 on our kernel).
pub const CAPABILITY_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// One capability of [`CAPABILITY_NAMES`], spelled as the kernel's headers
/// spell it (`CAP_NET_ADMIN`) in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Capability(u8);

impl Capability {
    /// The capability called `name`, if the kernel has one by that name.
    pub fn from_name(name: &str) -> Option<Capability> {
        CAPABILITY_NAMES
            .iter()
            .position(|n| *n == name)
            .and_then(|i| u8::try_from(i).ok())
            .map(Capability)
    }

    /// Every capability, in number order.
    pub fn all() -> impl Iterator<Item = Capability> {
        (0..CAPABILITY_NAMES.len()).filter_map(|i| u8::try_from(i).ok().map(Capability))
    }

    /// Its number (the bit in /proc/<pid>/status masks).
    pub fn number(self) -> u8 {
        self.0
    }

    /// Its name, `CAP_…`.
    pub fn name(self) -> &'static str {
        CAPABILITY_NAMES
            .get(usize::from(self.0))
            .copied()
            .unwrap_or("CAP_?")
    }
}

impl TryFrom<String> for Capability {
    type Error = String;
    fn try_from(name: String) -> Result<Capability, String> {
        Capability::from_name(&name).ok_or_else(|| {
            format!(
                "unknown capability {name:?} (the kernel's names, CAP_CHOWN to CAP_CHECKPOINT_RESTORE)"
            )
        })
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The mask of `capabilities`, bit n for capability n, as /proc/<pid>/status
/// shows the sets (`CapEff:\t<16 hex digits>`).
pub fn mask_of(capabilities: &[Capability]) -> u64 {
    capabilities
        .iter()
        .fold(0, |mask, c| mask | (1u64 << c.number()))
}

/// How readily the OOM killer takes a process: -1000 (never) to 1000
/// (first), `/proc/<pid>/oom_score_adj`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(try_from = "i64")]
pub struct OomScoreAdj(i16);

impl OomScoreAdj {
    pub const MIN: i16 = -1000;
    pub const MAX: i16 = 1000;
    /// PID 1's own: never taken.
    pub const NEVER: OomScoreAdj = OomScoreAdj(Self::MIN);

    pub fn value(self) -> i16 {
        self.0
    }
}

impl TryFrom<i64> for OomScoreAdj {
    type Error = String;
    fn try_from(value: i64) -> Result<OomScoreAdj, String> {
        i16::try_from(value)
            .ok()
            .filter(|v| (Self::MIN..=Self::MAX).contains(v))
            .map(OomScoreAdj)
            .ok_or_else(|| format!("oom_score_adj {value} is not from -1000 to 1000"))
    }
}

/// Where a process sets its own OOM score adjustment.
const OOM_SCORE_ADJ: &std::ffi::CStr = c"/proc/self/oom_score_adj";

/// The highest capability number the bounding-set loop tries: every bit of
/// the 64-bit masks, so that capabilities newer than our table go too.
const LAST_BIT: u8 = 63;

/// The privileges of one service, prepared before the fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    keep: u64,
    oom_score_adj: String,
    /// (uid, gid) to switch to; None stays uid 0.
    ids: Option<(u32, u32)>,
    /// Whether `PR_SET_NO_NEW_PRIVS` is set.
    no_new_privs: bool,
}

impl Privileges {
    /// What `service` asks for.
    pub fn of(service: &crate::manifest::Service) -> Privileges {
        let ids = service.user.map(|uid| (uid, service.group.unwrap_or(uid)));
        Privileges::from_parts(mask_of(&service.capabilities), service.oom_score_adj, ids)
            .with_no_new_privs(service.no_new_privs)
    }

    /// The same, with `no_new_privs` on (the default) or off.
    pub fn with_no_new_privs(self, on: bool) -> Privileges {
        Privileges {
            no_new_privs: on,
            ..self
        }
    }

    /// From a capability mask (bit n for capability n), an OOM adjustment
    /// and the ids to switch to.
    pub fn from_parts(keep: u64, oom: OomScoreAdj, ids: Option<(u32, u32)>) -> Privileges {
        Privileges {
            keep,
            oom_score_adj: oom.value().to_string(),
            ids,
            no_new_privs: true,
        }
    }

    /// The capabilities kept: bounding, permitted, effective, inheritable
    /// and ambient sets are all this mask.
    pub fn kept(&self) -> u64 {
        self.keep
    }

    /// Puts the privileges in force in the calling process. Meant for the
    /// child between fork and exec: it makes system calls only (rustix's
    /// raw ones; its `Errno` becomes an `io::Error` without allocating).
    pub fn apply(&self) -> Result<(), Errno> {
        // 1. OOM score, while CAP_SYS_RESOURCE may still lower it.
        let file = rustix::fs::open(
            OOM_SCORE_ADJ,
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let written = rustix::io::write(&file, self.oom_score_adj.as_bytes())?;
        if written != self.oom_score_adj.len() {
            return Err(Errno::IO);
        }
        drop(file);
        // 2. No exec gains anything from here on.
        if self.no_new_privs {
            rustix::thread::set_no_new_privs(true)?;
        }
        // 3. The ceiling: drop every capability not kept.
        for bit in 0..=LAST_BIT {
            if self.keep & (1u64 << bit) != 0 {
                continue;
            }
            match rustix::thread::remove_capability_from_bounding_set(
                CapabilitySet::from_bits_retain(1u64 << bit),
            ) {
                // EINVAL: not a capability this kernel has.
                Ok(()) | Err(Errno::INVAL) => {}
                Err(e) => return Err(e),
            }
        }
        // 4. Another user, keeping the permitted set across the change.
        if let Some((uid, gid)) = self.ids {
            rustix::thread::set_keep_capabilities(true)?;
            rustix::thread::set_thread_groups(&[])?;
            let gid = rustix::process::Gid::from_raw(gid);
            rustix::thread::set_thread_res_gid(gid, gid, gid)?;
            let uid = rustix::process::Uid::from_raw(uid);
            rustix::thread::set_thread_res_uid(uid, uid, uid)?;
        }
        // 5. Exactly the list, in every set, carried across exec by the
        // ambient set.
        let keep = CapabilitySet::from_bits_retain(self.keep);
        rustix::thread::set_capabilities(
            None,
            rustix::thread::CapabilitySets {
                effective: keep,
                permitted: keep,
                inheritable: keep,
            },
        )?;
        for bit in 0..=LAST_BIT {
            if self.keep & (1u64 << bit) != 0 {
                rustix::thread::configure_capability_in_ambient_set(
                    CapabilitySet::from_bits_retain(1u64 << bit),
                    true,
                )?;
            }
        }
        Ok(())
    }
}

/// Makes PID 1 itself the last thing the OOM killer would take.
pub fn protect_pid1_from_oom_killer() -> std::io::Result<()> {
    std::fs::write(
        "/proc/self/oom_score_adj",
        OomScoreAdj::NEVER.value().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    fn caps(names: &[&str]) -> Vec<Capability> {
        names
            .iter()
            .map(|n| Capability::from_name(n).expect(n))
            .collect()
    }

    #[test]
    fn capability_numbers_are_the_kernels() {
        // linux-raw-sys (through rustix) carries the kernel's own numbers.
        let kernel = [
            (CapabilitySet::CHOWN, "CAP_CHOWN"),
            (CapabilitySet::DAC_OVERRIDE, "CAP_DAC_OVERRIDE"),
            (CapabilitySet::KILL, "CAP_KILL"),
            (CapabilitySet::SETGID, "CAP_SETGID"),
            (CapabilitySet::SETUID, "CAP_SETUID"),
            (CapabilitySet::SETPCAP, "CAP_SETPCAP"),
            (CapabilitySet::LINUX_IMMUTABLE, "CAP_LINUX_IMMUTABLE"),
            (CapabilitySet::NET_BIND_SERVICE, "CAP_NET_BIND_SERVICE"),
            (CapabilitySet::NET_ADMIN, "CAP_NET_ADMIN"),
            (CapabilitySet::NET_RAW, "CAP_NET_RAW"),
            (CapabilitySet::SYS_ADMIN, "CAP_SYS_ADMIN"),
            (CapabilitySet::SYS_RESOURCE, "CAP_SYS_RESOURCE"),
            (CapabilitySet::SYS_TIME, "CAP_SYS_TIME"),
            (CapabilitySet::MKNOD, "CAP_MKNOD"),
            (CapabilitySet::SETFCAP, "CAP_SETFCAP"),
            (CapabilitySet::AUDIT_READ, "CAP_AUDIT_READ"),
            (CapabilitySet::PERFMON, "CAP_PERFMON"),
            (CapabilitySet::BPF, "CAP_BPF"),
            (CapabilitySet::CHECKPOINT_RESTORE, "CAP_CHECKPOINT_RESTORE"),
        ];
        for (set, name) in kernel {
            assert_eq!(mask_of(&caps(&[name])), set.bits(), "{name}");
        }
        let all: Vec<Capability> = Capability::all().collect();
        assert_eq!(all.len(), 41);
        assert_eq!(mask_of(&all), (1u64 << 41) - 1);
        assert!(all
            .iter()
            .all(|c| Capability::from_name(c.name()) == Some(*c)));
    }

    #[test]
    fn masks_are_what_proc_status_shows() {
        assert_eq!(mask_of(&[]), 0);
        assert_eq!(
            format!(
                "{:016x}",
                mask_of(&caps(&[
                    "CAP_NET_ADMIN",
                    "CAP_NET_BIND_SERVICE",
                    "CAP_SYS_TIME"
                ]))
            ),
            "0000000002001400"
        );
    }

    #[test]
    fn unknown_capabilities_and_out_of_range_scores_are_refused() {
        for bad in [
            "NET_ADMIN",
            "cap_net_admin",
            "CAP_NET_ADMIN ",
            "CAP_ALL",
            "",
        ] {
            let err = Capability::try_from(bad.to_string()).expect_err(bad);
            assert!(err.contains("unknown capability"), "{err}");
        }
        assert_eq!(OomScoreAdj::try_from(-1000).map(|o| o.value()), Ok(-1000));
        assert_eq!(OomScoreAdj::try_from(1000).map(|o| o.value()), Ok(1000));
        for bad in [-1001, 1001, 70_000, i64::MIN] {
            assert!(OomScoreAdj::try_from(bad).is_err(), "{bad}");
        }
    }

    /// /proc/self/status and oom_score_adj of a program started with `p`.
    fn status_under(p: &Privileges) -> std::io::Result<String> {
        let p = p.clone();
        let mut cmd = Command::new("/bin/cat");
        cmd.args(["/proc/self/status", "/proc/self/oom_score_adj"])
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: `apply` makes system calls only, on values prepared
        // before the fork: no allocation, no lock (see its doc).
        unsafe {
            cmd.pre_exec(move || p.apply().map_err(std::io::Error::from));
        }
        let out = cmd.output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn field<'a>(status: &'a str, name: &str) -> &'a str {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or("missing")
    }

    #[test]
    fn no_new_privs_stays_off_when_the_manifest_says_so() {
        let keep = mask_of(&caps(&["CAP_SETUID"]));
        let p = Privileges::from_parts(keep, OomScoreAdj::default(), None).with_no_new_privs(false);
        let status = status_under(&p).expect("cat runs");
        assert_eq!(field(&status, "NoNewPrivs"), "0", "{status}");
        assert_eq!(field(&status, "CapBnd"), format!("{keep:016x}"), "{status}");
    }

    #[test]
    fn a_root_service_execs_with_exactly_its_capabilities() {
        let keep = mask_of(&caps(&["CAP_NET_ADMIN", "CAP_SYS_TIME"]));
        let oom = OomScoreAdj::try_from(500).expect("in range");
        let status = status_under(&Privileges::from_parts(keep, oom, None)).expect("cat runs");
        let hex = format!("{keep:016x}");
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(field(&status, set), hex, "{set}:\n{status}");
        }
        assert_eq!(field(&status, "NoNewPrivs"), "1", "{status}");
        assert!(field(&status, "Uid").starts_with("0\t0\t0"), "{status}");
        assert_eq!(status.lines().last(), Some("500"), "{status}");
    }

    #[test]
    fn a_service_without_capabilities_execs_with_none() {
        let status =
            status_under(&Privileges::from_parts(0, OomScoreAdj::default(), None)).expect("cat");
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(field(&status, set), "0000000000000000", "{set}:\n{status}");
        }
        assert_eq!(status.lines().last(), Some("0"), "{status}");
    }

    #[test]
    fn a_service_as_another_user_keeps_its_capabilities_through_ambient() {
        let keep = mask_of(&caps(&["CAP_NET_BIND_SERVICE"]));
        let p = Privileges::from_parts(keep, OomScoreAdj::default(), Some((65534, 65533)));
        let status = status_under(&p).expect("cat runs");
        let hex = format!("{keep:016x}");
        for set in ["CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(field(&status, set), hex, "{set}:\n{status}");
        }
        assert!(
            field(&status, "Uid").starts_with("65534\t65534\t65534"),
            "{status}"
        );
        assert!(
            field(&status, "Gid").starts_with("65533\t65533\t65533"),
            "{status}"
        );
        assert_eq!(field(&status, "Groups"), "", "{status}");
        assert_eq!(field(&status, "NoNewPrivs"), "1", "{status}");
    }

    #[test]
    fn privileges_that_cannot_be_applied_fail_the_spawn() {
        // Bit 63 is no capability: no process has it in its permitted set,
        // so capset refuses to keep it.
        let p = Privileges::from_parts(1u64 << 63, OomScoreAdj::default(), None);
        let err = status_under(&p).expect_err("the spawn fails");
        assert!(err.raw_os_error().is_some(), "an error number: {err}");
    }
}
