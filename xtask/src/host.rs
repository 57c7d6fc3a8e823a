//! The build host: the Debian packages xtask needs, installed on demand.
//!
//! mkosi 24 and systemd 254 come from bookworm-backports. The backports suite is
//! added with the same mirror URI and keyring that the host's own apt sources
//! already use, so no registry host name is ever written by this repository.

use anyhow::{bail, Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};

const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/carapace-backports.sources";
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Packages the image build and the QEMU runs need, taken from backports where
/// backports has them.
pub const IMAGE_TOOLS: &[&str] = &[
    "mkosi",
    "systemd",
    "systemd-boot",
    "systemd-boot-efi",
    "bubblewrap",
    "systemd-container",
    "erofs-utils",
    "dosfstools",
    "mtools",
    "python3-pefile",
    "kmod",
    "e2fsprogs",
    "fdisk",
    "cryptsetup-bin",
    "ovmf",
    "qemu-system-x86",
    "zstd",
];

/// What the container tests run on the host: an OCI registry and the client
/// that pushes the test image to it.
pub const TEST_TOOLS: &[&str] = &["docker-registry", "skopeo"];

/// The packages of `pkgs` that are not installed, asked of dpkg in one call.
fn missing<'a>(pkgs: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["-W".to_string(), "-f=${Package}\t${Status}\n".to_string()];
    args.extend(pkgs.iter().map(|p| p.to_string()));
    // dpkg-query exits non-zero when some package is unknown; its output
    // still lists the known ones.
    let listing = duct::cmd("dpkg-query", &args)
        .stderr_null()
        .stdout_capture()
        .unchecked()
        .read()
        .unwrap_or_default();
    let ok: Vec<&str> = listing
        .lines()
        .filter(|l| l.ends_with("install ok installed"))
        .filter_map(|l| l.split('\t').next())
        .collect();
    pkgs.iter().copied().filter(|p| !ok.contains(p)).collect()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn apt_update() -> Result<()> {
    if !APT_UPDATED.swap(true, Ordering::SeqCst) {
        eprintln!("host: apt-get update");
        duct::cmd!("apt-get", "update", "-q")
            .stdout_null()
            .run()
            .context("apt-get update failed")?;
    }
    Ok(())
}

/// Installs whichever of `pkgs` is missing (from the stable suite).
pub fn ensure_packages(pkgs: &[&str]) -> Result<()> {
    install(&missing(pkgs), None)
}

/// Installs whichever of `pkgs` is missing, preferring bookworm-backports;
/// an installed mkosi older than 24 counts as missing.
pub fn ensure_backports_packages(pkgs: &[&str]) -> Result<()> {
    let mut todo = missing(pkgs);
    if pkgs.contains(&"mkosi") && !todo.contains(&"mkosi") && !mkosi_is_new_enough() {
        todo.push("mkosi");
    }
    if todo.is_empty() {
        return Ok(());
    }
    ensure_backports_suite()?;
    install(&todo, Some("bookworm-backports"))
}

fn mkosi_is_new_enough() -> bool {
    duct::cmd!("mkosi", "--version")
        .stdout_capture()
        .stderr_null()
        .unchecked()
        .run()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            text.split_whitespace()
                .nth(1)
                .and_then(|v| v.split('.').next().map(str::to_owned))
        })
        .and_then(|major| major.parse::<u32>().ok())
        .is_some_and(|major| major >= 24)
}

/// Installs `pkgs` (all known to be missing) with apt.
fn install(pkgs: &[&str], suite: Option<&str>) -> Result<()> {
    if pkgs.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing host packages: {} (run as root to have them installed, or install them yourself{})",
            pkgs.join(" "),
            suite.map(|s| format!(" from {s}")).unwrap_or_default()
        );
    }
    apt_update()?;
    let mut args: Vec<String> = vec!["install".into(), "-y".into(), "-q".into()];
    // The image tools from backports are installed with their recommends
    // (mkosi's include python3-pefile, zstd, the archive keyrings): that is
    // the set the image build was proven with. The rest needs none.
    if suite.is_none() {
        args.push("--no-install-recommends".into());
    }
    if let Some(suite) = suite {
        args.push("-t".into());
        args.push(suite.into());
    }
    args.extend(pkgs.iter().map(|p| p.to_string()));
    eprintln!("host: installing {}", pkgs.join(" "));
    duct::cmd("apt-get", &args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout_null()
        .run()
        .with_context(|| format!("apt-get install {} failed", pkgs.join(" ")))?;
    Ok(())
}

/// One apt source of the host: where its packages come from and how they are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub signed_by: Option<String>,
}

/// Parses deb822 `.sources` text into its `Types: deb` stanzas.
pub fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields = std::collections::HashMap::new();
        let mut last: Option<String> = None;
        for line in stanza.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some(key) = &last {
                    fields.entry(key.clone()).and_modify(|v: &mut String| {
                        v.push('\n');
                        v.push_str(line.trim());
                    });
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                let key = k.trim().to_ascii_lowercase();
                fields.insert(key.clone(), v.trim().to_string());
                last = Some(key);
            }
        }
        let types = fields.get("types").cloned().unwrap_or_default();
        if !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        if fields.get("enabled").is_some_and(|e| e == "no") {
            continue;
        }
        let words = |k: &str| -> Vec<String> {
            fields
                .get(k)
                .map(|v| v.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        for uri in words("uris") {
            out.push(AptSource {
                uri,
                suites: words("suites"),
                components: words("components"),
                signed_by: fields
                    .get("signed-by")
                    .filter(|s| !s.contains('\n'))
                    .cloned(),
            });
        }
    }
    out
}

/// Parses one-line `sources.list` text (`deb [opts] uri suite comp…`).
pub fn parse_one_line(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim();
        let mut signed_by = None;
        if rest.starts_with('[') {
            let Some(end) = rest.find(']') else { continue };
            for opt in rest[1..end].split_whitespace() {
                if let Some(v) = opt.strip_prefix("signed-by=") {
                    signed_by = Some(v.to_string());
                }
            }
            rest = rest[end + 1..].trim();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(AptSource {
            uri: uri.to_string(),
            suites: vec![suite.to_string()],
            components: words.map(str::to_owned).collect(),
            signed_by,
        });
    }
    out
}

/// Every `deb` source configured on this host.
pub fn host_sources() -> Vec<AptSource> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list") {
        out.extend(parse_one_line(&text));
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            match path.extension().and_then(|e| e.to_str()) {
                Some("sources") => out.extend(parse_deb822(&text)),
                Some("list") => out.extend(parse_one_line(&text)),
                _ => {}
            }
        }
    }
    out
}

/// The host's source for the Debian release `suite` (e.g. "bookworm").
pub fn debian_mirror(sources: &[AptSource], suite: &str) -> Option<AptSource> {
    sources
        .iter()
        .find(|s| s.suites.iter().any(|x| x == suite) && s.components.iter().any(|c| c == "main"))
        .cloned()
}

/// The host's source for the Debian security suite of `release`, if any.
pub fn security_mirror(sources: &[AptSource], release: &str) -> Option<AptSource> {
    let suite = format!("{release}-security");
    sources.iter().find(|s| s.suites.contains(&suite)).cloned()
}

/// Renders one deb822 stanza.
pub fn render_deb822(uri: &str, suites: &[&str], signed_by: Option<&str>) -> String {
    let mut s = format!(
        "Types: deb\nURIs: {uri}\nSuites: {}\nComponents: main\n",
        suites.join(" ")
    );
    if let Some(key) = signed_by {
        s.push_str(&format!("Signed-By: {key}\n"));
    }
    s
}

/// Adds bookworm-backports to apt, from the host's own bookworm mirror, unless
/// it is configured already.
pub fn ensure_backports_suite() -> Result<()> {
    let sources = host_sources();
    if sources
        .iter()
        .any(|s| s.suites.iter().any(|x| x == "bookworm-backports"))
    {
        return Ok(());
    }
    let Some(mirror) = debian_mirror(&sources, "bookworm") else {
        bail!("no apt source for Debian bookworm on this host: cannot derive bookworm-backports (add bookworm-backports to the apt sources and install mkosi 24 yourself)");
    };
    if !is_root() {
        bail!("bookworm-backports is not configured and we are not root to add it: add {} bookworm-backports to the apt sources", mirror.uri);
    }
    let text = render_deb822(
        &mirror.uri,
        &["bookworm-backports"],
        mirror.signed_by.as_deref(),
    );
    std::fs::write(BACKPORTS_SOURCES, text)
        .with_context(|| format!("cannot write {BACKPORTS_SOURCES}"))?;
    APT_UPDATED.store(false, Ordering::SeqCst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_names_exactly_the_uninstalled_packages() {
        // dpkg itself is on every Debian host; the other name is on none.
        assert_eq!(
            missing(&["dpkg", "carapace-no-such-package"]),
            vec!["carapace-no-such-package"]
        );
    }

    #[test]
    fn reads_deb822_stanzas() {
        let text = "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/k.gpg\n\nTypes: deb-src\nURIs: http://x/\nSuites: bookworm\nComponents: main\n";
        let s = parse_deb822(text);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].uri, "http://mirror.example/debian");
        assert_eq!(s[0].suites, vec!["bookworm", "bookworm-updates"]);
        assert_eq!(s[0].signed_by.as_deref(), Some("/usr/share/keyrings/k.gpg"));
        let m = debian_mirror(&s, "bookworm").expect("found");
        assert_eq!(m.uri, "http://mirror.example/debian");
        assert!(debian_mirror(&s, "trixie").is_none());
    }

    #[test]
    fn reads_one_line_sources() {
        let text = "# c\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main contrib\ndeb-src http://m/ bookworm main\n";
        let s = parse_one_line(text);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].signed_by.as_deref(), Some("/k.gpg"));
        assert_eq!(s[0].components, vec!["main", "contrib"]);
    }

    #[test]
    fn renders_a_stanza_that_parses_back() {
        let text = render_deb822(
            "http://m.example/debian",
            &["bookworm-backports"],
            Some("/k.gpg"),
        );
        let s = parse_deb822(&text);
        assert_eq!(s[0].suites, vec!["bookworm-backports"]);
        assert_eq!(s[0].signed_by.as_deref(), Some("/k.gpg"));
    }
}
