//! Role assignments: the fleet's and each project's (a project's are its policy).
//!
//! These queries store and read roles; what a role allows is decided in Nexus (`authz`).

use super::DataStore;
use super::network::project_default_vpc_insert;
use crate::error::{TxnError, is_unique_violation, public_error_from_diesel};
use crate::pagination::{PaginatedBy, paginate};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use halyard_common::ids::{GenericUuid, ProjectUuid, UserUuid};
use halyard_common::{Error, ResourceType};
use halyard_db_model::schema::{project, role_assignment, silo_user};
use halyard_db_model::{
    DbName, FLEET_ID, IDENTITY_TYPE_SILO_USER, Project, RESOURCE_TYPE_FLEET, RESOURCE_TYPE_PROJECT,
    RoleAssignment,
};

fn user_role(
    resource_type: &str,
    resource_id: uuid::Uuid,
    user: UserUuid,
    role: &str,
) -> RoleAssignment {
    RoleAssignment {
        resource_type: resource_type.to_string(),
        resource_id,
        identity_type: IDENTITY_TYPE_SILO_USER.to_string(),
        identity_id: user.into_untyped_uuid(),
        role_name: role.to_string(),
    }
}

impl DataStore {
    /// Every role `user` holds, on the fleet and on live projects' (the rows of deleted
    /// projects are left behind and never read).
    pub async fn role_assignments_of_user(
        &self,
        user: UserUuid,
    ) -> Result<Vec<RoleAssignment>, Error> {
        let conn = &mut *self.connection().await?;
        role_assignment::table
            .filter(role_assignment::identity_type.eq(IDENTITY_TYPE_SILO_USER))
            .filter(role_assignment::identity_id.eq(user.into_untyped_uuid()))
            .select(RoleAssignment::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// The roles `user` holds on the fleet and, given `project`, on that project, in one
    /// statement (every authorization asks both): `(fleet roles, project roles)`.
    pub async fn roles_of_user(
        &self,
        user: UserUuid,
        project: Option<ProjectUuid>,
    ) -> Result<(Vec<String>, Vec<String>), Error> {
        let conn = &mut *self.connection().await?;
        let on_fleet = role_assignment::resource_type
            .eq(RESOURCE_TYPE_FLEET)
            .and(role_assignment::resource_id.eq(FLEET_ID));
        let mut query = role_assignment::table
            .filter(role_assignment::identity_type.eq(IDENTITY_TYPE_SILO_USER))
            .filter(role_assignment::identity_id.eq(user.into_untyped_uuid()))
            .select((role_assignment::resource_type, role_assignment::role_name))
            .into_boxed();
        query = match project {
            Some(project) => query.filter(
                on_fleet.or(role_assignment::resource_type
                    .eq(RESOURCE_TYPE_PROJECT)
                    .and(role_assignment::resource_id.eq(project.into_untyped_uuid()))),
            ),
            None => query.filter(on_fleet),
        };
        let rows: Vec<(String, String)> =
            query.load(conn).await.map_err(public_error_from_diesel)?;
        let (fleet, project): (Vec<_>, Vec<_>) = rows
            .into_iter()
            .partition(|(resource_type, _)| resource_type == RESOURCE_TYPE_FLEET);
        Ok((
            fleet.into_iter().map(|(_, role)| role).collect(),
            project.into_iter().map(|(_, role)| role).collect(),
        ))
    }

    /// Grants `user` a fleet role (`admin` or `viewer`); granting one held already is a no-op.
    pub async fn fleet_role_grant(&self, user: UserUuid, role: &str) -> Result<(), Error> {
        self.user_fetch(user).await?;
        let conn = &mut *self.connection().await?;
        diesel::insert_into(role_assignment::table)
            .values(&user_role(RESOURCE_TYPE_FLEET, FLEET_ID, user, role))
            .on_conflict_do_nothing()
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(())
    }

    /// Takes a fleet role from `user`. Returns whether the user held it.
    pub async fn fleet_role_revoke(&self, user: UserUuid, role: &str) -> Result<bool, Error> {
        let conn = &mut *self.connection().await?;
        let deleted = diesel::delete(role_assignment::table)
            .filter(role_assignment::resource_type.eq(RESOURCE_TYPE_FLEET))
            .filter(role_assignment::identity_type.eq(IDENTITY_TYPE_SILO_USER))
            .filter(role_assignment::identity_id.eq(user.into_untyped_uuid()))
            .filter(role_assignment::role_name.eq(role))
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(deleted > 0)
    }

    /// Every fleet role assignment.
    pub async fn fleet_role_list(&self) -> Result<Vec<RoleAssignment>, Error> {
        let conn = &mut *self.connection().await?;
        role_assignment::table
            .filter(role_assignment::resource_type.eq(RESOURCE_TYPE_FLEET))
            .order((role_assignment::identity_id, role_assignment::role_name))
            .select(RoleAssignment::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Inserts a project and makes `admin` its admin, in one transaction (a project is never
    /// without the admin who created it). Errors as [`DataStore::project_create`].
    pub async fn project_create_with_admin(
        &self,
        new: Project,
        admin: UserUuid,
    ) -> Result<Project, Error> {
        halyard_common::validate_description(&new.description)?;
        let new = &new;
        // The project, its admin and its default VPC (with its default subnet) in one
        // transaction, run again on a serialization conflict (a VNI taken meanwhile).
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                let created = diesel::insert_into(project::table)
                    .values(new)
                    .returning(Project::as_returning())
                    .get_result(conn)
                    .await
                    .map_err(|e| {
                        if is_unique_violation(&e) {
                            TxnError::Public(Error::ObjectAlreadyExists {
                                type_name: ResourceType::Project,
                                name: new.name().to_string(),
                            })
                        } else {
                            TxnError::Database(e)
                        }
                    })?;
                diesel::insert_into(role_assignment::table)
                    .values(&user_role(
                        RESOURCE_TYPE_PROJECT,
                        created.id().into_untyped_uuid(),
                        admin,
                        "admin",
                    ))
                    .execute(conn)
                    .await?;
                project_default_vpc_insert(conn, created.id()).await?;
                // As it is now: the VPC's insert bumped its child generation.
                let created = project::table
                    .filter(project::id.eq(created.id))
                    .select(Project::as_select())
                    .first(conn)
                    .await?;
                Ok::<_, TxnError>(created)
            })
            .await
        })
        .await
    }

    /// One page of the live projects on which `user` holds any role (all live projects when
    /// `user` is `None`: a fleet role sees every project).
    pub async fn project_list_visible(
        &self,
        page: &PaginatedBy<'_>,
        user: Option<UserUuid>,
    ) -> Result<Vec<Project>, Error> {
        let conn = &mut *self.connection().await?;
        let mut query = project::table
            .filter(project::time_deleted.is_null())
            .select(Project::as_select())
            .into_boxed();
        if let Some(user) = user {
            let visible = role_assignment::table
                .filter(role_assignment::resource_type.eq(RESOURCE_TYPE_PROJECT))
                .filter(role_assignment::identity_type.eq(IDENTITY_TYPE_SILO_USER))
                .filter(role_assignment::identity_id.eq(user.into_untyped_uuid()))
                .select(role_assignment::resource_id);
            query = query.filter(project::id.eq_any(visible));
        }
        let query = match page {
            PaginatedBy::Name(params) => paginate!(query, project::name, params, DbName),
            PaginatedBy::Id(params) => paginate!(query, project::id, params, |id| id),
        };
        query.load(conn).await.map_err(public_error_from_diesel)
    }

    /// A project's policy: every role assignment on it, by identity then role.
    pub async fn project_policy_fetch(
        &self,
        project: ProjectUuid,
    ) -> Result<Vec<RoleAssignment>, Error> {
        let conn = &mut *self.connection().await?;
        role_assignment::table
            .filter(role_assignment::resource_type.eq(RESOURCE_TYPE_PROJECT))
            .filter(role_assignment::resource_id.eq(project.into_untyped_uuid()))
            .order((role_assignment::identity_id, role_assignment::role_name))
            .select(RoleAssignment::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Replaces a project's policy with `assignments` (user, role) in one transaction. Every
    /// user must be a live user (else `InvalidRequest` naming it, and nothing changes); role
    /// names are checked by the caller (and the table).
    pub async fn project_policy_replace(
        &self,
        project: ProjectUuid,
        assignments: &[(UserUuid, String)],
    ) -> Result<Vec<RoleAssignment>, Error> {
        let rows: Vec<RoleAssignment> = assignments
            .iter()
            .map(|(user, role)| {
                user_role(
                    RESOURCE_TYPE_PROJECT,
                    project.into_untyped_uuid(),
                    *user,
                    role,
                )
            })
            .collect();
        let conn = &mut *self.connection().await?;
        conn.transaction(async |conn| {
            for (user, _) in assignments {
                let live: i64 = silo_user::table
                    .filter(silo_user::id.eq(user.into_untyped_uuid()))
                    .filter(silo_user::time_deleted.is_null())
                    .count()
                    .get_result(conn)
                    .await?;
                if live == 0 {
                    return Err(TxnError::Public(Error::invalid_request(format!(
                        "no user with id {user}"
                    ))));
                }
            }
            diesel::delete(role_assignment::table)
                .filter(role_assignment::resource_type.eq(RESOURCE_TYPE_PROJECT))
                .filter(role_assignment::resource_id.eq(project.into_untyped_uuid()))
                .execute(conn)
                .await?;
            diesel::insert_into(role_assignment::table)
                .values(&rows)
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
            Ok(())
        })
        .await
        .map_err(TxnError::into_public)?;
        self.project_policy_fetch(project).await
    }
}
