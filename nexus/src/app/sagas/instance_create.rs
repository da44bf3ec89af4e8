//! instance-create: records a new instance, stopped.
//!
//! ```text
//!   create_record ──► mark_stopped
//! ```
//!
//! - `create_record` inserts the instance in `nexus_state` `creating` (idempotent by instance
//!   id). Undo: marks it destroyed, which frees its name.
//! - `mark_stopped` moves it to `no_vmm` (stopped), generation-guarded; a repeat finds it
//!   already stopped. Last node: nothing after it can fail, so its undo is a no-op. Outputs
//!   the instance's row as the transition returned it ([`created`]), which Nexus answers
//!   with (or starts from), without reading it again.
//!
//! The saga's parameters hold the request as the user sent it (`params::InstanceCreate`,
//! validated by Nexus before the saga was recorded). Its `start` is Nexus's business: with
//! `start: true` Nexus runs instance-start after this saga finishes.

use super::{NexusActionContext, action_failed, declare_saga};
use halyard_common::ids::{InstanceUuid, ProjectUuid};
use halyard_db_model::{Instance, NewInstanceParams};
use halyard_nexus_external_api::params::InstanceCreate;
use serde::{Deserialize, Serialize};
use steno::ActionError;

declare_saga! {
    saga SagaInstanceCreate, named "instance-create", params Params;
    action names "instance_create";
    // node     label           action static  action         undo
    "instance", "CreateRecord", CREATE_RECORD, create_record, undo_create_record;
    "stopped",  "MarkStopped",  MARK_STOPPED,  mark_stopped,  -;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub instance_id: InstanceUuid,
    pub project_id: ProjectUuid,
    /// What the user asked for.
    pub create: InstanceCreate,
}

async fn create_record(ctx: &NexusActionContext) -> Result<InstanceUuid, ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let datastore = ctx.user_data().nexus.datastore();
    let created = datastore
        .instance_insert(NewInstanceParams {
            id: params.instance_id,
            project_id: params.project_id,
            name: params.create.name,
            description: params.create.description,
            ncpus: params.create.ncpus,
            memory: params.create.memory,
            hostname: params.create.hostname,
        })
        .await
        .map_err(action_failed)?;
    Ok(created.id())
}

async fn undo_create_record(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let params = ctx.saga_params::<Params>()?;
    let datastore = ctx.user_data().nexus.datastore();
    match datastore.instance_mark_destroyed(params.instance_id).await {
        Ok(_) => Ok(()),
        Err(e) if e.error_code() == "ObjectNotFound" => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The instance the finished saga `result` created, as its last step left it (`None` for a
/// saga logged before that step output it: then the caller reads the instance).
pub fn created(result: &steno::SagaResultOk) -> Option<Instance> {
    result
        .lookup_node_output::<Option<Instance>>("stopped")
        .ok()
        .flatten()
}

async fn mark_stopped(ctx: &NexusActionContext) -> Result<Option<Instance>, ActionError> {
    let id = ctx.lookup::<InstanceUuid>("instance")?;
    // `AlreadyDone` is a repeat; there is no conflict (every other state comes later).
    let (_, instance) = ctx
        .user_data()
        .nexus
        .datastore()
        .instance_mark_stopped(id)
        .await
        .map_err(action_failed)?;
    Ok(Some(instance))
}
