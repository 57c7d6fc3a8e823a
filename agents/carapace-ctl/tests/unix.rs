//! The client and the command against a fake node on a Unix socket: the
//! requests sent (methods, paths, bodies, no token), keep-alive, output in
//! both formats, and the exit codes of refusals and failures.

mod common;

use carapace_ctl::{Client, Endpoint, Error, Method};
use common::{json, settings, Node, Reply, Seen};
use serde_json::json;

fn seen(method: &str, path: &str) -> (String, String) {
    (method.to_string(), path.to_string())
}

fn requests(node: &Node) -> Vec<(String, String)> {
    node.seen()
        .into_iter()
        .map(|s| (s.method, s.path))
        .collect()
}

/// A node that accepts everything and answers like the real one.
fn agreeable(s: &Seen) -> Reply {
    match (s.method.as_str(), s.path.as_str()) {
        ("GET", "/v1/settings") => json(200, settings()),
        ("GET", "/v1/settings/network/dns") => json(200, json!(["9.9.9.9"])),
        ("GET", "/v1/settings/pending") => {
            let mut pending = settings();
            pending["hostname"] = json!("node2");
            json(200, pending)
        }
        ("PATCH", "/v1/settings") => json(200, settings()),
        ("DELETE", "/v1/settings/pending") => Reply::Empty(204),
        ("POST", "/v1/settings/commit") => json(
            200,
            json!({"applied": ["hostname", "network"], "settings": settings()}),
        ),
        ("GET", "/v1/status") => json(
            200,
            json!({
                "version": "0.1.0",
                "uptime_seconds": 12,
                "services": [{"name": "api", "state": "running", "restarts": 0}],
                "api": {"certificate_sha256": "ab".repeat(32)},
            }),
        ),
        ("POST", "/v1/power/reboot") => json(202, json!({"requested": "reboot"})),
        ("POST", "/v1/power/poweroff") => json(202, json!({"requested": "poweroff"})),
        _ => json(404, json!({"error": "no such route"})),
    }
}

#[tokio::test]
async fn the_client_sends_many_requests_on_one_connection_without_a_token() {
    let node = Node::unix(agreeable);
    let endpoint = Endpoint::parse(&node.endpoint).expect("endpoint");
    // A token given for a local socket is not sent.
    let mut client = Client::connect(&endpoint, Some("secret"), None)
        .await
        .expect("connect");
    assert_eq!(
        client.get_json("/v1/settings").await.expect("get"),
        settings()
    );
    let patch = json!({"hostname": "node2"});
    let staged = client
        .call(Method::PATCH, "/v1/settings", Some(&patch))
        .await
        .expect("patch");
    assert_eq!(staged.status, 200);
    let committed = client
        .call(Method::POST, "/v1/settings/commit", None)
        .await
        .expect("commit");
    assert_eq!(
        committed.json().expect("json")["applied"],
        json!(["hostname", "network"])
    );

    assert_eq!(node.connections(), 1, "keep-alive: one connection");
    let seen = node.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.authorization.is_none()), "{seen:?}");
    assert_eq!(
        (seen[1].method.as_str(), seen[1].path.as_str()),
        ("PATCH", "/v1/settings")
    );
    assert_eq!(seen[1].json(), patch);
    assert_eq!(seen[1].content_type.as_deref(), Some("application/json"));
    assert_eq!(
        (seen[2].method.as_str(), seen[2].body.as_str()),
        ("POST", "")
    );
}

#[tokio::test]
async fn request_returns_any_status_and_call_turns_it_into_an_error() {
    let node = Node::unix(|_| json(404, json!({"error": "no setting x", "path": "x"})));
    let endpoint = Endpoint::parse(&node.endpoint).expect("endpoint");
    let mut client = Client::connect(&endpoint, None, None)
        .await
        .expect("connect");
    let raw = client
        .request(Method::GET, "/v1/settings/x", None)
        .await
        .expect("request");
    assert_eq!(raw.status, 404);
    match client.call(Method::GET, "/v1/settings/x", None).await {
        Err(Error::Refused {
            status: 404,
            path: Some(p),
            message,
        }) => {
            assert_eq!(p, "x");
            assert_eq!(message, "no setting x");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_socket_is_unreachable() {
    let endpoint = Endpoint::Unix("/nonexistent/carapace/api.sock".into());
    match Client::connect(&endpoint, None, None).await {
        Err(e @ Error::Unreachable { .. }) => {
            assert_eq!(e.exit_code(), 3);
            assert!(
                e.to_string().contains("/nonexistent/carapace/api.sock"),
                "{e}"
            );
        }
        other => panic!("expected unreachable, got {other:?}"),
    }
}

#[test]
fn set_stages_one_merged_patch_and_commits_it() {
    let node = Node::unix(agreeable);
    let run = node.ctl(&[
        "set",
        "hostname=node2",
        "network.dhcp=false",
        r#"network.dns=["1.1.1.1","9.9.9.9"]"#,
        "ntp.servers=null",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "committed; applied: hostname, network\n");
    assert_eq!(
        requests(&node),
        vec![
            seen("PATCH", "/v1/settings"),
            seen("POST", "/v1/settings/commit")
        ]
    );
    assert_eq!(
        node.seen()[0].json(),
        json!({
            "hostname": "node2",
            "network": {"dhcp": false, "dns": ["1.1.1.1", "9.9.9.9"]},
            "ntp": {"servers": null},
        })
    );
    assert_eq!(node.connections(), 1);
}

#[test]
fn set_with_stage_only_stages() {
    let node = Node::unix(agreeable);
    let run = node.ctl(&["set", "--stage", "hostname=node2"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("carapace-ctl apply"), "{run:?}");
    assert_eq!(requests(&node), vec![seen("PATCH", "/v1/settings")]);
    assert_eq!(node.seen()[0].json(), json!({"hostname": "node2"}));

    // In JSON, the pending tree as the node sent it.
    let run = node.ctl(&["--output", "json", "set", "--stage", "hostname=node2"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).expect("json output");
    assert_eq!(printed, settings());
}

#[test]
fn a_refused_field_exits_1_with_its_path_and_nothing_is_committed() {
    let node = Node::unix(|s| match s.method.as_str() {
        "PATCH" => json(
            400,
            json!({"error": "not an IP address: \"x\"", "path": "network.dns[0]"}),
        ),
        _ => json(500, json!({"error": "must not be called"})),
    });
    let run = node.ctl(&["set", "network.dns=[\"x\"]"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(
        run.stderr,
        "carapace-ctl: network.dns[0]: not an IP address: \"x\"\n"
    );
    assert_eq!(run.stdout, "");
    assert_eq!(requests(&node), vec![seen("PATCH", "/v1/settings")]);
}

#[test]
fn a_failed_commit_exits_5_and_says_the_change_stays_staged() {
    let node = Node::unix(|s| match s.method.as_str() {
        "PATCH" => json(200, settings()),
        _ => json(
            500,
            json!({"error": "applying network failed: no such device eth9; rolled back"}),
        ),
    });
    let run = node.ctl(&["set", "hostname=node2"]);
    assert_eq!(run.code, Some(5), "{run:?}");
    assert!(run.stderr.contains("no such device eth9"), "{run:?}");
    assert!(run.stderr.contains("stays staged"), "{run:?}");
    assert_eq!(
        requests(&node),
        vec![
            seen("PATCH", "/v1/settings"),
            seen("POST", "/v1/settings/commit")
        ]
    );
}

#[test]
fn apply_with_nothing_staged_is_a_refusal() {
    let node = Node::unix(|_| json(409, json!({"error": "nothing is staged"})));
    let run = node.ctl(&["apply"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(run.stderr, "carapace-ctl: nothing is staged\n");
    assert_eq!(requests(&node), vec![seen("POST", "/v1/settings/commit")]);
}

#[test]
fn get_prints_key_value_lines_or_the_json() {
    let node = Node::unix(agreeable);
    let run = node.ctl(&["get"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines.contains(&"hostname = \"node1\""), "{run:?}");
    assert!(lines.contains(&"network.dns = [\"9.9.9.9\"]"), "{run:?}");
    assert!(
        lines.contains(&"sysctl.\"net.ipv4.ip_forward\" = \"1\""),
        "{run:?}"
    );

    let run = node.ctl(&["get", "network.dns"]);
    assert_eq!(run.stdout, "network.dns = [\"9.9.9.9\"]\n", "{run:?}");

    let run = node.ctl(&["get", "network.dns", "--output", "json"]);
    assert_eq!(run.stdout, "[\"9.9.9.9\"]\n", "{run:?}");

    let run = node.ctl(&["get", "nope"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(
        requests(&node),
        vec![
            seen("GET", "/v1/settings"),
            seen("GET", "/v1/settings/network/dns"),
            seen("GET", "/v1/settings/network/dns"),
            seen("GET", "/v1/settings/nope"),
        ]
    );
}

#[test]
fn pending_shows_what_changes() {
    let node = Node::unix(agreeable);
    let run = node.ctl(&["pending"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "hostname = \"node2\" (was \"node1\")\n");
    assert_eq!(
        requests(&node),
        vec![
            seen("GET", "/v1/settings/pending"),
            seen("GET", "/v1/settings")
        ]
    );
}

#[test]
fn discard_deletes_the_pending_transaction() {
    let node = Node::unix(agreeable);
    let run = node.ctl(&["discard"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        requests(&node),
        vec![seen("DELETE", "/v1/settings/pending")]
    );
}

#[test]
fn status_prints_a_summary_or_the_json() {
    let node = Node::unix(agreeable);
    let run = node.ctl(&["status"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"version = 0.1.0"), "{run:?}");
    assert!(lines.contains(&"uptime_seconds = 12"), "{run:?}");
    assert!(lines.contains(&"api      running  0"), "{run:?}");

    let run = node.ctl(&["--output=json", "status"]);
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(printed["version"], "0.1.0");
}

#[test]
fn reboot_and_poweroff_post_to_the_power_routes() {
    let node = Node::unix(agreeable);
    let run = node.ctl(&["reboot"]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (Some(0), "reboot requested\n")
    );
    let run = node.ctl(&["poweroff", "--output", "json"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout.trim(), r#"{"requested":"poweroff"}"#);
    assert_eq!(
        requests(&node),
        vec![
            seen("POST", "/v1/power/reboot"),
            seen("POST", "/v1/power/poweroff")
        ]
    );
}

#[test]
fn a_node_failure_exits_5() {
    let node = Node::unix(|_| {
        json(
            500,
            json!({"error": "cannot read /run/carapace/services.json"}),
        )
    });
    let run = node.ctl(&["status"]);
    assert_eq!(run.code, Some(5), "{run:?}");
    assert!(run.stderr.contains("services.json"), "{run:?}");
}

#[test]
fn an_absent_node_exits_3() {
    let run = common::run(common::ctl_command().args([
        "--endpoint",
        "unix:/nonexistent/api.sock",
        "status",
    ]));
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.stderr.contains("cannot reach the node"), "{run:?}");
}

/// A node whose update daemon downloads: busy for two looks, then `end`.
fn updating(end: serde_json::Value) -> impl FnMut(&Seen) -> Reply {
    let mut looks = 0;
    move |s: &Seen| match (s.method.as_str(), s.path.as_str()) {
        ("POST", "/v1/update/download") => json(202, json!({"started": "download"})),
        ("GET", "/v1/update") => {
            looks += 1;
            if looks <= 2 {
                json(
                    200,
                    json!({"state": "downloading", "progress": 0.5, "running": "0.1.0",
                           "slot": "a", "blessed": true}),
                )
            } else {
                json(200, end.clone())
            }
        }
        _ => json(404, json!({"error": "no such route"})),
    }
}

#[test]
fn update_status_shows_the_daemons_report_and_a_waited_download_its_end() {
    let report = json!({"state": "ready-to-reboot", "progress": 1.0, "running": "0.1.0",
                        "slot": "a", "blessed": true, "fallback": "", "available": "0.2.0",
                        "staged": "0.2.0", "rolled_back": "", "error": ""});
    let node = Node::unix(updating(report.clone()));
    let run = node.ctl(&["update", "download", "--wait"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        run.stdout,
        "state ready-to-reboot (100%)\nrunning 0.1.0 (slot a, blessed)\nfallback none\n\
         available 0.2.0\nstaged 0.2.0\nrolled back none\n"
    );
    let looks = node
        .seen()
        .iter()
        .filter(|s| s.path == "/v1/update")
        .count();
    assert_eq!(looks, 3, "followed until the download ended");

    let failed = json!({"state": "error", "running": "0.1.0", "slot": "b",
                        "error": "the signature does not verify"});
    let node = Node::unix(updating(failed));
    let run = node.ctl(&["update", "download", "--wait"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains("the download failed: the signature does not verify"),
        "{run:?}"
    );

    let node = Node::unix(updating(report));
    let run = node.ctl(&["update", "status"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        run.stdout,
        "state downloading (50%)\nrunning 0.1.0 (slot a, blessed)\nfallback none\n\
         available none\nstaged none\nrolled back none\n"
    );
}
