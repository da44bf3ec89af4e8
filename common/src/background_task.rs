//! Nexus's background tasks as operators see them: the internal API's `GET /background-tasks`
//! (`omdb nexus background-tasks`) and the external `GET /v1/system/background-tasks` (the web
//! console) show the same records.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A background task of Nexus and what it did last.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct BackgroundTask {
    /// A stable name, e.g. `vmm_retirement`.
    pub name: String,
    /// What the task is for.
    pub description: String,
    /// How often it runs, in milliseconds.
    pub period_ms: u64,
    /// How many times it has run since Nexus started.
    pub runs: u64,
    /// The last run, if it has run since Nexus started.
    pub last_run: Option<BackgroundTaskRun>,
    /// The most recent run that failed, if any has.
    pub last_error: Option<BackgroundTaskError>,
}

/// One run of a background task.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct BackgroundTaskRun {
    pub started: DateTime<Utc>,
    pub duration_ms: u64,
    /// What it did, in words (e.g. "retired 2 VMM(s)"), or the error that ended it.
    pub outcome: String,
    pub succeeded: bool,
}

/// The last failed run of a background task.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct BackgroundTaskError {
    pub time: DateTime<Utc>,
    pub message: String,
}
