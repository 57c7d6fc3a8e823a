//! Renders and writes the resolver configuration, /run/carapace/resolv.conf
//! (the image links /etc/resolv.conf to it).

use std::net::IpAddr;
use std::path::Path;

/// Where the resolver configuration goes.
pub const RESOLV_CONF: &str = carapace_contract::paths::RESOLV_CONF;

/// glibc reads at most three name servers.
const MAX_NAMESERVERS: usize = 3;

/// The text of resolv.conf for these servers and search domain.
pub fn render(dns: &[IpAddr], search: Option<&str>) -> String {
    let mut s = String::from("# Written by carapace-net; changes are overwritten.\n");
    if let Some(domain) = search.filter(|d| is_domain(d)) {
        s.push_str(&format!("search {domain}\n"));
    }
    for server in dns.iter().take(MAX_NAMESERVERS) {
        s.push_str(&format!("nameserver {server}\n"));
    }
    s
}

/// A domain safe to put on a `search` line (from DHCP, so untrusted).
fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// Writes the file atomically.
pub fn write(path: &Path, dns: &[IpAddr], search: Option<&str>) -> std::io::Result<()> {
    crate::status::write_atomic(path, render(dns, search).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn renders_servers_and_search() {
        let text = render(&[ip("10.0.2.3"), ip("fd00::3")], Some("example.org"));
        assert_eq!(
            text,
            "# Written by carapace-net; changes are overwritten.\n\
             search example.org\n\
             nameserver 10.0.2.3\n\
             nameserver fd00::3\n"
        );
    }

    #[test]
    fn at_most_three_servers_and_no_unsafe_search() {
        let many: Vec<IpAddr> = (1..=5).map(|i| ip(&format!("192.0.2.{i}"))).collect();
        let text = render(&many, Some("evil\nnameserver 6.6.6.6"));
        assert_eq!(text.matches("nameserver").count(), 3);
        assert!(!text.contains("6.6.6.6"));
        assert!(!text.contains("search"));
        assert_eq!(
            render(&[], None),
            "# Written by carapace-net; changes are overwritten.\n"
        );
    }

    #[test]
    fn writes_atomically() {
        let dir = std::env::temp_dir().join(format!("carapace-net-resolv-{}", std::process::id()));
        let path = dir.join("sub").join("resolv.conf");
        write(&path, &[ip("10.0.2.3")], None).expect("written");
        let text = std::fs::read_to_string(&path).expect("read back");
        assert!(text.ends_with("nameserver 10.0.2.3\n"));
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("sub"))
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name() != "resolv.conf")
            .collect();
        assert!(
            leftovers.is_empty(),
            "no temporary file left: {leftovers:?}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
