//! `cargo xtask bench containers`: what running containers costs on a node
//! of the release image. A docker-registry on the host serves the test
//! container image (pushed with skopeo); through the API (TLS, forwarded
//! port) the benchmark commits a container and times the commit to the
//! container's first log line — once with a cold store (the pull included)
//! and once with the image cached — then reads the node's memory in use
//! (MemTotal − MemAvailable, from `/v1/status`) with no containers and with
//! ten idle ones.

use crate::image::{self, Variant};
use anyhow::{bail, Context, Result};
use carapace_ctl::{Client, Endpoint, Fingerprint, Method};
use qemu_tests::{Registry, TestDisk};
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-token-0123456789";

async fn commit(client: &mut Client, patch: serde_json::Value) -> Result<()> {
    client
        .call(Method::PATCH, "/v1/settings", Some(&patch))
        .await
        .map_err(|e| anyhow::anyhow!("stage: {e}"))?;
    client
        .call(Method::POST, "/v1/settings/commit", None)
        .await
        .map_err(|e| anyhow::anyhow!("commit: {e}"))?;
    Ok(())
}

async fn status(client: &mut Client) -> Result<serde_json::Value> {
    client
        .get_json("/v1/status")
        .await
        .map_err(|e| anyhow::anyhow!("status: {e}"))
}

/// Bytes of memory in use on the node.
async fn memory_in_use(client: &mut Client) -> Result<u64> {
    let s = status(client).await?;
    let total = s["memory"]["total_bytes"]
        .as_u64()
        .context("memory total")?;
    let available = s["memory"]["available_bytes"]
        .as_u64()
        .context("memory available")?;
    Ok(total - available)
}

/// Commits the container `name` and times it until its first log line.
async fn first_line(client: &mut Client, name: &str, image: &str) -> Result<Duration> {
    let start = Instant::now();
    commit(
        client,
        serde_json::json!({ "containers": { name: { "image": image } } }),
    )
    .await?;
    let path = format!("/v1/logs?service=container_{name}&lines=100");
    loop {
        if let Ok(v) = client.call(Method::GET, &path, None).await {
            if String::from_utf8_lossy(&v.body).contains("hello from the test container") {
                return Ok(start.elapsed());
            }
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("container {name} printed nothing within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every container in `names` runs.
async fn all_running(client: &mut Client, names: &[String]) -> Result<()> {
    let start = Instant::now();
    loop {
        let s = status(client).await?;
        let running = s["containers"]
            .as_array()
            .map(|cs| {
                names.iter().all(|n| {
                    cs.iter()
                        .any(|c| c["name"] == n.as_str() && c["state"] == "running")
                })
            })
            .unwrap_or(false);
        if running {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("not all of {names:?} ran within 300 s: {}", s["containers"]);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn measure(endpoint: Endpoint, fingerprint: Fingerprint, image: String) -> Result<String> {
    let mut client = Client::connect(&endpoint, Some(TOKEN), Some(&fingerprint))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Let the boot settle before the first memory reading.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = memory_in_use(&mut client).await?;
    let cold = first_line(&mut client, "cold", &image).await?;
    commit(
        &mut client,
        serde_json::json!({ "containers": { "cold": null } }),
    )
    .await?;
    let cached = first_line(&mut client, "cached", &image).await?;
    commit(
        &mut client,
        serde_json::json!({ "containers": { "cached": null } }),
    )
    .await?;
    let names: Vec<String> = (1..=10).map(|i| format!("idle{i}")).collect();
    let mut containers = serde_json::Map::new();
    for n in &names {
        containers.insert(n.clone(), serde_json::json!({ "image": image }));
    }
    commit(&mut client, serde_json::json!({ "containers": containers })).await?;
    all_running(&mut client, &names).await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let ten = memory_in_use(&mut client).await?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    Ok(format!(
        "  commit to the container's first log line, image pulled cold: {} ms\n  \
         commit to the container's first log line, image cached: {} ms\n  \
         memory in use (MemTotal - MemAvailable), no containers: {:.1} MiB\n  \
         memory in use, ten idle containers: {:.1} MiB ({:.1} MiB each)\n",
        cold.as_millis(),
        cached.as_millis(),
        mib(idle),
        mib(ten),
        mib(ten.saturating_sub(idle)) / 10.0
    ))
}

/// Runs the benchmark and writes the report to build/bench-containers.txt.
pub fn containers(root: &Path) -> Result<()> {
    let img = image::build(root, Variant::Release)?;
    crate::host::ensure_packages(crate::host::TEST_TOOLS)?;
    let bins = crate::binaries::build(root, &[("qemu-tests", "carapace-test-container")])?;
    let layout = crate::oci_layout::write(&bins[0], &root.join("build/test-container-oci"))?;
    let registry = Registry::start("bench")?;
    registry.push(&layout, crate::oci_layout::TAG, "bench/hello", "1")?;
    let image = registry.reference_for_node("bench/hello", "1");

    let disk = TestDisk::copy_of(&img.disk, "bench-containers")?;
    let mut node = disk.boot_with_user_data(&format!(
        "[api]\ntoken = \"{TOKEN}\"\n[registries.\"{}\"]\ninsecure = true\n",
        registry.host_for_node()
    ))?;
    node.wait_ready()?;
    let fingerprint = node.wait_api_reachable()?;
    let fingerprint = Fingerprint::parse(&fingerprint).map_err(|e| anyhow::anyhow!("{e}"))?;
    let endpoint = Endpoint::Https {
        host: "127.0.0.1".into(),
        port: node.api_port,
    };
    // The console keeps being read on this thread while the work runs.
    let worker = std::thread::spawn(move || -> Result<String> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(measure(endpoint, fingerprint, image))
    });
    while !worker.is_finished() {
        node.drain();
        std::thread::sleep(Duration::from_millis(50));
    }
    let result = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the benchmark thread panicked"))?;
    node.press_power_button()?;
    node.wait_exit()?;
    let report = format!(
        "Container benchmark: {} under TCG (1 vCPU, 1 GiB), registry on the host over QEMU's user network\n{}",
        img.disk.display(),
        result?
    );
    print!("{report}");
    std::fs::write(root.join("build/bench-containers.txt"), &report)?;
    Ok(())
}
