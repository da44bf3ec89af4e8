//! The read-only queries operators' tools (omdb) use: listings across projects, deleted
//! records, several saga logs at once, and the connection probe.

use crate::{Harness, log};
use chrono::{Duration as ChronoDuration, Utc};
use halyard_common::ids::{InstanceUuid, NexusUuid, SagaUuid};
use halyard_common::{Error, Generation, Name, ResourceType};
use halyard_db_model::{Saga, SagaNodeEvent, SagaState};
use halyard_db_queries::{DataStore, PoolConfig};
use std::time::Duration;

#[tokio::test]
async fn instances_are_listed_across_projects_and_found_by_name_or_deleted_id() {
    let h = Harness::new();
    let alpha = h.project("alpha").await;
    let beta = h.project("beta").await;
    let web_alpha = h.stopped_instance(&alpha, "web").await;
    let db_alpha = h.stopped_instance(&alpha, "db").await;
    let web_beta = h.stopped_instance(&beta, "web").await;

    let ids = |list: Vec<halyard_db_model::Instance>| list.iter().map(|i| i.id()).collect();
    let live: Vec<InstanceUuid> = ids(h.datastore.instance_list_all(false).await.unwrap());
    assert_eq!(live, vec![web_alpha.id(), db_alpha.id(), web_beta.id()]);

    let web: Name = "web".parse().unwrap();
    let named: Vec<InstanceUuid> = ids(h.datastore.instance_list_by_name(&web).await.unwrap());
    assert_eq!(named, vec![web_alpha.id(), web_beta.id()]);

    // A deleted instance leaves the live listings but can still be fetched by id.
    assert!(
        h.datastore
            .instance_mark_destroyed(web_alpha.id())
            .await
            .unwrap()
    );
    let live: Vec<InstanceUuid> = ids(h.datastore.instance_list_all(false).await.unwrap());
    assert_eq!(live, vec![db_alpha.id(), web_beta.id()]);
    let all: Vec<InstanceUuid> = ids(h.datastore.instance_list_all(true).await.unwrap());
    assert_eq!(all, vec![web_alpha.id(), db_alpha.id(), web_beta.id()]);
    let named: Vec<InstanceUuid> = ids(h.datastore.instance_list_by_name(&web).await.unwrap());
    assert_eq!(named, vec![web_beta.id()]);
    let deleted = h
        .datastore
        .instance_fetch_including_deleted(web_alpha.id())
        .await
        .unwrap();
    assert!(deleted.time_deleted.is_some());
    assert!(matches!(
        h.datastore.instance_fetch(web_alpha.id()).await,
        Err(Error::ObjectNotFound { .. })
    ));

    let unknown = InstanceUuid::new_v4();
    match h.datastore.instance_fetch_including_deleted(unknown).await {
        Err(Error::ObjectNotFound { type_name, .. }) => {
            assert_eq!(type_name, ResourceType::Instance)
        }
        other => panic!("expected not found, got {other:?}"),
    }
    let nobody: Name = "nobody".parse().unwrap();
    assert!(
        h.datastore
            .instance_list_by_name(&nobody)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn every_project_is_listed_by_name_deleted_ones_too() {
    let h = Harness::new();
    h.project("zulu").await;
    h.project("alpha").await;
    h.project("mike").await;
    h.datastore
        .project_delete(&"mike".parse().unwrap())
        .await
        .unwrap();
    let all = h.datastore.project_list_all().await.unwrap();
    let names: Vec<String> = all.iter().map(|p| p.name().to_string()).collect();
    assert_eq!(names, vec!["alpha", "mike", "zulu"]);
    assert!(all[1].time_deleted.is_some());
}

#[tokio::test]
async fn every_sled_is_listed_oldest_first() {
    let h = Harness::new();
    assert!(h.datastore.sled_list_all().await.unwrap().is_empty());
    let first = h.sled(8, 16).await;
    let second = h.sled(4, 8).await;
    let all: Vec<_> = h
        .datastore
        .sled_list_all()
        .await
        .unwrap()
        .iter()
        .map(|s| s.id())
        .collect();
    assert_eq!(all, vec![first.id(), second.id()]);
}

fn saga(nexus: NexusUuid) -> Saga {
    let now = Utc::now();
    Saga {
        id: SagaUuid::new_v4().into(),
        creator: nexus.into(),
        current_sec: nexus.into(),
        name: "test-saga".to_string(),
        dag: serde_json::json!({}),
        saga_state: SagaState::Running.into(),
        adopt_generation: Generation::new().into(),
        time_created: now,
        adopt_time: now,
        resume_failure: None,
    }
}

fn event(saga: &Saga, node_id: i64, event_type: &str, seconds: i64) -> SagaNodeEvent {
    SagaNodeEvent {
        saga_id: saga.id,
        node_id,
        event_type: event_type.to_string(),
        data: None,
        event_time: Utc::now() + ChronoDuration::seconds(seconds),
        creator: saga.creator,
        adopt_generation: saga.adopt_generation,
    }
}

#[tokio::test]
async fn the_logs_of_several_sagas_are_read_at_once() {
    let h = Harness::new();
    let nexus = NexusUuid::new_v4();
    let (a, b, c) = (saga(nexus), saga(nexus), saga(nexus));
    for s in [&a, &b, &c] {
        h.datastore.saga_create(s).await.unwrap();
    }
    // Written out of order on purpose: each saga's events come back in time order.
    for e in [
        event(&a, 1, "started", 2),
        event(&a, 0, "started", 0),
        event(&a, 0, "succeeded", 1),
        event(&b, 0, "started", 0),
        event(&c, 0, "started", 0),
    ] {
        h.datastore.saga_record_event(&e).await.unwrap();
    }

    let events = h
        .datastore
        .saga_node_events_for(&[a.id(), b.id()])
        .await
        .unwrap();
    let of = |id: SagaUuid| -> Vec<(i64, String)> {
        events
            .iter()
            .filter(|e| e.saga_id.0 == id)
            .map(|e| (e.node_id, e.event_type.clone()))
            .collect()
    };
    assert_eq!(
        of(a.id()),
        vec![
            (0, "started".to_string()),
            (0, "succeeded".to_string()),
            (1, "started".to_string())
        ]
    );
    assert_eq!(of(b.id()), vec![(0, "started".to_string())]);
    assert!(of(c.id()).is_empty());
    assert_eq!(events.len(), 4);
    assert!(h.datastore.saga_list_stuck().await.unwrap().is_empty());
    assert_eq!(h.datastore.saga_count_stuck().await.unwrap(), 0);
    assert!(
        h.datastore
            .saga_node_events_for(&[])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_connection_probe_says_why_a_database_cannot_be_reached() {
    let h = Harness::new();
    let timeout = Duration::from_secs(3);
    DataStore::probe_connection(h.db.url(), timeout)
        .await
        .expect("the test database is reachable");

    match DataStore::probe_connection("postgresql://postgres@127.0.0.1:1/nothing", timeout).await {
        Err(Error::ServiceUnavailable { message }) => {
            assert!(message.to_lowercase().contains("refused"), "{message}")
        }
        other => panic!("expected unavailable, got {other:?}"),
    }

    let missing = h.db.url().rsplit_once('/').unwrap().0.to_string() + "/no_such_database";
    match DataStore::probe_connection(&missing, timeout).await {
        Err(Error::ServiceUnavailable { message }) => {
            assert!(message.contains("does not exist"), "{message}")
        }
        other => panic!("expected unavailable, got {other:?}"),
    }

    // The pool, by contrast, only knows that it timed out; both fail fast either way.
    let datastore = DataStore::new(
        &log(),
        "postgresql://postgres@127.0.0.1:1/nothing",
        PoolConfig {
            max_connections: 1,
            connection_timeout: Duration::from_millis(300),
        },
    );
    assert!(matches!(
        datastore.sled_list_all().await,
        Err(Error::ServiceUnavailable { .. })
    ));
}

#[tokio::test]
async fn stuck_sagas_are_those_with_a_failed_undo() {
    let h = Harness::new();
    let nexus = NexusUuid::new_v4();
    let (clean, stuck, unwinding) = (saga(nexus), saga(nexus), saga(nexus));
    for s in [&clean, &stuck, &unwinding] {
        h.datastore.saga_create(s).await.unwrap();
    }
    for e in [
        event(&clean, 0, "started", 0),
        event(&clean, 0, "succeeded", 1),
        event(&stuck, 0, "started", 0),
        event(&stuck, 0, "succeeded", 1),
        event(&stuck, 1, "failed", 2),
        event(&stuck, 0, "undo_started", 3),
        event(&stuck, 0, "undo_failed", 4),
        event(&unwinding, 0, "failed", 0),
        event(&unwinding, 0, "undo_started", 1),
    ] {
        h.datastore.saga_record_event(&e).await.unwrap();
    }
    let found: Vec<SagaUuid> = h
        .datastore
        .saga_list_stuck()
        .await
        .unwrap()
        .iter()
        .map(|s| s.id())
        .collect();
    assert_eq!(found, vec![stuck.id()]);
    assert_eq!(h.datastore.saga_count_stuck().await.unwrap(), 1);
}
