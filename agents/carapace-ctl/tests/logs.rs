//! Logs: the query sent, and streaming — each line reaches the caller (the
//! library's stream, the command's stdout) while the response is still
//! open, before the node sends the next one.

mod common;

use carapace_ctl::{Client, Endpoint, LogEntry, Method};
use common::{json, Node, Reply};
use serde_json::json;
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

fn entry(service: &str, ms: u64, line: &str) -> String {
    format!("{}\n", json!({"service": service, "ms": ms, "line": line}))
}

/// A node whose next log response streams from the returned sender.
fn streaming_node() -> (Node, UnboundedSender<String>) {
    let (tx, rx) = unbounded_channel();
    let rx: Arc<Mutex<Option<UnboundedReceiver<String>>>> = Arc::new(Mutex::new(Some(rx)));
    let node = Node::unix(move |s| {
        if !s.path.starts_with("/v1/logs") {
            return json(404, json!({"error": "no such route"}));
        }
        match rx.lock().expect("rx").take() {
            Some(rx) => Reply::Stream(rx),
            None => json(500, json!({"error": "one stream only"})),
        }
    });
    (node, tx)
}

#[tokio::test]
async fn the_stream_yields_each_line_as_it_arrives() {
    let (node, tx) = streaming_node();
    let endpoint = Endpoint::parse(&node.endpoint).expect("endpoint");
    let mut client = Client::connect(&endpoint, None, None)
        .await
        .expect("connect");
    let path = carapace_ctl::logs_path(Some("api"), Some(5), true);
    tx.send(entry("api", 1, "first")).expect("send");
    let mut stream = client.stream(Method::GET, &path).await.expect("stream");

    let line = stream.next_line().await.expect("read").expect("a line");
    assert_eq!(
        LogEntry::parse(&line).expect("entry"),
        LogEntry {
            service: "api".into(),
            ms: 1,
            line: "first".into()
        }
    );
    // The second line does not exist yet: only now is it sent, split in
    // two chunks, with a third line in the second chunk.
    let second = entry("api", 2, "second");
    let (a, b) = second.split_at(10);
    tx.send(a.to_string()).expect("send");
    tx.send(format!("{b}{}", entry("api", 3, "third")))
        .expect("send");
    let line = stream.next_line().await.expect("read").expect("a line");
    assert_eq!(LogEntry::parse(&line).expect("entry").line, "second");
    let line = stream.next_line().await.expect("read").expect("a line");
    assert_eq!(LogEntry::parse(&line).expect("entry").line, "third");
    drop(tx);
    assert_eq!(stream.next_line().await.expect("end"), None);

    let seen = node.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/v1/logs?follow=true&lines=5&service=api");
}

#[tokio::test]
async fn an_unknown_service_is_refused() {
    let node = Node::unix(|_| json(404, json!({"error": "no log of a service named \"x\""})));
    let endpoint = Endpoint::parse(&node.endpoint).expect("endpoint");
    let mut client = Client::connect(&endpoint, None, None)
        .await
        .expect("connect");
    match client.stream(Method::GET, "/v1/logs?service=x").await {
        Err(e) => {
            assert_eq!(e.exit_code(), 1);
            assert!(e.to_string().contains("no log of a service"), "{e}");
        }
        Ok(_) => panic!("a 404 must not stream"),
    }
}

#[test]
fn logs_follow_prints_lines_as_they_come() {
    let (node, tx) = streaming_node();
    let mut child = common::ctl_command()
        .env("CARAPACE_ENDPOINT", &node.endpoint)
        .args(["logs", "-f", "-n", "2", "api"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();

    tx.send(entry("api", 1, "hello")).expect("send");
    out.read_line(&mut line).expect("read");
    assert_eq!(line, "[api] hello\n");

    // Printed before the stream ends, so this is read while it is open.
    line.clear();
    tx.send(entry("api", 2, "world")).expect("send");
    out.read_line(&mut line).expect("read");
    assert_eq!(line, "[api] world\n");

    drop(tx);
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("read");
    assert_eq!(rest, "");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        node.seen()[0].path,
        "/v1/logs?follow=true&lines=2&service=api"
    );
}

#[test]
fn logs_in_json_are_the_ndjson_lines() {
    let (node, tx) = streaming_node();
    tx.send(entry("api", 1, "a")).expect("send");
    tx.send(entry("ntp", 2, "b")).expect("send");
    drop(tx);
    let run = node.ctl(&["logs", "--output", "json"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        run.stdout,
        format!("{}{}", entry("api", 1, "a"), entry("ntp", 2, "b"))
    );
    assert_eq!(node.seen()[0].path, "/v1/logs?follow=false");
}

#[test]
fn logs_of_an_unknown_service_exit_1() {
    let node = Node::unix(|_| json(404, json!({"error": "no log of a service named \"x\""})));
    let run = node.ctl(&["logs", "x"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(
        run.stderr,
        "carapace-ctl: no log of a service named \"x\"\n"
    );
}
