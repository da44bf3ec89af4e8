//! VMMs: their records, sled agents' state reports, and retirement.

use super::DataStore;
use super::sled::release_reservation;
use crate::cached::CacheByText;
use crate::error::{TxnError, public_error_from_diesel};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use halyard_common::ids::{GenericUuid, InstanceUuid, MigrationUuid, SledUuid, VmmKind, VmmUuid};
use halyard_common::{
    Error, Generation, InstanceNexusState, Labelled, MigrationState, ResourceType, SledBackend,
    VmmState,
};
use halyard_db_model::schema::{instance, migration, sled, vmm};
use halyard_db_model::{DbEnum, DbGeneration, DbTypedUuid, Vmm, VmmRuntimeState};

/// What a sled agent reports about one VMM: its state, and the state of the migration it is
/// the target of (`migration_in`) or the source of (`migration_out`), each with its own
/// generation.
#[derive(Debug, Clone)]
pub struct VmmStateReport {
    pub vmm_id: VmmUuid,
    pub vmm: VmmRuntimeState,
    pub migration_in: Option<MigrationReport>,
    pub migration_out: Option<MigrationReport>,
}

/// One side of a migration, as the sled agent of that side reports it.
#[derive(Debug, Clone, Copy)]
pub struct MigrationReport {
    pub migration_id: MigrationUuid,
    pub state: MigrationState,
    pub generation: Generation,
    pub time_updated: DateTime<Utc>,
}

/// Which parts of a report were newer than what was stored, and so were applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportApplied {
    pub vmm_updated: bool,
    pub migration_in_updated: bool,
    pub migration_out_updated: bool,
}

/// What retiring a VMM changed. Retiring an already retired VMM changes nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetireOutcome {
    /// The VMM was moved to its terminal state (it was not terminal yet).
    pub vmm_state_changed: bool,
    /// The VMM's record was marked deleted.
    pub vmm_marked_deleted: bool,
    /// Its sled reservation was released.
    pub reservation_released: bool,
    /// The instance's active or target VMM pointer was cleared. (Retiring the active VMM
    /// ends a migration in progress too; its target, orphaned, is found by
    /// `vmm_list_orphaned_targets`, the one place that says which targets are orphans.)
    pub instance_updated: bool,
}

impl DataStore {
    /// Inserts a VMM record. Inserting the same VMM twice returns the stored record.
    pub async fn vmm_insert(&self, new: Vmm) -> Result<Vmm, Error> {
        let conn = &mut *self.connection().await?;
        let inserted = diesel::insert_into(vmm::table)
            .values(&new)
            .on_conflict(vmm::id)
            .do_nothing()
            .cached_by_text()
            .execute(conn)
            .await;
        match inserted {
            Ok(_) => vmm_fetch(conn, new.id())
                .await
                .map_err(TxnError::into_public),
            Err(e) if crate::error::is_foreign_key_violation(&e) => {
                Err(Error::invalid_request(format!(
                    "VMM {} refers to an unknown instance ({}) or sled ({})",
                    new.id(),
                    new.instance_id(),
                    new.sled_id()
                )))
            }
            Err(e) => Err(public_error_from_diesel(e)),
        }
    }

    /// A VMM by id, retired or not.
    pub async fn vmm_fetch(&self, id: VmmUuid) -> Result<Vmm, Error> {
        let conn = &mut *self.connection().await?;
        vmm_fetch(conn, id).await.map_err(TxnError::into_public)
    }

    /// Every VMM that ever incarnated the instance, oldest first.
    pub async fn instance_vmm_history(&self, instance_id: InstanceUuid) -> Result<Vec<Vmm>, Error> {
        let conn = &mut *self.connection().await?;
        vmm::table
            .filter(vmm::instance_id.eq(DbTypedUuid(instance_id)))
            .order((vmm::time_created.asc(), vmm::id.asc()))
            .select(Vmm::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// VMMs on a sled (all sleds if `None`); retired ones only if `include_deleted`.
    pub async fn vmm_list(
        &self,
        on_sled: Option<SledUuid>,
        include_deleted: bool,
    ) -> Result<Vec<Vmm>, Error> {
        let conn = &mut *self.connection().await?;
        let mut query = vmm::table.select(Vmm::as_select()).into_boxed();
        if let Some(sled_id) = on_sled {
            query = query.filter(vmm::sled_id.eq(DbTypedUuid(sled_id)));
        }
        if !include_deleted {
            query = query.filter(vmm::time_deleted.is_null());
        }
        query
            .order((vmm::time_created.asc(), vmm::id.asc()))
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// VMMs that reached a terminal state before `ended_before` but were not retired yet:
    /// what a crash between a VMM's end and its retirement leaves behind. (A VMM that ended
    /// just now is being retired by the report that ended it.)
    pub async fn vmm_list_unretired_terminal(
        &self,
        ended_before: DateTime<Utc>,
    ) -> Result<Vec<Vmm>, Error> {
        let conn = &mut *self.connection().await?;
        let terminal: Vec<DbEnum<VmmState>> =
            [VmmState::Destroyed, VmmState::Failed, VmmState::SagaUnwound]
                .into_iter()
                .map(DbEnum)
                .collect();
        vmm::table
            .filter(vmm::time_deleted.is_null())
            .filter(vmm::state.eq_any(terminal))
            .filter(vmm::time_state_updated.lt(ended_before))
            .order(vmm::time_state_updated.asc())
            .select(Vmm::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// How many VMMs not yet retired are in each state, on each backend (for metrics):
    /// `(state, backend, count)`, in label order.
    pub async fn vmm_count_by_state_and_backend(
        &self,
    ) -> Result<Vec<(String, String, i64)>, Error> {
        let conn = &mut *self.connection().await?;
        vmm::table
            .inner_join(sled::table)
            .filter(vmm::time_deleted.is_null())
            .group_by((vmm::state, sled::backend))
            .select((vmm::state, sled::backend, diesel::dsl::count_star()))
            .order((vmm::state.asc(), sled::backend.asc()))
            .load::<(DbEnum<VmmState>, DbEnum<SledBackend>, i64)>(conn)
            .await
            .map(|rows| {
                rows.into_iter()
                    .map(|(state, backend, count)| {
                        (
                            state.0.label().to_string(),
                            backend.0.label().to_string(),
                            count,
                        )
                    })
                    .collect()
            })
            .map_err(public_error_from_diesel)
    }

    /// Writes a VMM's state if its generation is newer than the stored one (and the VMM is
    /// not retired). Returns whether it applied.
    pub async fn vmm_update_runtime(
        &self,
        id: VmmUuid,
        new: &VmmRuntimeState,
    ) -> Result<bool, Error> {
        let conn = &mut *self.connection().await?;
        update_vmm_runtime(conn, id, new)
            .await
            .map(|(updated, _)| updated)
            .map_err(TxnError::into_public)
    }

    /// Applies a sled agent's report of a VMM and its migrations, all in one transaction:
    /// each part applies only if its generation is newer than the stored one, and a report
    /// naming a migration this VMM is not part of is rejected whole (nothing is applied).
    ///
    /// Returns which parts applied, and the VMM's record as this report left it: the row its
    /// `UPDATE` returned, or, when the VMM's part did not apply (stale, repeated, or the VMM
    /// is retired), the row read to tell that from an unknown VMM. So a caller that asked
    /// for the state needs no read of its own.
    pub async fn vmm_apply_report(
        &self,
        report: &VmmStateReport,
    ) -> Result<(ReportApplied, Vmm), Error> {
        if report.migration_in.is_none() && report.migration_out.is_none() {
            // Most reports: the VMM's state alone, one generation-guarded UPDATE, atomic by
            // itself. (When it changes nothing, a read tells a stale report from an unknown
            // VMM; the two need not be atomic.) An explicit transaction would add a BEGIN and
            // a COMMIT round trip to each of the several reports of every VMM.
            return self
                .retry_conflicts(|| async move {
                    let conn = &mut *self.connection().await?;
                    let (vmm_updated, vmm) =
                        update_vmm_runtime(conn, report.vmm_id, &report.vmm).await?;
                    let applied = ReportApplied {
                        vmm_updated,
                        ..ReportApplied::default()
                    };
                    Ok((applied, vmm))
                })
                .await;
        }
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                let (vmm_updated, vmm) =
                    update_vmm_runtime(conn, report.vmm_id, &report.vmm).await?;
                let migration_in_updated = match &report.migration_in {
                    Some(side) => {
                        update_migration_side(conn, report.vmm_id, side, Side::Target).await?
                    }
                    None => false,
                };
                let migration_out_updated = match &report.migration_out {
                    Some(side) => {
                        update_migration_side(conn, report.vmm_id, side, Side::Source).await?
                    }
                    None => false,
                };
                let applied = ReportApplied {
                    vmm_updated,
                    migration_in_updated,
                    migration_out_updated,
                };
                Ok((applied, vmm))
            })
            .await
        })
        .await
    }

    /// Retires a VMM, atomically: moves it to `final_state` (unless it already is terminal),
    /// marks its record deleted, releases its sled reservation, and clears the instance's
    /// active (or target) VMM pointer if it names this VMM, bumping the instance's generation.
    ///
    /// Idempotent: a second call changes nothing and reports nothing changed. Unregistering
    /// the VMM from its sled agent is the caller's part.
    pub async fn vmm_retire(
        &self,
        id: VmmUuid,
        final_state: VmmState,
    ) -> Result<RetireOutcome, Error> {
        if !final_state.is_terminal() {
            return Err(Error::invalid_request(format!(
                "a VMM can only be retired into a terminal state, not \"{final_state}\""
            )));
        }
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| retire(conn, id, final_state).await)
                .await
        })
        .await
    }
}

impl DataStore {
    /// Retires a VMM whose sled is gone (expunged): as `vmm_retire(id, Failed)` (its instance,
    /// if this was its active VMM, becomes failed; a migration target orphaned by it is the
    /// caller's to retire), and in the same transaction each unfinished migration it takes
    /// part in is marked failed on its side (generation bumped), since that side will never
    /// report again. Idempotent.
    pub async fn vmm_retire_lost(&self, id: VmmUuid) -> Result<RetireOutcome, Error> {
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                fail_unfinished_migration_sides(conn, id).await?;
                retire(conn, id, VmmState::Failed).await
            })
            .await
        })
        .await
    }
}

impl DataStore {
    /// Live VMMs on other sleds that are migration targets whose source VMM ran on `sled_id`
    /// and that did not become their instance's active VMM: a migration out of that sled
    /// that can no longer finish (the sled is gone) left them behind.
    pub async fn vmm_list_orphaned_targets_from(
        &self,
        sled_id: SledUuid,
    ) -> Result<Vec<Vmm>, Error> {
        let conn = &mut *self.connection().await?;
        orphaned_targets(conn, OrphanedBy::SourceSled(sled_id)).await
    }

    /// Live VMMs that are the target of a migration whose source VMM is retired and that did
    /// not become their instance's active VMM: the migration can never finish, so they are
    /// orphans to retire. With `source`, only the targets of migrations out of that VMM.
    ///
    /// Found by query, not from the retirement that ended the source, so a retirement that
    /// failed half-way (the target's sled agent out of reach) is finished by any later one.
    pub async fn vmm_list_orphaned_targets(
        &self,
        source: Option<VmmUuid>,
    ) -> Result<Vec<Vmm>, Error> {
        let conn = &mut *self.connection().await?;
        orphaned_targets(conn, OrphanedBy::RetiredSource(source)).await
    }
}

/// What a migration's source lost that left its target an orphan.
enum OrphanedBy {
    /// The source ran on this sled (which is gone); the target is on another.
    SourceSled(SledUuid),
    /// The source is retired (only this source, if given).
    RetiredSource(Option<VmmUuid>),
}

// A migration's two VMMs, read from `vmm` under two names.
diesel::alias!(vmm as source_vmm: SourceVmm, vmm as target_vmm: TargetVmm);

/// Live migration targets, orphaned as `by` says, that are not their instance's active VMM
/// (one that is holds the guest: it is no orphan), oldest first.
async fn orphaned_targets(conn: &mut AsyncPgConnection, by: OrphanedBy) -> Result<Vec<Vmm>, Error> {
    let mut query = migration::table
        .inner_join(source_vmm.on(source_vmm.field(vmm::id).eq(migration::source_propolis_id)))
        .inner_join(target_vmm.on(target_vmm.field(vmm::id).eq(migration::target_propolis_id)))
        .filter(target_vmm.field(vmm::time_deleted).is_null())
        .filter(diesel::dsl::not(diesel::dsl::exists(
            instance::table
                .filter(instance::active_propolis_id.eq(target_vmm.field(vmm::id).nullable())),
        )))
        .select(target_vmm.field(vmm::id))
        .distinct()
        .into_boxed();
    match by {
        OrphanedBy::SourceSled(sled_id) => {
            query = query
                .filter(source_vmm.field(vmm::sled_id).eq(DbTypedUuid(sled_id)))
                .filter(target_vmm.field(vmm::sled_id).ne(DbTypedUuid(sled_id)));
        }
        OrphanedBy::RetiredSource(source) => {
            query = query.filter(source_vmm.field(vmm::time_deleted).is_not_null());
            if let Some(source) = source {
                query = query.filter(migration::source_propolis_id.eq(DbTypedUuid(source)));
            }
        }
    }
    let ids = query
        .load::<DbTypedUuid<VmmKind>>(conn)
        .await
        .map_err(public_error_from_diesel)?;
    vmm::table
        .filter(vmm::id.eq_any(ids))
        .order((vmm::time_created.asc(), vmm::id.asc()))
        .select(Vmm::as_select())
        .load(conn)
        .await
        .map_err(public_error_from_diesel)
}

/// Marks VMM `id`'s side of every unfinished migration (neither side terminal) failed.
async fn fail_unfinished_migration_sides(
    conn: &mut AsyncPgConnection,
    id: VmmUuid,
) -> Result<(), TxnError> {
    let vmm_id = DbTypedUuid(id);
    let terminal: Vec<DbEnum<MigrationState>> = [MigrationState::Completed, MigrationState::Failed]
        .into_iter()
        .map(DbEnum)
        .collect();
    let unfinished = || {
        migration::table
            .filter(migration::time_deleted.is_null())
            .filter(migration::source_state.ne_all(terminal.clone()))
            .filter(migration::target_state.ne_all(terminal.clone()))
    };
    let now = Utc::now();
    let failed = DbEnum(MigrationState::Failed);
    diesel::update(unfinished().filter(migration::source_propolis_id.eq(vmm_id)))
        .set((
            migration::source_state.eq(failed),
            migration::source_generation.eq(migration::source_generation + 1),
            migration::time_source_updated.eq(now),
        ))
        .cached_by_text()
        .execute(conn)
        .await?;
    diesel::update(unfinished().filter(migration::target_propolis_id.eq(vmm_id)))
        .set((
            migration::target_state.eq(failed),
            migration::target_generation.eq(migration::target_generation + 1),
            migration::time_target_updated.eq(now),
        ))
        .cached_by_text()
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn retire(
    conn: &mut AsyncPgConnection,
    id: VmmUuid,
    final_state: VmmState,
) -> Result<RetireOutcome, TxnError> {
    let mut outcome = RetireOutcome::default();
    // Lock the VMM row so concurrent retirements of one VMM serialize.
    let found: Vmm = vmm::table
        .filter(vmm::id.eq(DbTypedUuid(id)))
        .select(Vmm::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| Error::not_found_by_id(ResourceType::Vmm, id.into_untyped_uuid()))?;
    // Then its instance's row, before the sled's (which releasing the reservation writes):
    // every transaction that writes both locks the instance first (a completed migration
    // locks it, then retires the source), so two of them never wait on each other in a
    // cycle. (A sled row is the hottest row there is: every reservation and release on that
    // sled writes it.) One conditional UPDATE, which locks the row only if it points at this
    // VMM (one that does not is not written here, so its order does not matter), and decides
    // on the row as it is once locked: so nothing can move the instance's pointers between
    // the decision and the write. The active VMM: the instance has no VMM any more (and no
    // migration: without its source a migration cannot finish). The target: the migration
    // ends, the instance runs on.
    let now = Utc::now();
    // The state the VMM ended in decides what the instance becomes if this was its active VMM.
    let ended_in = if found.state().is_terminal() {
        found.state()
    } else {
        final_state
    };
    let instance_state = if ended_in == VmmState::Failed {
        InstanceNexusState::Failed
    } else {
        InstanceNexusState::NoVmm
    };
    let instance_updated = diesel::sql_query(
        "UPDATE instance SET \
           active_propolis_id = CASE WHEN active_propolis_id = $1 THEN NULL \
             ELSE active_propolis_id END, \
           nexus_state = CASE WHEN active_propolis_id = $1 THEN $2 ELSE nexus_state END, \
           target_propolis_id = NULL, \
           migration_id = NULL, \
           state_generation = state_generation + 1, \
           time_state_updated = $3 \
         WHERE id = $4 AND (active_propolis_id = $1 OR target_propolis_id = $1)",
    )
    .bind::<diesel::sql_types::Uuid, _>(DbTypedUuid(id))
    .bind::<diesel::sql_types::Text, _>(DbEnum(instance_state))
    .bind::<diesel::sql_types::Timestamptz, _>(now)
    .bind::<diesel::sql_types::Uuid, _>(found.instance_id)
    .cached_by_text()
    .execute(conn)
    .await?;
    outcome.instance_updated = instance_updated > 0;

    if !found.state().is_terminal() {
        diesel::update(vmm::table.filter(vmm::id.eq(found.id)))
            .set((
                vmm::state.eq(DbEnum(final_state)),
                vmm::generation.eq(DbGeneration(found.runtime.generation().next())),
                vmm::time_state_updated.eq(now),
            ))
            .cached_by_text()
            .execute(conn)
            .await?;
        outcome.vmm_state_changed = true;
    }
    if found.time_deleted.is_none() {
        diesel::update(vmm::table.filter(vmm::id.eq(found.id)))
            .set(vmm::time_deleted.eq(now))
            .cached_by_text()
            .execute(conn)
            .await?;
        outcome.vmm_marked_deleted = true;
    }
    outcome.reservation_released = release_reservation(conn, id).await?;
    Ok(outcome)
}

pub(crate) async fn vmm_fetch(conn: &mut AsyncPgConnection, id: VmmUuid) -> Result<Vmm, TxnError> {
    vmm::table
        .filter(vmm::id.eq(DbTypedUuid(id)))
        .select(Vmm::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| Error::not_found_by_id(ResourceType::Vmm, id.into_untyped_uuid()).into())
}

/// The generation-guarded VMM state write, and the VMM's row after it. `false`: stale,
/// repeated, or the VMM is retired (then the row is read, which also tells an unknown VMM).
async fn update_vmm_runtime(
    conn: &mut AsyncPgConnection,
    id: VmmUuid,
    new: &VmmRuntimeState,
) -> Result<(bool, Vmm), TxnError> {
    let updated = diesel::update(vmm::table)
        .filter(vmm::id.eq(DbTypedUuid(id)))
        .filter(vmm::time_deleted.is_null())
        .filter(vmm::generation.lt(new.generation))
        .set(new)
        .returning(Vmm::as_returning())
        .cached_by_text()
        .get_result(conn)
        .await
        .optional()?;
    match updated {
        Some(vmm) => Ok((true, vmm)),
        None => Ok((false, vmm_fetch(conn, id).await?)),
    }
}

#[derive(Clone, Copy)]
enum Side {
    Source,
    Target,
}

/// The generation-guarded write of one side of a migration. Rejects a migration that does
/// not exist or that this VMM is not on the given side of.
async fn update_migration_side(
    conn: &mut AsyncPgConnection,
    vmm_id: VmmUuid,
    report: &MigrationReport,
    side: Side,
) -> Result<bool, TxnError> {
    let this_migration =
        migration::table.filter(migration::id.eq(DbTypedUuid(report.migration_id)));
    let vmm_id = DbTypedUuid(vmm_id);
    let state = DbEnum(report.state);
    let generation = DbGeneration(report.generation);
    let updated = match side {
        Side::Source => {
            diesel::update(this_migration.filter(migration::source_propolis_id.eq(vmm_id)))
                .filter(migration::source_generation.lt(generation))
                .set((
                    migration::source_state.eq(state),
                    migration::source_generation.eq(generation),
                    migration::time_source_updated.eq(report.time_updated),
                ))
                .cached_by_text()
                .execute(conn)
                .await?
        }
        Side::Target => {
            diesel::update(this_migration.filter(migration::target_propolis_id.eq(vmm_id)))
                .filter(migration::target_generation.lt(generation))
                .set((
                    migration::target_state.eq(state),
                    migration::target_generation.eq(generation),
                    migration::time_target_updated.eq(report.time_updated),
                ))
                .cached_by_text()
                .execute(conn)
                .await?
        }
    };
    if updated > 0 {
        return Ok(true);
    }
    // Stale, or not this VMM's migration at all? Only the first is a valid report.
    let is_party: bool = match side {
        Side::Source => {
            diesel::select(diesel::dsl::exists(
                migration::table
                    .filter(migration::id.eq(DbTypedUuid(report.migration_id)))
                    .filter(migration::source_propolis_id.eq(vmm_id)),
            ))
            .get_result(conn)
            .await?
        }
        Side::Target => {
            diesel::select(diesel::dsl::exists(
                migration::table
                    .filter(migration::id.eq(DbTypedUuid(report.migration_id)))
                    .filter(migration::target_propolis_id.eq(vmm_id)),
            ))
            .get_result(conn)
            .await?
        }
    };
    if !is_party {
        let role = match side {
            Side::Source => "source",
            Side::Target => "target",
        };
        return Err(Error::invalid_request(format!(
            "VMM {} is not the {role} of migration {}",
            vmm_id.0, report.migration_id
        ))
        .into());
    }
    Ok(false)
}
