//! The command line itself: usage errors exit with 2 before any connection
//! is tried, and `--help` documents the exit codes.

mod common;

use common::{ctl_command, run};

fn ctl(args: &[&str]) -> common::Run {
    // An endpoint nobody serves: a usage error must be found before
    // connecting (else this would exit 3).
    run(ctl_command()
        .args(["--endpoint", "unix:/nonexistent/api.sock"])
        .args(args))
}

#[test]
fn help_documents_the_exit_codes() {
    let r = run(ctl_command().arg("--help"));
    assert_eq!(r.code, Some(0), "{r:?}");
    for expected in [
        "Exit codes:",
        "0  success",
        "1  the node refused",
        "2  usage error",
        "3  cannot reach the node",
        "4  authentication refused",
        "5  the node failed",
        "CARAPACE_ENDPOINT",
        "CARAPACE_TOKEN",
        "CARAPACE_FINGERPRINT",
    ] {
        assert!(
            r.stdout.contains(expected),
            "{expected:?} missing from\n{}",
            r.stdout
        );
    }
}

#[test]
fn clap_usage_errors_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["set"],
        &["logs", "-n", "many"],
        &["--output", "yaml", "status"],
        &[],
    ] {
        let r = ctl(args);
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
    }
}

#[test]
fn bad_pairs_exit_2_before_connecting() {
    for (args, says) in [
        (&["set", "hostname"][..], "KEY=VALUE"),
        (&["set", "a=1", "a.b=2"], "conflict"),
        (&["set", "a..b=1"], "empty segment"),
        (&["get", "a..b"], "empty segment"),
    ] {
        let r = ctl(args);
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(r.stderr.starts_with("carapace-ctl: "), "{r:?}");
        assert!(r.stderr.contains(says), "{args:?}: {r:?}");
    }
}

#[test]
fn bad_endpoints_and_fingerprints_exit_2() {
    let r = run(ctl_command().args(["--endpoint", "http://node:8443", "status"]));
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("https://"), "{r:?}");
    let r = run(ctl_command()
        .env("CARAPACE_ENDPOINT", "https://node")
        .env("CARAPACE_FINGERPRINT", "abc")
        .arg("status"));
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("invalid fingerprint"), "{r:?}");
}
