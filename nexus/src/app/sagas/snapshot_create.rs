//! snapshot-create: records a snapshot of a disk, reserves room beside each of the disk's
//! regions, pauses the VMM using the disk (if one runs), snapshots every region at that one
//! point, resumes the VMM, marks the snapshot ready.
//!
//! ```text
//!   create_record ──► reserve ──► pause_vmm ──► snapshot_regions ──► resume_vmm ──► mark_ready
//! ```
//!
//! - `create_record` inserts the snapshot `creating`, of the disk's size and block size, in its
//!   project (idempotent by snapshot id; a live snapshot of that name in the project is
//!   `ObjectAlreadyExists`). Undo: marks it destroyed (which frees its name).
//! - `reserve` reserves one region snapshot per region of the disk, on that region's sled
//!   (`DataStore::region_snapshots_reserve`: race-safe, the sleds' `reserved_storage` grows by
//!   the region's size in the same transaction; a repeat returns the same rows). A sled without
//!   the room (or expunged): `InsufficientCapacity` (507), nothing reserved. Outputs them.
//!   Undo: releases the rows and gives their storage back (`region_snapshots_release`).
//! - `pause_vmm`: if the disk is attached to an instance whose active VMM runs, pauses that
//!   VMM's vCPUs (`PUT /vmms/{id}/vcpus {paused: true}`; QEMU drains and flushes the guest's
//!   I/O), so every region holds the same point in time. A VMM in any other state than
//!   running (starting, migrating, stopping) is a `Conflict` (409): the snapshot is taken of
//!   a stopped or a running instance. Outputs the paused VMM (none for a detached disk or a
//!   stopped instance). Undo: resumes it (idempotent; a VMM its sled agent no longer knows is
//!   left alone).
//! - `snapshot_regions` asks each region's sled agent for the region snapshot
//!   (`PUT /regions/{region}/snapshots/{snapshot}`, idempotent) and records where it is
//!   served (if the sled serves it). If one fails, the action deletes those it made (its undo
//!   is not run). Undo: deletes each on its sled agent (idempotent), skipping an expunged
//!   sled.
//! - `resume_vmm` resumes the VMM `pause_vmm` paused (idempotent). No undo: `pause_vmm`'s
//!   undo resumes it again, harmlessly.
//! - `mark_ready` moves the snapshot `creating` → `ready`; a repeat finds it done. Last node.
//!
//! After a complete unwind the snapshot is destroyed, holds no region snapshot row, no sled's
//! `reserved_storage` counts it, no sled agent holds a region snapshot of it, and the VMM runs
//! (its vCPUs are not paused).

use super::{NexusActionContext, action_failed, declare_saga};
use crate::app::Nexus;
use crate::app::sled::sled_agent_error;
use halyard_common::ids::{DiskUuid, RegionUuid, SledUuid, SnapshotUuid, VmmUuid};
use halyard_common::{BlockSize, ByteCount, Error, Labelled, Name, SnapshotState, VmmState};
use halyard_db_model::{NewSnapshotParams, RegionSnapshot, Snapshot};
use halyard_db_queries::SnapshotTransition;
use halyard_sled_agent_api::VmmVcpus;
use serde::{Deserialize, Serialize};
use slog::warn;
use steno::ActionError;

declare_saga! {
    saga SagaSnapshotCreate, named "snapshot-create", params Params;
    action names "snapshot_create";
    // node      label              action static     action            undo
    "snapshot",  "CreateRecord",    CREATE_RECORD,    create_record,    undo_create_record;
    "reserved",  "Reserve",         RESERVE,          reserve,          undo_reserve;
    "paused",    "PauseVmm",        PAUSE_VMM,        pause_vmm,        undo_pause_vmm;
    "taken",     "SnapshotRegions", SNAPSHOT_REGIONS, snapshot_regions, undo_snapshot_regions;
    "resumed",   "ResumeVmm",       RESUME_VMM,       resume_vmm,       -;
    "ready",     "MarkReady",       MARK_READY,       mark_ready,       -;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub snapshot_id: SnapshotUuid,
    pub disk_id: DiskUuid,
    pub name: Name,
    pub description: String,
}

/// A region snapshot as a saga node records it: where it is and its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedRegionSnapshot {
    pub snapshot_id: SnapshotUuid,
    pub region_id: RegionUuid,
    pub sled_id: SledUuid,
    pub size: ByteCount,
    pub block_size: BlockSize,
}

impl From<&RegionSnapshot> for PlacedRegionSnapshot {
    fn from(row: &RegionSnapshot) -> PlacedRegionSnapshot {
        PlacedRegionSnapshot {
            snapshot_id: row.snapshot_id(),
            region_id: row.region_id(),
            sled_id: row.sled_id(),
            size: row.size(),
            block_size: row.block_size(),
        }
    }
}

/// A VMM whose vCPUs the saga paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PausedVmm {
    pub propolis_id: VmmUuid,
    pub sled_id: SledUuid,
}

async fn create_record(ctx: &NexusActionContext) -> Result<SnapshotUuid, ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let created = ctx
        .user_data()
        .nexus
        .datastore()
        .snapshot_insert(
            NewSnapshotParams {
                id: params.snapshot_id,
                name: params.name,
                description: params.description,
            },
            params.disk_id,
        )
        .await
        .map_err(action_failed)?;
    Ok(created.id())
}

async fn undo_create_record(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let params = ctx.saga_params::<Params>()?;
    let datastore = ctx.user_data().nexus.datastore();
    match datastore
        .snapshot_transition(
            params.snapshot_id,
            &[SnapshotState::Creating],
            SnapshotState::Destroyed,
        )
        .await
    {
        Ok(SnapshotTransition::Applied(_) | SnapshotTransition::AlreadyDone(_)) => Ok(()),
        Ok(SnapshotTransition::Conflict(found)) => Err(Error::internal(format!(
            "undoing snapshot-create: snapshot {} is {}, not creating",
            found.id(),
            found.state().label()
        ))
        .into()),
        Err(e) if e.error_code() == "ObjectNotFound" => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn reserve(ctx: &NexusActionContext) -> Result<Vec<PlacedRegionSnapshot>, ActionError> {
    let snapshot_id = ctx.lookup::<SnapshotUuid>("snapshot")?;
    let reserved = ctx
        .user_data()
        .nexus
        .datastore()
        .region_snapshots_reserve(snapshot_id)
        .await
        .map_err(action_failed)?;
    Ok(reserved.iter().map(PlacedRegionSnapshot::from).collect())
}

async fn undo_reserve(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let snapshot_id = ctx.lookup::<SnapshotUuid>("snapshot")?;
    ctx.user_data()
        .nexus
        .datastore()
        .region_snapshots_release(snapshot_id)
        .await?;
    Ok(())
}

async fn pause_vmm(ctx: &NexusActionContext) -> Result<Option<PausedVmm>, ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let nexus = &ctx.user_data().nexus;
    let disk = nexus
        .datastore()
        .disk_fetch(params.disk_id)
        .await
        .map_err(action_failed)?;
    let Some(instance_id) = disk.attached_to() else {
        return Ok(None);
    };
    let found = nexus
        .datastore()
        .instance_fetch_with_vmm(instance_id)
        .await
        .map_err(action_failed)?;
    let Some(vmm) = found.active_vmm else {
        return Ok(None);
    };
    if vmm.state() != VmmState::Running {
        return Err(action_failed(Error::conflict(format!(
            "the VMM of the instance using disk \"{}\" is {}; a snapshot is taken of a \
             stopped or a running instance's disk",
            disk.name(),
            vmm.state().label()
        ))));
    }
    let paused = PausedVmm {
        propolis_id: vmm.id(),
        sled_id: vmm.sled_id(),
    };
    set_vcpus_paused(nexus, &paused, true)
        .await
        .map_err(action_failed)?;
    Ok(Some(paused))
}

async fn undo_pause_vmm(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    if let Some(paused) = ctx.lookup::<Option<PausedVmm>>("paused")? {
        resume(&ctx.user_data().nexus, &paused).await?;
    }
    Ok(())
}

async fn resume_vmm(ctx: &NexusActionContext) -> Result<(), ActionError> {
    if let Some(paused) = ctx.lookup::<Option<PausedVmm>>("paused")? {
        resume(&ctx.user_data().nexus, &paused)
            .await
            .map_err(action_failed)?;
    }
    Ok(())
}

/// Resumes a VMM's vCPUs. A VMM its sled agent no longer knows (404), or no longer running
/// (409: stopped meanwhile), has nothing to resume.
async fn resume(nexus: &Nexus, paused: &PausedVmm) -> Result<(), Error> {
    let client = nexus.sled_client(paused.sled_id).await?;
    match client
        .vmm_put_vcpus(&paused.propolis_id, &VmmVcpus { paused: false })
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.status().map(|s| s.as_u16()), Some(404 | 409)) => {
            warn!(nexus.log(), "snapshot-create: the paused VMM is gone or not running";
                "propolis_id" => %paused.propolis_id, "error" => %e);
            Ok(())
        }
        Err(e) => Err(sled_agent_error(e)),
    }
}

async fn set_vcpus_paused(nexus: &Nexus, vmm: &PausedVmm, paused: bool) -> Result<(), Error> {
    let client = nexus.sled_client(vmm.sled_id).await?;
    client
        .vmm_put_vcpus(&vmm.propolis_id, &VmmVcpus { paused })
        .await
        .map_err(sled_agent_error)?;
    Ok(())
}

async fn snapshot_regions(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let reserved = ctx.lookup::<Vec<PlacedRegionSnapshot>>("reserved")?;
    let nexus = &ctx.user_data().nexus;
    for (made, region_snapshot) in reserved.iter().enumerate() {
        if let Err(e) = ensure_region_snapshot(nexus, region_snapshot).await {
            // Clean up what this action made (its undo is not run when it fails).
            for made in &reserved[..made] {
                if let Err(cleanup) = delete_region_snapshot(nexus, made).await {
                    warn!(nexus.log(), "snapshot-create: deleting a region snapshot after a \
                        failed ensure";
                        "region_id" => %made.region_id, "snapshot_id" => %made.snapshot_id,
                        "sled_id" => %made.sled_id, "error" => %cleanup);
                }
            }
            return Err(action_failed(e));
        }
    }
    Ok(())
}

async fn undo_snapshot_regions(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let reserved = ctx.lookup::<Vec<PlacedRegionSnapshot>>("reserved")?;
    let nexus = &ctx.user_data().nexus;
    for region_snapshot in &reserved {
        delete_region_snapshot(nexus, region_snapshot).await?;
    }
    Ok(())
}

/// Takes a region snapshot on its sled agent (idempotent) and records where it is served.
async fn ensure_region_snapshot(
    nexus: &Nexus,
    region_snapshot: &PlacedRegionSnapshot,
) -> Result<(), Error> {
    let client = nexus.sled_client(region_snapshot.sled_id).await?;
    let summary = client
        .region_snapshot_ensure(&region_snapshot.region_id, &region_snapshot.snapshot_id)
        .await
        .map_err(sled_agent_error)?
        .into_inner();
    if let Some(export) = summary.export {
        nexus
            .datastore()
            .region_snapshot_set_export_address(
                region_snapshot.snapshot_id,
                region_snapshot.region_id,
                export.address,
            )
            .await?;
    }
    Ok(())
}

/// Deletes a region snapshot from its sled agent (idempotent). One on an expunged sled is gone
/// with the sled: nothing is asked, and that is success.
pub(crate) async fn delete_region_snapshot(
    nexus: &Nexus,
    region_snapshot: &PlacedRegionSnapshot,
) -> Result<(), Error> {
    let sled = nexus
        .datastore()
        .sled_fetch(region_snapshot.sled_id)
        .await?;
    if sled.is_expunged() {
        return Ok(());
    }
    let client = nexus.sled_client(region_snapshot.sled_id).await?;
    client
        .region_snapshot_delete(&region_snapshot.region_id, &region_snapshot.snapshot_id)
        .await
        .map_err(sled_agent_error)?;
    Ok(())
}

async fn mark_ready(ctx: &NexusActionContext) -> Result<Snapshot, ActionError> {
    let snapshot_id = ctx.lookup::<SnapshotUuid>("snapshot")?;
    let transition = ctx
        .user_data()
        .nexus
        .datastore()
        .snapshot_transition(
            snapshot_id,
            &[SnapshotState::Creating],
            SnapshotState::Ready,
        )
        .await
        .map_err(action_failed)?;
    match transition {
        SnapshotTransition::Applied(found) | SnapshotTransition::AlreadyDone(found) => Ok(found),
        SnapshotTransition::Conflict(found) => Err(action_failed(Error::conflict(format!(
            "snapshot \"{}\" is {}, no longer being created",
            found.name(),
            found.state().label()
        )))),
    }
}

/// The snapshot the finished saga `result` created, as its last step left it.
pub fn created(result: &steno::SagaResultOk) -> Option<Snapshot> {
    result.lookup_node_output::<Snapshot>("ready").ok()
}
