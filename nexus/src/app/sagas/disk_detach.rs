//! disk-detach: detaches a disk from a stopped instance.
//!
//! ```text
//!   begin ──► detached
//! ```
//!
//! | node | action | undo |
//! |---|---|---|
//! | `begin` | `attached` → `detaching`, if the instance is stopped and the disk is attached to it and is not its boot disk (`DataStore::disk_detach_begin`: one transaction that locks the instance's row, then the disk's, as an attach does). `Conflict` (nothing changed) otherwise; a repeat finds it detaching already | `detaching` → `attached` (back in its slot), if it still is detaching from this instance |
//! | `detached` | `detaching` → `detached`, its slot freed; outputs the disk as that left it ([`detached`]). A repeat finds it no longer naming the instance | — (last node) |
//!
//! No sled agent is asked anything: the instance is stopped (a start refuses an instance with
//! a disk `detaching`), so no VMM has the disk.

use super::{NexusActionContext, action_failed, declare_saga};
use halyard_common::Error;
use halyard_common::ids::{DiskUuid, InstanceUuid};
use halyard_db_model::Disk;
use halyard_db_queries::DiskTransition;
use serde::{Deserialize, Serialize};
use steno::ActionError;

declare_saga! {
    saga SagaDiskDetach, named "disk-detach", params Params;
    action names "disk_detach";
    // node     label          action static  action         undo
    "begin",    "BeginDetach", BEGIN_DETACH,  begin_detach,  undo_begin_detach;
    "detached", "Detach",      FINISH_DETACH, finish_detach, -;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub instance_id: InstanceUuid,
    pub disk_id: DiskUuid,
}

/// The disk as the finished saga `result` left it: detached.
pub fn detached(result: &steno::SagaResultOk) -> Option<Disk> {
    result.lookup_node_output::<Disk>("detached").ok()
}

async fn begin_detach(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    ctx.user_data()
        .nexus
        .datastore()
        .disk_detach_begin(params.instance_id, params.disk_id)
        .await
        .map_err(action_failed)?;
    Ok(())
}

async fn undo_begin_detach(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let params = ctx.saga_params::<Params>()?;
    ctx.user_data()
        .nexus
        .datastore()
        .disk_detach_undo(params.instance_id, params.disk_id)
        .await?;
    Ok(())
}

async fn finish_detach(ctx: &NexusActionContext) -> Result<Disk, ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let moved = ctx
        .user_data()
        .nexus
        .datastore()
        .disk_detach_finish(params.instance_id, params.disk_id)
        .await
        .map_err(action_failed)?;
    match moved {
        DiskTransition::Applied(disk) | DiskTransition::AlreadyDone(disk) => Ok(disk),
        DiskTransition::Conflict(disk) => Err(action_failed(Error::conflict(format!(
            "disk \"{}\" is {} again; the detach was undone",
            disk.name(),
            disk.state()
        )))),
    }
}
