//! The instance's runtime transitions, each one conditional `UPDATE`.
//!
//! Each transition states in its `WHERE` clause the state it moves from, and bumps the state
//! generation, so of racing callers exactly one applies it. When nothing was updated the row
//! is read once (on the same connection) to tell the caller why: it was already done (a saga
//! action repeated after a crash), or the instance is in a state the transition does not move
//! from (`Conflict`, with the reason). The SQL is plain `UPDATE ... WHERE ... RETURNING`, which
//! CockroachDB runs as well.

use super::DataStore;
use super::instance::{instance_fetch_any, live_instance};
use crate::cached::CacheByText;
use crate::error::{TxnError, public_error_from_diesel};
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use halyard_common::ids::{
    InstanceKind, InstanceUuid, MigrationKind, MigrationUuid, VmmKind, VmmUuid,
};
use halyard_common::{Error, InstanceNexusState, Name};
use halyard_db_model::schema::instance;
use halyard_db_model::{DbEnum, DbTypedUuid, Instance, InstanceRuntimeState};

/// What a transition did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionOutcome {
    /// This call made the change.
    Applied,
    /// The instance already is where the transition leads (an earlier call made the change),
    /// or, for a release, there is nothing left to release.
    AlreadyDone,
    /// The instance is in a state the transition does not move from; nothing changed.
    Conflict(TransitionConflict),
}

/// Why a transition did not apply: the instance (named, for error messages) and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionConflict {
    pub instance_name: Name,
    pub reason: ConflictReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictReason {
    /// The instance has another active VMM.
    ActiveVmm(VmmUuid),
    /// The instance has no VMM, or not the one the transition names.
    NotActive,
    /// The instance is in a state the transition does not move from.
    State(InstanceNexusState),
    /// Another migration is under way.
    Migrating(MigrationUuid),
    /// The row changed between the `UPDATE` and the read that explains it (a racing
    /// transition moved it out of, and back into, a state this one moves from).
    Changed,
}

impl DataStore {
    /// Claims a stopped (or failed) instance for a start: its active VMM becomes `vmm_id` and
    /// its state `vmm`. `AlreadyDone` if `vmm_id` already is its active VMM; `Conflict` if it
    /// has another active VMM or is in another state; `ObjectNotFound` if it does not exist
    /// or was deleted. Returns the instance as it is after the call too (the start needs its
    /// size and hostname), read by the same statement when the claim applies.
    pub async fn instance_claim_for_start(
        &self,
        id: InstanceUuid,
        vmm_id: VmmUuid,
    ) -> Result<(TransitionOutcome, Instance), Error> {
        let conn = &mut *self.connection().await?;
        let claimed = diesel::update(live_row(id))
            .filter(instance::active_propolis_id.is_null())
            .filter(instance::nexus_state.eq_any([
                DbEnum(InstanceNexusState::NoVmm),
                DbEnum(InstanceNexusState::Failed),
            ]))
            .set((
                instance::nexus_state.eq(DbEnum(InstanceNexusState::Vmm)),
                instance::active_propolis_id.eq(Some(DbTypedUuid(vmm_id))),
                instance::state_generation.eq(instance::state_generation + 1),
                instance::time_state_updated.eq(Utc::now()),
            ))
            .returning(Instance::as_returning())
            .cached_by_text()
            .get_result(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?;
        if let Some(claimed) = claimed {
            return Ok((TransitionOutcome::Applied, claimed));
        }
        let found = live_instance(conn, id).await?;
        let runtime = &found.runtime;
        let reason = match runtime.active_vmm() {
            Some(active) if active == vmm_id => {
                return Ok((TransitionOutcome::AlreadyDone, found));
            }
            Some(active) => ConflictReason::ActiveVmm(active),
            None => match runtime.nexus_state() {
                InstanceNexusState::NoVmm | InstanceNexusState::Failed => ConflictReason::Changed,
                other => ConflictReason::State(other),
            },
        };
        Ok((conflict(&found, reason), found))
    }

    /// Marks a migration under way: the instance's target VMM and migration id become
    /// `target_id` and `migration_id`, if its active VMM is `source_id` and no migration is.
    /// `AlreadyDone` if they already are (or the target has since become the active VMM: the
    /// migration completed); `Conflict` otherwise; `ObjectNotFound` if the instance does not
    /// exist or was deleted.
    pub async fn instance_set_migration_ids(
        &self,
        id: InstanceUuid,
        source_id: VmmUuid,
        migration_id: MigrationUuid,
        target_id: VmmUuid,
    ) -> Result<TransitionOutcome, Error> {
        let conn = &mut *self.connection().await?;
        let set = diesel::update(live_row(id))
            .filter(instance::active_propolis_id.eq(DbTypedUuid(source_id)))
            .filter(instance::migration_id.is_null())
            .filter(instance::target_propolis_id.is_null())
            .set((
                instance::target_propolis_id.eq(Some(DbTypedUuid(target_id))),
                instance::migration_id.eq(Some(DbTypedUuid(migration_id))),
                instance::state_generation.eq(instance::state_generation + 1),
                instance::time_state_updated.eq(Utc::now()),
            ))
            .cached_by_text()
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        if set > 0 {
            return Ok(TransitionOutcome::Applied);
        }
        let found = live_instance(conn, id).await?;
        let runtime = &found.runtime;
        if runtime.migration() == Some(migration_id) || runtime.active_vmm() == Some(target_id) {
            return Ok(TransitionOutcome::AlreadyDone);
        }
        let reason = match (runtime.migration(), runtime.active_vmm()) {
            (Some(other), _) => ConflictReason::Migrating(other),
            (None, Some(active)) if active != source_id => ConflictReason::ActiveVmm(active),
            (None, None) => ConflictReason::NotActive,
            (None, Some(_)) => ConflictReason::Changed,
        };
        Ok(conflict(&found, reason))
    }

    /// Ends a migration that unwound: clears the instance's target VMM and migration id if
    /// they are `migration_id`'s. `AlreadyDone` if no migration is under way (or the instance
    /// is gone); `Conflict` (`Migrating`) if another one is, which this leaves alone.
    pub async fn instance_clear_migration_ids(
        &self,
        id: InstanceUuid,
        migration_id: MigrationUuid,
    ) -> Result<TransitionOutcome, Error> {
        let conn = &mut *self.connection().await?;
        let cleared = diesel::update(live_row(id))
            .filter(instance::migration_id.eq(DbTypedUuid(migration_id)))
            .set((
                instance::target_propolis_id.eq(None::<DbTypedUuid<VmmKind>>),
                instance::migration_id.eq(None::<DbTypedUuid<MigrationKind>>),
                instance::state_generation.eq(instance::state_generation + 1),
                instance::time_state_updated.eq(Utc::now()),
            ))
            .cached_by_text()
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        release_outcome(conn, id, cleared, |runtime| {
            runtime.migration().map(ConflictReason::Migrating)
        })
        .await
    }

    /// Releases a start's claim: if the instance's active VMM is `vmm_id`, the instance has no
    /// VMM any more (state `no_vmm`, no target, no migration), whatever else changed
    /// meanwhile. `AlreadyDone` if it has no active VMM (or is gone); `Conflict` (`ActiveVmm`)
    /// if another VMM is active, which this leaves alone.
    pub async fn instance_release_vmm(
        &self,
        id: InstanceUuid,
        vmm_id: VmmUuid,
    ) -> Result<TransitionOutcome, Error> {
        let conn = &mut *self.connection().await?;
        let released = diesel::update(live_row(id))
            .filter(instance::active_propolis_id.eq(DbTypedUuid(vmm_id)))
            .set((
                instance::nexus_state.eq(DbEnum(InstanceNexusState::NoVmm)),
                instance::active_propolis_id.eq(None::<DbTypedUuid<VmmKind>>),
                instance::target_propolis_id.eq(None::<DbTypedUuid<VmmKind>>),
                instance::migration_id.eq(None::<DbTypedUuid<MigrationKind>>),
                instance::state_generation.eq(instance::state_generation + 1),
                instance::time_state_updated.eq(Utc::now()),
            ))
            .cached_by_text()
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        release_outcome(conn, id, released, |runtime| {
            runtime.active_vmm().map(ConflictReason::ActiveVmm)
        })
        .await
    }

    /// Marks a newly created instance stopped (`creating` → `no_vmm`). `AlreadyDone` if it is
    /// past `creating`; `ObjectNotFound` if it does not exist or was deleted. There is no
    /// conflict: every state but `creating` comes after this transition. Returns the instance
    /// as it is after the call too (what instance-create answers with), read by the same
    /// statement when the transition applies.
    pub async fn instance_mark_stopped(
        &self,
        id: InstanceUuid,
    ) -> Result<(TransitionOutcome, Instance), Error> {
        let conn = &mut *self.connection().await?;
        let stopped = diesel::update(live_row(id))
            .filter(instance::nexus_state.eq(DbEnum(InstanceNexusState::Creating)))
            .set((
                instance::nexus_state.eq(DbEnum(InstanceNexusState::NoVmm)),
                instance::state_generation.eq(instance::state_generation + 1),
                instance::time_state_updated.eq(Utc::now()),
            ))
            .returning(Instance::as_returning())
            .cached_by_text()
            .get_result(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?;
        if let Some(stopped) = stopped {
            return Ok((TransitionOutcome::Applied, stopped));
        }
        Ok((
            TransitionOutcome::AlreadyDone,
            live_instance(conn, id).await?,
        ))
    }
}

/// The live instance `id`'s row, for a transition's `UPDATE` to add its conditions to.
type LiveRow = diesel::dsl::Filter<
    diesel::dsl::Filter<instance::table, diesel::dsl::Eq<instance::id, DbTypedUuid<InstanceKind>>>,
    diesel::dsl::IsNull<instance::time_deleted>,
>;

fn live_row(id: InstanceUuid) -> LiveRow {
    instance::table
        .filter(instance::id.eq(DbTypedUuid(id)))
        .filter(instance::time_deleted.is_null())
}

/// What a release (a transition that clears what the caller holds: a claim, a migration)
/// did, given how many rows its `UPDATE` changed: `Applied`; else, read on the same
/// connection, `AlreadyDone` if the instance is gone or holds nothing of the kind (`held`
/// says what it holds, as the conflict it would be), `Conflict` if it holds another's.
async fn release_outcome(
    conn: &mut AsyncPgConnection,
    id: InstanceUuid,
    updated: usize,
    held: fn(&InstanceRuntimeState) -> Option<ConflictReason>,
) -> Result<TransitionOutcome, Error> {
    if updated > 0 {
        return Ok(TransitionOutcome::Applied);
    }
    let Some(found) = live_instance_if_any(conn, id).await? else {
        return Ok(TransitionOutcome::AlreadyDone);
    };
    Ok(match held(&found.runtime) {
        None => TransitionOutcome::AlreadyDone,
        Some(reason) => conflict(&found, reason),
    })
}

fn conflict(found: &Instance, reason: ConflictReason) -> TransitionOutcome {
    TransitionOutcome::Conflict(TransitionConflict {
        instance_name: found.name().clone(),
        reason,
    })
}

async fn live_instance_if_any(
    conn: &mut AsyncPgConnection,
    id: InstanceUuid,
) -> Result<Option<Instance>, Error> {
    Ok(instance_fetch_any(conn, id)
        .await
        .map_err(TxnError::into_public)?
        .filter(|found| found.time_deleted.is_none()))
}
