//! Disks on instances: attach, detach, and what an instance's VMM is given.
//!
//! A disk goes `detached` → `attaching` → `attached` (attach) and `attached` → `detaching` →
//! `detached` (detach), naming its instance and holding a slot (`0..MAX_DISKS_PER_INSTANCE`)
//! from `attaching` until `detached` again. The rules, and where each is kept:
//!
//! - **A disk names at most one instance**: it has one `attach_instance_id`, and each step is a
//!   conditional write of the disk's row naming the state it moves from.
//! - **At most [`MAX_DISKS_PER_INSTANCE`] disks per instance**: the slot's CHECK (`0..7`) and the
//!   unique index on `(attach_instance_id, slot)` make it a database guarantee; the attach picks
//!   the lowest free slot, under the instance's lock (below), so racing attaches never collide.
//! - **Attach and detach only while the instance is stopped**, and **a VMM is never started
//!   without a disk the database says is attached**. The instance's row is the lock both sides
//!   take first (lock order: instance row, then disk rows):
//!   - beginning an attach or a detach locks the instance's row (`SELECT ... FOR UPDATE`), checks
//!     it has no VMM, then writes the disk;
//!   - the start's claim (`instance_claim_for_start`) writes the instance's row (taking the same
//!     lock), then, in the same transaction, refuses if any disk of the instance is `attaching`
//!     or `detaching`; the start's later nodes read the `attached` disks for the VMM.
//!
//!   Under PostgreSQL's READ COMMITTED: if the attach locked first, the claim's `UPDATE` waits
//!   for it to commit, and the claim's next statement (a new snapshot, taken while holding the
//!   lock) sees the disk `attaching` and refuses; if it finished (`attached`), the VMM gets it.
//!   If the claim locked first, the attach's `FOR UPDATE` waits, then re-checks its `WHERE`
//!   on the row the claim wrote and finds a VMM: refused. (A single `UPDATE` with a `NOT
//!   EXISTS` over `disk` would not do: its subquery reads the snapshot taken before it waited
//!   for the lock, so it could miss the attach that held it.) Under CockroachDB's SERIALIZABLE,
//!   the transactions are serializable anyway; the lock only spares retries. While the
//!   instance has a VMM (or a claim), its disks cannot change, so every read of them by a
//!   start or a migration's target sees the same set.
//! - **An instance's boot disk stays attached**: detaching it is refused, so (attached disks
//!   cannot be deleted) neither can it be deleted.
//! - **Deleting an instance detaches its disks** in the transaction that marks it destroyed
//!   (`instance_mark_destroyed`), which holds its row's lock: no attach slips in between.

use super::DataStore;
use super::disk::{DiskTransition, disk_fetch_any, disk_not_found};
use super::instance::instance_not_found;
use crate::error::{TxnError, is_unique_violation, public_error_from_diesel};
use crate::pagination::{PaginatedBy, paginate};
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use halyard_common::ids::{DiskKind, DiskUuid, InstanceKind, InstanceUuid, RegionUuid, SledKind};
use halyard_common::{DiskState, Error, InstanceNexusState};
use halyard_db_model::schema::{disk, instance, region, sled};
use halyard_db_model::{
    DbEnum, DbName, DbTypedUuid, Disk, Instance, MAX_DISKS_PER_INSTANCE, Region,
};

/// The instance state an attach or detach requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceForDisks {
    /// Stopped (or failed): no VMM, no start's claim, no migration. What the API requires.
    Stopped,
    /// Being created (`creating`): only its create saga attaches to it.
    Creating,
}

/// A disk attached to an instance, as its VMM gets it: the disk and its regions.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachedDisk {
    pub disk: Disk,
    pub regions: Vec<Region>,
}

impl DataStore {
    /// Begins attaching `disk_id` to `instance_id`: `detached` → `attaching`, in the instance's
    /// lowest free slot. `AlreadyDone` if the disk already is attaching or attached to it.
    /// Errors: `ObjectNotFound` for a missing instance or disk; `InvalidRequest` for a disk of
    /// another project; `Conflict` when the instance is not in the state `when` requires, the
    /// disk is not detached, or the instance has [`MAX_DISKS_PER_INSTANCE`] disks.
    pub async fn disk_attach_begin(
        &self,
        instance_id: InstanceUuid,
        disk_id: DiskUuid,
        when: InstanceForDisks,
    ) -> Result<DiskTransition, Error> {
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                let instance = lock_instance(conn, instance_id).await?;
                let disk = lock_disk(conn, disk_id).await?;
                if disk.attached_to() == Some(instance_id)
                    && matches!(disk.state(), DiskState::Attaching | DiskState::Attached)
                {
                    return Ok(DiskTransition::AlreadyDone(disk));
                }
                if disk.project_id() != instance.project_id() {
                    return Err(TxnError::Public(Error::invalid_request(format!(
                        "disk \"{}\" is in another project than instance \"{}\"",
                        disk.name(),
                        instance.name()
                    ))));
                }
                require_instance_state(&instance, when, "attach a disk to")?;
                refuse_disk_being_repaired(&disk)?;
                if disk.state() != DiskState::Detached {
                    return Err(TxnError::Public(Error::conflict(format!(
                        "disk \"{}\" is {}; only a detached disk can be attached",
                        disk.name(),
                        describe_disk_state(&disk)
                    ))));
                }
                refuse_disk_held_by_its_instance_create(conn, &disk, Some(instance_id)).await?;
                let used = used_slots(conn, instance_id).await?;
                let Some(slot) = (0..MAX_DISKS_PER_INSTANCE as i32).find(|s| !used.contains(s))
                else {
                    return Err(TxnError::Public(Error::conflict(format!(
                        "instance \"{}\" already has {MAX_DISKS_PER_INSTANCE} disks, the most \
                         an instance may have; detach one first",
                        instance.name()
                    ))));
                };
                let now = Utc::now();
                let attaching = diesel::update(live_disk(disk_id))
                    .filter(disk::state.eq(DbEnum(DiskState::Detached)))
                    .set((
                        disk::state.eq(DbEnum(DiskState::Attaching)),
                        disk::attach_instance_id.eq(Some(DbTypedUuid(instance_id))),
                        disk::slot.eq(Some(slot)),
                        disk::state_generation.eq(disk::state_generation + 1),
                        disk::time_state_updated.eq(now),
                        disk::time_modified.eq(now),
                    ))
                    .returning(Disk::as_returning())
                    .get_result(conn)
                    .await
                    .map_err(|e| {
                        if is_unique_violation(&e) {
                            // Only if the lock order above were broken: the index keeps the rule.
                            TxnError::Public(Error::conflict(format!(
                                "slot {slot} of instance \"{}\" was taken meanwhile; retry",
                                instance.name()
                            )))
                        } else {
                            TxnError::Database(e)
                        }
                    })?;
                Ok(DiskTransition::Applied(attaching))
            })
            .await
        })
        .await
    }

    /// Deletes a disk's record: one of `from` → `destroyed` (as [`Self::disk_transition`]),
    /// unless the disk is held by the instance create that makes it (that instance is still
    /// `creating`): then `Conflict` and nothing changes. Deleting it in that window would fail
    /// the create, whose undo could then not destroy the disk itself: a stuck saga. The check
    /// needs no lock: an instance never goes back to `creating`, so once it is false it stays so.
    pub async fn disk_destroy_unless_held(
        &self,
        disk_id: DiskUuid,
        from: &[DiskState],
    ) -> Result<DiskTransition, Error> {
        {
            let conn = &mut *self.connection().await?;
            if let Some(disk) = disk_fetch_any(conn, disk_id)
                .await
                .map_err(TxnError::into_public)?
                .filter(|disk| disk.time_deleted.is_none())
            {
                refuse_disk_held_by_its_instance_create(conn, &disk, None)
                    .await
                    .map_err(TxnError::into_public)?;
            }
        }
        self.disk_transition(disk_id, from, DiskState::Destroyed)
            .await
    }

    /// Finishes an attach: `attaching` → `attached`. `AlreadyDone` if it is attached to the
    /// instance; `Conflict` if it no longer is attaching to it (e.g. the instance was deleted
    /// meanwhile, which detached it). Needs no lock: a start refuses an instance with a disk
    /// `attaching`, so the instance has no VMM here.
    pub async fn disk_attach_finish(
        &self,
        instance_id: InstanceUuid,
        disk_id: DiskUuid,
    ) -> Result<DiskTransition, Error> {
        self.disk_move(
            instance_id,
            disk_id,
            DiskState::Attaching,
            Some(DiskState::Attached),
        )
        .await
    }

    /// Undoes [`Self::disk_attach_begin`]: `attaching` (to this instance) → `detached`. A disk
    /// in any other state is left alone (`AlreadyDone`): the attach is not ours any more.
    pub async fn disk_attach_undo(
        &self,
        instance_id: InstanceUuid,
        disk_id: DiskUuid,
    ) -> Result<DiskTransition, Error> {
        self.disk_move(instance_id, disk_id, DiskState::Attaching, None)
            .await
            .map(|moved| match moved {
                DiskTransition::Conflict(disk) => DiskTransition::AlreadyDone(disk),
                other => other,
            })
    }

    /// Begins detaching `disk_id` from `instance_id`: `attached` → `detaching`, if the
    /// instance is stopped. `AlreadyDone` if it already is detaching from it. Errors:
    /// `ObjectNotFound` for a missing instance or disk; `Conflict` if the instance has a VMM,
    /// the disk is not attached to this instance, or it is the instance's boot disk.
    pub async fn disk_detach_begin(
        &self,
        instance_id: InstanceUuid,
        disk_id: DiskUuid,
    ) -> Result<DiskTransition, Error> {
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                let instance = lock_instance(conn, instance_id).await?;
                let disk = lock_disk(conn, disk_id).await?;
                if disk.attached_to() == Some(instance_id) && disk.state() == DiskState::Detaching {
                    return Ok(DiskTransition::AlreadyDone(disk));
                }
                if disk.attached_to() != Some(instance_id) || disk.state() != DiskState::Attached {
                    return Err(TxnError::Public(Error::conflict(format!(
                        "disk \"{}\" is not attached to instance \"{}\" (it is {})",
                        disk.name(),
                        instance.name(),
                        describe_disk_state(&disk)
                    ))));
                }
                if instance.boot_disk() == Some(disk_id) {
                    return Err(TxnError::Public(Error::conflict(format!(
                        "disk \"{}\" is the boot disk of instance \"{}\"; it cannot be detached",
                        disk.name(),
                        instance.name()
                    ))));
                }
                require_instance_state(&instance, InstanceForDisks::Stopped, "detach a disk from")?;
                refuse_disk_being_repaired(&disk)?;
                let now = Utc::now();
                let detaching = diesel::update(live_disk(disk_id))
                    .filter(disk::state.eq(DbEnum(DiskState::Attached)))
                    .filter(disk::attach_instance_id.eq(DbTypedUuid(instance_id)))
                    .set((
                        disk::state.eq(DbEnum(DiskState::Detaching)),
                        disk::state_generation.eq(disk::state_generation + 1),
                        disk::time_state_updated.eq(now),
                        disk::time_modified.eq(now),
                    ))
                    .returning(Disk::as_returning())
                    .get_result(conn)
                    .await?;
                Ok(DiskTransition::Applied(detaching))
            })
            .await
        })
        .await
    }

    /// Finishes a detach: `detaching` (from this instance) → `detached`, its slot freed.
    /// `AlreadyDone` if it no longer names this instance; `Conflict` if it is attached to it
    /// again (the detach was undone).
    pub async fn disk_detach_finish(
        &self,
        instance_id: InstanceUuid,
        disk_id: DiskUuid,
    ) -> Result<DiskTransition, Error> {
        self.disk_move(instance_id, disk_id, DiskState::Detaching, None)
            .await
            .map(|moved| match moved {
                DiskTransition::Conflict(disk) if disk.attached_to() != Some(instance_id) => {
                    DiskTransition::AlreadyDone(disk)
                }
                other => other,
            })
    }

    /// Undoes [`Self::disk_detach_begin`]: `detaching` (from this instance) → `attached`. A
    /// disk in any other state is left alone (`AlreadyDone`).
    pub async fn disk_detach_undo(
        &self,
        instance_id: InstanceUuid,
        disk_id: DiskUuid,
    ) -> Result<DiskTransition, Error> {
        self.disk_move(
            instance_id,
            disk_id,
            DiskState::Detaching,
            Some(DiskState::Attached),
        )
        .await
        .map(|moved| match moved {
            DiskTransition::Conflict(disk) => DiskTransition::AlreadyDone(disk),
            other => other,
        })
    }

    /// Detaches every disk naming `instance_id`, whatever its attachment state; returns how
    /// many. For an instance being created (its create saga's undo) or destroyed: nothing
    /// else attaches to such an instance.
    pub async fn instance_detach_all_disks(
        &self,
        instance_id: InstanceUuid,
    ) -> Result<usize, Error> {
        let conn = &mut *self.connection().await?;
        detach_all(conn, instance_id)
            .await
            .map_err(public_error_from_diesel)
    }

    /// The disks the instance's create made that are still attached to it: what its delete
    /// deletes (a disk it made but that was detached since is the user's to keep).
    pub async fn instance_created_disks(
        &self,
        instance_id: InstanceUuid,
    ) -> Result<Vec<DiskUuid>, Error> {
        let conn = &mut *self.connection().await?;
        disk::table
            .filter(disk::created_by_instance_id.eq(DbTypedUuid(instance_id)))
            .filter(disk::attach_instance_id.eq(DbTypedUuid(instance_id)))
            .filter(disk::time_deleted.is_null())
            .order(disk::slot.asc())
            .select(disk::id)
            .load::<DbTypedUuid<DiskKind>>(conn)
            .await
            .map(|ids| ids.into_iter().map(|id| id.0).collect())
            .map_err(public_error_from_diesel)
    }

    /// One page of the disks attached to (or attaching to, or detaching from) an instance.
    pub async fn instance_disk_list(
        &self,
        instance_id: InstanceUuid,
        page: &PaginatedBy<'_>,
    ) -> Result<Vec<Disk>, Error> {
        let conn = &mut *self.connection().await?;
        let query = disk::table
            .filter(disk::attach_instance_id.eq(DbTypedUuid(instance_id)))
            .filter(disk::time_deleted.is_null())
            .select(Disk::as_select())
            .into_boxed();
        let query = match page {
            PaginatedBy::Name(params) => paginate!(query, disk::name, params, DbName),
            PaginatedBy::Id(params) => paginate!(query, disk::id, params, |id| id),
        };
        query.load(conn).await.map_err(public_error_from_diesel)
    }

    /// The disks an instance's VMM gets: those `attached` to it, with their regions; its boot
    /// disk first, then by slot. One statement. Called once the instance has a VMM (claimed),
    /// when its disks cannot change (see the module's comment).
    pub async fn instance_attached_disks(
        &self,
        instance_id: InstanceUuid,
    ) -> Result<Vec<AttachedDisk>, Error> {
        let conn = &mut *self.connection().await?;
        let boot_disk = instance::table
            .filter(instance::id.eq(DbTypedUuid(instance_id)))
            .select(instance::boot_disk_id)
            .first::<Option<DbTypedUuid<DiskKind>>>(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?
            .flatten()
            .map(|id| id.0);
        let rows: Vec<(Disk, Option<Region>)> = disk::table
            .left_join(region::table)
            .filter(disk::attach_instance_id.eq(DbTypedUuid(instance_id)))
            .filter(disk::state.eq(DbEnum(DiskState::Attached)))
            .filter(disk::time_deleted.is_null())
            .order((
                disk::slot.asc(),
                region::time_created.asc(),
                region::id.asc(),
            ))
            .select((Disk::as_select(), Option::<Region>::as_select()))
            .load(conn)
            .await
            .map_err(public_error_from_diesel)?;
        // A region on an expunged sled went with it: the VMM gets the replicas left (a
        // degraded disk has two, and QEMU's quorum of two still votes).
        let expunged: Vec<DbTypedUuid<SledKind>> = sled::table
            .filter(sled::time_expunged.is_not_null())
            .select(sled::id)
            .load(conn)
            .await
            .map_err(public_error_from_diesel)?;
        let mut disks: Vec<AttachedDisk> = Vec::new();
        for (disk, region) in rows {
            let region = region.filter(|r| !expunged.contains(&r.sled_id));
            match disks.last_mut() {
                Some(last) if last.disk.id() == disk.id() => last.regions.extend(region),
                _ => disks.push(AttachedDisk {
                    disk,
                    regions: region.into_iter().collect(),
                }),
            }
        }
        // The boot disk first; the rest stay in slot order.
        disks.sort_by_key(|d| Some(d.disk.id()) != boot_disk);
        Ok(disks)
    }

    /// Records where a region's sled serves it over NBD (`host:port`), as the sled agent
    /// answered when it made the region. Idempotent.
    pub async fn region_set_export_address(
        &self,
        region_id: RegionUuid,
        address: std::net::SocketAddr,
    ) -> Result<(), Error> {
        let conn = &mut *self.connection().await?;
        diesel::update(region::table.filter(region::id.eq(DbTypedUuid(region_id))))
            .set(region::export_address.eq(Some(address.to_string())))
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(())
    }

    /// Moves a disk naming `instance_id` from `from` to `to` (`None`: detached, naming nothing).
    async fn disk_move(
        &self,
        instance_id: InstanceUuid,
        disk_id: DiskUuid,
        from: DiskState,
        to: Option<DiskState>,
    ) -> Result<DiskTransition, Error> {
        let conn = &mut *self.connection().await?;
        let now = Utc::now();
        let from_here = live_disk(disk_id)
            .filter(disk::state.eq(DbEnum(from)))
            .filter(disk::attach_instance_id.eq(DbTypedUuid(instance_id)));
        let (state, attached_to) = match to {
            Some(state) => (state, Some(instance_id)),
            None => (DiskState::Detached, None),
        };
        let moved = match to {
            // Still naming the instance, in the same slot.
            Some(state) => {
                diesel::update(from_here)
                    .set((
                        disk::state.eq(DbEnum(state)),
                        disk::state_generation.eq(disk::state_generation + 1),
                        disk::time_state_updated.eq(now),
                        disk::time_modified.eq(now),
                    ))
                    .returning(Disk::as_returning())
                    .get_result(conn)
                    .await
            }
            None => {
                diesel::update(from_here)
                    .set((
                        disk::state.eq(DbEnum(DiskState::Detached)),
                        disk::attach_instance_id.eq(None::<DbTypedUuid<InstanceKind>>),
                        disk::slot.eq(None::<i32>),
                        disk::state_generation.eq(disk::state_generation + 1),
                        disk::time_state_updated.eq(now),
                        disk::time_modified.eq(now),
                    ))
                    .returning(Disk::as_returning())
                    .get_result(conn)
                    .await
            }
        }
        .optional()
        .map_err(public_error_from_diesel)?;
        if let Some(disk) = moved {
            return Ok(DiskTransition::Applied(disk));
        }
        let found = disk_fetch_any(conn, disk_id)
            .await
            .map_err(TxnError::into_public)?
            .ok_or_else(|| disk_not_found(disk_id))?;
        let done = found.state() == state && found.attached_to() == attached_to;
        Ok(if done {
            DiskTransition::AlreadyDone(found)
        } else {
            DiskTransition::Conflict(found)
        })
    }
}

/// Detaches every disk naming the instance (one `UPDATE`).
/// A disk of the instance having a region replaced, if any.
pub(crate) async fn disk_being_repaired(
    conn: &mut AsyncPgConnection,
    instance_id: InstanceUuid,
) -> Result<Option<DiskUuid>, diesel::result::Error> {
    let found: Option<DbTypedUuid<DiskKind>> = disk::table
        .filter(disk::attach_instance_id.eq(DbTypedUuid(instance_id)))
        .filter(disk::replacing_region_id.is_not_null())
        .select(disk::id)
        .first(conn)
        .await
        .optional()?;
    Ok(found.map(|id| id.0))
}

pub(crate) async fn detach_all(
    conn: &mut AsyncPgConnection,
    instance_id: InstanceUuid,
) -> Result<usize, diesel::result::Error> {
    let now = Utc::now();
    diesel::update(disk::table)
        .filter(disk::attach_instance_id.eq(DbTypedUuid(instance_id)))
        .set((
            disk::state.eq(DbEnum(DiskState::Detached)),
            disk::attach_instance_id.eq(None::<DbTypedUuid<InstanceKind>>),
            disk::slot.eq(None::<i32>),
            disk::state_generation.eq(disk::state_generation + 1),
            disk::time_state_updated.eq(now),
            disk::time_modified.eq(now),
        ))
        .execute(conn)
        .await
}

/// Whether any disk of the instance is between states (`attaching`, `detaching`) or having a
/// region replaced: a start must not claim it then (see the module's comment, and
/// `region_replacement.rs`).
pub(crate) async fn disks_changing(
    conn: &mut AsyncPgConnection,
    instance_id: InstanceUuid,
) -> Result<bool, diesel::result::Error> {
    diesel::select(diesel::dsl::exists(
        disk::table
            .filter(disk::attach_instance_id.eq(DbTypedUuid(instance_id)))
            .filter(
                disk::state
                    .eq_any([DbEnum(DiskState::Attaching), DbEnum(DiskState::Detaching)])
                    .or(disk::replacing_region_id.is_not_null()),
            ),
    ))
    .get_result(conn)
    .await
}

type LiveDisk = diesel::dsl::Filter<
    diesel::dsl::Filter<disk::table, diesel::dsl::Eq<disk::id, DbTypedUuid<DiskKind>>>,
    diesel::dsl::IsNull<disk::time_deleted>,
>;

fn live_disk(id: DiskUuid) -> LiveDisk {
    disk::table
        .filter(disk::id.eq(DbTypedUuid(id)))
        .filter(disk::time_deleted.is_null())
}

/// Locks the live instance's row (the lock attach, detach and a start's claim all take
/// first); `ObjectNotFound` if it does not exist or was deleted.
pub(super) async fn lock_instance(
    conn: &mut AsyncPgConnection,
    id: InstanceUuid,
) -> Result<Instance, TxnError> {
    instance::table
        .filter(instance::id.eq(DbTypedUuid(id)))
        .filter(instance::time_deleted.is_null())
        .select(Instance::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| TxnError::Public(instance_not_found(id)))
}

/// Locks the live disk's row (after its instance's: the lock order).
pub(super) async fn lock_disk(
    conn: &mut AsyncPgConnection,
    id: DiskUuid,
) -> Result<Disk, TxnError> {
    disk::table
        .filter(disk::id.eq(DbTypedUuid(id)))
        .filter(disk::time_deleted.is_null())
        .select(Disk::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| TxnError::Public(disk_not_found(id)))
}

/// A disk an instance create makes (`created_by_instance_id`) is held for that create while
/// the instance is `creating`: between the disk-create subsaga's last step (`detached`) and the
/// create's `attach_disks`, an attach to any other instance (`attaching_to`), or a delete
/// (`None`), is refused. Were it allowed, the
/// create would fail and its subsaga's undo could not move the disk back to `creating` to
/// destroy it: a stuck saga. Reading the creating instance's row needs no lock: an instance
/// never goes back to `creating`, so a stale read can only refuse more, never less.
async fn refuse_disk_held_by_its_instance_create(
    conn: &mut AsyncPgConnection,
    disk: &Disk,
    attaching_to: Option<InstanceUuid>,
) -> Result<(), TxnError> {
    let Some(maker) = disk
        .created_by()
        .filter(|maker| Some(*maker) != attaching_to)
    else {
        return Ok(());
    };
    let maker_is_creating = instance::table
        .filter(instance::id.eq(DbTypedUuid(maker)))
        .filter(instance::time_deleted.is_null())
        .filter(instance::nexus_state.eq(DbEnum(InstanceNexusState::Creating)))
        .count()
        .get_result::<i64>(conn)
        .await?
        > 0;
    if maker_is_creating {
        return Err(TxnError::Public(Error::conflict(format!(
            "disk \"{}\" is being made by instance {maker}'s create, which attaches it; \
             wait until that instance is created",
            disk.name()
        ))));
    }
    Ok(())
}

async fn used_slots(
    conn: &mut AsyncPgConnection,
    instance_id: InstanceUuid,
) -> Result<Vec<i32>, diesel::result::Error> {
    disk::table
        .filter(disk::attach_instance_id.eq(DbTypedUuid(instance_id)))
        .select(disk::slot.assume_not_null())
        .load(conn)
        .await
}

pub(super) fn require_instance_state(
    instance: &Instance,
    when: InstanceForDisks,
    what: &str,
) -> Result<(), TxnError> {
    let runtime = &instance.runtime;
    let state = runtime.nexus_state();
    let fits = match when {
        InstanceForDisks::Stopped => {
            matches!(
                state,
                InstanceNexusState::NoVmm | InstanceNexusState::Failed
            ) && runtime.active_vmm().is_none()
                && runtime.target_vmm().is_none()
        }
        InstanceForDisks::Creating => state == InstanceNexusState::Creating,
    };
    if fits {
        return Ok(());
    }
    let why = match (when, state) {
        (InstanceForDisks::Stopped, InstanceNexusState::Vmm) => {
            "it has a VMM (running, starting or stopping); stop it first".to_string()
        }
        (InstanceForDisks::Stopped, other) => format!("it is {other}; it must be stopped"),
        (InstanceForDisks::Creating, other) => format!("it is {other}, no longer being created"),
    };
    Err(TxnError::Public(Error::conflict(format!(
        "cannot {what} instance \"{}\": {why}",
        instance.name()
    ))))
}

/// A disk having a region replaced is copied from a healthy replica: nothing attaches,
/// detaches or writes it meanwhile.
fn refuse_disk_being_repaired(disk: &Disk) -> Result<(), TxnError> {
    match disk.replacing_region() {
        Some(region) => Err(TxnError::Public(Error::conflict(format!(
            "disk \"{}\" is having its lost region {region} replaced; retry when that is done",
            disk.name()
        )))),
        None => Ok(()),
    }
}

pub(super) fn describe_disk_state(disk: &Disk) -> String {
    match disk.attached_to() {
        Some(instance) => format!("{} (instance {instance})", disk.state()),
        None => disk.state().to_string(),
    }
}
