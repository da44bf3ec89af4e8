//! A Nexus process as the database knows it: its id, this run of it, and its heartbeat.

use crate::DbTypedUuid;
use crate::schema::nexus;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use halyard_common::ids::NexusKind;

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = nexus, check_for_backend(diesel::pg::Pg))]
pub struct NexusRecord {
    pub id: DbTypedUuid<NexusKind>,
    /// Random per process start (the latest process started with this id).
    pub incarnation: uuid::Uuid,
    pub time_started: DateTime<Utc>,
    /// When it last said it was alive, by the database's clock.
    pub time_heartbeat: DateTime<Utc>,
}
