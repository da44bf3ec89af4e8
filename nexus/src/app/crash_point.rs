//! Test-only crash points: kill this Nexus (SIGKILL) right after a chosen saga log event is
//! written, to prove that sagas survive a crash at any instant (invariant 5); and an injected
//! action failure, so a crash can land while a saga unwinds.
//!
//! `HALYARD_CRASH_AT=<saga name>:<node name>:<event>` (e.g. `instance-start:registered:started`)
//! kills the process right after that node's `<event>` is durably recorded in the saga log,
//! where `<event>` is one of `started`, `succeeded`, `undo_started`, `undo_finished` (the
//! labels of steno's events and of `saga_node_event.event_type`). So a crash point is named by
//! the last event of the saga log it leaves behind, and every crash point is a distinct log
//! state:
//!
//! - `started`: the node's action has not run yet (steno records `started` first and waits for
//!   it), so none of its effects exist; recovery runs it for the first time.
//! - `succeeded`: the action ran and its output is recorded; recovery goes on with the next
//!   node. Together with `started` of the next node these are the two log states between two
//!   nodes. (A point "before `started` of node N" would leave exactly the log of "after
//!   `succeeded` of node N-1", so it is not a point of its own.)
//! - `undo_started` / `undo_finished`: the same two states of the node's undo, while the saga
//!   unwinds (see `HALYARD_FAIL_AT`).
//!
//! What no log event separates is a crash *inside* an action after its effect but before
//! `succeeded`: the log reads `started` as for the first point, but the effect exists. That
//! point needs a hook inside the actions and is left to a later change; the `started` point
//! with steno's injected repeats (every action run twice, `saga_faults.rs`) covers its
//! recovery logic meanwhile.
//!
//! `HALYARD_FAIL_AT=<saga name>:<node name>` makes that node's action fail (steno's injected
//! error) in every saga of that name this process creates, so the saga unwinds; with a crash
//! point at an earlier node's `undo_*` event, the process dies mid-unwind and the next Nexus
//! must finish the unwind from the log.
//!
//! Both unset (always, outside tests), the saga log is the plain [`DbSecStore`] and nothing
//! is injected.
//!
//! [`DbSecStore`]: halyard_db_queries::DbSecStore

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Mutex;
use steno::{
    SagaCachedState, SagaCreateParams, SagaDag, SagaId, SagaNodeEvent, SagaNodeEventType, SecStore,
};

pub const CRASH_AT_ENV: &str = "HALYARD_CRASH_AT";
pub const FAIL_AT_ENV: &str = "HALYARD_FAIL_AT";

/// A malformed `HALYARD_CRASH_AT` or `HALYARD_FAIL_AT`.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={value:?}: expected {expected}")]
pub struct BadInjectionSpec {
    variable: &'static str,
    value: String,
    expected: &'static str,
}

/// The saga log event after which a crash point kills the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CrashEvent {
    Started,
    Succeeded,
    UndoStarted,
    UndoFinished,
}

impl CrashEvent {
    pub const ALL: [CrashEvent; 4] = [
        CrashEvent::Started,
        CrashEvent::Succeeded,
        CrashEvent::UndoStarted,
        CrashEvent::UndoFinished,
    ];

    /// The event's label: steno's, and `saga_node_event.event_type`'s.
    pub fn label(self) -> &'static str {
        match self {
            CrashEvent::Started => "started",
            CrashEvent::Succeeded => "succeeded",
            CrashEvent::UndoStarted => "undo_started",
            CrashEvent::UndoFinished => "undo_finished",
        }
    }

    /// Whether the saga is unwinding when this event is written.
    pub fn is_undo(self) -> bool {
        matches!(self, CrashEvent::UndoStarted | CrashEvent::UndoFinished)
    }

    fn matches(self, event: &SagaNodeEventType) -> bool {
        matches!(
            (self, event),
            (CrashEvent::Started, SagaNodeEventType::Started)
                | (CrashEvent::Succeeded, SagaNodeEventType::Succeeded(_))
                | (CrashEvent::UndoStarted, SagaNodeEventType::UndoStarted)
                | (CrashEvent::UndoFinished, SagaNodeEventType::UndoFinished)
        )
    }
}

impl std::fmt::Display for CrashEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Where to crash: right after `event` of node `node` of a saga named `saga` is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashPoint {
    pub saga: String,
    pub node: String,
    pub event: CrashEvent,
}

impl CrashPoint {
    /// The crash point the environment asks for, if any.
    pub fn from_env() -> Result<Option<CrashPoint>, BadInjectionSpec> {
        let Ok(value) = std::env::var(CRASH_AT_ENV) else {
            return Ok(None);
        };
        let bad = || BadInjectionSpec {
            variable: CRASH_AT_ENV,
            value: value.clone(),
            expected: "<saga>:<node>:<started|succeeded|undo_started|undo_finished>",
        };
        let mut parts = value.splitn(3, ':');
        let (Some(saga), Some(node), Some(label)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let event = CrashEvent::ALL
            .into_iter()
            .find(|e| e.label() == label)
            .ok_or_else(bad)?;
        Ok(Some(CrashPoint {
            saga: saga.to_string(),
            node: node.to_string(),
            event,
        }))
    }
}

impl std::fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.saga, self.node, self.event)
    }
}

/// A saga node whose action is made to fail (steno's injected error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFailure {
    pub saga: String,
    pub node: String,
}

impl InjectedFailure {
    /// The failure the environment asks for, if any.
    pub fn from_env() -> Result<Option<InjectedFailure>, BadInjectionSpec> {
        let Ok(value) = std::env::var(FAIL_AT_ENV) else {
            return Ok(None);
        };
        match value.split_once(':') {
            Some((saga, node)) if !saga.is_empty() && !node.is_empty() => {
                Ok(Some(InjectedFailure {
                    saga: saga.to_string(),
                    node: node.to_string(),
                }))
            }
            _ => Err(BadInjectionSpec {
                variable: FAIL_AT_ENV,
                value,
                expected: "<saga>:<node>",
            }),
        }
    }

    /// The node to fail in sagas named `saga_name`, if this failure is meant for them.
    pub fn node_for(&self, saga_name: &str) -> Option<&str> {
        (saga_name == self.saga).then_some(self.node.as_str())
    }
}

/// The saga log, with a crash point.
#[derive(Debug)]
pub struct CrashingSecStore<S> {
    inner: S,
    point: CrashPoint,
    /// For the sagas of the crash point's kind: the index of its node.
    watched: Mutex<BTreeMap<SagaId, u32>>,
}

impl<S> CrashingSecStore<S> {
    pub fn new(inner: S, point: CrashPoint) -> Self {
        CrashingSecStore {
            inner,
            point,
            watched: Mutex::new(BTreeMap::new()),
        }
    }

    fn is_crash_node(&self, event: &SagaNodeEvent) -> bool {
        let watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        watched.get(&event.saga_id) == Some(&u32::from(event.node_id))
    }

    fn die(&self, event: &SagaNodeEvent) -> ! {
        // On stderr, which the crash replay test keeps: where this process chose to die.
        eprintln!(
            "{CRASH_AT_ENV}: crash point {} reached (saga {}, node index {}); killing this \
             process",
            self.point,
            event.saga_id,
            u32::from(event.node_id)
        );
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        unreachable!("SIGKILL cannot be caught")
    }
}

#[async_trait]
impl<S: SecStore> SecStore for CrashingSecStore<S> {
    async fn saga_create(&self, params: SagaCreateParams) -> Result<(), anyhow::Error> {
        if params.name.to_string() == self.point.saga {
            let dag: SagaDag = serde_json::from_value(params.dag.clone())?;
            let node = dag
                .get_nodes()
                .find(|n| n.name().as_ref() == self.point.node);
            if let Some(node) = node {
                let index = u32::try_from(node.index().index())?;
                self.watched
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(params.id, index);
            }
        }
        self.inner.saga_create(params).await
    }

    async fn record_event(&self, event: SagaNodeEvent) {
        let crash = self.is_crash_node(&event) && self.point.event.matches(&event.event_type);
        // Written (and committed) first: the crash leaves exactly this event last in the log.
        self.inner.record_event(event.clone()).await;
        if crash {
            self.die(&event);
        }
    }

    async fn saga_update(&self, id: SagaId, update: SagaCachedState) {
        self.inner.saga_update(id, update).await
    }
}
