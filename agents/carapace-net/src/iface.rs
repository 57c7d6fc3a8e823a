//! Finds the NIC to configure in /sys/class/net: the first interface (by
//! index) whose `type` is 1 (ARPHRD_ETHER), preferring one backed by a
//! device (virtio-net) over virtual ones such as bridges a container runtime
//! may add later. Loopback has type 772 and is never chosen.

use std::path::Path;

/// Where the kernel lists interfaces.
pub const SYS_CLASS_NET: &str = "/sys/class/net";

/// The chosen interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
}

impl Nic {
    /// `52:54:00:12:34:56`.
    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `52:54:00:12:34:56`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn read_trimmed(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The NIC to use under `root` (normally [`SYS_CLASS_NET`]), if any yet.
pub fn find(root: &Path) -> Option<Nic> {
    let mut found: Vec<(bool, Nic)> = Vec::new();
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let dir = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name == "lo" || read_trimmed(&dir.join("type")).as_deref() != Some("1") {
            continue;
        }
        let Some(index) = read_trimmed(&dir.join("ifindex")).and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Some(mac) = read_trimmed(&dir.join("address")).and_then(|s| parse_mac(&s)) else {
            continue;
        };
        let virtual_ = !dir.join("device").exists();
        found.push((virtual_, Nic { name, index, mac }));
    }
    found.sort_by_key(|(virtual_, nic)| (*virtual_, nic.index));
    found.into_iter().next().map(|(_, nic)| nic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_if(root: &Path, name: &str, kind: &str, index: u32, mac: &str, device: bool) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(d.join("type"), format!("{kind}\n")).expect("type");
        std::fs::write(d.join("ifindex"), format!("{index}\n")).expect("ifindex");
        std::fs::write(d.join("address"), format!("{mac}\n")).expect("address");
        if device {
            std::fs::create_dir_all(d.join("device")).expect("device");
        }
    }

    #[test]
    fn picks_the_first_ethernet_device() {
        let root = std::env::temp_dir().join(format!("carapace-net-iface-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("root");
        assert_eq!(find(&root), None, "nothing yet: keep waiting");
        fake_if(&root, "lo", "772", 1, "00:00:00:00:00:00", false);
        fake_if(&root, "sit0", "776", 2, "00:00:00:00:00:00", false);
        assert_eq!(find(&root), None, "no Ethernet interface");
        fake_if(&root, "docker0", "1", 3, "02:42:00:00:00:01", false);
        fake_if(&root, "eth1", "1", 5, "52:54:00:12:34:57", true);
        fake_if(&root, "eth0", "1", 4, "52:54:00:12:34:56", true);
        let nic = find(&root).expect("found");
        assert_eq!(nic.name, "eth0");
        assert_eq!(nic.index, 4);
        assert_eq!(nic.mac_string(), "52:54:00:12:34:56");
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56\n"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("52:54:00:12:34:zz"), None);
        assert_eq!(
            format_mac(&[0xa, 0xb, 0xc, 0xd, 0xe, 0xff]),
            "0a:0b:0c:0d:0e:ff"
        );
    }
}
