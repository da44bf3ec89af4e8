//! Lost replies at every node of every saga: the node's action runs to its end (its database
//! writes committed, its sled-agent calls answered), and then its caller gets a transient
//! error (`ServiceUnavailable`) instead of its result, once (`Nexus::inject_lost_reply`, the
//! hook in `app::crash_point`). The saga's retry (`sagas::retry`) runs the action again; the
//! action must notice that its effects already exist and succeed without making them twice.
//!
//! The same for every undo: with a failure injected at the saga's last node, the undo of each
//! earlier node loses its reply once; the retry runs it again, and the saga must unwind
//! completely (not get stuck) and leave nothing behind.
//!
//! Each case proves the reply was lost at that node (the hook reports it), that the saga then
//! finished, that the node's `succeeded` is in the saga log once, that the world holds exactly
//! one of each effect (one instance record, one VMM, one reservation, one migration, one VMM
//! on the sled agents), and that every invariant holds. A summary of the lost replies per node
//! is printed.

use crate::context::TestContext;
use halyard_common::ids::{DiskUuid, InstanceUuid, ProjectUuid};
use halyard_common::{BlockSize, ByteCount, DiskState, InstanceState, NameOrId};
use halyard_nexus::app::crash_point::LostReplyStep;
use halyard_nexus::app::sagas::{
    NexusSaga, create_saga_dag, disk_attach, disk_create, disk_delete, disk_detach,
    instance_create, instance_delete, instance_migrate, instance_start, snapshot_create,
    snapshot_delete,
};
use halyard_nexus_external_api::params::{DiskBackend, DiskCreate, DiskSource, InstanceCreate};
use halyard_sled_agent::SimConfig;

/// The nodes of saga `S`, by name, in DAG order.
fn node_names<S: NexusSaga>(params: S::Params) -> Vec<String> {
    create_saga_dag::<S>(params)
        .unwrap()
        .get_nodes()
        .map(|n| n.name().as_ref().to_string())
        .collect()
}

/// One node's lost reply, for the summary.
struct LostReplyCase {
    saga: &'static str,
    node: String,
    lost: usize,
    effects: String,
}

/// For each node of `S`: sets the world up with `setup`, runs the saga with the reply of that
/// node's action lost once, and checks the saga finished with the reply lost exactly there
/// and the node succeeded once, the invariants hold, and `check_one_effect` (which returns
/// what it counted, for the summary) finds exactly one of everything the saga makes.
async fn lose_a_reply_at_every_node<S: NexusSaga>(
    ctx: &TestContext,
    setup: impl AsyncFn(&TestContext) -> S::Params,
    check_one_effect: impl AsyncFn(&TestContext, &S::Params) -> String,
) -> Vec<LostReplyCase>
where
    S::Params: Clone,
{
    let nodes = node_names::<S>(setup(ctx).await);
    let mut cases = Vec::new();
    for name in &nodes {
        let params = setup(ctx).await;
        let saga = ctx.nexus().saga_prepare::<S>(params.clone()).await.unwrap();
        let saga_id = saga.id;
        let index = saga.dag.get_index(name).unwrap().index();
        ctx.nexus()
            .inject_lost_reply(&saga, name, LostReplyStep::Action)
            .unwrap();
        ctx.nexus().saga_execute(saga).await.unwrap_or_else(|e| {
            panic!(
                "{}: the saga failed after the reply of {name} was lost (the action did not \
                 notice its own effect): {e:?}",
                S::NAME
            )
        });
        let lost = ctx.nexus().lost_replies_reported(saga_id);
        assert_eq!(
            lost,
            vec![(name.clone(), LostReplyStep::Action)],
            "{}: the reply of {name} was not lost exactly once (hook reports {lost:?})",
            S::NAME
        );
        let succeeded = ctx.sql(&format!(
            "SELECT count(*) FROM saga_node_event WHERE saga_id = '{saga_id}' \
             AND node_id = {index} AND event_type = 'succeeded'"
        ));
        assert_eq!(succeeded.trim(), "1", "{}: {name} succeeded", S::NAME);
        ctx.assert_quiet_and_consistent().await;
        let effects = check_one_effect(ctx, &params).await;
        cases.push(LostReplyCase {
            saga: S::NAME,
            node: name.clone(),
            lost: lost.len(),
            effects,
        });
    }
    cases
}

/// For each node of `S` but the last: sets the world up with `setup`, runs the saga with a
/// failure injected at its last node and the reply of that node's undo lost once, and checks
/// the saga unwound completely (not stuck; the node's `undo_finished` once), the reply was
/// lost exactly there (only for the nodes in `undoable`: a node without an undo has nothing
/// to lose), the invariants hold, and `check_unwound` finds nothing left behind.
async fn lose_an_undo_reply_at_every_node<S: NexusSaga>(
    ctx: &TestContext,
    undoable: &[&str],
    setup: impl AsyncFn(&TestContext) -> S::Params,
    check_unwound: impl AsyncFn(&TestContext, &S::Params) -> String,
) -> Vec<LostReplyCase>
where
    S::Params: Clone,
{
    let nodes = node_names::<S>(setup(ctx).await);
    let (last, earlier) = nodes.split_last().unwrap();
    let mut cases = Vec::new();
    for name in earlier {
        let params = setup(ctx).await;
        let saga = ctx.nexus().saga_prepare::<S>(params.clone()).await.unwrap();
        let saga_id = saga.id;
        let index = saga.dag.get_index(name).unwrap().index();
        ctx.nexus()
            .sec()
            .saga_inject_error(saga_id, saga.dag.get_index(last).unwrap())
            .await
            .unwrap();
        ctx.nexus()
            .inject_lost_reply(&saga, name, LostReplyStep::Undo)
            .unwrap();
        let error = ctx.nexus().saga_execute(saga).await.unwrap_err();
        assert!(
            !error.to_string().contains("is stuck"),
            "{}: the saga got stuck after the reply of {name}'s undo was lost: {error}",
            S::NAME
        );
        let lost = ctx.nexus().lost_replies_reported(saga_id);
        let expected: Vec<_> = if undoable.contains(&name.as_str()) {
            vec![(name.clone(), LostReplyStep::Undo)]
        } else {
            Vec::new()
        };
        assert_eq!(
            lost,
            expected,
            "{}: the reply of {name}'s undo (lost replies reported: {lost:?})",
            S::NAME
        );
        let undone = ctx.sql(&format!(
            "SELECT count(*) FROM saga_node_event WHERE saga_id = '{saga_id}' \
             AND node_id = {index} AND event_type = 'undo_finished'"
        ));
        assert_eq!(undone.trim(), "1", "{}: {name} undone", S::NAME);
        ctx.assert_quiet_and_consistent().await;
        let effects = check_unwound(ctx, &params).await;
        cases.push(LostReplyCase {
            saga: S::NAME,
            node: format!("{name} (undo)"),
            lost: lost.len(),
            effects,
        });
    }
    cases
}

fn count(ctx: &TestContext, query: &str) -> usize {
    ctx.sql(query).trim().parse().unwrap()
}

/// The VMMs of the instance that the sled agents run.
fn vmms_on_sled_agents(ctx: &TestContext, id: InstanceUuid) -> usize {
    ctx.sleds
        .iter()
        .flat_map(|sled| sled.agent().vmm_list())
        .filter(|vmm| vmm.instance_id == id)
        .count()
}

async fn project_id(ctx: &TestContext) -> ProjectUuid {
    if ctx
        .nexus()
        .project_view(&"p".parse().unwrap())
        .await
        .is_err()
    {
        ctx.project("p").await;
    }
    ctx.nexus()
        .project_view(&"p".parse().unwrap())
        .await
        .unwrap()
        .id()
}

async fn stopped_instance(ctx: &TestContext) -> InstanceUuid {
    project_id(ctx).await;
    let name = format!("vm-{}", &InstanceUuid::new_v4().to_string()[..8]);
    ctx.instance(&"p".parse().unwrap(), &name, 2).await
}

async fn running_instance(ctx: &TestContext) -> InstanceUuid {
    let id = stopped_instance(ctx).await;
    ctx.nexus().instance_start(id).await.unwrap();
    ctx.wait_for(id, InstanceState::Running).await;
    id
}

/// Stops a running instance, so the next case has room.
async fn stop(ctx: &TestContext, id: InstanceUuid) {
    ctx.nexus().instance_stop(id).await.unwrap();
    ctx.wait_for(id, InstanceState::Stopped).await;
    ctx.assert_quiet_and_consistent().await;
}

/// A stopped instance and a detached disk of its project.
async fn stopped_instance_and_disk(ctx: &TestContext) -> (InstanceUuid, DiskUuid) {
    let instance = stopped_instance(ctx).await;
    let name = format!("d-{}", &DiskUuid::new_v4().to_string()[..8]);
    let disk =
        crate::instance_disks::detached_disk(ctx, &NameOrId::Name("p".parse().unwrap()), &name)
            .await;
    (instance, disk)
}

async fn attach_now(ctx: &TestContext, instance_id: InstanceUuid, disk_id: DiskUuid) {
    ctx.nexus()
        .run_saga::<disk_attach::SagaDiskAttach>(disk_attach::Params {
            instance_id,
            disk_id,
        })
        .await
        .unwrap();
}

/// The disks naming the instance.
fn disks_naming(ctx: &TestContext, id: InstanceUuid) -> usize {
    count(
        ctx,
        &format!("SELECT count(*) FROM disk WHERE attach_instance_id = '{id}'"),
    )
}

fn print_summary(title: &str, outcome: &str, cases: &[LostReplyCase]) {
    println!("{title}");
    for case in cases {
        let lost = match case.lost {
            0 => "no undo, nothing to lose".to_string(),
            n => format!("lost {n}, retried"),
        };
        println!(
            "  {:18} {:25} {lost:25} {outcome}; {}",
            case.saga, case.node, case.effects
        );
    }
}

#[tokio::test]
async fn every_action_notices_its_effect_after_a_lost_reply() {
    let ctx = crate::instance_disks::context_with_storage().await;
    let mut cases = Vec::new();

    cases.extend(
        lose_a_reply_at_every_node::<instance_create::SagaInstanceCreate>(
            &ctx,
            async |ctx| {
                let id = InstanceUuid::new_v4();
                let project_id = project_id(ctx).await;
                let create = InstanceCreate::new(
                    format!("vm-{}", &id.to_string()[..8]).parse().unwrap(),
                    "",
                    "vm",
                    1,
                    ByteCount::from_gibibytes_u32(1),
                );
                // The default interface, so the interfaces node has work to lose.
                let interfaces = ctx
                    .nexus()
                    .instance_create_interfaces(project_id, &create)
                    .await
                    .unwrap();
                instance_create::Params {
                    instance_id: id,
                    project_id,
                    create,
                    disk_ids: Vec::new(),
                    disks_to_create: Vec::new(),
                    interfaces,
                }
            },
            async |ctx, params| {
                let id = params.instance_id;
                assert_eq!(ctx.view(id).await.run_state(), InstanceState::Stopped);
                let named = count(
                    ctx,
                    &format!(
                        "SELECT count(*) FROM instance WHERE name = '{}'",
                        params.create.name
                    ),
                );
                assert_eq!(named, 1, "instance records named {}", params.create.name);
                format!("{named} instance record, stopped")
            },
        )
        .await,
    );

    cases.extend(
        lose_a_reply_at_every_node::<instance_start::SagaInstanceStart>(
            &ctx,
            async |ctx| instance_start::Params {
                instance_id: stopped_instance(ctx).await,
            },
            async |ctx, params| {
                let id = params.instance_id;
                ctx.wait_for(id, InstanceState::Running).await;
                let vmms = count(
                    ctx,
                    &format!("SELECT count(*) FROM vmm WHERE instance_id = '{id}'"),
                );
                let reservations = count(
                    ctx,
                    &format!("SELECT count(*) FROM sled_reservation WHERE instance_id = '{id}'"),
                );
                let on_sleds = vmms_on_sled_agents(ctx, id);
                assert_eq!(
                    (vmms, reservations, on_sleds),
                    (1, 1, 1),
                    "VMM records, reservations, VMMs on the sled agents"
                );
                stop(ctx, id).await;
                format!(
                    "{vmms} VMM record, {reservations} reservation, {on_sleds} VMM on the sled \
                     agents, running"
                )
            },
        )
        .await,
    );

    // Migration phases slow enough (four of 300 ms) that `migrate_out`'s second run (after
    // the retry's first pause, 100 ms) is likely to meet its migration still under way, as it
    // would with a real guest's memory to copy, and to ask the source again; with the sim's
    // quick phases it would mostly find the migration already ended and ask nothing. (Either
    // way the checks below are the same; the timing only makes the harder case the usual one.)
    let slow_migrations = TestContext::with_sim(
        2,
        SimConfig {
            start_delay_ms: 20,
            stop_delay_ms: 20,
            reboot_delay_ms: 20,
            migration_phase_delay_ms: 300,
        },
    )
    .await;
    cases.extend(
        lose_a_reply_at_every_node::<instance_migrate::SagaInstanceMigrate>(
            &slow_migrations,
            async |ctx| instance_migrate::Params {
                instance_id: running_instance(ctx).await,
                destination: None,
            },
            async |ctx, params| {
                let id = params.instance_id;
                // The saga ends once the source has accepted; the outcome comes in reports.
                ctx.eventually("the migration ended", async |ctx: &TestContext| {
                    ctx.view(id).await.instance.runtime.migration().is_none()
                })
                .await;
                ctx.assert_quiet_and_consistent().await;
                let migrations = count(
                    ctx,
                    &format!(
                        "SELECT count(*) FROM migration WHERE instance_id = '{id}' \
                         AND source_state = 'completed' AND target_state = 'completed'"
                    ),
                );
                let all_migrations = count(
                    ctx,
                    &format!("SELECT count(*) FROM migration WHERE instance_id = '{id}'"),
                );
                let vmms = count(
                    ctx,
                    &format!("SELECT count(*) FROM vmm WHERE instance_id = '{id}'"),
                );
                let live = count(
                    ctx,
                    &format!(
                        "SELECT count(*) FROM vmm WHERE instance_id = '{id}' \
                         AND time_deleted IS NULL"
                    ),
                );
                let reservations = count(
                    ctx,
                    &format!("SELECT count(*) FROM sled_reservation WHERE instance_id = '{id}'"),
                );
                let on_sleds = vmms_on_sled_agents(ctx, id);
                assert_eq!(
                    (
                        migrations,
                        all_migrations,
                        vmms,
                        live,
                        reservations,
                        on_sleds
                    ),
                    (1, 1, 2, 1, 1, 1),
                    "completed migrations, migration records, VMM records (source and target), \
                     live VMMs, reservations, VMMs on the sled agents"
                );
                assert_eq!(ctx.view(id).await.run_state(), InstanceState::Running);
                stop(ctx, id).await;
                format!(
                    "{migrations} migration (completed), {vmms} VMM records (source retired), \
                     {reservations} reservation, {on_sleds} VMM on the sled agents, running"
                )
            },
        )
        .await,
    );

    cases.extend(
        lose_a_reply_at_every_node::<instance_delete::SagaInstanceDelete>(
            &ctx,
            async |ctx| instance_delete::Params {
                instance_id: stopped_instance(ctx).await,
                created_disk_ids: Vec::new(),
            },
            async |ctx, params| {
                let id = params.instance_id;
                let err = ctx.nexus().instance_view(id).await.unwrap_err();
                assert_eq!(err.error_code(), "ObjectNotFound");
                let deleted = count(
                    ctx,
                    &format!(
                        "SELECT count(*) FROM instance WHERE id = '{id}' \
                         AND time_deleted IS NOT NULL AND nexus_state = 'destroyed'"
                    ),
                );
                assert_eq!(deleted, 1);
                format!("{deleted} instance record, destroyed")
            },
        )
        .await,
    );

    cases.extend(
        lose_a_reply_at_every_node::<disk_attach::SagaDiskAttach>(
            &ctx,
            async |ctx| {
                let (instance_id, disk_id) = stopped_instance_and_disk(ctx).await;
                disk_attach::Params {
                    instance_id,
                    disk_id,
                }
            },
            async |ctx, params| {
                let attached = disks_naming(ctx, params.instance_id);
                assert_eq!(attached, 1);
                let disk = ctx
                    .nexus()
                    .datastore()
                    .disk_fetch(params.disk_id)
                    .await
                    .unwrap();
                assert_eq!(disk.state(), DiskState::Attached);
                format!("{attached} disk attached, slot {:?}", disk.slot)
            },
        )
        .await,
    );

    cases.extend(
        lose_a_reply_at_every_node::<disk_detach::SagaDiskDetach>(
            &ctx,
            async |ctx| {
                let (instance_id, disk_id) = stopped_instance_and_disk(ctx).await;
                attach_now(ctx, instance_id, disk_id).await;
                disk_detach::Params {
                    instance_id,
                    disk_id,
                }
            },
            async |ctx, params| {
                let attached = disks_naming(ctx, params.instance_id);
                assert_eq!(attached, 0);
                let disk = ctx
                    .nexus()
                    .datastore()
                    .disk_fetch(params.disk_id)
                    .await
                    .unwrap();
                assert_eq!(disk.state(), DiskState::Detached);
                format!("{attached} disk attached, detached")
            },
        )
        .await,
    );

    print_summary(
        "lost replies per saga node (the action's effects landed, its reply was lost):",
        "finished",
        &cases,
    );
    let nodes = cases.len();
    let lost: usize = cases.iter().map(|c| c.lost).sum();
    println!("  {lost} lost replies at {nodes} saga nodes, every saga finished with one effect");
    // Every node of the six sagas: 4 (create: its interfaces) + 7 (start: its mappings) + 8
    // + 1 + 2 + 2.
    assert_eq!(nodes, 24);
}

/// A stopped instance with nothing held, and nothing of the instance on the sled agents.
fn stopped_with_nothing_held(ctx: &TestContext, id: InstanceUuid) -> String {
    let live = count(
        ctx,
        &format!("SELECT count(*) FROM vmm WHERE instance_id = '{id}' AND time_deleted IS NULL"),
    );
    let reservations = count(
        ctx,
        &format!("SELECT count(*) FROM sled_reservation WHERE instance_id = '{id}'"),
    );
    let on_sleds = vmms_on_sled_agents(ctx, id);
    assert_eq!(
        (live, reservations, on_sleds),
        (0, 0, 0),
        "live VMMs, reservations, VMMs on the sled agents"
    );
    format!("stopped, {live} live VMMs, {reservations} reservations, {on_sleds} on the sled agents")
}

#[tokio::test]
async fn every_undo_notices_its_effect_after_a_lost_reply() {
    let ctx = crate::instance_disks::context_with_storage().await;
    let mut cases = Vec::new();

    cases.extend(
        lose_an_undo_reply_at_every_node::<instance_create::SagaInstanceCreate>(
            &ctx,
            &["instance", "disks", "interfaces"],
            async |ctx| {
                let id = InstanceUuid::new_v4();
                let project_id = project_id(ctx).await;
                let create = InstanceCreate::new(
                    format!("vm-{}", &id.to_string()[..8]).parse().unwrap(),
                    "",
                    "vm",
                    1,
                    ByteCount::from_gibibytes_u32(1),
                );
                // The default interface, so the interfaces node has work to lose.
                let interfaces = ctx
                    .nexus()
                    .instance_create_interfaces(project_id, &create)
                    .await
                    .unwrap();
                instance_create::Params {
                    instance_id: id,
                    project_id,
                    create,
                    disk_ids: Vec::new(),
                    disks_to_create: Vec::new(),
                    interfaces,
                }
            },
            async |ctx, params| {
                let err = ctx
                    .nexus()
                    .instance_view(params.instance_id)
                    .await
                    .unwrap_err();
                assert_eq!(err.error_code(), "ObjectNotFound");
                "no instance".to_string()
            },
        )
        .await,
    );

    cases.extend(
        lose_an_undo_reply_at_every_node::<instance_start::SagaInstanceStart>(
            &ctx,
            &["claim", "reservation", "vmm", "registered", "mappings"],
            async |ctx| instance_start::Params {
                instance_id: stopped_instance(ctx).await,
            },
            async |ctx, params| {
                let id = params.instance_id;
                assert_eq!(ctx.view(id).await.run_state(), InstanceState::Stopped);
                stopped_with_nothing_held(ctx, id)
            },
        )
        .await,
    );

    cases.extend(
        lose_an_undo_reply_at_every_node::<instance_migrate::SagaInstanceMigrate>(
            &ctx,
            &[
                "migration_record",
                "reservation",
                "target_vmm",
                "set_ids",
                "registered_target",
            ],
            async |ctx| instance_migrate::Params {
                instance_id: running_instance(ctx).await,
                destination: None,
            },
            async |ctx, params| {
                let id = params.instance_id;
                let view = ctx.view(id).await;
                assert_eq!(view.run_state(), InstanceState::Running);
                assert_eq!(view.instance.runtime.migration(), None);
                let open_migrations = count(
                    ctx,
                    &format!(
                        "SELECT count(*) FROM migration WHERE instance_id = '{id}' \
                         AND time_deleted IS NULL"
                    ),
                );
                let live = count(
                    ctx,
                    &format!(
                        "SELECT count(*) FROM vmm WHERE instance_id = '{id}' \
                         AND time_deleted IS NULL"
                    ),
                );
                let reservations = count(
                    ctx,
                    &format!("SELECT count(*) FROM sled_reservation WHERE instance_id = '{id}'"),
                );
                let on_sleds = vmms_on_sled_agents(ctx, id);
                assert_eq!(
                    (open_migrations, live, reservations, on_sleds),
                    (0, 1, 1, 1),
                    "migration records not deleted, live VMMs, reservations, VMMs on the sled \
                     agents"
                );
                stop(ctx, id).await;
                format!(
                    "running on its source: {open_migrations} migration left, {live} live VMM, \
                     {reservations} reservation, {on_sleds} on the sled agents"
                )
            },
        )
        .await,
    );

    cases.extend(
        lose_an_undo_reply_at_every_node::<disk_attach::SagaDiskAttach>(
            &ctx,
            &["begin"],
            async |ctx| {
                let (instance_id, disk_id) = stopped_instance_and_disk(ctx).await;
                disk_attach::Params {
                    instance_id,
                    disk_id,
                }
            },
            async |ctx, params| {
                let disk = ctx
                    .nexus()
                    .datastore()
                    .disk_fetch(params.disk_id)
                    .await
                    .unwrap();
                assert_eq!(
                    (disk.state(), disk.attached_to()),
                    (DiskState::Detached, None)
                );
                "the disk detached".to_string()
            },
        )
        .await,
    );

    cases.extend(
        lose_an_undo_reply_at_every_node::<disk_detach::SagaDiskDetach>(
            &ctx,
            &["begin"],
            async |ctx| {
                let (instance_id, disk_id) = stopped_instance_and_disk(ctx).await;
                attach_now(ctx, instance_id, disk_id).await;
                disk_detach::Params {
                    instance_id,
                    disk_id,
                }
            },
            async |ctx, params| {
                let disk = ctx
                    .nexus()
                    .datastore()
                    .disk_fetch(params.disk_id)
                    .await
                    .unwrap();
                assert_eq!(
                    (disk.state(), disk.attached_to()),
                    (DiskState::Attached, Some(params.instance_id))
                );
                "the disk attached again".to_string()
            },
        )
        .await,
    );

    print_summary(
        "lost undo replies per saga node (a failure at the last node; the undo's effects \
         landed, its reply was lost):",
        "unwound",
        &cases,
    );
    let lost: usize = cases.iter().map(|c| c.lost).sum();
    println!(
        "  {lost} lost undo replies at {} undone saga nodes (the others have no undo), every \
         saga unwound completely",
        cases.len()
    );
    // Every node but the last of the sagas with more than one: 3 (create: its interfaces) + 6
    // (start: its mappings) + 7 + 1 + 1, of which 3 + 5 + 5 + 1 + 1 have an undo.
    assert_eq!((cases.len(), lost), (18, 15));
}

/// A disk-create request for a new 1 MiB blank disk in project `p`.
async fn disk_create_params(ctx: &TestContext) -> disk_create::Params {
    let id = DiskUuid::new_v4();
    let block_size = BlockSize::try_from(512u32).unwrap();
    disk_create::Params {
        disk_id: id,
        project_id: project_id(ctx).await,
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

/// A new detached disk, to delete.
async fn detached_disk(ctx: &TestContext) -> disk_delete::Params {
    let params = disk_create_params(ctx).await;
    let disk = ctx
        .nexus()
        .disk_create(params.project_id, params.create)
        .await
        .unwrap();
    disk_delete::Params { disk_id: disk.id() }
}

/// The disk's region rows, and how many of them the sled agents hold.
fn disk_regions(ctx: &TestContext, disk: DiskUuid) -> (usize, usize) {
    let rows = ctx.sql(&format!("SELECT id FROM region WHERE disk_id = '{disk}'"));
    let rows: Vec<&str> = rows.lines().filter(|l| !l.is_empty()).collect();
    let held = ctx
        .sleds
        .iter()
        .flat_map(|sled| sled.agent().regions_now().expect("a quiet sled agent"))
        .filter(|region| rows.contains(&region.region_id.to_string().as_str()))
        .count();
    (rows.len(), held)
}

/// Nothing live of the disk: no live record, no region row, and the sleds reserve exactly
/// what the remaining regions hold. (Regions on the sled agents the database does not have
/// are the invariant checker's to find, run before.)
fn disk_gone(ctx: &TestContext, disk: DiskUuid) -> String {
    let live = count(
        ctx,
        &format!("SELECT count(*) FROM disk WHERE id = '{disk}' AND time_deleted IS NULL"),
    );
    let (regions, _) = disk_regions(ctx, disk);
    assert_eq!((live, regions), (0, 0), "live disk records, region rows");
    "no disk, no region rows or regions on the sled agents".to_string()
}

#[tokio::test]
async fn disk_actions_notice_their_effects_after_a_lost_reply() {
    let ctx = TestContext::with_storage(3, ByteCount::from_gibibytes_u32(1)).await;
    let mut cases = Vec::new();
    cases.extend(
        lose_a_reply_at_every_node::<disk_create::SagaDiskCreate>(
            &ctx,
            async |ctx| disk_create_params(ctx).await,
            async |ctx, params| {
                let disks = count(
                    ctx,
                    &format!(
                        "SELECT count(*) FROM disk WHERE id = '{}' AND state = 'detached'",
                        params.disk_id
                    ),
                );
                let (regions, held) = disk_regions(ctx, params.disk_id);
                assert_eq!(
                    (disks, regions, held),
                    (1, 3, 3),
                    "disks, region rows, held"
                );
                format!("1 detached disk, {regions} region rows, {held} on the sled agents")
            },
        )
        .await,
    );
    cases.extend(
        lose_a_reply_at_every_node::<disk_delete::SagaDiskDelete>(
            &ctx,
            async |ctx| detached_disk(ctx).await,
            async |ctx, params| disk_gone(ctx, params.disk_id),
        )
        .await,
    );
    print_summary(
        "lost replies per disk saga node (the action's effects landed, its reply was lost):",
        "finished",
        &cases,
    );
    // Every node of the two sagas: 4 + 3.
    assert_eq!(cases.len(), 7);
}

#[tokio::test]
async fn disk_undos_notice_their_effects_after_a_lost_reply() {
    let ctx = TestContext::with_storage(3, ByteCount::from_gibibytes_u32(1)).await;
    let mut cases = Vec::new();
    cases.extend(
        lose_an_undo_reply_at_every_node::<disk_create::SagaDiskCreate>(
            &ctx,
            &["disk", "regions", "ensured"],
            async |ctx| disk_create_params(ctx).await,
            async |ctx, params| disk_gone(ctx, params.disk_id),
        )
        .await,
    );
    cases.extend(
        lose_an_undo_reply_at_every_node::<disk_delete::SagaDiskDelete>(
            &ctx,
            &["regions", "deleted"],
            async |ctx| detached_disk(ctx).await,
            async |ctx, params| {
                // Back as faulted with its regions (see disk_delete.rs); then deleted for good.
                let disk = ctx
                    .nexus()
                    .datastore()
                    .disk_fetch(params.disk_id)
                    .await
                    .unwrap();
                assert_eq!(disk.state(), halyard_common::DiskState::Faulted);
                assert_eq!(disk_regions(ctx, params.disk_id), (3, 3));
                ctx.nexus().disk_delete(&disk).await.unwrap();
                ctx.assert_quiet_and_consistent().await;
                disk_gone(ctx, params.disk_id);
                "faulted with its 3 regions, then deleted".to_string()
            },
        )
        .await,
    );
    print_summary(
        "lost undo replies per disk saga node (a failure at the last node; the undo's effects \
         landed, its reply was lost):",
        "unwound",
        &cases,
    );
    let lost: usize = cases.iter().map(|c| c.lost).sum();
    // Every node but the last: 3 + 2, all with an undo.
    assert_eq!((cases.len(), lost), (5, 5));
}

/// A snapshot-create of a new detached disk in project "p" (made on the first call).
async fn snapshot_create_params(ctx: &TestContext) -> snapshot_create::Params {
    let project = match ctx.nexus().project_view(&"p".parse().unwrap()).await {
        Ok(_) => halyard_common::NameOrId::Name("p".parse().unwrap()),
        Err(_) => ctx.project("p").await,
    };
    let disk_id = crate::instance_disks::detached_disk(
        ctx,
        &project,
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

/// The snapshot's region snapshot rows, and how many of them the sled agents hold.
fn snapshot_rows(ctx: &TestContext, snapshot: halyard_common::ids::SnapshotUuid) -> (usize, usize) {
    let rows = ctx.sql(&format!(
        "SELECT region_id || '.' || snapshot_id FROM region_snapshot \
         WHERE snapshot_id = '{snapshot}'"
    ));
    let rows: Vec<&str> = rows.lines().filter(|l| !l.is_empty()).collect();
    let held = ctx
        .sleds
        .iter()
        .flat_map(|sled| {
            sled.agent()
                .region_snapshots_now()
                .expect("a quiet sled agent")
        })
        .filter(|s| rows.contains(&format!("{}.{}", s.region_id, s.snapshot_id).as_str()))
        .count();
    (rows.len(), held)
}

fn snapshot_gone(ctx: &TestContext, snapshot: halyard_common::ids::SnapshotUuid) -> String {
    let live = count(
        ctx,
        &format!("SELECT count(*) FROM snapshot WHERE id = '{snapshot}' AND time_deleted IS NULL"),
    );
    let (rows, _) = snapshot_rows(ctx, snapshot);
    assert_eq!((live, rows), (0, 0), "live snapshots, region snapshot rows");
    "no snapshot, no region snapshot rows".to_string()
}

#[tokio::test]
async fn snapshot_actions_and_undos_notice_their_effects_after_a_lost_reply() {
    let ctx = TestContext::with_storage(3, ByteCount::from_gibibytes_u32(1)).await;
    let mut cases = Vec::new();
    cases.extend(
        lose_a_reply_at_every_node::<snapshot_create::SagaSnapshotCreate>(
            &ctx,
            async |ctx| snapshot_create_params(ctx).await,
            async |ctx, params| {
                let ready = count(
                    ctx,
                    &format!(
                        "SELECT count(*) FROM snapshot WHERE id = '{}' AND state = 'ready'",
                        params.snapshot_id
                    ),
                );
                let (rows, held) = snapshot_rows(ctx, params.snapshot_id);
                assert_eq!((ready, rows, held), (1, 3, 3), "ready, rows, held");
                format!("1 ready snapshot, {rows} region snapshot rows, {held} held")
            },
        )
        .await,
    );
    cases.extend(
        lose_a_reply_at_every_node::<snapshot_delete::SagaSnapshotDelete>(
            &ctx,
            async |ctx| {
                let params = snapshot_create_params(ctx).await;
                let snapshot_id = params.snapshot_id;
                ctx.nexus()
                    .run_saga::<snapshot_create::SagaSnapshotCreate>(params)
                    .await
                    .unwrap();
                snapshot_delete::Params { snapshot_id }
            },
            async |ctx, params| snapshot_gone(ctx, params.snapshot_id),
        )
        .await,
    );
    cases.extend(
        lose_an_undo_reply_at_every_node::<snapshot_create::SagaSnapshotCreate>(
            &ctx,
            &["snapshot", "reserved", "paused", "taken"],
            async |ctx| snapshot_create_params(ctx).await,
            async |ctx, params| snapshot_gone(ctx, params.snapshot_id),
        )
        .await,
    );
    print_summary(
        "lost replies per snapshot saga node (action or undo effects landed, reply lost):",
        "finished or unwound",
        &cases,
    );
    // Forward: 6 + 3 nodes; undos: every snapshot-create node but the last.
    assert_eq!(cases.len(), 6 + 3 + 5);
}

#[tokio::test]
async fn region_replacement_notices_its_effects_after_a_lost_reply() {
    use halyard_nexus::app::sagas::region_replace::SagaRegionReplace;
    // Nodes and undos: 4 + 3 cases, plus one listing of the DAG each.
    let system = crate::region_replacement::DegradedDisks::new(16).await;
    let mut cases = lose_a_reply_at_every_node::<SagaRegionReplace>(
        &system.ctx,
        async |_| system.next(),
        async |_, params| {
            system.assert_replaced(params);
            "3 regions on sleds in service, the lost one gone, no mark".to_string()
        },
    )
    .await;
    print_summary(
        "lost replies per region-replace node (the action's effects landed, its reply was lost):",
        "finished",
        &cases,
    );
    assert_eq!(cases.len(), 4);
    cases = lose_an_undo_reply_at_every_node::<SagaRegionReplace>(
        &system.ctx,
        &["begin", "region", "ensured"],
        async |_| system.next(),
        async |_, params| {
            system.assert_unreplaced(params);
            "degraded as before, no new region anywhere, no mark".to_string()
        },
    )
    .await;
    print_summary(
        "lost undo replies per region-replace node (a failure at the last node; the undo's \
         effects landed, its reply was lost):",
        "unwound",
        &cases,
    );
    let lost: usize = cases.iter().map(|c| c.lost).sum();
    assert_eq!((cases.len(), lost), (3, 3));
}
