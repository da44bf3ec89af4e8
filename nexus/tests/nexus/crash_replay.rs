//! Crash replay at every saga node: Nexus runs as a real child process with a crash point
//! (`HALYARD_CRASH_AT`, see `app::crash_point`) that SIGKILLs it right before or right after a
//! node's event is recorded. For every node of every saga, in both places, the test crashes
//! it there, starts a fresh Nexus on the same database, waits until the system is quiet, and
//! runs the invariant checker: every saga must have finished or fully unwound.

use crate::context::{SLED_RAM_GIB, SLED_THREADS, invariant_violations, log};
use halyard_common::ids::{NexusUuid, SledUuid};
use halyard_common::{ByteCount, SledBackend};
use halyard_nexus::app::sagas::{
    NexusSaga, create_saga_dag, instance_create, instance_delete, instance_migrate, instance_start,
};
use halyard_test_db::{TestDatabase, shared_cluster};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A Nexus child process and how to reach it.
struct Cluster {
    db: TestDatabase,
    config_path: std::path::PathBuf,
    external: SocketAddr,
    sleds: Vec<halyard_sled_agent::Server>,
    http: reqwest::Client,
}

impl Cluster {
    async fn new() -> Cluster {
        let db = TestDatabase::new();
        let external = free_address();
        let internal = free_address();
        let config_path =
            std::env::temp_dir().join(format!("halyard-crash-{}.toml", std::process::id()));
        std::fs::write(
            &config_path,
            format!(
                "id = \"{}\"\ndatabase_url = \"{}\"\nexternal_address = \"{external}\"\n\
                 internal_address = \"{internal}\"\nretirement_interval_ms = 200\n",
                NexusUuid::new_v4(),
                db.url()
            ),
        )
        .unwrap();
        let mut sleds = Vec::new();
        for _ in 0..2 {
            let config = halyard_sled_agent::Config {
                sled_id: SledUuid::new_v4(),
                listen_address: "127.0.0.1:0".parse().unwrap(),
                nexus_address: internal,
                backend: SledBackend::Sim,
                hardware_threads: SLED_THREADS,
                physical_ram: ByteCount::from_gibibytes_u32(SLED_RAM_GIB),
                registration_interval_ms: 200,
                sim: halyard_sled_agent::SimConfig {
                    start_delay_ms: 10,
                    stop_delay_ms: 10,
                    reboot_delay_ms: 10,
                    migration_phase_delay_ms: 10,
                },
                qemu: Default::default(),
            };
            sleds.push(
                halyard_sled_agent::Server::start(&config, &log())
                    .await
                    .unwrap(),
            );
        }
        Cluster {
            db,
            config_path,
            external,
            sleds,
            http: reqwest::Client::new(),
        }
    }

    fn sql(&self, query: &str) -> String {
        shared_cluster().psql(self.db.name(), query).unwrap()
    }

    /// Starts Nexus, with a crash point if given, and waits until it answers.
    async fn nexus(&self, crash_at: Option<&str>) -> Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_halyard-nexus"));
        command
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command.stderr(if std::env::var_os("HALYARD_CRASH_LOGS").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
        match crash_at {
            Some(point) => command.env(halyard_nexus::app::crash_point::CRASH_AT_ENV, point),
            None => command.env_remove(halyard_nexus::app::crash_point::CRASH_AT_ENV),
        };
        let mut child = command.spawn().unwrap();
        for _ in 0..500 {
            let url = format!("http://{}/v1/projects", self.external);
            if let Ok(response) = self.http.get(url).send().await
                && response.status().is_success()
            {
                return child;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("Nexus exited at start: {status}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("Nexus did not come up");
    }

    async fn request(&self, method: &str, path: &str, body: Option<Value>) -> Option<(u16, Value)> {
        let mut request = self.http.request(
            method.parse().unwrap(),
            format!("http://{}{path}", self.external),
        );
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.unwrap_or(Value::Null)))
    }

    async fn run_state(&self, name: &str) -> Option<String> {
        let (status, body) = self
            .request("GET", &format!("/v1/instances/{name}?project=p"), None)
            .await?;
        (status == 200).then(|| body["run_state"].as_str().unwrap().to_string())
    }

    async fn wait_for_state(&self, name: &str, states: &[&str]) {
        for _ in 0..1000 {
            if let Some(state) = self.run_state(name).await
                && states.contains(&state.as_str())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{name} never reached {states:?}");
    }

    /// Waits until no saga is unfinished and no VMM is mid-transition, then checks every
    /// invariant.
    async fn assert_quiet_and_consistent(&self, case: &str) {
        for _ in 0..1500 {
            let unfinished = self.sql("SELECT count(*) FROM saga WHERE saga_state != 'done'");
            let unsettled = self
                .sql("SELECT count(*) FROM vmm WHERE time_deleted IS NULL AND state != 'running'");
            if unfinished.trim() == "0" && unsettled.trim() == "0" {
                let violations = invariant_violations(&self.db, &self.sleds);
                if violations.is_empty() {
                    return;
                }
                // Reports may still be in flight right after the saga ends; look again.
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let violations = invariant_violations(&self.db, &self.sleds);
        panic!(
            "{case}: never quiet and consistent:\n{}",
            violations.join("\n")
        );
    }
}

fn node_names<S: NexusSaga>(params: S::Params) -> Vec<String> {
    create_saga_dag::<S>(params)
        .unwrap()
        .get_nodes()
        .map(|n| n.name().as_ref().to_string())
        .collect()
}

#[derive(Default)]
struct Summary {
    crashed: usize,
    finished: usize,
    unwound: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_saga_survives_a_crash_at_every_node() {
    let cluster = Cluster::new().await;
    let mut nexus = cluster.nexus(None).await;
    cluster
        .request(
            "POST",
            "/v1/projects",
            Some(json!({"name": "p", "description": ""})),
        )
        .await
        .unwrap();
    nexus.kill().unwrap();
    nexus.wait().unwrap();

    let any_instance = halyard_common::ids::InstanceUuid::new_v4();
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            instance_create::SagaInstanceCreate::NAME,
            node_names::<instance_create::SagaInstanceCreate>(instance_create::Params {
                instance_id: any_instance,
                project_id: halyard_common::ids::ProjectUuid::new_v4(),
                name: "x".parse().unwrap(),
                description: String::new(),
                ncpus: 1,
                memory: ByteCount::from_gibibytes_u32(1),
                hostname: "x".into(),
            }),
        ),
        (
            instance_start::SagaInstanceStart::NAME,
            node_names::<instance_start::SagaInstanceStart>(instance_start::Params {
                instance_id: any_instance,
            }),
        ),
        (
            instance_migrate::SagaInstanceMigrate::NAME,
            node_names::<instance_migrate::SagaInstanceMigrate>(instance_migrate::Params {
                instance_id: any_instance,
                destination: None,
            }),
        ),
        (
            instance_delete::SagaInstanceDelete::NAME,
            node_names::<instance_delete::SagaInstanceDelete>(instance_delete::Params {
                instance_id: any_instance,
            }),
        ),
    ];
    let mut summary = std::collections::BTreeMap::<String, Summary>::new();
    let mut counter = 0;
    for (saga, nodes) in &cases {
        for node in nodes {
            for when in ["before", "after"] {
                counter += 1;
                let name = format!("vm-{counter}");
                let case = format!("{saga}:{node}:{when}");

                // Set the stage with a healthy Nexus: what the saga needs to start from.
                let mut healthy = cluster.nexus(None).await;
                let create = json!({"name": name, "description": "", "hostname": "h", "ncpus": 1, "memory": 1u64 << 30, "start": false});
                if *saga != instance_create::SagaInstanceCreate::NAME {
                    let (status, body) = cluster
                        .request("POST", "/v1/instances?project=p", Some(create.clone()))
                        .await
                        .unwrap();
                    assert_eq!(status, 201, "{case}: {body}");
                }
                if *saga == instance_migrate::SagaInstanceMigrate::NAME {
                    cluster
                        .request(
                            "POST",
                            &format!("/v1/instances/{name}/start?project=p"),
                            None,
                        )
                        .await
                        .unwrap();
                    cluster.wait_for_state(&name, &["running"]).await;
                }
                healthy.kill().unwrap();
                healthy.wait().unwrap();

                // The crash.
                let mut crashing = cluster.nexus(Some(&case)).await;
                let (method, path, body) = match *saga {
                    "instance-create" => {
                        ("POST", "/v1/instances?project=p".to_string(), Some(create))
                    }
                    "instance-start" => (
                        "POST",
                        format!("/v1/instances/{name}/start?project=p"),
                        None,
                    ),
                    "instance-migrate" => (
                        "POST",
                        format!("/v1/instances/{name}/migrate?project=p"),
                        Some(json!({})),
                    ),
                    _ => ("DELETE", format!("/v1/instances/{name}?project=p"), None),
                };
                let answer = cluster.request(method, &path, body).await;
                let mut died = false;
                for _ in 0..500 {
                    if crashing.try_wait().unwrap().is_some() {
                        died = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                if !died {
                    crashing.kill().unwrap();
                    crashing.wait().unwrap();
                    panic!(
                        "{case}: the crash point was never reached (the request answered {answer:?})"
                    );
                }

                // Recovery: a fresh Nexus resumes the saga from the log.
                let mut recovered = cluster.nexus(None).await;
                cluster.assert_quiet_and_consistent(&case).await;
                let saga_id = cluster.sql(&format!(
                    "SELECT id FROM saga WHERE name = '{saga}' ORDER BY time_created DESC LIMIT 1"
                ));
                let unwound = cluster.sql(&format!(
                    "SELECT count(*) FROM saga_node_event WHERE saga_id = '{}' AND event_type IN ('failed', 'undo_finished')",
                    saga_id.trim()
                ));
                let stuck = cluster.sql(&format!(
                    "SELECT count(*) FROM saga_node_event WHERE saga_id = '{}' AND event_type = 'undo_failed'",
                    saga_id.trim()
                ));
                assert_eq!(stuck.trim(), "0", "{case}: the saga got stuck");
                let entry = summary.entry(saga.to_string()).or_default();
                entry.crashed += 1;
                if unwound.trim() == "0" {
                    entry.finished += 1;
                } else {
                    entry.unwound += 1;
                }

                // Leave nothing running for the next case.
                if let Some(state) = cluster.run_state(&name).await
                    && state != "stopped"
                {
                    cluster
                        .request(
                            "POST",
                            &format!("/v1/instances/{name}/stop?project=p"),
                            None,
                        )
                        .await
                        .unwrap();
                    cluster.wait_for_state(&name, &["stopped", "failed"]).await;
                }
                cluster.assert_quiet_and_consistent(&case).await;
                recovered.kill().unwrap();
                recovered.wait().unwrap();
            }
        }
    }

    println!(
        "crash replay summary (saga: nodes x {{before, after}} crashed / finished / unwound):"
    );
    let mut total = 0;
    for (saga, s) in &summary {
        println!(
            "  {saga:18} crashed {:3}  finished {:3}  unwound {:3}",
            s.crashed, s.finished, s.unwound
        );
        total += s.crashed;
    }
    let nodes: usize = cases.iter().map(|(_, n)| n.len()).sum();
    println!("  {total} crashes covering {nodes} of {nodes} saga nodes, before and after each");
    assert_eq!(total, nodes * 2);
    let _ = std::fs::remove_file(&cluster.config_path);
}
