//! The saga log, driven by a real steno executor.

use crate::{Harness, log};
use halyard_common::ids::{GenericUuid, NexusUuid, SagaUuid};
use halyard_db_model::SagaState;
use halyard_db_queries::{DbSecStore, saga_node_event_to_steno};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use steno::{
    ActionContext, ActionError, ActionRegistry, DagBuilder, Node, SagaDag, SagaId, SagaName,
    SagaResultErr, SagaType,
};

#[derive(Debug)]
struct TestSaga;

/// What the test saga's actions see, and what they count.
#[derive(Debug, Default)]
struct Context {
    /// `second` fails (instead of succeeding) when this is set.
    fail_second: AtomicBool,
    /// `second` waits until this is set (to hold the saga mid-flight, as a crash would).
    release_second: AtomicBool,
    first_runs: AtomicUsize,
    first_undos: AtomicUsize,
    second_runs: AtomicUsize,
}

impl SagaType for TestSaga {
    type ExecContextType = Context;
}

async fn first(ctx: ActionContext<TestSaga>) -> Result<u64, ActionError> {
    ctx.user_data().first_runs.fetch_add(1, Ordering::SeqCst);
    Ok(42)
}

async fn undo_first(ctx: ActionContext<TestSaga>) -> Result<(), anyhow::Error> {
    assert_eq!(ctx.lookup::<u64>("first_output")?, 42);
    ctx.user_data().first_undos.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

async fn second(ctx: ActionContext<TestSaga>) -> Result<String, ActionError> {
    let context = ctx.user_data();
    context.second_runs.fetch_add(1, Ordering::SeqCst);
    while !context.release_second.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if context.fail_second.load(Ordering::SeqCst) {
        return Err(ActionError::action_failed("second gave up".to_string()));
    }
    Ok(format!("after {}", ctx.lookup::<u64>("first_output")?))
}

fn registry() -> Arc<ActionRegistry<TestSaga>> {
    let mut registry = ActionRegistry::new();
    registry.register(steno::ActionFunc::new_action(
        "test.first",
        first,
        undo_first,
    ));
    registry.register(steno::new_action_noop_undo("test.second", second));
    Arc::new(registry)
}

fn dag() -> Arc<SagaDag> {
    let registry = registry();
    let mut builder = DagBuilder::new(SagaName::new("test-saga"));
    builder.append(Node::action(
        "first_output",
        "First",
        &*registry.get(&"test.first".into()).unwrap(),
    ));
    builder.append(Node::action(
        "second_output",
        "Second",
        &*registry.get(&"test.second".into()).unwrap(),
    ));
    Arc::new(SagaDag::new(
        builder.build().unwrap(),
        serde_json::json!({"param": 1}),
    ))
}

async fn wait_for_event(h: &Harness, id: SagaUuid, node: i64, event: &str) {
    for _ in 0..500 {
        let events = h.datastore.saga_node_events(id).await.unwrap();
        if events
            .iter()
            .any(|e| e.node_id == node && e.event_type == event)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("node {node} never recorded {event}");
}

#[tokio::test]
async fn a_saga_interrupted_mid_flight_resumes_from_the_log() {
    let h = Harness::new();
    let nexus = NexusUuid::new_v4();
    let saga_id = SagaId::new_v4();
    let id = SagaUuid::from_untyped_uuid(saga_id.into_untyped_uuid());

    // The first "Nexus" runs the saga until `second` has started, then is abandoned (its
    // executor never records anything again, as if the process had died).
    let crashed = Arc::new(Context::default());
    let store = Arc::new(DbSecStore::new(h.datastore.clone(), nexus, &log()));
    let sec = steno::sec(log(), store);
    let _never_finishes = sec
        .saga_create(saga_id, crashed.clone(), dag(), registry())
        .await
        .unwrap();
    sec.saga_start(saga_id).await.unwrap();
    wait_for_event(&h, id, 1, "started").await;

    let saga = h.datastore.saga_fetch(id).await.unwrap();
    assert_eq!(saga.name, "test-saga");
    assert_eq!(saga.current_sec.0, nexus);
    assert_eq!(saga.saga_state.0, SagaState::Running);
    let unfinished = h.datastore.saga_list_unfinished(nexus).await.unwrap();
    assert_eq!(
        unfinished.iter().map(|s| s.id()).collect::<Vec<_>>(),
        vec![id]
    );
    assert!(
        h.datastore
            .saga_list_unfinished(NexusUuid::new_v4())
            .await
            .unwrap()
            .is_empty()
    );

    // The restarted "Nexus" loads its unfinished sagas and resumes them from the log.
    let resumed = Arc::new(Context::default());
    resumed.release_second.store(true, Ordering::SeqCst);
    let store = Arc::new(DbSecStore::new(h.datastore.clone(), nexus, &log()));
    let sec = steno::sec(log(), store);
    let saga = h
        .datastore
        .saga_list_unfinished(nexus)
        .await
        .unwrap()
        .remove(0);
    let events = h
        .datastore
        .saga_node_events(saga.id())
        .await
        .unwrap()
        .iter()
        .map(saga_node_event_to_steno)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let done = sec
        .saga_resume(
            saga_id,
            resumed.clone(),
            saga.dag.clone(),
            registry(),
            events,
        )
        .await
        .unwrap();
    sec.saga_start(saga_id).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), done)
        .await
        .expect("saga finishes");
    let output = result.kind.expect("saga succeeds");
    assert_eq!(
        output
            .lookup_node_output::<String>("second_output")
            .unwrap(),
        "after 42"
    );

    // `first` finished before the crash: its recorded output was reused, not run again.
    // `second` had only started: it ran again.
    assert_eq!(
        crashed.first_runs.load(Ordering::SeqCst) + resumed.first_runs.load(Ordering::SeqCst),
        1
    );
    assert_eq!(resumed.second_runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        h.datastore.saga_fetch(id).await.unwrap().saga_state.0,
        SagaState::Done
    );
    assert!(
        h.datastore
            .saga_list_unfinished(nexus)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(h.datastore.saga_list(true).await.unwrap().len(), 1);
    assert!(h.datastore.saga_list(false).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_saga_unwinds_and_its_log_says_so() {
    let h = Harness::new();
    let nexus = NexusUuid::new_v4();
    let context = Arc::new(Context::default());
    context.fail_second.store(true, Ordering::SeqCst);
    context.release_second.store(true, Ordering::SeqCst);
    let sec = steno::sec(
        log(),
        Arc::new(DbSecStore::new(h.datastore.clone(), nexus, &log())),
    );
    let saga_id = SagaId::new_v4();
    let done = sec
        .saga_create(saga_id, context.clone(), dag(), registry())
        .await
        .unwrap();
    sec.saga_start(saga_id).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), done)
        .await
        .unwrap();
    let SagaResultErr {
        error_node_name,
        undo_failure,
        ..
    } = result.kind.unwrap_err();
    assert_eq!(error_node_name.as_ref(), "second_output");
    assert!(undo_failure.is_none());
    assert_eq!(context.first_undos.load(Ordering::SeqCst), 1);

    let id = SagaUuid::from_untyped_uuid(saga_id.into_untyped_uuid());
    assert_eq!(
        h.datastore.saga_fetch(id).await.unwrap().saga_state.0,
        SagaState::Done
    );
    let mut log_lines: Vec<String> = h
        .datastore
        .saga_node_events(id)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.node_id <= 1)
        .map(|e| format!("{}:{}", e.node_id, e.event_type))
        .collect();
    log_lines.sort();
    assert_eq!(
        log_lines,
        [
            "0:started",
            "0:succeeded",
            "0:undo_finished",
            "0:undo_started",
            "1:failed",
            "1:started"
        ]
    );

    // Every logged event reads back as steno's, including the failure with its message.
    for row in h.datastore.saga_node_events(id).await.unwrap() {
        let event = saga_node_event_to_steno(&row).unwrap();
        assert_eq!(event.event_type.label(), row.event_type);
        if row.event_type == "failed" {
            assert!(format!("{:?}", event.event_type).contains("second gave up"));
        }
    }
    // Recording an event twice is harmless.
    let row = h.datastore.saga_node_events(id).await.unwrap().remove(0);
    h.datastore.saga_record_event(&row).await.unwrap();
}

/// A node that finishes quickly costs one commit: its `started` waits for its result and goes
/// into the same statement (the rows share a transaction id, `xmin`), as do steno's start
/// node's events with the first node's. A slow node's `started` is written on its own, while
/// the action still runs, so the log shows where the saga is.
#[tokio::test]
async fn a_quick_nodes_start_commits_with_its_result_and_a_slow_ones_alone() {
    let h = Harness::new();
    let nexus = NexusUuid::new_v4();
    let context = Arc::new(Context::default());
    let sec = steno::sec(
        log(),
        Arc::new(DbSecStore::new(h.datastore.clone(), nexus, &log())),
    );
    let saga_id = SagaId::new_v4();
    let id = SagaUuid::from_untyped_uuid(saga_id.into_untyped_uuid());
    let done = sec
        .saga_create(saga_id, context.clone(), dag(), registry())
        .await
        .unwrap();
    sec.saga_start(saga_id).await.unwrap();
    // `second` is held: its start shows up in the log while it runs.
    wait_for_event(&h, id, 1, "started").await;
    let events = h.datastore.saga_node_events(id).await.unwrap();
    assert!(
        !events
            .iter()
            .any(|e| e.node_id == 1 && e.event_type == "succeeded")
    );
    context.release_second.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(30), done)
        .await
        .unwrap()
        .kind
        .unwrap();

    let xmin = |node: i64, event: &str| {
        h.sql(&format!(
            "SELECT xmin FROM saga_node_event WHERE saga_id = '{id}' AND node_id = {node} \
             AND event_type = '{event}'"
        ))
        .trim()
        .to_string()
    };
    assert!(!xmin(0, "started").is_empty());
    assert_eq!(
        xmin(0, "started"),
        xmin(0, "succeeded"),
        "node 0: one commit"
    );
    // steno's start node (after the saga's own nodes) does nothing: its events wait for the
    // first node's result too.
    assert_eq!(
        xmin(2, "started"),
        xmin(0, "succeeded"),
        "start node: the same commit"
    );
    assert_eq!(
        xmin(2, "succeeded"),
        xmin(0, "succeeded"),
        "start node: the same commit"
    );
    assert_ne!(xmin(1, "started"), xmin(1, "succeeded"), "node 1 was slow");
    assert_eq!(context.first_runs.load(Ordering::SeqCst), 1);
    assert_eq!(context.second_runs.load(Ordering::SeqCst), 1);
}
