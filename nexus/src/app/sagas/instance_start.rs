//! instance-start: gives a stopped instance a new VMM on a sled with room, and runs it.
//!
//! ```text
//!   propolis_id ──► claim ──► reservation ──► vmm ──► registered ──► mappings ──► running
//! ```
//!
//! | node | action | undo |
//! |---|---|---|
//! | `propolis_id` | picks the new VMM's id (a node, so a resumed saga reuses it) | — |
//! | `claim` | sets the instance's active VMM to the new id, if it is stopped or failed, in one conditional `UPDATE` (`DataStore::instance_claim_for_start`): of racing starts exactly one claims it, the others fail with `Conflict` before taking anything. Outputs the instance's size and hostname (`VmmShape`) for the later nodes, so they need not read it, and the instance's row as the `UPDATE` returned it (`Claimed`) | clears the active VMM if it is still ours |
//! | `reservation` | picks a sled with room and reserves the VMM's threads and memory there, in one statement | releases the reservation |
//! | `vmm` | inserts the VMM record (state `creating`) at the sled agent's address | retires the VMM as `saga_unwound`: terminal state, record deleted, reservation released, the instance's pointer cleared, in one transaction |
//! | `registered` | registers the VMM with the sled agent | unregisters it (idempotent) |
//! | `mappings` | pushes the mapping set of every VPC the instance has interfaces in to every sled hosting one of them (now including the new VMM's sled, whose push must succeed; the others' are best effort, left to reconciliation), so its peers reach the guest once it runs (`Nexus::push_instance_mappings`, `app/v2p.rs`; a repeat pushes a newer set with the same content) | pushes the sets without the new VMM, to the same sleds and the new VMM's sled (which then holds none of it unless another of its VMMs has an interface in the VPC) |
//! | `running` | asks the sled agent to run it and records the state it answers; outputs the VMM's record as that left it (`None` if the VMM was retired meanwhile) | — (unregistering stops it) |
//!
//! Nexus answers the start with the claim's instance row and the `running` node's VMM row
//! ([`started`]): a state the database held (the VMM was not retired, so the instance still
//! pointed at it), with no read after the saga.
//!
//! Every action and undo is idempotent, so steno may repeat any of them after a crash. From
//! here on the VMM's state comes from the sled agent's reports; when it ends (stopped, failed)
//! Nexus retires it (see `app::instance`).

use super::vmm_steps::{self, VmmShape};
use super::{NexusActionContext, action_failed, declare_saga};
use crate::app::sled::sled_agent_error;
use crate::app::v2p::PushScope;
use halyard_common::Error;
use halyard_common::ids::{InstanceUuid, SledUuid, VmmUuid};
use halyard_db_model::{Instance, Vmm};
use halyard_db_queries::{
    ConflictReason, InstanceAndVmm, Release, SledChoice, TransitionConflict, TransitionOutcome,
};
use halyard_sled_agent_api::{VmmPutStateBody, VmmStateRequested};
use serde::{Deserialize, Serialize};
use steno::ActionError;

declare_saga! {
    saga SagaInstanceStart, named "instance-start", params Params;
    action names "instance_start";
    // node        label                 action static         action                undo
    "propolis_id", "GeneratePropolisId", GENERATE_PROPOLIS_ID, generate_propolis_id, -;
    "claim",       "Claim",              CLAIM,                claim,                undo_claim;
    "reservation", "Reserve",            RESERVE,              reserve,              undo_reserve;
    "vmm",         "CreateVmm",          CREATE_VMM,           create_vmm,           undo_create_vmm;
    "registered",  "Register",           REGISTER,             register,             undo_register;
    "mappings",    "PushMappings",       PUSH_MAPPINGS,        push_mappings,        undo_push_mappings;
    "running",     "Run",                RUN,                  run,                  -;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub instance_id: InstanceUuid,
}

/// The `claim` node's output: what the later nodes need of the instance (`VmmShape`, which
/// they look up alone), and the instance's row as the claim left it, for Nexus's answer. (A
/// saga logged before the row was part of the output resumes with `None`.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claimed {
    #[serde(flatten)]
    shape: VmmShape,
    #[serde(default)]
    instance: Option<Instance>,
}

/// The instance as the finished saga `result` left it: the claim's instance row and the
/// `running` node's VMM row. `None` if the VMM was retired meanwhile (or the saga was logged
/// before its nodes output these rows): then the caller reads the instance.
pub fn started(result: &steno::SagaResultOk) -> Option<InstanceAndVmm> {
    let instance = result
        .lookup_node_output::<Claimed>("claim")
        .ok()?
        .instance?;
    let vmm = result.lookup_node_output::<Option<Vmm>>("running").ok()??;
    (instance.runtime.active_vmm() == Some(vmm.id())).then_some(InstanceAndVmm {
        instance,
        active_vmm: Some(vmm),
    })
}

async fn generate_propolis_id(_: &NexusActionContext) -> Result<VmmUuid, ActionError> {
    Ok(VmmUuid::new_v4())
}

async fn claim(ctx: &NexusActionContext) -> Result<Claimed, ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let propolis_id = ctx.lookup::<VmmUuid>("propolis_id")?;
    let datastore = ctx.user_data().nexus.datastore();
    let (outcome, instance) = datastore
        .instance_claim_for_start(params.instance_id, propolis_id)
        .await
        .map_err(action_failed)?;
    let TransitionOutcome::Conflict(TransitionConflict {
        instance_name,
        reason,
    }) = outcome
    else {
        // Claimed now, or by an earlier run of this action. The instance it returned is
        // what the later nodes need of it.
        return Ok(Claimed {
            shape: VmmShape::of(&instance),
            instance: Some(instance),
        });
    };
    let message = match reason {
        ConflictReason::ActiveVmm(active) => format!(
            "instance \"{instance_name}\" is already running (VMM {active}); stop it first to \
             start it anew"
        ),
        ConflictReason::State(other) => {
            format!("instance \"{instance_name}\" cannot start while it is {other}")
        }
        _ => format!(
            "instance \"{instance_name}\" changed while starting (another start or stop won); \
             retry"
        ),
    };
    Err(action_failed(Error::conflict(message)))
}

async fn undo_claim(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let params = ctx.saga_params::<Params>()?;
    let propolis_id = ctx.lookup::<VmmUuid>("propolis_id")?;
    // Another VMM active (`Conflict`) means our claim is gone already: nothing to release.
    ctx.user_data()
        .nexus
        .datastore()
        .instance_release(params.instance_id, Release::Claim(propolis_id))
        .await?;
    Ok(())
}

async fn reserve(ctx: &NexusActionContext) -> Result<SledUuid, ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let propolis_id = ctx.lookup::<VmmUuid>("propolis_id")?;
    let shape = ctx.lookup::<VmmShape>("claim")?;
    let nexus = &ctx.user_data().nexus;
    vmm_steps::reserve(
        nexus,
        params.instance_id,
        propolis_id,
        &shape,
        SledChoice::Any,
    )
    .await
}

async fn undo_reserve(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let propolis_id = ctx.lookup::<VmmUuid>("propolis_id")?;
    vmm_steps::unreserve(&ctx.user_data().nexus, propolis_id).await
}

async fn create_vmm(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let propolis_id = ctx.lookup::<VmmUuid>("propolis_id")?;
    let sled_id = ctx.lookup::<SledUuid>("reservation")?;
    let nexus = &ctx.user_data().nexus;
    vmm_steps::create_record(nexus, params.instance_id, propolis_id, sled_id).await
}

async fn undo_create_vmm(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let propolis_id = ctx.lookup::<VmmUuid>("propolis_id")?;
    vmm_steps::retire_record(&ctx.user_data().nexus, propolis_id).await
}

async fn register(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let propolis_id = ctx.lookup::<VmmUuid>("propolis_id")?;
    let sled_id = ctx.lookup::<SledUuid>("reservation")?;
    let shape = ctx.lookup::<VmmShape>("claim")?;
    let nexus = &ctx.user_data().nexus;
    vmm_steps::register(
        nexus,
        params.instance_id,
        propolis_id,
        sled_id,
        &shape,
        None,
    )
    .await
}

async fn undo_register(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let propolis_id = ctx.lookup::<VmmUuid>("propolis_id")?;
    let sled_id = ctx.lookup::<SledUuid>("reservation")?;
    vmm_steps::unregister(&ctx.user_data().nexus, propolis_id, sled_id).await
}

async fn push_mappings(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let sled_id = ctx.lookup::<SledUuid>("reservation")?;
    ctx.user_data()
        .nexus
        .push_instance_mappings(
            params.instance_id,
            PushScope {
                also: &[],
                excluding: None,
                must_reach: Some(sled_id),
            },
        )
        .await
        .map_err(action_failed)
}

async fn undo_push_mappings(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let params = ctx.saga_params::<Params>()?;
    let propolis_id = ctx.lookup::<VmmUuid>("propolis_id")?;
    let sled_id = ctx.lookup::<SledUuid>("reservation")?;
    // Best effort everywhere, the VMM's own sled included: its unregister (the next undo)
    // removes the VMM's taps there, and reconciliation empties what is left.
    ctx.user_data()
        .nexus
        .push_instance_mappings(
            params.instance_id,
            PushScope {
                also: &[sled_id],
                excluding: Some(propolis_id),
                must_reach: None,
            },
        )
        .await?;
    Ok(())
}

async fn run(ctx: &NexusActionContext) -> Result<Option<Vmm>, ActionError> {
    let propolis_id = ctx.lookup::<VmmUuid>("propolis_id")?;
    let sled_id = ctx.lookup::<SledUuid>("reservation")?;
    let nexus = &ctx.user_data().nexus;
    let client = nexus.sled_client(sled_id).await.map_err(action_failed)?;
    let state = client
        .vmm_put_state(
            &propolis_id,
            &VmmPutStateBody {
                state: VmmStateRequested::Run,
            },
        )
        .await
        .map_err(|e| action_failed(sled_agent_error(e)))?
        .into_inner();
    nexus
        .apply_vmm_report(propolis_id, state)
        .await
        .map_err(action_failed)
}
