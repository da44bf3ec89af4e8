//! steno's `SecStore`, backed by the saga log tables, so sagas survive a Nexus crash.
//!
//! steno waits for each event to be recorded before it moves on, and `record_event` and
//! `saga_update` cannot return errors: so while the database is unreachable they retry (with
//! capped backoff) until the write lands. Writes are idempotent, so a retry after a write that
//! did land but whose reply was lost is harmless.
//!
//! Node events are written in batches (group commit): an event is handed to one of a few
//! writer tasks, which takes every event waiting at that moment (of any saga) and writes them
//! in one multi-row `INSERT`, one commit; `record_event` returns only once the statement that
//! holds its event has committed, exactly as when each event was written alone, so steno
//! still moves on only after its event is in the log. Nothing waits to fill a batch: an idle
//! writer writes a lone event at once; batches form only while writes are already in flight
//! (under load, when they save the most). A batch that fails is written again event by event,
//! so one event the database refuses never holds up the others.
//!
//! A node's `started` event is not written on its own. It waits (in this Nexus's memory) for
//! the saga's next event, usually the node's result, and goes into the same statement: one
//! commit per node instead of two. So does the result of steno's start node, which does
//! nothing and whose output is the saga's parameters: a new saga's first commit after its
//! record holds its start node and its first node's result. If an action is still running
//! after [`STARTED_WRITE_DELAY`], what waits is written then, so that the log (and omdb) shows
//! which node a slow saga is in. This is safe because steno treats a node whose log has
//! `started` but no result exactly like one that never started (on resume it runs the action
//! again, and every action is idempotent), and the start node's result is the same every time
//! it is made. Events can be missing only from the end of a saga's log, for nodes still running
//! when the process died, and only while the saga moves forward: once a node fails, every
//! event before it is written with the failure.
//!
//! Every write is fenced: it carries this Nexus's id and the saga's adoption generation as this
//! Nexus knows it ([`SagaOwnership`]), and the database takes it only while both still match
//! the saga's row. When another Nexus adopted the saga (this one was thought gone, or another
//! process took over its id), the write is refused and this Nexus drops the saga: the write
//! never returns to steno, so the saga goes no further here, and whoever waits for its outcome
//! is told the saga moved ([`SagaOwnership::wait_dropped`]).

use crate::{DataStore, EventsWritten};
use async_trait::async_trait;
use chrono::Utc;
use halyard_common::Generation;
use halyard_common::ids::{GenericUuid, NexusUuid, SagaUuid};
use halyard_db_model::{Saga, SagaNodeEvent, SagaState};
use slog::{Logger, o, warn};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use steno::{SagaCachedState, SagaCreateParams, SagaId, SagaNodeEventType};
use tokio::sync::{mpsc, oneshot};

/// How many tasks write node events, each one batch at a time.
const EVENT_WRITERS: usize = 4;
/// The most events one statement writes (each size's statement is prepared once).
const MAX_EVENT_BATCH: usize = 32;
/// How long a node's `started` event may wait for the saga's next event before it is written
/// on its own (see the module docs).
pub const STARTED_WRITE_DELAY: Duration = Duration::from_millis(200);

/// Which sagas this Nexus owns at which adoption generation, and which it dropped because
/// another Nexus adopted them.
#[derive(Debug)]
pub struct SagaOwnership {
    /// The sagas this Nexus runs (created, resumed or adopted), each at its generation,
    /// until they finish.
    generations: Mutex<HashMap<SagaUuid, Generation>>,
    dropped: Mutex<HashSet<SagaUuid>>,
    /// Bumped at each drop, to wake whoever waits for one.
    drops: tokio::sync::watch::Sender<u64>,
}

impl Default for SagaOwnership {
    fn default() -> Self {
        SagaOwnership {
            generations: Mutex::new(HashMap::new()),
            dropped: Mutex::new(HashSet::new()),
            drops: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl SagaOwnership {
    /// This Nexus runs `saga` at `generation` (it resumed or adopted it).
    pub fn own(&self, saga: SagaUuid, generation: Generation) {
        lock(&self.generations).insert(saga, generation);
    }

    /// The adoption generation at which this Nexus runs `saga`.
    pub fn generation_of(&self, saga: SagaUuid) -> Generation {
        self.generation(saga)
    }

    fn generation(&self, saga: SagaUuid) -> Generation {
        lock(&self.generations)
            .get(&saga)
            .copied()
            .unwrap_or_else(Generation::new)
    }

    /// Every saga this Nexus runs now, at its generation.
    pub fn owned(&self) -> Vec<(SagaUuid, Generation)> {
        lock(&self.generations)
            .iter()
            .map(|(saga, generation)| (*saga, *generation))
            .collect()
    }

    fn finished(&self, saga: SagaUuid) {
        lock(&self.generations).remove(&saga);
    }

    /// This Nexus gives `saga` up: another adopted it.
    pub fn drop_saga(&self, saga: SagaUuid) {
        lock(&self.generations).remove(&saga);
        lock(&self.dropped).insert(saga);
        self.drops.send_modify(|n| *n += 1);
    }

    /// Whether this Nexus dropped `saga` (another adopted it).
    pub fn is_dropped(&self, saga: SagaUuid) -> bool {
        lock(&self.dropped).contains(&saga)
    }

    /// Returns once this Nexus has dropped `saga` (never, if it keeps it).
    pub async fn wait_dropped(&self, saga: SagaUuid) {
        let mut drops = self.drops.subscribe();
        while !self.is_dropped(saga) {
            if drops.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every change under these locks is one insert or removal.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The saga log of one Nexus (one saga execution coordinator).
#[derive(Debug, Clone)]
pub struct DbSecStore {
    datastore: DataStore,
    sec_id: NexusUuid,
    ownership: Arc<SagaOwnership>,
    /// Where node events wait for a writer; the writers start with the first event.
    events: Arc<OnceLock<mpsc::UnboundedSender<PendingEvent>>>,
    /// Each saga's events that wait for its next one (see the module docs).
    deferred: Arc<Mutex<HashMap<SagaUuid, Vec<SagaNodeEvent>>>>,
    /// The start node of each saga this store created, from its DAG: its result waits too.
    start_nodes: Arc<Mutex<HashMap<SagaUuid, i64>>>,
    log: Logger,
}

/// Node events of one saga to be written in one statement, and who waits for them (told
/// whether the write was refused: the saga is no longer this Nexus's).
#[derive(Debug)]
struct PendingEvent {
    rows: Vec<SagaNodeEvent>,
    written: oneshot::Sender<Result<Written, halyard_common::Error>>,
}

/// What became of one log write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Yes,
    /// Another Nexus adopted the saga: the write was refused.
    Refused,
}

impl DbSecStore {
    pub fn new(datastore: DataStore, sec_id: NexusUuid, log: &Logger) -> DbSecStore {
        DbSecStore {
            datastore,
            sec_id,
            ownership: Arc::new(SagaOwnership::default()),
            events: Arc::new(OnceLock::new()),
            deferred: Arc::new(Mutex::new(HashMap::new())),
            start_nodes: Arc::new(Mutex::new(HashMap::new())),
            log: log.new(o!("component" => "SecStore")),
        }
    }

    /// Which sagas this store's Nexus owns, and which it dropped.
    pub fn ownership(&self) -> &Arc<SagaOwnership> {
        &self.ownership
    }

    /// Writes node events of one saga in one statement, in whatever batch a writer puts them
    /// (see the module docs).
    async fn write_events(
        &self,
        rows: Vec<SagaNodeEvent>,
    ) -> Result<Written, halyard_common::Error> {
        let queue = self.events.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
            for _ in 0..EVENT_WRITERS {
                tokio::spawn(event_writer(self.datastore.clone(), Arc::clone(&receiver)));
            }
            sender
        });
        let (written, done) = oneshot::channel();
        if queue.send(PendingEvent { rows, written }).is_err() {
            return Err(halyard_common::Error::unavailable(
                "the saga log's writers have stopped",
            ));
        }
        done.await.unwrap_or_else(|_| {
            Err(halyard_common::Error::unavailable(
                "the saga log's writer stopped before writing the event",
            ))
        })
    }

    /// Runs a log write of saga `saga` until it is written. If it is refused (another Nexus
    /// adopted the saga), this Nexus drops the saga and the write never returns: steno must
    /// not go on with a saga that is no longer this Nexus's.
    async fn until_written<F, Fut>(&self, saga: SagaUuid, what: &str, mut write: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Written, halyard_common::Error>>,
    {
        let mut delay = Duration::from_millis(50);
        loop {
            match write().await {
                Ok(Written::Yes) => return,
                Ok(Written::Refused) => {
                    warn!(self.log, "saga adopted by another Nexus: its log refused this \
                        Nexus's write, so this Nexus drops the saga";
                        "saga_id" => %saga, "what" => what);
                    self.ownership.drop_saga(saga);
                    lock(&self.deferred).remove(&saga);
                    lock(&self.start_nodes).remove(&saga);
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    warn!(self.log, "saga log write failed; retrying";
                        "what" => what, "error" => %e, "retry_in_ms" => delay.as_millis());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

impl DbSecStore {
    /// Writes `rows` of `saga` together with the saga's deferred events, in one statement,
    /// until written (see [`DbSecStore::until_written`]).
    async fn write_with_deferred(&self, saga: SagaUuid, what: &str, mut rows: Vec<SagaNodeEvent>) {
        if let Some(waiting) = lock(&self.deferred).remove(&saga) {
            rows.splice(0..0, waiting);
        }
        if rows.is_empty() {
            return;
        }
        let rows = &rows;
        self.until_written(saga, what, || async move {
            self.write_events(rows.clone()).await
        })
        .await;
    }

    /// Whether `event` may wait for its saga's next one (see the module docs).
    fn may_wait(&self, saga: SagaUuid, event: &steno::SagaNodeEvent) -> bool {
        match event.event_type {
            SagaNodeEventType::Started => true,
            SagaNodeEventType::Succeeded(_) => lock(&self.start_nodes)
                .get(&saga)
                .is_some_and(|&start| start == i64::from(u32::from(event.node_id))),
            _ => false,
        }
    }

    /// After [`STARTED_WRITE_DELAY`], if node `start`'s `started` still waits (its action is
    /// slow, and the log should say which node the saga is in), writes it and whatever else
    /// of its saga waits. The events stay deferred (the next write carries them again,
    /// harmlessly: a repeated event is left alone), so no later event commits without them.
    async fn write_if_slow(self, start: SagaNodeEvent) {
        tokio::time::sleep(STARTED_WRITE_DELAY).await;
        let saga = start.saga_id.0;
        let mut delay = Duration::from_millis(50);
        loop {
            let waiting = lock(&self.deferred).get(&saga).cloned().unwrap_or_default();
            let still_waits = waiting
                .iter()
                .any(|row| row.node_id == start.node_id && row.event_type == start.event_type);
            if !still_waits || self.ownership.is_dropped(saga) {
                return;
            }
            match self.write_events(waiting).await {
                Ok(Written::Yes) => return,
                // The saga's next write finds out too, and drops the saga.
                Ok(Written::Refused) => return,
                Err(e) => {
                    warn!(self.log, "saga log write of a slow node's start failed; retrying";
                        "saga_id" => %saga, "node_id" => start.node_id, "error" => %e,
                        "retry_in_ms" => delay.as_millis());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn saga_uuid(id: SagaId) -> SagaUuid {
    SagaUuid::from_untyped_uuid(id.into_untyped_uuid())
}

fn saga_state(state: SagaCachedState) -> SagaState {
    match state {
        SagaCachedState::Running => SagaState::Running,
        SagaCachedState::Unwinding => SagaState::Unwinding,
        SagaCachedState::Done => SagaState::Done,
    }
}

#[async_trait]
impl steno::SecStore for DbSecStore {
    async fn saga_create(&self, params: SagaCreateParams) -> Result<(), anyhow::Error> {
        let now = Utc::now();
        let saga = Saga {
            id: saga_uuid(params.id).into(),
            creator: self.sec_id.into(),
            current_sec: self.sec_id.into(),
            name: params.name.to_string(),
            dag: params.dag,
            saga_state: saga_state(params.state).into(),
            adopt_generation: Generation::new().into(),
            time_created: now,
            adopt_time: now,
            resume_failure: None,
        };
        self.datastore.saga_create(&saga).await?;
        self.ownership.own(saga.id.0, Generation::new());
        // steno's DAG names its start node by index (a node id of the log).
        if let Some(start) = saga
            .dag
            .get("start_node")
            .and_then(serde_json::Value::as_i64)
        {
            lock(&self.start_nodes).insert(saga.id.0, start);
        }
        Ok(())
    }

    async fn record_event(&self, event: steno::SagaNodeEvent) {
        let (event_type, data) = match &event.event_type {
            SagaNodeEventType::Succeeded(output) => ("succeeded", Some((**output).clone())),
            SagaNodeEventType::Failed(error) => ("failed", serde_json::to_value(error).ok()),
            SagaNodeEventType::UndoFailed(error) => {
                ("undo_failed", serde_json::to_value(error).ok())
            }
            other => (other.label(), None),
        };
        let saga = saga_uuid(event.saga_id);
        let row = SagaNodeEvent {
            saga_id: saga.into(),
            node_id: i64::from(u32::from(event.node_id)),
            event_type: event_type.to_string(),
            data,
            event_time: Utc::now(),
            creator: self.sec_id.into(),
            adopt_generation: self.ownership.generation(saga).into(),
        };
        if self.may_wait(saga, &event) {
            lock(&self.deferred)
                .entry(saga)
                .or_default()
                .push(row.clone());
            if matches!(event.event_type, SagaNodeEventType::Started) {
                tokio::spawn(self.clone().write_if_slow(row));
            }
            return;
        }
        self.write_with_deferred(saga, "record_event", vec![row])
            .await;
    }

    async fn saga_update(&self, id: SagaId, update: SagaCachedState) {
        let id = saga_uuid(id);
        // The log first: a saga's cached state never runs ahead of its events.
        self.write_with_deferred(id, "saga_update", Vec::new())
            .await;
        let generation = self.ownership.generation(id);
        self.until_written(id, "saga_update", || async move {
            let applied = self
                .datastore
                .saga_update_state(id, saga_state(update), self.sec_id, generation)
                .await?;
            Ok(if applied {
                Written::Yes
            } else {
                Written::Refused
            })
        })
        .await;
        if update == SagaCachedState::Done {
            self.ownership.finished(id);
            lock(&self.deferred).remove(&id);
            lock(&self.start_nodes).remove(&id);
        }
    }
}

/// One writer of node events: takes a waiting event and every other one waiting with it (up
/// to [`MAX_EVENT_BATCH`]), writes them in one statement and tells each waiter. Ends when the
/// store is gone.
async fn event_writer(
    datastore: DataStore,
    receiver: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<PendingEvent>>>,
) {
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_EVENT_BATCH {
                match receiver.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            batch
        };
        let rows: Vec<&SagaNodeEvent> = batch.iter().flat_map(|p| &p.rows).collect();
        let result = datastore.saga_record_events(&rows).await;
        if result.is_err() && batch.len() > 1 {
            // Whatever failed, let it fail only the event it concerns.
            for pending in batch {
                let rows: Vec<&SagaNodeEvent> = pending.rows.iter().collect();
                let result = datastore.saga_record_events(&rows).await;
                let _ = pending
                    .written
                    .send(result.map(|w| written(&w, &pending.rows)));
            }
            continue;
        }
        for pending in batch {
            let result = result.as_ref().map(|w| written(w, &pending.rows));
            let _ = pending.written.send(result.map_err(Clone::clone));
        }
    }
}

fn written(batch: &EventsWritten, rows: &[SagaNodeEvent]) -> Written {
    if rows
        .iter()
        .any(|row| batch.refused.contains(&row.saga_id.0))
    {
        Written::Refused
    } else {
        Written::Yes
    }
}

/// Turns a logged event back into steno's, for `saga_resume`.
pub fn saga_node_event_to_steno(
    row: &SagaNodeEvent,
) -> Result<steno::SagaNodeEvent, halyard_common::Error> {
    let bad = |why: String| {
        halyard_common::Error::internal(format!(
            "saga {} node {} has an unreadable {} event: {why}",
            row.saga_id.0, row.node_id, row.event_type
        ))
    };
    // steno serializes event types as externally tagged enums: "started", or
    // {"succeeded": <output>}; rebuild that shape and let serde do the rest.
    let json = match &row.data {
        Some(data) => serde_json::json!({ row.event_type.clone(): data }),
        None => serde_json::Value::String(row.event_type.clone()),
    };
    let event_type: SagaNodeEventType =
        serde_json::from_value(json).map_err(|e| bad(e.to_string()))?;
    let node_id = u32::try_from(row.node_id).map_err(|e| bad(e.to_string()))?;
    Ok(steno::SagaNodeEvent {
        saga_id: SagaId::from_untyped_uuid(row.saga_id.0.into_untyped_uuid()),
        node_id: node_id.into(),
        event_type,
    })
}
