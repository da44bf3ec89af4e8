//! Nexus's internal HTTP API: what sled agents call on Nexus, and what operators' tools
//! (omdb) ask of it. A dropshot trait apart from its implementation (in Nexus, and in the sled
//! agent's tests a recording stand-in); `openapi/nexus-internal.json` is generated from it and
//! `nexus-client` from that.

use chrono::{DateTime, Utc};
use dropshot::{
    ErrorStatusCode, HttpError, HttpResponseOk, HttpResponseUpdatedNoContent, Path, RequestContext,
    TypedBody,
};
pub use halyard_common::background_task::{BackgroundTask, BackgroundTaskError, BackgroundTaskRun};
use halyard_common::ids::{InstanceUuid, SagaUuid, SledUuid, VmmUuid};
use halyard_common::internal_api::{SledAgentInfo, SledVmmState};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[dropshot::api_description]
pub trait NexusInternalApi {
    type Context;

    /// A sled agent registers its sled (at start, and periodically after, so a restarted
    /// Nexus learns it again).
    #[endpoint { method = PUT, path = "/sled-agents/{sled_id}" }]
    async fn sled_agent_put(
        rqctx: RequestContext<Self::Context>,
        path: Path<SledPathParam>,
        body: TypedBody<SledAgentInfo>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError>;

    /// A sled agent reports a VMM's state and its migrations' states. Nexus applies only what
    /// is newer than what it has (by generation), so repeats and stale reports are harmless.
    #[endpoint { method = PUT, path = "/vmms/{propolis_id}" }]
    async fn vmm_put_state(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<SledVmmState>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError>;

    /// The sagas this Nexus's executor holds in memory (running, and finished since start).
    #[endpoint { method = GET, path = "/sagas" }]
    async fn saga_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<SagaInMemory>>, HttpError>;

    /// Declares a sled gone for good (expunged), for operators (`omdb nexus sled-expunge`).
    ///
    /// For a sled whose agent stopped answering and will not come back. Irreversible:
    /// placement never picks the sled again and its registrations are refused (409). Every
    /// live VMM on it is marked failed and retired (its reservation released), so an instance
    /// that ran there is failed and can be started again elsewhere; a migration into or out of
    /// it fails. Idempotent: a repeat changes nothing more. An unknown sled is a 404.
    #[endpoint { method = POST, path = "/sleds/{sled_id}/expunge" }]
    async fn sled_expunge(
        _rqctx: RequestContext<Self::Context>,
        _path: Path<SledPathParam>,
    ) -> Result<HttpResponseOk<SledExpunged>, HttpError> {
        Err(not_implemented("this server does not expunge sleds"))
    }

    /// Nexus's metrics in Prometheus's text format: HTTP requests by endpoint and status,
    /// sagas, VMMs by state and backend, reservations against capacity per sled, the
    /// database pool, retries of transient errors, background tasks.
    #[endpoint { method = GET, path = "/metrics" }]
    async fn metrics(
        _rqctx: RequestContext<Self::Context>,
    ) -> Result<http::Response<dropshot::Body>, HttpError> {
        Err(not_implemented("this server has no metrics"))
    }

    /// Nexus's background tasks: what each does, when it last ran, for how long, what it did
    /// and its last error (for operators: `omdb nexus background-tasks`).
    #[endpoint { method = GET, path = "/background-tasks" }]
    async fn background_task_list(
        _rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<BackgroundTask>>, HttpError> {
        Err(not_implemented("this server has no background tasks"))
    }
}

/// The answer of an endpoint that a server standing in for Nexus's sled-agent-facing side
/// (the sled agent's tests) does not serve.
fn not_implemented(message: &str) -> HttpError {
    HttpError {
        status_code: ErrorStatusCode::NOT_IMPLEMENTED,
        error_code: Some("NotImplemented".to_string()),
        external_message: message.to_string(),
        internal_message: message.to_string(),
        headers: None,
    }
}

/// What expunging a sled did.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct SledExpunged {
    pub sled_id: SledUuid,
    /// When the sled was expunged: by the first request; a repeat returns the same time.
    pub time_expunged: DateTime<Utc>,
    /// The VMMs on the sled that this request marked failed and retired (on a repeat,
    /// usually none).
    pub vmms_failed: Vec<VmmUuid>,
    /// The instances whose active VMM that was: they are failed now (and can be started
    /// again, on another sled).
    pub instances_failed: Vec<InstanceUuid>,
    /// Migration targets elsewhere whose source was on the sled, retired with it.
    pub migration_targets_retired: Vec<VmmUuid>,
}

/// A saga as this Nexus's saga executor holds it in memory (for operators: `omdb nexus sagas`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct SagaInMemory {
    pub id: SagaUuid,
    /// `ready`, `running`, `succeeded`, `failed` (unwound cleanly) or `stuck` (an undo failed).
    pub state: String,
    /// The executor's own rendering of the saga's nodes and their states.
    pub status: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct SledPathParam {
    pub sled_id: SledUuid,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct VmmPathParam {
    pub propolis_id: VmmUuid,
}
