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
    log: Logger,
}

/// A node event waiting to be written, and who waits for it (told whether the write was
/// refused: the saga is no longer this Nexus's).
#[derive(Debug)]
struct PendingEvent {
    row: SagaNodeEvent,
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
            log: log.new(o!("component" => "SecStore")),
        }
    }

    /// Which sagas this store's Nexus owns, and which it dropped.
    pub fn ownership(&self) -> &Arc<SagaOwnership> {
        &self.ownership
    }

    /// Writes one node event, in whatever batch a writer puts it (see the module docs).
    async fn write_event(&self, row: SagaNodeEvent) -> Result<Written, halyard_common::Error> {
        let queue = self.events.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
            for _ in 0..EVENT_WRITERS {
                tokio::spawn(write_events(self.datastore.clone(), Arc::clone(&receiver)));
            }
            sender
        });
        let (written, done) = oneshot::channel();
        if queue.send(PendingEvent { row, written }).is_err() {
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
        let row = &row;
        self.until_written(saga, "record_event", || async move {
            self.write_event(row.clone()).await
        })
        .await;
    }

    async fn saga_update(&self, id: SagaId, update: SagaCachedState) {
        let id = saga_uuid(id);
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
        }
    }
}

/// One writer of node events: takes a waiting event and every other one waiting with it (up
/// to [`MAX_EVENT_BATCH`]), writes them in one statement and tells each waiter. Ends when the
/// store is gone.
async fn write_events(
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
        let rows: Vec<&SagaNodeEvent> = batch.iter().map(|p| &p.row).collect();
        let result = datastore.saga_record_events(&rows).await;
        if result.is_err() && batch.len() > 1 {
            // Whatever failed, let it fail only the event it concerns.
            for pending in batch {
                let result = datastore.saga_record_events(&[&pending.row]).await;
                let _ = pending
                    .written
                    .send(result.map(|w| written(&w, &pending.row)));
            }
            continue;
        }
        for pending in batch {
            let result = result.as_ref().map(|w| written(w, &pending.row));
            let _ = pending.written.send(result.map_err(Clone::clone));
        }
    }
}

fn written(batch: &EventsWritten, row: &SagaNodeEvent) -> Written {
    if batch.refused.contains(&row.saga_id.0) {
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
