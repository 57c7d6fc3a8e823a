//! `cargo xtask bench api`: boots the release image with a token in its user
//! data and measures the API the way a remote operator reaches it (TLS on
//! the forwarded port, pinned certificate, bearer token): the latency of a
//! settings read and of a commit, one client at a time, and then 32 clients
//! reading concurrently for 30 seconds — requests per second, latency, and
//! every failed request counted.

use crate::image::{self, Variant};
use anyhow::{bail, Context, Result};
use carapace_ctl::{Client, Endpoint, Fingerprint, Method};
use qemu_tests::TestDisk;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-token-0123456789";

/// Latencies in microseconds, summarised.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<u64>) -> String {
    v.sort_unstable();
    format!(
        "  {name}: median {:.1} ms, p99 {:.1} ms ({} requests)\n",
        percentile(&v, 0.5) as f64 / 1000.0,
        percentile(&v, 0.99) as f64 / 1000.0,
        v.len()
    )
}

/// What the concurrent phase saw.
#[derive(Default)]
struct Load {
    latencies: Vec<u64>,
    failures: Vec<String>,
}

async fn connect(endpoint: &Endpoint, fingerprint: &Fingerprint) -> Result<Client> {
    Client::connect(endpoint, Some(TOKEN), Some(fingerprint))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

async fn measure(
    endpoint: Endpoint,
    fingerprint: Fingerprint,
    clients: usize,
    secs: u64,
) -> Result<String> {
    let mut report = String::new();
    // One client at a time: reads, then commits (each a PATCH and a commit).
    let mut client = connect(&endpoint, &fingerprint).await?;
    let mut reads = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        client
            .call(Method::GET, "/v1/settings", None)
            .await
            .map_err(|e| anyhow::anyhow!("read: {e}"))?;
        reads.push(t.elapsed().as_micros() as u64);
    }
    let mut commits = Vec::new();
    for i in 0..50 {
        let patch = serde_json::json!({ "hostname": format!("bench-{i}") });
        let t = Instant::now();
        client
            .call(Method::PATCH, "/v1/settings", Some(&patch))
            .await
            .map_err(|e| anyhow::anyhow!("stage: {e}"))?;
        client
            .call(Method::POST, "/v1/settings/commit", None)
            .await
            .map_err(|e| anyhow::anyhow!("commit: {e}"))?;
        commits.push(t.elapsed().as_micros() as u64);
    }
    report.push_str("one client at a time\n");
    report.push_str(&summary("settings read (GET /v1/settings)", reads));
    report.push_str(&summary(
        "commit (PATCH + POST /v1/settings/commit, fsynced)",
        commits,
    ));

    // Many clients at once, each on its own TLS connection.
    let load = Arc::new(Mutex::new(Load::default()));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for n in 0..clients {
        let (endpoint, load) = (endpoint.clone(), load.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = match connect(&endpoint, &fingerprint).await {
                Ok(c) => c,
                Err(e) => {
                    if let Ok(mut l) = load.lock() {
                        l.failures.push(format!("client {n} connect: {e}"));
                    }
                    return;
                }
            };
            while Instant::now() < deadline {
                let t = Instant::now();
                let result = client.call(Method::GET, "/v1/settings", None).await;
                let us = t.elapsed().as_micros() as u64;
                if let Ok(mut l) = load.lock() {
                    match result {
                        Ok(_) => l.latencies.push(us),
                        Err(e) => l.failures.push(format!("client {n}: {e}")),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("a client task failed")?;
    }
    let load = std::mem::take(&mut *load.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let ok = load.latencies.len();
    report.push_str(&format!("{clients} concurrent clients for {secs} s\n"));
    report.push_str(&format!(
        "  requests: {ok} succeeded, {} failed; {:.0} requests per second\n",
        load.failures.len(),
        ok as f64 / secs as f64
    ));
    report.push_str(&summary("settings read under load", load.latencies));
    for f in load.failures.iter().take(5) {
        report.push_str(&format!("  failure: {f}\n"));
    }
    if !load.failures.is_empty() {
        bail!("{report}{} requests failed", load.failures.len());
    }
    Ok(report)
}

/// Runs the benchmark and writes the report to build/bench-api.txt.
pub fn api(root: &Path, clients: usize, secs: u64) -> Result<()> {
    let img = image::build(root, Variant::Release)?;
    let disk = TestDisk::copy_of(&img.disk, "bench-api")?;
    let mut node = disk.boot_with_user_data(&format!(
        "hostname = \"bench\"\n[api]\ntoken = \"{TOKEN}\"\n"
    ))?;
    node.wait_ready()?;
    let fingerprint = node.wait_api_reachable()?;
    let fingerprint = Fingerprint::parse(&fingerprint).map_err(|e| anyhow::anyhow!("{e}"))?;
    let endpoint = Endpoint::Https {
        host: "127.0.0.1".into(),
        port: node.api_port,
    };
    // The load runs on its own thread; this one keeps reading the console,
    // whose output would otherwise back up and stall the guest.
    let worker = std::thread::spawn(move || -> Result<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(measure(endpoint, fingerprint, clients, secs))
    });
    while !worker.is_finished() {
        node.drain();
        std::thread::sleep(Duration::from_millis(50));
    }
    let result = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))?;
    node.press_power_button()?;
    node.wait_exit()?;
    let body = result?;
    let report = format!(
        "API benchmark: {} under TCG, over TLS on the forwarded port\n{body}",
        img.disk.display()
    );
    print!("{report}");
    std::fs::write(root.join("build/bench-api.txt"), &report)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 51);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(percentile(&[7], 0.99), 7);
    }
}
