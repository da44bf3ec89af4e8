//! disk-create: records a new disk, places its three regions, makes them on their sleds.
//!
//! ```text
//!   create_record ──► allocate_regions ──► ensure_regions ──► mark_detached
//! ```
//!
//! - `create_record` inserts the disk `creating` (idempotent by disk id; a live disk of that
//!   name in the project is `ObjectAlreadyExists`). Undo: marks it destroyed (which frees its
//!   name); a disk already destroyed is left so.
//! - `allocate_regions` places [`REGIONS_PER_DISK`] regions on as many distinct in-service
//!   sleds with room (`DataStore::disk_regions_allocate`: race-safe, the sleds'
//!   `reserved_storage` grows in the same transaction; a repeat returns the same regions).
//!   QEMU sleds are preferred (their regions hold data, served over NBD); simulated sleds
//!   otherwise. Too few sleds with room: `InsufficientCapacity` (507), nothing placed.
//!   Outputs the regions. Undo: releases the region rows and gives their storage back
//!   (`disk_regions_release`; a repeat releases none).
//! - `ensure_regions` asks each region's sled agent to make it (`PUT /regions/{id}`,
//!   idempotent: the same shape again is the same region). If one fails, the action deletes
//!   what it made before failing (its undo is not run). Undo: deletes every region on its sled
//!   agent (`DELETE /regions/{id}`, idempotent), skipping a sled that was expunged (its
//!   storage is gone with it).
//! - `mark_detached` moves the disk `creating` → `detached`; a repeat finds it already done.
//!   Outputs the disk as the transition returned it ([`created`]), which Nexus answers with.
//!   Undo (only as a subsaga of instance-create, when a later node of the outer saga fails:
//!   on its own it is the last node): `detached` → `creating`, so `create_record`'s undo
//!   destroys it.
//!
//! After a complete unwind the disk is destroyed (time_deleted set), holds no region row, no
//! sled's `reserved_storage` counts it and no sled agent holds a region of it.

use super::{NexusActionContext, action_failed, declare_saga};
use crate::app::Nexus;
use crate::app::sled::sled_agent_error;
use halyard_common::ids::{
    DiskUuid, InstanceUuid, ProjectUuid, RegionUuid, SledUuid, SnapshotUuid,
};
use halyard_common::{
    BlockSize, ByteCount, DiskState, Error, Labelled, SledBackend, SnapshotState,
};
use halyard_db_model::{Disk, NewDiskParams, Region};
use halyard_db_queries::DiskTransition;
use halyard_nexus_external_api::params::DiskCreate;
use halyard_sled_agent_api::{NbdExport, RegionEnsureBody};
use serde::{Deserialize, Serialize};
use slog::warn;
use steno::ActionError;

declare_saga! {
    saga SagaDiskCreate, named "disk-create", params Params;
    action names "disk_create";
    // node      label              action static     action            undo
    "disk",      "CreateRecord",    CREATE_RECORD,    create_record,    undo_create_record;
    "regions",   "AllocateRegions", ALLOCATE_REGIONS, allocate_regions, undo_allocate_regions;
    "ensured",   "EnsureRegions",   ENSURE_REGIONS,   ensure_regions,   undo_ensure_regions;
    "detached",  "MarkDetached",    MARK_DETACHED,    mark_detached,    undo_mark_detached;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub disk_id: DiskUuid,
    pub project_id: ProjectUuid,
    /// What the user asked for (validated by Nexus before the saga was recorded).
    pub create: DiskCreate,
    /// The block size the request's source names (Nexus read it out while validating).
    pub block_size: BlockSize,
    /// The instance whose create makes this disk (as a subsaga of instance-create): the disk
    /// is deleted with it. `None` for a disk created on its own.
    #[serde(default)]
    pub created_by_instance_id: Option<InstanceUuid>,
    /// The ready snapshot the disk's data is copied from (its size is the disk's); `None`:
    /// a blank disk.
    #[serde(default)]
    pub source_snapshot_id: Option<SnapshotUuid>,
}

/// A region as a saga node records it: where it is and its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedRegion {
    pub region_id: RegionUuid,
    pub sled_id: SledUuid,
    pub size: ByteCount,
    pub block_size: BlockSize,
}

impl From<&Region> for PlacedRegion {
    fn from(region: &Region) -> PlacedRegion {
        PlacedRegion {
            region_id: region.id(),
            sled_id: region.sled_id(),
            size: region.size(),
            block_size: BlockSize::try_from(region.block_size)
                .expect("the region's block_size column's CHECK"),
        }
    }
}

async fn create_record(ctx: &NexusActionContext) -> Result<DiskUuid, ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let created = ctx
        .user_data()
        .nexus
        .datastore()
        .disk_insert(NewDiskParams {
            id: params.disk_id,
            project_id: params.project_id,
            name: params.create.name,
            description: params.create.description,
            size: params.create.size,
            block_size: params.block_size,
            created_by_instance_id: params.created_by_instance_id,
        })
        .await
        .map_err(action_failed)?;
    Ok(created.id())
}

async fn undo_create_record(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let params = ctx.saga_params::<Params>()?;
    let datastore = ctx.user_data().nexus.datastore();
    match datastore
        .disk_transition(params.disk_id, &[DiskState::Creating], DiskState::Destroyed)
        .await
    {
        Ok(DiskTransition::Applied(_) | DiskTransition::AlreadyDone(_)) => Ok(()),
        Ok(DiskTransition::Conflict(disk)) => Err(Error::internal(format!(
            "undoing disk-create: disk {} is {:?}, not creating",
            disk.id(),
            disk.state()
        ))
        .into()),
        Err(e) if e.error_code() == "ObjectNotFound" => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The kinds of sled a disk's regions may go on, the preferred first.
const REGION_BACKENDS: [SledBackend; 2] = [SledBackend::Qemu, SledBackend::Sim];

async fn allocate_regions(ctx: &NexusActionContext) -> Result<Vec<PlacedRegion>, ActionError> {
    let disk_id = ctx.lookup::<DiskUuid>("disk")?;
    let datastore = ctx.user_data().nexus.datastore();
    let mut refusals = Vec::new();
    for backend in REGION_BACKENDS {
        match datastore.disk_regions_allocate(disk_id, backend).await {
            Ok(regions) => return Ok(regions.iter().map(PlacedRegion::from).collect()),
            Err(Error::InsufficientCapacity { message }) => refusals.push(message),
            Err(e) => return Err(action_failed(e)),
        }
    }
    Err(action_failed(Error::insufficient_capacity(
        refusals.join("; "),
    )))
}

async fn undo_allocate_regions(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let disk_id = ctx.lookup::<DiskUuid>("disk")?;
    ctx.user_data()
        .nexus
        .datastore()
        .disk_regions_release(disk_id)
        .await?;
    Ok(())
}

async fn ensure_regions(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let regions = ctx.lookup::<Vec<PlacedRegion>>("regions")?;
    let nexus = &ctx.user_data().nexus;
    let source = match params.source_snapshot_id {
        Some(snapshot_id) => snapshot_source(nexus, snapshot_id)
            .await
            .map_err(action_failed)?,
        None => None,
    };
    for (made, region) in regions.iter().enumerate() {
        if let Err(e) = ensure_region(nexus, region, source.clone()).await {
            // Clean up what this action made (its undo is not run when it fails). A region a
            // sled agent does not give back now stays on it; the invariant checker compares
            // each sled agent with the database and names it.
            for made in &regions[..made] {
                if let Err(cleanup) = delete_region(nexus, made).await {
                    warn!(nexus.log(), "disk-create: deleting a region after a failed ensure";
                        "region_id" => %made.region_id, "sled_id" => %made.sled_id,
                        "error" => %cleanup);
                }
            }
            return Err(action_failed(e));
        }
    }
    Ok(())
}

async fn undo_ensure_regions(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let regions = ctx.lookup::<Vec<PlacedRegion>>("regions")?;
    let nexus = &ctx.user_data().nexus;
    for region in &regions {
        delete_region(nexus, region).await?;
    }
    Ok(())
}

/// Where a disk made from `snapshot_id` copies its data from: the export of one of the
/// snapshot's region snapshots on a sled in service (all hold the same point in time). `None`
/// when none is served (a simulated sled's region snapshots hold no data, and their copies
/// none either). `Conflict` for a snapshot that is no longer ready, or whose every served
/// copy was lost with expunged sleds.
async fn snapshot_source(
    nexus: &Nexus,
    snapshot_id: SnapshotUuid,
) -> Result<Option<NbdExport>, Error> {
    let snapshot = nexus.datastore().snapshot_fetch(snapshot_id).await?;
    if snapshot.state() != SnapshotState::Ready {
        return Err(Error::conflict(format!(
            "snapshot \"{}\" is {}; a disk is made only from a ready snapshot",
            snapshot.name(),
            snapshot.state().label()
        )));
    }
    let region_snapshots = nexus.datastore().region_snapshots(snapshot_id).await?;
    let mut served = false;
    for row in &region_snapshots {
        let Some(address) = row.export_address.as_deref().and_then(|a| a.parse().ok()) else {
            continue;
        };
        served = true;
        // One on an expunged sled went with it: copy from another.
        if nexus
            .datastore()
            .sled_fetch(row.sled_id())
            .await?
            .is_expunged()
        {
            continue;
        }
        return Ok(Some(NbdExport {
            address,
            name: format!("{}.{}", row.region_id(), row.snapshot_id()),
        }));
    }
    if served {
        return Err(Error::conflict(format!(
            "snapshot \"{}\" has no copy left on a sled in service",
            snapshot.name()
        )));
    }
    Ok(None)
}

/// Makes a region on its sled agent (idempotent), copied from `source` if given, and records
/// where the sled serves it (if it does).
pub(crate) async fn ensure_region(
    nexus: &Nexus,
    region: &PlacedRegion,
    source: Option<NbdExport>,
) -> Result<(), Error> {
    let client = nexus.sled_client(region.sled_id).await?;
    let summary = client
        .region_ensure(
            &region.region_id,
            &RegionEnsureBody {
                size: region.size,
                block_size: region.block_size,
                source,
            },
        )
        .await
        .map_err(sled_agent_error)?
        .into_inner();
    if let Some(export) = summary.export {
        nexus
            .datastore()
            .region_set_export_address(region.region_id, export.address)
            .await?;
    }
    Ok(())
}

/// Deletes a region from its sled agent (idempotent: an unknown region is already gone). A
/// region on an expunged sled is gone with the sled: nothing is asked, and that is success. A
/// sled agent out of reach is `ServiceUnavailable` (the saga retries it: an undo until it
/// answers or its sled is expunged, a forward action for its budget).
pub(crate) async fn delete_region(nexus: &Nexus, region: &PlacedRegion) -> Result<(), Error> {
    let sled = nexus.datastore().sled_fetch(region.sled_id).await?;
    if sled.is_expunged() {
        return Ok(());
    }
    let client = nexus.sled_client(region.sled_id).await?;
    client
        .region_delete(&region.region_id)
        .await
        .map_err(sled_agent_error)?;
    Ok(())
}

/// The disk the finished saga `result` created, as its last step left it.
pub fn created(result: &steno::SagaResultOk) -> Option<Disk> {
    result.lookup_node_output::<Disk>("detached").ok()
}

async fn undo_mark_detached(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let disk_id = ctx.lookup::<DiskUuid>("disk")?;
    ctx.user_data()
        .nexus
        .datastore()
        .disk_transition(disk_id, &[DiskState::Detached], DiskState::Creating)
        .await?;
    Ok(())
}

async fn mark_detached(ctx: &NexusActionContext) -> Result<Disk, ActionError> {
    let disk_id = ctx.lookup::<DiskUuid>("disk")?;
    let transition = ctx
        .user_data()
        .nexus
        .datastore()
        .disk_transition(disk_id, &[DiskState::Creating], DiskState::Detached)
        .await
        .map_err(action_failed)?;
    match transition {
        DiskTransition::Applied(disk) | DiskTransition::AlreadyDone(disk) => Ok(disk),
        DiskTransition::Conflict(disk) => Err(action_failed(Error::conflict(format!(
            "disk \"{}\" is {:?}, no longer being created",
            disk.name(),
            disk.state()
        )))),
    }
}
