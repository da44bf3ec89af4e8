//! Snapshots through the external API (the generated client, and raw JSON for what its types
//! cannot express): create, view, list, delete; bad input refused with nothing created; a
//! snapshot of a running instance's disk pauses and resumes its VMM; disks made from a
//! snapshot; a snapshot outlives its disk.

use crate::context::TestContext;
use crate::instance_disks::{context_with_storage, detached_disk};
use halyard_common::ids::{DiskUuid, GenericUuid, SnapshotUuid};
use halyard_common::{ByteCount, InstanceState, Name, NameOrId};
use halyard_nexus_external_client::types;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

fn client(ctx: &TestContext) -> halyard_nexus_external_client::Client {
    halyard_nexus_external_client::Client::new_with_client(
        &ctx.external_url(),
        crate::authn_support::http_client(&ctx.token),
    )
}

fn name(n: &str) -> Name {
    n.parse().unwrap()
}

fn by_id(id: impl GenericUuid) -> NameOrId {
    NameOrId::Id(id.into_untyped_uuid())
}

fn project() -> NameOrId {
    NameOrId::Name(name("p"))
}

async fn snapshot(
    ctx: &TestContext,
    snapshot_name: &str,
    disk: NameOrId,
) -> Result<types::Snapshot, halyard_nexus_external_client::Error<types::Error>> {
    client(ctx)
        .snapshot_create()
        .project(project())
        .body(types::SnapshotCreate {
            name: name(snapshot_name),
            description: format!("snapshot {snapshot_name}"),
            disk,
        })
        .send()
        .await
        .map(|r| r.into_inner())
}

fn status<T: std::fmt::Debug>(
    result: &Result<T, halyard_nexus_external_client::Error<types::Error>>,
) -> u16 {
    match result {
        Ok(found) => panic!("expected an error, got {found:?}"),
        Err(e) => e.status().expect("an HTTP error").as_u16(),
    }
}

/// The region snapshot rows of a snapshot: (region, sled, size), sorted.
fn region_snapshot_rows(ctx: &TestContext, snapshot: SnapshotUuid) -> String {
    ctx.sql(&format!(
        "SELECT region_id, sled_id, size_bytes FROM region_snapshot \
         WHERE snapshot_id = '{snapshot}' ORDER BY region_id"
    ))
}

/// The disk's regions as the same (region, sled, size) rows.
fn region_rows(ctx: &TestContext, disk: DiskUuid) -> String {
    ctx.sql(&format!(
        "SELECT id, sled_id, size_bytes FROM region WHERE disk_id = '{disk}' ORDER BY id"
    ))
}

/// What a refused request must leave as it was.
#[derive(Debug, PartialEq)]
struct Footprint {
    snapshot_rows: String,
    region_snapshots: String,
    reserved_storage: String,
    sagas: String,
}

fn footprint(ctx: &TestContext) -> Footprint {
    Footprint {
        snapshot_rows: ctx.sql("SELECT count(*) FROM snapshot"),
        region_snapshots: ctx.sql("SELECT count(*) FROM region_snapshot"),
        reserved_storage: ctx.sql("SELECT id, reserved_storage FROM sled ORDER BY id"),
        sagas: ctx.sql("SELECT count(*) FROM saga"),
    }
}

/// Every region snapshot the sled agents hold, as "region.snapshot", sorted.
async fn held_by_sled_agents(ctx: &TestContext) -> Vec<String> {
    let mut held = Vec::new();
    for i in 0..3 {
        let listed = ctx.sled_client(i).region_snapshot_list().await.unwrap();
        held.extend(
            listed
                .into_inner()
                .into_iter()
                .map(|s| format!("{}.{}", s.region_id, s.snapshot_id)),
        );
    }
    held.sort();
    held
}

#[tokio::test]
async fn a_snapshot_is_created_viewed_listed_and_deleted() {
    let ctx = context_with_storage().await;
    let p = ctx.project("p").await;
    let disk = detached_disk(&ctx, &p, "data").await;
    let reserved_before = ctx.sql("SELECT id, reserved_storage FROM sled ORDER BY id");

    let created = snapshot(&ctx, "first", NameOrId::Name(name("data")))
        .await
        .unwrap();
    assert_eq!(created.state, types::SnapshotState::Ready);
    assert_eq!(created.disk_id, disk);
    assert_eq!(created.size.to_bytes(), MIB);
    let snapshot_id = created.id;
    // One region snapshot beside each region, of its size, held by its sled agent, and
    // counted in its sled's reserved storage.
    let rows = region_snapshot_rows(&ctx, snapshot_id);
    assert_eq!(rows, region_rows(&ctx, disk));
    assert_eq!(rows.lines().filter(|l| !l.is_empty()).count(), 3);
    let mut expected: Vec<String> = ctx
        .sql(&format!(
            "SELECT region_id || '.' || snapshot_id FROM region_snapshot \
             WHERE snapshot_id = '{snapshot_id}'"
        ))
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    expected.sort();
    assert_eq!(held_by_sled_agents(&ctx).await, expected);
    assert_eq!(
        ctx.sql("SELECT DISTINCT reserved_storage FROM sled").trim(),
        (2 * MIB).to_string(),
        "each sled holds a region and its snapshot"
    );
    ctx.assert_quiet_and_consistent().await;

    // By name (with its project), by id (without), and listed.
    let by_name = client(&ctx)
        .snapshot_view()
        .snapshot(NameOrId::Name(name("first")))
        .project(project())
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_name, created);
    let by_id_view = client(&ctx)
        .snapshot_view()
        .snapshot(by_id(snapshot_id))
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id_view, created);
    use futures::TryStreamExt;
    let listed: Vec<types::Snapshot> = client(&ctx)
        .snapshot_list()
        .project(project())
        .stream()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed, vec![created.clone()]);

    // The name is taken while it lives.
    let before = footprint(&ctx);
    assert_eq!(
        status(&snapshot(&ctx, "first", NameOrId::Name(name("data"))).await),
        400
    );
    assert_eq!(footprint(&ctx), before);

    // Deleted: gone from the API, the database, the sled agents and the reserved storage.
    client(&ctx)
        .snapshot_delete()
        .snapshot(by_id(snapshot_id))
        .send()
        .await
        .unwrap();
    let gone = client(&ctx)
        .snapshot_view()
        .snapshot(by_id(snapshot_id))
        .send()
        .await;
    assert_eq!(status(&gone), 404);
    assert_eq!(region_snapshot_rows(&ctx, snapshot_id), "");
    assert!(held_by_sled_agents(&ctx).await.is_empty());
    assert_eq!(
        ctx.sql("SELECT id, reserved_storage FROM sled ORDER BY id"),
        reserved_before
    );
    // Its name is free again.
    snapshot(&ctx, "first", NameOrId::Name(name("data")))
        .await
        .unwrap();
    ctx.assert_quiet_and_consistent().await;
}

/// `POST /v1/snapshots?project=p` with a raw JSON body: the status.
async fn post_raw(ctx: &TestContext, body: &Value) -> u16 {
    crate::authn_support::http_client(&ctx.token)
        .post(format!("{}/v1/snapshots?project=p", ctx.external_url()))
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn bad_snapshot_requests_get_4xx_and_create_nothing() {
    let ctx = context_with_storage().await;
    let p = ctx.project("p").await;
    detached_disk(&ctx, &p, "data").await;
    let before = footprint(&ctx);
    for (body, expected) in [
        (
            json!({"name": "Bad Name", "description": "", "disk": "data"}),
            400,
        ),
        (
            json!({"name": "s", "description": "", "disk": "Not A Name"}),
            400,
        ),
        (
            json!({"name": "s", "description": "", "disk": "nosuchdisk"}),
            404,
        ),
        (
            json!({"name": "s", "description": "", "disk": uuid::Uuid::new_v4()}),
            404,
        ),
        (json!({"name": "s", "disk": "data"}), 400),
        (
            json!({"name": "s", "description": "\u{7}", "disk": "data"}),
            400,
        ),
    ] {
        assert_eq!(post_raw(&ctx, &body).await, expected, "{body}");
    }
    assert_eq!(footprint(&ctx), before);
    // A disk being created (or otherwise not detached or attached) cannot be snapshotted.
    ctx.sql("UPDATE disk SET state = 'faulted' WHERE name = 'data'");
    assert_eq!(
        post_raw(
            &ctx,
            &json!({"name": "s", "description": "", "disk": "data"})
        )
        .await,
        409
    );
    assert_eq!(footprint(&ctx), before);
}

#[tokio::test]
async fn a_snapshot_of_a_running_instances_disk_pauses_and_resumes_its_vmm() {
    let ctx = context_with_storage().await;
    let p = ctx.project("p").await;
    let instance = ctx.instance(&p, "vm", 1).await;
    let disk = detached_disk(&ctx, &p, "data").await;
    // Started first, the disk attached in the database afterwards: a simulated sled refuses a
    // VMM whose disks have no NBD replicas (simulated regions have no export), so an instance
    // with a disk cannot start on simulated sleds yet (see the report of this change).
    ctx.start(instance).await;
    ctx.wait_for(instance, InstanceState::Running).await;
    ctx.sql(&format!(
        "UPDATE disk SET state = 'attached', attach_instance_id = '{instance}', slot = 0 \
         WHERE id = '{disk}'"
    ));
    let vmm = ctx
        .nexus()
        .datastore()
        .instance_fetch_with_vmm(instance)
        .await
        .unwrap()
        .active_vmm
        .expect("running: an active VMM");

    let created = snapshot(&ctx, "live", by_id(disk)).await.unwrap();
    assert_eq!(created.state, types::SnapshotState::Ready);

    // The saga paused exactly this VMM (its node's recorded output) ...
    let paused = ctx.sql(
        "SELECT e.data FROM saga_node_event e JOIN saga s ON s.id = e.saga_id \
         WHERE s.name = 'snapshot-create' AND e.event_type = 'succeeded' \
         AND e.data ? 'propolis_id'",
    );
    assert!(
        paused.contains(&vmm.id().to_string()),
        "the pause node names the running VMM: {paused:?}"
    );
    // ... and the VMM runs again, its vCPUs resumed.
    let listed = ctx
        .sled_client_for(vmm.id())
        .await
        .vmm_list()
        .await
        .unwrap()
        .into_inner();
    let summary = listed
        .iter()
        .find(|v| v.propolis_id == vmm.id())
        .expect("the VMM runs");
    assert!(!summary.vcpus_paused, "resumed after the snapshot");
    ctx.wait_for(instance, InstanceState::Running).await;

    // A detached disk's snapshot pauses nothing.
    let other = detached_disk(&ctx, &p, "other").await;
    snapshot(&ctx, "cold", by_id(other)).await.unwrap();
    let pauses = ctx.sql(
        "SELECT count(*) FROM saga_node_event e JOIN saga s ON s.id = e.saga_id \
         WHERE s.name = 'snapshot-create' AND e.event_type = 'succeeded' \
         AND e.data ? 'propolis_id'",
    );
    assert_eq!(pauses.trim(), "1");
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn a_disk_is_made_from_a_snapshot_that_outlives_its_disk() {
    let ctx = context_with_storage().await;
    let p = ctx.project("p").await;
    let source = detached_disk(&ctx, &p, "source").await;
    let snap = snapshot(&ctx, "snap", by_id(source)).await.unwrap();

    // The source disk is deleted; the snapshot stays, with its region snapshots.
    ctx.nexus()
        .disk_delete(&ctx.nexus().datastore().disk_fetch(source).await.unwrap())
        .await
        .unwrap();
    let rows = region_snapshot_rows(&ctx, snap.id);
    assert_eq!(rows.lines().filter(|l| !l.is_empty()).count(), 3);
    let view = client(&ctx)
        .snapshot_view()
        .snapshot(by_id(snap.id))
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(view.state, types::SnapshotState::Ready);

    let from_snapshot = |disk_name: &str, size: u64| types::DiskCreate {
        name: name(disk_name),
        description: String::new(),
        disk_backend: types::DiskBackend::Distributed(types::DiskSource::Snapshot {
            snapshot_id: snap.id,
            read_only: false,
        }),
        size: ByteCount::try_from(size).unwrap(),
    };
    // A size other than the snapshot's is refused, creating nothing.
    let disks_before = ctx.sql("SELECT count(*) FROM disk");
    let refused = client(&ctx)
        .disk_create()
        .project(project())
        .body(from_snapshot("copy", 2 * MIB))
        .send()
        .await;
    assert_eq!(status(&refused), 400);
    assert_eq!(ctx.sql("SELECT count(*) FROM disk"), disks_before);

    let copy = client(&ctx)
        .disk_create()
        .project(project())
        .body(from_snapshot("copy", MIB))
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(copy.state, types::DiskState::Detached);
    assert_eq!(copy.size.to_bytes(), MIB);
    assert_eq!(
        region_rows(&ctx, copy.id)
            .lines()
            .filter(|l| !l.is_empty())
            .count(),
        3
    );
    ctx.assert_quiet_and_consistent().await;

    // Deleted, the snapshot leaves the disk made from it alone.
    client(&ctx)
        .snapshot_delete()
        .snapshot(by_id(snap.id))
        .send()
        .await
        .unwrap();
    let copy_now = client(&ctx)
        .disk_view()
        .disk(by_id(copy.id))
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(copy_now.state, types::DiskState::Detached);
    // A deleted snapshot makes no disk.
    let refused = client(&ctx)
        .disk_create()
        .project(project())
        .body(from_snapshot("again", MIB))
        .send()
        .await;
    assert_eq!(status(&refused), 404);
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn a_project_holding_only_a_snapshot_is_not_deleted() {
    let ctx = context_with_storage().await;
    let p = ctx.project("p").await;
    let source = detached_disk(&ctx, &p, "source").await;
    let snap = snapshot(&ctx, "snap", by_id(source)).await.unwrap();
    ctx.nexus()
        .disk_delete(&ctx.nexus().datastore().disk_fetch(source).await.unwrap())
        .await
        .unwrap();
    // Its snapshot would be left holding storage in a project nobody can name.
    let refused = client(&ctx)
        .project_delete()
        .project(project())
        .send()
        .await;
    assert_eq!(status(&refused), 400);
    let body = format!("{refused:?}");
    assert!(body.contains("snapshot"), "{body}");
    client(&ctx)
        .snapshot_delete()
        .snapshot(by_id(snap.id))
        .send()
        .await
        .unwrap();
    client(&ctx)
        .project_delete()
        .project(project())
        .send()
        .await
        .unwrap();
    ctx.assert_quiet_and_consistent().await;
}
