//! Nexus's application logic, by resource: projects, instances, VMMs (reports, retirement,
//! migration outcomes), sleds (registration, reconciliation, expunge), the saga runner
//! (`saga`), the sagas themselves (`sagas`), and the background tasks (`background`). This
//! file holds the `Nexus` struct, its constructor and accessors.

pub mod authorized;
pub mod background;
pub mod crash_point;
pub mod disk;
pub mod identity;
pub mod instance;
pub mod instance_disks;
pub mod network;
pub mod project;
pub mod saga;
pub mod sagas;
pub mod serial_console;
pub mod sled;
pub mod snapshot;
pub mod v2p;
pub mod vmm;

use crate::metrics::{MeteredSecStore, NexusMetrics};
use background::BackgroundTasks;
use halyard_common::ids::NexusUuid;
use halyard_db_queries::{DataStore, DbSecStore};
use sagas::ActionRegistry;
use sagas::retry::SagaRetryPolicy;
use slog::{Logger, o, warn};
use std::sync::Arc;
use std::time::Duration;

/// The Nexus application: its database, its saga executor, and how it reaches sled agents.
pub struct Nexus {
    id: NexusUuid,
    /// This process's run of `id` (see `background::nexus_heartbeat`).
    incarnation: uuid::Uuid,
    /// Set when another process registered with this Nexus's id: this one starts no saga and
    /// runs no background task.
    superseded: std::sync::atomic::AtomicBool,
    /// Changes of where interfaces live whose mapping pushes have not finished (see
    /// `v2p::PendingPush`).
    pending_mapping_pushes: Arc<std::sync::atomic::AtomicUsize>,
    /// The sled of each VMM that reported lately (see [`Nexus::vmm_sled`]).
    vmm_sleds: vmm::VmmSleds,
    /// Which sagas this Nexus owns at which generation, and which it dropped.
    ownership: Arc<halyard_db_queries::SagaOwnership>,
    datastore: DataStore,
    sec: steno::SecClient,
    registry: Arc<ActionRegistry>,
    /// How saga actions retry transient errors (see `sagas::retry`).
    saga_retry: std::sync::Mutex<SagaRetryPolicy>,
    /// How old a leftover (see `background::leftover_release`) must be before the leftover
    /// task releases it.
    leftover_grace: std::sync::Mutex<Duration>,
    /// How long a sled may go unheard (no registration) before the regions on it count as
    /// unreachable: their disks show degraded (see [`Nexus::sled_silence_bound`]).
    sled_silence_bound: std::sync::Mutex<Duration>,
    /// How long a Nexus may go without a heartbeat before this one adopts its sagas.
    nexus_gone_after: std::sync::Mutex<Duration>,
    /// How long a sled agent may go unheard before the instance watcher fails its VMMs.
    sled_unresponsive_after: std::sync::Mutex<Duration>,
    /// How long after an automatic restart a failed instance waits for the next one.
    auto_restart_cooldown: std::sync::Mutex<Duration>,
    /// When this Nexus last wrote its heartbeat (or was made: a Nexus that never runs the
    /// heartbeat task, as in tests, counts from then).
    last_heartbeat: std::sync::Mutex<std::time::Instant>,
    /// When this Nexus was made: the instance watcher judges a sled silent only on what it
    /// has watched itself for at least the bound (see `background::instance_watcher`).
    started_at: std::time::Instant,
    /// Test-only: a saga node whose action this process makes fail (`HALYARD_FAIL_AT`).
    injected_failure: Option<crash_point::InjectedFailure>,
    /// Test-only: a crash point after a node's effects (`HALYARD_CRASH_AT=...:after_effect`).
    crash_after_effect: Option<crash_point::CrashPoint>,
    /// Test-only: actions whose reply is lost once (`inject_lost_reply`).
    lost_replies: crash_point::LostReplies,
    /// The one HTTP client every sled agent client shares (one client keeps its connections
    /// to the sled agents open for reuse): it presents Nexus's certificate and accepts only a
    /// sled agent's from the deployment's CA.
    sled_http: reqwest::Client,
    /// Set once the internal API serves: proves a request came through its TLS front.
    internal_front_secret: std::sync::OnceLock<halyard_tls::peer::FrontSecret>,
    metrics: NexusMetrics,
    background_tasks: BackgroundTasks,
    log: Logger,
}

/// How long a sled may go unheard before the regions on it count as unreachable, unless set
/// otherwise ([`Nexus::set_sled_silence_bound`]): three of a sled agent's default 10 s
/// registrations missed.
pub const DEFAULT_SLED_SILENCE_BOUND: Duration = Duration::from_secs(30);

impl Nexus {
    /// How long a sled may go unheard (no registration) before the regions on it count as
    /// unreachable and their disks show degraded. Only an expunge makes a region lost for
    /// good (and replaced): a silent sled may come back.
    pub fn sled_silence_bound(&self) -> Duration {
        *self
            .sled_silence_bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Changes [`Nexus::sled_silence_bound`] (tests use a short one).
    pub fn set_sled_silence_bound(&self, bound: Duration) {
        *self
            .sled_silence_bound
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = bound;
    }

    /// How long a sled agent may go unheard (no registration, no answer to the instance
    /// watcher) before its VMMs are declared failed (see `background::instance_watcher`).
    pub fn sled_unresponsive_after(&self) -> Duration {
        *self
            .sled_unresponsive_after
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Changes [`Nexus::sled_unresponsive_after`] (configuration; tests use a short one).
    pub fn set_sled_unresponsive_after(&self, bound: Duration) {
        *self
            .sled_unresponsive_after
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = bound;
    }

    /// How long this Nexus has been running.
    pub fn uptime(&self) -> Duration {
        self.started_at.elapsed()
    }

    /// How long after an automatic restart a failed instance waits for the next one (see
    /// `background::instance_reincarnation`).
    pub fn auto_restart_cooldown(&self) -> Duration {
        *self
            .auto_restart_cooldown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Changes [`Nexus::auto_restart_cooldown`] (configuration; tests use a short one).
    pub fn set_auto_restart_cooldown(&self, cooldown: Duration) {
        *self
            .auto_restart_cooldown
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = cooldown;
    }

    /// `sled_http` is the HTTP client for sled agents (`TlsMaterial::http_client`, with
    /// Nexus's certificate).
    pub fn new(
        id: NexusUuid,
        datastore: DataStore,
        sled_http: reqwest::Client,
        log: &Logger,
    ) -> Arc<Nexus> {
        let log = log.new(o!("nexus_id" => id.to_string()));
        let store = DbSecStore::new(datastore.clone(), id, &log);
        let ownership = Arc::clone(store.ownership());
        // Test-only settings; a malformed one is a broken test, never ignored.
        let crash_point = crash_point::CrashPoint::from_env().unwrap_or_else(|e| panic!("{e}"));
        let injected_failure =
            crash_point::InjectedFailure::from_env().unwrap_or_else(|e| panic!("{e}"));
        if let Some(failure) = &injected_failure {
            warn!(log, "test failure injection armed"; "fail_at" => ?failure);
        }
        if let Some(point) = &crash_point {
            warn!(log, "test crash point armed"; "crash_at" => ?point);
        }
        let (store, crash_after_effect): (Arc<dyn steno::SecStore>, _) = match crash_point {
            Some(point) if point.event == crash_point::CrashEvent::AfterEffect => {
                (Arc::new(store), Some(point))
            }
            Some(point) => (
                Arc::new(crash_point::CrashingSecStore::new(store, point)),
                None,
            ),
            None => (Arc::new(store), None),
        };
        let metrics = NexusMetrics::new();
        let store = Arc::new(MeteredSecStore::new(store, Arc::clone(&metrics.sagas)));
        // Steno logs each saga's whole DAG at info as it is created: routine, so at debug (Nexus
        // logs its own "saga created" line with the saga's id and request).
        let sec_log =
            halyard_observability::http::info_at_debug(&log.new(o!("component" => "SEC")));
        let sec = steno::sec(sec_log, store);
        Arc::new(Nexus {
            id,
            incarnation: uuid::Uuid::new_v4(),
            superseded: std::sync::atomic::AtomicBool::new(false),
            pending_mapping_pushes: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            vmm_sleds: vmm::VmmSleds::default(),
            ownership,
            datastore,
            sec,
            registry: sagas::action_registry(),
            saga_retry: std::sync::Mutex::new(SagaRetryPolicy::default()),
            leftover_grace: std::sync::Mutex::new(background::leftover_release::DEFAULT_GRACE),
            sled_silence_bound: std::sync::Mutex::new(DEFAULT_SLED_SILENCE_BOUND),
            nexus_gone_after: std::sync::Mutex::new(
                background::nexus_heartbeat::DEFAULT_GONE_AFTER,
            ),
            last_heartbeat: std::sync::Mutex::new(std::time::Instant::now()),
            started_at: std::time::Instant::now(),
            sled_unresponsive_after: std::sync::Mutex::new(
                background::instance_watcher::DEFAULT_SLED_UNRESPONSIVE_AFTER,
            ),
            auto_restart_cooldown: std::sync::Mutex::new(
                background::instance_reincarnation::DEFAULT_AUTO_RESTART_COOLDOWN,
            ),
            metrics,
            background_tasks: BackgroundTasks::default(),
            injected_failure,
            crash_after_effect,
            lost_replies: crash_point::LostReplies::default(),
            sled_http,
            internal_front_secret: std::sync::OnceLock::new(),
            log,
        })
    }

    pub fn id(&self) -> NexusUuid {
        self.id
    }

    /// This process's run of the Nexus id (random per start).
    pub fn incarnation(&self) -> uuid::Uuid {
        self.incarnation
    }

    /// Whether another process has since registered with this Nexus's id.
    pub fn is_superseded(&self) -> bool {
        self.superseded.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Which sagas this Nexus owns, and which it dropped because another adopted them.
    pub fn saga_ownership(&self) -> &halyard_db_queries::SagaOwnership {
        &self.ownership
    }

    pub fn datastore(&self) -> &DataStore {
        &self.datastore
    }

    /// The saga executor (tests use it to inject errors into saga nodes).
    pub fn sec(&self) -> &steno::SecClient {
        &self.sec
    }

    pub fn log(&self) -> &Logger {
        &self.log
    }

    /// The HTTP client for sled agents (a Nexus made to resume another's sagas shares it).
    pub fn sled_http(&self) -> &reqwest::Client {
        &self.sled_http
    }

    pub(crate) fn set_internal_front_secret(&self, secret: halyard_tls::peer::FrontSecret) {
        let _ = self.internal_front_secret.set(secret);
    }

    /// The caller of an internal API request, as its certificate says (403 for a request
    /// that did not come through the TLS front).
    pub(crate) fn internal_peer(
        &self,
        request: &dropshot::RequestInfo,
    ) -> Result<halyard_tls::peer::Peer, dropshot::HttpError> {
        let secret = self.internal_front_secret.get().ok_or_else(|| {
            dropshot::HttpError::for_unavail(None, "the internal API is starting".to_string())
        })?;
        halyard_tls::peer::Peer::from_request(request, secret)
    }

    pub fn metrics(&self) -> &NexusMetrics {
        &self.metrics
    }

    pub fn background_tasks(&self) -> &BackgroundTasks {
        &self.background_tasks
    }

    /// Every metric as Prometheus text (gauges read from the database now).
    pub async fn metrics_response(
        &self,
    ) -> Result<http::Response<dropshot::Body>, dropshot::HttpError> {
        self.metrics.render(&self.datastore).await
    }

    /// How saga actions retry transient errors (the database or a sled agent out of reach).
    pub fn saga_retry_policy(&self) -> SagaRetryPolicy {
        *self.saga_retry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes how saga actions retry transient errors, for the sagas' next attempts (tests
    /// use a short forward budget to see a saga give up and unwind).
    pub fn set_saga_retry_policy(&self, policy: SagaRetryPolicy) {
        *self.saga_retry.lock().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// The crash point after a node's effects, if this process has one.
    pub(crate) fn crash_after_effect(&self) -> Option<&crash_point::CrashPoint> {
        self.crash_after_effect.as_ref()
    }

    pub(crate) fn lost_replies(&self) -> &crash_point::LostReplies {
        &self.lost_replies
    }
}
