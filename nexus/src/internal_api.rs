//! Nexus's implementation of the internal API that sled agents (and omdb) call.
//!
//! Every caller comes through the TLS front with a certificate from the deployment's CA
//! (`halyard_tls`), and every handler first checks whose: a sled agent registers and reports
//! only for its own sled; the operator's endpoints (sagas, expunge, background tasks,
//! metrics) take Nexus's or an operator's certificate.

use crate::app::Nexus;
use dropshot::{
    HttpError, HttpResponseOk, HttpResponseUpdatedNoContent, Path, RequestContext, TypedBody,
};
use halyard_common::internal_api::{SledAgentInfo, SledVmmState};
use halyard_nexus_internal_api::{
    BackgroundTask, NexusInternalApi, SagaInMemory, SledExpunged, SledPathParam, VmmPathParam,
};
use halyard_tls::Role;
use std::sync::Arc;

/// Who may call the operator's endpoints.
const OPERATORS: &[Role] = &[Role::Operator, Role::Nexus];

pub enum NexusInternalImpl {}

impl NexusInternalApi for NexusInternalImpl {
    type Context = Arc<Nexus>;

    async fn sled_agent_put(
        rqctx: RequestContext<Self::Context>,
        path: Path<SledPathParam>,
        body: TypedBody<SledAgentInfo>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        let nexus = rqctx.context();
        let sled_id = path.into_inner().sled_id;
        nexus
            .internal_peer(&rqctx.request)?
            .require(&[Role::Sled(sled_id)], "register this sled")?;
        nexus.sled_register(sled_id, body.into_inner()).await?;
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn vmm_put_state(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<SledVmmState>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        let nexus = rqctx.context();
        let peer = nexus.internal_peer(&rqctx.request)?;
        let vmm_id = path.into_inner().propolis_id;
        // Only the sled the VMM runs on reports its state.
        let sled_id = nexus.vmm_sled(vmm_id).await?;
        peer.require(&[Role::Sled(sled_id)], "report this VMM's state")?;
        nexus.apply_vmm_report(vmm_id, body.into_inner()).await?;
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn saga_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<SagaInMemory>>, HttpError> {
        let nexus = rqctx.context();
        nexus
            .internal_peer(&rqctx.request)?
            .require(OPERATORS, "list sagas")?;
        Ok(HttpResponseOk(rqctx.context().sagas_in_memory().await))
    }

    async fn sled_expunge(
        rqctx: RequestContext<Self::Context>,
        path: Path<SledPathParam>,
    ) -> Result<HttpResponseOk<SledExpunged>, HttpError> {
        let nexus = rqctx.context();
        nexus
            .internal_peer(&rqctx.request)?
            .require(OPERATORS, "expunge a sled")?;
        Ok(HttpResponseOk(
            nexus.sled_expunge(path.into_inner().sled_id).await?,
        ))
    }

    async fn metrics(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<http::Response<dropshot::Body>, HttpError> {
        let nexus = rqctx.context();
        nexus
            .internal_peer(&rqctx.request)?
            .require(OPERATORS, "read Nexus's metrics")?;
        nexus.metrics_response().await
    }

    async fn background_task_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<BackgroundTask>>, HttpError> {
        let nexus = rqctx.context();
        nexus
            .internal_peer(&rqctx.request)?
            .require(OPERATORS, "list background tasks")?;
        Ok(HttpResponseOk(rqctx.context().background_tasks().list()))
    }
}
