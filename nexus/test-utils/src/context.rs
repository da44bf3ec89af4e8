//! The test context the Nexus and omdb suites share: a fresh database, Nexus in-process, and
//! sled agents (simulated, or running QEMU) over real HTTP, plus an invariant checker that
//! reports every violation it finds.

use halyard_common::ids::{InstanceUuid, NexusUuid, SledUuid, VmmUuid};
use halyard_common::{ByteCount, InstanceState, Name, NameOrId, SledBackend};
use halyard_nexus::app::instance::InstanceAndVmm;
use halyard_nexus::{Config, Nexus, Server};
use halyard_nexus_external_api::params::InstanceCreate;
use halyard_sled_agent::{QemuConfig, SimConfig, UnderlayConfig};
use halyard_test_db::{ReservedPort, TestDatabase, Underlay, shared_cluster};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use halyard_tls::Role;

/// The files of `role`'s certificate from this test process's CA (`halyard_tls::pki`).
pub fn tls_files(role: Role) -> halyard_tls::TlsFiles {
    halyard_tls::pki::test_pki().files(role).unwrap()
}

/// An HTTP client with the operator's certificate, for a server with `server_name`'s
/// (`halyard_tls::NEXUS_NAME` for Nexus's internal API, `SLED_AGENT_NAME` for sled agents).
pub fn operator_http(server_name: &str) -> reqwest::Client {
    halyard_tls::pki::test_pki()
        .http_client(Role::Operator, server_name)
        .unwrap()
}

/// One mapping a sled agent holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldMapping {
    /// The sled whose agent holds it.
    pub holder: SledUuid,
    pub vni: halyard_common::net::Vni,
    pub mapping: halyard_sled_agent_api::V2pMapping,
}

/// A client for the sled agent at `address`, with `role`'s certificate (an operator reads and
/// injects faults; only Nexus changes VMMs).
pub fn sled_client(address: SocketAddr, role: Role) -> halyard_sled_agent_client::Client {
    let http = halyard_tls::pki::test_pki()
        .http_client(role, halyard_tls::SLED_AGENT_NAME)
        .unwrap();
    halyard_sled_agent_client::Client::new_with_client(&format!("https://{address}"), http)
}

pub fn log() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// What a test's sled agents run their VMMs with.
#[derive(Clone)]
enum SledKind {
    Sim(SimConfig),
    Qemu(QemuConfig),
}

impl SledKind {
    fn backend(&self) -> SledBackend {
        match self {
            SledKind::Sim(_) => SledBackend::Sim,
            SledKind::Qemu(_) => SledBackend::Qemu,
        }
    }

    fn sim(&self) -> SimConfig {
        match self {
            SledKind::Sim(sim) => *sim,
            SledKind::Qemu(_) => SimConfig::default(),
        }
    }

    fn qemu(&self) -> QemuConfig {
        match self {
            SledKind::Sim(_) => QemuConfig::default(),
            SledKind::Qemu(qemu) => qemu.clone(),
        }
    }
}

/// The simulated sled agents' delays unless a test asks for others: short, but long enough
/// that each transition is a separate report.
const SIM_DELAYS: SimConfig = SimConfig {
    start_delay_ms: 20,
    stop_delay_ms: 20,
    reboot_delay_ms: 20,
    migration_phase_delay_ms: 10,
};

/// Network namespaces removed when dropped: a QEMU sled agent removes its own at `close`, but
/// one dropped without it (a test that ends without [`TestContext::close`]) leaves it behind.
struct SledNamespaces(Vec<String>);

impl Drop for SledNamespaces {
    fn drop(&mut self) {
        for namespace in &self.0 {
            // Already gone after a close: nothing to do.
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", namespace])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// QEMU sleds (TCG here) booting the guest image (built first if this machine has none yet),
/// each under a fresh state directory.
async fn qemu_kind() -> SledKind {
    let guest_dir = halyard_sled_agent::build_guest_image().await.unwrap();
    // Short: unix socket paths live below it.
    let state_dir = std::env::temp_dir().join(format!(
        "hq-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    SledKind::Qemu(QemuConfig {
        guest_dir,
        state_dir,
        stop_timeout_ms: 10_000,
        ..Default::default()
    })
}

pub struct TestContext {
    pub db: TestDatabase,
    /// `None` once stopped with [`TestContext::stop_nexus`].
    server: Option<Server>,
    /// Kept apart from the server, so a test may still call it once the servers stopped.
    nexus: Arc<Nexus>,
    nexus_url: String,
    pub sleds: Vec<halyard_sled_agent::Server>,
    /// The underlay the QEMU sleds are joined by ([`TestContext::with_qemu_underlay`]);
    /// declared after `sleds`, so it is dropped (with the namespaces linked to it) after them.
    underlay: Option<Underlay>,
    /// The QEMU sleds' network namespaces, removed when the context is dropped.
    _namespaces: SledNamespaces,
    /// Nexus's internal API port, when reserved ([`TestContext::with_stoppable_nexus`]): once
    /// Nexus is stopped, no other test's server may take it and receive this test's sled
    /// agents' calls.
    _nexus_internal_port: Option<ReservedPort>,
    /// The token of [`TEST_USER`], which every test client presents.
    pub token: String,
    /// What each sled agent offers for regions ([`TestContext::with_storage`]; 0: none).
    storage_capacity: ByteCount,
}

/// The user every test client acts as.
pub const TEST_USER: &str = "test-user";

/// A new token of the default silo's test user (created if absent).
pub async fn test_user_token(nexus: &Nexus) -> String {
    let (_, secret) = nexus
        .default_silo_user_token(&TEST_USER.parse().unwrap())
        .await
        .expect("creating the test user's token");
    secret.expose().to_string()
}

/// Each sled offers this many hardware threads and GiB of memory.
pub const SLED_THREADS: u32 = 8;
pub const SLED_RAM_GIB: u32 = 16;

impl TestContext {
    pub async fn new() -> TestContext {
        TestContext::with_sleds(2).await
    }

    pub async fn with_sleds(count: usize) -> TestContext {
        TestContext::with_sim(count, SIM_DELAYS).await
    }

    pub async fn with_sim(count: usize, sim: SimConfig) -> TestContext {
        TestContext::start_with(
            count,
            SledKind::Sim(sim),
            None,
            ByteCount::from_mebibytes_u32(0),
            None,
        )
        .await
    }

    /// [`TestContext::with_sleds`] whose sled agents each offer `capacity` bytes of storage
    /// for disks' regions (the others offer none, so hold no disk).
    pub async fn with_storage(count: usize, capacity: ByteCount) -> TestContext {
        TestContext::start_with(count, SledKind::Sim(SIM_DELAYS), None, capacity, None).await
    }

    /// [`TestContext::with_sleds`] with Nexus's internal API on a reserved port, so the test
    /// may stop Nexus ([`TestContext::stop_nexus`]) while its sled agents keep calling it.
    pub async fn with_stoppable_nexus(count: usize) -> TestContext {
        let port = halyard_test_db::reserve_port().unwrap();
        TestContext::start_with(
            count,
            SledKind::Sim(SIM_DELAYS),
            Some(port),
            ByteCount::from_mebibytes_u32(0),
            None,
        )
        .await
    }

    /// Sleds that run real QEMU VMMs (TCG here), booting the guest image (built first if
    /// this machine has none yet).
    pub async fn with_qemu(count: usize) -> TestContext {
        TestContext::with_qemu_storage(count, ByteCount::from_mebibytes_u32(0)).await
    }

    /// [`TestContext::with_qemu`] whose sled agents each offer `capacity` bytes of storage for
    /// regions (qcow2 files below the sled's state directory, served over NBD by its
    /// `qemu-storage-daemon`).
    pub async fn with_qemu_storage(count: usize, capacity: ByteCount) -> TestContext {
        TestContext::start_with(count, qemu_kind().await, None, capacity, None).await
    }

    /// [`TestContext::with_qemu`] on a fresh `test-db` [`Underlay`]: each sled agent's
    /// `[qemu.underlay]` names its bridge and the next address on it, so guests in one VPC
    /// reach each other across sleds (once Nexus pushed the VPC's mappings). The underlay is
    /// removed with the context. The sled agents register every 10 s (as run-all's), not every
    /// second: a registration reconciles the sled's mappings, which would hide a push Nexus
    /// failed to make for 10 s at most rather than 1.
    pub async fn with_qemu_underlay(count: usize) -> TestContext {
        let underlay = Underlay::create().expect("making the underlay bridge (needs root)");
        TestContext::start_with(
            count,
            qemu_kind().await,
            None,
            ByteCount::from_mebibytes_u32(0),
            Some(underlay),
        )
        .await
    }

    async fn start_with(
        count: usize,
        kind: SledKind,
        nexus_internal_port: Option<ReservedPort>,
        storage_capacity: ByteCount,
        underlay: Option<Underlay>,
    ) -> TestContext {
        let db = TestDatabase::new();
        let config = Config {
            retirement_interval_ms: 200,
            heartbeat_interval_ms: 200,
            // Off (an hour): tests that fail instances expect them to stay
            // failed; auto-restart's tests run the reincarnation pass themselves.
            instance_reincarnation_interval_ms: 3_600_000,
            // Sagas and retirements push mappings themselves; a periodic pass would only add load.
            v2p_reconciliation_interval_ms: 3_600_000,
            ..Config::new(
                NexusUuid::new_v4(),
                db.url().to_string(),
                "127.0.0.1:0".parse().unwrap(),
                nexus_internal_port
                    .as_ref()
                    .map_or_else(|| "127.0.0.1:0".parse().unwrap(), |port| port.address()),
                tls_files(Role::Nexus),
            )
        };
        let server = Server::start(&config, &log()).await.unwrap();
        let token = test_user_token(server.nexus()).await;
        let mut sleds = Vec::new();
        for _ in 0..count {
            let sled_id = SledUuid::new_v4();
            let mut qemu = kind.qemu();
            if let Some(underlay) = &underlay {
                qemu.underlay = Some(UnderlayConfig {
                    bridge: underlay.bridge().to_string(),
                    address: underlay.next_address(),
                });
            }
            let sled_config = halyard_sled_agent::Config {
                sled_id,
                listen_address: "127.0.0.1:0".parse().unwrap(),
                nexus_address: server.internal_address(),
                backend: kind.backend(),
                hardware_threads: SLED_THREADS,
                physical_ram: ByteCount::from_gibibytes_u32(SLED_RAM_GIB),
                // On an underlay, as run-all's: each registration also reconciles the sled's
                // mappings, and once a second would hide whether Nexus pushed them itself.
                registration_interval_ms: if underlay.is_some() { 10_000 } else { 1000 },
                sim: kind.sim(),
                qemu,
                storage: halyard_sled_agent::StorageConfig {
                    capacity: storage_capacity,
                    ..Default::default()
                },
                tls: tls_files(Role::Sled(sled_id)),
            };
            sleds.push(
                halyard_sled_agent::Server::start(&sled_config, &log())
                    .await
                    .unwrap(),
            );
        }
        let ctx = TestContext {
            db,
            nexus: Arc::clone(server.nexus()),
            nexus_url: format!("https://{}", server.internal_address()),
            server: Some(server),
            _namespaces: SledNamespaces(match kind {
                SledKind::Qemu(_) => sleds
                    .iter()
                    .map(|sled| halyard_sled_agent::qemu_namespace_name(sled.agent().id()))
                    .collect(),
                SledKind::Sim(_) => Vec::new(),
            }),
            sleds,
            underlay,
            _nexus_internal_port: nexus_internal_port,
            token,
            storage_capacity,
        };
        let want = count;
        ctx.eventually("every sled registered", async |ctx: &TestContext| {
            ctx.sql("SELECT count(*) FROM sled").trim() == want.to_string()
        })
        .await;
        ctx
    }

    /// Restarts sled agent `index`: a new sled agent process-alike with the same sled id and
    /// an empty VMM table (the old one's VMMs are gone with it, as far as anyone can ask).
    pub async fn restart_sled(&mut self, index: usize, sim: SimConfig) {
        let old = self.sleds.remove(index);
        let id = old.agent().id();
        old.close().await.unwrap();
        let config = halyard_sled_agent::Config {
            sled_id: id,
            listen_address: "127.0.0.1:0".parse().unwrap(),
            nexus_address: self.server().internal_address(),
            backend: SledBackend::Sim,
            hardware_threads: SLED_THREADS,
            physical_ram: ByteCount::from_gibibytes_u32(SLED_RAM_GIB),
            registration_interval_ms: 1000,
            sim,
            qemu: Default::default(),
            storage: halyard_sled_agent::StorageConfig {
                capacity: self.storage_capacity,
                ..Default::default()
            },
            tls: tls_files(Role::Sled(id)),
        };
        let new = halyard_sled_agent::Server::start(&config, &log())
            .await
            .unwrap();
        self.sleds.insert(index, new);
    }

    /// Nexus's servers (panics once [`TestContext::stop_nexus`] stopped them).
    pub fn server(&self) -> &Server {
        self.server
            .as_ref()
            .expect("Nexus's servers run (stop_nexus stopped them)")
    }

    pub fn nexus(&self) -> &Arc<Nexus> {
        &self.nexus
    }

    /// Stops Nexus's background tasks, to hold still a state one of them would repair.
    pub fn stop_background_tasks(&self) {
        if let Some(server) = &self.server {
            server.stop_background_tasks();
        }
    }

    /// Nexus's internal API, as omdb and sled agents reach it.
    pub fn nexus_url(&self) -> &str {
        &self.nexus_url
    }

    /// Nexus's external API (`http://...`), while Nexus runs.
    pub fn external_url(&self) -> String {
        format!("http://{}", self.server().external_address())
    }

    /// Closes the sled agents, then Nexus's servers (errors ignored: the test is over), and
    /// returns the database, which dropping removes.
    pub async fn close(self) -> TestDatabase {
        for sled in self.sleds {
            let _ = sled.close().await;
        }
        drop(self.underlay);
        if let Some(server) = self.server {
            let _ = server.close().await;
        }
        self.db
    }

    /// Stops Nexus's servers (its internal API stops answering; sled agents' reports wait).
    pub async fn stop_nexus(&mut self) {
        if let Some(server) = self.server.take() {
            server.close().await.unwrap();
        }
    }

    pub fn sled_address(&self, i: usize) -> SocketAddr {
        self.sleds[i].local_addr()
    }

    pub fn sled_id(&self, i: usize) -> SledUuid {
        self.sleds[i].agent().id()
    }

    /// A client for sled agent `i`, straight to it (not through Nexus).
    pub fn sled_client(&self, i: usize) -> halyard_sled_agent_client::Client {
        // Tests change VMMs behind Nexus's back, as Nexus would.
        sled_client(self.sled_address(i), Role::Nexus)
    }

    /// Every mapping the sled agents hold now (VPCs' virtual-to-physical mappings), with the
    /// sled holding it and the VPC's VNI.
    pub async fn held_mappings(&self) -> Vec<HeldMapping> {
        let mut held = Vec::new();
        for sled in &self.sleds {
            for set in sled.agent().v2p_list().await {
                for mapping in set.mappings {
                    held.push(HeldMapping {
                        holder: sled.agent().id(),
                        vni: set.vni,
                        mapping,
                    });
                }
            }
        }
        held
    }

    /// Waits (up to 10 s) until the sled agents' mappings satisfy `check` (pushes after a VMM
    /// ends are made as its retirement finishes, after the instance already shows stopped).
    pub async fn wait_for_mappings(&self, what: &str, check: impl Fn(&[HeldMapping]) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let held = self.held_mappings().await;
            if check(&held) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sled agents' mappings never came to {what}: {held:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The instance's interfaces' private addresses.
    pub async fn interface_ips(&self, id: InstanceUuid) -> Vec<std::net::Ipv4Addr> {
        self.nexus()
            .datastore()
            .instance_network_interfaces(id)
            .await
            .unwrap()
            .into_iter()
            .map(|(nic, _, _)| nic.ip())
            .collect()
    }

    /// The sled a VMM runs (or ran) on, as the database has it.
    async fn sled_id_of(&self, vmm: VmmUuid) -> SledUuid {
        self.nexus()
            .datastore()
            .vmm_fetch(vmm)
            .await
            .unwrap()
            .sled_id()
    }

    /// The index of the sled a VMM runs on.
    pub async fn sled_of(&self, vmm: VmmUuid) -> usize {
        let sled = self.sled_id_of(vmm).await;
        self.sleds
            .iter()
            .position(|s| s.agent().id() == sled)
            .expect("the VMM's sled is one of ours")
    }

    pub fn sql(&self, sql: &str) -> String {
        shared_cluster().psql(self.db.name(), sql).expect("psql")
    }

    pub async fn eventually(&self, what: &str, check: impl AsyncFn(&TestContext) -> bool) {
        self.eventually_within(Duration::from_secs(10), what, check)
            .await
    }

    pub async fn eventually_within(
        &self,
        timeout: Duration,
        what: &str,
        check: impl AsyncFn(&TestContext) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !check(self).await {
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn project(&self, name: &str) -> NameOrId {
        let name: Name = name.parse().unwrap();
        self.nexus()
            .project_create(name.clone(), String::new())
            .await
            .unwrap();
        NameOrId::Name(name)
    }

    pub async fn instance(&self, project: &NameOrId, name: &str, ncpus: u16) -> InstanceUuid {
        self.instance_with(project, name, ncpus, Default::default())
            .await
    }

    /// Creates a stopped instance like [`TestContext::instance`], with the network interfaces
    /// `interfaces` asks for (`Default`: the default interface; `None`: none).
    pub async fn instance_with(
        &self,
        project: &NameOrId,
        name: &str,
        ncpus: u16,
        interfaces: halyard_nexus_external_api::params::InstanceNetworkInterfaceAttachment,
    ) -> InstanceUuid {
        let created = self
            .nexus()
            .instance_create(
                project,
                InstanceCreate {
                    start: false,
                    network_interfaces: interfaces,
                    ..InstanceCreate::new(
                        name.parse().unwrap(),
                        "",
                        name,
                        ncpus,
                        ByteCount::from_gibibytes_u32(1),
                    )
                },
            )
            .await
            .unwrap();
        created.instance.id()
    }

    /// Creates an instance described as "the `name` instance" (through the instance-create
    /// saga, and instance-start if `start`) and waits until it is stopped or running.
    pub async fn instance_ready(
        &self,
        project: &NameOrId,
        name: &str,
        ncpus: u16,
        start: bool,
    ) -> InstanceUuid {
        let created = self
            .nexus()
            .instance_create(
                project,
                InstanceCreate {
                    start,
                    ..InstanceCreate::new(
                        name.parse().unwrap(),
                        format!("the {name} instance"),
                        name,
                        ncpus,
                        ByteCount::from_gibibytes_u32(1),
                    )
                },
            )
            .await
            .unwrap();
        let id = created.instance.id();
        let want = if start {
            InstanceState::Running
        } else {
            InstanceState::Stopped
        };
        self.wait_for(id, want).await;
        id
    }

    /// A client for the sled agent that runs (or ran) this VMM.
    pub async fn sled_client_for(&self, vmm: VmmUuid) -> halyard_sled_agent_client::Client {
        let sled = self.sled_id_of(vmm).await;
        self.nexus().sled_client(sled).await.unwrap()
    }

    pub async fn view(&self, id: InstanceUuid) -> InstanceAndVmm {
        self.nexus().instance_view(id).await.unwrap()
    }

    pub async fn wait_for(&self, id: InstanceUuid, state: InstanceState) {
        self.eventually(
            &format!("instance {id} {state}"),
            async |ctx: &TestContext| ctx.view(id).await.run_state() == state,
        )
        .await;
    }

    pub async fn start(&self, id: InstanceUuid) {
        self.nexus().instance_start(id).await.unwrap();
        self.wait_for(id, InstanceState::Running).await;
    }

    pub async fn stop(&self, id: InstanceUuid) {
        self.nexus().instance_stop(id).await.unwrap();
        self.wait_for(id, InstanceState::Stopped).await;
    }

    /// The instance's active VMM.
    pub async fn active_vmm(&self, id: InstanceUuid) -> VmmUuid {
        self.view(id)
            .await
            .instance
            .runtime
            .active_vmm()
            .expect("the instance has an active VMM")
    }

    /// Waits until nothing is in flight: no unfinished saga, no VMM mid-transition, no ended
    /// VMM waiting to be retired.
    pub async fn quiesce(&self) {
        self.eventually("the system to quiesce", async |ctx: &TestContext| {
            ctx.sql("SELECT count(*) FROM saga WHERE saga_state != 'done'")
                .trim()
                == "0"
                && ctx
                    .sql(
                        "SELECT count(*) FROM vmm WHERE time_deleted IS NULL \
                         AND state NOT IN ('running')",
                    )
                    .trim()
                    == "0"
        })
        .await;
    }

    /// Waits until nothing is in flight (no unfinished saga, no VMM mid-transition), then
    /// checks every invariant once: a violation seen at a quiet point is a violation, never
    /// retried away.
    pub async fn assert_quiet_and_consistent(&self) {
        let mut quiet = false;
        for _ in 0..1000 {
            // Every change of where an interface lives has told the sleds.
            quiet = self.nexus().mapping_pushes_pending() == 0
                && self.sql("SELECT count(*) FROM saga WHERE saga_state != 'done'").trim() == "0"
                && self
                    .sql("SELECT count(*) FROM vmm WHERE time_deleted IS NULL AND state IN ('creating','starting','stopping','stopped','rebooting','migrating','destroyed','failed','saga_unwound')")
                    .trim()
                    == "0";
            if quiet {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            quiet,
            "the system never quiesced:\nunfinished sagas:\n{}\nunsettled VMMs:\n{}\ninstances:\n{}\nmigrations:\n{}\nsagas naming them:\n{}",
            self.sql("SELECT id, name, saga_state FROM saga WHERE saga_state != 'done'"),
            self.sql("SELECT id, instance_id, sled_id, state, generation FROM vmm WHERE time_deleted IS NULL AND state != 'running'"),
            self.sql("SELECT name, nexus_state, active_propolis_id, target_propolis_id, migration_id FROM instance WHERE time_deleted IS NULL"),
            self.sql("SELECT id, source_propolis_id, target_propolis_id, source_state, target_state, time_deleted FROM migration"),
            self.sql("SELECT s.name, s.id, (SELECT string_agg(e.node_id || ':' || e.event_type, ' ' ORDER BY e.event_time) FROM saga_node_event e WHERE e.saga_id = s.id) FROM saga s WHERE s.dag::text LIKE ANY (SELECT '%' || id::text || '%' FROM vmm WHERE time_deleted IS NULL AND state = 'creating') OR EXISTS (SELECT 1 FROM saga_node_event e, vmm v WHERE e.saga_id = s.id AND v.time_deleted IS NULL AND v.state = 'creating' AND e.data::text LIKE '%' || v.id::text || '%')"),
        );
        let violations = self.invariant_violations().await;
        assert!(
            violations.is_empty(),
            "invariants violated:\n{}",
            violations.join("\n")
        );
    }

    /// Every invariant violation found, not just the first.
    pub async fn invariant_violations(&self) -> Vec<String> {
        crate::invariant_violations(&self.db, &self.sleds)
    }
}
