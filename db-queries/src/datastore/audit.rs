//! The audit log: every mutating external request, who made it and how it ended.

use super::DataStore;
use crate::error::public_error_from_diesel;
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use halyard_common::Error;
use halyard_common::ids::AuditLogEntryUuid;
use halyard_db_model::schema::audit_log;
use halyard_db_model::{AuditLogEntry, DbTypedUuid};

impl DataStore {
    /// Records a request as it starts (or, with `http_status` set, one that already ended,
    /// e.g. refused before it was authenticated).
    pub async fn audit_log_insert(&self, entry: &AuditLogEntry) -> Result<(), Error> {
        let conn = &mut *self.connection().await?;
        diesel::insert_into(audit_log::table)
            .values(entry)
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(())
    }

    /// Records how a started request ended.
    pub async fn audit_log_complete(
        &self,
        id: AuditLogEntryUuid,
        http_status: u16,
        error_code: Option<String>,
    ) -> Result<(), Error> {
        let conn = &mut *self.connection().await?;
        diesel::update(audit_log::table)
            .filter(audit_log::id.eq(DbTypedUuid(id)))
            .set((
                audit_log::time_completed.eq(Some(Utc::now())),
                audit_log::http_status.eq(Some(i32::from(http_status))),
                audit_log::error_code.eq(error_code),
            ))
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(())
    }

    /// The newest `limit` entries, oldest of them first (so the newest is last).
    pub async fn audit_log_list(&self, limit: i64) -> Result<Vec<AuditLogEntry>, Error> {
        let conn = &mut *self.connection().await?;
        let mut newest: Vec<AuditLogEntry> = audit_log::table
            .order((audit_log::time_started.desc(), audit_log::id.desc()))
            .limit(limit)
            .select(AuditLogEntry::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)?;
        newest.reverse();
        Ok(newest)
    }
}
