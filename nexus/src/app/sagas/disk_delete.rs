//! disk-delete: marks a detached (or faulted) disk destroyed, deletes its regions on their
//! sleds, releases the region rows.
//!
//! ```text
//!   destroy_record ──► delete_regions ──► release_regions
//! ```
//!
//! - `destroy_record` moves the disk from `detached` or `faulted` to `destroyed` and sets
//!   `time_deleted` (freeing its name), one conditional `UPDATE` (`disk_transition`): a disk
//!   that is being created, attached, or being attached or detached is a `Conflict` (409) and
//!   nothing changes; so is a disk an instance create made that its create has not attached
//!   yet (`disk_destroy_unless_held`: the create's undo must find the disk to destroy it); a repeat finds it already destroyed. From here on no attach can pick the
//!   disk (only a `detached` disk is attached). Outputs the disk's regions (read after the
//!   transition: they go only in `release_regions`). Undo: brings the disk back as `faulted`
//!   (`disk_undelete_faulted`), Oxide's choice: by then its regions may have been deleted and
//!   made again empty, so its data is not to be trusted; the user may delete it again. If a
//!   disk of that name was created in the project meanwhile, the name is not free: the undo
//!   then finishes the delete instead (deletes the regions on their sleds and releases the
//!   rows), so nothing leaks either way.
//! - `delete_regions` deletes each region on its sled agent (`DELETE /regions/{id}`,
//!   idempotent). **A sled that is gone:** a region on an expunged sled is gone with the
//!   sled, so nothing is asked of it and the step goes on; a sled agent that is not expunged
//!   but does not answer is a transient error, retried for the action's budget (60 s), after
//!   which the saga unwinds and the disk shows `faulted` with its regions: the delete can be
//!   tried again, and succeeds once the sled answers or an operator expunged it (`omdb nexus
//!   sled-expunge`). So an expunged sled never wedges a delete, and a merely unreachable one
//!   only fails it cleanly. Undo: makes the regions again on their sleds (empty; expunged
//!   sleds skipped), so the database and the sled agents agree again.
//! - `release_regions` deletes the region rows and gives their storage back to the sleds
//!   (`disk_regions_release`, one transaction; a repeat releases none). Last node: no undo.
//!   As a subsaga of instance-delete a later failure can unwind it after this node ran: then
//!   the earlier undos see the disk's regions released (`delete_finished`) and leave the
//!   delete complete (making the regions again would leak them on the sleds, with no row; a
//!   `faulted` disk with no region would be a lie). The instance-delete then fails with the
//!   disk gone.
//!
//! After the saga: the disk is destroyed, no region row names it, no sled counts its storage
//! and no sled agent in service holds a region of it.

use super::disk_create::{PlacedRegion, delete_region, ensure_region};
use super::{NexusActionContext, action_failed, declare_saga};
use halyard_common::ids::DiskUuid;
use halyard_common::{DiskState, Error, Labelled};
use halyard_db_model::Disk;
use halyard_db_queries::DiskTransition;
use serde::{Deserialize, Serialize};
use slog::warn;
use steno::ActionError;

declare_saga! {
    saga SagaDiskDelete, named "disk-delete", params Params;
    action names "disk_delete";
    // node      label             action static    action           undo
    "regions",   "DestroyRecord",  DESTROY_RECORD,  destroy_record,  undo_destroy_record;
    "deleted",   "DeleteRegions",  DELETE_REGIONS,  delete_regions,  undo_delete_regions;
    "released",  "ReleaseRegions", RELEASE_REGIONS, release_regions, -;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub disk_id: DiskUuid,
}

/// The states a disk may be deleted from.
pub const DELETABLE: [DiskState; 2] = [DiskState::Detached, DiskState::Faulted];

/// Why a disk in a state not [`DELETABLE`] cannot be deleted (409).
pub fn not_deletable(disk: &Disk) -> Error {
    if let Some(region) = disk.replacing_region() {
        return Error::conflict(format!(
            "disk \"{}\" is having its lost region {region} replaced; retry when that is done",
            disk.name()
        ));
    }
    let advice = match disk.state() {
        DiskState::Attaching | DiskState::Attached | DiskState::Detaching => {
            ": detach it from its instance first"
        }
        DiskState::Creating => ": wait until it is created",
        _ => "",
    };
    Error::conflict(format!(
        "disk \"{}\" is {}; only a detached (or faulted) disk can be deleted{advice}",
        disk.name(),
        disk.state().label(),
    ))
}

async fn destroy_record(ctx: &NexusActionContext) -> Result<Vec<PlacedRegion>, ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let datastore = ctx.user_data().nexus.datastore();
    let transition = datastore
        .disk_destroy_unless_held(params.disk_id, &DELETABLE)
        .await
        .map_err(action_failed)?;
    if let DiskTransition::Conflict(disk) = transition {
        return Err(action_failed(not_deletable(&disk)));
    }
    let regions = datastore
        .disk_regions(params.disk_id)
        .await
        .map_err(action_failed)?;
    Ok(regions.iter().map(PlacedRegion::from).collect())
}

async fn undo_destroy_record(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    if delete_finished(ctx).await? {
        return Ok(());
    }
    let params = ctx.saga_params::<Params>()?;
    let nexus = &ctx.user_data().nexus;
    match nexus
        .datastore()
        .disk_undelete_faulted(params.disk_id)
        .await
    {
        Ok(_) => Ok(()),
        Err(Error::ObjectAlreadyExists { .. }) => {
            // Its name was taken meanwhile: finish the delete instead.
            let regions = ctx.lookup::<Vec<PlacedRegion>>("regions")?;
            for region in &regions {
                delete_region(nexus, region).await?;
            }
            nexus
                .datastore()
                .disk_regions_release(params.disk_id)
                .await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn delete_regions(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let regions = ctx.lookup::<Vec<PlacedRegion>>("regions")?;
    let nexus = &ctx.user_data().nexus;
    for (deleted, region) in regions.iter().enumerate() {
        if let Err(e) = delete_region(nexus, region).await {
            // Put back what this action deleted (its undo is not run when it fails), so the
            // sled agents match the region rows the unwind keeps.
            for deleted in &regions[..deleted] {
                if let Err(cleanup) = ensure_region(nexus, deleted, None).await {
                    warn!(nexus.log(), "disk-delete: making a region again after a failed delete";
                        "region_id" => %deleted.region_id, "sled_id" => %deleted.sled_id,
                        "error" => %cleanup);
                }
            }
            return Err(action_failed(e));
        }
    }
    Ok(())
}

/// Whether `release_regions` ran: the disk had regions and none are left in the database.
/// Then the delete is complete, and the undos leave it so (only as a subsaga of
/// instance-delete can a failure come after the last node).
async fn delete_finished(ctx: &NexusActionContext) -> Result<bool, anyhow::Error> {
    let params = ctx.saga_params::<Params>()?;
    let regions = ctx.lookup::<Vec<PlacedRegion>>("regions")?;
    let left = ctx
        .user_data()
        .nexus
        .datastore()
        .disk_regions(params.disk_id)
        .await?;
    Ok(!regions.is_empty() && left.is_empty())
}

async fn undo_delete_regions(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    if delete_finished(ctx).await? {
        return Ok(());
    }
    let regions = ctx.lookup::<Vec<PlacedRegion>>("regions")?;
    let nexus = &ctx.user_data().nexus;
    for region in &regions {
        let sled = nexus.datastore().sled_fetch(region.sled_id).await?;
        if sled.is_expunged() {
            continue;
        }
        ensure_region(nexus, region, None).await?;
    }
    Ok(())
}

async fn release_regions(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    ctx.user_data()
        .nexus
        .datastore()
        .disk_regions_release(params.disk_id)
        .await
        .map_err(action_failed)?;
    Ok(())
}
