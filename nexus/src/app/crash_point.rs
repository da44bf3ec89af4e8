//! Test-only crash points: kill this Nexus (SIGKILL) right after a chosen saga log event is
//! written, or right after a chosen node's action did its work, to prove that sagas survive a
//! crash at any instant (invariant 5); an injected action failure, so a crash can land while
//! a saga unwinds; and lost replies (invariant 4).
//!
//! `HALYARD_CRASH_AT=<saga name>:<node name>:<event>` (e.g. `instance-start:registered:started`)
//! kills the process right after that node's `<event>` is handed to the saga log (and, but
//! for `started`, durably recorded), where `<event>` is one of `started`, `succeeded`,
//! `undo_started`, `undo_finished` (the labels of steno's events and of
//! `saga_node_event.event_type`), or right after the node's action did its work, for
//! `<event>` `after_effect`:
//!
//! - `started`: steno has handed the node's `started` to the log and is about to run its
//!   action, so none of its effects exist; recovery runs it for the first time. The log does
//!   not hold this `started` yet (it is written with the node's result, or on its own once the
//!   action has run for a while: see `halyard_db_queries::saga_store`), so the log ends with
//!   the previous node's events.
//! - `succeeded`: the action ran and its output is recorded, with its `started`; recovery
//!   goes on with the next node.
//! - `undo_started` / `undo_finished`: the same two states of the node's undo, while the saga
//!   unwinds (see `HALYARD_FAIL_AT`).
//! - `after_effect`: no log event of its own. The node's action has run to its end (every
//!   database write it makes committed, every sled-agent call it makes answered) and returned
//!   `Ok`, but steno has not been handed the result, so `succeeded` is not written: the log
//!   reads as for `started` (plus the node's `started`, if its action ran long enough for it
//!   to be written alone), but the effects exist. Recovery runs the action again
//!   over its own effects, so this point proves that an action notices they already exist.
//!   The hook is [`action_effect_done`], which every forward action passes through (the
//!   `declare_action!` wrapper calls it in `sagas::retry::retry_action` on every `Ok`), so no
//!   action can leave it out. It kills after the *whole* action body, not between two of its
//!   effects: a state "the first effect landed, the second did not" is a prefix of what the
//!   action's second run repeats anyway. A node with no external effect (one that only picks
//!   ids or checks) leaves the same world at `after_effect` as at `started`; the crash
//!   replay test says which nodes those are.
//!
//! `HALYARD_FAIL_AT=<saga name>:<node name>` makes that node's action fail (steno's injected
//! error) in every saga of that name this process creates, resumes or adopts, so the saga
//! unwinds; with a crash point at an earlier node's `undo_*` event, the process dies
//! mid-unwind and the next Nexus must finish the unwind from the log.
//!
//! **Lost replies** ([`LostReplies`], armed by a test through `Nexus::inject_lost_reply`):
//! the chosen node's action (or undo) runs to its end, its effects land, and then the same
//! hook, [`action_effect_done`] (for an undo [`undo_effect_done`], which `retry_undo` calls),
//! reports a transient error (`ServiceUnavailable`) to the caller instead of its result, once:
//! as if the reply of its last database write or sled-agent call had been lost.
//! `sagas::retry` runs it again, which must find its effects and succeed without making them
//! a second time (invariant 4).
//!
//! All unset (always, outside tests), the saga log is the plain [`DbSecStore`] and nothing
//! is injected.
//!
//! [`DbSecStore`]: halyard_db_queries::DbSecStore

use crate::app::sagas::NexusActionContext;
use async_trait::async_trait;
use halyard_common::Error;
use slog::warn;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use steno::{
    SagaCachedState, SagaCreateParams, SagaDag, SagaId, SagaNodeEvent, SagaNodeEventType, SecStore,
};

pub const CRASH_AT_ENV: &str = "HALYARD_CRASH_AT";
/// As `HALYARD_CRASH_AT`, but the process stops itself (SIGSTOP) instead of dying, and goes on
/// when sent SIGCONT: a Nexus stalled mid-saga, for the adoption and fencing tests.
pub const STOP_AT_ENV: &str = "HALYARD_STOP_AT";
pub const FAIL_AT_ENV: &str = "HALYARD_FAIL_AT";

/// A malformed `HALYARD_CRASH_AT` or `HALYARD_FAIL_AT`.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={value:?}: expected {expected}")]
pub struct BadInjectionSpec {
    variable: &'static str,
    value: String,
    expected: &'static str,
}

/// Where in a node's life a crash point kills the process: after one of its saga log events,
/// or after its action's effects (before its `succeeded` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CrashEvent {
    Started,
    AfterEffect,
    Succeeded,
    UndoStarted,
    UndoFinished,
}

impl CrashEvent {
    pub const ALL: [CrashEvent; 5] = [
        CrashEvent::Started,
        CrashEvent::AfterEffect,
        CrashEvent::Succeeded,
        CrashEvent::UndoStarted,
        CrashEvent::UndoFinished,
    ];

    /// The event's label: steno's, and `saga_node_event.event_type`'s (`after_effect` is no
    /// log event: the log it leaves ends with `started`).
    pub fn label(self) -> &'static str {
        match self {
            CrashEvent::Started => "started",
            CrashEvent::AfterEffect => "after_effect",
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

/// Where to crash: right after `event` of node `node` of a saga named `saga` (recorded, or for
/// `after_effect`, done).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashPoint {
    pub saga: String,
    pub node: String,
    pub event: CrashEvent,
    /// Whether the process dies there, or only stops until continued.
    pub stop_only: bool,
}

impl CrashPoint {
    /// The crash point the environment asks for, if any.
    pub fn from_env() -> Result<Option<CrashPoint>, BadInjectionSpec> {
        let (variable, value, stop_only) =
            match (std::env::var(CRASH_AT_ENV), std::env::var(STOP_AT_ENV)) {
                (Ok(value), _) => (CRASH_AT_ENV, value, false),
                (Err(_), Ok(value)) => (STOP_AT_ENV, value, true),
                (Err(_), Err(_)) => return Ok(None),
            };
        let bad = || BadInjectionSpec {
            variable,
            value: value.clone(),
            expected: "<saga>:<node>:<started|after_effect|succeeded|undo_started|undo_finished>",
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
            stop_only,
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
}

/// Kills this process (SIGKILL) at crash point `point`, reached in saga `saga_id` at node
/// `node_index`, saying so first on stderr (which the crash replay test keeps); or, for a stop
/// point, stops it (SIGSTOP) and returns once it is continued.
fn die(point: &CrashPoint, saga_id: SagaId, node_index: u32) {
    if point.stop_only {
        eprintln!(
            "{STOP_AT_ENV}: stop point {point} reached (saga {saga_id}, node index \
             {node_index}); stopping this process"
        );
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGSTOP);
        }
        eprintln!("{STOP_AT_ENV}: continued after stop point {point}");
        return;
    }
    eprintln!(
        "{CRASH_AT_ENV}: crash point {point} reached (saga {saga_id}, node index {node_index}); \
         killing this process"
    );
    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    unreachable!("SIGKILL cannot be caught")
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
            die(&self.point, event.saga_id, u32::from(event.node_id));
        }
    }

    async fn saga_update(&self, id: SagaId, update: SagaCachedState) {
        self.inner.saga_update(id, update).await
    }
}

/// Which of a node's two steps lost its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LostReplyStep {
    Action,
    Undo,
}

/// Lost replies armed by tests: a saga node whose action's (or undo's) next successful run
/// reports a transient error instead of its result, once; and the nodes where that happened.
#[derive(Debug, Default)]
pub struct LostReplies {
    /// (saga, node index, step): armed, not reported yet.
    armed: Mutex<BTreeSet<(SagaId, u32, LostReplyStep)>>,
    /// Every lost reply reported, in order: (saga, node name, step).
    reported: Mutex<Vec<(SagaId, String, LostReplyStep)>>,
}

impl LostReplies {
    pub(crate) fn arm(&self, saga_id: SagaId, node_index: u32, step: LostReplyStep) {
        self.armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((saga_id, node_index, step));
    }

    /// Whether this run of the node's step must lose its reply (disarming it if so).
    fn take(&self, saga_id: SagaId, node_index: u32, node_name: &str, step: LostReplyStep) -> bool {
        let taken = self
            .armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(saga_id, node_index, step));
        if taken {
            self.reported
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((saga_id, node_name.to_string(), step));
        }
        taken
    }

    fn is_armed(&self) -> bool {
        !self
            .armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The nodes (and steps) of saga `saga_id` whose reply was lost, in order.
    pub(crate) fn reported_in(&self, saga_id: SagaId) -> Vec<(String, LostReplyStep)> {
        self.reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(id, _, _)| *id == saga_id)
            .map(|(_, node, step)| (node.clone(), *step))
            .collect()
    }
}

/// The node an action runs at, found by its label (unique within each of Nexus's sagas, whose
/// DAGs are linear): steno's `ActionContext` tells an action its label only.
fn current_node(ctx: &NexusActionContext) -> Option<(String, u32)> {
    let saga = ctx.user_data();
    let label = ctx.node_label();
    let mut found = saga.dag.get_nodes().filter(|node| node.label() == label);
    let node = found.next()?;
    if found.next().is_some() {
        return None;
    }
    let index = u32::try_from(node.index().index()).ok()?;
    Some((node.name().as_ref().to_string(), index))
}

/// The hook every forward action passes through once its body has returned `Ok` (from
/// `sagas::retry::retry_action`), before steno sees the result: its effects exist, its
/// `succeeded` event is not written yet. Kills the process at an `after_effect` crash point
/// for this node; reports a transient error instead of the result where a test armed a lost
/// reply. Does nothing otherwise.
pub(crate) fn action_effect_done(ctx: &NexusActionContext) -> Result<(), Error> {
    let saga = ctx.user_data();
    let nexus = &saga.nexus;
    let crash = nexus
        .crash_after_effect()
        .filter(|point| point.saga == saga.dag.saga_name().to_string());
    if crash.is_none() && !nexus.lost_replies().is_armed() {
        return Ok(());
    }
    let Some((node, index)) = current_node(ctx) else {
        return Ok(());
    };
    if let Some(point) = crash
        && point.node == node
    {
        die(point, saga.saga_id, index);
    }
    lose_reply(ctx, &node, index, LostReplyStep::Action)
}

/// The hook every undo passes through once its body has returned `Ok` (from
/// `sagas::retry::retry_undo`), before steno records `undo_finished`: reports a transient
/// error instead where a test armed a lost reply for this node's undo.
pub(crate) fn undo_effect_done(ctx: &NexusActionContext) -> Result<(), Error> {
    if !ctx.user_data().nexus.lost_replies().is_armed() {
        return Ok(());
    }
    let Some((node, index)) = current_node(ctx) else {
        return Ok(());
    };
    lose_reply(ctx, &node, index, LostReplyStep::Undo)
}

fn lose_reply(
    ctx: &NexusActionContext,
    node: &str,
    index: u32,
    step: LostReplyStep,
) -> Result<(), Error> {
    let saga = ctx.user_data();
    let nexus = &saga.nexus;
    if nexus.lost_replies().take(saga.saga_id, index, node, step) {
        warn!(nexus.log(), "test: losing a saga step's reply after its effects";
            "saga_id" => %saga.saga_id, "node" => node, "step" => ?step);
        return Err(Error::unavailable(format!(
            "injected lost reply: the {step:?} of node {node:?} did its work, but its reply \
             was lost"
        )));
    }
    Ok(())
}
