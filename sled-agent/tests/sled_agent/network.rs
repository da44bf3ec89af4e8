//! The QEMU backend's data plane with real guests: QEMU sled agents on one underlay bridge
//! (`halyard_test_db::Underlay`), each with its own network namespace, a bridge and a VXLAN
//! device per VPC and QEMU's taps, programmed from the mappings pushed to `PUT /v2p/{vni}`.
//! Guests ping each other and talk to each other's TCP echo (port 7) and hostname (port 79)
//! servers through their serial consoles (the guest image's contract).

use crate::disks::{boot, run, run_status};
use crate::qemu::{BOOT_TIMEOUT, QemuSled, guest, qemu_config, start_migration, state_dir};
use crate::recording_nexus::RecordingNexus;
use crate::{Role, log, sled_client, wait_for_state_within};
use halyard_common::Generation;
use halyard_common::ids::{NetworkInterfaceUuid, SledUuid, VmmUuid};
use halyard_common::net::{MacAddr, Vni};
use halyard_common::{MigrationState, VmmState};
use halyard_sled_agent::{Server, UnderlayConfig};
use halyard_sled_agent_api::{V2pMapping, VmmNic, VmmRegisterBody, VpcMappings};
use halyard_test_db::Underlay;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A QEMU sled agent on `underlay`, with the next underlay address.
async fn sled_on(nexus: &Arc<RecordingNexus>, dir: &Path, underlay: &Underlay) -> QemuSled {
    let mut config = qemu_config(nexus.address(), dir).await;
    config.qemu.underlay = Some(UnderlayConfig {
        bridge: underlay.bridge().to_string(),
        address: underlay.next_address(),
    });
    let server = Server::start(&config, &log()).await.unwrap();
    nexus.watch_sled(server.local_addr());
    let client = sled_client(server.local_addr(), Role::Nexus);
    QemuSled {
        server,
        client,
        config,
    }
}

fn underlay_ip(sled: &QemuSled) -> IpAddr {
    sled.server
        .agent()
        .registration()
        .underlay_address
        .expect("a sled on an underlay reports its address")
}

/// The sled's network namespace (the sled agent's naming: `hl-` and 8 hex digits of its id).
fn namespace(sled: &QemuSled) -> String {
    namespace_of(sled.config.sled_id)
}

fn namespace_of(sled_id: SledUuid) -> String {
    format!("hl-{}", &sled_id.to_string()[..8])
}

/// `ip -n <the sled's namespace> args`'s output.
fn ip_in(sled: &QemuSled, args: &[&str]) -> String {
    ip_in_namespace(&namespace(sled), args)
}

fn ip_in_namespace(namespace: &str, args: &[&str]) -> String {
    let output = std::process::Command::new("ip")
        .arg("-n")
        .arg(namespace)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The names of the links in the sled's namespace.
fn links(sled: &QemuSled) -> Vec<String> {
    links_in(&namespace(sled))
}

fn links_in(namespace: &str) -> Vec<String> {
    ip_in_namespace(namespace, &["-br", "link"])
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(|name| name.split('@').next().unwrap().to_string())
        .collect()
}

fn namespaces() -> String {
    let output = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn vni(n: u32) -> Vni {
    Vni::try_from(n).unwrap()
}

/// A guest's one NIC: `172.30.0.<host>/22` in `vni`, its MAC made of the VNI and the host.
fn nic(vni: Vni, host: u8) -> VmmNic {
    VmmNic {
        nic_id: NetworkInterfaceUuid::new_v4(),
        name: "net0".into(),
        mac: MacAddr::from_u64(
            MacAddr::GUEST_FIRST.to_u64() + (u64::from(vni.as_u32() & 0xff) << 8) + u64::from(host),
        ),
        ip: Ipv4Addr::new(172, 30, 0, host),
        subnet: "172.30.0.0/22".parse().unwrap(),
        vni,
        primary: true,
        slot: 0,
    }
}

fn with_nic(hostname: &str, nic: &VmmNic) -> VmmRegisterBody {
    VmmRegisterBody {
        nics: vec![nic.clone()],
        ..guest(hostname)
    }
}

/// Registers and runs a VMM named `hostname` with `nic` on `sled`; waits for its prompt.
async fn boot_with(sled: &QemuSled, hostname: &str, nic: &VmmNic) -> VmmUuid {
    boot(sled, &with_nic(hostname, nic)).await
}

/// Where `nic` lives: on `sled`.
fn mapping(nic: &VmmNic, sled: &QemuSled) -> V2pMapping {
    V2pMapping {
        virtual_ip: nic.ip,
        virtual_mac: nic.mac,
        sled_id: sled.config.sled_id,
        underlay_ip: underlay_ip(sled),
    }
}

fn set(vni: Vni, generation: u64, mappings: Vec<V2pMapping>) -> VpcMappings {
    VpcMappings {
        vni,
        generation: Generation::try_from(generation).unwrap(),
        mappings,
    }
}

/// Pushes `set` to each of `sleds`, as Nexus does; returns whether each applied it.
async fn push(sleds: &[&QemuSled], set: &VpcMappings) -> Vec<bool> {
    let mut applied = Vec::new();
    for sled in sleds {
        let answer = sled
            .client
            .v2p_put(&set.vni, set)
            .await
            .unwrap()
            .into_inner();
        applied.push(answer.applied);
    }
    applied
}

/// Whether `ping -c <count>` from the guest gets an answer from `ip`.
async fn pings(sled: &QemuSled, id: VmmUuid, ip: &str, count: u32) -> bool {
    let (rc, output) = run_status(&sled.client, id, &format!("ping -c {count} -W 2 {ip}")).await;
    assert!(
        output.contains(&format!("PING {ip}")),
        "ping did not run:\n{output}"
    );
    rc == "0"
}

/// What the guest gets back from `ip`'s echo server (port 7) for `text`.
async fn echo(sled: &QemuSled, id: VmmUuid, ip: &str, text: &str) -> String {
    let output = run(
        &sled.client,
        id,
        &format!("echo ECHO-$(echo {text} | nc -w 5 {ip} 7)"),
    )
    .await;
    line_after(&output, "ECHO-")
}

/// The hostname `ip`'s port 79 answers the guest with.
async fn hostname_at(sled: &QemuSled, id: VmmUuid, ip: &str) -> String {
    let output = run(
        &sled.client,
        id,
        &format!("echo NAME-$(nc -w 5 {ip} 79 </dev/null)"),
    )
    .await;
    line_after(&output, "NAME-")
}

fn line_after(output: &str, prefix: &str) -> String {
    output
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{output}"))
        .trim()
        .to_string()
}

/// The VXLAN forwarding and neighbour entries the sled programmed for `vni`, and every MAC
/// its bridge remembers behind the VXLAN port (none: that port does not learn).
fn forwarding(sled: &QemuSled, vni: Vni) -> String {
    let vxlan = format!("vx{}", vni.as_u32());
    let output = std::process::Command::new("bridge")
        .args(["-n", &namespace(sled), "fdb", "show", "dev", &vxlan])
        .output()
        .unwrap();
    // Leave out the device's own address and the bridge's permanent entry for it.
    let own = ip_in(sled, &["-br", "link", "show", "dev", &vxlan]);
    let own_mac = own.split_whitespace().nth(2).unwrap_or("none").to_string();
    let fdb: String = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.starts_with(&own_mac) && !line.starts_with("33:33:"))
        .map(|line| format!("{line}\n"))
        .collect();
    format!("{fdb}{}", ip_in(sled, &["neigh", "show", "dev", &vxlan]))
}

/// Two sleds on one underlay, a VMM on each in VPC A and another on each in VPC B, with the
/// same addresses in both VPCs. Before the mappings are pushed nothing crosses sleds (no
/// flooding); after, each guest reaches its own VPC's peer only. A stale set changes nothing,
/// a set without the peer cuts it off again, and a VMM's end removes its tap and, with the
/// last NIC of its VPC on that sled, the VPC's bridge.
#[tokio::test]
async fn guests_reach_their_own_vpcs_peer_on_another_sled_once_mapped() {
    let underlay = Underlay::create().unwrap();
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let dir = state_dir();
    let sled1 = sled_on(&nexus, &dir, &underlay).await;
    let sled2 = sled_on(&nexus, &dir, &underlay).await;
    assert_eq!(underlay_ip(&sled1), IpAddr::from([10, 200, 0, 1]));
    assert_eq!(underlay_ip(&sled2), IpAddr::from([10, 200, 0, 2]));
    crate::eventually("Nexus hears each sled's underlay address", || {
        let registered = nexus.registrations.lock().unwrap();
        [&sled1, &sled2].iter().all(|sled| {
            registered.iter().any(|(id, info)| {
                *id == sled.config.sled_id && info.underlay_address == Some(underlay_ip(sled))
            })
        })
    })
    .await;

    let (vpc_a, vpc_b) = (vni(4096), vni(4097));
    let (a1, a2) = (nic(vpc_a, 5), nic(vpc_a, 6));
    let (b1, b2) = (nic(vpc_b, 5), nic(vpc_b, 6));
    let started = Instant::now();
    let (a1_id, a2_id, b1_id, b2_id) = tokio::join!(
        boot_with(&sled1, "a1", &a1),
        boot_with(&sled2, "a2", &a2),
        boot_with(&sled1, "b1", &b1),
        boot_with(&sled2, "b2", &b2),
    );
    println!("four guests booted in {:?}", started.elapsed());
    for sled in [&sled1, &sled2] {
        let links = links(sled);
        for device in ["underlay", "br4096", "vx4096", "br4097", "vx4097"] {
            assert!(links.iter().any(|l| l == device), "{device} in {links:?}");
        }
    }

    // No mappings yet: nothing reaches the other sled (no flooding, no learning).
    assert!(
        !pings(&sled1, a1_id, "172.30.0.6", 2).await,
        "a guest reached another sled's guest before any mapping was pushed"
    );

    let set_a = set(vpc_a, 2, vec![mapping(&a1, &sled1), mapping(&a2, &sled2)]);
    let set_b = set(vpc_b, 1, vec![mapping(&b1, &sled1), mapping(&b2, &sled2)]);
    assert_eq!(push(&[&sled1, &sled2], &set_a).await, [true, true]);
    assert_eq!(push(&[&sled1, &sled2], &set_b).await, [true, true]);

    let started = Instant::now();
    assert!(pings(&sled1, a1_id, "172.30.0.6", 3).await, "a1 pings a2");
    println!("a1 → a2: ping -c 3 took {:?}", started.elapsed());
    assert_eq!(echo(&sled1, a1_id, "172.30.0.6", "hello").await, "hello");
    // Each guest reaches its own VPC's 172.30.0.6 / .5, not the other VPC's.
    assert_eq!(hostname_at(&sled1, a1_id, "172.30.0.6").await, "a2");
    assert_eq!(hostname_at(&sled1, b1_id, "172.30.0.6").await, "b2");
    assert_eq!(hostname_at(&sled2, a2_id, "172.30.0.5").await, "a1");
    assert_eq!(hostname_at(&sled2, b2_id, "172.30.0.5").await, "b1");
    let neighbours = run(&sled1.client, a1_id, "ip neigh show 172.30.0.6").await;
    assert!(
        neighbours.contains(&a2.mac.to_string()),
        "a1's ARP answer is a2's MAC: {neighbours}"
    );

    // A stale set (an older generation, with a wrong underlay address) changes nothing.
    let programmed = forwarding(&sled1, vpc_a);
    assert!(programmed.contains(&a2.mac.to_string()), "{programmed}");
    assert!(!programmed.contains(&a1.mac.to_string()), "{programmed}");
    let mut wrong = mapping(&a2, &sled2);
    wrong.underlay_ip = IpAddr::from([10, 200, 0, 99]);
    let stale = set(vpc_a, 1, vec![mapping(&a1, &sled1), wrong]);
    assert_eq!(push(&[&sled1], &stale).await, [false]);
    assert_eq!(forwarding(&sled1, vpc_a), programmed);
    let held = sled1.client.v2p_list().await.unwrap().into_inner();
    assert!(held.contains(&set_a), "{held:?}");
    assert_eq!(echo(&sled1, a1_id, "172.30.0.6", "still").await, "still");

    // A newer set without a2 takes its entries away: a1 no longer reaches it; and back.
    let without_a2 = set(vpc_a, 3, vec![mapping(&a1, &sled1)]);
    assert_eq!(push(&[&sled1], &without_a2).await, [true]);
    assert!(
        !forwarding(&sled1, vpc_a).contains(&a2.mac.to_string()),
        "a2's entries were removed"
    );
    assert!(
        !pings(&sled1, a1_id, "172.30.0.6", 1).await,
        "a1 reached a2 after its mapping was withdrawn"
    );
    let again = set(vpc_a, 4, set_a.mappings.clone());
    assert_eq!(push(&[&sled1], &again).await, [true]);
    assert!(pings(&sled1, a1_id, "172.30.0.6", 1).await);

    // b2 ends: its tap is gone, and VPC B's bridge on sled 2 with it (its last NIC there);
    // VPC A's stays. The held mappings stay.
    let b2_tap = format!("hv{}n0", &b2_id.to_string()[..8]);
    assert!(links(&sled2).contains(&b2_tap), "{:?}", links(&sled2));
    sled2.client.vmm_unregister(&b2_id).await.unwrap();
    let left = links(&sled2);
    assert!(!left.contains(&b2_tap), "b2's tap is gone: {left:?}");
    assert!(
        !left.iter().any(|l| l == "br4097" || l == "vx4097"),
        "{left:?}"
    );
    assert!(left.iter().any(|l| l == "br4096"), "{left:?}");
    let held = sled2.client.v2p_list().await.unwrap().into_inner();
    assert!(held.iter().any(|s| s.vni == vpc_b), "{held:?}");
    assert!(
        !pings(&sled1, b1_id, "172.30.0.6", 1).await,
        "b1 reached a VMM that is gone"
    );
    assert_eq!(hostname_at(&sled1, a1_id, "172.30.0.6").await, "a2");

    for (sled, id) in [(&sled1, a1_id), (&sled2, a2_id), (&sled1, b1_id)] {
        sled.client.vmm_unregister(&id).await.unwrap();
    }
    let (ns1, ns2) = (namespace(&sled1), namespace(&sled2));
    sled1.server.close().await.unwrap();
    sled2.server.close().await.unwrap();
    let list = namespaces();
    assert!(
        !list.contains(&ns1) && !list.contains(&ns2),
        "the sleds' namespaces are removed at shutdown: {list}"
    );
}

/// A guest with a NIC migrates from sled 1 to sled 2 while a peer on sled 3 pings it every
/// 0.2 s; once the new mappings are pushed the peer reaches it again (echo and hostname), and
/// the source sled keeps nothing of it. Prints how long the pings went unanswered.
#[tokio::test]
async fn a_guest_with_a_nic_migrates_and_its_peer_reaches_it_again() {
    let underlay = Underlay::create().unwrap();
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let dir = state_dir();
    let sled1 = sled_on(&nexus, &dir, &underlay).await;
    let sled2 = sled_on(&nexus, &dir, &underlay).await;
    let sled3 = sled_on(&nexus, &dir, &underlay).await;
    let vpc = vni(5000);
    let (mover, peer) = (nic(vpc, 6), nic(vpc, 7));
    let mover_body = with_nic("mover", &mover);
    let (mover_id, peer_id) =
        tokio::join!(boot(&sled1, &mover_body), boot_with(&sled3, "peer", &peer),);
    let all = [&sled1, &sled2, &sled3];
    let before = set(
        vpc,
        1,
        vec![mapping(&mover, &sled1), mapping(&peer, &sled3)],
    );
    push(&all, &before).await;
    assert_eq!(hostname_at(&sled3, peer_id, "172.30.0.6").await, "mover");

    run(
        &sled3.client,
        peer_id,
        "(ping -i 0.2 172.30.0.6 >/tmp/ping.log 2>&1 &) ; sleep 1",
    )
    .await;
    let started = Instant::now();
    let target_id = start_migration(&sled1, mover_id, &sled2, &mover_body).await;
    let arrived =
        wait_for_state_within(&sled2.client, target_id, VmmState::Running, BOOT_TIMEOUT).await;
    assert_eq!(
        arrived.migration_in.unwrap().state,
        MigrationState::Completed
    );
    let migrated = started.elapsed();
    // The target's NIC made the VPC's segment on sled 2, programmed at once from the set the
    // sled already held (pushed before any NIC of the VPC was there).
    let held_then = forwarding(&sled2, vpc);
    assert!(
        held_then.contains(&peer.mac.to_string()),
        "sled 2 programmed its held set when the NIC appeared: {held_then}"
    );
    let after = set(
        vpc,
        2,
        vec![mapping(&mover, &sled2), mapping(&peer, &sled3)],
    );
    push(&all, &after).await;
    let pushed = started.elapsed();
    wait_for_state_within(&sled1.client, mover_id, VmmState::Destroyed, BOOT_TIMEOUT).await;
    // The source sled keeps nothing of it: its tap and the VPC's bridge are gone.
    let left = links(&sled1);
    assert!(
        !left.iter().any(|l| l.starts_with("hv") || l == "br5000"),
        "{left:?}"
    );

    // The peer reaches the migrated guest again (the same guest: no new boot).
    assert_eq!(hostname_at(&sled3, peer_id, "172.30.0.6").await, "mover");
    assert_eq!(echo(&sled3, peer_id, "172.30.0.6", "moved").await, "moved");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = run(
        &sled3.client,
        peer_id,
        "killall ping; sleep 0.5; grep -o 'seq=[0-9]*' /tmp/ping.log | tr '\\n' ' '",
    )
    .await;
    let seqs: Vec<u64> = log
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("seq=")?.parse().ok())
        .collect();
    assert!(seqs.len() >= 5, "too few answers: {log}");
    let gap = seqs.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(1);
    let sent = *seqs.last().unwrap();
    println!(
        "migration with a NIC: target running after {migrated:?}, new mappings pushed after \
         {pushed:?}; pings every 0.2 s: {} of {} answered, longest gap {} pings \
         (traffic stopped for about {} ms)",
        seqs.len(),
        sent + 1,
        gap,
        (gap - 1) * 200
    );
    // The pings began about a second before the migration: answers up to at least the push
    // mean the peer reaches the guest on its new sled.
    let seq_at_push = (pushed.as_millis() / 200) as u64;
    assert!(
        sent > seq_at_push,
        "no answer after the new mappings were pushed (seq {seq_at_push}): {log}"
    );

    sled2.client.vmm_unregister(&target_id).await.unwrap();
    sled3.client.vmm_unregister(&peer_id).await.unwrap();
    sled1.client.vmm_unregister(&mover_id).await.unwrap();
    for sled in [sled1, sled2, sled3] {
        sled.server.close().await.unwrap();
    }
}

/// A sled agent killed with SIGKILL leaves its namespace (with its guest's tap in it) and its
/// underlay link; started again with the same sled id, it removes them (and the orphan QEMU)
/// and makes them afresh, and its new VMM's NIC is connected. The sled agent killed again,
/// the underlay's removal takes the namespace it left.
#[tokio::test]
async fn a_restarted_sled_agent_replaces_the_namespace_its_killed_run_left() {
    let underlay = Underlay::create().unwrap();
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let dir = state_dir();
    let mut config = qemu_config(nexus.address(), &dir).await;
    let port = halyard_test_db::reserve_port().unwrap();
    config.listen_address = port.address();
    let address = underlay.next_address();
    let file = dir.join("sled.toml");
    std::fs::write(
        &file,
        format!(
            "sled_id = \"{}\"\nlisten_address = \"{}\"\nnexus_address = \"{}\"\n\
             backend = \"qemu\"\nhardware_threads = 4\nphysical_ram = {}\n\
             [qemu]\nguest_dir = \"{}\"\nstate_dir = \"{}\"\n\
             [qemu.underlay]\nbridge = \"{}\"\naddress = \"{address}\"\n{}",
            config.sled_id,
            config.listen_address,
            config.nexus_address,
            config.physical_ram.to_bytes(),
            config.qemu.guest_dir.display(),
            config.qemu.state_dir.display(),
            underlay.bridge(),
            config.tls.toml_table(),
        ),
    )
    .unwrap();
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_halyard-sled-agent"))
            .arg("--config")
            .arg(&file)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let client = sled_client(config.listen_address, Role::Nexus);
    let ns = namespace_of(config.sled_id);
    let mut agent = start();
    crate::qemu::wait_until_up(&client).await;
    let vpc = vni(4096);
    let first = VmmUuid::new_v4();
    client
        .vmm_register(&first, &with_nic("first", &nic(vpc, 5)))
        .await
        .unwrap();
    let first_tap = format!("hv{}n0", &first.to_string()[..8]);
    crate::eventually("the first VMM's tap in the sled's namespace", || {
        std::process::Command::new("ip")
            .args(["-n", &ns, "link", "show", "dev", &first_tap])
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .await;
    let first_pid = crate::qemu::pid_of(&config, first).await;
    agent.kill().unwrap(); // SIGKILL
    agent.wait().unwrap();
    assert!(
        namespaces().contains(&ns),
        "the killed sled agent left its namespace"
    );

    let mut agent = start();
    crate::qemu::wait_until_up(&client).await;
    assert!(!crate::qemu::runs(first_pid), "the orphan QEMU was ended");
    let fresh = links_in(&ns);
    assert_eq!(fresh, ["lo", "underlay"], "a fresh namespace");
    let ports = std::process::Command::new("ip")
        .args(["-br", "link", "show", "master", underlay.bridge()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ports.stdout).lines().count(),
        1,
        "one underlay link for the sled"
    );
    let second = VmmUuid::new_v4();
    client
        .vmm_register(&second, &with_nic("second", &nic(vpc, 5)))
        .await
        .unwrap();
    let second_tap = format!("hv{}n0", &second.to_string()[..8]);
    crate::eventually("the second VMM's tap on VPC 4096's bridge", || {
        std::process::Command::new("ip")
            .args(["-n", &ns, "-br", "link", "show", "master", "br4096"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&second_tap))
    })
    .await;
    let second_pid = crate::qemu::pid_of(&config, second).await;

    agent.kill().unwrap();
    agent.wait().unwrap();
    // The orphan of the second run is this test's to end (no sled agent comes back for it).
    let _ = std::process::Command::new("kill")
        .args(["-9", &second_pid.to_string()])
        .status();
    drop(underlay);
    assert!(
        !namespaces().contains(&ns),
        "the underlay's removal took the namespace the killed sled agent left"
    );
    drop(port);
}

/// A QEMU sled without `[qemu.underlay]`: it reports no underlay address and makes no VXLAN
/// device, yet its guests in one VPC reach each other through the VPC's bridge (no mapping
/// needed), and a guest in another VPC with the same address is another guest. NICs no VMM
/// could attach are refused before any QEMU starts.
#[tokio::test]
async fn guests_on_a_sled_without_an_underlay_reach_each_other_locally() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let dir = state_dir();
    let config = qemu_config(nexus.address(), &dir).await;
    let server = Server::start(&config, &log()).await.unwrap();
    let sled = QemuSled {
        client: sled_client(server.local_addr(), Role::Nexus),
        server,
        config,
    };
    assert_eq!(sled.server.agent().registration().underlay_address, None);

    let mut twice = with_nic("bad", &nic(vni(4096), 5));
    twice.nics.push(nic(vni(4096), 5));
    twice.nics[1].primary = false;
    let error = sled
        .client
        .vmm_register(&VmmUuid::new_v4(), &twice)
        .await
        .unwrap_err();
    assert_eq!(error.status().map(|s| s.as_u16()), Some(400), "{error}");
    assert!(error.to_string().contains("twice"), "{error}");

    let (one, two, other) = (nic(vni(4096), 5), nic(vni(4096), 6), nic(vni(4097), 6));
    let (one_id, _two_id, other_id) = tokio::join!(
        boot_with(&sled, "one", &one),
        boot_with(&sled, "two", &two),
        boot_with(&sled, "other", &other),
    );
    let made = links(&sled);
    assert!(
        made.iter().any(|l| l == "br4096") && !made.iter().any(|l| l.starts_with("vx")),
        "a bridge and no VXLAN device: {made:?}"
    );
    assert!(pings(&sled, one_id, "172.30.0.6", 2).await, "one pings two");
    assert_eq!(echo(&sled, one_id, "172.30.0.6", "local").await, "local");
    assert_eq!(hostname_at(&sled, one_id, "172.30.0.6").await, "two");

    // A QEMU killed with SIGKILL: by the time its VMM is reported failed, its tap and its
    // VPC's bridge (it was the VPC's only NIC here) are gone.
    let other_tap = format!("hv{}n0", &other_id.to_string()[..8]);
    assert!(crate::qemu::runs(
        crate::qemu::pid_of(&sled.config, other_id).await
    ));
    assert!(links(&sled).contains(&other_tap));
    crate::qemu::kill_9(crate::qemu::pid_of(&sled.config, other_id).await);
    wait_for_state_within(&sled.client, other_id, VmmState::Failed, BOOT_TIMEOUT).await;
    let left = links(&sled);
    assert!(
        !left.contains(&other_tap) && !left.iter().any(|l| l == "br4097"),
        "{left:?}"
    );
    assert!(left.iter().any(|l| l == "br4096"), "{left:?}");
    sled.server.close().await.unwrap();
}

/// A sled whose `[qemu.underlay]` names no bridge does not start, says why, and leaves no
/// namespace behind.
#[tokio::test]
async fn a_sled_with_a_missing_underlay_bridge_does_not_start() {
    let nexus = RecordingNexus::start("127.0.0.1:0".parse().unwrap());
    let mut config = qemu_config(nexus.address(), &state_dir()).await;
    config.qemu.underlay = Some(UnderlayConfig {
        bridge: "hlu-nowhere".into(),
        address: "10.200.0.1/24".parse().unwrap(),
    });
    let error = Server::start(&config, &log()).await.err().unwrap();
    assert!(
        format!("{error:#}").contains("the underlay bridge hlu-nowhere does not exist"),
        "{error:#}"
    );
    assert!(!namespaces().contains(&namespace_of(config.sled_id)));
}
