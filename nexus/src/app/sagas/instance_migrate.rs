//! instance-migrate: moves a running instance to a new VMM on another sled, live.
//!
//! ```text
//!   ids ──► source ──► migration_record ──► reservation ──► target_vmm ──► set_ids
//!       ──► registered_target ──► migrate_out
//! ```
//!
//! | node | action | undo |
//! |---|---|---|
//! | `ids` | picks the migration's and the target VMM's ids | — |
//! | `source` | checks the instance runs (its active VMM is `running`) and is not migrating; returns the source VMM and sled | — |
//! | `migration_record` | inserts the migration record, both sides `pending` | marks it deleted |
//! | `reservation` | reserves the target's threads and memory on the requested sled, or on any sled with room but the source's | releases it |
//! | `target_vmm` | inserts the target VMM record on that sled | retires it as `saga_unwound` (which also clears the instance's target and migration ids if they name it) |
//! | `set_ids` | sets the instance's `target_propolis_id` and `migration_id`, if the source is still its active VMM and no migration is under way, in one conditional `UPDATE` (`DataStore::instance_set_migration_ids`): of racing migrations (or a racing stop) exactly one proceeds | clears them if they are still ours |
//! | `registered_target` | registers the target VMM with its sled agent as this migration's target | unregisters it |
//! | `migrate_out` | asks the source's sled agent to migrate out to the target: the point of no return | — (last node) |
//!
//! The outcome arrives later, in the sled agents' reports (see `Nexus::apply_vmm_report`):
//! completed → the target becomes the active VMM and the source is retired, in one
//! transaction; failed → the target is retired and the instance runs on, on its source.
//!
//! **The point of no return.** Once the source may have accepted `MigrateOut` (any run of
//! `migrate_out` sent it: before a crash, or before a transient error or a lost reply), the
//! saga never unwinds past it, because unregistering or retiring the target could kill the
//! guest it has just received. So `migrate_out` retries transient errors for as long as it
//! takes (like an undo), asks nothing if the reports have already ended the migration, and
//! takes a refusal of a migration that has meanwhile ended as done. The sled agent answers a
//! repeated `MigrateOut` of the same migration from what that migration did (in progress,
//! failed, or completed and gone), so only a migration the source never began can be refused,
//! and only then does the saga unwind. As a last line of defence, no undo of this saga
//! touches anything once the target is the instance's active VMM.
//!
//! **The handoff rule** (both backends, `sled-agent/src/vmm_runtime.rs`'s `push_finish`): one
//! side owns the guest at any moment. The target resuming the guest (`finish`) is the commit.
//! The source, paused, pushes `finish`: success → the target resumed, the source ends and
//! reports completed; a refusal (4xx) → it did not, the source resumes and reports failed. A
//! source that can't tell (the reply was lost, the target is unreachable or answered 5xx)
//! stays paused and asks the target again before it resumes. In Nexus, a completed outcome
//! from either side wins over a failed one from the other: a failed report never retires the
//! target once either side reported completed or the target is the instance's active VMM.

use super::retry::{is_transient, retry_transient};
use super::{NexusActionContext, action_failed, declare_saga, vmm_steps};
use crate::app::Nexus;
use crate::app::sled::sled_agent_error;
use halyard_common::ids::{InstanceUuid, MigrationUuid, SledUuid, VmmUuid};
use halyard_common::{Error, VmmState};
use halyard_db_model::Migration;
use halyard_db_queries::{InstanceAndVmm, Release, SledChoice, TransitionOutcome};
use halyard_sled_agent_api::{MigrationTarget, VmmPutStateBody, VmmStateRequested};
use serde::{Deserialize, Serialize};
use slog::{error, warn};
use steno::ActionError;

declare_saga! {
    saga SagaInstanceMigrate, named "instance-migrate", params Params;
    action names "instance_migrate";
    // node              label              action static      action             undo
    "ids",               "GenerateIds",     GENERATE_IDS,      generate_ids,      -;
    "source",            "CheckSource",     CHECK_SOURCE,      check_source,      -;
    "migration_record",  "CreateMigration", CREATE_MIGRATION,  create_migration,  undo_create_migration;
    "reservation",       "Reserve",         RESERVE,           reserve,           undo_reserve;
    "target_vmm",        "CreateTargetVmm", CREATE_TARGET_VMM, create_target_vmm, undo_create_target_vmm;
    "set_ids",           "SetIds",          SET_IDS,           set_ids,           undo_set_ids;
    "registered_target", "RegisterTarget",  REGISTER_TARGET,   register_target,   undo_register_target;
    "migrate_out",       "MigrateOut",      MIGRATE_OUT,       migrate_out,       -;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub instance_id: InstanceUuid,
    /// The sled to migrate to; any other sled with room if `None`.
    pub destination: Option<SledUuid>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct MigrateIds {
    migration_id: MigrationUuid,
    target_propolis_id: VmmUuid,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Source {
    propolis_id: VmmUuid,
    sled_id: SledUuid,
    /// The instance's size and hostname, which the target is made of (read with the source,
    /// so the later nodes need not read the instance).
    shape: vmm_steps::VmmShape,
}

impl Source {
    /// The sled the instance migrates from.
    pub(crate) fn sled_id(&self) -> SledUuid {
        self.sled_id
    }
}

async fn generate_ids(_: &NexusActionContext) -> Result<MigrateIds, ActionError> {
    Ok(MigrateIds {
        migration_id: MigrationUuid::new_v4(),
        target_propolis_id: VmmUuid::new_v4(),
    })
}

async fn check_source(ctx: &NexusActionContext) -> Result<Source, ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let ids = ctx.lookup::<MigrateIds>("ids")?;
    let nexus = &ctx.user_data().nexus;
    // A repeat once the migration record exists: the source is the one it names, whatever
    // happened since (the migration may even have finished).
    match nexus.datastore().migration_fetch(ids.migration_id).await {
        Ok(record) => {
            let source = nexus
                .datastore()
                .vmm_fetch(record.source_propolis_id.0)
                .await
                .map_err(action_failed)?;
            return Ok(Source {
                propolis_id: source.id(),
                sled_id: source.sled_id(),
                shape: vmm_steps::VmmShape::read(nexus, params.instance_id).await?,
            });
        }
        Err(Error::ObjectNotFound { .. }) => {}
        Err(e) => return Err(action_failed(e)),
    }
    let view = nexus
        .datastore()
        .instance_fetch_with_vmm(params.instance_id)
        .await
        .map_err(action_failed)?;
    migration_source(&view, params.destination).map_err(action_failed)
}

/// The VMM an instance would migrate from: its active VMM, if that runs and no migration is
/// under way, and if it does not already run on `destination`. `Conflict` (or, for a
/// destination it runs on, `InvalidRequest`) otherwise. Nexus checks this before recording
/// the saga, so a migration refused outright leaves no saga behind; the saga checks it again,
/// since the instance may change in between.
pub(crate) fn migration_source(
    view: &InstanceAndVmm,
    destination: Option<SledUuid>,
) -> Result<Source, Error> {
    let name = view.instance.name();
    if let Some(migration) = view.instance.runtime.migration() {
        return Err(Error::conflict(format!(
            "instance \"{name}\" is already migrating (migration {migration}); \
             wait for it to finish"
        )));
    }
    let Some(vmm) = view
        .active_vmm
        .as_ref()
        .filter(|v| v.state() == VmmState::Running)
    else {
        return Err(Error::conflict(format!(
            "instance \"{name}\" is {}; only a running instance can migrate",
            view.run_state()
        )));
    };
    if destination == Some(vmm.sled_id()) {
        return Err(Error::invalid_request(format!(
            "instance \"{name}\" already runs on sled {}; choose another sled",
            vmm.sled_id()
        )));
    }
    Ok(Source {
        propolis_id: vmm.id(),
        sled_id: vmm.sled_id(),
        shape: vmm_steps::VmmShape::of(&view.instance),
    })
}

async fn create_migration(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let ids = ctx.lookup::<MigrateIds>("ids")?;
    let source = ctx.lookup::<Source>("source")?;
    let record = Migration::new(
        ids.migration_id,
        params.instance_id,
        source.propolis_id,
        ids.target_propolis_id,
    );
    ctx.user_data()
        .nexus
        .datastore()
        .migration_insert(record)
        .await
        .map_err(action_failed)?;
    Ok(())
}

async fn undo_create_migration(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let ids = ctx.lookup::<MigrateIds>("ids")?;
    let params = ctx.saga_params::<Params>()?;
    if target_holds_the_instance(&ctx.user_data().nexus, params.instance_id, ids).await? {
        return Ok(());
    }
    ctx.user_data()
        .nexus
        .datastore()
        .migration_mark_deleted(ids.migration_id)
        .await?;
    Ok(())
}

async fn reserve(ctx: &NexusActionContext) -> Result<SledUuid, ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let ids = ctx.lookup::<MigrateIds>("ids")?;
    let source = ctx.lookup::<Source>("source")?;
    let choice = match params.destination {
        Some(sled) => SledChoice::Specific(sled),
        None => SledChoice::AnyExcept(source.sled_id),
    };
    let nexus = &ctx.user_data().nexus;
    vmm_steps::reserve(
        nexus,
        params.instance_id,
        ids.target_propolis_id,
        &source.shape,
        choice,
    )
    .await
}

async fn undo_reserve(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let ids = ctx.lookup::<MigrateIds>("ids")?;
    let params = ctx.saga_params::<Params>()?;
    if target_holds_the_instance(&ctx.user_data().nexus, params.instance_id, ids).await? {
        return Ok(());
    }
    vmm_steps::unreserve(&ctx.user_data().nexus, ids.target_propolis_id).await
}

async fn create_target_vmm(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let ids = ctx.lookup::<MigrateIds>("ids")?;
    let sled_id = ctx.lookup::<SledUuid>("reservation")?;
    let nexus = &ctx.user_data().nexus;
    vmm_steps::create_record(nexus, params.instance_id, ids.target_propolis_id, sled_id).await
}

async fn undo_create_target_vmm(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let ids = ctx.lookup::<MigrateIds>("ids")?;
    let params = ctx.saga_params::<Params>()?;
    if target_holds_the_instance(&ctx.user_data().nexus, params.instance_id, ids).await? {
        return Ok(());
    }
    vmm_steps::retire_record(&ctx.user_data().nexus, ids.target_propolis_id).await
}

async fn set_ids(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let ids = ctx.lookup::<MigrateIds>("ids")?;
    let source = ctx.lookup::<Source>("source")?;
    let datastore = ctx.user_data().nexus.datastore();
    let outcome = datastore
        .instance_set_migration_ids(
            params.instance_id,
            source.propolis_id,
            ids.migration_id,
            ids.target_propolis_id,
        )
        .await
        .map_err(action_failed)?;
    match outcome {
        // Set now, or by an earlier run of this action (the migration may even have
        // completed since).
        TransitionOutcome::Applied | TransitionOutcome::AlreadyDone => Ok(()),
        TransitionOutcome::Conflict(conflict) => Err(action_failed(Error::conflict(format!(
            "instance \"{}\" changed while preparing its migration (another migration, a stop \
             or a failure); retry",
            conflict.instance_name
        )))),
    }
}

async fn undo_set_ids(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let params = ctx.saga_params::<Params>()?;
    let ids = ctx.lookup::<MigrateIds>("ids")?;
    // Another migration under way (`Conflict`) means ours is cleared already: nothing to do.
    ctx.user_data()
        .nexus
        .datastore()
        .instance_release(params.instance_id, Release::Migration(ids.migration_id))
        .await?;
    Ok(())
}

async fn register_target(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let ids = ctx.lookup::<MigrateIds>("ids")?;
    let source = ctx.lookup::<Source>("source")?;
    let sled_id = ctx.lookup::<SledUuid>("reservation")?;
    let nexus = &ctx.user_data().nexus;
    let source_sled = nexus
        .datastore()
        .sled_fetch(source.sled_id)
        .await
        .map_err(action_failed)?;
    let target = MigrationTarget {
        migration_id: ids.migration_id,
        source_propolis_id: source.propolis_id,
        source_sled_id: source.sled_id,
        source_address: source_sled.address(),
    };
    vmm_steps::register(
        nexus,
        params.instance_id,
        ids.target_propolis_id,
        sled_id,
        &source.shape,
        Some(target),
    )
    .await
}

async fn undo_register_target(ctx: &NexusActionContext) -> Result<(), anyhow::Error> {
    let ids = ctx.lookup::<MigrateIds>("ids")?;
    let params = ctx.saga_params::<Params>()?;
    if target_holds_the_instance(&ctx.user_data().nexus, params.instance_id, ids).await? {
        return Ok(());
    }
    let sled_id = ctx.lookup::<SledUuid>("reservation")?;
    vmm_steps::unregister(&ctx.user_data().nexus, ids.target_propolis_id, sled_id).await
}

async fn migrate_out(ctx: &NexusActionContext) -> Result<(), ActionError> {
    let params = ctx.saga_params::<Params>()?;
    let ids = ctx.lookup::<MigrateIds>("ids")?;
    let source = ctx.lookup::<Source>("source")?;
    let sled_id = ctx.lookup::<SledUuid>("reservation")?;
    let nexus = &ctx.user_data().nexus;
    // The point of no return: an earlier run of this action (before a crash, or before a
    // transient error) may already have been accepted, so this action never fails for a
    // transient reason. It retries for as long as it takes, as an undo does; only a refusal
    // of a migration that never began unwinds the saga.
    retry_transient(
        nexus.log(),
        "instance_migrate.migrate_out (past the point of no return)",
        nexus.saga_retry_policy(),
        None,
        is_transient,
        || migrate_out_once(nexus, params.instance_id, ids, &source, sled_id),
    )
    .await
    .map_err(action_failed)
}

/// Asks the source to migrate out, once, unless the migration has already ended.
async fn migrate_out_once(
    nexus: &Nexus,
    instance_id: InstanceUuid,
    ids: MigrateIds,
    source: &Source,
    target_sled_id: SledUuid,
) -> Result<(), Error> {
    if migration_ended(nexus, instance_id, ids).await? {
        return Ok(()); // a repeat: nothing more to ask of the source (it may be gone)
    }
    let target_sled = nexus.datastore().sled_fetch(target_sled_id).await?;
    let client = nexus.sled_client(source.sled_id).await?;
    let request = VmmStateRequested::MigrateOut {
        migration_id: ids.migration_id,
        target_propolis_id: ids.target_propolis_id,
        target_sled_id,
        target_address: target_sled.address(),
    };
    match client
        .vmm_put_state(&source.propolis_id, &VmmPutStateBody { state: request })
        .await
    {
        Ok(state) => {
            // Accepted (or a repeat, answered from what the migration did): from here on
            // only the reports decide. Applying the answer now is a head start; the sled
            // agent reports the same state, so a failure here changes nothing.
            if let Err(e) = nexus
                .apply_vmm_report(source.propolis_id, state.into_inner())
                .await
            {
                warn!(nexus.log(), "applying the source's answer to MigrateOut failed; its \
                    reports will bring the same"; "migration_id" => %ids.migration_id,
                    "error" => %e);
            }
            Ok(())
        }
        Err(e) => {
            let e = sled_agent_error(e);
            // Refused because it has ended meanwhile (a completed migration's source is
            // unregistered once Nexus applied the outcome): not a refusal.
            if !is_transient(&e) && migration_ended(nexus, instance_id, ids).await? {
                return Ok(());
            }
            Err(e)
        }
    }
}

/// Whether the sled agents' reports have already ended the migration: a side reported
/// completed or failed, or the instance no longer names it (completed: the target is its
/// active VMM; failed: the target was retired; or the instance itself failed).
async fn migration_ended(
    nexus: &Nexus,
    instance_id: InstanceUuid,
    ids: MigrateIds,
) -> Result<bool, Error> {
    let record = nexus.datastore().migration_fetch(ids.migration_id).await?;
    if record.source_state().is_terminal() || record.target_state().is_terminal() {
        return Ok(true);
    }
    match nexus.datastore().instance_fetch(instance_id).await {
        Ok(instance) => Ok(instance.runtime.migration() != Some(ids.migration_id)),
        Err(Error::ObjectNotFound { .. }) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Whether the migration's target has become the instance's active VMM (the migration
/// completed): then nothing this saga did may be undone, since the guest runs there. An
/// undo can only meet this if the saga unwound past its point of no return, which it never
/// does; this is the last line of defence.
async fn target_holds_the_instance(
    nexus: &Nexus,
    instance_id: InstanceUuid,
    ids: MigrateIds,
) -> Result<bool, anyhow::Error> {
    let holds = match nexus.datastore().instance_fetch(instance_id).await {
        Ok(instance) => instance.runtime.active_vmm() == Some(ids.target_propolis_id),
        Err(Error::ObjectNotFound { .. }) => false,
        Err(e) => return Err(e.into()),
    };
    if holds {
        error!(nexus.log(), "not undoing a step of a migration whose target runs the instance";
            "migration_id" => %ids.migration_id, "target" => %ids.target_propolis_id);
    }
    Ok(holds)
}
