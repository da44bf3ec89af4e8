//! Real VMs end to end: the Oxide SDK against Nexus, with sled agents running QEMU (TCG
//! here) and the guest image. Boot and console, reboot, the live console stream with typed
//! input, stop, a QEMU killed under a running instance, and live migration between two QEMU
//! sleds — each checked down to the process, the VMM records and the reservations.

use crate::context::TestContext;
use futures::{SinkExt, StreamExt};
use halyard_common::InstanceState;
use halyard_common::ids::{InstanceUuid, VmmUuid};
use halyard_sled_agent::guest_console::{BOOT_BANNER, heartbeats};
use halyard_sled_agent_api::SimFault;
use oxide::prelude::*;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// TCG boots the guest in about 3 s on an idle machine; leave room for a busy one.
const PATIENCE: Duration = Duration::from_secs(90);

fn sdk(ctx: &TestContext) -> oxide::Client {
    let url = format!("http://{}", ctx.server().external_address());
    crate::authn_support::sdk(&url, &ctx.token)
}

/// Creates project `p` and a started 1-vCPU, 256 MiB instance `name` in it.
async fn create_vm(ctx: &TestContext, client: &oxide::Client, name: &str) -> InstanceUuid {
    if client.project_view().project("p").send().await.is_err() {
        client
            .project_create()
            .body_map(|b| b.name("p").description(""))
            .send()
            .await
            .unwrap();
    }
    let created = client
        .instance_create()
        .project("p")
        .body_map(|b| {
            b.name(name)
                .description("a real VM")
                .hostname(name)
                .ncpus(1u16)
                .memory(256u64 << 20)
        })
        .send()
        .await
        .unwrap();
    let id: InstanceUuid = created.id.to_string().parse().unwrap();
    wait_for_state(ctx, id, InstanceState::Running).await;
    id
}

async fn wait_for_state(ctx: &TestContext, id: InstanceUuid, state: InstanceState) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let view = ctx.view(id).await;
        if view.run_state() == state {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "instance {id} never reached {state}; it is {}",
            view.run_state()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything the instance's console holds, read through Nexus with the SDK.
async fn console(client: &oxide::Client, name: &str) -> String {
    let data = client
        .instance_serial_console()
        .project("p")
        .instance(name)
        .from_start(0u64)
        .max_bytes(1u64 << 20)
        .send()
        .await
        .unwrap()
        .into_inner();
    String::from_utf8_lossy(&data.data).into_owned()
}

async fn wait_for_console(
    client: &oxide::Client,
    name: &str,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = console(client, name).await;
        if check(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the console of {name} never showed {what}; it holds:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pids of processes whose command line names `vmm` (its QEMU, while it runs).
fn qemu_pids(vmm: VmmUuid) -> Vec<i32> {
    let needle = vmm.to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&needle))
        })
        .filter(|pid| {
            // A zombie no longer runs.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| state != "Z")
            })
        })
        .collect()
}

/// Asks Nexus to live-migrate instance `name` of project `p` anywhere (a Halyard extension,
/// so not in the Oxide SDK).
async fn request_migration(ctx: &TestContext, name: &str) {
    let response = crate::authn_support::http_client(&ctx.token)
        .post(format!(
            "http://{}/v1/instances/{name}/migrate?project=p",
            ctx.server().external_address()
        ))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(status, 202, "{}", response.text().await.unwrap());
}

fn reservations(ctx: &TestContext) -> Vec<(String, String)> {
    ctx.sql("SELECT vmm_id, sled_id FROM sled_reservation ORDER BY vmm_id")
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (vmm, sled) = line.split_once('|').unwrap();
            (vmm.to_string(), sled.to_string())
        })
        .collect()
}

fn vmm_state(ctx: &TestContext, vmm: VmmUuid) -> String {
    ctx.sql(&format!("SELECT state FROM vmm WHERE id = '{vmm}'"))
        .trim()
        .to_string()
}

async fn active_vmm(ctx: &TestContext, id: InstanceUuid) -> VmmUuid {
    ctx.view(id)
        .await
        .active_vmm
        .expect("a running instance has a VMM")
        .id()
}

#[tokio::test]
async fn a_real_vm_boots_reboots_streams_its_console_and_stops() {
    let ctx = TestContext::with_qemu(1).await;
    let client = sdk(&ctx);
    let id = create_vm(&ctx, &client, "web-1").await;
    let vmm = active_vmm(&ctx, id).await;
    let pids = qemu_pids(vmm);
    assert_eq!(pids.len(), 1, "one QEMU runs the VMM");

    let text = wait_for_console(&client, "web-1", "the banner, then heartbeats", |text| {
        text.contains(&format!("{BOOT_BANNER}web-1")) && heartbeats(text).len() >= 3
    })
    .await;
    let beats = heartbeats(&text);
    assert!(beats.windows(2).all(|w| w[1] > w[0]), "{beats:?}");

    // The live stream carries heartbeats as they happen and runs what is typed.
    let upgraded = client
        .instance_serial_console_stream()
        .project("p")
        .instance("web-1")
        .most_recent(0u64)
        .send()
        .await
        .unwrap()
        .into_inner();
    let mut stream = WebSocketStream::from_raw_socket(upgraded, Role::Client, None).await;
    let live = read_stream_until(&mut stream, |text| heartbeats(text).len() >= 2).await;
    assert!(
        heartbeats(&live)[0] > *beats.last().unwrap(),
        "live, not history"
    );
    stream
        .send(Message::Binary(
            "echo $((6*7))xyz\n".as_bytes().to_vec().into(),
        ))
        .await
        .unwrap();
    read_stream_until(&mut stream, |text| text.contains("42xyz")).await;
    drop(stream);

    client
        .instance_reboot()
        .project("p")
        .instance("web-1")
        .send()
        .await
        .unwrap();
    wait_for_console(
        &client,
        "web-1",
        "the banner again after the reboot",
        |text| text.matches(BOOT_BANNER).count() >= 2,
    )
    .await;
    assert_eq!(
        qemu_pids(vmm),
        pids,
        "a reboot keeps the VMM and its process"
    );

    client
        .instance_stop()
        .project("p")
        .instance("web-1")
        .send()
        .await
        .unwrap();
    wait_for_state(&ctx, id, InstanceState::Stopped).await;
    assert!(qemu_pids(vmm).is_empty(), "the QEMU process is gone");
    assert_eq!(vmm_state(&ctx, vmm), "destroyed");
    assert!(reservations(&ctx).is_empty(), "the reservation is released");
    // No running VMM: no console.
    let error = client
        .instance_serial_console()
        .project("p")
        .instance("web-1")
        .most_recent(100u64)
        .send()
        .await
        .unwrap_err();
    let status = error.status().map(|s| s.as_u16());
    assert!(matches!(status, Some(400..=499)), "{error}");
    ctx.assert_quiet_and_consistent().await;
}

/// Reads the stream's output until `done` holds on everything read so far.
async fn read_stream_until(
    stream: &mut WebSocketStream<reqwest::Upgraded>,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done(&String::from_utf8_lossy(&seen)) {
        let message = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the stream stalled; read {:?}",
                    String::from_utf8_lossy(&seen)
                )
            });
        match message {
            Some(Ok(Message::Binary(bytes))) => seen.extend_from_slice(&bytes),
            Some(Ok(Message::Text(text))) => seen.extend_from_slice(text.as_bytes()),
            other => panic!("expected console output, got {other:?}"),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_qemu_killed_under_a_running_vm_fails_it_and_frees_its_reservation() {
    let ctx = TestContext::with_qemu(1).await;
    let client = sdk(&ctx);
    let id = create_vm(&ctx, &client, "doomed").await;
    let vmm = active_vmm(&ctx, id).await;
    let pids = qemu_pids(vmm);
    assert_eq!(pids.len(), 1);
    let status = std::process::Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    wait_for_state(&ctx, id, InstanceState::Failed).await;
    ctx.eventually("the failed VMM's reservation is released", async |ctx| {
        reservations(ctx).is_empty()
    })
    .await;
    assert_eq!(vmm_state(&ctx, vmm), "failed");
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn a_running_vm_migrates_between_qemu_sleds_and_keeps_counting() {
    let ctx = TestContext::with_qemu(2).await;
    let client = sdk(&ctx);
    let id = create_vm(&ctx, &client, "mover").await;
    let source_vmm = active_vmm(&ctx, id).await;
    let source_pids = qemu_pids(source_vmm);
    let before = wait_for_console(&client, "mover", "heartbeats", |text| {
        heartbeats(text).len() >= 3
    })
    .await;
    let last_before = *heartbeats(&before).last().unwrap();

    request_migration(&ctx, "mover").await;

    ctx.eventually_within(PATIENCE, "the instance runs on its new VMM", async |ctx| {
        let view = ctx.view(id).await;
        view.run_state() == InstanceState::Running
            && view
                .active_vmm
                .as_ref()
                .is_some_and(|vmm| vmm.id() != source_vmm)
            && view.instance.runtime.migration().is_none()
    })
    .await;
    let target_vmm = active_vmm(&ctx, id).await;
    assert_eq!(
        qemu_pids(target_vmm).len(),
        1,
        "the destination QEMU runs it"
    );
    ctx.eventually_within(PATIENCE, "the source QEMU is gone", async |_| {
        source_pids
            .iter()
            .all(|pid| !qemu_pids(source_vmm).contains(pid))
    })
    .await;
    ctx.eventually_within(
        PATIENCE,
        "only the destination holds a reservation",
        async |ctx| {
            let held = reservations(ctx);
            held.len() == 1 && held[0].0 == target_vmm.to_string()
        },
    )
    .await;

    // The console now comes from the destination: the same guest, still counting, not booted
    // again.
    let after = wait_for_console(&client, "mover", "heartbeats on the destination", |text| {
        heartbeats(text).len() >= 3
    })
    .await;
    assert!(
        !after.contains(BOOT_BANNER),
        "the guest did not boot again:\n{after}"
    );
    assert!(
        heartbeats(&after)[0] > last_before,
        "the counter continues: {last_before} before, {:?} after",
        heartbeats(&after)
    );
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn a_vm_larger_than_any_qemu_sled_is_refused_before_qemu_starts() {
    let ctx = TestContext::with_qemu(1).await;
    let client = sdk(&ctx);
    client
        .project_create()
        .body_map(|b| b.name("p").description(""))
        .send()
        .await
        .unwrap();
    let error = client
        .instance_create()
        .project("p")
        .body_map(|b| {
            b.name("huge")
                .description("")
                .hostname("huge")
                .ncpus(u16::try_from(crate::context::SLED_THREADS + 1).unwrap())
                .memory(256u64 << 20)
        })
        .send()
        .await
        .unwrap_err();
    let status = error.status().map(|s| s.as_u16());
    assert_eq!(status, Some(507), "{error}");
    assert!(reservations(&ctx).is_empty());
    assert_eq!(
        ctx.sql("SELECT count(*) FROM vmm WHERE time_deleted IS NULL")
            .trim(),
        "0"
    );
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn a_migration_whose_target_qemu_is_killed_leaves_the_vm_running_on_its_source() {
    let ctx = TestContext::with_qemu(2).await;
    let client = sdk(&ctx);
    let id = create_vm(&ctx, &client, "stayer").await;
    let source_vmm = active_vmm(&ctx, id).await;
    wait_for_console(&client, "stayer", "heartbeats", |text| {
        heartbeats(text).len() >= 2
    })
    .await;

    request_migration(&ctx, "stayer").await;
    // Kill the destination's QEMU as soon as it exists.
    let target_vmm = ctx
        .view(id)
        .await
        .instance
        .runtime
        .target_propolis_id
        .unwrap()
        .0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let target_pid = loop {
        if let Some(pid) = qemu_pids(target_vmm).first() {
            break *pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the target QEMU never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let status = std::process::Command::new("kill")
        .args(["-9", &target_pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    ctx.eventually_within(PATIENCE, "the migration ends, having failed", async |ctx| {
        let view = ctx.view(id).await;
        view.instance.runtime.migration().is_none() && view.run_state() == InstanceState::Running
    })
    .await;
    assert_eq!(
        active_vmm(&ctx, id).await,
        source_vmm,
        "still on its source"
    );
    ctx.eventually_within(
        PATIENCE,
        "both sides report the migration failed",
        async |ctx| {
            ctx.sql("SELECT source_state || ',' || target_state FROM migration")
                .trim()
                == "failed,failed"
        },
    )
    .await;
    ctx.eventually_within(
        PATIENCE,
        "only the source holds a reservation",
        async |ctx| {
            let held = reservations(ctx);
            held.len() == 1 && held[0].0 == source_vmm.to_string()
        },
    )
    .await;
    // And the guest still runs: its counter keeps going.
    let seen = heartbeats(&console(&client, "stayer").await).len();
    wait_for_console(&client, "stayer", "more heartbeats", |text| {
        heartbeats(text).len() >= seen + 3
    })
    .await;
    ctx.assert_quiet_and_consistent().await;
}

/// Reads the stream's output until the server closes it (the VMM behind it is gone).
async fn read_stream_to_end(stream: &mut WebSocketStream<reqwest::Upgraded>) -> String {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let message = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the stream never closed; read {:?}",
                    String::from_utf8_lossy(&seen)
                )
            });
        match message {
            Some(Ok(Message::Binary(bytes))) => seen.extend_from_slice(&bytes),
            Some(Ok(Message::Text(text))) => seen.extend_from_slice(text.as_bytes()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_migration_whose_finish_reply_is_lost_runs_the_guest_exactly_once() {
    let ctx = TestContext::with_qemu(2).await;
    let client = sdk(&ctx);
    let id = create_vm(&ctx, &client, "once").await;
    let source_vmm = active_vmm(&ctx, id).await;
    wait_for_console(&client, "once", "heartbeats", |text| {
        heartbeats(text).len() >= 2
    })
    .await;
    // The source's console, live, until its VMM is gone.
    let upgraded = client
        .instance_serial_console_stream()
        .project("p")
        .instance("once")
        .most_recent(0u64)
        .send()
        .await
        .unwrap()
        .into_inner();
    let mut source_console = WebSocketStream::from_raw_socket(upgraded, Role::Client, None).await;
    // The target resumes the guest, and the source never hears so.
    ctx.sled_client_for(source_vmm)
        .await
        .vmm_inject_fault(&source_vmm, &SimFault::LoseNextFinishReply)
        .await
        .unwrap();

    request_migration(&ctx, "once").await;

    ctx.eventually_within(PATIENCE, "the instance runs on its new VMM", async |ctx| {
        let view = ctx.view(id).await;
        view.run_state() == InstanceState::Running
            && view
                .active_vmm
                .as_ref()
                .is_some_and(|vmm| vmm.id() != source_vmm)
            && view.instance.runtime.migration().is_none()
    })
    .await;
    let target_vmm = active_vmm(&ctx, id).await;
    let on_source = read_stream_to_end(&mut source_console).await;
    ctx.eventually_within(PATIENCE, "the source QEMU is gone", async |_| {
        qemu_pids(source_vmm).is_empty()
    })
    .await;
    assert_eq!(
        qemu_pids(target_vmm).len(),
        1,
        "the destination QEMU runs it"
    );
    let on_target = wait_for_console(&client, "once", "heartbeats on the destination", |text| {
        heartbeats(text).len() >= 3
    })
    .await;
    assert!(
        !on_target.contains(BOOT_BANNER),
        "the guest did not boot again:\n{on_target}"
    );
    // One guest, one counter: every number the source printed comes before every number the
    // target printed. A guest resumed on both would print the same numbers on both.
    let (source_beats, target_beats) = (heartbeats(&on_source), heartbeats(&on_target));
    let last_on_source = *source_beats.iter().max().expect("heartbeats on the source");
    assert!(
        target_beats.iter().all(|beat| *beat > last_on_source),
        "the guest counted on both consoles: source {source_beats:?}, target {target_beats:?}"
    );
    assert_eq!(
        ctx.sql("SELECT source_state || ',' || target_state FROM migration")
            .trim(),
        "completed,completed"
    );
    ctx.eventually_within(
        PATIENCE,
        "only the destination holds a reservation",
        async |ctx| {
            let held = reservations(ctx);
            held.len() == 1 && held[0].0 == target_vmm.to_string()
        },
    )
    .await;
    ctx.assert_quiet_and_consistent().await;
}
