//! Disks on instances through the external API (the generated client): attach, detach, list;
//! the 409s; instance create and delete with disks; races of attach, detach, delete and start
//! on one disk and instance; and the disks the sled agent's VMM was registered with.

use crate::context::TestContext;
use halyard_common::ids::{DiskUuid, GenericUuid, InstanceUuid};
use halyard_common::{BlockSize, ByteCount, DiskState, InstanceState, Name, NameOrId};
use halyard_db_model::MAX_DISKS_PER_INSTANCE;
use halyard_nexus_external_api::params::{DiskBackend, DiskCreate, DiskSource};
use halyard_nexus_external_client::types;
use halyard_sled_agent_api::{VmmDisk, VmmRegisterBody};
use std::collections::BTreeSet;

fn url(ctx: &TestContext) -> String {
    format!("http://{}", ctx.server().external_address())
}

fn client(ctx: &TestContext) -> halyard_nexus_external_client::Client {
    halyard_nexus_external_client::Client::new_with_client(
        &url(ctx),
        crate::authn_support::http_client(&ctx.token),
    )
}

fn name(n: &str) -> Name {
    n.parse().unwrap()
}

fn by_id(id: impl GenericUuid) -> NameOrId {
    NameOrId::Id(id.into_untyped_uuid())
}

/// A new detached disk of 1 MiB in `project`, made by the disk-create saga (three regions
/// on three sleds with storage: see [`context_with_storage`]).
pub async fn detached_disk(ctx: &TestContext, project: &NameOrId, disk_name: &str) -> DiskUuid {
    let project = ctx
        .nexus()
        .datastore()
        .project_fetch(project)
        .await
        .unwrap();
    let block_size = BlockSize::try_from(512u32).unwrap();
    ctx.nexus()
        .disk_create(
            project.id(),
            DiskCreate {
                name: name(disk_name),
                description: String::new(),
                disk_backend: DiskBackend::Distributed(DiskSource::Blank { block_size }),
                size: ByteCount::from_mebibytes_u32(1),
            },
        )
        .await
        .unwrap()
        .id()
}

/// A system whose sleds hold regions: three (a disk's regions go on three), 4 GiB each.
pub async fn context_with_storage() -> TestContext {
    TestContext::with_storage(3, ByteCount::from_gibibytes_u32(4)).await
}

async fn attach(
    ctx: &TestContext,
    instance: InstanceUuid,
    disk: NameOrId,
) -> Result<types::Disk, halyard_nexus_external_client::Error<types::Error>> {
    client(ctx)
        .instance_disk_attach()
        .instance(by_id(instance))
        .body(types::DiskPath { disk })
        .send()
        .await
        .map(|r| r.into_inner())
}

async fn detach(
    ctx: &TestContext,
    instance: InstanceUuid,
    disk: NameOrId,
) -> Result<types::Disk, halyard_nexus_external_client::Error<types::Error>> {
    client(ctx)
        .instance_disk_detach()
        .instance(by_id(instance))
        .body(types::DiskPath { disk })
        .send()
        .await
        .map(|r| r.into_inner())
}

async fn listed(ctx: &TestContext, instance: InstanceUuid) -> Vec<types::Disk> {
    use futures::TryStreamExt;
    client(ctx)
        .instance_disk_list()
        .instance(by_id(instance))
        .stream()
        .try_collect()
        .await
        .unwrap()
}

fn status<T: std::fmt::Debug>(
    result: &Result<T, halyard_nexus_external_client::Error<types::Error>>,
) -> u16 {
    match result {
        Ok(_) => 202,
        Err(e) => e
            .status()
            .unwrap_or_else(|| panic!("no status: {result:?}"))
            .as_u16(),
    }
}

/// The disk's row as the database holds it: (state, instance, slot).
async fn disk_row(
    ctx: &TestContext,
    disk: DiskUuid,
) -> (DiskState, Option<InstanceUuid>, Option<i32>) {
    let found = ctx.nexus().datastore().disk_fetch(disk).await.unwrap();
    (found.state(), found.attached_to(), found.slot)
}

/// What must hold of every disk and instance at a quiet point: a disk names an instance iff it
/// is attached (or between states: never at a quiet point), with a slot, and that instance is
/// live; an instance's boot disk is attached to it; an instance with an active VMM was
/// registered with exactly its attached disks.
async fn assert_attachments_consistent(ctx: &TestContext) {
    let datastore = ctx.nexus().datastore();
    let disks = datastore.disk_list_all().await.unwrap();
    for disk in disks.iter().filter(|d| d.time_deleted.is_none()) {
        assert!(
            matches!(disk.state(), DiskState::Detached | DiskState::Attached),
            "disk {} is {} at a quiet point",
            disk.name(),
            disk.state()
        );
        assert_eq!(disk.attached_to().is_some(), disk.slot.is_some());
        if let Some(instance) = disk.attached_to() {
            datastore
                .instance_fetch(instance)
                .await
                .unwrap_or_else(|e| {
                    panic!("disk {} attached to a gone instance: {e}", disk.name())
                });
        }
    }
    for instance in datastore.instance_list_all(false).await.unwrap() {
        if let Some(boot) = instance.boot_disk() {
            let (state, to, _) = disk_row(ctx, boot).await;
            assert_eq!((state, to), (DiskState::Attached, Some(instance.id())));
        }
        if instance.runtime.active_vmm().is_some() {
            let view = ctx.view(instance.id()).await;
            if view.run_state() == InstanceState::Running {
                assert_vmm_has_disks(ctx, instance.id()).await;
            }
        }
    }
    ctx.assert_quiet_and_consistent().await;
}

/// The disks as the instance's VMM must have been registered with: attached, boot first, then
/// by slot.
fn expected_vmm_disks(attached: Vec<halyard_db_queries::AttachedDisk>) -> Vec<VmmDisk> {
    attached
        .into_iter()
        .map(|a| VmmDisk {
            disk_id: a.disk.id(),
            name: a.disk.name().to_string(),
            size: a.disk.size(),
            block_size: a.disk.block_size(),
            replicas: Vec::new(),
        })
        .collect()
}

/// Asks the sled agent running the instance's VMM to register it again with the body Nexus
/// must have sent: the sled agent answers a repeat with the same body and refuses (409) a
/// different one, so this passes only if its VMM has exactly these disks. Returns the disks.
async fn assert_vmm_has_disks(ctx: &TestContext, instance: InstanceUuid) -> Vec<VmmDisk> {
    let vmm = ctx.active_vmm(instance).await;
    let sled = ctx.sled_client_for(vmm).await;
    let found = ctx
        .nexus()
        .datastore()
        .instance_fetch(instance)
        .await
        .unwrap();
    let disks = expected_vmm_disks(
        ctx.nexus()
            .datastore()
            .instance_attached_disks(instance)
            .await
            .unwrap(),
    );
    let nics: Vec<_> = ctx
        .nexus()
        .datastore()
        .instance_network_interfaces(instance)
        .await
        .unwrap()
        .into_iter()
        .map(halyard_nexus::app::sagas::vmm_nic)
        .collect();
    let body = |disks: Vec<VmmDisk>| VmmRegisterBody {
        instance_id: instance,
        ncpus: u16::try_from(found.ncpus).unwrap(),
        memory: found.memory.0,
        hostname: found.hostname.clone(),
        migration_target: None,
        disks,
        nics: nics.clone(),
    };
    sled.vmm_register(&vmm, &body(disks.clone()))
        .await
        .unwrap_or_else(|e| panic!("the VMM was registered with other disks than {disks:?}: {e}"));
    // The check can fail: a body with one disk fewer (or one more) is refused.
    let mut other = disks.clone();
    if other.pop().is_none() {
        other.push(VmmDisk {
            disk_id: DiskUuid::new_v4(),
            name: "not-attached".into(),
            size: ByteCount::from_gibibytes_u32(1),
            block_size: BlockSize::try_from(512u32).unwrap(),
            replicas: Vec::new(),
        });
    }
    let refused = sled.vmm_register(&vmm, &body(other)).await.unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(409));
    disks
}

#[tokio::test]
async fn attach_detach_and_list_through_the_api() {
    let ctx = context_with_storage().await;
    let project = ctx.project("p").await;
    let instance = ctx.instance(&project, "vm", 1).await;
    let other = ctx.instance(&project, "other", 1).await;
    let a = detached_disk(&ctx, &project, "a").await;
    let b = detached_disk(&ctx, &project, "b").await;

    // By name (in the instance's project) and by id.
    let attached = attach(&ctx, instance, NameOrId::Name(name("a")))
        .await
        .unwrap();
    assert_eq!(attached.state, types::DiskState::Attached(instance));
    assert_eq!(attached.device_path, "/dev/disk/by-id/virtio-a");
    attach(&ctx, instance, by_id(b)).await.unwrap();
    assert_eq!(
        disk_row(&ctx, a).await,
        (DiskState::Attached, Some(instance), Some(0))
    );
    assert_eq!(
        disk_row(&ctx, b).await,
        (DiskState::Attached, Some(instance), Some(1))
    );
    let names: Vec<String> = listed(&ctx, instance)
        .await
        .iter()
        .map(|d| d.name.to_string())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert!(listed(&ctx, other).await.is_empty());

    // Already attached (here or elsewhere): 409, nothing changes.
    assert_eq!(status(&attach(&ctx, instance, by_id(a)).await), 409);
    assert_eq!(status(&attach(&ctx, other, by_id(a)).await), 409);
    // Detaching from the wrong instance: 409.
    assert_eq!(status(&detach(&ctx, other, by_id(a)).await), 409);
    assert_eq!(
        disk_row(&ctx, a).await,
        (DiskState::Attached, Some(instance), Some(0))
    );
    // An unknown disk: 404.
    assert_eq!(
        status(&attach(&ctx, instance, NameOrId::Name(name("nope"))).await),
        404
    );

    let detached = detach(&ctx, instance, NameOrId::Name(name("a")))
        .await
        .unwrap();
    assert_eq!(detached.state, types::DiskState::Detached);
    assert_eq!(disk_row(&ctx, a).await, (DiskState::Detached, None, None));
    assert_eq!(status(&detach(&ctx, instance, by_id(a)).await), 409);
    let names: Vec<String> = listed(&ctx, instance)
        .await
        .iter()
        .map(|d| d.name.to_string())
        .collect();
    assert_eq!(names, ["b"]);
    // Now it attaches elsewhere.
    attach(&ctx, other, by_id(a)).await.unwrap();
    assert_attachments_consistent(&ctx).await;
}

#[tokio::test]
async fn a_running_instance_refuses_attach_and_detach_and_its_vmm_has_its_disks() {
    let ctx = context_with_storage().await;
    let project = ctx.project("p").await;
    let instance = ctx.instance(&project, "vm", 1).await;
    let data = detached_disk(&ctx, &project, "data").await;
    let logs = detached_disk(&ctx, &project, "logs").await;
    let spare = detached_disk(&ctx, &project, "spare").await;
    attach(&ctx, instance, by_id(data)).await.unwrap();
    attach(&ctx, instance, by_id(logs)).await.unwrap();

    ctx.start(instance).await;
    ctx.wait_for(instance, InstanceState::Running).await;
    let disks = assert_vmm_has_disks(&ctx, instance).await;
    let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["data", "logs"], "by slot");

    assert_eq!(status(&attach(&ctx, instance, by_id(spare)).await), 409);
    assert_eq!(status(&detach(&ctx, instance, by_id(data)).await), 409);
    assert_eq!(
        disk_row(&ctx, spare).await,
        (DiskState::Detached, None, None)
    );
    assert_eq!(
        disk_row(&ctx, data).await,
        (DiskState::Attached, Some(instance), Some(0))
    );
    assert_attachments_consistent(&ctx).await;

    // Stopped, it may change again.
    ctx.stop(instance).await;
    ctx.wait_for(instance, InstanceState::Stopped).await;
    detach(&ctx, instance, by_id(data)).await.unwrap();
    attach(&ctx, instance, by_id(spare)).await.unwrap();
    ctx.start(instance).await;
    ctx.wait_for(instance, InstanceState::Running).await;
    let names: Vec<String> = assert_vmm_has_disks(&ctx, instance)
        .await
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["spare", "logs"], "spare took the free slot 0");
    assert_attachments_consistent(&ctx).await;
}

#[tokio::test]
async fn a_ninth_disk_is_refused() {
    let ctx = context_with_storage().await;
    let project = ctx.project("p").await;
    let instance = ctx.instance(&project, "vm", 1).await;
    for i in 0..MAX_DISKS_PER_INSTANCE {
        let disk = detached_disk(&ctx, &project, &format!("d{i}")).await;
        attach(&ctx, instance, by_id(disk)).await.unwrap();
    }
    let ninth = detached_disk(&ctx, &project, "ninth").await;
    let refused = attach(&ctx, instance, by_id(ninth)).await;
    assert_eq!(status(&refused), 409);
    let message = format!("{refused:?}");
    assert!(message.contains("8 disks"), "{message}");
    assert_eq!(
        disk_row(&ctx, ninth).await,
        (DiskState::Detached, None, None)
    );
    assert_eq!(listed(&ctx, instance).await.len(), MAX_DISKS_PER_INSTANCE);

    // A create asking for nine: 400, nothing created.
    let mut create = types::InstanceCreate::builder()
        .name(name("nine"))
        .description("")
        .hostname("nine")
        .ncpus(1u16)
        .memory(ByteCount::from_gibibytes_u32(1))
        .start(false);
    let mut disks = Vec::new();
    for i in 0..9 {
        let n = format!("n{i}");
        detached_disk(&ctx, &project, &n).await;
        disks.push(types::InstanceDiskAttachment::Attach { name: name(&n) });
    }
    create = create.disks(disks);
    let refused = client(&ctx)
        .instance_create()
        .project(project.clone())
        .body(create)
        .send()
        .await;
    assert_eq!(refused.unwrap_err().status().map(|s| s.as_u16()), Some(400));
    assert_eq!(
        ctx.sql("SELECT count(*) FROM instance WHERE name = 'nine'")
            .trim(),
        "0"
    );
    assert_eq!(
        ctx.sql("SELECT count(*) FROM saga WHERE name = 'instance-create'")
            .trim(),
        "1"
    );
    assert_attachments_consistent(&ctx).await;
}

#[tokio::test]
async fn create_with_disks_attaches_them_boot_disk_first_and_delete_detaches_them() {
    let ctx = context_with_storage().await;
    let project = ctx.project("p").await;
    let boot = detached_disk(&ctx, &project, "boot").await;
    let data = detached_disk(&ctx, &project, "data").await;
    let created = client(&ctx)
        .instance_create()
        .project(project.clone())
        .body(
            types::InstanceCreate::builder()
                .name(name("vm"))
                .description("")
                .hostname("vm")
                .ncpus(1u16)
                .memory(ByteCount::from_gibibytes_u32(1))
                .start(true)
                .boot_disk(Some(types::InstanceDiskAttachment::Attach {
                    name: name("boot"),
                }))
                .disks(vec![types::InstanceDiskAttachment::Attach {
                    name: name("data"),
                }]),
        )
        .send()
        .await
        .unwrap()
        .into_inner();
    let instance = created.id;
    assert_eq!(created.boot_disk_id, Some(boot.into_untyped_uuid()));
    assert_eq!(
        disk_row(&ctx, boot).await,
        (DiskState::Attached, Some(instance), Some(0))
    );
    assert_eq!(
        disk_row(&ctx, data).await,
        (DiskState::Attached, Some(instance), Some(1))
    );
    ctx.wait_for(instance, InstanceState::Running).await;
    let names: Vec<String> = assert_vmm_has_disks(&ctx, instance)
        .await
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["boot", "data"]);
    assert_attachments_consistent(&ctx).await;

    ctx.stop(instance).await;
    ctx.wait_for(instance, InstanceState::Stopped).await;
    // The boot disk stays: detaching it is refused.
    assert_eq!(status(&detach(&ctx, instance, by_id(boot)).await), 409);
    client(&ctx)
        .instance_delete()
        .instance(by_id(instance))
        .send()
        .await
        .unwrap();
    assert_eq!(
        disk_row(&ctx, boot).await,
        (DiskState::Detached, None, None)
    );
    assert_eq!(
        disk_row(&ctx, data).await,
        (DiskState::Detached, None, None)
    );
    assert_attachments_consistent(&ctx).await;
}

#[tokio::test]
async fn a_create_whose_disk_is_taken_creates_nothing_and_attaches_nothing() {
    let ctx = context_with_storage().await;
    let project = ctx.project("p").await;
    let holder = ctx.instance(&project, "holder", 1).await;
    let free = detached_disk(&ctx, &project, "free").await;
    let taken = detached_disk(&ctx, &project, "taken").await;
    attach(&ctx, holder, by_id(taken)).await.unwrap();
    let refused = client(&ctx)
        .instance_create()
        .project(project.clone())
        .body(
            types::InstanceCreate::builder()
                .name(name("vm"))
                .description("")
                .hostname("vm")
                .ncpus(1u16)
                .memory(ByteCount::from_gibibytes_u32(1))
                .start(false)
                .disks(vec![
                    types::InstanceDiskAttachment::Attach { name: name("free") },
                    types::InstanceDiskAttachment::Attach {
                        name: name("taken"),
                    },
                ]),
        )
        .send()
        .await;
    assert_eq!(refused.unwrap_err().status().map(|s| s.as_u16()), Some(409));
    // The disk it had attached before it failed is detached again; the other stays.
    assert_eq!(
        disk_row(&ctx, free).await,
        (DiskState::Detached, None, None)
    );
    assert_eq!(
        disk_row(&ctx, taken).await,
        (DiskState::Attached, Some(holder), Some(0))
    );
    assert_eq!(
        ctx.sql("SELECT count(*) FROM instance WHERE name = 'vm' AND time_deleted IS NULL")
            .trim(),
        "0"
    );
    // The same disk named twice, or an unknown disk: refused before any saga.
    for disks in [
        vec![
            types::InstanceDiskAttachment::Attach { name: name("free") },
            types::InstanceDiskAttachment::Attach { name: name("free") },
        ],
        vec![types::InstanceDiskAttachment::Attach { name: name("nope") }],
    ] {
        let refused = client(&ctx)
            .instance_create()
            .project(project.clone())
            .body(
                types::InstanceCreate::builder()
                    .name(name("vm"))
                    .description("")
                    .hostname("vm")
                    .ncpus(1u16)
                    .memory(ByteCount::from_gibibytes_u32(1))
                    .start(false)
                    .disks(disks),
            )
            .send()
            .await;
        let code = refused.unwrap_err().status().map(|s| s.as_u16());
        assert!(matches!(code, Some(400 | 404)), "{code:?}");
    }
    assert_attachments_consistent(&ctx).await;
}

/// Rounds of conflicting requests on one disk and two instances at once: two attaches of the
/// disk (to each instance) with a start of the first; then a detach racing the delete of the
/// instance that has it; then an attach racing the disk's delete. Exactly one attach wins; a start that wins after the attach runs a
/// VMM with the disk, one that wins before it leaves the disk detached (or attached to the
/// other instance); a delete leaves the disk detached; nothing is left between states.
#[tokio::test]
async fn racing_attach_detach_delete_and_start_on_one_disk_and_instance() {
    let ctx = context_with_storage().await;
    let project = ctx.project("p").await;
    let mut seen = BTreeSet::new();
    let mut deletes = BTreeSet::new();
    for round in 0..6 {
        let first = ctx.instance(&project, &format!("first-{round}"), 1).await;
        let second = ctx.instance(&project, &format!("second-{round}"), 1).await;
        let disk = detached_disk(&ctx, &project, &format!("d-{round}")).await;
        let api = client(&ctx);
        let (to_first, to_second, started) = tokio::join!(
            attach(&ctx, first, by_id(disk)),
            attach(&ctx, second, by_id(disk)),
            api.instance_start().instance(by_id(first)).send(),
        );
        let won = [&to_first, &to_second].iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {to_first:?} {to_second:?}");
        for lost in [&to_first, &to_second].into_iter().filter(|r| r.is_err()) {
            assert_eq!(status(lost), 409, "{lost:?}");
        }
        let owner = if to_first.is_ok() { first } else { second };
        assert_eq!(disk_row(&ctx, disk).await.1, Some(owner));
        let started = started.is_ok();
        seen.insert((to_first.is_ok(), started));
        if started {
            ctx.wait_for(first, InstanceState::Running).await;
            // Whoever won, the VMM has exactly the disks the database says are attached.
            let disks = assert_vmm_has_disks(&ctx, first).await;
            assert_eq!(disks.len(), usize::from(owner == first));
            ctx.stop(first).await;
            ctx.wait_for(first, InstanceState::Stopped).await;
        }

        let (detached, deleted) = tokio::join!(
            detach(&ctx, owner, by_id(disk)),
            api.instance_delete().instance(by_id(owner)).send(),
        );
        // Both may win (the detach first); whatever happened, the disk ends detached.
        assert!(
            detached.is_ok() || deleted.is_ok(),
            "{detached:?} {deleted:?}"
        );
        if let Err(e) = &detached {
            assert!(
                matches!(e.status().map(|s| s.as_u16()), Some(404 | 409)),
                "{e:?}"
            );
        }
        deleted.unwrap();
        assert_eq!(
            disk_row(&ctx, disk).await,
            (DiskState::Detached, None, None)
        );

        // An attach racing the disk's delete: exactly one wins.
        let survivor = if owner == first { second } else { first };
        let (attached, disk_deleted) = tokio::join!(
            attach(&ctx, survivor, by_id(disk)),
            api.disk_delete().disk(by_id(disk)).send(),
        );
        assert!(
            attached.is_ok() != disk_deleted.is_ok(),
            "round {round}: {attached:?} {disk_deleted:?}"
        );
        let live = ctx.nexus().datastore().disk_fetch(disk).await;
        if attached.is_ok() {
            assert_eq!(live.unwrap().attached_to(), Some(survivor));
        } else {
            assert!(live.is_err(), "the deleted disk is still live");
        }
        deletes.insert((attached.is_ok(), disk_deleted.is_ok()));
        assert_attachments_consistent(&ctx).await;
    }
    eprintln!("(attach to first won, start won) outcomes seen: {seen:?}");
    eprintln!("(attach won, disk delete won) outcomes seen: {deletes:?}");
}

fn new_disk(disk_name: &str) -> types::InstanceDiskAttachment {
    types::InstanceDiskAttachment::Create {
        name: name(disk_name),
        description: String::new(),
        disk_backend: types::DiskBackend::Distributed(types::DiskSource::Blank {
            block_size: BlockSize::try_from(512u32).unwrap(),
        }),
        size: ByteCount::from_mebibytes_u32(64),
    }
}

/// Live disks of that name, and the region rows of every disk (deleted or not) of that name.
fn disks_and_regions_named(ctx: &TestContext, disk_name: &str) -> (String, String) {
    (
        ctx.sql(&format!(
            "SELECT count(*) FROM disk WHERE name = '{disk_name}' AND time_deleted IS NULL"
        ))
        .trim()
        .to_string(),
        ctx.sql(&format!(
            "SELECT count(*) FROM region r JOIN disk d ON d.id = r.disk_id \
             WHERE d.name = '{disk_name}'"
        ))
        .trim()
        .to_string(),
    )
}

#[tokio::test]
async fn create_makes_its_new_disks_and_delete_deletes_them_but_not_the_attached_ones() {
    let ctx = context_with_storage().await;
    let project = ctx.project("p").await;
    let kept = detached_disk(&ctx, &project, "kept").await;
    let created = client(&ctx)
        .instance_create()
        .project(project.clone())
        .body(
            types::InstanceCreate::builder()
                .name(name("vm"))
                .description("")
                .hostname("vm")
                .ncpus(1u16)
                .memory(ByteCount::from_gibibytes_u32(1))
                .start(true)
                .boot_disk(Some(new_disk("root")))
                .disks(vec![types::InstanceDiskAttachment::Attach {
                    name: name("kept"),
                }]),
        )
        .send()
        .await
        .unwrap()
        .into_inner();
    let instance = created.id;
    let root = ctx
        .nexus()
        .datastore()
        .disk_fetch_by_name(
            ctx.nexus()
                .datastore()
                .project_fetch(&project)
                .await
                .unwrap()
                .id(),
            &name("root"),
        )
        .await
        .unwrap();
    assert_eq!(created.boot_disk_id, Some(root.id().into_untyped_uuid()));
    assert_eq!(root.created_by(), Some(instance));
    assert_eq!(
        disk_row(&ctx, root.id()).await,
        (DiskState::Attached, Some(instance), Some(0))
    );
    assert_eq!(
        disk_row(&ctx, kept).await,
        (DiskState::Attached, Some(instance), Some(1))
    );
    assert_eq!(
        disks_and_regions_named(&ctx, "root"),
        ("1".into(), "3".into())
    );
    ctx.wait_for(instance, InstanceState::Running).await;
    let names: Vec<String> = assert_vmm_has_disks(&ctx, instance)
        .await
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["root", "kept"]);
    // Deleting the boot disk is refused while the instance has it.
    let refused = client(&ctx)
        .disk_delete()
        .disk(by_id(root.id()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(409));
    assert_attachments_consistent(&ctx).await;

    ctx.stop(instance).await;
    ctx.wait_for(instance, InstanceState::Stopped).await;
    client(&ctx)
        .instance_delete()
        .instance(by_id(instance))
        .send()
        .await
        .unwrap();
    // The disk it made is gone with its regions; the one it attached is detached, kept.
    assert_eq!(
        disks_and_regions_named(&ctx, "root"),
        ("0".into(), "0".into())
    );
    assert_eq!(
        disk_row(&ctx, kept).await,
        (DiskState::Detached, None, None)
    );
    assert_attachments_consistent(&ctx).await;
}

#[tokio::test]
async fn a_failed_create_leaves_no_disk_it_made() {
    let ctx = context_with_storage().await;
    let project = ctx.project("p").await;
    let holder = ctx.instance(&project, "holder", 1).await;
    let taken = detached_disk(&ctx, &project, "taken").await;
    attach(&ctx, holder, by_id(taken)).await.unwrap();
    let refused = client(&ctx)
        .instance_create()
        .project(project.clone())
        .body(
            types::InstanceCreate::builder()
                .name(name("vm"))
                .description("")
                .hostname("vm")
                .ncpus(1u16)
                .memory(ByteCount::from_gibibytes_u32(1))
                .start(false)
                .boot_disk(Some(new_disk("fresh")))
                .disks(vec![types::InstanceDiskAttachment::Attach {
                    name: name("taken"),
                }]),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        refused.status().map(|s| s.as_u16()),
        Some(409),
        "{refused:?}"
    );
    // The disk-create subsaga unwound: no live disk, no region, nothing on the sled agents
    // (the invariant checker compares each sled agent's regions with the database).
    assert_eq!(
        disks_and_regions_named(&ctx, "fresh"),
        ("0".into(), "0".into())
    );
    assert_eq!(
        disk_row(&ctx, taken).await,
        (DiskState::Attached, Some(holder), Some(0))
    );
    assert_attachments_consistent(&ctx).await;
}
