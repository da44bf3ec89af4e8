//! Nexus's Prometheus metrics (internal `GET /metrics`).
//!
//! - HTTP requests of both APIs, by endpoint and status, with latency histograms
//!   (`halyard_observability::http`, fed by dropshot's per-request log record);
//! - sagas: started, resumed and finished (by saga and outcome), saga and node durations,
//!   undos run, counted by [`SagaMetrics`] as the saga log is written ([`MeteredSecStore`]),
//!   and the stuck and unresumable sagas in the database;
//! - VMMs by state and backend, and each sled's reservations against its capacity, read from
//!   the database when scraped;
//! - the database connection pool (size, idle, waits) and the transient errors (503s) that
//!   saga actions and undos met and retried;
//! - background task runs by outcome.

use async_trait::async_trait;
use halyard_db_queries::DataStore;
use halyard_observability::http::HttpMetrics;
use halyard_observability::prometheus::core::Collector;
use halyard_observability::prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use steno::{
    SagaCachedState, SagaCreateParams, SagaId, SagaNodeEvent, SagaNodeEventType, SecStore,
};

/// Buckets for saga and node durations, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

pub struct NexusMetrics {
    registry: Registry,
    pub(crate) http: HttpMetrics,
    pub(crate) sagas: Arc<SagaMetrics>,
    transient_errors: IntCounterVec,
    background_runs: IntCounterVec,
    sagas_stuck: IntGauge,
    sagas_unresumable: IntGauge,
    vmms: IntGaugeVec,
    sled_threads: IntGaugeVec,
    sled_ram: IntGaugeVec,
    pool_connections: IntGauge,
    pool_idle_connections: IntGauge,
    pool_gets: IntGauge,
    pool_gets_waited: IntGauge,
    pool_gets_timed_out: IntGauge,
    pool_wait_seconds: Gauge,
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, metric: C) -> C {
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric registers once");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid metric"))
}

fn gauges(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histograms(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    register(
        registry,
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
            labels,
        )
        .expect("valid metric"),
    )
}

impl NexusMetrics {
    pub fn new() -> NexusMetrics {
        let registry = Registry::new();
        let http = HttpMetrics::register(&registry).expect("HTTP metrics register once");
        let r = &registry;
        let sagas = Arc::new(SagaMetrics {
            started: counter(r, "halyard_sagas_started_total", "Sagas created", &["saga"]),
            resumed: counter(
                r,
                "halyard_sagas_resumed_total",
                "Unfinished sagas resumed from the saga log at start-up",
                &["saga"],
            ),
            finished: counter(
                r,
                "halyard_sagas_finished_total",
                "Sagas that ended in this process, by outcome: succeeded, unwound (an action \
                 failed and every undo ran) or stuck (an undo failed)",
                &["saga", "outcome"],
            ),
            duration: histograms(
                r,
                "halyard_saga_duration_seconds",
                "Time from a saga's creation (or resumption) to its end, by saga and outcome",
                &["saga", "outcome"],
            ),
            node_duration: histograms(
                r,
                "halyard_saga_node_duration_seconds",
                "Time a saga node's action or undo took, from its started event to its \
                 outcome event, by saga, node and kind (action or undo)",
                &["saga", "node", "kind"],
            ),
            undos: counter(
                r,
                "halyard_saga_undos_total",
                "Undo actions started, by saga and node",
                &["saga", "node"],
            ),
            running: Mutex::new(BTreeMap::new()),
        });
        NexusMetrics {
            http,
            sagas,
            transient_errors: counter(
                r,
                "halyard_transient_errors_total",
                "Transient errors (503: the database or a sled agent out of reach) met and \
                 retried, by where: saga_action, saga_undo, vmm_unregister",
                &["where"],
            ),
            background_runs: counter(
                r,
                "halyard_background_task_runs_total",
                "Background task runs, by task and outcome (succeeded, failed)",
                &["task", "outcome"],
            ),
            sagas_stuck: gauge(
                r,
                "halyard_sagas_stuck",
                "Sagas in the database whose undo failed (they hold what they took until an \
                 operator steps in)",
            ),
            sagas_unresumable: gauge(
                r,
                "halyard_sagas_unresumable",
                "Unfinished sagas in the database that their owner could not resume (their \
                 DAG or log unreadable, an action unknown): an operator must look",
            ),
            vmms: gauges(
                r,
                "halyard_vmms",
                "VMMs not yet retired, by state and backend",
                &["state", "backend"],
            ),
            sled_threads: gauges(
                r,
                "halyard_sled_hardware_threads",
                "Each sled's hardware threads: usable, and reserved by its VMMs",
                &["sled_id", "backend", "kind"],
            ),
            sled_ram: gauges(
                r,
                "halyard_sled_physical_ram_bytes",
                "Each sled's memory: usable, and reserved by its VMMs",
                &["sled_id", "backend", "kind"],
            ),
            pool_connections: gauge(
                r,
                "halyard_db_pool_connections",
                "Database connections open",
            ),
            pool_idle_connections: gauge(
                r,
                "halyard_db_pool_idle_connections",
                "Database connections open and idle",
            ),
            pool_gets: gauge(
                r,
                "halyard_db_pool_checkouts",
                "Connections checked out of the pool since start (a running count)",
            ),
            pool_gets_waited: gauge(
                r,
                "halyard_db_pool_checkouts_waited",
                "Check-outs that had to wait for a connection (a running count)",
            ),
            pool_gets_timed_out: gauge(
                r,
                "halyard_db_pool_checkouts_timed_out",
                "Check-outs that waited in vain: the database counted as unavailable (a \
                 running count)",
            ),
            pool_wait_seconds: register(
                r,
                Gauge::new(
                    "halyard_db_pool_wait_seconds",
                    "Time check-outs spent waiting for a connection since start",
                )
                .expect("valid metric"),
            ),
            registry,
        }
    }

    /// A transient error met at `place`, to be retried.
    pub(crate) fn transient_error(&self, place: &str) {
        self.transient_errors.with_label_values(&[place]).inc();
    }

    pub(crate) fn background_run(&self, task: &str, succeeded: bool) {
        let outcome = if succeeded { "succeeded" } else { "failed" };
        self.background_runs
            .with_label_values(&[task, outcome])
            .inc();
    }

    /// Every metric, the gauges read from the database and the pool now.
    pub(crate) async fn render(
        &self,
        datastore: &DataStore,
    ) -> Result<http::Response<dropshot::Body>, dropshot::HttpError> {
        let stuck = datastore.saga_count_stuck().await?;
        self.sagas_stuck
            .set(i64::try_from(stuck).unwrap_or(i64::MAX));
        let unresumable = datastore.saga_count_unresumable().await?;
        self.sagas_unresumable
            .set(i64::try_from(unresumable).unwrap_or(i64::MAX));
        let vmms = datastore.vmm_count_by_state_and_backend().await?;
        self.vmms.reset();
        for (state, backend, count) in vmms {
            self.vmms
                .with_label_values(&[state.as_str(), backend.as_str()])
                .set(count);
        }
        self.sled_threads.reset();
        self.sled_ram.reset();
        for sled in datastore.sled_list_all().await? {
            if sled.is_expunged() {
                continue;
            }
            let id = sled.id().to_string();
            let backend = halyard_common::Labelled::label(&sled.backend.0);
            for (kind, threads, ram) in [
                (
                    "usable",
                    sled.usable_hardware_threads,
                    sled.usable_physical_ram.0.to_i64(),
                ),
                (
                    "reserved",
                    sled.reserved_hardware_threads,
                    sled.reserved_physical_ram.0.to_i64(),
                ),
            ] {
                self.sled_threads
                    .with_label_values(&[id.as_str(), backend, kind])
                    .set(threads);
                self.sled_ram
                    .with_label_values(&[id.as_str(), backend, kind])
                    .set(ram);
            }
        }
        let pool = datastore.pool_statistics();
        self.pool_connections.set(i64::from(pool.connections));
        self.pool_idle_connections
            .set(i64::from(pool.idle_connections));
        self.pool_gets
            .set(i64::try_from(pool.gets).unwrap_or(i64::MAX));
        self.pool_gets_waited
            .set(i64::try_from(pool.gets_waited).unwrap_or(i64::MAX));
        self.pool_gets_timed_out
            .set(i64::try_from(pool.gets_timed_out).unwrap_or(i64::MAX));
        self.pool_wait_seconds.set(pool.wait_time.as_secs_f64());
        halyard_observability::metrics_response(&self.registry)
    }
}

impl Default for NexusMetrics {
    fn default() -> Self {
        NexusMetrics::new()
    }
}

/// Saga counters and durations, fed by the saga log as it is written.
pub struct SagaMetrics {
    started: IntCounterVec,
    resumed: IntCounterVec,
    finished: IntCounterVec,
    duration: HistogramVec,
    node_duration: HistogramVec,
    undos: IntCounterVec,
    running: Mutex<BTreeMap<SagaId, RunningSaga>>,
}

/// What the metrics remember of a saga while it runs in this process.
struct RunningSaga {
    name: String,
    since: Instant,
    /// Node names by node index (from the DAG).
    nodes: BTreeMap<u32, String>,
    /// When each node's action or undo started.
    node_started: BTreeMap<u32, Instant>,
    failed: bool,
    undo_failed: bool,
}

impl SagaMetrics {
    /// What to remember of a saga named `name` with this DAG (steno's JSON form).
    fn describe(name: &str, dag: &serde_json::Value) -> RunningSaga {
        let nodes = serde_json::from_value::<steno::SagaDag>(dag.clone())
            .map(|dag| {
                dag.get_nodes()
                    .filter_map(|node| {
                        let index = u32::try_from(node.index().index()).ok()?;
                        Some((index, node.name().as_ref().to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        RunningSaga {
            name: name.to_string(),
            since: Instant::now(),
            nodes,
            node_started: BTreeMap::new(),
            failed: false,
            undo_failed: false,
        }
    }

    /// A saga resumed from the log (steno does not call `saga_create` for it).
    pub(crate) fn resumed(&self, id: SagaId, name: &str, dag: &serde_json::Value) {
        self.resumed.with_label_values(&[name]).inc();
        self.running().insert(id, SagaMetrics::describe(name, dag));
    }

    fn running(&self) -> std::sync::MutexGuard<'_, BTreeMap<SagaId, RunningSaga>> {
        // Every change under the lock is one insert, update or removal.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A saga recorded in the log (created, not yet started).
    fn created(&self, id: SagaId, saga: RunningSaga) {
        self.started.with_label_values(&[&saga.name]).inc();
        self.running().insert(id, saga);
    }

    fn event(&self, event: &SagaNodeEvent) {
        let mut running = self.running();
        let Some(saga) = running.get_mut(&event.saga_id) else {
            return;
        };
        let node = u32::from(event.node_id);
        let node_name = saga
            .nodes
            .get(&node)
            .cloned()
            .unwrap_or_else(|| node.to_string());
        let (kind, ended) = match &event.event_type {
            SagaNodeEventType::Started => ("action", false),
            SagaNodeEventType::UndoStarted => {
                self.undos
                    .with_label_values(&[&saga.name, &node_name])
                    .inc();
                ("undo", false)
            }
            SagaNodeEventType::Succeeded(_) => ("action", true),
            SagaNodeEventType::Failed(_) => {
                saga.failed = true;
                ("action", true)
            }
            SagaNodeEventType::UndoFinished => ("undo", true),
            SagaNodeEventType::UndoFailed(_) => {
                saga.undo_failed = true;
                ("undo", true)
            }
        };
        if !ended {
            saga.node_started.insert(node, Instant::now());
        } else if let Some(started) = saga.node_started.remove(&node) {
            self.node_duration
                .with_label_values(&[&saga.name, &node_name, kind])
                .observe(started.elapsed().as_secs_f64());
        }
    }

    fn done(&self, id: SagaId) {
        let Some(saga) = self.running().remove(&id) else {
            return;
        };
        let outcome = if saga.undo_failed {
            "stuck"
        } else if saga.failed {
            "unwound"
        } else {
            "succeeded"
        };
        self.finished
            .with_label_values(&[&saga.name, outcome])
            .inc();
        self.duration
            .with_label_values(&[&saga.name, outcome])
            .observe(saga.since.elapsed().as_secs_f64());
    }
}

/// The saga log, counted: every event is recorded by the store it wraps first, then counted.
#[derive(Debug)]
pub struct MeteredSecStore {
    inner: Arc<dyn SecStore>,
    metrics: Arc<SagaMetrics>,
}

impl std::fmt::Debug for SagaMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SagaMetrics")
    }
}

impl MeteredSecStore {
    pub fn new(inner: Arc<dyn SecStore>, metrics: Arc<SagaMetrics>) -> MeteredSecStore {
        MeteredSecStore { inner, metrics }
    }
}

#[async_trait]
impl SecStore for MeteredSecStore {
    async fn saga_create(&self, params: SagaCreateParams) -> Result<(), anyhow::Error> {
        let id = params.id;
        let saga = SagaMetrics::describe(&params.name.to_string(), &params.dag);
        self.inner.saga_create(params).await?;
        self.metrics.created(id, saga);
        Ok(())
    }

    async fn record_event(&self, event: SagaNodeEvent) {
        self.metrics.event(&event);
        self.inner.record_event(event).await;
    }

    async fn saga_update(&self, id: SagaId, update: SagaCachedState) {
        let done = matches!(update, SagaCachedState::Done);
        self.inner.saga_update(id, update).await;
        if done {
            self.metrics.done(id);
        }
    }
}
