use crate::schema::{sled, sled_reservation};
use crate::{DbByteCount, DbEnum, DbTypedUuid};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use halyard_common::ByteCount;
use halyard_common::ids::{InstanceKind, InstanceUuid, SledKind, SledUuid, VmmKind, VmmUuid};
use ipnet::IpNet;
use std::net::SocketAddr;

pub use halyard_common::SledBackend;

/// A host that runs VMMs, with its capacity and the running totals of what is reserved on it.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = sled, check_for_backend(diesel::pg::Pg))]
pub struct Sled {
    pub id: DbTypedUuid<SledKind>,
    pub time_created: DateTime<Utc>,
    pub time_modified: DateTime<Utc>,
    pub time_last_seen: DateTime<Utc>,
    pub ip: IpNet,
    pub port: i32,
    pub backend: DbEnum<SledBackend>,
    pub usable_hardware_threads: i64,
    pub usable_physical_ram: DbByteCount,
    pub reserved_hardware_threads: i64,
    pub reserved_physical_ram: DbByteCount,
    /// When an operator declared the sled gone for good; `None` while it is in service.
    pub time_expunged: Option<DateTime<Utc>>,
    /// What the sled offers for regions (0: it holds none).
    pub usable_storage: DbByteCount,
    /// The running total of its regions' sizes.
    pub reserved_storage: DbByteCount,
    /// When the instance watcher failed this sled's VMMs for its agent's silence; `None`
    /// otherwise. Placement skips the sled while set (see `Nexus::watch_sleds`).
    pub time_vmms_failed: Option<DateTime<Utc>>,
    /// The sled's underlay address, as its agent reported it (none: it reported none).
    pub underlay_ip: Option<IpNet>,
}

/// An amount of a sled's resources: what a sled offers, or what one VMM needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SledResources {
    pub hardware_threads: u32,
    pub physical_ram: ByteCount,
}

impl Sled {
    /// The row for a sled that just registered, with nothing reserved.
    pub fn new(
        id: SledUuid,
        address: SocketAddr,
        backend: SledBackend,
        capacity: SledResources,
    ) -> Sled {
        let now = crate::now();
        Sled {
            id: id.into(),
            time_created: now,
            time_modified: now,
            time_last_seen: now,
            ip: IpNet::from(address.ip()),
            port: address.port().into(),
            backend: backend.into(),
            usable_hardware_threads: capacity.hardware_threads.into(),
            usable_physical_ram: capacity.physical_ram.into(),
            reserved_hardware_threads: 0,
            reserved_physical_ram: ByteCount::try_from(0u64).expect("zero fits").into(),
            time_expunged: None,
            usable_storage: ByteCount::try_from(0u64).expect("zero fits").into(),
            reserved_storage: ByteCount::try_from(0u64).expect("zero fits").into(),
            time_vmms_failed: None,
            underlay_ip: None,
        }
    }

    /// The same sled, with the underlay address its agent reported.
    pub fn with_underlay(mut self, underlay: Option<std::net::IpAddr>) -> Sled {
        self.underlay_ip = underlay.map(IpNet::from);
        self
    }

    /// Where other sleds send this sled's guests' tunnelled traffic: its reported underlay
    /// address, else its agent's IP (a simulated sled's mappings name that).
    pub fn underlay_address(&self) -> std::net::IpAddr {
        self.underlay_ip.map_or(self.ip.addr(), |ip| ip.addr())
    }

    /// The same sled, offering `storage` for regions.
    pub fn with_usable_storage(mut self, storage: ByteCount) -> Sled {
        self.usable_storage = storage.into();
        self
    }

    pub fn id(&self) -> SledUuid {
        self.id.0
    }

    /// Whether an operator declared the sled gone (placement skips it; it may not register).
    pub fn is_expunged(&self) -> bool {
        self.time_expunged.is_some()
    }

    /// The sled agent's address. The port column is range-checked in SQL.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::new(self.ip.addr(), u16::try_from(self.port).unwrap_or_default())
    }
}

/// The resources one non-terminal VMM holds on its sled.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = sled_reservation, check_for_backend(diesel::pg::Pg))]
pub struct SledReservation {
    pub vmm_id: DbTypedUuid<VmmKind>,
    pub sled_id: DbTypedUuid<SledKind>,
    pub instance_id: DbTypedUuid<InstanceKind>,
    pub hardware_threads: i64,
    pub physical_ram: DbByteCount,
    pub time_created: DateTime<Utc>,
}

impl SledReservation {
    pub fn new(
        vmm_id: VmmUuid,
        sled_id: SledUuid,
        instance_id: InstanceUuid,
        resources: SledResources,
    ) -> SledReservation {
        SledReservation {
            vmm_id: vmm_id.into(),
            sled_id: sled_id.into(),
            instance_id: instance_id.into(),
            hardware_threads: resources.hardware_threads.into(),
            physical_ram: resources.physical_ram.into(),
            time_created: crate::now(),
        }
    }

    pub fn vmm_id(&self) -> VmmUuid {
        self.vmm_id.0
    }

    pub fn sled_id(&self) -> SledUuid {
        self.sled_id.0
    }
}
