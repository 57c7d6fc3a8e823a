//! The hardware watchdog: a node whose PID 1 hangs is reset, not left hung.
//!
//! Stage 1 opens `/dev/watchdog` (else `/dev/watchdog0`), sets its timeout
//! to [`STAGE1_TIMEOUT_S`] (WDIOC_SETTIMEOUT) — stage 1 and the start of
//! stage 2 take a few seconds, so a PID 1 that hangs before its event loop
//! runs is reset soon — pings it (WDIOC_KEEPALIVE), and
//! closes it just before exec'ing stage 2 *without* writing the magic close
//! character `V`, so the watchdog stays armed across the switch (the kernel
//! pings it once on that close). Stage 2 opens it again, sets the timeout
//! again and pings it every [`PING_EVERY`] from a task of its tokio event
//! loop ([`spawn_pinger`]): if the loop hangs, the pings stop and the
//! machine is reset [`TIMEOUT_S`] later. The orderly shutdown, which runs
//! after the loop, pings through [`keep_alive`] while it waits.
//!
//! Caveat: a driver without `WDIOF_MAGICCLOSE` stops its watchdog on any
//! close, so with such a driver the watchdog is off between stage 1's
//! close and stage 2's open.
//!
//! Console lines (after `carapace: `), one per stage and none per ping:
//! - stage 1: `watchdog <dev> armed, timeout <n> s`
//! - stage 2: `watchdog <dev> armed, timeout <n> s, pinged every <s> s`
//! - either, when the device refused the timeout: `…, timeout <n> s (cannot
//!   set the timeout: <error>)…`, or `timeout unknown (…)` if it would not say
//!   either (then stage 2 pings every second)
//! - `no watchdog device (/dev/watchdog, /dev/watchdog0): a hung node is not reset`
//! - `cannot arm the watchdog <dev>: <error>` (it did not open) or `cannot
//!   arm the watchdog <dev>: WDIOC_KEEPALIVE: <error>` (stage 2 keeps
//!   trying to ping it anyway)
//! - stage 2, at the first failed ping only: `cannot ping the watchdog <dev>: <error>`
//!
//! The ioctls are not in rustix's typed API; they go through
//! `rustix::ioctl` with the opcodes of include/uapi/linux/watchdog.h, each
//! `unsafe` block with the reason it is sound. The absence of a watchdog is
//! never an error: the node boots without one.

use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno;
use rustix::ioctl::{opcode, NoArg, Opcode, Updater};
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The devices tried, in order: the legacy node of the first watchdog, then
/// the watchdog core's node for it.
pub const DEVICES: [&str; 2] = ["/dev/watchdog", "/dev/watchdog0"];
/// The timeout stage 2 asks for, in seconds: how long a hung PID 1 stays hung.
pub const TIMEOUT_S: u32 = 60;
/// The timeout stage 1 asks for: it covers stage 1 and stage 2 up to the
/// moment stage 2 arms the watchdog itself.
pub const STAGE1_TIMEOUT_S: u32 = 20;
/// How often stage 2 pings, at most.
pub const PING_EVERY: Duration = Duration::from_secs(10);

/// `WDIOC_KEEPALIVE`: `_IOR('W', 5, int)`; the argument is unused.
pub const WDIOC_KEEPALIVE: Opcode = opcode::read::<c_int>(b'W', 5);
/// `WDIOC_SETTIMEOUT`: `_IOWR('W', 6, int)`; the kernel reads the timeout
/// in seconds and writes back the one it set.
pub const WDIOC_SETTIMEOUT: Opcode = opcode::read_write::<c_int>(b'W', 6);
/// `WDIOC_GETTIMEOUT`: `_IOR('W', 7, int)`.
pub const WDIOC_GETTIMEOUT: Opcode = opcode::read::<c_int>(b'W', 7);

/// How often to ping a watchdog whose timeout is `timeout_s` (None when
/// the device would not say): every [`PING_EVERY`], but at least three
/// times per timeout, and at most once a second.
pub fn ping_interval(timeout_s: Option<u32>) -> Duration {
    let third = Duration::from_secs(u64::from(timeout_s.unwrap_or(0) / 3));
    PING_EVERY.min(third).max(Duration::from_secs(1))
}

/// An open watchdog device. Dropping it closes it without the magic
/// close character: the watchdog stays armed.
#[derive(Debug)]
pub struct Watchdog {
    pub device: &'static str,
    fd: OwnedFd,
}

/// What arming did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Armed {
    /// The timeout the device now has, in seconds; None if it neither
    /// took [`TIMEOUT_S`] nor said what it has.
    pub timeout_s: Option<u32>,
    /// Why the device kept another timeout than [`TIMEOUT_S`], if it refused.
    pub set_error: Option<Errno>,
}

impl Armed {
    /// The console line (after `carapace: `): `watchdog <dev> armed, timeout <n> s`.
    pub fn line(&self, device: &str) -> String {
        let mut line = match self.timeout_s {
            Some(t) => format!("watchdog {device} armed, timeout {t} s"),
            None => format!("watchdog {device} armed, timeout unknown"),
        };
        if let Some(err) = self.set_error {
            line.push_str(&format!(" (cannot set the timeout: {err})"));
        }
        line
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchdogError {
    #[error("no watchdog device ({}, {}): a hung node is not reset", DEVICES[0], DEVICES[1])]
    Absent,
    #[error("cannot arm the watchdog {device}: {err}")]
    Open { device: &'static str, err: Errno },
    #[error("cannot arm the watchdog {device}: {what}: {err}")]
    Ioctl {
        device: &'static str,
        what: &'static str,
        err: Errno,
    },
}

impl Watchdog {
    /// Opens the first of [`DEVICES`] that exists. Opening starts the
    /// watchdog if it was not running yet.
    pub fn open() -> Result<Watchdog, WatchdogError> {
        use rustix::fs::{Mode, OFlags};
        let mut first_error = None;
        for device in DEVICES {
            match rustix::fs::open(device, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty()) {
                Ok(fd) => return Ok(Watchdog { device, fd }),
                Err(Errno::NOENT | Errno::NODEV | Errno::NXIO) => {}
                Err(err) => {
                    first_error.get_or_insert(WatchdogError::Open { device, err });
                }
            }
        }
        Err(first_error.unwrap_or(WatchdogError::Absent))
    }

    /// Sets the timeout to `seconds` (keeping the device's own if it
    /// refuses) and pings. Only a failed ping is an error.
    pub fn arm(&self, seconds: u32) -> Result<Armed, WatchdogError> {
        let (timeout_s, set_error) = match set_timeout(self.fd.as_fd(), seconds) {
            Ok(set) => (Some(set), None),
            Err(err) => (get_timeout(self.fd.as_fd()).ok(), Some(err)),
        };
        self.ping().map_err(|err| WatchdogError::Ioctl {
            device: self.device,
            what: "WDIOC_KEEPALIVE",
            err,
        })?;
        Ok(Armed {
            timeout_s,
            set_error,
        })
    }

    /// Pings the watchdog: WDIOC_KEEPALIVE, or a write of one NUL byte
    /// (not `V`) for a driver without that ioctl.
    pub fn ping(&self) -> Result<(), Errno> {
        // SAFETY: WDIOC_KEEPALIVE is the opcode of linux/watchdog.h, which
        // the kernel's watchdog core (and every driver handling it itself)
        // serves without touching the argument; `NoArg` passes a null
        // pointer, which at worst would make the kernel fail with EFAULT.
        let keepalive =
            unsafe { rustix::ioctl::ioctl(self.fd.as_fd(), NoArg::<WDIOC_KEEPALIVE>::new()) };
        match keepalive {
            Err(Errno::OPNOTSUPP | Errno::NOTTY | Errno::INVAL) => {
                rustix::io::write(self.fd.as_fd(), &[0]).map(drop)
            }
            other => other,
        }
    }
}

/// WDIOC_SETTIMEOUT: returns the timeout the device set.
fn set_timeout(fd: impl AsFd, seconds: u32) -> Result<u32, Errno> {
    let mut value = c_int::try_from(seconds).unwrap_or(c_int::MAX);
    // SAFETY: WDIOC_SETTIMEOUT is `_IOWR('W', 6, int)`: the kernel reads one
    // `int` through the pointer and writes one back. `Updater` passes a
    // pointer to `value`, a live, initialised, exclusively borrowed
    // `c_int` that outlives the call.
    unsafe { rustix::ioctl::ioctl(fd, Updater::<WDIOC_SETTIMEOUT, c_int>::new(&mut value)) }?;
    Ok(u32::try_from(value).unwrap_or(0))
}

/// WDIOC_GETTIMEOUT: the device's timeout.
fn get_timeout(fd: impl AsFd) -> Result<u32, Errno> {
    let mut value: c_int = 0;
    // SAFETY: WDIOC_GETTIMEOUT is `_IOR('W', 7, int)`: the kernel writes one
    // `int` through the pointer. `Updater` passes a pointer to `value`, a
    // live, initialised (so never read uninitialised, whatever a driver
    // does), exclusively borrowed `c_int` that outlives the call.
    unsafe { rustix::ioctl::ioctl(fd, Updater::<WDIOC_GETTIMEOUT, c_int>::new(&mut value)) }?;
    Ok(u32::try_from(value).unwrap_or(0))
}

/// Opens and arms the watchdog, saying so in one console line; returns it
/// with how often to ping it. A device that opened is returned even when
/// arming it failed: it may be running, so it must still be pinged.
fn open_and_arm(stage2: bool) -> Option<(Watchdog, Duration)> {
    let w = match Watchdog::open() {
        Ok(w) => w,
        Err(e) => {
            crate::console::say(&e.to_string());
            return None;
        }
    };
    match w.arm(if stage2 { TIMEOUT_S } else { STAGE1_TIMEOUT_S }) {
        Ok(armed) => {
            let every = ping_interval(armed.timeout_s);
            let mut line = armed.line(w.device);
            if stage2 {
                line.push_str(&format!(", pinged every {} s", every.as_secs()));
            }
            crate::console::say(&line);
            Some((w, every))
        }
        Err(e) => {
            crate::console::say(&e.to_string());
            Some((w, ping_interval(None)))
        }
    }
}

/// Stage 1: opens and arms the watchdog. Drop what it returns just before
/// the exec of stage 2 ([`hand_over`]).
pub fn arm_for_stage1() -> Option<Watchdog> {
    open_and_arm(false).map(|(w, _)| w)
}

/// Stage 1, before the exec: closes the device without the magic close
/// character, so the watchdog stays armed for stage 2 (the close pings it).
pub fn hand_over(watchdog: Option<Watchdog>) {
    drop(watchdog);
}

/// Stage 2's watchdog, once opened.
static STAGE2: OnceLock<(Watchdog, Duration)> = OnceLock::new();
/// Set after the first failed ping, so that a broken device is reported once.
static PING_FAILED: AtomicBool = AtomicBool::new(false);

/// Stage 2: opens the watchdog again, arms it, and keeps it for
/// [`spawn_pinger`] and [`keep_alive`].
pub fn arm_for_stage2() {
    if let Some(opened) = open_and_arm(true) {
        let _ = STAGE2.set(opened);
    }
}

/// Pings stage 2's watchdog, if there is one; reports the first failure.
pub fn keep_alive() {
    if let Some((w, _)) = STAGE2.get() {
        if let Err(e) = w.ping() {
            if !PING_FAILED.swap(true, Ordering::Relaxed) {
                crate::console::say(&format!("cannot ping the watchdog {}: {e}", w.device));
            }
        }
    }
}

/// Stage 2: pings the watchdog from a task of the running tokio event loop,
/// so that the pings stop when the loop hangs. Nothing without a watchdog.
pub fn spawn_pinger() {
    let Some((_, every)) = STAGE2.get() else {
        return;
    };
    let every = *every;
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            keep_alive();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values the C macros of linux/watchdog.h give on x86-64 and arm64:
    /// direction << 30 | sizeof(int) << 16 | 'W' << 8 | number.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn opcodes_match_linux_watchdog_h() {
        assert_eq!(WDIOC_KEEPALIVE, 0x8004_5705);
        assert_eq!(WDIOC_SETTIMEOUT, 0xc004_5706);
        assert_eq!(WDIOC_GETTIMEOUT, 0x8004_5707);
    }

    #[test]
    fn pings_come_every_10_s_and_at_least_thrice_per_timeout() {
        assert_eq!(ping_interval(Some(TIMEOUT_S)), Duration::from_secs(10));
        assert_eq!(ping_interval(Some(600)), Duration::from_secs(10));
        assert_eq!(ping_interval(Some(15)), Duration::from_secs(5));
        assert_eq!(ping_interval(Some(2)), Duration::from_secs(1));
        assert_eq!(ping_interval(Some(0)), Duration::from_secs(1));
        // A device that would not say: as often as is reasonable.
        assert_eq!(ping_interval(None), Duration::from_secs(1));
    }

    #[test]
    fn the_armed_line_names_device_and_timeout() {
        let armed = Armed {
            timeout_s: Some(60),
            set_error: None,
        };
        assert_eq!(
            armed.line("/dev/watchdog"),
            "watchdog /dev/watchdog armed, timeout 60 s"
        );
        let refused = Armed {
            timeout_s: Some(30),
            set_error: Some(Errno::INVAL),
        };
        assert_eq!(
            refused.line("/dev/watchdog0"),
            format!(
                "watchdog /dev/watchdog0 armed, timeout 30 s (cannot set the timeout: {})",
                Errno::INVAL
            )
        );
        assert_eq!(
            WatchdogError::Absent.to_string(),
            "no watchdog device (/dev/watchdog, /dev/watchdog0): a hung node is not reset"
        );
    }

    /// /dev/null answers the watchdog ioctls with ENOTTY: the calls are
    /// made and refused, nothing crashes, and a ping falls back to a write.
    #[test]
    fn a_device_that_is_no_watchdog_refuses_the_ioctls() {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open("/dev/null", OFlags::WRONLY, Mode::empty()).expect("open");
        assert_eq!(set_timeout(&fd, TIMEOUT_S), Err(Errno::NOTTY));
        assert_eq!(get_timeout(&fd), Err(Errno::NOTTY));
        let w = Watchdog {
            device: "/dev/null",
            fd,
        };
        assert_eq!(w.ping(), Ok(()), "falls back to writing a NUL byte");
        let armed = w.arm(TIMEOUT_S).expect("pinged");
        assert_eq!(
            armed,
            Armed {
                timeout_s: None,
                set_error: Some(Errno::NOTTY)
            }
        );
        assert_eq!(
            armed.line("/dev/null"),
            format!(
                "watchdog /dev/null armed, timeout unknown (cannot set the timeout: {})",
                Errno::NOTTY
            )
        );
    }
}
