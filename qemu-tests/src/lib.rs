//! The harness of the QEMU tests: boot the real Carapace disk image under
//! OVMF and TCG, each test on its own copy of the disk, and talk to it through
//! the serial console (rexpect) and the QEMU monitor.
//!
//! The image under test is `CARAPACE_TEST_IMAGE`, or the test image that
//! `cargo xtask image --test` leaves in build/test/out/carapace.raw.
//! Guest-side probes (src/bin) report over the console what the host cannot see.

use anyhow::{bail, ensure, Context, Result};
use rexpect::session::{spawn_with_options, PtySession};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub mod containers;
pub mod flood;
pub mod hostile_layers;

/// How long any single expectation may wait. Not a performance threshold:
/// only a guard against a hung guest, generous for TCG on a loaded machine.
pub const EXPECT_TIMEOUT: Duration = Duration::from_secs(240);

/// GPT partition type GUIDs of the Discoverable Partitions Specification.
pub mod part_type {
    pub const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
    pub const ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
    pub const ROOT_VERITY_X86_64: &str = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5";
    pub const VAR: &str = "4d21b016-b534-45c2-a9fb-5c16e091fd2d";
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The pristine image every test copies.
pub fn image_path() -> PathBuf {
    std::env::var_os("CARAPACE_TEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/test/out/carapace.raw"))
}

/// The node's one binary that the image's root carries (PID 1 and every
/// agent; built by xtask for the node).
pub fn node_binary() -> PathBuf {
    workspace_root().join("target/x86_64-unknown-linux-gnu/release/carapace")
}

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// One partition of a disk, as sfdisk reports it.
#[derive(Debug, Clone)]
pub struct Partition {
    pub number: usize,
    pub type_guid: String,
    pub uuid: String,
    pub label: String,
    pub offset: u64,
    pub size: u64,
}

/// A private copy of the image (and of the firmware variables) for one test.
pub struct TestDisk {
    pub dir: PathBuf,
    pub disk: PathBuf,
    pub vars: PathBuf,
}

impl TestDisk {
    /// Copies the pristine image into a fresh directory named after the test.
    pub fn fresh(name: &str) -> Result<Self> {
        Self::copy_of(&image_path(), name)
    }

    /// Copies `image` into a fresh directory named after `name`.
    pub fn copy_of(image: &Path, name: &str) -> Result<Self> {
        if !image.exists() {
            bail!(
                "{} does not exist: build it with `cargo xtask image --test` (or run `cargo xtask test`)",
                image.display()
            );
        }
        let dir = workspace_root()
            .join("target/qemu-tests")
            .join(format!("{name}-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let disk = dir.join("disk.raw");
        let status = Command::new("cp")
            .arg("--sparse=always")
            .arg(image)
            .arg(&disk)
            .status()
            .context("cannot run cp")?;
        if !status.success() {
            bail!("copying {} failed", image.display());
        }
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars)
            .with_context(|| format!("cannot copy {OVMF_VARS} (package ovmf)"))?;
        Ok(TestDisk { dir, disk, vars })
    }

    /// The partitions of the disk, read with sfdisk.
    pub fn partitions(&self) -> Result<Vec<Partition>> {
        partitions(&self.disk)
    }

    /// The partition of type `type_guid` labelled `label` (or the first of its type).
    pub fn partition(&self, type_guid: &str, label: Option<&str>) -> Result<Partition> {
        let parts = self.partitions()?;
        parts
            .iter()
            .find(|p| p.type_guid == type_guid && label.is_none_or(|l| p.label == l))
            .cloned()
            .with_context(|| {
                format!(
                    "no partition of type {type_guid} on {} ({} partitions)",
                    self.disk.display(),
                    parts.len()
                )
            })
    }

    /// Reads `len` bytes of the disk at `offset`.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut f = std::fs::File::open(&self.disk)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Overwrites the disk at `offset` with `bytes`.
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).open(&self.disk)?;
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    }

    /// Copies one partition out into a file of its own (for e2fsck and friends).
    pub fn extract(&self, part: &Partition, to: &Path) -> Result<()> {
        let mut src = std::fs::File::open(&self.disk)?;
        src.seek(SeekFrom::Start(part.offset))?;
        let mut dst = std::fs::File::create(to)?;
        std::io::copy(&mut src.take(part.size), &mut dst)?;
        Ok(())
    }

    /// Runs `e2fsck -n -f` on a copy of the state partition (QEMU must have
    /// exited); Ok(()) when it is clean, else its report.
    /// Lists a directory of the state partition (a path relative to /var,
    /// e.g. `/lib/carapace`) with debugfs, on the host, after the node is
    /// down: the names in it.
    pub fn list_var_dir(&self, dir: &str) -> Result<Vec<String>> {
        let var = self.partition(part_type::VAR, None)?;
        let copy = self.dir.join("var-list.ext4");
        self.extract(&var, &copy)?;
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("ls -p {dir}"))
            .arg(&copy)
            .output()
            .context("cannot run debugfs (package e2fsprogs)")?;
        std::fs::remove_file(&copy)?;
        // `ls -p` prints /inode/mode/uid/gid/name/size/ per entry.
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split('/').nth(5).map(str::to_string))
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .collect())
    }

    /// Reads a file of the state partition (a path relative to /var) with
    /// debugfs, on the host, after the node is down.
    pub fn read_var_file(&self, path: &str) -> Result<Vec<u8>> {
        let var = self.partition(part_type::VAR, None)?;
        let copy = self.dir.join("var-read.ext4");
        self.extract(&var, &copy)?;
        let out = self.dir.join("var-read.out");
        let _ = std::fs::remove_file(&out);
        let run = Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump {path} {}", out.display()))
            .arg(&copy)
            .output()
            .context("cannot run debugfs (package e2fsprogs)")?;
        std::fs::remove_file(&copy)?;
        let bytes = std::fs::read(&out).with_context(|| {
            format!(
                "debugfs could not dump /var{path}: {}",
                String::from_utf8_lossy(&run.stderr)
            )
        })?;
        std::fs::remove_file(&out)?;
        Ok(bytes)
    }

    /// Replaces a file of the state partition (a path relative to /var) with
    /// debugfs, on the host, while the node is down.
    pub fn write_var_file(&self, path: &str, bytes: &[u8]) -> Result<()> {
        let var = self.partition(part_type::VAR, None)?;
        let copy = self.dir.join("var-write.ext4");
        self.extract(&var, &copy)?;
        let src = self.dir.join("var-write.in");
        std::fs::write(&src, bytes)?;
        let run = Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(format!("rm {path}"))
            .arg(&copy)
            .output()
            .context("cannot run debugfs (package e2fsprogs)")?;
        ensure!(run.status.success(), "debugfs rm {path} failed");
        let run = Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(format!("write {} {path}", src.display()))
            .arg(&copy)
            .output()
            .context("cannot run debugfs (package e2fsprogs)")?;
        ensure!(
            run.status.success() && !String::from_utf8_lossy(&run.stderr).contains("rror"),
            "debugfs write {path} failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let image = std::fs::read(&copy)?;
        ensure!(
            image.len() as u64 == var.size,
            "the partition copy changed size"
        );
        self.write_at(var.offset, &image)?;
        std::fs::remove_file(&copy)?;
        std::fs::remove_file(&src)?;
        Ok(())
    }

    pub fn check_var_is_clean(&self) -> Result<()> {
        let var = self.partition(part_type::VAR, None)?;
        let copy = self.dir.join("var.ext4");
        self.extract(&var, &copy)?;
        let fsck = Command::new("e2fsck")
            .args(["-n", "-f"])
            .arg(&copy)
            .output()
            .context("cannot run e2fsck (package e2fsprogs)")?;
        std::fs::remove_file(&copy)?;
        if !fsck.status.success() {
            bail!(
                "e2fsck -n -f finds /var unclean: {}\n{}",
                String::from_utf8_lossy(&fsck.stdout),
                String::from_utf8_lossy(&fsck.stderr)
            );
        }
        Ok(())
    }

    /// Boots this disk in QEMU and returns the running node.
    pub fn boot(&self) -> Result<Node> {
        Node::boot(self, &[])
    }

    /// Boots this disk with user data (TOML) in QEMU's fw_cfg, as
    /// `opt/carapace/user-data`.
    pub fn boot_with_user_data(&self, toml: &str) -> Result<Node> {
        self.boot_with_user_data_and(toml, &[])
    }

    /// The same, with more QEMU arguments (another fw_cfg entry).
    pub fn boot_with_user_data_and(&self, toml: &str, extra: &[String]) -> Result<Node> {
        let file = self.dir.join("user-data.toml");
        std::fs::write(&file, toml)?;
        let arg = format!("name=opt/carapace/user-data,file={}", file.display());
        let mut args = vec!["-fw_cfg".to_string(), arg];
        args.extend_from_slice(extra);
        Node::boot(self, &args)
    }

    /// Boots this disk with more QEMU arguments.
    pub fn boot_with(&self, extra: &[String]) -> Result<Node> {
        Node::boot(self, extra)
    }
}

impl Drop for TestDisk {
    fn drop(&mut self) {
        if std::env::var_os("CARAPACE_KEEP_TEST_DISKS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Reads the GPT of `disk` with sfdisk.
pub fn partitions(disk: &Path) -> Result<Vec<Partition>> {
    let out = Command::new("sfdisk")
        .arg("--dump")
        .arg(disk)
        .output()
        .context("cannot run sfdisk (package fdisk)")?;
    if !out.status.success() {
        bail!(
            "sfdisk --dump {} failed: {}",
            disk.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut sector = 512u64;
    let mut parts = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("sector-size:") {
            sector = v.trim().parse().unwrap_or(512);
        }
        let Some((dev, rest)) = line.split_once(" : ") else {
            continue;
        };
        let number: usize = dev
            .trim()
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let mut p = Partition {
            number,
            type_guid: String::new(),
            uuid: String::new(),
            label: String::new(),
            offset: 0,
            size: 0,
        };
        for field in rest.split(", ") {
            let Some((k, v)) = field.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim() {
                "start" => p.offset = v.parse::<u64>().unwrap_or(0) * sector,
                "size" => p.size = v.parse::<u64>().unwrap_or(0) * sector,
                "type" => p.type_guid = v.to_ascii_lowercase(),
                "uuid" => p.uuid = v.to_ascii_lowercase(),
                "name" => p.label = v.to_string(),
                _ => {}
            }
        }
        parts.push(p);
    }
    Ok(parts)
}

/// Finds every offset of `needle` in `haystack`.
pub fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return Vec::new();
    }
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// The fields of the `carapace: ready` line.
#[derive(Debug, Clone)]
pub struct Ready {
    pub version: String,
    pub roothash: String,
    pub ms: u64,
}

/// Parses `carapace: ready version=V roothash=H at N ms`.
pub fn parse_ready(line: &str) -> Option<Ready> {
    let rest = line.split("carapace: ready ").nth(1)?;
    let mut version = None;
    let mut roothash = None;
    let mut ms = None;
    let words: Vec<&str> = rest.split_whitespace().collect();
    for (i, w) in words.iter().enumerate() {
        if let Some(v) = w.strip_prefix("version=") {
            version = Some(v.to_string());
        } else if let Some(v) = w.strip_prefix("roothash=") {
            roothash = Some(v.to_string());
        } else if *w == "at" {
            ms = words.get(i + 1).and_then(|n| n.parse().ok());
        }
    }
    Some(Ready {
        version: version?,
        roothash: roothash?,
        ms: ms?,
    })
}

/// A booted (or booting) node: QEMU with the serial console on a pty.
pub struct Node {
    session: PtySession,
    monitor: PathBuf,
    /// The host port forwarded to the node's API port (8443).
    pub api_port: u16,
    /// The host port forwarded to the node's port 8080 (for what a container
    /// with host networking serves).
    pub app_port: u16,
    /// Everything read from the console so far.
    pub transcript: String,
    /// Every boot of the disk's console, appended to
    /// `target/qemu-tests/<test>-<pid>.console` for reading after a failure.
    log: Option<std::fs::File>,
}

/// The node's API port, as the image serves it.
pub const NODE_API_PORT: u16 = 8443;
/// The node port the tests forward for containers (`Node::app_port`).
pub const NODE_APP_PORT: u16 = 8080;

/// A TCP port on the host's loopback that is free now.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The QEMU command line for `disk`: q35, OVMF, TCG, virtio disk, serial on
/// stdio, one virtio NIC on QEMU's user network (its DHCP gives the node
/// 10.0.2.15; the host is 10.0.2.2), with host port `api_port` on 127.0.0.1
/// forwarded to the node's API.
/// `forwards` adds more `(host port, guest port)` forwards on loopback.
pub fn qemu_command(
    disk: &Path,
    vars: &Path,
    monitor: Option<&Path>,
    api_port: u16,
    forwards: &[(u16, u16)],
) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel", "tcg", "-machine", "q35", "-cpu", "max", "-m", "1024", "-smp", "1",
    ])
    .args([
        "-display",
        "none",
        "-nodefaults",
        "-no-user-config",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .arg("-drive")
    .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
    .arg("-drive")
    .arg(format!("if=pflash,format=raw,file={}", vars.display()))
    .arg("-drive")
    .arg(format!("file={},format=raw,if=virtio", disk.display()))
    .args(["-device", "virtio-rng-pci"])
    // The watchdog carapace-init arms: a hung node is reset (QEMU's default
    // watchdog action; with -no-reboot the reset ends QEMU like a reboot).
    .args(["-device", "i6300esb"])
    .arg("-netdev")
    .arg(format!(
        "user,id=net0,hostfwd=tcp:127.0.0.1:{api_port}-:{NODE_API_PORT}{}",
        forwards
            .iter()
            .map(|(host, guest)| format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"))
            .collect::<String>()
    ))
    .args(["-device", "virtio-net-pci,netdev=net0"]);
    if let Some(m) = monitor {
        cmd.arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", m.display()));
    }
    cmd
}

impl Node {
    /// Starts QEMU on `disk`.
    pub fn boot(disk: &TestDisk, extra_args: &[String]) -> Result<Node> {
        let monitor = disk.dir.join("monitor.sock");
        let _ = std::fs::remove_file(&monitor);
        let api_port = free_port()?;
        let app_port = free_port()?;
        let mut cmd = qemu_command(
            &disk.disk,
            &disk.vars,
            Some(&monitor),
            api_port,
            &[(app_port, NODE_APP_PORT)],
        );
        cmd.args(extra_args);
        let options = rexpect::reader::Options::new()
            .timeout_ms(Some(EXPECT_TIMEOUT.as_millis() as u64))
            .strip_ansi_escape_codes(true);
        let session =
            spawn_with_options(cmd, options).context("cannot start qemu-system-x86_64")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(disk.dir.with_extension("console"))
            .ok();
        Ok(Node {
            session,
            monitor,
            api_port,
            app_port,
            transcript: String::new(),
            log,
        })
    }

    fn record(&mut self, text: &str) {
        self.transcript.push_str(text);
        if let Some(log) = self.log.as_mut() {
            let _ = log.write_all(text.as_bytes());
        }
    }

    /// Waits for `needle` on the console; returns what came before it.
    pub fn expect(&mut self, needle: &str) -> Result<String> {
        match self.session.exp_string(needle) {
            Ok(before) => {
                self.record(&before);
                self.record(needle);
                Ok(before)
            }
            Err(err) => bail!(
                "waiting for {needle:?} on the console: {err}\n--- console so far ---\n{}",
                self.transcript
            ),
        }
    }

    /// Waits for a regex on the console; returns (before, matched).
    pub fn expect_regex(&mut self, re: &str) -> Result<(String, String)> {
        match self.session.exp_regex(re) {
            Ok((before, matched)) => {
                self.record(&before);
                self.record(&matched);
                Ok((before, matched))
            }
            Err(err) => bail!(
                "waiting for /{re}/ on the console: {err}\n--- console so far ---\n{}",
                self.transcript
            ),
        }
    }

    /// Waits for the whole next line that starts with `prefix`; returns it.
    pub fn expect_line(&mut self, prefix: &str) -> Result<String> {
        self.expect(prefix)?;
        let (rest, _) = self.expect_regex("\r?\n")?;
        Ok(format!("{prefix}{rest}"))
    }

    /// Reads the console line by line until `done` holds for everything read
    /// so far (for lines that come in no fixed order).
    /// Gives up after [`EXPECT_TIMEOUT`] in all, even while lines keep coming.
    pub fn wait_until(&mut self, what: &str, done: impl Fn(&str) -> bool) -> Result<()> {
        let deadline = std::time::Instant::now() + EXPECT_TIMEOUT;
        while !done(&self.transcript) {
            if std::time::Instant::now() > deadline {
                bail!(
                    "waiting until {what}: not within {} s\n--- console so far ---\n{}",
                    EXPECT_TIMEOUT.as_secs(),
                    self.transcript
                );
            }
            self.expect_regex("\r?\n")
                .with_context(|| format!("waiting until {what}"))?;
        }
        Ok(())
    }

    /// Takes in whatever the console has printed by now, without waiting.
    pub fn drain(&mut self) {
        let mut got = String::new();
        while let Some(c) = self.session.try_read() {
            got.push(c);
        }
        self.record(&got);
    }

    /// Waits until the API listens over TLS and the network agent has
    /// configured the NIC (so the forwarded port reaches the API); returns
    /// the certificate fingerprint the API printed.
    pub fn wait_api_reachable(&mut self) -> Result<String> {
        let marker = "(TLS), certificate sha256 ";
        self.wait_until("the API listens over TLS and the NIC is configured", |t| {
            t.contains(marker)
                && t.lines()
                    .any(|l| l.contains("carapace-net: ") && l.contains(" configured "))
        })?;
        let fingerprint = self
            .transcript
            .lines()
            .rev()
            .find_map(|l| l.split(marker).nth(1))
            .map(|f| f.trim().to_string())
            .unwrap_or_default();
        if fingerprint.len() != 64 {
            bail!("malformed fingerprint {fingerprint:?} on the console");
        }
        Ok(fingerprint)
    }

    /// The host CLI, pointed at this node's forwarded API port.
    pub fn ctl(&self, fingerprint: &str, token: Option<&str>) -> Ctl {
        Ctl {
            endpoint: format!("https://127.0.0.1:{}", self.api_port),
            fingerprint: fingerprint.to_string(),
            token: token.map(str::to_string),
        }
    }

    /// Runs the host CLI with `args` while the console keeps being read (a
    /// full serial line would stall the guest).
    pub fn run_ctl(&mut self, ctl: &Ctl, args: &[&str]) -> Result<CtlOutput> {
        let mut cmd = ctl.command(args)?;
        let out_file = tempfile_path("ctl-out");
        let err_file = tempfile_path("ctl-err");
        cmd.stdout(std::fs::File::create(&out_file)?)
            .stderr(std::fs::File::create(&err_file)?);
        let mut child = cmd.spawn().context("cannot run carapace-ctl")?;
        let deadline = std::time::Instant::now() + EXPECT_TIMEOUT;
        let status = loop {
            self.drain();
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                bail!("carapace-ctl {args:?} did not finish");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = std::fs::read_to_string(&out_file).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_file).unwrap_or_default();
        let _ = std::fs::remove_file(&out_file);
        let _ = std::fs::remove_file(&err_file);
        Ok(CtlOutput {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
        })
    }

    /// Runs the host CLI and requires success; returns its standard output.
    pub fn ctl_ok(&mut self, ctl: &Ctl, args: &[&str]) -> Result<String> {
        let out = self.run_ctl(ctl, args)?;
        if out.code != 0 {
            bail!(
                "carapace-ctl {args:?} exited with {}: {}{}",
                out.code,
                out.stdout,
                out.stderr
            );
        }
        Ok(out.stdout)
    }

    /// The log of container `name` (`carapace-ctl logs container_<name>`),
    /// empty while the container has written none yet.
    pub fn container_log(&mut self, ctl: &Ctl, name: &str) -> Result<String> {
        let service = format!("container_{name}");
        let out = self.run_ctl(ctl, &["logs", &service])?;
        match out.code {
            0 => Ok(out.stdout),
            1 if out.stderr.contains("no log of a service named") => Ok(String::new()),
            code => bail!(
                "carapace-ctl logs {service} exited with {code}: {}{}",
                out.stdout,
                out.stderr
            ),
        }
    }

    /// Waits for `carapace: ready` and parses it.
    pub fn wait_ready(&mut self) -> Result<Ready> {
        let line = self.expect_line("carapace: ready ")?;
        parse_ready(&line).with_context(|| format!("malformed ready line {line:?}"))
    }

    /// Waits for the ready line, the API from the host and the update
    /// daemon on the system bus; returns what booted and the CLI for the
    /// node with `token`.
    pub fn reach_update_daemon(&mut self, token: &str) -> Result<(Ready, Ctl)> {
        let ready = self.wait_ready()?;
        let fingerprint = self.wait_api_reachable()?;
        self.wait_until("the update daemon serves D-Bus", |t| {
            t.contains("carapace-update: serving org.carapace.Update1")
        })?;
        Ok((ready, self.ctl(&fingerprint, Some(token))))
    }

    /// Sends one command to the QEMU human monitor.
    pub fn monitor(&self, command: &str) -> Result<()> {
        let mut last_err = None;
        for _ in 0..50 {
            match std::os::unix::net::UnixStream::connect(&self.monitor) {
                Ok(mut s) => {
                    s.write_all(format!("{command}\n").as_bytes())?;
                    s.flush()?;
                    // Give the monitor a moment to read the line before we hang up.
                    std::thread::sleep(Duration::from_millis(200));
                    return Ok(());
                }
                Err(e) => {
                    last_err = Some(e);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        bail!(
            "cannot reach the QEMU monitor at {}: {:?}",
            self.monitor.display(),
            last_err
        )
    }

    /// Presses the ACPI power button (what clouds and `system_powerdown` do).
    pub fn press_power_button(&self) -> Result<()> {
        self.monitor("system_powerdown")
    }

    /// Waits for QEMU to exit; returns the rest of the console and whether it exited 0.
    pub fn wait_exit(&mut self) -> Result<(String, bool)> {
        let rest = match self.session.exp_eof() {
            Ok(rest) => rest,
            Err(err) => bail!(
                "waiting for QEMU to exit: {err}\n--- console so far ---\n{}",
                self.transcript
            ),
        };
        self.record(&rest);
        let status = self.session.process().wait()?;
        let ok = matches!(status, rexpect::process::WaitStatus::Exited(_, 0));
        Ok((rest, ok))
    }
}

fn tempfile_path(what: &str) -> PathBuf {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("carapace-{what}-{}-{n}", std::process::id()))
}

/// The host's carapace-ctl: `$CARAPACE_CTL` (set by `cargo xtask test`), else
/// built now with cargo.
pub fn ctl_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CARAPACE_CTL") {
        return Ok(PathBuf::from(path));
    }
    static BUILT: std::sync::OnceLock<std::result::Result<PathBuf, String>> =
        std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = workspace_root();
            let status = Command::new(env!("CARGO"))
                .args(["build", "-q", "-p", "carapace-ctl", "--bin", "carapace-ctl"])
                .current_dir(&root)
                .status()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if !status.success() {
                return Err("cargo build -p carapace-ctl failed".into());
            }
            Ok(root.join("target/debug/carapace-ctl"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// How to reach one node's API from the host with the CLI.
#[derive(Debug, Clone)]
pub struct Ctl {
    pub endpoint: String,
    pub fingerprint: String,
    pub token: Option<String>,
}

impl Ctl {
    /// The same node with another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Ctl {
        Ctl {
            token: token.map(str::to_string),
            ..self.clone()
        }
    }

    /// The CLI command line, reaching the node through flags only (the
    /// environment variables of the CLI are cleared so they cannot interfere).
    pub fn command(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new(ctl_binary()?);
        cmd.env_remove("CARAPACE_ENDPOINT")
            .env_remove("CARAPACE_TOKEN")
            .env_remove("CARAPACE_FINGERPRINT")
            .arg("--endpoint")
            .arg(&self.endpoint)
            .arg("--fingerprint")
            .arg(&self.fingerprint);
        if let Some(t) = &self.token {
            cmd.arg("--token").arg(t);
        }
        cmd.args(args).stdin(std::process::Stdio::null());
        Ok(cmd)
    }
}

/// What one CLI run gave.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Where the root hash sits in the kernel command line of the UKI on the ESP:
/// the disk offset of the first hex digit after `roothash=`, and the hash.
pub fn find_uki_roothash(disk: &TestDisk) -> Result<(u64, String)> {
    let esp = disk.partition(part_type::ESP, None)?;
    let bytes = disk.read_at(esp.offset, esp.size as usize)?;
    let mut found = Vec::new();
    for at in find_all(&bytes, b"roothash=") {
        let start = at + "roothash=".len();
        let hex: Vec<u8> = bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .copied()
            .collect();
        if hex.len() == 64 {
            found.push((
                esp.offset + start as u64,
                String::from_utf8_lossy(&hex).into_owned(),
            ));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        n => bail!(
            "expected one roothash= in the ESP of {}, found {n}",
            disk.disk.display()
        ),
    }
}

/// The disk offset of a 4 KiB block of slot A that holds a block of `file`
/// (read on the host): where a byte must be flipped to tamper with that file.
pub fn find_file_block_in_root(disk: &TestDisk, file: &Path) -> Result<u64> {
    let data = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    if data.len() < 3 * 4096 {
        bail!(
            "{} is too small to pick a block from its middle",
            file.display()
        );
    }
    let mid = (data.len() / 2) & !4095;
    let block = &data[mid..mid + 4096];
    let root = disk.partition(part_type::ROOT_X86_64, None)?;
    let bytes = disk.read_at(root.offset, root.size as usize)?;
    let hits: Vec<usize> = (0..bytes.len() / 4096)
        .map(|i| i * 4096)
        .filter(|&off| &bytes[off..off + 4096] == block)
        .collect();
    match hits.as_slice() {
        [one] => Ok(root.offset + *one as u64),
        _ => bail!(
            "expected the block at {mid} of {} exactly once in slot A, found it {} times",
            file.display(),
            hits.len()
        ),
    }
}

/// A static file server on the host's loopback for update bundles: the node
/// reaches it as `http://10.0.2.2:<port>/` through QEMU's user network.
pub struct FileServer {
    pub port: u16,
    /// Every path requested, in order.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Bytes of file bodies sent so far, over all requests.
    pub sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// `http` or `https`.
    scheme: &'static str,
}

impl FileServer {
    /// Serves the files under `root` (GET only; no directory listings).
    pub fn start(root: &Path) -> Result<FileServer> {
        FileServer::start_paced(root, None)
    }

    /// Like [`FileServer::start`], sending at most `bytes_per_second` of
    /// each body (when given), so that a test can act mid-download.
    pub fn start_paced(root: &Path, bytes_per_second: Option<u64>) -> Result<FileServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = requests.clone();
        let counter = sent.clone();
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let root = root.clone();
                let seen = seen.clone();
                let counter = counter.clone();
                std::thread::spawn(move || {
                    serve_file(stream, &root, &seen, &counter, bytes_per_second)
                });
            }
        });
        Ok(FileServer {
            port,
            requests,
            sent,
            scheme: "http",
        })
    }

    /// Serves the files under `root` over HTTPS, with a certificate for the
    /// node's view of the host (10.0.2.2) issued by a CA made for this
    /// server alone; returns the server and that CA's certificate in PEM
    /// (what a node needs in `updates.ca` to trust it).
    pub fn start_https(root: &Path) -> Result<(FileServer, String)> {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "carapace test update CA");
        let ca_key = rcgen::KeyPair::generate()?;
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
        let leaf_key = rcgen::KeyPair::generate()?;
        let leaf = rcgen::CertificateParams::new(vec!["10.0.2.2".to_string()])?
            .signed_by(&leaf_key, &ca)?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )?;
        let config = std::sync::Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (seen, counter, root) = (requests.clone(), sent.clone(), root.to_path_buf());
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (root, seen, counter, config) =
                    (root.clone(), seen.clone(), counter.clone(), config.clone());
                std::thread::spawn(move || {
                    if let Ok(conn) = rustls::ServerConnection::new(config) {
                        let tls = rustls::StreamOwned::new(conn, tcp);
                        serve_file(tls, &root, &seen, &counter, None);
                    }
                });
            }
        });
        Ok((
            FileServer {
                port,
                requests,
                sent,
                scheme: "https",
            },
            ca.pem(),
        ))
    }

    /// The source URL as the node sees it.
    pub fn url_for_node(&self, dir: &str) -> String {
        format!("{}://10.0.2.2:{}/{dir}", self.scheme, self.port)
    }

    /// Bytes of file bodies sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn serve_file<S: Read + Write>(
    mut stream: S,
    root: &Path,
    seen: &std::sync::Mutex<Vec<String>>,
    sent: &std::sync::atomic::AtomicU64,
    bytes_per_second: Option<u64>,
) {
    // The request head, byte by byte up to its blank line (GET has no body).
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        match stream.read(&mut byte) {
            Ok(1) if head.len() < 16 * 1024 => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let first = head.lines().next().unwrap_or("");
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
    if let Ok(mut s) = seen.lock() {
        s.push(path.clone());
    }
    let relative = path.trim_start_matches('/');
    let file = root.join(relative);
    let safe = !relative.split('/').any(|c| c == "..");
    match std::fs::read(&file) {
        Ok(body) if safe && file.is_file() => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if stream.write_all(head.as_bytes()).is_err() {
                return;
            }
            // Paced: a tenth of the rate every 100 ms; under 10 bytes a
            // second, one byte at a time (a server that trickles).
            let (chunk, pause) = match bytes_per_second {
                None => (body.len().max(1), Duration::ZERO),
                Some(r) if r < 10 => (1, Duration::from_millis(1000 / r.max(1))),
                Some(r) => ((r as usize / 10).max(1), Duration::from_millis(100)),
            };
            for piece in body.chunks(chunk) {
                if stream.write_all(piece).is_err() {
                    return;
                }
                sent.fetch_add(piece.len() as u64, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(pause);
            }
        }
        _ => {
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    }
}

/// The directory of update sources `cargo xtask test` prepares: `good/`
/// offers the next version of the test image, `broken/` a version that never
/// becomes healthy.
pub fn update_sources() -> PathBuf {
    std::env::var_os("CARAPACE_UPDATE_SOURCES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/updates"))
}

/// The test container image as an OCI layout (made by `cargo xtask test`).
pub fn test_oci_layout() -> PathBuf {
    std::env::var_os("CARAPACE_TEST_OCI_LAYOUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/test-container-oci"))
}

/// An OCI registry on the host's loopback (Debian's docker-registry, with
/// its storage in a directory of its own), stopped when dropped. The node
/// reaches it as `10.0.2.2:<port>` over plain HTTP.
pub struct Registry {
    pub port: u16,
    dir: PathBuf,
    child: std::process::Child,
}

impl Registry {
    /// Starts a registry and waits until it answers `/v2/`.
    pub fn start(name: &str) -> Result<Registry> {
        let port = free_port()?;
        let dir = workspace_root()
            .join("target/qemu-tests")
            .join(format!("registry-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("storage"))?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("storage").display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::fs::File::create(dir.join("registry.log"))?)
            .stderr(std::fs::File::create(dir.join("registry.err"))?)
            .spawn()
            .context("cannot start docker-registry (package docker-registry)")?;
        let registry = Registry { port, dir, child };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") {
                    return Ok(registry);
                }
            }
            if std::time::Instant::now() > deadline {
                bail!("docker-registry did not answer on port {port}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pushes the OCI layout `layout` (tag `tag` in its index) as
    /// `<repository>:<target_tag>` with skopeo.
    pub fn push(&self, layout: &Path, tag: &str, repository: &str, target_tag: &str) -> Result<()> {
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!(
                "docker://127.0.0.1:{}/{repository}:{target_tag}",
                self.port
            ))
            .output()
            .context("cannot run skopeo (package skopeo)")?;
        if !out.status.success() {
            bail!(
                "skopeo copy to the test registry failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The image reference as the node sees it.
    pub fn reference_for_node(&self, repository: &str, tag: &str) -> String {
        format!("10.0.2.2:{}/{repository}:{tag}", self.port)
    }

    /// The registry host as the node's settings name it.
    pub fn host_for_node(&self) -> String {
        format!("10.0.2.2:{}", self.port)
    }

    /// Manifest and blob requests the registry has logged so far (its
    /// access log), to tell a pull from a cached start.
    pub fn log(&self) -> String {
        let mut all = std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default();
        all.push_str(&std::fs::read_to_string(self.dir.join("registry.err")).unwrap_or_default());
        all
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("CARAPACE_KEEP_TEST_DISKS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_ready_line() {
        let r =
            parse_ready("carapace: ready version=0.1.0 roothash=abcd at 1234 ms").expect("parses");
        assert_eq!(r.version, "0.1.0");
        assert_eq!(r.roothash, "abcd");
        assert_eq!(r.ms, 1234);
        assert!(parse_ready("carapace: ready version=0.1.0").is_none());
    }

    #[test]
    fn finds_needles() {
        assert_eq!(find_all(b"abcabc", b"bc"), vec![1, 4]);
        assert!(find_all(b"ab", b"abc").is_empty());
    }
}
