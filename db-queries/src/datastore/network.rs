//! VPCs, VPC subnets, network interfaces, and the virtual-to-physical mappings derived from
//! them.
//!
//! - Every project is made with a VPC named `default` holding a subnet named `default`
//!   (172.30.0.0/22), in the project's own transaction; a VPC made through the API gets a
//!   `default` subnet too (as in the system we follow). A VPC's VNI is random among the guest
//!   VNIs and unique among live VPCs (a unique index; a collision, one in millions, makes the
//!   insert run again with another).
//! - Subnets of a VPC never overlap: the insert bumps the VPC's child generation first, which
//!   locks its row, so racing subnet inserts of one VPC run one after the other and each
//!   sees the blocks before it (`&&`, "contains or is contained by", on `INET`).
//! - An interface's address is allocated in the statement that inserts it: it takes the
//!   first free address of a window of candidates starting at a random offset in the
//!   subnet's assignable range (the first five and the last address are reserved), checked
//!   against the live interfaces of the subnet. Two racing inserts that picked the same
//!   address meet at the unique index `network_interface_ip_in_subnet`; the loser's
//!   transaction runs again and picks another. No row: the subnet is full (409).
//! - An interface is inserted only into a live subnet: the insert holds the subnet's row
//!   `FOR SHARE` until it commits, and a subnet or VPC delete first marks the subnet deleted
//!   (waiting for such inserts) and only then counts the subnet's interfaces, so it either
//!   sees the new interface (409, nothing deleted) or the insert finds the subnet gone (404).
//! - An instance's interfaces are all in one VPC (400 otherwise), checked under the lock on
//!   the instance's row.
//! - Interfaces are added and removed only while their instance has no VMM: the transaction
//!   locks the instance row (`FOR UPDATE`) and checks its state, and the start saga's claim
//!   updates the same row, so an interface insert and a claim run one after the other.
//! - [`DataStore::vpc_mappings_read`] reads a VPC's mapping set for the sleds: every live
//!   interface of the VPC whose instance's active VMM is live, with that VMM's sled. It bumps
//!   the VPC's `v2p_generation` first, in the same transaction (which locks the VPC's row), so
//!   of two reads the later one has the higher generation and saw every change the earlier one
//!   saw: a sled that takes only newer generations ends with the newest set.

use super::DataStore;
use super::instance::{instance_fetch_any, instance_not_found};
use super::project::project_bump_rcgen;
use crate::error::{TxnError, is_unique_violation, public_error_from_diesel};
use crate::pagination::{PaginatedBy, paginate};
use chrono::Utc;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use halyard_common::ids::{
    GenericUuid, InstanceUuid, NetworkInterfaceUuid, ProjectUuid, SledUuid, VmmUuid, VpcSubnetUuid,
    VpcUuid,
};
use halyard_common::net::{Ipv4Net, Ipv6Net, MacAddr, Vni};
use halyard_common::{
    Error, Generation, InstanceNexusState, Labelled, Name, NameOrId, ResourceType,
};
use halyard_db_model::schema::{instance, network_interface, sled, vmm, vpc, vpc_subnet};
use halyard_db_model::{
    DEFAULT_SUBNET_BLOCK, DEFAULT_VPC_NAME, DbName, DbTypedUuid, Instance, MAX_NICS_PER_INSTANCE,
    NetworkInterface, Vpc, VpcSubnet,
};
use ipnet::IpNet;
use rand::Rng;
use std::net::{IpAddr, Ipv4Addr};

#[diesel::declare_sql_function]
extern "SQL" {
    /// SQL's `GREATEST` of two integers (PostgreSQL and CockroachDB both have it).
    fn greatest(a: sql_types::BigInt, b: sql_types::BigInt) -> sql_types::BigInt;
}

/// How many addresses one allocation attempt considers (from a random start, wrapping): all
/// of a subnet up to a /20; a larger subnet is sampled, and only called full once its live
/// interfaces fill it.
const ALLOCATION_WINDOW: u32 = 4096;

/// How many times an interface insert runs again after losing a race for an address or MAC.
const MAX_ALLOCATION_ATTEMPTS: usize = 128;

/// The smallest and largest IPv4 subnet prefixes (Oxide's bounds).
pub const SUBNET_PREFIX_RANGE: std::ops::RangeInclusive<u8> = 8..=26;

/// What a new network interface is made of (its address and MAC are allocated on insert).
#[derive(Debug, Clone)]
pub struct NewNetworkInterface {
    pub id: NetworkInterfaceUuid,
    pub instance_id: InstanceUuid,
    pub name: Name,
    pub description: String,
    pub subnet: VpcSubnet,
    /// An address the user asked for; `None`: the first free one the allocator finds.
    pub ip: Option<Ipv4Addr>,
    /// Whether it also gets the IPv6 address that goes with its IPv4 one.
    pub dual_stack: bool,
}

/// Which instance states an interface may be added to or removed from in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceForNics {
    /// Being created (only instance-create, which makes its interfaces, uses this).
    Creating,
    /// Stopped (`no_vmm`) or failed: it has no VMM (what the API allows).
    Stopped,
}

/// A VPC's mapping set as read for the sleds, with the generation the read took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcMappingsRead {
    pub vpc_id: VpcUuid,
    pub vni: Vni,
    pub generation: Generation,
    pub mappings: Vec<HostedInterface>,
    /// The sled agent of each sled in `mappings`, as the same read found it: where Nexus
    /// pushes the set, without reading each sled again.
    pub sled_agents: std::collections::BTreeMap<SledUuid, SledAgentAt>,
}

/// Where a sled's agent listens, and whether the sled was expunged (then nothing is sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SledAgentAt {
    pub address: std::net::SocketAddr,
    pub expunged: bool,
}

/// One interface where a live VMM incarnates its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostedInterface {
    pub nic_id: NetworkInterfaceUuid,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub sled_id: SledUuid,
    pub underlay_ip: IpAddr,
}

/// The VMM states in which a VMM's interfaces are on its sled's switch (it was registered and
/// has not ended; the sled list counts these as its live VMMs).
pub(super) const LIVE_VMM_STATES: [&str; 7] = [
    "creating",
    "starting",
    "running",
    "stopping",
    "stopped",
    "rebooting",
    "migrating",
];

impl DataStore {
    /// Makes a VPC, with its `default` subnet (172.30.0.0/22 and the first /64 of its IPv6
    /// prefix) if `default_subnet`. `ipv6_prefix`: a /48 of `fd00::/8` the user chose;
    /// `None`: a random one.
    pub async fn vpc_create(
        &self,
        project_id: ProjectUuid,
        name: Name,
        description: String,
        dns_name: Name,
        ipv6_prefix: Option<Ipv6Net>,
        default_subnet: bool,
    ) -> Result<(Vpc, Option<VpcSubnet>), Error> {
        halyard_common::validate_description(&description)?;
        if let Some(prefix) = ipv6_prefix {
            validate_vpc_ipv6_prefix(prefix)?;
        }
        let request = VpcRequest {
            project_id,
            name,
            description,
            dns_name,
            ipv6_prefix,
            default_subnet,
        };
        let request = &request;
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| vpc_insert_with_default_subnet(conn, request).await)
                .await
        })
        .await
    }

    /// A live VPC of a project, by name or id.
    pub async fn vpc_fetch(&self, project_id: ProjectUuid, which: &NameOrId) -> Result<Vpc, Error> {
        let conn = &mut *self.connection().await?;
        let query = vpc::table
            .filter(vpc::time_deleted.is_null())
            .filter(vpc::project_id.eq(DbTypedUuid(project_id)))
            .into_boxed();
        let query = match which {
            NameOrId::Id(id) => query.filter(vpc::id.eq(*id)),
            NameOrId::Name(name) => query.filter(vpc::name.eq(DbName(name.clone()))),
        };
        query
            .select(Vpc::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?
            .ok_or_else(|| not_found(ResourceType::Vpc, which))
    }

    /// A live VPC by id, whatever its project.
    pub async fn vpc_fetch_by_id(&self, id: VpcUuid) -> Result<Vpc, Error> {
        let conn = &mut *self.connection().await?;
        vpc::table
            .filter(vpc::time_deleted.is_null())
            .filter(vpc::id.eq(DbTypedUuid(id)))
            .select(Vpc::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?
            .ok_or_else(|| Error::not_found_by_id(ResourceType::Vpc, id.into_untyped_uuid()))
    }

    /// One page of a project's live VPCs.
    pub async fn vpc_list(
        &self,
        project_id: ProjectUuid,
        page: &PaginatedBy<'_>,
    ) -> Result<Vec<Vpc>, Error> {
        let conn = &mut *self.connection().await?;
        let query = vpc::table
            .filter(vpc::time_deleted.is_null())
            .filter(vpc::project_id.eq(DbTypedUuid(project_id)))
            .select(Vpc::as_select())
            .into_boxed();
        let query = match page {
            PaginatedBy::Name(params) => paginate!(query, vpc::name, params, DbName),
            PaginatedBy::Id(params) => paginate!(query, vpc::id, params, |id| id),
        };
        query.load(conn).await.map_err(public_error_from_diesel)
    }

    /// Every VPC, deleted ones too (for operators).
    pub async fn vpc_list_all(&self) -> Result<Vec<Vpc>, Error> {
        let conn = &mut *self.connection().await?;
        vpc::table
            .order((
                vpc::project_id.asc(),
                vpc::name.asc(),
                vpc::time_created.asc(),
            ))
            .select(Vpc::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Deletes a VPC and its subnets, only if no live interface is in it (409 otherwise).
    pub async fn vpc_delete(&self, id: VpcUuid) -> Result<(), Error> {
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                lock_vpc(conn, id).await?;
                // Subnets first: the update locks their rows, so it waits for an interface
                // insert holding one (`FOR SHARE`, see `nic_insert`), and the count below, a
                // later statement, sees what that insert committed. Refusing rolls it back.
                let now = Utc::now();
                diesel::update(vpc_subnet::table)
                    .filter(vpc_subnet::vpc_id.eq(DbTypedUuid(id)))
                    .filter(vpc_subnet::time_deleted.is_null())
                    .set(vpc_subnet::time_deleted.eq(now))
                    .execute(conn)
                    .await?;
                refuse_if_interfaces(conn, network_interface::vpc_id.eq(DbTypedUuid(id)), "VPC")
                    .await?;
                diesel::update(vpc::table)
                    .filter(vpc::id.eq(DbTypedUuid(id)))
                    .set(vpc::time_deleted.eq(now))
                    .execute(conn)
                    .await?;
                Ok(())
            })
            .await
        })
        .await
    }

    /// Makes a subnet in a VPC. The IPv4 block must be private (RFC 1918), a /8 to a /26, and
    /// overlap no other subnet of the VPC; the IPv6 block, if given, a /64 of the VPC's
    /// prefix not used by another subnet (`None`: the first free /64).
    pub async fn vpc_subnet_create(
        &self,
        vpc_id: VpcUuid,
        name: Name,
        description: String,
        ipv4_block: Ipv4Net,
        ipv6_block: Option<Ipv6Net>,
    ) -> Result<VpcSubnet, Error> {
        halyard_common::validate_description(&description)?;
        validate_ipv4_block(ipv4_block)?;
        let (name, description) = (&name, &description);
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                let found = lock_vpc(conn, vpc_id).await?;
                let subnet = subnet_insert(
                    conn,
                    &found,
                    name.clone(),
                    description.clone(),
                    ipv4_block,
                    ipv6_block,
                )
                .await?;
                Ok(subnet)
            })
            .await
        })
        .await
    }

    /// A live subnet of a VPC, by name or id.
    pub async fn vpc_subnet_fetch(
        &self,
        vpc_id: VpcUuid,
        which: &NameOrId,
    ) -> Result<VpcSubnet, Error> {
        let conn = &mut *self.connection().await?;
        let query = vpc_subnet::table
            .filter(vpc_subnet::time_deleted.is_null())
            .filter(vpc_subnet::vpc_id.eq(DbTypedUuid(vpc_id)))
            .into_boxed();
        let query = match which {
            NameOrId::Id(id) => query.filter(vpc_subnet::id.eq(*id)),
            NameOrId::Name(name) => query.filter(vpc_subnet::name.eq(DbName(name.clone()))),
        };
        query
            .select(VpcSubnet::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?
            .ok_or_else(|| not_found(ResourceType::VpcSubnet, which))
    }

    /// A live subnet by id, whatever its VPC.
    pub async fn vpc_subnet_fetch_by_id(&self, id: VpcSubnetUuid) -> Result<VpcSubnet, Error> {
        let conn = &mut *self.connection().await?;
        vpc_subnet::table
            .filter(vpc_subnet::time_deleted.is_null())
            .filter(vpc_subnet::id.eq(DbTypedUuid(id)))
            .select(VpcSubnet::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?
            .ok_or_else(|| Error::not_found_by_id(ResourceType::VpcSubnet, id.into_untyped_uuid()))
    }

    /// One page of a VPC's live subnets.
    pub async fn vpc_subnet_list(
        &self,
        vpc_id: VpcUuid,
        page: &PaginatedBy<'_>,
    ) -> Result<Vec<VpcSubnet>, Error> {
        let conn = &mut *self.connection().await?;
        let query = vpc_subnet::table
            .filter(vpc_subnet::time_deleted.is_null())
            .filter(vpc_subnet::vpc_id.eq(DbTypedUuid(vpc_id)))
            .select(VpcSubnet::as_select())
            .into_boxed();
        let query = match page {
            PaginatedBy::Name(params) => paginate!(query, vpc_subnet::name, params, DbName),
            PaginatedBy::Id(params) => paginate!(query, vpc_subnet::id, params, |id| id),
        };
        query.load(conn).await.map_err(public_error_from_diesel)
    }

    /// Deletes a subnet, only if no live interface is in it (409 otherwise).
    pub async fn vpc_subnet_delete(&self, subnet: &VpcSubnet) -> Result<(), Error> {
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                lock_vpc(conn, subnet.vpc_id()).await?;
                // The update first, as in `vpc_delete`: it waits for an interface insert
                // holding the subnet's row, and the count then sees that interface.
                diesel::update(vpc_subnet::table)
                    .filter(vpc_subnet::id.eq(subnet.id))
                    .filter(vpc_subnet::time_deleted.is_null())
                    .set(vpc_subnet::time_deleted.eq(Utc::now()))
                    .execute(conn)
                    .await?;
                refuse_if_interfaces(conn, network_interface::subnet_id.eq(subnet.id), "subnet")
                    .await?;
                Ok(())
            })
            .await
        })
        .await
    }

    /// Makes a network interface on an instance, allocating its MAC and private address (see
    /// the module's documentation). Refused unless the instance is in a state `allowed`
    /// names (409), has fewer than eight interfaces (400), and the name is free on it (409);
    /// a full subnet or a taken explicit address is 409. The first interface is the primary.
    /// Idempotent by id: a repeat returns the interface as it is.
    pub async fn network_interface_create(
        &self,
        new: NewNetworkInterface,
        allowed: InstanceForNics,
    ) -> Result<NetworkInterface, Error> {
        halyard_common::validate_description(&new.description)?;
        let range = new.subnet.assignable_range().ok_or_else(|| {
            Error::invalid_request(format!(
                "subnet \"{}\" has no assignable addresses",
                new.subnet.name()
            ))
        })?;
        if let Some(ip) = new.ip {
            let n = u32::from(ip);
            if !(range.0..=range.1).contains(&n) {
                return Err(Error::invalid_request(format!(
                    "address {ip} is not an assignable address of subnet \"{}\" ({}: the \
                     first five and the last are reserved)",
                    new.subnet.name(),
                    new.subnet.ipv4_block()
                )));
            }
        }
        let new = &new;
        for attempt in 1..=MAX_ALLOCATION_ATTEMPTS {
            let outcome = async {
                let conn = &mut *self.connection().await?;
                conn.transaction(async |conn| nic_insert(conn, new, allowed, range).await)
                    .await
            }
            .await;
            match outcome {
                Ok(nic) => return Ok(nic),
                Err(TxnError::Database(e)) if lost_allocation_race(&e) => {
                    slog::debug!(self.log, "interface allocation lost a race; again";
                        "attempt" => attempt, "subnet_id" => %new.subnet.id());
                    continue;
                }
                Err(e) if e.is_retryable_conflict() => continue,
                Err(e) => return Err(e.into_public()),
            }
        }
        Err(Error::unavailable(format!(
            "could not allocate an address in subnet \"{}\" after {MAX_ALLOCATION_ATTEMPTS} \
             attempts (too many racing requests); retry",
            new.subnet.name()
        )))
    }

    /// A live interface by id.
    pub async fn network_interface_fetch(
        &self,
        id: NetworkInterfaceUuid,
    ) -> Result<NetworkInterface, Error> {
        let conn = &mut *self.connection().await?;
        network_interface::table
            .filter(network_interface::time_deleted.is_null())
            .filter(network_interface::id.eq(DbTypedUuid(id)))
            .select(NetworkInterface::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?
            .ok_or_else(|| {
                Error::not_found_by_id(ResourceType::NetworkInterface, id.into_untyped_uuid())
            })
    }

    /// A live interface of an instance, by name or id.
    pub async fn network_interface_fetch_on(
        &self,
        instance_id: InstanceUuid,
        which: &NameOrId,
    ) -> Result<NetworkInterface, Error> {
        let conn = &mut *self.connection().await?;
        let query = network_interface::table
            .filter(network_interface::time_deleted.is_null())
            .filter(network_interface::instance_id.eq(DbTypedUuid(instance_id)))
            .into_boxed();
        let query = match which {
            NameOrId::Id(id) => query.filter(network_interface::id.eq(*id)),
            NameOrId::Name(name) => query.filter(network_interface::name.eq(DbName(name.clone()))),
        };
        query
            .select(NetworkInterface::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?
            .ok_or_else(|| not_found(ResourceType::NetworkInterface, which))
    }

    /// One page of an instance's live interfaces.
    pub async fn network_interface_list(
        &self,
        instance_id: InstanceUuid,
        page: &PaginatedBy<'_>,
    ) -> Result<Vec<NetworkInterface>, Error> {
        let conn = &mut *self.connection().await?;
        let query = network_interface::table
            .filter(network_interface::time_deleted.is_null())
            .filter(network_interface::instance_id.eq(DbTypedUuid(instance_id)))
            .select(NetworkInterface::as_select())
            .into_boxed();
        let query = match page {
            PaginatedBy::Name(params) => {
                paginate!(query, network_interface::name, params, DbName)
            }
            PaginatedBy::Id(params) => paginate!(query, network_interface::id, params, |id| id),
        };
        query.load(conn).await.map_err(public_error_from_diesel)
    }

    /// An instance's live interfaces with their subnets and VPCs, in slot order (what its
    /// VMMs attach).
    pub async fn instance_network_interfaces(
        &self,
        instance_id: InstanceUuid,
    ) -> Result<Vec<(NetworkInterface, VpcSubnet, Vpc)>, Error> {
        let conn = &mut *self.connection().await?;
        network_interface::table
            .inner_join(vpc_subnet::table)
            .inner_join(vpc::table)
            .filter(network_interface::time_deleted.is_null())
            .filter(network_interface::instance_id.eq(DbTypedUuid(instance_id)))
            .order(network_interface::slot.asc())
            .select((
                NetworkInterface::as_select(),
                VpcSubnet::as_select(),
                Vpc::as_select(),
            ))
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Every interface, deleted ones too (for operators and the invariant checker).
    pub async fn network_interface_list_all(&self) -> Result<Vec<NetworkInterface>, Error> {
        let conn = &mut *self.connection().await?;
        network_interface::table
            .order((
                network_interface::instance_id.asc(),
                network_interface::slot.asc(),
            ))
            .select(NetworkInterface::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Every subnet, deleted ones too (for operators and the invariant checker).
    pub async fn vpc_subnet_list_all(&self) -> Result<Vec<VpcSubnet>, Error> {
        let conn = &mut *self.connection().await?;
        vpc_subnet::table
            .order((vpc_subnet::vpc_id.asc(), vpc_subnet::name.asc()))
            .select(VpcSubnet::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Deletes an interface (its address and MAC free again), only while its instance has no
    /// VMM (409). The primary interface goes only when it is the last one (400). Deleting an
    /// interface already gone is not an error (`false`).
    pub async fn network_interface_delete(
        &self,
        id: NetworkInterfaceUuid,
        allowed: InstanceForNics,
    ) -> Result<bool, Error> {
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                let Some(nic) = network_interface::table
                    .filter(network_interface::id.eq(DbTypedUuid(id)))
                    .filter(network_interface::time_deleted.is_null())
                    .select(NetworkInterface::as_select())
                    .first(conn)
                    .await
                    .optional()?
                else {
                    return Ok(false);
                };
                lock_instance_for_nics(conn, nic.instance_id(), allowed).await?;
                if nic.is_primary {
                    let others: i64 = network_interface::table
                        .filter(network_interface::instance_id.eq(nic.instance_id))
                        .filter(network_interface::time_deleted.is_null())
                        .filter(network_interface::id.ne(nic.id))
                        .count()
                        .get_result(conn)
                        .await?;
                    if others > 0 {
                        return Err(Error::invalid_request(format!(
                            "interface \"{}\" is the instance's primary interface; delete its \
                             {others} other interface(s) first",
                            nic.name()
                        ))
                        .into());
                    }
                }
                let deleted = diesel::update(network_interface::table)
                    .filter(network_interface::id.eq(nic.id))
                    .filter(network_interface::time_deleted.is_null())
                    .set(network_interface::time_deleted.eq(Utc::now()))
                    .execute(conn)
                    .await?;
                Ok(deleted > 0)
            })
            .await
        })
        .await
    }

    /// Deletes every live interface of an instance, whatever its state (a failed
    /// instance-create's cleanup; instance-delete deletes them with the instance, in
    /// `instance_mark_destroyed`'s transaction). Returns how many it deleted.
    pub async fn instance_network_interfaces_delete(
        &self,
        instance_id: InstanceUuid,
    ) -> Result<usize, Error> {
        let conn = &mut *self.connection().await?;
        instance_interfaces_delete_in(conn, instance_id)
            .await
            .map_err(TxnError::into_public)
    }

    /// The VPCs an instance has live interfaces in (the VPCs whose sleds a change of where
    /// the instance runs concerns).
    pub async fn instance_vpcs(&self, instance_id: InstanceUuid) -> Result<Vec<VpcUuid>, Error> {
        let conn = &mut *self.connection().await?;
        let ids: Vec<DbTypedUuid<halyard_common::ids::VpcKind>> = network_interface::table
            .filter(network_interface::instance_id.eq(DbTypedUuid(instance_id)))
            .filter(network_interface::time_deleted.is_null())
            .select(network_interface::vpc_id)
            .distinct()
            .load(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(ids.into_iter().map(|id| id.0).collect())
    }

    /// The VPCs with an interface on a live VMM of `sled_id` (what the sled should hold
    /// mappings for).
    pub async fn sled_hosted_vpcs(&self, sled_id: SledUuid) -> Result<Vec<VpcUuid>, Error> {
        let conn = &mut *self.connection().await?;
        let ids: Vec<DbTypedUuid<halyard_common::ids::VpcKind>> = network_interface::table
            .inner_join(instance::table)
            .inner_join(vmm::table.on(instance::active_propolis_id.eq(vmm::id.nullable())))
            .filter(network_interface::time_deleted.is_null())
            .filter(instance::time_deleted.is_null())
            .filter(vmm::time_deleted.is_null())
            .filter(vmm::state.eq_any(LIVE_VMM_STATES))
            .filter(vmm::sled_id.eq(DbTypedUuid(sled_id)))
            .select(network_interface::vpc_id)
            .distinct()
            .load(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(ids.into_iter().map(|id| id.0).collect())
    }

    /// The VPC whose VNI is `vni` (live), if any.
    pub async fn vpc_fetch_by_vni(&self, vni: Vni) -> Result<Option<Vpc>, Error> {
        let conn = &mut *self.connection().await?;
        vpc::table
            .filter(vpc::time_deleted.is_null())
            .filter(vpc::vni.eq(i64::from(vni.as_u32())))
            .select(Vpc::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)
    }

    /// Every live VPC's hosted interfaces, by VNI, as the database has them now, without
    /// taking a mapping generation (for operators and checks, which compare them with what
    /// the sleds hold).
    pub async fn v2p_current_all(&self) -> Result<Vec<(Vni, HostedInterface)>, Error> {
        let conn = &mut *self.connection().await?;
        let rows: Vec<(i64, NetworkInterface, halyard_db_model::Sled)> = network_interface::table
            .inner_join(instance::table)
            .inner_join(vmm::table.on(instance::active_propolis_id.eq(vmm::id.nullable())))
            .inner_join(sled::table.on(sled::id.eq(vmm::sled_id)))
            .inner_join(vpc::table)
            .filter(vpc::time_deleted.is_null())
            .filter(network_interface::time_deleted.is_null())
            .filter(instance::time_deleted.is_null())
            .filter(vmm::time_deleted.is_null())
            .filter(vmm::state.eq_any(LIVE_VMM_STATES))
            .order((vpc::vni.asc(), network_interface::ip.asc()))
            .select((
                vpc::vni,
                NetworkInterface::as_select(),
                halyard_db_model::Sled::as_select(),
            ))
            .load(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(rows
            .into_iter()
            .map(|(vni, nic, sled)| {
                let vni = u32::try_from(vni)
                    .ok()
                    .and_then(|vni| Vni::try_from(vni).ok())
                    .expect("the vni column's CHECK");
                (
                    vni,
                    HostedInterface {
                        nic_id: nic.id(),
                        ip: nic.ip(),
                        mac: nic.mac(),
                        sled_id: sled.id(),
                        underlay_ip: sled.underlay_address(),
                    },
                )
            })
            .collect())
    }

    /// Reads a VPC's mapping set for the sleds, taking the next mapping generation (see the
    /// module's documentation). `excluding`: a VMM whose interfaces are left out as if it had
    /// ended (an undo that is about to end it). `past`: a generation the read must exceed,
    /// because a sled already holds a set that new (one pushed by hand, or by a Nexus whose
    /// database was restored from a backup); without it such a sled would turn the
    /// read's set away as stale. A deleted VPC reads as an empty set.
    pub async fn vpc_mappings_read(
        &self,
        vpc_id: VpcUuid,
        excluding: Option<VmmUuid>,
        past: Option<Generation>,
    ) -> Result<VpcMappingsRead, Error> {
        let floor = past.map_or(0, |past| past.next().as_i64());
        self.retry_conflicts(|| async move {
            let conn = &mut *self.connection().await?;
            conn.transaction(async |conn| {
                let (vni, generation, deleted): (i64, i64, Option<chrono::DateTime<Utc>>) =
                    diesel::update(vpc::table)
                        .filter(vpc::id.eq(DbTypedUuid(vpc_id)))
                        .set(vpc::v2p_generation.eq(greatest(vpc::v2p_generation + 1, floor)))
                        .returning((vpc::vni, vpc::v2p_generation, vpc::time_deleted))
                        .get_result(conn)
                        .await
                        .optional()?
                        .ok_or_else(|| {
                            Error::not_found_by_id(ResourceType::Vpc, vpc_id.into_untyped_uuid())
                        })?;
                let mut query = network_interface::table
                    .inner_join(instance::table)
                    .inner_join(vmm::table.on(instance::active_propolis_id.eq(vmm::id.nullable())))
                    .inner_join(sled::table.on(sled::id.eq(vmm::sled_id)))
                    .filter(network_interface::vpc_id.eq(DbTypedUuid(vpc_id)))
                    .filter(network_interface::time_deleted.is_null())
                    .filter(instance::time_deleted.is_null())
                    .filter(vmm::time_deleted.is_null())
                    .filter(vmm::state.eq_any(LIVE_VMM_STATES))
                    .into_boxed();
                if let Some(excluded) = excluding {
                    query = query.filter(vmm::id.ne(DbTypedUuid(excluded)));
                }
                let rows: Vec<(NetworkInterface, halyard_db_model::Sled)> = if deleted.is_some() {
                    Vec::new()
                } else {
                    query
                        .order(network_interface::ip.asc())
                        .select((
                            NetworkInterface::as_select(),
                            halyard_db_model::Sled::as_select(),
                        ))
                        .load(conn)
                        .await?
                };
                let vni = u32::try_from(vni)
                    .ok()
                    .and_then(|vni| Vni::try_from(vni).ok())
                    .expect("the vni column's CHECK");
                let sled_agents = rows
                    .iter()
                    .map(|(_, sled)| {
                        let at = SledAgentAt {
                            address: sled.address(),
                            expunged: sled.is_expunged(),
                        };
                        (sled.id(), at)
                    })
                    .collect();
                Ok(VpcMappingsRead {
                    vpc_id,
                    vni,
                    generation: Generation::try_from(generation)
                        .expect("the v2p_generation column's CHECK"),
                    sled_agents,
                    mappings: rows
                        .into_iter()
                        .map(|(nic, sled)| HostedInterface {
                            nic_id: nic.id(),
                            ip: nic.ip(),
                            mac: nic.mac(),
                            sled_id: sled.id(),
                            underlay_ip: sled.underlay_address(),
                        })
                        .collect(),
                })
            })
            .await
        })
        .await
    }
}

/// Deletes an instance's live interfaces, inside the caller's transaction or on a plain
/// connection.
pub(crate) async fn instance_interfaces_delete_in(
    conn: &mut AsyncPgConnection,
    instance_id: InstanceUuid,
) -> Result<usize, TxnError> {
    Ok(diesel::update(network_interface::table)
        .filter(network_interface::instance_id.eq(DbTypedUuid(instance_id)))
        .filter(network_interface::time_deleted.is_null())
        .set(network_interface::time_deleted.eq(Utc::now()))
        .execute(conn)
        .await?)
}

/// What a new VPC is made of.
struct VpcRequest {
    project_id: ProjectUuid,
    name: Name,
    description: String,
    dns_name: Name,
    ipv6_prefix: Option<Ipv6Net>,
    /// Whether it gets its `default` subnet.
    default_subnet: bool,
}

/// Inserts a VPC and (if asked) its `default` subnet inside the caller's transaction (project
/// create uses it for the project's `default` VPC), bumping the project's child generation.
async fn vpc_insert_with_default_subnet(
    conn: &mut AsyncPgConnection,
    request: &VpcRequest,
) -> Result<(Vpc, Option<VpcSubnet>), TxnError> {
    let new = Vpc::new(
        VpcUuid::new_v4(),
        request.project_id,
        request.name.clone(),
        request.description.clone(),
        request.dns_name.clone(),
        random_guest_vni(),
        request.ipv6_prefix.unwrap_or_else(random_vpc_ipv6_prefix),
    );
    let inserted = diesel::insert_into(vpc::table)
        .values(&new)
        .returning(Vpc::as_returning())
        .get_result(conn)
        .await
        .map_err(|e| match &e {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
                if info.constraint_name() == Some("vpc_by_vni") =>
            {
                // One in millions: the transaction runs again with another VNI.
                TxnError::Database(DieselError::DatabaseError(
                    DatabaseErrorKind::SerializationFailure,
                    Box::new(format!("VNI {} taken", new.vni)),
                ))
            }
            _ if is_unique_violation(&e) => TxnError::Public(Error::ObjectAlreadyExists {
                type_name: ResourceType::Vpc,
                name: new.name().to_string(),
            }),
            _ => TxnError::Database(e),
        })?;
    project_bump_rcgen(conn, request.project_id).await?;
    if !request.default_subnet {
        return Ok((inserted, None));
    }
    let subnet = subnet_insert(
        conn,
        &inserted,
        DEFAULT_VPC_NAME.parse().expect("a valid name"),
        format!("The default subnet for {}", inserted.name()),
        DEFAULT_SUBNET_BLOCK,
        None,
    )
    .await?;
    Ok((inserted, Some(subnet)))
}

/// Inserts the `default` VPC (and subnet) of a new project, inside its transaction.
pub(crate) async fn project_default_vpc_insert(
    conn: &mut AsyncPgConnection,
    project_id: ProjectUuid,
) -> Result<(), TxnError> {
    let default: Name = DEFAULT_VPC_NAME.parse().expect("a valid name");
    vpc_insert_with_default_subnet(
        conn,
        &VpcRequest {
            project_id,
            name: default.clone(),
            description: "Default VPC".to_string(),
            dns_name: default,
            ipv6_prefix: None,
            default_subnet: true,
        },
    )
    .await?;
    Ok(())
}

/// Deletes a project's VPCs and subnets inside its delete's transaction (its instances, and
/// so their interfaces, are gone by then).
pub(crate) async fn project_vpcs_delete(
    conn: &mut AsyncPgConnection,
    project_id: ProjectUuid,
) -> Result<(), TxnError> {
    let now = Utc::now();
    let vpc_ids: Vec<DbTypedUuid<halyard_common::ids::VpcKind>> = diesel::update(vpc::table)
        .filter(vpc::project_id.eq(DbTypedUuid(project_id)))
        .filter(vpc::time_deleted.is_null())
        .set(vpc::time_deleted.eq(now))
        .returning(vpc::id)
        .get_results(conn)
        .await?;
    diesel::update(vpc_subnet::table)
        .filter(vpc_subnet::vpc_id.eq_any(vpc_ids))
        .filter(vpc_subnet::time_deleted.is_null())
        .set(vpc_subnet::time_deleted.eq(now))
        .execute(conn)
        .await?;
    Ok(())
}

/// Inserts a subnet of `vpc` (whose row the caller's transaction has locked, by bumping its
/// child generation), refusing an overlapping IPv4 block or a taken IPv6 block.
async fn subnet_insert(
    conn: &mut AsyncPgConnection,
    vpc: &Vpc,
    name: Name,
    description: String,
    ipv4_block: Ipv4Net,
    ipv6_block: Option<Ipv6Net>,
) -> Result<VpcSubnet, TxnError> {
    let live: Vec<VpcSubnet> = vpc_subnet::table
        .filter(vpc_subnet::vpc_id.eq(vpc.id))
        .filter(vpc_subnet::time_deleted.is_null())
        .select(VpcSubnet::as_select())
        .load(conn)
        .await?;
    let ipv4_block = ipv4_block.trunc();
    if let Some(other) = live
        .iter()
        .find(|s| s.ipv4_block().contains(&ipv4_block) || ipv4_block.contains(&s.ipv4_block()))
    {
        return Err(Error::invalid_request(format!(
            "IPv4 block {ipv4_block} overlaps subnet \"{}\" ({}) of VPC \"{}\"",
            other.name(),
            other.ipv4_block(),
            vpc.name()
        ))
        .into());
    }
    let prefix = vpc.ipv6_prefix();
    let ipv6_block = match ipv6_block {
        Some(block) => {
            let block = block.trunc();
            if block.prefix_len() != 64 || !prefix.contains(&block) {
                return Err(Error::invalid_request(format!(
                    "IPv6 block {block} must be a /64 within the VPC's prefix {prefix}"
                ))
                .into());
            }
            if let Some(other) = live.iter().find(|s| s.ipv6_block() == block) {
                return Err(Error::invalid_request(format!(
                    "IPv6 block {block} is subnet \"{}\"'s",
                    other.name()
                ))
                .into());
            }
            block
        }
        None => prefix
            .subnets(64)
            .expect("a /48 has /64s")
            .find(|block| live.iter().all(|s| s.ipv6_block() != *block))
            .ok_or_else(|| Error::invalid_request("the VPC's IPv6 prefix has no free /64"))?,
    };
    let new = VpcSubnet::new(
        VpcSubnetUuid::new_v4(),
        vpc.id(),
        name,
        description,
        ipv4_block,
        ipv6_block,
    );
    diesel::insert_into(vpc_subnet::table)
        .values(&new)
        .returning(VpcSubnet::as_returning())
        .get_result(conn)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                TxnError::Public(Error::ObjectAlreadyExists {
                    type_name: ResourceType::VpcSubnet,
                    name: new.name().to_string(),
                })
            } else {
                TxnError::Database(e)
            }
        })
}

/// Locks a live VPC's row (bumping its child generation) for a change to its subnets.
async fn lock_vpc(conn: &mut AsyncPgConnection, id: VpcUuid) -> Result<Vpc, TxnError> {
    diesel::update(vpc::table)
        .filter(vpc::id.eq(DbTypedUuid(id)))
        .filter(vpc::time_deleted.is_null())
        .set(vpc::rcgen.eq(vpc::rcgen + 1))
        .returning(Vpc::as_returning())
        .get_result(conn)
        .await
        .optional()?
        .ok_or_else(|| Error::not_found_by_id(ResourceType::Vpc, id.into_untyped_uuid()).into())
}

/// 409 if a live interface matches `filter`.
async fn refuse_if_interfaces<F>(
    conn: &mut AsyncPgConnection,
    filter: F,
    what: &str,
) -> Result<(), TxnError>
where
    F: diesel::expression::BoxableExpression<
            network_interface::table,
            diesel::pg::Pg,
            SqlType = sql_types::Bool,
        > + diesel::expression::NonAggregate
        + diesel::query_builder::QueryId
        + Send
        + 'static,
{
    let count: i64 = network_interface::table
        .filter(network_interface::time_deleted.is_null())
        .filter(filter)
        .count()
        .get_result(conn)
        .await?;
    if count > 0 {
        return Err(Error::conflict(format!(
            "the {what} still has {count} network interface(s); delete them first"
        ))
        .into());
    }
    Ok(())
}

/// Locks an instance's row for a change to its interfaces and checks that it is in a state
/// `allowed` names.
async fn lock_instance_for_nics(
    conn: &mut AsyncPgConnection,
    instance_id: InstanceUuid,
    allowed: InstanceForNics,
) -> Result<Instance, TxnError> {
    let found = instance::table
        .filter(instance::id.eq(DbTypedUuid(instance_id)))
        .filter(instance::time_deleted.is_null())
        .select(Instance::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let Some(found) = found else {
        // Gone, or deleted: say so by id.
        let _ = instance_fetch_any(conn, instance_id).await?;
        return Err(instance_not_found(instance_id).into());
    };
    let state = found.runtime.nexus_state();
    let ok = match allowed {
        InstanceForNics::Creating => state == InstanceNexusState::Creating,
        InstanceForNics::Stopped => {
            matches!(
                state,
                InstanceNexusState::NoVmm | InstanceNexusState::Failed
            )
        }
    };
    if !ok {
        return Err(Error::conflict(format!(
            "instance \"{}\" must be stopped to add or remove network interfaces (its control \
             plane state is {})",
            found.name(),
            state.label()
        ))
        .into());
    }
    Ok(found)
}

/// One attempt at inserting an interface (see [`DataStore::network_interface_create`]).
async fn nic_insert(
    conn: &mut AsyncPgConnection,
    new: &NewNetworkInterface,
    allowed: InstanceForNics,
    (first, last): (u32, u32),
) -> Result<NetworkInterface, TxnError> {
    if let Some(existing) = network_interface::table
        .filter(network_interface::id.eq(DbTypedUuid(new.id)))
        .select(NetworkInterface::as_select())
        .first(conn)
        .await
        .optional()?
    {
        // A repeat finds its interface; one deleted since (its instance's create unwound, or
        // a user deleted it) is not made again under the same id.
        if existing.time_deleted.is_some() {
            return Err(Error::conflict(format!(
                "network interface {} was deleted meanwhile",
                existing.id()
            ))
            .into());
        }
        return Ok(existing);
    }
    let found = lock_instance_for_nics(conn, new.instance_id, allowed).await?;
    // The subnet must still be live, and stays so until this transaction ends: `FOR SHARE`
    // conflicts with the update by which a subnet or VPC delete marks it, which then waits
    // and counts this interface (or, if it committed first, this finds no row).
    let live_subnet: Option<DbTypedUuid<halyard_common::ids::VpcSubnetKind>> = vpc_subnet::table
        .filter(vpc_subnet::id.eq(new.subnet.id))
        .filter(vpc_subnet::time_deleted.is_null())
        .select(vpc_subnet::id)
        .for_share()
        .first(conn)
        .await
        .optional()?;
    if live_subnet.is_none() {
        return Err(Error::not_found_by_id(
            ResourceType::VpcSubnet,
            new.subnet.id().into_untyped_uuid(),
        )
        .into());
    }
    let existing: Vec<(i32, DbTypedUuid<halyard_common::ids::VpcKind>)> = network_interface::table
        .filter(network_interface::instance_id.eq(DbTypedUuid(new.instance_id)))
        .filter(network_interface::time_deleted.is_null())
        .select((network_interface::slot, network_interface::vpc_id))
        .load(conn)
        .await?;
    // An instance's interfaces are all in one VPC (as in the system we follow): its guest
    // sits in one private network.
    if existing
        .iter()
        .any(|(_, vpc_id)| *vpc_id != new.subnet.vpc_id)
    {
        return Err(Error::invalid_request(format!(
            "instance \"{}\" already has network interfaces in another VPC: all of an \
             instance's interfaces are in one VPC",
            found.name()
        ))
        .into());
    }
    let slots: Vec<i32> = existing.into_iter().map(|(slot, _)| slot).collect();
    if slots.len() >= MAX_NICS_PER_INSTANCE {
        return Err(Error::invalid_request(format!(
            "instance \"{}\" already has {MAX_NICS_PER_INSTANCE} network interfaces, the most \
             an instance has",
            found.name()
        ))
        .into());
    }
    let slot = (0..MAX_NICS_PER_INSTANCE as i32)
        .find(|slot| !slots.contains(slot))
        .expect("fewer than the most interfaces");
    let subnet = &new.subnet;
    let size = last - first + 1;
    let (start, window) = match new.ip {
        Some(ip) => (u32::from(ip) - first, 1),
        None => (
            rand::rng().random_range(0..size),
            size.min(ALLOCATION_WINDOW),
        ),
    };
    let now = Utc::now();
    let mac = random_guest_mac();
    let host = |ip: IpAddr| IpNet::from(ip);
    let inserted: Option<NetworkInterface> = diesel::sql_query(
        "INSERT INTO network_interface (id, name, description, instance_id, vpc_id, subnet_id, \
             time_created, time_modified, time_deleted, mac, ip, ipv6, is_primary, slot) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $7, NULL, $8, candidate.ip, \
             CASE WHEN $9 THEN $10 + (candidate.ip - $11) END, $12, $13 \
         FROM (SELECT $11 + ($14 + (($15 + i) % $16)) AS ip, i \
               FROM generate_series(0, $17 - 1) AS i) AS candidate \
         WHERE NOT EXISTS (SELECT 1 FROM network_interface n \
                           WHERE n.subnet_id = $6 AND n.time_deleted IS NULL \
                             AND n.ip = candidate.ip) \
         ORDER BY candidate.i \
         LIMIT 1 \
         RETURNING *",
    )
    .bind::<sql_types::Uuid, _>(DbTypedUuid(new.id))
    .bind::<sql_types::Text, _>(new.name.to_string())
    .bind::<sql_types::Text, _>(&new.description)
    .bind::<sql_types::Uuid, _>(DbTypedUuid(new.instance_id))
    .bind::<sql_types::Uuid, _>(subnet.vpc_id)
    .bind::<sql_types::Uuid, _>(subnet.id)
    .bind::<sql_types::Timestamptz, _>(now)
    .bind::<sql_types::Int8, _>(mac.to_u64() as i64)
    .bind::<sql_types::Bool, _>(new.dual_stack)
    .bind::<sql_types::Inet, _>(host(IpAddr::V6(subnet.ipv6_block().network())))
    .bind::<sql_types::Inet, _>(host(IpAddr::V4(subnet.ipv4_block().network())))
    .bind::<sql_types::Bool, _>(slots.is_empty())
    .bind::<sql_types::Int4, _>(slot)
    .bind::<sql_types::Int8, _>(i64::from(first - u32::from(subnet.ipv4_block().network())))
    .bind::<sql_types::Int8, _>(i64::from(start))
    .bind::<sql_types::Int8, _>(i64::from(size))
    .bind::<sql_types::Int8, _>(i64::from(window))
    .get_result(conn)
    .await
    .optional()
    .map_err(|e| match &e {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some("lookup_network_interface_by_instance") =>
        {
            TxnError::Public(Error::ObjectAlreadyExists {
                type_name: ResourceType::NetworkInterface,
                name: new.name.to_string(),
            })
        }
        _ => TxnError::Database(e),
    })?;
    if let Some(inserted) = inserted {
        return Ok(inserted);
    }
    // No free candidate: the explicit address is taken, or the window was full. Say "full"
    // only when the live interfaces fill the subnet; a sampled window of a big subnet that
    // happened to be full makes the caller try again from another start.
    let used: i64 = network_interface::table
        .filter(network_interface::subnet_id.eq(subnet.id))
        .filter(network_interface::time_deleted.is_null())
        .count()
        .get_result(conn)
        .await?;
    if let Some(ip) = new.ip {
        return Err(Error::conflict(format!(
            "address {ip} of subnet \"{}\" is already in use",
            subnet.name()
        ))
        .into());
    }
    if used >= i64::from(size) {
        return Err(Error::conflict(format!(
            "subnet \"{}\" ({}) is full: all {size} assignable addresses are in use",
            subnet.name(),
            subnet.ipv4_block()
        ))
        .into());
    }
    Err(TxnError::Database(DieselError::DatabaseError(
        DatabaseErrorKind::SerializationFailure,
        Box::new("the sampled window of the subnet was full".to_string()),
    )))
}

/// Whether an interface insert failed only because a racing insert took the same address or
/// MAC (so a new attempt picks another).
fn lost_allocation_race(e: &DieselError) -> bool {
    matches!(e, DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
        if matches!(info.constraint_name(),
            Some("network_interface_ip_in_subnet" | "network_interface_mac_in_vpc"
                | "network_interface_slot_on_instance" | "network_interface_primary_on_instance")))
}

fn not_found(type_name: ResourceType, which: &NameOrId) -> Error {
    match which {
        NameOrId::Id(id) => Error::not_found_by_id(type_name, *id),
        NameOrId::Name(name) => Error::not_found_by_name(type_name, name),
    }
}

/// A random VNI among the guest VNIs.
fn random_guest_vni() -> Vni {
    Vni::try_from(rand::rng().random_range(Vni::FIRST_GUEST..=Vni::MAX)).expect("in range")
}

/// A random MAC in the guest range.
fn random_guest_mac() -> MacAddr {
    MacAddr::from_u64(
        rand::rng().random_range(MacAddr::GUEST_FIRST.to_u64()..=MacAddr::GUEST_LAST.to_u64()),
    )
}

/// A random /48 of the unique local range `fd00::/8`.
fn random_vpc_ipv6_prefix() -> Ipv6Net {
    let random: u64 = rand::rng().random_range(0..(1 << 40));
    let address = (0xfdu128 << 120) | (u128::from(random) << 80);
    Ipv6Net::new(address.into(), 48).expect("a valid prefix")
}

/// A VPC's IPv6 prefix must be a /48 of `fd00::/8`.
pub fn validate_vpc_ipv6_prefix(prefix: Ipv6Net) -> Result<(), Error> {
    let ula: Ipv6Net = "fd00::/8".parse().expect("a valid prefix");
    if prefix.prefix_len() != 48 || !ula.contains(&prefix) {
        return Err(Error::invalid_request(format!(
            "a VPC's IPv6 prefix must be a /48 within fd00::/8, not {prefix}"
        )));
    }
    Ok(())
}

/// A subnet's IPv4 block must be private (RFC 1918) and a /8 to a /26.
pub fn validate_ipv4_block(block: Ipv4Net) -> Result<(), Error> {
    if !SUBNET_PREFIX_RANGE.contains(&block.prefix_len()) {
        return Err(Error::invalid_request(format!(
            "IPv4 block {block} must have a prefix length from /{} to /{}",
            SUBNET_PREFIX_RANGE.start(),
            SUBNET_PREFIX_RANGE.end()
        )));
    }
    let private: [Ipv4Net; 3] = [
        "10.0.0.0/8".parse().expect("valid"),
        "172.16.0.0/12".parse().expect("valid"),
        "192.168.0.0/16".parse().expect("valid"),
    ];
    if !private.iter().any(|range| range.contains(&block)) {
        return Err(Error::invalid_request(format!(
            "IPv4 block {block} must be within a private range (10.0.0.0/8, 172.16.0.0/12 or \
             192.168.0.0/16)"
        )));
    }
    Ok(())
}
