//! The ACPI power button, read through evdev: how QEMU's `system_powerdown`
//! and a cloud's "stop" reach a node that has no acpid and no logind.
//!
//! Every `/dev/input/event*` whose `/sys/class/input/eventN/device/name` is
//! "Power Button" is watched (ACPI may register two: the fixed-feature
//! LNXPWRBN and the PNP0C0C device), each by a small blocking thread that
//! reads `struct input_event` records. Input devices can appear after stage
//! 2 starts, so the scan is repeated a few times during the first seconds.

use std::collections::BTreeSet;
use std::ffi::c_long;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `sizeof(struct input_event)`: a `struct timeval` (two longs), then type
/// (u16), code (u16) and value (i32) — 24 bytes on x86_64.
pub const EVENT_SIZE: usize = 2 * std::mem::size_of::<c_long>() + 8;
/// `EV_KEY`: a key or button changed state.
pub const EV_KEY: u16 = 1;
/// `KEY_POWER`.
pub const KEY_POWER: u16 = 116;
/// What the kernel calls the ACPI power button devices.
pub const DEVICE_NAME: &str = "Power Button";
/// When to look for power button devices, counted from the start of stage 2.
pub const SCAN_AT: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(250),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// One `struct input_event`, without its timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: i32,
}

impl InputEvent {
    /// Parses one record in the machine's byte order.
    pub fn parse(record: &[u8; EVENT_SIZE]) -> InputEvent {
        let at = EVENT_SIZE - 8;
        let [t0, t1, c0, c1, v0, v1, v2, v3] = [0, 1, 2, 3, 4, 5, 6, 7].map(|i| record[at + i]);
        InputEvent {
            kind: u16::from_ne_bytes([t0, t1]),
            code: u16::from_ne_bytes([c0, c1]),
            value: i32::from_ne_bytes([v0, v1, v2, v3]),
        }
    }

    /// A press (value 1; 0 is the release, 2 autorepeat) of the power key.
    pub fn is_power_press(&self) -> bool {
        self.kind == EV_KEY && self.code == KEY_POWER && self.value == 1
    }
}

/// The event devices under `class_dir` (normally /sys/class/input) whose
/// device name is [`DEVICE_NAME`], as /dev/input paths, sorted.
pub fn find_devices(class_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(class_dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|entry| {
            let node = entry.file_name().to_str()?.to_string();
            if !node.starts_with("event") {
                return None;
            }
            let name = std::fs::read_to_string(entry.path().join("device/name")).ok()?;
            (name.trim_end() == DEVICE_NAME).then(|| Path::new("/dev/input").join(node))
        })
        .collect();
    found.sort();
    found
}

/// Watches every power button, now and as they appear during the first
/// seconds, and calls `pressed` on each press. Returns at once; the work is
/// done by threads. Reports on the console if no button ever shows up.
pub fn watch(pressed: impl Fn() + Send + Sync + 'static) {
    let pressed: Arc<dyn Fn() + Send + Sync> = Arc::new(pressed);
    // The buttons that exist now are opened before this returns, so a press
    // right after `ready` is not lost; later scans catch late devices.
    let mut watched = BTreeSet::new();
    watch_new(&mut watched, &pressed);
    let spawned = std::thread::Builder::new()
        .name("power-scan".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let start = Instant::now();
            for at in SCAN_AT.iter().filter(|at| !at.is_zero()) {
                std::thread::sleep(at.saturating_sub(start.elapsed()));
                watch_new(&mut watched, &pressed);
            }
            if watched.is_empty() {
                crate::console::say("no ACPI power button found: power off by signal only");
            }
        });
    if let Err(e) = spawned {
        crate::console::say(&format!("cannot watch for the power button: {e}"));
    }
}

/// Starts reading every power button not watched yet.
fn watch_new(watched: &mut BTreeSet<PathBuf>, pressed: &Arc<dyn Fn() + Send + Sync>) {
    for device in find_devices(Path::new("/sys/class/input")) {
        if watched.insert(device.clone()) {
            read_device(device, Arc::clone(pressed));
        }
    }
}

/// Opens one event device here and now, then reads it on a thread of its own
/// until it fails.
fn read_device(device: PathBuf, pressed: Arc<dyn Fn() + Send + Sync>) {
    let mut file = match std::fs::File::open(&device) {
        Ok(file) => file,
        Err(e) => {
            crate::console::say(&format!(
                "cannot open power button {}: {e}",
                device.display()
            ));
            return;
        }
    };
    let name = device.display().to_string();
    let spawned = std::thread::Builder::new()
        .name("power-button".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut record = [0u8; EVENT_SIZE];
            loop {
                if let Err(e) = file.read_exact(&mut record) {
                    crate::console::say(&format!("power button {name}: {e}"));
                    return;
                }
                if InputEvent::parse(&record).is_power_press() {
                    pressed();
                }
            }
        });
    if let Err(e) = spawned {
        crate::console::say(&format!("cannot watch the power button: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut r = [0u8; EVENT_SIZE];
        let long = std::mem::size_of::<c_long>();
        r[..long].copy_from_slice(&(1_700_000_000 as c_long).to_ne_bytes());
        r[long..2 * long].copy_from_slice(&(123_456 as c_long).to_ne_bytes());
        r[2 * long..2 * long + 2].copy_from_slice(&kind.to_ne_bytes());
        r[2 * long + 2..2 * long + 4].copy_from_slice(&code.to_ne_bytes());
        r[2 * long + 4..].copy_from_slice(&value.to_ne_bytes());
        r
    }

    #[test]
    fn an_input_event_is_24_bytes_on_64_bit_linux() {
        #[cfg(target_pointer_width = "64")]
        assert_eq!(EVENT_SIZE, 24);
    }

    #[test]
    fn parses_type_code_and_value_after_the_timestamp() {
        assert_eq!(
            InputEvent::parse(&record(1, 116, 1)),
            InputEvent {
                kind: 1,
                code: 116,
                value: 1
            }
        );
        assert_eq!(
            InputEvent::parse(&record(4, 4, -7)),
            InputEvent {
                kind: 4,
                code: 4,
                value: -7
            }
        );
    }

    #[test]
    fn only_a_press_of_the_power_key_counts() {
        assert!(InputEvent::parse(&record(EV_KEY, KEY_POWER, 1)).is_power_press());
        assert!(
            !InputEvent::parse(&record(EV_KEY, KEY_POWER, 0)).is_power_press(),
            "release"
        );
        assert!(
            !InputEvent::parse(&record(EV_KEY, KEY_POWER, 2)).is_power_press(),
            "autorepeat"
        );
        assert!(
            !InputEvent::parse(&record(EV_KEY, 115, 1)).is_power_press(),
            "another key"
        );
        assert!(
            !InputEvent::parse(&record(0, 0, 0)).is_power_press(),
            "EV_SYN"
        );
    }

    #[test]
    fn finds_every_power_button_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("carapace-input-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (node, name) in [
            ("event0", "Power Button\n"),
            ("event1", "Power Button\n"),
            ("event2", "AT Translated Set 2 keyboard\n"),
            ("input0", "Power Button\n"),
        ] {
            std::fs::create_dir_all(dir.join(node).join("device")).expect("mkdir");
            std::fs::write(dir.join(node).join("device/name"), name).expect("write name");
        }
        std::fs::create_dir_all(dir.join("event3")).expect("mkdir without a name");
        let found = find_devices(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            found,
            [
                PathBuf::from("/dev/input/event0"),
                PathBuf::from("/dev/input/event1")
            ]
        );
        assert!(find_devices(Path::new("/nonexistent")).is_empty());
    }
}
