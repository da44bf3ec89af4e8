//! Snapshots: their records, their state transitions and their region snapshots.
//!
//! A snapshot is inserted `creating` (its create saga then snapshots the disk's regions) and
//! moves between states by conditional `UPDATE`s that name the states they move from. Each of
//! its region snapshots holds storage on its region's sled like a region does: reserving one is
//! one conditional `UPDATE` of that sled's `reserved_storage` (`WHERE usable - reserved >=
//! size`, in service) and the row's insert, in the transaction that reserves all of a
//! snapshot's region snapshots, so a sled's storage is never over-committed (a CHECK on the
//! row backs this up). The transaction first writes the snapshot's own row, so two
//! reservations for one snapshot (a saga step run twice) are ordered and the second finds the
//! first's rows.

use super::DataStore;
use super::disk::disk_not_found;
use super::project::project_bump_rcgen;
use crate::cached::CacheByText;
use crate::error::{
    TxnError, is_foreign_key_violation, is_unique_violation, public_error_from_diesel,
};
use crate::pagination::{PaginatedBy, paginate};
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use halyard_common::ids::{
    DiskUuid, GenericUuid, ProjectUuid, RegionUuid, SledKind, SledUuid, SnapshotUuid,
};
use halyard_common::{Error, Labelled, Name, ResourceType, SnapshotState};
use halyard_db_model::schema::{disk, region, region_snapshot, sled, snapshot};
use halyard_db_model::{
    DbByteCount, DbEnum, DbName, DbTypedUuid, Disk, NewSnapshotParams, Region, RegionSnapshot,
    Snapshot,
};

/// What a snapshot state change did.
#[derive(Debug, Clone, PartialEq)]
pub enum SnapshotTransition {
    /// This call made the change; the snapshot as it is now.
    Applied(Snapshot),
    /// The snapshot already was where the change leads (an earlier call made it).
    AlreadyDone(Snapshot),
    /// The snapshot is in a state the change does not move from; nothing changed.
    Conflict(Snapshot),
}

impl DataStore {
    /// Inserts a new snapshot of a live disk, `creating`, in the disk's project and of its
    /// size. Idempotent by id (a repeat returns the stored record); `ObjectAlreadyExists` if
    /// the project has a live snapshot of that name, `ObjectNotFound` if the disk is gone.
    pub async fn snapshot_insert(
        &self,
        params: NewSnapshotParams,
        disk_id: DiskUuid,
    ) -> Result<Snapshot, Error> {
        halyard_common::validate_description(&params.description)?;
        let params = &params;
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                if let Some(found) = snapshot_fetch_any(conn, params.id).await? {
                    return Ok(found);
                }
                let disk: Disk = disk::table
                    .filter(disk::id.eq(DbTypedUuid(disk_id)))
                    .filter(disk::time_deleted.is_null())
                    .select(Disk::as_select())
                    .first(conn)
                    .await
                    .optional()?
                    .ok_or_else(|| TxnError::Public(disk_not_found(disk_id)))?;
                let new = Snapshot::new(params.clone(), &disk);
                let inserted = diesel::insert_into(snapshot::table)
                    .values(&new)
                    .returning(Snapshot::as_returning())
                    .get_result(conn)
                    .await
                    .map_err(|e| {
                        if is_unique_violation(&e) {
                            TxnError::Public(Error::ObjectAlreadyExists {
                                type_name: ResourceType::Snapshot,
                                name: new.name().to_string(),
                            })
                        } else if is_foreign_key_violation(&e) {
                            TxnError::Public(Error::not_found_by_id(
                                ResourceType::Project,
                                new.project_id().into_untyped_uuid(),
                            ))
                        } else {
                            TxnError::Database(e)
                        }
                    })?;
                project_bump_rcgen(conn, inserted.project_id()).await?;
                Ok(inserted)
            })
            .await
        })
        .await
    }

    /// A live (not deleted) snapshot by id.
    pub async fn snapshot_fetch(&self, id: SnapshotUuid) -> Result<Snapshot, Error> {
        let conn = &mut *self.connection().await?;
        snapshot_fetch_any(conn, id)
            .await
            .map_err(TxnError::into_public)?
            .filter(|found| found.time_deleted.is_none())
            .ok_or_else(|| snapshot_not_found(id))
    }

    /// A live snapshot by its name within a project.
    pub async fn snapshot_fetch_by_name(
        &self,
        project_id: ProjectUuid,
        name: &Name,
    ) -> Result<Snapshot, Error> {
        let conn = &mut *self.connection().await?;
        snapshot::table
            .filter(snapshot::project_id.eq(DbTypedUuid(project_id)))
            .filter(snapshot::name.eq(DbName(name.clone())))
            .filter(snapshot::time_deleted.is_null())
            .select(Snapshot::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?
            .ok_or_else(|| Error::not_found_by_name(ResourceType::Snapshot, name))
    }

    /// One page of a project's live snapshots.
    pub async fn snapshot_list(
        &self,
        project_id: ProjectUuid,
        page: &PaginatedBy<'_>,
    ) -> Result<Vec<Snapshot>, Error> {
        let conn = &mut *self.connection().await?;
        let query = snapshot::table
            .filter(snapshot::project_id.eq(DbTypedUuid(project_id)))
            .filter(snapshot::time_deleted.is_null())
            .select(Snapshot::as_select())
            .into_boxed();
        let query = match page {
            PaginatedBy::Name(params) => paginate!(query, snapshot::name, params, DbName),
            PaginatedBy::Id(params) => paginate!(query, snapshot::id, params, |id| id),
        };
        query.load(conn).await.map_err(public_error_from_diesel)
    }

    /// Every snapshot, deleted ones too, oldest first (for operators and the invariant
    /// checker).
    pub async fn snapshot_list_all(&self) -> Result<Vec<Snapshot>, Error> {
        let conn = &mut *self.connection().await?;
        snapshot::table
            .order((snapshot::time_created.asc(), snapshot::id.asc()))
            .select(Snapshot::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Moves a snapshot from one of `from` to `to`. Deleting (`to` = `Destroyed`) also sets
    /// `time_deleted`, which frees the name.
    pub async fn snapshot_transition(
        &self,
        id: SnapshotUuid,
        from: &[SnapshotState],
        to: SnapshotState,
    ) -> Result<SnapshotTransition, Error> {
        let conn = &mut *self.connection().await?;
        let now = Utc::now();
        let from: Vec<DbEnum<SnapshotState>> = from.iter().copied().map(DbEnum).collect();
        let deleted = (to == SnapshotState::Destroyed).then_some(now);
        let updated = diesel::update(snapshot::table)
            .filter(snapshot::id.eq(DbTypedUuid(id)))
            .filter(snapshot::time_deleted.is_null())
            .filter(snapshot::state.eq_any(from))
            .set((
                snapshot::state.eq(DbEnum(to)),
                snapshot::time_modified.eq(now),
                snapshot::time_deleted.eq(deleted),
            ))
            .returning(Snapshot::as_returning())
            .get_result(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?;
        if let Some(found) = updated {
            return Ok(SnapshotTransition::Applied(found));
        }
        let found = snapshot_fetch_any(conn, id)
            .await
            .map_err(TxnError::into_public)?
            .ok_or_else(|| snapshot_not_found(id))?;
        if found.state() == to {
            Ok(SnapshotTransition::AlreadyDone(found))
        } else if found.time_deleted.is_some() {
            Err(snapshot_not_found(id))
        } else {
            Ok(SnapshotTransition::Conflict(found))
        }
    }

    /// Reserves a `creating` snapshot's region snapshots: one per region of its disk, on that
    /// region's sled, holding the region's size of that sled's storage. Idempotent: a snapshot
    /// that has its region snapshots gets them back unchanged. `InsufficientCapacity` (and
    /// nothing reserved) when a sled lacks the room or is expunged; `ObjectNotFound` for a
    /// deleted snapshot or disk; `Conflict` for a snapshot past `creating` without them.
    pub async fn region_snapshots_reserve(
        &self,
        snapshot_id: SnapshotUuid,
    ) -> Result<Vec<RegionSnapshot>, Error> {
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| reserve_once(conn, snapshot_id).await)
                .await
        })
        .await
    }

    /// Releases every region snapshot of a snapshot: deletes the rows and gives their
    /// storage back to their sleds, in one transaction. Returns how many there were; a repeat
    /// releases none.
    pub async fn region_snapshots_release(
        &self,
        snapshot_id: SnapshotUuid,
    ) -> Result<usize, Error> {
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                let released: Vec<(DbTypedUuid<SledKind>, DbByteCount)> =
                    diesel::delete(region_snapshot::table)
                        .filter(region_snapshot::snapshot_id.eq(DbTypedUuid(snapshot_id)))
                        .returning((region_snapshot::sled_id, region_snapshot::size_bytes))
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

    /// A snapshot's region snapshots, oldest first.
    pub async fn region_snapshots(
        &self,
        snapshot_id: SnapshotUuid,
    ) -> Result<Vec<RegionSnapshot>, Error> {
        let conn = &mut *self.connection().await?;
        region_snapshots_of(conn, snapshot_id)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Every region snapshot (on one sled, if given), oldest first.
    pub async fn region_snapshot_list(
        &self,
        on_sled: Option<SledUuid>,
    ) -> Result<Vec<RegionSnapshot>, Error> {
        let conn = &mut *self.connection().await?;
        let mut query = region_snapshot::table
            .select(RegionSnapshot::as_select())
            .into_boxed();
        if let Some(id) = on_sled {
            query = query.filter(region_snapshot::sled_id.eq(DbTypedUuid(id)));
        }
        query
            .order((
                region_snapshot::time_created.asc(),
                region_snapshot::snapshot_id.asc(),
                region_snapshot::region_id.asc(),
            ))
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Records where a region snapshot's sled serves it over NBD (`host:port`), as the sled
    /// agent answered when it made it. Idempotent.
    pub async fn region_snapshot_set_export_address(
        &self,
        snapshot_id: SnapshotUuid,
        region_id: RegionUuid,
        address: std::net::SocketAddr,
    ) -> Result<(), Error> {
        let conn = &mut *self.connection().await?;
        diesel::update(
            region_snapshot::table
                .filter(region_snapshot::snapshot_id.eq(DbTypedUuid(snapshot_id)))
                .filter(region_snapshot::region_id.eq(DbTypedUuid(region_id))),
        )
        .set(region_snapshot::export_address.eq(Some(address.to_string())))
        .execute(conn)
        .await
        .map_err(public_error_from_diesel)?;
        Ok(())
    }
}

pub(crate) fn snapshot_not_found(id: SnapshotUuid) -> Error {
    Error::not_found_by_id(ResourceType::Snapshot, id.into_untyped_uuid())
}

async fn snapshot_fetch_any(
    conn: &mut AsyncPgConnection,
    id: SnapshotUuid,
) -> Result<Option<Snapshot>, TxnError> {
    Ok(snapshot::table
        .filter(snapshot::id.eq(DbTypedUuid(id)))
        .select(Snapshot::as_select())
        .first(conn)
        .await
        .optional()?)
}

async fn region_snapshots_of(
    conn: &mut AsyncPgConnection,
    snapshot_id: SnapshotUuid,
) -> Result<Vec<RegionSnapshot>, diesel::result::Error> {
    region_snapshot::table
        .filter(region_snapshot::snapshot_id.eq(DbTypedUuid(snapshot_id)))
        .order((
            region_snapshot::time_created.asc(),
            region_snapshot::region_id.asc(),
        ))
        .select(RegionSnapshot::as_select())
        .load(conn)
        .await
}

/// One try at reserving a snapshot's region snapshots, inside a transaction.
async fn reserve_once(
    conn: &mut AsyncPgConnection,
    snapshot_id: SnapshotUuid,
) -> Result<Vec<RegionSnapshot>, TxnError> {
    // Write the snapshot's row first: a second reservation for this snapshot waits here for
    // the first to commit, then sees its rows.
    let locked: Option<Snapshot> = diesel::update(snapshot::table)
        .filter(snapshot::id.eq(DbTypedUuid(snapshot_id)))
        .filter(snapshot::time_deleted.is_null())
        .set(snapshot::time_modified.eq(Utc::now()))
        .returning(Snapshot::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    let Some(locked) = locked else {
        return Err(TxnError::Public(snapshot_not_found(snapshot_id)));
    };
    let existing = region_snapshots_of(conn, snapshot_id).await?;
    if !existing.is_empty() {
        return Ok(existing);
    }
    if locked.state() != SnapshotState::Creating {
        return Err(TxnError::Public(Error::conflict(format!(
            "snapshot \"{}\" is {} without region snapshots; only a snapshot being created \
             gets them reserved",
            locked.name(),
            locked.state().label()
        ))));
    }
    let regions: Vec<Region> = region::table
        .filter(region::disk_id.eq(locked.disk_id))
        .order((region::time_created.asc(), region::id.asc()))
        .select(Region::as_select())
        .load(conn)
        .await?;
    if regions.is_empty() {
        return Err(TxnError::Public(disk_not_found(locked.disk_id())));
    }
    let mut reserved = Vec::with_capacity(regions.len());
    for region in &regions {
        let size = region.size_bytes;
        let claimed: Option<DbTypedUuid<SledKind>> = diesel::update(sled::table)
            .filter(sled::id.eq(region.sled_id))
            .filter((sled::usable_storage - sled::reserved_storage).ge(size))
            .filter(sled::time_expunged.is_null())
            .set(sled::reserved_storage.eq(sled::reserved_storage + size))
            .returning(sled::id)
            .cached_by_text()
            .get_result(conn)
            .await
            .optional()?;
        if claimed.is_none() {
            return Err(TxnError::Public(Error::insufficient_capacity(format!(
                "sled {} (holding region {} of disk {}) has no room for a snapshot of {} bytes, \
                 or is expunged",
                region.sled_id(),
                region.id(),
                region.disk_id(),
                size.0.to_bytes()
            ))));
        }
        let row: RegionSnapshot = diesel::insert_into(region_snapshot::table)
            .values(RegionSnapshot::new(snapshot_id, region))
            .returning(RegionSnapshot::as_returning())
            .get_result(conn)
            .await?;
        reserved.push(row);
    }
    Ok(reserved)
}

impl DataStore {
    /// Brings a destroyed snapshot back as `faulted` (undoing a snapshot-delete that could not
    /// finish). `Conflict` if a live snapshot of its name appeared in the project meanwhile;
    /// a snapshot not destroyed is left as it is.
    pub async fn snapshot_undelete_faulted(&self, id: SnapshotUuid) -> Result<Snapshot, Error> {
        let conn = &mut *self.connection().await?;
        let now = Utc::now();
        let updated = diesel::update(snapshot::table)
            .filter(snapshot::id.eq(DbTypedUuid(id)))
            .filter(snapshot::state.eq(DbEnum(SnapshotState::Destroyed)))
            .set((
                snapshot::state.eq(DbEnum(SnapshotState::Faulted)),
                snapshot::time_modified.eq(now),
                snapshot::time_deleted.eq(None::<chrono::DateTime<Utc>>),
            ))
            .returning(Snapshot::as_returning())
            .get_result(conn)
            .await
            .optional()
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::conflict(format!(
                        "snapshot {id} cannot come back: its project has a live snapshot of \
                         its name"
                    ))
                } else {
                    public_error_from_diesel(e)
                }
            })?;
        match updated {
            Some(found) => Ok(found),
            None => snapshot_fetch_any(conn, id)
                .await
                .map_err(TxnError::into_public)?
                .ok_or_else(|| snapshot_not_found(id)),
        }
    }
}
