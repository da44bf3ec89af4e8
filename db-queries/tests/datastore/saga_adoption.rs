//! Several Nexus on one saga log: heartbeats, adoption of a silent Nexus's sagas (one adopter
//! per saga), and fencing (a write from anyone but the current owner at its current
//! generation is refused).

use crate::Harness;
use chrono::Utc;
use halyard_common::Generation;
use halyard_common::ids::{NexusUuid, SagaUuid};
use halyard_db_model::{Saga, SagaNodeEvent, SagaState};
use std::time::Duration;

const GONE_AFTER: Duration = Duration::from_secs(5);

fn new_saga(owner: NexusUuid) -> Saga {
    let now = Utc::now();
    Saga {
        id: SagaUuid::new_v4().into(),
        creator: owner.into(),
        current_sec: owner.into(),
        name: "test-saga".to_string(),
        dag: serde_json::json!({}),
        saga_state: SagaState::Running.into(),
        adopt_generation: Generation::new().into(),
        time_created: now,
        adopt_time: now,
        resume_failure: None,
    }
}

fn event(saga: SagaUuid, node_id: i64, writer: NexusUuid, generation: Generation) -> SagaNodeEvent {
    SagaNodeEvent {
        saga_id: saga.into(),
        node_id,
        event_type: "started".to_string(),
        data: None,
        event_time: Utc::now(),
        creator: writer.into(),
        adopt_generation: generation.into(),
    }
}

/// Registers a Nexus whose last heartbeat was `seconds_ago`.
async fn nexus_heard(h: &Harness, seconds_ago: u32) -> NexusUuid {
    let id = NexusUuid::new_v4();
    h.datastore
        .nexus_register(id, uuid::Uuid::new_v4())
        .await
        .unwrap();
    h.sql(&format!(
        "UPDATE nexus SET time_heartbeat = now() - interval '{seconds_ago} seconds' \
         WHERE id = '{id}'"
    ));
    id
}

#[tokio::test]
async fn only_sagas_of_a_silent_nexus_are_adopted_and_each_by_one_adopter() {
    let h = Harness::new();
    let live = nexus_heard(&h, 0).await;
    let silent = nexus_heard(&h, 60).await;
    let never_registered = NexusUuid::new_v4();
    let of_live = new_saga(live);
    let of_silent: Vec<Saga> = (0..5).map(|_| new_saga(silent)).collect();
    let of_unregistered = new_saga(never_registered);
    let mut done = new_saga(silent);
    done.saga_state = SagaState::Done.into();
    for saga in [&of_live, &of_unregistered, &done]
        .into_iter()
        .chain(&of_silent)
    {
        h.datastore.saga_create(saga).await.unwrap();
    }

    // Eight live Nexus race to adopt.
    let adopters: Vec<NexusUuid> =
        futures::future::join_all((0..8).map(|_| nexus_heard(&h, 0))).await;
    let results = futures::future::join_all(
        adopters
            .iter()
            .map(|a| h.datastore.saga_adopt_from_gone(*a, GONE_AFTER)),
    )
    .await;
    let mut adopted: Vec<(SagaUuid, NexusUuid)> = Vec::new();
    for (adopter, result) in adopters.iter().zip(results) {
        for saga in result.unwrap() {
            assert_eq!(saga.current_sec.0, *adopter);
            assert_eq!(saga.adopt_generation.0, Generation::new().next());
            adopted.push((saga.id(), *adopter));
        }
    }
    let mut ids: Vec<SagaUuid> = adopted.iter().map(|(s, _)| *s).collect();
    ids.sort();
    let mut expected: Vec<SagaUuid> = of_silent
        .iter()
        .chain([&of_unregistered])
        .map(|s| s.id())
        .collect();
    expected.sort();
    assert_eq!(
        ids, expected,
        "every saga of the silent and the never-registered Nexus, each adopted exactly once; \
         none of the live Nexus's, none done"
    );
    // The database agrees with what each adopter was told.
    for (saga, adopter) in &adopted {
        let row = h.datastore.saga_fetch(*saga).await.unwrap();
        assert_eq!(row.current_sec.0, *adopter);
        assert!([silent, never_registered].contains(&row.creator.0));
    }
    assert_eq!(
        h.datastore
            .saga_fetch(of_live.id())
            .await
            .unwrap()
            .current_sec
            .0,
        live
    );
    // A second pass finds nothing left to adopt.
    assert!(
        h.datastore
            .saga_adopt_from_gone(adopters[0], GONE_AFTER)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_stale_owners_writes_are_refused_once_its_saga_is_adopted() {
    let h = Harness::new();
    let stale = nexus_heard(&h, 0).await;
    let saga = new_saga(stale);
    let id = saga.id();
    h.datastore.saga_create(&saga).await.unwrap();
    let first = Generation::new();
    // While it owns the saga, its writes land.
    let written = h
        .datastore
        .saga_record_event(&event(id, 0, stale, first))
        .await
        .unwrap();
    assert!(written.refused.is_empty());

    // It goes silent; another adopts.
    h.sql(&format!(
        "UPDATE nexus SET time_heartbeat = now() - interval '1 minute' WHERE id = '{stale}'"
    ));
    let adopter = nexus_heard(&h, 0).await;
    let adopted = h
        .datastore
        .saga_adopt_from_gone(adopter, GONE_AFTER)
        .await
        .unwrap();
    assert_eq!(adopted.len(), 1);
    let second = adopted[0].adopt_generation.0;

    // The stale owner comes back: its event, alone or in a batch with another saga's, is
    // refused; the other saga's lands. Its state update is refused too.
    let other = new_saga(stale);
    h.datastore.saga_create(&other).await.unwrap();
    let late = event(id, 1, stale, first);
    let fine = event(other.id(), 0, stale, first);
    let written = h
        .datastore
        .saga_record_events(&[&late, &fine])
        .await
        .unwrap();
    assert_eq!(written.refused, vec![id]);
    assert!(
        !h.datastore
            .saga_update_state(id, SagaState::Done, stale, first)
            .await
            .unwrap()
    );
    // The adopter's writes land, and its event at node 0 (already written) is a no-op.
    let written = h
        .datastore
        .saga_record_events(&[
            &event(id, 0, adopter, second),
            &event(id, 1, adopter, second),
        ])
        .await
        .unwrap();
    assert!(written.refused.is_empty());
    // Nor can the adopter write under the old generation, or the old owner under the new.
    for (writer, generation) in [(adopter, first), (stale, second)] {
        let written = h
            .datastore
            .saga_record_event(&event(id, 2, writer, generation))
            .await
            .unwrap();
        assert_eq!(written.refused, vec![id], "{writer} at {generation:?}");
    }
    let log: Vec<(i64, String, i64)> = h
        .datastore
        .saga_node_events(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            (
                e.node_id,
                e.creator.0.to_string(),
                e.adopt_generation.0.as_i64(),
            )
        })
        .collect();
    assert_eq!(
        log,
        vec![(0, stale.to_string(), 1), (1, adopter.to_string(), 2)],
        "each event by the owner of its generation"
    );
    assert!(
        h.datastore
            .saga_update_state(id, SagaState::Done, adopter, second)
            .await
            .unwrap()
    );
    assert_eq!(h.datastore.saga_count_unresumable().await.unwrap(), 0);
}

#[tokio::test]
async fn a_second_process_with_the_same_id_supersedes_the_first_and_fences_its_sagas() {
    let h = Harness::new();
    let id = NexusUuid::new_v4();
    let first_run = uuid::Uuid::new_v4();
    h.datastore.nexus_register(id, first_run).await.unwrap();
    assert!(h.datastore.nexus_heartbeat(id, first_run).await.unwrap());
    let saga = new_saga(id);
    h.datastore.saga_create(&saga).await.unwrap();

    let second_run = uuid::Uuid::new_v4();
    h.datastore.nexus_register(id, second_run).await.unwrap();
    let taken = h.datastore.saga_take_own(id).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].adopt_generation.0, Generation::new().next());

    assert!(
        !h.datastore.nexus_heartbeat(id, first_run).await.unwrap(),
        "the first process learns it was superseded"
    );
    assert!(h.datastore.nexus_heartbeat(id, second_run).await.unwrap());
    let written = h
        .datastore
        .saga_record_event(&event(saga.id(), 0, id, Generation::new()))
        .await
        .unwrap();
    assert_eq!(
        written.refused,
        vec![saga.id()],
        "the first process's write"
    );
    let listed = h.datastore.nexus_list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0.incarnation, second_run);
    assert!(listed[0].1 < Duration::from_secs(5));

    // A saga that cannot be resumed is marked, counted, and unmarked once it is.
    h.datastore
        .saga_set_resume_failure(saga.id(), Some("unknown action"))
        .await
        .unwrap();
    assert_eq!(h.datastore.saga_count_unresumable().await.unwrap(), 1);
    h.datastore
        .saga_set_resume_failure(saga.id(), None)
        .await
        .unwrap();
    assert_eq!(h.datastore.saga_count_unresumable().await.unwrap(), 0);
}
