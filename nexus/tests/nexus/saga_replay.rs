//! Replay: for every node of instance-start, a saga whose log stops at that node (as if Nexus
//! died just after starting it, before recording its result) is resumed by a fresh Nexus on the
//! same database and finishes, with the invariants holding.

use crate::context::{TestContext, log};
use halyard_common::InstanceState;
use halyard_common::ids::{GenericUuid, InstanceUuid};
use halyard_nexus::Nexus;
use halyard_nexus::app::sagas::{create_saga_dag, instance_start};

#[tokio::test]
async fn instance_start_resumes_from_a_log_cut_at_every_node() {
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
        // the saga unfinished. Its later side effects stay, as after a real crash.
        ctx.sql(&format!(
            "DELETE FROM saga_node_event WHERE saga_id = '{saga_id}' \
             AND node_id >= {index} AND node_id != {start_node} \
             AND NOT (node_id = {index} AND event_type = 'started'); \
             UPDATE saga SET saga_state = 'running' WHERE id = '{saga_id}'"
        ));

        // A fresh Nexus with the same identity resumes it.
        let fresh = Nexus::new(ctx.nexus().id(), ctx.nexus().datastore().clone(), &log());
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
