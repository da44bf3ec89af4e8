//! steno's `SecStore`, backed by the saga log tables, so sagas survive a Nexus crash.
//!
//! steno waits for each event to be recorded before it moves on, and `record_event` and
//! `saga_update` cannot return errors: so while the database is unreachable they retry (with
//! capped backoff) until the write lands. Writes are idempotent, so a retry after a write that
//! did land but whose reply was lost is harmless.

use crate::DataStore;
use async_trait::async_trait;
use chrono::Utc;
use halyard_common::Generation;
use halyard_common::ids::{GenericUuid, NexusUuid, SagaUuid};
use halyard_db_model::{Saga, SagaNodeEvent, SagaState};
use slog::{Logger, o, warn};
use std::future::Future;
use std::time::Duration;
use steno::{SagaCachedState, SagaCreateParams, SagaId, SagaNodeEventType};

/// The saga log of one Nexus (one saga execution coordinator).
#[derive(Debug, Clone)]
pub struct DbSecStore {
    datastore: DataStore,
    sec_id: NexusUuid,
    log: Logger,
}

impl DbSecStore {
    pub fn new(datastore: DataStore, sec_id: NexusUuid, log: &Logger) -> DbSecStore {
        DbSecStore {
            datastore,
            sec_id,
            log: log.new(o!("component" => "SecStore")),
        }
    }

    /// Runs a log write until it succeeds.
    async fn until_written<F, Fut>(&self, what: &str, mut write: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), halyard_common::Error>>,
    {
        let mut delay = Duration::from_millis(50);
        loop {
            match write().await {
                Ok(()) => return,
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
        };
        Ok(self.datastore.saga_create(&saga).await?)
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
        let row = SagaNodeEvent {
            saga_id: saga_uuid(event.saga_id).into(),
            node_id: i64::from(u32::from(event.node_id)),
            event_type: event_type.to_string(),
            data,
            event_time: Utc::now(),
            creator: self.sec_id.into(),
        };
        let row = &row;
        self.until_written("record_event", || async move {
            self.datastore.saga_record_event(row).await
        })
        .await;
    }

    async fn saga_update(&self, id: SagaId, update: SagaCachedState) {
        let id = saga_uuid(id);
        self.until_written("saga_update", || async move {
            self.datastore
                .saga_update_state(id, saga_state(update), self.sec_id)
                .await
                .map(|_| ())
        })
        .await;
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
