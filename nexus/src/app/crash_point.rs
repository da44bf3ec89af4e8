//! A test-only crash point: kills this Nexus (SIGKILL) at a chosen saga node, to prove that
//! sagas survive a crash at any instant (invariant 5).
//!
//! Set `HALYARD_CRASH_AT=<saga name>:<node name>:<before|after>` (e.g.
//! `instance-start:registered:after`). `before` kills the process instead of recording the
//! node's `started` event; `after` records the node's `succeeded` event, then kills it. Unset
//! (always, outside tests), the saga log is the plain [`DbSecStore`].

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Mutex;
use steno::{
    SagaCachedState, SagaCreateParams, SagaId, SagaNodeEvent, SagaNodeEventType, SecStore,
};

pub const CRASH_AT_ENV: &str = "HALYARD_CRASH_AT";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashPoint {
    saga: String,
    node: String,
    after: bool,
}

impl CrashPoint {
    /// The crash point the environment asks for, if any.
    pub fn from_env() -> Option<CrashPoint> {
        let value = std::env::var(CRASH_AT_ENV).ok()?;
        let mut parts = value.splitn(3, ':');
        let (saga, node, when) = (parts.next()?, parts.next()?, parts.next()?);
        Some(CrashPoint {
            saga: saga.to_string(),
            node: node.to_string(),
            after: when == "after",
        })
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

fn die() -> ! {
    eprintln!("{CRASH_AT_ENV}: crash point reached; killing this process");
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
            let dag: steno::SagaDag = serde_json::from_value(params.dag.clone())?;
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
        let crash = self.is_crash_node(&event);
        if crash && !self.point.after && matches!(event.event_type, SagaNodeEventType::Started) {
            die();
        }
        let succeeded = matches!(event.event_type, SagaNodeEventType::Succeeded(_));
        self.inner.record_event(event).await;
        if crash && self.point.after && succeeded {
            die();
        }
    }

    async fn saga_update(&self, id: SagaId, update: SagaCachedState) {
        self.inner.saga_update(id, update).await
    }
}
