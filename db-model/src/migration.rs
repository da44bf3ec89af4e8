use crate::schema::migration;
use crate::{DbEnum, DbGeneration, DbTypedUuid};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use halyard_common::ids::{
    InstanceKind, InstanceUuid, MigrationKind, MigrationUuid, VmmKind, VmmUuid,
};
use halyard_common::{Generation, MigrationState};

/// A live migration of an instance from a source VMM to a target VMM. Each side's state is
/// reported by that side's sled agent, with its own generation.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = migration, check_for_backend(diesel::pg::Pg))]
pub struct Migration {
    pub id: DbTypedUuid<MigrationKind>,
    pub instance_id: DbTypedUuid<InstanceKind>,
    pub source_propolis_id: DbTypedUuid<VmmKind>,
    pub target_propolis_id: DbTypedUuid<VmmKind>,
    pub source_state: DbEnum<MigrationState>,
    pub source_generation: DbGeneration,
    pub time_source_updated: Option<DateTime<Utc>>,
    pub target_state: DbEnum<MigrationState>,
    pub target_generation: DbGeneration,
    pub time_target_updated: Option<DateTime<Utc>>,
    pub time_created: DateTime<Utc>,
    pub time_deleted: Option<DateTime<Utc>>,
}

impl Migration {
    /// A new migration, both sides `pending` at generation 1.
    pub fn new(
        id: MigrationUuid,
        instance_id: InstanceUuid,
        source: VmmUuid,
        target: VmmUuid,
    ) -> Migration {
        Migration {
            id: id.into(),
            instance_id: instance_id.into(),
            source_propolis_id: source.into(),
            target_propolis_id: target.into(),
            source_state: MigrationState::Pending.into(),
            source_generation: Generation::new().into(),
            time_source_updated: None,
            target_state: MigrationState::Pending.into(),
            target_generation: Generation::new().into(),
            time_target_updated: None,
            time_created: crate::now(),
            time_deleted: None,
        }
    }

    pub fn id(&self) -> MigrationUuid {
        self.id.0
    }

    pub fn source_state(&self) -> MigrationState {
        self.source_state.0
    }

    pub fn target_state(&self) -> MigrationState {
        self.target_state.0
    }
}
