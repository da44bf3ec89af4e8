//! Disks and their regions: the records, the state changes, and race-safe region placement.

use crate::Harness;
use halyard_common::ids::{DiskUuid, GenericUuid, SledUuid};
use halyard_common::{BlockSize, ByteCount, DiskState, Error, SledBackend};
use halyard_db_model::{
    Disk, NewDiskParams, Project, REGIONS_PER_DISK, Region, Sled, SledResources,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

const GIB: u64 = 1 << 30;

fn disk_params(project: &Project, name: &str, size_gib: u32) -> NewDiskParams {
    NewDiskParams {
        id: DiskUuid::new_v4(),
        project_id: project.id(),
        name: name.parse().unwrap(),
        description: format!("disk {name}"),
        size: ByteCount::from_gibibytes_u32(size_gib),
        block_size: BlockSize::try_from(4096u32).unwrap(),
        created_by_instance_id: None,
    }
}

/// Places the regions of each disk in `disks`, all at once; the outcomes in `disks`' order.
async fn place_at_once(h: &Harness, disks: Vec<DiskUuid>) -> Vec<Result<Vec<Region>, Error>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in disks.into_iter().enumerate() {
        let datastore = h.datastore.clone();
        tasks.spawn(async move {
            let placed = datastore.disk_regions_allocate(id, SledBackend::Sim).await;
            (i, placed)
        });
    }
    let mut outcomes = tasks.join_all().await;
    outcomes.sort_by_key(|(i, _)| *i);
    outcomes.into_iter().map(|(_, placed)| placed).collect()
}

impl Harness {
    /// A sled offering `storage_gib` GiB for regions.
    async fn storage_sled(&self, backend: SledBackend, storage_gib: u32) -> Sled {
        self.datastore
            .sled_upsert(
                Sled::new(
                    SledUuid::new_v4(),
                    "127.0.0.1:12345".parse::<SocketAddr>().unwrap(),
                    backend,
                    SledResources {
                        hardware_threads: 8,
                        physical_ram: ByteCount::from_gibibytes_u32(8),
                    },
                )
                .with_usable_storage(ByteCount::from_gibibytes_u32(storage_gib)),
            )
            .await
            .expect("register sled")
    }

    async fn disk(&self, project: &Project, name: &str, size_gib: u32) -> Disk {
        self.datastore
            .disk_insert(disk_params(project, name, size_gib))
            .await
            .expect("insert disk")
    }

    /// Checks the storage bookkeeping against the region rows: every sled's
    /// `reserved_storage` is the sum of its regions, within its capacity; no disk has two
    /// regions on one sled. Returns the regions per disk.
    async fn check_storage(&self) -> BTreeMap<DiskUuid, Vec<SledUuid>> {
        let regions = self.datastore.region_list(None).await.unwrap();
        let mut per_sled: BTreeMap<SledUuid, u64> = BTreeMap::new();
        let mut per_disk: BTreeMap<DiskUuid, Vec<SledUuid>> = BTreeMap::new();
        for region in &regions {
            *per_sled.entry(region.sled_id()).or_default() += region.size().to_bytes();
            per_disk
                .entry(region.disk_id())
                .or_default()
                .push(region.sled_id());
        }
        for sled in self.datastore.sled_list_all().await.unwrap() {
            let reserved = sled.reserved_storage.0.to_bytes();
            assert_eq!(
                reserved,
                per_sled.get(&sled.id()).copied().unwrap_or(0),
                "sled {}: reserved_storage is not the sum of its regions",
                sled.id()
            );
            assert!(reserved <= sled.usable_storage.0.to_bytes());
        }
        for (disk, sleds) in &per_disk {
            let distinct: BTreeSet<_> = sleds.iter().collect();
            assert_eq!(
                distinct.len(),
                sleds.len(),
                "disk {disk} has two regions on one sled"
            );
        }
        per_disk
    }
}

#[tokio::test]
async fn a_disk_is_inserted_once_and_its_name_is_its_own() {
    let h = Harness::new();
    let project = h.project("p").await;
    let params = disk_params(&project, "data", 1);
    let first = h.datastore.disk_insert(params.clone()).await.unwrap();
    assert_eq!(first.state(), DiskState::Creating);
    assert_eq!(first.size().to_bytes(), GIB);
    // A repeat (a saga step run twice) gets the stored record.
    assert_eq!(h.datastore.disk_insert(params).await.unwrap(), first);
    let taken = h
        .datastore
        .disk_insert(disk_params(&project, "data", 2))
        .await
        .unwrap_err();
    assert!(
        matches!(taken, Error::ObjectAlreadyExists { .. }),
        "{taken:?}"
    );
    let fetched = h
        .datastore
        .disk_fetch_by_name(project.id(), &"data".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(fetched, first);
    // Another project may use the name.
    let other = h.project("q").await;
    h.disk(&other, "data", 1).await;
}

#[tokio::test]
async fn bad_disk_sizes_are_refused_and_create_nothing() {
    let h = Harness::new();
    let project = h.project("p").await;
    let mut zero = disk_params(&project, "zero", 1);
    zero.size = ByteCount::try_from(0u64).unwrap();
    let mut ragged = disk_params(&project, "ragged", 1);
    ragged.size = ByteCount::try_from(GIB + 512).unwrap();
    let mut huge = disk_params(&project, "huge", 1);
    huge.size = ByteCount::try_from(1024 * GIB).unwrap();
    let mut wordy = disk_params(&project, "wordy", 1);
    wordy.description = "x".repeat(513);
    for bad in [zero, ragged, huge, wordy] {
        let error = h.datastore.disk_insert(bad.clone()).await.unwrap_err();
        assert!(
            matches!(error, Error::InvalidValue { .. }),
            "{}: {error:?}",
            bad.name
        );
    }
    // 512-byte blocks accept what 4096-byte ones refuse.
    let mut small_blocks = disk_params(&project, "small-blocks", 1);
    small_blocks.block_size = BlockSize::try_from(512u32).unwrap();
    small_blocks.size = ByteCount::try_from(GIB + 512).unwrap();
    h.datastore.disk_insert(small_blocks).await.unwrap();
    assert_eq!(h.datastore.disk_list_all().await.unwrap().len(), 1);
}

#[tokio::test]
async fn disk_state_changes_apply_once() {
    let h = Harness::new();
    let project = h.project("p").await;
    let disk = h.disk(&project, "data", 1).await;
    let ready = h
        .datastore
        .disk_transition(disk.id(), &[DiskState::Creating], DiskState::Detached)
        .await
        .unwrap();
    let halyard_db_queries::DiskTransition::Applied(ready) = ready else {
        panic!("{ready:?}")
    };
    assert_eq!(ready.state(), DiskState::Detached);
    assert_eq!(
        ready.state_generation.0.as_u64(),
        disk.state_generation.0.as_u64() + 1
    );
    let again = h
        .datastore
        .disk_transition(disk.id(), &[DiskState::Creating], DiskState::Detached)
        .await
        .unwrap();
    assert_eq!(
        again,
        halyard_db_queries::DiskTransition::AlreadyDone(ready.clone())
    );
    let wrong = h
        .datastore
        .disk_transition(disk.id(), &[DiskState::Attached], DiskState::Faulted)
        .await
        .unwrap();
    assert_eq!(wrong, halyard_db_queries::DiskTransition::Conflict(ready));
    // Deleting frees the name and hides the disk.
    let deleted = h
        .datastore
        .disk_transition(disk.id(), &[DiskState::Detached], DiskState::Destroyed)
        .await
        .unwrap();
    assert!(deleted.disk().time_deleted.is_some());
    let gone = h.datastore.disk_fetch(disk.id()).await.unwrap_err();
    assert!(matches!(gone, Error::ObjectNotFound { .. }), "{gone:?}");
    h.disk(&project, "data", 1).await;
}

#[tokio::test]
async fn a_project_with_a_disk_is_not_deleted() {
    let h = Harness::new();
    let project = h.project("p").await;
    let disk = h.disk(&project, "data", 1).await;
    let refused = h
        .datastore
        .project_delete(&halyard_common::NameOrId::Id(
            project.id().into_untyped_uuid(),
        ))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("disk"), "{refused}");
    h.datastore
        .disk_transition(disk.id(), &[DiskState::Creating], DiskState::Destroyed)
        .await
        .unwrap();
    h.datastore
        .project_delete(&halyard_common::NameOrId::Id(
            project.id().into_untyped_uuid(),
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn regions_go_on_three_sleds_of_the_backend_with_room() {
    let h = Harness::new();
    let project = h.project("p").await;
    let mut usable = BTreeSet::new();
    for _ in 0..3 {
        usable.insert(h.storage_sled(SledBackend::Sim, 10).await.id());
    }
    // Never picked: no storage, too little, another backend, expunged.
    h.storage_sled(SledBackend::Sim, 0).await;
    h.storage_sled(SledBackend::Sim, 1).await;
    h.storage_sled(SledBackend::Qemu, 10).await;
    let expunged = h.storage_sled(SledBackend::Sim, 10).await;
    h.datastore.sled_expunge(expunged.id()).await.unwrap();

    let disk = h.disk(&project, "data", 2).await;
    let regions = h
        .datastore
        .disk_regions_allocate(disk.id(), SledBackend::Sim)
        .await
        .unwrap();
    assert_eq!(regions.len(), REGIONS_PER_DISK);
    let sleds: BTreeSet<_> = regions.iter().map(|r| r.sled_id()).collect();
    assert_eq!(sleds, usable);
    // A repeat returns the same regions and takes nothing more.
    let again = h
        .datastore
        .disk_regions_allocate(disk.id(), SledBackend::Sim)
        .await
        .unwrap();
    assert_eq!(again, regions);
    h.check_storage().await;

    // Released once: the storage is back, a repeat releases nothing.
    assert_eq!(
        h.datastore.disk_regions_release(disk.id()).await.unwrap(),
        3
    );
    assert_eq!(
        h.datastore.disk_regions_release(disk.id()).await.unwrap(),
        0
    );
    assert!(h.check_storage().await.is_empty());
    for sled in h.datastore.sled_list_all().await.unwrap() {
        assert_eq!(sled.reserved_storage.0.to_bytes(), 0);
    }
}

#[tokio::test]
async fn too_few_sleds_with_room_places_nothing() {
    let h = Harness::new();
    let project = h.project("p").await;
    h.storage_sled(SledBackend::Sim, 10).await;
    h.storage_sled(SledBackend::Sim, 10).await;
    h.storage_sled(SledBackend::Sim, 1).await;
    let disk = h.disk(&project, "data", 2).await;
    let error = h
        .datastore
        .disk_regions_allocate(disk.id(), SledBackend::Sim)
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::InsufficientCapacity { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("only 2 have room"), "{error}");
    assert!(
        h.check_storage().await.is_empty(),
        "a failed placement kept regions"
    );
}

#[tokio::test]
async fn a_sled_reporting_less_storage_than_its_regions_hold_is_refused() {
    let h = Harness::new();
    let project = h.project("p").await;
    let mut sleds = Vec::new();
    for _ in 0..3 {
        sleds.push(h.storage_sled(SledBackend::Sim, 10).await);
    }
    let disk = h.disk(&project, "data", 4).await;
    h.datastore
        .disk_regions_allocate(disk.id(), SledBackend::Sim)
        .await
        .unwrap();
    let shrunk = sleds[0]
        .clone()
        .with_usable_storage(ByteCount::from_gibibytes_u32(3));
    let error = h.datastore.sled_upsert(shrunk).await.unwrap_err();
    assert!(matches!(error, Error::Conflict { .. }), "{error:?}");
    h.check_storage().await;
}

#[tokio::test]
async fn racing_placements_never_overcommit_a_sled() {
    let h = Harness::with_pool(32);
    let project = h.project("p").await;
    // Four sleds with room for three 1 GiB regions each: twelve region slots, so at most four
    // disks of three regions fit, and at least three (any three disks fit whatever the
    // order).
    for _ in 0..4 {
        h.storage_sled(SledBackend::Sim, 3).await;
    }
    let mut disks = Vec::new();
    for i in 0..10 {
        disks.push(h.disk(&project, &format!("d{i}"), 1).await);
    }
    let outcomes = place_at_once(&h, disks.iter().map(|d| d.id()).collect()).await;
    let placed = outcomes.iter().filter(|o| o.is_ok()).count();
    for outcome in &outcomes {
        if let Err(error) = outcome {
            assert!(
                matches!(error, Error::InsufficientCapacity { .. }),
                "a placement failed otherwise: {error:?}"
            );
        }
    }
    assert!((3..=4).contains(&placed), "{placed} disks placed");
    let per_disk = h.check_storage().await;
    assert_eq!(per_disk.len(), placed, "a refused placement kept regions");
    assert!(
        per_disk
            .values()
            .all(|sleds| sleds.len() == REGIONS_PER_DISK)
    );
}

#[tokio::test]
async fn repeated_placements_of_one_disk_agree() {
    let h = Harness::with_pool(32);
    let project = h.project("p").await;
    for _ in 0..6 {
        h.storage_sled(SledBackend::Sim, 10).await;
    }
    let disk = h.disk(&project, "data", 1).await;
    let outcomes = place_at_once(&h, vec![disk.id(); 8]).await;
    let first = outcomes[0].as_ref().unwrap();
    for outcome in &outcomes {
        assert_eq!(outcome.as_ref().unwrap(), first);
    }
    let per_disk = h.check_storage().await;
    assert_eq!(per_disk[&disk.id()].len(), REGIONS_PER_DISK);
}
