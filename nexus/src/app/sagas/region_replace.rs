//! region-replace: gives a degraded disk back its third replica. A region on an expunged sled
//! is replaced by a copy of a healthy one on another sled.
//!
//! ```text
//!   begin ──► allocate ──► ensure ──► swap
//! ```
//!
//! | node | action | undo |
//! |---|---|---|
//! | `begin` | marks the disk as having the lost region replaced (`DataStore::region_replacement_begin`): only a detached disk, or one attached to a stopped instance, and only a region on an expunged sled. Takes the instance's lock then the disk's, as an attach does; while the mark is set, attach, detach, delete and a start of its instance are refused (409), so nothing writes the replicas being copied. `Conflict` otherwise; a repeat finds the mark set. The mark names this saga's new region too, so a second replacement of the same lost region (e.g. started by a live Nexus while this saga waited to be adopted from one gone silent) is refused | clears the mark (if it is still this saga's) |
//! | `allocate` | places the new region (`region_replacement_allocate`: on an in-service sled of the lost region's kind with room, holding none of the disk's regions; race-safe on the sled's `reserved_storage`; its id is in the saga's params, so a repeat finds it). `InsufficientCapacity` (507) when no sled has room. Outputs it | deletes the row and gives its storage back (`region_release`; a repeat finds none) |
//! | `ensure` | asks its sled agent to make it as a copy of a healthy replica's NBD export (`PUT /regions/{id}` with a `source`; idempotent), and records where it is served. A simulated disk has no data: the region is made empty | deletes it on its sled agent (idempotent; skipped for an expunged sled) |
//! | `swap` | one transaction: the lost region's row deleted (its storage given back to its sled's count), the mark cleared (`region_replacement_finish`). A repeat finds it done. Outputs the disk | — (last node) |
//!
//! After a complete unwind the disk is as it was (degraded, not marked), the new region's row,
//! its storage and its file are gone. Nothing is asked of the expunged sled: its region went
//! with it.
//!
//! The saga is started by the `region_replacement` background task for each region on an
//! expunged sled whose disk it could repair (`DataStore::regions_to_replace`).

use super::disk_create::{PlacedRegion, delete_region, ensure_region};
use super::{NexusActionContext, action_failed, declare_saga};
use crate::app::Nexus;
use halyard_common::Error;
use halyard_common::ids::{DiskUuid, RegionUuid};
use halyard_db_model::Disk;
use halyard_sled_agent_api::NbdExport;
use serde::{Deserialize, Serialize};
use steno::ActionError;

declare_saga! {
    saga SagaRegionReplace, named "region-replace", params Params;
    action names "region_replace";
    // node      label             action static  action     undo
    "begin",     "BeginReplace",   BEGIN,         begin,     undo_begin;
    "region",    "AllocateRegion", ALLOCATE,      allocate,  undo_allocate;
    "ensured",   "EnsureRegion",   ENSURE,        ensure,    undo_ensure;
    "swapped",   "SwapRegions",    SWAP,          swap,      -;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub disk_id: DiskUuid,
    /// The region on an expunged sled being replaced.
    pub lost_region_id: RegionUuid,
    /// The id the new region gets (chosen when the saga is created, so a repeat of a step
    /// finds what an earlier run placed).
    pub new_region_id: RegionUuid,
}

/// The disk as the finished saga `result` left it: with its new region.
pub fn replaced(result: &steno::SagaResultOk) -> Option<Disk> {
    result.lookup_node_output::<Disk>("swapped").ok()
}

async fn begin(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    ctx.user_data()
        .nexus
        .datastore()
        .region_replacement_begin(params.disk_id, params.lost_region_id, params.new_region_id)
        .await
        .map_err(action_failed)?;
    Ok(())
}

async fn undo_begin(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let params = ctx.saga_params::<Params>()?;
    ctx.user_data()
        .nexus
        .datastore()
        .region_replacement_abandon(params.disk_id, params.lost_region_id, params.new_region_id)
        .await?;
    Ok(())
}

async fn allocate(ctx: &NexusActionContext) -> Result<PlacedRegion, ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let region = ctx
        .user_data()
        .nexus
        .datastore()
        .region_replacement_allocate(params.disk_id, params.lost_region_id, params.new_region_id)
        .await
        .map_err(action_failed)?;
    Ok(PlacedRegion::from(&region))
}

async fn undo_allocate(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let params = ctx.saga_params::<Params>()?;
    ctx.user_data()
        .nexus
        .datastore()
        .region_release(params.new_region_id)
        .await?;
    Ok(())
}

async fn ensure(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let region = ctx.lookup::<PlacedRegion>("region")?;
    let nexus = &ctx.user_data().nexus;
    let source = healthy_replica(nexus, params.disk_id, params.new_region_id)
        .await
        .map_err(action_failed)?;
    ensure_region(nexus, &region, source)
        .await
        .map_err(action_failed)?;
    Ok(())
}

async fn undo_ensure(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let region = ctx.lookup::<PlacedRegion>("region")?;
    delete_region(&ctx.user_data().nexus, &region).await?;
    Ok(())
}

async fn swap(ctx: &NexusActionContext) -> Result<Disk, ActionError> {
    let params = ctx.saga_params::<Params>()?;
    ctx.user_data()
        .nexus
        .datastore()
        .region_replacement_finish(params.disk_id, params.lost_region_id, params.new_region_id)
        .await
        .map_err(action_failed)
}

/// The NBD export of one of the disk's regions on an in-service sled (not `new_region_id`,
/// the copy being made): what the new region is copied from. `None` for a disk whose regions
/// are not served (a simulated sled's hold no data). `Conflict` when a served disk has no
/// healthy replica left to copy.
async fn healthy_replica(
    nexus: &Nexus,
    disk_id: DiskUuid,
    new_region_id: RegionUuid,
) -> Result<Option<NbdExport>, Error> {
    let regions = nexus.datastore().disk_regions(disk_id).await?;
    let mut served = false;
    for region in regions.iter().filter(|r| r.id() != new_region_id) {
        let Some(address) = region.export_address.as_deref() else {
            continue;
        };
        served = true;
        if nexus
            .datastore()
            .sled_fetch(region.sled_id())
            .await?
            .is_expunged()
        {
            continue;
        }
        let address = address.parse().map_err(|e| {
            Error::internal(format!(
                "region {} has an unreadable export address {address:?}: {e}",
                region.id()
            ))
        })?;
        return Ok(Some(NbdExport {
            address,
            name: region.id().to_string(),
        }));
    }
    if served {
        return Err(Error::conflict(format!(
            "disk {disk_id} has no replica on a sled in service left to copy"
        )));
    }
    Ok(None)
}
