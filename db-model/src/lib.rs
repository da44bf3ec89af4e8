//! Diesel's view of Halyard's database: `table!` definitions matching `schema/dbinit.sql`, the
//! row structs, and the SQL mappings of the `halyard-common` types.
//!
//! Row structs use typed wrappers ([`DbTypedUuid`], [`DbEnum`], [`DbGeneration`], ...) so the
//! typing of `halyard-common` reaches all the way to the SQL boundary. The `schema_matches_dbinit`
//! test fails when these definitions drift from `dbinit.sql`.

mod db_metadata;
mod disk;
mod identity;
mod instance;
mod migration;
mod network;
mod nexus;
mod project;
mod role;
mod saga;
pub mod schema;
mod sled;
mod snapshot;
mod sql_types;
mod vmm;

pub use db_metadata::DbMetadata;
pub use disk::{Disk, MAX_DISKS_PER_INSTANCE, NewDiskParams, REGIONS_PER_DISK, Region};
pub use identity::{
    AUDIT_ACTOR_UNAUTHENTICATED, AUDIT_ACTOR_USER, ApiToken, AuditLogEntry, DEFAULT_SILO_ID,
    DeviceAuthRequest, Silo, SiloUser, default_silo_id,
};
pub use instance::{Instance, InstanceRuntimeState, NewInstanceParams};
pub use migration::Migration;
pub use network::{
    DEFAULT_SUBNET_BLOCK, DEFAULT_VPC_NAME, MAX_NICS_PER_INSTANCE, NetworkInterface,
    RESERVED_ADDRESSES_AT_START, Vpc, VpcSubnet,
};
pub use nexus::NexusRecord;
pub use project::Project;
pub use role::{
    FLEET_ID, IDENTITY_TYPE_SILO_USER, RESOURCE_TYPE_FLEET, RESOURCE_TYPE_PROJECT, RoleAssignment,
};
pub use saga::{Saga, SagaNodeEvent, SagaState};
pub use sled::{Sled, SledBackend, SledReservation, SledResources};
pub use snapshot::{NewSnapshotParams, RegionSnapshot, Snapshot};
pub use sql_types::{DbByteCount, DbEnum, DbGeneration, DbName, DbTypedUuid};
pub use vmm::{Vmm, VmmRuntimeState};

use chrono::{DateTime, SubsecRound, Utc};

/// The current time at the database's precision (microseconds), so a record built in memory
/// equals the same record read back.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
