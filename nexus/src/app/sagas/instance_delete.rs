//! instance-delete: marks a stopped instance destroyed.
//!
//! ```text
//!   destroy_record
//! ```
//!
//! - `destroy_record` marks the instance destroyed (freeing its name), only if no VMM
//!   incarnates it (else `Conflict`: stop it first), and detaches every disk naming it, in one
//!   transaction that holds the instance row's lock, so no attach lands after the detach
//!   (`DataStore::instance_mark_destroyed`); a repeat finds it already destroyed. It is the
//!   only node, so there is nothing to undo: if it fails, nothing changed.

use super::{NexusActionContext, action_failed, declare_saga};
use halyard_common::ids::InstanceUuid;
use serde::{Deserialize, Serialize};
use steno::ActionError;

declare_saga! {
    saga SagaInstanceDelete, named "instance-delete", params Params;
    action names "instance_delete";
    // node      label            action static   action          undo
    "destroyed", "DestroyRecord", DESTROY_RECORD, destroy_record, -;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub instance_id: InstanceUuid,
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
