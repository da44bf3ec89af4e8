//! disk-attach: attaches a detached disk to a stopped instance.
//!
//! ```text
//!   begin ──► attached
//! ```
//!
//! | node | action | undo |
//! |---|---|---|
//! | `begin` | `detached` → `attaching`, in the instance's lowest free slot, if the instance is stopped (`DataStore::disk_attach_begin`: one transaction that locks the instance's row, then the disk's; see `db-queries/src/datastore/disk_attach.rs` for why a racing start cannot run a VMM without the disk). `Conflict` (nothing taken) if the instance has a VMM, the disk is not detached, or the instance has 8 disks; a repeat finds it attaching already | `attaching` → `detached`, if the disk still is attaching to this instance (else nothing: it is not ours any more) |
//! | `attached` | `attaching` → `attached`; outputs the disk as that left it ([`attached`]). `Conflict` if the disk no longer is attaching to the instance (the instance was deleted meanwhile, which detached it) | — (last node) |
//!
//! No sled agent is asked anything: the instance is stopped, and its next VMM is registered
//! with the disks attached at its start. Both actions and the undo are conditional writes of
//! the disk's row, so a repeat changes nothing.

use super::{NexusActionContext, action_failed, declare_saga};
use halyard_common::Error;
use halyard_common::ids::{DiskUuid, InstanceUuid};
use halyard_db_model::Disk;
use halyard_db_queries::{DiskTransition, InstanceForDisks};
use serde::{Deserialize, Serialize};
use steno::ActionError;

declare_saga! {
    saga SagaDiskAttach, named "disk-attach", params Params;
    action names "disk_attach";
    // node     label          action static  action        undo
    "begin",    "BeginAttach", BEGIN_ATTACH,  begin_attach, undo_begin_attach;
    "attached", "Attach",      FINISH_ATTACH, finish_attach, -;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub instance_id: InstanceUuid,
    pub disk_id: DiskUuid,
}

/// The disk as the finished saga `result` left it: attached.
pub fn attached(result: &steno::SagaResultOk) -> Option<Disk> {
    result.lookup_node_output::<Disk>("attached").ok()
}

async fn begin_attach(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    ctx.user_data()
        .nexus
        .datastore()
        .disk_attach_begin(
            params.instance_id,
            params.disk_id,
            InstanceForDisks::Stopped,
        )
        .await
        .map_err(action_failed)?;
    Ok(())
}

async fn undo_begin_attach(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let params = ctx.saga_params::<Params>()?;
    ctx.user_data()
        .nexus
        .datastore()
        .disk_attach_undo(params.instance_id, params.disk_id)
        .await?;
    Ok(())
}

async fn finish_attach(ctx: &NexusActionContext) -> Result<Disk, ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let moved = ctx
        .user_data()
        .nexus
        .datastore()
        .disk_attach_finish(params.instance_id, params.disk_id)
        .await
        .map_err(action_failed)?;
    match moved {
        DiskTransition::Applied(disk) | DiskTransition::AlreadyDone(disk) => Ok(disk),
        DiskTransition::Conflict(disk) => Err(action_failed(Error::conflict(format!(
            "disk \"{}\" stopped attaching to the instance meanwhile (it is {}; the instance \
             was deleted?)",
            disk.name(),
            disk.state()
        )))),
    }
}
