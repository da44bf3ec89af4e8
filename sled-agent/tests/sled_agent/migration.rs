use crate::recording_nexus::assert_in_order;
use crate::{TestEnv, eventually, log, register_body, sled_config, visible_delays, wait_for_state};
use halyard_common::ids::{MigrationUuid, VmmUuid};
use halyard_common::{MigrationState, VmmState};
use halyard_sled_agent::Server;
use halyard_sled_agent_api::{
    MigrationPhase, MigrationTarget, SimFault, VmmPutStateBody, VmmStateRequested,
};
use halyard_sled_agent_client::Client;

/// Two sled agents reporting to one recording Nexus, a VMM running on the first and a
/// migration target registered on the second.
struct Migration {
    env: TestEnv,
    target_sled: Server,
    target_client: Client,
    source: VmmUuid,
    target: VmmUuid,
    migration_id: MigrationUuid,
}

async fn prepare() -> Migration {
    let env = TestEnv::new(visible_delays()).await;
    let target_sled = Server::start(&sled_config(env.nexus.address(), visible_delays()), &log())
        .await
        .unwrap();
    env.nexus.watch_sled(target_sled.local_addr());
    let target_client = Client::new(&format!("http://{}", target_sled.local_addr()));

    let source = VmmUuid::new_v4();
    let body = register_body();
    env.client.vmm_register(&source, &body).await.unwrap();
    env.client
        .vmm_put_state(
            &source,
            &VmmPutStateBody {
                state: VmmStateRequested::Run,
            },
        )
        .await
        .unwrap();
    wait_for_state(&env.client, source, VmmState::Running).await;

    let target = VmmUuid::new_v4();
    let migration_id = MigrationUuid::new_v4();
    let mut target_body = body.clone();
    target_body.migration_target = Some(MigrationTarget {
        migration_id,
        source_propolis_id: source,
        source_address: env.sled.local_addr(),
    });
    let registered = target_client
        .vmm_register(&target, &target_body)
        .await
        .unwrap();
    assert_eq!(
        registered.migration_in.unwrap().state,
        MigrationState::Pending
    );
    // A migration target only starts by migration.
    let err = target_client
        .vmm_put_state(
            &target,
            &VmmPutStateBody {
                state: VmmStateRequested::Run,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(409));
    Migration {
        env,
        target_sled,
        target_client,
        source,
        target,
        migration_id,
    }
}

impl Migration {
    async fn migrate(&self) {
        let request = VmmStateRequested::MigrateOut {
            migration_id: self.migration_id,
            target_propolis_id: self.target,
            target_address: self.target_sled.local_addr(),
        };
        let state = self
            .env
            .client
            .vmm_put_state(&self.source, &VmmPutStateBody { state: request })
            .await
            .unwrap();
        assert_eq!(state.vmm_state.state, VmmState::Migrating);
        assert_eq!(
            state.migration_out.unwrap().state,
            MigrationState::InProgress
        );
    }
}

#[tokio::test]
async fn a_migration_moves_the_instance_and_both_sides_report_it() {
    let m = prepare().await;
    m.migrate().await;
    let on_target = wait_for_state(&m.target_client, m.target, VmmState::Running).await;
    assert_eq!(
        on_target.migration_in.unwrap().state,
        MigrationState::Completed
    );
    eventually("the source's end", || {
        m.env.nexus.final_report(m.source).is_some()
    })
    .await;
    let source_last = m.env.nexus.final_report(m.source).unwrap();
    assert_eq!(source_last.state.vmm_state.state, VmmState::Destroyed);
    assert_eq!(
        source_last.state.migration_out.unwrap().state,
        MigrationState::Completed
    );
    assert_eq!(source_last.still_listed, Some(false));
    eventually("the target's completion report", || {
        m.env.nexus.reports_for(m.target).last().is_some_and(|r| {
            r.state
                .migration_in
                .is_some_and(|s| s.state == MigrationState::Completed)
        })
    })
    .await;
    assert_in_order(&m.env.nexus.reports_for(m.source));
    assert_in_order(&m.env.nexus.reports_for(m.target));
    assert!(m.env.client.vmm_list().await.unwrap().is_empty());
    assert_eq!(m.target_client.vmm_list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_migration_failing_on_the_target_leaves_the_instance_on_its_source() {
    let m = prepare().await;
    m.target_client
        .vmm_inject_fault(
            &m.target,
            &SimFault::FailMigration {
                phase: MigrationPhase::Transfer,
            },
        )
        .await
        .unwrap();
    m.migrate().await;
    eventually("the source's failed migration", || {
        m.env.nexus.reports_for(m.source).last().is_some_and(|r| {
            r.state
                .migration_out
                .is_some_and(|s| s.state == MigrationState::Failed)
                && r.state.vmm_state.state == VmmState::Running
        })
    })
    .await;
    eventually("the target's end", || {
        m.env.nexus.final_report(m.target).is_some()
    })
    .await;
    let target_last = m.env.nexus.final_report(m.target).unwrap();
    assert_eq!(
        target_last.state.migration_in.unwrap().state,
        MigrationState::Failed
    );
    assert_eq!(target_last.still_listed, Some(false));
    assert_eq!(
        m.env
            .client
            .vmm_get_state(&m.source)
            .await
            .unwrap()
            .vmm_state
            .state,
        VmmState::Running
    );
}

#[tokio::test]
async fn a_migration_failing_on_the_source_leaves_the_target_waiting() {
    let m = prepare().await;
    m.env
        .client
        .vmm_inject_fault(
            &m.source,
            &SimFault::FailMigration {
                phase: MigrationPhase::Pause,
            },
        )
        .await
        .unwrap();
    m.migrate().await;
    eventually("the source's failed migration", || {
        m.env.nexus.reports_for(m.source).last().is_some_and(|r| {
            r.state
                .migration_out
                .is_some_and(|s| s.state == MigrationState::Failed)
        })
    })
    .await;
    let source = m.env.client.vmm_get_state(&m.source).await.unwrap();
    assert_eq!(source.vmm_state.state, VmmState::Running);
    // The target got the first phase only; Nexus retires it by unregistering it.
    let target = m.target_client.vmm_get_state(&m.target).await.unwrap();
    assert_eq!(target.vmm_state.state, VmmState::Migrating);
    m.target_client.vmm_unregister(&m.target).await.unwrap();
    eventually("the target's end", || {
        m.env.nexus.final_report(m.target).is_some()
    })
    .await;
    // A second migration of the same source is refused: it already tried this one.
    let err = m
        .env
        .client
        .vmm_put_state(
            &m.source,
            &VmmPutStateBody {
                state: VmmStateRequested::MigrateOut {
                    migration_id: MigrationUuid::new_v4(),
                    target_propolis_id: VmmUuid::new_v4(),
                    target_address: m.target_sled.local_addr(),
                },
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(409));
}
