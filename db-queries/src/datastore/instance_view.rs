//! An instance as the API shows it: its row and its active VMM's, read in one statement.
//!
//! One statement reads one snapshot, so the pair is always consistent. Read one after the
//! other, a VMM retired between the two reads (retirement moves the instance's pointer in the
//! same transaction) would pair a stale instance row with the VMM it no longer points at: a
//! migration that just completed would show as `stopping`.

use super::DataStore;
use crate::error::public_error_from_diesel;
use crate::pagination::{PaginatedBy, paginate};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use halyard_common::ids::{InstanceUuid, ProjectUuid};
use halyard_common::{Error, Name, ResourceType, VmmState};
use halyard_db_model::schema::{instance, vmm};
use halyard_db_model::{DbName, DbTypedUuid, Instance, Vmm};

/// An instance and its active VMM (if it has one and its record exists yet).
#[derive(Debug, Clone)]
pub struct InstanceAndVmm {
    pub instance: Instance,
    pub active_vmm: Option<Vmm>,
}

impl InstanceAndVmm {
    /// What the user sees. An instance whose VMM record a start saga has not written yet is
    /// starting.
    pub fn run_state(&self) -> halyard_common::InstanceState {
        let nexus_state = self.instance.runtime.nexus_state();
        let vmm_state = match (&self.active_vmm, self.instance.runtime.active_vmm()) {
            (Some(vmm), _) => Some(vmm.state()),
            (None, Some(_)) => Some(VmmState::Starting),
            (None, None) => None,
        };
        halyard_common::InstanceState::derive(nexus_state, vmm_state)
    }

    /// When the state the user sees last changed.
    pub fn time_run_state_updated(&self) -> chrono::DateTime<chrono::Utc> {
        let instance = self.instance.runtime.time_state_updated;
        self.active_vmm
            .as_ref()
            .map_or(instance, |vmm| vmm.runtime.time_state_updated.max(instance))
    }
}

/// Live instances, each joined to its active VMM's row (none while a start saga has claimed
/// the instance but not yet recorded the VMM).
macro_rules! instances_with_active_vmm {
    () => {
        instance::table
            .left_join(vmm::table.on(instance::active_propolis_id.eq(vmm::id.nullable())))
            .filter(instance::time_deleted.is_null())
            .select((Instance::as_select(), Option::<Vmm>::as_select()))
    };
}

fn pair((instance, active_vmm): (Instance, Option<Vmm>)) -> InstanceAndVmm {
    InstanceAndVmm {
        instance,
        active_vmm,
    }
}

impl DataStore {
    /// A live instance by id and its active VMM, in one statement.
    pub async fn instance_fetch_with_vmm(&self, id: InstanceUuid) -> Result<InstanceAndVmm, Error> {
        let conn = &mut *self.connection().await?;
        instances_with_active_vmm!()
            .filter(instance::id.eq(DbTypedUuid(id)))
            .first::<(Instance, Option<Vmm>)>(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?
            .map(pair)
            .ok_or_else(|| super::instance::instance_not_found(id))
    }

    /// A live instance by its name within a project and its active VMM, in one statement.
    pub async fn instance_fetch_by_name_with_vmm(
        &self,
        project_id: ProjectUuid,
        name: &Name,
    ) -> Result<InstanceAndVmm, Error> {
        let conn = &mut *self.connection().await?;
        instances_with_active_vmm!()
            .filter(instance::project_id.eq(DbTypedUuid(project_id)))
            .filter(instance::name.eq(DbName(name.clone())))
            .first::<(Instance, Option<Vmm>)>(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?
            .map(pair)
            .ok_or_else(|| Error::not_found_by_name(ResourceType::Instance, name))
    }

    /// One page of a project's live instances, each with its active VMM, in one statement.
    pub async fn instance_list_with_vmm(
        &self,
        project_id: ProjectUuid,
        page: &PaginatedBy<'_>,
    ) -> Result<Vec<InstanceAndVmm>, Error> {
        let conn = &mut *self.connection().await?;
        let query = instances_with_active_vmm!()
            .filter(instance::project_id.eq(DbTypedUuid(project_id)))
            .into_boxed();
        let query = match page {
            PaginatedBy::Name(params) => paginate!(query, instance::name, params, DbName),
            PaginatedBy::Id(params) => paginate!(query, instance::id, params, |id| id),
        };
        Ok(query
            .load::<(Instance, Option<Vmm>)>(conn)
            .await
            .map_err(public_error_from_diesel)?
            .into_iter()
            .map(pair)
            .collect())
    }
}
