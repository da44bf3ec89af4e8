//! Nexus's application logic: what each API call does, the saga runner, saga recovery, and
//! the retirement of VMMs that have ended.

pub mod background;
pub mod crash_point;
pub mod instance;
pub mod leftover;
pub mod sagas;
pub mod serial_console;
pub mod sled;

use crate::metrics::{MeteredSecStore, NexusMetrics};
use background::BackgroundTasks;
use halyard_common::Error;
use halyard_common::ids::{GenericUuid, NexusUuid, SledUuid, VmmUuid};
use halyard_db_queries::{DataStore, DbSecStore, saga_node_event_to_steno};
use sagas::retry::SagaRetryPolicy;
use sagas::{ActionRegistry, NexusSaga, SagaContext, create_saga_dag, error_from_action};
use slog::{Logger, error, info, o, warn};
use std::sync::Arc;
use std::time::Duration;
use steno::{SagaDag, SagaId, SagaResult, SagaResultOk};

/// The Nexus application: its database, its saga executor, and how it reaches sled agents.
pub struct Nexus {
    id: NexusUuid,
    datastore: DataStore,
    sec: steno::SecClient,
    registry: Arc<ActionRegistry>,
    /// How saga actions retry transient errors (see `sagas::retry`).
    saga_retry: std::sync::Mutex<SagaRetryPolicy>,
    /// How old a leftover (see `leftover`) must be before the leftover task releases it.
    leftover_grace: std::sync::Mutex<Duration>,
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

/// How long the retirement task leaves a VMM that ended to the report that ended it (which
/// retires it at once): the task re-drives retirements a crash or a failure interrupted, and
/// racing the report's own would only unregister the VMM twice.
pub const RETIREMENT_GRACE: Duration = Duration::from_secs(2);

/// The name of the task that re-drives VMM retirements.
pub const VMM_RETIREMENT_TASK: &str = "vmm_retirement";

/// A saga created and ready to start (tests inject faults into it first).
pub struct RunnableSaga {
    pub id: SagaId,
    pub dag: Arc<SagaDag>,
    future: futures::future::BoxFuture<'static, SagaResult>,
}

impl Nexus {
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
            datastore,
            sec,
            registry: sagas::action_registry(),
            saga_retry: std::sync::Mutex::new(SagaRetryPolicy::default()),
            leftover_grace: std::sync::Mutex::new(leftover::DEFAULT_GRACE),
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

    /// Test-only: the next time the action (or, for `LostReplyStep::Undo`, the undo) of node
    /// `node` of the prepared `saga` runs to its end, its effects stay but its caller gets a
    /// transient error instead of its result, once (a lost reply, see `crash_point`): the
    /// saga's retry runs it again.
    pub fn inject_lost_reply(
        &self,
        saga: &RunnableSaga,
        node: &str,
        step: crash_point::LostReplyStep,
    ) -> Result<(), Error> {
        let index = saga
            .dag
            .get_index(node)
            .map_err(|e| Error::internal(format!("cannot lose a reply: {e:#}")))?;
        let index = u32::try_from(index.index())
            .map_err(|e| Error::internal(format!("cannot lose a reply: {e}")))?;
        self.lost_replies.arm(saga.id, index, step);
        Ok(())
    }

    /// Test-only: the nodes (and steps) of saga `saga_id` whose reply was lost, in order.
    pub fn lost_replies_reported(
        &self,
        saga_id: SagaId,
    ) -> Vec<(String, crash_point::LostReplyStep)> {
        self.lost_replies.reported_in(saga_id)
    }

    // Sagas

    /// Creates a saga of kind `S` (recorded in the saga log) without starting it.
    pub async fn saga_prepare<S: NexusSaga>(
        self: &Arc<Self>,
        params: S::Params,
    ) -> Result<RunnableSaga, Error> {
        let dag = Arc::new(create_saga_dag::<S>(params)?);
        let id = SagaId::new_v4();
        let context = Arc::new(SagaContext {
            nexus: Arc::clone(self),
            saga_id: id,
            dag: Arc::clone(&dag),
        });
        let future = self
            .sec
            .saga_create(id, context, Arc::clone(&dag), Arc::clone(&self.registry))
            .await
            .map_err(|e| Error::unavailable(format!("cannot record saga {}: {e:#}", S::NAME)))?;
        // Links the request (whose id every process logs) to the saga (whose id the log and
        // omdb show).
        info!(self.log, "saga created"; "saga_id" => %id, "saga_name" => S::NAME,
            "request_id" => halyard_observability::request_id::current());
        if let Some(node) = self
            .injected_failure
            .as_ref()
            .and_then(|failure| failure.node_for(S::NAME))
        {
            let index = dag
                .get_index(node)
                .map_err(|e| Error::internal(format!("cannot inject a failure: {e:#}")))?;
            self.sec
                .saga_inject_error(id, index)
                .await
                .map_err(|e| Error::internal(format!("cannot inject a failure: {e:#}")))?;
        }
        Ok(RunnableSaga { id, dag, future })
    }

    /// Starts a prepared saga and waits for its outcome. A failed saga has fully unwound; its
    /// error is the failing action's. A saga whose undo also failed is stuck: reported as an
    /// internal error (and logged), never as a clean failure.
    pub async fn saga_execute(&self, saga: RunnableSaga) -> Result<SagaResultOk, Error> {
        self.sec
            .saga_start(saga.id)
            .await
            .map_err(|e| Error::internal(format!("cannot start saga {}: {e:#}", saga.id)))?;
        let result = saga.future.await;
        saga_outcome(&self.log, result)
    }

    pub async fn run_saga<S: NexusSaga>(
        self: &Arc<Self>,
        params: S::Params,
    ) -> Result<SagaResultOk, Error> {
        let saga = self.saga_prepare::<S>(params).await?;
        self.saga_execute(saga).await
    }

    /// Resumes every unfinished saga this Nexus owns, from the saga log. Returns how many.
    pub async fn resume_sagas(self: &Arc<Self>) -> Result<usize, Error> {
        let unfinished = self.datastore.saga_list_unfinished(self.id).await?;
        for saga in &unfinished {
            let events = self
                .datastore
                .saga_node_events(saga.id())
                .await?
                .iter()
                .map(saga_node_event_to_steno)
                .collect::<Result<Vec<_>, _>>()?;
            let id = SagaId::from_untyped_uuid(saga.id().into_untyped_uuid());
            let context = Arc::new(SagaContext {
                nexus: Arc::clone(self),
                saga_id: id,
                dag: Arc::new(serde_json::from_value::<SagaDag>(saga.dag.clone()).map_err(
                    |e| Error::internal(format!("cannot read the DAG of saga {id}: {e:#}")),
                )?),
            });
            let future = self
                .sec
                .saga_resume(
                    id,
                    context,
                    saga.dag.clone(),
                    Arc::clone(&self.registry),
                    events,
                )
                .await
                .map_err(|e| Error::internal(format!("cannot resume saga {id}: {e:#}")))?;
            self.sec
                .saga_start(id)
                .await
                .map_err(|e| Error::internal(format!("cannot start saga {id}: {e:#}")))?;
            self.metrics.sagas.resumed(id, &saga.name, &saga.dag);
            info!(self.log, "resumed saga"; "saga_id" => %id, "saga_name" => &saga.name);
            let log = self.log.new(o!("saga_id" => id.to_string()));
            tokio::spawn(async move {
                let _ = saga_outcome(&log, future.await);
            });
        }
        Ok(unfinished.len())
    }

    /// The sagas the executor holds in memory, oldest id first.
    pub async fn sagas_in_memory(&self) -> Vec<halyard_nexus_internal_api::SagaInMemory> {
        let limit = std::num::NonZeroU32::new(10_000).expect("non-zero");
        self.sec
            .saga_list(None, limit)
            .await
            .into_iter()
            .map(|view| {
                let (state, status) = match &view.state {
                    steno::SagaStateView::Ready { status } => ("ready", status.to_string()),
                    steno::SagaStateView::Running { status } => ("running", status.to_string()),
                    steno::SagaStateView::Done { status, result } => {
                        let state = match &result.kind {
                            Ok(_) => "succeeded",
                            Err(e) if e.undo_failure.is_some() => "stuck",
                            Err(_) => "failed",
                        };
                        (state, status.to_string())
                    }
                };
                halyard_nexus_internal_api::SagaInMemory {
                    id: halyard_common::ids::SagaUuid::from_untyped_uuid(
                        view.id.into_untyped_uuid(),
                    ),
                    state: state.to_string(),
                    status,
                }
            })
            .collect()
    }

    // Sled agents

    /// A client for a sled's agent, at the address it last registered. `Conflict` for an
    /// expunged sled: nothing is asked of a sled declared gone.
    pub async fn sled_client(
        &self,
        sled_id: SledUuid,
    ) -> Result<halyard_sled_agent_client::Client, Error> {
        let sled = self.datastore.sled_fetch(sled_id).await?;
        if sled.is_expunged() {
            return Err(Error::conflict(format!(
                "sled {sled_id} was expunged (declared gone for good); nothing runs there"
            )));
        }
        Ok(halyard_sled_agent_client::Client::new_with_client(
            &format!("https://{}", sled.address()),
            self.sled_http.clone(),
        ))
    }

    /// Fails with `Conflict` if the VMM was retired meanwhile (e.g. its instance failed or was
    /// stopped while a saga prepared it): registering it then would leave a VMM running that
    /// the database has given up on.
    pub(crate) async fn ensure_vmm_not_retired(&self, vmm_id: VmmUuid) -> Result<(), Error> {
        let vmm = self.datastore.vmm_fetch(vmm_id).await?;
        if vmm.time_deleted.is_some() {
            return Err(Error::conflict(format!(
                "VMM {vmm_id} was retired while it was being prepared; retry"
            )));
        }
        Ok(())
    }

    /// Unregisters a VMM from its sled agent (idempotent there), retrying briefly. On an
    /// expunged sled there is nothing to unregister: the sled is gone, and what it ran counts
    /// for nothing.
    pub async fn unregister_vmm(&self, sled_id: SledUuid, vmm_id: VmmUuid) -> Result<(), Error> {
        if self.datastore.sled_fetch(sled_id).await?.is_expunged() {
            return Ok(());
        }
        let client = self.sled_client(sled_id).await?;
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=4 {
            match client.vmm_unregister(&vmm_id).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt == 4 => return Err(sled_agent_error(e)),
                Err(e) => {
                    self.metrics.transient_error("vmm_unregister");
                    warn!(self.log, "cannot unregister VMM; retrying";
                        "propolis_id" => %vmm_id, "sled_id" => %sled_id, "error" => %e);
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Re-drives the retirement of VMMs that ended but were not retired (a crash between the
    /// report and the retirement), forever.
    pub(crate) fn spawn_retirement_task(
        self: &Arc<Self>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_background_task(
            VMM_RETIREMENT_TASK,
            "retires VMMs that ended (destroyed, failed) but were not retired, and migration \
             targets whose source was retired: unregisters them from their sled agent, \
             releases their reservation, clears their instance's pointer",
            interval,
            |nexus| {
                Box::pin(async move {
                    let retired = nexus.retire_ended_vmms().await?;
                    Ok(match retired {
                        0 => "nothing to retire".to_string(),
                        n => format!("retired {n} ended VMM(s)"),
                    })
                })
            },
        )
    }

    /// Retires every VMM that reached a terminal state more than [`RETIREMENT_GRACE`] ago but
    /// was not retired yet.
    pub async fn retire_ended_vmms(&self) -> Result<usize, Error> {
        let ended_before = chrono::Utc::now()
            - chrono::Duration::from_std(RETIREMENT_GRACE).expect("a few seconds");
        let ended = self
            .datastore
            .vmm_list_unretired_terminal(ended_before)
            .await?;
        for vmm in &ended {
            info!(self.log, "retiring an ended VMM"; "propolis_id" => %vmm.id(), "state" => %vmm.state());
            self.retire_vmm(vmm.sled_id(), vmm.id(), vmm.state())
                .await?;
        }
        // Targets that never reached a terminal state but whose source is retired (its
        // retirement failed before it retired them, or Nexus crashed in between).
        let orphans = self.datastore.vmm_list_orphaned_targets(None).await?;
        for target in &orphans {
            self.retire_orphaned_target(target).await?;
        }
        Ok(ended.len() + orphans.len())
    }

    /// Retires an ended VMM: unregisters it from its sled agent, then (in one transaction)
    /// marks it retired, releases its reservation and clears the instance's pointer to it.
    /// Idempotent. A migration target orphaned by the end of its source is retired too.
    pub async fn retire_vmm(
        &self,
        sled_id: SledUuid,
        vmm_id: VmmUuid,
        final_state: halyard_common::VmmState,
    ) -> Result<(), Error> {
        self.unregister_vmm(sled_id, vmm_id).await?;
        self.datastore.vmm_retire(vmm_id, final_state).await?;
        // By query, not from what this retirement cleared: an earlier attempt may have
        // cleared the instance's pointer to the target and then failed to unregister it.
        for target in self
            .datastore
            .vmm_list_orphaned_targets(Some(vmm_id))
            .await?
        {
            self.retire_orphaned_target(&target).await?;
        }
        Ok(())
    }

    async fn retire_orphaned_target(&self, target: &halyard_db_model::Vmm) -> Result<(), Error> {
        info!(self.log, "retiring a migration target whose source was retired";
            "propolis_id" => %target.id(), "sled_id" => %target.sled_id(),
            "instance_id" => %target.instance_id());
        self.unregister_vmm(target.sled_id(), target.id()).await?;
        self.datastore
            .vmm_retire(target.id(), halyard_common::VmmState::SagaUnwound)
            .await?;
        Ok(())
    }
}

fn saga_outcome(log: &Logger, result: SagaResult) -> Result<SagaResultOk, Error> {
    match result.kind {
        Ok(ok) => Ok(ok),
        Err(failed) => {
            if let Some((node, undo_error)) = &failed.undo_failure {
                error!(log, "saga is stuck: an undo action failed";
                    "saga_id" => %result.saga_id, "node" => ?node, "error" => %undo_error,
                    "first_failure" => %failed.error_source);
                return Err(Error::internal(format!(
                    "saga {} is stuck: undoing {node:?} failed ({undo_error}) after {} failed",
                    result.saga_id,
                    failed.error_node_name.as_ref()
                )));
            }
            Err(error_from_action(failed.error_source))
        }
    }
}

/// Maps a sled agent client error to an API error: the sled agent's own 4xx keeps its
/// meaning; anything else means the sled agent could not be reached or failed.
pub(crate) fn sled_agent_error<E: std::fmt::Debug>(e: progenitor_client::Error<E>) -> Error {
    match e.status().map(|s| s.as_u16()) {
        Some(404) => Error::conflict(format!("the sled agent does not know this VMM: {e}")),
        Some(status) if (400..500).contains(&status) => {
            Error::conflict(format!("the sled agent refused: {e}"))
        }
        _ => Error::unavailable(format!("sled agent: {e}")),
    }
}
