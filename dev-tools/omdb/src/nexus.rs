//! `omdb nexus ...`: what the running Nexus holds in memory (its sagas, its background tasks),
//! over its internal API; and the
//! one thing omdb changes, through Nexus: `sled-expunge`, the operator's verdict that a sled
//! is gone for good.

use crate::Outcome;
use crate::output::{print_json, print_rows, time};
use crate::sled_agent::client_error;
use anyhow::anyhow;
use clap::{Args, Subcommand};
use halyard_common::ids::{SagaUuid, SledUuid};
use serde::Serialize;
use std::time::Duration;
use tabled::Tabled;

/// Where the development environment's Nexus serves its internal API.
pub const DEFAULT_NEXUS_URL: &str = "https://127.0.0.1:12221";

#[derive(Debug, Args)]
pub struct NexusArgs {
    /// Nexus's internal API.
    #[arg(long, global = true, value_name = "URL", default_value = DEFAULT_NEXUS_URL)]
    nexus_url: String,

    #[command(subcommand)]
    command: NexusCommand,
}

#[derive(Debug, Subcommand)]
enum NexusCommand {
    /// The sagas Nexus's saga executor holds in memory: those running, and those finished
    /// since Nexus started (compare `omdb db sagas`, the log).
    Sagas {
        /// Also print the executor's own rendering of each saga's nodes.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Declares a sled gone for good (expunged): IRREVERSIBLE. Its VMMs are marked failed and
    /// their reservations released (their instances fail and can be started again
    /// elsewhere), a migration into or out of it fails, placement never picks it again and
    /// its sled agent may not register again. For a sled that stopped answering and will not
    /// come back; a sled agent that is only unreachable for a while needs nothing (its VMMs
    /// keep their reservations until it answers). Repeating it is harmless.
    SledExpunge {
        /// The sled (`omdb db sleds` lists them).
        sled_id: SledUuid,
    },
    /// Nexus's background tasks: what each is for, how often it runs, when it last ran and for
    /// how long, what it did, and its last error (since this Nexus started).
    BackgroundTasks,
}

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
struct BackgroundTaskRow {
    task: String,
    period: String,
    runs: u64,
    last_run: String,
    took: String,
    last_result: String,
    last_error: String,
}

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
struct SagaRow {
    id: SagaUuid,
    /// ready, running, succeeded, failed (unwound cleanly) or stuck (an undo failed).
    state: String,
    #[tabled(skip)]
    status: String,
}

pub async fn run(args: &NexusArgs, json: bool) -> anyhow::Result<Outcome> {
    let url = args.nexus_url.trim_end_matches('/').to_string();
    let http = crate::tls::http_client_builder(halyard_tls::NEXUS_NAME)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .build()?;
    let client = halyard_nexus_client::Client::new_with_client(&url, http);
    match &args.command {
        NexusCommand::Sagas { verbose } => {
            let sagas = client
                .saga_list()
                .await
                .map_err(|e| anyhow!("{}", client_error("Nexus", &url, &e)))?
                .into_inner();
            let rows: Vec<SagaRow> = sagas
                .into_iter()
                .map(|s| SagaRow {
                    id: s.id,
                    state: s.state,
                    status: s.status,
                })
                .collect();
            if json {
                print_json(&rows)?;
            } else if *verbose {
                for (i, row) in rows.iter().enumerate() {
                    if i > 0 {
                        println!();
                    }
                    println!("saga {}: {}", row.id, row.state);
                    for line in row.status.lines() {
                        println!("  {}", line.trim_end());
                    }
                }
                if rows.is_empty() {
                    println!("no sagas in memory");
                }
            } else {
                print_rows(&rows, false, "no sagas in memory")?;
            }
        }
        NexusCommand::SledExpunge { sled_id } => {
            let expunged = client
                .sled_expunge(sled_id)
                .await
                .map_err(|e| anyhow!("{}", client_error("Nexus", &url, &e)))?
                .into_inner();
            if json {
                print_json(&expunged)?;
            } else {
                println!(
                    "sled {} expunged at {}",
                    expunged.sled_id,
                    time(&expunged.time_expunged)
                );
                println!(
                    "VMMs failed and retired: {}",
                    id_list(&expunged.vmms_failed)
                );
                println!(
                    "instances failed (start them again to run them elsewhere): {}",
                    id_list(&expunged.instances_failed)
                );
                println!(
                    "migration targets retired with their source: {}",
                    id_list(&expunged.migration_targets_retired)
                );
            }
        }
        NexusCommand::BackgroundTasks => {
            let tasks = client
                .background_task_list()
                .await
                .map_err(|e| anyhow!("{}", client_error("Nexus", &url, &e)))?
                .into_inner();
            if json {
                print_json(&tasks)?;
            } else {
                let rows: Vec<BackgroundTaskRow> = tasks
                    .iter()
                    .map(|task| BackgroundTaskRow {
                        task: task.name.clone(),
                        period: milliseconds(task.period_ms),
                        runs: task.runs,
                        last_run: task
                            .last_run
                            .as_ref()
                            .map_or_else(|| "never".to_string(), |run| time(&run.started)),
                        took: task
                            .last_run
                            .as_ref()
                            .map_or_else(|| "-".to_string(), |run| milliseconds(run.duration_ms)),
                        last_result: task.last_run.as_ref().map_or_else(
                            || "-".to_string(),
                            |run| match run.succeeded {
                                true => run.outcome.clone(),
                                false => format!("FAILED: {}", run.outcome),
                            },
                        ),
                        last_error: task.last_error.as_ref().map_or_else(
                            || "none".to_string(),
                            |e| format!("{} at {}", e.message, time(&e.time)),
                        ),
                    })
                    .collect();
                print_rows(&rows, false, "no background tasks")?;
                for task in &tasks {
                    println!("{}: {}", task.name, task.description);
                }
            }
        }
    }
    Ok(Outcome::Ok)
}

/// A duration in milliseconds, as people read it.
fn milliseconds(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// Ids separated by commas, or `none`.
fn id_list<T: std::fmt::Display>(ids: &[T]) -> String {
    if ids.is_empty() {
        return "none".to_string();
    }
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
