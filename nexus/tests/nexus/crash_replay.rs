//! Crash replay at every saga node: Nexus runs as a real child process with a crash point
//! (`HALYARD_CRASH_AT`, see `app::crash_point`) that SIGKILLs it right after a chosen saga log
//! event is written, or right after a node's action did its work. For every node of every
//! saga, the test crashes it at three points: right after the node's `started` event (its
//! action has not run), right after its action's effects (`after_effect`: its database writes
//! committed and its sled-agent calls answered, its `succeeded` event not written), and right
//! after its `succeeded` event; and, with a failure injected at a saga's last node
//! (`HALYARD_FAIL_AT`), right after the `undo_started` and `undo_finished` events of every
//! earlier node, while the saga unwinds.
//!
//! Each case proves where Nexus died: the child was killed by SIGKILL, its stderr names the
//! crash point, saga and node, exactly one saga is unfinished, and its log is exactly what a
//! crash at that point leaves (the node and event asked for are the last event, `started` for
//! `after_effect`; every node before it has its full history; no node after it has any), but
//! for the events the saga log holds back until the next one: the crash node's `started` (and
//! for a saga's first node, steno's start node's events) are missing at `started`, and at
//! `after_effect` unless the action ran long enough for them to be written alone. For
//! the forward points, the node's effect ([`node_effect`]: a row, a state, a VMM a sled agent
//! runs) is looked at before the restart: absent after `started`, present after
//! `after_effect` and `succeeded`; so `started` and `after_effect`, which leave the same log,
//! are proved to be different worlds. (Nodes with no external effect, which only pick ids or
//! check, are named in the summary.) Another Nexus (another id, on the same database) must
//! then adopt the saga once the dead one's heartbeat is older than the bound (generation 2,
//! checked), and drive it to the outcome that
//! point calls for (finished forward; unwound after an undo crash), leave the instance in the
//! matching state, and leave every invariant holding. Each child's stderr goes to a file that
//! a failure message prints.

use crate::context::{SLED_RAM_GIB, SLED_THREADS, invariant_violations, log};
use halyard_common::ids::{DiskUuid, InstanceUuid, NexusUuid, ProjectUuid, SledUuid};
use halyard_common::{ByteCount, SledBackend};
use halyard_nexus::app::crash_point::{
    CRASH_AT_ENV, CrashEvent, CrashPoint, FAIL_AT_ENV, STOP_AT_ENV,
};
use halyard_nexus::app::sagas::{
    NexusSaga, create_saga_dag, disk_attach, disk_create, disk_delete, disk_detach,
    instance_create, instance_delete, instance_migrate, instance_start, region_replace,
    snapshot_create, snapshot_delete,
};
use halyard_nexus_external_api::params::{DiskBackend, DiskCreate, DiskSource, InstanceCreate};
use halyard_test_db::{TestDatabase, shared_cluster};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fails the case with a message unless `$cond` holds.
macro_rules! check {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(format!($($message)+));
        }
    };
}

/// The last lines of a child's stderr file, for a failure message.
fn stderr_tail(path: &Path) -> String {
    const LINES: usize = 60;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let skipped = lines.len().saturating_sub(LINES);
            format!(
                "--- {} ({} lines{}) ---\n{}",
                path.display(),
                lines.len(),
                if skipped > 0 {
                    format!(", the last {LINES} shown")
                } else {
                    String::new()
                },
                lines[skipped..].join("\n")
            )
        }
        Err(e) => format!("--- {}: unreadable: {e} ---", path.display()),
    }
}

/// Database, sled agents and configuration shared by the Nexus children.
struct Cluster {
    db: TestDatabase,
    /// The external and internal API's ports, held for the cluster's life.
    _ports: [halyard_test_db::ReservedPort; 2],
    config_path: PathBuf,
    /// Another Nexus (another id) on the same addresses: the one that recovers after a crash,
    /// by adopting the dead one's saga once its heartbeat is older than the bound.
    adopter_config_path: PathBuf,
    /// The crashing Nexus's id and the adopter's.
    ids: [NexusUuid; 2],
    /// Where each child's stderr is kept.
    stderr_dir: PathBuf,
    external: SocketAddr,
    sleds: Vec<halyard_sled_agent::Server>,
    http: reqwest::Client,
    /// Where `request` sends: the external API at `external`, unless a test points it at
    /// another Nexus (`send_requests_to`).
    api: std::sync::Mutex<SocketAddr>,
    /// With a live peer (`Cluster::with_live_peer`): HAProxy in front of both Nexus's internal
    /// APIs, which the sled agents call, and the peer's own addresses.
    peer: Option<LivePeer>,
}

/// A second Nexus running beside the crashing ones, and what lets sled agents reach either.
struct LivePeer {
    _proxy: halyard_test_db::Haproxy,
    _ports: [halyard_test_db::ReservedPort; 3],
    external: SocketAddr,
    config_path: PathBuf,
}

impl Cluster {
    /// `sleds` sim sled agents, each offering `storage` bytes for regions.
    async fn new(sleds: usize, storage: ByteCount) -> Cluster {
        Cluster::build(sleds, storage, false).await
    }

    /// As `new`, plus room for a second Nexus (the adopter's id, addresses of its own) that
    /// runs beside the crashing ones: the sled agents call HAProxy, which forwards to whichever
    /// of the two internal APIs answers.
    async fn with_live_peer(sleds: usize, storage: ByteCount) -> Cluster {
        Cluster::build(sleds, storage, true).await
    }

    async fn build(sleds: usize, storage: ByteCount, live_peer: bool) -> Cluster {
        let db = TestDatabase::new();
        // Each Nexus child of this cluster binds these again after the one before died: ports
        // outside the kernel's ephemeral range, that no other test picks while they are held,
        // so nothing else takes them in between.
        let ports = [
            halyard_test_db::reserve_port().unwrap(),
            halyard_test_db::reserve_port().unwrap(),
        ];
        let external = ports[0].address();
        let internal = ports[1].address();
        // One directory per cluster: the tests run at once in one process, and each cluster's
        // children have their own configuration and stderr files.
        let stderr_dir = std::env::temp_dir().join(format!(
            "halyard-crash-replay-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&stderr_dir).unwrap();
        let ids = [NexusUuid::new_v4(), NexusUuid::new_v4()];
        let config_path = stderr_dir.join("nexus.toml");
        write_nexus_config(&config_path, ids[0], db.url(), external, internal);
        let adopter_config_path = stderr_dir.join("adopter.toml");
        write_nexus_config(&adopter_config_path, ids[1], db.url(), external, internal);
        let peer = live_peer.then(|| {
            let ports = [
                halyard_test_db::reserve_port().unwrap(),
                halyard_test_db::reserve_port().unwrap(),
                halyard_test_db::reserve_port().unwrap(),
            ];
            let (peer_external, peer_internal) = (ports[0].address(), ports[1].address());
            let config_path = stderr_dir.join("peer.toml");
            write_nexus_config(&config_path, ids[1], db.url(), peer_external, peer_internal);
            let frontend = halyard_test_db::Frontend {
                name: "nexus-internal".to_string(),
                listen: ports[2].address(),
                mode: halyard_test_db::ProxyMode::Tcp,
                check: halyard_test_db::HealthCheck::Tcp,
                backends: vec![internal, peer_internal],
            };
            let proxy = halyard_test_db::Haproxy::start(&stderr_dir.join("haproxy"), &[frontend])
                .unwrap_or_else(|e| panic!("{e}"));
            LivePeer {
                _proxy: proxy,
                _ports: ports,
                external: peer_external,
                config_path,
            }
        });
        let sled_nexus_address = match &peer {
            Some(peer) => peer._ports[2].address(),
            None => internal,
        };
        let sled_count = sleds;
        let mut sleds = Vec::new();
        for _ in 0..sled_count {
            let sled_id = SledUuid::new_v4();
            let config = halyard_sled_agent::Config {
                sled_id,
                listen_address: "127.0.0.1:0".parse().unwrap(),
                nexus_address: sled_nexus_address,
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
                storage: halyard_sled_agent::StorageConfig {
                    capacity: storage,
                    ..Default::default()
                },
                tls: crate::context::tls_files(crate::context::Role::Sled(sled_id)),
            };
            sleds.push(
                halyard_sled_agent::Server::start(&config, &log())
                    .await
                    .unwrap(),
            );
        }
        // The children share the database: a token made there works with each of them.
        let token = crate::authn_support::test_user_token_in(db.url()).await;
        Cluster {
            db,
            _ports: ports,
            config_path,
            adopter_config_path,
            ids,
            stderr_dir,
            external,
            sleds,
            http: crate::authn_support::http_client(&token),
            api: std::sync::Mutex::new(external),
            peer,
        }
    }

    /// Waits until every sled agent has registered (with its storage), so placement may use
    /// them all.
    async fn wait_for_sleds_registered(&self) {
        let mut registered = false;
        for _ in 0..1500 {
            registered = self.sql("SELECT count(*) FROM sled") == self.sleds.len().to_string();
            if registered {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(registered, "the sled agents never all registered");
    }

    /// Sends later requests to the external API at `address`.
    fn send_requests_to(&self, address: SocketAddr) {
        *self.api.lock().unwrap() = address;
    }

    fn sql(&self, query: &str) -> String {
        shared_cluster()
            .psql(self.db.name(), query)
            .unwrap()
            .trim()
            .to_string()
    }

    /// Starts Nexus (with a crash point and an injected failure if given; its stderr into
    /// `stderr`) and waits until it answers.
    async fn nexus(
        &self,
        stderr: &Path,
        crash_at: Option<&CrashPoint>,
        fail_at: Option<&str>,
    ) -> Result<Child, String> {
        self.nexus_with(&self.config_path, self.external, stderr, crash_at, fail_at)
            .await
    }

    /// Starts the Nexus of configuration `config` (external API on `external`), as
    /// [`Cluster::nexus`] does.
    async fn nexus_with(
        &self,
        config: &Path,
        external: SocketAddr,
        stderr: &Path,
        crash_at: Option<&CrashPoint>,
        fail_at: Option<&str>,
    ) -> Result<Child, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_halyard-nexus"));
        command
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(stderr).unwrap())
            .env_remove(CRASH_AT_ENV)
            .env_remove(STOP_AT_ENV)
            .env_remove(FAIL_AT_ENV);
        if let Some(point) = crash_at {
            let variable = if point.stop_only {
                STOP_AT_ENV
            } else {
                CRASH_AT_ENV
            };
            command.env(variable, point.to_string());
        }
        if let Some(fail_at) = fail_at {
            command.env(FAIL_AT_ENV, fail_at);
        }
        let mut child = command.spawn().unwrap();
        for _ in 0..1500 {
            let url = format!("http://{external}/v1/projects");
            if let Ok(response) = self.http.get(url).send().await
                && response.status().is_success()
            {
                return Ok(child);
            }
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!("Nexus exited at start: {status}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop(child);
        Err("Nexus did not come up".to_string())
    }

    async fn request(&self, method: &str, path: &str, body: Option<Value>) -> Option<(u16, Value)> {
        let mut request = self.http.request(
            method.parse().unwrap(),
            format!("http://{}{path}", *self.api.lock().unwrap()),
        );
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// The instance's run state, or `None` if there is no such instance (404).
    async fn run_state(&self, name: &str) -> Result<Option<String>, String> {
        let answer = self
            .request("GET", &format!("/v1/instances/{name}?project=p"), None)
            .await;
        match answer {
            Some((200, body)) => Ok(Some(body["run_state"].as_str().unwrap().to_string())),
            Some((404, _)) => Ok(None),
            other => Err(format!("viewing {name}: {other:?}")),
        }
    }

    async fn wait_for_state(&self, name: &str, states: &[&str]) -> Result<(), String> {
        let mut last = None;
        for _ in 0..1500 {
            last = self.run_state(name).await?;
            if let Some(state) = &last
                && states.contains(&state.as_str())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("{name} never reached {states:?} (last: {last:?})"))
    }

    /// The disk's state, or `None` if there is no such disk (404).
    async fn disk_state(&self, name: &str) -> Result<Option<String>, String> {
        let answer = self
            .request("GET", &format!("/v1/disks/{name}?project=p"), None)
            .await;
        match answer {
            Some((200, body)) => Ok(Some(body["state"]["state"].as_str().unwrap().to_string())),
            Some((404, _)) => Ok(None),
            other => Err(format!("viewing disk {name}: {other:?}")),
        }
    }

    /// The snapshot's state, as its view has it (`None`: not found).
    async fn snapshot_state(&self, name: &str) -> Result<Option<String>, String> {
        let answer = self
            .request("GET", &format!("/v1/snapshots/{name}?project=p"), None)
            .await;
        match answer {
            Some((200, body)) => Ok(Some(body["state"].as_str().unwrap_or("?").to_string())),
            Some((404, _)) => Ok(None),
            other => Err(format!("viewing snapshot {name}: {other:?}")),
        }
    }

    /// The sled of the instance's active VMM.
    fn active_sled(&self, name: &str) -> String {
        self.sql(&format!(
            "SELECT v.sled_id FROM instance i JOIN vmm v ON v.id = i.active_propolis_id \
             WHERE i.name = '{name}' AND i.time_deleted IS NULL"
        ))
    }

    /// Waits until nothing is in flight (no unfinished saga, no live VMM mid-transition or
    /// waiting to be retired), then checks every invariant, once.
    async fn quiet_and_consistent(&self) -> Result<(), String> {
        // Half a second of quiet: a retirement or a migration's completion pushes VPC mappings
        // to the sleds just after its database write, from a Nexus process this test cannot see.
        self.quiet_for_and_consistent(Duration::from_millis(500))
            .await
    }

    /// As `quiet_and_consistent`, but the quiet must last `settle` first: a background task
    /// that starts a saga of its own once the last one ended (region replacement, every
    /// 200 ms, for a disk still degraded after an unwind) would otherwise start it between
    /// the quiet moment and the invariant check.
    async fn quiet_for_and_consistent(&self, settle: Duration) -> Result<(), String> {
        let unsettled =
            "SELECT count(*) FROM vmm WHERE time_deleted IS NULL AND state != 'running'";
        let mut quiet = false;
        let mut quiet_since = None;
        for _ in 0..1500 {
            quiet = self.sql("SELECT count(*) FROM saga WHERE saga_state != 'done'") == "0"
                && self.sql(unsettled) == "0";
            if !quiet {
                quiet_since = None;
            } else if quiet_since.get_or_insert_with(Instant::now).elapsed() >= settle {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        check!(
            quiet,
            "the system never quiesced:\nunfinished sagas:\n{}\nunsettled VMMs:\n{}",
            self.sql("SELECT id, name, saga_state FROM saga WHERE saga_state != 'done'"),
            self.sql(
                "SELECT id, instance_id, sled_id, state FROM vmm \
                 WHERE time_deleted IS NULL AND state != 'running'"
            )
        );
        let violations = invariant_violations(&self.db, &self.sleds);
        check!(
            violations.is_empty(),
            "invariants violated:\n{}",
            violations.join("\n")
        );
        Ok(())
    }

    /// The saga's log, one `node:event` per line, in the order written.
    fn saga_log(&self, saga_id: &str) -> Vec<String> {
        self.sql(&format!(
            "SELECT node_id || ':' || event_type FROM saga_node_event \
             WHERE saga_id = '{saga_id}' ORDER BY event_time, node_id"
        ))
        .lines()
        .map(str::to_string)
        .collect()
    }
}

/// A Nexus configuration: heartbeats every 100 ms, and a Nexus silent for a second is gone;
/// no automatic restarts (the checks expect a failed instance to stay failed).
fn write_nexus_config(
    path: &Path,
    id: NexusUuid,
    database_url: &str,
    external: SocketAddr,
    internal: SocketAddr,
) {
    std::fs::write(
        path,
        format!(
            "id = \"{id}\"\ndatabase_url = \"{database_url}\"\n\
             external_address = \"{external}\"\ninternal_address = \"{internal}\"\n\
             retirement_interval_ms = 200\nheartbeat_interval_ms = 100\n\
             nexus_gone_after_ms = 1000\n\
             instance_reincarnation_interval_ms = 3600000\n{}",
            crate::context::tls_files(crate::context::Role::Nexus).toml_table(),
        ),
    )
    .unwrap();
}

/// Kills a child that is still running (a failed case's) and reaps it.
fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A saga and its nodes, as its DAG has them.
struct SagaNodes {
    name: &'static str,
    /// The saga's own nodes by name, in DAG order (index = steno's node index).
    nodes: Vec<String>,
}

impl SagaNodes {
    fn of<S: NexusSaga>(params: S::Params) -> SagaNodes {
        let dag = create_saga_dag::<S>(params).unwrap();
        let nodes: Vec<String> = dag
            .get_nodes()
            .map(|n| n.name().as_ref().to_string())
            .collect();
        for (index, node) in dag.get_nodes().enumerate() {
            assert_eq!(node.index().index(), index, "{}: not a linear DAG", S::NAME);
        }
        SagaNodes {
            name: S::NAME,
            nodes,
        }
    }

    fn index(&self, node: &str) -> usize {
        self.nodes.iter().position(|n| n == node).unwrap()
    }

    /// Steno's own start node comes after the saga's nodes (then its end node).
    fn start_node(&self) -> usize {
        self.nodes.len()
    }
}

/// What a node's action leaves in the world, to look at while no Nexus runs.
struct NodeEffect {
    what: &'static str,
    probe: Probe,
}

enum Probe {
    /// A query (on the case's instance, `{name}`) that answers `t` once the effect exists.
    Sql(&'static str),
    /// The sled agents run this many VMMs of the instance.
    SledAgentVmms(usize),
    /// The sled agents hold this many of the disk `{name}`'s regions (as the database has
    /// them).
    SledAgentRegions(usize),
    /// The sled agents hold this many region snapshots of the snapshot `{name}`.
    SledAgentRegionSnapshots(usize),
}

impl NodeEffect {
    fn exists(&self, cluster: &Cluster, name: &str) -> bool {
        match &self.probe {
            Probe::Sql(query) => cluster.sql(&query.replace("{name}", name)) == "t",
            Probe::SledAgentVmms(count) => {
                let instance = cluster.sql(&format!(
                    "SELECT id FROM instance WHERE name = '{name}' AND time_deleted IS NULL"
                ));
                let running = cluster
                    .sleds
                    .iter()
                    .flat_map(|sled| sled.agent().vmm_list())
                    .filter(|vmm| vmm.instance_id.to_string() == instance)
                    .count();
                running == *count
            }
            Probe::SledAgentRegions(count) => {
                let regions = cluster.sql(&format!(
                    "SELECT r.id FROM region r JOIN disk d ON d.id = r.disk_id \
                     WHERE d.name = '{name}'"
                ));
                let regions: BTreeSet<&str> = regions.lines().collect();
                let held = cluster
                    .sleds
                    .iter()
                    .flat_map(|sled| sled.agent().regions_now().expect("quiet sled agents"))
                    .filter(|region| regions.contains(region.region_id.to_string().as_str()))
                    .count();
                held == *count
            }
            Probe::SledAgentRegionSnapshots(count) => {
                let snapshot = cluster.sql(&format!(
                    "SELECT id FROM snapshot WHERE name = '{name}' ORDER BY time_created DESC \
                     LIMIT 1"
                ));
                let held = cluster
                    .sleds
                    .iter()
                    .flat_map(|sled| {
                        sled.agent()
                            .region_snapshots_now()
                            .expect("quiet sled agents")
                    })
                    .filter(|held| held.snapshot_id.to_string() == snapshot)
                    .count();
                held == *count
            }
        }
    }
}

/// The external effect of a node's action, or `None` for a node that only picks ids or checks
/// (nothing outside Nexus's memory changes until the next node).
fn node_effect(saga: &str, node: &str) -> Option<NodeEffect> {
    let (what, probe) = match (saga, node) {
        ("instance-create", "instance") => (
            "the instance record",
            Probe::Sql("SELECT EXISTS (SELECT 1 FROM instance WHERE name = '{name}')"),
        ),
        ("instance-create", "interfaces") => (
            "the instance's default interface",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM network_interface n JOIN instance i \
                 ON i.id = n.instance_id WHERE i.name = '{name}' AND n.time_deleted IS NULL)",
            ),
        ),
        ("instance-create", "stopped") => (
            "the instance stopped (no_vmm)",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM instance WHERE name = '{name}' \
                 AND nexus_state = 'no_vmm')",
            ),
        ),
        ("instance-start", "claim") => (
            "the instance claimed for the new VMM",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM instance WHERE name = '{name}' \
                 AND nexus_state = 'vmm' AND active_propolis_id IS NOT NULL)",
            ),
        ),
        ("instance-start", "reservation") => (
            "a reservation for the instance",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM sled_reservation r JOIN instance i \
                 ON i.id = r.instance_id WHERE i.name = '{name}')",
            ),
        ),
        ("instance-start", "vmm") => (
            "the VMM record",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM vmm v JOIN instance i ON i.id = v.instance_id \
                 WHERE i.name = '{name}')",
            ),
        ),
        ("instance-start", "registered") => (
            "the VMM registered with its sled agent",
            Probe::SledAgentVmms(1),
        ),
        // `mappings` has no probe: its push is not the only way a mapping reaches a sled (a
        // sled agent's re-registration reconciles its mappings with the database, where the
        // VMM is live from `vmm` on), so a mapping may be held before the node runs.
        ("instance-start", "running") => (
            "the VMM asked to run, as recorded from the sled agent's answer",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM vmm v JOIN instance i ON i.id = v.instance_id \
                 WHERE i.name = '{name}' AND v.state IN ('starting', 'running'))",
            ),
        ),
        ("instance-migrate", "migration_record") => (
            "the migration record",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM migration m JOIN instance i \
                 ON i.id = m.instance_id WHERE i.name = '{name}')",
            ),
        ),
        ("instance-migrate", "reservation") => (
            "the target's reservation next to the source's",
            Probe::Sql(
                "SELECT count(*) = 2 FROM sled_reservation r JOIN instance i \
                 ON i.id = r.instance_id WHERE i.name = '{name}'",
            ),
        ),
        ("instance-migrate", "target_vmm") => (
            "the target VMM record next to the source's",
            Probe::Sql(
                "SELECT count(*) = 2 FROM vmm v JOIN instance i ON i.id = v.instance_id \
                 WHERE i.name = '{name}'",
            ),
        ),
        ("instance-migrate", "set_ids") => (
            "the instance's target and migration ids",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM instance WHERE name = '{name}' \
                 AND migration_id IS NOT NULL AND target_propolis_id IS NOT NULL)",
            ),
        ),
        ("instance-migrate", "registered_target") => (
            "the target VMM registered with its sled agent",
            Probe::SledAgentVmms(2),
        ),
        ("instance-migrate", "migrate_out") => (
            "the source migrating out, as recorded from its sled agent's answer",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM vmm v JOIN instance i \
                 ON v.id = i.active_propolis_id WHERE i.name = '{name}' \
                 AND v.state = 'migrating')",
            ),
        ),
        ("instance-delete", "destroyed") => (
            "the instance destroyed",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM instance WHERE name = '{name}' \
                 AND time_deleted IS NOT NULL)",
            ),
        ),
        ("disk-attach", "begin") => (
            "the disk attaching to the instance",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM disk d JOIN instance i \
                 ON i.id = d.attach_instance_id WHERE i.name = '{name}' \
                 AND d.state IN ('attaching', 'attached'))",
            ),
        ),
        ("disk-attach", "attached") => (
            "the disk attached to the instance",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM disk d JOIN instance i \
                 ON i.id = d.attach_instance_id WHERE i.name = '{name}' \
                 AND d.state = 'attached')",
            ),
        ),
        ("disk-detach", "begin") => (
            "the disk detaching from the instance",
            Probe::Sql(
                "SELECT NOT EXISTS (SELECT 1 FROM disk WHERE name = '{name}-d' \
                 AND state = 'attached')",
            ),
        ),
        ("disk-detach", "detached") => (
            "the disk detached",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM disk WHERE name = '{name}-d' \
                 AND state = 'detached')",
            ),
        ),
        ("disk-create", "disk") => (
            "the disk record",
            Probe::Sql("SELECT EXISTS (SELECT 1 FROM disk WHERE name = '{name}')"),
        ),
        ("disk-create", "regions") => (
            "the disk's three region rows",
            Probe::Sql(
                "SELECT count(*) = 3 FROM region r JOIN disk d ON d.id = r.disk_id \
                 WHERE d.name = '{name}'",
            ),
        ),
        ("disk-create", "ensured") => (
            "the disk's regions on their sled agents",
            Probe::SledAgentRegions(3),
        ),
        ("disk-create", "detached") => (
            "the disk detached",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM disk WHERE name = '{name}' AND state = 'detached')",
            ),
        ),
        ("disk-delete", "regions") => (
            "the disk destroyed",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM disk WHERE name = '{name}' \
                 AND time_deleted IS NOT NULL)",
            ),
        ),
        ("disk-delete", "deleted") => (
            "the disk's regions gone from their sled agents",
            Probe::SledAgentRegions(0),
        ),
        ("disk-delete", "released") => (
            "the disk's region rows released",
            Probe::Sql(
                "SELECT NOT EXISTS (SELECT 1 FROM region r JOIN disk d ON d.id = r.disk_id \
                 WHERE d.name = '{name}')",
            ),
        ),
        ("region-replace", "begin") => (
            "the disk marked as having its lost region replaced",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM disk WHERE name = '{name}' \
                 AND time_deleted IS NULL AND replacing_region_id IS NOT NULL)",
            ),
        ),
        ("region-replace", "region") => (
            "the new region's row beside the three",
            Probe::Sql(
                "SELECT count(*) = 4 FROM region r JOIN disk d ON d.id = r.disk_id \
                 WHERE d.name = '{name}' AND d.time_deleted IS NULL",
            ),
        ),
        ("region-replace", "ensured") => (
            "the new region on its sled agent (and the lost one still on the expunged sled's)",
            Probe::SledAgentRegions(4),
        ),
        ("region-replace", "swapped") => (
            "the lost region's row gone and the mark cleared",
            Probe::Sql(
                "SELECT count(*) = 3 AND bool_and(d.replacing_region_id IS NULL) FROM region r \
                 JOIN disk d ON d.id = r.disk_id WHERE d.name = '{name}' \
                 AND d.time_deleted IS NULL",
            ),
        ),
        ("snapshot-create", "snapshot") => (
            "the snapshot record",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM snapshot WHERE name = '{name}' \
                 AND time_deleted IS NULL)",
            ),
        ),
        ("snapshot-create", "reserved") => (
            "the snapshot's region snapshot rows, one per region",
            Probe::Sql(
                "SELECT count(*) = 3 FROM region_snapshot rs JOIN snapshot s \
                 ON s.id = rs.snapshot_id WHERE s.name = '{name}' AND s.time_deleted IS NULL",
            ),
        ),
        ("snapshot-create", "taken") => (
            "the region snapshots on their sled agents",
            Probe::SledAgentRegionSnapshots(3),
        ),
        ("snapshot-delete", "deleted") => (
            "the region snapshots gone from their sled agents",
            Probe::SledAgentRegionSnapshots(0),
        ),
        ("snapshot-create", "ready") => (
            "the snapshot ready",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM snapshot WHERE name = '{name}' \
                 AND state = 'ready')",
            ),
        ),
        ("snapshot-delete", "released") => (
            "the snapshot's region snapshot rows released",
            Probe::Sql(
                "SELECT NOT EXISTS (SELECT 1 FROM region_snapshot rs JOIN snapshot s \
                 ON s.id = rs.snapshot_id WHERE s.name = '{name}')",
            ),
        ),
        ("snapshot-delete", "region_snapshots") => (
            "the snapshot destroyed",
            Probe::Sql(
                "SELECT EXISTS (SELECT 1 FROM snapshot WHERE name = '{name}' \
                 AND time_deleted IS NOT NULL)",
            ),
        ),
        _ => return None,
    };
    Some(NodeEffect { what, probe })
}

/// How the saga must end after recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Finished,
    Unwound,
}

/// One crash.
struct Case<'a> {
    saga: &'a SagaNodes,
    point: CrashPoint,
    /// The node whose action the crashing Nexus makes fail, for a crash while unwinding.
    fail_at: Option<String>,
    instance: String,
}

impl Case<'_> {
    fn expected_outcome(&self) -> Outcome {
        if self.point.event.is_undo() {
            Outcome::Unwound
        } else {
            Outcome::Finished
        }
    }

    /// The saga log a crash at this point leaves, in the order written (a linear DAG: nodes
    /// run one after another and undo in reverse).
    /// The saga logs a crash at this point may leave. The saga log writes a node's `started`
    /// (and steno's start node's events) together with the next event, so at `started` and
    /// `after_effect` the crash node's `started` is missing (and, for the first node, the
    /// start node's events); at `after_effect` they are there if the action ran longer than
    /// they may wait (`STARTED_WRITE_DELAY`).
    fn expected_logs(&self) -> Vec<Vec<String>> {
        let full = self.expected_log();
        let forward_before_result = self.fail_at.is_none()
            && matches!(
                self.point.event,
                CrashEvent::Started | CrashEvent::AfterEffect
            );
        if !forward_before_result {
            return vec![full];
        }
        let crash_node = self.saga.index(&self.point.node);
        let start_node = self.saga.start_node();
        let waiting = |event: &String| {
            *event == format!("{crash_node}:started")
                || (crash_node == 0 && event.starts_with(&format!("{start_node}:")))
        };
        let unwritten: Vec<String> = full.iter().filter(|e| !waiting(e)).cloned().collect();
        if self.point.event == CrashEvent::Started {
            vec![unwritten]
        } else {
            vec![unwritten, full]
        }
    }

    fn expected_log(&self) -> Vec<String> {
        let saga = self.saga;
        let crash_node = saga.index(&self.point.node);
        let mut log = vec![
            format!("{}:started", saga.start_node()),
            format!("{}:succeeded", saga.start_node()),
        ];
        let last_forward = match &self.fail_at {
            Some(node) => saga.index(node),
            None => crash_node,
        };
        for index in 0..=last_forward {
            log.push(format!("{index}:started"));
            if index == last_forward && self.fail_at.is_some() {
                log.push(format!("{index}:failed"));
            } else if index < last_forward || self.point.event == CrashEvent::Succeeded {
                // (`after_effect` leaves the crash node at `started`, like `started`.)
                log.push(format!("{index}:succeeded"));
            }
        }
        if self.point.event.is_undo() {
            for index in (crash_node..last_forward).rev() {
                log.push(format!("{index}:undo_started"));
                if index > crash_node || self.point.event == CrashEvent::UndoFinished {
                    log.push(format!("{index}:undo_finished"));
                }
            }
        }
        log
    }
}

#[derive(Default)]
struct Summary {
    crashed: usize,
    finished: usize,
    unwound: usize,
    undo_crashes: usize,
    /// `after_effect` crashes whose effect was seen in place before the restart.
    effects_proved: usize,
}

/// Sets the stage with a healthy Nexus, crashes one at the case's point, recovers with a
/// fresh one, and checks the outcome. The children's stderr files are listed in `stderr`.
async fn run_case(
    cluster: &Cluster,
    case: &Case<'_>,
    stderr: &mut Vec<PathBuf>,
) -> Result<Outcome, String> {
    let name = &case.instance;
    let saga = case.saga.name;
    let create = json!({"name": name, "description": "", "hostname": "h", "ncpus": 1, "memory": 1u64 << 30, "start": false});
    let disk = json!({"name": name, "description": "", "size": 1u64 << 20,
        "disk_backend": {"type": "distributed", "disk_source": {"type": "blank", "block_size": 512}}});
    // The sagas of a disk or a snapshot alone (attach and detach act on an instance).
    let is_snapshot_saga = saga == snapshot_create::SagaSnapshotCreate::NAME
        || saga == snapshot_delete::SagaSnapshotDelete::NAME;
    // Region replacement is started by Nexus's own background task, for a disk that lost a
    // region with an expunged sled: no request starts it.
    let is_region_replace = saga == region_replace::SagaRegionReplace::NAME;
    let is_disk_saga = saga == disk_create::SagaDiskCreate::NAME
        || saga == disk_delete::SagaDiskDelete::NAME
        || is_snapshot_saga
        || is_region_replace;
    // A snapshot of disk `name`, named `name` too.
    let snapshot = json!({"name": name, "description": "", "disk": name});
    let log_file = |role: &str| cluster.stderr_dir.join(format!("{name}-{role}.stderr"));

    // Set the stage with a healthy Nexus: what the saga needs to start from.
    stderr.push(log_file("setup"));
    let healthy = cluster.nexus(stderr.last().unwrap(), None, None).await?;
    if saga == disk_delete::SagaDiskDelete::NAME || is_snapshot_saga || is_region_replace {
        let answer = cluster
            .request("POST", "/v1/disks?project=p", Some(disk.clone()))
            .await;
        check!(
            matches!(answer, Some((201, _))),
            "creating disk {name}: {answer:?}"
        );
    }
    if saga == snapshot_delete::SagaSnapshotDelete::NAME {
        let answer = cluster
            .request("POST", "/v1/snapshots?project=p", Some(snapshot.clone()))
            .await;
        check!(
            matches!(answer, Some((201, _))),
            "creating snapshot {name}: {answer:?}"
        );
    }
    if saga != instance_create::SagaInstanceCreate::NAME && !is_disk_saga {
        let answer = cluster
            .request("POST", "/v1/instances?project=p", Some(create.clone()))
            .await;
        check!(
            matches!(answer, Some((201, _))),
            "creating {name}: {answer:?}"
        );
    }
    if saga == disk_attach::SagaDiskAttach::NAME || saga == disk_detach::SagaDiskDetach::NAME {
        // A detached disk of the project, named after the instance.
        let mut disk = disk.clone();
        disk["name"] = json!(format!("{name}-d"));
        let answer = cluster
            .request("POST", "/v1/disks?project=p", Some(disk))
            .await;
        check!(
            matches!(answer, Some((201, _))),
            "creating disk {name}-d: {answer:?}"
        );
    }
    if saga == disk_detach::SagaDiskDetach::NAME {
        let answer = cluster
            .request(
                "POST",
                &format!("/v1/instances/{name}/disks/attach?project=p"),
                Some(json!({"disk": format!("{name}-d")})),
            )
            .await;
        check!(
            matches!(answer, Some((202, _))),
            "attaching {name}-d: {answer:?}"
        );
    }
    if saga == instance_migrate::SagaInstanceMigrate::NAME {
        let answer = cluster
            .request(
                "POST",
                &format!("/v1/instances/{name}/start?project=p"),
                None,
            )
            .await;
        check!(
            matches!(answer, Some((202 | 200, _))),
            "starting {name}: {answer:?}"
        );
        cluster.wait_for_state(name, &["running"]).await?;
    }
    stop(healthy);
    if is_region_replace {
        // While no Nexus runs, one of the disk's sleds is declared gone (an expunge of a sled
        // with no VMM is this one write): the next Nexus's task finds the disk degraded. Its
        // agent is left running, so the lost region is still there to count.
        let lost_sled = cluster.sql(&format!(
            "SELECT r.sled_id FROM region r JOIN disk d ON d.id = r.disk_id \
             WHERE d.name = '{name}' AND d.time_deleted IS NULL ORDER BY r.sled_id LIMIT 1"
        ));
        cluster.sql(&format!(
            "UPDATE sled SET time_expunged = now() WHERE id = '{lost_sled}'"
        ));
    }
    let sled_before = cluster.active_sled(name);

    // The crash.
    let crash_log = log_file("crash");
    stderr.push(crash_log.clone());
    let fail_at = case.fail_at.as_ref().map(|node| format!("{saga}:{node}"));
    let mut crashing = cluster
        .nexus(
            stderr.last().unwrap(),
            Some(&case.point),
            fail_at.as_deref(),
        )
        .await?;
    let (method, path, body) = match saga {
        "instance-create" => ("POST", "/v1/instances?project=p".to_string(), Some(create)),
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
        "disk-attach" => (
            "POST",
            format!("/v1/instances/{name}/disks/attach?project=p"),
            Some(json!({"disk": format!("{name}-d")})),
        ),
        "disk-detach" => (
            "POST",
            format!("/v1/instances/{name}/disks/detach?project=p"),
            Some(json!({"disk": format!("{name}-d")})),
        ),
        "disk-create" => ("POST", "/v1/disks?project=p".to_string(), Some(disk)),
        "disk-delete" => ("DELETE", format!("/v1/disks/{name}?project=p"), None),
        "snapshot-create" => (
            "POST",
            "/v1/snapshots?project=p".to_string(),
            Some(snapshot),
        ),
        "snapshot-delete" => ("DELETE", format!("/v1/snapshots/{name}?project=p"), None),
        _ => ("DELETE", format!("/v1/instances/{name}?project=p"), None),
    };
    let answer = if is_region_replace {
        None
    } else {
        cluster.request(method, &path, body).await
    };
    // The request made the saga; the crash point ends the process on its own. The bound only
    // turns "never reached" into a failure instead of a hang.
    let mut status = None;
    for _ in 0..3000 {
        status = crashing.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Some(status) = status else {
        stop(crashing);
        return Err(format!(
            "the crash point was never reached in 30 s (the request answered {answer:?})"
        ));
    };
    check!(
        status.signal() == Some(libc::SIGKILL),
        "Nexus was not killed by SIGKILL: {status} (the request answered {answer:?})"
    );

    // Where it died: one unfinished saga, of this kind, whose log ends at the crash point.
    let unfinished = cluster.sql("SELECT id || ' ' || name FROM saga WHERE saga_state != 'done'");
    let unfinished: Vec<&str> = unfinished.lines().collect();
    check!(
        unfinished.len() == 1 && unfinished[0].ends_with(&format!(" {saga}")),
        "expected exactly one unfinished {saga} saga after the crash, found {unfinished:?}"
    );
    let saga_id = unfinished[0].split(' ').next().unwrap().to_string();
    let log = cluster.saga_log(&saga_id);
    let expected = case.expected_logs();
    check!(
        expected.iter().any(|e| log.last() == e.last()),
        "the saga log's last event is {:?}, not one of {:?} ({}); whole log: {log:?}",
        log.last(),
        expected.iter().map(|e| e.last()).collect::<Vec<_>>(),
        case.point
    );
    // And by its own hand: the crash point's last words name this saga and node.
    let last_words = format!(
        "crash point {} reached (saga {saga_id}, node index {})",
        case.point,
        case.saga.index(&case.point.node)
    );
    let crash_stderr = std::fs::read_to_string(&crash_log).unwrap_or_default();
    check!(
        crash_stderr.contains(&last_words),
        "the crashing Nexus's stderr lacks {last_words:?}"
    );
    check!(
        expected.contains(&log),
        "the saga log after the crash is\n  {log:?}\nnot one of\n  {expected:?}"
    );
    // What the node did before the crash, in the database and on the sled agents.
    if !case.point.event.is_undo()
        && let Some(effect) = node_effect(saga, &case.point.node)
    {
        let exists = effect.exists(cluster, name);
        let expected = case.point.event != CrashEvent::Started;
        check!(
            exists == expected,
            "after a crash at {}, the node's effect ({}) {} before the restart",
            case.point,
            effect.what,
            if exists { "exists" } else { "does not exist" }
        );
    }

    // Recovery: another Nexus (another id) adopts the saga once the dead one's heartbeat is
    // older than the bound, and resumes it from the log.
    stderr.push(log_file("recover"));
    let recovered = cluster
        .nexus_with(
            &cluster.adopter_config_path,
            cluster.external,
            stderr.last().unwrap(),
            None,
            None,
        )
        .await?;
    let result = check_recovery(cluster, case, &saga_id, &sled_before).await;
    stop(recovered);
    let outcome = result?;
    let owner = cluster.sql(&format!(
        "SELECT current_sec || ' ' || adopt_generation FROM saga WHERE id = '{saga_id}'"
    ));
    check!(
        owner == format!("{} 2", cluster.ids[1]),
        "the saga should have been adopted once, by the other Nexus; its owner and generation: \
         {owner}"
    );
    Ok(outcome)
}

/// After recovery: the saga's outcome, the instance's state and the invariants.
async fn check_recovery(
    cluster: &Cluster,
    case: &Case<'_>,
    saga_id: &str,
    sled_before: &str,
) -> Result<Outcome, String> {
    let name = &case.instance;
    // After a replacement unwound, the recovering Nexus's task starts a new one for the
    // still-degraded disk; wait for that one too.
    let settle = if case.saga.name == region_replace::SagaRegionReplace::NAME {
        Duration::from_secs(1)
    } else {
        Duration::ZERO
    };
    cluster.quiet_for_and_consistent(settle).await?;
    let log = cluster.saga_log(saga_id);
    let has = |event: String| log.contains(&event);
    let start_node = case.saga.start_node();
    let end_node = start_node + 1;
    let outcome =
        if has(format!("{end_node}:succeeded")) && !log.iter().any(|e| e.ends_with(":failed")) {
            Outcome::Finished
        } else if log.iter().filter(|e| e.ends_with(":failed")).count() == 1
            && !log.iter().any(|e| e.ends_with(":undo_failed"))
            && has(format!("{start_node}:undo_finished"))
        {
            Outcome::Unwound
        } else {
            return Err(format!("the saga neither finished nor unwound: {log:?}"));
        };
    check!(
        outcome == case.expected_outcome(),
        "the saga {outcome:?}, expected {:?}; log: {log:?}",
        case.expected_outcome()
    );

    // The instance (or disk), as the outcome calls for.
    let state = if case.saga.name == disk_create::SagaDiskCreate::NAME
        || case.saga.name == disk_delete::SagaDiskDelete::NAME
        || case.saga.name == region_replace::SagaRegionReplace::NAME
    {
        cluster.disk_state(name).await?
    } else if case.saga.name == snapshot_create::SagaSnapshotCreate::NAME
        || case.saga.name == snapshot_delete::SagaSnapshotDelete::NAME
    {
        cluster.snapshot_state(name).await?
    } else {
        cluster.run_state(name).await?
    };
    let expected_state = match (case.saga.name, outcome) {
        ("disk-create", Outcome::Finished) => Some("detached"),
        ("disk-create", Outcome::Unwound) => None,
        ("disk-delete", Outcome::Finished) => None,
        // Oxide's choice: a delete that unwound after the record was destroyed brings the
        // disk back faulted (see disk_delete.rs).
        ("disk-delete", Outcome::Unwound) => Some("faulted"),
        ("disk-attach" | "disk-detach", _) => Some("stopped"),
        // Finished or unwound (and then repaired by the task), the disk stays detached.
        ("region-replace", _) => Some("detached"),
        ("snapshot-create", Outcome::Finished) => Some("ready"),
        ("snapshot-create", Outcome::Unwound) => None,
        ("snapshot-delete", Outcome::Finished) => None,
        // As a disk delete's: a snapshot whose delete unwound comes back faulted.
        ("snapshot-delete", Outcome::Unwound) => Some("faulted"),
        ("instance-create", Outcome::Finished) => Some("stopped"),
        ("instance-create", Outcome::Unwound) => None,
        ("instance-start", Outcome::Finished) => Some("running"),
        ("instance-start", Outcome::Unwound) => Some("stopped"),
        ("instance-migrate", _) => Some("running"),
        ("instance-delete", Outcome::Finished) => None,
        ("instance-delete", Outcome::Unwound) => Some("stopped"),
        (other, _) => return Err(format!("no expected end state for {other}")),
    };
    check!(
        state.as_deref() == expected_state,
        "the instance is {state:?}, expected {expected_state:?}"
    );
    // The disk, as the outcome calls for: attached when an attach finished or a detach
    // unwound, detached otherwise.
    if case.saga.name == disk_attach::SagaDiskAttach::NAME
        || case.saga.name == disk_detach::SagaDiskDetach::NAME
    {
        let attached =
            (case.saga.name == disk_attach::SagaDiskAttach::NAME) == (outcome == Outcome::Finished);
        let expected = if attached {
            format!("attached {name}")
        } else {
            "detached".to_string()
        };
        let disk = cluster.sql(&format!(
            "SELECT d.state || ' ' || coalesce(i.name, '') FROM disk d \
             LEFT JOIN instance i ON i.id = d.attach_instance_id WHERE d.name = '{name}-d'"
        ));
        check!(
            disk == expected,
            "after the {} {outcome:?}, the disk is {disk:?}, expected {expected:?}",
            case.saga.name
        );
    }
    if case.saga.name == instance_migrate::SagaInstanceMigrate::NAME {
        let sled_after = cluster.active_sled(name);
        let moved = sled_after != sled_before;
        check!(
            moved == (outcome == Outcome::Finished),
            "after the migration {outcome:?}, the instance runs on sled {sled_after:?} \
             (before: {sled_before:?})"
        );
    }

    // Leave no disk for the next case's expunge to degrade too (so its Nexus's task finds
    // that case's disk alone). After an unwind the task is repairing it again: a delete is
    // refused (409) until that is done.
    if case.saga.name == region_replace::SagaRegionReplace::NAME {
        let mut answer = None;
        for _ in 0..500 {
            answer = cluster
                .request("DELETE", &format!("/v1/disks/{name}?project=p"), None)
                .await;
            if !matches!(answer, Some((409, _))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        check!(
            matches!(answer, Some((204, _))),
            "deleting disk {name}: {answer:?}"
        );
        cluster.quiet_and_consistent().await?;
    }

    // Leave nothing running for the next case.
    if state.as_deref() == Some("running") {
        let answer = cluster
            .request(
                "POST",
                &format!("/v1/instances/{name}/stop?project=p"),
                None,
            )
            .await;
        check!(
            matches!(answer, Some((202 | 200, _))),
            "stopping {name}: {answer:?}"
        );
        cluster.wait_for_state(name, &["stopped"]).await?;
        cluster.quiet_and_consistent().await?;
    }
    Ok(outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_saga_survives_a_crash_at_every_node() {
    let any_instance = InstanceUuid::new_v4();
    let sagas = [
        SagaNodes::of::<instance_create::SagaInstanceCreate>(instance_create::Params {
            instance_id: any_instance,
            project_id: ProjectUuid::new_v4(),
            create: InstanceCreate::new(
                "x".parse().unwrap(),
                "",
                "x",
                1,
                ByteCount::from_gibibytes_u32(1),
            ),
            disk_ids: Vec::new(),
            disks_to_create: Vec::new(),
            interfaces: Vec::new(),
        }),
        SagaNodes::of::<instance_start::SagaInstanceStart>(instance_start::Params {
            instance_id: any_instance,
        }),
        SagaNodes::of::<instance_migrate::SagaInstanceMigrate>(instance_migrate::Params {
            instance_id: any_instance,
            destination: None,
        }),
        SagaNodes::of::<instance_delete::SagaInstanceDelete>(instance_delete::Params {
            instance_id: any_instance,
            created_disk_ids: Vec::new(),
        }),
    ];
    crash_every_node(
        Cluster::new(2, ByteCount::from_mebibytes_u32(0)).await,
        &sagas,
    )
    .await;
}

/// The disk sagas (and attach/detach, whose disks are real ones), on three sleds with storage
/// (a disk's three regions need three).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_sagas_survive_a_crash_at_every_node() {
    let block_size = halyard_common::BlockSize::try_from(512u32).unwrap();
    let sagas = [
        SagaNodes::of::<disk_create::SagaDiskCreate>(disk_create::Params {
            disk_id: halyard_common::ids::DiskUuid::new_v4(),
            project_id: ProjectUuid::new_v4(),
            create: DiskCreate {
                name: "x".parse().unwrap(),
                description: String::new(),
                disk_backend: DiskBackend::Distributed(DiskSource::Blank { block_size }),
                size: ByteCount::from_mebibytes_u32(1),
            },
            block_size,
            created_by_instance_id: None,
            source_snapshot_id: None,
        }),
        SagaNodes::of::<disk_delete::SagaDiskDelete>(disk_delete::Params {
            disk_id: halyard_common::ids::DiskUuid::new_v4(),
        }),
        SagaNodes::of::<disk_attach::SagaDiskAttach>(disk_attach::Params {
            instance_id: InstanceUuid::new_v4(),
            disk_id: DiskUuid::new_v4(),
        }),
        SagaNodes::of::<disk_detach::SagaDiskDetach>(disk_detach::Params {
            instance_id: InstanceUuid::new_v4(),
            disk_id: DiskUuid::new_v4(),
        }),
    ];
    crash_every_node(
        Cluster::new(3, ByteCount::from_gibibytes_u32(1)).await,
        &sagas,
    )
    .await;
}

/// Region replacement, started by Nexus's task for a detached disk one of whose sleds was
/// expunged just before: one sled per case (18 cases), and room for a disk's three regions and
/// its replacement after the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_replacement_survives_a_crash_at_every_node() {
    let sagas = [SagaNodes::of::<region_replace::SagaRegionReplace>(
        region_replace::Params {
            disk_id: DiskUuid::new_v4(),
            lost_region_id: halyard_common::ids::RegionUuid::new_v4(),
            new_region_id: halyard_common::ids::RegionUuid::new_v4(),
        },
    )];
    crash_every_node(
        Cluster::new(22, ByteCount::from_gibibytes_u32(1)).await,
        &sagas,
    )
    .await;
}

/// The snapshot sagas, of a detached disk, on three sleds with storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_sagas_survive_a_crash_at_every_node() {
    let sagas = [
        SagaNodes::of::<snapshot_create::SagaSnapshotCreate>(snapshot_create::Params {
            snapshot_id: halyard_common::ids::SnapshotUuid::new_v4(),
            disk_id: DiskUuid::new_v4(),
            name: "x".parse().unwrap(),
            description: String::new(),
        }),
        SagaNodes::of::<snapshot_delete::SagaSnapshotDelete>(snapshot_delete::Params {
            snapshot_id: halyard_common::ids::SnapshotUuid::new_v4(),
        }),
    ];
    crash_every_node(
        Cluster::new(3, ByteCount::from_gibibytes_u32(1)).await,
        &sagas,
    )
    .await;
}

/// Crashes every node of each of `sagas` at every point (see the module's comment), one case
/// after another on `cluster`, and prints a summary.
/// Every crash point of `sagas`, with the node to fail for the unwinding ones. Forward: every
/// node, right after `started`, right after its effects and right after `succeeded`.
/// Unwinding: a failure at the saga's last node, then every earlier node right after
/// `undo_started` and right after `undo_finished`.
fn crash_cases<'a>(sagas: &[&'a SagaNodes]) -> Vec<Case<'a>> {
    let mut cases = Vec::new();
    for saga in sagas.iter().copied() {
        for node in &saga.nodes {
            for event in [
                CrashEvent::Started,
                CrashEvent::AfterEffect,
                CrashEvent::Succeeded,
            ] {
                cases.push((saga, node.clone(), event, None));
            }
        }
        let (last, earlier) = saga.nodes.split_last().unwrap();
        for node in earlier {
            for event in [CrashEvent::UndoStarted, CrashEvent::UndoFinished] {
                cases.push((saga, node.clone(), event, Some(last.clone())));
            }
        }
    }
    cases
        .into_iter()
        .enumerate()
        .map(|(number, (saga, node, event, fail_at))| Case {
            saga,
            point: CrashPoint {
                saga: saga.name.to_string(),
                node,
                event,
                stop_only: false,
            },
            fail_at,
            instance: format!("vm-{number}"),
        })
        .collect()
}

async fn crash_every_node(cluster: Cluster, sagas: &[SagaNodes]) {
    // `HALYARD_CRASH_REPLAY_SAGAS=disk-attach,disk-detach` runs only those sagas' cases.
    let only: Option<Vec<String>> = std::env::var("HALYARD_CRASH_REPLAY_SAGAS")
        .ok()
        .map(|list| list.split(',').map(str::to_string).collect());
    let sagas: Vec<&SagaNodes> = sagas
        .iter()
        .filter(|saga| {
            only.as_ref()
                .is_none_or(|only| only.iter().any(|n| n == saga.name))
        })
        .collect();
    let setup_log = cluster.stderr_dir.join("project-setup.stderr");
    let nexus = cluster.nexus(&setup_log, None, None).await.unwrap();
    let answer = cluster
        .request(
            "POST",
            "/v1/projects",
            Some(json!({"name": "p", "description": ""})),
        )
        .await;
    assert!(matches!(answer, Some((201, _))), "{answer:?}");
    // Every sled registered (with its storage) before the first case places anything.
    cluster.wait_for_sleds_registered().await;
    stop(nexus);

    let cases = crash_cases(&sagas);
    let mut summary = BTreeMap::<&str, Summary>::new();
    let mut covered = BTreeSet::new();
    let mut undo_covered = BTreeSet::new();
    let mut without_effect = Vec::new();
    for case in &cases {
        let (saga, node, event) = (case.saga, &case.point.node, case.point.event);
        let mut stderr = Vec::new();
        let outcome = match run_case(&cluster, case, &mut stderr).await {
            Ok(outcome) => outcome,
            Err(message) => panic!(
                "crash at {}{}: {message}\n\nstderr of this case's Nexus processes:\n{}",
                case.point,
                case.fail_at
                    .as_ref()
                    .map(|node| format!(" (failure injected at {node})"))
                    .unwrap_or_default(),
                stderr
                    .iter()
                    .map(|p| stderr_tail(p))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        };
        let entry = summary.entry(saga.name).or_default();
        entry.crashed += 1;
        match outcome {
            Outcome::Finished => entry.finished += 1,
            Outcome::Unwound => entry.unwound += 1,
        }
        if event.is_undo() {
            entry.undo_crashes += 1;
            undo_covered.insert((saga.name, node.clone()));
        } else {
            if event == CrashEvent::AfterEffect {
                match node_effect(saga.name, node) {
                    Some(_) => entry.effects_proved += 1,
                    None => without_effect.push(format!("{}:{node}", saga.name)),
                }
            }
            covered.insert((saga.name, node.clone(), event));
        }
    }

    println!(
        "crash replay summary (saga: crashes / finished / unwound / of which while unwinding / \
         effects seen after an after_effect crash):"
    );
    let mut total = 0;
    let mut undo_total = 0;
    let mut effects_total = 0;
    for (saga, s) in &summary {
        println!(
            "  {saga:18} crashed {:3}  finished {:3}  unwound {:3}  while unwinding {:3}  \
             effects seen {:3}",
            s.crashed, s.finished, s.unwound, s.undo_crashes, s.effects_proved
        );
        total += s.crashed;
        undo_total += s.undo_crashes;
        effects_total += s.effects_proved;
    }
    let nodes: usize = sagas.iter().map(|s| s.nodes.len()).sum();
    let undoable: usize = sagas.iter().map(|s| s.nodes.len() - 1).sum();
    let forward_points = [
        CrashEvent::Started,
        CrashEvent::AfterEffect,
        CrashEvent::Succeeded,
    ];
    let fully_covered = sagas
        .iter()
        .flat_map(|saga| saga.nodes.iter().map(move |node| (saga.name, node)))
        .filter(|(saga, node)| {
            forward_points
                .iter()
                .all(|event| covered.contains(&(*saga, (*node).clone(), *event)))
        })
        .count();
    println!(
        "  {total} crashes covering {fully_covered} of {nodes} saga nodes at three points \
         each (after started, after effect, after succeeded), {undo_total} of them while \
         unwinding covering {} of {undoable} undoable nodes (after undo_started, after \
         undo_finished); after effect: {effects_total} effects seen in place before the \
         restart (and absent after started), {} nodes with no external effect ({})",
        undo_covered.len(),
        without_effect.len(),
        without_effect.join(", ")
    );
    assert_eq!(
        fully_covered, nodes,
        "a saga node was not crashed at all three points"
    );
    assert_eq!(undo_covered.len(), undoable, "an undo was never crashed in");
    let _ = std::fs::remove_dir_all(&cluster.stderr_dir);
}

/// A Nexus stalled mid-saga (it stops itself, SIGSTOP, right after a node's `started` event)
/// loses the saga to a live Nexus, which adopts it once the stalled one's heartbeat is older
/// than the bound and (its last node made to fail) unwinds it. Continued (SIGCONT), the stalled one writes nothing more to
/// that saga (its writes would be refused; it drops the saga before running the node's action
/// again), and its client is told the saga moved (503). The log has one writer per
/// generation and every invariant holds.
#[tokio::test]
async fn a_stalled_nexus_loses_its_saga_to_a_live_one_and_writes_nothing_more_to_it() {
    let cluster = Cluster::new(2, ByteCount::from_mebibytes_u32(0)).await;
    let setup_log = cluster.stderr_dir.join("stall-setup.stderr");
    let setup = cluster.nexus(&setup_log, None, None).await.unwrap();
    let answer = cluster
        .request(
            "POST",
            "/v1/projects",
            Some(json!({"name": "p", "description": ""})),
        )
        .await;
    assert!(matches!(answer, Some((201, _))), "{answer:?}");
    let answer = cluster
        .request(
            "POST",
            "/v1/instances?project=p",
            Some(
                json!({"name": "s", "description": "", "hostname": "s", "ncpus": 1,
                "memory": 1u64 << 30, "start": false}),
            ),
        )
        .await;
    assert!(matches!(answer, Some((201, _))), "{answer:?}");
    cluster.wait_for_sleds_registered().await;
    stop(setup);

    // The stalling Nexus (the cluster's addresses) and a live one (the other id, addresses of
    // its own).
    let start = SagaNodes::of::<instance_start::SagaInstanceStart>(instance_start::Params {
        instance_id: InstanceUuid::new_v4(),
    });
    let node = start.nodes[start.nodes.len() / 2].clone();
    let point = CrashPoint {
        saga: start.name.to_string(),
        node: node.clone(),
        event: CrashEvent::Started,
        stop_only: true,
    };
    let stalled_log = cluster.stderr_dir.join("stalled.stderr");
    let mut stalled = cluster
        .nexus(&stalled_log, Some(&point), None)
        .await
        .unwrap();
    let ports = [
        halyard_test_db::reserve_port().unwrap(),
        halyard_test_db::reserve_port().unwrap(),
    ];
    let live_config = cluster.stderr_dir.join("live.toml");
    write_nexus_config(
        &live_config,
        cluster.ids[1],
        cluster.db.url(),
        ports[0].address(),
        ports[1].address(),
    );
    let live_log = cluster.stderr_dir.join("live.stderr");
    // The live Nexus fails the saga's last node, so it unwinds what the stalled one did: a
    // stalled Nexus going on with the saga's actions afterwards would leave them behind
    // (and write events the live one never wrote).
    let last = start.nodes.last().unwrap();
    let fail_at = format!("{}:{last}", start.name);
    let live = cluster
        .nexus_with(
            &live_config,
            ports[0].address(),
            &live_log,
            None,
            Some(&fail_at),
        )
        .await
        .unwrap();

    // The start request, to the stalling Nexus: it stops at the point.
    let http = cluster.http.clone();
    let url = format!("http://{}/v1/instances/s/start?project=p", cluster.external);
    let request = tokio::spawn(async move {
        let response = http.post(url).send().await.ok()?;
        Some(response.status().as_u16())
    });
    let mut stopped = false;
    for _ in 0..1500 {
        stopped = process_state(stalled.id()) == Some('T');
        if stopped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        stopped,
        "the Nexus never stopped at {point}:\n{}",
        stderr_tail(&stalled_log)
    );
    let saga_id = cluster.sql("SELECT id FROM saga WHERE name = 'instance-start'");
    let stalled_events = |cluster: &Cluster| {
        cluster.sql(&format!(
            "SELECT count(*) FROM saga_node_event WHERE saga_id = '{saga_id}' \
             AND creator = '{}'",
            cluster.ids[0]
        ))
    };
    let written_before_stall = stalled_events(&cluster);

    // The live Nexus adopts the saga (generation 2) and unwinds it.
    let mut finished = String::new();
    for _ in 0..1500 {
        finished = cluster.sql(&format!(
            "SELECT saga_state || ' ' || current_sec || ' ' || adopt_generation FROM saga \
             WHERE id = '{saga_id}'"
        ));
        if finished.starts_with("done") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        finished,
        format!("done {} 2", cluster.ids[1]),
        "the live Nexus should have adopted and unwound the saga:\n{}",
        stderr_tail(&live_log)
    );
    let unwound_log = cluster.saga_log(&saga_id);
    assert!(
        unwound_log.iter().any(|e| e.ends_with(":failed"))
            && unwound_log.iter().any(|e| e.ends_with(":undo_finished")),
        "{unwound_log:?}"
    );

    // Continued, the stalled Nexus drops the saga and answers its client 503.
    // SAFETY: kill(2) of our child's pid.
    assert_eq!(unsafe { libc::kill(stalled.id() as i32, libc::SIGCONT) }, 0);
    let answer = tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .expect("the stalled Nexus answers once continued")
        .unwrap();
    assert_eq!(
        answer,
        Some(503),
        "the stalled Nexus's client is told the saga moved:\n{}",
        stderr_tail(&stalled_log)
    );
    let said = std::fs::read_to_string(&stalled_log).unwrap_or_default();
    assert!(
        said.contains("this Nexus drops the saga"),
        "the stalled Nexus should say it dropped the saga:\n{}",
        stderr_tail(&stalled_log)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        stalled_events(&cluster),
        written_before_stall,
        "the stalled Nexus wrote to the saga's log after it was adopted"
    );
    assert_eq!(cluster.saga_log(&saga_id), unwound_log);
    assert_eq!(
        cluster.run_state("s").await.unwrap().as_deref(),
        Some("stopped"),
        "the unwound start left the instance stopped"
    );
    // Both still run and serve; every invariant holds (one writer per generation included).
    cluster.quiet_and_consistent().await.unwrap();
    assert!(
        stalled.try_wait().unwrap().is_none(),
        "the stalled Nexus still runs"
    );
    stop(stalled);
    stop(live);
}

/// The state letter of process `pid` (`R`, `S`, `T` for stopped, ...), from `/proc`.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses (which may hold spaces): " <state> ".
    stat.rsplit_once(") ")?.1.chars().next()
}

/// kill -9 of one of two running Nexus at every crash point of instance-start (forward and
/// unwinding): the other one, up all along on addresses of its own (the sled agents reach
/// either through HAProxy), adopts the dead one's saga once its heartbeat is older than the
/// bound, and finishes or unwinds it; the outcome, the instance and every invariant are
/// checked (among them: no generation of a saga's log written by two Nexus).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_running_nexus_killed_at_every_node_the_other_adopts() {
    let cluster = Cluster::with_live_peer(2, ByteCount::from_mebibytes_u32(0)).await;
    let peer = cluster.peer.as_ref().unwrap();
    let peer_log = cluster.stderr_dir.join("peer.stderr");
    let live = cluster
        .nexus_with(&peer.config_path, peer.external, &peer_log, None, None)
        .await
        .unwrap();
    cluster.send_requests_to(peer.external);
    let answer = cluster
        .request(
            "POST",
            "/v1/projects",
            Some(json!({"name": "p", "description": ""})),
        )
        .await;
    assert!(matches!(answer, Some((201, _))), "{answer:?}");
    cluster.wait_for_sleds_registered().await;

    let start = SagaNodes::of::<instance_start::SagaInstanceStart>(instance_start::Params {
        instance_id: InstanceUuid::new_v4(),
    });
    let cases = crash_cases(&[&start]);
    let (mut finished, mut unwound) = (0, 0);
    for case in &cases {
        let crash_log = cluster
            .stderr_dir
            .join(format!("{}-crash.stderr", case.instance));
        match crash_beside_a_live_peer(&cluster, case, &crash_log).await {
            Ok(Outcome::Finished) => finished += 1,
            Ok(Outcome::Unwound) => unwound += 1,
            Err(message) => panic!(
                "crash at {}{}: {message}\n\n{}\n{}",
                case.point,
                case.fail_at
                    .as_ref()
                    .map(|node| format!(" (failure injected at {node})"))
                    .unwrap_or_default(),
                stderr_tail(&crash_log),
                stderr_tail(&peer_log)
            ),
        }
    }
    stop(live);
    println!(
        "crash replay beside a running Nexus: {} kills of one of two Nexus ({} nodes of {}), \
         each saga adopted by the other: {finished} finished, {unwound} unwound",
        cases.len(),
        start.nodes.len(),
        start.name
    );
}

/// One case of `one_of_two_running_nexus_killed_at_every_node_the_other_adopts`.
async fn crash_beside_a_live_peer(
    cluster: &Cluster,
    case: &Case<'_>,
    crash_log: &Path,
) -> Result<Outcome, String> {
    let peer = cluster.peer.as_ref().unwrap();
    let name = &case.instance;
    let create = json!({"name": name, "description": "", "hostname": "h", "ncpus": 1,
        "memory": 1u64 << 30, "start": false});
    let answer = cluster
        .request("POST", "/v1/instances?project=p", Some(create))
        .await;
    check!(
        matches!(answer, Some((201, _))),
        "creating {name}: {answer:?}"
    );
    let fail_at = case
        .fail_at
        .as_ref()
        .map(|node| format!("{}:{node}", case.saga.name));
    let mut crashing = cluster
        .nexus(crash_log, Some(&case.point), fail_at.as_deref())
        .await?;
    cluster.send_requests_to(cluster.external);
    let answer = cluster
        .request(
            "POST",
            &format!("/v1/instances/{name}/start?project=p"),
            None,
        )
        .await;
    cluster.send_requests_to(peer.external);
    let mut status = None;
    for _ in 0..3000 {
        status = crashing.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Some(status) = status else {
        stop(crashing);
        return Err(format!(
            "the crash point was never reached in 30 s (the request answered {answer:?})"
        ));
    };
    check!(
        status.signal() == Some(libc::SIGKILL),
        "Nexus was not killed by SIGKILL: {status} (the request answered {answer:?})"
    );
    let saga_id = cluster.sql(&format!(
        "SELECT s.id FROM saga s WHERE s.name = '{}' AND s.creator = '{}' \
         AND s.dag::TEXT LIKE '%' || (SELECT id::TEXT FROM instance WHERE name = '{name}') || '%'",
        case.saga.name, cluster.ids[0]
    ));
    check!(
        !saga_id.is_empty() && !saga_id.contains('\n'),
        "expected one {} saga created by the killed Nexus for {name}, found {saga_id:?}",
        case.saga.name
    );
    let outcome = check_recovery(cluster, case, &saga_id, "").await?;
    let owner = cluster.sql(&format!(
        "SELECT current_sec || ' ' || adopt_generation FROM saga WHERE id = '{saga_id}'"
    ));
    check!(
        owner == format!("{} 2", cluster.ids[1]),
        "the running Nexus should have adopted the saga once; its owner and generation: {owner}"
    );
    Ok(outcome)
}
