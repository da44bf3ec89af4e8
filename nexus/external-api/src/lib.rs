//! Nexus's external HTTP API: what users (and the official Oxide SDK) call. A dropshot trait
//! apart from its implementation (in Nexus); `openapi/nexus-external.json` is generated from it
//! and `nexus-external-client` from that.
//!
//! The API is a subset of Oxide's `/v1` API, wire-compatible with it: the paths, methods,
//! status codes, operation ids (the trait's method names), query parameters and JSON field
//! names are Oxide's, so the `oxide` crate (0.19) works against a Halyard Nexus unmodified.
//!
//! - [`params`]: request bodies and selectors (`ProjectCreate`, `InstanceCreate`, ...).
//! - [`views`]: what the API returns (`Project`, `Instance`, `Sled`, `Vpc`, `VpcSubnet`,
//!   `InstanceNetworkInterface`, ...).
//! - [`pagination`]: Oxide's list parameters (`limit`, `page_token`, `sort_by`) on dropshot's
//!   pagination, and the helpers handlers use to read a page request and build a page.

pub mod pagination;
pub mod params;
pub mod views;

use dropshot::{
    Body, HttpError, HttpResponseAccepted, HttpResponseCreated, HttpResponseDeleted,
    HttpResponseOk, HttpResponseUpdatedNoContent, Path, Query, RequestContext, ResultsPage,
    TypedBody, WebsocketEndpointResult, WebsocketUpgrade,
};
use halyard_common::background_task::BackgroundTask;
use pagination::{PaginatedById, PaginatedByNameOrId};
use params::{
    ConsolePath, DeviceAccessTokenRequest, DeviceAuthRequest, DeviceAuthVerify, DiskCreate,
    DiskPath, InstanceCreate, InstanceMigrate, InstanceNetworkInterfaceCreate, InstancePath,
    InstanceSelector, InstanceSerialConsoleRequest, InstanceSerialConsoleStreamRequest,
    InstanceUpdate, NetworkInterfacePath, OptionalInstanceSelector, OptionalProjectSelector,
    OptionalVpcSelector, ProjectCreate, ProjectPath, ProjectSelector, SnapshotCreate, SnapshotPath,
    SubnetPath, TokenLogin, VpcCreate, VpcPath, VpcSelector, VpcSubnetCreate,
};
use views::{
    CurrentUser, Disk, Instance, InstanceNetworkInterface, InstanceSerialConsoleData, InstanceVmm,
    Migration, Ping, Project, ProjectRolePolicy, SagaInProgress, Sled, Snapshot, Vpc, VpcSubnet,
};

#[dropshot::api_description]
pub trait NexusExternalApi {
    type Context;

    // Device login (OAuth 2.0 Device Authorization Grant) and the current user

    /// Start an OAuth 2.0 Device Authorization Grant
    ///
    /// For an *unauthenticated* client (e.g. the `oxide` CLI logging in): answers a
    /// `device_code` to poll `/device/token` with and a `user_code` for the user to confirm
    /// (`/device/confirm`), as RFC 8628 §3.2's JSON.
    #[endpoint {
        method = POST,
        path = "/device/auth",
        content_type = "application/x-www-form-urlencoded",
        tags = ["console-auth"],
    }]
    async fn device_auth_request(
        rqctx: RequestContext<Self::Context>,
        params: TypedBody<DeviceAuthRequest>,
    ) -> Result<http::Response<Body>, HttpError>;

    /// Confirm an OAuth 2.0 Device Authorization Grant
    ///
    /// An authenticated user confirms the user code a client showed them; the client's next
    /// poll of `/device/token` gets a token for this user.
    #[endpoint { method = POST, path = "/device/confirm", tags = ["console-auth"] }]
    async fn device_auth_confirm(
        rqctx: RequestContext<Self::Context>,
        params: TypedBody<DeviceAuthVerify>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError>;

    /// Request a device access token
    ///
    /// Polled by the client until the user confirmed: `{"error": "authorization_pending"}`
    /// (400) until then, the token once (RFC 8628 §3.4-3.5, RFC 6749 §5).
    #[endpoint {
        method = POST,
        path = "/device/token",
        content_type = "application/x-www-form-urlencoded",
        tags = ["console-auth"],
    }]
    async fn device_access_token(
        rqctx: RequestContext<Self::Context>,
        params: TypedBody<DeviceAccessTokenRequest>,
    ) -> Result<http::Response<Body>, HttpError>;

    /// Fetch the user associated with the current session
    #[endpoint { method = GET, path = "/v1/me", tags = ["current-user"] }]
    async fn current_user_view(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<CurrentUser>, HttpError>;

    /// Sign in to the web console with an API token (a Halyard extension)
    ///
    /// Exchanges an API token the caller holds for a console session: 204 with a `session`
    /// cookie (`HttpOnly`, `SameSite=Strict`, `Secure` over TLS) that authenticates every
    /// `/v1` request from the same site until it expires (8 hours) or `/v1/logout` ends it.
    /// A token that does not authenticate is 401, and no cookie is set.
    #[endpoint { method = POST, path = "/v1/login/token", tags = ["console-auth"] }]
    async fn login_token(
        rqctx: RequestContext<Self::Context>,
        body: TypedBody<TokenLogin>,
    ) -> Result<http::Response<Body>, HttpError>;

    /// Sign out of the web console
    ///
    /// Ends the request's console session (204, the cookie cleared). A request with no
    /// session, or an ended one, gets the same answer.
    #[endpoint { method = POST, path = "/v1/logout", tags = ["console-auth"] }]
    async fn logout(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<http::Response<Body>, HttpError>;

    // Projects

    /// List projects.
    #[endpoint { method = GET, path = "/v1/projects", tags = ["projects"] }]
    async fn project_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedByNameOrId>,
    ) -> Result<HttpResponseOk<ResultsPage<Project>>, HttpError>;

    /// Create a project.
    #[endpoint { method = POST, path = "/v1/projects", tags = ["projects"] }]
    async fn project_create(
        rqctx: RequestContext<Self::Context>,
        body: TypedBody<ProjectCreate>,
    ) -> Result<HttpResponseCreated<Project>, HttpError>;

    /// Fetch a project, by name or id.
    #[endpoint { method = GET, path = "/v1/projects/{project}", tags = ["projects"] }]
    async fn project_view(
        rqctx: RequestContext<Self::Context>,
        path: Path<ProjectPath>,
    ) -> Result<HttpResponseOk<Project>, HttpError>;

    /// Delete a project. Only an empty project (no instances) can be deleted.
    #[endpoint { method = DELETE, path = "/v1/projects/{project}", tags = ["projects"] }]
    async fn project_delete(
        rqctx: RequestContext<Self::Context>,
        path: Path<ProjectPath>,
    ) -> Result<HttpResponseDeleted, HttpError>;

    /// Fetch a project's IAM policy: every role assigned on it. Needs the project's viewer
    /// role.
    #[endpoint { method = GET, path = "/v1/projects/{project}/policy", tags = ["projects"] }]
    async fn project_policy_view(
        rqctx: RequestContext<Self::Context>,
        path: Path<ProjectPath>,
    ) -> Result<HttpResponseOk<ProjectRolePolicy>, HttpError>;

    /// Update a project's IAM policy: the assignments given replace all of the project's.
    /// Needs the project's admin role.
    #[endpoint { method = PUT, path = "/v1/projects/{project}/policy", tags = ["projects"] }]
    async fn project_policy_update(
        rqctx: RequestContext<Self::Context>,
        path: Path<ProjectPath>,
        body: TypedBody<ProjectRolePolicy>,
    ) -> Result<HttpResponseOk<ProjectRolePolicy>, HttpError>;

    // Instances

    /// List the instances of a project. `project` is required on the first page (later pages
    /// carry it in `page_token`).
    #[endpoint { method = GET, path = "/v1/instances", tags = ["instances"] }]
    async fn instance_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedByNameOrId<ProjectSelector>>,
    ) -> Result<HttpResponseOk<ResultsPage<Instance>>, HttpError>;

    /// Create an instance in a project. It starts right away unless `start` is `false`.
    #[endpoint { method = POST, path = "/v1/instances", tags = ["instances"] }]
    async fn instance_create(
        rqctx: RequestContext<Self::Context>,
        query: Query<ProjectSelector>,
        body: TypedBody<InstanceCreate>,
    ) -> Result<HttpResponseCreated<Instance>, HttpError>;

    /// Fetch an instance. `project` is required when `{instance}` is a name and must be absent
    /// when it is an id.
    #[endpoint { method = GET, path = "/v1/instances/{instance}", tags = ["instances"] }]
    async fn instance_view(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseOk<Instance>, HttpError>;

    /// Update an instance: its size (taking effect at its next start; refused while it runs)
    /// and its auto-restart policy (at any time). `project` as for `instance_view`.
    #[endpoint { method = PUT, path = "/v1/instances/{instance}", tags = ["instances"] }]
    async fn instance_update(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
        body: TypedBody<InstanceUpdate>,
    ) -> Result<HttpResponseOk<Instance>, HttpError>;

    /// Delete an instance. Only a stopped (or failed) instance can be deleted. `project` is
    /// required when `{instance}` is a name and must be absent when it is an id.
    #[endpoint { method = DELETE, path = "/v1/instances/{instance}", tags = ["instances"] }]
    async fn instance_delete(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseDeleted, HttpError>;

    /// Boot an instance. Returns once the start is under way (202), with the instance as it
    /// is then; poll `instance_view` for `running`. `project` as for `instance_view`.
    #[endpoint { method = POST, path = "/v1/instances/{instance}/start", tags = ["instances"] }]
    async fn instance_start(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseAccepted<Instance>, HttpError>;

    /// Stop an instance. Returns once the stop is under way (202); poll `instance_view` for
    /// `stopped`. `project` as for `instance_view`.
    #[endpoint { method = POST, path = "/v1/instances/{instance}/stop", tags = ["instances"] }]
    async fn instance_stop(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseAccepted<Instance>, HttpError>;

    /// Reboot a running instance. Returns once the reboot is under way (202). `project` as for
    /// `instance_view`.
    #[endpoint { method = POST, path = "/v1/instances/{instance}/reboot", tags = ["instances"] }]
    async fn instance_reboot(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseAccepted<Instance>, HttpError>;

    /// Fetch instance serial console
    ///
    /// Bytes of a running instance's console output, by offset: exactly one of `from_start`
    /// and `most_recent` (else 400). The newest 1 MiB is kept; older output is gone, and a
    /// read that starts there gets what remains. An instance that is not running (or
    /// rebooting, or migrating) has no console to read: 400. `project` as for `instance_view`.
    #[endpoint {
        method = GET,
        path = "/v1/instances/{instance}/serial-console",
        tags = ["instances"],
    }]
    async fn instance_serial_console(
        rqctx: RequestContext<Self::Context>,
        path: Path<InstancePath>,
        query: Query<InstanceSerialConsoleRequest>,
    ) -> Result<HttpResponseOk<InstanceSerialConsoleData>, HttpError>;

    /// Stream instance serial console
    ///
    /// A WebSocket: the console's history from `most_recent` bytes back (absent: all that is
    /// kept), then live output, as binary frames; binary or text frames sent are typed into
    /// the console. The server closes it (with a close frame) when the VMM serving it is
    /// gone: the instance stopped or migrated (a reboot keeps the stream). An instance that is
    /// not running is refused with 400 before the upgrade. `project` as for `instance_view`.
    #[endpoint {
        method = GET,
        path = "/v1/instances/{instance}/serial-console/stream",
        tags = ["instances"],
    }]
    async fn instance_serial_console_stream(
        rqctx: RequestContext<Self::Context>,
        path: Path<InstancePath>,
        query: Query<InstanceSerialConsoleStreamRequest>,
        websocket: WebsocketUpgrade,
    ) -> WebsocketEndpointResult;

    /// Live-migrate a running instance to another sled (operator action; a Halyard
    /// extension). Returns once the migration has begun (202); the instance shows
    /// `migrating` until it ends, and its migrations list says how it ended.
    #[endpoint { method = POST, path = "/v1/instances/{instance}/migrate", tags = ["instances"] }]
    async fn instance_migrate(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
        body: TypedBody<InstanceMigrate>,
    ) -> Result<HttpResponseAccepted<Instance>, HttpError>;

    /// An instance's live migrations, oldest first (a Halyard extension).
    #[endpoint { method = GET, path = "/v1/instances/{instance}/migrations", tags = ["instances"] }]
    async fn instance_migration_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseOk<Vec<Migration>>, HttpError>;

    /// An instance's VMMs, oldest first (a Halyard extension): the active one, a migration's
    /// target, and every one it had before, each with its sled and state.
    #[endpoint { method = GET, path = "/v1/instances/{instance}/vmms", tags = ["instances"] }]
    async fn instance_vmm_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseOk<Vec<InstanceVmm>>, HttpError>;

    // Instance disks

    /// List disks for instance
    ///
    /// The disks attached to the instance (and those being attached or detached), by name or id.
    #[endpoint { method = GET, path = "/v1/instances/{instance}/disks", tags = ["instances"] }]
    async fn instance_disk_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedByNameOrId<OptionalProjectSelector>>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseOk<ResultsPage<Disk>>, HttpError>;

    /// Attach disk to instance
    ///
    /// The instance must be stopped and the disk detached (409 otherwise); an instance has at
    /// most 8 disks. The disk is given by name (in the instance's project) or id.
    #[endpoint {
        method = POST,
        path = "/v1/instances/{instance}/disks/attach",
        tags = ["instances"],
    }]
    async fn instance_disk_attach(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
        disk_to_attach: TypedBody<DiskPath>,
    ) -> Result<HttpResponseAccepted<Disk>, HttpError>;

    /// Detach disk from instance
    ///
    /// The instance must be stopped and the disk attached to it (409 otherwise); its boot disk
    /// cannot be detached.
    #[endpoint {
        method = POST,
        path = "/v1/instances/{instance}/disks/detach",
        tags = ["instances"],
    }]
    async fn instance_disk_detach(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<InstancePath>,
        disk_to_detach: TypedBody<DiskPath>,
    ) -> Result<HttpResponseAccepted<Disk>, HttpError>;

    // Disks

    /// List the disks of a project. `project` is required on the first page (later pages
    /// carry it in `page_token`).
    #[endpoint { method = GET, path = "/v1/disks", tags = ["disks"] }]
    async fn disk_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedByNameOrId<ProjectSelector>>,
    ) -> Result<HttpResponseOk<ResultsPage<Disk>>, HttpError>;

    /// Create a disk in a project: a blank disk of `size` bytes (a whole number of blocks of
    /// its `block_size`, at most 1023 GiB), kept as three replicas on three sleds. Answers
    /// once it is `detached` (ready to attach). Too little storage: 507, nothing created.
    #[endpoint { method = POST, path = "/v1/disks", tags = ["disks"] }]
    async fn disk_create(
        rqctx: RequestContext<Self::Context>,
        query: Query<ProjectSelector>,
        body: TypedBody<DiskCreate>,
    ) -> Result<HttpResponseCreated<Disk>, HttpError>;

    /// Fetch a disk. `project` is required when `{disk}` is a name and must be absent when it
    /// is an id.
    #[endpoint { method = GET, path = "/v1/disks/{disk}", tags = ["disks"] }]
    async fn disk_view(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<DiskPath>,
    ) -> Result<HttpResponseOk<Disk>, HttpError>;

    /// Delete a disk. Only a detached (or faulted) disk can be deleted: an attached one is
    /// refused with 409. `project` as for `disk_view`.
    #[endpoint { method = DELETE, path = "/v1/disks/{disk}", tags = ["disks"] }]
    async fn disk_delete(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<DiskPath>,
    ) -> Result<HttpResponseDeleted, HttpError>;

    // Snapshots

    /// List the snapshots of a project. `project` is required on the first page (later pages
    /// carry it in `page_token`).
    #[endpoint { method = GET, path = "/v1/snapshots", tags = ["snapshots"] }]
    async fn snapshot_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedByNameOrId<ProjectSelector>>,
    ) -> Result<HttpResponseOk<ResultsPage<Snapshot>>, HttpError>;

    /// Create a snapshot of a disk: a read-only copy of its data at one point in time, kept
    /// beside each of the disk's three regions. A disk attached to a running instance is
    /// snapshotted crash-consistently: the instance's vCPUs pause for the snapshot. Answers
    /// once it is `ready`. `disk` is a name in `project`, or an id. Too little storage on a
    /// region's sled: 507, nothing created.
    #[endpoint { method = POST, path = "/v1/snapshots", tags = ["snapshots"] }]
    async fn snapshot_create(
        rqctx: RequestContext<Self::Context>,
        query: Query<ProjectSelector>,
        body: TypedBody<SnapshotCreate>,
    ) -> Result<HttpResponseCreated<Snapshot>, HttpError>;

    /// Fetch a snapshot. `project` is required when `{snapshot}` is a name and must be absent
    /// when it is an id.
    #[endpoint { method = GET, path = "/v1/snapshots/{snapshot}", tags = ["snapshots"] }]
    async fn snapshot_view(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<SnapshotPath>,
    ) -> Result<HttpResponseOk<Snapshot>, HttpError>;

    /// Delete a snapshot (a `ready` or `faulted` one; 409 while it is being created). Disks
    /// made from it keep their data. `project` as for `snapshot_view`.
    #[endpoint { method = DELETE, path = "/v1/snapshots/{snapshot}", tags = ["snapshots"] }]
    async fn snapshot_delete(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<SnapshotPath>,
    ) -> Result<HttpResponseDeleted, HttpError>;

    // VPCs

    /// List the VPCs of a project. `project` is required on the first page (later pages
    /// carry it in `page_token`). Every project has a VPC named `default`.
    #[endpoint { method = GET, path = "/v1/vpcs", tags = ["vpcs"] }]
    async fn vpc_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedByNameOrId<ProjectSelector>>,
    ) -> Result<HttpResponseOk<ResultsPage<Vpc>>, HttpError>;

    /// Create a VPC in a project, with a subnet named `default` (172.30.0.0/22 and the first
    /// /64 of the VPC's IPv6 prefix) unless `defaults` omits it. Its VNI is chosen by the
    /// system.
    #[endpoint { method = POST, path = "/v1/vpcs", tags = ["vpcs"] }]
    async fn vpc_create(
        rqctx: RequestContext<Self::Context>,
        query: Query<ProjectSelector>,
        body: TypedBody<VpcCreate>,
    ) -> Result<HttpResponseCreated<Vpc>, HttpError>;

    /// Fetch a VPC. `project` is required when `{vpc}` is a name and must be absent when it
    /// is an id.
    #[endpoint { method = GET, path = "/v1/vpcs/{vpc}", tags = ["vpcs"] }]
    async fn vpc_view(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<VpcPath>,
    ) -> Result<HttpResponseOk<Vpc>, HttpError>;

    /// Delete a VPC and its subnets. Refused with 409 while any network interface is in it.
    /// `project` as for `vpc_view`.
    #[endpoint { method = DELETE, path = "/v1/vpcs/{vpc}", tags = ["vpcs"] }]
    async fn vpc_delete(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalProjectSelector>,
        path: Path<VpcPath>,
    ) -> Result<HttpResponseDeleted, HttpError>;

    // VPC subnets

    /// List the subnets of a VPC. `vpc` is required on the first page, and `project` when
    /// `vpc` is a name (later pages carry them in `page_token`).
    #[endpoint { method = GET, path = "/v1/vpc-subnets", tags = ["vpcs"] }]
    async fn vpc_subnet_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedByNameOrId<VpcSelector>>,
    ) -> Result<HttpResponseOk<ResultsPage<VpcSubnet>>, HttpError>;

    /// Create a subnet in a VPC: a private IPv4 block (RFC 1918, a /8 to a /26) that
    /// overlaps no other subnet of the VPC, and a /64 of the VPC's IPv6 prefix. The first
    /// five addresses of the IPv4 block and its last are reserved. `custom_router` is not
    /// supported (400).
    #[endpoint { method = POST, path = "/v1/vpc-subnets", tags = ["vpcs"] }]
    async fn vpc_subnet_create(
        rqctx: RequestContext<Self::Context>,
        query: Query<VpcSelector>,
        body: TypedBody<VpcSubnetCreate>,
    ) -> Result<HttpResponseCreated<VpcSubnet>, HttpError>;

    /// Fetch a subnet. When `{subnet}` is a name, `vpc` is required (and `project` when `vpc`
    /// is a name); when it is an id, neither may be given.
    #[endpoint { method = GET, path = "/v1/vpc-subnets/{subnet}", tags = ["vpcs"] }]
    async fn vpc_subnet_view(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalVpcSelector>,
        path: Path<SubnetPath>,
    ) -> Result<HttpResponseOk<VpcSubnet>, HttpError>;

    /// Delete a subnet. Refused with 409 while any network interface is in it. Selectors as
    /// for `vpc_subnet_view`.
    #[endpoint { method = DELETE, path = "/v1/vpc-subnets/{subnet}", tags = ["vpcs"] }]
    async fn vpc_subnet_delete(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalVpcSelector>,
        path: Path<SubnetPath>,
    ) -> Result<HttpResponseDeleted, HttpError>;

    // Network interfaces

    /// List the network interfaces of an instance. `instance` is required on the first page,
    /// and `project` when `instance` is a name (later pages carry them in `page_token`).
    #[endpoint { method = GET, path = "/v1/network-interfaces", tags = ["instances"] }]
    async fn instance_network_interface_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedByNameOrId<InstanceSelector>>,
    ) -> Result<HttpResponseOk<ResultsPage<InstanceNetworkInterface>>, HttpError>;

    /// Create a network interface on an instance, in a subnet of a VPC of the instance's
    /// project. Only while the instance is stopped (409 otherwise). Its MAC and IPv4 address
    /// are chosen by the system unless an explicit IPv4 address is given; a full subnet or
    /// a taken address is 409. An instance has at most 8 interfaces; its first is its
    /// primary.
    #[endpoint { method = POST, path = "/v1/network-interfaces", tags = ["instances"] }]
    async fn instance_network_interface_create(
        rqctx: RequestContext<Self::Context>,
        query: Query<InstanceSelector>,
        body: TypedBody<InstanceNetworkInterfaceCreate>,
    ) -> Result<HttpResponseCreated<InstanceNetworkInterface>, HttpError>;

    /// Fetch a network interface. When `{interface}` is a name, `instance` is required (and
    /// `project` when `instance` is a name); when it is an id, neither may be given.
    #[endpoint { method = GET, path = "/v1/network-interfaces/{interface}", tags = ["instances"] }]
    async fn instance_network_interface_view(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalInstanceSelector>,
        path: Path<NetworkInterfacePath>,
    ) -> Result<HttpResponseOk<InstanceNetworkInterface>, HttpError>;

    /// Delete a network interface (its address and MAC are free again). Only while the
    /// instance is stopped (409 otherwise); the primary interface only when it is the last
    /// (400 otherwise). Selectors as for `instance_network_interface_view`.
    #[endpoint {
        method = DELETE,
        path = "/v1/network-interfaces/{interface}",
        tags = ["instances"],
    }]
    async fn instance_network_interface_delete(
        rqctx: RequestContext<Self::Context>,
        query: Query<OptionalInstanceSelector>,
        path: Path<NetworkInterfacePath>,
    ) -> Result<HttpResponseDeleted, HttpError>;

    // System status

    /// Ping the API: answers `{"status": "ok"}` whenever it answers at all, with no token
    /// needed (what a load balancer's health check asks).
    #[endpoint { method = GET, path = "/v1/ping", tags = ["system/status"] }]
    async fn ping(rqctx: RequestContext<Self::Context>) -> Result<HttpResponseOk<Ping>, HttpError>;

    // System hardware

    /// List the sleds, by id.
    #[endpoint { method = GET, path = "/v1/system/hardware/sleds", tags = ["system/hardware"] }]
    async fn sled_list(
        rqctx: RequestContext<Self::Context>,
        query: Query<PaginatedById>,
    ) -> Result<HttpResponseOk<ResultsPage<Sled>>, HttpError>;

    /// Sagas in progress on every Nexus, oldest first (a Halyard extension; fleet viewers).
    #[endpoint { method = GET, path = "/v1/system/sagas", tags = ["system/status"] }]
    async fn system_saga_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<SagaInProgress>>, HttpError>;

    /// This Nexus's background tasks and what each did last (a Halyard extension; fleet
    /// viewers).
    #[endpoint { method = GET, path = "/v1/system/background-tasks", tags = ["system/status"] }]
    async fn system_background_task_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<BackgroundTask>>, HttpError>;

    /// This Nexus's metrics in Prometheus's text format (a Halyard extension; fleet viewers):
    /// what the internal API's `/metrics` serves, for an operator's browser.
    #[endpoint { method = GET, path = "/v1/system/metrics", tags = ["system/status"] }]
    async fn system_metrics(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<http::Response<Body>, HttpError>;

    // The web console: its page for every route it draws, and its built assets. Not part of
    // the API (unpublished); the page calls the endpoints above like any client.

    /// The console's page.
    #[endpoint { method = GET, path = "/", unpublished = true }]
    async fn console_root(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<http::Response<Body>, HttpError>;

    /// The console's sign-in page.
    #[endpoint { method = GET, path = "/login", unpublished = true }]
    async fn console_login(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<http::Response<Body>, HttpError>;

    /// The console's pages of projects and what is in them.
    #[endpoint { method = GET, path = "/projects/{path:.*}", unpublished = true }]
    async fn console_projects(
        rqctx: RequestContext<Self::Context>,
        path: Path<ConsolePath>,
    ) -> Result<http::Response<Body>, HttpError>;

    /// The console's operator pages.
    #[endpoint { method = GET, path = "/system/{path:.*}", unpublished = true }]
    async fn console_system(
        rqctx: RequestContext<Self::Context>,
        path: Path<ConsolePath>,
    ) -> Result<http::Response<Body>, HttpError>;

    /// The console's page where a signed-in user confirms a CLI's device login.
    #[endpoint { method = GET, path = "/device/verify", unpublished = true }]
    async fn console_device_verify(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<http::Response<Body>, HttpError>;

    /// The console's built assets (script and style).
    #[endpoint { method = GET, path = "/assets/{path:.*}", unpublished = true }]
    async fn console_asset(
        rqctx: RequestContext<Self::Context>,
        path: Path<ConsolePath>,
    ) -> Result<http::Response<Body>, HttpError>;
}

#[cfg(test)]
mod tests;
