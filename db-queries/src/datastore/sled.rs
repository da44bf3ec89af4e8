//! Sleds and the reservations that VMMs hold on them.
//!
//! A sled's `reserved_*` columns are the running totals of its `sled_reservation` rows.
//! Reserving is one conditional `UPDATE` of those totals (`WHERE reserved + n <= usable`)
//! followed by the reservation insert, in one transaction. Two racing reservations on one
//! sled both write its row, so the database orders them and the second re-checks the
//! condition against the first's result: a sled is never over-committed, whether the database
//! runs READ COMMITTED (PostgreSQL) or SERIALIZABLE (CockroachDB). A CHECK constraint on the
//! sled row backs this up.
//!
//! An expunged sled (`time_expunged` set: an operator declared it gone) is never picked: the
//! claim's `UPDATE` requires `time_expunged IS NULL`, and since expunging writes the same row,
//! a reservation and an expunge are ordered by the database too: a reservation either
//! committed before the expunge (and the expunge's sweep sees it) or finds the sled expunged.
//!
//! Nor is a sled whose VMMs the instance watcher failed for its silence (`time_vmms_failed`
//! set), until its agent answered and destroyed them (`sled_clear_vmms_failed`): the same
//! claim requires `time_vmms_failed IS NULL`, and the mark is written to the same row.

use super::DataStore;
use super::network::LIVE_VMM_STATES;
use crate::cached::CacheByText;
use crate::error::{TxnError, public_error_from_diesel};
use crate::pagination::{DataPageParams, paginate};
use chrono::{DateTime, Utc};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::upsert::excluded;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use halyard_common::ids::{GenericUuid, InstanceUuid, SledKind, SledUuid, VmmUuid};
use halyard_common::{ByteCount, Error, Labelled, ResourceType};
use halyard_db_model::schema::{sled, sled_reservation, vmm};
use halyard_db_model::{DbByteCount, DbTypedUuid, Sled, SledReservation, SledResources};
use std::time::Duration;
use uuid::Uuid;

/// `now() - bound`, by the database's clock (as a Nexus heartbeat's age is judged): a sled
/// last seen before it is silent.
fn silent_since(bound: Duration) -> diesel::expression::SqlLiteral<diesel::sql_types::Timestamptz> {
    let micros = i64::try_from(bound.as_micros()).unwrap_or(i64::MAX);
    diesel::dsl::sql::<diesel::sql_types::Timestamptz>(&format!(
        "now() - {micros} * INTERVAL '1 microsecond'"
    ))
}

/// How many times placement picks another sled after losing a race for the one it picked.
const MAX_PLACEMENT_ATTEMPTS: u32 = 16;

/// Where a reservation may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SledChoice {
    /// Any sled with room, chosen at random among them to spread load; QEMU sleds first
    /// while they have room, so a development environment that mixes simulated sleds with a
    /// real one puts VMs where they really run (a deployment has one kind only).
    Any,
    /// This sled, or fail.
    Specific(SledUuid),
    /// Any sled with room but this one, of the same backend as this one (a migration's
    /// destination: not its source, and a VMM moves only between sleds of one kind).
    AnyExcept(SledUuid),
}

impl SledChoice {
    /// The sled an "any" placement must avoid (the nil id, which no sled has, if none).
    fn excluded(self) -> SledUuid {
        match self {
            SledChoice::AnyExcept(sled) => sled,
            _ => SledUuid::from_untyped_uuid(Uuid::nil()),
        }
    }
}

/// Why one placement attempt did not reserve anything.
pub(super) enum AttemptFailed {
    /// The sled picked filled up between the pick and the claim: pick again.
    LostRace,
    /// Nothing fits, or the request is bad: give up with this error.
    Final(TxnError),
}

impl<E: Into<TxnError>> From<E> for AttemptFailed {
    fn from(e: E) -> Self {
        AttemptFailed::Final(e.into())
    }
}

impl DataStore {
    /// How many live VMMs (registered and not ended) each sled holds, for the sleds in
    /// `sleds`; a sled holding none is absent.
    pub async fn sled_live_vmm_counts(
        &self,
        sleds: &[SledUuid],
    ) -> Result<std::collections::BTreeMap<SledUuid, u32>, Error> {
        let conn = &mut *self.connection().await?;
        let ids: Vec<DbTypedUuid<SledKind>> = sleds.iter().copied().map(DbTypedUuid).collect();
        let counts: Vec<(DbTypedUuid<SledKind>, i64)> = vmm::table
            .filter(vmm::sled_id.eq_any(ids))
            .filter(vmm::time_deleted.is_null())
            .filter(vmm::state.eq_any(LIVE_VMM_STATES))
            .group_by(vmm::sled_id)
            .select((vmm::sled_id, diesel::dsl::count_star()))
            .load(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(counts
            .into_iter()
            .map(|(sled, count)| (sled.0, u32::try_from(count).unwrap_or(u32::MAX)))
            .collect())
    }

    /// Records a sled agent's registration: a new sled, or a known one's new address,
    /// backend and capacity (its reservations are kept). Refuses, with `Conflict`, a capacity
    /// below what is already reserved on the sled, and any registration of an expunged sled
    /// (a sled declared gone stays gone).
    pub async fn sled_upsert(&self, new: Sled) -> Result<Sled, Error> {
        let conn = &mut *self.connection().await?;
        let upsert = diesel::insert_into(sled::table)
            .values(&new)
            .on_conflict(sled::id)
            .do_update()
            .set((
                sled::time_modified.eq(Utc::now()),
                sled::time_last_seen.eq(Utc::now()),
                sled::ip.eq(excluded(sled::ip)),
                sled::port.eq(excluded(sled::port)),
                sled::backend.eq(excluded(sled::backend)),
                sled::usable_hardware_threads.eq(excluded(sled::usable_hardware_threads)),
                sled::usable_physical_ram.eq(excluded(sled::usable_physical_ram)),
                sled::usable_storage.eq(excluded(sled::usable_storage)),
                sled::underlay_ip.eq(excluded(sled::underlay_ip)),
            ));
        // `ON CONFLICT ... DO UPDATE ... WHERE`: an expunged sled's row is not updated.
        let upserted =
            diesel::query_dsl::methods::FilterDsl::filter(upsert, sled::time_expunged.is_null())
                .returning(Sled::as_returning())
                .cached_by_text()
                .get_result(conn)
                .await
                .optional()
                .map_err(|e| match e {
                    DieselError::DatabaseError(DatabaseErrorKind::CheckViolation, _) => {
                        Error::conflict(format!(
                            "sled {} reports less capacity than its VMMs or regions already hold; \
                         stop or migrate instances, or move regions, off it first",
                            new.id()
                        ))
                    }
                    e => public_error_from_diesel(e),
                })?;
        match upserted {
            Some(sled) => Ok(sled),
            // The row exists and the update's condition refused it: the sled is expunged.
            None => {
                let expunged = sled_fetch(conn, new.id())
                    .await
                    .map_err(TxnError::into_public)?;
                Err(expunged_error(&expunged))
            }
        }
    }

    /// Marks a sled expunged: an operator's verdict that it is gone for good. From then on
    /// placement never picks it and its registrations are refused. Idempotent: a sled already
    /// expunged keeps its first `time_expunged`. Returns the sled; `ObjectNotFound` for an
    /// unknown one. Its VMMs are the caller's to retire (`vmm_retire_lost`).
    pub async fn sled_expunge(&self, id: SledUuid) -> Result<Sled, Error> {
        let conn = &mut *self.connection().await?;
        let now = Utc::now();
        let updated: Option<Sled> = diesel::update(sled::table)
            .filter(sled::id.eq(DbTypedUuid(id)))
            .filter(sled::time_expunged.is_null())
            .set((sled::time_expunged.eq(now), sled::time_modified.eq(now)))
            .returning(Sled::as_returning())
            .cached_by_text()
            .get_result(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?;
        match updated {
            Some(sled) => Ok(sled),
            None => sled_fetch(conn, id).await.map_err(TxnError::into_public),
        }
    }

    /// Records that sled `id`'s agent answered just now (the instance watcher's probe), as a
    /// registration does. An expunged sled's row is left alone.
    pub async fn sled_mark_seen(&self, id: SledUuid) -> Result<(), Error> {
        let conn = &mut *self.connection().await?;
        diesel::update(sled::table)
            .filter(sled::id.eq(DbTypedUuid(id)))
            .filter(sled::time_expunged.is_null())
            .set(sled::time_last_seen.eq(diesel::dsl::now))
            .cached_by_text()
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(())
    }

    /// In-service sleds not heard from (registration or probe) for `bound`, by the
    /// database's clock.
    pub async fn sled_list_silent(&self, bound: Duration) -> Result<Vec<Sled>, Error> {
        let conn = &mut *self.connection().await?;
        sled::table
            .filter(sled::time_expunged.is_null())
            .filter(sled::time_last_seen.lt(silent_since(bound)))
            .order(sled::id)
            .select(Sled::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Marks sled `id`'s VMMs as failed for its silence, if it is still in service and
    /// silent for `bound`: placement skips it from then on. Returns the mark (an earlier one
    /// is kept), or `None` when the sled answered meanwhile (or is expunged): then nothing
    /// may be failed.
    pub async fn sled_mark_vmms_failed(
        &self,
        id: SledUuid,
        bound: Duration,
    ) -> Result<Option<DateTime<Utc>>, Error> {
        let conn = &mut *self.connection().await?;
        diesel::update(sled::table)
            .filter(sled::id.eq(DbTypedUuid(id)))
            .filter(sled::time_expunged.is_null())
            .filter(sled::time_last_seen.lt(silent_since(bound)))
            .set(sled::time_vmms_failed.eq(diesel::dsl::sql::<
                diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
            >("coalesce(time_vmms_failed, now())")))
            .returning(sled::time_vmms_failed)
            .get_result::<Option<DateTime<Utc>>>(conn)
            .await
            .optional()
            .map(Option::flatten)
            .map_err(public_error_from_diesel)
    }

    /// Whether the sweep that followed sled `id`'s failed-VMMs mark `mark` is done: no VMM
    /// made on the sled before the mark is still live.
    pub async fn sled_vmms_failed_swept(
        &self,
        id: SledUuid,
        mark: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let conn = &mut *self.connection().await?;
        diesel::select(diesel::dsl::not(diesel::dsl::exists(
            vmm::table
                .filter(vmm::sled_id.eq(DbTypedUuid(id)))
                .filter(vmm::time_deleted.is_null())
                .filter(vmm::time_created.lt(mark)),
        )))
        .get_result(conn)
        .await
        .map_err(public_error_from_diesel)
    }

    /// Clears sled `id`'s failed-VMMs mark if it is still `mark` (a newer one is kept).
    /// Returns whether it did. The caller has seen the sweep done
    /// (`sled_vmms_failed_swept`) and then had the sled agent destroy every VMM the database
    /// retired.
    pub async fn sled_clear_vmms_failed(
        &self,
        id: SledUuid,
        mark: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let conn = &mut *self.connection().await?;
        let cleared = diesel::update(sled::table)
            .filter(sled::id.eq(DbTypedUuid(id)))
            .filter(sled::time_vmms_failed.eq(mark))
            .set(sled::time_vmms_failed.eq(None::<DateTime<Utc>>))
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(cleared == 1)
    }

    pub async fn sled_fetch(&self, id: SledUuid) -> Result<Sled, Error> {
        let conn = &mut *self.connection().await?;
        sled_fetch(conn, id).await.map_err(TxnError::into_public)
    }

    /// One page of sleds, by id.
    pub async fn sled_list(&self, page: &DataPageParams<'_, Uuid>) -> Result<Vec<Sled>, Error> {
        let conn = &mut *self.connection().await?;
        let query = sled::table.select(Sled::as_select()).into_boxed();
        paginate!(query, sled::id, page, |id| id)
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Every sled, oldest first (for operators: unpaginated).
    pub async fn sled_list_all(&self) -> Result<Vec<Sled>, Error> {
        let conn = &mut *self.connection().await?;
        sled::table
            .order((sled::time_created.asc(), sled::id.asc()))
            .select(Sled::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Reserves `resources` for VMM `vmm_id` on a sled with room (or on the one named).
    ///
    /// Idempotent: if the VMM already holds a reservation, that one is returned unchanged.
    /// Fails with `InsufficientCapacity` when no (or the named) sled has room, and with
    /// `ObjectNotFound` for an unknown sled.
    pub async fn sled_reserve(
        &self,
        vmm_id: VmmUuid,
        instance_id: InstanceUuid,
        choice: SledChoice,
        resources: SledResources,
    ) -> Result<SledReservation, Error> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let attempt = self
                .retry_conflicts(|| async move {
                    let conn = &mut *self.connection().await?;
                    if let Some(existing) = reservation_fetch(conn, vmm_id).await? {
                        return Ok(Ok(existing));
                    }
                    let outcome = conn
                        .transaction(async |conn| {
                            reserve_once(conn, vmm_id, instance_id, choice, resources).await
                        })
                        .await;
                    match outcome {
                        Ok(reservation) => Ok(Ok(reservation)),
                        Err(AttemptFailed::LostRace) => Ok(Err(())),
                        Err(AttemptFailed::Final(TxnError::Database(e)))
                            if crate::error::is_unique_violation(&e) =>
                        {
                            // A repeat of this same reservation won the race: return it.
                            reservation_fetch(conn, vmm_id)
                                .await?
                                .map(Ok)
                                .ok_or(TxnError::Database(e))
                        }
                        Err(AttemptFailed::Final(e)) => Err(e),
                    }
                })
                .await?;
            match attempt {
                Ok(reservation) => return Ok(reservation),
                Err(()) if attempts < MAX_PLACEMENT_ATTEMPTS => continue,
                Err(()) => {
                    return Err(Error::unavailable(format!(
                        "placement lost {attempts} races for sled capacity in a row; retry"
                    )));
                }
            }
        }
    }

    /// Releases the reservation VMM `vmm_id` holds, if any. Returns whether there was one.
    pub async fn sled_reservation_release(&self, vmm_id: VmmUuid) -> Result<bool, Error> {
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| release_reservation(conn, vmm_id).await)
                .await
        })
        .await
    }

    /// The reservation VMM `vmm_id` holds, if any.
    pub async fn sled_reservation_fetch(
        &self,
        vmm_id: VmmUuid,
    ) -> Result<Option<SledReservation>, Error> {
        let conn = &mut *self.connection().await?;
        reservation_fetch(conn, vmm_id)
            .await
            .map_err(TxnError::into_public)
    }

    /// Every reservation (on one sled, if given), oldest first.
    pub async fn sled_reservation_list(
        &self,
        on_sled: Option<SledUuid>,
    ) -> Result<Vec<SledReservation>, Error> {
        let conn = &mut *self.connection().await?;
        let mut query = sled_reservation::table
            .select(SledReservation::as_select())
            .into_boxed();
        if let Some(id) = on_sled {
            query = query.filter(sled_reservation::sled_id.eq(DbTypedUuid(id)));
        }
        query
            .order((
                sled_reservation::time_created.asc(),
                sled_reservation::vmm_id.asc(),
            ))
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }
}

/// One try at placing a reservation, inside a transaction.
async fn reserve_once(
    conn: &mut AsyncPgConnection,
    vmm_id: VmmUuid,
    instance_id: InstanceUuid,
    choice: SledChoice,
    resources: SledResources,
) -> Result<SledReservation, AttemptFailed> {
    let threads = i64::from(resources.hardware_threads);
    let ram = DbByteCount(resources.physical_ram);
    // "The sled has room": written against the row as the UPDATE sees it, so a racing
    // reservation that committed first is taken into account.
    // (Free space is compared, not `reserved + n`, which could overflow INT8 for absurd n.)
    let has_room = (sled::usable_hardware_threads - sled::reserved_hardware_threads)
        .ge(threads)
        .and((sled::usable_physical_ram - sled::reserved_physical_ram).ge(ram));

    let claim = diesel::update(sled::table)
        .filter(has_room)
        .filter(sled::time_expunged.is_null())
        .filter(sled::time_vmms_failed.is_null())
        .set((
            sled::reserved_hardware_threads.eq(sled::reserved_hardware_threads + threads),
            sled::reserved_physical_ram.eq(sled::reserved_physical_ram + ram),
        ))
        .returning(sled::id);
    let claimed: Option<DbTypedUuid<SledKind>> = match choice {
        SledChoice::Specific(sled_id) => claim
            .filter(sled::id.eq(DbTypedUuid(sled_id)))
            .cached_by_text()
            .get_result(conn)
            .await
            .optional()?,
        SledChoice::Any | SledChoice::AnyExcept(_) => {
            // Choice and claim in one statement: pick a random sled with room (QEMU sleds
            // first), then take the capacity only if it still has room when the row is
            // written.
            let pick = candidates_with_room(choice, resources)
                .order((
                    candidate.field(sled::backend).eq("qemu").desc(),
                    sql::<diesel::sql_types::Double>("random()").asc(),
                ))
                .limit(1);
            claim
                .filter(sled::id.nullable().eq(pick.single_value()))
                .cached_by_text()
                .get_result(conn)
                .await
                .optional()?
        }
    };

    let Some(sled_id) = claimed else {
        // A repeat of this same reservation may have committed while this claim waited for
        // the sled row (and so found the room gone): then that reservation is the answer.
        if let Some(existing) = reservation_fetch(conn, vmm_id).await? {
            return Ok(existing);
        }
        return Err(no_room(conn, choice, resources).await);
    };
    let reservation = SledReservation::new(vmm_id, sled_id.0, instance_id, resources);
    Ok(diesel::insert_into(sled_reservation::table)
        .values(&reservation)
        .returning(SledReservation::as_returning())
        .cached_by_text()
        .get_result(conn)
        .await?)
}

// The sleds a reservation may choose from, read under another name: the claim's UPDATE
// writes `sled` itself, and the backend filter's subquery reads it too.
diesel::alias!(sled as candidate: SledCandidate);

/// `SELECT candidate.id FROM sled AS candidate ...`, boxed so callers can order or limit it.
type CandidateIds = diesel::dsl::IntoBoxed<
    'static,
    diesel::dsl::Select<
        diesel::query_source::Alias<SledCandidate>,
        diesel::query_source::AliasedField<SledCandidate, sled::id>,
    >,
    diesel::pg::Pg,
>;

/// The sleds that `choice` allows (in service; not the migration's source, and of its
/// backend) with room for `resources` now: the one filter both the claim and the
/// explanation of a refused claim use.
fn candidates_with_room(choice: SledChoice, resources: SledResources) -> CandidateIds {
    let threads = i64::from(resources.hardware_threads);
    let ram = DbByteCount(resources.physical_ram);
    let mut candidates = candidate
        .select(candidate.field(sled::id))
        .into_boxed()
        .filter(candidate.field(sled::id).ne(DbTypedUuid(choice.excluded())))
        .filter(candidate.field(sled::time_expunged).is_null())
        .filter(candidate.field(sled::time_vmms_failed).is_null())
        .filter(
            (candidate.field(sled::usable_hardware_threads)
                - candidate.field(sled::reserved_hardware_threads))
            .ge(threads),
        )
        .filter(
            (candidate.field(sled::usable_physical_ram)
                - candidate.field(sled::reserved_physical_ram))
            .ge(ram),
        );
    if let SledChoice::AnyExcept(source) = choice {
        candidates = candidates.filter(
            candidate
                .field(sled::backend)
                .nullable()
                .eq(backend_of(source)),
        );
    }
    candidates
}

/// `SELECT backend FROM sled WHERE id = $1`, as a scalar subquery.
type BackendOfSled = diesel::dsl::SingleValue<
    diesel::dsl::Select<
        diesel::dsl::Filter<sled::table, diesel::dsl::Eq<sled::id, DbTypedUuid<SledKind>>>,
        sled::backend,
    >,
>;

/// The backend of sled `id`, as a subquery (a migration stays among sleds of that kind).
fn backend_of(id: SledUuid) -> BackendOfSled {
    sled::table
        .filter(sled::id.eq(DbTypedUuid(id)))
        .select(sled::backend)
        .single_value()
}

/// Explains an unsuccessful claim: a lost race (pick again) or a real lack of room.
async fn no_room(
    conn: &mut AsyncPgConnection,
    choice: SledChoice,
    resources: SledResources,
) -> AttemptFailed {
    let need = format!(
        "{} hardware thread(s) and {} of memory",
        resources.hardware_threads, resources.physical_ram
    );
    match choice {
        SledChoice::Specific(sled_id) => match sled_fetch(conn, sled_id).await {
            Err(e) => AttemptFailed::Final(e),
            Ok(found) if found.is_expunged() => {
                AttemptFailed::Final(TxnError::Public(expunged_error(&found)))
            }
            Ok(found) if found.time_vmms_failed.is_some() => {
                AttemptFailed::Final(TxnError::Public(Error::unavailable(format!(
                    "sled {sled_id} stopped answering and its VMMs were declared failed; \
                     nothing is placed on it until its agent answers again and destroys them"
                ))))
            }
            Ok(found) => {
                let free_threads = found.usable_hardware_threads - found.reserved_hardware_threads;
                let free_ram =
                    found.usable_physical_ram.0.to_i64() - found.reserved_physical_ram.0.to_i64();
                let free_ram =
                    ByteCount::try_from(free_ram.max(0)).unwrap_or(found.usable_physical_ram.0);
                AttemptFailed::Final(TxnError::Public(Error::insufficient_capacity(format!(
                    "sled {sled_id} has room for {free_threads} hardware thread(s) and \
                     {free_ram} of memory, but {need} are needed; choose another sled or \
                     free capacity on this one"
                ))))
            }
        },
        SledChoice::Any | SledChoice::AnyExcept(_) => {
            let fits = candidates_with_room(choice, resources);
            let any_fits = fits.first::<DbTypedUuid<SledKind>>(conn).await.optional();
            match any_fits {
                Err(e) => AttemptFailed::Final(e.into()),
                Ok(Some(_)) => AttemptFailed::LostRace,
                Ok(None) => {
                    // A migration stays within its source's backend: say which, since sleds
                    // of the other kind may well have room.
                    let which = match choice {
                        SledChoice::AnyExcept(source) => match sled_fetch(conn, source).await {
                            Ok(source) => format!("other {} ", source.backend.0.label()),
                            Err(e) => return AttemptFailed::Final(e),
                        },
                        _ => String::new(),
                    };
                    AttemptFailed::Final(TxnError::Public(Error::insufficient_capacity(format!(
                        "no {which}sled has room for {need}; stop or delete other instances, \
                         or add sleds"
                    ))))
                }
            }
        }
    }
}

/// Why nothing may be placed on, or registered as, an expunged sled.
fn expunged_error(sled: &Sled) -> Error {
    let when = sled
        .time_expunged
        .map(|t| format!(" at {}", t.to_rfc3339()))
        .unwrap_or_default();
    Error::conflict(format!(
        "sled {} was expunged{when}: an operator declared it gone for good, so nothing runs \
         on it and it may not register again; choose another sled (a reinstalled sled \
         registers under a new id)",
        sled.id()
    ))
}

pub(crate) async fn sled_fetch(
    conn: &mut AsyncPgConnection,
    id: SledUuid,
) -> Result<Sled, TxnError> {
    sled::table
        .filter(sled::id.eq(DbTypedUuid(id)))
        .select(Sled::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| Error::not_found_by_id(ResourceType::Sled, id.into_untyped_uuid()).into())
}

async fn reservation_fetch(
    conn: &mut AsyncPgConnection,
    vmm_id: VmmUuid,
) -> Result<Option<SledReservation>, TxnError> {
    Ok(sled_reservation::table
        .filter(sled_reservation::vmm_id.eq(DbTypedUuid(vmm_id)))
        .select(SledReservation::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Deletes a VMM's reservation and gives its resources back to the sled, inside a
/// transaction. Returns whether there was a reservation; a second call is a no-op.
pub(crate) async fn release_reservation(
    conn: &mut AsyncPgConnection,
    vmm_id: VmmUuid,
) -> Result<bool, TxnError> {
    let released: Option<SledReservation> = diesel::delete(
        sled_reservation::table.filter(sled_reservation::vmm_id.eq(DbTypedUuid(vmm_id))),
    )
    .returning(SledReservation::as_returning())
    .get_result(conn)
    .await
    .optional()?;
    let Some(released) = released else {
        return Ok(false);
    };
    diesel::update(sled::table.filter(sled::id.eq(released.sled_id)))
        .set((
            sled::reserved_hardware_threads
                .eq(sled::reserved_hardware_threads - released.hardware_threads),
            sled::reserved_physical_ram.eq(sled::reserved_physical_ram - released.physical_ram),
        ))
        .cached_by_text()
        .execute(conn)
        .await?;
    Ok(true)
}
