use crate::schema::{saga, saga_node_event};
use crate::{DbEnum, DbGeneration, DbTypedUuid};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use halyard_common::ids::{NexusKind, SagaKind, SagaUuid};
use halyard_common::{Labelled, UnknownLabel};

/// A saga in the log, with the DAG (and parameters) needed to resume it.
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = saga, check_for_backend(diesel::pg::Pg))]
pub struct Saga {
    pub id: DbTypedUuid<SagaKind>,
    pub creator: DbTypedUuid<NexusKind>,
    pub current_sec: DbTypedUuid<NexusKind>,
    pub name: String,
    pub dag: serde_json::Value,
    pub saga_state: DbEnum<SagaState>,
    pub adopt_generation: DbGeneration,
    pub time_created: DateTime<Utc>,
    pub adopt_time: DateTime<Utc>,
    /// Why the saga could not be resumed, if it could not.
    pub resume_failure: Option<String>,
}

impl Saga {
    pub fn id(&self) -> SagaUuid {
        self.id.0
    }
}

/// The saga's cached state (the event log is the truth; this is what lists and filters use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaState {
    Running,
    Unwinding,
    Done,
}

impl Labelled for SagaState {
    const ALL: &'static [Self] = &[SagaState::Running, SagaState::Unwinding, SagaState::Done];
    const WHAT: &'static str = "saga state";

    fn label(&self) -> &'static str {
        match self {
            SagaState::Running => "running",
            SagaState::Unwinding => "unwinding",
            SagaState::Done => "done",
        }
    }
}

impl std::str::FromStr for SagaState {
    type Err = UnknownLabel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SagaState::from_label(s)
    }
}

/// One event in a saga node's life: started, succeeded (with its output), failed (with its
/// error), undo started, undo finished, undo failed.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = saga_node_event, check_for_backend(diesel::pg::Pg))]
pub struct SagaNodeEvent {
    pub saga_id: DbTypedUuid<SagaKind>,
    pub node_id: i64,
    pub event_type: String,
    pub data: Option<serde_json::Value>,
    pub event_time: DateTime<Utc>,
    pub creator: DbTypedUuid<NexusKind>,
    /// The writer's adoption generation of the saga when it wrote the event.
    pub adopt_generation: DbGeneration,
}
