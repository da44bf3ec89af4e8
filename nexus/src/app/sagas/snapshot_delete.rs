//! snapshot-delete: marks a ready (or faulted) snapshot destroyed, deletes its region
//! snapshots on their sleds, releases their rows.
//!
//! ```text
//!   destroy_record ──► delete_region_snapshots ──► release
//! ```
//!
//! - `destroy_record` moves the snapshot from `ready` or `faulted` to `destroyed` and sets
//!   `time_deleted` (freeing its name), one conditional `UPDATE`: a snapshot being created is
//!   a `Conflict` (409); a repeat finds it already destroyed. Outputs its region snapshots.
//!   Undo: brings it back as `faulted` (its region snapshots may be partly deleted by then, so
//!   its data is not to be trusted; the user may delete it again). If a snapshot of its name
//!   was created in the project meanwhile, the undo finishes the delete instead (deletes the
//!   region snapshots on their sleds and releases the rows), so nothing leaks either way.
//! - `delete_region_snapshots` deletes each region snapshot on its sled agent (idempotent);
//!   one on an expunged sled is gone with it. A sled agent out of reach is retried for the
//!   action's budget, then the saga unwinds and the snapshot shows `faulted`. Undo: nothing to
//!   make again (a region snapshot holds a point in time that is gone); the snapshot comes
//!   back faulted through `destroy_record`'s undo.
//! - `release` deletes the region snapshot rows and gives their storage back to the sleds
//!   (`region_snapshots_release`, one transaction; a repeat releases none). Last node.
//!
//! Disks made from the snapshot keep their data: their regions are copies.

use super::snapshot_create::{PlacedRegionSnapshot, delete_region_snapshot};
use super::{NexusActionContext, action_failed, declare_saga};
use halyard_common::ids::SnapshotUuid;
use halyard_common::{Error, Labelled, SnapshotState};
use halyard_db_model::Snapshot;
use halyard_db_queries::SnapshotTransition;
use serde::{Deserialize, Serialize};
use slog::warn;
use steno::ActionError;

declare_saga! {
    saga SagaSnapshotDelete, named "snapshot-delete", params Params;
    action names "snapshot_delete";
    // node      label                    action static            action                   undo
    "region_snapshots", "DestroyRecord",  DESTROY_RECORD,          destroy_record,          undo_destroy_record;
    "deleted",   "DeleteRegionSnapshots", DELETE_REGION_SNAPSHOTS, delete_region_snapshots, -;
    "released",  "Release",               RELEASE,                 release,                 -;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub snapshot_id: SnapshotUuid,
}

/// The states a snapshot may be deleted from.
pub const DELETABLE: [SnapshotState; 2] = [SnapshotState::Ready, SnapshotState::Faulted];

/// Why a snapshot in a state not [`DELETABLE`] cannot be deleted (409).
pub fn not_deletable(snapshot: &Snapshot) -> Error {
    Error::conflict(format!(
        "snapshot \"{}\" is {}; only a ready (or faulted) snapshot can be deleted",
        snapshot.name(),
        snapshot.state().label(),
    ))
}

async fn destroy_record(
    ctx: &NexusActionContext,
) -> Result<Vec<PlacedRegionSnapshot>, ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let datastore = ctx.user_data().nexus.datastore();
    let transition = datastore
        .snapshot_transition(params.snapshot_id, &DELETABLE, SnapshotState::Destroyed)
        .await
        .map_err(action_failed)?;
    match transition {
        SnapshotTransition::Applied(_) | SnapshotTransition::AlreadyDone(_) => {}
        SnapshotTransition::Conflict(found) => {
            return Err(action_failed(not_deletable(&found)));
        }
    }
    let rows = datastore
        .region_snapshots(params.snapshot_id)
        .await
        .map_err(action_failed)?;
    Ok(rows.iter().map(PlacedRegionSnapshot::from).collect())
}

async fn undo_destroy_record(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let params = ctx.saga_params::<Params>()?;
    let nexus = &ctx.user_data().nexus;
    match nexus
        .datastore()
        .snapshot_undelete_faulted(params.snapshot_id)
        .await
    {
        Ok(_) => Ok(()),
        Err(Error::Conflict { .. }) => {
            warn!(nexus.log(), "snapshot-delete: finishing the delete instead of undoing it \
                (its name is taken)"; "snapshot_id" => %params.snapshot_id);
            let rows = ctx.lookup::<Vec<PlacedRegionSnapshot>>("region_snapshots")?;
            for row in &rows {
                delete_region_snapshot(nexus, row).await?;
            }
            nexus
                .datastore()
                .region_snapshots_release(params.snapshot_id)
                .await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn delete_region_snapshots(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let rows = ctx.lookup::<Vec<PlacedRegionSnapshot>>("region_snapshots")?;
    let nexus = &ctx.user_data().nexus;
    for row in &rows {
        delete_region_snapshot(nexus, row)
            .await
            .map_err(action_failed)?;
    }
    Ok(())
}

async fn release(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    ctx.user_data()
        .nexus
        .datastore()
        .region_snapshots_release(params.snapshot_id)
        .await
        .map_err(action_failed)?;
    Ok(())
}
