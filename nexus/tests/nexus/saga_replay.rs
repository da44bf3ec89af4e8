//! Idempotent replay of a recorded log prefix, for every node of instance-start.
//!
//! This is not a crash test. The saga first runs to its end, so every node's effects exist
//! (its VMM record, its reservation, the VMM registered and running on its sled); only then is
//! its log cut back to "node N started" and the saga resumed by a fresh Nexus. What that
//! proves: re-running node N's action and every later one, against effects that already
//! exist, is idempotent (no second VMM, the same active VMM, the invariants hold). A crash
//! with node N's and the later nodes' effects really absent is `crash_replay.rs` (its
//! `started` point: Nexus killed right after the node's `started` event, before its action).

use crate::context::{TestContext, log};
use halyard_common::InstanceState;
use halyard_common::ids::{GenericUuid, InstanceUuid};
use halyard_nexus::Nexus;
use halyard_nexus::app::sagas::{create_saga_dag, instance_start};

#[tokio::test]
async fn instance_start_replays_a_recorded_prefix_idempotently_over_existing_effects() {
    let ctx = TestContext::new().await;
    let project = ctx.project("p").await;
    let nodes: Vec<(usize, String)> =
        create_saga_dag::<instance_start::SagaInstanceStart>(instance_start::Params {
            instance_id: InstanceUuid::new_v4(),
        })
        .unwrap()
        .get_nodes()
        .map(|n| (n.index().index(), n.name().as_ref().to_string()))
        .collect();
    // steno appends its own start and end nodes after the saga's.
    let start_node = nodes.len();

    for (index, name) in &nodes {
        let id = ctx.instance(&project, &format!("vm-{index}"), 2).await;
        let saga = ctx
            .nexus()
            .run_saga::<instance_start::SagaInstanceStart>(instance_start::Params {
                instance_id: id,
            })
            .await;
        assert!(saga.is_ok());
        let saga_id = ctx.sql(
            "SELECT id FROM saga WHERE name = 'instance-start' ORDER BY time_created DESC LIMIT 1",
        );
        let saga_id = saga_id.trim();

        // Cut the log: keep what happened before `name` and its "started" event only, and mark
        // the saga unfinished. The effects of `name` and of every later node stay: unlike
        // after a crash there, they exist already, and replaying over them must change nothing.
        ctx.sql(&format!(
            "DELETE FROM saga_node_event WHERE saga_id = '{saga_id}' \
             AND node_id >= {index} AND node_id != {start_node} \
             AND NOT (node_id = {index} AND event_type = 'started'); \
             UPDATE saga SET saga_state = 'running' WHERE id = '{saga_id}'"
        ));

        // A fresh Nexus with the same identity resumes it.
        let fresh = Nexus::new(
            ctx.nexus().id(),
            ctx.nexus().datastore().clone(),
            ctx.nexus().sled_http().clone(),
            &log(),
        );
        assert_eq!(fresh.resume_sagas().await.unwrap(), 1, "node {name}");
        ctx.eventually(
            &format!("the saga resumed at {name} to finish"),
            async |ctx: &TestContext| {
                ctx.sql(&format!(
                    "SELECT saga_state FROM saga WHERE id = '{saga_id}'"
                ))
                .trim()
                    == "done"
            },
        )
        .await;
        ctx.wait_for(id, InstanceState::Running).await;
        ctx.assert_quiet_and_consistent().await;
        let history = fresh.datastore().instance_vmm_history(id).await.unwrap();
        assert_eq!(history.len(), 1, "replay at {name} made a second VMM");
        assert_eq!(
            ctx.view(id)
                .await
                .instance
                .runtime
                .active_vmm()
                .map(|v| v.into_untyped_uuid()),
            Some(history[0].id().into_untyped_uuid())
        );
    }
}
