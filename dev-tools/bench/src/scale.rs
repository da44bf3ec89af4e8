//! `halyard-bench scale`: the cost of reads, starts, stops and omdb at a small and a large
//! number of instances (see the crate docs).

use crate::system::{DATABASE, Figures, PROJECT, System, round};
use anyhow::{Context, bail};
use clap::Parser;
use halyard_common::ids::{GenericUuid, InstanceUuid};
use halyard_common::{InstanceState, NameOrId};
use halyard_nexus_external_client::Client;
use halyard_nexus_external_client::types::InstanceNetworkInterfaceAttachment;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
pub struct ScaleArgs {
    /// Instances at the first scale (most of them stopped, seeded by SQL).
    #[arg(long, default_value_t = 1000)]
    pub instances_small: usize,
    /// Instances at the second scale (the database is grown to it).
    #[arg(long, default_value_t = 100_000)]
    pub instances_large: usize,
    /// Seeded instances per project (projects: instances / this).
    #[arg(long, default_value_t = 100)]
    pub per_project: usize,
    /// Concurrent clients for each measured operation.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Measured time of each operation (view, list, start/stop) at each scale.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Simulated sleds (zero-delay VMMs).
    #[arg(long, default_value_t = 4)]
    pub sleds: usize,
    /// How often a client waiting for running or stopped looks at the instance.
    #[arg(long, default_value_t = 10)]
    pub poll_ms: u64,
    /// Print the results as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Room on each sled, in benchmark instances.
const SLED_ROOM: u32 = 64;
/// A goal: p99 at the large scale at most this many times p99 at the small one.
const RATIO_GOAL: f64 = 2.0;
/// A goal: each omdb command at the large scale within this.
const OMDB_GOAL: Duration = Duration::from_secs(5);

struct OmdbRun {
    what: &'static str,
    took: Duration,
    ok: bool,
    detail: String,
}

struct Plan {
    statement: String,
    calls: u64,
    plan: String,
}

struct Scale {
    instances: usize,
    projects: usize,
    seed: Duration,
    view: Figures,
    list: Figures,
    start: Figures,
    start_to_running: Figures,
    stop: Figures,
    stop_to_stopped: Figures,
    errors: Vec<String>,
    omdb: Vec<OmdbRun>,
    nexus_rss_kib: Option<u64>,
    statements_explained: usize,
    statements_unexplainable: usize,
    seq_scans: Vec<Plan>,
}

/// The counts already seeded, and the templates the seeding copies.
struct Seeder {
    projects: usize,
    instances: usize,
    /// The real project and instance whose rows seeded ones copy.
    template_project: String,
    template_instance: String,
    template_rcgen: i64,
    /// The first VNI of seeded VPCs (a range free of the real ones).
    vni_base: u64,
}

pub async fn run(args: ScaleArgs) -> anyhow::Result<()> {
    if args.instances_small == 0
        || args.instances_large <= args.instances_small
        || args.clients == 0
        || args.per_project < 100
    {
        bail!(
            "need 0 < --instances-small < --instances-large, --clients >= 1, --per-project >= 100"
        );
    }
    let mut system = System::start(true).await?;
    system.add_sleds(args.sleds, SLED_ROOM).await?;
    let template_rcgen: i64 = system
        .sql(&format!(
            "SELECT rcgen FROM project WHERE name = '{PROJECT}'"
        ))?
        .trim()
        .parse()?;
    // The real instances: one per client for starts and stops, in the bench project.
    let mut real = Vec::new();
    for i in 0..args.clients {
        let name = format!("real-{i}");
        let created = crate::system::create_instance(
            &system.client,
            &name,
            Vec::new(),
            InstanceNetworkInterfaceAttachment::None,
            false,
        )
        .await?;
        real.push(created.id);
    }
    let template_project = system
        .sql(&format!(
            "SELECT id FROM project WHERE name = '{PROJECT}' AND time_deleted IS NULL"
        ))?
        .trim()
        .to_string();
    let vnis: Vec<u64> = system
        .sql("SELECT vni FROM vpc")?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let span = args.instances_large.div_ceil(args.per_project) as u64 + 1;
    let vni_base = [8_000_000u64, 2_000_000, 12_000_000, 4_000_000]
        .into_iter()
        .find(|base| !vnis.iter().any(|v| (*base..base + span).contains(v)))
        .context("no free VNI range")?;
    let mut seeder = Seeder {
        projects: 0,
        instances: 0,
        template_project,
        template_instance: real[0].to_string(),
        template_rcgen,
        vni_base,
    };
    let url = system.cluster().url_for(DATABASE);

    let mut scales = Vec::new();
    for want in [args.instances_small, args.instances_large] {
        let seeding = Instant::now();
        // The real instances count: seed the rest.
        let seeded = want.saturating_sub(real.len());
        seeder.seed(&system, seeded - seeder.instances, args.per_project)?;
        system.sql("VACUUM ANALYZE")?;
        let seed = seeding.elapsed();
        let projects =
            system.sql_u64("SELECT count(*) FROM project WHERE time_deleted IS NULL")? as usize;
        let instances =
            system.sql_u64("SELECT count(*) FROM instance WHERE time_deleted IS NULL")? as usize;
        if !args.json {
            println!(
                "{instances} instances in {projects} projects (seeded in {:.1} s); measuring \
                 each operation {} s with {} clients",
                seed.as_secs_f64(),
                args.duration_secs,
                args.clients
            );
        }
        let scale = measure(&system, &args, &real, instances, projects, seed, &url).await?;
        scales.push(scale);
    }
    let violations = system.violations()?;
    system.close().await?;

    let (small, large) = (&scales[0], &scales[1]);
    type Pick = fn(&Scale) -> &Figures;
    let operations: [(&str, Pick); 6] = [
        ("instance view", |s| &s.view),
        ("instance list (100)", |s| &s.list),
        ("instance start", |s| &s.start),
        ("start-to-running", |s| &s.start_to_running),
        ("instance stop", |s| &s.stop),
        ("stop-to-stopped", |s| &s.stop_to_stopped),
    ];
    let mut goals: Vec<(String, bool)> = Vec::new();
    let mut ratios = Vec::new();
    for (what, pick) in operations {
        let (a, b) = (pick(small).p99, pick(large).p99);
        let ratio = b / a.max(f64::MIN_POSITIVE);
        ratios.push((what, a, b, ratio));
        goals.push((
            format!(
                "{what}: p99 at {} <= {RATIO_GOAL}x p99 at {}",
                large.instances, small.instances
            ),
            pick(small).n > 0 && pick(large).n > 0 && ratio <= RATIO_GOAL,
        ));
    }
    for run in &large.omdb {
        goals.push((
            format!(
                "omdb {} < {} s at {} instances",
                run.what,
                OMDB_GOAL.as_secs(),
                large.instances
            ),
            run.ok && run.took < OMDB_GOAL,
        ));
    }
    goals.push(("invariant checker clean".to_string(), violations.is_empty()));
    let errors: usize = scales.iter().map(|s| s.errors.len()).sum();

    if args.json {
        let scale = |s: &Scale| {
            json!({
                "instances": s.instances,
                "projects": s.projects,
                "seed_s": round(s.seed.as_secs_f64()),
                "view": s.view.json(),
                "list": s.list.json(),
                "start": s.start.json(),
                "start_to_running": s.start_to_running.json(),
                "stop": s.stop.json(),
                "stop_to_stopped": s.stop_to_stopped.json(),
                "errors": s.errors.len(),
                "first_errors": s.errors.iter().take(5).collect::<Vec<_>>(),
                "omdb": s.omdb.iter().map(|r| json!({
                    "command": format!("omdb db {}", r.what),
                    "s": round(r.took.as_secs_f64()),
                    "ok": r.ok,
                    "detail": r.detail,
                })).collect::<Vec<_>>(),
                "nexus_rss_kib": s.nexus_rss_kib,
                "nexus_rss_is_process_rss": true,
                "explain": {
                    "method": EXPLAIN_METHOD,
                    "statements_explained": s.statements_explained,
                    "statements_unexplainable": s.statements_unexplainable,
                    "seq_scans": s.seq_scans.iter().map(|p| json!({
                        "statement": p.statement,
                        "calls": p.calls,
                        "plan": p.plan.lines().collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                },
            })
        };
        let value = json!({
            "clients": args.clients,
            "duration_s": args.duration_secs,
            "sleds": args.sleds,
            "per_project": args.per_project,
            "scales": scales.iter().map(scale).collect::<Vec<_>>(),
            "p99_ratios": ratios.iter().map(|(what, a, b, r)| json!({
                "operation": what, "p99_small_ms": round(*a), "p99_large_ms": round(*b), "ratio": round(*r),
            })).collect::<Vec<_>>(),
            "errors": errors,
            "violations": violations,
            "goals": goals.iter().map(|(k, ok)| (k.clone(), json!(ok))).collect::<serde_json::Map<_, _>>(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!();
        for s in &scales {
            println!(
                "{} instances, {} projects: {} error(s)",
                s.instances,
                s.projects,
                s.errors.len()
            );
            println!("{}", s.view.line("view"));
            println!("{}", s.list.line("list (100)"));
            println!("{}", s.start.line("start"));
            println!("{}", s.start_to_running.line("start-to-running"));
            println!("{}", s.stop.line("stop"));
            println!("{}", s.stop_to_stopped.line("stop-to-stopped"));
            for r in &s.omdb {
                println!(
                    "  omdb db {:<12} {:>7.2} s  {}{}",
                    r.what,
                    r.took.as_secs_f64(),
                    if r.ok { "ok" } else { "FAILED" },
                    if r.detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", r.detail)
                    }
                );
            }
            match s.nexus_rss_kib {
                Some(kib) => println!(
                    "  Nexus resident memory: {:.1} MiB (VmRSS of this process: Nexus and the \
                     sled agents run in it)",
                    kib as f64 / 1024.0
                ),
                None => println!("  Nexus resident memory: unknown"),
            }
            println!(
                "  EXPLAIN ({EXPLAIN_METHOD}) of {} statement(s) run in the window ({} could \
                 not be explained); {} plan(s) with a Seq Scan{}",
                s.statements_explained,
                s.statements_unexplainable,
                s.seq_scans.len(),
                if s.seq_scans.is_empty() { "" } else { ":" }
            );
            for p in &s.seq_scans {
                println!("  - ({} calls) {}", p.calls, p.statement);
                for line in p.plan.lines() {
                    println!("      {line}");
                }
            }
        }
        println!();
        println!(
            "p99 at {} / p99 at {} instances:",
            large.instances, small.instances
        );
        for (what, a, b, r) in &ratios {
            println!("  {what:<20} {a:>8.1} ms  {b:>8.1} ms  {r:>6.2}x");
        }
        if let Some(e) = scales.iter().flat_map(|s| &s.errors).next() {
            println!("first error: {e}");
        }
        if violations.is_empty() {
            println!("invariant checker: clean");
        } else {
            println!("invariant checker: {} violation(s):", violations.len());
            for v in violations.iter().take(20) {
                println!("  {v}");
            }
        }
        println!("goals:");
        for (goal, met) in &goals {
            println!("  {:<8} {goal}", if *met { "met" } else { "MISSED" });
        }
    }
    if !violations.is_empty() {
        bail!(
            "the invariant checker found {} violation(s)",
            violations.len()
        );
    }
    Ok(())
}

impl Seeder {
    /// Seeds `count` more stopped instances, `per_project` to a project, with the projects
    /// (and their default VPC, subnet and admin role) they need. Each row is a copy of the real
    /// template's, with what must differ changed.
    fn seed(&mut self, system: &System, count: usize, per_project: usize) -> anyhow::Result<()> {
        let first = self.instances;
        let last = first + count; // exclusive
        let want_projects = last.div_ceil(per_project);
        let (p0, p1) = (self.projects, want_projects);
        let tp = &self.template_project;
        let ti = &self.template_instance;
        let rcgen = self.template_rcgen;
        let vni = self.vni_base;
        if p1 > p0 {
            system.sql(&format!(
                "BEGIN;
                 CREATE TEMP TABLE seeded AS
                   SELECT g AS n, gen_random_uuid() AS project_id, gen_random_uuid() AS vpc_id,
                          ('fdee:' || to_hex((g >> 16) & 65535) || ':' || to_hex(g & 65535)
                           || '::/48')::inet AS prefix
                   FROM generate_series({p0}, {p1} - 1) g;
                 INSERT INTO project SELECT (jsonb_populate_record(NULL::project,
                     to_jsonb(t) || jsonb_build_object('id', s.project_id,
                       'name', 'scale-' || lpad(s.n::text, 6, '0'), 'rcgen', {rcgen},
                       'time_created', now(), 'time_modified', now()))).*
                   FROM project t, seeded s WHERE t.id = '{tp}';
                 INSERT INTO role_assignment SELECT (jsonb_populate_record(NULL::role_assignment,
                     to_jsonb(t) || jsonb_build_object('resource_id', s.project_id))).*
                   FROM role_assignment t, seeded s
                   WHERE t.resource_type = 'project' AND t.resource_id = '{tp}';
                 INSERT INTO vpc SELECT (jsonb_populate_record(NULL::vpc,
                     to_jsonb(t) || jsonb_build_object('id', s.vpc_id, 'project_id', s.project_id,
                       'vni', {vni} + s.n, 'ipv6_prefix', s.prefix,
                       'time_created', now(), 'time_modified', now()))).*
                   FROM vpc t, seeded s
                   WHERE t.project_id = '{tp}' AND t.time_deleted IS NULL;
                 INSERT INTO vpc_subnet SELECT (jsonb_populate_record(NULL::vpc_subnet,
                     to_jsonb(t) || jsonb_build_object('id', gen_random_uuid(), 'vpc_id', s.vpc_id,
                       'ipv6_block', set_masklen(s.prefix, 64),
                       'time_created', now(), 'time_modified', now()))).*
                   FROM vpc_subnet t JOIN vpc v ON v.id = t.vpc_id, seeded s
                   WHERE v.project_id = '{tp}' AND t.time_deleted IS NULL;
                 DROP TABLE seeded;
                 COMMIT;"
            ))?;
            self.projects = p1;
        }
        if last > first {
            system.sql(&format!(
                "BEGIN;
                 INSERT INTO instance SELECT (jsonb_populate_record(NULL::instance,
                     to_jsonb(t) || jsonb_build_object('id', gen_random_uuid(),
                       'name', 'seeded-' || g, 'hostname', 'seeded-' || g, 'project_id', p.id,
                       'nexus_state', 'no_vmm', 'active_propolis_id', NULL,
                       'target_propolis_id', NULL, 'migration_id', NULL,
                       'time_created', now(), 'time_modified', now(),
                       'time_state_updated', now()))).*
                   FROM instance t, generate_series({first}, {last} - 1) g
                   JOIN project p ON p.name = 'scale-' || lpad((g / {per_project})::text, 6, '0')
                     AND p.time_deleted IS NULL
                   WHERE t.id = '{ti}';
                 UPDATE project p SET rcgen = p.rcgen + c.n FROM (
                     SELECT 'scale-' || lpad((g / {per_project})::text, 6, '0') AS name,
                            count(*) AS n
                     FROM generate_series({first}, {last} - 1) g GROUP BY 1) c
                   WHERE p.name = c.name AND p.time_deleted IS NULL;
                 COMMIT;"
            ))?;
            self.instances = last;
        }
        Ok(())
    }
}

const EXPLAIN_METHOD: &str = "PREPARE + EXPLAIN EXECUTE with NULL parameters under \
                              plan_cache_mode = force_generic_plan (the generic plan)";

/// One scale's measurements.
async fn measure(
    system: &System,
    args: &ScaleArgs,
    real: &[InstanceUuid],
    instances: usize,
    projects: usize,
    seed: Duration,
    url: &str,
) -> anyhow::Result<Scale> {
    let window = Duration::from_secs(args.duration_secs);
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Views: of seeded instances, a random sample of them.
    let ids: Arc<Vec<uuid::Uuid>> = Arc::new(
        system
            .sql("SELECT id FROM instance WHERE time_deleted IS NULL ORDER BY random() LIMIT 1000")?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
    );
    let list_project = "scale-000000".to_string();
    // From here on, what Halyard's database runs is what the plans below are of.
    system.sql("SELECT pg_stat_statements_reset()")?;
    let view = timed_window(&system.client, args.clients, window, &errors, {
        let ids = ids.clone();
        let next = Arc::new(AtomicUsize::new(0));
        move |client: Client| {
            let ids = ids.clone();
            let next = next.clone();
            async move {
                let id = ids[next.fetch_add(1, Ordering::Relaxed) % ids.len()];
                client
                    .instance_view()
                    .instance(NameOrId::from(id))
                    .send()
                    .await
                    .context("viewing an instance")?;
                Ok(())
            }
        }
    })
    .await;
    let list = timed_window(&system.client, args.clients, window, &errors, {
        move |client: Client| {
            let project = list_project.clone();
            async move {
                let page = client
                    .instance_list()
                    .project(project)
                    .limit(std::num::NonZeroU32::new(100).expect("not zero"))
                    .send()
                    .await
                    .context("listing instances")?
                    .into_inner();
                if page.items.len() != 100 {
                    bail!("a page of {} instances, not 100", page.items.len());
                }
                Ok(())
            }
        }
    })
    .await;
    // Starts and stops: each client its own real instance, again and again.
    let poll = Duration::from_millis(args.poll_ms);
    let mut tasks = Vec::new();
    let end = Instant::now() + window;
    for id in real.iter().copied() {
        let client = system.client.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < end {
                match start_stop(&client, id, poll).await {
                    Ok(s) => samples.push(s),
                    Err(e) => {
                        errors.lock().unwrap().push(format!("{e:#}"));
                        break;
                    }
                }
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await?);
    }
    let nexus_rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        });
    let (explained, unexplainable, seq_scans) = explain(system)?;
    let pki = halyard_tls::pki::test_pki();
    pki.files(halyard_tls::Role::Operator)?;
    let omdb = vec![
        omdb(url, pki.dir(), "instances"),
        omdb(url, pki.dir(), "check"),
    ];
    let errors = errors.lock().unwrap().clone();
    Ok(Scale {
        instances,
        projects,
        seed,
        view,
        list,
        start: Figures::of(samples.iter().map(|s| s[0])),
        start_to_running: Figures::of(samples.iter().map(|s| s[1])),
        stop: Figures::of(samples.iter().map(|s| s[2])),
        stop_to_stopped: Figures::of(samples.iter().map(|s| s[3])),
        errors,
        omdb,
        nexus_rss_kib,
        statements_explained: explained,
        statements_unexplainable: unexplainable,
        seq_scans,
    })
}

/// `clients` clients do `op` again and again for `window`; the latency of each.
async fn timed_window<F, Fut>(
    client: &Client,
    clients: usize,
    window: Duration,
    errors: &Arc<std::sync::Mutex<Vec<String>>>,
    op: F,
) -> Figures
where
    F: Fn(Client) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let end = Instant::now() + window;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, op, errors) = (client.clone(), op.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < end {
                let sent = Instant::now();
                match op(client.clone()).await {
                    Ok(()) => samples.push(sent.elapsed()),
                    Err(e) => {
                        errors.lock().unwrap().push(format!("{e:#}"));
                        break;
                    }
                }
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            samples.extend(s);
        }
    }
    Figures::of(samples)
}

/// Starts a stopped instance, waits until running, stops it, waits until stopped: the start
/// and stop answers' latencies and the times to running and to stopped.
async fn start_stop(
    client: &Client,
    id: InstanceUuid,
    poll: Duration,
) -> anyhow::Result<[Duration; 4]> {
    let which = || NameOrId::from(id.into_untyped_uuid());
    let sent = Instant::now();
    let view = client
        .instance_start()
        .instance(which())
        .send()
        .await
        .with_context(|| format!("starting {id}"))?
        .into_inner();
    let start = sent.elapsed();
    wait_for(client, id, view.run_state, InstanceState::Running, poll).await?;
    let start_to_running = sent.elapsed();
    let sent = Instant::now();
    let view = client
        .instance_stop()
        .instance(which())
        .send()
        .await
        .with_context(|| format!("stopping {id}"))?
        .into_inner();
    let stop = sent.elapsed();
    wait_for(client, id, view.run_state, InstanceState::Stopped, poll).await?;
    Ok([start, start_to_running, stop, sent.elapsed()])
}

async fn wait_for(
    client: &Client,
    id: InstanceUuid,
    mut state: InstanceState,
    wanted: InstanceState,
    poll: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while state != wanted {
        if matches!(state, InstanceState::Failed | InstanceState::Destroyed) {
            bail!("instance {id} is {state}, waiting for {wanted}");
        }
        if Instant::now() > deadline {
            bail!("instance {id} still {state}, waiting for {wanted}");
        }
        tokio::time::sleep(poll).await;
        state = client
            .instance_view()
            .instance(NameOrId::from(id.into_untyped_uuid()))
            .send()
            .await
            .with_context(|| format!("viewing {id}"))?
            .into_inner()
            .run_state;
    }
    Ok(())
}

/// The generic plan of every statement Halyard's database ran since the last reset; the
/// counts of statements explained and not, and the plans with a sequential scan.
fn explain(system: &System) -> anyhow::Result<(usize, usize, Vec<Plan>)> {
    let rows = system.sql(&format!(
        "SELECT calls, regexp_replace(query, '\\s+', ' ', 'g')
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
         WHERE d.datname = '{DATABASE}' AND calls > 0
         ORDER BY calls DESC"
    ))?;
    let (mut explained, mut unexplainable, mut seq_scans) = (0, 0, Vec::new());
    for row in rows.lines() {
        let Some((calls, query)) = row.split_once('|') else {
            continue;
        };
        let calls: u64 = calls.trim().parse().unwrap_or(0);
        let query = query.trim();
        let head = query
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        if !["SELECT", "INSERT", "UPDATE", "DELETE", "WITH"].contains(&head.as_str())
            || query.contains("pg_stat_statements")
            || query.contains("pg_database")
        {
            continue;
        }
        let params = max_parameter(query);
        let nulls = vec!["NULL"; params].join(", ");
        let execute = if params == 0 {
            "EXPLAIN EXECUTE halyard_scale_s".to_string()
        } else {
            format!("EXPLAIN EXECUTE halyard_scale_s({nulls})")
        };
        let sql = format!(
            "SET plan_cache_mode = force_generic_plan; PREPARE halyard_scale_s AS {query}; \
             {execute};"
        );
        match system.sql(&sql) {
            Ok(out) => {
                explained += 1;
                let plan: String = out
                    .lines()
                    .filter(|l| !matches!(l.trim(), "SET" | "PREPARE" | ""))
                    .collect::<Vec<_>>()
                    .join("\n");
                if plan.contains("Seq Scan") {
                    seq_scans.push(Plan {
                        statement: query.to_string(),
                        calls,
                        plan,
                    });
                }
            }
            Err(_) => unexplainable += 1,
        }
    }
    Ok((explained, unexplainable, seq_scans))
}

/// The highest `$n` in a statement.
fn max_parameter(query: &str) -> usize {
    let bytes = query.as_bytes();
    let mut max = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let digits: String = query[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            if let Ok(n) = digits.parse::<usize>() {
                max = max.max(n);
            }
            i += 1 + digits.len();
        } else {
            i += 1;
        }
    }
    max
}

/// Runs the real `omdb --db-url URL db <what>` (the binary next to this one, or
/// `$HALYARD_OMDB`) and times it. It reaches the sled agents with an operator certificate of
/// this process's CA, in `tls_dir`.
fn omdb(url: &str, tls_dir: &std::path::Path, what: &'static str) -> OmdbRun {
    let binary = std::env::var_os("HALYARD_OMDB")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.join("omdb")))
        })
        .unwrap_or_else(|| "omdb".into());
    let began = Instant::now();
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(&binary)
            .args(["--db-url", url, "--tls-dir"])
            .arg(tls_dir)
            .args(["db", what])
            .stdin(std::process::Stdio::null())
            .output()
    });
    let took = began.elapsed();
    match out {
        Ok(out) => OmdbRun {
            what,
            took,
            ok: out.status.success(),
            detail: if out.status.success() {
                format!(
                    "{} lines",
                    String::from_utf8_lossy(&out.stdout).lines().count()
                )
            } else {
                {
                    // `omdb db check` exits 2 when it found disagreements (on stdout).
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    let tail: Vec<&str> = stdout
                        .lines()
                        .rev()
                        .take(2)
                        .chain(stderr.lines().take(3))
                        .filter(|l| !l.trim().is_empty())
                        .collect();
                    format!("{}: {}", out.status, tail.join(" / "))
                }
            },
        },
        Err(e) => OmdbRun {
            what,
            took,
            ok: false,
            detail: format!("running {}: {e}", binary.display()),
        },
    }
}
