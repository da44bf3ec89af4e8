//! Instances' serial consoles: Nexus finds the sled agent running the instance's active VMM
//! and proxies to it. The console itself (a ring buffer of output, live streams, input) lives
//! in the sled agent; the WebSocket stream is relayed frame by frame, both ways, until either
//! side closes.

use super::Nexus;
use super::sled::sled_agent_error;
use futures::{SinkExt, StreamExt};
use halyard_common::ids::InstanceUuid;
use halyard_common::{Error, VmmState};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

/// Which part of the console history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleOffset {
    /// From this absolute offset (bytes since the VMM started).
    FromStart(u64),
    /// This many bytes before the newest byte.
    MostRecent(u64),
}

impl ConsoleOffset {
    /// Oxide's rule: exactly one of `from_start` and `most_recent`.
    pub fn from_query(from_start: Option<u64>, most_recent: Option<u64>) -> Result<Self, Error> {
        match (from_start, most_recent) {
            (Some(offset), None) => Ok(ConsoleOffset::FromStart(offset)),
            (None, Some(back)) => Ok(ConsoleOffset::MostRecent(back)),
            _ => Err(Error::invalid_request(
                "give exactly one of `from_start` and `most_recent`",
            )),
        }
    }
}

/// A WebSocket to a sled agent's console stream, connected and ready to relay.
pub struct SledConsoleStream(WebSocketStream<reqwest::Upgraded>);

impl Nexus {
    /// The sled agent and VMM serving the instance's console: its active VMM, if that runs
    /// (running, rebooting, or migrating out). Otherwise 400, as Oxide: the instance has no
    /// console to connect to.
    async fn console_vmm(
        &self,
        id: InstanceUuid,
    ) -> Result<
        (
            halyard_sled_agent_client::Client,
            halyard_common::ids::VmmUuid,
        ),
        Error,
    > {
        let view = self.instance_view(id).await?;
        let name = view.instance.name().clone();
        let Some(vmm) = &view.active_vmm else {
            return Err(Error::invalid_request(format!(
                "instance \"{name}\" is {} and has no serial console; start it first",
                view.run_state()
            )));
        };
        match vmm.state() {
            VmmState::Running | VmmState::Rebooting | VmmState::Migrating => {}
            _ => {
                return Err(Error::invalid_request(format!(
                    "cannot connect to the serial console of instance \"{name}\": it is {}; \
                     retry once it is running",
                    view.run_state()
                )));
            }
        }
        Ok((self.sled_client(vmm.sled_id()).await?, vmm.id()))
    }

    /// Bytes of the instance's console history from `from` (at most `max_bytes`), and the
    /// absolute offset one past the last of them.
    pub async fn instance_serial_console(
        &self,
        id: InstanceUuid,
        from: ConsoleOffset,
        max_bytes: Option<u64>,
    ) -> Result<(Vec<u8>, u64), Error> {
        let (client, vmm) = self.console_vmm(id).await?;
        let (from_start, most_recent) = match from {
            ConsoleOffset::FromStart(offset) => (Some(offset), None),
            ConsoleOffset::MostRecent(back) => (None, Some(back)),
        };
        let data = client
            .vmm_serial_console(&vmm, from_start, max_bytes, most_recent)
            .await
            .map_err(sled_agent_error)?
            .into_inner();
        Ok((data.data, data.last_byte_offset))
    }

    /// Connects to the sled agent's console stream for the instance (before the client's
    /// upgrade is accepted, so every failure is still an HTTP error).
    pub async fn instance_serial_console_connect(
        &self,
        id: InstanceUuid,
        most_recent: Option<u64>,
    ) -> Result<SledConsoleStream, Error> {
        let (client, vmm) = self.console_vmm(id).await?;
        let upgraded = client
            .vmm_serial_console_stream(&vmm, most_recent)
            .await
            .map_err(sled_agent_error)?
            .into_inner();
        Ok(SledConsoleStream(
            WebSocketStream::from_raw_socket(upgraded, Role::Client, None).await,
        ))
    }
}

/// Relays between the user's WebSocket and the sled agent's until either closes: output
/// (binary) from the sled agent to the user, typed input (binary or text) the other way, and a
/// close frame from either side to the other.
pub async fn relay_serial_console<S>(
    user: S,
    sled: SledConsoleStream,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let user = WebSocketStream::from_raw_socket(user, Role::Server, None).await;
    let (mut user_sink, mut user_stream) = user.split();
    let (mut sled_sink, mut sled_stream) = sled.0.split();
    loop {
        tokio::select! {
            message = sled_stream.next() => match message {
                Some(Ok(message @ (Message::Binary(_) | Message::Text(_)))) => {
                    user_sink.send(message).await?;
                }
                Some(Ok(Message::Close(frame))) => {
                    // The VMM is gone (or the sled agent is stopping): tell the user why, and
                    // send the sled agent the reply tungstenite queued.
                    let _ = user_sink.send(Message::Close(frame)).await;
                    let _ = sled_sink.close().await;
                    return Ok(());
                }
                Some(Ok(_)) => {} // ping, pong: answered by tungstenite
                Some(Err(_)) | None => {
                    let frame = CloseFrame {
                        code: CloseCode::Error,
                        reason: "lost the connection to the sled agent's console".into(),
                    };
                    let _ = user_sink.send(Message::Close(Some(frame))).await;
                    return Ok(());
                }
            },
            message = user_stream.next() => match message {
                Some(Ok(message @ (Message::Binary(_) | Message::Text(_)))) => {
                    sled_sink.send(message).await?;
                }
                Some(Ok(Message::Close(frame))) => {
                    let _ = sled_sink.send(Message::Close(frame)).await;
                    // Flushes the close reply tungstenite queued for the user.
                    let _ = user_sink.close().await;
                    return Ok(());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = sled_sink.send(Message::Close(None)).await;
                    return Err(e);
                }
                None => {
                    let _ = sled_sink.send(Message::Close(None)).await;
                    return Ok(());
                }
            },
        }
    }
}
