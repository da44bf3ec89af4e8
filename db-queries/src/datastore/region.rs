//! Regions: where a disk's replicas live, and the storage they hold on their sleds.
//!
//! Placing a region is the VMM reservation's pattern applied to storage: one conditional
//! `UPDATE` of the chosen sled's `reserved_storage` (`WHERE usable - reserved >= size`, in
//! service) and the region insert, in the transaction that places all of a disk's regions. Two
//! racing placements on one sled both write its row, so the database orders them and the second
//! re-checks the room the first left: a sled's storage is never over-committed (a CHECK on the
//! row backs this up). The transaction first writes the disk's own row, so two placements for
//! one disk (a saga step run twice) are ordered too and the second finds the first's regions.
//! A sled already holding one of the disk's regions is never picked (a unique index backs this
//! up): losing one sled loses at most one replica.

use super::DataStore;
use super::disk::disk_not_found;
use super::sled::AttemptFailed;
use crate::cached::CacheByText;
use crate::error::{TxnError, public_error_from_diesel};
use chrono::Utc;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use halyard_common::ids::{DiskUuid, SledKind, SledUuid};
use halyard_common::{DiskState, Error, Labelled, SledBackend};
use halyard_db_model::schema::{disk, region, sled};
use halyard_db_model::{DbByteCount, DbEnum, DbTypedUuid, Disk, REGIONS_PER_DISK, Region};

/// How many times placement picks again after losing a race for the sleds it picked.
pub(super) const MAX_PLACEMENT_ATTEMPTS: u32 = 16;

impl DataStore {
    /// Places a `creating` disk's regions: [`REGIONS_PER_DISK`] of them, each on its own
    /// in-service `backend` sled with room for the disk's size. Idempotent: a disk that has its
    /// regions gets them back unchanged. `InsufficientCapacity` (and nothing placed) when fewer
    /// than that many sleds have room; `ObjectNotFound` for a deleted disk; `Conflict` for a
    /// disk past `creating` without its regions.
    pub async fn disk_regions_allocate(
        &self,
        disk_id: DiskUuid,
        backend: SledBackend,
    ) -> Result<Vec<Region>, Error> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let attempt = self
                .retry_conflicts(|| async move {
                    let conn = &mut *self.connection().await?;
                    let outcome = conn
                        .transaction(async |conn| allocate_once(conn, disk_id, backend).await)
                        .await;
                    match outcome {
                        Ok(regions) => Ok(Ok(regions)),
                        Err(AttemptFailed::LostRace) => Ok(Err(())),
                        Err(AttemptFailed::Final(e)) => Err(e),
                    }
                })
                .await?;
            match attempt {
                Ok(regions) => return Ok(regions),
                Err(()) if attempts < MAX_PLACEMENT_ATTEMPTS => continue,
                Err(()) => {
                    return Err(Error::unavailable(format!(
                        "region placement lost {attempts} races for sled storage in a row; retry"
                    )));
                }
            }
        }
    }

    /// Releases every region of a disk: deletes the rows and gives their storage back to
    /// their sleds, in one transaction. Returns how many there were; a repeat releases none.
    pub async fn disk_regions_release(&self, disk_id: DiskUuid) -> Result<usize, Error> {
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                let released: Vec<(DbTypedUuid<SledKind>, DbByteCount)> =
                    diesel::delete(region::table)
                        .filter(region::disk_id.eq(DbTypedUuid(disk_id)))
                        .returning((region::sled_id, region::size_bytes))
                        .get_results(conn)
                        .await?;
                for (sled_id, size) in &released {
                    diesel::update(sled::table)
                        .filter(sled::id.eq(*sled_id))
                        .set(sled::reserved_storage.eq(sled::reserved_storage - *size))
                        .cached_by_text()
                        .execute(conn)
                        .await?;
                }
                Ok::<_, TxnError>(released.len())
            })
            .await
        })
        .await
    }

    /// A disk's regions, oldest first.
    pub async fn disk_regions(&self, disk_id: DiskUuid) -> Result<Vec<Region>, Error> {
        let conn = &mut *self.connection().await?;
        regions_of(conn, disk_id)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Every region (on one sled, if given), oldest first.
    pub async fn region_list(&self, on_sled: Option<SledUuid>) -> Result<Vec<Region>, Error> {
        let conn = &mut *self.connection().await?;
        let mut query = region::table.select(Region::as_select()).into_boxed();
        if let Some(id) = on_sled {
            query = query.filter(region::sled_id.eq(DbTypedUuid(id)));
        }
        query
            .order((region::time_created.asc(), region::id.asc()))
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }
}

pub(super) async fn regions_of(
    conn: &mut AsyncPgConnection,
    disk_id: DiskUuid,
) -> Result<Vec<Region>, diesel::result::Error> {
    region::table
        .filter(region::disk_id.eq(DbTypedUuid(disk_id)))
        .order((region::time_created.asc(), region::id.asc()))
        .select(Region::as_select())
        .load(conn)
        .await
}

/// One try at placing a disk's missing regions, inside a transaction.
async fn allocate_once(
    conn: &mut AsyncPgConnection,
    disk_id: DiskUuid,
    backend: SledBackend,
) -> Result<Vec<Region>, AttemptFailed> {
    // Write the disk's row first: a second placement for this disk waits here for the first
    // to commit, then sees its regions.
    let locked: Option<Disk> = diesel::update(disk::table)
        .filter(disk::id.eq(DbTypedUuid(disk_id)))
        .filter(disk::time_deleted.is_null())
        .set(disk::time_modified.eq(Utc::now()))
        .returning(Disk::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    let Some(disk) = locked else {
        return Err(AttemptFailed::Final(TxnError::Public(disk_not_found(
            disk_id,
        ))));
    };
    let mut regions = regions_of(conn, disk_id).await?;
    if regions.len() >= REGIONS_PER_DISK {
        return Ok(regions);
    }
    if disk.state() != DiskState::Creating {
        return Err(AttemptFailed::Final(TxnError::Public(Error::conflict(
            format!(
                "disk \"{}\" is {} with {} region(s); only a disk being created gets its regions \
             placed",
                disk.name(),
                disk.state().label(),
                regions.len()
            ),
        ))));
    }
    let size = disk.size_bytes;
    while regions.len() < REGIONS_PER_DISK {
        let Some(sled_id) = claim_storage(conn, disk_id, backend, size).await? else {
            return Err(no_room(conn, &disk, backend, regions.len()).await);
        };
        let region: Region = diesel::insert_into(region::table)
            .values(Region::new(&disk, sled_id.0))
            .returning(Region::as_returning())
            .cached_by_text()
            .get_result(conn)
            .await?;
        regions.push(region);
    }
    Ok(regions)
}

/// Picks an in-service `backend` sled at random that has room for `size` and holds no region
/// of the disk, and reserves `size` of its storage, in one statement: a sled filled meanwhile
/// fails the row's re-checked `WHERE` and nothing is claimed (`None`: a lost race, or no room;
/// [`candidates_with_room`] tells which).
pub(super) async fn claim_storage(
    conn: &mut AsyncPgConnection,
    disk_id: DiskUuid,
    backend: SledBackend,
    size: DbByteCount,
) -> Result<Option<DbTypedUuid<SledKind>>, diesel::result::Error> {
    let pick = candidates_with_room(disk_id, backend, size)
        .order(sql::<diesel::sql_types::Double>("random()").asc())
        .limit(1);
    diesel::update(sled::table)
        .filter(sled::id.nullable().eq(pick.single_value()))
        .filter((sled::usable_storage - sled::reserved_storage).ge(size))
        .filter(sled::time_expunged.is_null())
        .set(sled::reserved_storage.eq(sled::reserved_storage + size))
        .returning(sled::id)
        .cached_by_text()
        .get_result(conn)
        .await
        .optional()
}

// The sleds a region may go on, read under another name: the claim's UPDATE writes `sled`.
diesel::alias!(sled as candidate: RegionSledCandidate);

type CandidateIds = diesel::dsl::IntoBoxed<
    'static,
    diesel::dsl::Select<
        diesel::query_source::Alias<RegionSledCandidate>,
        diesel::query_source::AliasedField<RegionSledCandidate, sled::id>,
    >,
    diesel::pg::Pg,
>;

/// The in-service `backend` sleds with room for `size` that hold no region of the disk: the
/// one filter the claim and the explanation of a refused claim both use.
pub(super) fn candidates_with_room(
    disk_id: DiskUuid,
    backend: SledBackend,
    size: DbByteCount,
) -> CandidateIds {
    let holding_the_disk = region::table
        .filter(region::disk_id.eq(DbTypedUuid(disk_id)))
        .select(region::sled_id);
    candidate
        .select(candidate.field(sled::id))
        .into_boxed()
        .filter(candidate.field(sled::time_expunged).is_null())
        .filter(candidate.field(sled::backend).eq(DbEnum(backend)))
        .filter(
            (candidate.field(sled::usable_storage) - candidate.field(sled::reserved_storage))
                .ge(size),
        )
        .filter(candidate.field(sled::id).ne_all(holding_the_disk))
}

/// Explains an unsuccessful claim: a lost race (pick again) or too few sleds with room.
async fn no_room(
    conn: &mut AsyncPgConnection,
    disk: &Disk,
    backend: SledBackend,
    placed: usize,
) -> AttemptFailed {
    let fits = candidates_with_room(disk.id(), backend, disk.size_bytes)
        .first::<DbTypedUuid<SledKind>>(conn)
        .await
        .optional();
    match fits {
        Err(e) => AttemptFailed::Final(e.into()),
        Ok(Some(_)) => AttemptFailed::LostRace,
        Ok(None) => AttemptFailed::Final(TxnError::Public(Error::insufficient_capacity(format!(
            "a disk of {} needs {REGIONS_PER_DISK} {} sleds with that much free storage, each \
             holding one replica, but only {placed} have room; delete other disks, or add \
             storage",
            disk.size(),
            backend.label(),
        )))),
    }
}
