//! Projects: the containers instances live in.

use super::Nexus;
use halyard_common::ids::ProjectUuid;
use halyard_common::{Error, Name, NameOrId};
use halyard_db_model::Project;
use halyard_db_queries::PaginatedBy;

impl Nexus {
    /// Creates a project. A description that is too long or holds control characters (NUL,
    /// escapes) is refused with `InvalidValue` before anything is written.
    pub async fn project_create(&self, name: Name, description: String) -> Result<Project, Error> {
        halyard_common::validate_description(&description)?;
        self.datastore()
            .project_create(Project::new(ProjectUuid::new_v4(), name, description))
            .await
    }

    pub async fn project_view(&self, project: &NameOrId) -> Result<Project, Error> {
        self.datastore().project_fetch(project).await
    }

    pub async fn project_list(&self, page: &PaginatedBy<'_>) -> Result<Vec<Project>, Error> {
        self.datastore().project_list(page).await
    }

    pub async fn project_delete(&self, project: &NameOrId) -> Result<(), Error> {
        self.datastore().project_delete(project).await.map(|_| ())
    }
}
