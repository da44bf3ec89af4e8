//! The system under test, in this process: a fresh database, Nexus, and simulated sled agents
//! over real HTTP (the parts of `nexus/tests/nexus/context.rs` omdb's tests need); and the
//! real `omdb` binary, run against them.

use halyard_common::ids::{InstanceUuid, NexusUuid, SledUuid, VmmUuid};
use halyard_common::{ByteCount, InstanceState, Name, NameOrId, SledBackend};
use halyard_nexus::app::instance::{InstanceAndVmm, InstanceCreate};
use halyard_nexus::{Config, Nexus, Server};
use halyard_sled_agent::SimConfig;
use halyard_test_db::{TestDatabase, shared_cluster};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub fn log() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// Each sled offers this many hardware threads and GiB of memory.
pub const SLED_THREADS: u32 = 8;
pub const SLED_RAM_GIB: u32 = 16;

pub struct TestContext {
    pub db: TestDatabase,
    pub nexus: Arc<Nexus>,
    /// `None` once stopped with [`TestContext::stop_nexus`].
    server: Option<Server>,
    nexus_url: String,
    pub sleds: Vec<halyard_sled_agent::Server>,
    /// Nexus's internal API port, reserved as long as the test runs: once Nexus is stopped,
    /// no other test's server may take it and receive this test's sled agents' calls.
    _nexus_internal_port: halyard_test_db::ReservedPort,
}

/// What one run of omdb did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts that omdb succeeded, and returns what it printed.
    pub fn ok(self) -> String {
        assert_eq!(
            self.code, 0,
            "omdb failed:\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        );
        self.stdout
    }
}

impl TestContext {
    pub async fn new(sleds: usize) -> TestContext {
        let db = TestDatabase::new();
        let nexus_internal_port = halyard_test_db::reserve_port().unwrap();
        let config = Config {
            id: NexusUuid::new_v4(),
            database_url: db.url().to_string(),
            external_address: "127.0.0.1:0".parse().unwrap(),
            internal_address: nexus_internal_port.address(),
            retirement_interval_ms: 200,
            tls: tls_files(halyard_tls::Role::Nexus),
        };
        let server = Server::start(&config, &log()).await.unwrap();
        let sim = SimConfig {
            start_delay_ms: 20,
            stop_delay_ms: 20,
            reboot_delay_ms: 20,
            migration_phase_delay_ms: 10,
        };
        let mut sled_servers = Vec::new();
        for _ in 0..sleds {
            let sled_id = SledUuid::new_v4();
            let sled_config = halyard_sled_agent::Config {
                sled_id,
                listen_address: "127.0.0.1:0".parse().unwrap(),
                nexus_address: server.internal_address(),
                backend: SledBackend::Sim,
                hardware_threads: SLED_THREADS,
                physical_ram: ByteCount::from_gibibytes_u32(SLED_RAM_GIB),
                registration_interval_ms: 1000,
                sim,
                qemu: Default::default(),
                tls: tls_files(halyard_tls::Role::Sled(sled_id)),
            };
            sled_servers.push(
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
            sleds: sled_servers,
            _nexus_internal_port: nexus_internal_port,
        };
        ctx.eventually("every sled registered", async |ctx: &TestContext| {
            ctx.sql("SELECT count(*) FROM sled").trim() == sleds.to_string()
        })
        .await;
        ctx
    }

    pub fn nexus_url(&self) -> &str {
        &self.nexus_url
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

    pub fn sled_client(&self, i: usize) -> halyard_sled_agent_client::Client {
        halyard_sled_agent_client::Client::new_with_client(
            &format!("https://{}", self.sled_address(i)),
            halyard_tls::pki::test_pki()
                // Tests change VMMs behind Nexus's back, as Nexus would.
                .http_client(halyard_tls::Role::Nexus, halyard_tls::SLED_AGENT_NAME)
                .unwrap(),
        )
    }

    /// The index of the sled a VMM runs on.
    pub async fn sled_of(&self, vmm: VmmUuid) -> usize {
        let sled = self
            .nexus
            .datastore()
            .vmm_fetch(vmm)
            .await
            .unwrap()
            .sled_id();
        self.sleds
            .iter()
            .position(|s| s.agent().id() == sled)
            .expect("the VMM's sled is one of ours")
    }

    pub fn sql(&self, sql: &str) -> String {
        shared_cluster().psql(self.db.name(), sql).expect("psql")
    }

    pub async fn eventually(&self, what: &str, check: impl AsyncFn(&TestContext) -> bool) {
        for _ in 0..1000 {
            if check(self).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    pub async fn project(&self, name: &str) -> NameOrId {
        let name: Name = name.parse().unwrap();
        self.nexus
            .project_create(name.clone(), String::new())
            .await
            .unwrap();
        NameOrId::Name(name)
    }

    /// Creates an instance (through the instance-create saga, and instance-start if `start`)
    /// and waits until it is stopped or running.
    pub async fn instance(
        &self,
        project: &NameOrId,
        name: &str,
        ncpus: u16,
        start: bool,
    ) -> InstanceUuid {
        let created = self
            .nexus
            .instance_create(
                project,
                InstanceCreate {
                    name: name.parse().unwrap(),
                    description: format!("the {name} instance"),
                    hostname: name.to_string(),
                    ncpus,
                    memory: ByteCount::from_gibibytes_u32(1),
                    start,
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

    pub async fn view(&self, id: InstanceUuid) -> InstanceAndVmm {
        self.nexus.instance_view(id).await.unwrap()
    }

    pub async fn wait_for(&self, id: InstanceUuid, state: InstanceState) {
        self.eventually(
            &format!("instance {id} {state}"),
            async |ctx: &TestContext| ctx.view(id).await.run_state() == state,
        )
        .await;
    }

    pub async fn start(&self, id: InstanceUuid) {
        self.nexus.instance_start(id).await.unwrap();
        self.wait_for(id, InstanceState::Running).await;
    }

    pub async fn stop(&self, id: InstanceUuid) {
        self.nexus.instance_stop(id).await.unwrap();
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

    /// Runs omdb against this system's database, with `args` after `--db-url`.
    pub async fn omdb(&self, args: &[&str]) -> Run {
        let mut all = vec!["--db-url", self.db.url()];
        all.extend_from_slice(args);
        omdb(&all, &[]).await
    }
}

/// The files of `role`'s certificate from this test process's CA.
pub fn tls_files(role: halyard_tls::Role) -> halyard_tls::TlsFiles {
    halyard_tls::pki::test_pki().files(role).unwrap()
}

/// Runs the real omdb binary with `args` and environment `env` (and no `HALYARD_DB_URL` from
/// the caller's environment unless `env` sets it).
pub async fn omdb(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_omdb"));
    // The operator's certificate from this test process's CA (`env` may name another).
    tls_files(halyard_tls::Role::Operator);
    command
        .args(args)
        .env_remove("HALYARD_DB_URL")
        .env("HALYARD_TLS_DIR", halyard_tls::pki::test_pki().dir());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("omdb {args:?} did not finish within 60 s"))
        .expect("running omdb");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).expect("omdb prints UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("omdb prints UTF-8"),
    }
}
