//! `halyard-bench placement`: instance start latency with few sleds and with many (see the
//! crate docs).

use crate::system::{Driven, Figures, Load, System, round};
use anyhow::bail;
use clap::Parser;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Parser)]
pub struct PlacementArgs {
    /// Sleds at the first scale.
    #[arg(long, default_value_t = 10)]
    pub small: usize,
    /// Sleds at the second scale (more sled agents are started to get there).
    #[arg(long, default_value_t = 1000)]
    pub large: usize,
    /// Concurrent clients doing lifecycles at each scale.
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// Measured time at each scale. It should span a few registration intervals (10 s), so
    /// that the sleds' periodic re-registration, which grows with their number, is part of
    /// what is measured.
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    /// Unmeasured time at each scale first.
    #[arg(long, default_value_t = 5)]
    pub warmup_secs: u64,
    /// How often a client waiting for running or stopped looks at the instance.
    #[arg(long, default_value_t = 10)]
    pub poll_ms: u64,
    /// Profile each scale's measured window: load pg_stat_statements and print the N
    /// statements that took the most database time (0: off).
    #[arg(long, default_value_t = 0)]
    pub profile: usize,
    /// Print the results as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Room on each sled, in benchmark instances.
const SLED_ROOM: u32 = 64;

struct Scale {
    sleds: usize,
    lifecycles_per_s: f64,
    start: Figures,
    start_to_running: Figures,
    errors: Vec<String>,
    registration: Duration,
    /// Per lifecycle: connections taken from Nexus's pool, how many waited, wait time (ms).
    pool: (f64, f64, f64),
    /// CPU per lifecycle (ms): this process, PostgreSQL; and cores busy.
    cpu: (f64, f64, f64),
    statements: Option<String>,
}

pub async fn run(args: PlacementArgs) -> anyhow::Result<()> {
    if args.small == 0 || args.large <= args.small || args.clients == 0 {
        bail!("need 0 < --small < --large and --clients >= 1");
    }
    let mut system = System::start(args.profile > 0).await?;
    let mut scales = Vec::new();
    for (i, sleds) in [args.small, args.large].into_iter().enumerate() {
        let registering = Instant::now();
        system
            .add_sleds(sleds - system.sleds.len(), SLED_ROOM)
            .await?;
        let registration = registering.elapsed();
        if !args.json {
            println!(
                "{sleds} sleds registered ({} started in {:.1} s); measuring {} s with {} clients",
                system.sleds.len(),
                registration.as_secs_f64(),
                args.duration_secs,
                args.clients
            );
        }
        let load = Load::start(
            &system.client,
            args.clients,
            &format!("s{i}c"),
            Duration::from_millis(args.poll_ms),
        );
        tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;
        if args.profile > 0 {
            system.sql("SELECT pg_stat_statements_reset()")?;
        }
        let before = system.counters()?;
        let from = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.duration_secs)).await;
        let to = Instant::now();
        let after = system.counters()?;
        let statements = if args.profile > 0 {
            Some(system.sql(&crate::lifecycles::top_statements_query(args.profile))?)
        } else {
            None
        };
        let Driven {
            measured, errors, ..
        } = load.finish(from, to).await?;
        let n = measured.len().max(1) as f64;
        let pool = (
            (after.pool.gets - before.pool.gets) as f64 / n,
            (after.pool.gets_waited - before.pool.gets_waited) as f64 / n,
            (after.pool.wait_time - before.pool.wait_time).as_secs_f64() * 1000.0 / n,
        );
        let cpu = (
            (after.cpu.halyard - before.cpu.halyard) * 1000.0 / n,
            (after.cpu.postgres - before.cpu.postgres) * 1000.0 / n,
            (after.cpu.halyard - before.cpu.halyard + after.cpu.postgres - before.cpu.postgres)
                / (to - from).as_secs_f64(),
        );
        scales.push(Scale {
            sleds,
            lifecycles_per_s: measured.len() as f64 / (to - from).as_secs_f64(),
            start: Figures::of(measured.iter().map(|l| l.start)),
            start_to_running: Figures::of(measured.iter().map(|l| l.start_to_running)),
            errors,
            registration,
            pool,
            cpu,
            statements,
        });
    }
    let violations = system.violations()?;
    let sled_agents = system.sleds.len();
    system.close().await?;

    let (small, large) = (&scales[0], &scales[1]);
    let ratio = |f: fn(&Scale) -> f64| f(large) / f(small);
    let start_p50 = ratio(|s| s.start.p50);
    let start_p99 = ratio(|s| s.start.p99);
    let running_p50 = ratio(|s| s.start_to_running.p50);
    let running_p99 = ratio(|s| s.start_to_running.p99);
    let errors: usize = scales.iter().map(|s| s.errors.len()).sum();
    let goal = start_p50 <= 2.0 && running_p50 <= 2.0 && start_p99 <= 2.0 && running_p99 <= 2.0;

    if args.json {
        let scale = |s: &Scale| {
            json!({
                "sleds": s.sleds,
                "registration_s": round(s.registration.as_secs_f64()),
                "lifecycles_per_s": round(s.lifecycles_per_s),
                "start": s.start.json(),
                "start_to_running": s.start_to_running.json(),
                "errors": s.errors.len(),
                "nexus_pool_per_lifecycle": {
                    "gets": round(s.pool.0), "waits": round(s.pool.1), "wait_ms": round(s.pool.2),
                },
                "cpu_ms_per_lifecycle": {
                    "halyard": round(s.cpu.0), "postgres": round(s.cpu.1), "cores_busy": round(s.cpu.2),
                },
                "statements": s.statements.as_deref().map(|t| t.lines().collect::<Vec<_>>()),
            })
        };
        let value = json!({
            "clients": args.clients,
            "duration_s": args.duration_secs,
            "sled_agents": sled_agents,
            "scales": scales.iter().map(scale).collect::<Vec<_>>(),
            "ratio": {
                "start_p50": round(start_p50),
                "start_p99": round(start_p99),
                "start_to_running_p50": round(running_p50),
                "start_to_running_p99": round(running_p99),
            },
            "errors": errors,
            "first_errors": scales.iter().flat_map(|s| &s.errors).take(5).collect::<Vec<_>>(),
            "violations": violations,
            "goal_met": goal,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!();
    for s in &scales {
        println!(
            "{} sleds: {:.1} lifecycles/s, {} error(s)",
            s.sleds,
            s.lifecycles_per_s,
            s.errors.len()
        );
        println!("{}", s.start.line("start"));
        println!("{}", s.start_to_running.line("start-to-running"));
        println!(
            "  per lifecycle: {:.1} ms CPU here, {:.1} ms in PostgreSQL ({:.2} cores busy); \
             {:.1} pool connections, {:.1} waited, {:.1} ms waiting",
            s.cpu.0, s.cpu.1, s.cpu.2, s.pool.0, s.pool.1, s.pool.2
        );
        if let Some(statements) = &s.statements {
            crate::lifecycles::print_statements(
                statements,
                s.lifecycles_per_s * args.duration_secs as f64,
            );
        }
    }
    println!(
        "ratio {} sleds / {} sleds: start p50 {start_p50:.2}x p99 {start_p99:.2}x; \
         start-to-running p50 {running_p50:.2}x p99 {running_p99:.2}x",
        large.sleds, small.sleds
    );
    if let Some(e) = scales.iter().flat_map(|s| &s.errors).next() {
        println!("first error: {e}");
    }
    if violations.is_empty() {
        println!("invariant checker: clean (no failed instance, no leaked reservation)");
    } else {
        println!("invariant checker: {} violation(s):", violations.len());
        for v in violations.iter().take(20) {
            println!("  {v}");
        }
    }
    println!(
        "goal (every ratio <= 2): {}",
        if goal { "met" } else { "MISSED" }
    );
    Ok(())
}
