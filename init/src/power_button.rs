//! The ACPI power button, read through evdev: how QEMU's `system_powerdown`
//! and a cloud's "stop" reach a node that has no acpid and no logind.

use std::io::Read;
use std::path::PathBuf;

/// `sizeof(struct input_event)` on 64-bit Linux: a timeval, type, code, value.
pub const EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// Whether one `struct input_event` record is a press of the power key.
pub fn is_power_press(record: &[u8]) -> bool {
    if record.len() < EVENT_SIZE {
        return false;
    }
    let kind = u16::from_ne_bytes([record[16], record[17]]);
    let code = u16::from_ne_bytes([record[18], record[19]]);
    let value = i32::from_ne_bytes([record[20], record[21], record[22], record[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

/// The /dev/input/event* devices whose name is "Power Button".
pub fn find_devices() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/input") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let label = std::fs::read_to_string(entry.path().join("device/name")).unwrap_or_default();
        if label.trim() == "Power Button" {
            out.push(PathBuf::from("/dev/input").join(&name));
        }
    }
    out.sort();
    out
}

/// Watches every power button device on its own thread and calls `pressed`
/// on each press. Devices that cannot be opened are reported and skipped.
pub fn watch(pressed: impl Fn() + Send + Clone + 'static) -> usize {
    let devices = find_devices();
    for dev in &devices {
        let dev = dev.clone();
        let pressed = pressed.clone();
        let spawned = std::thread::Builder::new().name("power-button".into()).spawn(move || {
            let mut f = match std::fs::File::open(&dev) {
                Ok(f) => f,
                Err(e) => {
                    crate::console::say(&format!("cannot open power button {}: {e}", dev.display()));
                    return;
                }
            };
            let mut rec = [0u8; EVENT_SIZE];
            while f.read_exact(&mut rec).is_ok() {
                if is_power_press(&rec) {
                    pressed();
                }
            }
        });
        if let Err(e) = spawned {
            crate::console::say(&format!("cannot watch the power button: {e}"));
        }
    }
    devices.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut r = [0u8; EVENT_SIZE];
        r[0..8].copy_from_slice(&1234i64.to_ne_bytes());
        r[16..18].copy_from_slice(&kind.to_ne_bytes());
        r[18..20].copy_from_slice(&code.to_ne_bytes());
        r[20..24].copy_from_slice(&value.to_ne_bytes());
        r
    }

    #[test]
    fn only_a_press_of_the_power_key_counts() {
        assert!(is_power_press(&record(1, 116, 1)));
        assert!(!is_power_press(&record(1, 116, 0)), "release");
        assert!(!is_power_press(&record(1, 115, 1)), "another key");
        assert!(!is_power_press(&record(0, 0, 0)), "sync event");
        assert!(!is_power_press(&record(1, 116, 1)[..20]), "short record");
    }
}
