//! A QMP connection to one QEMU: commands with a time limit, and QEMU's events on a channel.
//! Shared by a VMM's task (`vmm.rs`) and its outbound migration (`migration.rs`).

use futures::StreamExt;
use halyard_common::Error;
use qapi::qmp;
use slog::{Logger, warn};
use std::time::Duration;
use tokio::io::WriteHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// How long a QMP command may take before QEMU counts as hung.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// A QMP connection, shared by the VMM's task and its outbound migration.
pub(crate) struct Qmp(
    qapi::futures::QapiService<qapi::futures::QmpStreamTokio<WriteHalf<UnixStream>>>,
);

impl Qmp {
    /// Negotiates QMP on a connected socket, and pumps QEMU's events into the returned
    /// channel (polling the stream is also what delivers command responses).
    pub(crate) async fn negotiate(
        socket: UnixStream,
        log: &Logger,
    ) -> anyhow::Result<(Qmp, mpsc::Receiver<qmp::Event>)> {
        let stream = qapi::futures::QmpStreamTokio::open(socket)
            .await?
            .negotiate()
            .await?;
        let (service, mut qmp_events) = stream.into_parts();
        let (events, receiver) = mpsc::channel(64);
        let log = log.clone();
        tokio::spawn(async move {
            while let Some(event) = qmp_events.next().await {
                match event {
                    Ok(event) => {
                        if events.send(event).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => warn!(log, "unreadable QMP message"; "error" => %e),
                }
            }
        });
        Ok((Qmp(service), receiver))
    }

    /// Runs one QMP command; `what` says what it is for, in errors ("run the guest"). A QEMU
    /// that does not answer within [`QMP_TIMEOUT`] is an error too, so a hung QEMU never
    /// blocks the VMM's task (which must still be able to kill it).
    pub(crate) async fn call<C: qmp::QmpCommand>(
        &self,
        command: C,
        what: &str,
    ) -> Result<C::Ok, Error> {
        match tokio::time::timeout(QMP_TIMEOUT, self.0.execute(command)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(Error::unavailable(format!("QEMU refused to {what}: {e}"))),
            Err(_) => Err(Error::unavailable(format!(
                "QEMU did not answer in {} s when asked to {what}",
                QMP_TIMEOUT.as_secs()
            ))),
        }
    }
}
