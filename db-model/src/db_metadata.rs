use crate::schema::db_metadata;
use chrono::{DateTime, Utc};
use diesel::prelude::*;

/// The single row that records the database's schema version.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = db_metadata, check_for_backend(diesel::pg::Pg))]
pub struct DbMetadata {
    pub singleton: bool,
    pub version: String,
    pub time_created: DateTime<Utc>,
    pub time_modified: DateTime<Utc>,
}
