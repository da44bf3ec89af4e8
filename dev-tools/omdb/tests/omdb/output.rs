//! omdb's output over a system in every interesting state, as snapshots.
//!
//! One sled, so placement (random among sleds with room) cannot change the output. The
//! instances, in project `alpha` unless said otherwise:
//!
//! - `idle`: created, never started (stopped, no VMM);
//! - `web`: created with `start: true` (running);
//! - `crashy`: running, then its VMM crashed (the sled agent's `Crash` fault): failed;
//! - `cycler`: started, stopped, started, stopped, started: three VMMs, the last running;
//! - `unlucky`: its instance-start saga failed at `registered` and unwound (one
//!   `saga_unwound` VMM, stopped again);
//! - `doomed`: created and deleted (instance-delete);
//! - `web` in project `beta` too, stopped (so the name `web` alone is ambiguous).
//!
//! Two more sagas are written into the log directly (Nexus cannot be made to leave them):
//! a copy of unlucky's instance-start whose undo of `vmm` failed (stuck), and a copy of
//! web's cut off while `vmm` runs, owned by another Nexus (in flight).

use crate::context::{RunOmdb, TestContext, omdb};
use crate::snapshot::{Redactor, Snapshots};
use halyard_common::InstanceState;
use halyard_common::ids::{GenericUuid, InstanceUuid, NexusUuid, SagaUuid};
use halyard_nexus::app::sagas::instance_start::{Params, SagaInstanceStart};
use halyard_sled_agent_api::SimFault;
use serde_json::Value;
use std::collections::BTreeMap;

struct Scenario {
    ctx: TestContext,
    redactor: Redactor,
    web: InstanceUuid,
    stuck: SagaUuid,
    in_flight: SagaUuid,
}

async fn scenario() -> Scenario {
    let ctx = TestContext::with_stoppable_nexus(1).await;
    let alpha = ctx.project("alpha").await;
    let beta = ctx.project("beta").await;

    let idle = ctx.instance_ready(&alpha, "idle", 1, false).await;
    let web = ctx.instance_ready(&alpha, "web", 2, true).await;

    let crashy = ctx.instance_ready(&alpha, "crashy", 1, true).await;
    let vmm = ctx.active_vmm(crashy).await;
    ctx.sled_client(0)
        .vmm_inject_fault(&vmm, &SimFault::Crash)
        .await
        .unwrap();
    ctx.wait_for(crashy, InstanceState::Failed).await;

    let cycler = ctx.instance_ready(&alpha, "cycler", 1, false).await;
    ctx.start(cycler).await;
    ctx.stop(cycler).await;
    ctx.start(cycler).await;
    ctx.stop(cycler).await;
    ctx.start(cycler).await;

    let unlucky = ctx.instance_ready(&alpha, "unlucky", 1, false).await;
    let saga = ctx
        .nexus()
        .saga_prepare::<SagaInstanceStart>(Params {
            instance_id: unlucky,
        })
        .await
        .unwrap();
    let unwound = SagaUuid::from_untyped_uuid(saga.id.into_untyped_uuid());
    let registered = saga.dag.get_index("registered").unwrap();
    ctx.nexus()
        .sec()
        .saga_inject_error(saga.id, registered)
        .await
        .unwrap();
    assert!(ctx.nexus().saga_execute(saga).await.is_err());

    let doomed = ctx.instance_ready(&alpha, "doomed", 1, false).await;
    ctx.nexus().instance_delete(doomed).await.unwrap();

    let web_beta = ctx.instance_ready(&beta, "web", 1, false).await;
    ctx.quiesce().await;

    // instance-start's nodes: propolis_id 0, claim 1, reservation 2, vmm 3, registered 4,
    // running 5, start 6, end 7.
    let stuck = SagaUuid::new_v4();
    ctx.sql(&format!(
        "INSERT INTO saga (id, creator, current_sec, name, dag, saga_state, adopt_generation, \
             time_created, adopt_time) \
         SELECT '{stuck}', creator, current_sec, name, dag, 'done', 1, now(), now() \
         FROM saga WHERE id = '{unwound}'; \
         INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) \
         SELECT '{stuck}', node_id, event_type, data, \
             now() + (row_number() OVER (ORDER BY event_time, node_id)) * interval '1 ms', \
             creator \
         FROM saga_node_event WHERE saga_id = '{unwound}' \
             AND event_type NOT IN ('undo_started', 'undo_finished'); \
         INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) \
         SELECT '{stuck}', 3, t.event_type, t.data, now() + t.after, creator \
         FROM saga, (VALUES ('undo_started', NULL::jsonb, interval '1 s'), \
             ('undo_failed', '{{\"PermanentFailure\": {{\"source_error\": \
                 {{\"message\": \"sled agent unreachable\"}}}}}}'::jsonb, interval '2 s')) \
             AS t(event_type, data, after) \
         WHERE saga.id = '{unwound}';"
    ));
    let in_flight = SagaUuid::new_v4();
    let other_nexus = NexusUuid::new_v4();
    // Owned by another Nexus, alive (its heartbeat stays fresh for the test's length), so
    // this one's heartbeat task leaves it alone.
    ctx.sql(&format!(
        "INSERT INTO nexus (id, incarnation, time_started, time_heartbeat) \
         VALUES ('{other_nexus}', gen_random_uuid(), now(), now() + interval '1 day'); \
         INSERT INTO saga (id, creator, current_sec, name, dag, saga_state, adopt_generation, \
             time_created, adopt_time) \
         SELECT '{in_flight}', '{other_nexus}', '{other_nexus}', name, dag, 'running', 1, \
             now(), now() \
         FROM saga WHERE name = 'instance-start' ORDER BY time_created LIMIT 1; \
         INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) \
         SELECT '{in_flight}', node_id, event_type, data, \
             now() + (row_number() OVER (ORDER BY event_time, node_id)) * interval '1 ms', \
             '{other_nexus}' \
         FROM saga_node_event WHERE saga_id = (SELECT id FROM saga \
                 WHERE name = 'instance-start' ORDER BY time_created LIMIT 1) \
             AND (node_id IN (7, 0, 1, 2) OR (node_id = 3 AND event_type = 'started'));"
    ));

    let mut redactor = Redactor::new();
    redactor
        .name(ctx.sled_id(0), "sled")
        .name(ctx.nexus().id(), "nexus")
        .name(idle, "idle")
        .name(web, "web")
        .name(crashy, "crashy")
        .name(cycler, "cycler")
        .name(unlucky, "unlucky")
        .name(doomed, "doomed")
        .name(web_beta, "beta-web")
        .name(other_nexus, "other-nexus")
        .name(stuck, "stuck-saga")
        .name(in_flight, "in-flight-saga");
    Scenario {
        ctx,
        redactor,
        web,
        stuck,
        in_flight,
    }
}

/// omdb's stdout, redacted, after asserting it succeeded.
async fn stdout(s: &Scenario, args: &[&str]) -> String {
    s.redactor.redact(&s.ctx.omdb(args).await.ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_of_every_command() {
    let s = scenario().await;
    let mut snapshots = Snapshots::new();

    snapshots.check("db-instances", &stdout(&s, &["db", "instances"]).await);
    snapshots.check(
        "db-instances-include-deleted",
        &stdout(&s, &["db", "instances", "--include-deleted"]).await,
    );
    snapshots.check(
        "db-instance-cycler",
        &stdout(&s, &["db", "instance", "cycler"]).await,
    );
    snapshots.check(
        "db-instance-crashy",
        &stdout(&s, &["db", "instance", "crashy"]).await,
    );
    snapshots.check(
        "db-instance-unlucky",
        &stdout(&s, &["db", "instance", "unlucky"]).await,
    );
    snapshots.check(
        "db-instance-web-beta",
        &stdout(&s, &["db", "instance", "web", "--project", "beta"]).await,
    );
    let by_id = s.web.to_string();
    snapshots.check(
        "db-instance-web-by-id",
        &stdout(&s, &["db", "instance", &by_id]).await,
    );
    let ambiguous = s.ctx.omdb(&["db", "instance", "web"]).await;
    assert_eq!(ambiguous.code, 1, "{ambiguous:?}");
    snapshots.check(
        "db-instance-web-ambiguous",
        &s.redactor.redact(&ambiguous.stderr),
    );

    snapshots.check("db-vmms", &stdout(&s, &["db", "vmms"]).await);
    snapshots.check(
        "db-vmms-include-deleted",
        &stdout(&s, &["db", "vmms", "--include-deleted"]).await,
    );
    snapshots.check(
        "db-vmms-cycler",
        &stdout(
            &s,
            &["db", "vmms", "--instance", "cycler", "--include-deleted"],
        )
        .await,
    );
    let sled = s.ctx.sled_address(0).to_string();
    snapshots.check(
        "db-vmms-sled",
        &stdout(&s, &["db", "vmms", "--sled", &sled]).await,
    );
    snapshots.check("db-sleds", &stdout(&s, &["db", "sleds"]).await);
    // Interfaces and mappings: their addresses, MACs and VNIs are random, so they are checked
    // through the JSON rather than a snapshot. Every instance has its default interface; the
    // running ones' are mapped to their sled.
    let nics: Value =
        serde_json::from_str(&s.ctx.omdb(&["db", "nics", "--json"]).await.ok()).unwrap();
    let nics = nics.as_array().unwrap();
    let running: Vec<&Value> = nics.iter().filter(|n| !n["sled"].is_null()).collect();
    assert_eq!(nics.len(), 6, "{nics:#?}");
    assert!(
        nics.iter()
            .all(|n| n["name"] == "net0" && n["primary"] == true),
        "{nics:#?}"
    );
    assert!(
        nics.iter()
            .all(|n| n["subnet"] == "default (172.30.0.0/22)" && n["vpc"] == "default"),
        "{nics:#?}"
    );
    let v2p: Value =
        serde_json::from_str(&s.ctx.omdb(&["db", "v2p", "--json"]).await.ok()).unwrap();
    let v2p = v2p.as_array().unwrap();
    assert_eq!(v2p.len(), running.len(), "{v2p:#?}");
    for nic in &running {
        let mapping = v2p
            .iter()
            .find(|m| m["interface"] == nic["id"])
            .unwrap_or_else(|| panic!("no mapping for {nic}: {v2p:#?}"));
        assert_eq!(mapping["ip"], nic["ip"]);
        assert_eq!(mapping["mac"], nic["mac"]);
        assert_eq!(mapping["sled"], nic["sled"]);
        assert_eq!(mapping["sled"], s.ctx.sled_id(0).to_string());
    }
    snapshots.check(
        "db-reservations",
        &stdout(&s, &["db", "reservations"]).await,
    );
    snapshots.check("db-migrations", &stdout(&s, &["db", "migrations"]).await);
    snapshots.check("db-sagas", &stdout(&s, &["db", "sagas"]).await);
    // Both Nexus, each with the unfinished sagas it owns (how long each has been silent
    // varies: read from the JSON).
    let nexus: Value =
        serde_json::from_str(&s.ctx.omdb(&["db", "nexus", "--json"]).await.ok()).unwrap();
    let owned: BTreeMap<String, (u64, u64)> = nexus
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                s.redactor
                    .redact(n["id"].as_str().unwrap())
                    .trim()
                    .to_string(),
                (
                    n["sagas"].as_u64().unwrap(),
                    n["unresumable"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(
        owned,
        BTreeMap::from([
            ("<nexus>".to_string(), (0, 0)),
            ("<other-nexus>".to_string(), (1, 0))
        ]),
        "{nexus}"
    );
    snapshots.check("db-sagas-all", &stdout(&s, &["db", "sagas", "--all"]).await);

    // The sagas, from the JSON listing: the first instance-start (web's, succeeded) and the
    // one that unwound (unlucky's).
    let sagas: Value =
        serde_json::from_str(&s.ctx.omdb(&["db", "sagas", "--all", "--json"]).await.ok()).unwrap();
    let sagas = sagas.as_array().unwrap();
    let find = |name: &str, outcome: &str| {
        sagas
            .iter()
            .find(|saga| saga["name"] == name && saga["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {name} saga that {outcome}: {sagas:?}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let succeeded = find("instance-start", "succeeded");
    let unwound = find("instance-start", "unwound");
    assert_eq!(
        sagas.iter().filter(|s| s["outcome"] == "unwound").count(),
        1
    );
    assert_eq!(sagas.iter().filter(|s| s["outcome"] == "STUCK").count(), 1);
    snapshots.check(
        "db-saga-succeeded",
        &stdout(&s, &["db", "saga", &succeeded]).await,
    );
    snapshots.check(
        "db-saga-unwound",
        &stdout(&s, &["db", "saga", &unwound]).await,
    );
    snapshots.check(
        "db-saga-unwound-dot",
        &stdout(&s, &["db", "saga", &unwound, "--dot"]).await,
    );
    let stuck = s.stuck.to_string();
    snapshots.check("db-saga-stuck", &stdout(&s, &["db", "saga", &stuck]).await);
    let in_flight = s.in_flight.to_string();
    snapshots.check(
        "db-saga-in-flight",
        &stdout(&s, &["db", "saga", &in_flight]).await,
    );
    let saga_json: Value =
        serde_json::from_str(&s.ctx.omdb(&["db", "saga", &unwound, "--json"]).await.ok()).unwrap();
    let states: Vec<(&str, &str)> = saga_json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["state"].as_str().unwrap()))
        .collect();
    assert!(states.contains(&("registered", "failed")), "{states:?}");
    assert!(states.contains(&("vmm", "undone")), "{states:?}");
    assert!(states.contains(&("running", "not_started")), "{states:?}");

    // Nexus's executor lists sagas by id (random): compare the lines sorted.
    let nexus_url = s.ctx.nexus_url().to_string();
    let in_memory = s
        .ctx
        .omdb(&["nexus", "sagas", "--nexus-url", &nexus_url])
        .await
        .ok();
    let anonymous = s.redactor.clone().anonymous().redact(&in_memory);
    snapshots.check("nexus-sagas", &sorted_body(&anonymous));
    let verbose = s
        .ctx
        .omdb(&["nexus", "sagas", "--nexus-url", &nexus_url, "--verbose"])
        .await
        .ok();
    assert!(verbose.contains("failed"), "{verbose}");
    assert_eq!(
        verbose.lines().filter(|l| l.starts_with("saga ")).count(),
        sagas.len() - 2,
        "one block per saga: {verbose}"
    );

    snapshots.check(
        "sled-agent-vmms",
        &stdout(&s, &["sled-agent", "vmms", "--sled", &sled]).await,
    );
    let sled_id = s.ctx.sled_id(0).to_string();
    snapshots.check(
        "sled-agent-vmms",
        &stdout(&s, &["sled-agent", "vmms", "--sled", &sled_id]).await,
    );
    snapshots.check("db-check", &stdout(&s, &["db", "check"]).await);
    snapshots.finish();

    // --json: the same rows, typed, for scripts.
    let instances: Value =
        serde_json::from_str(&s.ctx.omdb(&["db", "instances", "--json"]).await.ok()).unwrap();
    let states: Vec<(String, String, String)> = instances
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["project"].as_str().unwrap().to_string(),
                i["name"].as_str().unwrap().to_string(),
                i["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = |p: &str, n: &str, st: &str| (p.to_string(), n.to_string(), st.to_string());
    assert_eq!(
        states,
        vec![
            expect("alpha", "crashy", "failed"),
            expect("alpha", "cycler", "running"),
            expect("alpha", "idle", "stopped"),
            expect("alpha", "unlucky", "stopped"),
            expect("alpha", "web", "running"),
            expect("beta", "web", "stopped"),
        ]
    );
    for args in [
        &["db", "vmms", "--json"][..],
        &["db", "sleds", "--json"],
        &["db", "reservations", "--json"],
        &["db", "migrations", "--json"],
        &["db", "check", "--json"],
        &["db", "instance", "cycler", "--json"],
    ] {
        let out = s.ctx.omdb(args).await.ok();
        serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"));
    }
    let detail: Value = serde_json::from_str(
        &s.ctx
            .omdb(&["db", "instance", "cycler", "--json"])
            .await
            .ok(),
    )
    .unwrap();
    assert_eq!(detail["vmms"].as_array().unwrap().len(), 3);
    assert_eq!(detail["instance"]["state"], "running");
    let in_memory: Value = serde_json::from_str(
        &omdb(
            &["nexus", "sagas", "--nexus-url", &nexus_url, "--json"],
            &[],
        )
        .await
        .ok(),
    )
    .unwrap();
    assert_eq!(in_memory.as_array().unwrap().len(), sagas.len() - 2);
}

/// The header line, then the other lines sorted.
pub(crate) fn sorted_body(text: &str) -> String {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default().to_string();
    let mut body: Vec<&str> = lines.collect();
    body.sort();
    std::iter::once(header.as_str())
        .chain(body)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A live migration, on two sleds: `db migrations` and the migrated instance's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_shows_in_migrations_and_the_vmm_history() {
    let ctx = TestContext::with_stoppable_nexus(2).await;
    let project = ctx.project("alpha").await;
    let mover = ctx.instance_ready(&project, "mover", 1, true).await;
    let source = ctx.active_vmm(mover).await;
    let other = 1 - ctx.sled_of(source).await;
    ctx.nexus()
        .instance_migrate(mover, Some(ctx.sled_id(other)))
        .await
        .unwrap();
    ctx.eventually("the migration to complete", async |ctx: &TestContext| {
        let view = ctx.view(mover).await;
        view.instance.runtime.migration().is_none()
            && view.instance.runtime.active_vmm() != Some(source)
            && view.run_state() == InstanceState::Running
    })
    .await;
    ctx.quiesce().await;

    let mut redactor = Redactor::new();
    redactor
        .name(mover, "mover")
        .name(source, "source-vmm")
        .name(ctx.active_vmm(mover).await, "target-vmm")
        .name(ctx.sled_id(0), "sled-0")
        .name(ctx.sled_id(1), "sled-1")
        .name(ctx.nexus().id(), "nexus");
    // Which sled is which depends on placement: name them by role instead.
    let (from, to) = (ctx.sled_id(1 - other), ctx.sled_id(other));
    redactor.name(from, "source-sled").name(to, "target-sled");

    let mut snapshots = Snapshots::new();
    let run = async |args: &[&str]| redactor.redact(&ctx.omdb(args).await.ok());
    snapshots.check("migration-db-migrations", &run(&["db", "migrations"]).await);
    snapshots.check(
        "migration-db-instance",
        &run(&["db", "instance", "mover"]).await,
    );
    snapshots.check("migration-db-check", &run(&["db", "check"]).await);
    snapshots.finish();
}

#[tokio::test]
async fn background_tasks_show_what_each_did_last() {
    let ctx = TestContext::with_stoppable_nexus(1).await;
    let nexus_url = ctx.nexus_url().to_string();
    let args = ["nexus", "background-tasks", "--nexus-url", &nexus_url];
    // Every task runs every 200 ms here, but the instance watcher (every second) and the
    // reincarnation task (hourly: off in tests); with nothing to retire, release, replace or
    // restart, and the one sled answering, what each did is always the same.
    let task = |tasks: &Value, name: &str| -> Value {
        tasks
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    ctx.eventually("every task has run", async |ctx: &TestContext| {
        let json = ctx.omdb(&[&args[..], &["--json"]].concat()).await.ok();
        let tasks: Value = serde_json::from_str(&json).unwrap();
        [
            "nexus_heartbeat",
            "vmm_retirement",
            "saga_leftover_release",
            "region_replacement",
            "instance_watcher",
        ]
        .iter()
        .all(|name| {
            task(&tasks, name)["runs"]
                .as_u64()
                .is_some_and(|runs| runs >= 1)
        })
    })
    .await;
    let tasks: Value =
        serde_json::from_str(&ctx.omdb(&[&args[..], &["--json"]].concat()).await.ok()).unwrap();
    assert_eq!(tasks.as_array().unwrap().len(), 7, "{tasks:?}");
    assert_eq!(task(&tasks, "v2p_reconciliation")["period_ms"], 3_600_000);
    assert_eq!(
        task(&tasks, "instance_reincarnation")["period_ms"],
        3_600_000
    );
    for (name, period_ms, outcome) in [
        (
            "nexus_heartbeat",
            200,
            "heartbeat written; adopted 0 saga(s)",
        ),
        ("vmm_retirement", 200, "nothing to retire"),
        ("saga_leftover_release", 200, "nothing left over"),
        ("region_replacement", 200, "no region replaced"),
        (
            "instance_watcher",
            1000,
            "1 sled(s) answered, 0 silent; 0 VMM(s) failed",
        ),
    ] {
        let task = task(&tasks, name);
        assert_eq!(task["period_ms"], period_ms, "{task:?}");
        assert_eq!(task["last_run"]["succeeded"], true, "{task:?}");
        assert_eq!(task["last_run"]["outcome"], outcome, "{task:?}");
        assert_eq!(task["last_error"], Value::Null, "{task:?}");
    }

    // The table, with what varies from run to run (times, how long a run took, how many runs
    // so far) redacted.
    let text = Redactor::new().redact(&ctx.omdb(&args).await.ok());
    let varying = regex::Regex::new(r"(?m)^(\w+ +[\d.]+ \w+ +)\d+( +<time> +)\d+ ms").unwrap();
    let text = varying.replace_all(&text, "${1}N${2}N ms");
    // Column widths follow the redacted values (a run took 1 ms or 12 ms): one gap between
    // columns, whatever their width.
    let text = regex::Regex::new(" {2,}").unwrap().replace_all(&text, "  ");
    Snapshots::new().check("nexus-background-tasks", &text);
}

/// Disks and their regions, on three sleds with storage: `data` (1 GiB, attached to `vm`
/// behind Nexus's back, as attaching is not omdb's concern), `logs` (1 MiB, 4096-byte
/// blocks, detached) and `gone` (deleted: only with `--include-deleted`, and no regions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disks_and_regions_show_each_disk_and_where_its_replicas_are() {
    use halyard_common::{BlockSize, ByteCount};
    use halyard_nexus_external_api::params::{DiskBackend, DiskCreate, DiskSource};

    let ctx = TestContext::with_storage(3, ByteCount::from_gibibytes_u32(2)).await;
    let project = ctx.project("alpha").await;
    let project_id = ctx.nexus().project_view(&project).await.unwrap().id();
    let vm = ctx.instance_ready(&project, "vm", 1, false).await;
    let disk = async |name: &str, size: ByteCount, block_size: u32| {
        ctx.nexus()
            .disk_create(
                project_id,
                DiskCreate {
                    name: name.parse().unwrap(),
                    description: String::new(),
                    disk_backend: DiskBackend::Distributed(DiskSource::Blank {
                        block_size: BlockSize::try_from(block_size).unwrap(),
                    }),
                    size,
                },
            )
            .await
            .unwrap()
    };
    let data = disk("data", ByteCount::from_gibibytes_u32(1), 512).await;
    let logs = disk("logs", ByteCount::from_mebibytes_u32(1), 4096).await;
    let gone = disk("gone", ByteCount::from_mebibytes_u32(1), 512).await;
    ctx.nexus().disk_delete(&gone).await.unwrap();
    ctx.sql(&format!(
        "UPDATE disk SET state = 'attached', attach_instance_id = '{vm}', slot = 0 WHERE id = '{}'",
        data.id()
    ));

    let mut redactor = Redactor::new();
    redactor
        .name(data.id(), "data")
        .name(logs.id(), "logs")
        .name(gone.id(), "gone")
        .name(vm, "vm")
        .anonymous();
    // Which region is on which sled is placement's choice: every sled is `<sled>`.
    for i in 0..3 {
        redactor.name(ctx.sled_id(i), "sled");
    }
    let mut snapshots = Snapshots::new();
    let run = async |args: &[&str]| redactor.redact(&ctx.omdb(args).await.ok());
    snapshots.check("db-disks", &run(&["db", "disks"]).await);
    snapshots.check(
        "db-disks-include-deleted",
        &run(&["db", "disks", "--include-deleted"]).await,
    );
    snapshots.check("db-regions", &run(&["db", "regions"]).await);
    snapshots.finish();

    // The same as JSON: each disk's regions on three distinct sleds, of its size.
    let disks: Value =
        serde_json::from_str(&ctx.omdb(&["db", "disks", "--json"]).await.ok()).unwrap();
    let disks = disks.as_array().unwrap();
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0]["name"], "data");
    assert_eq!(disks[0]["state"], "attached");
    assert_eq!(disks[0]["instance"], "vm");
    assert_eq!(disks[0]["block_size"], 512);
    assert_eq!(disks[1]["name"], "logs");
    assert_eq!(disks[1]["state"], "detached");
    assert_eq!(disks[1]["instance"], Value::Null);
    let regions: Value =
        serde_json::from_str(&ctx.omdb(&["db", "regions", "--json"]).await.ok()).unwrap();
    for disk in [&data, &logs] {
        let of_disk: Vec<&Value> = regions
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["disk_id"] == disk.id().to_string())
            .collect();
        let sleds: std::collections::BTreeSet<&str> = of_disk
            .iter()
            .map(|r| r["sled"].as_str().unwrap())
            .collect();
        assert_eq!((of_disk.len(), sleds.len()), (3, 3), "{}", disk.name());
        for region in of_disk {
            assert_eq!(region["size"], serde_json::json!(disk.size()));
        }
    }
    assert_eq!(regions.as_array().unwrap().len(), 6);

    // One sled expunged: each disk lost the region it held there (and, with no fourth sled
    // to copy to, stays degraded: nothing is being replaced).
    let lost_sled = ctx.sled_id(0);
    ctx.nexus().sled_expunge(lost_sled).await.unwrap();
    let disks: Value =
        serde_json::from_str(&ctx.omdb(&["db", "disks", "--json"]).await.ok()).unwrap();
    for disk in disks.as_array().unwrap() {
        assert_eq!(disk["regions"], 3, "{disk}");
        assert_eq!(disk["lost"], 1, "{disk}");
        assert_eq!(disk["replacing"], Value::Null, "{disk}");
    }
    let regions: Value =
        serde_json::from_str(&ctx.omdb(&["db", "regions", "--json"]).await.ok()).unwrap();
    for region in regions.as_array().unwrap() {
        let on_lost_sled = region["sled"] == lost_sled.to_string();
        assert_eq!(region["sled_expunged"], on_lost_sled, "{region}");
    }
}
