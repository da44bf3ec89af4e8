//! Every node of every saga: an injected failure unwinds completely, and a repeated action
//! (or undo) ends exactly as running it once does. The helpers are generic over the saga so
//! later sagas reuse them.

use crate::context::TestContext;
use halyard_common::ids::{DiskUuid, InstanceUuid};
use halyard_common::{ByteCount, DiskState, InstanceState, NameOrId};
use halyard_nexus::app::sagas::{
    NexusSaga, create_saga_dag, disk_attach, disk_create, disk_delete, disk_detach,
    instance_create, instance_delete, instance_start, snapshot_create, snapshot_delete,
};
use halyard_nexus_external_api::params::{DiskBackend, DiskCreate, DiskSource, InstanceCreate};
use std::num::NonZeroU32;
use steno::RepeatInjected;

/// The action nodes of saga `S`, by name.
fn node_names<S: NexusSaga>(params: S::Params) -> Vec<String> {
    create_saga_dag::<S>(params)
        .unwrap()
        .get_nodes()
        .map(|n| n.name().as_ref().to_string())
        .collect()
}

/// For each node of `S`: sets the world up with `setup`, runs the saga with an error injected
/// at that node, and checks it failed, everything unwound (`check_unwound`), and the
/// invariants hold. Returns how many nodes were covered.
pub async fn inject_error_at_every_node<S: NexusSaga>(
    ctx: &TestContext,
    setup: impl AsyncFn(&TestContext) -> S::Params,
    check_unwound: impl AsyncFn(&TestContext, &S::Params),
) -> usize
where
    S::Params: Clone,
{
    let nodes = node_names::<S>(setup(ctx).await);
    for name in &nodes {
        let params = setup(ctx).await;
        let saga = ctx.nexus().saga_prepare::<S>(params.clone()).await.unwrap();
        let index = saga.dag.get_index(name).unwrap();
        ctx.nexus()
            .sec()
            .saga_inject_error(saga.id, index)
            .await
            .unwrap();
        let result = ctx.nexus().saga_execute(saga).await;
        assert!(
            result.is_err(),
            "{}: an error injected at {name} must fail the saga",
            S::NAME
        );
        ctx.assert_quiet_and_consistent().await;
        check_unwound(ctx, &params).await;
    }
    nodes.len()
}

/// For each node of `S`: runs it with that node's action (and undo) run twice, and checks the
/// end state with `check_done`, as after a single clean run.
pub async fn repeat_every_node<S: NexusSaga>(
    ctx: &TestContext,
    setup: impl AsyncFn(&TestContext) -> S::Params,
    check_done: impl AsyncFn(&TestContext, &S::Params),
) -> usize
where
    S::Params: Clone,
{
    let nodes = node_names::<S>(setup(ctx).await);
    let twice = NonZeroU32::new(2).unwrap();
    for name in &nodes {
        let params = setup(ctx).await;
        let saga = ctx.nexus().saga_prepare::<S>(params.clone()).await.unwrap();
        let index = saga.dag.get_index(name).unwrap();
        ctx.nexus()
            .sec()
            .saga_inject_repeat(
                saga.id,
                index,
                RepeatInjected {
                    action: twice,
                    undo: twice,
                },
            )
            .await
            .unwrap();
        ctx.nexus()
            .saga_execute(saga)
            .await
            .unwrap_or_else(|e| panic!("{}: repeating {name} failed the saga: {e:?}", S::NAME));
        ctx.assert_quiet_and_consistent().await;
        check_done(ctx, &params).await;
    }
    nodes.len()
}

async fn stopped_instance(ctx: &TestContext) -> InstanceUuid {
    let project = match ctx.nexus().project_view(&"p".parse().unwrap()).await {
        Ok(_) => "p".parse().unwrap(),
        Err(_) => ctx.project("p").await,
    };
    let name = format!("vm-{}", &InstanceUuid::new_v4().to_string()[..8]);
    ctx.instance(&project, &name, 2).await
}

async fn assert_stopped_with_nothing_held(ctx: &TestContext, id: InstanceUuid) {
    let view = ctx.view(id).await;
    assert_eq!(view.run_state(), InstanceState::Stopped);
    // No sled keeps a mapping for its interface.
    let ips = ctx.interface_ips(id).await;
    assert_eq!(ips.len(), 1, "the instance has its default interface");
    ctx.wait_for_mappings("no mapping for the unwound start's interface", |held| {
        held.iter().all(|h| !ips.contains(&h.mapping.virtual_ip))
    })
    .await;
    assert_eq!(view.instance.runtime.active_vmm(), None);
    let live = ctx.sql(&format!(
        "SELECT count(*) FROM vmm WHERE instance_id = '{id}' AND time_deleted IS NULL"
    ));
    assert_eq!(live.trim(), "0");
    assert_eq!(ctx.sql("SELECT count(*) FROM sled_reservation").trim(), "0");
}

#[tokio::test]
async fn instance_start_unwinds_from_every_node() {
    let ctx = TestContext::new().await;
    let covered = inject_error_at_every_node::<instance_start::SagaInstanceStart>(
        &ctx,
        async |ctx| instance_start::Params {
            instance_id: stopped_instance(ctx).await,
        },
        async |ctx, params| assert_stopped_with_nothing_held(ctx, params.instance_id).await,
    )
    .await;
    assert_eq!(covered, 7);
}

#[tokio::test]
async fn instance_start_repeated_at_every_node_ends_as_one_run() {
    let ctx = TestContext::new().await;
    let covered = repeat_every_node::<instance_start::SagaInstanceStart>(
        &ctx,
        async |ctx| instance_start::Params {
            instance_id: stopped_instance(ctx).await,
        },
        async |ctx, params| {
            ctx.wait_for(params.instance_id, InstanceState::Running)
                .await;
            let history = ctx
                .nexus()
                .datastore()
                .instance_vmm_history(params.instance_id)
                .await
                .unwrap();
            assert_eq!(history.len(), 1);
            // Its interface is mapped once, to the VMM's sled, held by that sled.
            let ips = ctx.interface_ips(params.instance_id).await;
            let sled = history[0].sled_id();
            let mine = |held: &[halyard_nexus_test_utils::context::HeldMapping]| {
                held.iter()
                    .filter(|h| ips.contains(&h.mapping.virtual_ip))
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let held = mine(&ctx.held_mappings().await);
            assert_eq!(held.len(), 1, "{held:#?}");
            assert_eq!((held[0].holder, held[0].mapping.sled_id), (sled, sled));
            // Leave room for the next round.
            ctx.nexus().instance_stop(params.instance_id).await.unwrap();
            ctx.wait_for(params.instance_id, InstanceState::Stopped)
                .await;
            ctx.wait_for_mappings("no mapping for the stopped instance", |held| {
                mine(held).is_empty()
            })
            .await;
        },
    )
    .await;
    assert_eq!(covered, 7);
}

/// `params` with the default interface its `create` asks for (`net0` in the project's default
/// VPC and subnet), as Nexus resolves it before recording the saga.
async fn with_default_interface(
    ctx: &TestContext,
    mut params: instance_create::Params,
) -> instance_create::Params {
    params.interfaces = ctx
        .nexus()
        .instance_create_interfaces(params.project_id, &params.create)
        .await
        .unwrap();
    params
}

fn create_params(project_id: halyard_common::ids::ProjectUuid) -> instance_create::Params {
    let id = InstanceUuid::new_v4();
    instance_create::Params {
        instance_id: id,
        project_id,
        create: InstanceCreate::new(
            format!("vm-{}", &id.to_string()[..8]).parse().unwrap(),
            "",
            "vm",
            1,
            ByteCount::from_gibibytes_u32(1),
        ),
        disk_ids: Vec::new(),
        disks_to_create: Vec::new(),
        interfaces: Vec::new(),
    }
}

#[tokio::test]
async fn instance_create_and_delete_unwind_from_every_node_and_tolerate_repeats() {
    let ctx = TestContext::new().await;
    ctx.project("p").await;
    let project_id = ctx
        .nexus()
        .project_view(&"p".parse().unwrap())
        .await
        .unwrap()
        .id();

    let covered = inject_error_at_every_node::<instance_create::SagaInstanceCreate>(
        &ctx,
        async |ctx| with_default_interface(ctx, create_params(project_id)).await,
        async |ctx, params| {
            let err = ctx
                .nexus()
                .instance_view(params.instance_id)
                .await
                .unwrap_err();
            assert_eq!(err.error_code(), "ObjectNotFound");
            let interfaces = ctx
                .nexus()
                .datastore()
                .instance_network_interfaces(params.instance_id)
                .await
                .unwrap();
            assert!(
                interfaces.is_empty(),
                "an unwound create left {interfaces:?}"
            );
        },
    )
    .await;
    assert_eq!(covered, 4);
    repeat_every_node::<instance_create::SagaInstanceCreate>(
        &ctx,
        async |ctx| with_default_interface(ctx, create_params(project_id)).await,
        async |ctx, params| {
            assert_eq!(
                ctx.view(params.instance_id).await.run_state(),
                InstanceState::Stopped
            );
            let interfaces = ctx
                .nexus()
                .datastore()
                .instance_network_interfaces(params.instance_id)
                .await
                .unwrap();
            assert_eq!(
                interfaces.len(),
                1,
                "repeats made one interface: {interfaces:?}"
            );
        },
    )
    .await;

    let covered = inject_error_at_every_node::<instance_delete::SagaInstanceDelete>(
        &ctx,
        async |ctx| instance_delete::Params {
            instance_id: stopped_instance(ctx).await,
            created_disk_ids: Vec::new(),
        },
        async |ctx, params| {
            assert_eq!(
                ctx.view(params.instance_id).await.run_state(),
                InstanceState::Stopped
            );
        },
    )
    .await;
    assert_eq!(covered, 1);
    repeat_every_node::<instance_delete::SagaInstanceDelete>(
        &ctx,
        async |ctx| instance_delete::Params {
            instance_id: stopped_instance(ctx).await,
            created_disk_ids: Vec::new(),
        },
        async |ctx, params| {
            let err = ctx
                .nexus()
                .instance_view(params.instance_id)
                .await
                .unwrap_err();
            assert_eq!(err.error_code(), "ObjectNotFound");
        },
    )
    .await;
}

/// A disk-create request for a new 1 MiB blank disk in `project_id`.
fn disk_create_params(project_id: halyard_common::ids::ProjectUuid) -> disk_create::Params {
    let id = halyard_common::ids::DiskUuid::new_v4();
    let block_size = halyard_common::BlockSize::try_from(512u32).unwrap();
    disk_create::Params {
        disk_id: id,
        project_id,
        create: DiskCreate {
            name: format!("d-{}", &id.to_string()[..8]).parse().unwrap(),
            description: String::new(),
            disk_backend: DiskBackend::Distributed(DiskSource::Blank { block_size }),
            size: ByteCount::from_mebibytes_u32(1),
        },
        block_size,
        created_by_instance_id: None,
        source_snapshot_id: None,
    }
}

/// No live disk and no region remains of the disk, and the sleds reserve exactly what the
/// regions left hold (the checker, run before, also compared every sled agent's regions with
/// the database's).
fn assert_disk_left_nothing(ctx: &TestContext, disk: halyard_common::ids::DiskUuid) {
    assert_eq!(
        ctx.sql(&format!(
            "SELECT count(*) FROM disk WHERE id = '{disk}' AND time_deleted IS NULL"
        ))
        .trim(),
        "0"
    );
    assert_eq!(
        ctx.sql(&format!(
            "SELECT count(*) FROM region WHERE disk_id = '{disk}'"
        ))
        .trim(),
        "0"
    );
    assert_reserved_is_regions_and_region_snapshots(ctx);
}

/// The sleds reserve exactly what the regions and region snapshots left hold.
fn assert_reserved_is_regions_and_region_snapshots(ctx: &TestContext) {
    assert_eq!(
        ctx.sql("SELECT sum(reserved_storage) FROM sled").trim(),
        ctx.sql(
            "SELECT (SELECT coalesce(sum(size_bytes), 0) FROM region) + \
             (SELECT coalesce(sum(size_bytes), 0) FROM region_snapshot)"
        )
        .trim()
    );
}

#[tokio::test]
async fn disk_create_unwinds_from_every_node_and_tolerates_repeats() {
    let ctx = TestContext::with_storage(3, ByteCount::from_gibibytes_u32(1)).await;
    let project_id = ctx.project("p").await;
    let project_id = ctx.nexus().project_view(&project_id).await.unwrap().id();

    let covered = inject_error_at_every_node::<disk_create::SagaDiskCreate>(
        &ctx,
        async |_| disk_create_params(project_id),
        async |ctx, params| assert_disk_left_nothing(ctx, params.disk_id),
    )
    .await;
    assert_eq!(covered, 4);
    let covered = repeat_every_node::<disk_create::SagaDiskCreate>(
        &ctx,
        async |_| disk_create_params(project_id),
        async |ctx, params| {
            let disk = ctx
                .nexus()
                .datastore()
                .disk_fetch(params.disk_id)
                .await
                .unwrap();
            assert_eq!(disk.state(), halyard_common::DiskState::Detached);
            let regions = ctx
                .nexus()
                .datastore()
                .disk_regions(params.disk_id)
                .await
                .unwrap();
            assert_eq!(regions.len(), 3);
            // Leave room for the next round.
            ctx.nexus().disk_delete(&disk).await.unwrap();
            assert_disk_left_nothing(ctx, params.disk_id);
        },
    )
    .await;
    assert_eq!(covered, 4);
}

/// A new detached disk, to delete.
async fn detached_disk(ctx: &TestContext) -> disk_delete::Params {
    let project_id = ctx
        .nexus()
        .project_view(&"p".parse().unwrap())
        .await
        .unwrap()
        .id();
    let params = disk_create_params(project_id);
    let disk = ctx
        .nexus()
        .disk_create(project_id, params.create)
        .await
        .unwrap();
    disk_delete::Params { disk_id: disk.id() }
}

#[tokio::test]
async fn disk_delete_unwinds_from_every_node_and_tolerates_repeats() {
    let ctx = TestContext::with_storage(3, ByteCount::from_gibibytes_u32(1)).await;
    ctx.project("p").await;

    let covered = inject_error_at_every_node::<disk_delete::SagaDiskDelete>(
        &ctx,
        async |ctx| detached_disk(ctx).await,
        async |ctx, params| {
            // Unwound: the disk is still there (detached if the first node failed, else back
            // as faulted, as Oxide does: its regions may have been deleted and made again,
            // empty), with its three regions; it can be deleted.
            let disk = ctx
                .nexus()
                .datastore()
                .disk_fetch(params.disk_id)
                .await
                .unwrap();
            assert!(
                disk_delete::DELETABLE.contains(&disk.state()),
                "{:?}",
                disk.state()
            );
            let regions = ctx
                .nexus()
                .datastore()
                .disk_regions(params.disk_id)
                .await
                .unwrap();
            assert_eq!(regions.len(), 3);
            ctx.nexus().disk_delete(&disk).await.unwrap();
            ctx.assert_quiet_and_consistent().await;
            assert_disk_left_nothing(ctx, params.disk_id);
        },
    )
    .await;
    assert_eq!(covered, 3);
    let covered = repeat_every_node::<disk_delete::SagaDiskDelete>(
        &ctx,
        async |ctx| detached_disk(ctx).await,
        async |ctx, params| assert_disk_left_nothing(ctx, params.disk_id),
    )
    .await;
    assert_eq!(covered, 3);
}

/// A stopped instance and a detached disk of its project (see `instance_disks::detached_disk`).
async fn stopped_instance_and_disk(ctx: &TestContext) -> (InstanceUuid, DiskUuid) {
    let instance = stopped_instance(ctx).await;
    let disk = crate::instance_disks::detached_disk(
        ctx,
        &NameOrId::Name("p".parse().unwrap()),
        &format!("d-{}", &DiskUuid::new_v4().to_string()[..8]),
    )
    .await;
    (instance, disk)
}

/// The disk's state and the instance it names.
async fn disk_state(ctx: &TestContext, disk: DiskUuid) -> (DiskState, Option<InstanceUuid>) {
    let found = ctx.nexus().datastore().disk_fetch(disk).await.unwrap();
    (found.state(), found.attached_to())
}

#[tokio::test]
async fn disk_attach_and_detach_unwind_from_every_node_and_tolerate_repeats() {
    let ctx = crate::instance_disks::context_with_storage().await;
    let covered = inject_error_at_every_node::<disk_attach::SagaDiskAttach>(
        &ctx,
        async |ctx| {
            let (instance_id, disk_id) = stopped_instance_and_disk(ctx).await;
            disk_attach::Params {
                instance_id,
                disk_id,
            }
        },
        async |ctx, params| {
            assert_eq!(
                disk_state(ctx, params.disk_id).await,
                (DiskState::Detached, None)
            );
            assert_stopped_with_nothing_held(ctx, params.instance_id).await;
        },
    )
    .await;
    assert_eq!(covered, 2);
    repeat_every_node::<disk_attach::SagaDiskAttach>(
        &ctx,
        async |ctx| {
            let (instance_id, disk_id) = stopped_instance_and_disk(ctx).await;
            disk_attach::Params {
                instance_id,
                disk_id,
            }
        },
        async |ctx, params| {
            assert_eq!(
                disk_state(ctx, params.disk_id).await,
                (DiskState::Attached, Some(params.instance_id))
            );
        },
    )
    .await;

    // Detach, from an attached disk.
    let attached = async |ctx: &TestContext| {
        let (instance_id, disk_id) = stopped_instance_and_disk(ctx).await;
        ctx.nexus()
            .run_saga::<disk_attach::SagaDiskAttach>(disk_attach::Params {
                instance_id,
                disk_id,
            })
            .await
            .unwrap();
        disk_detach::Params {
            instance_id,
            disk_id,
        }
    };
    let covered = inject_error_at_every_node::<disk_detach::SagaDiskDetach>(
        &ctx,
        attached,
        async |ctx, params| {
            assert_eq!(
                disk_state(ctx, params.disk_id).await,
                (DiskState::Attached, Some(params.instance_id))
            );
        },
    )
    .await;
    assert_eq!(covered, 2);
    repeat_every_node::<disk_detach::SagaDiskDetach>(&ctx, attached, async |ctx, params| {
        assert_eq!(
            disk_state(ctx, params.disk_id).await,
            (DiskState::Detached, None)
        );
    })
    .await;
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn instance_create_with_disks_unwinds_from_every_node_and_tolerates_repeats() {
    let ctx = crate::instance_disks::context_with_storage().await;
    let project = ctx.project("p").await;
    let project_id = ctx
        .nexus()
        .datastore()
        .project_fetch(&project)
        .await
        .unwrap()
        .id();
    let with_disks = async |ctx: &TestContext| {
        let mut params = create_params(project_id);
        for _ in 0..2 {
            let name = format!("d-{}", &DiskUuid::new_v4().to_string()[..8]);
            let id = crate::instance_disks::detached_disk(ctx, &project, &name).await;
            params.disk_ids.push(id);
        }
        params
    };
    let covered = inject_error_at_every_node::<instance_create::SagaInstanceCreate>(
        &ctx,
        with_disks,
        async |ctx, params| {
            for &disk in &params.disk_ids {
                assert_eq!(disk_state(ctx, disk).await, (DiskState::Detached, None));
            }
        },
    )
    .await;
    assert_eq!(covered, 4);
    repeat_every_node::<instance_create::SagaInstanceCreate>(
        &ctx,
        with_disks,
        async |ctx, params| {
            let attached = ctx
                .nexus()
                .datastore()
                .instance_attached_disks(params.instance_id)
                .await
                .unwrap();
            let ids: Vec<DiskUuid> = attached.iter().map(|d| d.disk.id()).collect();
            assert_eq!(ids, params.disk_ids);
            let slots: Vec<Option<i32>> = attached.iter().map(|d| d.disk.slot).collect();
            assert_eq!(slots, [Some(0), Some(1)]);
        },
    )
    .await;
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn instance_create_making_a_disk_unwinds_from_every_node_and_tolerates_repeats() {
    let ctx = crate::instance_disks::context_with_storage().await;
    let project = ctx.project("p").await;
    let project_id = ctx
        .nexus()
        .datastore()
        .project_fetch(&project)
        .await
        .unwrap()
        .id();
    let making_one = async |ctx: &TestContext| {
        let mut params = create_params(project_id);
        let block_size = halyard_common::BlockSize::try_from(512u32).unwrap();
        let disk_id = DiskUuid::new_v4();
        params.disks_to_create.push(disk_create::Params {
            disk_id,
            project_id,
            create: DiskCreate {
                name: format!("new-{}", &disk_id.to_string()[..8])
                    .parse()
                    .unwrap(),
                description: String::new(),
                disk_backend: DiskBackend::Distributed(DiskSource::Blank { block_size }),
                size: ByteCount::from_mebibytes_u32(1),
            },
            block_size,
            created_by_instance_id: Some(params.instance_id),
            source_snapshot_id: None,
        });
        params.disk_ids.push(disk_id);
        let name = format!("old-{}", &DiskUuid::new_v4().to_string()[..8]);
        let existing = crate::instance_disks::detached_disk(ctx, &project, &name).await;
        params.disk_ids.push(existing);
        params
    };
    // Every node, the subsaga's too: the made disk is gone with its regions (the invariant
    // checker, run by the helper, compares the sled agents' regions with the database), the
    // existing one detached.
    let covered = inject_error_at_every_node::<instance_create::SagaInstanceCreate>(
        &ctx,
        making_one,
        async |ctx, params| {
            let made = params.disk_ids[0];
            let live = ctx.sql(&format!(
                "SELECT count(*) FROM disk WHERE id = '{made}' AND time_deleted IS NULL"
            ));
            let regions = ctx.sql(&format!(
                "SELECT count(*) FROM region WHERE disk_id = '{made}'"
            ));
            assert_eq!((live.trim(), regions.trim()), ("0", "0"));
            assert_eq!(
                disk_state(ctx, params.disk_ids[1]).await,
                (DiskState::Detached, None)
            );
        },
    )
    .await;
    assert!(
        covered > 3,
        "the subsaga's nodes are covered too ({covered})"
    );
    repeat_every_node::<instance_create::SagaInstanceCreate>(
        &ctx,
        making_one,
        async |ctx, params| {
            let attached = ctx
                .nexus()
                .datastore()
                .instance_attached_disks(params.instance_id)
                .await
                .unwrap();
            let ids: Vec<DiskUuid> = attached.iter().map(|d| d.disk.id()).collect();
            assert_eq!(ids, params.disk_ids);
            assert_eq!(attached[0].regions.len(), 3);
        },
    )
    .await;
    ctx.assert_quiet_and_consistent().await;
}

/// Instance delete deleting a disk its create made, with a failure at every node (the
/// disk-delete subsaga's too). Before the disks: nothing changed (the instance stopped, the
/// disk attached). In the subsaga: the instance stays deleted and the disk is left for the
/// user to see and delete again: `detached` (failed before its record was destroyed) or
/// `faulted` (its delete undone), still with its three regions, which the sled agents hold
/// (the invariant checker, run by the helper, compares them); deleting it by hand then
/// leaves no disk and no region. After the subsaga's last node, the disk stays deleted.
/// (Before disk-delete's undos checked for released regions, a failure there brought the
/// disk back `faulted` with no region row while its regions were made again on the sleds.)
#[tokio::test]
async fn instance_delete_deleting_a_made_disk_unwinds_from_every_node_and_leaks_nothing() {
    let ctx = crate::instance_disks::context_with_storage().await;
    let project = ctx.project("p").await;
    let project_id = ctx
        .nexus()
        .datastore()
        .project_fetch(&project)
        .await
        .unwrap()
        .id();
    let with_a_made_disk = async |ctx: &TestContext| {
        let mut create = create_params(project_id);
        let block_size = halyard_common::BlockSize::try_from(512u32).unwrap();
        let disk_id = DiskUuid::new_v4();
        create.disks_to_create.push(disk_create::Params {
            disk_id,
            project_id,
            create: DiskCreate {
                name: format!("made-{}", &disk_id.to_string()[..8])
                    .parse()
                    .unwrap(),
                description: String::new(),
                disk_backend: DiskBackend::Distributed(DiskSource::Blank { block_size }),
                size: ByteCount::from_mebibytes_u32(1),
            },
            block_size,
            created_by_instance_id: Some(create.instance_id),
            source_snapshot_id: None,
        });
        create.disk_ids.push(disk_id);
        ctx.nexus()
            .run_saga::<instance_create::SagaInstanceCreate>(create.clone())
            .await
            .unwrap();
        instance_delete::Params {
            instance_id: create.instance_id,
            created_disk_ids: vec![disk_id],
        }
    };
    let covered = inject_error_at_every_node::<instance_delete::SagaInstanceDelete>(
        &ctx,
        with_a_made_disk,
        async |ctx, params| {
            let made = params.created_disk_ids[0];
            let regions = || {
                ctx.sql(&format!(
                    "SELECT count(*) FROM region WHERE disk_id = '{made}'"
                ))
                .trim()
                .to_string()
            };
            if ctx.nexus().instance_view(params.instance_id).await.is_ok() {
                // Failed at its first node: nothing changed.
                assert_eq!(
                    disk_state(ctx, made).await,
                    (DiskState::Attached, Some(params.instance_id))
                );
                assert_eq!(regions(), "3");
                return;
            }
            let Ok(disk) = ctx.nexus().datastore().disk_fetch(made).await else {
                // Failed after the subsaga's last node: the disk's delete stays complete.
                assert_eq!(regions(), "0");
                return;
            };
            assert!(
                matches!(disk.state(), DiskState::Detached | DiskState::Faulted),
                "a made disk whose delete failed shows as {:?}",
                disk.state()
            );
            assert_eq!(disk.attached_to(), None);
            assert_eq!(regions(), "3");
            ctx.nexus().disk_delete(&disk).await.unwrap();
            let live = ctx.sql(&format!(
                "SELECT count(*) FROM disk WHERE id = '{made}' AND time_deleted IS NULL"
            ));
            assert_eq!((live.trim(), regions().as_str()), ("0", "0"));
            ctx.assert_quiet_and_consistent().await;
        },
    )
    .await;
    assert!(
        covered > 1,
        "the subsaga's nodes are covered too ({covered})"
    );
}

/// A snapshot-create of a new detached disk (see `instance_disks::detached_disk`) in
/// project "p".
async fn snapshot_create_params(ctx: &TestContext) -> snapshot_create::Params {
    let disk_id = crate::instance_disks::detached_disk(
        ctx,
        &NameOrId::Name("p".parse().unwrap()),
        &format!("d-{}", &DiskUuid::new_v4().to_string()[..8]),
    )
    .await;
    let snapshot_id = halyard_common::ids::SnapshotUuid::new_v4();
    snapshot_create::Params {
        snapshot_id,
        disk_id,
        name: format!("s-{}", &snapshot_id.to_string()[..8])
            .parse()
            .unwrap(),
        description: String::new(),
    }
}

/// No live snapshot and no region snapshot remains of `snapshot`; storage totals agree.
fn assert_snapshot_left_nothing(ctx: &TestContext, snapshot: halyard_common::ids::SnapshotUuid) {
    assert_eq!(
        ctx.sql(&format!(
            "SELECT count(*) FROM snapshot WHERE id = '{snapshot}' AND time_deleted IS NULL"
        ))
        .trim(),
        "0"
    );
    assert_eq!(
        ctx.sql(&format!(
            "SELECT count(*) FROM region_snapshot WHERE snapshot_id = '{snapshot}'"
        ))
        .trim(),
        "0"
    );
    assert_reserved_is_regions_and_region_snapshots(ctx);
}

#[tokio::test]
async fn snapshot_create_unwinds_from_every_node_and_tolerates_repeats() {
    let ctx = TestContext::with_storage(3, ByteCount::from_gibibytes_u32(1)).await;
    ctx.project("p").await;
    let covered = inject_error_at_every_node::<snapshot_create::SagaSnapshotCreate>(
        &ctx,
        async |ctx| snapshot_create_params(ctx).await,
        async |ctx, params| assert_snapshot_left_nothing(ctx, params.snapshot_id),
    )
    .await;
    assert_eq!(covered, 6);
    let covered = repeat_every_node::<snapshot_create::SagaSnapshotCreate>(
        &ctx,
        async |ctx| snapshot_create_params(ctx).await,
        async |ctx, params| {
            let snapshot = ctx
                .nexus()
                .datastore()
                .snapshot_fetch(params.snapshot_id)
                .await
                .unwrap();
            assert_eq!(snapshot.state(), halyard_common::SnapshotState::Ready);
            let rows = ctx
                .nexus()
                .datastore()
                .region_snapshots(params.snapshot_id)
                .await
                .unwrap();
            assert_eq!(rows.len(), 3);
            ctx.nexus().snapshot_delete(&snapshot).await.unwrap();
            assert_snapshot_left_nothing(ctx, params.snapshot_id);
        },
    )
    .await;
    assert_eq!(covered, 6);
}

/// A new ready snapshot, to delete.
async fn ready_snapshot(ctx: &TestContext) -> snapshot_delete::Params {
    let params = snapshot_create_params(ctx).await;
    let disk = ctx
        .nexus()
        .datastore()
        .disk_fetch(params.disk_id)
        .await
        .unwrap();
    let snapshot = ctx
        .nexus()
        .snapshot_create(
            &disk,
            halyard_nexus_external_api::params::SnapshotCreate {
                name: params.name,
                description: params.description,
                disk: NameOrId::Id(halyard_common::ids::GenericUuid::into_untyped_uuid(
                    params.disk_id,
                )),
            },
        )
        .await
        .unwrap();
    snapshot_delete::Params {
        snapshot_id: snapshot.id(),
    }
}

#[tokio::test]
async fn snapshot_delete_unwinds_from_every_node_and_tolerates_repeats() {
    let ctx = TestContext::with_storage(3, ByteCount::from_gibibytes_u32(1)).await;
    ctx.project("p").await;
    let covered = inject_error_at_every_node::<snapshot_delete::SagaSnapshotDelete>(
        &ctx,
        async |ctx| ready_snapshot(ctx).await,
        async |ctx, params| {
            // Unwound: the snapshot is still there (ready if the first node failed, else
            // faulted), with its region snapshots; it can be deleted.
            let snapshot = ctx
                .nexus()
                .datastore()
                .snapshot_fetch(params.snapshot_id)
                .await
                .unwrap();
            assert!(
                snapshot_delete::DELETABLE.contains(&snapshot.state()),
                "{:?}",
                snapshot.state()
            );
            ctx.nexus().snapshot_delete(&snapshot).await.unwrap();
            ctx.assert_quiet_and_consistent().await;
            assert_snapshot_left_nothing(ctx, params.snapshot_id);
        },
    )
    .await;
    assert_eq!(covered, 3);
    let covered = repeat_every_node::<snapshot_delete::SagaSnapshotDelete>(
        &ctx,
        async |ctx| ready_snapshot(ctx).await,
        async |ctx, params| assert_snapshot_left_nothing(ctx, params.snapshot_id),
    )
    .await;
    assert_eq!(covered, 3);
}
