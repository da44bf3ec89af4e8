//! Nothing stays stuck: what a half-finished retirement, a lost reply or a dead VMM task
//! leaves behind is found and released.

use crate::context::TestContext;
use halyard_common::ids::{InstanceUuid, SledUuid, VmmUuid};
use halyard_common::{Error, InstanceState, VmmState};
use halyard_sled_agent::SimConfig;

/// Migrations that never get past their first phase (the transfer waits 10 minutes), so a
/// test can act while the target is registered and the source is migrating out.
fn slow_migrations() -> SimConfig {
    SimConfig {
        start_delay_ms: 20,
        stop_delay_ms: 20,
        reboot_delay_ms: 20,
        migration_phase_delay_ms: 600_000,
    }
}

async fn running_instance(ctx: &TestContext, name: &str) -> (InstanceUuid, VmmUuid) {
    let project = ctx.project(&format!("p-{name}")).await;
    let id = ctx.instance(&project, name, 2).await;
    ctx.nexus().instance_start(id).await.unwrap();
    ctx.wait_for(id, InstanceState::Running).await;
    (
        id,
        ctx.view(id).await.instance.runtime.active_vmm().unwrap(),
    )
}

async fn sled_of(ctx: &TestContext, vmm: VmmUuid) -> SledUuid {
    ctx.nexus()
        .datastore()
        .vmm_fetch(vmm)
        .await
        .unwrap()
        .sled_id()
}

/// A migration under way whose source is then retired (its guest failed, say) while the
/// target's sled agent is out of reach for a moment (its port in the database points
/// nowhere): the retirement fails after it has retired the source. Returns the target,
/// with its sled agent reachable again: (instance, source, target).
async fn orphan_a_target_while_its_sled_agent_is_out_of_reach(
    ctx: &TestContext,
) -> (InstanceUuid, VmmUuid, VmmUuid) {
    let (id, source) = running_instance(ctx, "orphan").await;
    let during = ctx.nexus().instance_migrate(id, None).await.unwrap();
    let target = during.instance.runtime.target_vmm().unwrap();
    let source_sled = sled_of(ctx, source).await;
    let target_sled = sled_of(ctx, target).await;
    // Its periodic registration would put the real port back at any moment.
    ctx.sleds
        .iter()
        .find(|s| s.agent().id() == target_sled)
        .unwrap()
        .stop_registering();
    let port = ctx.sql(&format!("SELECT port FROM sled WHERE id = '{target_sled}'"));
    ctx.sql(&format!(
        "UPDATE sled SET port = 1 WHERE id = '{target_sled}'"
    ));
    let failed = ctx
        .nexus()
        .retire_vmm(source_sled, source, VmmState::Failed)
        .await;
    ctx.sql(&format!(
        "UPDATE sled SET port = {} WHERE id = '{target_sled}'",
        port.trim()
    ));
    assert!(
        matches!(failed, Err(Error::ServiceUnavailable { .. })),
        "retiring the source must fail while the target's sled agent is out of reach: {failed:?}"
    );
    let source_vmm = ctx.nexus().datastore().vmm_fetch(source).await.unwrap();
    assert!(
        source_vmm.time_deleted.is_some(),
        "the source was retired before the target's unregistration failed"
    );
    (id, source, target)
}

async fn assert_retired_and_released(ctx: &TestContext, target: VmmUuid) {
    let store = ctx.nexus().datastore();
    let vmm = store.vmm_fetch(target).await.unwrap();
    assert!(
        vmm.time_deleted.is_some(),
        "the orphaned target {target} is still live ({})",
        vmm.state()
    );
    // Unregistering it ends it: its sled agent's own "destroyed" may land first.
    assert!(
        matches!(vmm.state(), VmmState::SagaUnwound | VmmState::Destroyed),
        "the orphaned target ended as {}",
        vmm.state()
    );
    let reservations = store.sled_reservation_list(None).await.unwrap();
    assert!(
        reservations.iter().all(|r| r.vmm_id() != target),
        "the orphaned target's reservation was not released"
    );
    let listed = ctx
        .sled_client_for(target)
        .await
        .vmm_list()
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.iter().all(|v| v.propolis_id != target),
        "the orphaned target is still registered with its sled agent"
    );
}

/// Finding 3: a retry of the source's retirement (a report sent again) finds the orphan by
/// query, although the retirement that orphaned it is long over.
#[tokio::test]
async fn a_retried_retirement_retires_the_target_its_first_attempt_orphaned() {
    let ctx = TestContext::with_sim(2, slow_migrations()).await;
    let (id, source, target) = orphan_a_target_while_its_sled_agent_is_out_of_reach(&ctx).await;
    let source_sled = sled_of(&ctx, source).await;
    ctx.nexus()
        .retire_vmm(source_sled, source, VmmState::Failed)
        .await
        .unwrap();
    assert_retired_and_released(&ctx, target).await;
    ctx.assert_quiet_and_consistent().await;
    ctx.nexus().instance_start(id).await.unwrap();
    ctx.wait_for(id, InstanceState::Running).await;
}

/// Finding 3: with nobody retrying, the retirement task finds the orphan (a target that
/// never reached a terminal state) and retires it.
#[tokio::test]
async fn the_retirement_task_retires_a_target_orphaned_by_an_interrupted_retirement() {
    let ctx = TestContext::with_sim(2, slow_migrations()).await;
    let (id, _source, target) = orphan_a_target_while_its_sled_agent_is_out_of_reach(&ctx).await;
    ctx.eventually(
        "the retirement task to retire the orphaned target",
        async |ctx: &TestContext| {
            let vmm = ctx.nexus().datastore().vmm_fetch(target).await.unwrap();
            vmm.time_deleted.is_some()
        },
    )
    .await;
    assert_retired_and_released(&ctx, target).await;
    ctx.nexus().instance_start(id).await.unwrap();
    ctx.wait_for(id, InstanceState::Running).await;
    ctx.assert_quiet_and_consistent().await;
}

/// Finding 6: a VMM whose task panics is reported failed, so its instance fails (instead of
/// waiting forever) and can be started again.
#[tokio::test]
async fn an_instance_whose_vmm_task_panics_fails_and_starts_again() {
    let ctx = TestContext::new().await;
    let (id, vmm) = running_instance(&ctx, "panics").await;
    ctx.sled_client_for(vmm)
        .await
        .vmm_inject_fault(&vmm, &halyard_sled_agent_api::SimFault::Panic)
        .await
        .unwrap();
    ctx.wait_for(id, InstanceState::Failed).await;
    ctx.assert_quiet_and_consistent().await;
    ctx.nexus().instance_start(id).await.unwrap();
    ctx.wait_for(id, InstanceState::Running).await;
    ctx.nexus().instance_stop(id).await.unwrap();
    ctx.wait_for(id, InstanceState::Stopped).await;
    ctx.assert_quiet_and_consistent().await;
}

/// Leaves behind, exactly as a failed node whose effect landed does (steno runs no undo
/// for a failed node): instance `claimed` claimed by a VMM id with no record (the start
/// saga's `claim`); a reservation for instance `reserved` whose VMM has no record (a
/// `reservation` node); and a VMM `creating` for instance `created` that no instance points
/// at, its reservation released by the earlier node's undo (a `vmm` / `target_vmm` node).
/// Returns the two VMM ids.
async fn leave_behind_what_failed_nodes_leave(
    ctx: &TestContext,
    claimed: InstanceUuid,
    reserved: InstanceUuid,
    created: InstanceUuid,
) -> (VmmUuid, VmmUuid) {
    ctx.sql(&format!(
        "UPDATE instance SET nexus_state = 'vmm', active_propolis_id = '{}', \
         state_generation = state_generation + 1, time_state_updated = now() \
         WHERE id = '{claimed}'",
        VmmUuid::new_v4()
    ));
    let store = ctx.nexus().datastore();
    let reservation_vmm = VmmUuid::new_v4();
    store
        .sled_reserve(
            reservation_vmm,
            reserved,
            halyard_db_queries::SledChoice::Any,
            halyard_db_model::SledResources {
                hardware_threads: 2,
                physical_ram: halyard_common::ByteCount::from_gibibytes_u32(1),
            },
        )
        .await
        .unwrap();
    let sled = &ctx.sleds[0];
    let creating = VmmUuid::new_v4();
    store
        .vmm_insert(halyard_db_model::Vmm::new(
            creating,
            created,
            sled.agent().id(),
            sled.local_addr(),
        ))
        .await
        .unwrap();
    (reservation_vmm, creating)
}

/// Finding 4 / "nothing stuck, ever": a claim, a reservation and a `creating` VMM that no
/// unfinished saga owns are released by the leftover task once older than its grace period
/// (not before, and not while a saga names them), and the instances then start, stop and
/// delete normally.
#[tokio::test]
async fn leftovers_no_saga_owns_are_released_after_the_grace_period() {
    let ctx = TestContext::new().await;
    let project = ctx.project("leftovers").await;
    let claimed = ctx.instance(&project, "claimed", 2).await;
    let reserved = ctx.instance(&project, "reserved", 2).await;
    let created = ctx.instance(&project, "created", 2).await;
    let (reservation_vmm, creating) =
        leave_behind_what_failed_nodes_leave(&ctx, claimed, reserved, created).await;

    // What the finding describes: the claimed instance can't be stopped or deleted.
    assert_eq!(ctx.view(claimed).await.run_state(), InstanceState::Starting);
    let refused = ctx.nexus().instance_delete(claimed).await.unwrap_err();
    assert!(matches!(refused, Error::Conflict { .. }), "{refused:?}");

    // Younger than the grace period (the default, a minute): left alone.
    assert_eq!(
        ctx.nexus().release_leftovers().await.unwrap(),
        Default::default()
    );
    // Named by an unfinished saga: left alone, whatever its age.
    let owner = uuid::Uuid::new_v4();
    ctx.sql(&format!(
        "INSERT INTO saga (id, creator, current_sec, name, dag, saga_state, adopt_generation, \
         time_created, adopt_time) SELECT '{owner}', creator, current_sec, 'instance-start', \
         jsonb_build_object('params', jsonb_build_object('instance_id', '{claimed}')), \
         'running', adopt_generation, now(), now() FROM saga LIMIT 1"
    ));
    ctx.nexus().set_leftover_grace(std::time::Duration::ZERO);
    let released = ctx.nexus().release_leftovers().await.unwrap();
    assert_eq!(
        released.claims, 0,
        "a claim an unfinished saga names was released"
    );
    ctx.sql(&format!("DELETE FROM saga WHERE id = '{owner}'"));

    // Past the grace period, owned by nobody: the task releases all three.
    ctx.eventually(
        "the leftover task to release the claim, the reservation and the creating VMM",
        async |ctx: &TestContext| {
            let store = ctx.nexus().datastore();
            ctx.view(claimed)
                .await
                .instance
                .runtime
                .active_vmm()
                .is_none()
                && store
                    .sled_reservation_fetch(reservation_vmm)
                    .await
                    .unwrap()
                    .is_none()
                && store
                    .vmm_fetch(creating)
                    .await
                    .unwrap()
                    .time_deleted
                    .is_some()
        },
    )
    .await;
    assert_eq!(
        ctx.nexus()
            .datastore()
            .vmm_fetch(creating)
            .await
            .unwrap()
            .state(),
        VmmState::SagaUnwound
    );
    ctx.assert_quiet_and_consistent().await;
    for id in [claimed, reserved, created] {
        assert_eq!(ctx.view(id).await.run_state(), InstanceState::Stopped);
        ctx.nexus().instance_start(id).await.unwrap();
        ctx.wait_for(id, InstanceState::Running).await;
        ctx.nexus().instance_stop(id).await.unwrap();
        ctx.wait_for(id, InstanceState::Stopped).await;
        ctx.nexus().instance_delete(id).await.unwrap();
    }
    ctx.assert_quiet_and_consistent().await;
}

/// The leftover task never takes what a saga in flight holds: with no grace period at all,
/// starts, migrations and stops of several instances at once (each saga's claim,
/// reservation and `creating` VMM visible to the task between its nodes) all finish, and
/// the system ends consistent.
#[tokio::test]
async fn with_no_grace_period_the_leftover_task_leaves_sagas_in_flight_alone() {
    let ctx = TestContext::new().await;
    ctx.nexus().set_leftover_grace(std::time::Duration::ZERO);
    let project = ctx.project("busy").await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(ctx.instance(&project, &format!("busy-{n}"), 1).await);
    }
    let lifecycles = ids.iter().map(|&id| {
        let ctx = &ctx;
        async move {
            for _ in 0..3 {
                ctx.nexus().instance_start(id).await.unwrap();
                ctx.wait_for(id, InstanceState::Running).await;
                ctx.nexus().instance_migrate(id, None).await.unwrap();
                ctx.eventually("the migration to end", async |ctx: &TestContext| {
                    let view = ctx.view(id).await;
                    view.instance.runtime.migration().is_none()
                        && view.run_state() == InstanceState::Running
                })
                .await;
                ctx.nexus().instance_stop(id).await.unwrap();
                ctx.wait_for(id, InstanceState::Stopped).await;
            }
        }
    });
    // Besides the task's own passes, passes back to back: nothing here is left over, so
    // any release is a saga's holding taken from under it.
    let done = std::sync::atomic::AtomicBool::new(false);
    let sweeping = async {
        let mut passes = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let released = ctx.nexus().release_leftovers().await.unwrap();
            assert_eq!(released, Default::default(), "released what a saga holds");
            passes += 1;
            tokio::task::yield_now().await;
        }
        passes
    };
    let lifecycles = async {
        futures::future::join_all(lifecycles).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let ((), passes) = futures::join!(lifecycles, sweeping);
    assert!(passes > 0);
    ctx.assert_quiet_and_consistent().await;
    let migrated = ctx.nexus().datastore().migration_list(None).await.unwrap();
    assert_eq!(migrated.len(), 12);
    assert!(
        migrated.iter().all(|m| m.time_deleted.is_none()),
        "a migration saga unwound: {migrated:?}"
    );
}
