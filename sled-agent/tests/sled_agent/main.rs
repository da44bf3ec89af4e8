//! The real sled agent, over HTTP with the generated client, against a recording stand-in for
//! Nexus built from the same `NexusInternalApi` trait.

mod bad_input;
mod console;
mod disks;
mod lifecycle;
mod migration;
mod mtls;
mod network;
mod nexus_outage;
mod qemu;
mod recording_nexus;
mod storage;

use halyard_common::ByteCount;
use halyard_common::ids::{InstanceUuid, SledUuid, VmmUuid};
use halyard_common::internal_api::SledVmmState;
use halyard_common::{SledBackend, VmmState};
use halyard_sled_agent::{Config, Server, SimConfig};
use halyard_sled_agent_api::VmmRegisterBody;
use halyard_sled_agent_client::Client;
use recording_nexus::RecordingNexus;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use halyard_tls::Role;

/// The files of `role`'s certificate from this test process's CA (`halyard_tls::pki`).
pub fn tls_files(role: Role) -> halyard_tls::TlsFiles {
    halyard_tls::pki::test_pki().files(role).unwrap()
}

/// An HTTP client with `role`'s certificate for a server with `server_name`'s.
pub fn http_as(role: Role, server_name: &str) -> reqwest::Client {
    halyard_tls::pki::test_pki()
        .http_client(role, server_name)
        .unwrap()
}

/// A client for the sled agent at `address` with `role`'s certificate (tests play Nexus).
pub fn sled_client(address: SocketAddr, role: Role) -> Client {
    Client::new_with_client(
        &format!("https://{address}"),
        http_as(role, halyard_tls::SLED_AGENT_NAME),
    )
}

pub fn log() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// A recording Nexus and one sled agent pointed at it.
pub struct TestEnv {
    pub nexus: Arc<RecordingNexus>,
    pub sled: Server,
    pub client: Client,
}

pub fn sled_config(nexus: SocketAddr, sim: SimConfig) -> Config {
    let sled_id = SledUuid::new_v4();
    Config {
        sled_id,
        listen_address: "127.0.0.1:0".parse().unwrap(),
        nexus_address: nexus,
        backend: SledBackend::Sim,
        hardware_threads: 64,
        physical_ram: ByteCount::from_gibibytes_u32(256),
        registration_interval_ms: 100,
        sim,
        qemu: Default::default(),
        storage: Default::default(),
        tls: tls_files(Role::Sled(sled_id)),
    }
}

impl TestEnv {
    pub async fn new(sim: SimConfig) -> TestEnv {
        TestEnv::with_nexus_at("127.0.0.1:0".parse().unwrap(), sim).await
    }

    /// With the recording Nexus listening on `nexus_address`.
    pub async fn with_nexus_at(nexus_address: SocketAddr, sim: SimConfig) -> TestEnv {
        let nexus = RecordingNexus::start(nexus_address);
        let sled = Server::start(&sled_config(nexus.address(), sim), &log())
            .await
            .unwrap();
        nexus.watch_sled(sled.local_addr());
        let client = sled_client(sled.local_addr(), Role::Nexus);
        TestEnv {
            nexus,
            sled,
            client,
        }
    }
}

/// Delays small enough for fast tests, large enough to observe each state.
pub fn visible_delays() -> SimConfig {
    SimConfig {
        start_delay_ms: 100,
        stop_delay_ms: 100,
        reboot_delay_ms: 100,
        migration_phase_delay_ms: 50,
    }
}

pub fn register_body() -> VmmRegisterBody {
    VmmRegisterBody {
        instance_id: InstanceUuid::new_v4(),
        ncpus: 2,
        memory: ByteCount::from_gibibytes_u32(1),
        hostname: "guest".into(),
        migration_target: None,
        disks: Vec::new(),
        nics: Vec::new(),
    }
}

/// Polls the sled agent until the VMM reaches `state` (or fails the test after 10 s).
pub async fn wait_for_state(client: &Client, id: VmmUuid, state: VmmState) -> SledVmmState {
    wait_for_state_within(client, id, state, Duration::from_secs(10)).await
}

/// Polls the sled agent until the VMM reaches `state` (or fails the test after `timeout`).
pub async fn wait_for_state_within(
    client: &Client,
    id: VmmUuid,
    state: VmmState,
    timeout: Duration,
) -> SledVmmState {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let current = client.vmm_get_state(&id).await.unwrap().into_inner();
        if current.vmm_state.state == state {
            return current;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("VMM {id} never reached {state}; it is {current:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `check` holds (or fails the test after 10 s with `what`).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}
