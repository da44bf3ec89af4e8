//! The test context: a fresh database, Nexus in-process, and simulated sled agents over real
//! HTTP, plus an invariant checker that reports every violation it finds.

use halyard_common::ids::{InstanceUuid, NexusUuid};
use halyard_common::{ByteCount, InstanceState, Name, NameOrId, SledBackend};
use halyard_nexus::app::instance::{InstanceAndVmm, InstanceCreate};
use halyard_nexus::{Config, Nexus, Server};
use halyard_sled_agent::{QemuConfig, SimConfig};
use halyard_test_db::{TestDatabase, shared_cluster};
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

/// A client for the sled agent at `address`, with `role`'s certificate (an operator reads and
/// injects faults; only Nexus changes VMMs).
pub fn sled_client(address: std::net::SocketAddr, role: Role) -> halyard_sled_agent_client::Client {
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

pub struct TestContext {
    pub db: TestDatabase,
    pub server: Server,
    pub sleds: Vec<halyard_sled_agent::Server>,
}

/// Each sled offers this many hardware threads and GiB of memory.
pub const SLED_THREADS: u32 = 8;
pub const SLED_RAM_GIB: u32 = 16;

impl TestContext {
    pub async fn new() -> TestContext {
        TestContext::with_sleds(2).await
    }

    pub async fn with_sleds(count: usize) -> TestContext {
        TestContext::with_sim(
            count,
            SimConfig {
                start_delay_ms: 20,
                stop_delay_ms: 20,
                reboot_delay_ms: 20,
                migration_phase_delay_ms: 10,
            },
        )
        .await
    }

    pub async fn with_sim(count: usize, sim: SimConfig) -> TestContext {
        TestContext::start(count, SledKind::Sim(sim)).await
    }

    /// Sleds that run real QEMU VMMs (TCG here), booting the guest image (built first if
    /// this machine has none yet).
    pub async fn with_qemu(count: usize) -> TestContext {
        let guest_dir = halyard_sled_agent::build_guest_image().await.unwrap();
        // Short: unix socket paths live below it.
        let state_dir = std::env::temp_dir().join(format!(
            "hq-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        TestContext::start(
            count,
            SledKind::Qemu(QemuConfig {
                guest_dir,
                state_dir,
                stop_timeout_ms: 10_000,
                ..Default::default()
            }),
        )
        .await
    }

    async fn start(count: usize, kind: SledKind) -> TestContext {
        let db = TestDatabase::new();
        let config = Config {
            id: NexusUuid::new_v4(),
            database_url: db.url().to_string(),
            external_address: "127.0.0.1:0".parse().unwrap(),
            internal_address: "127.0.0.1:0".parse().unwrap(),
            retirement_interval_ms: 200,
            tls: tls_files(Role::Nexus),
        };
        let server = Server::start(&config, &log()).await.unwrap();
        let mut sleds = Vec::new();
        for _ in 0..count {
            let sled_id = halyard_common::ids::SledUuid::new_v4();
            let sled_config = halyard_sled_agent::Config {
                sled_id,
                listen_address: "127.0.0.1:0".parse().unwrap(),
                nexus_address: server.internal_address(),
                backend: kind.backend(),
                hardware_threads: SLED_THREADS,
                physical_ram: ByteCount::from_gibibytes_u32(SLED_RAM_GIB),
                registration_interval_ms: 1000,
                sim: kind.sim(),
                qemu: kind.qemu(),
                tls: tls_files(Role::Sled(sled_id)),
            };
            sleds.push(
                halyard_sled_agent::Server::start(&sled_config, &log())
                    .await
                    .unwrap(),
            );
        }
        let ctx = TestContext { db, server, sleds };
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
            nexus_address: self.server.internal_address(),
            backend: SledBackend::Sim,
            hardware_threads: SLED_THREADS,
            physical_ram: ByteCount::from_gibibytes_u32(SLED_RAM_GIB),
            registration_interval_ms: 1000,
            sim,
            qemu: Default::default(),
            tls: tls_files(Role::Sled(id)),
        };
        let new = halyard_sled_agent::Server::start(&config, &log())
            .await
            .unwrap();
        self.sleds.insert(index, new);
    }

    pub fn nexus(&self) -> &Arc<Nexus> {
        self.server.nexus()
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
        let created = self
            .nexus()
            .instance_create(
                project,
                InstanceCreate {
                    name: name.parse().unwrap(),
                    description: String::new(),
                    hostname: name.to_string(),
                    ncpus,
                    memory: ByteCount::from_gibibytes_u32(1),
                    start: false,
                },
            )
            .await
            .unwrap();
        created.instance.id()
    }

    /// A client for the sled agent that runs (or ran) this VMM.
    pub async fn sled_client_for(
        &self,
        vmm: halyard_common::ids::VmmUuid,
    ) -> halyard_sled_agent_client::Client {
        let sled = self
            .nexus()
            .datastore()
            .vmm_fetch(vmm)
            .await
            .unwrap()
            .sled_id();
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

    /// Waits until nothing is in flight (no unfinished saga, no VMM mid-transition), then
    /// checks every invariant once: a violation seen at a quiet point is a violation, never
    /// retried away.
    pub async fn assert_quiet_and_consistent(&self) {
        let mut quiet = false;
        for _ in 0..1000 {
            quiet = self.sql("SELECT count(*) FROM saga WHERE saga_state != 'done'").trim() == "0"
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
        invariant_violations(&self.db, &self.sleds)
    }
}

pub use halyard_nexus_test_utils::invariant_violations;
