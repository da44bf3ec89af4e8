//! Nexus's internal HTTP API: what sled agents call on Nexus. A dropshot trait apart from its
//! implementation (in Nexus, and in the sled agent's tests a recording stand-in);
//! `openapi/nexus-internal.json` is generated from it and `nexus-client` from that.

use dropshot::{
    HttpError, HttpResponseOk, HttpResponseUpdatedNoContent, Path, RequestContext, TypedBody,
};
use halyard_common::ids::{SagaUuid, SledUuid, VmmUuid};
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
