//! Outages: a sled agent that restarts (and so has lost its VMMs), and the database going away
//! and coming back: between requests (503, then service again) and under a saga in flight
//! (its actions and undos retry through the outage; one that outlasts its budget right after
//! its effect landed leaves what the leftover task releases).
//!
//! The database tests each run their own PostgreSQL cluster ([`PrivateCluster`]), since they
//! stop it; it is removed however the test ends. What a saga did through the outage is read
//! from Nexus's own log records ([`CapturedLog`]: an action or undo failing and being retried,
//! then succeeding) and from the saga log, not inferred from how long the outage lasted.

use crate::context::{TestContext, log};
use halyard_common::ids::{InstanceUuid, NexusUuid, SledUuid};
use halyard_common::{ByteCount, Error, InstanceState};
use halyard_nexus::app::crash_point::LostReplyStep;
use halyard_nexus::app::sagas::instance_start::{self, SagaInstanceStart};
use halyard_nexus::app::sagas::retry::SagaRetryPolicy;
use halyard_nexus_external_api::params::InstanceCreate;
use halyard_sled_agent::SimConfig;
use halyard_test_db::PrivateCluster;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// What `retry.rs` logs when a saga action or undo meets a transient error and will run again.
const RETRYING: &str = "transient error; retrying";
/// ... when a forward action's retry budget is spent and it fails.
const OUT_OF_RETRIES: &str = "transient error; out of retries, failing";
/// ... when an action or undo that met transient errors finally succeeds.
const SUCCEEDED_AFTER_RETRIES: &str = "succeeded after transient errors";
/// What `DbSecStore` logs when a saga log write fails and will be tried again.
const SAGA_LOG_WRITE_RETRYING: &str = "saga log write failed; retrying";
/// The start saga's actions, as their retries name them (`what`: "saga action <name> (...)").
const CREATE_VMM: &str = "saga action instance_start.create_vmm ";
const UNDO_RESERVE: &str = "saga undo instance_start.reserve ";
const CLAIM: &str = "saga action instance_start.claim ";
/// What the lost-reply test hook logs when it drops a step's reply (`crash_point.rs`).
const REPLY_LOST: &str = "test: losing a saga step's reply after its effects";

/// Nexus's log records, kept in memory for the test to read.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<LogRecord>>>);

#[derive(Debug, Clone)]
struct LogRecord {
    message: String,
    /// The record's own key-values (not its logger's), as displayed.
    values: BTreeMap<String, String>,
}

impl slog::Drain for CapturedLog {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let mut values = DisplayedValues::default();
        // `DisplayedValues` never fails.
        let _ = slog::KV::serialize(&record.kv(), record, &mut values);
        self.0.lock().unwrap().push(LogRecord {
            message: record.msg().to_string(),
            values: values.0,
        });
        Ok(())
    }
}

#[derive(Default)]
struct DisplayedValues(BTreeMap<String, String>);

impl slog::Serializer for DisplayedValues {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments) -> slog::Result {
        self.0.insert(key.to_string(), value.to_string());
        Ok(())
    }
}

impl CapturedLog {
    fn logger(&self) -> slog::Logger {
        slog::Logger::root(self.clone(), slog::o!())
    }

    /// The records saying `message` about something whose `what` starts with `what`.
    fn records(&self, message: &str, what: &str) -> Vec<LogRecord> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|r| {
                r.message == message && r.values.get("what").is_some_and(|w| w.starts_with(what))
            })
            .cloned()
            .collect()
    }

    fn count(&self, message: &str, what: &str) -> usize {
        self.records(message, what).len()
    }

    /// The `failures` an action or undo reported when it succeeded after transient errors
    /// (fails the test unless it did so exactly once).
    fn failures_before_success(&self, what: &str) -> u32 {
        let records = self.records(SUCCEEDED_AFTER_RETRIES, what);
        assert_eq!(
            records.len(),
            1,
            "{what}: expected one success after transient errors, got {records:?}"
        );
        records[0].values["failures"].parse().unwrap()
    }
}

/// Nexus and sim sled agents on a private database cluster the test may stop.
struct OutageSystem {
    server: halyard_nexus::Server,
    sleds: Vec<halyard_sled_agent::Server>,
    /// Nexus's log.
    nexus_log: CapturedLog,
    // Last: dropped (stopped and removed) after everything that uses it, also on a panic.
    db: PrivateCluster,
}

const DATABASE: &str = "halyard";

impl OutageSystem {
    async fn start(sled_count: usize) -> OutageSystem {
        let db = PrivateCluster::start().unwrap_or_else(|e| panic!("{e}"));
        let url = db
            .create_database(DATABASE)
            .unwrap_or_else(|e| panic!("{e}"));
        let config = halyard_nexus::Config {
            retirement_interval_ms: 200,
            heartbeat_interval_ms: 200,
            ..halyard_nexus::Config::new(
                NexusUuid::new_v4(),
                url,
                "127.0.0.1:0".parse().unwrap(),
                "127.0.0.1:0".parse().unwrap(),
                crate::context::tls_files(crate::context::Role::Nexus),
            )
        };
        let nexus_log = CapturedLog::default();
        let server = halyard_nexus::Server::start(&config, &nexus_log.logger())
            .await
            .unwrap();
        let mut sleds = Vec::new();
        for _ in 0..sled_count {
            let sled_id = SledUuid::new_v4();
            // From TOML, so that options the sled agent gains keep their defaults here.
            let sled_config: halyard_sled_agent::Config = toml::from_str(&format!(
                "sled_id = \"{}\"\nlisten_address = \"127.0.0.1:0\"\n\
                 nexus_address = \"{}\"\nbackend = \"sim\"\nhardware_threads = 8\n\
                 physical_ram = {}\nregistration_interval_ms = 1000\n\
                 [sim]\nstart_delay_ms = 10\nstop_delay_ms = 10\n\
                 reboot_delay_ms = 10\nmigration_phase_delay_ms = 10\n{}",
                sled_id,
                server.internal_address(),
                8u64 << 30,
                crate::context::tls_files(crate::context::Role::Sled(sled_id)).toml_table(),
            ))
            .unwrap();
            sleds.push(
                halyard_sled_agent::Server::start(&sled_config, &log())
                    .await
                    .unwrap(),
            );
        }
        let system = OutageSystem {
            server,
            sleds,
            nexus_log,
            db,
        };
        system
            .eventually("every sled registered", || {
                system.sql("SELECT count(*) FROM sled").trim() == sled_count.to_string()
            })
            .await;
        system
    }

    fn nexus(&self) -> &std::sync::Arc<halyard_nexus::Nexus> {
        self.server.nexus()
    }

    fn sql(&self, sql: &str) -> String {
        self.db.cluster().psql(DATABASE, sql).expect("psql")
    }

    async fn eventually(&self, what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn instance(&self, name: &str) -> InstanceUuid {
        let project: halyard_common::NameOrId =
            halyard_common::NameOrId::Name("p".parse().unwrap());
        if self.sql("SELECT count(*) FROM project").trim() == "0" {
            self.nexus()
                .project_create("p".parse().unwrap(), String::new())
                .await
                .unwrap();
        }
        self.nexus()
            .instance_create(
                &project,
                InstanceCreate {
                    start: false,
                    ..InstanceCreate::new(
                        name.parse().unwrap(),
                        "",
                        name,
                        2,
                        ByteCount::from_gibibytes_u32(1),
                    )
                },
            )
            .await
            .unwrap()
            .instance
            .id()
    }

    async fn run_state(&self, id: InstanceUuid) -> InstanceState {
        self.nexus().instance_view(id).await.unwrap().run_state()
    }

    /// How many node events of each type the (only) instance-start saga has in the log.
    fn start_saga_events(&self) -> BTreeMap<String, usize> {
        self.sql(
            "SELECT e.event_type, count(*) FROM saga_node_event e JOIN saga s ON s.id = e.saga_id \
             WHERE s.name = 'instance-start' GROUP BY e.event_type",
        )
        .lines()
        .map(|line| {
            let (event, count) = line.split_once('|').unwrap();
            (event.to_string(), count.parse().unwrap())
        })
        .collect()
    }

    /// Holds a lock on table `table` from another session that lets reads through but not
    /// writes (`SHARE` mode), so the next statement that writes it waits (a view, which reads
    /// an instance joined to its VMM, does not); the lock (and the session) ends when the
    /// database stops.
    fn lock_table(&self, table: &str) -> LockHolder {
        let psql = halyard_test_db::postgres_bin_dir().unwrap().join("psql");
        let child = Command::new(psql)
            .args(["-X", "-q", "-w", "-h", "127.0.0.1", "-p"])
            .arg(self.db.cluster().port().to_string())
            .args(["-U", "postgres", "-d", DATABASE, "-c"])
            .arg(format!(
                "BEGIN; LOCK TABLE {table} IN SHARE MODE; SELECT pg_sleep(600);"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let holder = LockHolder(child);
        let granted = format!(
            "SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass \
             AND mode = 'ShareLock' AND granted"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.sql(&granted).trim() != "1" {
            assert!(
                Instant::now() < deadline,
                "the lock on {table} was never granted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        holder
    }

    /// Waits until a statement starting with `prefix` waits for a lock.
    async fn wait_for_blocked(&self, prefix: &str) {
        let query = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '{prefix}%'"
        );
        self.eventually(
            &format!("a statement `{prefix}...` to wait for its lock"),
            || self.sql(&query).trim() != "0",
        )
        .await;
    }

    /// Waits until no saga is unfinished and no VMM is mid-transition, then checks every
    /// invariant.
    async fn assert_quiet_and_consistent(&self) {
        self.eventually("the system to quiesce", || {
            self.sql("SELECT count(*) FROM saga WHERE saga_state != 'done'").trim() == "0"
                && self
                    .sql("SELECT count(*) FROM vmm WHERE time_deleted IS NULL AND state != 'running'")
                    .trim()
                    == "0"
        })
        .await;
        let violations = halyard_nexus_test_utils::invariant_violations_in(
            self.db.cluster(),
            DATABASE,
            &self.sleds,
        );
        assert!(
            violations.is_empty(),
            "invariants violated:\n{}",
            violations.join("\n")
        );
        assert_eq!(
            self.sql("SELECT count(*) FROM saga_node_event WHERE event_type = 'undo_failed'")
                .trim(),
            "0",
            "a saga is stuck"
        );
    }

    async fn close(self) {
        for sled in self.sleds {
            sled.close().await.unwrap();
        }
        self.server.close().await.unwrap();
    }
}

/// A `psql` holding a lock; killed when dropped (if the database has not ended it already).
struct LockHolder(Child);

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn nexus_answers_503_while_the_database_is_down_and_recovers_after() {
    let mut system = OutageSystem::start(1).await;
    let base = format!("http://{}", system.server.external_address());
    let token = crate::authn_support::test_user_token(system.server.nexus()).await;
    let http = crate::authn_support::http_client(&token);
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

    system.db.stop().unwrap();
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
    system.db.restart().unwrap();
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
    system.assert_quiet_and_consistent().await;
    system.close().await;
}

/// Starts `id` and stops the database while the start saga's `vmm` node (which runs after
/// the claim and the reservation, so there is something to undo) waits on a table lock.
/// Returns the start, still running, once the database is down.
async fn start_and_stop_the_database_mid_saga(
    system: &OutageSystem,
    id: InstanceUuid,
) -> tokio::task::JoinHandle<Result<halyard_nexus::app::instance::InstanceAndVmm, Error>> {
    let lock = system.lock_table("vmm");
    let nexus = std::sync::Arc::clone(system.nexus());
    let start = tokio::spawn(async move { nexus.instance_start(id).await });
    system.wait_for_blocked("INSERT INTO \"vmm\"").await;
    // The claim and the reservation are done; the VMM record is being written.
    assert_eq!(
        system.sql("SELECT count(*) FROM sled_reservation").trim(),
        "1"
    );
    system.db.stop().unwrap();
    drop(lock);
    start
}

#[tokio::test]
async fn a_start_saga_in_flight_survives_a_database_outage() {
    let mut system = OutageSystem::start(1).await;
    let id = system.instance("vm").await;
    let start = start_and_stop_the_database_mid_saga(&system, id).await;

    // The `vmm` node's action fails against the stopped database, and runs again, and fails
    // again: the saga waits through the outage rather than fail.
    system
        .eventually("the vmm action to fail twice and be retried", || {
            system.nexus_log.count(RETRYING, CREATE_VMM) >= 2
        })
        .await;
    assert!(
        !start.is_finished(),
        "the start ended while the database was down"
    );
    assert_eq!(system.nexus_log.count(OUT_OF_RETRIES, CREATE_VMM), 0);
    let failures_while_down = system.nexus_log.count(RETRYING, CREATE_VMM);
    system.db.restart().unwrap();

    let started = tokio::time::timeout(Duration::from_secs(60), start)
        .await
        .expect("the start finished")
        .unwrap();
    assert!(started.is_ok(), "the start failed: {started:?}");
    // The same action, retried, succeeded once the database was back; nothing was undone.
    let failures = system.nexus_log.failures_before_success(CREATE_VMM);
    assert!(
        failures as usize >= failures_while_down,
        "{failures} failures before the success, {failures_while_down} seen while down"
    );
    let events = system.start_saga_events();
    assert_eq!(
        events.get("started"),
        events.get("succeeded"),
        "every node that started succeeded: {events:?}"
    );
    for unwinding in ["failed", "undo_started", "undo_finished", "undo_failed"] {
        assert!(!events.contains_key(unwinding), "{events:?}");
    }
    system
        .eventually("the instance to run", || {
            system.sql(&format!(
                "SELECT v.state FROM instance i JOIN vmm v ON v.id = i.active_propolis_id WHERE i.id = '{id}'"
            ))
            .trim()
                == "running"
        })
        .await;
    assert_eq!(system.run_state(id).await, InstanceState::Running);
    system.assert_quiet_and_consistent().await;
    system.close().await;
}

#[tokio::test]
async fn a_start_saga_that_outlasts_its_retries_unwinds_once_the_database_is_back() {
    let mut system = OutageSystem::start(1).await;
    // Forward actions give up after a second; undos never do.
    system.nexus().set_saga_retry_policy(SagaRetryPolicy {
        action_budget: Duration::from_secs(1),
        ..SagaRetryPolicy::default()
    });
    let id = system.instance("vm").await;
    let start = start_and_stop_the_database_mid_saga(&system, id).await;

    // The action is retried until its budget is spent, and fails; the saga then has to
    // record that failure, which waits for the database (and its undos after it): the saga
    // does not end while the database is down.
    system
        .eventually("the vmm action to run out of retries", || {
            system.nexus_log.count(OUT_OF_RETRIES, CREATE_VMM) == 1
        })
        .await;
    assert!(system.nexus_log.count(RETRYING, CREATE_VMM) >= 1);
    system
        .eventually("the saga log write of the failure to be retried", || {
            system.nexus_log.count(SAGA_LOG_WRITE_RETRYING, "") >= 1
        })
        .await;
    assert!(
        !start.is_finished(),
        "the saga ended while the database was down"
    );
    system.db.restart().unwrap();

    let started = tokio::time::timeout(Duration::from_secs(60), start)
        .await
        .expect("the start finished")
        .unwrap();
    assert!(
        matches!(started, Err(Error::ServiceUnavailable { .. })),
        "the start should fail with 503: {started:?}"
    );
    // Fully unwound: stopped, no VMM, no reservation; the saga log shows the `vmm` node
    // failed and every node before it undone.
    system.assert_quiet_and_consistent().await;
    let events = system.start_saga_events();
    assert_eq!(events.get("failed"), Some(&1), "{events:?}");
    assert_eq!(
        events.get("undo_finished"),
        events.get("succeeded"),
        "every node that succeeded was undone: {events:?}"
    );
    assert!(!events.contains_key("undo_failed"), "{events:?}");
    assert_eq!(system.run_state(id).await, InstanceState::Stopped);
    assert_eq!(
        system.sql("SELECT count(*) FROM sled_reservation").trim(),
        "0"
    );
    // And it starts now.
    system
        .nexus()
        .set_saga_retry_policy(SagaRetryPolicy::default());
    system.nexus().instance_start(id).await.unwrap();
    system
        .eventually("the instance to run", || {
            system.sql(&format!(
                "SELECT v.state FROM instance i JOIN vmm v ON v.id = i.active_propolis_id WHERE i.id = '{id}'"
            ))
            .trim()
                == "running"
        })
        .await;
    system.assert_quiet_and_consistent().await;
    system.close().await;
}

#[tokio::test]
async fn an_undo_that_meets_a_database_outage_waits_for_it_and_finishes_the_unwind() {
    let mut system = OutageSystem::start(1).await;
    let id = system.instance("vm").await;
    // The start's `vmm` node waits on a lock, after the claim and the reservation.
    let vmm_lock = system.lock_table("vmm");
    let nexus = std::sync::Arc::clone(system.nexus());
    let start = tokio::spawn(async move { nexus.instance_start(id).await });
    system.wait_for_blocked("INSERT INTO \"vmm\"").await;
    // Its undo (releasing the reservation) will wait on this one.
    let reservation_lock = system.lock_table("sled_reservation");
    // The `vmm` node fails for good (its statement is cancelled: not a transient error), so
    // the saga unwinds; the database goes down while the undo waits.
    system.sql(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
         WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO \"vmm\"%'",
    );
    system
        .wait_for_blocked("DELETE FROM \"sled_reservation\"")
        .await;
    system.db.stop().unwrap();
    drop((vmm_lock, reservation_lock));

    // The undo fails against the stopped database, and runs again, and fails again.
    system
        .eventually(
            "the reservation's undo to fail twice and be retried",
            || system.nexus_log.count(RETRYING, UNDO_RESERVE) >= 2,
        )
        .await;
    assert!(
        !start.is_finished(),
        "the saga ended while the database was down"
    );
    let failures_while_down = system.nexus_log.count(RETRYING, UNDO_RESERVE);
    system.db.restart().unwrap();

    let started = tokio::time::timeout(Duration::from_secs(60), start)
        .await
        .expect("the start finished")
        .unwrap();
    assert!(
        started.is_err(),
        "the start should have failed: {started:?}"
    );
    // The undo waited for the database and succeeded once it was back: fully unwound,
    // nothing stuck or leaked.
    let failures = system.nexus_log.failures_before_success(UNDO_RESERVE);
    assert!(
        failures as usize >= failures_while_down,
        "{failures} failures before the success, {failures_while_down} seen while down"
    );
    system.assert_quiet_and_consistent().await;
    let events = system.start_saga_events();
    assert_eq!(
        events.get("undo_finished"),
        events.get("succeeded"),
        "every node that succeeded was undone: {events:?}"
    );
    assert!(!events.contains_key("undo_failed"), "{events:?}");
    assert_eq!(system.run_state(id).await, InstanceState::Stopped);
    assert_eq!(
        system.sql("SELECT count(*) FROM sled_reservation").trim(),
        "0"
    );
    system.nexus().instance_start(id).await.unwrap();
    system
        .eventually("the instance to run", || {
            system.sql(&format!(
                "SELECT v.state FROM instance i JOIN vmm v ON v.id = i.active_propolis_id WHERE i.id = '{id}'"
            ))
            .trim()
                == "running"
        })
        .await;
    system.assert_quiet_and_consistent().await;
    system.close().await;
}

/// Finding 4 of issue 15, with a real outage: the start's `claim` commits, its reply is lost
/// (the lost-reply hook), and the database then stays down past the action's retry budget.
/// The node fails, and steno runs no undo for a failed node, so the claim is left behind:
/// the instance reads `starting`, names a VMM that has no record, and can't be deleted.
/// Once the database is back, the leftover task (which no saga owning the claim stops)
/// releases it, and the instance starts, stops and is deleted like any other.
#[tokio::test]
async fn a_claim_left_by_a_lost_reply_and_an_outage_past_the_budget_is_released() {
    let mut system = OutageSystem::start(1).await;
    // The run after the lost reply comes 5 s later (the test stops the database as soon as it
    // sees the reply lost, which takes well under that), against the stopped database; the
    // budget (6 s) allows no run after that, so the node fails. (Were the database stopped
    // too late, the second run would find the claim and the saga finish: the asserts below
    // would fail, never pass wrongly.)
    system.nexus().set_saga_retry_policy(SagaRetryPolicy {
        first_delay: Duration::from_secs(5),
        max_delay: Duration::from_secs(5),
        action_budget: Duration::from_secs(6),
    });
    let id = system.instance("vm").await;
    let nexus = std::sync::Arc::clone(system.nexus());
    let saga = nexus
        .saga_prepare::<SagaInstanceStart>(instance_start::Params { instance_id: id })
        .await
        .unwrap();
    nexus
        .inject_lost_reply(&saga, "claim", LostReplyStep::Action)
        .unwrap();
    let start = tokio::spawn(async move { nexus.saga_execute(saga).await });
    system
        .eventually("the claim's reply to be lost", || {
            system
                .nexus_log
                .0
                .lock()
                .unwrap()
                .iter()
                .any(|r| r.message == REPLY_LOST)
        })
        .await;
    system.db.stop().unwrap();
    system
        .eventually("the claim to run out of retries", || {
            system.nexus_log.count(OUT_OF_RETRIES, CLAIM) == 1
        })
        .await;
    assert!(
        !start.is_finished(),
        "the saga ended while the database was down"
    );
    system.db.restart().unwrap();
    let started = tokio::time::timeout(Duration::from_secs(60), start)
        .await
        .expect("the start saga ended")
        .unwrap();
    assert!(
        matches!(started, Err(Error::ServiceUnavailable { .. })),
        "the start should fail with 503: {started:?}"
    );
    let events = system.start_saga_events();
    assert_eq!(events.get("failed"), Some(&1), "{events:?}");
    assert!(!events.contains_key("undo_failed"), "{events:?}");

    // What the finding describes: the claim outlived its saga.
    let claimed = system.sql(&format!(
        "SELECT i.active_propolis_id IS NOT NULL, (SELECT count(*) FROM vmm v \
         WHERE v.id = i.active_propolis_id) FROM instance i WHERE i.id = '{id}'"
    ));
    assert_eq!(
        claimed.trim(),
        "t|0",
        "the instance is claimed by a VMM id with no record"
    );
    assert_eq!(system.run_state(id).await, InstanceState::Starting);
    let refused = system.nexus().instance_delete(id).await.unwrap_err();
    assert!(matches!(refused, Error::Conflict { .. }), "{refused:?}");

    // The leftover task releases it once past its grace period (none here).
    system
        .nexus()
        .set_saga_retry_policy(SagaRetryPolicy::default());
    system.nexus().set_leftover_grace(Duration::ZERO);
    let released = system.nexus().release_leftovers().await.unwrap();
    system
        .eventually("the leftover task to release the claim", || {
            system
                .sql(&format!(
                    "SELECT active_propolis_id IS NULL FROM instance WHERE id = '{id}'"
                ))
                .trim()
                == "t"
        })
        .await;
    assert!(
        released.claims <= 1,
        "one claim was left, {} released",
        released.claims
    );
    assert_eq!(system.run_state(id).await, InstanceState::Stopped);
    system.assert_quiet_and_consistent().await;
    system.nexus().instance_start(id).await.unwrap();
    system
        .eventually("the instance to run", || {
            system.sql(&format!(
                "SELECT v.state FROM instance i JOIN vmm v ON v.id = i.active_propolis_id WHERE i.id = '{id}'"
            ))
            .trim()
                == "running"
        })
        .await;
    system.nexus().instance_stop(id).await.unwrap();
    system
        .eventually("the instance to stop", || {
            system
                .sql(&format!(
                    "SELECT active_propolis_id IS NULL FROM instance WHERE id = '{id}'"
                ))
                .trim()
                == "t"
        })
        .await;
    system.nexus().instance_delete(id).await.unwrap();
    system.assert_quiet_and_consistent().await;
    system.close().await;
}
