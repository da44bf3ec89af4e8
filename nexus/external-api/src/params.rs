//! What callers send: path and query parameters, and request bodies.
//!
//! Field names, defaults and enum labels are Oxide's (`oxide` 0.19), so a body the SDK
//! serializes always deserializes here. Parts of Oxide's `InstanceCreate` that Halyard does not
//! implement yet (disks, external IPs, NICs, anti-affinity, multicast, ...) are accepted as
//! opaque JSON so that the request still parses; the implementation refuses a non-empty value
//! with a 400 that says the feature is not supported, rather than failing to parse or ignoring
//! it silently. See each field.

use halyard_common::ids::SnapshotUuid;
use halyard_common::{BlockSize, ByteCount, Name, NameOrId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

// Path parameters

/// `{project}`: a project, by name or id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct ProjectPath {
    /// Name or ID of the project
    pub project: NameOrId,
}

/// `{instance}`: an instance, by name (then `?project=` is required) or id (then `?project=`
/// must be absent).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct InstancePath {
    /// Name or ID of the instance
    pub instance: NameOrId,
}

/// `{disk}`: a disk, by name (then `?project=` is required) or id (then `?project=` must be
/// absent). Also the body of `disks/attach` and `disks/detach`, which name a disk the same way.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct DiskPath {
    /// Name or ID of the disk
    pub disk: NameOrId,
}

/// `{snapshot}`: a snapshot, by name (then `?project=` is required) or id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct SnapshotPath {
    /// Name or ID of the snapshot
    pub snapshot: NameOrId,
}

/// `{vpc}`: a VPC, by name (then `?project=` is required) or id (then `?project=` must be
/// absent).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct VpcPath {
    /// Name or ID of the VPC
    pub vpc: NameOrId,
}

/// `{subnet}`: a VPC subnet, by name (then `?vpc=` is required, and `?project=` when the VPC
/// is a name) or id (then neither may be given).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct SubnetPath {
    /// Name or ID of the subnet
    pub subnet: NameOrId,
}

/// `{interface}`: a network interface, by name (then `?instance=` is required, and
/// `?project=` when the instance is a name) or id (then neither may be given).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct NetworkInterfacePath {
    /// Name or ID of the network interface
    pub interface: NameOrId,
}

// Query selectors

/// `?project=`, required: the project to list instances of, or to create an instance in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct ProjectSelector {
    /// Name or ID of the project
    pub project: NameOrId,
}

/// `?project=`, optional: qualifies an instance named in the path.
///
/// Oxide's rule, which the implementation enforces (a 400 otherwise): when the instance is
/// given by **name** the project is required (names are unique only within a project); when it
/// is given by **id** the project must be absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct OptionalProjectSelector {
    /// Name or ID of the project, only required if `instance` is provided as a `Name`
    pub project: Option<NameOrId>,
}

/// `?vpc=` (required) and `?project=` (required when the VPC is a name, absent when it is an
/// id): the VPC to list subnets of, or to create a subnet in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct VpcSelector {
    /// Name or ID of the project, only required if `vpc` is provided as a `Name`
    pub project: Option<NameOrId>,
    /// Name or ID of the VPC
    pub vpc: NameOrId,
}

/// `?vpc=` and `?project=`, optional: qualify a subnet named in the path (both absent when
/// the subnet is an id; `vpc` required when it is a name, `project` when `vpc` is a name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct OptionalVpcSelector {
    /// Name or ID of the project, only required if `vpc` is provided as a `Name`
    pub project: Option<NameOrId>,
    /// Name or ID of the VPC
    pub vpc: Option<NameOrId>,
}

/// `?instance=` (required) and `?project=` (required when the instance is a name, absent
/// when it is an id): the instance to list interfaces of, or to create an interface on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct InstanceSelector {
    /// Name or ID of the project, only required if `instance` is provided as a `Name`
    pub project: Option<NameOrId>,
    /// Name or ID of the instance
    pub instance: NameOrId,
}

/// `?instance=` and `?project=`, optional: qualify an interface named in the path (both
/// absent when the interface is an id; `instance` required when it is a name, `project`
/// when `instance` is a name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct OptionalInstanceSelector {
    /// Name or ID of the project, only required if `instance` is provided as a `Name`
    pub project: Option<NameOrId>,
    /// Name or ID of the instance
    pub instance: Option<NameOrId>,
}

// Projects

/// Create-time parameters for a `Project`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct ProjectCreate {
    pub name: Name,
    pub description: String,
    /// Default resources to create in the project (Oxide: a default VPC). Halyard has no
    /// VPCs, so it creates none whatever this says; accepted (and ignored) so that callers
    /// that send it still work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<serde_json::Value>,
}

// Instances

/// Create-time parameters for an `Instance`
///
/// Everything Oxide's SDK 0.19 may send parses. What Halyard does not support yet is kept as
/// opaque JSON, and the implementation refuses (400, naming the field) any value other than
/// the default: `external_ips`, `anti_affinity_groups`,
/// `multicast_groups`, a non-empty `ssh_public_keys`, `network_interfaces` Halyard cannot make
/// (IPv6-only, transit IPs; see `InstanceNetworkInterfaceAttachment::interfaces`),
/// `enable_jumbo_frames: true`, `cpu_platform`, and a non-empty `user_data`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct InstanceCreate {
    pub name: Name,
    pub description: String,
    /// The hostname to be assigned to the instance (RFC 1035: dot-separated labels of ASCII
    /// letters, digits and `-`, at most 253 characters). Validated by the implementation.
    pub hostname: String,
    /// The number of vCPUs to be allocated to the instance
    pub ncpus: u16,
    /// The amount of RAM (in bytes) to be allocated to the instance
    pub memory: ByteCount,
    /// Should this instance be started upon creation; true by default.
    #[serde(default = "bool_true")]
    pub start: bool,
    /// User data for instance initialization systems (such as cloud-init), Base64-encoded.
    /// Halyard runs no guest agent: must be empty.
    #[serde(default)]
    pub user_data: String,
    /// Enable jumbo frames on the primary network interface. Halyard's virtual switch carries
    /// standard frames only: must be `false`.
    #[serde(default)]
    pub enable_jumbo_frames: bool,
    /// The network interfaces to be created for this instance (absent: one dual-stack
    /// interface in the project's default VPC and subnet, as `default_dual_stack`).
    #[serde(default)]
    pub network_interfaces: InstanceNetworkInterfaceAttachment,
    /// Disks to create or attach (at most 8 with the boot disk).
    #[serde(default)]
    pub disks: Vec<InstanceDiskAttachment>,
    /// The disk to boot from, created or attached like `disks` (and not also listed there):
    /// the first disk the VMM gets.
    #[serde(default)]
    pub boot_disk: Option<InstanceDiskAttachment>,
    /// External IP addresses (Oxide's `ExternalIpCreate`). Not supported yet: must be empty.
    #[serde(default)]
    pub external_ips: Vec<serde_json::Value>,
    /// SSH public keys to pass to the guest, by name or id. Absent/`null` and `[]` both mean
    /// none (Halyard has no user keys); a non-empty list is refused.
    #[serde(default)]
    pub ssh_public_keys: Option<Vec<serde_json::Value>>,
    /// Whether the control plane restarts the instance after it fails. Absent or `null`: the
    /// default, which is best effort (as `best_effort`).
    #[serde(default)]
    pub auto_restart_policy: Option<InstanceAutoRestartPolicy>,
    /// Anti-affinity groups to join (names or ids). Not supported yet: must be empty.
    #[serde(default)]
    pub anti_affinity_groups: Vec<serde_json::Value>,
    /// A required CPU platform. Not supported yet: must be absent or `null`.
    #[serde(default)]
    pub cpu_platform: Option<InstanceCpuPlatform>,
    /// Multicast groups to join (Oxide's `MulticastGroupJoinSpec`). Not supported yet: must be
    /// empty.
    #[serde(default)]
    pub multicast_groups: Vec<serde_json::Value>,
}

fn bool_true() -> bool {
    true
}

impl InstanceCreate {
    /// A request with only the required fields, the rest at Oxide's defaults.
    pub fn new(
        name: Name,
        description: impl Into<String>,
        hostname: impl Into<String>,
        ncpus: u16,
        memory: ByteCount,
    ) -> InstanceCreate {
        InstanceCreate {
            name,
            description: description.into(),
            hostname: hostname.into(),
            ncpus,
            memory,
            start: true,
            user_data: String::new(),
            enable_jumbo_frames: false,
            network_interfaces: InstanceNetworkInterfaceAttachment::default(),
            disks: Vec::new(),
            boot_disk: None,
            external_ips: Vec::new(),
            ssh_public_keys: None,
            auto_restart_policy: None,
            anti_affinity_groups: Vec::new(),
            cpu_platform: None,
            multicast_groups: Vec::new(),
        }
    }

    /// The names of the fields whose values Halyard does not support yet (see the type's
    /// documentation), in declaration order; empty when the request asks only for what Halyard
    /// can do. The implementation refuses a request for which this is not empty.
    pub fn unsupported_fields(&self) -> Vec<&'static str> {
        let mut unsupported = Vec::new();
        if !self.user_data.is_empty() {
            unsupported.push("user_data");
        }
        if self.enable_jumbo_frames {
            unsupported.push("enable_jumbo_frames");
        }
        if self.network_interfaces.interfaces().is_err() {
            unsupported.push("network_interfaces");
        }
        if !self.external_ips.is_empty() {
            unsupported.push("external_ips");
        }
        if self.ssh_public_keys.as_ref().is_some_and(|k| !k.is_empty()) {
            unsupported.push("ssh_public_keys");
        }
        if !self.anti_affinity_groups.is_empty() {
            unsupported.push("anti_affinity_groups");
        }
        if self.cpu_platform.is_some() {
            unsupported.push("cpu_platform");
        }
        if !self.multicast_groups.is_empty() {
            unsupported.push("multicast_groups");
        }
        unsupported
    }
}

// Disks

/// Create-time parameters for a `Disk`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct DiskCreate {
    pub name: Name,
    pub description: String,
    /// The source for this `Disk`'s blocks
    pub disk_backend: DiskBackend,
    /// The total size of the Disk (in bytes): a whole number of blocks, at least one.
    pub size: ByteCount,
}

/// Where a disk's blocks live (Oxide's enum, adjacently tagged: `{"type": "distributed",
/// "disk_source": {...}}`). Halyard's disks are distributed: three replicas on three sleds;
/// `local` is refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", content = "disk_source", rename_all = "snake_case")]
pub enum DiskBackend {
    /// A disk on one sled's local storage. Not supported: refused with 400.
    Local,
    /// A disk replicated on three sleds.
    Distributed(DiskSource),
}

/// Different sources for a distributed disk (Oxide's, internally tagged by `type`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DiskSource {
    /// Create a blank disk
    Blank {
        /// Size of blocks for this disk. Valid values are: 512, 2048, or 4096.
        block_size: BlockSize,
    },
    /// Create a disk from a disk snapshot
    Snapshot {
        snapshot_id: SnapshotUuid,
        /// If `true`, the disk created from this snapshot will be read-only. Not supported
        /// yet: must be `false`.
        #[serde(default)]
        read_only: bool,
    },
    /// Create a disk from an image. Halyard has no images: refused with 400.
    Image {
        image_id: Uuid,
        #[serde(default)]
        read_only: bool,
    },
    /// Create a blank disk that will accept bulk writes or pull blocks from an external
    /// source. Not supported: refused with 400.
    ImportingBlocks { block_size: BlockSize },
}

/// A disk to create or attach as an instance is created (Oxide's, internally tagged by
/// `type`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InstanceDiskAttachment {
    /// During instance creation, create and attach disks
    Create {
        name: Name,
        description: String,
        /// The source for this `Disk`'s blocks
        disk_backend: DiskBackend,
        /// The total size of the Disk (in bytes)
        size: ByteCount,
    },
    /// During instance creation, attach this disk
    Attach {
        /// A disk name to attach
        name: Name,
    },
}

// Snapshots

/// Create-time parameters for a `Snapshot`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct SnapshotCreate {
    pub name: Name,
    pub description: String,
    /// The disk to be snapshotted
    pub disk: NameOrId,
}

/// Describes an attachment of an `InstanceNetworkInterface` to an `Instance`, at the time the
/// instance is created (Oxide's enum, adjacently tagged: `{"type": "default_dual_stack"}`,
/// `{"type": "create", "params": [...]}`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", content = "params", rename_all = "snake_case")]
pub enum InstanceNetworkInterfaceAttachment {
    /// Create these interfaces (at most 8; the first is the primary).
    Create(Vec<InstanceNetworkInterfaceCreate>),
    /// One interface, `net0`, in the project's `default` VPC and subnet, with an IPv4 address.
    DefaultIpv4,
    /// The default IPv6-only interface. Not supported (Halyard's guests are reached over
    /// IPv4): refused with 400.
    DefaultIpv6,
    /// One interface, `net0`, in the project's `default` VPC and subnet, with an IPv4 address
    /// and the IPv6 address that goes with it (the SDK's default).
    #[default]
    DefaultDualStack,
    /// No network interfaces at all.
    None,
}

/// The name of the interface a `default_*` attachment makes.
pub const DEFAULT_INTERFACE_NAME: &str = "net0";

impl InstanceNetworkInterfaceAttachment {
    /// The interfaces this attachment makes, in order (the first is the primary), or why it
    /// cannot be had.
    pub fn interfaces(&self) -> Result<Vec<InstanceNetworkInterfaceCreate>, String> {
        let default = |ip_config: PrivateIpStackCreate| InstanceNetworkInterfaceCreate {
            name: DEFAULT_INTERFACE_NAME.parse().expect("a valid name"),
            description: "The default network interface".to_string(),
            vpc_name: "default".parse().expect("a valid name"),
            subnet_name: "default".parse().expect("a valid name"),
            ip_config,
        };
        match self {
            InstanceNetworkInterfaceAttachment::Create(list) => {
                if list.len() > MAX_NETWORK_INTERFACES {
                    return Err(format!(
                        "an instance has at most {MAX_NETWORK_INTERFACES} network interfaces, \
                         not {}",
                        list.len()
                    ));
                }
                for (i, nic) in list.iter().enumerate() {
                    nic.ip_config.resolve()?;
                    if list[..i].iter().any(|other| other.name == nic.name) {
                        return Err(format!(
                            "network interface name \"{}\" is given twice",
                            nic.name
                        ));
                    }
                }
                Ok(list.clone())
            }
            InstanceNetworkInterfaceAttachment::DefaultIpv4 => Ok(vec![default(
                PrivateIpStackCreate::V4(PrivateIpv4StackCreate {
                    ip: Ipv4Assignment::Auto,
                    transit_ips: Vec::new(),
                }),
            )]),
            InstanceNetworkInterfaceAttachment::DefaultDualStack => {
                Ok(vec![default(PrivateIpStackCreate::default())])
            }
            InstanceNetworkInterfaceAttachment::DefaultIpv6 => Err(
                "IPv6-only network interfaces are not supported: use default_ipv4 or \
                 default_dual_stack"
                    .to_string(),
            ),
            InstanceNetworkInterfaceAttachment::None => Ok(Vec::new()),
        }
    }
}

/// The most network interfaces an instance has.
pub const MAX_NETWORK_INTERFACES: usize = 8;

/// Create-time parameters for an `InstanceNetworkInterface`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct InstanceNetworkInterfaceCreate {
    pub name: Name,
    pub description: String,
    /// The VPC in which to create the interface (in the instance's project).
    pub vpc_name: Name,
    /// The VPC Subnet in which to create the interface.
    pub subnet_name: Name,
    /// The IP stack configuration for this interface. Defaults to dual-stack with
    /// automatically-assigned addresses.
    #[serde(default)]
    pub ip_config: PrivateIpStackCreate,
}

/// How an interface's private addresses are chosen (Oxide's enum, adjacently tagged:
/// `{"type": "v4", "value": {"ip": {"type": "auto"}}}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum PrivateIpStackCreate {
    /// An IPv4 address only.
    V4(PrivateIpv4StackCreate),
    /// An IPv6 address only. Not supported: refused with 400.
    V6(PrivateIpv6StackCreate),
    /// Both; Halyard's IPv6 address is the subnet's IPv6 /64 plus the IPv4 address's offset
    /// in its block, so the IPv6 part must be `auto`.
    DualStack {
        v4: PrivateIpv4StackCreate,
        v6: PrivateIpv6StackCreate,
    },
}

impl Default for PrivateIpStackCreate {
    fn default() -> Self {
        PrivateIpStackCreate::DualStack {
            v4: PrivateIpv4StackCreate {
                ip: Ipv4Assignment::Auto,
                transit_ips: Vec::new(),
            },
            v6: PrivateIpv6StackCreate {
                ip: Ipv6Assignment::Auto,
                transit_ips: Vec::new(),
            },
        }
    }
}

/// What a `PrivateIpStackCreate` asks of the allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedIpConfig {
    /// The IPv4 address asked for; `None`: any free one.
    pub ipv4: Option<std::net::Ipv4Addr>,
    /// Whether the interface also gets its IPv6 address.
    pub dual_stack: bool,
}

impl PrivateIpStackCreate {
    /// What this asks of the allocator, or why Halyard cannot do it.
    pub fn resolve(&self) -> Result<ResolvedIpConfig, String> {
        let (v4, v6) = match self {
            PrivateIpStackCreate::V4(v4) => (v4, None),
            PrivateIpStackCreate::DualStack { v4, v6 } => (v4, Some(v6)),
            PrivateIpStackCreate::V6(_) => {
                return Err(
                    "IPv6-only network interfaces are not supported: use an ip_config \
                            of type v4 or dual_stack"
                        .to_string(),
                );
            }
        };
        if !v4.transit_ips.is_empty() || v6.is_some_and(|v6| !v6.transit_ips.is_empty()) {
            return Err("transit IPs are not supported: transit_ips must be empty".to_string());
        }
        if let Some(PrivateIpv6StackCreate {
            ip: Ipv6Assignment::Explicit(ip),
            ..
        }) = v6
        {
            return Err(format!(
                "an explicit IPv6 address ({ip}) is not supported: the IPv6 address follows \
                 the IPv4 one; use {{\"type\": \"auto\"}}"
            ));
        }
        Ok(ResolvedIpConfig {
            ipv4: match v4.ip {
                Ipv4Assignment::Auto => None,
                Ipv4Assignment::Explicit(ip) => Some(ip),
            },
            dual_stack: v6.is_some(),
        })
    }
}

/// The IPv4 part of an interface's `ip_config`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct PrivateIpv4StackCreate {
    /// The address: `auto` (the first free one) or `explicit`.
    pub ip: Ipv4Assignment,
    /// Additional IPv4 networks the interface may send from. Not supported: must be empty.
    #[serde(default)]
    pub transit_ips: Vec<halyard_common::net::Ipv4Net>,
}

/// The IPv6 part of an interface's `ip_config`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct PrivateIpv6StackCreate {
    /// The address: must be `auto` (see `PrivateIpStackCreate`).
    pub ip: Ipv6Assignment,
    /// Additional IPv6 networks the interface may send from. Not supported: must be empty.
    #[serde(default)]
    pub transit_ips: Vec<halyard_common::net::Ipv6Net>,
}

/// How an IPv4 address is assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Ipv4Assignment {
    Auto,
    Explicit(std::net::Ipv4Addr),
}

/// How an IPv6 address is assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Ipv6Assignment {
    Auto,
    Explicit(std::net::Ipv6Addr),
}

/// Create-time parameters for a `Vpc`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct VpcCreate {
    pub name: Name,
    pub description: String,
    pub dns_name: Name,
    /// The IPv6 prefix for this VPC: a /48 of `fd00::/8`. Absent: a random one.
    #[serde(default)]
    pub ipv6_prefix: Option<halyard_common::net::Ipv6Net>,
    /// Default resources to create in the VPC. Absent or `null`: all of them (the `default`
    /// subnet); an object names those to create (`{}`: none, `{"subnet": {}}`: the subnet).
    #[serde(default)]
    pub defaults: Option<VpcCreateDefaults>,
}

impl VpcCreate {
    /// Whether the VPC gets its `default` subnet.
    pub fn creates_default_subnet(&self) -> bool {
        self.defaults
            .as_ref()
            .is_none_or(|defaults| defaults.subnet.is_some())
    }
}

/// Which default resources to create in a new VPC (Oxide's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VpcCreateDefaults {
    /// Create the default subnet: `{}` to create it; absent or `null` to skip it.
    #[serde(default)]
    pub subnet: Option<SubnetCreateDefaults>,
}

/// How to create a VPC's default subnet (Oxide's: no options yet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubnetCreateDefaults {}

/// Create-time parameters for a `VpcSubnet`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct VpcSubnetCreate {
    pub name: Name,
    pub description: String,
    /// The IPv4 address range for this subnet: private (RFC 1918), a /8 to a /26, not
    /// overlapping another subnet of the VPC.
    pub ipv4_block: halyard_common::net::Ipv4Net,
    /// The IPv6 address range for this subnet: a /64 of the VPC's prefix. Absent: the first
    /// free one.
    #[serde(default)]
    pub ipv6_block: Option<halyard_common::net::Ipv6Net>,
    /// A custom router for the subnet. Not supported (Halyard has no routers): must be
    /// absent.
    #[serde(default)]
    pub custom_router: Option<NameOrId>,
}

/// A policy determining when an instance should be automatically restarted by the control
/// plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceAutoRestartPolicy {
    /// The instance should not be automatically restarted by the control plane if it fails.
    Never,
    /// The control plane makes a best-effort attempt to restart the instance if it fails.
    BestEffort,
}

/// What may change of an instance after creation (Oxide's `InstanceUpdate`; every field is
/// sent, as Oxide's SDK does). A new size takes effect at the next start, so it is refused
/// while the instance runs; the auto-restart policy may change at any time.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct InstanceUpdate {
    /// The number of vCPUs.
    pub ncpus: u16,
    /// The memory, in bytes (a whole number of MiB).
    pub memory: ByteCount,
    /// The auto-restart policy; `null` unsets it (the default, best effort, applies).
    pub auto_restart_policy: Option<InstanceAutoRestartPolicy>,
    /// The disk to boot from. Changing it is not supported yet: it must name the instance's
    /// current boot disk (by name or id), or be `null` when it has none.
    #[serde(default)]
    pub boot_disk: Option<NameOrId>,
    /// A required CPU platform. Not supported yet: must be absent or `null`.
    #[serde(default)]
    pub cpu_platform: Option<InstanceCpuPlatform>,
    /// Jumbo frames on the primary interface. Not supported yet: must be absent or `false`.
    #[serde(default)]
    pub enable_jumbo_frames: bool,
    /// Multicast groups. Not supported yet: must be absent or empty.
    #[serde(default)]
    pub multicast_groups: Option<Vec<serde_json::Value>>,
}

impl InstanceUpdate {
    /// The fields whose values Halyard does not support yet (the boot disk is checked against
    /// the instance by the implementation).
    pub fn unsupported_fields(&self) -> Vec<&'static str> {
        let mut unsupported = Vec::new();
        if self.cpu_platform.is_some() {
            unsupported.push("cpu_platform");
        }
        if self.enable_jumbo_frames {
            unsupported.push("enable_jumbo_frames");
        }
        if self
            .multicast_groups
            .as_ref()
            .is_some_and(|g| !g.is_empty())
        {
            unsupported.push("multicast_groups");
        }
        unsupported
    }
}

impl From<InstanceAutoRestartPolicy> for halyard_common::AutoRestartPolicy {
    fn from(policy: InstanceAutoRestartPolicy) -> Self {
        match policy {
            InstanceAutoRestartPolicy::Never => halyard_common::AutoRestartPolicy::Never,
            InstanceAutoRestartPolicy::BestEffort => halyard_common::AutoRestartPolicy::BestEffort,
        }
    }
}

impl From<halyard_common::AutoRestartPolicy> for InstanceAutoRestartPolicy {
    fn from(policy: halyard_common::AutoRestartPolicy) -> Self {
        match policy {
            halyard_common::AutoRestartPolicy::Never => InstanceAutoRestartPolicy::Never,
            halyard_common::AutoRestartPolicy::BestEffort => InstanceAutoRestartPolicy::BestEffort,
        }
    }
}

/// A required CPU platform for an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceCpuPlatform {
    /// An AMD Milan-like CPU platform.
    AmdMilan,
    /// An AMD Turin-like CPU platform (without cache information in CPUID leaf 8000_0006).
    AmdTurin,
    /// An AMD Turin-like CPU platform.
    AmdTurinV2,
}

// Serial console

/// Which part of an instance's serial console history to read, and the instance's project
/// (`?project=` as for `OptionalProjectSelector`). Exactly one of `from_start` and
/// `most_recent` must be given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct InstanceSerialConsoleRequest {
    /// Name or ID of the project, only required if `instance` is provided as a `Name`
    pub project: Option<NameOrId>,
    /// Character index in the serial buffer from which to read, counting the bytes output
    /// since instance start. If this is not provided, `most_recent` must be provided, and if
    /// this *is* provided, `most_recent` must *not* be provided.
    pub from_start: Option<u64>,
    /// Maximum number of bytes of buffered serial console contents to return (default 16
    /// KiB). If the requested range runs to the end of the available buffer, the data
    /// returned will be shorter than `max_bytes`.
    pub max_bytes: Option<u64>,
    /// Character index in the serial buffer from which to read, counting *backward* from the
    /// most recently buffered data retrieved from the instance. (See note on `from_start`
    /// about mutual exclusivity)
    pub most_recent: Option<u64>,
}

/// Where an instance's serial console stream starts, and the instance's project.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct InstanceSerialConsoleStreamRequest {
    /// Name or ID of the project, only required if `instance` is provided as a `Name`
    pub project: Option<NameOrId>,
    /// Character index in the serial buffer from which to read, counting *backward* from the
    /// most recently buffered data retrieved from the instance. Absent: from the oldest byte
    /// still buffered.
    pub most_recent: Option<u64>,
}

/// Where to live-migrate an instance (a Halyard extension).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct InstanceMigrate {
    /// The sled to move to; any other sled with room if absent.
    #[serde(default)]
    pub dst_sled_id: Option<halyard_common::ids::SledUuid>,
}

// Device login (OAuth 2.0 Device Authorization Grant, RFC 8628), as Oxide's API shapes it.

/// Start a device authorization grant (form-encoded, as RFC 8628 has it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct DeviceAuthRequest {
    /// The client's own id (any UUID it chose; it polls with the same one).
    pub client_id: uuid::Uuid,
    /// How long the token should live, in seconds; absent: it does not expire.
    #[serde(default)]
    pub ttl_seconds: Option<std::num::NonZeroU32>,
}

/// Sign in to the web console: an API token the user already holds, exchanged for a session.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenLogin {
    pub token: String,
}

/// A path under one of the web console's pages (any depth).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
pub struct ConsolePath {
    pub path: Vec<String>,
}

/// A user confirms the grant whose user code the client showed them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct DeviceAuthVerify {
    pub user_code: String,
}

/// A client polls for its token (form-encoded).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct DeviceAccessTokenRequest {
    /// Must be `urn:ietf:params:oauth:grant-type:device_code`.
    pub grant_type: String,
    pub device_code: String,
    pub client_id: uuid::Uuid,
}
