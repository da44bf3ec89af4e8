//! Projects.

use super::DataStore;
use super::network::{project_default_vpc_insert, project_vpcs_delete};
use crate::cached::CacheByText;
use crate::error::{TxnError, is_unique_violation, public_error_from_diesel};
use crate::pagination::{PaginatedBy, paginate};
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use halyard_common::ids::{GenericUuid, ProjectUuid};
use halyard_common::{Error, NameOrId, ResourceType};
use halyard_db_model::schema::{disk, instance, project, snapshot};
use halyard_db_model::{DbName, DbTypedUuid, Project};

impl DataStore {
    /// Inserts a new project. Fails with `InvalidValue` for a description that is too long or
    /// holds control characters, and with `ObjectAlreadyExists` if the name is taken.
    pub async fn project_create(&self, new: Project) -> Result<Project, Error> {
        halyard_common::validate_description(&new.description)?;
        let new = &new;
        // The project and its default VPC (with its default subnet) in one transaction.
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                let inserted = diesel::insert_into(project::table)
                    .values(new)
                    .returning(Project::as_returning())
                    .cached_by_text()
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
                project_default_vpc_insert(conn, inserted.id()).await?;
                // As it is now: the VPC's insert bumped its child generation.
                let created = project::table
                    .filter(project::id.eq(inserted.id))
                    .select(Project::as_select())
                    .first(conn)
                    .await?;
                Ok(created)
            })
            .await
        })
        .await
    }

    /// A live (not deleted) project, by name or id.
    pub async fn project_fetch(&self, which: &NameOrId) -> Result<Project, Error> {
        let conn = &mut *self.connection().await?;
        project_lookup(conn, which)
            .await
            .map_err(TxnError::into_public)
    }

    /// One page of live projects.
    pub async fn project_list(&self, page: &PaginatedBy<'_>) -> Result<Vec<Project>, Error> {
        let conn = &mut *self.connection().await?;
        let query = project::table
            .filter(project::time_deleted.is_null())
            .select(Project::as_select())
            .into_boxed();
        let query = match page {
            PaginatedBy::Name(params) => paginate!(query, project::name, params, DbName),
            PaginatedBy::Id(params) => paginate!(query, project::id, params, |id| id),
        };
        query.load(conn).await.map_err(public_error_from_diesel)
    }

    /// Every project, deleted ones too, by name (for operators: to name the project of any
    /// instance, even a deleted one's).
    pub async fn project_list_all(&self) -> Result<Vec<Project>, Error> {
        let conn = &mut *self.connection().await?;
        project::table
            .order((project::name.asc(), project::time_created.asc()))
            .select(Project::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Deletes a project, only if it holds no live instances, disks or snapshots.
    ///
    /// The emptiness check and the delete cannot race an insert: the delete is conditional on
    /// the project's child generation (`rcgen`) that the check saw, and every instance, disk
    /// or snapshot insert bumps it.
    pub async fn project_delete(&self, which: &NameOrId) -> Result<ProjectUuid, Error> {
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            let found = project_lookup(conn, which).await?;
            let instances: i64 = instance::table
                .filter(instance::project_id.eq(found.id))
                .filter(instance::time_deleted.is_null())
                .count()
                .get_result(conn)
                .await?;
            if instances > 0 {
                return Err(Error::invalid_request(format!(
                    "project \"{}\" still holds {instances} instance(s); delete them first",
                    found.name()
                ))
                .into());
            }
            let disks: i64 = disk::table
                .filter(disk::project_id.eq(found.id))
                .filter(disk::time_deleted.is_null())
                .count()
                .get_result(conn)
                .await?;
            if disks > 0 {
                return Err(Error::invalid_request(format!(
                    "project \"{}\" still holds {disks} disk(s); delete them first",
                    found.name()
                ))
                .into());
            }
            let snapshots: i64 = snapshot::table
                .filter(snapshot::project_id.eq(found.id))
                .filter(snapshot::time_deleted.is_null())
                .count()
                .get_result(conn)
                .await?;
            if snapshots > 0 {
                return Err(Error::invalid_request(format!(
                    "project \"{}\" still holds {snapshots} snapshot(s); delete them first",
                    found.name()
                ))
                .into());
            }
            // The project and its VPCs go together (its instances, and so their interfaces,
            // are gone).
            let updated = conn
                .transaction(async |conn| {
                    let updated = diesel::update(project::table)
                        .filter(project::id.eq(found.id))
                        .filter(project::time_deleted.is_null())
                        .filter(project::rcgen.eq(found.rcgen))
                        .set(project::time_deleted.eq(Utc::now()))
                        .cached_by_text()
                        .execute(conn)
                        .await?;
                    if updated > 0 {
                        project_vpcs_delete(conn, found.id()).await?;
                    }
                    Ok::<_, TxnError>(updated)
                })
                .await?;
            if updated == 0 {
                // An instance was created (or the project deleted) since we looked.
                return Err(Error::conflict(format!(
                    "project \"{}\" changed while it was being deleted; retry",
                    found.name()
                ))
                .into());
            }
            Ok(found.id())
        })
        .await
    }
}

/// Looks up a live project inside a transaction or on a plain connection.
pub(crate) async fn project_lookup(
    conn: &mut AsyncPgConnection,
    which: &NameOrId,
) -> Result<Project, TxnError> {
    let query = project::table
        .filter(project::time_deleted.is_null())
        .into_boxed();
    let query = match which {
        NameOrId::Id(id) => query.filter(project::id.eq(*id)),
        NameOrId::Name(name) => query.filter(project::name.eq(DbName(name.clone()))),
    };
    let found = query
        .select(Project::as_select())
        .first(conn)
        .await
        .optional()?;
    found.ok_or_else(|| {
        TxnError::Public(match which {
            NameOrId::Id(id) => Error::not_found_by_id(ResourceType::Project, *id),
            NameOrId::Name(name) => Error::not_found_by_name(ResourceType::Project, name),
        })
    })
}

/// Bumps a live project's child generation, inside the transaction that adds a child to it.
/// Fails with `ObjectNotFound` if the project is gone.
pub(crate) async fn project_bump_rcgen(
    conn: &mut AsyncPgConnection,
    id: ProjectUuid,
) -> Result<(), TxnError> {
    let updated = diesel::update(project::table)
        .filter(project::id.eq(DbTypedUuid(id)))
        .filter(project::time_deleted.is_null())
        .set(project::rcgen.eq(project::rcgen + 1))
        .cached_by_text()
        .execute(conn)
        .await?;
    if updated == 0 {
        return Err(Error::not_found_by_id(ResourceType::Project, id.into_untyped_uuid()).into());
    }
    Ok(())
}
