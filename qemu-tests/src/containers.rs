//! What the container scenarios share: the node's status as JSON (through
//! the host CLI over TLS), one container in it, waiting for a container to
//! reach a state or to log a line, and asking the port the test container
//! serves on the host network (forwarded to the host).

use crate::{Ctl, Node};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// How long a container may take to get where a test waits for it: a
/// guard against a hung node, generous for TCG, not a performance figure.
pub const WAIT: Duration = Duration::from_secs(300);

/// `carapace-ctl --output json status`, parsed.
pub fn status(node: &mut Node, ctl: &Ctl) -> Result<Value> {
    let out = node.ctl_ok(ctl, &["--output", "json", "status"])?;
    serde_json::from_str(&out).with_context(|| format!("status printed {out:?}"))
}

/// The container `name` in a status, if it is there.
pub fn container<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["containers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

/// Polls status (each poll is the API answering over TLS) until `done`
/// holds for the container `name`; `what` names the wait in the error.
pub fn wait_container(
    node: &mut Node,
    ctl: &Ctl,
    name: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(node, ctl).with_context(|| format!("while waiting for {name}: {what}"))?;
        if let Some(c) = container(&s, name) {
            if done(c) {
                return Ok(c.clone());
            }
        }
        ensure!(
            Instant::now() < deadline,
            "container {name}: {what}: not within {} s; status {}",
            WAIT.as_secs(),
            s["containers"]
        );
        node.drain();
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Polls the container's log until it holds `marker`; returns the log.
pub fn wait_log(node: &mut Node, ctl: &Ctl, name: &str, marker: &str) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let logs = node.container_log(ctl, name)?;
        if logs.contains(marker) {
            return Ok(logs);
        }
        ensure!(
            Instant::now() < deadline,
            "container {name}: no {marker:?} in its log within {} s: {logs}",
            WAIT.as_secs()
        );
        node.drain();
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Sends `line` to the test container's port 8080 (host network, forwarded
/// to `node.app_port`) and returns the answer, retrying for a minute.
pub fn ask(node: &mut Node, line: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        node.drain();
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", node.app_port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(format!("{line}\n").as_bytes())?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok(answer)
        })();
        match attempt {
            Ok(answer) if !answer.is_empty() => return Ok(answer),
            _ if Instant::now() > deadline => {
                bail!("nothing answered on the node's port 8080: {attempt:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}
