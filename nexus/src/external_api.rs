//! Nexus's implementation of the external (`/v1`, Oxide-compatible) API: authenticate, turn
//! the request into an `app` call, and the result into Oxide's views.

use crate::app::Nexus;
use crate::app::instance::InstanceAndVmm;
use crate::app::serial_console::{ConsoleOffset, relay_serial_console};
use crate::authn::{OpContext, WebsocketUpgraded, external_request, unauthenticated_request};
use crate::authz::{Action, ProjectRole as AuthzProjectRole};
use crate::console;
use dropshot::{
    Body, HttpError, HttpResponseAccepted, HttpResponseCreated, HttpResponseDeleted,
    HttpResponseOk, HttpResponseUpdatedNoContent, PaginationOrder as DropshotOrder, Path, Query,
    RequestContext, ResultsPage, TypedBody, WebsocketEndpointResult, WebsocketUpgrade,
};
use halyard_common::ids::{GenericUuid, UserUuid};
use halyard_common::{AutoRestartPolicy, Error, Labelled};
use halyard_db_queries::DeviceTokenPoll;
use halyard_db_queries::{DataPageParams, PaginatedBy, PaginationOrder};
use halyard_nexus_external_api::NexusExternalApi;
use halyard_nexus_external_api::pagination::{
    PageByNameOrId, PaginatedById, PaginatedByNameOrId, id_pagination, name_or_id_pagination,
    results_page_by_id, results_page_by_name_or_id, scan_params,
};
use halyard_nexus_external_api::params::{
    ConsolePath, DeviceAccessTokenRequest, DeviceAuthRequest, DeviceAuthVerify, DiskCreate,
    DiskPath, InstanceCreate, InstanceMigrate, InstancePath, InstanceSerialConsoleRequest,
    InstanceSerialConsoleStreamRequest, InstanceUpdate, OptionalProjectSelector, ProjectCreate,
    ProjectPath, ProjectSelector, SnapshotCreate, SnapshotPath, TokenLogin,
};
use halyard_nexus_external_api::params::{
    InstanceNetworkInterfaceCreate, InstanceSelector, NetworkInterfacePath,
    OptionalInstanceSelector, OptionalVpcSelector, SubnetPath, VpcCreate, VpcPath, VpcSelector,
    VpcSubnetCreate,
};
use halyard_nexus_external_api::views::{
    Baseboard, CurrentUser, DeviceAccessTokenGrant, DeviceAuthResponse, Disk, DiskState, DiskType,
    IdentityType, Instance, InstanceNetworkInterface, InstanceSerialConsoleData, InstanceVmm,
    InstanceVmmRole, Migration, Ping, PingStatus, PrivateIpStack, PrivateIpv4Stack,
    PrivateIpv6Stack, Project, ProjectRole, ProjectRolePolicy, ProjectRoleRoleAssignment,
    SagaInProgress, Sled, SledPolicy, SledProvisionPolicy, SledState, Snapshot, SnapshotState, Vpc,
    VpcSubnet,
};
use std::sync::Arc;

pub enum NexusExternalImpl {}

fn order(direction: DropshotOrder) -> PaginationOrder {
    match direction {
        DropshotOrder::Ascending => PaginationOrder::Ascending,
        DropshotOrder::Descending => PaginationOrder::Descending,
    }
}

fn paginated_by(page: PageByNameOrId<'_>) -> PaginatedBy<'_> {
    match page {
        PageByNameOrId::Name(p) => PaginatedBy::Name(DataPageParams {
            marker: p.marker,
            direction: order(p.direction),
            limit: p.limit,
        }),
        PageByNameOrId::Id(p) => PaginatedBy::Id(DataPageParams {
            marker: p.marker,
            direction: order(p.direction),
            limit: p.limit,
        }),
    }
}

fn project_view(project: halyard_db_model::Project) -> Project {
    Project {
        id: project.id(),
        name: project.name().clone(),
        description: project.description,
        time_created: project.time_created,
        time_modified: project.time_modified,
    }
}

/// The API's view of an instance; `cooldown` is the auto-restart cooldown Nexus applies.
fn instance_view(view: InstanceAndVmm, cooldown: std::time::Duration) -> Instance {
    let run_state = view.run_state();
    let time_run_state_updated = view.time_run_state_updated();
    let instance = view.instance;
    let boot_disk_id = instance.boot_disk();
    let auto_restart_policy = instance
        .auto_restart_policy
        .map_or(AutoRestartPolicy::BestEffort, |policy| policy.0);
    // Oxide's rule: shown only while it is still ahead.
    let auto_restart_cooldown_expiration = instance
        .time_last_auto_restarted
        .and_then(|last| chrono::Duration::from_std(cooldown).ok().map(|c| last + c))
        .filter(|expiration| *expiration > chrono::Utc::now());
    Instance {
        id: instance.id(),
        name: instance.name().clone(),
        project_id: instance.project_id(),
        hostname: instance.hostname.clone(),
        ncpus: u16::try_from(instance.ncpus).unwrap_or(u16::MAX),
        memory: instance.memory.0,
        run_state,
        time_run_state_updated,
        time_created: instance.time_created,
        time_modified: instance.time_modified,
        description: instance.description,
        auto_restart_enabled: auto_restart_policy == AutoRestartPolicy::BestEffort,
        auto_restart_policy: instance.auto_restart_policy.map(|policy| policy.0.into()),
        auto_restart_cooldown_expiration,
        time_last_auto_restarted: instance.time_last_auto_restarted,
        boot_disk_id: boot_disk_id.map(|id| id.into_untyped_uuid()),
        cpu_platform: None,
        enable_jumbo_frames: false,
        migration_id: instance.runtime.migration(),
    }
}

/// The views of `disks`, each saying whether it is degraded (a replica lost with an expunged
/// sled and not yet replaced, or on a sled gone silent).
async fn disk_views(nexus: &Nexus, disks: Vec<halyard_db_model::Disk>) -> Result<Vec<Disk>, Error> {
    let ids: Vec<_> = disks.iter().map(|d| d.id()).collect();
    let degraded = nexus.disks_degraded(&ids).await?;
    Ok(disks
        .into_iter()
        .map(|disk| {
            let is_degraded = degraded.contains(&disk.id());
            disk_view(disk, is_degraded)
        })
        .collect())
}

async fn one_disk_view(nexus: &Nexus, disk: halyard_db_model::Disk) -> Result<Disk, Error> {
    let degraded = nexus.disks_degraded(&[disk.id()]).await?;
    let is_degraded = degraded.contains(&disk.id());
    Ok(disk_view(disk, is_degraded))
}

fn disk_view(disk: halyard_db_model::Disk, degraded: bool) -> Disk {
    use halyard_common::DiskState as Stored;
    let attached_to = || {
        disk.attached_to()
            .expect("a disk attaching, attached or detaching names its instance (a CHECK)")
    };
    let state = match disk.state() {
        Stored::Creating => DiskState::Creating,
        Stored::Detached => DiskState::Detached,
        Stored::Attaching => DiskState::Attaching(attached_to()),
        Stored::Attached => DiskState::Attached(attached_to()),
        Stored::Detaching => DiskState::Detaching(attached_to()),
        Stored::Faulted => DiskState::Faulted,
        Stored::Destroyed => DiskState::Destroyed,
    };
    Disk {
        id: disk.id(),
        name: disk.name().clone(),
        device_path: format!("/dev/disk/by-id/virtio-{}", disk.name()),
        description: disk.description.clone(),
        time_created: disk.time_created,
        time_modified: disk.time_modified,
        project_id: disk.project_id(),
        snapshot_id: None,
        image_id: None,
        size: disk.size(),
        block_size: disk.block_size(),
        state,
        disk_type: DiskType::Distributed,
        read_only: false,
        degraded,
    }
}

/// The disk a request names, if its caller may do `action` on it.
async fn lookup_disk(
    nexus: &Nexus,
    opctx: &OpContext,
    query: Query<OptionalProjectSelector>,
    path: Path<DiskPath>,
    action: Action,
) -> Result<halyard_db_model::Disk, Error> {
    let project = query.into_inner().project;
    let disk = path.into_inner().disk;
    nexus
        .disk_lookup_authorized(opctx, project.as_ref(), &disk, action)
        .await
}

fn snapshot_view(snapshot: halyard_db_model::Snapshot) -> Snapshot {
    use halyard_common::SnapshotState as Stored;
    Snapshot {
        id: snapshot.id(),
        name: snapshot.name().clone(),
        description: snapshot.description.clone(),
        time_created: snapshot.time_created,
        time_modified: snapshot.time_modified,
        project_id: snapshot.project_id(),
        disk_id: snapshot.disk_id(),
        size: snapshot.size(),
        state: match snapshot.state() {
            Stored::Creating => SnapshotState::Creating,
            Stored::Ready => SnapshotState::Ready,
            Stored::Faulted => SnapshotState::Faulted,
            Stored::Destroyed => SnapshotState::Destroyed,
        },
    }
}

fn vpc_view(vpc: halyard_db_model::Vpc) -> Vpc {
    Vpc {
        id: vpc.id(),
        name: vpc.name().clone(),
        description: vpc.description.clone(),
        time_created: vpc.time_created,
        time_modified: vpc.time_modified,
        project_id: vpc.project_id(),
        dns_name: vpc.dns_name.0.clone(),
        ipv6_prefix: vpc.ipv6_prefix(),
        // Halyard has no routers: the VPC's own id stands for its implicit system router
        // (stable, and naming no other VPC's).
        system_router_id: vpc.id().into_untyped_uuid(),
    }
}

fn vpc_subnet_view(subnet: halyard_db_model::VpcSubnet) -> VpcSubnet {
    VpcSubnet {
        id: subnet.id(),
        name: subnet.name().clone(),
        description: subnet.description.clone(),
        time_created: subnet.time_created,
        time_modified: subnet.time_modified,
        vpc_id: subnet.vpc_id(),
        ipv4_block: subnet.ipv4_block(),
        ipv6_block: subnet.ipv6_block(),
        custom_router_id: None,
    }
}

/// An interface's view: `v4` when it has no IPv6 address, else `dual_stack`.
fn network_interface_view(nic: halyard_db_model::NetworkInterface) -> InstanceNetworkInterface {
    let v4 = PrivateIpv4Stack {
        ip: nic.ip(),
        transit_ips: Vec::new(),
    };
    let ip_stack = match nic.ipv6() {
        None => PrivateIpStack::V4(v4),
        Some(ip) => PrivateIpStack::DualStack {
            v4,
            v6: PrivateIpv6Stack {
                ip,
                transit_ips: Vec::new(),
            },
        },
    };
    InstanceNetworkInterface {
        id: nic.id(),
        name: nic.name().clone(),
        description: nic.description.clone(),
        time_created: nic.time_created,
        time_modified: nic.time_modified,
        instance_id: nic.instance_id(),
        vpc_id: nic.vpc_id(),
        subnet_id: nic.subnet_id(),
        mac: nic.mac(),
        ip_stack,
        primary: nic.is_primary,
    }
}

/// The snapshot a request names, if its caller may do `action` on it.
async fn lookup_snapshot(
    nexus: &Nexus,
    opctx: &OpContext,
    query: Query<OptionalProjectSelector>,
    path: Path<SnapshotPath>,
    action: Action,
) -> Result<halyard_db_model::Snapshot, Error> {
    let project = query.into_inner().project;
    let snapshot = path.into_inner().snapshot;
    nexus
        .snapshot_lookup_authorized(opctx, project.as_ref(), &snapshot, action)
        .await
}

fn migration_view(migration: halyard_db_model::Migration) -> Migration {
    Migration {
        id: migration.id(),
        instance_id: migration.instance_id.0,
        source_propolis_id: migration.source_propolis_id.0,
        target_propolis_id: migration.target_propolis_id.0,
        source_state: migration.source_state(),
        target_state: migration.target_state(),
        time_created: migration.time_created,
        time_source_updated: migration.time_source_updated,
        time_target_updated: migration.time_target_updated,
        time_deleted: migration.time_deleted,
    }
}

/// The API's view of a sled; `live_vmms`: how many live VMMs it holds.
fn sled_view(sled: halyard_db_model::Sled, live_vmms: u32) -> Sled {
    Sled {
        id: sled.id(),
        time_created: sled.time_created,
        time_modified: sled.time_modified,
        // Halyard does not track hardware identity yet: the sled id stands in for the serial.
        baseboard: Baseboard {
            serial: sled.id().to_string(),
            part: "halyard-sled".into(),
            revision: 0,
        },
        rack_id: uuid::Uuid::nil(),
        slot: None,
        // Expunged: out of service for good; decommissioned once nothing is reserved there
        // any more (its VMMs retired).
        policy: if sled.is_expunged() {
            SledPolicy::Expunged
        } else {
            SledPolicy::InService {
                provision_policy: SledProvisionPolicy::Provisionable,
            }
        },
        state: if sled.is_expunged() && sled.reserved_hardware_threads == 0 {
            SledState::Decommissioned
        } else {
            SledState::Active
        },
        usable_hardware_threads: u32::try_from(sled.usable_hardware_threads).unwrap_or(u32::MAX),
        usable_physical_ram: sled.usable_physical_ram.0,
        reserved_hardware_threads: u32::try_from(sled.reserved_hardware_threads)
            .unwrap_or(u32::MAX),
        reserved_physical_ram: sled.reserved_physical_ram.0,
        live_vmms,
    }
}

/// The API's view of one of an instance's VMMs.
fn instance_vmm_view(
    instance: &halyard_db_model::Instance,
    vmm: halyard_db_model::Vmm,
) -> InstanceVmm {
    let role = if instance.runtime.active_vmm() == Some(vmm.id()) {
        InstanceVmmRole::Active
    } else if instance.runtime.target_vmm() == Some(vmm.id()) {
        InstanceVmmRole::Target
    } else {
        InstanceVmmRole::Past
    };
    InstanceVmm {
        id: vmm.id(),
        sled_id: vmm.sled_id(),
        state: vmm.state(),
        role,
        time_created: vmm.time_created,
        time_state_updated: vmm.runtime.time_state_updated,
    }
}

/// Runs `work` on behalf of this request: the sled agent calls it makes and the sagas it
/// starts carry the request's id (see `halyard_observability::request_id`).
async fn for_request<T>(
    rqctx: &RequestContext<Arc<Nexus>>,
    work: impl std::future::Future<Output = T>,
) -> T {
    halyard_observability::request_id::scope(Some(rqctx.request_id.clone()), work).await
}

/// The instance a request names, if its caller may do `action` on it. Handlers hand the
/// record on to the app layer, which does not read it again.
async fn lookup_instance(
    nexus: &Nexus,
    opctx: &OpContext,
    query: Query<OptionalProjectSelector>,
    path: Path<InstancePath>,
    action: Action,
) -> Result<InstanceAndVmm, Error> {
    let project = query.into_inner().project;
    let instance = path.into_inner().instance;
    nexus
        .instance_lookup_authorized(opctx, project.as_ref(), &instance, action)
        .await
}

fn policy_view(assignments: Vec<(UserUuid, AuthzProjectRole)>) -> ProjectRolePolicy {
    ProjectRolePolicy {
        role_assignments: assignments
            .into_iter()
            .map(|(user, role)| ProjectRoleRoleAssignment {
                identity_id: user.into_untyped_uuid(),
                identity_type: IdentityType::SiloUser,
                role_name: match role {
                    AuthzProjectRole::Admin => ProjectRole::Admin,
                    AuthzProjectRole::Collaborator => ProjectRole::Collaborator,
                    AuthzProjectRole::Viewer => ProjectRole::Viewer,
                },
            })
            .collect(),
    }
}

fn policy_assignments(policy: ProjectRolePolicy) -> Vec<(UserUuid, AuthzProjectRole)> {
    policy
        .role_assignments
        .into_iter()
        .map(|assignment| {
            let IdentityType::SiloUser = assignment.identity_type;
            let role = match assignment.role_name {
                ProjectRole::Admin => AuthzProjectRole::Admin,
                ProjectRole::Collaborator => AuthzProjectRole::Collaborator,
                ProjectRole::Viewer => AuthzProjectRole::Viewer,
            };
            (UserUuid::from_untyped_uuid(assignment.identity_id), role)
        })
        .collect()
}

/// An OAuth 2.0 answer (RFC 6749 §5): its own JSON, not dropshot's error body.
fn oauth_response(
    status: http::StatusCode,
    body: &impl serde::Serialize,
) -> Result<http::Response<Body>, HttpError> {
    let body = serde_json::to_string(body)
        .map_err(|e| HttpError::for_internal_error(format!("serializing a response: {e}")))?;
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .map_err(|e| HttpError::for_internal_error(format!("building a response: {e}")))
}

fn oauth_error(error: &str) -> Result<http::Response<Body>, HttpError> {
    oauth_response(
        http::StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": error }),
    )
}

/// The grant type of RFC 8628's token request.
const DEVICE_CODE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

impl NexusExternalApi for NexusExternalImpl {
    type Context = Arc<Nexus>;

    async fn device_auth_request(
        rqctx: RequestContext<Self::Context>,
        params: TypedBody<DeviceAuthRequest>,
    ) -> Result<http::Response<Body>, HttpError> {
        let rqctx = &rqctx;
        unauthenticated_request(rqctx, async move {
            let params = params.into_inner();
            let (request, device_code) = rqctx
                .context()
                .device_auth_request_create(params.client_id, params.ttl_seconds.map(|t| t.get()))
                .await?;
            // Where the user confirms: this server, as the client reached it.
            let host = rqctx
                .request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
                .unwrap_or_else(|| rqctx.server.local_addr.to_string());
            let verification_uri = format!("http://{host}/device/verify");
            let expires_in = (request.time_expires - request.time_created).num_seconds();
            oauth_response(
                http::StatusCode::OK,
                &DeviceAuthResponse {
                    device_code: device_code.expose().to_string(),
                    verification_uri_complete: format!(
                        "{verification_uri}?user_code={}",
                        request.user_code
                    ),
                    user_code: request.user_code,
                    verification_uri,
                    expires_in: u32::try_from(expires_in).unwrap_or(0),
                },
            )
        })
        .await
    }

    async fn device_auth_confirm(
        rqctx: RequestContext<Self::Context>,
        params: TypedBody<DeviceAuthVerify>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let user_code = params.into_inner().user_code;
            rqctx
                .context()
                .device_auth_confirm(&opctx, &user_code)
                .await?;
            Ok(HttpResponseUpdatedNoContent())
        })
        .await
    }

    async fn device_access_token(
        rqctx: RequestContext<Self::Context>,
        params: TypedBody<DeviceAccessTokenRequest>,
    ) -> Result<http::Response<Body>, HttpError> {
        let rqctx = &rqctx;
        unauthenticated_request(rqctx, async move {
            let params = params.into_inner();
            if params.grant_type != DEVICE_CODE_GRANT_TYPE {
                return oauth_error("unsupported_grant_type");
            }
            let poll = rqctx
                .context()
                .device_access_token_poll(params.client_id, &params.device_code)
                .await?;
            match poll {
                DeviceTokenPoll::Granted { token, secret } => oauth_response(
                    http::StatusCode::OK,
                    &DeviceAccessTokenGrant {
                        access_token: secret.expose().to_string(),
                        token_type: "Bearer".to_string(),
                        token_id: token.id(),
                        time_expires: token.time_expires,
                    },
                ),
                DeviceTokenPoll::Pending => oauth_error("authorization_pending"),
                // Unknown, expired or already handed out (RFC 6749 §5.2).
                DeviceTokenPoll::Invalid => oauth_error("invalid_grant"),
            }
        })
        .await
    }

    async fn current_user_view(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<CurrentUser>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let (user, silo) = rqctx.context().current_user(&opctx).await?;
            let fleet_roles = rqctx.context().fleet_roles(&opctx).await?;
            Ok(HttpResponseOk(CurrentUser {
                id: user.id(),
                display_name: user.name().to_string(),
                silo_id: silo.id(),
                silo_name: silo.name().clone(),
                fleet_viewer: !fleet_roles.is_empty(),
                silo_admin: false,
                time_created: user.time_created,
                time_modified: user.time_modified,
            }))
        })
        .await
    }

    async fn login_token(
        rqctx: RequestContext<Self::Context>,
        body: TypedBody<TokenLogin>,
    ) -> Result<http::Response<Body>, HttpError> {
        let rqctx = &rqctx;
        unauthenticated_request(rqctx, async move {
            let tls = rqctx.server.using_tls();
            if !console::same_origin(rqctx.request.headers(), tls) {
                return Err(Error::forbidden_because(
                    "a console session starts only from this server's own page",
                    "console sign-in from another origin",
                )
                .into());
            }
            let secret = rqctx
                .context()
                .console_session_create(&body.into_inner().token, console::SESSION_LIFETIME)
                .await?;
            console::no_content_setting(&console::session_cookie(
                Some(secret.expose()),
                console::SESSION_LIFETIME,
                tls,
            ))
        })
        .await
    }

    async fn logout(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<http::Response<Body>, HttpError> {
        let rqctx = &rqctx;
        unauthenticated_request(rqctx, async move {
            let tls = rqctx.server.using_tls();
            if !console::same_origin(rqctx.request.headers(), tls) {
                return Err(Error::forbidden_because(
                    "a console session ends only from this server's own page",
                    "console sign-out from another origin",
                )
                .into());
            }
            let headers = rqctx.request.headers();
            for session in console::cookie_values(headers, console::SESSION_COOKIE) {
                rqctx.context().console_session_end(session).await?;
            }
            console::no_content_setting(&console::session_cookie(
                None,
                console::SESSION_LIFETIME,
                tls,
            ))
        })
        .await
    }

    async fn project_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedByNameOrId>,
    ) -> Result<HttpResponseOk<ResultsPage<Project>>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let query = query.into_inner();
            let limit = rqctx.page_limit(&query)?;
            let page = paginated_by(name_or_id_pagination(&query, limit)?);
            let projects = rqctx
                .context()
                .project_list_authorized(&opctx, &page)
                .await?;
            let views = projects.into_iter().map(project_view).collect();
            Ok(HttpResponseOk(results_page_by_name_or_id(
                views,
                scan_params(&query),
            )?))
        })
        .await
    }

    async fn project_create(
        rqctx: RequestContext<Self::Context>,
        body: TypedBody<ProjectCreate>,
    ) -> Result<HttpResponseCreated<Project>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let body = body.into_inner();
            let project = rqctx
                .context()
                .project_create_authorized(&opctx, body.name, body.description)
                .await?;
            Ok(HttpResponseCreated(project_view(project)))
        })
        .await
    }

    async fn project_view(
        rqctx: RequestContext<Self::Context>,
        path: Path<ProjectPath>,
    ) -> Result<HttpResponseOk<Project>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let project = rqctx
                .context()
                .project_lookup_authorized(&opctx, &path.into_inner().project, Action::Read)
                .await?;
            Ok(HttpResponseOk(project_view(project)))
        })
        .await
    }

    async fn project_delete(
        rqctx: RequestContext<Self::Context>,
        path: Path<ProjectPath>,
    ) -> Result<HttpResponseDeleted, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let project = nexus
                .project_lookup_authorized(&opctx, &path.into_inner().project, Action::Delete)
                .await?;
            nexus
                .project_delete(&halyard_common::NameOrId::Id(
                    project.id().into_untyped_uuid(),
                ))
                .await?;
            Ok(HttpResponseDeleted())
        })
        .await
    }

    async fn project_policy_view(
        rqctx: RequestContext<Self::Context>,
        path: Path<ProjectPath>,
    ) -> Result<HttpResponseOk<ProjectRolePolicy>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let assignments = rqctx
                .context()
                .project_policy_view(&opctx, &path.into_inner().project)
                .await?;
            Ok(HttpResponseOk(policy_view(assignments)))
        })
        .await
    }

    async fn project_policy_update(
        rqctx: RequestContext<Self::Context>,
        path: Path<ProjectPath>,
        body: TypedBody<ProjectRolePolicy>,
    ) -> Result<HttpResponseOk<ProjectRolePolicy>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let assignments = rqctx
                .context()
                .project_policy_update(
                    &opctx,
                    &path.into_inner().project,
                    policy_assignments(body.into_inner()),
                )
                .await?;
            Ok(HttpResponseOk(policy_view(assignments)))
        })
        .await
    }

    async fn instance_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedByNameOrId<ProjectSelector>>,
    ) -> Result<HttpResponseOk<ResultsPage<Instance>>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let query = query.into_inner();
            let limit = rqctx.page_limit(&query)?;
            let scan = scan_params(&query);
            let page = paginated_by(name_or_id_pagination(&query, limit)?);
            let nexus = rqctx.context();
            let project = nexus
                .project_lookup_authorized(&opctx, &scan.selector.project, Action::ListChildren)
                .await?;
            let instances = nexus
                .instance_list(
                    &halyard_common::NameOrId::Id(project.id().into_untyped_uuid()),
                    &page,
                )
                .await?;
            let views = instances
                .into_iter()
                .map(|view| instance_view(view, nexus.auto_restart_cooldown()))
                .collect();
            Ok(HttpResponseOk(results_page_by_name_or_id(views, scan)?))
        })
        .await
    }

    async fn instance_create(
        rqctx: RequestContext<Self::Context>,
        query: Query<ProjectSelector>,
        body: TypedBody<InstanceCreate>,
    ) -> Result<HttpResponseCreated<Instance>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let project = rqctx
                .context()
                .project_lookup_authorized(&opctx, &query.into_inner().project, Action::CreateChild)
                .await?;
            let project = halyard_common::NameOrId::Id(project.id().into_untyped_uuid());
            let created = for_request(
                rqctx,
                rqctx.context().instance_create(&project, body.into_inner()),
            )
            .await?;
            Ok(HttpResponseCreated(instance_view(
                created,
                rqctx.context().auto_restart_cooldown(),
            )))
        })
        .await
    }

    async fn instance_view(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseOk<Instance>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let instance = lookup_instance(nexus, &opctx, query, path, Action::Read).await?;
            Ok(HttpResponseOk(instance_view(
                instance,
                nexus.auto_restart_cooldown(),
            )))
        })
        .await
    }

    async fn instance_update(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
        body: TypedBody<InstanceUpdate>,
    ) -> Result<HttpResponseOk<Instance>, HttpError> {
        let rqctx = &rqctx;
        let update = body.into_inner();
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let instance = lookup_instance(nexus, &opctx, query, path, Action::Modify).await?;
            let updated = nexus.instance_update_found(instance, update).await?;
            Ok(HttpResponseOk(instance_view(
                updated,
                nexus.auto_restart_cooldown(),
            )))
        })
        .await
    }

    async fn instance_delete(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseDeleted, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let id = lookup_instance(nexus, &opctx, query, path, Action::Delete)
                .await?
                .instance
                .id();
            for_request(rqctx, nexus.instance_delete(id)).await?;
            Ok(HttpResponseDeleted())
        })
        .await
    }

    async fn instance_start(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseAccepted<Instance>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let instance = lookup_instance(nexus, &opctx, query, path, Action::Modify).await?;
            Ok(HttpResponseAccepted(instance_view(
                for_request(rqctx, nexus.instance_start_found(instance)).await?,
                nexus.auto_restart_cooldown(),
            )))
        })
        .await
    }

    async fn instance_stop(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseAccepted<Instance>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let instance = lookup_instance(nexus, &opctx, query, path, Action::Modify).await?;
            Ok(HttpResponseAccepted(instance_view(
                for_request(rqctx, nexus.instance_stop_found(instance)).await?,
                nexus.auto_restart_cooldown(),
            )))
        })
        .await
    }

    async fn instance_reboot(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseAccepted<Instance>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let instance = lookup_instance(nexus, &opctx, query, path, Action::Modify).await?;
            Ok(HttpResponseAccepted(instance_view(
                for_request(rqctx, nexus.instance_reboot_found(instance)).await?,
                nexus.auto_restart_cooldown(),
            )))
        })
        .await
    }

    async fn instance_serial_console(
        rqctx: RequestContext<Self::Context>,
        path: Path<InstancePath>,
        query: Query<InstanceSerialConsoleRequest>,
    ) -> Result<HttpResponseOk<InstanceSerialConsoleData>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let query = query.into_inner();
            let from = ConsoleOffset::from_query(query.from_start, query.most_recent)?;
            let instance = path.into_inner().instance;
            let id = nexus
                .instance_lookup_authorized(&opctx, query.project.as_ref(), &instance, Action::Read)
                .await?
                .instance
                .id();
            let (data, last_byte_offset) = for_request(
                rqctx,
                nexus.instance_serial_console(id, from, query.max_bytes),
            )
            .await?;
            Ok(HttpResponseOk(InstanceSerialConsoleData {
                data,
                last_byte_offset,
            }))
        })
        .await
    }

    async fn instance_serial_console_stream(
        rqctx: RequestContext<Self::Context>,
        path: Path<InstancePath>,
        query: Query<InstanceSerialConsoleStreamRequest>,
        websocket: WebsocketUpgrade,
    ) -> WebsocketEndpointResult {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let query = query.into_inner();
            let instance = path.into_inner().instance;
            let id = nexus
                .instance_lookup_authorized(
                    &opctx,
                    query.project.as_ref(),
                    &instance,
                    Action::Modify,
                )
                .await?
                .instance
                .id();
            // Connected to the sled agent before the user's upgrade is accepted: a failure is
            // still an HTTP error with its body.
            let sled = for_request(
                rqctx,
                nexus.instance_serial_console_connect(id, query.most_recent),
            )
            .await?;
            websocket
                .handle(move |connection| async move {
                    relay_serial_console(connection.into_inner(), sled).await?;
                    Ok(())
                })
                .map(WebsocketUpgraded)
        })
        .await
        .map(|upgraded| upgraded.0)
    }

    async fn instance_migrate(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
        body: TypedBody<InstanceMigrate>,
    ) -> Result<HttpResponseAccepted<Instance>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let instance = lookup_instance(nexus, &opctx, query, path, Action::Modify).await?;
            // Migration names physical sleds: the fleet's business (fleet admin).
            nexus.fleet_authorize(&opctx, Action::Modify).await?;
            let destination = body.into_inner().dst_sled_id;
            Ok(HttpResponseAccepted(instance_view(
                for_request(rqctx, nexus.instance_migrate_found(instance, destination)).await?,
                nexus.auto_restart_cooldown(),
            )))
        })
        .await
    }

    async fn instance_migration_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseOk<Vec<Migration>>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let id = lookup_instance(nexus, &opctx, query, path, Action::ListChildren)
                .await?
                .instance
                .id();
            let migrations = nexus.datastore().migration_list(Some(id)).await?;
            Ok(HttpResponseOk(
                migrations.into_iter().map(migration_view).collect(),
            ))
        })
        .await
    }

    async fn instance_vmm_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseOk<Vec<InstanceVmm>>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let instance = lookup_instance(nexus, &opctx, query, path, Action::ListChildren)
                .await?
                .instance;
            let vmms = nexus
                .datastore()
                .instance_vmm_history(instance.id())
                .await?;
            Ok(HttpResponseOk(
                vmms.into_iter()
                    .map(|vmm| instance_vmm_view(&instance, vmm))
                    .collect(),
            ))
        })
        .await
    }

    // Instance disks

    async fn instance_disk_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedByNameOrId<OptionalProjectSelector>>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseOk<ResultsPage<Disk>>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let query = query.into_inner();
            let limit = rqctx.page_limit(&query)?;
            let scan = scan_params(&query);
            let page = paginated_by(name_or_id_pagination(&query, limit)?);
            let instance = nexus
                .instance_lookup_authorized(
                    &opctx,
                    scan.selector.project.as_ref(),
                    &path.into_inner().instance,
                    Action::ListChildren,
                )
                .await?;
            let disks = nexus
                .instance_disk_list(instance.instance.id(), &page)
                .await?;
            let views = disk_views(nexus, disks).await?;
            Ok(HttpResponseOk(results_page_by_name_or_id(views, scan)?))
        })
        .await
    }

    async fn instance_disk_attach(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
        disk_to_attach: TypedBody<DiskPath>,
    ) -> Result<HttpResponseAccepted<Disk>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let instance = lookup_instance(nexus, &opctx, query, path, Action::Modify).await?;
            let disk = disk_to_attach.into_inner().disk;
            let attached =
                for_request(rqctx, nexus.instance_disk_attach(&instance.instance, &disk)).await?;
            Ok(HttpResponseAccepted(one_disk_view(nexus, attached).await?))
        })
        .await
    }

    async fn instance_disk_detach(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
        disk_to_detach: TypedBody<DiskPath>,
    ) -> Result<HttpResponseAccepted<Disk>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let instance = lookup_instance(nexus, &opctx, query, path, Action::Modify).await?;
            let disk = disk_to_detach.into_inner().disk;
            let detached =
                for_request(rqctx, nexus.instance_disk_detach(&instance.instance, &disk)).await?;
            Ok(HttpResponseAccepted(one_disk_view(nexus, detached).await?))
        })
        .await
    }

    // Disks

    async fn disk_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedByNameOrId<ProjectSelector>>,
    ) -> Result<HttpResponseOk<ResultsPage<Disk>>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let query = query.into_inner();
            let limit = rqctx.page_limit(&query)?;
            let scan = scan_params(&query);
            let page = paginated_by(name_or_id_pagination(&query, limit)?);
            let nexus = rqctx.context();
            let project = nexus
                .project_lookup_authorized(&opctx, &scan.selector.project, Action::ListChildren)
                .await?;
            let disks = nexus.disk_list(project.id(), &page).await?;
            let views = disk_views(nexus, disks).await?;
            Ok(HttpResponseOk(results_page_by_name_or_id(views, scan)?))
        })
        .await
    }

    async fn disk_create(
        rqctx: RequestContext<Self::Context>,
        query: Query<ProjectSelector>,
        body: TypedBody<DiskCreate>,
    ) -> Result<HttpResponseCreated<Disk>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let project = nexus
                .project_lookup_authorized(&opctx, &query.into_inner().project, Action::CreateChild)
                .await?;
            let created =
                for_request(rqctx, nexus.disk_create(project.id(), body.into_inner())).await?;
            Ok(HttpResponseCreated(one_disk_view(nexus, created).await?))
        })
        .await
    }

    async fn disk_view(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<DiskPath>,
    ) -> Result<HttpResponseOk<Disk>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let disk = lookup_disk(nexus, &opctx, query, path, Action::Read).await?;
            Ok(HttpResponseOk(one_disk_view(nexus, disk).await?))
        })
        .await
    }

    async fn disk_delete(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<DiskPath>,
    ) -> Result<HttpResponseDeleted, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let disk = lookup_disk(nexus, &opctx, query, path, Action::Delete).await?;
            for_request(rqctx, nexus.disk_delete(&disk)).await?;
            Ok(HttpResponseDeleted())
        })
        .await
    }

    async fn snapshot_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedByNameOrId<ProjectSelector>>,
    ) -> Result<HttpResponseOk<ResultsPage<Snapshot>>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let query = query.into_inner();
            let limit = rqctx.page_limit(&query)?;
            let scan = scan_params(&query);
            let page = paginated_by(name_or_id_pagination(&query, limit)?);
            let nexus = rqctx.context();
            let project = nexus
                .project_lookup_authorized(&opctx, &scan.selector.project, Action::ListChildren)
                .await?;
            let snapshots = nexus.datastore().snapshot_list(project.id(), &page).await?;
            let views = snapshots.into_iter().map(snapshot_view).collect();
            Ok(HttpResponseOk(results_page_by_name_or_id(views, scan)?))
        })
        .await
    }

    async fn snapshot_create(
        rqctx: RequestContext<Self::Context>,
        query: Query<ProjectSelector>,
        body: TypedBody<SnapshotCreate>,
    ) -> Result<HttpResponseCreated<Snapshot>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let project_selector = query.into_inner().project;
            let project = nexus
                .project_lookup_authorized(&opctx, &project_selector, Action::CreateChild)
                .await?;
            let params = body.into_inner();
            // The disk is read in the snapshot's project (by name), or by id, and must be
            // readable by the caller.
            let disk_project = match &params.disk {
                halyard_common::NameOrId::Name(_) => Some(project_selector),
                halyard_common::NameOrId::Id(_) => None,
            };
            let disk = nexus
                .disk_lookup_authorized(&opctx, disk_project.as_ref(), &params.disk, Action::Read)
                .await?;
            if disk.project_id() != project.id() {
                return Err(Error::invalid_request(
                    "the disk to snapshot must be in the snapshot's project",
                )
                .into());
            }
            let created = for_request(rqctx, nexus.snapshot_create(&disk, params)).await?;
            Ok(HttpResponseCreated(snapshot_view(created)))
        })
        .await
    }

    async fn snapshot_view(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<SnapshotPath>,
    ) -> Result<HttpResponseOk<Snapshot>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let snapshot = lookup_snapshot(nexus, &opctx, query, path, Action::Read).await?;
            Ok(HttpResponseOk(snapshot_view(snapshot)))
        })
        .await
    }

    async fn snapshot_delete(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<SnapshotPath>,
    ) -> Result<HttpResponseDeleted, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let snapshot = lookup_snapshot(nexus, &opctx, query, path, Action::Delete).await?;
            for_request(rqctx, nexus.snapshot_delete(&snapshot)).await?;
            Ok(HttpResponseDeleted())
        })
        .await
    }

    async fn vpc_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedByNameOrId<ProjectSelector>>,
    ) -> Result<HttpResponseOk<ResultsPage<Vpc>>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let query = query.into_inner();
            let limit = rqctx.page_limit(&query)?;
            let scan = scan_params(&query);
            let page = paginated_by(name_or_id_pagination(&query, limit)?);
            let nexus = rqctx.context();
            let project = nexus
                .project_lookup_authorized(&opctx, &scan.selector.project, Action::ListChildren)
                .await?;
            let vpcs = nexus.datastore().vpc_list(project.id(), &page).await?;
            let views = vpcs.into_iter().map(vpc_view).collect();
            Ok(HttpResponseOk(results_page_by_name_or_id(views, scan)?))
        })
        .await
    }

    async fn vpc_create(
        rqctx: RequestContext<Self::Context>,
        query: Query<ProjectSelector>,
        body: TypedBody<VpcCreate>,
    ) -> Result<HttpResponseCreated<Vpc>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let project = nexus
                .project_lookup_authorized(&opctx, &query.into_inner().project, Action::CreateChild)
                .await?;
            let (vpc, _subnet) = nexus.vpc_create(project.id(), body.into_inner()).await?;
            Ok(HttpResponseCreated(vpc_view(vpc)))
        })
        .await
    }

    async fn vpc_view(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<VpcPath>,
    ) -> Result<HttpResponseOk<Vpc>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let vpc = nexus
                .vpc_lookup_authorized(
                    &opctx,
                    query.into_inner().project.as_ref(),
                    &path.into_inner().vpc,
                    Action::Read,
                )
                .await?;
            Ok(HttpResponseOk(vpc_view(vpc)))
        })
        .await
    }

    async fn vpc_delete(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<VpcPath>,
    ) -> Result<HttpResponseDeleted, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let vpc = nexus
                .vpc_lookup_authorized(
                    &opctx,
                    query.into_inner().project.as_ref(),
                    &path.into_inner().vpc,
                    Action::Delete,
                )
                .await?;
            nexus.vpc_delete(&vpc).await?;
            Ok(HttpResponseDeleted())
        })
        .await
    }

    async fn vpc_subnet_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedByNameOrId<VpcSelector>>,
    ) -> Result<HttpResponseOk<ResultsPage<VpcSubnet>>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let query = query.into_inner();
            let limit = rqctx.page_limit(&query)?;
            let scan = scan_params(&query);
            let page = paginated_by(name_or_id_pagination(&query, limit)?);
            let nexus = rqctx.context();
            let vpc = nexus
                .vpc_lookup_authorized(
                    &opctx,
                    scan.selector.project.as_ref(),
                    &scan.selector.vpc,
                    Action::ListChildren,
                )
                .await?;
            let subnets = nexus.datastore().vpc_subnet_list(vpc.id(), &page).await?;
            let views = subnets.into_iter().map(vpc_subnet_view).collect();
            Ok(HttpResponseOk(results_page_by_name_or_id(views, scan)?))
        })
        .await
    }

    async fn vpc_subnet_create(
        rqctx: RequestContext<Self::Context>,
        query: Query<VpcSelector>,
        body: TypedBody<VpcSubnetCreate>,
    ) -> Result<HttpResponseCreated<VpcSubnet>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let selector = query.into_inner();
            let vpc = nexus
                .vpc_lookup_authorized(
                    &opctx,
                    selector.project.as_ref(),
                    &selector.vpc,
                    Action::CreateChild,
                )
                .await?;
            let subnet = nexus.vpc_subnet_create(&vpc, body.into_inner()).await?;
            Ok(HttpResponseCreated(vpc_subnet_view(subnet)))
        })
        .await
    }

    async fn vpc_subnet_view(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalVpcSelector>,
        path: Path<SubnetPath>,
    ) -> Result<HttpResponseOk<VpcSubnet>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let selector = query.into_inner();
            let (subnet, _vpc) = nexus
                .vpc_subnet_lookup_authorized(
                    &opctx,
                    selector.project.as_ref(),
                    selector.vpc.as_ref(),
                    &path.into_inner().subnet,
                    Action::Read,
                )
                .await?;
            Ok(HttpResponseOk(vpc_subnet_view(subnet)))
        })
        .await
    }

    async fn vpc_subnet_delete(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalVpcSelector>,
        path: Path<SubnetPath>,
    ) -> Result<HttpResponseDeleted, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let selector = query.into_inner();
            let (subnet, _vpc) = nexus
                .vpc_subnet_lookup_authorized(
                    &opctx,
                    selector.project.as_ref(),
                    selector.vpc.as_ref(),
                    &path.into_inner().subnet,
                    Action::Delete,
                )
                .await?;
            nexus.vpc_subnet_delete(&subnet).await?;
            Ok(HttpResponseDeleted())
        })
        .await
    }

    async fn instance_network_interface_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedByNameOrId<InstanceSelector>>,
    ) -> Result<HttpResponseOk<ResultsPage<InstanceNetworkInterface>>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let query = query.into_inner();
            let limit = rqctx.page_limit(&query)?;
            let scan = scan_params(&query);
            let page = paginated_by(name_or_id_pagination(&query, limit)?);
            let nexus = rqctx.context();
            let instance = nexus
                .instance_lookup_authorized(
                    &opctx,
                    scan.selector.project.as_ref(),
                    &scan.selector.instance,
                    Action::ListChildren,
                )
                .await?;
            let nics = nexus
                .datastore()
                .network_interface_list(instance.instance.id(), &page)
                .await?;
            let views = nics.into_iter().map(network_interface_view).collect();
            Ok(HttpResponseOk(results_page_by_name_or_id(views, scan)?))
        })
        .await
    }

    async fn instance_network_interface_create(
        rqctx: RequestContext<Self::Context>,
        query: Query<InstanceSelector>,
        body: TypedBody<InstanceNetworkInterfaceCreate>,
    ) -> Result<HttpResponseCreated<InstanceNetworkInterface>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let selector = query.into_inner();
            let instance = nexus
                .instance_lookup_authorized(
                    &opctx,
                    selector.project.as_ref(),
                    &selector.instance,
                    Action::CreateChild,
                )
                .await?;
            let nic = nexus
                .network_interface_create(&instance.instance, body.into_inner())
                .await?;
            Ok(HttpResponseCreated(network_interface_view(nic)))
        })
        .await
    }

    async fn instance_network_interface_view(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalInstanceSelector>,
        path: Path<NetworkInterfacePath>,
    ) -> Result<HttpResponseOk<InstanceNetworkInterface>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let selector = query.into_inner();
            let nic = nexus
                .network_interface_lookup_authorized(
                    &opctx,
                    selector.project.as_ref(),
                    selector.instance.as_ref(),
                    &path.into_inner().interface,
                    Action::Read,
                )
                .await?;
            Ok(HttpResponseOk(network_interface_view(nic)))
        })
        .await
    }

    async fn instance_network_interface_delete(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalInstanceSelector>,
        path: Path<NetworkInterfacePath>,
    ) -> Result<HttpResponseDeleted, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            let selector = query.into_inner();
            let nic = nexus
                .network_interface_lookup_authorized(
                    &opctx,
                    selector.project.as_ref(),
                    selector.instance.as_ref(),
                    &path.into_inner().interface,
                    Action::Delete,
                )
                .await?;
            nexus.network_interface_delete(&nic).await?;
            Ok(HttpResponseDeleted())
        })
        .await
    }

    async fn ping(rqctx: RequestContext<Self::Context>) -> Result<HttpResponseOk<Ping>, HttpError> {
        unauthenticated_request(&rqctx, async {
            Ok(HttpResponseOk(Ping {
                status: PingStatus::Ok,
            }))
        })
        .await
    }

    async fn sled_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedById>,
    ) -> Result<HttpResponseOk<ResultsPage<Sled>>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            rqctx
                .context()
                .fleet_authorize(&opctx, Action::ListChildren)
                .await?;
            let query = query.into_inner();
            let limit = rqctx.page_limit(&query)?;
            let page = id_pagination(&query, limit);
            let params = DataPageParams {
                marker: page.marker,
                direction: order(page.direction),
                limit: page.limit,
            };
            let datastore = rqctx.context().datastore();
            let sleds = datastore.sled_list(&params).await?;
            let ids: Vec<_> = sleds.iter().map(|sled| sled.id()).collect();
            let live_vmms = datastore.sled_live_vmm_counts(&ids).await?;
            let views = sleds
                .into_iter()
                .map(|sled| {
                    let count = live_vmms.get(&sled.id()).copied().unwrap_or(0);
                    sled_view(sled, count)
                })
                .collect();
            Ok(HttpResponseOk(results_page_by_id(
                views,
                scan_params(&query),
            )?))
        })
        .await
    }

    async fn system_saga_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<SagaInProgress>>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            nexus.fleet_authorize(&opctx, Action::Read).await?;
            let sagas = nexus.datastore().saga_list(false).await?;
            Ok(HttpResponseOk(
                sagas
                    .into_iter()
                    .map(|saga| SagaInProgress {
                        id: saga.id(),
                        name: saga.name,
                        state: saga.saga_state.0.label().to_string(),
                        creator: saga.creator.0.into_untyped_uuid(),
                        current_sec: saga.current_sec.0.into_untyped_uuid(),
                        time_created: saga.time_created,
                        resume_failure: saga.resume_failure,
                    })
                    .collect(),
            ))
        })
        .await
    }

    async fn system_background_task_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<halyard_common::background_task::BackgroundTask>>, HttpError>
    {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            nexus.fleet_authorize(&opctx, Action::Read).await?;
            Ok(HttpResponseOk(nexus.background_tasks().list()))
        })
        .await
    }

    async fn system_metrics(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<http::Response<Body>, HttpError> {
        let rqctx = &rqctx;
        external_request(rqctx, move |opctx| async move {
            let nexus = rqctx.context();
            nexus.fleet_authorize(&opctx, Action::Read).await?;
            nexus.metrics_response().await
        })
        .await
    }

    async fn console_root(
        _rqctx: RequestContext<Self::Context>,
    ) -> Result<http::Response<Body>, HttpError> {
        console::page()
    }

    async fn console_login(
        _rqctx: RequestContext<Self::Context>,
    ) -> Result<http::Response<Body>, HttpError> {
        console::page()
    }

    async fn console_projects(
        _rqctx: RequestContext<Self::Context>,
        _path: Path<ConsolePath>,
    ) -> Result<http::Response<Body>, HttpError> {
        console::page()
    }

    async fn console_system(
        _rqctx: RequestContext<Self::Context>,
        _path: Path<ConsolePath>,
    ) -> Result<http::Response<Body>, HttpError> {
        console::page()
    }

    async fn console_device_verify(
        _rqctx: RequestContext<Self::Context>,
    ) -> Result<http::Response<Body>, HttpError> {
        console::page()
    }

    async fn console_asset(
        _rqctx: RequestContext<Self::Context>,
        path: Path<ConsolePath>,
    ) -> Result<http::Response<Body>, HttpError> {
        console::asset(&path.into_inner().path)
    }
}
