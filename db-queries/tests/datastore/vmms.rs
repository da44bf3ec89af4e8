use crate::{Harness, one_vmm};
use chrono::Utc;
use halyard_common::ids::{InstanceUuid, MigrationUuid, VmmUuid};
use halyard_common::{Generation, InstanceNexusState, MigrationState, VmmState};
use halyard_db_model::{Instance, Migration, Sled, Vmm, VmmRuntimeState};
use halyard_db_queries::{
    MigrationReport, ReportApplied, RetireOutcome, SledChoice, VmmStateReport,
};

/// An instance running on a VMM (reserved on `sled`), as instance-start leaves it.
async fn running_instance(h: &Harness, sled: &Sled, name: &str) -> (Instance, Vmm) {
    let project = match h.datastore.project_fetch(&"p".parse().unwrap()).await {
        Ok(p) => p,
        Err(_) => h.project("p").await,
    };
    let instance = h.stopped_instance(&project, name).await;
    let vmm = start_vmm(h, sled, &instance).await;
    let mut runtime = instance.runtime.next();
    runtime.nexus_state = InstanceNexusState::Vmm.into();
    runtime.active_propolis_id = Some(vmm.id);
    assert!(
        h.datastore
            .instance_update_runtime(instance.id(), &runtime)
            .await
            .unwrap()
    );
    (
        h.datastore.instance_fetch(instance.id()).await.unwrap(),
        vmm,
    )
}

/// A reserved VMM record for the instance on `sled`.
async fn start_vmm(h: &Harness, sled: &Sled, instance: &Instance) -> Vmm {
    let id = VmmUuid::new_v4();
    h.datastore
        .sled_reserve(
            id,
            instance.id(),
            SledChoice::Specific(sled.id()),
            one_vmm(),
        )
        .await
        .unwrap();
    h.datastore
        .vmm_insert(Vmm::new(
            id,
            instance.id(),
            sled.id(),
            "127.0.0.1:4000".parse().unwrap(),
        ))
        .await
        .unwrap()
}

/// Starts a migration of a running instance to `to`: target VMM, migration record, ids set.
async fn migrating(
    h: &Harness,
    instance: &Instance,
    source: &Vmm,
    to: &Sled,
) -> (Instance, Vmm, Migration) {
    let target = start_vmm(h, to, instance).await;
    let migration = h
        .datastore
        .migration_insert(Migration::new(
            MigrationUuid::new_v4(),
            instance.id(),
            source.id(),
            target.id(),
        ))
        .await
        .unwrap();
    let mut runtime = instance.runtime.next();
    runtime.target_propolis_id = Some(target.id);
    runtime.migration_id = Some(migration.id);
    assert!(
        h.datastore
            .instance_update_runtime(instance.id(), &runtime)
            .await
            .unwrap()
    );
    (
        h.datastore.instance_fetch(instance.id()).await.unwrap(),
        target,
        migration,
    )
}

fn report(vmm: &Vmm, state: VmmState, generation: u64) -> VmmStateReport {
    VmmStateReport {
        vmm_id: vmm.id(),
        vmm: VmmRuntimeState::new(state, Generation::try_from(generation).unwrap()),
        migration_in: None,
        migration_out: None,
    }
}

fn side(migration: &Migration, state: MigrationState, generation: u64) -> MigrationReport {
    MigrationReport {
        migration_id: migration.id(),
        state,
        generation: Generation::try_from(generation).unwrap(),
        time_updated: Utc::now(),
    }
}

#[tokio::test]
async fn vmm_records_keep_an_instances_history() {
    let h = Harness::new();
    let sled = h.sled(16, 16).await;
    let (instance, first) = running_instance(&h, &sled, "vm").await;
    // Inserting the same VMM again returns the stored one.
    assert_eq!(h.datastore.vmm_insert(first.clone()).await.unwrap(), first);
    let second = start_vmm(&h, &sled, &instance).await;
    let history = h
        .datastore
        .instance_vmm_history(instance.id())
        .await
        .unwrap();
    assert_eq!(
        history.iter().map(Vmm::id).collect::<Vec<_>>(),
        vec![first.id(), second.id()]
    );
    assert_eq!(first.state(), VmmState::Creating);
    assert_eq!(first.address().to_string(), "127.0.0.1:4000");
    assert_eq!(
        h.datastore
            .vmm_list(Some(sled.id()), false)
            .await
            .unwrap()
            .len(),
        2
    );

    let orphan = Vmm::new(
        VmmUuid::new_v4(),
        InstanceUuid::new_v4(),
        sled.id(),
        "127.0.0.1:1".parse().unwrap(),
    );
    let err = h.datastore.vmm_insert(orphan).await.unwrap_err();
    assert_eq!(err.error_code(), "InvalidRequest", "{err:?}");
}

#[tokio::test]
async fn a_report_updates_the_vmm_and_its_migration_together_and_only_when_newer() {
    let h = Harness::new();
    let (a, b) = (h.sled(16, 16).await, h.sled(16, 16).await);
    let (instance, source) = running_instance(&h, &a, "vm").await;
    let (_, target, migration) = migrating(&h, &instance, &source, &b).await;

    let mut out = report(&source, VmmState::Migrating, 2);
    out.migration_out = Some(side(&migration, MigrationState::InProgress, 2));
    let (applied, returned) = h.datastore.vmm_apply_report(&out).await.unwrap();
    assert_eq!(
        applied,
        ReportApplied {
            vmm_updated: true,
            migration_in_updated: false,
            migration_out_updated: true
        }
    );
    let stored = h.datastore.migration_fetch(migration.id()).await.unwrap();
    assert_eq!(stored.source_state(), MigrationState::InProgress);
    assert_eq!(stored.target_state(), MigrationState::Pending);
    let source_now = h.datastore.vmm_fetch(source.id()).await.unwrap();
    assert_eq!(source_now.state(), VmmState::Migrating);
    // The row the report returns is the stored one.
    assert_eq!(returned, source_now);

    // The same report again, and an older one: nothing applies, and the VMM is returned as
    // it is stored.
    assert_eq!(
        h.datastore.vmm_apply_report(&out).await.unwrap(),
        (ReportApplied::default(), source_now.clone())
    );
    let mut old = report(&source, VmmState::Running, 1);
    old.migration_out = Some(side(&migration, MigrationState::Pending, 1));
    assert_eq!(
        h.datastore.vmm_apply_report(&old).await.unwrap(),
        (ReportApplied::default(), source_now.clone())
    );
    assert_eq!(
        h.datastore.vmm_fetch(source.id()).await.unwrap().state(),
        VmmState::Migrating
    );

    // The target side reports in with its own generations.
    let mut inbound = report(&target, VmmState::Running, 3);
    inbound.migration_in = Some(side(&migration, MigrationState::Completed, 3));
    let (applied, _) = h.datastore.vmm_apply_report(&inbound).await.unwrap();
    assert!(applied.vmm_updated && applied.migration_in_updated && !applied.migration_out_updated);
    let stored = h.datastore.migration_fetch(migration.id()).await.unwrap();
    assert_eq!(stored.target_state(), MigrationState::Completed);
    assert_eq!(stored.target_generation.0.as_u64(), 3);
    assert!(stored.time_target_updated.is_some());
}

#[tokio::test]
async fn a_report_is_never_half_applied() {
    let h = Harness::new();
    let (a, b) = (h.sled(16, 16).await, h.sled(16, 16).await);
    let (instance, source) = running_instance(&h, &a, "vm").await;
    let (_, target, migration) = migrating(&h, &instance, &source, &b).await;

    // Newer VMM state, but the source claims to be the *target* of the migration: the whole
    // report is refused, including the VMM part that on its own would have applied.
    let mut bogus = report(&source, VmmState::Stopping, 5);
    bogus.migration_in = Some(side(&migration, MigrationState::Failed, 5));
    let err = h.datastore.vmm_apply_report(&bogus).await.unwrap_err();
    assert_eq!(err.error_code(), "InvalidRequest", "{err:?}");
    assert!(err.to_string().contains("is not the target"), "{err}");
    let vmm = h.datastore.vmm_fetch(source.id()).await.unwrap();
    assert_eq!(
        (vmm.state(), vmm.runtime.generation().as_u64()),
        (VmmState::Creating, 1)
    );

    // A valid migration part with an unknown migration alongside: nothing applies either.
    let mut mixed = report(&target, VmmState::Running, 2);
    mixed.migration_in = Some(side(&migration, MigrationState::InProgress, 2));
    mixed.migration_out = Some(MigrationReport {
        migration_id: MigrationUuid::new_v4(),
        ..side(&migration, MigrationState::InProgress, 2)
    });
    assert!(h.datastore.vmm_apply_report(&mixed).await.is_err());
    let stored = h.datastore.migration_fetch(migration.id()).await.unwrap();
    assert_eq!(
        (stored.target_state(), stored.target_generation.0.as_u64()),
        (MigrationState::Pending, 1)
    );
    assert_eq!(
        h.datastore.vmm_fetch(target.id()).await.unwrap().state(),
        VmmState::Creating
    );

    // A report for a VMM that does not exist.
    let ghost = Vmm::new(
        VmmUuid::new_v4(),
        instance.id(),
        a.id(),
        "127.0.0.1:1".parse().unwrap(),
    );
    let err = h
        .datastore
        .vmm_apply_report(&report(&ghost, VmmState::Running, 2))
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), "ObjectNotFound");
}

/// Everything retirement touches, as text, to compare before and after.
fn snapshot(h: &Harness) -> String {
    h.sql(
        "SELECT (SELECT string_agg(concat_ws(',', id, state, generation, time_state_updated, time_deleted), ';' ORDER BY id) FROM vmm), \
                (SELECT string_agg(concat_ws(',', id, nexus_state, active_propolis_id, target_propolis_id, migration_id, state_generation), ';' ORDER BY id) FROM instance), \
                (SELECT string_agg(concat_ws(',', id, reserved_hardware_threads, reserved_physical_ram), ';' ORDER BY id) FROM sled), \
                (SELECT count(*) FROM sled_reservation)",
    )
}

#[tokio::test]
async fn retiring_the_active_vmm_twice_is_the_same_as_once() {
    let h = Harness::new();
    let sled = h.sled(16, 16).await;
    let (instance, vmm) = running_instance(&h, &sled, "vm").await;
    h.datastore
        .vmm_apply_report(&report(&vmm, VmmState::Destroyed, 2))
        .await
        .unwrap();

    let outcome = h
        .datastore
        .vmm_retire(vmm.id(), VmmState::Destroyed)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RetireOutcome {
            vmm_state_changed: false, // the sled agent already reported it destroyed
            vmm_marked_deleted: true,
            reservation_released: true,
            instance_updated: true,
        }
    );
    let after_once = snapshot(&h);
    let stored = h.datastore.instance_fetch(instance.id()).await.unwrap();
    assert_eq!(stored.runtime.active_vmm(), None);
    assert_eq!(stored.runtime.nexus_state(), InstanceNexusState::NoVmm);
    assert_eq!(
        stored.runtime.generation(),
        instance.runtime.generation().next()
    );
    assert_eq!(
        h.datastore
            .sled_fetch(sled.id())
            .await
            .unwrap()
            .reserved_hardware_threads,
        0
    );

    // Again, sequentially and then ten at once: nothing more changes.
    assert_eq!(
        h.datastore
            .vmm_retire(vmm.id(), VmmState::Destroyed)
            .await
            .unwrap(),
        RetireOutcome::default()
    );
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let datastore = h.datastore.clone();
        let id = vmm.id();
        tasks.spawn(async move {
            datastore
                .vmm_retire(id, VmmState::SagaUnwound)
                .await
                .unwrap()
        });
    }
    assert!(
        tasks
            .join_all()
            .await
            .iter()
            .all(|o| *o == RetireOutcome::default())
    );
    assert_eq!(snapshot(&h), after_once);
}

#[tokio::test]
async fn racing_retirements_of_a_live_vmm_change_things_exactly_once() {
    let h = Harness::new();
    let sled = h.sled(16, 16).await;
    let (instance, vmm) = running_instance(&h, &sled, "vm").await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let datastore = h.datastore.clone();
        let id = vmm.id();
        tasks.spawn(async move { datastore.vmm_retire(id, VmmState::Failed).await.unwrap() });
    }
    let outcomes = tasks.join_all().await;
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o != RetireOutcome::default())
            .count(),
        1
    );
    let stored = h.datastore.vmm_fetch(vmm.id()).await.unwrap();
    assert_eq!(stored.state(), VmmState::Failed);
    assert_eq!(stored.runtime.generation().as_u64(), 2);
    assert!(stored.time_deleted.is_some());
    let instance_now = h.datastore.instance_fetch(instance.id()).await.unwrap();
    assert_eq!(
        instance_now.runtime.nexus_state(),
        InstanceNexusState::Failed
    );
    assert_eq!(
        instance_now.runtime.generation(),
        instance.runtime.generation().next()
    );
    // A retired VMM takes no more reports.
    let (late, returned) = h
        .datastore
        .vmm_apply_report(&report(&vmm, VmmState::Running, 9))
        .await
        .unwrap();
    assert!(!late.vmm_updated);
    // What it returns is the retired record, as stored.
    assert!(returned.time_deleted.is_some());
    assert_eq!(returned, h.datastore.vmm_fetch(vmm.id()).await.unwrap());
}

#[tokio::test]
async fn retiring_migration_vmms_clears_exactly_their_pointers() {
    let h = Harness::new();
    let (a, b) = (h.sled(16, 16).await, h.sled(16, 16).await);

    // Retiring the target (a failed migration) leaves the instance on its source.
    let (instance, source) = running_instance(&h, &a, "one").await;
    let (migrating_instance, target, _) = migrating(&h, &instance, &source, &b).await;
    let outcome = h
        .datastore
        .vmm_retire(target.id(), VmmState::SagaUnwound)
        .await
        .unwrap();
    assert!(outcome.instance_updated && outcome.reservation_released && outcome.vmm_state_changed);
    let stored = h.datastore.instance_fetch(instance.id()).await.unwrap();
    assert_eq!(stored.runtime.active_vmm(), Some(source.id()));
    assert_eq!(
        (stored.runtime.target_vmm(), stored.runtime.migration()),
        (None, None)
    );
    assert_eq!(stored.runtime.nexus_state(), InstanceNexusState::Vmm);
    assert_eq!(
        stored.runtime.generation(),
        migrating_instance.runtime.generation().next()
    );
    assert_eq!(
        h.datastore.vmm_fetch(target.id()).await.unwrap().state(),
        VmmState::SagaUnwound
    );

    // Retiring the source mid-migration ends the migration and orphans the target (which
    // the orphan query, the one Nexus retires orphans by, names).
    let (instance, source) = running_instance(&h, &a, "two").await;
    let (_, target, _) = migrating(&h, &instance, &source, &b).await;
    let outcome = h
        .datastore
        .vmm_retire(source.id(), VmmState::Destroyed)
        .await
        .unwrap();
    assert!(outcome.instance_updated);
    let orphans = h
        .datastore
        .vmm_list_orphaned_targets(Some(source.id()))
        .await
        .unwrap();
    assert_eq!(
        orphans.iter().map(|v| v.id()).collect::<Vec<_>>(),
        vec![target.id()]
    );
    let stored = h.datastore.instance_fetch(instance.id()).await.unwrap();
    assert_eq!(
        (
            stored.runtime.active_vmm(),
            stored.runtime.target_vmm(),
            stored.runtime.migration()
        ),
        (None, None, None)
    );
    // The target still holds its reservation until it is retired too.
    assert!(
        h.datastore
            .sled_reservation_fetch(target.id())
            .await
            .unwrap()
            .is_some()
    );
    h.datastore
        .vmm_retire(target.id(), VmmState::SagaUnwound)
        .await
        .unwrap();
    assert_eq!(
        h.sql("SELECT sum(reserved_hardware_threads) FROM sled")
            .trim(),
        "2"
    );

    let err = h
        .datastore
        .vmm_retire(source.id(), VmmState::Running)
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), "InvalidRequest");
}

/// Lock order (ARCHITECTURE.md): a retirement locks its instance before the sled its
/// reservation is on. A transaction that holds an instance row and then writes a sled row (a
/// completed migration does: the instance, then the source's retirement) must never wait
/// for a retirement that holds that sled row while it waits for the instance: the two
/// deadlock. Here another session holds the instance (with the lock an `UPDATE` of it
/// takes), a retirement of its VMM waits for it, and the session then writes the sled row:
/// it must not have to wait.
#[tokio::test]
async fn a_retirement_waiting_for_its_instance_holds_no_sled_row() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    let h = Harness::new();
    let sled = h.sled(16, 16).await;
    let (instance, vmm) = running_instance(&h, &sled, "vm").await;
    let mut holder = AsyncPgConnection::establish(h.db.url()).await.unwrap();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM instance WHERE id = '{}' FOR NO KEY UPDATE",
            instance.id()
        ))
        .await
        .unwrap();
    let datastore = h.datastore.clone();
    let id = vmm.id();
    let retirement = tokio::spawn(async move { datastore.vmm_retire(id, VmmState::Failed).await });
    // Until the retirement is waiting for a lock (the instance row).
    let mut waiting = false;
    for _ in 0..1000 {
        waiting = h
            .sql(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .trim()
            == "1";
        if waiting {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(waiting, "the retirement never waited for the instance row");
    // Shorter than the deadlock timeout (1 s), so a wait shows as this error and not as a
    // deadlock that the retirement's retry would hide.
    let wrote = holder
        .batch_execute(&format!(
            "SET LOCAL lock_timeout = '300ms'; \
             UPDATE sled SET reserved_hardware_threads = reserved_hardware_threads \
             WHERE id = '{}'",
            sled.id()
        ))
        .await;
    assert!(
        wrote.is_ok(),
        "the sled row was held by a retirement waiting for the instance: {wrote:?}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let outcome = retirement.await.unwrap().unwrap();
    assert!(outcome.vmm_marked_deleted && outcome.instance_updated);
    assert_eq!(
        h.sql(&format!(
            "SELECT reserved_hardware_threads FROM sled WHERE id = '{}'",
            sled.id()
        ))
        .trim(),
        "0"
    );
}

/// The source's report of a completed migration can land before any report of the target
/// (the target's were held up, say by a database outage): the instance then runs on a VMM
/// whose record still says `creating`. It must show as migrating, never as starting (it did
/// not restart), until the target's own reports arrive and win by their generations.
#[tokio::test]
async fn a_migration_completed_before_the_target_reports_shows_migrating() {
    let h = Harness::new();
    let (a, b) = (h.sled(16, 16).await, h.sled(16, 16).await);
    let (instance, source) = running_instance(&h, &a, "vm").await;
    let (_, target, migration) = migrating(&h, &instance, &source, &b).await;
    let shown = async || {
        h.datastore
            .instance_fetch_with_vmm(instance.id())
            .await
            .unwrap()
            .run_state()
    };

    assert!(
        h.datastore
            .instance_migration_complete(instance.id(), migration.id(), source.id(), target.id())
            .await
            .unwrap()
    );
    assert_eq!(shown().await, halyard_common::InstanceState::Migrating);
    let stored = h.datastore.vmm_fetch(target.id()).await.unwrap();
    assert_eq!(
        stored.runtime.generation().as_u64(),
        1,
        "the sled's numbering is kept"
    );

    // The target's first state (generation 1, `creating`), late: it changes nothing.
    let (applied, _) = h
        .datastore
        .vmm_apply_report(&report(&target, VmmState::Creating, 1))
        .await
        .unwrap();
    assert!(!applied.vmm_updated);
    assert_eq!(shown().await, halyard_common::InstanceState::Migrating);

    // Its later ones apply as they always do.
    for (state, generation, expected) in [
        (
            VmmState::Migrating,
            2,
            halyard_common::InstanceState::Migrating,
        ),
        (VmmState::Running, 3, halyard_common::InstanceState::Running),
    ] {
        let (applied, _) = h
            .datastore
            .vmm_apply_report(&report(&target, state, generation))
            .await
            .unwrap();
        assert!(applied.vmm_updated);
        assert_eq!(shown().await, expected);
    }
}
