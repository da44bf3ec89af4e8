//! Migration records.

use super::DataStore;
use super::vmm::retire;
use crate::cached::CacheByText;
use crate::error::{is_foreign_key_violation, public_error_from_diesel};
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use halyard_common::ids::VmmUuid;
use halyard_common::ids::{GenericUuid, InstanceUuid, MigrationUuid};
use halyard_common::{Error, ResourceType};
use halyard_common::{InstanceNexusState, MigrationState, VmmState};
use halyard_db_model::DbEnum;
use halyard_db_model::schema::instance;
use halyard_db_model::schema::migration;
use halyard_db_model::{DbTypedUuid, Migration};

impl DataStore {
    /// Inserts a migration record; inserting the same one twice returns the stored record.
    pub async fn migration_insert(&self, new: Migration) -> Result<Migration, Error> {
        let conn = &mut *self.connection().await?;
        diesel::insert_into(migration::table)
            .values(&new)
            .on_conflict(migration::id)
            .do_nothing()
            .cached_by_text()
            .execute(conn)
            .await
            .map_err(|e| {
                if is_foreign_key_violation(&e) {
                    Error::invalid_request(format!(
                        "migration {} refers to an unknown instance",
                        new.id()
                    ))
                } else {
                    public_error_from_diesel(e)
                }
            })?;
        migration_fetch(conn, new.id()).await
    }

    pub async fn migration_fetch(&self, id: MigrationUuid) -> Result<Migration, Error> {
        let conn = &mut *self.connection().await?;
        migration_fetch(conn, id).await
    }

    /// An instance's migrations (every instance's if `None`), oldest first.
    pub async fn migration_list(
        &self,
        instance_id: Option<InstanceUuid>,
    ) -> Result<Vec<Migration>, Error> {
        let conn = &mut *self.connection().await?;
        let mut query = migration::table.select(Migration::as_select()).into_boxed();
        if let Some(id) = instance_id {
            query = query.filter(migration::instance_id.eq(DbTypedUuid(id)));
        }
        query
            .order((migration::time_created.asc(), migration::id.asc()))
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }
}

async fn migration_fetch(
    conn: &mut AsyncPgConnection,
    id: MigrationUuid,
) -> Result<Migration, Error> {
    migration::table
        .filter(migration::id.eq(DbTypedUuid(id)))
        .select(Migration::as_select())
        .first(conn)
        .await
        .optional()
        .map_err(public_error_from_diesel)?
        .ok_or_else(|| Error::not_found_by_id(ResourceType::Migration, id.into_untyped_uuid()))
}

impl DataStore {
    /// Marks a migration record deleted (its saga unwound). Idempotent; returns whether this
    /// call did it.
    pub async fn migration_mark_deleted(&self, id: MigrationUuid) -> Result<bool, Error> {
        let conn = &mut *self.connection().await?;
        let updated = diesel::update(migration::table)
            .filter(migration::id.eq(DbTypedUuid(id)))
            .filter(migration::time_deleted.is_null())
            .set(migration::time_deleted.eq(Utc::now()))
            .cached_by_text()
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(updated > 0)
    }

    /// Records a completed migration, in one transaction: the target becomes the instance's
    /// active VMM, its migration ids are cleared, the source is retired (destroyed, record
    /// deleted, reservation released), and the source's side of the migration is marked
    /// completed if it has not said so itself. Applies only while the instance still names
    /// this migration, source and target, so it is idempotent; returns whether it applied.
    pub async fn instance_migration_complete(
        &self,
        instance_id: InstanceUuid,
        migration_id: MigrationUuid,
        source: VmmUuid,
        target: VmmUuid,
    ) -> Result<bool, Error> {
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                let now = Utc::now();
                let updated = diesel::update(instance::table)
                    .filter(instance::id.eq(DbTypedUuid(instance_id)))
                    .filter(instance::time_deleted.is_null())
                    .filter(instance::migration_id.eq(DbTypedUuid(migration_id)))
                    .filter(instance::active_propolis_id.eq(DbTypedUuid(source)))
                    .filter(instance::target_propolis_id.eq(DbTypedUuid(target)))
                    .set((
                        instance::active_propolis_id.eq(Some(DbTypedUuid(target))),
                        instance::target_propolis_id
                            .eq(None::<DbTypedUuid<halyard_common::ids::VmmKind>>),
                        instance::migration_id
                            .eq(None::<DbTypedUuid<halyard_common::ids::MigrationKind>>),
                        instance::nexus_state.eq(DbEnum(InstanceNexusState::Vmm)),
                        instance::state_generation.eq(instance::state_generation + 1),
                        instance::time_state_updated.eq(now),
                    ))
                    .cached_by_text()
                    .execute(conn)
                    .await?;
                if updated == 0 {
                    return Ok(false);
                }
                retire(conn, source, VmmState::Destroyed).await?;
                // The target has the guest, but its own reports may not have landed yet (held
                // up by an outage, while the source's got through): a record still `creating`
                // would show the instance as starting, as if it had restarted. Until the
                // target speaks, it is still migrating in. The generation stays the sled's:
                // every report the target sends after `creating` is newer and wins.
                use halyard_db_model::schema::vmm;
                diesel::update(vmm::table)
                    .filter(vmm::id.eq(DbTypedUuid(target)))
                    .filter(vmm::state.eq(DbEnum(VmmState::Creating)))
                    .set((
                        vmm::state.eq(DbEnum(VmmState::Migrating)),
                        vmm::time_state_updated.eq(now),
                    ))
                    .cached_by_text()
                    .execute(conn)
                    .await?;
                // The target resumed the guest (the commit point), so the source's side has
                // completed too, whether or not its report ever comes: a source that lost
                // the reply to `finish` is unregistered before it learns the outcome.
                let terminal = [MigrationState::Completed, MigrationState::Failed].map(DbEnum);
                diesel::update(migration::table)
                    .filter(migration::id.eq(DbTypedUuid(migration_id)))
                    .filter(migration::source_state.ne_all(terminal))
                    .set((
                        migration::source_state.eq(DbEnum(MigrationState::Completed)),
                        migration::source_generation.eq(migration::source_generation + 1),
                        migration::time_source_updated.eq(now),
                    ))
                    .cached_by_text()
                    .execute(conn)
                    .await?;
                Ok(true)
            })
            .await
        })
        .await
    }
}

impl DataStore {
    /// Migrations into sled `sled_id` whose source has not ended its side (neither completed
    /// nor failed) and is still live: once that sled is expunged, such a source may be paused
    /// for good, asking a target that will never answer whether it resumed the guest.
    pub async fn migration_list_sources_waiting_on(
        &self,
        sled_id: halyard_common::ids::SledUuid,
    ) -> Result<Vec<Migration>, Error> {
        use halyard_db_model::schema::vmm;
        let conn = &mut *self.connection().await?;
        let (source, target) = diesel::alias!(vmm as source, vmm as target);
        let terminal = [MigrationState::Completed, MigrationState::Failed].map(DbEnum);
        migration::table
            .inner_join(source.on(source.field(vmm::id).eq(migration::source_propolis_id)))
            .inner_join(target.on(target.field(vmm::id).eq(migration::target_propolis_id)))
            .filter(target.field(vmm::sled_id).eq(DbTypedUuid(sled_id)))
            .filter(source.field(vmm::time_deleted).is_null())
            // (A migration whose saga unwound never reached its source.)
            .filter(migration::time_deleted.is_null())
            .filter(migration::source_state.ne_all(terminal))
            .order((migration::time_created.asc(), migration::id.asc()))
            .select(Migration::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }
}
