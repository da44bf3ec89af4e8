//! The Nexus processes sharing this database: each one's registration at start and its
//! heartbeat (by the database's clock), from which the others tell that it is gone.

use super::DataStore;
use crate::cached::CacheByText;
use crate::error::public_error_from_diesel;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use halyard_common::Error;
use halyard_common::ids::NexusUuid;
use halyard_db_model::schema::nexus;
use halyard_db_model::{DbTypedUuid, NexusRecord};

impl DataStore {
    /// Records that Nexus `id` is starting as `incarnation`: a process started earlier with
    /// the same id is superseded (its next heartbeat finds the row taken).
    pub async fn nexus_register(
        &self,
        id: NexusUuid,
        incarnation: uuid::Uuid,
    ) -> Result<(), Error> {
        let conn = &mut *self.connection().await?;
        diesel::insert_into(nexus::table)
            .values((
                nexus::id.eq(DbTypedUuid(id)),
                nexus::incarnation.eq(incarnation),
                nexus::time_started.eq(diesel::dsl::now),
                nexus::time_heartbeat.eq(diesel::dsl::now),
            ))
            .on_conflict(nexus::id)
            .do_update()
            .set((
                nexus::incarnation.eq(incarnation),
                nexus::time_started.eq(diesel::dsl::now),
                nexus::time_heartbeat.eq(diesel::dsl::now),
            ))
            .cached_by_text()
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(())
    }

    /// Nexus `id` (as `incarnation`) says it is alive. Returns false if another process has
    /// since registered with the same id: this one is superseded.
    pub async fn nexus_heartbeat(
        &self,
        id: NexusUuid,
        incarnation: uuid::Uuid,
    ) -> Result<bool, Error> {
        let conn = &mut *self.connection().await?;
        let updated = diesel::update(nexus::table)
            .filter(nexus::id.eq(DbTypedUuid(id)))
            .filter(nexus::incarnation.eq(incarnation))
            .set(nexus::time_heartbeat.eq(diesel::dsl::now))
            .cached_by_text()
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(updated > 0)
    }

    /// Every Nexus that has run against this database, with how long ago (by the database's
    /// clock) each last heartbeated, most recent first.
    pub async fn nexus_list(&self) -> Result<Vec<(NexusRecord, std::time::Duration)>, Error> {
        let conn = &mut *self.connection().await?;
        let rows: Vec<(NexusRecord, f64)> = nexus::table
            .select((
                NexusRecord::as_select(),
                diesel::dsl::sql::<diesel::sql_types::Float8>(
                    "EXTRACT(EPOCH FROM (now() - time_heartbeat))::FLOAT8",
                ),
            ))
            .order(nexus::time_heartbeat.desc())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(rows
            .into_iter()
            .map(|(record, seconds)| (record, std::time::Duration::from_secs_f64(seconds.max(0.0))))
            .collect())
    }
}
