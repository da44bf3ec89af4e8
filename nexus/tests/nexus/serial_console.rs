//! Instances' serial consoles through Nexus, with the official Oxide SDK unmodified: history by
//! offset, the WebSocket stream (live banner after a reboot, typed input echoed, a close frame
//! when the VMM is gone, a new stream on the migration target), and the refusals.

use crate::context::TestContext;
use futures::{SinkExt, StreamExt};
use halyard_common::ids::{GenericUuid, InstanceUuid};
use oxide::prelude::*;
use oxide::types::InstanceState;
use std::time::Duration;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

const HOSTNAME: &str = "console-host";
const BANNER: &str = "HALYARD-GUEST BOOTED hostname=console-host\r\n";

type Console = WebSocketStream<reqwest::Upgraded>;

fn sdk(ctx: &TestContext) -> oxide::Client {
    let url = format!("http://{}", ctx.server().external_address());
    crate::authn_support::sdk(&url, &ctx.token)
}

async fn wait_for(client: &oxide::Client, state: InstanceState) {
    for _ in 0..500 {
        let view = client
            .instance_view()
            .project("demo")
            .instance("vm")
            .send()
            .await
            .unwrap();
        if view.run_state == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("vm never reached {state:?}");
}

/// The console history from `from_start`, as text.
async fn history(client: &oxide::Client, from_start: u64) -> (String, u64) {
    let data = client
        .instance_serial_console()
        .project("demo")
        .instance("vm")
        .from_start(from_start)
        .send()
        .await
        .unwrap()
        .into_inner();
    (String::from_utf8(data.data).unwrap(), data.last_byte_offset)
}

async fn open_stream(client: &oxide::Client, most_recent: Option<u64>) -> Console {
    let mut request = client
        .instance_serial_console_stream()
        .project("demo")
        .instance("vm");
    if let Some(most_recent) = most_recent {
        request = request.most_recent(most_recent);
    }
    let upgraded = request.send().await.unwrap().into_inner();
    WebSocketStream::from_raw_socket(upgraded, Role::Client, None).await
}

/// Reads output frames until they contain `wanted`; returns all they held.
async fn read_until(console: &mut Console, wanted: &str) -> String {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains(wanted) {
        let message = tokio::time::timeout_at(deadline, console.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {wanted:?} on the stream; got {:?}",
                    String::from_utf8_lossy(&seen)
                )
            });
        match message {
            Some(Ok(Message::Binary(bytes))) => seen.extend_from_slice(&bytes),
            other => panic!("expected console output, got {other:?}"),
        }
    }
    String::from_utf8(seen).unwrap()
}

async fn expect_close(console: &mut Console) -> String {
    let message = tokio::time::timeout(Duration::from_secs(10), console.next())
        .await
        .expect("the stream never closed");
    match message {
        Some(Ok(Message::Close(Some(frame)))) => frame.reason.to_string(),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// The status and error body of a refused SDK call.
fn refusal<T: std::fmt::Debug>(
    result: Result<T, oxide::Error<oxide::types::Error>>,
) -> (u16, String) {
    match result.unwrap_err() {
        oxide::Error::ErrorResponse(e) => {
            assert!(!e.request_id.is_empty(), "no request id: {e:?}");
            (e.status().as_u16(), e.message.clone())
        }
        other => panic!("expected an error response, got {other}"),
    }
}

#[tokio::test]
async fn the_console_through_nexus_with_the_oxide_sdk() {
    let ctx = TestContext::new().await;
    let client = sdk(&ctx);
    client
        .project_create()
        .body_map(|b| b.name("demo").description(""))
        .send()
        .await
        .unwrap();
    client
        .instance_create()
        .project("demo")
        .body_map(|b| {
            b.name("vm")
                .description("")
                .hostname(HOSTNAME)
                .ncpus(1u16)
                .memory(1073741824u64)
                .start(false)
        })
        .send()
        .await
        .unwrap();

    // Stopped: no console (400, with the error body), for reads and streams alike.
    let (status, message) = refusal(
        client
            .instance_serial_console()
            .project("demo")
            .instance("vm")
            .from_start(0u64)
            .send()
            .await,
    );
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("no serial console"), "{message}");
    let (status, message) = refusal(
        client
            .instance_serial_console_stream()
            .project("demo")
            .instance("vm")
            .send()
            .await,
    );
    assert_eq!(status, 400, "{message}");

    client
        .instance_start()
        .project("demo")
        .instance("vm")
        .send()
        .await
        .unwrap();
    wait_for(&client, InstanceState::Running).await;

    // The banner with the instance's hostname appears in the history.
    let mut found = false;
    for _ in 0..500 {
        if history(&client, 0).await.0.contains(BANNER) {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(found, "no banner in {:?}", history(&client, 0).await);
    let total = BANNER.len() as u64;
    assert_eq!(history(&client, 0).await, (BANNER.to_string(), total));
    // from_start: from that offset on, capped by max_bytes; past the end: nothing.
    assert_eq!(
        history(&client, 30).await,
        (BANNER[30..].to_string(), total)
    );
    let some = client
        .instance_serial_console()
        .project("demo")
        .instance("vm")
        .from_start(8u64)
        .max_bytes(6u64)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (some.data.as_slice(), some.last_byte_offset),
        (&b"GUEST "[..], 14)
    );
    assert_eq!(history(&client, 1000).await, (String::new(), total));
    // most_recent: counted back from the end; more than there is: from the beginning.
    let id = client
        .instance_view()
        .project("demo")
        .instance("vm")
        .send()
        .await
        .unwrap()
        .id;
    for (back, expected) in [(14u64, &BANNER[BANNER.len() - 14..]), (1000, BANNER)] {
        let tail = client
            .instance_serial_console()
            .instance(id) // by id, without a project
            .most_recent(back)
            .send()
            .await
            .unwrap();
        assert_eq!(tail.data, expected.as_bytes());
        assert_eq!(tail.last_byte_offset, total);
    }

    // Both offsets, or neither: 400.
    let (status, message) = refusal(
        client
            .instance_serial_console()
            .project("demo")
            .instance("vm")
            .from_start(0u64)
            .most_recent(0u64)
            .send()
            .await,
    );
    assert_eq!(status, 400);
    assert!(message.contains("exactly one of"), "{message}");
    let (status, _) = refusal(
        client
            .instance_serial_console()
            .project("demo")
            .instance("vm")
            .send()
            .await,
    );
    assert_eq!(status, 400);
    // An unknown instance: 404.
    let (status, _) = refusal(
        client
            .instance_serial_console()
            .project("demo")
            .instance("nope")
            .from_start(0u64)
            .send()
            .await,
    );
    assert_eq!(status, 404);
    let (status, _) = refusal(
        client
            .instance_serial_console_stream()
            .project("demo")
            .instance("nope")
            .send()
            .await,
    );
    assert_eq!(status, 404);

    // The stream: all the history by default, or from most_recent bytes back.
    let mut console = open_stream(&client, None).await;
    assert_eq!(read_until(&mut console, "\n").await, BANNER);
    let mut tail = open_stream(&client, Some(6)).await;
    assert_eq!(read_until(&mut tail, "\n").await, "host\r\n");

    // Typed input (text or binary frames) is echoed, on every stream.
    console
        .send(Message::Text("echo $((6*7))\r".into()))
        .await
        .unwrap();
    assert_eq!(read_until(&mut console, "\r").await, "echo $((6*7))\r");
    tail.send(Message::Binary(b"ls\r".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(read_until(&mut tail, "ls\r").await, "echo $((6*7))\rls\r");
    assert_eq!(read_until(&mut console, "ls\r").await, "ls\r");

    // A reboot: the banner again, live, on the same stream.
    client
        .instance_reboot()
        .project("demo")
        .instance("vm")
        .send()
        .await
        .unwrap();
    assert_eq!(read_until(&mut console, "BOOTED").await, BANNER);
    drop(tail); // a user who leaves does not disturb the others
    wait_for(&client, InstanceState::Running).await;

    // A migration: the source VMM is gone, so is its stream; the console is now the target's.
    let id = InstanceUuid::from_untyped_uuid(id);
    let before = ctx.view(id).await.active_vmm.unwrap().sled_id();
    ctx.nexus().instance_migrate(id, None).await.unwrap();
    assert_eq!(expect_close(&mut console).await, "the VMM is gone");
    ctx.eventually("the migration", async |ctx: &TestContext| {
        let view = ctx.view(id).await;
        view.instance.runtime.migration().is_none()
            && view.active_vmm.is_some_and(|v| v.sled_id() != before)
    })
    .await;
    wait_for(&client, InstanceState::Running).await;
    let mut moved = open_stream(&client, None).await;
    moved
        .send(Message::Text("still here\r".into()))
        .await
        .unwrap();
    assert_eq!(read_until(&mut moved, "\r").await, "still here\r");

    // Stopped: the stream closes with a close frame, and the console is refused again.
    client
        .instance_stop()
        .project("demo")
        .instance("vm")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_close(&mut moved).await, "the VMM is gone");
    wait_for(&client, InstanceState::Stopped).await;
    let (status, message) = refusal(
        client
            .instance_serial_console()
            .project("demo")
            .instance("vm")
            .most_recent(10u64)
            .send()
            .await,
    );
    assert_eq!(status, 400, "{message}");
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn a_client_closing_its_stream_ends_the_relay_and_the_console_keeps_serving() {
    let ctx = TestContext::new().await;
    let client = sdk(&ctx);
    client
        .project_create()
        .body_map(|b| b.name("demo").description(""))
        .send()
        .await
        .unwrap();
    client
        .instance_create()
        .project("demo")
        .body_map(|b| {
            b.name("vm")
                .description("")
                .hostname(HOSTNAME)
                .ncpus(1u16)
                .memory(1073741824u64)
        })
        .send()
        .await
        .unwrap();
    wait_for(&client, InstanceState::Running).await;
    for round in 0..5 {
        let mut console = open_stream(&client, Some(0)).await;
        let typed = format!("round {round}\r");
        console
            .send(Message::Text(typed.clone().into()))
            .await
            .unwrap();
        assert_eq!(read_until(&mut console, "\r").await, typed);
        console.close(None).await.unwrap();
        // The relay answers the close.
        let end = tokio::time::timeout(Duration::from_secs(5), console.next())
            .await
            .expect("no answer to the close");
        assert!(matches!(end, Some(Ok(Message::Close(_)))), "{end:?}");
    }
    let (text, _) = history(&client, 0).await;
    assert!(
        text.starts_with(BANNER) && text.ends_with("round 4\r"),
        "{text:?}"
    );
}
