//! Nexus's implementation of the internal API that sled agents (and omdb) call.

use crate::app::Nexus;
use dropshot::{
    HttpError, HttpResponseOk, HttpResponseUpdatedNoContent, Path, RequestContext, TypedBody,
};
use halyard_common::internal_api::{SledAgentInfo, SledVmmState};
use halyard_nexus_internal_api::{
    BackgroundTask, NexusInternalApi, SagaInMemory, SledExpunged, SledPathParam, VmmPathParam,
};
use std::sync::Arc;

pub enum NexusInternalImpl {}

impl NexusInternalApi for NexusInternalImpl {
    type Context = Arc<Nexus>;

    async fn sled_agent_put(
        rqctx: RequestContext<Self::Context>,
        path: Path<SledPathParam>,
        body: TypedBody<SledAgentInfo>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        let nexus = rqctx.context();
        nexus
            .sled_register(path.into_inner().sled_id, body.into_inner())
            .await?;
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn vmm_put_state(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<SledVmmState>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        let nexus = rqctx.context();
        nexus
            .apply_vmm_report(path.into_inner().propolis_id, body.into_inner())
            .await?;
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn saga_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<SagaInMemory>>, HttpError> {
        Ok(HttpResponseOk(rqctx.context().sagas_in_memory().await))
    }

    async fn sled_expunge(
        rqctx: RequestContext<Self::Context>,
        path: Path<SledPathParam>,
    ) -> Result<HttpResponseOk<SledExpunged>, HttpError> {
        let nexus = rqctx.context();
        Ok(HttpResponseOk(
            nexus.sled_expunge(path.into_inner().sled_id).await?,
        ))
    }

    async fn metrics(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<http::Response<dropshot::Body>, HttpError> {
        rqctx.context().metrics_response().await
    }

    async fn background_task_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<BackgroundTask>>, HttpError> {
        Ok(HttpResponseOk(rqctx.context().background_tasks().list()))
    }
}
