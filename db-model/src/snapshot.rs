use crate::schema::{region_snapshot, snapshot};
use crate::{DbByteCount, DbEnum, DbName, DbTypedUuid, Disk, Region};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use halyard_common::ids::{
    DiskKind, DiskUuid, ProjectKind, ProjectUuid, RegionKind, RegionUuid, SledKind, SledUuid,
    SnapshotKind, SnapshotUuid,
};
use halyard_common::{BlockSize, ByteCount, Name, SnapshotState};
use serde::{Deserialize, Serialize};

/// A snapshot: a read-only, point-in-time copy of a disk, kept as one region snapshot on each
/// of the disk's regions' sleds. It outlives its disk.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, Serialize, Deserialize)]
#[diesel(table_name = snapshot, check_for_backend(diesel::pg::Pg))]
pub struct Snapshot {
    pub id: DbTypedUuid<SnapshotKind>,
    pub name: DbName,
    pub description: String,
    pub project_id: DbTypedUuid<ProjectKind>,
    pub disk_id: DbTypedUuid<DiskKind>,
    pub time_created: DateTime<Utc>,
    pub time_modified: DateTime<Utc>,
    pub time_deleted: Option<DateTime<Utc>>,
    pub size_bytes: DbByteCount,
    /// One of [`BlockSize::ALL`] (a CHECK in SQL); read it with [`Snapshot::block_size`].
    pub block_size: i64,
    pub state: DbEnum<SnapshotState>,
}

/// What a new snapshot is made of.
#[derive(Debug, Clone)]
pub struct NewSnapshotParams {
    pub id: SnapshotUuid,
    pub name: Name,
    pub description: String,
}

impl Snapshot {
    /// A new snapshot record of `disk`, `creating`, in the disk's project, of its size.
    pub fn new(params: NewSnapshotParams, disk: &Disk) -> Snapshot {
        let now = crate::now();
        Snapshot {
            id: params.id.into(),
            name: params.name.into(),
            description: params.description,
            project_id: disk.project_id,
            disk_id: disk.id,
            time_created: now,
            time_modified: now,
            time_deleted: None,
            size_bytes: disk.size_bytes,
            block_size: disk.block_size,
            state: SnapshotState::Creating.into(),
        }
    }

    pub fn id(&self) -> SnapshotUuid {
        self.id.0
    }

    pub fn name(&self) -> &Name {
        &self.name.0
    }

    pub fn project_id(&self) -> ProjectUuid {
        self.project_id.0
    }

    pub fn disk_id(&self) -> DiskUuid {
        self.disk_id.0
    }

    pub fn size(&self) -> ByteCount {
        self.size_bytes.0
    }

    pub fn block_size(&self) -> BlockSize {
        BlockSize::try_from(self.block_size).expect("the block_size column's CHECK")
    }

    pub fn state(&self) -> SnapshotState {
        self.state.0
    }
}

/// One region's point-in-time copy for a snapshot, on the region's sled: the storage it holds
/// there (counted in the sled's `reserved_storage`, like a region's).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, Serialize, Deserialize)]
#[diesel(table_name = region_snapshot, check_for_backend(diesel::pg::Pg))]
pub struct RegionSnapshot {
    pub snapshot_id: DbTypedUuid<SnapshotKind>,
    pub region_id: DbTypedUuid<RegionKind>,
    pub sled_id: DbTypedUuid<SledKind>,
    pub size_bytes: DbByteCount,
    pub block_size: i64,
    pub time_created: DateTime<Utc>,
    /// Where its sled serves it read-only over NBD (`host:port`; the export's name is
    /// `<region_id>.<snapshot_id>`), once the sled agent made it; none on a simulated sled.
    pub export_address: Option<String>,
}

impl RegionSnapshot {
    pub fn new(snapshot_id: SnapshotUuid, region: &Region) -> RegionSnapshot {
        RegionSnapshot {
            snapshot_id: snapshot_id.into(),
            region_id: region.id,
            sled_id: region.sled_id,
            size_bytes: region.size_bytes,
            block_size: region.block_size,
            time_created: crate::now(),
            export_address: None,
        }
    }

    pub fn snapshot_id(&self) -> SnapshotUuid {
        self.snapshot_id.0
    }

    pub fn region_id(&self) -> RegionUuid {
        self.region_id.0
    }

    pub fn sled_id(&self) -> SledUuid {
        self.sled_id.0
    }

    pub fn size(&self) -> ByteCount {
        self.size_bytes.0
    }

    pub fn block_size(&self) -> BlockSize {
        BlockSize::try_from(self.block_size).expect("the block_size column's CHECK")
    }
}
