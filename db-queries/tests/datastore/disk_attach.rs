//! Attaching disks to instances and detaching them: the rules the database keeps (stopped
//! instances only, one instance per disk, at most 8 per instance, the boot disk stays) and
//! the race with an instance start.

use crate::Harness;
use halyard_common::ids::{DiskUuid, InstanceUuid, VmmUuid};
use halyard_common::{BlockSize, ByteCount, DiskState, Error};
use halyard_db_model::{Disk, MAX_DISKS_PER_INSTANCE, NewDiskParams, Project};
use halyard_db_queries::{DiskTransition, InstanceForDisks, TransitionOutcome};
use std::collections::BTreeSet;

impl Harness {
    /// A detached disk (as its create saga leaves it).
    async fn detached_disk(&self, project: &Project, name: &str) -> Disk {
        let disk = self
            .datastore
            .disk_insert(NewDiskParams {
                id: DiskUuid::new_v4(),
                project_id: project.id(),
                name: name.parse().unwrap(),
                description: String::new(),
                size: ByteCount::from_gibibytes_u32(1),
                block_size: BlockSize::try_from(4096u32).unwrap(),
                created_by_instance_id: None,
            })
            .await
            .expect("insert disk");
        let detached = self
            .datastore
            .disk_transition(disk.id(), &[DiskState::Creating], DiskState::Detached)
            .await
            .unwrap();
        detached.disk().clone()
    }

    async fn attach(&self, instance: InstanceUuid, disk: DiskUuid) -> Result<Disk, Error> {
        self.datastore
            .disk_attach_begin(instance, disk, InstanceForDisks::Stopped)
            .await?;
        match self.datastore.disk_attach_finish(instance, disk).await? {
            DiskTransition::Applied(d) | DiskTransition::AlreadyDone(d) => Ok(d),
            DiskTransition::Conflict(d) => Err(Error::conflict(format!("{d:?}"))),
        }
    }

    async fn detach(&self, instance: InstanceUuid, disk: DiskUuid) -> Result<Disk, Error> {
        self.datastore.disk_detach_begin(instance, disk).await?;
        match self.datastore.disk_detach_finish(instance, disk).await? {
            DiskTransition::Applied(d) | DiskTransition::AlreadyDone(d) => Ok(d),
            DiskTransition::Conflict(d) => Err(Error::conflict(format!("{d:?}"))),
        }
    }
}

fn is_conflict<T: std::fmt::Debug>(result: &Result<T, Error>) -> bool {
    matches!(result, Err(Error::Conflict { .. }))
}

#[tokio::test]
async fn attach_takes_the_lowest_free_slot_and_detach_frees_it() {
    let h = Harness::new();
    let project = h.project("p").await;
    let instance = h.stopped_instance(&project, "i").await;
    let a = h.detached_disk(&project, "a").await;
    let b = h.detached_disk(&project, "b").await;
    let c = h.detached_disk(&project, "c").await;

    let attached_a = h.attach(instance.id(), a.id()).await.unwrap();
    assert_eq!(attached_a.state(), DiskState::Attached);
    assert_eq!(attached_a.attached_to(), Some(instance.id()));
    assert_eq!(attached_a.slot, Some(0));
    assert_eq!(h.attach(instance.id(), b.id()).await.unwrap().slot, Some(1));
    // A repeat of either step changes nothing.
    assert!(matches!(
        h.datastore
            .disk_attach_begin(instance.id(), a.id(), InstanceForDisks::Stopped)
            .await
            .unwrap(),
        DiskTransition::AlreadyDone(_)
    ));

    let detached = h.detach(instance.id(), a.id()).await.unwrap();
    assert_eq!(detached.state(), DiskState::Detached);
    assert_eq!((detached.attached_to(), detached.slot), (None, None));
    // Slot 0 is free again.
    assert_eq!(h.attach(instance.id(), c.id()).await.unwrap().slot, Some(0));

    let attached = h
        .datastore
        .instance_attached_disks(instance.id())
        .await
        .unwrap();
    let names: Vec<String> = attached.iter().map(|d| d.disk.name().to_string()).collect();
    assert_eq!(names, ["c", "b"], "in slot order");
}

#[tokio::test]
async fn attach_and_detach_refuse_what_the_rules_forbid() {
    let h = Harness::new();
    let project = h.project("p").await;
    let instance = h.stopped_instance(&project, "i").await;
    let other = h.stopped_instance(&project, "other").await;
    let disk = h.detached_disk(&project, "d").await;

    // Detaching a disk that is not attached, or attached elsewhere.
    assert!(is_conflict(&h.detach(instance.id(), disk.id()).await));
    h.attach(other.id(), disk.id()).await.unwrap();
    assert!(is_conflict(&h.attach(instance.id(), disk.id()).await));
    assert!(is_conflict(&h.detach(instance.id(), disk.id()).await));
    let still = h.datastore.disk_fetch(disk.id()).await.unwrap();
    assert_eq!(still.attached_to(), Some(other.id()));
    assert_eq!(still.state(), DiskState::Attached);

    // A disk of another project.
    let elsewhere = h.project("q").await;
    let foreign = h.detached_disk(&elsewhere, "f").await;
    assert!(matches!(
        h.attach(instance.id(), foreign.id()).await,
        Err(Error::InvalidRequest { .. })
    ));

    // A running (claimed) instance.
    let free = h.detached_disk(&project, "free").await;
    let (claimed, _) = h
        .datastore
        .instance_claim_for_start(instance.id(), VmmUuid::new_v4())
        .await
        .unwrap();
    assert_eq!(claimed, TransitionOutcome::Applied);
    assert!(is_conflict(&h.attach(instance.id(), free.id()).await));
    assert_eq!(
        h.datastore.disk_fetch(free.id()).await.unwrap().state(),
        DiskState::Detached
    );
}

#[tokio::test]
async fn an_instance_has_at_most_eight_disks_even_when_attaches_race() {
    let h = Harness::new();
    let project = h.project("p").await;
    let instance = h.stopped_instance(&project, "i").await.id();
    let mut disks = Vec::new();
    for i in 0..12 {
        disks.push(h.detached_disk(&project, &format!("d{i}")).await.id());
    }
    let h = std::sync::Arc::new(h);
    let mut tasks = tokio::task::JoinSet::new();
    for disk in disks {
        let h = h.clone();
        tasks.spawn(async move { h.attach(instance, disk).await });
    }
    let outcomes = tasks.join_all().await;
    let won: Vec<&Disk> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(won.len(), MAX_DISKS_PER_INSTANCE, "{outcomes:?}");
    assert!(outcomes.iter().filter(|o| o.is_err()).all(is_conflict));
    let slots: BTreeSet<Option<i32>> = won.iter().map(|d| d.slot).collect();
    assert_eq!(slots, (0..8).map(Some).collect());
    // The losers hold nothing.
    let listed = h.datastore.instance_attached_disks(instance).await.unwrap();
    assert_eq!(listed.len(), MAX_DISKS_PER_INSTANCE);
}

#[tokio::test]
async fn the_boot_disk_cannot_be_detached() {
    let h = Harness::new();
    let project = h.project("p").await;
    let boot = h.detached_disk(&project, "boot").await;
    let data = h.detached_disk(&project, "data").await;
    let mut params = crate::instance_params(&project, "i");
    params.boot_disk_id = Some(boot.id());
    let created = h.datastore.instance_insert(params).await.unwrap();
    for disk in [boot.id(), data.id()] {
        h.datastore
            .disk_attach_begin(created.id(), disk, InstanceForDisks::Creating)
            .await
            .unwrap();
        h.datastore
            .disk_attach_finish(created.id(), disk)
            .await
            .unwrap();
    }
    h.datastore
        .instance_mark_stopped(created.id())
        .await
        .unwrap();

    let refused = h.detach(created.id(), boot.id()).await;
    assert!(is_conflict(&refused), "{refused:?}");
    h.detach(created.id(), data.id()).await.unwrap();
    // The VMM gets the boot disk first.
    let attached = h
        .datastore
        .instance_attached_disks(created.id())
        .await
        .unwrap();
    assert_eq!(attached[0].disk.id(), boot.id());
    // Deleting the instance detaches it.
    assert!(
        h.datastore
            .instance_mark_destroyed(created.id())
            .await
            .unwrap()
    );
    let after = h.datastore.disk_fetch(boot.id()).await.unwrap();
    assert_eq!(
        (after.state(), after.attached_to(), after.slot),
        (DiskState::Detached, None, None)
    );
}

/// An attach racing a start's claim: either the attach wins (the start refuses while the disk
/// is attaching, or the VMM gets it) or the claim does (the attach is refused). Never a VMM
/// whose disk list, read right after its claim as the start saga does, lacks a disk the
/// database has attached to the instance.
#[tokio::test]
async fn an_attach_racing_a_start_never_leaves_the_vmm_without_the_disk() {
    let h = std::sync::Arc::new(Harness::new());
    let project = h.project("p").await;
    let mut outcomes = [0usize; 3];
    for round in 0..40 {
        let instance = h
            .stopped_instance(&project, &format!("i{round}"))
            .await
            .id();
        let disk = h.detached_disk(&project, &format!("d{round}")).await.id();
        let attach = {
            let h = h.clone();
            tokio::spawn(async move { h.attach(instance, disk).await })
        };
        let start = {
            let h = h.clone();
            tokio::spawn(async move {
                let claimed = h
                    .datastore
                    .instance_claim_for_start(instance, VmmUuid::new_v4())
                    .await;
                match claimed {
                    Ok((TransitionOutcome::Applied, _)) => Some(
                        h.datastore
                            .instance_attached_disks(instance)
                            .await
                            .unwrap()
                            .iter()
                            .map(|d| d.disk.id())
                            .collect::<Vec<_>>(),
                    ),
                    Ok(other) => panic!("claim: {other:?}"),
                    Err(Error::Conflict { .. }) => None,
                    Err(e) => panic!("claim: {e}"),
                }
            })
        };
        let attached = attach.await.unwrap();
        let vmm_disks = start.await.unwrap();
        let now = h.datastore.disk_fetch(disk).await.unwrap();
        match (&attached, &vmm_disks) {
            (Ok(_), Some(vmm_disks)) => {
                assert_eq!(vmm_disks, &[disk], "round {round}: the VMM lacks the disk");
                outcomes[0] += 1;
            }
            (Ok(_), None) => outcomes[1] += 1,
            (Err(e), Some(vmm_disks)) => {
                assert!(matches!(e, Error::Conflict { .. }), "{e}");
                assert!(vmm_disks.is_empty());
                assert_eq!(now.state(), DiskState::Detached, "round {round}");
                outcomes[2] += 1;
            }
            (Err(e), None) => panic!("round {round}: both refused: {e}"),
        }
        if attached.is_ok() {
            assert_eq!(now.state(), DiskState::Attached);
        }
    }
    eprintln!(
        "attach then start {}, start refused {}, attach refused {}",
        outcomes[0], outcomes[1], outcomes[2]
    );
}

/// A disk an instance create is making is that create's until it attaches it: between the
/// disk-create subsaga's last step (`detached`) and the create's attach, an attach to another
/// instance is refused (it would fail the create, whose undo could then not put the disk back
/// to `creating`). Once the creating instance left `creating`, the disk is anyone's.
#[tokio::test]
async fn a_disk_made_by_an_instance_being_created_is_not_attached_elsewhere() {
    let h = Harness::new();
    let project = h.project("p").await;
    let creating = h.instance(&project, "creating").await;
    let other = h.stopped_instance(&project, "other").await;
    let disk = h
        .datastore
        .disk_insert(NewDiskParams {
            id: DiskUuid::new_v4(),
            project_id: project.id(),
            name: "made".parse().unwrap(),
            description: String::new(),
            size: ByteCount::from_gibibytes_u32(1),
            block_size: BlockSize::try_from(4096u32).unwrap(),
            created_by_instance_id: Some(creating.id()),
        })
        .await
        .unwrap();
    h.datastore
        .disk_transition(disk.id(), &[DiskState::Creating], DiskState::Detached)
        .await
        .unwrap();

    let refused = h.attach(other.id(), disk.id()).await;
    assert!(is_conflict(&refused), "{refused:?}");
    let unchanged = h.datastore.disk_fetch(disk.id()).await.unwrap();
    assert_eq!(
        (unchanged.state(), unchanged.attached_to()),
        (DiskState::Detached, None)
    );
    // Its own create attaches it.
    h.datastore
        .disk_attach_begin(creating.id(), disk.id(), InstanceForDisks::Creating)
        .await
        .unwrap();
    h.datastore
        .disk_attach_undo(creating.id(), disk.id())
        .await
        .unwrap();
    // Created (stopped): the disk is no longer held for it.
    h.datastore
        .instance_mark_stopped(creating.id())
        .await
        .unwrap();
    let attached = h.attach(other.id(), disk.id()).await.unwrap();
    assert_eq!(attached.attached_to(), Some(other.id()));
}

/// Nor is such a disk deleted in that window (the create's undo must find it to destroy it).
#[tokio::test]
async fn a_disk_made_by_an_instance_being_created_is_not_deleted_meanwhile() {
    let h = Harness::new();
    let project = h.project("p").await;
    let creating = h.instance(&project, "creating").await;
    let disk = h
        .datastore
        .disk_insert(NewDiskParams {
            id: DiskUuid::new_v4(),
            project_id: project.id(),
            name: "made".parse().unwrap(),
            description: String::new(),
            size: ByteCount::from_gibibytes_u32(1),
            block_size: BlockSize::try_from(4096u32).unwrap(),
            created_by_instance_id: Some(creating.id()),
        })
        .await
        .unwrap();
    h.datastore
        .disk_transition(disk.id(), &[DiskState::Creating], DiskState::Detached)
        .await
        .unwrap();

    let refused = h
        .datastore
        .disk_destroy_unless_held(disk.id(), &[DiskState::Detached])
        .await;
    assert!(is_conflict(&refused), "{refused:?}");
    assert_eq!(
        h.datastore.disk_fetch(disk.id()).await.unwrap().state(),
        DiskState::Detached
    );
    h.datastore
        .instance_mark_stopped(creating.id())
        .await
        .unwrap();
    let destroyed = h
        .datastore
        .disk_destroy_unless_held(disk.id(), &[DiskState::Detached])
        .await
        .unwrap();
    assert!(
        matches!(destroyed, DiskTransition::Applied(_)),
        "{destroyed:?}"
    );
}
