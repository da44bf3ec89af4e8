//! The test of the tests: the invariant checker (`halyard_nexus_test_utils`) must fail on
//! every state it exists to catch. Each test builds a real system (Nexus, two sim sled agents,
//! a database of its own) with two running instances, checks it is clean, breaks exactly one
//! thing behind Nexus's back (in SQL, or on a sled agent), and asserts the checker names the
//! broken rule, and only the rules that break implies.

use crate::context::{SLED_RAM_GIB, SLED_THREADS, TestContext};
use halyard_common::ids::{GenericUuid, InstanceUuid, SledUuid, VmmUuid};
use halyard_common::{ByteCount, InstanceState};
use halyard_nexus_external_api::params::InstanceNetworkInterfaceAttachment;
use halyard_sled_agent_api::VmmRegisterBody;
use halyard_test_db::shared_cluster;

/// One running instance: its id, its active VMM and that VMM's sled.
#[derive(Clone, Copy)]
struct Running {
    instance: InstanceUuid,
    vmm: VmmUuid,
    sled: SledUuid,
}

/// A clean system with two running instances, `a` and `b` (2 vCPUs, 1 GiB each).
struct CleanSystem {
    ctx: TestContext,
    a: Running,
    b: Running,
}

impl CleanSystem {
    async fn new() -> CleanSystem {
        let ctx = TestContext::new().await;
        let project = ctx.project("p").await;
        let mut running = Vec::new();
        for name in ["a", "b"] {
            // Without interfaces: these breaks are of VMMs and reservations, and the mappings'
            // rules (which a misplaced VMM breaks too) have tests of their own below.
            let instance = ctx
                .instance_with(&project, name, 2, InstanceNetworkInterfaceAttachment::None)
                .await;
            ctx.nexus().instance_start(instance).await.unwrap();
            ctx.wait_for(instance, InstanceState::Running).await;
            let vmm = ctx.view(instance).await.active_vmm.unwrap();
            running.push(Running {
                instance,
                vmm: vmm.id(),
                sled: vmm.sled_id(),
            });
        }
        // The checker must pass on the clean system, or its failures below prove nothing.
        ctx.assert_quiet_and_consistent().await;
        assert_eq!(ctx.invariant_violations().await, Vec::<String>::new());
        CleanSystem {
            ctx,
            a: running[0],
            b: running[1],
        }
    }

    /// The sled other than `sled` (the context has two).
    fn other_sled(&self, sled: SledUuid) -> SledUuid {
        self.ctx
            .sleds
            .iter()
            .map(|s| s.agent().id())
            .find(|s| *s != sled)
            .unwrap()
    }

    fn sled_agent(&self, sled: SledUuid) -> &halyard_sled_agent::Server {
        self.ctx
            .sleds
            .iter()
            .find(|s| s.agent().id() == sled)
            .unwrap()
    }

    /// Runs `sql` (one transaction) behind Nexus's back.
    fn break_with(&self, sql: &str) {
        self.ctx.sql(&format!("BEGIN; {sql}; COMMIT"));
    }

    /// The checker's verdict, once.
    async fn violations(&self) -> Vec<String> {
        self.ctx.invariant_violations().await
    }
}

/// Asserts that every violation is of one of `rules` (each the start of a violation's text)
/// and that each rule is broken at least once.
fn assert_rules_broken(violations: &[String], rules: &[&str]) {
    let all = violations.join("\n");
    for rule in rules {
        assert!(
            violations.iter().any(|v| v.starts_with(rule)),
            "the checker did not report \"{rule}\"; it reported:\n{all}"
        );
    }
    for violation in violations {
        assert!(
            rules.iter().any(|rule| violation.starts_with(rule)),
            "the checker reported a violation this break does not imply: {violation}\n\
             all it reported:\n{all}"
        );
    }
}

const GIB: u64 = 1 << 30;

#[tokio::test]
async fn a_leftover_live_vmm_behind_a_stopped_instance_is_flagged() {
    let system = CleanSystem::new().await;
    let a = system.a;
    // The instance says stopped; its VMM still runs, reserved, on its sled agent.
    system.break_with(&format!(
        "UPDATE instance SET active_propolis_id = NULL, nexus_state = 'no_vmm', \
         state_generation = state_generation + 1 WHERE id = '{}'",
        a.instance
    ));
    let violations = system.violations().await;
    assert_rules_broken(&violations, &["live VMM its instance does not point at"]);
    assert!(violations[0].contains(&a.vmm.to_string()), "{violations:?}");
}

#[tokio::test]
async fn an_active_pointer_to_a_retired_vmm_is_flagged() {
    let system = CleanSystem::new().await;
    let a = system.a;
    system.break_with(&format!(
        "UPDATE vmm SET time_deleted = now() WHERE id = '{}'",
        a.vmm
    ));
    assert_rules_broken(
        &system.violations().await,
        &[
            "instance's active VMM is not live",
            "reservation without a live VMM",
            "VMM runs on a sled agent but is not live in the database",
        ],
    );
}

#[tokio::test]
async fn a_target_pointer_to_another_instances_vmm_is_flagged() {
    let system = CleanSystem::new().await;
    let (a, b) = (system.a, system.b);
    system.break_with(&format!(
        "UPDATE instance SET target_propolis_id = '{}', migration_id = '{}', \
         state_generation = state_generation + 1 WHERE id = '{}'",
        b.vmm,
        uuid::Uuid::new_v4(),
        a.instance
    ));
    let violations = system.violations().await;
    assert_rules_broken(
        &violations,
        &["instance's target VMM belongs to another instance"],
    );
    assert!(violations[0].contains(&b.vmm.to_string()), "{violations:?}");
}

#[tokio::test]
async fn a_target_pointer_to_a_missing_vmm_is_flagged() {
    let system = CleanSystem::new().await;
    system.break_with(&format!(
        "UPDATE instance SET target_propolis_id = '{}', migration_id = '{}', \
         state_generation = state_generation + 1 WHERE id = '{}'",
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        system.a.instance
    ));
    assert_rules_broken(
        &system.violations().await,
        &["instance's target VMM does not exist"],
    );
}

#[tokio::test]
async fn an_instance_with_three_live_vmms_is_flagged() {
    let system = CleanSystem::new().await;
    let a = system.a;
    for _ in 0..2 {
        system.break_with(&format!(
            "INSERT INTO vmm (id, instance_id, sled_id, propolis_ip, propolis_port, state, \
             generation, time_state_updated, time_created) \
             SELECT '{}', instance_id, sled_id, propolis_ip, propolis_port, 'running', 1, now(), \
             now() FROM vmm WHERE id = '{}'",
            uuid::Uuid::new_v4(),
            a.vmm
        ));
    }
    assert_rules_broken(
        &system.violations().await,
        &[
            "instance with more than an active and a target VMM",
            "live VMM its instance does not point at",
            "live VMM without a reservation",
            "VMM is live in the database but its sled's agent does not run it",
        ],
    );
}

#[tokio::test]
async fn a_stuck_saga_is_flagged_and_a_cleanly_unwound_one_is_not() {
    let system = CleanSystem::new().await;
    let (stuck, unwound) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let sec = uuid::Uuid::new_v4();
    // Both are `done`, as steno records them; one's undo failed.
    for (saga, last_undo) in [(stuck, "undo_failed"), (unwound, "undo_finished")] {
        system.break_with(&format!(
            "INSERT INTO saga (id, creator, current_sec, name, dag, saga_state, \
             adopt_generation, time_created, adopt_time) \
             VALUES ('{saga}', '{sec}', '{sec}', 'instance-start', '{{}}', 'done', 1, now(), now()); \
             INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) \
             VALUES ('{saga}', 0, 'started', NULL, now(), '{sec}'), \
                    ('{saga}', 0, 'succeeded', 'null', now(), '{sec}'), \
                    ('{saga}', 1, 'started', NULL, now(), '{sec}'), \
                    ('{saga}', 1, 'failed', '\"injected\"', now(), '{sec}'), \
                    ('{saga}', 0, 'undo_started', NULL, now(), '{sec}'), \
                    ('{saga}', 0, '{last_undo}', NULL, now(), '{sec}')"
        ));
    }
    let violations = system.violations().await;
    assert_rules_broken(&violations, &["saga stuck after a failed undo"]);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains(&stuck.to_string()), "{violations:?}");
}

#[tokio::test]
async fn a_saga_log_written_by_two_nexus_in_one_generation_is_flagged() {
    let system = CleanSystem::new().await;
    let (fenced, unfenced) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let (first, second) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    // Both adopted once (generation 2) from `first` by `second`. In one, `second`'s event is
    // recorded at generation 1, beside `first`'s: two writers in one generation, which
    // fencing forbids. The other is clean: `first` wrote generation 1, `second` generation 2.
    for (saga, second_writes_at) in [(fenced, 1), (unfenced, 2)] {
        system.break_with(&format!(
            "INSERT INTO saga (id, creator, current_sec, name, dag, saga_state, \
             adopt_generation, time_created, adopt_time) \
             VALUES ('{saga}', '{first}', '{second}', 'instance-start', '{{}}', 'done', 2, \
                     now(), now()); \
             INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, \
                                          creator, adopt_generation) \
             VALUES ('{saga}', 0, 'started', NULL, now(), '{first}', 1), \
                    ('{saga}', 0, 'succeeded', 'null', now(), '{second}', {second_writes_at})"
        ));
    }
    // And one with an event from a generation it never reached.
    let ahead = uuid::Uuid::new_v4();
    system.break_with(&format!(
        "INSERT INTO saga (id, creator, current_sec, name, dag, saga_state, adopt_generation, \
         time_created, adopt_time) \
         VALUES ('{ahead}', '{first}', '{first}', 'instance-start', '{{}}', 'done', 1, now(), \
                 now()); \
         INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator, \
                                      adopt_generation) \
         VALUES ('{ahead}', 0, 'started', NULL, now(), '{first}', 3)"
    ));
    let violations = system.violations().await;
    assert_rules_broken(
        &violations,
        &[
            "saga log written by two Nexus in one adoption generation",
            "saga event from a generation the saga never reached",
        ],
    );
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(
        violations[0].contains(&fenced.to_string()),
        "{violations:?}"
    );
    assert!(violations[1].contains(&ahead.to_string()), "{violations:?}");
}

#[tokio::test]
async fn an_unfinished_saga_is_flagged() {
    let system = CleanSystem::new().await;
    let (saga, sec) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    // Owned by a Nexus that is not running: nothing will finish it.
    system.break_with(&format!(
        "INSERT INTO saga (id, creator, current_sec, name, dag, saga_state, adopt_generation, \
         time_created, adopt_time) \
         VALUES ('{saga}', '{sec}', '{sec}', 'instance-start', '{{}}', 'running', 1, now(), now())"
    ));
    assert_rules_broken(&system.violations().await, &["saga left unfinished"]);
}

#[tokio::test]
async fn a_vmm_on_the_wrong_sled_is_flagged() {
    let system = CleanSystem::new().await;
    let a = system.a;
    let other = system.other_sled(a.sled);
    // The database moves the VMM, its reservation and the sleds' totals, consistently; the
    // VMM still runs on its old sled.
    system.break_with(&format!(
        "UPDATE sled SET reserved_hardware_threads = reserved_hardware_threads - 2, \
         reserved_physical_ram = reserved_physical_ram - {GIB} WHERE id = '{old}'; \
         UPDATE sled SET reserved_hardware_threads = reserved_hardware_threads + 2, \
         reserved_physical_ram = reserved_physical_ram + {GIB} WHERE id = '{other}'; \
         UPDATE sled_reservation SET sled_id = '{other}' WHERE vmm_id = '{vmm}'; \
         UPDATE vmm SET sled_id = '{other}' WHERE id = '{vmm}'",
        old = a.sled,
        vmm = a.vmm,
    ));
    assert_rules_broken(
        &system.violations().await,
        &[
            "VMM runs on another sled than the database's",
            "VMM is live in the database but its sled's agent does not run it",
        ],
    );
}

#[tokio::test]
async fn a_vmm_on_two_sleds_is_flagged() {
    let system = CleanSystem::new().await;
    let a = system.a;
    let other = system.other_sled(a.sled);
    // The other sled's agent is told to run the same VMM too.
    system
        .sled_agent(other)
        .agent()
        .vmm_register(
            a.vmm,
            VmmRegisterBody {
                instance_id: a.instance,
                ncpus: 2,
                memory: ByteCount::from_gibibytes_u32(1),
                hostname: "a".to_string(),
                migration_target: None,
                disks: Vec::new(),
                nics: Vec::new(),
            },
        )
        .unwrap();
    assert_rules_broken(
        &system.violations().await,
        &[
            "VMM runs on more than one sled",
            "VMM runs on another sled than the database's",
            // The second copy sits in `creating`: nobody asked it to run.
            "VMM state differs between the database and its sled agent",
        ],
    );
}

#[tokio::test]
async fn a_vmm_unknown_to_the_database_is_flagged() {
    let system = CleanSystem::new().await;
    let a = system.a;
    system
        .sled_agent(a.sled)
        .agent()
        .vmm_register(
            VmmUuid::new_v4(),
            VmmRegisterBody {
                instance_id: a.instance,
                ncpus: 2,
                memory: ByteCount::from_gibibytes_u32(1),
                hostname: "a".to_string(),
                migration_target: None,
                disks: Vec::new(),
                nics: Vec::new(),
            },
        )
        .unwrap();
    assert_rules_broken(
        &system.violations().await,
        &["VMM runs on a sled agent but is not live in the database"],
    );
}

#[tokio::test]
async fn a_vmm_running_for_another_instance_is_flagged() {
    let system = CleanSystem::new().await;
    let (a, b) = (system.a, system.b);
    // The database swaps the two instances' VMMs (pointers, owners, reservations: consistent
    // in itself; both instances have one size); the sled agents run them as before.
    system.break_with(&format!(
        "UPDATE instance SET active_propolis_id = NULL, nexus_state = 'no_vmm' \
         WHERE id IN ('{ai}', '{bi}'); \
         UPDATE vmm SET instance_id = '{bi}' WHERE id = '{av}'; \
         UPDATE vmm SET instance_id = '{ai}' WHERE id = '{bv}'; \
         UPDATE sled_reservation SET instance_id = '{bi}' WHERE vmm_id = '{av}'; \
         UPDATE sled_reservation SET instance_id = '{ai}' WHERE vmm_id = '{bv}'; \
         UPDATE instance SET active_propolis_id = '{bv}', nexus_state = 'vmm' WHERE id = '{ai}'; \
         UPDATE instance SET active_propolis_id = '{av}', nexus_state = 'vmm' WHERE id = '{bi}'",
        ai = a.instance,
        bi = b.instance,
        av = a.vmm,
        bv = b.vmm,
    ));
    let violations = system.violations().await;
    assert_rules_broken(
        &violations,
        &["VMM runs for another instance than the database's"],
    );
    assert_eq!(violations.len(), 2, "{violations:?}");
}

#[tokio::test]
async fn a_vmm_state_the_sled_agent_does_not_report_is_flagged() {
    let system = CleanSystem::new().await;
    system.break_with(&format!(
        "UPDATE vmm SET state = 'rebooting', generation = generation + 1 WHERE id = '{}'",
        system.a.vmm
    ));
    let violations = system.violations().await;
    assert_rules_broken(
        &violations,
        &["VMM state differs between the database and its sled agent"],
    );
    assert!(
        violations[0].contains("rebooting in the database, running on sled"),
        "{violations:?}"
    );
}

#[tokio::test]
async fn a_live_vmm_without_a_reservation_is_flagged() {
    let system = CleanSystem::new().await;
    let a = system.a;
    system.break_with(&format!(
        "UPDATE sled SET reserved_hardware_threads = reserved_hardware_threads - 2, \
         reserved_physical_ram = reserved_physical_ram - {GIB} WHERE id = '{}'; \
         DELETE FROM sled_reservation WHERE vmm_id = '{}'",
        a.sled, a.vmm
    ));
    assert_rules_broken(
        &system.violations().await,
        &["live VMM without a reservation"],
    );
}

#[tokio::test]
async fn reservations_of_the_wrong_size_are_flagged() {
    let system = CleanSystem::new().await;
    let (a, b) = (system.a, system.b);
    // One too many threads for a, one byte too much memory for b; the sleds' totals follow.
    system.break_with(&format!(
        "UPDATE sled_reservation SET hardware_threads = hardware_threads + 1 WHERE vmm_id = '{}'; \
         UPDATE sled SET reserved_hardware_threads = reserved_hardware_threads + 1 WHERE id = '{}'; \
         UPDATE sled_reservation SET physical_ram = physical_ram + 1 WHERE vmm_id = '{}'; \
         UPDATE sled SET reserved_physical_ram = reserved_physical_ram + 1 WHERE id = '{}'",
        a.vmm, a.sled, b.vmm, b.sled
    ));
    let violations = system.violations().await;
    assert_rules_broken(
        &violations,
        &["reservation of another size than its instance"],
    );
    assert_eq!(violations.len(), 2, "{violations:?}");
}

#[tokio::test]
async fn a_reservation_on_another_sled_than_its_vmm_is_flagged() {
    let system = CleanSystem::new().await;
    let a = system.a;
    let other = system.other_sled(a.sled);
    system.break_with(&format!(
        "UPDATE sled SET reserved_hardware_threads = reserved_hardware_threads - 2, \
         reserved_physical_ram = reserved_physical_ram - {GIB} WHERE id = '{old}'; \
         UPDATE sled SET reserved_hardware_threads = reserved_hardware_threads + 2, \
         reserved_physical_ram = reserved_physical_ram + {GIB} WHERE id = '{other}'; \
         UPDATE sled_reservation SET sled_id = '{other}' WHERE vmm_id = '{vmm}'",
        old = a.sled,
        vmm = a.vmm,
    ));
    assert_rules_broken(
        &system.violations().await,
        &["reservation on another sled than its VMM"],
    );
}

#[tokio::test]
async fn sled_totals_that_disagree_with_the_reservations_are_flagged() {
    let system = CleanSystem::new().await;
    system.break_with(&format!(
        "UPDATE sled SET reserved_physical_ram = reserved_physical_ram + 1 WHERE id = '{}'",
        system.a.sled
    ));
    assert_rules_broken(
        &system.violations().await,
        &["sled's reserved totals disagree with its reservations"],
    );
}

/// Grows instance `running`'s size to `ncpus` and `memory` bytes in the database, and its
/// reservation and its sled's totals with it (consistent, but beyond the sled's capacity).
fn grow_instance(ncpus: u64, memory: u64, running: Running) -> String {
    format!(
        "UPDATE sled SET \
           reserved_hardware_threads = reserved_hardware_threads + {ncpus} \
             - (SELECT hardware_threads FROM sled_reservation WHERE vmm_id = '{vmm}'), \
           reserved_physical_ram = reserved_physical_ram + {memory} \
             - (SELECT physical_ram FROM sled_reservation WHERE vmm_id = '{vmm}') \
         WHERE id = '{sled}'; \
         UPDATE sled_reservation SET hardware_threads = {ncpus}, physical_ram = {memory} \
         WHERE vmm_id = '{vmm}'; \
         UPDATE instance SET ncpus = {ncpus}, memory = {memory} WHERE id = '{instance}'",
        vmm = running.vmm,
        sled = running.sled,
        instance = running.instance,
    )
}

/// Overruns a sled's capacity with `grow`: first proves the database's own constraint refuses
/// it, then drops that constraint (in this test's database only) and makes the overrun.
fn overrun_capacity(system: &CleanSystem, grow: &str) {
    let cluster = shared_cluster();
    let refused = cluster.psql(system.ctx.db.name(), &format!("BEGIN; {grow}; COMMIT"));
    assert!(
        refused.is_err(),
        "the database's constraint should have refused: {refused:?}"
    );
    system.break_with("ALTER TABLE sled DROP CONSTRAINT reservations_within_capacity");
    system.break_with(grow);
}

#[tokio::test]
async fn hardware_threads_beyond_capacity_are_flagged() {
    let system = CleanSystem::new().await;
    let grow = grow_instance(u64::from(SLED_THREADS) + 1, GIB, system.a);
    overrun_capacity(&system, &grow);
    assert_rules_broken(
        &system.violations().await,
        &["sled's reserved hardware threads exceed its capacity"],
    );
}

#[tokio::test]
async fn memory_beyond_capacity_is_flagged() {
    let system = CleanSystem::new().await;
    let grow = grow_instance(2, (u64::from(SLED_RAM_GIB) + 1) * GIB, system.a);
    overrun_capacity(&system, &grow);
    assert_rules_broken(
        &system.violations().await,
        &["sled's reserved memory exceeds its capacity"],
    );
}

#[tokio::test]
async fn a_live_vmm_and_a_reservation_on_an_expunged_sled_are_flagged() {
    let system = CleanSystem::new().await;
    system.break_with(&format!(
        "UPDATE sled SET time_expunged = now() WHERE id = '{}'",
        system.a.sled
    ));
    assert_rules_broken(
        &system.violations().await,
        &[
            "live VMM on an expunged sled",
            "reservation on an expunged sled",
        ],
    );
}

#[tokio::test]
async fn a_live_vmm_and_a_reservation_older_than_a_silent_sleds_mark_are_flagged() {
    let system = CleanSystem::new().await;
    system.break_with(&format!(
        "UPDATE sled SET time_vmms_failed = now() WHERE id = '{}'",
        system.a.sled
    ));
    assert_rules_broken(
        &system.violations().await,
        &[
            "live VMM made before its sled's VMMs were failed for silence",
            "reservation made before its sled's VMMs were failed for silence",
        ],
    );
}

#[tokio::test]
async fn saga_leftovers_older_than_the_bound_are_flagged() {
    let system = CleanSystem::new().await;
    // The leftover task must not release them while the checker looks.
    system
        .ctx
        .nexus()
        .set_leftover_grace(std::time::Duration::from_secs(86_400));
    let project = halyard_common::NameOrId::Name("p".parse().unwrap());
    let stopped = system.ctx.instance(&project, "c", 2).await;
    let long_ago = "now() - interval '1 hour'";
    let creating = VmmUuid::new_v4();
    system.break_with(&format!(
        "UPDATE instance SET nexus_state = 'vmm', active_propolis_id = '{}', \
         state_generation = state_generation + 1, time_state_updated = {long_ago} \
         WHERE id = '{stopped}'; \
         INSERT INTO sled_reservation (vmm_id, sled_id, instance_id, hardware_threads, \
           physical_ram, time_created) VALUES ('{}', '{}', '{}', 2, {GIB}, {long_ago}); \
         UPDATE sled SET reserved_hardware_threads = reserved_hardware_threads + 2, \
           reserved_physical_ram = reserved_physical_ram + {GIB} WHERE id = '{}'; \
         INSERT INTO vmm (id, time_created, time_deleted, instance_id, sled_id, propolis_ip, \
           propolis_port, state, generation, time_state_updated) \
         SELECT '{creating}', {long_ago}, NULL, '{}', sled_id, propolis_ip, propolis_port, \
           'creating', 1, {long_ago} FROM vmm WHERE id = '{}'",
        VmmUuid::new_v4(),
        VmmUuid::new_v4(),
        system.a.sled,
        system.b.instance,
        system.a.sled,
        system.b.instance,
        system.b.vmm,
    ));
    let violations = system.violations().await;
    assert_rules_broken(
        &violations,
        &[
            "saga leftover not released within the leftover task's bound",
            "instance's active VMM does not exist",
            "reservation without a live VMM",
            "live VMM its instance does not point at",
            "live VMM without a reservation",
            "VMM is live in the database but its sled's agent does not run it",
        ],
    );
    let leftovers: Vec<&String> = violations
        .iter()
        .filter(|v| v.starts_with("saga leftover"))
        .collect();
    assert_eq!(leftovers.len(), 3, "{leftovers:?}");
}

/// A clean system with disks: four sleds with storage, two detached 1 MiB disks (`a`, `b`,
/// three regions each) and a stopped instance.
struct CleanDisks {
    ctx: TestContext,
    a: halyard_common::ids::DiskUuid,
    instance: InstanceUuid,
}

impl CleanDisks {
    async fn new() -> CleanDisks {
        let ctx = TestContext::with_storage(4, ByteCount::from_gibibytes_u32(1)).await;
        let project = ctx.project("p").await;
        let project_id = ctx.nexus().project_view(&project).await.unwrap().id();
        let instance = ctx.instance(&project, "vm", 1).await;
        let block_size = halyard_common::BlockSize::try_from(512u32).unwrap();
        let mut disks = Vec::new();
        for name in ["a", "b"] {
            let disk = ctx
                .nexus()
                .disk_create(
                    project_id,
                    halyard_nexus_external_api::params::DiskCreate {
                        name: name.parse().unwrap(),
                        description: String::new(),
                        disk_backend: halyard_nexus_external_api::params::DiskBackend::Distributed(
                            halyard_nexus_external_api::params::DiskSource::Blank { block_size },
                        ),
                        size: ByteCount::from_mebibytes_u32(1),
                    },
                )
                .await
                .unwrap();
            disks.push(disk.id());
        }
        ctx.assert_quiet_and_consistent().await;
        assert_eq!(ctx.invariant_violations().await, Vec::<String>::new());
        CleanDisks {
            ctx,
            a: disks[0],
            instance,
        }
    }

    fn break_with(&self, sql: &str) {
        self.ctx.sql(&format!("BEGIN; {sql}; COMMIT"));
    }

    /// One of disk `a`'s regions: (region, sled).
    fn region_of_a(&self) -> (String, String) {
        let row = self.ctx.sql(&format!(
            "SELECT id, sled_id FROM region WHERE disk_id = '{}' ORDER BY id LIMIT 1",
            self.a
        ));
        let (region, sled) = row.trim().split_once('|').unwrap();
        (region.to_string(), sled.to_string())
    }

    /// A sled that holds no region of disk `a` (there are four sleds, three regions).
    fn sled_without_a(&self) -> String {
        self.ctx
            .sql(&format!(
                "SELECT id FROM sled WHERE id NOT IN \
                 (SELECT sled_id FROM region WHERE disk_id = '{}') LIMIT 1",
                self.a
            ))
            .trim()
            .to_string()
    }

    /// Drops the constraint of `table` whose definition contains `definition` (in this test's
    /// database only), after proving it refuses `sql`.
    fn drop_constraint_refusing(&self, table: &str, definition: &str, sql: &str) {
        let cluster = shared_cluster();
        let refused = cluster.psql(self.ctx.db.name(), &format!("BEGIN; {sql}; COMMIT"));
        assert!(
            refused.is_err(),
            "the database should have refused: {refused:?}"
        );
        let name = self.ctx.sql(&format!(
            "SELECT conname FROM pg_constraint WHERE conrelid = '{table}'::regclass \
             AND pg_get_constraintdef(oid) LIKE '%{definition}%'"
        ));
        self.break_with(&format!(
            "ALTER TABLE {table} DROP CONSTRAINT {}",
            name.trim()
        ));
    }

    async fn violations(&self) -> Vec<String> {
        self.ctx.invariant_violations().await
    }
}

#[tokio::test]
async fn a_region_of_a_deleted_disk_is_flagged() {
    let system = CleanDisks::new().await;
    system.break_with(&format!(
        "UPDATE disk SET state = 'destroyed', time_deleted = now() WHERE id = '{}'",
        system.a
    ));
    let violations = system.violations().await;
    assert_rules_broken(&violations, &["region without a live disk"]);
    assert_eq!(violations.len(), 3, "{violations:?}");
}

#[tokio::test]
async fn a_disk_left_creating_is_flagged() {
    let system = CleanDisks::new().await;
    system.break_with(&format!(
        "UPDATE disk SET state = 'creating' WHERE id = '{}'",
        system.a
    ));
    assert_rules_broken(
        &system.violations().await,
        &["disk left creating with no saga running"],
    );
}

#[tokio::test]
async fn a_disk_missing_a_region_is_flagged() {
    let system = CleanDisks::new().await;
    let (region, sled) = system.region_of_a();
    // Consistent storage totals; only the region row is gone (its sled agent still has it).
    system.break_with(&format!(
        "DELETE FROM region WHERE id = '{region}'; \
         UPDATE sled SET reserved_storage = reserved_storage - {MIB} WHERE id = '{sled}'"
    ));
    assert_rules_broken(
        &system.violations().await,
        &[
            "live disk without its regions on distinct sleds",
            "region on a sled agent but not in the database on that sled",
        ],
    );
}

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn two_regions_of_a_disk_on_one_sled_are_flagged() {
    let system = CleanDisks::new().await;
    let rows = system.ctx.sql(&format!(
        "SELECT id, sled_id FROM region WHERE disk_id = '{}' ORDER BY id LIMIT 2",
        system.a
    ));
    let rows: Vec<(&str, &str)> = rows
        .lines()
        .map(|row| row.split_once('|').unwrap())
        .collect();
    let (moved, from) = rows[0];
    let (_, to) = rows[1];
    let move_it = format!(
        "UPDATE region SET sled_id = '{to}' WHERE id = '{moved}'; \
         UPDATE sled SET reserved_storage = reserved_storage - {MIB} WHERE id = '{from}'; \
         UPDATE sled SET reserved_storage = reserved_storage + {MIB} WHERE id = '{to}'"
    );
    // The unique index refuses it first; drop it (this test's database only).
    let refused = shared_cluster().psql(system.ctx.db.name(), &format!("BEGIN; {move_it}; COMMIT"));
    assert!(refused.is_err(), "{refused:?}");
    system.break_with("DROP INDEX region_one_per_sled_per_disk");
    system.break_with(&move_it);
    assert_rules_broken(
        &system.violations().await,
        &[
            "live disk without its regions on distinct sleds",
            // The sled agents still hold it where it was made.
            "region in the database but not on its sled's agent",
            "region on a sled agent but not in the database on that sled",
        ],
    );
}

#[tokio::test]
async fn storage_totals_that_disagree_with_the_regions_are_flagged() {
    let system = CleanDisks::new().await;
    let (_, sled) = system.region_of_a();
    system.break_with(&format!(
        "UPDATE sled SET reserved_storage = reserved_storage + 1 WHERE id = '{sled}'"
    ));
    assert_rules_broken(
        &system.violations().await,
        &["sled's reserved storage disagrees with its regions"],
    );
}

#[tokio::test]
async fn storage_beyond_capacity_is_flagged() {
    let system = CleanDisks::new().await;
    let (_, sled) = system.region_of_a();
    let overrun =
        format!("UPDATE sled SET reserved_storage = usable_storage + 1 WHERE id = '{sled}'");
    system.drop_constraint_refusing("sled", "reserved_storage <= usable_storage", &overrun);
    system.break_with(&overrun);
    assert_rules_broken(
        &system.violations().await,
        &[
            "sled's reserved storage exceeds its capacity",
            "sled's reserved storage disagrees with its regions",
        ],
    );
}

#[tokio::test]
async fn a_lost_region_left_unreplaced_is_flagged() {
    let system = CleanDisks::new().await;
    // The region-replacement task would repair it: hold the world still.
    system.ctx.stop_background_tasks();
    let (_, sled) = system.region_of_a();
    // Long ago: a lost region replaced within the bound is fine.
    system.break_with(&format!(
        "UPDATE sled SET time_expunged = now() - interval '1 hour' WHERE id = '{sled}'; \
         UPDATE disk SET time_modified = now() - interval '1 hour' WHERE id = '{}'",
        system.a
    ));
    let violations = system.violations().await;
    assert_rules_broken(
        &violations,
        &["region lost with an expunged sled left unreplaced"],
    );
}

#[tokio::test]
async fn a_lost_region_that_cannot_be_replaced_is_not_flagged() {
    let system = CleanDisks::new().await;
    system.ctx.stop_background_tasks();
    // Four sleds, three regions per disk. Expunging the sled `a` lacks and one `a` has (one
    // `b` lacks, if there is one) leaves neither disk a sled it could be repaired on: both stay
    // degraded, rightly.
    let lacking_a = system.sled_without_a();
    let b = system.ctx.sql("SELECT id FROM disk WHERE name = 'b'");
    let a_sled = system.ctx.sql(&format!(
        "SELECT sled_id FROM region WHERE disk_id = '{a}' \
         ORDER BY (sled_id IN (SELECT sled_id FROM region WHERE disk_id = '{b}')), sled_id \
         LIMIT 1",
        a = system.a,
        b = b.trim()
    ));
    system.break_with(&format!(
        "UPDATE sled SET time_expunged = now() - interval '1 hour' WHERE id IN ('{}', '{}'); \
         UPDATE disk SET time_modified = now() - interval '1 hour'",
        lacking_a.trim(),
        a_sled.trim()
    ));
    assert_eq!(system.violations().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_replacement_mark_left_behind_is_flagged() {
    let system = CleanDisks::new().await;
    let (region, _) = system.region_of_a();
    system.break_with(&format!(
        "UPDATE disk SET replacing_region_id = '{region}' WHERE id = '{}'",
        system.a
    ));
    assert_rules_broken(
        &system.violations().await,
        &["disk marked as having a region replaced with no saga running"],
    );
}

#[tokio::test]
async fn a_region_only_a_sled_agent_has_is_flagged() {
    let system = CleanDisks::new().await;
    let sled: SledUuid = system.sled_without_a().parse().unwrap();
    let index = (0..system.ctx.sleds.len())
        .find(|i| system.ctx.sled_id(*i) == sled)
        .unwrap();
    system
        .ctx
        .sled_client(index)
        .region_ensure(
            &halyard_common::ids::RegionUuid::new_v4(),
            &halyard_sled_agent_api::RegionEnsureBody {
                size: ByteCount::from_mebibytes_u32(1),
                block_size: halyard_common::BlockSize::try_from(512u32).unwrap(),
                source: None,
            },
        )
        .await
        .unwrap();
    assert_rules_broken(
        &system.violations().await,
        &["region on a sled agent but not in the database on that sled"],
    );
}

#[tokio::test]
async fn a_disk_pointing_at_an_instance_while_detached_is_flagged() {
    let system = CleanDisks::new().await;
    let point = format!(
        "UPDATE disk SET attach_instance_id = '{}', slot = 0 WHERE id = '{}'",
        system.instance, system.a
    );
    system.drop_constraint_refusing("disk", "attach_instance_id IS NOT NULL", &point);
    system.break_with(&point);
    assert_rules_broken(
        &system.violations().await,
        &["disk's instance pointer disagrees with its state"],
    );
}

#[tokio::test]
async fn a_disk_attached_to_a_missing_or_deleted_instance_is_flagged() {
    let system = CleanDisks::new().await;
    system.break_with(&format!(
        "UPDATE disk SET state = 'attached', attach_instance_id = '{}', slot = 0 WHERE id = '{}'",
        InstanceUuid::new_v4(),
        system.a
    ));
    assert_rules_broken(
        &system.violations().await,
        &["disk attached to an instance that is missing or deleted"],
    );
    // Attached to a real instance: clean again; then that instance is deleted behind it.
    system.break_with(&format!(
        "UPDATE disk SET attach_instance_id = '{}' WHERE id = '{}'",
        system.instance, system.a
    ));
    assert_eq!(system.violations().await, Vec::<String>::new());
    system.break_with(&format!(
        "UPDATE instance SET time_deleted = now() WHERE id = '{}'",
        system.instance
    ));
    assert_rules_broken(
        &system.violations().await,
        &[
            "disk attached to an instance that is missing or deleted",
            // Its default interface outlives it too.
            "live interface of a deleted instance",
        ],
    );
}

/// Two running instances with their default interfaces (in the project's default VPC), on
/// two sleds, and the sleds' mappings as Nexus pushed them.
async fn clean_network() -> (TestContext, [Running; 2]) {
    let ctx = TestContext::new().await;
    let project = ctx.project("p").await;
    let mut running = Vec::new();
    for name in ["a", "b"] {
        let instance = ctx.instance(&project, name, 2).await;
        ctx.nexus().instance_start(instance).await.unwrap();
        ctx.wait_for(instance, InstanceState::Running).await;
        let vmm = ctx.view(instance).await.active_vmm.unwrap();
        running.push(Running {
            instance,
            vmm: vmm.id(),
            sled: vmm.sled_id(),
        });
    }
    ctx.assert_quiet_and_consistent().await;
    assert_eq!(ctx.invariant_violations().await, Vec::<String>::new());
    assert_eq!(
        ctx.held_mappings().await.len() % 2,
        0,
        "each hosting sled holds both"
    );
    (ctx, [running[0], running[1]])
}

#[tokio::test]
async fn an_interface_on_a_reserved_address_or_in_a_deleted_subnet_is_flagged() {
    let (ctx, [a, _]) = clean_network().await;
    let sql = |query: &str| ctx.sql(query);
    // The subnet's gateway address: reserved. (The mappings follow the database, which now
    // says another address.)
    sql(&format!(
        "UPDATE network_interface SET ip = '172.30.0.1' WHERE instance_id = '{}'",
        a.instance
    ));
    assert_rules_broken(
        &ctx.invariant_violations().await,
        &[
            "interface address not assignable in its subnet",
            "mapping the database implies is missing",
            "mapping a sled holds that the database does not imply",
        ],
    );
    sql("UPDATE vpc_subnet SET time_deleted = now()");
    let violations = ctx.invariant_violations().await;
    assert!(
        violations
            .iter()
            .any(|v| v.starts_with("live interface in a deleted subnet or VPC")),
        "{violations:#?}"
    );
}

#[tokio::test]
async fn a_sled_missing_a_mapping_or_holding_a_stale_one_is_flagged() {
    let (ctx, [a, _]) = clean_network().await;
    let index = ctx.sled_of(a.vmm).await;
    let client = ctx.sled_client(index);
    let held = client.v2p_list().await.unwrap().into_inner();
    let mut set = held
        .into_iter()
        .find(|set| !set.mappings.is_empty())
        .expect("a's sled holds its VPC's set");
    // A set without the first mapping, far newer than the database's generation (as if
    // pushed by a Nexus whose database was restored): the sled forgot one.
    let forgotten = set.mappings.remove(0);
    set.generation = halyard_common::Generation::try_from(set.generation.as_u64() + 100).unwrap();
    client.v2p_put(&set.vni, &set).await.unwrap();
    assert_rules_broken(
        &ctx.invariant_violations().await,
        &["mapping the database implies is missing on a sled hosting the VPC"],
    );
    // The same with the mapping pointing at the wrong sled: stale.
    let mut stale = forgotten.clone();
    stale.sled_id = SledUuid::new_v4();
    set.mappings.push(stale);
    set.generation = set.generation.next();
    client.v2p_put(&set.vni, &set).await.unwrap();
    assert_rules_broken(
        &ctx.invariant_violations().await,
        &[
            "mapping the database implies is missing on a sled hosting the VPC",
            "mapping a sled holds that the database does not imply",
        ],
    );
    // Reconciliation puts it right.
    let pushed = ctx
        .nexus()
        .reconcile_sled_mappings(ctx.sled_id(index))
        .await
        .unwrap();
    assert_eq!(pushed, 1);
    assert_eq!(ctx.invariant_violations().await, Vec::<String>::new());
}

/// A clean system with disks (see [`CleanDisks`]) and a ready snapshot of disk `a`.
async fn clean_with_snapshot() -> (CleanDisks, halyard_common::ids::SnapshotUuid) {
    let system = CleanDisks::new().await;
    let disk = system
        .ctx
        .nexus()
        .datastore()
        .disk_fetch(system.a)
        .await
        .unwrap();
    let snapshot = system
        .ctx
        .nexus()
        .snapshot_create(
            &disk,
            halyard_nexus_external_api::params::SnapshotCreate {
                name: "snap".parse().unwrap(),
                description: String::new(),
                disk: halyard_common::NameOrId::Id(system.a.into_untyped_uuid()),
            },
        )
        .await
        .unwrap();
    assert_eq!(system.violations().await, Vec::<String>::new());
    (system, snapshot.id())
}

#[tokio::test]
async fn a_region_snapshot_of_a_deleted_snapshot_is_flagged() {
    let (system, snapshot) = clean_with_snapshot().await;
    system.break_with(&format!(
        "UPDATE snapshot SET state = 'destroyed', time_deleted = now() WHERE id = '{snapshot}'"
    ));
    let violations = system.violations().await;
    assert_rules_broken(&violations, &["region snapshot without a live snapshot"]);
    assert_eq!(violations.len(), 3, "{violations:?}");
}

#[tokio::test]
async fn reserved_storage_not_counting_a_region_snapshot_is_flagged() {
    let (system, snapshot) = clean_with_snapshot().await;
    let sled = system.ctx.sql(&format!(
        "SELECT sled_id FROM region_snapshot WHERE snapshot_id = '{snapshot}' LIMIT 1"
    ));
    system.break_with(&format!(
        "UPDATE sled SET reserved_storage = reserved_storage - {MIB} WHERE id = '{}'",
        sled.trim()
    ));
    assert_rules_broken(
        &system.violations().await,
        &["sled's reserved storage disagrees with its regions and region snapshots"],
    );
}

#[tokio::test]
async fn a_region_snapshot_missing_on_its_sled_agent_or_only_there_is_flagged() {
    let (system, snapshot) = clean_with_snapshot().await;
    let row = system.ctx.sql(&format!(
        "SELECT region_id, sled_id FROM region_snapshot WHERE snapshot_id = '{snapshot}' \
         ORDER BY region_id LIMIT 1"
    ));
    let (region, sled) = row.trim().split_once('|').unwrap();
    let sled: SledUuid = sled.parse().unwrap();
    let index = (0..system.ctx.sleds.len())
        .find(|i| system.ctx.sled_id(*i) == sled)
        .unwrap();
    let region: halyard_common::ids::RegionUuid = region.parse().unwrap();
    system
        .ctx
        .sled_client(index)
        .region_snapshot_delete(&region, &snapshot)
        .await
        .unwrap();
    assert_rules_broken(
        &system.violations().await,
        &["region snapshot in the database but not on its sled's agent"],
    );
    // Made again on the sled agent under another snapshot id: only the sled agent has that.
    let other = halyard_common::ids::SnapshotUuid::new_v4();
    let client = system.ctx.sled_client(index);
    client
        .region_snapshot_ensure(&region, &snapshot)
        .await
        .unwrap();
    client
        .region_snapshot_ensure(&region, &other)
        .await
        .unwrap();
    assert_rules_broken(
        &system.violations().await,
        &[
            "region snapshot on a sled agent but not in the database on that sled",
            // The sled agent's extra snapshot holds storage the database does not count;
            // the checker reads the database's totals only, so this is the one rule broken.
        ],
    );
}

#[tokio::test]
async fn a_snapshot_left_creating_is_flagged() {
    let (system, snapshot) = clean_with_snapshot().await;
    system.break_with(&format!(
        "UPDATE snapshot SET state = 'creating' WHERE id = '{snapshot}'"
    ));
    assert_rules_broken(
        &system.violations().await,
        &["snapshot left creating with no saga running"],
    );
}
