//! Disks through the external API (the generated client, and raw JSON for what the client's
//! types cannot even express): create, view, list, delete; bad input refused with nothing
//! created; capacity never over-committed when creates race for it; a delete that finds one
//! of its sleds expunged and gone.

use crate::context::TestContext;
use halyard_common::ids::{GenericUuid, SledUuid};
use halyard_common::{BlockSize, ByteCount, Name, NameOrId};
use halyard_nexus_external_client::types;
use serde_json::{Value, json};

const GIB: u64 = 1 << 30;

fn client(ctx: &TestContext) -> halyard_nexus_external_client::Client {
    halyard_nexus_external_client::Client::new_with_client(
        &ctx.external_url(),
        crate::authn_support::http_client(&ctx.token),
    )
}

fn name(n: &str) -> Name {
    n.parse().unwrap()
}

fn blank(disk: &str, size: u64, block_size: BlockSize) -> types::DiskCreate {
    types::DiskCreate {
        name: name(disk),
        description: format!("disk {disk}"),
        disk_backend: types::DiskBackend::Distributed(types::DiskSource::Blank { block_size }),
        size: ByteCount::try_from(size).unwrap(),
    }
}

/// What the tests compare before and after a refused request: live disks, every disk row,
/// regions, the sleds' reserved storage and the sagas recorded.
#[derive(Debug, PartialEq)]
struct Footprint {
    live_disks: String,
    disk_rows: String,
    regions: String,
    reserved_storage: String,
    sagas: String,
}

fn footprint(ctx: &TestContext) -> Footprint {
    Footprint {
        live_disks: ctx.sql("SELECT count(*) FROM disk WHERE time_deleted IS NULL"),
        disk_rows: ctx.sql("SELECT count(*) FROM disk"),
        regions: ctx.sql("SELECT count(*) FROM region"),
        reserved_storage: ctx.sql("SELECT id, reserved_storage FROM sled ORDER BY id"),
        sagas: ctx.sql("SELECT count(*) FROM saga"),
    }
}

/// `POST /v1/disks?project=p` with a raw JSON body: the status and the body.
async fn post_raw(ctx: &TestContext, body: &Value) -> (u16, Value) {
    let response = crate::authn_support::http_client(&ctx.token)
        .post(format!("{}/v1/disks?project=p", ctx.external_url()))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The sleds a disk's regions are on.
fn region_sleds(ctx: &TestContext, disk: impl std::fmt::Display) -> Vec<String> {
    ctx.sql(&format!(
        "SELECT sled_id FROM region WHERE disk_id = '{disk}' ORDER BY sled_id"
    ))
    .lines()
    .filter(|l| !l.is_empty())
    .map(str::to_string)
    .collect()
}

#[tokio::test]
async fn a_disk_is_created_viewed_listed_and_deleted() {
    let ctx = TestContext::with_storage(3, ByteCount::from_gibibytes_u32(4)).await;
    ctx.project("p").await;
    let client = client(&ctx);
    let project = NameOrId::Name(name("p"));

    let created = client
        .disk_create()
        .project(project.clone())
        .body(blank("data", GIB, BlockSize::try_from(4096u32).unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let created = created.into_inner();
    assert_eq!(created.state, types::DiskState::Detached);
    assert_eq!(created.size.to_bytes(), GIB);
    assert_eq!(created.block_size.to_bytes(), 4096);
    assert_eq!(created.disk_type, types::DiskType::Distributed);
    assert_eq!(created.device_path, "/dev/disk/by-id/virtio-data");
    assert!(!created.read_only);
    // Three regions of its size, on the three sleds, each held by its sled agent (the
    // checker compares the database with every sled agent).
    let sleds = region_sleds(&ctx, created.id);
    assert_eq!(sleds.len(), 3);
    let mut all: Vec<String> = (0..3).map(|i| ctx.sled_id(i).to_string()).collect();
    all.sort();
    assert_eq!(sleds, all);
    assert_eq!(
        ctx.sql("SELECT DISTINCT reserved_storage FROM sled").trim(),
        GIB.to_string()
    );
    ctx.assert_quiet_and_consistent().await;

    // By name (with its project) and by id (without).
    let by_name = client
        .disk_view()
        .disk(NameOrId::Name(name("data")))
        .project(project.clone())
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_name, created);
    let by_id = NameOrId::Id(created.id.into_untyped_uuid());
    let viewed = client
        .disk_view()
        .disk(by_id.clone())
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(viewed, created);
    for (disk, with_project, says) in [
        (by_id.clone(), true, "do not also give a project"),
        (
            NameOrId::Name(name("data")),
            false,
            "its project must be given",
        ),
    ] {
        let mut request = client.disk_view().disk(disk);
        if with_project {
            request = request.project(project.clone());
        }
        let err = request.send().await.unwrap_err();
        assert_eq!(err.status().unwrap().as_u16(), 400);
        let body = format!("{err:?}");
        assert!(body.contains(says), "{body}");
    }

    // A second disk; the list pages through both, by name.
    client
        .disk_create()
        .project(project.clone())
        .body(blank("logs", 512 * 3, BlockSize::try_from(512u32).unwrap()))
        .send()
        .await
        .unwrap();
    use futures::TryStreamExt;
    let listed: Vec<types::Disk> = client
        .disk_list()
        .project(project.clone())
        .limit(1u32)
        .stream()
        .try_collect()
        .await
        .unwrap();
    let names: Vec<String> = listed.iter().map(|d| d.name.to_string()).collect();
    assert_eq!(names, ["data", "logs"]);

    // Delete by name: gone, its regions and their storage released, its name free again.
    let deleted = client
        .disk_delete()
        .disk(NameOrId::Name(name("data")))
        .project(project.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let err = client
        .disk_view()
        .disk(by_id.clone())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.status().unwrap().as_u16(), 404);
    assert!(region_sleds(&ctx, created.id).is_empty());
    assert_eq!(
        ctx.sql("SELECT DISTINCT reserved_storage FROM sled").trim(),
        (512 * 3).to_string()
    );
    // Deleting it again: 404.
    let err = client.disk_delete().disk(by_id).send().await.unwrap_err();
    assert_eq!(err.status().unwrap().as_u16(), 404);
    let again = client
        .disk_create()
        .project(project.clone())
        .body(blank("data", GIB, BlockSize::try_from(4096u32).unwrap()))
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_ne!(again.id, created.id);
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn bad_disk_requests_are_refused_and_create_nothing() {
    let ctx = TestContext::with_storage(3, ByteCount::from_gibibytes_u32(4)).await;
    ctx.project("p").await;
    let blank_json = |disk: &str, size: u64, block_size: u64| {
        json!({
            "name": disk,
            "description": "",
            "size": size,
            "disk_backend": {"type": "distributed", "disk_source": {"type": "blank", "block_size": block_size}},
        })
    };
    // One disk that stays, so a duplicate name has something to collide with.
    let (status, body) = post_raw(&ctx, &blank_json("taken", GIB, 4096)).await;
    assert_eq!(status, 201, "{body}");
    let with_backend = |backend: Value| json!({"name": "d", "description": "", "size": GIB, "disk_backend": backend});
    let snapshot_id = uuid::Uuid::new_v4();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("size zero", blank_json("d", 0, 512), 400, "above zero"),
        (
            "size not a multiple of the block size",
            blank_json("d", GIB + 512, 4096),
            400,
            "whole number of blocks",
        ),
        (
            "size above the maximum",
            blank_json("d", 2048 * GIB, 4096),
            400,
            "at most",
        ),
        (
            "size far beyond i64",
            blank_json("d", u64::MAX - 4095, 4096),
            400,
            "",
        ),
        (
            "unknown block size",
            blank_json("d", GIB, 1000),
            400,
            "block",
        ),
        (
            "upper-case name",
            blank_json("Data", GIB, 4096),
            400,
            "name",
        ),
        (
            "name starting with a digit",
            blank_json("1d", GIB, 4096),
            400,
            "name",
        ),
        (
            "local backend",
            with_backend(json!({"type": "local"})),
            400,
            "local disks are not supported",
        ),
        (
            "from a snapshot that does not exist",
            with_backend(
                json!({"type": "distributed", "disk_source": {"type": "snapshot", "snapshot_id": snapshot_id}}),
            ),
            404,
            "not found: snapshot with id",
        ),
        (
            "read-only from a snapshot",
            with_backend(
                json!({"type": "distributed", "disk_source": {"type": "snapshot", "snapshot_id": snapshot_id, "read_only": true}}),
            ),
            400,
            "read-only disks are not supported",
        ),
        (
            "from an image",
            with_backend(
                json!({"type": "distributed", "disk_source": {"type": "image", "image_id": uuid::Uuid::new_v4()}}),
            ),
            400,
            "no images",
        ),
        (
            "importing blocks",
            with_backend(
                json!({"type": "distributed", "disk_source": {"type": "importing_blocks", "block_size": 512}}),
            ),
            400,
            "import blocks are not supported",
        ),
        (
            "description with a NUL",
            json!({"name": "d", "description": "a\u{0}b", "size": GIB,
                   "disk_backend": {"type": "distributed", "disk_source": {"type": "blank", "block_size": 512}}}),
            400,
            "description",
        ),
        // Oxide answers a taken name 400 ObjectAlreadyExists (as for instances here).
        (
            "duplicate name",
            blank_json("taken", GIB, 4096),
            400,
            "already exists: disk \"taken\"",
        ),
    ];
    let before = footprint(&ctx);
    for (what, body, want, says) in cases {
        let (status, answer) = post_raw(&ctx, &body).await;
        assert_eq!(status, want, "{what}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(says),
            "{what}: the message should say \"{says}\": {answer}"
        );
        assert_eq!(footprint(&ctx), before, "{what} changed something");
    }
    // Project-less creates and lists are refused too.
    let response = crate::authn_support::http_client(&ctx.token)
        .get(format!("{}/v1/disks", ctx.external_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(footprint(&ctx), before);
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn an_attached_disk_cannot_be_deleted() {
    let ctx = TestContext::with_storage(3, ByteCount::from_gibibytes_u32(1)).await;
    let project = ctx.project("p").await;
    let instance = ctx.instance(&project, "vm", 1).await;
    let client = client(&ctx);
    let disk = client
        .disk_create()
        .project(project.clone())
        .body(blank("d", GIB / 2, BlockSize::try_from(512u32).unwrap()))
        .send()
        .await
        .unwrap()
        .into_inner();
    // Attach it behind Nexus's back, in each state that names an instance.
    for state in ["attaching", "attached", "detaching"] {
        ctx.sql(&format!(
            "UPDATE disk SET state = '{state}', attach_instance_id = '{instance}', slot = 0 \
             WHERE id = '{}'",
            disk.id
        ));
        let before = footprint(&ctx);
        let err = client
            .disk_delete()
            .disk(NameOrId::Id(disk.id.into_untyped_uuid()))
            .send()
            .await
            .unwrap_err();
        assert_eq!(err.status().unwrap().as_u16(), 409, "{state}");
        let body = format!("{err:?}");
        assert!(body.contains("detach it from its instance first"), "{body}");
        assert_eq!(footprint(&ctx), before, "{state}");
    }
    ctx.sql(&format!(
        "UPDATE disk SET state = 'detached', attach_instance_id = NULL, slot = NULL WHERE id = '{}'",
        disk.id
    ));
    client
        .disk_delete()
        .disk(NameOrId::Id(disk.id.into_untyped_uuid()))
        .send()
        .await
        .unwrap();
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn racing_creates_never_over_commit_storage() {
    // Four sleds of 3 GiB: twelve 1 GiB region slots, so at most four 1 GiB disks (three or
    // four, depending on where the random placement put the first ones).
    let ctx = TestContext::with_storage(4, ByteCount::from_gibibytes_u32(3)).await;
    ctx.project("p").await;
    let client = client(&ctx);
    let attempts = 8;
    let creates = (0..attempts).map(|i| {
        let client = client.clone();
        async move {
            client
                .disk_create()
                .project(NameOrId::Name(name("p")))
                .body(blank(
                    &format!("d{i}"),
                    GIB,
                    BlockSize::try_from(4096u32).unwrap(),
                ))
                .send()
                .await
        }
    });
    let results = futures::future::join_all(creates).await;
    let mut created = 0;
    for result in &results {
        match result {
            Ok(disk) => {
                assert_eq!(disk.state, types::DiskState::Detached);
                created += 1;
            }
            Err(e) => {
                assert_eq!(e.status().unwrap().as_u16(), 507, "{e:?}");
                assert!(format!("{e:?}").contains("InsufficientCapacity"), "{e:?}");
            }
        }
    }
    assert!((3..=4).contains(&created), "{created} disks were created");
    assert_eq!(
        ctx.sql("SELECT count(*) FROM disk WHERE time_deleted IS NULL")
            .trim(),
        created.to_string()
    );
    assert_eq!(
        ctx.sql("SELECT count(*) FROM region").trim(),
        (created * 3).to_string()
    );
    assert_eq!(
        ctx.sql("SELECT sum(reserved_storage) FROM sled").trim(),
        (created * 3 * GIB).to_string()
    );
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn a_disk_needs_three_sleds_with_storage() {
    for ctx in [
        TestContext::with_storage(2, ByteCount::from_gibibytes_u32(8)).await,
        // Sleds with no storage at all (the default test context's).
        TestContext::with_sleds(3).await,
    ] {
        ctx.project("p").await;
        let client = client(&ctx);
        let err = client
            .disk_create()
            .project(NameOrId::Name(name("p")))
            .body(blank("d", GIB, BlockSize::try_from(512u32).unwrap()))
            .send()
            .await
            .unwrap_err();
        assert_eq!(err.status().unwrap().as_u16(), 507, "{err:?}");
        let body = format!("{err:?}");
        assert!(body.contains("needs 3"), "{body}");
        assert_eq!(
            ctx.sql("SELECT count(*) FROM disk WHERE time_deleted IS NULL")
                .trim(),
            "0"
        );
        assert_eq!(ctx.sql("SELECT count(*) FROM region").trim(), "0");
        assert_eq!(
            ctx.sql("SELECT sum(reserved_storage) FROM sled").trim(),
            "0"
        );
        ctx.assert_quiet_and_consistent().await;
    }
}

#[tokio::test]
async fn a_disk_on_an_expunged_sled_is_deleted_without_it() {
    let mut ctx = TestContext::with_storage(3, ByteCount::from_gibibytes_u32(1)).await;
    ctx.project("p").await;
    let client = client(&ctx);
    let disk = client
        .disk_create()
        .project(NameOrId::Name(name("p")))
        .body(blank("d", GIB / 4, BlockSize::try_from(512u32).unwrap()))
        .send()
        .await
        .unwrap()
        .into_inner();
    // One of its sleds dies (its agent stops answering) and is expunged.
    let gone = ctx.sleds.remove(2);
    let gone_id: SledUuid = gone.agent().id();
    gone.close().await.unwrap();
    ctx.nexus().sled_expunge(gone_id).await.unwrap();
    client
        .disk_delete()
        .disk(NameOrId::Id(disk.id.into_untyped_uuid()))
        .send()
        .await
        .unwrap();
    assert!(region_sleds(&ctx, disk.id).is_empty());
    assert_eq!(
        ctx.sql("SELECT sum(reserved_storage) FROM sled").trim(),
        "0"
    );
    ctx.assert_quiet_and_consistent().await;
}
