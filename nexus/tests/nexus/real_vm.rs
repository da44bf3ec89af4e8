//! Driving real guests (QEMU sleds, the guest image) through Nexus's external API, as a user
//! does: the serial console read and typed into with the Oxide SDK, commands run in the
//! guest's shell, live migration requested. Shared by the QEMU suites (`qemu_disks.rs`,
//! `qemu_network.rs`).

use crate::context::TestContext;
use futures::SinkExt;
use halyard_common::InstanceState;
use halyard_common::ids::{InstanceUuid, SledUuid};
use halyard_sled_agent::guest_console::HEARTBEAT;
use oxide::prelude::*;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// How long a boot, a stop or a command typed into the guest may take: TCG on a busy
/// machine is slow (a liveness bound, not a timing assertion).
pub const PATIENCE: Duration = Duration::from_secs(180);

pub fn sdk(ctx: &TestContext) -> oxide::Client {
    crate::authn_support::sdk(&ctx.external_url(), &ctx.token)
}

pub async fn wait_for_state(ctx: &TestContext, id: InstanceUuid, state: InstanceState) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let view = ctx.view(id).await;
        if view.run_state() == state {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "instance {id} never reached {state}; it is {}",
            view.run_state()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Everything the instance's current VMM's console holds.
pub async fn console(ctx: &TestContext, project: &str, instance: &str) -> String {
    let data = sdk(ctx)
        .instance_serial_console()
        .project(project)
        .instance(instance)
        .from_start(0u64)
        .max_bytes(1u64 << 20)
        .send()
        .await
        .unwrap()
        .into_inner();
    String::from_utf8_lossy(&data.data).into_owned()
}

/// Types `line` on the instance's serial console (the live stream).
pub async fn type_line(ctx: &TestContext, project: &str, instance: &str, line: &str) {
    let upgraded = sdk(ctx)
        .instance_serial_console_stream()
        .project(project)
        .instance(instance)
        .most_recent(0u64)
        .send()
        .await
        .unwrap()
        .into_inner();
    let mut stream = WebSocketStream::from_raw_socket(upgraded, Role::Client, None).await;
    stream
        .send(Message::Binary(format!("{line}\n").into_bytes().into()))
        .await
        .unwrap();
    stream.close(None).await.unwrap();
}

/// A marker the guest prints whose typed (echoed) form differs: the shell joins the two
/// quoted halves, the echo of the input shows them apart.
fn marker(word: &str, n: u64) -> (String, String) {
    let (a, b) = word.split_at(word.len() / 2);
    (format!("\"{a}\"\"{b}-{n}\""), format!("{word}-{n}"))
}

/// Runs `script` in the guest's shell; returns its exit status and what it printed
/// (heartbeats left out).
pub async fn run_status(
    ctx: &TestContext,
    project: &str,
    instance: &str,
    script: &str,
) -> (String, String) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let (typed_begin, begin) = marker("HQBEGIN", n);
    let (typed_end, end) = marker("HQEND", n);
    type_line(
        ctx,
        project,
        instance,
        &format!("echo {typed_begin}; {script}; echo {typed_end} rc=$?"),
    )
    .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = console(ctx, project, instance).await;
        if let Some((_, after)) = text.split_once(&format!("{begin}\r\n"))
            && let Some((output, rest)) = after.split_once(&format!("{end} rc="))
        {
            let rc: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let output: String = output
                .lines()
                .filter(|l| !l.contains(HEARTBEAT))
                .map(|l| format!("{}\n", l.trim_end_matches('\r')))
                .collect();
            return (rc, output);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{script}` never finished in {instance}; the console holds:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs `script` in the guest's shell and returns what it printed (heartbeats left out),
/// failing the test if it exits non-zero.
pub async fn run(ctx: &TestContext, project: &str, instance: &str, script: &str) -> String {
    let (rc, output) = run_status(ctx, project, instance, script).await;
    assert_eq!(rc, "0", "`{script}` failed in {instance}:\n{output}");
    output
}

/// The one line of `output` starting with `prefix`, without it.
pub fn line_after<'a>(output: &'a str, prefix: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{output}"))
        .trim()
}

/// Waits for the guest's shell prompt on the console: what is typed before the shell reads
/// its input is lost (a first command typed right after boot lost its first characters).
pub async fn wait_for_shell(ctx: &TestContext, project: &str, instance: &str) {
    let prompt = format!("{instance}# ");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = console(ctx, project, instance).await;
        if text.contains(&prompt) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the shell of {instance} never prompted; the console holds:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Asks Nexus to live-migrate `instance` of `project` to `dst` (anywhere with room if
/// `None`): a Halyard extension, so not in the Oxide SDK.
pub async fn request_migration(
    ctx: &TestContext,
    project: &str,
    instance: &str,
    dst: Option<SledUuid>,
) {
    let body = match dst {
        Some(sled) => json!({ "dst_sled_id": sled }),
        None => json!({}),
    };
    let response = crate::authn_support::http_client(&ctx.token)
        .post(format!(
            "{}/v1/instances/{instance}/migrate?project={project}",
            ctx.external_url()
        ))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(status, 202, "{}", response.text().await.unwrap());
}
