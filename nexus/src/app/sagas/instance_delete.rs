//! instance-delete: marks a stopped instance destroyed, and deletes the disks its create made.
//!
//! ```text
//!   destroy_record ──► [delete_disk_params_N ──► deleted_disk_N (disk-delete subsaga)]...
//! ```
//!
//! - `destroy_record` marks the instance destroyed (freeing its name), only if no VMM
//!   incarnates it (else `Conflict`: stop it first), and detaches every disk naming it, in one
//!   transaction that holds the instance row's lock, so no attach lands after the detach
//!   (`DataStore::instance_mark_destroyed`); a repeat finds it already destroyed. Its undo is
//!   a no-op: if it fails, nothing changed.
//! - `deleted_disk_N`, one per disk the instance's create made and that was still attached to
//!   it (`Params::created_disk_ids`, listed by Nexus before the saga was recorded; the
//!   parameters in the constant node `delete_disk_params_N`): the disk-delete saga as a
//!   subsaga (`disk_delete.rs`). The disk is detached by then. If one fails, its own undos
//!   run (the disk comes back `faulted`, as a failed disk delete leaves it, with its regions;
//!   or `detached` if it failed before the disk's record was destroyed); the instance stays
//!   deleted (its destruction is not undone) and the disk shows in `GET /v1/disks` and can be
//!   deleted again. A failure after a subsaga's last node leaves that disk deleted (its
//!   regions were released; disk-delete's undos see that). No region leaks either way
//!   (`saga_faults.rs`, with the invariant checker).

use super::{
    ActionRegistry, NexusActionContext, NexusSaga, action_failed, declare_action, disk_delete,
};
use halyard_common::ids::{DiskUuid, InstanceUuid};
use serde::{Deserialize, Serialize};
use steno::ActionError;

declare_action!(
    DESTROY_RECORD,
    "instance_delete.destroy_record",
    destroy_record
);

pub struct SagaInstanceDelete;

impl NexusSaga for SagaInstanceDelete {
    const NAME: &'static str = "instance-delete";
    type Params = Params;

    fn register_actions(registry: &mut ActionRegistry) {
        registry.register((*DESTROY_RECORD).clone());
    }

    fn make_dag(params: &Params, builder: &mut steno::DagBuilder) {
        builder.append(steno::Node::action(
            "destroyed",
            "DestroyRecord",
            DESTROY_RECORD.as_ref(),
        ));
        for (i, &disk_id) in params.created_disk_ids.iter().enumerate() {
            let params_node = format!("delete_disk_params_{i}");
            let disk = disk_delete::Params { disk_id };
            let mut subsaga =
                steno::DagBuilder::new(steno::SagaName::new(disk_delete::SagaDiskDelete::NAME));
            disk_delete::SagaDiskDelete::make_dag(&disk, &mut subsaga);
            let subsaga = subsaga
                .build()
                .expect("disk-delete's DAG is a chain of its declared nodes");
            builder.append(steno::Node::constant(
                &params_node,
                serde_json::to_value(&disk).expect("disk-delete parameters serialize"),
            ));
            builder.append(steno::Node::subsaga(
                format!("deleted_disk_{i}"),
                subsaga,
                &params_node,
            ));
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub instance_id: InstanceUuid,
    /// The disks its create made, still attached to it, to delete after it. (Empty for a
    /// saga logged before.)
    #[serde(default)]
    pub created_disk_ids: Vec<DiskUuid>,
}

async fn destroy_record(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let datastore = ctx.user_data().nexus.datastore();
    datastore
        .instance_mark_destroyed(params.instance_id)
        .await
        .map_err(action_failed)?;
    Ok(())
}
