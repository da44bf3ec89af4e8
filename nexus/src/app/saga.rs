//! The saga runner: creating a saga (recorded in the saga log) and running it to its outcome,
//! resuming this Nexus's unfinished sagas after a restart, the sagas the executor holds in
//! memory, and the test-only lost replies injected into a prepared saga.

use super::sagas::{NexusSaga, SagaContext, create_saga_dag, error_from_action};
use super::{Nexus, crash_point};
use halyard_common::Error;
use halyard_common::ids::{GenericUuid, SagaUuid};
use halyard_db_model::Saga;
use halyard_db_queries::saga_node_event_to_steno;
use slog::{Logger, error, info, o, warn};
use std::sync::Arc;
use steno::{SagaDag, SagaId, SagaResult, SagaResultOk};

/// A saga created and ready to start (tests inject faults into it first).
pub struct RunnableSaga {
    pub id: SagaId,
    pub dag: Arc<SagaDag>,
    future: futures::future::BoxFuture<'static, SagaResult>,
}

impl Nexus {
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
        if self.is_superseded() {
            return Err(Error::unavailable(
                "this Nexus was superseded by another process started with its id; it starts \
                 no saga",
            ));
        }
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
        self.inject_failure(id, S::NAME, &dag).await?;
        Ok(RunnableSaga { id, dag, future })
    }

    /// Test-only: makes the node `HALYARD_FAIL_AT` names fail in saga `id` (named `name`),
    /// whether this Nexus created, resumed or adopted it.
    async fn inject_failure(&self, id: SagaId, name: &str, dag: &SagaDag) -> Result<(), Error> {
        let Some(node) = self
            .injected_failure
            .as_ref()
            .and_then(|failure| failure.node_for(name))
        else {
            return Ok(());
        };
        let index = dag
            .get_index(node)
            .map_err(|e| Error::internal(format!("cannot inject a failure: {e:#}")))?;
        self.sec
            .saga_inject_error(id, index)
            .await
            .map_err(|e| Error::internal(format!("cannot inject a failure: {e:#}")))
    }

    /// Starts a prepared saga and waits for its outcome. A failed saga has fully unwound; its
    /// error is the failing action's. A saga whose undo also failed is stuck: reported as an
    /// internal error (and logged), never as a clean failure.
    pub async fn saga_execute(&self, saga: RunnableSaga) -> Result<SagaResultOk, Error> {
        self.sec
            .saga_start(saga.id)
            .await
            .map_err(|e| Error::internal(format!("cannot start saga {}: {e:#}", saga.id)))?;
        let id = saga.id;
        tokio::select! {
            result = saga.future => saga_outcome(&self.log, result),
            () = self.ownership.wait_dropped(saga_uuid(id)) => Err(Error::unavailable(format!(
                "saga {id} was adopted by another Nexus (this one was thought gone), which \
                 drives it to its end; look for its outcome there"
            ))),
        }
    }

    pub async fn run_saga<S: NexusSaga>(
        self: &Arc<Self>,
        params: S::Params,
    ) -> Result<SagaResultOk, Error> {
        let saga = self.saga_prepare::<S>(params).await?;
        self.saga_execute(saga).await
    }

    /// Takes over the unfinished sagas this Nexus's id owns (bumping their adoption
    /// generation, which fences an earlier process with the same id) and resumes them from
    /// the saga log. A saga that cannot be resumed is marked so (see [`Nexus::resume_saga`])
    /// and does not stop the others. Returns how many were resumed.
    pub async fn resume_sagas(self: &Arc<Self>) -> Result<usize, Error> {
        let own = self.datastore.saga_take_own(self.id).await?;
        Ok(self.resume_each(own).await)
    }

    /// Adopts the unfinished sagas of every Nexus silent for longer than `gone_after` (one
    /// statement: no other Nexus can take the same ones) and resumes them. Returns how many
    /// were adopted.
    pub async fn adopt_sagas_of_gone_nexus(
        self: &Arc<Self>,
        gone_after: std::time::Duration,
    ) -> Result<usize, Error> {
        let adopted = self
            .datastore
            .saga_adopt_from_gone(self.id, gone_after)
            .await?;
        let count = adopted.len();
        for saga in &adopted {
            info!(self.log, "adopted saga from a Nexus gone silent"; "saga_id" => %saga.id(),
                "saga_name" => &saga.name, "previous_owner" => %saga.creator.0,
                "adopt_generation" => saga.adopt_generation.0.as_u64());
        }
        self.resume_each(adopted).await;
        Ok(count)
    }

    /// Resumes each saga this Nexus now owns; marks those that cannot be. Returns how many
    /// resumed.
    async fn resume_each(self: &Arc<Self>, sagas: Vec<Saga>) -> usize {
        let mut resumed = 0;
        for saga in sagas {
            let id = saga.id();
            // A transient error (the database out of reach) is tried again a few times; one
            // that outlasts them leaves the saga unmarked, to be resumed at the next start.
            let mut result = self.resume_saga(&saga).await;
            for _ in 0..RESUME_RETRIES {
                match &result {
                    Err(e) if e.is_retryable() => {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        result = self.resume_saga(&saga).await;
                    }
                    _ => break,
                }
            }
            match result {
                Ok(()) => {
                    resumed += 1;
                    if saga.resume_failure.is_some() {
                        let _ = self.datastore.saga_set_resume_failure(id, None).await;
                    }
                }
                Err(e) if e.is_retryable() => {
                    error!(self.log, "cannot resume saga now (the next start tries again)";
                        "saga_id" => %id, "saga_name" => &saga.name, "error" => %e);
                }
                Err(e) => {
                    error!(self.log, "cannot resume saga; marked unresumable";
                        "saga_id" => %id, "saga_name" => &saga.name, "error" => %e);
                    if let Err(mark) = self
                        .datastore
                        .saga_set_resume_failure(id, Some(&e.to_string()))
                        .await
                    {
                        warn!(self.log, "cannot mark saga unresumable"; "saga_id" => %id,
                            "error" => %mark);
                    }
                }
            }
        }
        resumed
    }

    /// Resumes one saga this Nexus owns (at the generation in `saga`) from its log, and runs
    /// it on a task of its own.
    async fn resume_saga(self: &Arc<Self>, saga: &Saga) -> Result<(), Error> {
        let events = self
            .datastore
            .saga_node_events(saga.id())
            .await?
            .iter()
            .map(saga_node_event_to_steno)
            .collect::<Result<Vec<_>, _>>()?;
        let id = SagaId::from_untyped_uuid(saga.id().into_untyped_uuid());
        let dag = serde_json::from_value::<SagaDag>(saga.dag.clone())
            .map_err(|e| Error::internal(format!("cannot read the DAG of saga {id}: {e:#}")))?;
        let dag = Arc::new(dag);
        let context = Arc::new(SagaContext {
            nexus: Arc::clone(self),
            saga_id: id,
            dag: Arc::clone(&dag),
        });
        self.ownership.own(saga.id(), saga.adopt_generation.0);
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
        self.inject_failure(id, &saga.name, &dag).await?;
        self.sec
            .saga_start(id)
            .await
            .map_err(|e| Error::internal(format!("cannot start saga {id}: {e:#}")))?;
        self.metrics.sagas.resumed(id, &saga.name, &saga.dag);
        info!(self.log, "resumed saga"; "saga_id" => %id, "saga_name" => &saga.name,
            "adopt_generation" => saga.adopt_generation.0.as_u64());
        let log = self.log.new(o!("saga_id" => id.to_string()));
        let ownership = Arc::clone(&self.ownership);
        tokio::spawn(async move {
            tokio::select! {
                result = future => {
                    let _ = saga_outcome(&log, result);
                }
                () = ownership.wait_dropped(saga_uuid(id)) => {}
            }
        });
        Ok(())
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
}

/// How many more times a saga whose resume met a transient error is tried, a second apart.
const RESUME_RETRIES: usize = 5;

fn saga_uuid(id: SagaId) -> SagaUuid {
    SagaUuid::from_untyped_uuid(id.into_untyped_uuid())
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
