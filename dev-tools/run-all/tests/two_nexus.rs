//! Two Nexus behind HAProxy, as `run-all --nexus-count 2` runs them: one stops, and the
//! external API (HTTP through HAProxy) and the internal API (TLS passed through HAProxy, for
//! sled agents) keep answering from the other.

use halyard_common::ids::{NexusUuid, SledUuid};
use halyard_common::{ByteCount, SledBackend};
use halyard_db_queries::{DataPageParams, DataStore, PaginationOrder, PoolConfig};
use halyard_test_db::{Frontend, Haproxy, HealthCheck, ProxyMode, TestDatabase, reserve_port};
use halyard_tls::Role;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// `GET <path>` with the token, over HTTP/1.0; the status code.
fn get(address: SocketAddr, path: &str, token: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {response:?}")))
}

async fn sled_count(datastore: &DataStore) -> usize {
    let page = DataPageParams {
        marker: None,
        direction: PaginationOrder::Ascending,
        limit: std::num::NonZeroU32::new(1000).unwrap(),
    };
    datastore.sled_list(&page).await.unwrap().len()
}

async fn wait_for_sleds(datastore: &DataStore, count: usize) -> Duration {
    let start = Instant::now();
    while sled_count(datastore).await < count {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{count} sleds did not register"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

fn sled_config(nexus_address: SocketAddr) -> halyard_sled_agent::Config {
    let sled_id = SledUuid::new_v4();
    halyard_sled_agent::Config {
        sled_id,
        listen_address: "127.0.0.1:0".parse().unwrap(),
        nexus_address,
        backend: SledBackend::Sim,
        hardware_threads: 8,
        physical_ram: ByteCount::from_gibibytes_u32(16),
        registration_interval_ms: 1_000,
        sim: Default::default(),
        qemu: Default::default(),
        storage: Default::default(),
        tls: halyard_tls::pki::test_pki()
            .files(Role::Sled(sled_id))
            .unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_nexus_answers_when_one_stops() {
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let db = TestDatabase::new();
    let mut nexuses = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..2 {
        let (external, internal) = (reserve_port().unwrap(), reserve_port().unwrap());
        let config = halyard_nexus::Config {
            ..halyard_nexus::Config::new(
                NexusUuid::new_v4(),
                db.url().to_string(),
                external.address(),
                internal.address(),
                halyard_tls::pki::test_pki().files(Role::Nexus).unwrap(),
            )
        };
        ports.push((external, internal));
        nexuses.push(halyard_nexus::Server::start(&config, &log).await.unwrap());
    }
    let (external, internal) = (reserve_port().unwrap(), reserve_port().unwrap());
    let frontends = [
        Frontend {
            name: "nexus-external".into(),
            listen: external.address(),
            mode: ProxyMode::Http,
            check: HealthCheck::Tcp,
            backends: nexuses.iter().map(|n| n.external_address()).collect(),
        },
        Frontend {
            name: "nexus-internal".into(),
            listen: internal.address(),
            mode: ProxyMode::Tcp,
            check: HealthCheck::Tcp,
            backends: nexuses.iter().map(|n| n.internal_address()).collect(),
        },
    ];
    let dir = std::env::temp_dir().join(format!("halyard-two-nexus-{}", std::process::id()));
    let proxy = Haproxy::start(&dir, &frontends).unwrap_or_else(|e| panic!("{e}"));
    let (_, token) = nexuses[0]
        .nexus()
        .default_silo_user_token(&"dev".parse().unwrap())
        .await
        .unwrap();
    let token = token.expose().to_string();
    let datastore = DataStore::new(&log, db.url(), PoolConfig::default());

    // Both up: requests and a sled agent's registration go through HAProxy.
    let ask = |address: SocketAddr, token: String| async move {
        tokio::task::spawn_blocking(move || get(address, "/v1/me", &token))
            .await
            .unwrap()
    };
    for _ in 0..4 {
        assert_eq!(ask(external.address(), token.clone()).await.unwrap(), 200);
    }
    let first = halyard_sled_agent::Server::start(&sled_config(internal.address()), &log)
        .await
        .unwrap();
    wait_for_sleds(&datastore, 1).await;

    // One Nexus stops; ask at once, before any health check can have noticed.
    nexuses.pop().unwrap().close().await.unwrap();
    let stopped = Instant::now();
    let mut failures = Vec::new();
    for _ in 0..20 {
        match ask(external.address(), token.clone()).await {
            Ok(200) => {}
            other => failures.push(format!("{:?}: {other:?}", stopped.elapsed())),
        }
    }
    assert!(
        failures.is_empty(),
        "external requests failed: {failures:#?}"
    );
    // A new sled agent registers through the internal frontend (mutual TLS end to end).
    let second = halyard_sled_agent::Server::start(&sled_config(internal.address()), &log)
        .await
        .unwrap();
    let took = wait_for_sleds(&datastore, 2).await;
    println!(
        "with one Nexus stopped: 20 external requests succeeded, a new sled registered in \
         {took:.1?}; HAProxy's log:\n{}",
        std::fs::read_to_string(proxy.log_path()).unwrap_or_default()
    );
    second.close().await.unwrap();
    first.close().await.unwrap();
    for nexus in nexuses {
        nexus.close().await.unwrap();
    }
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
    drop(ports);
}
