//! A sled declared gone (expunged) by the operator: its VMMs fail and release their
//! reservations, placement never picks it again, it may not register again, and a migration
//! into or out of it ends sensibly, including a source paused at `finish` on a target whose
//! sled is expunged (rules (a) and (b) of `app/sled.rs`). Real sim sled agents over HTTP; the
//! one that is "gone" is closed (it stops answering) before it is expunged.

use crate::context::{SLED_THREADS, TestContext};
use halyard_common::ids::{InstanceUuid, SledUuid, VmmUuid};
use halyard_common::{InstanceState, MigrationState, VmmState};
use halyard_nexus_internal_api::SledExpunged;
use halyard_sled_agent::SimConfig;
use halyard_sled_agent_api::SimFault;
use serde_json::Value;

/// `POST /sleds/{id}/expunge` on Nexus's internal API: the status and the body.
async fn expunge(ctx: &TestContext, sled: SledUuid) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!(
            "http://{}/sleds/{sled}/expunge",
            ctx.server().internal_address()
        ))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn expunged(ctx: &TestContext, sled: SledUuid) -> SledExpunged {
    let (status, body) = expunge(ctx, sled).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

/// Closes the sled agent of sled `sled` (it stops answering) and returns it, still holding
/// its VMMs in memory, as a dead sled would be to Nexus.
async fn close_sled(
    ctx: &mut TestContext,
    sled: SledUuid,
) -> halyard_common::internal_api::SledAgentInfo {
    let index = ctx
        .sleds
        .iter()
        .position(|s| s.agent().id() == sled)
        .unwrap();
    let server = ctx.sleds.remove(index);
    let registration = server.agent().registration();
    server.close().await.unwrap();
    registration
}

async fn started(ctx: &TestContext, name: &str, ncpus: u16) -> InstanceUuid {
    let project = match ctx.nexus().project_view(&"p".parse().unwrap()).await {
        Ok(_) => "p".parse().unwrap(),
        Err(_) => ctx.project("p").await,
    };
    let id = ctx.instance(&project, name, ncpus).await;
    ctx.nexus().instance_start(id).await.unwrap();
    ctx.wait_for(id, InstanceState::Running).await;
    id
}

async fn active_vmm(ctx: &TestContext, id: InstanceUuid) -> VmmUuid {
    ctx.view(id).await.instance.runtime.active_vmm().unwrap()
}

async fn sled_of(ctx: &TestContext, vmm: VmmUuid) -> SledUuid {
    ctx.nexus()
        .datastore()
        .vmm_fetch(vmm)
        .await
        .unwrap()
        .sled_id()
}

fn count(ctx: &TestContext, sql: &str) -> u64 {
    ctx.sql(sql).trim().parse().unwrap()
}

#[tokio::test]
async fn an_expunged_sled_releases_everything_and_is_never_used_again() {
    let mut ctx = TestContext::new().await;
    // Four instances of half a sled each fill both sleds exactly: two run on each.
    let half = u16::try_from(SLED_THREADS / 2).unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(started(&ctx, &format!("vm-{i}"), half).await);
    }
    let gone = ctx.sleds[0].agent().id();
    let healthy = ctx.sleds[1].agent().id();
    let mut lost = Vec::new();
    let mut lost_vmms = Vec::new();
    for id in &ids {
        let vmm = active_vmm(&ctx, *id).await;
        if sled_of(&ctx, vmm).await == gone {
            lost.push(*id);
            lost_vmms.push(vmm);
        }
    }
    assert_eq!(lost.len(), 2);
    let generations_before = ctx.sql(&format!(
        "SELECT generation FROM vmm WHERE sled_id = '{gone}' ORDER BY id"
    ));

    // The sled stops answering. Left alone, its VMMs keep their reservations.
    let registration = close_sled(&mut ctx, gone).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        count(
            &ctx,
            &format!("SELECT count(*) FROM sled_reservation WHERE sled_id = '{gone}'")
        ),
        2
    );

    // The operator declares it gone.
    let result = expunged(&ctx, gone).await;
    assert_eq!(result.sled_id, gone);
    let mut failed = result.vmms_failed.clone();
    failed.sort();
    lost_vmms.sort();
    assert_eq!(failed, lost_vmms);
    let mut instances_failed = result.instances_failed.clone();
    instances_failed.sort();
    lost.sort();
    assert_eq!(instances_failed, lost);
    assert!(result.migration_targets_retired.is_empty());

    // Its VMMs failed (generation bumped) and retired; nothing is reserved there.
    assert_eq!(
        count(
            &ctx,
            &format!("SELECT count(*) FROM sled_reservation WHERE sled_id = '{gone}'")
        ),
        0
    );
    assert_eq!(
        ctx.sql(&format!(
            "SELECT reserved_hardware_threads, reserved_physical_ram FROM sled WHERE id = '{gone}'"
        ))
        .trim(),
        "0|0"
    );
    assert_eq!(
        ctx.sql(&format!(
            "SELECT DISTINCT state, time_deleted IS NOT NULL FROM vmm WHERE sled_id = '{gone}'"
        ))
        .trim(),
        "failed|t"
    );
    let generations_after = ctx.sql(&format!(
        "SELECT generation - 1 FROM vmm WHERE sled_id = '{gone}' ORDER BY id"
    ));
    assert_eq!(generations_after, generations_before);
    for id in &ids {
        let want = if lost.contains(id) {
            InstanceState::Failed
        } else {
            InstanceState::Running
        };
        assert_eq!(ctx.view(*id).await.run_state(), want);
    }
    ctx.assert_quiet_and_consistent().await;
    // Users see it expunged, and decommissioned (nothing held there any more).
    let sleds: Value = crate::authn_support::http_client(&ctx.token)
        .get(format!(
            "http://{}/v1/system/hardware/sleds",
            ctx.server().external_address()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let views = sleds["items"].as_array().unwrap();
    let view = |id: SledUuid| {
        views
            .iter()
            .find(|s| s["id"] == id.to_string())
            .unwrap()
            .clone()
    };
    assert_eq!(view(gone)["policy"]["kind"], "expunged", "{sleds}");
    assert_eq!(view(gone)["state"], "decommissioned", "{sleds}");
    assert_eq!(view(healthy)["policy"]["kind"], "in_service", "{sleds}");
    assert_eq!(view(healthy)["state"], "active", "{sleds}");

    // Idempotent: a repeat keeps the first time and changes nothing.
    let again = expunged(&ctx, gone).await;
    assert_eq!(again.time_expunged, result.time_expunged);
    assert!(again.vmms_failed.is_empty() && again.instances_failed.is_empty());
    // Unknown sled: 404.
    let (status, body) = expunge(&ctx, SledUuid::new_v4()).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error_code"], "ObjectNotFound", "{body}");

    // It may not register again (its agent coming back, say).
    let response = reqwest::Client::new()
        .put(format!(
            "http://{}/sled-agents/{gone}",
            ctx.server().internal_address()
        ))
        .json(&registration)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("expunged"),
        "{body}"
    );

    // Nothing lands on it: a migration there is refused, and starts go to the healthy sled
    // (the expunged one has all its room free, so random placement would pick it often).
    let survivor = *ids.iter().find(|id| !lost.contains(id)).unwrap();
    let refused = ctx
        .nexus()
        .instance_migrate(survivor, Some(gone))
        .await
        .unwrap_err();
    assert_eq!(refused.error_code(), "Conflict", "{refused}");
    assert!(refused.to_string().contains("expunged"), "{refused}");
    for id in ids.iter().filter(|id| !lost.contains(id)) {
        ctx.nexus().instance_stop(*id).await.unwrap();
        ctx.wait_for(*id, InstanceState::Stopped).await;
    }
    for round in 0..3 {
        // A failed instance starts again, elsewhere.
        for id in &lost {
            ctx.nexus().instance_start(*id).await.unwrap();
            ctx.wait_for(*id, InstanceState::Running).await;
            let vmm = active_vmm(&ctx, *id).await;
            assert_eq!(sled_of(&ctx, vmm).await, healthy, "round {round}");
        }
        ctx.assert_quiet_and_consistent().await;
        for id in &lost {
            ctx.nexus().instance_stop(*id).await.unwrap();
            ctx.wait_for(*id, InstanceState::Stopped).await;
        }
    }
    ctx.assert_quiet_and_consistent().await;
}

/// Slow migration phases, so a migration is still going when its sled is expunged.
fn slow_migrations() -> SimConfig {
    SimConfig {
        start_delay_ms: 20,
        stop_delay_ms: 20,
        reboot_delay_ms: 20,
        migration_phase_delay_ms: 2000,
    }
}

#[tokio::test]
async fn a_migration_into_an_expunged_sled_fails_and_the_instance_runs_on() {
    let mut ctx = TestContext::with_sim(3, slow_migrations()).await;
    let id = started(&ctx, "vm", 2).await;
    let source = active_vmm(&ctx, id).await;
    let source_sled = sled_of(&ctx, source).await;
    let target_sled = ctx
        .sleds
        .iter()
        .map(|s| s.agent().id())
        .find(|s| *s != source_sled)
        .unwrap();
    ctx.nexus()
        .instance_migrate(id, Some(target_sled))
        .await
        .unwrap();
    let view = ctx.view(id).await;
    let migration = view.instance.runtime.migration().unwrap();
    let target = view.instance.runtime.target_vmm().unwrap();

    close_sled(&mut ctx, target_sled).await;
    let result = expunged(&ctx, target_sled).await;
    assert_eq!(result.vmms_failed, vec![target]);
    assert!(result.instances_failed.is_empty());
    // The target is failed and retired, the instance no longer migrating, and the source's
    // transfer to the sled that is gone fails: it runs on, on its source.
    let target_vmm = ctx.nexus().datastore().vmm_fetch(target).await.unwrap();
    assert_eq!(target_vmm.state(), VmmState::Failed);
    assert!(target_vmm.time_deleted.is_some());
    ctx.eventually(
        "the instance to run on its source",
        async |ctx: &TestContext| {
            let view = ctx.view(id).await;
            view.instance.runtime.migration().is_none()
                && view.run_state() == InstanceState::Running
                && view.instance.runtime.active_vmm() == Some(source)
        },
    )
    .await;
    let record = ctx
        .nexus()
        .datastore()
        .migration_fetch(migration)
        .await
        .unwrap();
    assert_eq!(record.target_state(), MigrationState::Failed);
    ctx.eventually(
        "the source to report the failure",
        async |ctx: &TestContext| {
            ctx.nexus()
                .datastore()
                .migration_fetch(migration)
                .await
                .unwrap()
                .source_state()
                == MigrationState::Failed
        },
    )
    .await;
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn a_migration_out_of_an_expunged_sled_fails_the_instance_and_retires_the_target() {
    let mut ctx = TestContext::with_sim(3, slow_migrations()).await;
    let id = started(&ctx, "vm", 2).await;
    let source = active_vmm(&ctx, id).await;
    let source_sled = sled_of(&ctx, source).await;
    let target_sled = ctx
        .sleds
        .iter()
        .map(|s| s.agent().id())
        .find(|s| *s != source_sled)
        .unwrap();
    ctx.nexus()
        .instance_migrate(id, Some(target_sled))
        .await
        .unwrap();
    let view = ctx.view(id).await;
    let migration = view.instance.runtime.migration().unwrap();
    let target = view.instance.runtime.target_vmm().unwrap();

    close_sled(&mut ctx, source_sled).await;
    let result = expunged(&ctx, source_sled).await;
    assert_eq!(result.vmms_failed, vec![source]);
    assert_eq!(result.instances_failed, vec![id]);
    assert_eq!(result.migration_targets_retired, vec![target]);
    // The instance failed; the target, which can never receive the guest now, is
    // unregistered from its (healthy) sled agent and retired; the migration failed.
    assert_eq!(ctx.view(id).await.run_state(), InstanceState::Failed);
    // (`saga_unwound`, or `destroyed` when the sled agent's report of its end, once
    // unregistered, is applied first.)
    let target_vmm = ctx.nexus().datastore().vmm_fetch(target).await.unwrap();
    assert!(
        matches!(
            target_vmm.state(),
            VmmState::SagaUnwound | VmmState::Destroyed
        ),
        "{target_vmm:?}"
    );
    assert!(target_vmm.time_deleted.is_some());
    let record = ctx
        .nexus()
        .datastore()
        .migration_fetch(migration)
        .await
        .unwrap();
    assert_eq!(record.source_state(), MigrationState::Failed);
    ctx.assert_quiet_and_consistent().await;

    // It starts again, elsewhere.
    ctx.nexus().instance_start(id).await.unwrap();
    ctx.wait_for(id, InstanceState::Running).await;
    let vmm = active_vmm(&ctx, id).await;
    assert_ne!(sled_of(&ctx, vmm).await, source_sled);
    ctx.assert_quiet_and_consistent().await;
}

/// How many requests to `endpoint` (a route, e.g. `PUT /vmms/{propolis_id}/migration-in`)
/// the sled agent at `address` has answered with `status`, from its metrics.
async fn sled_agent_requests(address: std::net::SocketAddr, endpoint: &str, status: u16) -> u64 {
    let text = reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!(
        r#"halyard_http_requests_total{{api="sled-agent",endpoint="{endpoint}",status="{status}"}}"#
    );
    text.lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .map_or(0, |count| count.trim().parse().unwrap())
}

/// The VMMs the sled agents still running run for instance `id`, as (VMM, state) pairs.
async fn live_vmms_of(ctx: &TestContext, id: InstanceUuid) -> Vec<(VmmUuid, VmmState)> {
    let mut live = Vec::new();
    for sled in &ctx.sleds {
        let client =
            halyard_sled_agent_client::Client::new(&format!("http://{}", sled.local_addr()));
        for vmm in client.vmm_list().await.unwrap().into_inner() {
            if vmm.instance_id == id {
                live.push((vmm.propolis_id, vmm.state.vmm_state.state));
            }
        }
    }
    live
}

/// A migration whose source and target are picked: the instance runs on `source`, and
/// `target_sled` is another sled.
async fn migration_setup(ctx: &TestContext) -> (InstanceUuid, VmmUuid, SledUuid) {
    let id = started(ctx, "vm", 2).await;
    let source = active_vmm(ctx, id).await;
    let source_sled = sled_of(ctx, source).await;
    let target_sled = ctx
        .sleds
        .iter()
        .map(|s| s.agent().id())
        .find(|s| *s != source_sled)
        .unwrap();
    (id, source, target_sled)
}

/// Rule (a) of `app/sled.rs`: the source lost its way to the target at `finish` (the commit
/// point), so it stays paused and keeps asking; the target's sled then dies and is expunged
/// before Nexus ever recorded the target as active. Nexus tells the source that the target
/// is gone: it resumes the guest, and the instance runs on, on its source, exactly once.
#[tokio::test]
async fn a_source_paused_at_finish_resumes_when_its_targets_sled_is_expunged() {
    let mut ctx = TestContext::with_sim(
        3,
        SimConfig {
            migration_phase_delay_ms: 100,
            ..slow_migrations()
        },
    )
    .await;
    let (id, source, target_sled) = migration_setup(&ctx).await;
    ctx.sled_client_for(source)
        .await
        .vmm_inject_fault(&source, &SimFault::LoseNextFinish)
        .await
        .unwrap();
    ctx.nexus()
        .instance_migrate(id, Some(target_sled))
        .await
        .unwrap();
    let view = ctx.view(id).await;
    let migration = view.instance.runtime.migration().unwrap();
    let target = view.instance.runtime.target_vmm().unwrap();
    // Once the target has answered sync, pause and transfer, only `finish` is left, and it
    // never gets there: the source is paused, asking, from then on.
    let target_address = ctx
        .sleds
        .iter()
        .find(|s| s.agent().id() == target_sled)
        .unwrap()
        .local_addr();
    ctx.eventually(
        "the target to have taken sync, pause and transfer",
        async |_: &TestContext| {
            sled_agent_requests(target_address, "PUT /vmms/{propolis_id}/migration-in", 200).await
                == 3
        },
    )
    .await;
    close_sled(&mut ctx, target_sled).await;
    let paused = ctx
        .sled_client_for(source)
        .await
        .vmm_get_state(&source)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paused.vmm_state.state, VmmState::Migrating, "{paused:?}");
    assert_eq!(
        paused.migration_out.map(|m| m.state),
        Some(MigrationState::InProgress)
    );

    let result = expunged(&ctx, target_sled).await;
    assert_eq!(result.vmms_failed, vec![target]);
    assert!(result.instances_failed.is_empty());
    ctx.eventually(
        "the source to resume the guest and the instance to run on it",
        async |ctx: &TestContext| {
            let view = ctx.view(id).await;
            view.instance.runtime.migration().is_none()
                && view.run_state() == InstanceState::Running
                && view.instance.runtime.active_vmm() == Some(source)
        },
    )
    .await;
    assert_eq!(
        live_vmms_of(&ctx, id).await,
        vec![(source, VmmState::Running)],
        "the guest runs exactly once, on its source"
    );
    let record = ctx
        .nexus()
        .datastore()
        .migration_fetch(migration)
        .await
        .unwrap();
    assert_eq!(record.target_state(), MigrationState::Failed);
    ctx.eventually(
        "the source to report its side failed",
        async |ctx: &TestContext| {
            ctx.nexus()
                .datastore()
                .migration_fetch(migration)
                .await
                .unwrap()
                .source_state()
                == MigrationState::Failed
        },
    )
    .await;
    ctx.assert_quiet_and_consistent().await;
    // A repeat finds nothing left to tell, and the instance can migrate again.
    let again = expunged(&ctx, target_sled).await;
    assert!(again.vmms_failed.is_empty());
    ctx.nexus().instance_migrate(id, None).await.unwrap();
    ctx.eventually("the next migration to end", async |ctx: &TestContext| {
        let view = ctx.view(id).await;
        view.instance.runtime.migration().is_none() && view.run_state() == InstanceState::Running
    })
    .await;
    assert_ne!(active_vmm(&ctx, id).await, source);
    ctx.assert_quiet_and_consistent().await;
}

/// Rule (b) of `app/sled.rs`: the source lost the reply to `finish`, but the target's
/// completed report reached Nexus, which made the target active and unregistered the
/// source (ending its wait). The target's sled is then expunged: the instance fails like
/// any whose active VMM's sled is gone, and no copy of the guest is left running.
#[tokio::test]
async fn a_lost_finish_reply_then_the_targets_sled_expunged_fails_the_instance() {
    let mut ctx = TestContext::with_sim(
        3,
        SimConfig {
            migration_phase_delay_ms: 100,
            ..slow_migrations()
        },
    )
    .await;
    let (id, source, target_sled) = migration_setup(&ctx).await;
    ctx.sled_client_for(source)
        .await
        .vmm_inject_fault(&source, &SimFault::LoseNextFinishReply)
        .await
        .unwrap();
    ctx.nexus()
        .instance_migrate(id, Some(target_sled))
        .await
        .unwrap();
    let target = ctx.view(id).await.instance.runtime.target_vmm().unwrap();
    ctx.eventually("the target to become active", async |ctx: &TestContext| {
        let view = ctx.view(id).await;
        view.instance.runtime.active_vmm() == Some(target)
            && view.run_state() == InstanceState::Running
    })
    .await;
    ctx.eventually("the source to be gone", async |ctx: &TestContext| {
        live_vmms_of(ctx, id).await == vec![(target, VmmState::Running)]
    })
    .await;
    close_sled(&mut ctx, target_sled).await;
    let result = expunged(&ctx, target_sled).await;
    assert_eq!(result.vmms_failed, vec![target]);
    assert_eq!(result.instances_failed, vec![id]);
    assert_eq!(ctx.view(id).await.run_state(), InstanceState::Failed);
    assert_eq!(live_vmms_of(&ctx, id).await, vec![]);
    ctx.assert_quiet_and_consistent().await;
}
