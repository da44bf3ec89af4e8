use crate::schema::vmm;
use crate::{DbEnum, DbGeneration, DbTypedUuid};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use halyard_common::ids::{InstanceKind, InstanceUuid, SledKind, SledUuid, VmmKind, VmmUuid};
use halyard_common::{Generation, VmmState};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// One incarnation of an instance on one sled. It belongs to its instance forever.
/// Serializable, as `Instance` is (the instance-start saga's last node hands on its row).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, Serialize, Deserialize)]
#[diesel(table_name = vmm, check_for_backend(diesel::pg::Pg))]
pub struct Vmm {
    pub id: DbTypedUuid<VmmKind>,
    pub instance_id: DbTypedUuid<InstanceKind>,
    pub sled_id: DbTypedUuid<SledKind>,
    pub propolis_ip: IpNet,
    pub propolis_port: i32,
    #[diesel(embed)]
    pub runtime: VmmRuntimeState,
    pub time_created: DateTime<Utc>,
    pub time_deleted: Option<DateTime<Utc>>,
}

/// The VMM's state as its sled agent last reported it, ordered by `generation`.
#[derive(
    Debug, Clone, PartialEq, Queryable, Selectable, Insertable, AsChangeset, Serialize, Deserialize,
)]
#[diesel(table_name = vmm, check_for_backend(diesel::pg::Pg))]
pub struct VmmRuntimeState {
    pub state: DbEnum<VmmState>,
    pub generation: DbGeneration,
    pub time_state_updated: DateTime<Utc>,
}

impl Vmm {
    /// A new VMM record in state `creating`, generation 1.
    pub fn new(
        id: VmmUuid,
        instance_id: InstanceUuid,
        sled_id: SledUuid,
        address: SocketAddr,
    ) -> Vmm {
        let now = crate::now();
        Vmm {
            id: id.into(),
            instance_id: instance_id.into(),
            sled_id: sled_id.into(),
            propolis_ip: IpNet::from(address.ip()),
            propolis_port: address.port().into(),
            runtime: VmmRuntimeState::new(VmmState::Creating, Generation::new()),
            time_created: now,
            time_deleted: None,
        }
    }

    pub fn id(&self) -> VmmUuid {
        self.id.0
    }

    pub fn instance_id(&self) -> InstanceUuid {
        self.instance_id.0
    }

    pub fn sled_id(&self) -> SledUuid {
        self.sled_id.0
    }

    pub fn state(&self) -> VmmState {
        self.runtime.state.0
    }

    /// The VMM's (propolis server's) address. The port column is range-checked in SQL.
    pub fn address(&self) -> SocketAddr {
        let ip: IpAddr = self.propolis_ip.addr();
        SocketAddr::new(ip, u16::try_from(self.propolis_port).unwrap_or_default())
    }
}

impl VmmRuntimeState {
    pub fn new(state: VmmState, generation: Generation) -> VmmRuntimeState {
        VmmRuntimeState {
            state: state.into(),
            generation: generation.into(),
            time_state_updated: crate::now(),
        }
    }

    pub fn state(&self) -> VmmState {
        self.state.0
    }

    pub fn generation(&self) -> Generation {
        self.generation.0
    }
}
