//! Nexus's background tasks and what each did last, for operators
//! (`omdb nexus background-tasks`, internal `GET /background-tasks`, and metrics).
//!
//! A task is a named loop that runs its work every `period`. Each run's start, duration and
//! outcome (a sentence saying what it did, or its error) are kept in memory; they describe this
//! Nexus process since it started.
//!
//! The tasks, one file each: `nexus_heartbeat`, `vmm_retirement`, `leftover_release`,
//! `region_replacement`, `instance_watcher`, `instance_reincarnation`, `v2p_reconciliation`. A superseded Nexus (another process took its id) runs none of them
//! but the heartbeat.

pub mod instance_reincarnation;
pub mod instance_watcher;
pub mod leftover_release;
pub mod nexus_heartbeat;
pub mod region_replacement;
pub mod v2p_reconciliation;
pub mod vmm_retirement;

use crate::app::Nexus;
use chrono::Utc;
use futures::future::BoxFuture;
use halyard_common::Error;
use halyard_nexus_internal_api::{BackgroundTask, BackgroundTaskError, BackgroundTaskRun};
use slog::{debug, warn};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One run of a task: what it did, in words, or why it failed.
pub(crate) type TaskWork = fn(&Arc<Nexus>) -> BoxFuture<'_, Result<String, Error>>;

/// Every task this Nexus runs, in the order they were started.
#[derive(Default)]
pub struct BackgroundTasks {
    tasks: Mutex<Vec<BackgroundTask>>,
}

impl BackgroundTasks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<BackgroundTask>> {
        // Each change under the lock is one push or one record update.
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every task and what it did last.
    pub fn list(&self) -> Vec<BackgroundTask> {
        self.lock().clone()
    }

    fn add(&self, name: &str, description: &str, period: Duration) {
        self.lock().push(BackgroundTask {
            name: name.to_string(),
            description: description.to_string(),
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            runs: 0,
            last_run: None,
            last_error: None,
        });
    }

    fn record(&self, name: &str, run: BackgroundTaskRun) {
        let mut tasks = self.lock();
        let Some(task) = tasks.iter_mut().find(|t| t.name == name) else {
            return;
        };
        task.runs += 1;
        if !run.succeeded {
            task.last_error = Some(BackgroundTaskError {
                time: run.started,
                message: run.outcome.clone(),
            });
        }
        task.last_run = Some(run);
    }
}

impl Nexus {
    /// Starts a background task that runs `work` every `period` (first after one period).
    pub(crate) fn spawn_background_task(
        self: &Arc<Self>,
        name: &'static str,
        description: &'static str,
        period: Duration,
        work: TaskWork,
    ) -> tokio::task::JoinHandle<()> {
        self.background_tasks().add(name, description, period);
        let nexus = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                nexus.run_background_task(name, work).await;
            }
        })
    }

    /// Runs one pass of a background task now and records it.
    pub(crate) async fn run_background_task(self: &Arc<Self>, name: &str, work: TaskWork) {
        if self.is_superseded() && name != nexus_heartbeat::NEXUS_HEARTBEAT_TASK {
            return;
        }
        let started = Utc::now();
        let clock = Instant::now();
        // A task acts with its own built-in identity (sagas it starts carry it).
        let actor = crate::authn::Actor::BackgroundTask {
            name: name.to_string().into(),
        };
        let result = crate::authn::act_as(actor, work(self)).await;
        let duration_ms = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        let succeeded = result.is_ok();
        self.metrics().background_run(name, succeeded);
        let outcome = match result {
            Ok(did) => {
                debug!(self.log(), "background task ran"; "task" => name, "did" => &did,
                    "duration_ms" => duration_ms);
                did
            }
            Err(e) => {
                warn!(self.log(), "background task failed; will run again"; "task" => name,
                    "error" => %e, "duration_ms" => duration_ms);
                e.to_string()
            }
        };
        self.background_tasks().record(
            name,
            BackgroundTaskRun {
                started,
                duration_ms,
                outcome,
                succeeded,
            },
        );
    }
}
