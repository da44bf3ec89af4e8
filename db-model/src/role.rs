//! Role assignments: who holds which role on the fleet or on a project.

use crate::schema::role_assignment;
use diesel::prelude::*;

/// The fleet's id in `role_assignment.resource_id` (there is one fleet).
pub const FLEET_ID: uuid::Uuid = uuid::Uuid::from_u128(0x001de000_f1ee_4000_8000_000000000000);

pub const RESOURCE_TYPE_FLEET: &str = "fleet";
pub const RESOURCE_TYPE_PROJECT: &str = "project";
/// The one kind of identity roles are granted to today (Oxide's `silo_user`).
pub const IDENTITY_TYPE_SILO_USER: &str = "silo_user";

/// One role held by one identity on one resource. Role names are checked by the table
/// (`admin`, `viewer` on the fleet; `admin`, `collaborator`, `viewer` on a project).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = role_assignment, check_for_backend(diesel::pg::Pg))]
pub struct RoleAssignment {
    pub resource_type: String,
    pub resource_id: uuid::Uuid,
    pub identity_type: String,
    pub identity_id: uuid::Uuid,
    pub role_name: String,
}
