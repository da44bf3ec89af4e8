//! `halyard-bench lifecycles`: instance lifecycles per second against the database's own
//! commit rate (see the crate docs).

use crate::system::{
    DATABASE, Driven, Extras, Figures, Lifecycle, Load, System, lifecycle_window, round,
};
use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde_json::json;
use std::time::{Duration, Instant};

/// The durable writes one lifecycle needs: the instance insert; the claim, reservation and
/// VMM record; the running report; the stop report and the retirement; the delete; the saga
/// log's batched events.
const DURABLE_WRITES_PER_LIFECYCLE: f64 = 12.0;
/// Goal: lifecycles/s against that budget of pgbench's commit rate.
const BUDGET_RATIO_GOAL: f64 = 0.15;
/// Goal: writing transactions per lifecycle.
const WRITES_GOAL: f64 = 12.0;
/// Goal: statements per lifecycle (the clients' polling included, transaction control not).
const STATEMENTS_GOAL: f64 = 30.0;
/// Goal: p99 of start-to-running, in milliseconds.
const START_P99_GOAL_MS: f64 = 100.0;

#[derive(Parser)]
pub struct LifecyclesArgs {
    /// Concurrent clients (C), each doing lifecycles back to back.
    #[arg(long, default_value_t = 64)]
    pub clients: u32,
    /// Simulated sled agents (K), each with zero-delay VMMs and room for C instances.
    #[arg(long, default_value_t = 16)]
    pub sleds: usize,
    /// Measured time, after the warm-up.
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    /// Lifecycles run before measuring starts (connections, caches, the first sagas).
    #[arg(long, default_value_t = 5)]
    pub warmup_secs: u64,
    /// How often a client waiting for running or stopped looks at the instance.
    #[arg(long, default_value_t = 10)]
    pub poll_ms: u64,
    /// How long pgbench runs, with C clients, on the same cluster afterwards.
    #[arg(long, default_value_t = 15)]
    pub pgbench_secs: u64,
    /// pgbench's workload (see `--help` of each value).
    #[arg(long, value_enum, default_value_t = PgbenchWorkload::SingleUpdate)]
    pub pgbench_workload: PgbenchWorkload,
    /// Profile the measured window: load pg_stat_statements and print the N statements that
    /// took the most database time, with calls per lifecycle, and where each saga spends its
    /// time (0: off).
    #[arg(long, default_value_t = 0)]
    pub profile: usize,
    /// Measured time of each of two more windows, side by side after the main one: instances
    /// without a network interface, then with the default one (as in the main window). 0:
    /// skip the comparison.
    #[arg(long, default_value_t = 10)]
    pub nic_window_secs: u64,
    /// Print the results as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PgbenchWorkload {
    /// One transaction = one `UPDATE` of a random row of pgbench_accounts (100,000 rows at
    /// scale 1, so C clients seldom wait for each other's row locks): the cheapest write
    /// transaction, so its rate bounds what any client of this cluster can commit.
    SingleUpdate,
    /// pgbench's built-in simple-update: the same update, a select and a history insert.
    SimpleUpdate,
    /// pgbench's default TPC-B-like transaction. At scale 1 every transaction updates the
    /// one branch row, so C clients queue on its lock: a contention figure, not a commit
    /// rate.
    TpcbLike,
}

impl PgbenchWorkload {
    fn describe(self) -> &'static str {
        match self {
            PgbenchWorkload::SingleUpdate => {
                "single-row UPDATE of a random pgbench_accounts row per transaction (scale 1, \
                 100,000 rows), prepared statements"
            }
            PgbenchWorkload::SimpleUpdate => {
                "pgbench built-in simple-update (UPDATE + SELECT + INSERT), prepared statements"
            }
            PgbenchWorkload::TpcbLike => {
                "pgbench built-in tpcb-like (scale 1: one branch row, contended), prepared \
                 statements"
            }
        }
    }
}

const SINGLE_UPDATE_SCRIPT: &str = "\\set aid random(1, 100000 * :scale)\n\
     UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n";

pub async fn run(args: LifecyclesArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.sleds == 0 || args.duration_secs == 0 {
        bail!("--clients, --sleds and --duration-secs must be at least 1");
    }
    let pgss = args.profile > 0;
    let mut system = System::start(pgss).await?;
    system.add_sleds(args.sleds, args.clients).await?;
    let settings = system.settings()?;
    if !args.json {
        println!(
            "lifecycles: C={} clients, K={} simulated sleds (zero-delay VMMs), {} s measured after \
             {} s warm-up, clients poll every {} ms, {} host CPU(s)",
            args.clients,
            args.sleds,
            args.duration_secs,
            args.warmup_secs,
            args.poll_ms,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!(
            "PostgreSQL (one cluster for Halyard and pgbench): {}",
            settings
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }

    let load = Load::start(
        &system.client,
        args.clients,
        "c",
        Duration::from_millis(args.poll_ms),
    );
    tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;
    if pgss {
        system.sql("SELECT pg_stat_statements_reset()")?;
    }
    let before = system.counters()?;
    let window_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration_secs)).await;
    let after = system.counters()?;
    let window_end = Instant::now();
    let statements = if pgss {
        Some(system.sql(&top_statements_query(args.profile))?)
    } else {
        None
    };
    let statement_calls: Option<u64> = if pgss {
        Some(
            system
                .sql(&statement_calls_query())?
                .trim()
                .parse()
                .context("reading the statement count")?,
        )
    } else {
        None
    };
    let saga_steps = if pgss {
        Some(system.sql(&saga_steps_query(&before.time, &after.time))?)
    } else {
        None
    };
    let Driven {
        measured,
        errors,
        total_lifecycles,
    } = load.finish(window_start, window_end).await?;
    let window = window_end - window_start;

    // Instances without and with a network interface, side by side (each window starts from
    // an idle system: the main window's clients have finished).
    let nic_comparison = if args.nic_window_secs > 0 {
        let window = Duration::from_secs(args.nic_window_secs);
        let poll = Duration::from_millis(args.poll_ms);
        let without = Extras {
            disk: None,
            nic: false,
        };
        let with = Extras::default();
        Some((
            lifecycle_window(&system, args.clients, "n", poll, window, without).await?,
            lifecycle_window(&system, args.clients, "i", poll, window, with).await?,
        ))
    } else {
        None
    };

    let violations = system.violations()?;

    // The same cluster's commit rate, measured by pgbench with as many clients.
    let pgbench = run_pgbench(
        &system,
        args.clients,
        args.pgbench_secs,
        args.pgbench_workload,
    )
    .context("running pgbench")?;
    system.close().await?;

    let n = measured.len();
    let rate = n as f64 / window.as_secs_f64();
    let per = |x: u64| if n == 0 { 0.0 } else { x as f64 / n as f64 };
    let commits = after.commits - before.commits;
    let writes = after.next_xid - before.next_xid;
    let commits_per_lifecycle = per(commits);
    let writes_per_lifecycle = per(writes);
    let polls_per_lifecycle = per(measured.iter().map(|l| u64::from(l.polls)).sum());
    let pool_gets = per(after.pool.gets - before.pool.gets);
    let pool_waited = per(after.pool.gets_waited - before.pool.gets_waited);
    let pool_wait_ms = if n == 0 {
        0.0
    } else {
        (after.pool.wait_time - before.pool.wait_time).as_secs_f64() * 1000.0 / n as f64
    };
    let cpu_ms = |f: fn(&crate::system::CpuTimes) -> f64| {
        if n == 0 {
            0.0
        } else {
            (f(&after.cpu) - f(&before.cpu)) * 1000.0 / n as f64
        }
    };
    let halyard_cpu = cpu_ms(|c| c.halyard);
    let postgres_cpu = cpu_ms(|c| c.postgres);
    let cpu_busy = (after.cpu.halyard - before.cpu.halyard + after.cpu.postgres
        - before.cpu.postgres)
        / window.as_secs_f64();
    let ratio = rate * commits_per_lifecycle / pgbench.tps;
    // The physical budget: pgbench's commit rate is what this cluster can make durable; a
    // lifecycle needs about DURABLE_WRITES_PER_LIFECYCLE of them.
    let budget_rate = pgbench.tps / DURABLE_WRITES_PER_LIFECYCLE;
    let budget_ratio = rate / budget_rate.max(f64::MIN_POSITIVE);
    let statements_per_lifecycle = statement_calls.map(per);
    let per_commit = |ms_per_lifecycle: f64| {
        if commits_per_lifecycle > 0.0 {
            ms_per_lifecycle * 1000.0 / commits_per_lifecycle
        } else {
            0.0
        }
    };
    let halyard_us_per_commit = per_commit(halyard_cpu);
    let postgres_us_per_commit = per_commit(postgres_cpu);
    let write_ratio = rate * writes_per_lifecycle / pgbench.tps;
    let figures = |f: fn(&Lifecycle) -> Duration| Figures::of(measured.iter().map(f));
    let ops: Vec<(&str, Figures)> = vec![
        ("create", figures(|l| l.create)),
        ("start", figures(|l| l.start)),
        ("start-to-running", figures(|l| l.start_to_running)),
        ("stop", figures(|l| l.stop)),
        ("stop-to-stopped", figures(|l| l.stop_to_stopped)),
        ("delete", figures(|l| l.delete)),
        ("whole lifecycle", figures(|l| l.total)),
    ];
    let start_to_running_p99 = ops[2].1.p99;
    let goals: Vec<(String, Option<bool>)> = vec![
        (
            format!(
                "lifecycles/s / (pgbench commits/s / {DURABLE_WRITES_PER_LIFECYCLE}) >= \
                 {:.0}%",
                BUDGET_RATIO_GOAL * 100.0
            ),
            Some(budget_ratio >= BUDGET_RATIO_GOAL),
        ),
        (
            format!("writing transactions per lifecycle <= {WRITES_GOAL}"),
            Some(writes_per_lifecycle <= WRITES_GOAL),
        ),
        (
            format!("statements per lifecycle <= {STATEMENTS_GOAL} (measured with --profile)"),
            statements_per_lifecycle.map(|s| s <= STATEMENTS_GOAL),
        ),
        (
            format!("p99 start-to-running <= {START_P99_GOAL_MS} ms"),
            Some(start_to_running_p99 <= START_P99_GOAL_MS),
        ),
        (
            "no errors, no failed instance, no invariant violation".to_string(),
            Some(errors.is_empty() && violations.is_empty()),
        ),
    ];

    if args.json {
        let value = json!({
            "clients": args.clients,
            "sleds": args.sleds,
            "duration_s": round(window.as_secs_f64()),
            "warmup_s": args.warmup_secs,
            "poll_ms": args.poll_ms,
            "postgres": settings.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "lifecycles": n,
            "lifecycles_total": total_lifecycles,
            "lifecycles_per_s": round(rate),
            "latency": ops.iter().map(|(k, f)| (k.to_string(), f.json())).collect::<serde_json::Map<_, _>>(),
            "commits": commits,
            "rollbacks": after.rollbacks - before.rollbacks,
            "commits_per_lifecycle": round(commits_per_lifecycle),
            "write_transactions_per_lifecycle": round(writes_per_lifecycle),
            "polls_per_lifecycle": round(polls_per_lifecycle),
            "cpu_us_per_commit": {
                "halyard": round(halyard_us_per_commit),
                "postgres": round(postgres_us_per_commit),
            },
            "cpu_ms_per_lifecycle": {
                "halyard": round(halyard_cpu),
                "postgres": round(postgres_cpu),
                "cores_busy": round(cpu_busy),
            },
            "nexus_pool": {
                "connections": after.pool.connections,
                "gets_per_lifecycle": round(pool_gets),
                "waits_per_lifecycle": round(pool_waited),
                "wait_ms_per_lifecycle": round(pool_wait_ms),
                "timeouts": after.pool.gets_timed_out - before.pool.gets_timed_out,
            },
            "pgbench": {
                "workload": format!("{:?}", args.pgbench_workload),
                "description": args.pgbench_workload.describe(),
                "clients": args.clients,
                "duration_s": args.pgbench_secs,
                "commits_per_s": round(pgbench.tps),
                "latency_avg_ms": pgbench.latency_ms.map(round),
                "cpu_us_per_commit": {
                    "postgres": round(pgbench.postgres_us),
                    "pgbench": round(pgbench.client_us),
                },
                "cores_busy": round(pgbench.cores_busy),
            },
            "commit_ratio": round(ratio * 1000.0) / 1000.0,
            "budget_ratio": round(budget_ratio * 1000.0) / 1000.0,
            "statements_per_lifecycle": statements_per_lifecycle.map(round),
            "write_commit_ratio": round(write_ratio * 1000.0) / 1000.0,
            "errors": errors.len(),
            "first_errors": errors.iter().take(5).collect::<Vec<_>>(),
            "violations": violations,
            "goals": goals.iter().map(|(k, ok)| (k.clone(), json!(ok))).collect::<serde_json::Map<_, _>>(),
            "nic_comparison": nic_comparison.as_ref().map(|(without, with)| json!({
                "window_s": args.nic_window_secs,
                "without_nic": without.json(),
                "with_one_nic": with.json(),
                "rate_ratio_with_to_without": round(with.rate / without.rate.max(f64::MIN_POSITIVE)),
            })),
            "statements": statements.as_deref().map(|s| s.lines().collect::<Vec<_>>()),
            "saga_steps": saga_steps.as_deref().map(|s| s.lines().collect::<Vec<_>>()),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }

    println!();
    println!(
        "{n} lifecycles in {:.1} s: {rate:.1} lifecycles/s   ({total_lifecycles} in all, warm-up \
         and drain included)",
        window.as_secs_f64()
    );
    for (what, f) in &ops {
        println!("{}", f.line(what));
    }
    println!(
        "database: {commits} commits in the window ({} rollbacks): {commits_per_lifecycle:.1} \
         commits per lifecycle, of which {writes_per_lifecycle:.1} wrote (took a transaction id); \
         the clients' polling: {polls_per_lifecycle:.1} instance views per lifecycle",
        after.rollbacks - before.rollbacks
    );
    println!(
        "CPU per lifecycle: {halyard_cpu:.1} ms in Nexus, sled agents and clients (this \
         process), {postgres_cpu:.1} ms in PostgreSQL; {cpu_busy:.2} cores busy on average"
    );
    println!(
        "Nexus's connection pool ({} open): {pool_gets:.1} connections taken per lifecycle, \
         {pool_waited:.1} of them waited, {pool_wait_ms:.1} ms of waiting per lifecycle in all",
        after.pool.connections
    );
    println!(
        "pgbench, same cluster, {} clients, {} s: {:.0} commits/s ({})",
        args.clients,
        args.pgbench_secs,
        pgbench.tps,
        args.pgbench_workload.describe()
    );
    println!(
        "CPU per commit: Halyard's run {:.0} us in PostgreSQL + {:.0} us in this process; \
         pgbench's run {:.0} us in PostgreSQL + {:.0} us in pgbench ({:.2} cores busy)",
        postgres_us_per_commit,
        halyard_us_per_commit,
        pgbench.postgres_us,
        pgbench.client_us,
        pgbench.cores_busy
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for (run, busy) in [("Halyard's", cpu_busy), ("pgbench's", pgbench.cores_busy)] {
        if busy < 0.9 * cores {
            println!(
                "note: {run} run kept only {busy:.2} of {cores} cores busy: something else was \
                 using the machine, or the run did not saturate it; compare figures with care"
            );
        }
    }
    println!(
        "work against the physical budget: lifecycles/s / (pgbench commits/s / \
         {DURABLE_WRITES_PER_LIFECYCLE}) = {rate:.1} / ({:.0} / {DURABLE_WRITES_PER_LIFECYCLE}) \
         = {:.1}%   (commits: {rate:.1} x {commits_per_lifecycle:.1} / {:.0} = {:.1}% of \
         pgbench's rate; writing ones only: {:.1}%)",
        pgbench.tps,
        budget_ratio * 100.0,
        pgbench.tps,
        ratio * 100.0,
        write_ratio * 100.0
    );
    match statements_per_lifecycle {
        Some(statements) => {
            println!("statements per lifecycle (transaction control left out): {statements:.1}")
        }
        None => println!("statements per lifecycle: not measured (pass --profile N)"),
    }
    if let Some((without, with)) = &nic_comparison {
        println!(
            "instance lifecycles without and with a network interface, {} clients, {} s each, \
             side by side:",
            args.clients, args.nic_window_secs
        );
        println!("{}", without.line("without a NIC"));
        println!("{}", with.line("with one NIC"));
        println!(
            "  with/without lifecycle rate: {:.2}",
            with.rate / without.rate.max(f64::MIN_POSITIVE)
        );
    }
    if let Some(statements) = &statements {
        print_statements(statements, n as f64);
    }
    if let Some(steps) = &saga_steps {
        println!(
            "saga steps in the window: time from the saga's previous log event to this one \
             (a node's `started`: its predecessor's `succeeded` written + steno; `succeeded`: \
             its `started` written + the action)"
        );
        println!(
            "  {:<16} {:<14} {:<10} {:>6} {:>9} {:>9}",
            "saga", "node", "event", "n", "mean ms", "p99 ms"
        );
        for line in steps.lines() {
            let f: Vec<&str> = line.split('|').collect();
            if let [saga, node, event, n, mean, p99] = f[..] {
                println!("  {saga:<16} {node:<14} {event:<10} {n:>6} {mean:>9} {p99:>9}");
            }
        }
    }
    println!(
        "errors: {}{}",
        errors.len(),
        errors
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    if violations.is_empty() {
        println!("invariant checker: clean (no failed instance, no leaked reservation)");
    } else {
        println!("invariant checker: {} violation(s):", violations.len());
        for v in violations.iter().take(20) {
            println!("  {v}");
        }
    }
    println!("goals:");
    for (goal, met) in goals {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "unknown",
        };
        println!("  {verdict:<8} {goal}");
    }
    Ok(())
}

/// How many statements ran in the benchmark's database since pg_stat_statements was reset,
/// transaction control (`BEGIN`, `COMMIT`, ...) left out.
fn statement_calls_query() -> String {
    format!(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s \
         JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '{DATABASE}' \
         AND query !~* '^\\s*(BEGIN|COMMIT|ROLLBACK|START|SAVEPOINT|RELEASE|SET)\\M'"
    )
}

/// The `limit` statements that took the most time in Halyard's database since
/// pg_stat_statements was last reset: calls, total ms, the statement.
pub fn top_statements_query(limit: usize) -> String {
    format!(
        "SELECT calls, round(total_exec_time::numeric, 1), \
         regexp_replace(query, '\\s+', ' ', 'g') \
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
         WHERE d.datname = '{DATABASE}' ORDER BY total_exec_time DESC LIMIT {limit}"
    )
}

/// Prints [`top_statements_query`]'s rows, with calls per lifecycle.
pub fn print_statements(rows: &str, lifecycles: f64) {
    println!("top statements by database time in the window (calls per lifecycle, ms in all):");
    for line in rows.lines() {
        let mut parts = line.splitn(3, '|');
        let (Some(calls), Some(ms), Some(query)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let calls: f64 = calls.parse().unwrap_or(0.0);
        let query: String = query.chars().take(150).collect();
        println!(
            "  {:>6.2} {:>9} ms  {query}",
            calls / lifecycles.max(1.0),
            ms
        );
    }
}

/// Per saga kind, node and event type: how long after the saga's previous log event it was
/// recorded (events recorded between `from` and `to`, SQL timestamps).
fn saga_steps_query(from: &str, to: &str) -> String {
    format!(
        "WITH ev AS ( \
           SELECT s.name AS saga, e.node_id, e.event_type, e.event_time, \
             lag(e.event_time) OVER (PARTITION BY e.saga_id \
               ORDER BY e.event_time, e.node_id, e.event_type) AS prev, \
             s.dag->'graph'->'nodes'->(e.node_id::int) AS node \
           FROM saga_node_event e JOIN saga s ON s.id = e.saga_id \
           WHERE s.time_created >= '{from}' AND s.time_created <= '{to}'), \
         named AS ( \
           SELECT saga, node_id, event_type, \
             extract(epoch FROM event_time - prev) * 1000 AS ms, \
             CASE jsonb_typeof(node) WHEN 'object' THEN coalesce(node->'Action'->>'name', \
               (SELECT min(k) FROM jsonb_object_keys(node) k)) ELSE node#>>'{{}}' END AS name \
           FROM ev WHERE prev IS NOT NULL) \
         SELECT saga, name, event_type, count(*), round(avg(ms)::numeric, 2), \
           round((percentile_cont(0.99) WITHIN GROUP (ORDER BY ms))::numeric, 2) \
         FROM named GROUP BY saga, node_id, name, event_type \
         ORDER BY saga, node_id, event_type"
    )
}

struct PgbenchResult {
    tps: f64,
    latency_ms: Option<f64>,
    /// CPU per commit (µs) during the run: in PostgreSQL, and in pgbench itself.
    postgres_us: f64,
    client_us: f64,
    /// Cores PostgreSQL and pgbench kept busy, on average.
    cores_busy: f64,
}

/// `pgbench -i` a database of its own in Halyard's cluster, then runs `workload` with
/// `clients` clients for `secs` seconds and returns its commit rate.
fn run_pgbench(
    system: &System,
    clients: u32,
    secs: u64,
    workload: PgbenchWorkload,
) -> anyhow::Result<PgbenchResult> {
    let bin = halyard_test_db::postgres_bin_dir()?.join("pgbench");
    let cluster = system.cluster();
    system.sql_in("postgres", "CREATE DATABASE pgbench")?;
    let port = cluster.port().to_string();
    let base = |cmd: &mut std::process::Command| {
        cmd.args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"]);
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("PG") {
                cmd.env_remove(var);
            }
        }
    };
    let mut init = std::process::Command::new(&bin);
    base(&mut init);
    init.args(["-i", "-q", "-s", "1", "pgbench"]);
    let out = tokio::task::block_in_place(|| init.output())?;
    if !out.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let script = std::env::temp_dir().join(format!("halyard-bench-{}.sql", std::process::id()));
    let mut cmd = std::process::Command::new(&bin);
    base(&mut cmd);
    cmd.args(["-n", "-M", "prepared"])
        .args(["-c", &clients.to_string()])
        .args(["-j", &clients.min(2).to_string()])
        .args(["-T", &secs.to_string()]);
    match workload {
        PgbenchWorkload::SingleUpdate => {
            std::fs::write(&script, SINGLE_UPDATE_SCRIPT)?;
            cmd.arg("-f").arg(&script);
        }
        PgbenchWorkload::SimpleUpdate => {
            cmd.args(["-b", "simple-update"]);
        }
        PgbenchWorkload::TpcbLike => {
            cmd.args(["-b", "tpcb-like"]);
        }
    }
    cmd.arg("pgbench");
    let cpu_before = system.cpu()?;
    let out = tokio::task::block_in_place(|| {
        let out = cmd.output();
        // Let the postmaster reap pgbench's backends, whose time it then holds.
        std::thread::sleep(Duration::from_millis(500));
        out
    });
    let cpu_after = system.cpu()?;
    let _ = std::fs::remove_file(&script);
    let out = out?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |prefix: &str| {
        stdout.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
    };
    let tps = field("tps = ").with_context(|| format!("no tps in pgbench's output:\n{stdout}"))?;
    let commits = tps * secs as f64;
    Ok(PgbenchResult {
        tps,
        latency_ms: field("latency average = "),
        postgres_us: (cpu_after.postgres - cpu_before.postgres) * 1e6 / commits,
        client_us: (cpu_after.children - cpu_before.children) * 1e6 / commits,
        cores_busy: (cpu_after.postgres - cpu_before.postgres + cpu_after.children
            - cpu_before.children)
            / secs as f64,
    })
}
