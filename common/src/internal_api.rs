//! What sled agents and Nexus tell each other about VMMs and sleds.
//!
//! These types appear in both the sled agent's API (what it says a VMM's state is) and Nexus's
//! internal API (what sled agents report), so they live here once; the generated clients map
//! their copies of these schemas back to these types.

use crate::ids::MigrationUuid;
use crate::{ByteCount, Generation, MigrationState, SledBackend, VmmState};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A VMM's state at one generation, as its sled agent saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmmRuntimeState {
    pub state: VmmState,
    /// Increases by one with every change of `state`.
    pub generation: Generation,
    pub time_updated: DateTime<Utc>,
}

/// One side of a live migration, as the sled agent of that side saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MigrationRuntimeState {
    pub migration_id: MigrationUuid,
    pub state: MigrationState,
    /// Increases by one with every change of `state`; independent of the VMM's generation.
    pub generation: Generation,
    pub time_updated: DateTime<Utc>,
}

/// Everything a sled agent knows about the state of one VMM: what it reports to Nexus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SledVmmState {
    pub vmm_state: VmmRuntimeState,
    /// The migration this VMM is the target of, if any.
    pub migration_in: Option<MigrationRuntimeState>,
    /// The migration this VMM is the source of, if any.
    pub migration_out: Option<MigrationRuntimeState>,
}

/// What a sled agent tells Nexus when it registers its sled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SledAgentInfo {
    /// Where the sled agent's API listens.
    pub address: SocketAddr,
    pub backend: SledBackend,
    /// Hardware threads available to VMMs.
    pub hardware_threads: u32,
    /// Memory available to VMMs.
    pub physical_ram: ByteCount,
    /// Storage available to regions (replicas of disks); 0 for a sled that holds none.
    pub usable_storage: ByteCount,
    /// The sled's address on the underlay network, where other sleds send its guests'
    /// tunnelled traffic. Absent: the sled reports none (a simulated sled's mappings are
    /// then addressed to its API's IP).
    #[serde(default)]
    pub underlay_address: Option<std::net::IpAddr>,
}
