//! The schema version check Nexus runs before it starts, and the upgrade that applies
//! migration steps.

use crate::DataStore;
use crate::cached::CacheByText;
use crate::error::public_error_from_diesel;
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use halyard_common::Error;
use halyard_db_model::DbMetadata;
use halyard_db_model::schema::db_metadata;
use halyard_schema::{SCHEMA_VERSION, SchemaVersion};
use slog::info;

#[derive(Debug, thiserror::Error)]
pub enum SchemaVersionError {
    #[error(
        "the database's schema version is {found}, but this build of Halyard requires \
         {expected}; upgrade the database with the steps in schema/migrations/ \
         (DataStore::apply_schema_migrations) or run the Halyard release that matches it"
    )]
    Mismatch {
        found: SchemaVersion,
        expected: SchemaVersion,
    },

    #[error(
        "the database has no schema version (db_metadata is missing or empty); initialise \
         it with schema/dbinit.sql"
    )]
    NotInitialized,

    #[error("the database records an unreadable schema version: {0}")]
    Unreadable(String),

    #[error("cannot read the schema version: {0}")]
    Database(#[from] Error),
}

impl DataStore {
    /// The schema version recorded in the database, or `None` for a database without one.
    pub async fn schema_version(&self) -> Result<Option<SchemaVersion>, SchemaVersionError> {
        let conn = &mut *self.connection().await?;
        let exists: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "EXISTS (SELECT 1 FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = 'db_metadata')",
        ))
        .get_result(conn)
        .await
        .map_err(public_error_from_diesel)?;
        if !exists {
            return Ok(None);
        }
        let row: Option<DbMetadata> = db_metadata::table
            .select(DbMetadata::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?;
        row.map(|row| {
            row.version
                .parse()
                .map_err(|e: halyard_schema::BadSchemaVersion| {
                    SchemaVersionError::Unreadable(e.to_string())
                })
        })
        .transpose()
    }

    /// Succeeds only if the database is at exactly the schema version this build requires.
    pub async fn check_schema_version(&self) -> Result<(), SchemaVersionError> {
        self.check_schema_version_is(SCHEMA_VERSION).await
    }

    /// Succeeds only if the database is at exactly `expected`.
    pub async fn check_schema_version_is(
        &self,
        expected: SchemaVersion,
    ) -> Result<(), SchemaVersionError> {
        match self.schema_version().await? {
            None => Err(SchemaVersionError::NotInitialized),
            Some(found) if found == expected => Ok(()),
            Some(found) => Err(SchemaVersionError::Mismatch { found, expected }),
        }
    }

    /// Upgrades the database to [`SCHEMA_VERSION`] by applying, in order, the steps of every
    /// migration newer than its current version (every migration, for an empty database).
    /// Each step runs in its own transaction, and the recorded version moves forward after
    /// each version's last step, so an interrupted upgrade resumes where it stopped.
    pub async fn apply_schema_migrations(&self) -> Result<SchemaVersion, SchemaVersionError> {
        let current = self.schema_version().await?;
        if let Some(found) = current
            && found > SCHEMA_VERSION
        {
            return Err(SchemaVersionError::Mismatch {
                found,
                expected: SCHEMA_VERSION,
            });
        }
        let migrations = match current {
            Some(from) => halyard_schema::migrations_after(from),
            None => halyard_schema::all_migrations(),
        };
        let conn = &mut *self.connection().await?;
        for migration in migrations {
            info!(self.log(), "applying schema migration";
                "version" => %migration.version, "steps" => migration.steps.len());
            for step in &migration.steps {
                conn.transaction::<_, diesel::result::Error, _>(async |conn| {
                    conn.batch_execute(step.sql).await
                })
                .await
                .map_err(|e| {
                    Error::internal(format!(
                        "schema migration {} {} failed: {e}",
                        migration.version, step.file
                    ))
                })?;
            }
            diesel::update(db_metadata::table)
                .set((
                    db_metadata::version.eq(migration.version.to_string()),
                    db_metadata::time_modified.eq(Utc::now()),
                ))
                .cached_by_text()
                .execute(conn)
                .await
                .map_err(public_error_from_diesel)?;
        }
        Ok(SCHEMA_VERSION)
    }
}
