//! instance-delete: marks a stopped instance destroyed.
//!
//! ```text
//!   destroy_record
//! ```
//!
//! - `destroy_record` marks the instance destroyed (freeing its name), only if no VMM
//!   incarnates it (else `Conflict`: stop it first); a repeat finds it already destroyed.
//!   It is the only node, so there is nothing to undo: if it fails, nothing changed.
//!   (Disks and IPs, when they exist, are detached by nodes before it.)

use super::{NexusActionContext, NexusSaga, action_failed, declare_action};
use halyard_common::ids::InstanceUuid;
use serde::{Deserialize, Serialize};
use steno::{ActionError, DagBuilder, Node};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub instance_id: InstanceUuid,
}

pub struct SagaInstanceDelete;

declare_action!(
    DESTROY_RECORD,
    "instance_delete.destroy_record",
    destroy_record
);

impl NexusSaga for SagaInstanceDelete {
    const NAME: &'static str = "instance-delete";
    type Params = Params;

    fn register_actions(registry: &mut super::ActionRegistry) {
        registry.register(DESTROY_RECORD.clone());
    }

    fn make_dag(_: &Params, builder: &mut DagBuilder) {
        builder.append(Node::action(
            "destroyed",
            "DestroyRecord",
            DESTROY_RECORD.as_ref(),
        ));
    }
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
