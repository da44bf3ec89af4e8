//! The sled agent's implementation of `SledAgentApi`.

use crate::sled_agent::SledAgent;
use dropshot::{
    HttpError, HttpResponseOk, HttpResponseUpdatedNoContent, Path, RequestContext, TypedBody,
};
use halyard_common::internal_api::SledVmmState;
use halyard_sled_agent_api::{
    Inventory, MigrationInStep, SimFault, SledAgentApi, VmmPathParam, VmmPutStateBody,
    VmmRegisterBody, VmmSummary,
};
use std::sync::Arc;

pub enum SledAgentImpl {}

impl SledAgentApi for SledAgentImpl {
    type Context = Arc<SledAgent>;

    async fn vmm_register(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<VmmRegisterBody>,
    ) -> Result<HttpResponseOk<SledVmmState>, HttpError> {
        let agent = rqctx.context();
        let id = path.into_inner().propolis_id;
        Ok(HttpResponseOk(agent.vmm_register(id, body.into_inner())?))
    }

    async fn vmm_unregister(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        rqctx
            .context()
            .vmm_unregister(path.into_inner().propolis_id)
            .await?;
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn vmm_put_state(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<VmmPutStateBody>,
    ) -> Result<HttpResponseOk<SledVmmState>, HttpError> {
        let agent = rqctx.context();
        let id = path.into_inner().propolis_id;
        Ok(HttpResponseOk(
            agent.vmm_put_state(id, body.into_inner().state).await?,
        ))
    }

    async fn vmm_get_state(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
    ) -> Result<HttpResponseOk<SledVmmState>, HttpError> {
        Ok(HttpResponseOk(
            rqctx.context().vmm_state(path.into_inner().propolis_id)?,
        ))
    }

    async fn vmm_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<VmmSummary>>, HttpError> {
        Ok(HttpResponseOk(rqctx.context().vmm_list()))
    }

    async fn vmm_migration_in(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<MigrationInStep>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        let agent = rqctx.context();
        agent
            .vmm_migration_in(path.into_inner().propolis_id, body.into_inner())
            .await?;
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn vmm_inject_fault(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<SimFault>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        let agent = rqctx.context();
        agent
            .vmm_inject_fault(path.into_inner().propolis_id, body.into_inner())
            .await?;
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn inventory(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Inventory>, HttpError> {
        Ok(HttpResponseOk(rqctx.context().inventory()))
    }
}
