//! Authorized lookups: how the external API finds a resource for an actor. Each looks the
//! resource up, learns the actor's roles, and asks `authz::decide` (through
//! [`Nexus::authorize`]) before it returns the record, so a handler holds only records its
//! caller may act on. A resource the caller may not read is reported exactly as a missing one.

use super::Nexus;
use crate::authn::{Actor, OpContext};
use crate::authz::{self, Action, FleetRole, ProjectRole, Resource, Roles};
use halyard_common::ids::{
    DiskUuid, GenericUuid, InstanceUuid, NetworkInterfaceUuid, ProjectUuid, SnapshotUuid, UserUuid,
    VpcSubnetUuid, VpcUuid,
};
use halyard_common::{Error, LookupType, Name, NameOrId};
use halyard_db_model::{Disk, NetworkInterface, Project, RoleAssignment, Snapshot, Vpc, VpcSubnet};
use halyard_db_queries::InstanceAndVmm;
use halyard_db_queries::PaginatedBy;

fn lookup_type(which: &NameOrId) -> LookupType {
    match which {
        NameOrId::Id(id) => LookupType::ById(*id),
        NameOrId::Name(name) => LookupType::ByName(name.to_string()),
    }
}

fn parse_roles<R: std::str::FromStr<Err = String> + Ord>(
    names: Vec<String>,
) -> Result<std::collections::BTreeSet<R>, Error> {
    names
        .into_iter()
        .map(|name| name.parse().map_err(Error::internal))
        .collect()
}

impl Nexus {
    /// The roles of `opctx`'s actor on the fleet and on `project`.
    async fn roles(&self, opctx: &OpContext, project: Option<ProjectUuid>) -> Result<Roles, Error> {
        let Actor::User { user_id, .. } = opctx.actor else {
            return Ok(Roles::default());
        };
        let (fleet, project) = self.datastore().roles_of_user(user_id, project).await?;
        Ok(Roles {
            fleet: parse_roles(fleet)?,
            project: parse_roles(project)?,
        })
    }

    /// Whether `opctx`'s actor may do `action` on `resource`: `Ok`, `Forbidden` (it may read
    /// the resource), or the resource's own not-found error.
    pub async fn authorize(
        &self,
        opctx: &OpContext,
        resource: &Resource,
        action: Action,
    ) -> Result<(), Error> {
        let roles = self.roles(opctx, resource.project()).await?;
        authz::check(&opctx.actor, &roles, resource, action)
    }

    /// The fleet roles of the acting user (none for other actors).
    pub async fn fleet_roles(&self, opctx: &OpContext) -> Result<Vec<FleetRole>, Error> {
        Ok(self.roles(opctx, None).await?.fleet.into_iter().collect())
    }

    /// A live project the actor may do `action` on.
    pub async fn project_lookup_authorized(
        &self,
        opctx: &OpContext,
        which: &NameOrId,
        action: Action,
    ) -> Result<Project, Error> {
        let project = self.datastore().project_fetch(which).await?;
        let resource = Resource::Project(authz::Project {
            id: project.id(),
            lookup: lookup_type(which),
        });
        self.authorize(opctx, &resource, action).await?;
        Ok(project)
    }

    /// A live instance the actor may do `action` on: by id (then no project may be given),
    /// or by name within a project (which the actor must be able to read).
    pub async fn instance_lookup_authorized(
        &self,
        opctx: &OpContext,
        project: Option<&NameOrId>,
        instance: &NameOrId,
        action: Action,
    ) -> Result<InstanceAndVmm, Error> {
        let found = match (instance, project) {
            (NameOrId::Id(id), None) => {
                self.datastore()
                    .instance_fetch_with_vmm(InstanceUuid::from_untyped_uuid(*id))
                    .await?
            }
            (NameOrId::Id(_), Some(_)) | (NameOrId::Name(_), None) => {
                // The same 400 as the unchecked lookup gives.
                return self.instance_lookup(project, instance).await;
            }
            (NameOrId::Name(name), Some(project)) => {
                let project = self
                    .project_lookup_authorized(opctx, project, Action::Read)
                    .await?;
                self.datastore()
                    .instance_fetch_by_name_with_vmm(project.id(), name)
                    .await?
            }
        };
        let resource = Resource::Instance(authz::Instance {
            project: found.instance.project_id(),
            id: found.instance.id(),
            lookup: lookup_type(instance),
        });
        self.authorize(opctx, &resource, action).await?;
        Ok(found)
    }

    /// A live disk the actor may do `action` on: by id (then no project may be given), or by
    /// name within a project (which the actor must be able to read).
    pub async fn disk_lookup_authorized(
        &self,
        opctx: &OpContext,
        project: Option<&NameOrId>,
        disk: &NameOrId,
        action: Action,
    ) -> Result<Disk, Error> {
        let found = match (disk, project) {
            (NameOrId::Id(id), None) => {
                self.datastore()
                    .disk_fetch(DiskUuid::from_untyped_uuid(*id))
                    .await?
            }
            (NameOrId::Id(_), Some(_)) | (NameOrId::Name(_), None) => {
                // The same 400 as the unchecked lookup gives.
                return self.disk_lookup(project, disk).await;
            }
            (NameOrId::Name(name), Some(project)) => {
                let project = self
                    .project_lookup_authorized(opctx, project, Action::Read)
                    .await?;
                self.datastore()
                    .disk_fetch_by_name(project.id(), name)
                    .await?
            }
        };
        let resource = Resource::Disk(authz::Disk {
            project: found.project_id(),
            id: found.id(),
            lookup: lookup_type(disk),
        });
        self.authorize(opctx, &resource, action).await?;
        Ok(found)
    }

    /// A live snapshot the actor may do `action` on: by id (then no project may be given), or
    /// by name within a project (which the actor must be able to read).
    pub async fn snapshot_lookup_authorized(
        &self,
        opctx: &OpContext,
        project: Option<&NameOrId>,
        snapshot: &NameOrId,
        action: Action,
    ) -> Result<Snapshot, Error> {
        let found = match (snapshot, project) {
            (NameOrId::Id(id), None) => {
                self.datastore()
                    .snapshot_fetch(SnapshotUuid::from_untyped_uuid(*id))
                    .await?
            }
            (NameOrId::Id(_), Some(_)) => {
                return Err(Error::invalid_request(
                    "when the snapshot is given by id, do not also give a project",
                ));
            }
            (NameOrId::Name(_), None) => {
                return Err(Error::invalid_request(
                    "when the snapshot is given by name, its project must be given too \
                     (?project=<name or id>)",
                ));
            }
            (NameOrId::Name(name), Some(project)) => {
                let project = self
                    .project_lookup_authorized(opctx, project, Action::Read)
                    .await?;
                self.datastore()
                    .snapshot_fetch_by_name(project.id(), name)
                    .await?
            }
        };
        let resource = Resource::Snapshot(authz::Snapshot {
            project: found.project_id(),
            id: found.id(),
            lookup: lookup_type(snapshot),
        });
        self.authorize(opctx, &resource, action).await?;
        Ok(found)
    }

    /// A live VPC the actor may do `action` on: by id (then no project may be given), or by
    /// name within a project (which the actor must be able to read).
    pub async fn vpc_lookup_authorized(
        &self,
        opctx: &OpContext,
        project: Option<&NameOrId>,
        vpc: &NameOrId,
        action: Action,
    ) -> Result<Vpc, Error> {
        let found = match (vpc, project) {
            (NameOrId::Id(id), None) => {
                self.datastore()
                    .vpc_fetch_by_id(VpcUuid::from_untyped_uuid(*id))
                    .await?
            }
            (NameOrId::Id(_), Some(_)) => {
                return Err(Error::invalid_request(
                    "when the VPC is given by id, do not also give a project",
                ));
            }
            (NameOrId::Name(_), None) => {
                return Err(Error::invalid_request(
                    "when the VPC is given by name, its project must be given too \
                     (?project=<name or id>)",
                ));
            }
            (NameOrId::Name(_), Some(project)) => {
                let project = self
                    .project_lookup_authorized(opctx, project, Action::Read)
                    .await?;
                self.datastore().vpc_fetch(project.id(), vpc).await?
            }
        };
        let resource = Resource::Vpc(authz::Vpc {
            project: found.project_id(),
            id: found.id(),
            lookup: lookup_type(vpc),
        });
        self.authorize(opctx, &resource, action).await?;
        Ok(found)
    }

    /// A live subnet the actor may do `action` on, with its VPC: by id (then neither a VPC
    /// nor a project may be given), or by name within a VPC (named as for
    /// [`Nexus::vpc_lookup_authorized`], and readable by the actor).
    pub async fn vpc_subnet_lookup_authorized(
        &self,
        opctx: &OpContext,
        project: Option<&NameOrId>,
        vpc: Option<&NameOrId>,
        subnet: &NameOrId,
        action: Action,
    ) -> Result<(VpcSubnet, Vpc), Error> {
        let (found, vpc) = match (subnet, vpc) {
            (NameOrId::Id(id), None) if project.is_none() => {
                let found = self
                    .datastore()
                    .vpc_subnet_fetch_by_id(VpcSubnetUuid::from_untyped_uuid(*id))
                    .await?;
                let vpc = self.datastore().vpc_fetch_by_id(found.vpc_id()).await?;
                (found, vpc)
            }
            (NameOrId::Id(_), _) => {
                return Err(Error::invalid_request(
                    "when the subnet is given by id, do not also give a VPC or a project",
                ));
            }
            (NameOrId::Name(_), None) => {
                return Err(Error::invalid_request(
                    "when the subnet is given by name, its VPC must be given too \
                     (?vpc=<name or id>, and ?project= when the VPC is a name)",
                ));
            }
            (NameOrId::Name(_), Some(vpc)) => {
                let vpc = self
                    .vpc_lookup_authorized(opctx, project, vpc, Action::Read)
                    .await?;
                let found = self.datastore().vpc_subnet_fetch(vpc.id(), subnet).await?;
                (found, vpc)
            }
        };
        let resource = Resource::VpcSubnet(authz::VpcSubnet {
            project: vpc.project_id(),
            id: found.id(),
            lookup: lookup_type(subnet),
        });
        self.authorize(opctx, &resource, action).await?;
        Ok((found, vpc))
    }

    /// A live network interface the actor may do `action` on: by id (then neither an
    /// instance nor a project may be given), or by name on an instance (named as for
    /// [`Nexus::instance_lookup_authorized`], and readable by the actor).
    pub async fn network_interface_lookup_authorized(
        &self,
        opctx: &OpContext,
        project: Option<&NameOrId>,
        instance: Option<&NameOrId>,
        interface: &NameOrId,
        action: Action,
    ) -> Result<NetworkInterface, Error> {
        let (found, project_id) = match (interface, instance) {
            (NameOrId::Id(id), None) if project.is_none() => {
                let found = self
                    .datastore()
                    .network_interface_fetch(NetworkInterfaceUuid::from_untyped_uuid(*id))
                    .await?;
                let vpc = self.datastore().vpc_fetch_by_id(found.vpc_id()).await?;
                (found, vpc.project_id())
            }
            (NameOrId::Id(_), _) => {
                return Err(Error::invalid_request(
                    "when the network interface is given by id, do not also give an instance \
                     or a project",
                ));
            }
            (NameOrId::Name(_), None) => {
                return Err(Error::invalid_request(
                    "when the network interface is given by name, its instance must be given \
                     too (?instance=<name or id>, and ?project= when the instance is a name)",
                ));
            }
            (NameOrId::Name(_), Some(instance)) => {
                let instance = self
                    .instance_lookup_authorized(opctx, project, instance, Action::Read)
                    .await?;
                let found = self
                    .datastore()
                    .network_interface_fetch_on(instance.instance.id(), interface)
                    .await?;
                (found, instance.instance.project_id())
            }
        };
        let resource = Resource::NetworkInterface(authz::NetworkInterface {
            project: project_id,
            id: found.id(),
            lookup: lookup_type(interface),
        });
        self.authorize(opctx, &resource, action).await?;
        Ok(found)
    }

    /// Checks `action` on the fleet (the sleds, `/v1/system`).
    pub async fn fleet_authorize(&self, opctx: &OpContext, action: Action) -> Result<(), Error> {
        self.authorize(opctx, &Resource::Fleet(authz::Fleet), action)
            .await
    }

    /// Creates a project in the acting user's silo, with that user as its admin.
    pub async fn project_create_authorized(
        &self,
        opctx: &OpContext,
        name: Name,
        description: String,
    ) -> Result<Project, Error> {
        let (user_id, silo_id) = opctx
            .user()
            .ok_or_else(|| Error::internal("a project is created by a user"))?;
        self.authorize(
            opctx,
            &Resource::Silo(authz::Silo { id: silo_id }),
            Action::CreateChild,
        )
        .await?;
        self.datastore()
            .project_create_with_admin(
                Project::new(ProjectUuid::new_v4(), name, description),
                user_id,
            )
            .await
    }

    /// One page of the projects the actor may read: every project for a fleet role, else
    /// those on which the user holds a role.
    pub async fn project_list_authorized(
        &self,
        opctx: &OpContext,
        page: &PaginatedBy<'_>,
    ) -> Result<Vec<Project>, Error> {
        let (user_id, silo_id) = opctx
            .user()
            .ok_or_else(|| Error::internal("projects are listed for a user"))?;
        self.authorize(
            opctx,
            &Resource::Silo(authz::Silo { id: silo_id }),
            Action::ListChildren,
        )
        .await?;
        let visible_to = if self.fleet_roles(opctx).await?.is_empty() {
            Some(user_id)
        } else {
            None
        };
        self.datastore()
            .project_list_visible(page, visible_to)
            .await
    }

    /// A project's policy, for an actor who may read it (its viewers).
    pub async fn project_policy_view(
        &self,
        opctx: &OpContext,
        which: &NameOrId,
    ) -> Result<Vec<(UserUuid, ProjectRole)>, Error> {
        let project = self
            .project_policy_authorized(opctx, which, Action::ReadPolicy)
            .await?;
        policy_rows(self.datastore().project_policy_fetch(project).await?)
    }

    /// Replaces a project's policy, for an actor who may change it (its admins).
    pub async fn project_policy_update(
        &self,
        opctx: &OpContext,
        which: &NameOrId,
        assignments: Vec<(UserUuid, ProjectRole)>,
    ) -> Result<Vec<(UserUuid, ProjectRole)>, Error> {
        let project = self
            .project_policy_authorized(opctx, which, Action::ModifyPolicy)
            .await?;
        let assignments: Vec<(UserUuid, String)> = assignments
            .into_iter()
            .map(|(user, role)| (user, role.name().to_string()))
            .collect();
        policy_rows(
            self.datastore()
                .project_policy_replace(project, &assignments)
                .await?,
        )
    }

    async fn project_policy_authorized(
        &self,
        opctx: &OpContext,
        which: &NameOrId,
        action: Action,
    ) -> Result<ProjectUuid, Error> {
        let project = self.datastore().project_fetch(which).await?;
        let resource = Resource::ProjectPolicy(authz::ProjectPolicy {
            project: authz::Project {
                id: project.id(),
                lookup: lookup_type(which),
            },
        });
        self.authorize(opctx, &resource, action).await?;
        Ok(project.id())
    }
}

fn policy_rows(rows: Vec<RoleAssignment>) -> Result<Vec<(UserUuid, ProjectRole)>, Error> {
    rows.into_iter()
        .map(|row| {
            let role = row.role_name.parse().map_err(Error::internal)?;
            Ok((UserUuid::from_untyped_uuid(row.identity_id), role))
        })
        .collect()
}
