//! Every query Halyard makes of its database, behind one [`DataStore`].
//!
//! The state transitions that keep the invariants of docs/design.md live here, each as one
//! conditional statement or one transaction:
//!
//! - runtime writes are generation-guarded (`WHERE generation < $new`), so a stale or
//!   repeated write reports "not applied" instead of being applied;
//! - reserving a sled's resources is a conditional `UPDATE` of the sled's reserved totals
//!   (`WHERE reserved + n <= usable`), which both racers must touch, so racing reservations
//!   cannot over-commit a sled under READ COMMITTED (PostgreSQL) or SERIALIZABLE (CockroachDB);
//! - a sled agent's report of a VMM and its migrations is applied in one transaction;
//! - retiring a VMM (terminal state, reservation released, instance's pointer cleared) is one
//!   idempotent transaction.
//!
//! Errors are [`halyard_common::Error`]: a lost connection, a pool timeout or a serialization
//! conflict is `ServiceUnavailable` (retryable), never a panic.

mod cached;
mod datastore;
mod error;
mod pagination;
mod saga_store;
mod schema_version;
pub mod secret;

pub use datastore::{
    AttachedDisk, ConflictReason, DEVICE_AUTH_REQUEST_LIFETIME, DataStore, DeviceTokenPoll,
    DiskTransition, EventsWritten, HostedInterface, InstanceAndVmm, InstanceForDisks,
    InstanceForNics, LeftoverClaim, Leftovers, LostRegion, MAX_DISK_SIZE, MigrationReport,
    NewNetworkInterface, PoolConfig, PoolStatistics, Release, ReportApplied, RetireOutcome,
    SUBNET_PREFIX_RANGE, SledAgentAt, SledChoice, SnapshotTransition, TokenOwner,
    TransitionConflict, TransitionOutcome, VmmStateReport, VpcMappingsRead,
    validate_instance_shape, validate_ipv4_block, validate_new_disk, validate_new_instance,
    validate_vpc_ipv6_prefix,
};
pub use pagination::{DataPageParams, PaginatedBy, PaginationOrder};
pub use saga_store::{DbSecStore, SagaOwnership, saga_node_event_to_steno};
pub use schema_version::SchemaVersionError;
