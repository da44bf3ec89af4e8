//! Region replacement: a disk that lost a replica with an expunged sled gets a new one.
//!
//! A disk with a region on an expunged sled is *degraded*: its data lives on the two regions
//! left (a VMM is given only those; QEMU's quorum of two still votes), and the region on the
//! expunged sled is replaced by a copy of a healthy one on another sled (the region-replacement
//! saga, `nexus/src/app/sagas/region_replace.rs`). The steps kept here:
//!
//! - [`DataStore::region_replacement_begin`] marks the disk as being replaced
//!   (`disk.replacing_region_id`), only while nothing writes to it: the disk is detached, or
//!   attached to a stopped instance. It takes the locks an attach takes (the instance's row,
//!   then the disk's), so it is ordered with attach, detach and a start's claim; while the mark
//!   is set those refuse the disk (a start refuses an instance whose disk is being replaced, as
//!   it refuses one whose disk is attaching), and so does a delete. So the copy is of a replica
//!   nothing writes to.
//! - [`DataStore::region_replacement_allocate`] places the new region like disk create places
//!   its regions (race-safe on the sled's `reserved_storage`, never on a sled holding one of
//!   the disk's regions, never on an expunged one), on a sled of the kind the lost one was.
//! - [`DataStore::region_replacement_finish`] swaps them in one transaction: the lost region's
//!   row is deleted (its storage given back to its sled's count), the mark cleared.

use super::DataStore;
use super::disk::disk_not_found;
use super::disk_attach::{
    InstanceForDisks, describe_disk_state, lock_disk, lock_instance, require_instance_state,
};
use super::region::{MAX_PLACEMENT_ATTEMPTS, candidates_with_room, claim_storage, regions_of};
use crate::error::{TxnError, public_error_from_diesel};
use chrono::Utc;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use halyard_common::ids::{DiskUuid, GenericUuid, RegionKind, RegionUuid, SledKind};
use halyard_common::{DiskState, Error, Labelled, SledBackend};
use halyard_db_model::schema::{disk, region, sled};
use halyard_db_model::{DbByteCount, DbEnum, DbTypedUuid, Disk, Region};
use std::collections::BTreeSet;

/// A region on an expunged sled whose disk could be repaired now: the disk is live, detached
/// or attached to a stopped instance, and not being repaired already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostRegion {
    pub disk_id: DiskUuid,
    pub region_id: RegionUuid,
}

impl DataStore {
    /// Of `disks`, those with a region on an expunged sled (lost: served by fewer than three
    /// replicas until the region is replaced) or on a sled not heard from since
    /// `silent_since` (unreachable, maybe for good): degraded.
    pub async fn disks_degraded(
        &self,
        disks: &[DiskUuid],
        silent_since: chrono::DateTime<Utc>,
    ) -> Result<BTreeSet<DiskUuid>, Error> {
        if disks.is_empty() {
            return Ok(BTreeSet::new());
        }
        let conn = &mut *self.connection().await?;
        let ids: Vec<DbTypedUuid<_>> = disks.iter().copied().map(DbTypedUuid).collect();
        let degraded: Vec<DbTypedUuid<_>> = region::table
            .inner_join(sled::table)
            .filter(region::disk_id.eq_any(ids))
            .filter(
                sled::time_expunged
                    .is_not_null()
                    .or(sled::time_last_seen.lt(silent_since)),
            )
            .select(region::disk_id)
            .distinct()
            .load(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(degraded.into_iter().map(|id| id.0).collect())
    }

    /// Regions on expunged sleds that could be replaced now (one per disk, the oldest): their
    /// disk is live and detached, or attached to an instance with no VMM, no replacement runs
    /// for it (none marked, and no unfinished replacement saga names it), and an in-service sled of the lost region's kind has room for the copy beside
    /// the disk's other regions. What the region-replacement task starts sagas for.
    pub async fn regions_to_replace(&self) -> Result<Vec<LostRegion>, Error> {
        let conn = &mut *self.connection().await?;
        let rows: Vec<(DbTypedUuid<_>, DbTypedUuid<RegionKind>)> = region::table
            .inner_join(sled::table)
            .inner_join(disk::table)
            .filter(sled::time_expunged.is_not_null())
            .filter(disk::time_deleted.is_null())
            .filter(disk::replacing_region_id.is_null())
            .filter(
                disk::state.eq(DbEnum(DiskState::Detached)).or(disk::state
                    .eq(DbEnum(DiskState::Attached))
                    .and(sql::<diesel::sql_types::Bool>(
                        "EXISTS (SELECT 1 FROM instance i WHERE i.id = disk.attach_instance_id \
                         AND i.active_propolis_id IS NULL AND i.target_propolis_id IS NULL \
                         AND i.nexus_state IN ('no_vmm', 'failed'))",
                    ))),
            )
            // Not while an unfinished replacement saga names the disk, whichever Nexus owns it
            // (one waiting to be adopted from a Nexus gone silent has not marked it yet).
            .filter(sql::<diesel::sql_types::Bool>(
                "NOT EXISTS (SELECT 1 FROM saga s WHERE s.saga_state != 'done' \
                 AND s.name = 'region-replace' AND strpos(s.dag::TEXT, disk.id::TEXT) > 0)",
            ))
            // Only where a replacement can go (else each pass would run a saga bound to fail).
            .filter(sql::<diesel::sql_types::Bool>(
                "EXISTS (SELECT 1 FROM sled c WHERE c.time_expunged IS NULL \
                 AND c.backend = sled.backend \
                 AND c.usable_storage - c.reserved_storage >= disk.size_bytes \
                 AND c.id NOT IN (SELECT r2.sled_id FROM region r2 WHERE r2.disk_id = disk.id))",
            ))
            .order((region::disk_id.asc(), region::time_created.asc()))
            .select((region::disk_id, region::id))
            .load(conn)
            .await
            .map_err(public_error_from_diesel)?;
        let mut lost: Vec<LostRegion> = Vec::new();
        for (disk_id, region_id) in rows {
            if lost.last().map(|l| l.disk_id) != Some(disk_id.0) {
                lost.push(LostRegion {
                    disk_id: disk_id.0,
                    region_id: region_id.0,
                });
            }
        }
        Ok(lost)
    }

    /// Marks `disk_id` as having its region `region_id` replaced (see the module's comment).
    /// Idempotent: a disk already marked for this region is returned as it is. `Conflict` when
    /// the disk is in another state than detached or attached, its instance is not stopped,
    /// another region of it is being replaced, or the region's sled is not expunged;
    /// `ObjectNotFound` for a deleted disk or a region that is not the disk's.
    pub async fn region_replacement_begin(
        &self,
        disk_id: DiskUuid,
        region_id: RegionUuid,
        new_region_id: RegionUuid,
    ) -> Result<Disk, Error> {
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                // Lock order: the instance's row, then the disk's. Which instance is read
                // first, and checked again under the locks.
                let unlocked = disk_fetch_live(conn, disk_id).await?;
                let instance = match unlocked.attached_to() {
                    Some(instance_id) => Some(lock_instance(conn, instance_id).await?),
                    None => None,
                };
                let disk = lock_disk(conn, disk_id).await?;
                if disk.replacement() == Some((region_id, Some(new_region_id))) {
                    return Ok(disk);
                }
                if disk.attached_to() != unlocked.attached_to() {
                    return Err(TxnError::Public(Error::unavailable(format!(
                        "disk \"{}\" was attached or detached meanwhile; retry",
                        disk.name()
                    ))));
                }
                if let Some(other) = disk.replacing_region() {
                    return Err(TxnError::Public(Error::conflict(format!(
                        "disk \"{}\" already has its region {other} being replaced (by \
                         another replacement)",
                        disk.name()
                    ))));
                }
                if !matches!(disk.state(), DiskState::Detached | DiskState::Attached) {
                    return Err(TxnError::Public(Error::conflict(format!(
                        "disk \"{}\" is {}; a region is replaced only for a detached disk or \
                         one attached to a stopped instance",
                        disk.name(),
                        describe_disk_state(&disk)
                    ))));
                }
                if let Some(instance) = &instance {
                    require_instance_state(
                        instance,
                        InstanceForDisks::Stopped,
                        "replace a region of a disk of",
                    )?;
                }
                let (region_disk, expunged) = region::table
                    .inner_join(sled::table)
                    .filter(region::id.eq(DbTypedUuid(region_id)))
                    .select((region::disk_id, sled::time_expunged.is_not_null()))
                    .first::<(DbTypedUuid<_>, bool)>(conn)
                    .await
                    .optional()?
                    .ok_or_else(|| TxnError::Public(region_not_found(region_id)))?;
                if region_disk.0 != disk_id {
                    return Err(TxnError::Public(region_not_found(region_id)));
                }
                if !expunged {
                    return Err(TxnError::Public(Error::conflict(format!(
                        "region {region_id} of disk \"{}\" is on a sled in service; only a \
                         region on an expunged sled is replaced",
                        disk.name()
                    ))));
                }
                let marked = diesel::update(disk::table)
                    .filter(disk::id.eq(DbTypedUuid(disk_id)))
                    .set((
                        disk::replacing_region_id.eq(Some(DbTypedUuid(region_id))),
                        disk::replacement_region_id.eq(Some(DbTypedUuid(new_region_id))),
                        disk::time_modified.eq(Utc::now()),
                    ))
                    .returning(Disk::as_returning())
                    .get_result(conn)
                    .await?;
                Ok(marked)
            })
            .await
        })
        .await
    }

    /// Clears the mark [`Self::region_replacement_begin`] set, if it is this replacement's
    /// (`region_id` replaced by `new_region_id`; the undo of a replacement). A disk marked for
    /// another replacement, or not at all, is left alone.
    pub async fn region_replacement_abandon(
        &self,
        disk_id: DiskUuid,
        region_id: RegionUuid,
        new_region_id: RegionUuid,
    ) -> Result<(), Error> {
        let conn = &mut *self.connection().await?;
        diesel::update(disk::table)
            .filter(disk::id.eq(DbTypedUuid(disk_id)))
            .filter(disk::replacing_region_id.eq(DbTypedUuid(region_id)))
            .filter(disk::replacement_region_id.eq(DbTypedUuid(new_region_id)))
            .set((
                disk::replacing_region_id.eq(None::<DbTypedUuid<RegionKind>>),
                disk::replacement_region_id.eq(None::<DbTypedUuid<RegionKind>>),
            ))
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(())
    }

    /// Places the region `new_region_id` that replaces `lost_region_id` of a disk being
    /// replaced (marked by [`Self::region_replacement_begin`]): on an in-service sled of the
    /// lost region's sled's kind with room, holding none of the disk's regions (race-safe,
    /// like [`Self::disk_regions_allocate`]). Idempotent: a repeat returns the region placed.
    /// `InsufficientCapacity` when no sled has room; `Conflict` when the disk is not marked
    /// for that region.
    pub async fn region_replacement_allocate(
        &self,
        disk_id: DiskUuid,
        lost_region_id: RegionUuid,
        new_region_id: RegionUuid,
    ) -> Result<Region, Error> {
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                let disk = lock_disk(conn, disk_id).await?;
                let regions = regions_of(conn, disk_id).await?;
                if let Some(placed) = regions.iter().find(|r| r.id() == new_region_id) {
                    return Ok(placed.clone());
                }
                require_marked(&disk, lost_region_id, new_region_id)?;
                let lost = regions
                    .iter()
                    .find(|r| r.id() == lost_region_id)
                    .ok_or_else(|| TxnError::Public(region_not_found(lost_region_id)))?;
                let backend: DbEnum<SledBackend> = sled::table
                    .filter(sled::id.eq(lost.sled_id))
                    .select(sled::backend)
                    .first(conn)
                    .await?;
                let size = disk.size_bytes;
                // A claim that finds the sled it picked filled meanwhile picks again, while
                // any sled has room.
                let mut claimed = None;
                for _ in 0..MAX_PLACEMENT_ATTEMPTS {
                    claimed = claim_storage(conn, disk_id, backend.0, size).await?;
                    if claimed.is_some() {
                        break;
                    }
                    let room_left = candidates_with_room(disk_id, backend.0, size)
                        .first::<DbTypedUuid<SledKind>>(conn)
                        .await
                        .optional()?;
                    if room_left.is_none() {
                        break;
                    }
                }
                let Some(sled_id) = claimed else {
                    return Err(TxnError::Public(Error::insufficient_capacity(format!(
                        "no {} sled in service has {} free for a replica of disk \"{}\" \
                         beside the sleds holding its other regions; add storage, or delete \
                         other disks",
                        backend.0.label(),
                        disk.size(),
                        disk.name()
                    ))));
                };
                let mut region = Region::new(&disk, sled_id.0);
                region.id = DbTypedUuid(new_region_id);
                let placed = diesel::insert_into(region::table)
                    .values(region)
                    .returning(Region::as_returning())
                    .get_result(conn)
                    .await?;
                Ok(placed)
            })
            .await
        })
        .await
    }

    /// Releases a region placed by [`Self::region_replacement_allocate`] (its undo): deletes
    /// the row and gives its storage back. A region already gone is fine.
    pub async fn region_release(&self, region_id: RegionUuid) -> Result<(), Error> {
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| delete_region_row(conn, region_id).await)
                .await
        })
        .await
    }

    /// Swaps in the new region: deletes the lost region's row (its storage given back to its
    /// sled's count) and clears the disk's mark, in one transaction. Idempotent: a disk no
    /// longer marked whose lost region is gone and whose new region is there is done already.
    pub async fn region_replacement_finish(
        &self,
        disk_id: DiskUuid,
        lost_region_id: RegionUuid,
        new_region_id: RegionUuid,
    ) -> Result<Disk, Error> {
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                let disk = lock_disk(conn, disk_id).await?;
                let regions = regions_of(conn, disk_id).await?;
                let has = |id: RegionUuid| regions.iter().any(|r| r.id() == id);
                if disk.replacing_region().is_none() && !has(lost_region_id) && has(new_region_id) {
                    return Ok(disk);
                }
                require_marked(&disk, lost_region_id, new_region_id)?;
                if !has(new_region_id) {
                    return Err(TxnError::Public(region_not_found(new_region_id)));
                }
                delete_region_row(conn, lost_region_id).await?;
                let finished = diesel::update(disk::table)
                    .filter(disk::id.eq(DbTypedUuid(disk_id)))
                    .set((
                        disk::replacing_region_id.eq(None::<DbTypedUuid<RegionKind>>),
                        disk::replacement_region_id.eq(None::<DbTypedUuid<RegionKind>>),
                        disk::time_modified.eq(Utc::now()),
                    ))
                    .returning(Disk::as_returning())
                    .get_result(conn)
                    .await?;
                Ok(finished)
            })
            .await
        })
        .await
    }
}

async fn disk_fetch_live(conn: &mut AsyncPgConnection, id: DiskUuid) -> Result<Disk, TxnError> {
    disk::table
        .filter(disk::id.eq(DbTypedUuid(id)))
        .filter(disk::time_deleted.is_null())
        .select(Disk::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| TxnError::Public(disk_not_found(id)))
}

fn require_marked(
    disk: &Disk,
    lost_region_id: RegionUuid,
    new_region_id: RegionUuid,
) -> Result<(), TxnError> {
    if disk.replacement() == Some((lost_region_id, Some(new_region_id))) {
        return Ok(());
    }
    Err(TxnError::Public(Error::conflict(format!(
        "disk \"{}\" is not having its region {lost_region_id} replaced by region \
         {new_region_id}",
        disk.name()
    ))))
}

/// Deletes a region's row and takes its size off its sled's `reserved_storage`.
async fn delete_region_row(
    conn: &mut AsyncPgConnection,
    region_id: RegionUuid,
) -> Result<(), TxnError> {
    let released: Option<(DbTypedUuid<SledKind>, DbByteCount)> = diesel::delete(region::table)
        .filter(region::id.eq(DbTypedUuid(region_id)))
        .returning((region::sled_id, region::size_bytes))
        .get_result(conn)
        .await
        .optional()?;
    if let Some((sled_id, size)) = released {
        diesel::update(sled::table)
            .filter(sled::id.eq(sled_id))
            .set(sled::reserved_storage.eq(sled::reserved_storage - size))
            .execute(conn)
            .await?;
    }
    Ok(())
}

fn region_not_found(id: RegionUuid) -> Error {
    Error::not_found_by_id(halyard_common::ResourceType::Region, id.into_untyped_uuid())
}
