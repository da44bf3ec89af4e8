use crate::schema::{disk, region};
use crate::{DbByteCount, DbEnum, DbGeneration, DbName, DbTypedUuid};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use halyard_common::ids::{
    DiskKind, DiskUuid, InstanceKind, InstanceUuid, ProjectKind, ProjectUuid, RegionKind,
    RegionUuid, SledKind, SledUuid,
};
use halyard_common::{BlockSize, ByteCount, DiskState, Generation, Name};
use serde::{Deserialize, Serialize};

/// How many regions (replicas on distinct sleds) hold each disk's data.
pub const REGIONS_PER_DISK: usize = 3;

/// A disk: a virtual block device in a project, whose data lives on its regions.
///
/// Serializable so that a saga's node can hand on the row its statement returned.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, Serialize, Deserialize)]
#[diesel(table_name = disk, check_for_backend(diesel::pg::Pg))]
pub struct Disk {
    pub id: DbTypedUuid<DiskKind>,
    pub name: DbName,
    pub description: String,
    pub project_id: DbTypedUuid<ProjectKind>,
    pub time_created: DateTime<Utc>,
    pub time_modified: DateTime<Utc>,
    pub time_deleted: Option<DateTime<Utc>>,
    pub size_bytes: DbByteCount,
    /// One of [`BlockSize::ALL`] (a CHECK in SQL); read it with [`Disk::block_size`].
    pub block_size: i64,
    pub state: DbEnum<DiskState>,
    pub attach_instance_id: Option<DbTypedUuid<InstanceKind>>,
    pub state_generation: DbGeneration,
    pub time_state_updated: DateTime<Utc>,
    /// Its position on the instance it names (`0..MAX_DISKS_PER_INSTANCE`), set exactly
    /// while `attach_instance_id` is.
    pub slot: Option<i32>,
    /// The instance whose create made it; it is deleted with that instance.
    pub created_by_instance_id: Option<DbTypedUuid<InstanceKind>>,
    /// The region a region-replacement saga is replacing; while set, the disk is not
    /// attached, detached, deleted or snapshotted, and its instance is not started.
    pub replacing_region_id: Option<DbTypedUuid<RegionKind>>,
    /// The region that replacement creates (set and cleared with `replacing_region_id`).
    pub replacement_region_id: Option<DbTypedUuid<RegionKind>>,
}

/// The most disks an instance has (Oxide's limit; the boot disk counts): the disk's `slot`
/// column holds `0..MAX_DISKS_PER_INSTANCE`, one disk per slot of an instance.
pub const MAX_DISKS_PER_INSTANCE: usize = 8;

/// What a new disk is made of.
#[derive(Debug, Clone)]
pub struct NewDiskParams {
    pub id: DiskUuid,
    pub project_id: ProjectUuid,
    pub name: Name,
    pub description: String,
    pub size: ByteCount,
    pub block_size: BlockSize,
    /// The instance whose create makes this disk (then it is deleted with the instance).
    pub created_by_instance_id: Option<InstanceUuid>,
}

impl Disk {
    /// A new disk record, `creating`, attached to nothing.
    pub fn new(params: NewDiskParams) -> Disk {
        let now = crate::now();
        Disk {
            id: params.id.into(),
            name: params.name.into(),
            description: params.description,
            project_id: params.project_id.into(),
            time_created: now,
            time_modified: now,
            time_deleted: None,
            size_bytes: params.size.into(),
            block_size: params.block_size.to_bytes().into(),
            state: DiskState::Creating.into(),
            attach_instance_id: None,
            state_generation: Generation::new().into(),
            time_state_updated: now,
            slot: None,
            created_by_instance_id: params.created_by_instance_id.map(DbTypedUuid),
            replacing_region_id: None,
            replacement_region_id: None,
        }
    }

    pub fn id(&self) -> DiskUuid {
        self.id.0
    }

    pub fn name(&self) -> &Name {
        &self.name.0
    }

    pub fn project_id(&self) -> ProjectUuid {
        self.project_id.0
    }

    pub fn size(&self) -> ByteCount {
        self.size_bytes.0
    }

    pub fn block_size(&self) -> BlockSize {
        BlockSize::try_from(self.block_size).expect("the block_size column's CHECK")
    }

    pub fn state(&self) -> DiskState {
        self.state.0
    }

    pub fn attached_to(&self) -> Option<InstanceUuid> {
        self.attach_instance_id.map(|id| id.0)
    }

    pub fn created_by(&self) -> Option<InstanceUuid> {
        self.created_by_instance_id.map(|id| id.0)
    }

    /// The region a region-replacement saga is replacing, if one is.
    pub fn replacing_region(&self) -> Option<RegionUuid> {
        self.replacing_region_id.map(|id| id.0)
    }

    /// The replacement under way, as (lost region, new region), if any.
    pub fn replacement(&self) -> Option<(RegionUuid, Option<RegionUuid>)> {
        self.replacing_region_id
            .map(|lost| (lost.0, self.replacement_region_id.map(|new| new.0)))
    }
}

/// One replica of a disk's data on one sled: the storage it holds there (counted in the
/// sled's `reserved_storage`) and the identity of the file the sled agent keeps.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, Serialize, Deserialize)]
#[diesel(table_name = region, check_for_backend(diesel::pg::Pg))]
pub struct Region {
    pub id: DbTypedUuid<RegionKind>,
    pub disk_id: DbTypedUuid<DiskKind>,
    pub sled_id: DbTypedUuid<SledKind>,
    pub size_bytes: DbByteCount,
    pub block_size: i64,
    pub time_created: DateTime<Utc>,
    /// Where its sled serves it over NBD (`host:port`; the export's name is the region's id),
    /// once the sled agent made it; none on a simulated sled.
    pub export_address: Option<String>,
}

impl Region {
    pub fn new(disk: &Disk, sled_id: SledUuid) -> Region {
        Region {
            id: RegionUuid::new_v4().into(),
            disk_id: disk.id,
            sled_id: sled_id.into(),
            size_bytes: disk.size_bytes,
            block_size: disk.block_size,
            time_created: crate::now(),
            export_address: None,
        }
    }

    pub fn id(&self) -> RegionUuid {
        self.id.0
    }

    pub fn disk_id(&self) -> DiskUuid {
        self.disk_id.0
    }

    pub fn sled_id(&self) -> SledUuid {
        self.sled_id.0
    }

    pub fn size(&self) -> ByteCount {
        self.size_bytes.0
    }
}
