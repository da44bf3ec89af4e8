//! The instance transitions (`instance_transition.rs`): each applies once, says "already
//! done" when repeated, says why when the instance is elsewhere, and of racing callers exactly
//! one applies.

use crate::Harness;
use halyard_common::ids::{InstanceUuid, MigrationUuid, VmmUuid};
use halyard_common::{Error, InstanceNexusState};
use halyard_db_model::Instance;
use halyard_db_queries::{
    ConflictReason, DataStore, Release, TransitionConflict, TransitionOutcome,
};
use std::future::Future;
use std::sync::Arc;

const RACERS: usize = 8;

fn conflict(instance: &Instance, reason: ConflictReason) -> TransitionOutcome {
    TransitionOutcome::Conflict(TransitionConflict {
        instance_name: instance.name().clone(),
        reason,
    })
}

/// Runs `RACERS` calls of `transition` (the i-th given `i`) at once, each on its own task;
/// returns their outcomes in order of `i`.
async fn race<F, Fut>(datastore: &Arc<DataStore>, transition: F) -> Vec<TransitionOutcome>
where
    F: Fn(Arc<DataStore>, usize) -> Fut,
    Fut: Future<Output = Result<TransitionOutcome, Error>> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|i| {
            let call = transition(Arc::clone(datastore), i);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                call.await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap().unwrap());
    }
    outcomes
}

fn applied_count(outcomes: &[TransitionOutcome]) -> usize {
    outcomes
        .iter()
        .filter(|o| **o == TransitionOutcome::Applied)
        .count()
}

/// Harness whose datastore the racing tasks can share.
fn shared(h: &Harness) -> Arc<DataStore> {
    Arc::new(h.datastore.clone())
}

async fn fetch(h: &Harness, id: InstanceUuid) -> Instance {
    h.datastore.instance_fetch(id).await.unwrap()
}

/// A stopped instance claimed by `vmm`.
async fn running_instance(h: &Harness, name: &str, vmm: VmmUuid) -> Instance {
    let project = h.project(&format!("p-{name}")).await;
    let instance = h.stopped_instance(&project, name).await;
    assert_eq!(
        h.datastore
            .instance_claim_for_start(instance.id(), vmm)
            .await
            .unwrap()
            .0,
        TransitionOutcome::Applied
    );
    fetch(h, instance.id()).await
}

#[tokio::test]
async fn claim_for_start_applies_once_and_says_why_not() {
    let h = Harness::new();
    let project = h.project("p").await;
    let stopped = h.stopped_instance(&project, "vm").await;
    let vmm = VmmUuid::new_v4();

    let claim = async |vmm| {
        h.datastore
            .instance_claim_for_start(stopped.id(), vmm)
            .await
            .map(|(outcome, _)| outcome)
    };
    let (outcome, returned) = h
        .datastore
        .instance_claim_for_start(stopped.id(), vmm)
        .await
        .unwrap();
    assert_eq!(outcome, TransitionOutcome::Applied);
    let claimed = fetch(&h, stopped.id()).await;
    assert_eq!(returned, claimed);
    assert_eq!(claimed.runtime.active_vmm(), Some(vmm));
    assert_eq!(claimed.runtime.nexus_state(), InstanceNexusState::Vmm);
    assert_eq!(
        claimed.runtime.generation(),
        stopped.runtime.generation().next()
    );

    // A repeat changes nothing, and returns the instance too.
    assert_eq!(
        h.datastore
            .instance_claim_for_start(stopped.id(), vmm)
            .await
            .unwrap(),
        (TransitionOutcome::AlreadyDone, claimed.clone())
    );
    assert_eq!(fetch(&h, stopped.id()).await, claimed);

    // Another start: the instance runs on our VMM.
    assert_eq!(
        claim(VmmUuid::new_v4()).await.unwrap(),
        conflict(&stopped, ConflictReason::ActiveVmm(vmm))
    );
    assert_eq!(fetch(&h, stopped.id()).await, claimed);

    // An instance still being created cannot start.
    let creating = h.instance(&project, "new").await;
    assert_eq!(
        h.datastore
            .instance_claim_for_start(creating.id(), vmm)
            .await
            .unwrap()
            .0,
        conflict(
            &creating,
            ConflictReason::State(InstanceNexusState::Creating)
        )
    );
    assert_eq!(fetch(&h, creating.id()).await, creating);

    // No such instance.
    let err = h
        .datastore
        .instance_claim_for_start(InstanceUuid::new_v4(), vmm)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ObjectNotFound { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_claims_for_start_leave_exactly_one_winner() {
    let h = Harness::new();
    let project = h.project("p").await;
    let stopped = h.stopped_instance(&project, "vm").await;
    let vmms: Vec<VmmUuid> = (0..RACERS).map(|_| VmmUuid::new_v4()).collect();
    let id = stopped.id();
    let outcomes = race(&shared(&h), |datastore, i| {
        let vmm = vmms[i];
        async move {
            datastore
                .instance_claim_for_start(id, vmm)
                .await
                .map(|(outcome, _)| outcome)
        }
    })
    .await;
    assert_eq!(applied_count(&outcomes), 1, "{outcomes:?}");
    let winner = vmms[outcomes
        .iter()
        .position(|o| *o == TransitionOutcome::Applied)
        .unwrap()];
    for outcome in &outcomes {
        if *outcome != TransitionOutcome::Applied {
            assert_eq!(
                *outcome,
                conflict(&stopped, ConflictReason::ActiveVmm(winner))
            );
        }
    }
    let now = fetch(&h, id).await;
    assert_eq!(now.runtime.active_vmm(), Some(winner));
    assert_eq!(
        now.runtime.generation(),
        stopped.runtime.generation().next()
    );
}

#[tokio::test]
async fn set_migration_ids_applies_once_and_says_why_not() {
    let h = Harness::new();
    let source = VmmUuid::new_v4();
    let running = running_instance(&h, "vm", source).await;
    let (migration, target) = (MigrationUuid::new_v4(), VmmUuid::new_v4());
    let set = |source, migration, target| {
        h.datastore
            .instance_set_migration_ids(running.id(), source, migration, target)
    };

    // Not from a VMM that is not the active one.
    let stranger = VmmUuid::new_v4();
    assert_eq!(
        set(stranger, migration, target).await.unwrap(),
        conflict(&running, ConflictReason::ActiveVmm(source))
    );
    assert_eq!(fetch(&h, running.id()).await, running);

    assert_eq!(
        set(source, migration, target).await.unwrap(),
        TransitionOutcome::Applied
    );
    let migrating = fetch(&h, running.id()).await;
    assert_eq!(migrating.runtime.migration(), Some(migration));
    assert_eq!(migrating.runtime.target_vmm(), Some(target));
    assert_eq!(migrating.runtime.active_vmm(), Some(source));
    assert_eq!(
        migrating.runtime.generation(),
        running.runtime.generation().next()
    );

    assert_eq!(
        set(source, migration, target).await.unwrap(),
        TransitionOutcome::AlreadyDone
    );
    // A second migration while the first is under way.
    assert_eq!(
        set(source, MigrationUuid::new_v4(), VmmUuid::new_v4())
            .await
            .unwrap(),
        conflict(&running, ConflictReason::Migrating(migration))
    );
    assert_eq!(fetch(&h, running.id()).await, migrating);

    // A stopped instance has nothing to migrate.
    let project = h.project("other").await;
    let stopped = h.stopped_instance(&project, "idle").await;
    assert_eq!(
        h.datastore
            .instance_set_migration_ids(stopped.id(), source, migration, target)
            .await
            .unwrap(),
        conflict(&stopped, ConflictReason::NotActive)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_migrations_leave_exactly_one_winner() {
    let h = Harness::new();
    let source = VmmUuid::new_v4();
    let running = running_instance(&h, "vm", source).await;
    let ids: Vec<(MigrationUuid, VmmUuid)> = (0..RACERS)
        .map(|_| (MigrationUuid::new_v4(), VmmUuid::new_v4()))
        .collect();
    let id = running.id();
    let outcomes = race(&shared(&h), |datastore, i| {
        let (migration, target) = ids[i];
        async move {
            datastore
                .instance_set_migration_ids(id, source, migration, target)
                .await
        }
    })
    .await;
    assert_eq!(applied_count(&outcomes), 1, "{outcomes:?}");
    let (winner, target) = ids[outcomes
        .iter()
        .position(|o| *o == TransitionOutcome::Applied)
        .unwrap()];
    for outcome in outcomes
        .iter()
        .filter(|o| **o != TransitionOutcome::Applied)
    {
        assert_eq!(
            *outcome,
            conflict(&running, ConflictReason::Migrating(winner))
        );
    }
    let now = fetch(&h, id).await;
    assert_eq!(now.runtime.migration(), Some(winner));
    assert_eq!(now.runtime.target_vmm(), Some(target));
}

#[tokio::test]
async fn clear_migration_ids_clears_only_its_own_migration() {
    let h = Harness::new();
    let source = VmmUuid::new_v4();
    let running = running_instance(&h, "vm", source).await;
    let (ours, target) = (MigrationUuid::new_v4(), VmmUuid::new_v4());
    h.datastore
        .instance_set_migration_ids(running.id(), source, ours, target)
        .await
        .unwrap();
    let clear = |migration| {
        h.datastore
            .instance_release(running.id(), Release::Migration(migration))
    };

    // Another migration's ids stay.
    let theirs = MigrationUuid::new_v4();
    assert_eq!(
        clear(theirs).await.unwrap(),
        conflict(&running, ConflictReason::Migrating(ours))
    );
    assert_eq!(
        fetch(&h, running.id()).await.runtime.migration(),
        Some(ours)
    );

    assert_eq!(clear(ours).await.unwrap(), TransitionOutcome::Applied);
    let cleared = fetch(&h, running.id()).await;
    assert_eq!(cleared.runtime.migration(), None);
    assert_eq!(cleared.runtime.target_vmm(), None);
    assert_eq!(cleared.runtime.active_vmm(), Some(source));

    assert_eq!(clear(ours).await.unwrap(), TransitionOutcome::AlreadyDone);
    assert_eq!(fetch(&h, running.id()).await, cleared);
    // An instance that is gone has nothing to clear.
    assert_eq!(
        h.datastore
            .instance_release(InstanceUuid::new_v4(), Release::Migration(ours))
            .await
            .unwrap(),
        TransitionOutcome::AlreadyDone
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_clears_of_one_migration_apply_once() {
    let h = Harness::new();
    let source = VmmUuid::new_v4();
    let running = running_instance(&h, "vm", source).await;
    let migration = MigrationUuid::new_v4();
    h.datastore
        .instance_set_migration_ids(running.id(), source, migration, VmmUuid::new_v4())
        .await
        .unwrap();
    let id = running.id();
    let outcomes = race(&shared(&h), |datastore, _| async move {
        datastore
            .instance_release(id, Release::Migration(migration))
            .await
    })
    .await;
    assert_eq!(applied_count(&outcomes), 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            TransitionOutcome::Applied | TransitionOutcome::AlreadyDone
        )),
        "{outcomes:?}"
    );
    assert_eq!(fetch(&h, id).await.runtime.migration(), None);
}

#[tokio::test]
async fn release_vmm_releases_only_its_own_vmm() {
    let h = Harness::new();
    let ours = VmmUuid::new_v4();
    let running = running_instance(&h, "vm", ours).await;
    // Mid-migration, so the release is seen to clear the migration too.
    h.datastore
        .instance_set_migration_ids(
            running.id(),
            ours,
            MigrationUuid::new_v4(),
            VmmUuid::new_v4(),
        )
        .await
        .unwrap();
    let release = |vmm| {
        h.datastore
            .instance_release(running.id(), Release::Claim(vmm))
    };

    let theirs = VmmUuid::new_v4();
    assert_eq!(
        release(theirs).await.unwrap(),
        conflict(&running, ConflictReason::ActiveVmm(ours))
    );
    assert_eq!(
        fetch(&h, running.id()).await.runtime.active_vmm(),
        Some(ours)
    );

    assert_eq!(release(ours).await.unwrap(), TransitionOutcome::Applied);
    let released = fetch(&h, running.id()).await;
    assert_eq!(released.runtime.nexus_state(), InstanceNexusState::NoVmm);
    assert_eq!(released.runtime.active_vmm(), None);
    assert_eq!(released.runtime.target_vmm(), None);
    assert_eq!(released.runtime.migration(), None);

    assert_eq!(release(ours).await.unwrap(), TransitionOutcome::AlreadyDone);
    assert_eq!(fetch(&h, running.id()).await, released);
    assert_eq!(
        h.datastore
            .instance_release(InstanceUuid::new_v4(), Release::Claim(ours))
            .await
            .unwrap(),
        TransitionOutcome::AlreadyDone
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_releases_of_one_vmm_apply_once() {
    let h = Harness::new();
    let vmm = VmmUuid::new_v4();
    let running = running_instance(&h, "vm", vmm).await;
    let id = running.id();
    let outcomes = race(&shared(&h), |datastore, _| async move {
        datastore.instance_release(id, Release::Claim(vmm)).await
    })
    .await;
    assert_eq!(applied_count(&outcomes), 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            TransitionOutcome::Applied | TransitionOutcome::AlreadyDone
        )),
        "{outcomes:?}"
    );
    let now = fetch(&h, id).await;
    assert_eq!(now.runtime.active_vmm(), None);
    assert_eq!(
        now.runtime.generation(),
        running.runtime.generation().next()
    );
}

#[tokio::test]
async fn mark_stopped_applies_once() {
    let h = Harness::new();
    let project = h.project("p").await;
    let creating = h.instance(&project, "vm").await;
    let mark = || h.datastore.instance_mark_stopped(creating.id());

    let (outcome, returned) = mark().await.unwrap();
    assert_eq!(outcome, TransitionOutcome::Applied);
    let stopped = fetch(&h, creating.id()).await;
    assert_eq!(stopped.runtime.nexus_state(), InstanceNexusState::NoVmm);
    assert_eq!(
        stopped.runtime.generation(),
        creating.runtime.generation().next()
    );
    // The row the transition returns is the stored one (instance-create answers with it).
    assert_eq!(returned, stopped);
    assert_eq!(
        mark().await.unwrap(),
        (TransitionOutcome::AlreadyDone, stopped.clone())
    );
    assert_eq!(fetch(&h, creating.id()).await, stopped);

    // Past `no_vmm` (a start claimed it) is "already done" too: the instance left `creating`.
    h.datastore
        .instance_claim_for_start(creating.id(), VmmUuid::new_v4())
        .await
        .unwrap();
    let claimed = fetch(&h, creating.id()).await;
    assert_eq!(
        mark().await.unwrap(),
        (TransitionOutcome::AlreadyDone, claimed.clone())
    );
    assert_eq!(fetch(&h, creating.id()).await, claimed);

    // A deleted instance is not found (the saga that created it has unwound).
    let doomed = h.instance(&project, "doomed").await;
    h.datastore
        .instance_mark_destroyed(doomed.id())
        .await
        .unwrap();
    let err = h
        .datastore
        .instance_mark_stopped(doomed.id())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ObjectNotFound { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_marks_stopped_apply_once() {
    let h = Harness::new();
    let project = h.project("p").await;
    let creating = h.instance(&project, "vm").await;
    let id = creating.id();
    let outcomes = race(&shared(&h), |datastore, _| async move {
        datastore
            .instance_mark_stopped(id)
            .await
            .map(|(outcome, _)| outcome)
    })
    .await;
    assert_eq!(applied_count(&outcomes), 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            TransitionOutcome::Applied | TransitionOutcome::AlreadyDone
        )),
        "{outcomes:?}"
    );
    assert_eq!(
        fetch(&h, id).await.runtime.generation(),
        creating.runtime.generation().next()
    );
}
