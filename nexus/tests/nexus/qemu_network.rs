//! VPC networking end to end through Nexus's API with real QEMU (TCG here): QEMU sled agents
//! joined by a `test-db` `Underlay` (each sled's `[qemu.underlay]`), instances created with
//! their default NIC in their project's default VPC (addresses read from
//! `/v1/network-interfaces`), and their guests, driven through the
//! serial console, reaching each other by private address across sleds: ping, TCP echo (port
//! 7) and hostname (port 79). A live migration while a peer pings (the gap printed), a stop
//! (nothing of the VMM left on any sled: no tap, no mapping), and two projects using the same
//! addresses, each guest reaching only its own VPC's peers.

use crate::context::TestContext;
use crate::real_vm::{
    PATIENCE, line_after, request_migration, run, run_status, sdk, wait_for_shell, wait_for_state,
};
use halyard_common::InstanceState;
use halyard_common::ids::{InstanceUuid, VmmUuid};
use oxide::prelude::*;
use serde_json::json;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Creates (and starts) a 1-vCPU, 256 MiB instance `name` (its hostname too) in `project`
/// with the API's default NIC, or, given `ip`, one NIC `net0` in the default VPC and subnet
/// with that address; waits for its shell.
async fn create(
    ctx: &TestContext,
    project: &str,
    name: &str,
    ip: Option<Ipv4Addr>,
) -> InstanceUuid {
    let mut body = json!({
        "name": name,
        "description": "a real VM with a NIC",
        "hostname": name,
        "ncpus": 1,
        "memory": 256u64 << 20,
    });
    if let Some(ip) = ip {
        body["network_interfaces"] = json!({
            "type": "create",
            "params": [{
                "name": "net0",
                "description": "",
                "vpc_name": "default",
                "subnet_name": "default",
                "ip_config": {"type": "v4", "value": {"ip": {"type": "explicit", "value": ip}}},
            }],
        });
    }
    let response = crate::authn_support::http_client(&ctx.token)
        .post(format!(
            "{}/v1/instances?project={project}",
            ctx.external_url()
        ))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let created: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{created}");
    let id: InstanceUuid = created["id"].as_str().unwrap().parse().unwrap();
    wait_for_state(ctx, id, InstanceState::Running).await;
    wait_for_shell(ctx, project, name).await;
    id
}

async fn project(ctx: &TestContext, name: &str) {
    sdk(ctx)
        .project_create()
        .body_map(|b| b.name(name).description(""))
        .send()
        .await
        .unwrap();
}

/// The instance's one private IPv4 address, as a user reads it (`GET /v1/network-interfaces`),
/// checked against the database's record of its NIC.
async fn ip_of(ctx: &TestContext, project: &str, name: &str, id: InstanceUuid) -> Ipv4Addr {
    let response = crate::authn_support::http_client(&ctx.token)
        .get(format!(
            "{}/v1/network-interfaces?project={project}&instance={name}",
            ctx.external_url()
        ))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let list: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{list}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "one NIC: {list}");
    let stack = &items[0]["ip_stack"];
    let v4 = match stack["type"].as_str() {
        Some("dual_stack") => &stack["value"]["v4"],
        Some("v4") => &stack["value"],
        _ => panic!("no IPv4 stack: {stack}"),
    };
    let ip: Ipv4Addr = v4["ip"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        ctx.interface_ips(id).await,
        [ip],
        "the API's address is the database's"
    );
    ip
}

/// The index of the sled the instance's active VMM runs on.
async fn sled_index(ctx: &TestContext, id: InstanceUuid) -> usize {
    ctx.sled_of(ctx.active_vmm(id).await).await
}

/// Live-migrates the instance to sled `to` through the API; returns its new VMM once the
/// migration is over.
async fn migrate(
    ctx: &TestContext,
    project: &str,
    name: &str,
    id: InstanceUuid,
    to: usize,
) -> VmmUuid {
    let from = ctx.active_vmm(id).await;
    request_migration(ctx, project, name, Some(ctx.sled_id(to))).await;
    ctx.eventually_within(
        PATIENCE,
        &format!("{name} runs on its new VMM"),
        async |ctx| {
            let view = ctx.view(id).await;
            view.run_state() == InstanceState::Running
                && view.active_vmm.as_ref().is_some_and(|vmm| vmm.id() != from)
                && view.instance.runtime.migration().is_none()
        },
    )
    .await;
    let vmm = ctx.active_vmm(id).await;
    assert_eq!(ctx.sled_of(vmm).await, to, "{name} runs on the sled asked");
    vmm
}

/// Moves the instance to sled `to` unless it runs there; returns its new VMM if it moved.
async fn place(
    ctx: &TestContext,
    project: &str,
    name: &str,
    id: InstanceUuid,
    to: usize,
) -> Option<VmmUuid> {
    if sled_index(ctx, id).await == to {
        None
    } else {
        Some(migrate(ctx, project, name, id, to).await)
    }
}

/// Whether `ping -c <count>` from the guest gets an answer from `ip`.
async fn pings(ctx: &TestContext, project: &str, from: &str, ip: Ipv4Addr, count: u32) -> bool {
    let (rc, output) = run_status(ctx, project, from, &format!("ping -c {count} -W 2 {ip}")).await;
    assert!(
        output.contains(&format!("PING {ip}")),
        "ping did not run in {from}:\n{output}"
    );
    rc == "0"
}

/// What the guest gets back from `ip`'s echo server (port 7) for `text`.
async fn echo(ctx: &TestContext, project: &str, from: &str, ip: Ipv4Addr, text: &str) -> String {
    let output = run(
        ctx,
        project,
        from,
        &format!("echo ECHO-$(echo {text} | nc -w 5 {ip} 7)"),
    )
    .await;
    line_after(&output, "ECHO-").to_string()
}

/// The hostname `ip`'s port 79 answers the guest with.
async fn hostname_at(ctx: &TestContext, project: &str, from: &str, ip: Ipv4Addr) -> String {
    let output = run(
        ctx,
        project,
        from,
        &format!("echo NAME-$(nc -w 5 {ip} 79 </dev/null)"),
    )
    .await;
    line_after(&output, "NAME-").to_string()
}

/// The links in sled `i`'s network namespace, as `ip -n <namespace> link` lists them.
fn links(ctx: &TestContext, i: usize) -> Vec<String> {
    let namespace = halyard_sled_agent::qemu_namespace_name(ctx.sled_id(i));
    let output = std::process::Command::new("ip")
        .args(["-n", &namespace, "-br", "link"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "ip -n {namespace} link: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(|name| name.split('@').next().unwrap().to_string())
        .collect()
}

/// The tap QEMU made for the VMM's NIC in `slot` (the sled agent's naming).
fn tap(vmm: VmmUuid, slot: u8) -> String {
    format!("hv{}n{slot}", &vmm.to_string()[..8])
}

/// The sleds (by index) whose agent holds a mapping for `ip`, read with `GET /v2p`.
async fn sleds_mapping(ctx: &TestContext, ip: Ipv4Addr) -> Vec<usize> {
    let mut holders = Vec::new();
    for i in 0..ctx.sleds.len() {
        let sets = ctx.sled_client(i).v2p_list().await.unwrap().into_inner();
        if sets
            .iter()
            .flat_map(|set| &set.mappings)
            .any(|m| m.virtual_ip == std::net::IpAddr::V4(ip))
        {
            holders.push(i);
        }
    }
    holders
}

/// Two instances in the project's default VPC on different sleds reach each other by private
/// address; one live-migrates to the third sled while the other pings it every 0.2 s (the
/// pings resume; the gap is printed); stopped, it is unreachable and no sled keeps its tap or
/// a mapping for its address.
#[tokio::test]
async fn instances_reach_each_other_across_sleds_through_a_migration_until_stopped() {
    let started = Instant::now();
    let ctx = TestContext::with_qemu_underlay(3).await;
    project(&ctx, "p").await;
    let (alpha, bravo) = tokio::join!(
        create(&ctx, "p", "alpha", None),
        create(&ctx, "p", "bravo", None),
    );
    println!("two guests booted after {:?}", started.elapsed());
    let alpha_ip = ip_of(&ctx, "p", "alpha", alpha).await;
    let bravo_ip = ip_of(&ctx, "p", "bravo", bravo).await;
    assert_ne!(alpha_ip, bravo_ip);
    let alpha_sled = sled_index(&ctx, alpha).await;
    let mut bravo_vmms = vec![ctx.active_vmm(bravo).await];
    // Apart: bravo goes to the next sled if placement put both on one.
    if sled_index(&ctx, bravo).await == alpha_sled {
        bravo_vmms.push(migrate(&ctx, "p", "bravo", bravo, (alpha_sled + 1) % 3).await);
    }
    let bravo_sled = sled_index(&ctx, bravo).await;
    assert_ne!(alpha_sled, bravo_sled);
    println!(
        "alpha {alpha_ip} on sled {alpha_sled}, bravo {bravo_ip} on sled {bravo_sled}, after {:?}",
        started.elapsed()
    );

    assert!(
        pings(&ctx, "p", "alpha", bravo_ip, 3).await,
        "alpha pings bravo"
    );
    assert_eq!(
        echo(&ctx, "p", "alpha", bravo_ip, "hello").await,
        "hello",
        "bravo echoes alpha's message"
    );
    assert_eq!(hostname_at(&ctx, "p", "bravo", alpha_ip).await, "alpha");

    // bravo moves to the third sled while alpha pings it every 0.2 s.
    let third = 3 - alpha_sled - bravo_sled;
    run(
        &ctx,
        "p",
        "alpha",
        &format!("(ping -i 0.2 {bravo_ip} >/tmp/ping.log 2>&1 &) ; sleep 1"),
    )
    .await;
    let migration_began = Instant::now();
    let target = migrate(&ctx, "p", "bravo", bravo, third).await;
    bravo_vmms.push(target);
    let migrated = migration_began.elapsed();
    let (third_id, alpha_sled_id) = (ctx.sled_id(third), ctx.sled_id(alpha_sled));
    ctx.eventually_within(
        PATIENCE,
        "bravo's address mapped to the third sled on the sleds hosting the VPC",
        async |ctx| {
            let held = ctx.held_mappings().await;
            let bravo: Vec<_> = held
                .iter()
                .filter(|m| m.mapping.virtual_ip == std::net::IpAddr::V4(bravo_ip))
                .collect();
            bravo.iter().all(|m| m.mapping.sled_id == third_id)
                && [alpha_sled_id, third_id]
                    .iter()
                    .all(|holder| bravo.iter().any(|m| m.holder == *holder))
        },
    )
    .await;
    let mapped = migration_began.elapsed();
    assert_eq!(
        hostname_at(&ctx, "p", "alpha", bravo_ip).await,
        "bravo",
        "alpha reaches bravo on its new sled"
    );
    assert_eq!(echo(&ctx, "p", "alpha", bravo_ip, "moved").await, "moved");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = run(
        &ctx,
        "p",
        "alpha",
        "killall ping; sleep 0.5; grep -o 'seq=[0-9]*' /tmp/ping.log | tr '\\n' ' '",
    )
    .await;
    let seqs: Vec<u64> = log
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("seq=")?.parse().ok())
        .collect();
    assert!(seqs.len() >= 5, "too few answers: {log}");
    let gap = seqs.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(1);
    let last = *seqs.last().unwrap();
    println!(
        "migration through Nexus: the instance ran on sled {third} after {migrated:?}, every \
         sled hosting the VPC held its new mapping after {mapped:?}; pings every 0.2 s: {} of \
         {} answered, longest gap {gap} pings (bravo unreachable for about {} ms)",
        seqs.len(),
        last + 1,
        (gap - 1) * 200
    );
    // The pings began a second before the migration: answers numbered past the time the
    // new mappings were held came from bravo on its new sled.
    let seq_at_mapped = (mapped.as_millis() / 200) as u64;
    assert!(
        last > seq_at_mapped,
        "no answer after the new mappings were held (seq {seq_at_mapped}): {log}"
    );
    assert!(
        links(&ctx, third).contains(&tap(target, 0)),
        "bravo's tap on its sled: {:?}",
        links(&ctx, third)
    );

    // Stopped: unreachable, and nothing of it left on any sled.
    sdk(&ctx)
        .instance_stop()
        .project("p")
        .instance("bravo")
        .send()
        .await
        .unwrap();
    wait_for_state(&ctx, bravo, InstanceState::Stopped).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let holders = sleds_mapping(&ctx, bravo_ip).await;
        if holders.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sleds {holders:?} still map bravo's address {bravo_ip}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !sleds_mapping(&ctx, alpha_ip).await.is_empty(),
        "alpha's mapping stays"
    );
    for i in 0..3 {
        let links = links(&ctx, i);
        for vmm in &bravo_vmms {
            assert!(
                !links.contains(&tap(*vmm, 0)),
                "sled {i} keeps the tap of bravo's VMM {vmm}: {links:?}"
            );
        }
    }
    assert!(
        !pings(&ctx, "p", "alpha", bravo_ip, 2).await,
        "alpha reached bravo after it stopped"
    );
    ctx.assert_quiet_and_consistent().await;
    println!("the whole test took {:?}", started.elapsed());
}

/// Two projects, two default VPCs with the same block: project 2's instances are given an
/// address project 1's alpha has and one project 1 does not use. With both alphas on one
/// sled and both bravos on the other, each guest reaches only its own VPC's peer at an
/// address, and never the other project's guest.
#[tokio::test]
async fn projects_with_the_same_addresses_reach_only_their_own_guests() {
    let started = Instant::now();
    let ctx = TestContext::with_qemu_underlay(2).await;
    project(&ctx, "p1").await;
    project(&ctx, "p2").await;
    let (alpha1, bravo1) = tokio::join!(
        create(&ctx, "p1", "alpha1", None),
        create(&ctx, "p1", "bravo1", None),
    );
    let alpha_ip = ip_of(&ctx, "p1", "alpha1", alpha1).await;
    let bravo1_ip = ip_of(&ctx, "p1", "bravo1", bravo1).await;
    // An address project 1 does not use (its addresses are chosen at random).
    let bravo2_ip = [20, 21, 22]
        .map(|host| Ipv4Addr::new(172, 30, 0, host))
        .into_iter()
        .find(|ip| *ip != alpha_ip && *ip != bravo1_ip)
        .unwrap();
    let (alpha2, bravo2) = tokio::join!(
        create(&ctx, "p2", "alpha2", Some(alpha_ip)),
        create(&ctx, "p2", "bravo2", Some(bravo2_ip)),
    );
    assert_eq!(
        ip_of(&ctx, "p2", "alpha2", alpha2).await,
        alpha_ip,
        "the same address"
    );
    assert_eq!(ip_of(&ctx, "p2", "bravo2", bravo2).await, bravo2_ip);
    assert_eq!(
        ctx.sql("SELECT count(DISTINCT vni) FROM vpc WHERE time_deleted IS NULL")
            .trim(),
        "2",
        "two VPCs, two VNIs"
    );
    println!("four guests booted after {:?}", started.elapsed());

    // Both alphas (one address) on one sled, both bravos on the other: the same underlay
    // pair of sleds carries both VPCs.
    let alphas = sled_index(&ctx, alpha1).await;
    let bravos = 1 - alphas;
    place(&ctx, "p2", "alpha2", alpha2, alphas).await;
    place(&ctx, "p1", "bravo1", bravo1, bravos).await;
    place(&ctx, "p2", "bravo2", bravo2, bravos).await;
    println!(
        "alphas ({alpha_ip}) on sled {alphas}, bravo1 {bravo1_ip} and bravo2 {bravo2_ip} on \
         sled {bravos}, after {:?}",
        started.elapsed()
    );

    // Each reaches its own VPC's peer.
    assert_eq!(hostname_at(&ctx, "p1", "alpha1", bravo1_ip).await, "bravo1");
    assert_eq!(echo(&ctx, "p1", "alpha1", bravo1_ip, "one").await, "one");
    assert_eq!(hostname_at(&ctx, "p2", "alpha2", bravo2_ip).await, "bravo2");
    assert_eq!(echo(&ctx, "p2", "alpha2", bravo2_ip, "two").await, "two");
    // One address, two guests: each bravo reaches its own project's alpha there.
    assert_eq!(hostname_at(&ctx, "p1", "bravo1", alpha_ip).await, "alpha1");
    assert_eq!(hostname_at(&ctx, "p2", "bravo2", alpha_ip).await, "alpha2");
    // Never the other project's guest.
    assert!(
        !pings(&ctx, "p1", "alpha1", bravo2_ip, 2).await,
        "project 1's alpha reached project 2's bravo"
    );
    assert!(
        !pings(&ctx, "p2", "alpha2", bravo1_ip, 2).await,
        "project 2's alpha reached project 1's bravo"
    );
    ctx.assert_quiet_and_consistent().await;
    println!("the whole test took {:?}", started.elapsed());
}
