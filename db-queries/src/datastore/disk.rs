//! Disks: their records and their state transitions.
//!
//! A disk is inserted `creating` (its create saga then places its regions) and moves between
//! states by conditional `UPDATE`s that name the states they move from and bump the state
//! generation, so of racing callers exactly one applies a change, and a saga step that runs
//! twice finds its change already made. The disk's data lives on its regions (`region.rs`).

use super::DataStore;
use super::project::project_bump_rcgen;
use crate::cached::CacheByText;
use crate::error::{
    TxnError, is_foreign_key_violation, is_unique_violation, public_error_from_diesel,
};
use crate::pagination::{PaginatedBy, paginate};
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use halyard_common::ids::{DiskUuid, GenericUuid, InstanceKind, ProjectUuid};
use halyard_common::{ByteCount, DiskState, Error, Name, ResourceType};
use halyard_db_model::schema::disk;
use halyard_db_model::{DbEnum, DbName, DbTypedUuid, Disk, NewDiskParams};

/// The largest disk (Oxide's limit: 1023 GiB).
pub const MAX_DISK_SIZE: ByteCount = ByteCount::from_gibibytes_u32(1023);

/// What a disk state change did.
#[derive(Debug, Clone, PartialEq)]
pub enum DiskTransition {
    /// This call made the change; the disk as it is now.
    Applied(Disk),
    /// The disk already was where the change leads (an earlier call made it).
    AlreadyDone(Disk),
    /// The disk is in a state the change does not move from; nothing changed.
    Conflict(Disk),
}

impl DiskTransition {
    /// The disk as the call left it.
    pub fn disk(&self) -> &Disk {
        match self {
            DiskTransition::Applied(d)
            | DiskTransition::AlreadyDone(d)
            | DiskTransition::Conflict(d) => d,
        }
    }
}

impl DataStore {
    /// Inserts a new disk, `creating`. Idempotent by id (a repeat returns the stored record);
    /// `ObjectAlreadyExists` if the project has a live disk of that name, `ObjectNotFound` if
    /// the project is gone, `InvalidValue` for a size that is zero, too large or not a whole
    /// number of blocks.
    pub async fn disk_insert(&self, params: NewDiskParams) -> Result<Disk, Error> {
        validate_new_disk(&params)?;
        let new = &Disk::new(params);
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            // As instance_insert: the project's child generation is bumped in the same
            // transaction, so a racing project delete sees the disk or fails.
            conn.transaction(async |conn| {
                let inserted = diesel::insert_into(disk::table)
                    .values(new)
                    .on_conflict(disk::id)
                    .do_nothing()
                    .returning(Disk::as_returning())
                    .cached_by_text()
                    .get_result(conn)
                    .await
                    .optional()
                    .map_err(|e| {
                        if is_unique_violation(&e) {
                            TxnError::Public(Error::ObjectAlreadyExists {
                                type_name: ResourceType::Disk,
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
                let Some(inserted) = inserted else {
                    return disk_fetch_any(conn, new.id())
                        .await?
                        .ok_or_else(|| TxnError::Public(disk_not_found(new.id())));
                };
                project_bump_rcgen(conn, new.project_id()).await?;
                Ok(inserted)
            })
            .await
        })
        .await
    }

    /// A live (not deleted) disk by id.
    pub async fn disk_fetch(&self, id: DiskUuid) -> Result<Disk, Error> {
        let conn = &mut *self.connection().await?;
        disk_fetch_any(conn, id)
            .await
            .map_err(TxnError::into_public)?
            .filter(|found| found.time_deleted.is_none())
            .ok_or_else(|| disk_not_found(id))
    }

    /// A live disk by its name within a project.
    pub async fn disk_fetch_by_name(
        &self,
        project_id: ProjectUuid,
        name: &Name,
    ) -> Result<Disk, Error> {
        let conn = &mut *self.connection().await?;
        disk::table
            .filter(disk::project_id.eq(DbTypedUuid(project_id)))
            .filter(disk::name.eq(DbName(name.clone())))
            .filter(disk::time_deleted.is_null())
            .select(Disk::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?
            .ok_or_else(|| Error::not_found_by_name(ResourceType::Disk, name))
    }

    /// One page of a project's live disks.
    pub async fn disk_list(
        &self,
        project_id: ProjectUuid,
        page: &PaginatedBy<'_>,
    ) -> Result<Vec<Disk>, Error> {
        let conn = &mut *self.connection().await?;
        let query = disk::table
            .filter(disk::project_id.eq(DbTypedUuid(project_id)))
            .filter(disk::time_deleted.is_null())
            .select(Disk::as_select())
            .into_boxed();
        let query = match page {
            PaginatedBy::Name(params) => paginate!(query, disk::name, params, DbName),
            PaginatedBy::Id(params) => paginate!(query, disk::id, params, |id| id),
        };
        query.load(conn).await.map_err(public_error_from_diesel)
    }

    /// Every disk, deleted ones too, oldest first (for operators and the invariant checker).
    pub async fn disk_list_all(&self) -> Result<Vec<Disk>, Error> {
        let conn = &mut *self.connection().await?;
        disk::table
            .order((disk::time_created.asc(), disk::id.asc()))
            .select(Disk::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Moves a disk from one of `from` to `to` (attached to nothing). Deleting (`to` =
    /// `Destroyed`) also sets `time_deleted`, which frees the name.
    pub async fn disk_transition(
        &self,
        id: DiskUuid,
        from: &[DiskState],
        to: DiskState,
    ) -> Result<DiskTransition, Error> {
        let conn = &mut *self.connection().await?;
        let now = Utc::now();
        let from: Vec<DbEnum<DiskState>> = from.iter().copied().map(DbEnum).collect();
        let deleted = (to == DiskState::Destroyed).then_some(now);
        let updated = diesel::update(disk::table)
            .filter(disk::id.eq(DbTypedUuid(id)))
            .filter(disk::time_deleted.is_null())
            .filter(disk::state.eq_any(from))
            .filter(disk::replacing_region_id.is_null())
            .set((
                disk::state.eq(DbEnum(to)),
                disk::attach_instance_id.eq(None::<DbTypedUuid<InstanceKind>>),
                disk::slot.eq(None::<i32>),
                disk::state_generation.eq(disk::state_generation + 1),
                disk::time_state_updated.eq(now),
                disk::time_modified.eq(now),
                disk::time_deleted.eq(deleted),
            ))
            .returning(Disk::as_returning())
            .get_result(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?;
        if let Some(disk) = updated {
            return Ok(DiskTransition::Applied(disk));
        }
        let found = disk_fetch_any(conn, id)
            .await
            .map_err(TxnError::into_public)?
            .ok_or_else(|| disk_not_found(id))?;
        if found.state() == to && found.replacing_region().is_none() {
            Ok(DiskTransition::AlreadyDone(found))
        } else if found.time_deleted.is_some() {
            Err(disk_not_found(id))
        } else {
            Ok(DiskTransition::Conflict(found))
        }
    }
}

impl DataStore {
    /// Brings a deleted disk back as `faulted` (its data is not to be trusted any more): the
    /// undo of a disk delete that could not finish, so the disk and its regions show again
    /// and the delete can be tried anew. Idempotent (a disk already back is returned as it
    /// is). `ObjectAlreadyExists` if a live disk of its project took its name meanwhile.
    pub async fn disk_undelete_faulted(&self, id: DiskUuid) -> Result<Disk, Error> {
        let conn = &mut *self.connection().await?;
        let now = Utc::now();
        let updated = diesel::update(disk::table)
            .filter(disk::id.eq(DbTypedUuid(id)))
            .filter(disk::time_deleted.is_not_null())
            .filter(disk::state.eq(DbEnum(DiskState::Destroyed)))
            .set((
                disk::state.eq(DbEnum(DiskState::Faulted)),
                disk::attach_instance_id.eq(None::<DbTypedUuid<InstanceKind>>),
                disk::state_generation.eq(disk::state_generation + 1),
                disk::time_state_updated.eq(now),
                disk::time_modified.eq(now),
                disk::time_deleted.eq(None::<chrono::DateTime<Utc>>),
            ))
            .returning(Disk::as_returning())
            .get_result(conn)
            .await
            .optional();
        match updated {
            Ok(Some(disk)) => Ok(disk),
            Ok(None) => disk_fetch_any(conn, id)
                .await
                .map_err(TxnError::into_public)?
                .filter(|found| found.time_deleted.is_none())
                .ok_or_else(|| disk_not_found(id)),
            Err(e) if is_unique_violation(&e) => Err(Error::ObjectAlreadyExists {
                type_name: ResourceType::Disk,
                name: format!("(the name of deleted disk {id})"),
            }),
            Err(e) => Err(public_error_from_diesel(e)),
        }
    }
}

pub(crate) async fn disk_fetch_any(
    conn: &mut AsyncPgConnection,
    id: DiskUuid,
) -> Result<Option<Disk>, TxnError> {
    Ok(disk::table
        .filter(disk::id.eq(DbTypedUuid(id)))
        .select(Disk::as_select())
        .first(conn)
        .await
        .optional()?)
}

pub(crate) fn disk_not_found(id: DiskUuid) -> Error {
    Error::not_found_by_id(ResourceType::Disk, id.into_untyped_uuid())
}

/// Checks what the types alone do not: a size above zero, at most [`MAX_DISK_SIZE`], a whole
/// number of blocks; a description of printable text. `disk_insert` checks it itself; Nexus
/// checks a request with it before recording the saga that inserts the disk.
pub fn validate_new_disk(params: &NewDiskParams) -> Result<(), Error> {
    halyard_common::validate_description(&params.description)?;
    let size = params.size.to_bytes();
    let block = u64::from(params.block_size.to_bytes());
    if size == 0 {
        return Err(Error::invalid_value(
            "size",
            "a disk's size must be above zero",
        ));
    }
    if params.size > MAX_DISK_SIZE {
        return Err(Error::invalid_value(
            "size",
            format!(
                "a disk may be at most {MAX_DISK_SIZE} (asked for {})",
                params.size
            ),
        ));
    }
    if !size.is_multiple_of(block) {
        return Err(Error::invalid_value(
            "size",
            format!(
                "a disk's size must be a whole number of blocks: {size} bytes is not a \
                 multiple of the block size, {block} bytes"
            ),
        ));
    }
    Ok(())
}
