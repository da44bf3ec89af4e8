//! Outages: a sled agent that restarts (and so has lost its VMMs), and the database going away
//! and coming back.

use crate::context::{TestContext, log};
use halyard_common::ids::NexusUuid;
use halyard_common::{InstanceState, SledBackend};
use halyard_sled_agent::SimConfig;
use halyard_test_db::{ClusterOptions, PostgresCluster};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn a_restarted_sled_agent_re_registers_and_nexus_reconciles_what_it_lost() {
    let sim = SimConfig {
        start_delay_ms: 10,
        stop_delay_ms: 10,
        reboot_delay_ms: 10,
        migration_phase_delay_ms: 10,
    };
    let mut ctx = TestContext::with_sim(2, sim).await;
    let project = ctx.project("p").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = ctx.instance(&project, &format!("vm-{i}"), 2).await;
        ctx.nexus().instance_start(id).await.unwrap();
        ctx.wait_for(id, InstanceState::Running).await;
        ids.push(id);
    }
    let lost_sled = ctx.sleds[0].agent().id();
    let mut lost = Vec::new();
    for id in &ids {
        let vmm = ctx.view(*id).await.active_vmm.unwrap();
        if vmm.sled_id() == lost_sled {
            lost.push(*id);
        }
    }

    ctx.restart_sled(0, sim).await;
    // It re-registers (at its new address), Nexus finds it runs nothing, and the instances
    // that ran there fail; their reservations are released.
    for id in &lost {
        ctx.wait_for(*id, InstanceState::Failed).await;
    }
    for id in ids.iter().filter(|id| !lost.contains(id)) {
        assert_eq!(ctx.view(*id).await.run_state(), InstanceState::Running);
    }
    ctx.assert_quiet_and_consistent().await;
    let address = ctx
        .nexus()
        .datastore()
        .sled_fetch(lost_sled)
        .await
        .unwrap()
        .address();
    assert_eq!(address, ctx.sleds[0].local_addr());
    // A failed instance starts again.
    for id in &lost {
        ctx.nexus().instance_start(*id).await.unwrap();
        ctx.wait_for(*id, InstanceState::Running).await;
    }
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn nexus_answers_503_while_the_database_is_down_and_recovers_after() {
    // A private cluster: this test stops it, which must not disturb the other tests.
    let dir = std::env::temp_dir().join(format!(
        "halyard-outage-{}-{}",
        std::process::id(),
        NexusUuid::new_v4()
    ));
    let options = ClusterOptions {
        fsync: false,
        ..ClusterOptions::new(&dir)
    };
    let cluster = PostgresCluster::start(options.clone()).unwrap();
    cluster.psql("postgres", "CREATE DATABASE halyard").unwrap();
    cluster
        .psql_file("halyard", &halyard_schema::dbinit_sql_path())
        .unwrap();
    let config = halyard_nexus::Config {
        id: NexusUuid::new_v4(),
        database_url: cluster.url_for("halyard"),
        external_address: "127.0.0.1:0".parse().unwrap(),
        internal_address: "127.0.0.1:0".parse().unwrap(),
        retirement_interval_ms: 200,
    };
    let server = halyard_nexus::Server::start(&config, &log()).await.unwrap();
    let sled = halyard_sled_agent::Server::start(
        &halyard_sled_agent::Config {
            sled_id: halyard_common::ids::SledUuid::new_v4(),
            listen_address: "127.0.0.1:0".parse().unwrap(),
            nexus_address: server.internal_address(),
            backend: SledBackend::Sim,
            hardware_threads: 8,
            physical_ram: halyard_common::ByteCount::from_gibibytes_u32(8),
            registration_interval_ms: 200,
            sim: SimConfig::default(),
        },
        &log(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", server.external_address());
    let http = reqwest::Client::new();
    let post = async |path: &str, body: Value| {
        let response = http
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    let (status, _) = post("/v1/projects", json!({"name": "p", "description": ""})).await;
    assert_eq!(status, 201);

    cluster.stop().unwrap();
    for (path, body) in [
        ("/v1/projects", json!({"name": "q", "description": ""})),
        (
            "/v1/instances?project=p",
            json!({"name": "vm", "description": "", "hostname": "vm", "ncpus": 1, "memory": 1u64 << 30}),
        ),
    ] {
        let (status, body) = post(path, body).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(body["error_code"], "ServiceNotAvailable", "{body}");
    }

    // The database comes back on the same port: Nexus serves again, sagas run.
    let restarted = PostgresCluster::start(ClusterOptions {
        port: Some(cluster.port()),
        ..options
    })
    .unwrap();
    let mut status = 0;
    for _ in 0..200 {
        status = post("/v1/projects", json!({"name": "q", "description": ""}))
            .await
            .0;
        if status == 201 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 201);
    let (status, body) = post("/v1/instances?project=p", json!({"name": "vm", "description": "", "hostname": "vm", "ncpus": 1, "memory": 1u64 << 30})).await;
    assert_eq!(status, 201, "{body}");
    let mut running = false;
    for _ in 0..200 {
        let view: Value = http
            .get(format!("{base}/v1/instances/vm?project=p"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if view["run_state"] == "running" {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(running);
    sled.close().await.unwrap();
    server.close().await.unwrap();
    restarted.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
