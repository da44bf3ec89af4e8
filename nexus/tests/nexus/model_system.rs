//! The real system the model test runs against, built so that it can suffer the faults a
//! deployment does: Nexus runs as a child process (the `halyard-nexus` binary) that the test
//! can SIGKILL and start again with the same id on the same database; the database lives in a
//! PostgreSQL cluster of the test's own ([`PrivateCluster`], one per test thread, a fresh
//! database in it for each case, cloned from a template) that the test can stop and start on
//! the same port; three simulated sled agents run in the test's process over real HTTP and
//! find Nexus at a fixed internal address, so that after a restart they register with, and
//! report to, the new Nexus. A [`LostReplyProxy`] forwards one request to Nexus and drops its
//! answer.

use crate::context::{SLED_RAM_GIB, SLED_THREADS, log};
use halyard_common::ids::{NexusUuid, SledUuid};
use halyard_common::{ByteCount, SledBackend};
use halyard_nexus_test_utils::invariant_violations_in;
use halyard_sled_agent::SimConfig;
use halyard_test_db::PrivateCluster;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// The database with the schema loaded that each case's database is cloned from.
const TEMPLATE: &str = "halyard_template";

thread_local! {
    /// This test thread's cluster (cases run one after another on their test's thread; tests
    /// run on threads of their own, so one test's outage never hits another's case).
    static CLUSTER: std::cell::RefCell<Option<Arc<Mutex<PrivateCluster>>>> =
        const { std::cell::RefCell::new(None) };
    /// How many cases this thread has created a database for.
    static CASES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// This thread's cluster, started (with the template database) on first use.
fn thread_cluster() -> Result<Arc<Mutex<PrivateCluster>>, String> {
    CLUSTER.with(|cluster| {
        let mut cluster = cluster.borrow_mut();
        if cluster.is_none() {
            let started = PrivateCluster::start().map_err(|e| e.to_string())?;
            started
                .create_database(TEMPLATE)
                .map_err(|e| e.to_string())?;
            *cluster = Some(Arc::new(Mutex::new(started)));
        }
        Ok(cluster.as_ref().unwrap().clone())
    })
}

/// How long the system may take to come back or settle after a fault (a restarted Nexus
/// resuming its sagas, sled agents retrying their reports with backoff) before a wait fails.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Nexus, its database and its sled agents, for one case of the model test.
pub struct ModelSystem {
    /// The running Nexus process (`None` between a kill and the next start), and how many
    /// Nexus processes this system has started (each writes its own stderr file). Behind a
    /// lock so that a kill can run while a request to Nexus is in flight.
    nexus: Mutex<(Option<Child>, usize)>,
    config_path: PathBuf,
    /// Where the Nexus processes' configuration and stderr files are kept (removed on drop).
    dir: PathBuf,
    pub external: SocketAddr,
    pub internal: SocketAddr,
    /// Hold `external` and `internal` for this system's life (every Nexus it starts binds
    /// them): no other test picks them meanwhile. A port picked by binding port 0 and closing
    /// it may be handed out again at once (it was: both APIs got one port, in CI).
    _ports: [halyard_test_db::ReservedPort; 2],
    pub sleds: Vec<halyard_sled_agent::Server>,
    /// The token of the test user, made in this case's database before Nexus started.
    pub token: String,
    sim: SimConfig,
    database_up: bool,
    /// This case's database, in `db`.
    database: String,
    db: Arc<Mutex<PrivateCluster>>,
}

impl Drop for ModelSystem {
    fn drop(&mut self) {
        self.kill_nexus();
        let _ = std::fs::remove_dir_all(&self.dir);
        // The next case uses the cluster: up again (if this case ended during an outage),
        // without this case's database.
        let mut db = self.cluster();
        if !self.database_up {
            let _ = db.restart();
        }
        let _ = db.cluster().psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database),
        );
    }
}

impl ModelSystem {
    /// A new database, Nexus and `sleds` sim sled agents; returns once every sled registered.
    pub async fn start(sleds: usize, sim: SimConfig) -> Result<ModelSystem, String> {
        let db = thread_cluster()?;
        let case = CASES.with(|n| {
            n.set(n.get() + 1);
            n.get()
        });
        let (database, url, port) = {
            let cluster = db.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let cluster = cluster.cluster();
            let database = format!("case_{case}");
            cluster
                .psql(
                    "postgres",
                    &format!("CREATE DATABASE \"{database}\" TEMPLATE {TEMPLATE}"),
                )
                .map_err(|e| e.to_string())?;
            let url = cluster.url_for(&database);
            (database, url, cluster.port())
        };
        let token = crate::authn_support::test_user_token_in(&url).await;
        let ports = [
            halyard_test_db::reserve_port().map_err(|e| e.to_string())?,
            halyard_test_db::reserve_port().map_err(|e| e.to_string())?,
        ];
        let (external, internal) = (ports[0].address(), ports[1].address());
        let dir = std::env::temp_dir().join(format!(
            "halyard-model-{}-{port}-{case}",
            std::process::id(),
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        // No automatic restarts: the model keeps a failed instance failed until it is started
        // (auto-restart has its own tests, in instance_watcher.rs).
        let config_path = dir.join("nexus.toml");
        std::fs::write(
            &config_path,
            format!(
                "id = \"{}\"\ndatabase_url = \"{url}\"\nexternal_address = \"{external}\"\n\
                 internal_address = \"{internal}\"\nretirement_interval_ms = 200\n\
                 instance_reincarnation_interval_ms = 3600000\n{}",
                NexusUuid::new_v4(),
                crate::context::tls_files(crate::context::Role::Nexus).toml_table(),
            ),
        )
        .map_err(|e| e.to_string())?;
        let mut system = ModelSystem {
            nexus: Mutex::new((None, 0)),
            config_path,
            dir,
            external,
            internal,
            _ports: ports,
            sleds: Vec::new(),
            token,
            sim,
            database_up: true,
            database,
            db,
        };
        system.start_nexus().await?;
        for _ in 0..sleds {
            let sled = system.start_sled(SledUuid::new_v4()).await;
            system.sleds.push(sled);
        }
        system
            .eventually("every sled registered", || {
                system.sql("SELECT count(*) FROM sled").trim() == sleds.to_string()
            })
            .await?;
        Ok(system)
    }

    async fn start_sled(&self, id: SledUuid) -> halyard_sled_agent::Server {
        let config = halyard_sled_agent::Config {
            sled_id: id,
            listen_address: "127.0.0.1:0".parse().unwrap(),
            nexus_address: self.internal,
            backend: SledBackend::Sim,
            hardware_threads: SLED_THREADS,
            physical_ram: ByteCount::from_gibibytes_u32(SLED_RAM_GIB),
            registration_interval_ms: 1000,
            sim: self.sim,
            qemu: Default::default(),
            storage: Default::default(),
            tls: crate::context::tls_files(crate::context::Role::Sled(id)),
        };
        halyard_sled_agent::Server::start(&config, &log())
            .await
            .unwrap()
    }

    /// Starts a Nexus process (the same id, database and addresses every time) and waits
    /// until its external API answers: by then it has resumed its unfinished sagas.
    pub async fn start_nexus(&self) -> Result<(), String> {
        let start = {
            let mut nexus = self.nexus.lock().unwrap();
            assert!(nexus.0.is_none(), "one Nexus at a time");
            nexus.1 += 1;
            nexus.1
        };
        let stderr = self.dir.join(format!("nexus-{start}.stderr"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_halyard-nexus"))
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("starting Nexus: {e}"))?;
        let http = crate::authn_support::http_client(&self.token);
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let url = format!("http://{}/v1/projects", self.external);
            if let Ok(response) = http.get(url).send().await
                && response.status().is_success()
            {
                self.nexus.lock().unwrap().0 = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "Nexus exited at start ({status}); its stderr: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("Nexus did not come up".to_string());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs Nexus: nothing of it runs on (no saga step, background task or server).
    pub fn kill_nexus(&self) {
        if let Some(mut child) = self.nexus.lock().unwrap().0.take() {
            child.kill().expect("SIGKILL Nexus");
            child.wait().expect("reap Nexus");
        }
    }

    /// Stalls the saga log: from now until the stall is dropped, a saga that records an
    /// event when it has `after_events` in the log already (modulo the events it logs when it
    /// runs forward, two a node of its DAG, so that every saga stops somewhere) waits there
    /// (its statement sleeps in a trigger). Dropping the stall ends the waiting statements
    /// (their events are not recorded), as if the Nexus that sent them had died first.
    pub fn stall_saga_log(&self, after_events: u32) -> SagaLogStall {
        self.sql(&format!(
            "CREATE TABLE IF NOT EXISTS {STALL} (after_events INT8 NOT NULL);
             CREATE OR REPLACE FUNCTION {STALL}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF EXISTS (
                     SELECT 1 FROM {STALL}, saga s WHERE s.id = NEW.saga_id
                        AND after_events % greatest(
                                2 * jsonb_array_length(s.dag->'graph'->'nodes'), 1) <= (
                            SELECT count(*) FROM saga_node_event WHERE saga_id = NEW.saga_id))
                 THEN
                     PERFORM pg_sleep(600);
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE OR REPLACE TRIGGER {STALL} BEFORE INSERT ON saga_node_event
                 FOR EACH ROW EXECUTE FUNCTION {STALL}();
             INSERT INTO {STALL} VALUES ({after_events});"
        ));
        SagaLogStall {
            db: self.db.clone(),
            database: self.database.clone(),
        }
    }

    /// Whether a saga waits in the saga log stalled by [`ModelSystem::stall_saga_log`].
    pub fn a_saga_is_stalled(&self) -> bool {
        self.sql(STALLED).trim() != "0"
    }

    /// The unfinished sagas in the saga log, as `id|name`.
    pub fn unfinished_sagas(&self) -> Vec<String> {
        self.sql("SELECT id, name FROM saga WHERE saga_state != 'done' ORDER BY id")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The sagas the running Nexus's executor holds (running, or finished since it started),
    /// by id, from its internal API.
    pub async fn sagas_in_memory(&self) -> Result<Vec<String>, String> {
        let sagas: Vec<serde_json::Value> = crate::context::operator_http(halyard_tls::NEXUS_NAME)
            .get(format!("https://{}/sagas", self.internal))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("listing Nexus's sagas: {e}"))?
            .json()
            .await
            .map_err(|e| format!("listing Nexus's sagas: {e}"))?;
        Ok(sagas
            .iter()
            .filter_map(|saga| saga["id"].as_str().map(str::to_string))
            .collect())
    }

    /// Stops the database (`pg_ctl stop -m fast`: open sessions are ended).
    pub fn stop_database(&mut self) {
        self.cluster().stop().unwrap_or_else(|e| panic!("{e}"));
        self.database_up = false;
    }

    /// Starts the stopped database again, on the same port.
    pub fn start_database(&mut self) {
        self.cluster().restart().unwrap_or_else(|e| panic!("{e}"));
        self.database_up = true;
    }

    /// The case's cluster (a panic that held it, caught as a failed case, leaves it usable).
    fn cluster(&self) -> std::sync::MutexGuard<'_, PrivateCluster> {
        self.db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `sql` in the database; psql's unaligned output.
    pub fn sql(&self, sql: &str) -> String {
        assert!(self.database_up, "the test queried a stopped database");
        self.cluster()
            .cluster()
            .psql(&self.database, sql)
            .expect("psql")
    }

    pub async fn eventually(&self, what: &str, check: impl Fn() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while !check() {
            if Instant::now() > deadline {
                return Err(format!("timed out waiting for {what}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Restarts the sled agent of sled `id` (a new one with the same id and no VMM); `false`
    /// if it no longer runs (expunged).
    pub async fn restart_sled(&mut self, id: SledUuid) -> bool {
        let Some(index) = self.sleds.iter().position(|s| s.agent().id() == id) else {
            return false;
        };
        let old = self.sleds.remove(index);
        old.close().await.unwrap();
        let new = self.start_sled(id).await;
        self.sleds.insert(index, new);
        true
    }

    /// Stops the sled agent of sled `id` for good (if it still runs).
    pub async fn close_sled(&mut self, id: SledUuid) {
        if let Some(index) = self.sleds.iter().position(|s| s.agent().id() == id) {
            self.sleds.remove(index).close().await.unwrap();
        }
    }

    /// A client for the sled agent of sled `id`, if it still runs.
    pub fn sled_client(&self, id: SledUuid) -> Option<halyard_sled_agent_client::Client> {
        let sled = self.sleds.iter().find(|s| s.agent().id() == id)?;
        Some(crate::context::sled_client(
            sled.local_addr(),
            crate::context::Role::Nexus,
        ))
    }

    /// Waits until nothing is in flight (no unfinished saga, no live VMM mid-transition or
    /// waiting to be retired), then checks every invariant once.
    pub async fn quiet_and_consistent(&self) -> Result<(), String> {
        let unfinished = "SELECT count(*) FROM saga WHERE saga_state != 'done'";
        let unsettled =
            "SELECT count(*) FROM vmm WHERE time_deleted IS NULL AND state != 'running'";
        let is_quiet = || self.sql(unfinished).trim() == "0" && self.sql(unsettled).trim() == "0";
        let mut quiet = self.eventually("the system to quiesce", is_quiet).await;
        // Quiet for half a second: a retirement or a migration's completion pushes VPC
        // mappings to the sleds just after its database write, from the Nexus process.
        while quiet.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            if is_quiet() {
                break;
            }
            quiet = self.eventually("the system to quiesce", is_quiet).await;
        }
        if let Err(timed_out) = quiet {
            return Err(format!(
                "{timed_out}:\nunfinished sagas:\n{}\nunsettled VMMs:\n{}\ninstances:\n{}",
                self.sql("SELECT id, name, saga_state FROM saga WHERE saga_state != 'done'"),
                self.sql(
                    "SELECT id, instance_id, sled_id, state, generation FROM vmm \
                     WHERE time_deleted IS NULL AND state != 'running'"
                ),
                self.sql(
                    "SELECT name, nexus_state, active_propolis_id, target_propolis_id, \
                     migration_id FROM instance WHERE time_deleted IS NULL"
                ),
            ));
        }
        let violations = {
            let db = self.cluster();
            invariant_violations_in(db.cluster(), &self.database, &self.sleds)
        };
        if violations.is_empty() {
            Ok(())
        } else {
            Err(format!("invariants violated:\n{}", violations.join("\n")))
        }
    }

    /// The last lines of every Nexus process's stderr, for a failure message.
    pub fn nexus_logs(&self) -> String {
        const LINES: usize = 40;
        let mut out = String::new();
        let starts = self.nexus.lock().unwrap().1;
        for n in 1..=starts {
            let path = self.dir.join(format!("nexus-{n}.stderr"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LINES)..];
            out.push_str(&format!(
                "--- Nexus process {n}'s stderr (last {} lines) ---\n{}\n",
                tail.len(),
                tail.join("\n")
            ));
        }
        out
    }

    /// Stops the sled agents, then Nexus (the database goes on drop).
    pub async fn close(mut self) {
        for sled in std::mem::take(&mut self.sleds) {
            let _ = sled.close().await;
        }
        self.kill_nexus();
    }
}

/// The table, trigger and function that stall the saga log (in each case's database once
/// the case stalls it).
const STALL: &str = "model_saga_log_stall";

/// How many statements recording saga events sleep in the stall.
/// (The saga log's writers insert with one statement starting `INSERT INTO saga_node_event`;
/// matching it by text is what this test can do. A sleeping statement that is not ended holds
/// the saga rows it read `FOR SHARE`, which would hold up the next Nexus's takeover.)
const STALLED: &str = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' \
                       AND query LIKE 'INSERT INTO saga_node_event%'";

/// The saga log stalled (see [`ModelSystem::stall_saga_log`]) until this is dropped.
pub struct SagaLogStall {
    db: Arc<Mutex<PrivateCluster>>,
    database: String,
}

impl Drop for SagaLogStall {
    fn drop(&mut self) {
        let db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stalled = STALLED.replace("count(*)", "pg_terminate_backend(pid)");
        let _ = db
            .cluster()
            .psql(&self.database, &format!("DELETE FROM {STALL}; {stalled}"));
    }
}

/// A one-request loopback proxy in front of Nexus's external API that loses the reply: it
/// forwards the client's request, reads Nexus's whole answer (the client asks for
/// `Connection: close`, so Nexus closes the connection after it), and then closes the
/// client's connection without a byte of it. The request reached Nexus and Nexus finished
/// handling it; the client sees only a connection closed.
pub struct LostReplyProxy {
    pub address: SocketAddr,
    /// The status line Nexus answered with (for the story), once the proxy has dropped it.
    answered: tokio::task::JoinHandle<Option<String>>,
}

impl LostReplyProxy {
    pub async fn start(nexus: SocketAddr) -> LostReplyProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let answered = tokio::spawn(async move {
            let (mut client, _) = listener.accept().await.ok()?;
            let mut upstream = tokio::net::TcpStream::connect(nexus).await.ok()?;
            let (mut upstream_read, mut upstream_write) = upstream.split();
            let (mut client_read, _client_write) = client.split();
            // The client's bytes go on to Nexus (while the client sends any) until Nexus has
            // answered and closed the connection.
            let forward = async {
                let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
                std::future::pending::<()>().await
            };
            let mut answer = Vec::new();
            tokio::select! {
                () = forward => {}
                read = upstream_read.read_to_end(&mut answer) => { read.ok()?; }
            }
            let status = String::from_utf8_lossy(&answer)
                .lines()
                .next()
                .map(str::to_string);
            // `client` drops here: closed, the answer never written.
            status
        });
        LostReplyProxy { address, answered }
    }

    /// Nexus's status line that the client did not see (`None` if Nexus sent none).
    pub async fn dropped_answer(self) -> Option<String> {
        self.answered.await.ok().flatten()
    }
}
