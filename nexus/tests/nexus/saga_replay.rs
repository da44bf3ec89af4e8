//! Idempotent replay of a recorded log prefix, for every node of instance-start (and of
//! disk-attach, and disk-detach's last node).
//!
//! This is not a crash test. The saga first runs to its end, so every node's effects exist
//! (its VMM record, its reservation, the VMM registered and running on its sled); only then is
//! its log cut back to "node N started" and the saga resumed by a fresh Nexus. What that
//! proves: re-running node N's action and every later one, against effects that already
//! exist, is idempotent (no second VMM, the same active VMM, the invariants hold). A crash
//! with node N's and the later nodes' effects really absent is `crash_replay.rs` (its
//! `started` point: Nexus killed right after the node's `started` event, before its action).

use crate::context::{TestContext, log};
use halyard_common::ids::{DiskUuid, GenericUuid, InstanceUuid};
use halyard_common::{DiskState, InstanceState};
use halyard_nexus::Nexus;
use halyard_nexus::app::sagas::{create_saga_dag, disk_attach, disk_detach, instance_start};

#[tokio::test]
async fn instance_start_replays_a_recorded_prefix_idempotently_over_existing_effects() {
    let ctx = TestContext::new().await;
    let project = ctx.project("p").await;
    let nodes: Vec<(usize, String)> =
        create_saga_dag::<instance_start::SagaInstanceStart>(instance_start::Params {
            instance_id: InstanceUuid::new_v4(),
        })
        .unwrap()
        .get_nodes()
        .map(|n| (n.index().index(), n.name().as_ref().to_string()))
        .collect();
    // steno appends its own start and end nodes after the saga's.
    let start_node = nodes.len();

    for (index, name) in &nodes {
        let id = ctx.instance(&project, &format!("vm-{index}"), 2).await;
        let saga = ctx
            .nexus()
            .run_saga::<instance_start::SagaInstanceStart>(instance_start::Params {
                instance_id: id,
            })
            .await;
        assert!(saga.is_ok());
        let saga_id = ctx.sql(
            "SELECT id FROM saga WHERE name = 'instance-start' ORDER BY time_created DESC LIMIT 1",
        );
        let saga_id = saga_id.trim();

        // Cut the log: keep what happened before `name` and its "started" event only, and mark
        // the saga unfinished. The effects of `name` and of every later node stay: unlike
        // after a crash there, they exist already, and replaying over them must change nothing.
        ctx.sql(&format!(
            "DELETE FROM saga_node_event WHERE saga_id = '{saga_id}' \
             AND node_id >= {index} AND node_id != {start_node} \
             AND NOT (node_id = {index} AND event_type = 'started'); \
             UPDATE saga SET saga_state = 'running' WHERE id = '{saga_id}'"
        ));

        // A fresh Nexus with the same identity resumes it.
        let fresh = Nexus::new(
            ctx.nexus().id(),
            ctx.nexus().datastore().clone(),
            ctx.nexus().sled_http().clone(),
            &log(),
        );
        assert_eq!(fresh.resume_sagas().await.unwrap(), 1, "node {name}");
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
        ctx.wait_for(id, InstanceState::Running).await;
        ctx.assert_quiet_and_consistent().await;
        let history = fresh.datastore().instance_vmm_history(id).await.unwrap();
        assert_eq!(history.len(), 1, "replay at {name} made a second VMM");
        assert_eq!(
            ctx.view(id)
                .await
                .instance
                .runtime
                .active_vmm()
                .map(|v| v.into_untyped_uuid()),
            Some(history[0].id().into_untyped_uuid())
        );
    }
}

/// Cuts saga `saga_id`'s log back to "node `index` started" (keeping steno's start node at
/// `start_node`), marks it unfinished, and has a fresh Nexus resume it to its end.
async fn replay_from(ctx: &TestContext, saga_id: &str, index: usize, start_node: usize) {
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
    assert_eq!(fresh.resume_sagas().await.unwrap(), 1, "node {index}");
    ctx.eventually(
        &format!("the saga resumed at node {index} to finish"),
        async |ctx: &TestContext| {
            ctx.sql(&format!(
                "SELECT saga_state FROM saga WHERE id = '{saga_id}'"
            ))
            .trim()
                == "done"
        },
    )
    .await;
}

/// The disk-attach saga replayed from each node over its finished effects changes nothing:
/// the disk stays attached in the same slot, its state generation unchanged. Then the
/// disk-detach saga's last node likewise. (Its first node replayed over a finished detach is
/// no state a crash leaves: after "begin started" the disk is at most detaching.)
#[tokio::test]
async fn disk_attach_and_detach_replay_idempotently_over_existing_effects() {
    let ctx = crate::instance_disks::context_with_storage().await;
    let project = ctx.project("p").await;
    let params = |instance_id, disk_id| disk_attach::Params {
        instance_id,
        disk_id,
    };
    let nodes: Vec<usize> = create_saga_dag::<disk_attach::SagaDiskAttach>(params(
        InstanceUuid::new_v4(),
        DiskUuid::new_v4(),
    ))
    .unwrap()
    .get_nodes()
    .map(|n| n.index().index())
    .collect();
    let start_node = nodes.len();
    let row = async |ctx: &TestContext, disk| {
        let found = ctx.nexus().datastore().disk_fetch(disk).await.unwrap();
        (
            found.state(),
            found.attached_to(),
            found.slot,
            found.state_generation,
        )
    };
    for index in nodes {
        let instance = ctx.instance(&project, &format!("vm-{index}"), 1).await;
        let disk =
            crate::instance_disks::detached_disk(&ctx, &project, &format!("d-{index}")).await;
        ctx.nexus()
            .run_saga::<disk_attach::SagaDiskAttach>(params(instance, disk))
            .await
            .unwrap();
        let before = row(&ctx, disk).await;
        assert_eq!(before.0, DiskState::Attached);
        let saga_id = ctx.sql(
            "SELECT id FROM saga WHERE name = 'disk-attach' ORDER BY time_created DESC LIMIT 1",
        );
        replay_from(&ctx, saga_id.trim(), index, start_node).await;
        assert_eq!(
            row(&ctx, disk).await,
            before,
            "replay of disk-attach at node {index}"
        );

        if index == start_node - 1 {
            ctx.nexus()
                .run_saga::<disk_detach::SagaDiskDetach>(disk_detach::Params {
                    instance_id: instance,
                    disk_id: disk,
                })
                .await
                .unwrap();
            let before = row(&ctx, disk).await;
            assert_eq!(before.0, DiskState::Detached);
            let saga_id = ctx.sql(
                "SELECT id FROM saga WHERE name = 'disk-detach' ORDER BY time_created DESC \
                 LIMIT 1",
            );
            replay_from(&ctx, saga_id.trim(), index, start_node).await;
            assert_eq!(
                row(&ctx, disk).await,
                before,
                "replay of disk-detach's last node"
            );
        }
    }
    ctx.assert_quiet_and_consistent().await;
}

/// The disk sagas, each cut back to every node and resumed over effects that already exist
/// (regions in the database and on the sled agents): the same disk, the same three regions,
/// nothing made twice.
#[tokio::test]
async fn disk_sagas_replay_a_recorded_prefix_idempotently_over_existing_effects() {
    use halyard_common::ByteCount;
    use halyard_nexus::app::sagas::{NexusSaga, disk_create, disk_delete};
    use halyard_nexus_external_api::params::{DiskBackend, DiskCreate, DiskSource};

    let ctx = TestContext::with_storage(3, ByteCount::from_gibibytes_u32(1)).await;
    let project = ctx.project("p").await;
    let project_id = ctx.nexus().project_view(&project).await.unwrap().id();
    let block_size = halyard_common::BlockSize::try_from(512u32).unwrap();
    let create = |name: String| DiskCreate {
        name: name.parse().unwrap(),
        description: String::new(),
        disk_backend: DiskBackend::Distributed(DiskSource::Blank { block_size }),
        size: ByteCount::from_mebibytes_u32(1),
    };
    let names = |dag: steno::SagaDag| -> Vec<(usize, String)> {
        dag.get_nodes()
            .map(|n| (n.index().index(), n.name().as_ref().to_string()))
            .collect()
    };
    let create_nodes = names(
        create_saga_dag::<disk_create::SagaDiskCreate>(disk_create::Params {
            disk_id: halyard_common::ids::DiskUuid::new_v4(),
            project_id,
            create: create("x".to_string()),
            block_size,
            created_by_instance_id: None,
            source_snapshot_id: None,
        })
        .unwrap(),
    );
    let delete_nodes = names(
        create_saga_dag::<disk_delete::SagaDiskDelete>(disk_delete::Params {
            disk_id: halyard_common::ids::DiskUuid::new_v4(),
        })
        .unwrap(),
    );

    for (saga_name, nodes) in [
        (disk_create::SagaDiskCreate::NAME, &create_nodes),
        (disk_delete::SagaDiskDelete::NAME, &delete_nodes),
    ] {
        let start_node = nodes.len();
        for (index, name) in nodes {
            let disk = ctx
                .nexus()
                .disk_create(project_id, create(format!("d-{saga_name}-{index}")))
                .await
                .unwrap();
            let regions_before = ctx.sql(&format!(
                "SELECT id, sled_id FROM region WHERE disk_id = '{}' ORDER BY id",
                disk.id()
            ));
            if saga_name == disk_delete::SagaDiskDelete::NAME {
                ctx.nexus().disk_delete(&disk).await.unwrap();
            }
            let saga_id = ctx.sql(&format!(
                "SELECT id FROM saga WHERE name = '{saga_name}' ORDER BY time_created DESC LIMIT 1"
            ));
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
            assert_eq!(
                fresh.resume_sagas().await.unwrap(),
                1,
                "{saga_name} node {name}"
            );
            ctx.eventually(
                &format!("{saga_name} resumed at {name} to finish"),
                async |ctx: &TestContext| {
                    ctx.sql(&format!(
                        "SELECT saga_state FROM saga WHERE id = '{saga_id}'"
                    ))
                    .trim()
                        == "done"
                },
            )
            .await;
            ctx.assert_quiet_and_consistent().await;
            let regions_after = ctx.sql(&format!(
                "SELECT id, sled_id FROM region WHERE disk_id = '{}' ORDER BY id",
                disk.id()
            ));
            if saga_name == disk_create::SagaDiskCreate::NAME {
                // The same three regions, and the disk detached, after the replay.
                assert_eq!(regions_after, regions_before, "replay at {name}");
                let replayed = fresh.datastore().disk_fetch(disk.id()).await.unwrap();
                assert_eq!(replayed.state(), halyard_common::DiskState::Detached);
            } else {
                assert_eq!(regions_after.trim(), "", "replay at {name}");
                assert!(fresh.datastore().disk_fetch(disk.id()).await.is_err());
            }
        }
    }
}

/// The snapshot sagas, each cut back to every node and resumed over effects that already exist
/// (region snapshots in the database and on the sled agents): the same snapshot, the same
/// region snapshots, nothing made twice.
#[tokio::test]
async fn snapshot_sagas_replay_a_recorded_prefix_idempotently_over_existing_effects() {
    use halyard_common::ByteCount;
    use halyard_common::ids::SnapshotUuid;
    use halyard_nexus::app::sagas::{NexusSaga, snapshot_create, snapshot_delete};

    let ctx = TestContext::with_storage(3, ByteCount::from_gibibytes_u32(1)).await;
    let project = ctx.project("p").await;
    let names = |dag: steno::SagaDag| -> Vec<(usize, String)> {
        dag.get_nodes()
            .map(|n| (n.index().index(), n.name().as_ref().to_string()))
            .collect()
    };
    let create_nodes = names(
        create_saga_dag::<snapshot_create::SagaSnapshotCreate>(snapshot_create::Params {
            snapshot_id: SnapshotUuid::new_v4(),
            disk_id: halyard_common::ids::DiskUuid::new_v4(),
            name: "x".parse().unwrap(),
            description: String::new(),
        })
        .unwrap(),
    );
    let delete_nodes = names(
        create_saga_dag::<snapshot_delete::SagaSnapshotDelete>(snapshot_delete::Params {
            snapshot_id: SnapshotUuid::new_v4(),
        })
        .unwrap(),
    );

    for (saga_name, nodes) in [
        (snapshot_create::SagaSnapshotCreate::NAME, &create_nodes),
        (snapshot_delete::SagaSnapshotDelete::NAME, &delete_nodes),
    ] {
        let start_node = nodes.len();
        for (index, name) in nodes {
            let disk_id = crate::instance_disks::detached_disk(
                &ctx,
                &project,
                &format!("d-{saga_name}-{index}"),
            )
            .await;
            let disk = ctx.nexus().datastore().disk_fetch(disk_id).await.unwrap();
            let snapshot = ctx
                .nexus()
                .snapshot_create(
                    &disk,
                    halyard_nexus_external_api::params::SnapshotCreate {
                        name: format!("s-{saga_name}-{index}").parse().unwrap(),
                        description: String::new(),
                        disk: halyard_common::NameOrId::Id(disk_id.into_untyped_uuid()),
                    },
                )
                .await
                .unwrap();
            let rows = || {
                ctx.sql(&format!(
                    "SELECT region_id, sled_id FROM region_snapshot WHERE snapshot_id = '{}' \
                     ORDER BY region_id",
                    snapshot.id()
                ))
            };
            let before = rows();
            if saga_name == snapshot_delete::SagaSnapshotDelete::NAME {
                ctx.nexus().snapshot_delete(&snapshot).await.unwrap();
            }
            let saga_id = ctx.sql(&format!(
                "SELECT id FROM saga WHERE name = '{saga_name}' ORDER BY time_created DESC LIMIT 1"
            ));
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
            assert_eq!(
                fresh.resume_sagas().await.unwrap(),
                1,
                "{saga_name} node {name}"
            );
            ctx.eventually(
                &format!("{saga_name} resumed at {name} to finish"),
                async |ctx: &TestContext| {
                    ctx.sql(&format!(
                        "SELECT saga_state FROM saga WHERE id = '{saga_id}'"
                    ))
                    .trim()
                        == "done"
                },
            )
            .await;
            ctx.assert_quiet_and_consistent().await;
            if saga_name == snapshot_create::SagaSnapshotCreate::NAME {
                assert_eq!(rows(), before, "replay at {name}");
                let replayed = fresh
                    .datastore()
                    .snapshot_fetch(snapshot.id())
                    .await
                    .unwrap();
                assert_eq!(replayed.state(), halyard_common::SnapshotState::Ready);
            } else {
                assert_eq!(rows().trim(), "", "replay at {name}");
                assert!(
                    fresh
                        .datastore()
                        .snapshot_fetch(snapshot.id())
                        .await
                        .is_err()
                );
            }
        }
    }
}
