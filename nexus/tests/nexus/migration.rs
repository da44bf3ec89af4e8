//! Live migration: the instance-migrate saga and its outcome in the sled agents' reports.

use crate::context::{SLED_THREADS, TestContext, log};
use crate::saga_faults::{inject_error_at_every_node, repeat_every_node};
use halyard_common::ids::{InstanceUuid, VmmUuid};
use halyard_common::internal_api::{MigrationRuntimeState, SledVmmState, VmmRuntimeState};
use halyard_common::{Error, Generation, InstanceState, MigrationState, VmmState};
use halyard_nexus::Nexus;
use halyard_nexus::app::sagas::{create_saga_dag, instance_migrate};
use halyard_sled_agent::SimConfig;
use halyard_sled_agent_api::{MigrationPhase, SimFault};

async fn running_instance(ctx: &TestContext, ncpus: u16) -> (InstanceUuid, VmmUuid) {
    let project = match ctx.nexus().project_view(&"p".parse().unwrap()).await {
        Ok(_) => "p".parse().unwrap(),
        Err(_) => ctx.project("p").await,
    };
    let name = format!("vm-{}", &InstanceUuid::new_v4().to_string()[..8]);
    let id = ctx.instance(&project, &name, ncpus).await;
    ctx.nexus().instance_start(id).await.unwrap();
    ctx.wait_for(id, InstanceState::Running).await;
    (
        id,
        ctx.view(id).await.instance.runtime.active_vmm().unwrap(),
    )
}

/// Waits until no migration is in progress and the instance runs; returns its active VMM.
async fn settled(ctx: &TestContext, id: InstanceUuid) -> VmmUuid {
    ctx.eventually("the migration to end", async |ctx: &TestContext| {
        let view = ctx.view(id).await;
        view.instance.runtime.migration().is_none() && view.run_state() == InstanceState::Running
    })
    .await;
    ctx.assert_quiet_and_consistent().await;
    ctx.view(id).await.instance.runtime.active_vmm().unwrap()
}

async fn stop(ctx: &TestContext, id: InstanceUuid) {
    ctx.nexus().instance_stop(id).await.unwrap();
    ctx.wait_for(id, InstanceState::Stopped).await;
}

fn params(id: InstanceUuid) -> instance_migrate::Params {
    instance_migrate::Params {
        instance_id: id,
        destination: None,
    }
}

#[tokio::test]
async fn a_migration_moves_a_running_instance_to_another_sled() {
    let ctx = TestContext::new().await;
    let (id, source) = running_instance(&ctx, 2).await;
    let source_sled = ctx
        .nexus()
        .datastore()
        .vmm_fetch(source)
        .await
        .unwrap()
        .sled_id();
    let during = ctx.nexus().instance_migrate(id, None).await.unwrap();
    assert!(during.instance.runtime.migration().is_some());
    let target = settled(&ctx, id).await;
    assert_ne!(target, source);

    let store = ctx.nexus().datastore();
    let source_vmm = store.vmm_fetch(source).await.unwrap();
    assert_eq!(source_vmm.state(), VmmState::Destroyed);
    assert!(source_vmm.time_deleted.is_some());
    let target_vmm = store.vmm_fetch(target).await.unwrap();
    assert_ne!(target_vmm.sled_id(), source_sled);
    assert_eq!(target_vmm.state(), VmmState::Running);
    let reservations = store.sled_reservation_list(None).await.unwrap();
    assert_eq!(
        reservations.iter().map(|r| r.vmm_id()).collect::<Vec<_>>(),
        vec![target]
    );
    ctx.eventually(
        "both sides to report completion",
        async |ctx: &TestContext| {
            let migrations = ctx
                .nexus()
                .datastore()
                .migration_list(Some(id))
                .await
                .unwrap();
            migrations.len() == 1
                && migrations[0].source_state() == MigrationState::Completed
                && migrations[0].target_state() == MigrationState::Completed
        },
    )
    .await;
    // And it can move back.
    ctx.nexus()
        .instance_migrate(id, Some(source_sled))
        .await
        .unwrap();
    let back = settled(&ctx, id).await;
    assert_eq!(store.vmm_fetch(back).await.unwrap().sled_id(), source_sled);
    assert_eq!(store.instance_vmm_history(id).await.unwrap().len(), 3);
}

#[tokio::test]
async fn instance_migrate_unwinds_from_every_node_and_tolerates_repeats() {
    let ctx = TestContext::new().await;
    let covered = inject_error_at_every_node::<instance_migrate::SagaInstanceMigrate>(
        &ctx,
        async |ctx| params(running_instance(ctx, 2).await.0),
        async |ctx, params| {
            let id = params.instance_id;
            let view = ctx.view(id).await;
            assert_eq!(view.run_state(), InstanceState::Running);
            assert_eq!(
                (
                    view.instance.runtime.migration(),
                    view.instance.runtime.target_vmm()
                ),
                (None, None)
            );
            let history = ctx
                .nexus()
                .datastore()
                .instance_vmm_history(id)
                .await
                .unwrap();
            assert_eq!(
                history.iter().filter(|v| v.time_deleted.is_none()).count(),
                1
            );
            stop(ctx, id).await;
        },
    )
    .await;
    assert_eq!(covered, 8);
    let covered = repeat_every_node::<instance_migrate::SagaInstanceMigrate>(
        &ctx,
        async |ctx| params(running_instance(ctx, 2).await.0),
        async |ctx, params| {
            let id = params.instance_id;
            settled(ctx, id).await;
            let history = ctx
                .nexus()
                .datastore()
                .instance_vmm_history(id)
                .await
                .unwrap();
            assert_eq!(history.len(), 2, "one source, one target");
            stop(ctx, id).await;
        },
    )
    .await;
    assert_eq!(covered, 8);
}

/// Idempotent replay of a recorded log prefix, for every node: not a crash test. Each
/// migration first runs to its end (the target VMM runs, the source is retired), then its log
/// is cut back to "node N started" and a fresh Nexus resumes it, re-running node N and every
/// later node against effects that already exist; that must make no second migration or VMM.
/// Crashes with the later effects really absent are in `crash_replay.rs`.
#[tokio::test]
async fn instance_migrate_replays_a_recorded_prefix_idempotently_over_existing_effects() {
    let ctx = TestContext::new().await;
    let nodes: Vec<(usize, String)> =
        create_saga_dag::<instance_migrate::SagaInstanceMigrate>(params(InstanceUuid::new_v4()))
            .unwrap()
            .get_nodes()
            .map(|n| (n.index().index(), n.name().as_ref().to_string()))
            .collect();
    let start_node = nodes.len();
    for (index, name) in &nodes {
        let (id, _) = running_instance(&ctx, 2).await;
        ctx.nexus().instance_migrate(id, None).await.unwrap();
        settled(&ctx, id).await;
        let saga_id = ctx.sql("SELECT id FROM saga WHERE name = 'instance-migrate' ORDER BY time_created DESC LIMIT 1");
        let saga_id = saga_id.trim();
        ctx.sql(&format!(
            "DELETE FROM saga_node_event WHERE saga_id = '{saga_id}' \
             AND node_id >= {index} AND node_id != {start_node} \
             AND NOT (node_id = {index} AND event_type = 'started'); \
             UPDATE saga SET saga_state = 'running' WHERE id = '{saga_id}'"
        ));
        let fresh = Nexus::new(
            ctx.nexus().id(),
            ctx.nexus().datastore().clone(),
            ctx.nexus().sled_http().clone(),
            &log(),
        );
        assert_eq!(fresh.resume_sagas().await.unwrap(), 1);
        ctx.eventually(
            &format!("the saga resumed at {name} to finish"),
            async |ctx: &TestContext| {
                ctx.sql(&format!(
                    "SELECT saga_state FROM saga WHERE id = '{saga_id}'"
                ))
                .trim()
                    == "done"
            },
        )
        .await;
        settled(&ctx, id).await;
        let history = ctx
            .nexus()
            .datastore()
            .instance_vmm_history(id)
            .await
            .unwrap();
        // Cut at `ids`, the saga picks new ids and so makes a new migration (of an instance
        // that already moved); cut anywhere later, it must reuse the first one's records.
        let expected = if *index == 0 { 3 } else { 2 };
        assert_eq!(history.len(), expected, "replay at {name}");
        stop(&ctx, id).await;
    }
}

#[tokio::test]
async fn a_transfer_failing_at_any_phase_on_either_side_leaves_the_instance_on_its_source() {
    // Slow phases, so a fault can be injected into the target before its first phase.
    let sim = SimConfig {
        start_delay_ms: 10,
        stop_delay_ms: 10,
        reboot_delay_ms: 10,
        migration_phase_delay_ms: 150,
    };
    let ctx = TestContext::with_sim(2, sim).await;
    for on_target in [false, true] {
        for phase in MigrationPhase::ALL {
            let (id, source) = running_instance(&ctx, 2).await;
            let fault = SimFault::FailMigration { phase };
            if !on_target {
                ctx.sled_client_for(source)
                    .await
                    .vmm_inject_fault(&source, &fault)
                    .await
                    .unwrap();
            }
            let during = ctx.nexus().instance_migrate(id, None).await.unwrap();
            let target = during.instance.runtime.target_vmm().unwrap();
            if on_target {
                ctx.sled_client_for(target)
                    .await
                    .vmm_inject_fault(&target, &fault)
                    .await
                    .unwrap();
            }
            let active = settled(&ctx, id).await;
            assert_eq!(
                active, source,
                "failure at {phase:?} (target: {on_target}) moved the instance"
            );
            let target_vmm = ctx.nexus().datastore().vmm_fetch(target).await.unwrap();
            assert!(target_vmm.time_deleted.is_some());
            let migration = ctx
                .nexus()
                .datastore()
                .migration_list(Some(id))
                .await
                .unwrap()
                .remove(0);
            assert!(
                migration.source_state() == MigrationState::Failed
                    || migration.target_state() == MigrationState::Failed,
                "{migration:?}"
            );
            assert_eq!(ctx.sql("SELECT count(*) FROM sled_reservation").trim(), "1");
            stop(&ctx, id).await;
        }
    }
}

#[tokio::test]
async fn racing_stopped_full_and_interrupted_migrations_are_refused_and_leak_nothing() {
    let sim = SimConfig {
        start_delay_ms: 10,
        stop_delay_ms: 10,
        reboot_delay_ms: 10,
        migration_phase_delay_ms: 100,
    };
    let ctx = TestContext::with_sim(2, sim).await;
    let (id, _) = running_instance(&ctx, 2).await;

    // Two at once: one runs, the other is refused.
    let (a, b) = tokio::join!(
        ctx.nexus().instance_migrate(id, None),
        ctx.nexus().instance_migrate(id, None)
    );
    let refused: Vec<_> = [&a, &b]
        .into_iter()
        .filter_map(|r| r.as_ref().err())
        .collect();
    assert_eq!(refused.len(), 1, "{a:?} {b:?}");
    assert_eq!(refused[0].status_code(), 409, "{:?}", refused[0]);

    // Stop during the migration: refused, and nothing leaks.
    let err = ctx.nexus().instance_stop(id).await.unwrap_err();
    assert_eq!(err.status_code(), 409, "{err:?}");
    assert!(err.to_string().contains("migrating"), "{err}");
    let active = settled(&ctx, id).await;
    // The source and the winner's target; the loser's target (if it got that far) unwound.
    let history = ctx
        .nexus()
        .datastore()
        .instance_vmm_history(id)
        .await
        .unwrap();
    let not_unwound = history
        .iter()
        .filter(|v| v.state() != VmmState::SagaUnwound)
        .count();
    assert_eq!(not_unwound, 2, "{history:?}");

    // A stopped instance cannot migrate.
    stop(&ctx, id).await;
    let err = ctx.nexus().instance_migrate(id, None).await.unwrap_err();
    assert_eq!(err.status_code(), 409, "{err:?}");
    let _ = active;

    // A migration to a full sled: insufficient capacity, nothing leaked.
    let (small, source) = running_instance(&ctx, 2).await;
    let source_sled = ctx
        .nexus()
        .datastore()
        .vmm_fetch(source)
        .await
        .unwrap()
        .sled_id();
    let (_big, _) = running_instance(&ctx, SLED_THREADS as u16).await; // fills the other sled
    let other = ctx
        .sleds
        .iter()
        .map(|s| s.agent().id())
        .find(|s| *s != source_sled)
        .unwrap();
    let err = ctx
        .nexus()
        .instance_migrate(small, Some(other))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InsufficientCapacity { .. }), "{err:?}");
    assert_eq!(settled(&ctx, small).await, source);
    assert_eq!(
        ctx.sql("SELECT count(*) FROM sled_reservation").trim(),
        "2",
        "{}\n{}",
        ctx.sql("SELECT * FROM sled_reservation"),
        ctx.sql("SELECT id, instance_id, state, time_deleted FROM vmm")
    );
    let err = ctx.nexus().instance_migrate(small, None).await.unwrap_err();
    assert_eq!(err.status_code(), 507, "{err:?}");
    // To its own sled: a bad request.
    let err = ctx
        .nexus()
        .instance_migrate(small, Some(source_sled))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 400, "{err:?}");
    ctx.assert_quiet_and_consistent().await;
}

/// Fast sleds whose migration phases are slow enough for a fault to be injected into a
/// target before its first phase arrives.
fn slow_phases() -> SimConfig {
    SimConfig {
        start_delay_ms: 10,
        stop_delay_ms: 10,
        reboot_delay_ms: 10,
        migration_phase_delay_ms: 150,
    }
}

/// The VMMs the sled agents run for instance `id`, as (VMM, sled agent state) pairs.
async fn live_vmms_of(ctx: &TestContext, id: InstanceUuid) -> Vec<(VmmUuid, VmmState)> {
    let mut live = Vec::new();
    for sled in &ctx.sleds {
        let client = crate::context::sled_client(sled.local_addr(), crate::context::Role::Operator);
        for vmm in client.vmm_list().await.unwrap().into_inner() {
            if vmm.instance_id == id {
                live.push((vmm.propolis_id, vmm.state.vmm_state.state));
            }
        }
    }
    live
}

#[tokio::test]
async fn a_migration_whose_finish_reply_is_lost_ends_with_the_guest_on_its_target_only() {
    let ctx = TestContext::with_sim(2, slow_phases()).await;
    let (id, source) = running_instance(&ctx, 2).await;
    ctx.sled_client_for(source)
        .await
        .vmm_inject_fault(&source, &SimFault::LoseNextFinishReply)
        .await
        .unwrap();
    let during = ctx.nexus().instance_migrate(id, None).await.unwrap();
    let target = during.instance.runtime.target_vmm().unwrap();
    let active = settled(&ctx, id).await;
    assert_eq!(
        active, target,
        "the guest resumed on the target: the commit"
    );
    assert_eq!(
        live_vmms_of(&ctx, id).await,
        vec![(target, VmmState::Running)]
    );
    ctx.eventually(
        "both sides to report completion",
        async |ctx: &TestContext| {
            let migration = ctx
                .nexus()
                .datastore()
                .migration_list(Some(id))
                .await
                .unwrap()
                .remove(0);
            migration.source_state() == MigrationState::Completed
                && migration.target_state() == MigrationState::Completed
        },
    )
    .await;
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn a_failed_side_reported_after_the_other_completed_retires_nothing() {
    let ctx = TestContext::new().await;
    let (id, source) = running_instance(&ctx, 2).await;
    let during = ctx.nexus().instance_migrate(id, None).await.unwrap();
    let migration_id = during.instance.runtime.migration().unwrap();
    let target = settled(&ctx, id).await;
    assert_ne!(target, source);
    // The source, having resumed its copy after losing the reply to `finish` (what a sled
    // agent without a commit point did), reports its side failed after the target's
    // completed was applied.
    let now = chrono::Utc::now();
    let failed = SledVmmState {
        vmm_state: VmmRuntimeState {
            state: VmmState::Running,
            generation: Generation::new().next().next().next().next().next().next(),
            time_updated: now,
        },
        migration_in: None,
        migration_out: Some(MigrationRuntimeState {
            migration_id,
            state: MigrationState::Failed,
            generation: Generation::new().next().next().next().next(),
            time_updated: now,
        }),
    };
    let _ = ctx.nexus().apply_vmm_report(source, failed).await;
    let view = ctx.view(id).await;
    assert_eq!(view.run_state(), InstanceState::Running, "{view:?}");
    assert_eq!(view.instance.runtime.active_vmm(), Some(target));
    let target_vmm = ctx.nexus().datastore().vmm_fetch(target).await.unwrap();
    assert!(
        target_vmm.time_deleted.is_none(),
        "the target, which runs the guest, was retired for the source's failure: {target_vmm:?}"
    );
    assert_eq!(
        live_vmms_of(&ctx, id).await,
        vec![(target, VmmState::Running)]
    );
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn a_migrate_out_resumed_after_the_migration_completed_does_not_unwind_it() {
    let ctx = TestContext::new().await;
    let (id, _) = running_instance(&ctx, 2).await;
    ctx.nexus().instance_migrate(id, None).await.unwrap();
    let target = settled(&ctx, id).await;
    let migrate_out = create_saga_dag::<instance_migrate::SagaInstanceMigrate>(params(id))
        .unwrap()
        .get_nodes()
        .find(|n| n.name().as_ref() == "migrate_out")
        .unwrap()
        .index()
        .index();
    let saga_id = ctx.sql(
        "SELECT id FROM saga WHERE name = 'instance-migrate' ORDER BY time_created DESC LIMIT 1",
    );
    let saga_id = saga_id.trim();
    // Nexus died after the source accepted MigrateOut and before `succeeded` was logged; the
    // migration then completed on the sled agents. The sides' reports are not in the
    // migration record yet (queued behind the restart), so the record says in progress.
    ctx.sql(&format!(
        "DELETE FROM saga_node_event WHERE saga_id = '{saga_id}' \
         AND node_id >= {migrate_out} AND NOT (node_id = {migrate_out} AND event_type = 'started') \
         AND node_id != {}; \
         UPDATE saga SET saga_state = 'running' WHERE id = '{saga_id}'; \
         UPDATE migration SET source_state = 'in_progress', target_state = 'in_progress' \
         WHERE instance_id = '{id}'",
        migrate_out + 1
    ));
    let fresh = Nexus::new(
        ctx.nexus().id(),
        ctx.nexus().datastore().clone(),
        ctx.nexus().sled_http().clone(),
        &log(),
    );
    assert_eq!(fresh.resume_sagas().await.unwrap(), 1);
    ctx.eventually("the resumed saga to finish", async |ctx: &TestContext| {
        ctx.sql(&format!(
            "SELECT saga_state FROM saga WHERE id = '{saga_id}'"
        ))
        .trim()
            == "done"
    })
    .await;
    let unwound = ctx.sql(&format!(
        "SELECT count(*) FROM saga_node_event WHERE saga_id = '{saga_id}' \
         AND event_type LIKE 'undo%'"
    ));
    let view = ctx.view(id).await;
    assert_eq!(
        (view.run_state(), view.instance.runtime.active_vmm()),
        (InstanceState::Running, Some(target)),
        "the resumed saga unwound ({} undo events) and took the guest with it",
        unwound.trim()
    );
    assert_eq!(unwound.trim(), "0");
    assert_eq!(
        live_vmms_of(&ctx, id).await,
        vec![(target, VmmState::Running)]
    );
    // What the queued reports bring, once applied.
    ctx.sql(&format!(
        "UPDATE migration SET source_state = 'completed', target_state = 'completed' \
         WHERE instance_id = '{id}'"
    ));
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn one_instance_migrated_twenty_times_with_random_faults_ends_running_and_leaks_nothing() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("MIGRATION_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("MIGRATION_FAULT_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ctx = TestContext::with_sim(3, slow_phases()).await;
    let (id, mut active) = running_instance(&ctx, 2).await;
    let mut outcomes = Vec::new();
    for round in 0..20 {
        let phase = MigrationPhase::ALL[rng.random_range(0..MigrationPhase::ALL.len())];
        // 0: no fault; 1: on the source; 2: on the target; 3: finish's reply lost.
        let fault = rng.random_range(0..4);
        let source = active;
        let source_client = ctx.sled_client_for(source).await;
        let source_fault = match fault {
            1 => Some(SimFault::FailMigration { phase }),
            3 => Some(SimFault::LoseNextFinishReply),
            _ => None,
        };
        if let Some(source_fault) = source_fault {
            source_client
                .vmm_inject_fault(&source, &source_fault)
                .await
                .unwrap();
        }
        let during = ctx.nexus().instance_migrate(id, None).await.unwrap();
        let target = during.instance.runtime.target_vmm().unwrap();
        // The target exists only once the migration is under way: on a busy machine it may
        // be past `phase` already, and then the sled agent refuses the fault (409), which
        // leaves this round without one.
        let target_fault_armed = fault == 2
            && match ctx
                .sled_client_for(target)
                .await
                .vmm_inject_fault(&target, &SimFault::FailMigration { phase })
                .await
            {
                Ok(_) => true,
                Err(e) if e.status() == Some(reqwest::StatusCode::CONFLICT) => false,
                Err(e) => panic!("round {round}: injecting the target's fault: {e}"),
            };
        active = settled(&ctx, id).await;
        let expected = if fault == 1 || target_fault_armed {
            source
        } else {
            target
        };
        assert_eq!(
            active, expected,
            "round {round} (seed {seed}): fault {fault} at {phase:?}"
        );
        assert_eq!(
            live_vmms_of(&ctx, id).await,
            vec![(active, VmmState::Running)],
            "round {round} (seed {seed})"
        );
        outcomes.push((fault, phase, target_fault_armed));
    }
    let migrations = ctx
        .nexus()
        .datastore()
        .migration_list(Some(id))
        .await
        .unwrap();
    assert_eq!(migrations.len(), 20, "{outcomes:?}");
    assert_eq!(ctx.view(id).await.run_state(), InstanceState::Running);
    assert_eq!(ctx.sql("SELECT count(*) FROM sled_reservation").trim(), "1");
    assert_eq!(
        ctx.sql("SELECT count(*) FROM vmm WHERE time_deleted IS NULL")
            .trim(),
        "1"
    );
    ctx.assert_quiet_and_consistent().await;
}
