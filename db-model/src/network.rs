//! Virtual networking: VPCs, their subnets, and instances' network interfaces.

use crate::schema::{network_interface, vpc, vpc_subnet};
use crate::{DbName, DbTypedUuid};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use halyard_common::Name;
use halyard_common::ids::{
    InstanceKind, InstanceUuid, NetworkInterfaceKind, NetworkInterfaceUuid, ProjectKind,
    ProjectUuid, VpcKind, VpcSubnetKind, VpcSubnetUuid, VpcUuid,
};
use halyard_common::net::{Ipv4Net, Ipv6Net, MacAddr, Vni};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};

/// How many addresses at the start of every subnet are reserved (the network address, the
/// gateway and three more for the system, as in the system we follow); the last (broadcast)
/// address is reserved too.
pub const RESERVED_ADDRESSES_AT_START: u32 = 5;

/// The most network interfaces an instance has (Oxide's limit).
pub const MAX_NICS_PER_INSTANCE: usize = 8;

/// The name, description and block of every project's first VPC subnet (Oxide's).
pub const DEFAULT_VPC_NAME: &str = "default";
pub const DEFAULT_SUBNET_BLOCK: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(172, 30, 0, 0), 22) {
    Ok(net) => net,
    Err(_) => panic!("a valid prefix"),
};

/// A VPC: a project's private network.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, Serialize, Deserialize)]
#[diesel(table_name = vpc, check_for_backend(diesel::pg::Pg))]
pub struct Vpc {
    pub id: DbTypedUuid<VpcKind>,
    pub name: DbName,
    pub description: String,
    pub project_id: DbTypedUuid<ProjectKind>,
    pub time_created: DateTime<Utc>,
    pub time_modified: DateTime<Utc>,
    pub time_deleted: Option<DateTime<Utc>>,
    pub dns_name: DbName,
    /// Within `Vni::FIRST_GUEST..=Vni::MAX` (a CHECK in SQL); read it with [`Vpc::vni`].
    pub vni: i64,
    pub ipv6_prefix: IpNet,
    /// Bumped each time this VPC's mapping set is read to be pushed to sleds.
    pub v2p_generation: i64,
    pub rcgen: i64,
}

impl Vpc {
    pub fn new(
        id: VpcUuid,
        project_id: ProjectUuid,
        name: Name,
        description: String,
        dns_name: Name,
        vni: Vni,
        ipv6_prefix: Ipv6Net,
    ) -> Vpc {
        let now = crate::now();
        Vpc {
            id: id.into(),
            name: name.into(),
            description,
            project_id: project_id.into(),
            time_created: now,
            time_modified: now,
            time_deleted: None,
            dns_name: dns_name.into(),
            vni: i64::from(vni.as_u32()),
            ipv6_prefix: IpNet::V6(ipv6_prefix),
            v2p_generation: 1,
            rcgen: 1,
        }
    }

    pub fn id(&self) -> VpcUuid {
        self.id.0
    }

    pub fn name(&self) -> &Name {
        &self.name.0
    }

    pub fn project_id(&self) -> ProjectUuid {
        self.project_id.0
    }

    pub fn vni(&self) -> Vni {
        u32::try_from(self.vni)
            .ok()
            .and_then(|vni| Vni::try_from(vni).ok())
            .expect("the vni column's CHECK")
    }

    pub fn ipv6_prefix(&self) -> Ipv6Net {
        match self.ipv6_prefix {
            IpNet::V6(net) => net,
            IpNet::V4(_) => unreachable!("VPCs are only ever written with IPv6 prefixes"),
        }
    }
}

/// A subnet of a VPC.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, Serialize, Deserialize)]
#[diesel(table_name = vpc_subnet, check_for_backend(diesel::pg::Pg))]
pub struct VpcSubnet {
    pub id: DbTypedUuid<VpcSubnetKind>,
    pub name: DbName,
    pub description: String,
    pub vpc_id: DbTypedUuid<VpcKind>,
    pub time_created: DateTime<Utc>,
    pub time_modified: DateTime<Utc>,
    pub time_deleted: Option<DateTime<Utc>>,
    pub ipv4_block: IpNet,
    pub ipv6_block: IpNet,
}

impl VpcSubnet {
    pub fn new(
        id: VpcSubnetUuid,
        vpc_id: VpcUuid,
        name: Name,
        description: String,
        ipv4_block: Ipv4Net,
        ipv6_block: Ipv6Net,
    ) -> VpcSubnet {
        let now = crate::now();
        VpcSubnet {
            id: id.into(),
            name: name.into(),
            description,
            vpc_id: vpc_id.into(),
            time_created: now,
            time_modified: now,
            time_deleted: None,
            ipv4_block: IpNet::V4(ipv4_block.trunc()),
            ipv6_block: IpNet::V6(ipv6_block.trunc()),
        }
    }

    pub fn id(&self) -> VpcSubnetUuid {
        self.id.0
    }

    pub fn name(&self) -> &Name {
        &self.name.0
    }

    pub fn vpc_id(&self) -> VpcUuid {
        self.vpc_id.0
    }

    pub fn ipv4_block(&self) -> Ipv4Net {
        match self.ipv4_block {
            IpNet::V4(net) => net,
            IpNet::V6(_) => unreachable!("subnets' IPv4 blocks are only ever written as IPv4"),
        }
    }

    pub fn ipv6_block(&self) -> Ipv6Net {
        match self.ipv6_block {
            IpNet::V6(net) => net,
            IpNet::V4(_) => unreachable!("subnets' IPv6 blocks are only ever written as IPv6"),
        }
    }

    /// The first and last address an interface may get (the reserved ones skipped), as
    /// numbers; `None` if the block is too small to hold any.
    pub fn assignable_range(&self) -> Option<(u32, u32)> {
        let block = self.ipv4_block();
        let first = u32::from(block.network()) + RESERVED_ADDRESSES_AT_START;
        let last = u32::from(block.broadcast()).checked_sub(1)?;
        (first <= last).then_some((first, last))
    }

    /// The IPv6 address that goes with IPv4 address `ip` of this subnet: the same host offset
    /// in the subnet's /64 (so it is unique exactly when the IPv4 one is).
    pub fn ipv6_for(&self, ip: Ipv4Addr) -> Ipv6Addr {
        let offset = u32::from(ip) - u32::from(self.ipv4_block().network());
        Ipv6Addr::from(u128::from(self.ipv6_block().network()) + u128::from(offset))
    }
}

/// An instance's network interface.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Queryable,
    QueryableByName,
    Selectable,
    Insertable,
    Serialize,
    Deserialize,
)]
#[diesel(table_name = network_interface, check_for_backend(diesel::pg::Pg))]
pub struct NetworkInterface {
    pub id: DbTypedUuid<NetworkInterfaceKind>,
    pub name: DbName,
    pub description: String,
    pub instance_id: DbTypedUuid<InstanceKind>,
    pub vpc_id: DbTypedUuid<VpcKind>,
    pub subnet_id: DbTypedUuid<VpcSubnetKind>,
    pub time_created: DateTime<Utc>,
    pub time_modified: DateTime<Utc>,
    pub time_deleted: Option<DateTime<Utc>>,
    /// The MAC as a number (48 bits, a CHECK in SQL); read it with [`NetworkInterface::mac`].
    pub mac: i64,
    pub ip: IpNet,
    pub ipv6: Option<IpNet>,
    pub is_primary: bool,
    pub slot: i32,
}

impl NetworkInterface {
    pub fn id(&self) -> NetworkInterfaceUuid {
        self.id.0
    }

    pub fn name(&self) -> &Name {
        &self.name.0
    }

    pub fn instance_id(&self) -> InstanceUuid {
        self.instance_id.0
    }

    pub fn vpc_id(&self) -> VpcUuid {
        self.vpc_id.0
    }

    pub fn subnet_id(&self) -> VpcSubnetUuid {
        self.subnet_id.0
    }

    pub fn mac(&self) -> MacAddr {
        MacAddr::from_u64(u64::try_from(self.mac).expect("the mac column's CHECK"))
    }

    pub fn ip(&self) -> Ipv4Addr {
        match self.ip.addr() {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(_) => unreachable!("interfaces' IPv4 addresses are IPv4"),
        }
    }

    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6.and_then(|ip| match ip.addr() {
            std::net::IpAddr::V6(ip) => Some(ip),
            std::net::IpAddr::V4(_) => None,
        })
    }
}
