//! Migration records.

use super::DataStore;
use crate::error::{is_foreign_key_violation, public_error_from_diesel};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use halyard_common::ids::{GenericUuid, InstanceUuid, MigrationUuid};
use halyard_common::{Error, ResourceType};
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
