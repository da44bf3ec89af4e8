//! Authorization: the one place Nexus decides whether an actor may do an action on a resource.
//!
//! Resources form a tree: the [`Fleet`] (its sleds, `/v1/system/*`), a [`Silo`] (its users
//! create projects in it), a [`Project`] in the silo, an [`Instance`] in a project, and a
//! project's policy ([`ProjectPolicy`], its role assignments); a project's VPCs ([`Vpc`]),
//! their subnets ([`VpcSubnet`]) and its instances' interfaces ([`NetworkInterface`]) are
//! governed by the project's roles, as its instances are. Roles are held on the fleet
//! ([`FleetRole`]) or on a project ([`ProjectRole`]) and are inherited downwards: a fleet
//! admin may do everything anywhere, a fleet viewer may read everything, and a project's
//! roles apply to the project's instances and policy.
//!
//! [`decide`] is the policy, as a pure function of the actor's roles, the resource and the
//! [`Action`]. Nexus's app layer calls it (through `Nexus::authorize`) where it looks a
//! resource up, so a handler never checks anything itself. The answer distinguishes:
//!
//! - [`Decision::Allowed`];
//! - [`Decision::NotFound`]: the actor may not even read the resource: the caller gets the
//!   very error a missing resource gives (404, same body), so existence does not leak;
//! - [`Decision::Forbidden`]: the actor may read it but not do this (403).
//!
//! Decisions beyond the role table (documented in `docs/authz.md`): any user of a silo may
//! create a project there and becomes its admin; migrating an instance names physical sleds,
//! so it also needs `Modify` on the fleet (fleet admin); a serial console's history is `Read`,
//! its interactive stream `Modify`; the sled list is the fleet's `ListChildren` (fleet viewer);
//! a project's policy is read by its viewers and changed by its admins; deleting a project
//! takes its admin (a collaborator manages the instances in it).

use crate::authn::Actor;
use halyard_common::Error;
use halyard_common::ids::{
    DiskUuid, InstanceUuid, NetworkInterfaceUuid, ProjectUuid, SiloUuid, SnapshotUuid,
    VpcSubnetUuid, VpcUuid,
};
use halyard_common::{LookupType, ResourceType};
use std::collections::BTreeSet;

/// What an actor wants to do to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Read,
    ListChildren,
    CreateChild,
    Modify,
    Delete,
    ReadPolicy,
    ModifyPolicy,
}

impl Action {
    /// The action in words, as in "to {verb} this instance".
    fn verb(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::ListChildren => "list what is in",
            Action::CreateChild => "create anything in",
            Action::Modify => "change",
            Action::Delete => "delete",
            Action::ReadPolicy => "read the roles on",
            Action::ModifyPolicy => "change the roles on",
        }
    }
}

/// A role on the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FleetRole {
    Admin,
    Viewer,
}

/// A role on a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProjectRole {
    Admin,
    Collaborator,
    Viewer,
}

impl FleetRole {
    pub fn name(self) -> &'static str {
        match self {
            FleetRole::Admin => "admin",
            FleetRole::Viewer => "viewer",
        }
    }
}

impl std::str::FromStr for FleetRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(FleetRole::Admin),
            "viewer" => Ok(FleetRole::Viewer),
            other => Err(format!(
                "no fleet role \"{other}\" (fleet roles: admin, viewer)"
            )),
        }
    }
}

impl ProjectRole {
    pub fn name(self) -> &'static str {
        match self {
            ProjectRole::Admin => "admin",
            ProjectRole::Collaborator => "collaborator",
            ProjectRole::Viewer => "viewer",
        }
    }
}

impl std::str::FromStr for ProjectRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(ProjectRole::Admin),
            "collaborator" => Ok(ProjectRole::Collaborator),
            "viewer" => Ok(ProjectRole::Viewer),
            other => Err(format!(
                "no project role \"{other}\" (project roles: admin, collaborator, viewer)"
            )),
        }
    }
}

/// The roles an actor holds that matter for one decision: on the fleet, and on the project
/// the resource belongs to (if any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roles {
    pub fleet: BTreeSet<FleetRole>,
    pub project: BTreeSet<ProjectRole>,
}

/// The fleet: sleds and everything under `/v1/system`. There is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fleet;

/// A silo, as the container users create projects in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Silo {
    pub id: SiloUuid,
}

/// A project, with how the caller named it (for the 404 it gets if it may not read it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: ProjectUuid,
    pub lookup: LookupType,
}

/// An instance, with its project (whose roles apply to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub project: ProjectUuid,
    pub id: InstanceUuid,
    pub lookup: LookupType,
}

/// A disk, with its project (whose roles apply to it, as to an instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub project: ProjectUuid,
    pub id: DiskUuid,
    pub lookup: LookupType,
}

/// A snapshot, with its project (whose roles apply to it, as to a disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub project: ProjectUuid,
    pub id: SnapshotUuid,
    pub lookup: LookupType,
}

/// A VPC, with its project (whose roles apply to it, as to an instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vpc {
    pub project: ProjectUuid,
    pub id: VpcUuid,
    pub lookup: LookupType,
}

/// A VPC subnet, with its VPC's project (whose roles apply to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcSubnet {
    pub project: ProjectUuid,
    pub id: VpcSubnetUuid,
    pub lookup: LookupType,
}

/// An instance's network interface, with the instance's project (whose roles apply to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInterface {
    pub project: ProjectUuid,
    pub id: NetworkInterfaceUuid,
    pub lookup: LookupType,
}

/// A project's policy: its role assignments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectPolicy {
    pub project: Project,
}

/// Any resource a decision is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Fleet(Fleet),
    Silo(Silo),
    Project(Project),
    Instance(Instance),
    Disk(Disk),
    Snapshot(Snapshot),
    Vpc(Vpc),
    VpcSubnet(VpcSubnet),
    NetworkInterface(NetworkInterface),
    ProjectPolicy(ProjectPolicy),
}

impl Resource {
    /// What kind of resource it is, in words.
    fn kind(&self) -> &'static str {
        match self {
            Resource::Fleet(_) => "fleet",
            Resource::Silo(_) => "silo",
            Resource::Project(_) => "project",
            Resource::Instance(_) => "instance",
            Resource::Disk(_) => "disk",
            Resource::Snapshot(_) => "snapshot",
            Resource::Vpc(_) => "VPC",
            Resource::VpcSubnet(_) => "VPC subnet",
            Resource::NetworkInterface(_) => "network interface",
            Resource::ProjectPolicy(_) => "project",
        }
    }
}

impl Resource {
    /// The project whose roles apply, if any.
    pub fn project(&self) -> Option<ProjectUuid> {
        match self {
            Resource::Fleet(_) | Resource::Silo(_) => None,
            Resource::Project(p) => Some(p.id),
            Resource::Instance(i) => Some(i.project),
            Resource::Disk(d) => Some(d.project),
            Resource::Snapshot(s) => Some(s.project),
            Resource::Vpc(v) => Some(v.project),
            Resource::VpcSubnet(s) => Some(s.project),
            Resource::NetworkInterface(n) => Some(n.project),
            Resource::ProjectPolicy(p) => Some(p.project.id),
        }
    }

    /// The error a caller gets for this resource when it does not exist (or, the same, when
    /// the caller may not read it).
    fn not_found(&self) -> Error {
        let (type_name, lookup) = match self {
            Resource::Project(p) | Resource::ProjectPolicy(ProjectPolicy { project: p }) => {
                (ResourceType::Project, p.lookup.clone())
            }
            Resource::Instance(i) => (ResourceType::Instance, i.lookup.clone()),
            Resource::Disk(d) => (ResourceType::Disk, d.lookup.clone()),
            Resource::Snapshot(s) => (ResourceType::Snapshot, s.lookup.clone()),
            Resource::Vpc(v) => (ResourceType::Vpc, v.lookup.clone()),
            Resource::VpcSubnet(s) => (ResourceType::VpcSubnet, s.lookup.clone()),
            Resource::NetworkInterface(n) => (ResourceType::NetworkInterface, n.lookup.clone()),
            // Never hidden: see `decide`.
            Resource::Fleet(_) | Resource::Silo(_) => {
                return Error::internal("the fleet and silos are never hidden");
            }
        };
        Error::ObjectNotFound { type_name, lookup }
    }
}

/// What [`decide`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// The actor may read the resource but not do this.
    Forbidden,
    /// The actor may not read the resource: it is, to them, not there.
    NotFound,
}

/// What a project role allows on the project, its instances and its policy.
fn project_role_allows(role: ProjectRole, resource: &Resource, action: Action) -> bool {
    use Action::*;
    let viewer = matches!(action, Read | ListChildren | ReadPolicy);
    let collaborator = viewer || matches!(action, CreateChild | Modify | Delete);
    let admin = collaborator || matches!(action, ModifyPolicy);
    match (role, resource) {
        // Deleting the project itself takes its admin.
        (ProjectRole::Collaborator, Resource::Project(_)) if action == Delete => false,
        (ProjectRole::Viewer, _) => viewer,
        (ProjectRole::Collaborator, _) => collaborator && action != ModifyPolicy,
        (ProjectRole::Admin, _) => admin,
    }
}

/// The policy: whether an actor holding `roles` (and being `actor`) may do `action` on
/// `resource`. Every authorization check in Nexus ends here.
pub fn decide(actor: &Actor, roles: &Roles, resource: &Resource, action: Action) -> Decision {
    // Nexus's own work (background tasks, sagas resumed without a known starter) acts with
    // the fleet admin's authority; sled agents hold no role on external resources.
    let fleet: BTreeSet<FleetRole> = match actor {
        Actor::User { .. } => roles.fleet.clone(),
        Actor::BackgroundTask { .. } | Actor::Saga => [FleetRole::Admin].into(),
        Actor::SledAgent { .. } => BTreeSet::new(),
    };
    if fleet.contains(&FleetRole::Admin) {
        return Decision::Allowed;
    }
    let fleet_viewer = fleet.contains(&FleetRole::Viewer);
    let reads = matches!(
        action,
        Action::Read | Action::ListChildren | Action::ReadPolicy
    );
    match resource {
        // The fleet is no secret: a refusal is 403.
        Resource::Fleet(_) => {
            if fleet_viewer && reads {
                Decision::Allowed
            } else {
                Decision::Forbidden
            }
        }
        // A user of a silo sees it, lists the projects in it (those they may read) and
        // creates projects in it.
        Resource::Silo(silo) => {
            let member = matches!(actor, Actor::User { silo_id, .. } if *silo_id == silo.id);
            if member
                && matches!(
                    action,
                    Action::Read | Action::ListChildren | Action::CreateChild
                )
            {
                Decision::Allowed
            } else {
                Decision::Forbidden
            }
        }
        Resource::Project(_)
        | Resource::Instance(_)
        | Resource::Disk(_)
        | Resource::Snapshot(_)
        | Resource::Vpc(_)
        | Resource::VpcSubnet(_)
        | Resource::NetworkInterface(_)
        | Resource::ProjectPolicy(_) => {
            let may = |action| {
                (fleet_viewer
                    && matches!(
                        action,
                        Action::Read | Action::ListChildren | Action::ReadPolicy
                    ))
                    || roles
                        .project
                        .iter()
                        .any(|role| project_role_allows(*role, resource, action))
            };
            if may(action) {
                Decision::Allowed
            } else if may(Action::Read) {
                Decision::Forbidden
            } else {
                Decision::NotFound
            }
        }
    }
}

/// [`decide`] as the error the caller gets, if any.
pub fn check(
    actor: &Actor,
    roles: &Roles,
    resource: &Resource,
    action: Action,
) -> Result<(), Error> {
    match decide(actor, roles, resource, action) {
        Decision::Allowed => Ok(()),
        Decision::Forbidden => Err(Error::forbidden_because(
            format!(
                "your roles do not allow you to {} this {}",
                action.verb(),
                resource.kind()
            ),
            format!("{actor:?} may not {action:?} {resource:?}"),
        )),
        Decision::NotFound => Err(resource.not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halyard_common::ids::UserUuid;

    fn user(silo: SiloUuid) -> Actor {
        Actor::User {
            user_id: UserUuid::new_v4(),
            silo_id: silo,
        }
    }

    fn roles(fleet: &[FleetRole], project: &[ProjectRole]) -> Roles {
        Roles {
            fleet: fleet.iter().copied().collect(),
            project: project.iter().copied().collect(),
        }
    }

    const ACTIONS: [Action; 7] = [
        Action::Read,
        Action::ListChildren,
        Action::CreateChild,
        Action::Modify,
        Action::Delete,
        Action::ReadPolicy,
        Action::ModifyPolicy,
    ];

    #[test]
    fn networking_resources_follow_their_projects_roles() {
        let actor = user(SiloUuid::new_v4());
        let project = ProjectUuid::new_v4();
        let lookup = LookupType::ByName("n".into());
        for resource in [
            Resource::Vpc(Vpc {
                project,
                id: VpcUuid::new_v4(),
                lookup: lookup.clone(),
            }),
            Resource::VpcSubnet(VpcSubnet {
                project,
                id: VpcSubnetUuid::new_v4(),
                lookup: lookup.clone(),
            }),
            Resource::NetworkInterface(NetworkInterface {
                project,
                id: NetworkInterfaceUuid::new_v4(),
                lookup: lookup.clone(),
            }),
        ] {
            assert_eq!(resource.project(), Some(project));
            let viewer = roles(&[], &[ProjectRole::Viewer]);
            let collaborator = roles(&[], &[ProjectRole::Collaborator]);
            assert_eq!(
                decide(&actor, &viewer, &resource, Action::Read),
                Decision::Allowed
            );
            assert_eq!(
                decide(&actor, &viewer, &resource, Action::Delete),
                Decision::Forbidden
            );
            for action in [Action::CreateChild, Action::Delete] {
                assert_eq!(
                    decide(&actor, &collaborator, &resource, action),
                    Decision::Allowed
                );
            }
            // A stranger gets the resource's own not-found error.
            let refused = check(&actor, &Roles::default(), &resource, Action::Read).unwrap_err();
            assert!(
                matches!(refused, Error::ObjectNotFound { .. }),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn project_roles_nest_and_strangers_see_nothing() {
        let silo = SiloUuid::new_v4();
        let actor = user(silo);
        let instance = Resource::Instance(Instance {
            project: ProjectUuid::new_v4(),
            id: InstanceUuid::new_v4(),
            lookup: LookupType::ByName("i".into()),
        });
        let allowed = |r: &Roles| {
            ACTIONS
                .iter()
                .filter(|a| decide(&actor, r, &instance, **a) == Decision::Allowed)
                .count()
        };
        let viewer = allowed(&roles(&[], &[ProjectRole::Viewer]));
        let collaborator = allowed(&roles(&[], &[ProjectRole::Collaborator]));
        let admin = allowed(&roles(&[], &[ProjectRole::Admin]));
        assert_eq!((viewer, collaborator, admin), (3, 6, 7));
        for action in ACTIONS {
            assert_eq!(
                decide(&actor, &Roles::default(), &instance, action),
                Decision::NotFound
            );
            assert_eq!(
                decide(&actor, &roles(&[FleetRole::Admin], &[]), &instance, action),
                Decision::Allowed
            );
        }
        assert_eq!(
            decide(
                &actor,
                &roles(&[], &[ProjectRole::Viewer]),
                &instance,
                Action::Modify
            ),
            Decision::Forbidden
        );
        assert_eq!(
            decide(
                &actor,
                &roles(&[FleetRole::Viewer], &[]),
                &instance,
                Action::Modify
            ),
            Decision::Forbidden
        );
    }

    #[test]
    fn the_fleet_is_for_fleet_roles_and_a_silo_for_its_users() {
        let silo = SiloUuid::new_v4();
        let actor = user(silo);
        let fleet = Resource::Fleet(Fleet);
        let project_admin = roles(&[], &[ProjectRole::Admin]);
        assert_eq!(
            decide(&actor, &project_admin, &fleet, Action::Modify),
            Decision::Forbidden
        );
        assert_eq!(
            decide(
                &actor,
                &roles(&[FleetRole::Viewer], &[]),
                &fleet,
                Action::ListChildren
            ),
            Decision::Allowed
        );
        assert_eq!(
            decide(
                &actor,
                &roles(&[FleetRole::Viewer], &[]),
                &fleet,
                Action::Modify
            ),
            Decision::Forbidden
        );
        let own = Resource::Silo(Silo { id: silo });
        let other = Resource::Silo(Silo {
            id: SiloUuid::new_v4(),
        });
        assert_eq!(
            decide(&actor, &Roles::default(), &own, Action::CreateChild),
            Decision::Allowed
        );
        assert_eq!(
            decide(&actor, &Roles::default(), &other, Action::CreateChild),
            Decision::Forbidden
        );
        let sled_agent = Actor::SledAgent {
            sled_id: halyard_common::ids::SledUuid::new_v4(),
        };
        assert_eq!(
            decide(&sled_agent, &Roles::default(), &fleet, Action::Read),
            Decision::Forbidden
        );
    }

    #[test]
    fn a_project_collaborator_may_not_delete_the_project_or_change_its_policy() {
        let actor = user(SiloUuid::new_v4());
        let project = Project {
            id: ProjectUuid::new_v4(),
            lookup: LookupType::ByName("p".into()),
        };
        let collaborator = roles(&[], &[ProjectRole::Collaborator]);
        assert_eq!(
            decide(
                &actor,
                &collaborator,
                &Resource::Project(project.clone()),
                Action::Delete
            ),
            Decision::Forbidden
        );
        assert_eq!(
            decide(
                &actor,
                &collaborator,
                &Resource::ProjectPolicy(ProjectPolicy { project }),
                Action::ModifyPolicy
            ),
            Decision::Forbidden
        );
    }
}
