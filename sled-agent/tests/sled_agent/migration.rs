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
    let target_client = crate::sled_client(target_sled.local_addr(), crate::Role::Nexus);

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
        source_sled_id: env.sled.agent().id(),
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
            target_sled_id: self.target_sled.agent().id(),
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

/// The target accepts a migration's phases only from the sled Nexus named as the source when
/// it registered the target: another sled (with a valid certificate from the same CA) and
/// Nexus itself are refused, and the target is untouched; the named source then migrates.
#[tokio::test]
async fn a_migration_is_accepted_only_from_the_sled_nexus_named_as_its_source() {
    let m = prepare().await;
    let step = halyard_sled_agent_api::MigrationInStep {
        migration_id: m.migration_id,
        source_propolis_id: m.source,
        phase: MigrationPhase::Sync,
    };
    let impostor = halyard_common::ids::SledUuid::new_v4();
    for role in [crate::Role::Sled(impostor), crate::Role::Nexus] {
        let error = crate::sled_client(m.target_sled.local_addr(), role)
            .vmm_migration_in(&m.target, &step)
            .await
            .unwrap_err();
        assert_eq!(error.status().map(|s| s.as_u16()), Some(403), "{role}");
    }
    let target = m.target_client.vmm_get_state(&m.target).await.unwrap();
    assert_eq!(target.vmm_state.state, VmmState::Creating);
    assert_eq!(target.migration_in.unwrap().state, MigrationState::Pending);

    // The named source drives the migration through (over its own mutual TLS connection).
    m.migrate().await;
    let on_target = wait_for_state(&m.target_client, m.target, VmmState::Running).await;
    assert_eq!(
        on_target.migration_in.unwrap().state,
        MigrationState::Completed
    );
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
async fn a_migration_failing_on_the_source_leaves_the_target_waiting_and_the_source_can_migrate_again()
 {
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
    // The source can migrate again, to a new target, under a new migration.
    let again = m.register_target(MigrationUuid::new_v4()).await;
    m.migrate_to(again).await;
    let on_target = wait_for_state(&m.target_client, again.target, VmmState::Running).await;
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
    let out = source_last.state.migration_out.unwrap();
    assert_eq!(
        (out.migration_id, out.state),
        (again.migration_id, MigrationState::Completed)
    );
    assert_in_order(&m.env.nexus.reports_for(m.source));
}

/// Another migration of a prepared source: its id and its target.
#[derive(Clone, Copy)]
struct Next {
    migration_id: MigrationUuid,
    target: VmmUuid,
}

impl Migration {
    /// Registers a new target on the target sled for another migration of the source.
    async fn register_target(&self, migration_id: MigrationUuid) -> Next {
        let target = VmmUuid::new_v4();
        let mut body = register_body();
        body.migration_target = Some(MigrationTarget {
            migration_id,
            source_propolis_id: self.source,
            source_sled_id: self.env.sled.agent().id(),
            source_address: self.env.sled.local_addr(),
        });
        self.target_client
            .vmm_register(&target, &body)
            .await
            .unwrap();
        Next {
            migration_id,
            target,
        }
    }

    fn migrate_out(&self, next: Next) -> VmmPutStateBody {
        VmmPutStateBody {
            state: VmmStateRequested::MigrateOut {
                migration_id: next.migration_id,
                target_propolis_id: next.target,
                target_sled_id: self.target_sled.agent().id(),
                target_address: self.target_sled.local_addr(),
            },
        }
    }

    async fn migrate_to(&self, next: Next) {
        let state = self
            .env
            .client
            .vmm_put_state(&self.source, &self.migrate_out(next))
            .await
            .unwrap();
        assert_eq!(state.vmm_state.state, VmmState::Migrating);
    }

    fn first(&self) -> Next {
        Next {
            migration_id: self.migration_id,
            target: self.target,
        }
    }
}

#[tokio::test]
async fn a_repeated_migrate_out_is_answered_from_what_that_migration_did() {
    let m = prepare().await;
    m.migrate().await;
    // While it runs: the same request again is accepted, the same migration goes on.
    let repeat = m
        .env
        .client
        .vmm_put_state(&m.source, &m.migrate_out(m.first()))
        .await
        .unwrap();
    let out = repeat.migration_out.unwrap();
    assert_eq!(out.migration_id, m.migration_id);
    // The same migration to another target: refused.
    let other = Next {
        migration_id: m.migration_id,
        target: VmmUuid::new_v4(),
    };
    let err = m
        .env
        .client
        .vmm_put_state(&m.source, &m.migrate_out(other))
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(409), "{err}");
    wait_for_state(&m.target_client, m.target, VmmState::Running).await;
    eventually("the source's end", || {
        m.env.nexus.final_report(m.source).is_some()
    })
    .await;
    // After it completed (the source is gone, not yet unregistered): a repeat, say after a
    // lost reply or a Nexus restart, is answered with what the migration did, not refused.
    let repeat = m
        .env
        .client
        .vmm_put_state(&m.source, &m.migrate_out(m.first()))
        .await
        .unwrap_or_else(|e| panic!("a repeated MigrateOut of a completed migration: {e}"));
    assert_eq!(repeat.vmm_state.state, VmmState::Destroyed);
    let out = repeat.migration_out.unwrap();
    assert_eq!(
        (out.migration_id, out.state),
        (m.migration_id, MigrationState::Completed)
    );
    // The target runs on, untouched.
    let target = m.target_client.vmm_get_state(&m.target).await.unwrap();
    assert_eq!(target.vmm_state.state, VmmState::Running);
}

#[tokio::test]
async fn a_repeated_migrate_out_of_a_failed_migration_does_not_start_it_again() {
    let m = prepare().await;
    m.env
        .client
        .vmm_inject_fault(
            &m.source,
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
    let repeat = m
        .env
        .client
        .vmm_put_state(&m.source, &m.migrate_out(m.first()))
        .await
        .unwrap_or_else(|e| panic!("a repeated MigrateOut of a failed migration: {e}"));
    assert_eq!(repeat.vmm_state.state, VmmState::Running);
    let out = repeat.migration_out.unwrap();
    assert_eq!(
        (out.migration_id, out.state),
        (m.migration_id, MigrationState::Failed)
    );
}

#[tokio::test]
async fn a_lost_finish_reply_leaves_the_guest_running_on_the_target_only() {
    let m = prepare().await;
    m.env
        .client
        .vmm_inject_fault(&m.source, &SimFault::LoseNextFinishReply)
        .await
        .unwrap();
    m.migrate().await;
    let on_target = wait_for_state(&m.target_client, m.target, VmmState::Running).await;
    assert_eq!(
        on_target.migration_in.unwrap().state,
        MigrationState::Completed
    );
    // The target resumed: that is the commit. The source, which never heard so, must not
    // resume its own copy: it asks again, learns the migration completed and ends.
    eventually("the source's end", || {
        m.env.nexus.final_report(m.source).is_some()
            || m.env.nexus.reports_for(m.source).iter().any(|r| {
                r.state
                    .migration_out
                    .is_some_and(|s| s.state == MigrationState::Failed)
            })
    })
    .await;
    let source_reports = m.env.nexus.reports_for(m.source);
    let resumed: Vec<_> = source_reports
        .iter()
        .filter(|r| r.state.vmm_state.state == VmmState::Running && r.state.migration_out.is_some())
        .map(|r| r.state)
        .collect();
    assert!(
        resumed.is_empty(),
        "the source resumed the guest the target runs: {resumed:?}"
    );
    let source_last = m.env.nexus.final_report(m.source).unwrap();
    assert_eq!(source_last.state.vmm_state.state, VmmState::Destroyed);
    assert_eq!(
        source_last.state.migration_out.unwrap().state,
        MigrationState::Completed
    );
    assert!(m.env.client.vmm_list().await.unwrap().is_empty());
    assert_eq!(m.target_client.vmm_list().await.unwrap().len(), 1);
}
