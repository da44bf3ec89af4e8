//! The instance's runtime transitions, each one conditional `UPDATE`.
//!
//! Each transition states in its `WHERE` clause the state it moves from, and bumps the state
//! generation, so of racing callers exactly one applies it. When nothing was updated the row
//! is read once (on the same connection) to tell the caller why: it was already done (a saga
//! action repeated after a crash), or the instance is in a state the transition does not move
//! from (`Conflict`, with the reason). The SQL is plain `UPDATE ... WHERE ... RETURNING`, which
//! CockroachDB runs as well.

use super::DataStore;
use super::disk_attach::disks_changing;
use super::instance::{instance_fetch_any, live_instance};
use crate::cached::CacheByText;
use crate::error::{TxnError, public_error_from_diesel};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
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

/// What [`DataStore::instance_release`] gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// A start's claim: if the instance's active VMM is this one, the instance has no VMM any
    /// more (state `no_vmm`, no target, no migration), whatever else changed meanwhile.
    Claim(VmmUuid),
    /// A migration that unwound: the instance's target VMM and migration id are cleared if
    /// they are this migration's.
    Migration(MigrationUuid),
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
        // The claim and the check of the instance's disks are one transaction, in this order:
        // the `UPDATE` takes the instance row's lock (which a disk attach or detach takes
        // first too), and the check, a new statement under READ COMMITTED, then sees every
        // attach or detach that held the lock before; one that comes after finds the VMM and
        // is refused. So a VMM never starts while a disk of its instance is between states
        // (see `disk_attach.rs`). A disk between states rolls the claim back.
        let claimed = self
            .retry_conflicts(|| async move {
                let conn = &mut *self.connection().await?;
                conn.transaction(async |conn| {
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
                        .optional()?;
                    match claimed {
                        Some(claimed) if disks_changing(conn, id).await? => {
                            Err(TxnError::Public(Error::conflict(format!(
                                "instance \"{}\" has a disk being attached or detached; retry \
                                 once that is done",
                                claimed.name()
                            ))))
                        }
                        claimed => Ok(claimed),
                    }
                })
                .await
            })
            .await?;
        if let Some(claimed) = claimed {
            return Ok((TransitionOutcome::Applied, claimed));
        }
        let conn = &mut *self.connection().await?;
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

    /// Releases what the caller holds of the instance ([`Release`]): a start's claim (undone)
    /// or a migration (unwound). `AlreadyDone` if the instance holds nothing of the kind (or
    /// is gone); `Conflict` if it holds another's (`ActiveVmm`: another VMM is active;
    /// `Migrating`: another migration is under way), which this leaves alone.
    pub async fn instance_release(
        &self,
        id: InstanceUuid,
        what: Release,
    ) -> Result<TransitionOutcome, Error> {
        let conn = &mut *self.connection().await?;
        match what {
            Release::Claim(vmm_id) => {
                let update = diesel::update(live_row(id))
                    .filter(instance::active_propolis_id.eq(DbTypedUuid(vmm_id)))
                    .set(vmm_released());
                release(conn, id, update, |now| {
                    now.active_vmm().map(ConflictReason::ActiveVmm)
                })
                .await
            }
            Release::Migration(migration_id) => {
                let update = diesel::update(live_row(id))
                    .filter(instance::migration_id.eq(DbTypedUuid(migration_id)))
                    .set(migration_cleared());
                release(conn, id, update, |now| {
                    now.migration().map(ConflictReason::Migrating)
                })
                .await
            }
        }
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

/// The changes that end the instance's migration, if one is under way: no target VMM, no
/// migration id; the state generation bumped.
type MigrationCleared = (
    diesel::dsl::Eq<instance::target_propolis_id, Option<DbTypedUuid<VmmKind>>>,
    diesel::dsl::Eq<instance::migration_id, Option<DbTypedUuid<MigrationKind>>>,
    diesel::dsl::Eq<instance::state_generation, diesel::dsl::Add<instance::state_generation, i64>>,
    diesel::dsl::Eq<instance::time_state_updated, DateTime<Utc>>,
);

fn migration_cleared() -> MigrationCleared {
    (
        instance::target_propolis_id.eq(None),
        instance::migration_id.eq(None),
        instance::state_generation.eq(instance::state_generation + 1),
        instance::time_state_updated.eq(Utc::now()),
    )
}

/// The changes that leave the instance with no VMM (stopped: `no_vmm`), and so no migration.
pub(super) type VmmReleased = (
    diesel::dsl::Eq<instance::nexus_state, DbEnum<InstanceNexusState>>,
    diesel::dsl::Eq<instance::active_propolis_id, Option<DbTypedUuid<VmmKind>>>,
    MigrationCleared,
);

pub(super) fn vmm_released() -> VmmReleased {
    (
        instance::nexus_state.eq(DbEnum(InstanceNexusState::NoVmm)),
        instance::active_propolis_id.eq(None),
        migration_cleared(),
    )
}

/// Runs a release (a transition that clears what the caller holds: a claim, a migration):
/// its conditional `UPDATE`, then, if that changed nothing, a read on the same connection
/// that tells why: `AlreadyDone` if the instance is gone or holds nothing of the kind (`held`
/// says what it holds, as the conflict it would be), `Conflict` if it holds another's.
async fn release<U>(
    conn: &mut AsyncPgConnection,
    id: InstanceUuid,
    update: U,
    held: fn(&InstanceRuntimeState) -> Option<ConflictReason>,
) -> Result<TransitionOutcome, Error>
where
    U: diesel::query_builder::QueryFragment<diesel::pg::Pg> + Send + 'static,
{
    let updated = update
        .cached_by_text()
        .execute(conn)
        .await
        .map_err(public_error_from_diesel)?;
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
