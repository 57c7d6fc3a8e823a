//! Through the public API only: a DHCP exchange with a fake slirp-like
//! server, driven by a fake clock, ends in the console line the QEMU tests
//! wait for and in the network.json document the API server reads.

use carapace_model::settings::Network;
use carapace_net::config::{configured_line, plan_dhcp};
use carapace_net::dhcp_client::{Action, Client};
use carapace_net::status::{LinkState, NetworkStatus};
use std::time::Instant;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// What slirp answers: same xid and chaddr, 10.0.2.15/24, router 10.0.2.2,
/// DNS 10.0.2.3, a one-day lease, laid out by hand (RFC 2131 figure 1).
fn slirp_answer(request: &[u8], kind: u8) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 2;
    p[1] = 1;
    p[2] = 6;
    p[4..8].copy_from_slice(&request[4..8]);
    p[16..20].copy_from_slice(&[10, 0, 2, 15]);
    p[20..24].copy_from_slice(&[10, 0, 2, 2]);
    p[28..34].copy_from_slice(&request[28..34]);
    p.extend_from_slice(&[99, 130, 83, 99, 53, 1, kind]);
    p.extend_from_slice(&[54, 4, 10, 0, 2, 2, 51, 4, 0, 1, 0x51, 0x80]);
    p.extend_from_slice(&[
        1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2, 6, 4, 10, 0, 2, 3, 255,
    ]);
    p
}

fn only_send(actions: Vec<Action>) -> Vec<u8> {
    match actions.as_slice() {
        [Action::Send { packet, .. }] => packet.clone(),
        other => panic!("expected one packet to send, got {other:?}"),
    }
}

#[test]
fn a_slirp_lease_gives_the_console_line_and_the_state_document() {
    let now = Instant::now();
    let mut client = Client::new(MAC, Some("carapace".into()), 1, now);
    let discover = only_send(client.on_timeout(now));
    assert_eq!(&discover[240..243], &[53, 1, 1]);
    let request = only_send(
        client
            .on_packet(now, &slirp_answer(&discover, 2))
            .expect("offer accepted"),
    );
    assert_eq!(&request[240..243], &[53, 1, 3]);
    let actions = client
        .on_packet(now, &slirp_answer(&request, 5))
        .expect("ack accepted");
    let [Action::Configure(lease)] = actions.as_slice() else {
        panic!("expected the lease to configure, got {actions:?}");
    };
    let plan = plan_dhcp(lease, &Network::default());
    assert_eq!(
        configured_line("eth0", &plan),
        "eth0 configured 10.0.2.15/24 via 10.0.2.2 dns 10.0.2.3 (dhcp)"
    );

    let status = NetworkStatus {
        interface: Some("eth0".into()),
        mac: Some("52:54:00:12:34:56".into()),
        state: LinkState::Configured,
        addresses: vec!["10.0.2.15/24".into()],
        gateway: plan.gateway.map(|g| g.to_string()),
        dns: plan.dns.iter().map(|d| d.to_string()).collect(),
        lease_seconds: plan.lease_seconds,
        ..NetworkStatus::default()
    };
    let v: serde_json::Value = serde_json::from_str(&status.to_json()).expect("json");
    assert_eq!(v["mode"], "dhcp");
    assert_eq!(v["gateway"], "10.0.2.2");
    assert_eq!(v["dns"][0], "10.0.2.3");
    assert_eq!(v["lease_seconds"], 86400);
}
