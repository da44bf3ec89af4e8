use crate::schema::project;
use crate::{DbName, DbTypedUuid};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use halyard_common::Name;
use halyard_common::ids::{ProjectKind, ProjectUuid};

/// A project: the container of instances.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = project, check_for_backend(diesel::pg::Pg))]
pub struct Project {
    pub id: DbTypedUuid<ProjectKind>,
    pub name: DbName,
    pub description: String,
    pub time_created: DateTime<Utc>,
    pub time_modified: DateTime<Utc>,
    pub time_deleted: Option<DateTime<Utc>>,
    /// Child resource generation; see dbinit.sql.
    pub rcgen: i64,
}

impl Project {
    pub fn new(id: ProjectUuid, name: Name, description: String) -> Project {
        let now = crate::now();
        Project {
            id: id.into(),
            name: name.into(),
            description,
            time_created: now,
            time_modified: now,
            time_deleted: None,
            rcgen: 1,
        }
    }

    pub fn id(&self) -> ProjectUuid {
        self.id.0
    }

    pub fn name(&self) -> &Name {
        &self.name.0
    }
}
