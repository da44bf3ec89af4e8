//! The sled agent's implementation of `SledAgentApi`.
//!
//! Every caller comes through the TLS front with a certificate from the deployment's CA
//! (`halyard_tls`), and every handler first checks whose: Nexus alone changes VMMs; Nexus or
//! an operator (omdb, tests) reads them and injects simulated faults; Nexus alone creates and
//! deletes regions and region snapshots and pauses VMMs; an inbound migration's
//! phases come only from the sled Nexus named as its source.

use crate::console::{ConsoleOffset, ConsoleStream, SerialConsole};
use crate::sled_agent::SledAgent;
use dropshot::{
    HttpError, HttpResponseOk, HttpResponseUpdatedNoContent, Path, Query, RequestContext,
    TypedBody, WebsocketChannelResult, WebsocketConnection, WebsocketEndpointResult,
    WebsocketUpgrade,
};
use futures::{SinkExt, StreamExt};
use halyard_common::Error;
use halyard_common::internal_api::SledVmmState;
use halyard_sled_agent_api::{
    Inventory, MigrationInReply, MigrationInStep, MigrationTargetGone, RegionEnsureBody,
    RegionPathParam, RegionSnapshotPathParam, RegionSnapshotSummary, RegionSummary, SimFault,
    SledAgentApi, V2pApplied, VmmPathParam, VmmPutStateBody, VmmRegisterBody, VmmSerialConsoleData,
    VmmSerialConsoleRequest, VmmSerialConsoleStreamRequest, VmmSummary, VmmVcpus, VniPathParam,
    VpcMappings,
};
use slog::{Logger, debug};
use std::sync::Arc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

pub enum SledAgentImpl {}

/// Who may change this sled's VMMs.
const NEXUS: &[halyard_tls::Role] = &[halyard_tls::Role::Nexus];
/// Who may read them (and inject simulated faults).
const NEXUS_OR_OPERATOR: &[halyard_tls::Role] =
    &[halyard_tls::Role::Nexus, halyard_tls::Role::Operator];

/// Checks the caller's certificate against `roles`.
fn require(
    rqctx: &RequestContext<Arc<SledAgent>>,
    roles: &[halyard_tls::Role],
    action: &str,
) -> Result<(), HttpError> {
    rqctx.context().peer(&rqctx.request)?.require(roles, action)
}

impl SledAgentApi for SledAgentImpl {
    type Context = Arc<SledAgent>;

    async fn vmm_register(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<VmmRegisterBody>,
    ) -> Result<HttpResponseOk<SledVmmState>, HttpError> {
        require(&rqctx, NEXUS, "register a VMM")?;
        let agent = rqctx.context();
        let id = path.into_inner().propolis_id;
        Ok(HttpResponseOk(agent.vmm_register(id, body.into_inner())?))
    }

    async fn vmm_unregister(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        require(&rqctx, NEXUS, "unregister a VMM")?;
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
        require(&rqctx, NEXUS, "change a VMM's state")?;
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
        require(&rqctx, NEXUS_OR_OPERATOR, "read a VMM's state")?;
        Ok(HttpResponseOk(
            rqctx.context().vmm_state(path.into_inner().propolis_id)?,
        ))
    }

    async fn vmm_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<VmmSummary>>, HttpError> {
        require(&rqctx, NEXUS_OR_OPERATOR, "list VMMs")?;
        Ok(HttpResponseOk(rqctx.context().vmm_list()))
    }

    async fn vmm_migration_in(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<MigrationInStep>,
    ) -> Result<HttpResponseOk<MigrationInReply>, HttpError> {
        let agent = rqctx.context();
        let id = path.into_inner().propolis_id;
        let peer = agent.peer(&rqctx.request)?;
        // Only the sled Nexus named as the source when it registered this migration target.
        // A VMM that is no migration target refuses the step itself, whoever asks.
        if let Some(source_sled) = agent.migration_source_sled(id) {
            peer.require(
                &[halyard_tls::Role::Sled(source_sled)],
                "migrate a guest into this VMM",
            )?;
        }
        Ok(HttpResponseOk(
            agent.vmm_migration_in(id, body.into_inner()).await?,
        ))
    }

    async fn vmm_migration_target_gone(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<MigrationTargetGone>,
    ) -> Result<HttpResponseOk<SledVmmState>, HttpError> {
        require(&rqctx, NEXUS, "end a migration")?;
        let agent = rqctx.context();
        Ok(HttpResponseOk(
            agent
                .vmm_migration_target_gone(
                    path.into_inner().propolis_id,
                    body.into_inner().migration_id,
                )
                .await?,
        ))
    }

    async fn vmm_put_vcpus(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<VmmVcpus>,
    ) -> Result<HttpResponseOk<VmmVcpus>, HttpError> {
        require(&rqctx, NEXUS, "pause or resume a VMM")?;
        let agent = rqctx.context();
        let paused = body.into_inner().paused;
        agent
            .vmm_put_vcpus(path.into_inner().propolis_id, paused)
            .await?;
        Ok(HttpResponseOk(VmmVcpus { paused }))
    }

    async fn vmm_inject_fault(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        body: TypedBody<SimFault>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        require(&rqctx, NEXUS_OR_OPERATOR, "inject a simulated fault")?;
        let agent = rqctx.context();
        agent
            .vmm_inject_fault(path.into_inner().propolis_id, body.into_inner())
            .await?;
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn vmm_serial_console(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        query: Query<VmmSerialConsoleRequest>,
    ) -> Result<HttpResponseOk<VmmSerialConsoleData>, HttpError> {
        require(&rqctx, NEXUS_OR_OPERATOR, "read a serial console")?;
        let query = query.into_inner();
        let from = match (query.from_start, query.most_recent) {
            (Some(offset), None) => ConsoleOffset::FromStart(offset),
            (None, Some(back)) => ConsoleOffset::MostRecent(back),
            _ => {
                return Err(Error::invalid_request(
                    "give exactly one of `from_start` and `most_recent`",
                )
                .into());
            }
        };
        let console = rqctx.context().vmm_console(path.into_inner().propolis_id)?;
        let (data, last_byte_offset) = console.read(from, query.max_bytes);
        Ok(HttpResponseOk(VmmSerialConsoleData {
            data,
            last_byte_offset,
        }))
    }

    async fn vmm_serial_console_stream(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPathParam>,
        query: Query<VmmSerialConsoleStreamRequest>,
        websocket: WebsocketUpgrade,
    ) -> WebsocketEndpointResult {
        require(&rqctx, NEXUS_OR_OPERATOR, "attach to a serial console")?;
        let id = path.into_inner().propolis_id;
        let from = match query.into_inner().most_recent {
            Some(back) => ConsoleOffset::MostRecent(back),
            None => ConsoleOffset::FromStart(0),
        };
        // Before the upgrade: an unknown VMM is a 404, and the stream is subscribed now.
        let console = rqctx.context().vmm_console(id)?;
        let stream = console.stream(from);
        let log = rqctx.log.new(slog::o!("propolis_id" => id.to_string()));
        websocket.handle(move |connection| serve_console(connection, console, stream, log))
    }

    async fn v2p_put(
        rqctx: RequestContext<Self::Context>,
        path: Path<VniPathParam>,
        body: TypedBody<VpcMappings>,
    ) -> Result<HttpResponseOk<V2pApplied>, HttpError> {
        require(&rqctx, NEXUS, "set VPC mappings")?;
        let vni = path.into_inner().vni;
        let set = body.into_inner();
        if set.vni != vni {
            return Err(HttpError::for_bad_request(
                None,
                format!("the body's vni ({}) is not the path's ({vni})", set.vni),
            ));
        }
        Ok(HttpResponseOk(rqctx.context().v2p_put(set).await?))
    }

    async fn v2p_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<VpcMappings>>, HttpError> {
        require(&rqctx, NEXUS_OR_OPERATOR, "read VPC mappings")?;
        Ok(HttpResponseOk(rqctx.context().v2p_list().await))
    }

    async fn inventory(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Inventory>, HttpError> {
        require(&rqctx, NEXUS_OR_OPERATOR, "read the inventory")?;
        Ok(HttpResponseOk(rqctx.context().inventory().await))
    }

    async fn region_ensure(
        rqctx: RequestContext<Self::Context>,
        path: Path<RegionPathParam>,
        body: TypedBody<RegionEnsureBody>,
    ) -> Result<HttpResponseOk<RegionSummary>, HttpError> {
        require(&rqctx, NEXUS, "create a region")?;
        let id = path.into_inner().region_id;
        let storage = rqctx.context().storage();
        Ok(HttpResponseOk(storage.ensure(id, body.into_inner()).await?))
    }

    async fn region_delete(
        rqctx: RequestContext<Self::Context>,
        path: Path<RegionPathParam>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        require(&rqctx, NEXUS, "delete a region")?;
        let id = path.into_inner().region_id;
        rqctx.context().storage().delete(id).await?;
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn region_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<RegionSummary>>, HttpError> {
        require(&rqctx, NEXUS_OR_OPERATOR, "list regions")?;
        Ok(HttpResponseOk(rqctx.context().storage().list().await))
    }

    async fn region_snapshot_ensure(
        rqctx: RequestContext<Self::Context>,
        path: Path<RegionSnapshotPathParam>,
    ) -> Result<HttpResponseOk<RegionSnapshotSummary>, HttpError> {
        require(&rqctx, NEXUS, "snapshot a region")?;
        let RegionSnapshotPathParam {
            region_id,
            snapshot_id,
        } = path.into_inner();
        let storage = rqctx.context().storage();
        Ok(HttpResponseOk(
            storage.snapshot_ensure(region_id, snapshot_id).await?,
        ))
    }

    async fn region_snapshot_delete(
        rqctx: RequestContext<Self::Context>,
        path: Path<RegionSnapshotPathParam>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        require(&rqctx, NEXUS, "delete a region snapshot")?;
        let RegionSnapshotPathParam {
            region_id,
            snapshot_id,
        } = path.into_inner();
        let storage = rqctx.context().storage();
        storage.snapshot_delete(region_id, snapshot_id).await?;
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn region_snapshot_list(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<RegionSnapshotSummary>>, HttpError> {
        require(&rqctx, NEXUS_OR_OPERATOR, "list region snapshots")?;
        Ok(HttpResponseOk(
            rqctx.context().storage().snapshot_list().await,
        ))
    }

    async fn metrics(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<http::Response<dropshot::Body>, HttpError> {
        require(&rqctx, NEXUS_OR_OPERATOR, "read the metrics")?;
        rqctx.context().metrics_response()
    }
}

/// Relays a console over a WebSocket until the VMM is gone (then a close frame) or the client
/// leaves: output as binary frames, binary or text frames in as input.
async fn serve_console(
    connection: WebsocketConnection,
    console: Arc<SerialConsole>,
    mut output: ConsoleStream,
    log: Logger,
) -> WebsocketChannelResult {
    let websocket =
        WebSocketStream::from_raw_socket(connection.into_inner(), Role::Server, None).await;
    let (mut sink, mut incoming) = websocket.split();
    loop {
        tokio::select! {
            chunk = output.next() => match chunk {
                Some((_, bytes)) => sink.send(Message::Binary(bytes.into())).await?,
                None => {
                    debug!(log, "console closed; closing the stream");
                    let frame = CloseFrame {
                        code: CloseCode::Away,
                        reason: "the VMM is gone".into(),
                    };
                    sink.send(Message::Close(Some(frame))).await?;
                    return Ok(());
                }
            },
            message = incoming.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    // Closed: the VMM is gone, and the output side ends the stream.
                    let _ = console.send_input(bytes.to_vec()).await;
                }
                Some(Ok(Message::Text(text))) => {
                    let _ = console.send_input(text.as_bytes().to_vec()).await;
                }
                Some(Ok(Message::Close(_))) | None => {
                    debug!(log, "client closed the console stream");
                    // Flushes the close reply tungstenite queued.
                    let _ = sink.close().await;
                    return Ok(());
                }
                Some(Ok(_)) => {} // ping and pong: tungstenite answers pings itself
                Some(Err(e)) => return Err(e.into()),
            },
        }
    }
}
