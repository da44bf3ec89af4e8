//! What the API returns. Field names and types are Oxide's (`oxide` 0.19 deserializes these
//! strictly: every field it does not have as optional must be present).

use crate::params::{InstanceAutoRestartPolicy, InstanceCpuPlatform};
use chrono::{DateTime, Utc};
use halyard_common::ids::{
    DiskUuid, InstanceUuid, MigrationUuid, NetworkInterfaceUuid, ProjectUuid, SledUuid,
    SnapshotUuid, VmmUuid, VpcSubnetUuid, VpcUuid,
};
use halyard_common::net::{Ipv4Net, Ipv6Net, MacAddr};
use halyard_common::{BlockSize, ByteCount, InstanceState, MigrationState, Name};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};
use uuid::Uuid;

/// View of a Project
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct Project {
    /// Unique, immutable, system-controlled identifier for each resource
    pub id: ProjectUuid,
    /// Unique, mutable, user-controlled identifier for each resource
    pub name: Name,
    /// Human-readable free-form text about a resource
    pub description: String,
    /// Timestamp when this resource was created
    pub time_created: DateTime<Utc>,
    /// Timestamp when this resource was last modified
    pub time_modified: DateTime<Utc>,
}

/// Contents of an Instance's serial console buffer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct InstanceSerialConsoleData {
    /// The bytes starting from the requested offset up to either the end of the buffer or
    /// the request's `max_bytes`. Provided as a u8 array rather than a string, as it may not
    /// be UTF-8.
    pub data: Vec<u8>,
    /// The absolute offset since boot (suitable for use as `byte_offset` in a subsequent
    /// request) of the last byte returned in `data`.
    pub last_byte_offset: u64,
}

/// View of an Instance
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct Instance {
    /// Unique, immutable, system-controlled identifier for each resource
    pub id: InstanceUuid,
    /// Unique, mutable, user-controlled identifier for each resource
    pub name: Name,
    /// Human-readable free-form text about a resource
    pub description: String,
    /// Timestamp when this resource was created
    pub time_created: DateTime<Utc>,
    /// Timestamp when this resource was last modified
    pub time_modified: DateTime<Utc>,
    /// ID for the project containing this instance
    pub project_id: ProjectUuid,
    /// RFC1035-compliant hostname for the instance
    pub hostname: String,
    /// Number of CPUs allocated for this instance
    pub ncpus: u16,
    /// Memory allocated for this instance, in bytes
    pub memory: ByteCount,
    /// Running state of the instance
    pub run_state: InstanceState,
    /// When `run_state` last changed
    pub time_run_state_updated: DateTime<Utc>,
    /// `true` if this instance's auto-restart policy will permit the control plane to
    /// automatically restart it if it enters the `Failed` state. Always `false` in Halyard,
    /// which never restarts an instance by itself.
    pub auto_restart_enabled: bool,
    /// The auto-restart policy configured for this instance, or `null` if none was.
    pub auto_restart_policy: Option<InstanceAutoRestartPolicy>,
    /// The time at which the auto-restart cooldown period for this instance completes
    /// (`null`: never auto-restarted, or the cooldown has expired).
    pub auto_restart_cooldown_expiration: Option<DateTime<Utc>>,
    /// The most recent time this instance was automatically restarted (`null`: never).
    pub time_last_auto_restarted: Option<DateTime<Utc>>,
    /// The ID of the disk used to boot this instance, if a specific one is assigned
    pub boot_disk_id: Option<Uuid>,
    /// The CPU platform for this instance (`null`: no particular platform required).
    pub cpu_platform: Option<InstanceCpuPlatform>,
    /// Whether this instance has opted in to jumbo frames on its primary network interface.
    pub enable_jumbo_frames: bool,
    /// The live migration in progress, if any (a Halyard extension; see `instance_migrate`).
    #[serde(default)]
    pub migration_id: Option<MigrationUuid>,
}

/// A live migration of an instance from one VMM to another (a Halyard extension).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct Migration {
    pub id: MigrationUuid,
    pub instance_id: InstanceUuid,
    pub source_propolis_id: VmmUuid,
    pub target_propolis_id: VmmUuid,
    /// The source side's state, as its sled agent reported it.
    pub source_state: MigrationState,
    /// The target side's state, as its sled agent reported it.
    pub target_state: MigrationState,
    pub time_created: DateTime<Utc>,
    pub time_source_updated: Option<DateTime<Utc>>,
    pub time_target_updated: Option<DateTime<Utc>>,
    /// Set when the migration's saga unwound before the migration began.
    pub time_deleted: Option<DateTime<Utc>>,
}

/// An operator's view of a Sled.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct Sled {
    /// Unique, immutable, system-controlled identifier for each resource
    pub id: SledUuid,
    /// Timestamp when this resource was created
    pub time_created: DateTime<Utc>,
    /// Timestamp when this resource was last modified
    pub time_modified: DateTime<Utc>,
    pub baseboard: Baseboard,
    /// The rack to which this Sled is currently attached
    pub rack_id: Uuid,
    /// The physical slot in the rack where this sled was last observed to be located, or
    /// `null` if its location is not known.
    pub slot: Option<u16>,
    /// The operator-defined policy of a sled.
    pub policy: SledPolicy,
    /// The current state of the sled.
    pub state: SledState,
    /// The number of hardware threads which can execute on this sled
    pub usable_hardware_threads: u32,
    /// Amount of RAM which may be used by the Sled's OS
    pub usable_physical_ram: ByteCount,
    /// Hardware threads reserved by the VMMs placed here (a Halyard extension).
    pub reserved_hardware_threads: u32,
    /// Memory reserved by the VMMs placed here (a Halyard extension).
    pub reserved_physical_ram: ByteCount,
    /// How many live (not yet ended) VMMs the sled holds (a Halyard extension).
    pub live_vmms: u32,
}

/// Properties that uniquely identify an Oxide hardware component
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct Baseboard {
    pub serial: String,
    pub part: String,
    pub revision: u32,
}

/// The operator-defined policy of a sled (Oxide's: `{"kind": "in_service",
/// "provision_policy": "provisionable"}` or `{"kind": "expunged"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SledPolicy {
    /// The operator has indicated that the sled is in-service.
    InService {
        /// Determines whether new resources can be provisioned onto the sled.
        provision_policy: SledProvisionPolicy,
    },
    /// The operator has indicated that the sled has been permanently removed from service.
    Expunged,
}

/// The operator-defined provision policy of a sled: whether new resources are going to be
/// provisioned on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SledProvisionPolicy {
    /// New resources will be provisioned on this sled.
    Provisionable,
    /// New resources will not be provisioned on this sled.
    NonProvisionable,
}

/// The current state of the sled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SledState {
    /// The sled is currently active, and has resources allocated on it.
    Active,
    /// The sled has been permanently removed from service.
    Decommissioned,
}

/// Info about the current user
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct CurrentUser {
    pub id: halyard_common::ids::UserUuid,
    /// Human-readable name that can identify the user
    pub display_name: String,
    /// Uuid of the silo to which this user belongs
    pub silo_id: halyard_common::ids::SiloUuid,
    /// Name of the silo to which this user belongs.
    pub silo_name: Name,
    /// Whether this user holds a role on the fleet (admin or viewer).
    pub fleet_viewer: bool,
    /// Whether this user has the admin role on their silo (roles come later: always `false`).
    pub silo_admin: bool,
    pub time_created: DateTime<Utc>,
    pub time_modified: DateTime<Utc>,
}

/// The answer to `POST /device/auth` (RFC 8628 §3.2).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct DeviceAuthResponse {
    /// The secret the client polls `POST /device/token` with.
    pub device_code: String,
    /// The code the user confirms (`POST /device/confirm`).
    pub user_code: String,
    /// Where the user goes to confirm.
    pub verification_uri: String,
    /// The same, with the user code filled in.
    pub verification_uri_complete: String,
    /// Seconds until the request expires.
    pub expires_in: u32,
}

/// The answer to `POST /device/token` once the user confirmed (RFC 6749 §5.1).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct DeviceAccessTokenGrant {
    /// The token: present it as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// The token's id (to revoke it).
    pub token_id: halyard_common::ids::ApiTokenUuid,
    /// When the token stops working; absent: never.
    pub time_expires: Option<DateTime<Utc>>,
}

/// The kind of identity a role is assigned to (Oxide's; Halyard has users, no groups yet).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum IdentityType {
    SiloUser,
}

/// A role on a project.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ProjectRole {
    Admin,
    Collaborator,
    Viewer,
}

/// Describes the assignment of a particular role on a particular resource to a particular
/// identity (user, group, etc.)
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct ProjectRoleRoleAssignment {
    pub identity_id: Uuid,
    pub identity_type: IdentityType,
    pub role_name: ProjectRole,
}

/// Policy for a particular resource: the roles directly assigned on it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct ProjectRolePolicy {
    /// Roles directly assigned on this resource
    pub role_assignments: Vec<ProjectRoleRoleAssignment>,
}

/// View of a Disk
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct Disk {
    /// Unique, immutable, system-controlled identifier for each resource
    pub id: DiskUuid,
    /// Unique, mutable, user-controlled identifier for each resource
    pub name: Name,
    /// Human-readable free-form text about a resource
    pub description: String,
    /// Timestamp when this resource was created
    pub time_created: DateTime<Utc>,
    /// Timestamp when this resource was last modified
    pub time_modified: DateTime<Utc>,
    pub project_id: ProjectUuid,
    /// ID of snapshot from which disk was created, if any
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<SnapshotUuid>,
    /// ID of image from which disk was created, if any (Halyard has no images: always
    /// absent)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<Uuid>,
    pub size: ByteCount,
    pub block_size: BlockSize,
    pub state: DiskState,
    /// The guest's name for the device (Halyard: `/dev/disk/by-id/virtio-<name>`, the
    /// virtio serial number being the disk's name).
    pub device_path: String,
    pub disk_type: DiskType,
    /// Whether or not this disk is read-only.
    pub read_only: bool,
    /// Halyard: whether one of the disk's three replicas is lost or out of reach: on a sled
    /// that was expunged (the replica is replaced by a copy on another sled once the disk is
    /// detached or its instance stopped), or on a sled not heard from for a while (it may
    /// come back). A degraded disk keeps working on the two left. (Absent from Oxide's view:
    /// its clients ignore it.)
    #[serde(default)]
    pub degraded: bool,
}

/// State of a Disk (Oxide's, adjacently tagged: `{"state": "attached", "instance": id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "state", content = "instance", rename_all = "snake_case")]
pub enum DiskState {
    /// Its regions are being placed and made.
    Creating,
    /// Ready, attached to no instance.
    Detached,
    /// Disk is being attached to the given Instance
    Attaching(InstanceUuid),
    /// Disk is attached to the given Instance
    Attached(InstanceUuid),
    /// Disk is being detached from the given Instance
    Detaching(InstanceUuid),
    /// Its data can no longer be served (fewer than two healthy replicas).
    Faulted,
    Destroyed,
}

/// Where a disk's blocks live: Halyard's disks are all `distributed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiskType {
    Distributed,
    Local,
}

/// View of a Snapshot
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct Snapshot {
    /// Unique, immutable, system-controlled identifier for each resource
    pub id: SnapshotUuid,
    /// Unique, mutable, user-controlled identifier for each resource
    pub name: Name,
    /// Human-readable free-form text about a resource
    pub description: String,
    /// Timestamp when this resource was created
    pub time_created: DateTime<Utc>,
    /// Timestamp when this resource was last modified
    pub time_modified: DateTime<Utc>,
    pub project_id: ProjectUuid,
    pub disk_id: DiskUuid,
    pub size: ByteCount,
    pub state: SnapshotState,
}

/// The state of a snapshot (Oxide's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    Creating,
    Ready,
    Faulted,
    Destroyed,
}

/// The answer to `GET /v1/ping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct Ping {
    /// Whether the external API is reachable: always `ok` if the endpoint answers at all.
    pub status: PingStatus,
}

/// See [`Ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PingStatus {
    Ok,
}

/// View of a VPC
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct Vpc {
    /// Unique, immutable, system-controlled identifier for each resource
    pub id: VpcUuid,
    /// Unique, mutable, user-controlled identifier for each resource
    pub name: Name,
    /// Human-readable free-form text about a resource
    pub description: String,
    /// Timestamp when this resource was created
    pub time_created: DateTime<Utc>,
    /// Timestamp when this resource was last modified
    pub time_modified: DateTime<Utc>,
    /// ID for the project containing this VPC
    pub project_id: ProjectUuid,
    /// The name used for the VPC in DNS.
    pub dns_name: Name,
    /// The unique local IPv6 address range for subnets in this VPC
    pub ipv6_prefix: Ipv6Net,
    /// ID for the system router where subnet default routes are registered. Halyard has no
    /// routers: this is the VPC's own id, stable and unique, so a client that keeps it keeps
    /// a value that names this VPC's (implicit) router and no other.
    pub system_router_id: Uuid,
}

/// A VPC subnet represents a logical grouping for instances that allows network traffic
/// between them, within an IPv4 subnetwork and an IPv6 subnetwork.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct VpcSubnet {
    /// Unique, immutable, system-controlled identifier for each resource
    pub id: VpcSubnetUuid,
    /// Unique, mutable, user-controlled identifier for each resource
    pub name: Name,
    /// Human-readable free-form text about a resource
    pub description: String,
    /// Timestamp when this resource was created
    pub time_created: DateTime<Utc>,
    /// Timestamp when this resource was last modified
    pub time_modified: DateTime<Utc>,
    /// The VPC to which the subnet belongs.
    pub vpc_id: VpcUuid,
    /// The IPv4 subnet CIDR block.
    pub ipv4_block: Ipv4Net,
    /// The IPv6 subnet CIDR block.
    pub ipv6_block: Ipv6Net,
    /// ID for an attached custom router. Halyard has no routers: always absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_router_id: Option<Uuid>,
}

/// An `InstanceNetworkInterface` represents a virtual network interface device attached to an
/// instance.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct InstanceNetworkInterface {
    /// Unique, immutable, system-controlled identifier for each resource
    pub id: NetworkInterfaceUuid,
    /// Unique, mutable, user-controlled identifier for each resource
    pub name: Name,
    /// Human-readable free-form text about a resource
    pub description: String,
    /// Timestamp when this resource was created
    pub time_created: DateTime<Utc>,
    /// Timestamp when this resource was last modified
    pub time_modified: DateTime<Utc>,
    /// The Instance to which the interface belongs.
    pub instance_id: InstanceUuid,
    /// The VPC to which the interface belongs.
    pub vpc_id: VpcUuid,
    /// The subnet to which the interface belongs.
    pub subnet_id: VpcSubnetUuid,
    /// The MAC address assigned to this interface.
    pub mac: MacAddr,
    /// The VPC-private IP stack for this interface.
    pub ip_stack: PrivateIpStack,
    /// True if this interface is the primary for the instance to which it's attached.
    pub primary: bool,
}

/// The VPC-private IP stack for a network interface (Oxide's, adjacently tagged:
/// `{"type": "v4", "value": {...}}`, `{"type": "dual_stack", "value": {"v4": ..., "v6": ...}}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum PrivateIpStack {
    /// The interface has only an IPv4 stack.
    V4(PrivateIpv4Stack),
    /// The interface has only an IPv6 stack (Halyard makes none).
    V6(PrivateIpv6Stack),
    /// The interface is dual-stack IPv4 and IPv6.
    DualStack {
        v4: PrivateIpv4Stack,
        v6: PrivateIpv6Stack,
    },
}

/// The VPC-private IPv4 stack for a network interface
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct PrivateIpv4Stack {
    /// The VPC-private IPv4 address for the interface.
    pub ip: Ipv4Addr,
    /// A set of additional IPv4 networks that this interface may send and receive traffic on
    /// (Halyard: always empty).
    pub transit_ips: Vec<Ipv4Net>,
}

/// The VPC-private IPv6 stack for a network interface
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct PrivateIpv6Stack {
    /// The VPC-private IPv6 address for the interface.
    pub ip: Ipv6Addr,
    /// A set of additional IPv6 networks that this interface may send and receive traffic on
    /// (Halyard: always empty).
    pub transit_ips: Vec<Ipv6Net>,
}

/// One VMM of an instance (a Halyard extension): each start and each migration made one, and
/// an instance keeps the record of every one it had.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct InstanceVmm {
    pub id: VmmUuid,
    /// The sled the VMM runs (or ran) on.
    pub sled_id: SledUuid,
    /// The VMM's own state (its sled agent's last report).
    pub state: halyard_common::VmmState,
    pub role: InstanceVmmRole,
    pub time_created: DateTime<Utc>,
    pub time_state_updated: DateTime<Utc>,
}

/// What a VMM is to its instance now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceVmmRole {
    /// The VMM that incarnates the instance.
    Active,
    /// The target of the live migration in progress.
    Target,
    /// A VMM the instance had before.
    Past,
}

/// A saga not finished yet, on any Nexus (a Halyard extension, for operators).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct SagaInProgress {
    pub id: halyard_common::ids::SagaUuid,
    /// What the saga does (`instance-start`, `disk-create`, ...).
    pub name: String,
    /// `running` (going forward) or `unwinding` (undoing after a failure).
    pub state: String,
    /// The Nexus that created it.
    pub creator: Uuid,
    /// The Nexus that drives it now (another one after an adoption).
    pub current_sec: Uuid,
    pub time_created: DateTime<Utc>,
    /// Why this saga could not be resumed after a restart, if it could not.
    pub resume_failure: Option<String>,
}
