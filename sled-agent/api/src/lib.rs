//! The sled agent's HTTP API, as a dropshot trait apart from its implementation.
//!
//! Nexus calls it to register, drive and unregister VMMs; other sled agents call it to push a
//! live migration into a target VMM; operators (omdb) read it. `openapi/sled-agent.json` is
//! generated from this trait (`cargo xtask openapi generate`) and the `sled-agent-client`
//! crate from that document.

use dropshot::{
    HttpError, HttpResponseOk, HttpResponseUpdatedNoContent, Path, Query, RequestContext,
    TypedBody, WebsocketEndpointResult, WebsocketUpgrade,
};
use halyard_common::ids::{
    DiskUuid, InstanceUuid, MigrationUuid, NetworkInterfaceUuid, RegionUuid, SledUuid,
    SnapshotUuid, VmmUuid,
};
use halyard_common::internal_api::SledVmmState;
use halyard_common::net::{Ipv4Net, MacAddr, Vni};
use halyard_common::{BlockSize, ByteCount, Generation, SledBackend};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

#[dropshot::api_description]
pub trait SledAgentApi {
    type Context;

    /// Register a VMM on this sled (idempotent: the same body again is a no-op; a different
    /// body for a known id is refused with 409). The VMM does not run until asked to.
    #[endpoint { method = PUT, path = "/vmms/{propolis_id}" }]
    async fn vmm_register(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<VmmRegisterBody>,
    ) -> Result<HttpResponseOk<SledVmmState>, HttpError>;

    /// Unregister a VMM: stop it if it runs and forget it. Idempotent: an unknown VMM is
    /// already unregistered.
    #[endpoint { method = DELETE, path = "/vmms/{propolis_id}" }]
    async fn vmm_unregister(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError>;

    /// Ask a VMM to move to a state: run, stop, reboot, or migrate out to a target VMM.
    #[endpoint { method = PUT, path = "/vmms/{propolis_id}/state" }]
    async fn vmm_put_state(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<VmmPutStateBody>,
    ) -> Result<HttpResponseOk<SledVmmState>, HttpError>;

    /// A VMM's current state (including destroyed VMMs not yet unregistered).
    #[endpoint { method = GET, path = "/vmms/{propolis_id}/state" }]
    async fn vmm_get_state(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
    ) -> Result<HttpResponseOk<SledVmmState>, HttpError>;

    /// The VMMs this sled runs (destroyed ones are gone from this list).
    #[endpoint { method = GET, path = "/vmms" }]
    async fn vmm_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<VmmSummary>>, HttpError>;

    /// Sled agent to sled agent: the source of a live migration pushes one phase into the
    /// target VMM (which must have been registered as this migration's target).
    #[endpoint { method = PUT, path = "/vmms/{propolis_id}/migration-in" }]
    async fn vmm_migration_in(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<MigrationInStep>,
    ) -> Result<HttpResponseOk<MigrationInReply>, HttpError>;

    /// Nexus to the source of a live migration: the migration's target is gone for good (its
    /// sled was expunged, which is the operator's word that nothing runs there), so it will
    /// never answer, and whatever it may have resumed is dead with it. A source still waiting
    /// for the target's answer to `finish` (paused, asking again) stops asking, resumes the
    /// guest and reports its side of the migration failed; a source in an earlier phase fails
    /// the migration at once. A migration this VMM is not carrying out (never asked for,
    /// already ended) is left as it is. Idempotent; answers the VMM's current state (also
    /// that of a VMM already gone, until it is unregistered).
    #[endpoint { method = PUT, path = "/vmms/{propolis_id}/migration-out/target-gone" }]
    async fn vmm_migration_target_gone(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<MigrationTargetGone>,
    ) -> Result<HttpResponseOk<SledVmmState>, HttpError>;

    /// Pause or resume a running VMM's vCPUs (QEMU: QMP `stop`, which also drains and
    /// flushes the guest's block I/O, and `cont`), for a crash-consistent snapshot of its
    /// disks. The VMM's reported state does not change (a paused VMM is still `running`);
    /// `VmmSummary.vcpus_paused` shows it. Idempotent. Refused with 409 unless the VMM is
    /// running and no migration of it is under way; while paused, reboot and migrate are
    /// refused (409) and stop still works.
    #[endpoint { method = PUT, path = "/vmms/{propolis_id}/vcpus" }]
    async fn vmm_put_vcpus(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<VmmVcpus>,
    ) -> Result<HttpResponseOk<VmmVcpus>, HttpError>;

    /// Inject a fault into a VMM (simulated backend only, other backends refuse with 400;
    /// except the test hooks `panic` and `lose_next_finish_reply`, which every backend takes).
    #[endpoint { method = PUT, path = "/vmms/{propolis_id}/sim-fault" }]
    async fn vmm_inject_fault(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<SimFault>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError>;

    /// Read a VMM's serial console history.
    ///
    /// Exactly one of `from_start` and `most_recent` (else 400). The sled agent keeps each
    /// VMM's newest 1 MiB of output; older output is gone, and a read that starts there gets
    /// what remains (it starts at `last_byte_offset - data.len()`). Readable until the VMM is
    /// unregistered.
    #[endpoint { method = GET, path = "/vmms/{propolis_id}/serial-console" }]
    async fn vmm_serial_console(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        query: Query<VmmSerialConsoleRequest>,
    ) -> Result<HttpResponseOk<VmmSerialConsoleData>, HttpError>;

    /// Stream a VMM's serial console over a WebSocket.
    ///
    /// First the history from `most_recent` bytes back (absent: all the history held), then
    /// live output, as binary frames; binary or text frames sent in are typed into the
    /// console. The server sends a close frame when the VMM is gone. An unknown VMM is
    /// refused (404) before the upgrade.
    #[endpoint { method = GET, path = "/vmms/{propolis_id}/serial-console/stream" }]
    async fn vmm_serial_console_stream(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        query: Query<VmmSerialConsoleStreamRequest>,
        websocket: WebsocketUpgrade,
    ) -> WebsocketEndpointResult;

    /// Create a region (one replica of a disk) of this size in the sled's storage, and serve
    /// it (idempotent: the same size and block size again returns the region at once,
    /// whatever `source` says; another size for a known id is refused with 409, as is a region
    /// that does not fit in what the sled has left).
    ///
    /// With a `source`, the region's content is first copied from that NBD export (a healthy
    /// replica of the same disk, or a region snapshot's export), which must be exactly the
    /// region's size (else 400); the region is listed and served only once the copy is
    /// whole. A copy that fails (source unreachable, wrong size) answers an error and leaves
    /// nothing behind: a retried ensure starts over.
    #[endpoint { method = PUT, path = "/regions/{region_id}" }]
    async fn region_ensure(
        rqctx: RequestContext<Self::Context>,
        path: Path<RegionPathParam>,
        body: TypedBody<RegionEnsureBody>,
    ) -> Result<HttpResponseOk<RegionSummary>, HttpError>;

    /// Delete a region and its data (idempotent: an unknown region is already gone).
    #[endpoint { method = DELETE, path = "/regions/{region_id}" }]
    async fn region_delete(
        rqctx: RequestContext<Self::Context>,
        path: Path<RegionPathParam>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError>;

    /// Every region this sled holds, by id.
    #[endpoint { method = GET, path = "/regions" }]
    async fn region_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<RegionSummary>>, HttpError>;

    /// Take a snapshot of a region: a point-in-time, read-only, full copy of its data as it
    /// is when the request arrives (consistent even while a VMM writes to the region), served
    /// over NBD. It counts against the sled's storage like a region of the same size, and
    /// outlives its region (deleting the region leaves it). Idempotent: an existing snapshot
    /// is returned as it is. 404 for an unknown region; 409 if it does not fit.
    #[endpoint { method = PUT, path = "/regions/{region_id}/snapshots/{snapshot_id}" }]
    async fn region_snapshot_ensure(
        rqctx: RequestContext<Self::Context>,
        path: Path<RegionSnapshotPathParam>,
    ) -> Result<HttpResponseOk<RegionSnapshotSummary>, HttpError>;

    /// Delete a region snapshot (idempotent: an unknown one is already gone; its region
    /// need not exist any more).
    #[endpoint { method = DELETE, path = "/regions/{region_id}/snapshots/{snapshot_id}" }]
    async fn region_snapshot_delete(
        rqctx: RequestContext<Self::Context>,
        path: Path<RegionSnapshotPathParam>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError>;

    /// Every region snapshot this sled holds, by region and snapshot id.
    #[endpoint { method = GET, path = "/region-snapshots" }]
    async fn region_snapshot_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<RegionSnapshotSummary>>, HttpError>;

    /// Set this sled's virtual-to-physical mappings for one VPC (by its VNI): which sled's
    /// underlay address hosts each private address and MAC of the VPC. The set replaces the
    /// VNI's previous one, and only if its generation is newer than the one held (so a stale
    /// set, pushed late by a slower Nexus, never overwrites a newer one; a repeat is a no-op).
    /// An empty set removes the VPC's mappings. The answer says whether the set was applied
    /// and which generation the sled now holds.
    #[endpoint { method = PUT, path = "/v2p/{vni}" }]
    async fn v2p_put(
        rqctx: RequestContext<Self::Context>,
        path: Path<VniPathParam>,
        body: TypedBody<VpcMappings>,
    ) -> Result<HttpResponseOk<V2pApplied>, HttpError>;

    /// Every VPC's mappings this sled holds (VPCs whose last set was empty are listed with
    /// no mappings, so their generation shows).
    #[endpoint { method = GET, path = "/v2p" }]
    async fn v2p_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<VpcMappings>>, HttpError>;

    /// What this sled is and has.
    #[endpoint { method = GET, path = "/inventory" }]
    async fn inventory(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Inventory>, HttpError>;

    /// The sled agent's metrics in Prometheus's text format: HTTP requests by endpoint and
    /// status, VMMs by state and backend, capacity, state reports sent and retried.
    #[endpoint { method = GET, path = "/metrics" }]
    async fn metrics(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<http::Response<dropshot::Body>, HttpError>;
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct VmmPathParam {
    pub propolis_id: VmmUuid,
}

/// What a VMM incarnates, and where it comes from if it is a migration target.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct VmmRegisterBody {
    pub instance_id: InstanceUuid,
    pub ncpus: u16,
    pub memory: ByteCount,
    pub hostname: String,
    /// Set when this VMM is the target of a live migration.
    pub migration_target: Option<MigrationTarget>,
    /// The disks the VMM attaches, in the order the guest sees them (the boot disk first).
    /// A migration target is given the same disks as its source: it attaches the same
    /// replicas, nothing is copied.
    #[serde(default)]
    pub disks: Vec<VmmDisk>,
    /// The network interfaces the VMM attaches (the primary first). A migration target is
    /// given the same interfaces, with the same MACs and addresses.
    #[serde(default)]
    pub nics: Vec<VmmNic>,
}

/// A network interface as a VMM attaches it: a virtio NIC with the interface's MAC on the
/// sled's virtual switch for the VPC (by its VNI), whose guest is handed its private address
/// (on the kernel command line, for the QEMU backend's guest).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct VmmNic {
    pub nic_id: NetworkInterfaceUuid,
    /// The interface's name in the API (for logs; the guest names its devices itself).
    pub name: String,
    pub mac: MacAddr,
    /// The interface's private IPv4 address.
    pub ip: Ipv4Addr,
    /// The subnet the address is in (its prefix is the guest's netmask).
    pub subnet: Ipv4Net,
    /// The VPC's virtual network identifier.
    pub vni: Vni,
    /// The instance's primary interface (the guest's first NIC).
    pub primary: bool,
    /// The interface's position among the VMM's NICs (0 for the primary), which fixes its
    /// PCI slot, so a migration target's guest sees the same devices.
    pub slot: u8,
}

/// Path parameter: a VPC's virtual network identifier.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
pub struct VniPathParam {
    pub vni: Vni,
}

/// One VPC's virtual-to-physical mappings as a sled holds them: for every interface of the
/// VPC that a VMM incarnates somewhere, its private address and MAC and the sled (and that
/// sled's underlay address) that hosts it. Versioned by the VPC's mapping generation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct VpcMappings {
    pub vni: Vni,
    pub generation: Generation,
    pub mappings: Vec<V2pMapping>,
}

/// Where one private address of a VPC lives.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema,
)]
pub struct V2pMapping {
    pub virtual_ip: Ipv4Addr,
    pub virtual_mac: MacAddr,
    /// The sled that hosts the interface.
    pub sled_id: SledUuid,
    /// That sled's underlay address: where tunnelled frames for the MAC are sent.
    pub underlay_ip: IpAddr,
}

/// The answer to a mapping set: whether it was applied (false: the sled already held this
/// generation or a newer one) and the generation the sled holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct V2pApplied {
    pub applied: bool,
    pub generation: Generation,
}

/// A disk as a VMM attaches it: one virtio block device over the disk's replicas (its
/// regions' NBD exports), written to all of them and read by majority vote.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct VmmDisk {
    pub disk_id: DiskUuid,
    /// The disk's name, which the guest sees as the device's serial number.
    pub name: String,
    pub size: ByteCount,
    pub block_size: BlockSize,
    /// Where each replica is served, one per region (three for a healthy disk; a degraded
    /// disk may have fewer, but never fewer than two).
    pub replicas: Vec<NbdExport>,
}

/// The source a migration target will receive its instance from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct MigrationTarget {
    pub migration_id: MigrationUuid,
    pub source_propolis_id: VmmUuid,
    /// The source VMM's sled: the only sled whose certificate the target accepts the
    /// migration from.
    pub source_sled_id: SledUuid,
    /// The source VMM's sled agent.
    pub source_address: SocketAddr,
}

/// A state a VMM can be asked to move to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VmmStateRequested {
    /// Boot the VMM (a no-op if it is already starting or running).
    Run,
    /// Shut it down; it is destroyed once stopped (a no-op if already on its way).
    Stop,
    /// Reboot a running VMM.
    Reboot,
    /// Send the running instance to a target VMM registered for this migration.
    MigrateOut {
        migration_id: MigrationUuid,
        target_propolis_id: VmmUuid,
        /// The target VMM's sled: the only sled whose certificate the source's migration
        /// stream (QEMU's, over TLS) accepts at the other end.
        target_sled_id: SledUuid,
        /// The target VMM's sled agent.
        target_address: SocketAddr,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct VmmPutStateBody {
    pub state: VmmStateRequested,
}

/// One VMM this sled runs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct VmmSummary {
    pub propolis_id: VmmUuid,
    pub instance_id: InstanceUuid,
    pub ncpus: u16,
    pub memory: ByteCount,
    pub hostname: String,
    /// The disks the VMM attached, in the order its guest sees them (the boot disk first).
    #[serde(default)]
    pub disks: Vec<DiskUuid>,
    /// Whether its vCPUs are paused (`PUT /vmms/{propolis_id}/vcpus`); its state stays
    /// `running` meanwhile.
    #[serde(default)]
    pub vcpus_paused: bool,
    pub state: SledVmmState,
}

/// Whether a VMM's vCPUs are paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct VmmVcpus {
    pub paused: bool,
}

/// The phases of a live migration, in order. The source pushes each to the target.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MigrationPhase {
    /// Copy memory while the source keeps running.
    Sync,
    /// Pause the source.
    Pause,
    /// Copy the remaining memory and device state.
    Transfer,
    /// Resume the instance on the target.
    Finish,
}

impl MigrationPhase {
    pub const ALL: [MigrationPhase; 4] = [
        MigrationPhase::Sync,
        MigrationPhase::Pause,
        MigrationPhase::Transfer,
        MigrationPhase::Finish,
    ];
}

/// One step of an inbound migration, from the source's sled agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct MigrationInStep {
    pub migration_id: MigrationUuid,
    pub source_propolis_id: VmmUuid,
    pub phase: MigrationPhase,
}

/// Which outbound migration's target is gone for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct MigrationTargetGone {
    pub migration_id: MigrationUuid,
}

/// The target's answer to one phase of an inbound migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct MigrationInReply {
    /// Where the source sends the guest's memory and device state, for VMMs that transfer
    /// it themselves (qemu: the target QEMU's listening socket, known from the `sync`
    /// phase on). None for simulated VMMs, whose phases carry no data.
    pub incoming_address: Option<SocketAddr>,
}

/// How a QEMU sled runs its guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Accelerator {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation (no usable KVM on this host).
    Tcg,
}

impl std::fmt::Display for Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        })
    }
}

/// A fault to inject into a simulated VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SimFault {
    /// The next start fails: the VMM goes from starting to failed.
    FailNextStart,
    /// A running VMM crashes now: it goes to failed.
    Crash,
    /// The next transition (start, stop, reboot) never finishes until the VMM is
    /// unregistered.
    HangNextTransition,
    /// A test hook, accepted by every backend: the VMM's task panics now (a bug in the sled
    /// agent, simulated). The sled agent must still report the VMM failed, after it has
    /// made sure the VMM is gone (for QEMU: its process killed and its files removed).
    Panic,
    /// The VMM's next migration (in or out) fails at this phase. Refused (409) on a
    /// migration target whose inbound migration is under way and already past that phase.
    FailMigration { phase: MigrationPhase },
    /// A test hook for a lost reply, accepted by every backend: in this VMM's next migration
    /// out, the target carries out the `finish` phase (the guest resumes there), and its
    /// reply is then dropped, as if lost on the way back: the source has to find out
    /// whether the target resumed.
    LoseNextFinishReply,
    /// In this VMM's next migration out, every push of `finish` is lost on its way to the
    /// target (a partition, or the target's sled dying just as the source commits): the
    /// target never resumes the guest, and the source, which can't tell, stays paused and
    /// keeps asking until it learns the outcome some other way.
    LoseNextFinish,
}

/// Which part of a VMM's serial console history to read (Oxide's
/// `InstanceSerialConsoleRequest`, less the instance selector).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct VmmSerialConsoleRequest {
    /// Byte offset from which to read, counting the bytes output since the VMM was created.
    /// Exactly one of `from_start` and `most_recent` must be given.
    pub from_start: Option<u64>,
    /// Byte offset from which to read, counting backward from the newest byte output.
    pub most_recent: Option<u64>,
    /// At most this many bytes (default 16 KiB); fewer when the output ends sooner.
    pub max_bytes: Option<u64>,
}

/// Bytes of a VMM's serial console history (Oxide's `InstanceSerialConsoleData`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct VmmSerialConsoleData {
    /// The bytes, not necessarily UTF-8.
    pub data: Vec<u8>,
    /// The absolute offset one past the last byte in `data`: the `from_start` to read on
    /// from.
    pub last_byte_offset: u64,
}

/// Where a serial console stream starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct VmmSerialConsoleStreamRequest {
    /// Start this many bytes before the newest byte output; absent: with the oldest byte
    /// still held.
    pub most_recent: Option<u64>,
}

/// What this sled is and has.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct Inventory {
    pub sled_id: SledUuid,
    pub address: SocketAddr,
    pub backend: SledBackend,
    pub hardware_threads: u32,
    pub physical_ram: ByteCount,
    /// VMMs registered and not yet destroyed.
    pub vmm_count: u64,
    /// The accelerator QEMU runs guests with (decided once at start); none for a
    /// simulated sled.
    pub accelerator: Option<Accelerator>,
    /// What the sled offers for regions.
    pub usable_storage: ByteCount,
    /// What its regions and region snapshots hold of that.
    pub reserved_storage: ByteCount,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct RegionPathParam {
    pub region_id: RegionUuid,
}

/// The shape of a region (its disk's), and where its first content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct RegionEnsureBody {
    pub size: ByteCount,
    pub block_size: BlockSize,
    /// Copy the new region's content from this NBD export (a healthy replica of the same
    /// disk, for region replacement; a region snapshot's export, for a disk made from a
    /// snapshot) before serving it. Absent: the region starts zeroed.
    #[serde(default)]
    pub source: Option<NbdExport>,
}

impl RegionEnsureBody {
    /// A region's shape, without a source.
    pub fn shape(&self) -> RegionShape {
        RegionShape {
            size: self.size,
            block_size: self.block_size,
        }
    }
}

/// A region's (or a region snapshot's) size and block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct RegionShape {
    pub size: ByteCount,
    pub block_size: BlockSize,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct RegionSnapshotPathParam {
    pub region_id: RegionUuid,
    pub snapshot_id: SnapshotUuid,
}

/// One region snapshot this sled holds: a read-only, point-in-time copy of a region.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct RegionSnapshotSummary {
    pub region_id: RegionUuid,
    pub snapshot_id: SnapshotUuid,
    /// The region's size and block size when the snapshot was taken; the snapshot holds
    /// this much of the sled's storage.
    pub size: ByteCount,
    pub block_size: BlockSize,
    /// Where it is served, read-only, over NBD (QEMU sleds); none for a simulated sled's
    /// snapshots, which hold no data.
    pub export: Option<NbdExport>,
}

/// One region this sled holds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct RegionSummary {
    pub region_id: RegionUuid,
    pub size: ByteCount,
    pub block_size: BlockSize,
    /// Where the region's data is served over NBD (QEMU sleds); none for a simulated sled's
    /// regions, which hold no data.
    pub export: Option<NbdExport>,
}

/// A region served over NBD: `nbd://{address}/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct NbdExport {
    pub address: SocketAddr,
    pub name: String,
}
