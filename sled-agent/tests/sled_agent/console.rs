//! The serial console over HTTP: history reads by offset, the WebSocket stream (history, live
//! output, typed input echoed by the simulated guest, a close frame when the VMM is gone), and
//! its bad input.

use crate::{TestEnv, register_body, visible_delays, wait_for_state};
use futures::{SinkExt, StreamExt};
use halyard_common::VmmState;
use halyard_common::ids::VmmUuid;
use halyard_sled_agent_api::{VmmPutStateBody, VmmStateRequested};
use std::time::Duration;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

const BANNER: &str = "HALYARD-GUEST BOOTED hostname=guest\r\n";

async fn put(env: &TestEnv, id: VmmUuid, state: VmmStateRequested) {
    env.client
        .vmm_put_state(&id, &VmmPutStateBody { state })
        .await
        .unwrap();
}

async fn stream(
    env: &TestEnv,
    id: VmmUuid,
    most_recent: Option<u64>,
) -> WebSocketStream<reqwest::Upgraded> {
    let upgraded = env
        .client
        .vmm_serial_console_stream(&id, most_recent)
        .await
        .unwrap()
        .into_inner();
    WebSocketStream::from_raw_socket(upgraded, Role::Client, None).await
}

/// Reads binary frames until their bytes contain `wanted`; returns everything read.
async fn read_until(ws: &mut WebSocketStream<reqwest::Upgraded>, wanted: &str) -> String {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains(wanted) {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {wanted:?} on the stream; got {:?}",
                    String::from_utf8_lossy(&seen)
                )
            });
        match message {
            Some(Ok(Message::Binary(bytes))) => seen.extend_from_slice(&bytes),
            other => panic!("expected output, got {other:?}"),
        }
    }
    String::from_utf8(seen).unwrap()
}

#[tokio::test]
async fn the_console_keeps_history_streams_live_output_and_echoes_input() {
    let env = TestEnv::new(visible_delays()).await;
    let id = VmmUuid::new_v4();
    env.client
        .vmm_register(&id, &register_body())
        .await
        .unwrap();
    // Nothing yet, but readable.
    let empty = env
        .client
        .vmm_serial_console(&id, Some(0), None, None)
        .await
        .unwrap()
        .into_inner();
    assert_eq!((empty.data.len(), empty.last_byte_offset), (0, 0));
    // A stream opened before boot sees the banner live.
    let mut early = stream(&env, id, None).await;
    put(&env, id, VmmStateRequested::Run).await;
    wait_for_state(&env.client, id, VmmState::Running).await;
    assert_eq!(read_until(&mut early, "BOOTED").await, BANNER);

    let history = env
        .client
        .vmm_serial_console(&id, Some(0), None, None)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.data, BANNER.as_bytes());
    assert_eq!(history.last_byte_offset, BANNER.len() as u64);
    let tail = env
        .client
        .vmm_serial_console(&id, None, None, Some(7))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tail.data, b"guest\r\n");
    assert_eq!(tail.last_byte_offset, BANNER.len() as u64);
    let middle = env
        .client
        .vmm_serial_console(&id, Some(8), Some(6), None)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (middle.data.as_slice(), middle.last_byte_offset),
        (&b"GUEST "[..], 14)
    );

    // A stream from 7 bytes back: that history, then what is typed, echoed (text or binary).
    let mut ws = stream(&env, id, Some(7)).await;
    assert_eq!(read_until(&mut ws, "guest\r\n").await, "guest\r\n");
    ws.send(Message::Text("echo hi\r".into())).await.unwrap();
    assert_eq!(read_until(&mut ws, "\r").await, "echo hi\r");
    ws.send(Message::Binary(b"\x03".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(read_until(&mut ws, "\x03").await, "\x03");
    // The early stream saw the same, live.
    assert_eq!(read_until(&mut early, "\x03").await, "echo hi\r\x03");

    // A reboot prints the banner again, live.
    put(&env, id, VmmStateRequested::Reboot).await;
    assert_eq!(read_until(&mut ws, "BOOTED").await, BANNER);
    assert_eq!(read_until(&mut early, "BOOTED").await, BANNER);

    // Stopped and gone: the streams end with a close frame; history stays readable.
    put(&env, id, VmmStateRequested::Stop).await;
    for ws in [&mut ws, &mut early] {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no close frame");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.reason.as_str(), "the VMM is gone")
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    wait_for_state(&env.client, id, VmmState::Destroyed).await;
    let after = env
        .client
        .vmm_serial_console(&id, None, None, Some(1000))
        .await
        .unwrap()
        .into_inner();
    assert!(String::from_utf8_lossy(&after.data).ends_with(BANNER));
    // A stream opened on a gone VMM gets the history and the close frame.
    let mut late = stream(&env, id, Some(BANNER.len() as u64)).await;
    assert_eq!(read_until(&mut late, "BOOTED").await, BANNER);
    assert!(matches!(
        late.next().await,
        Some(Ok(Message::Close(Some(_))))
    ));

    env.client.vmm_unregister(&id).await.unwrap();
    let err = env
        .client
        .vmm_serial_console(&id, Some(0), None, None)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(404));
}

#[tokio::test]
async fn bad_console_requests_get_4xx_before_any_upgrade() {
    let env = TestEnv::new(visible_delays()).await;
    let id = VmmUuid::new_v4();
    env.client
        .vmm_register(&id, &register_body())
        .await
        .unwrap();
    let unknown = VmmUuid::new_v4();

    let status = |e: halyard_sled_agent_client::Error<_>| e.status().map(|s| s.as_u16());
    let err = env
        .client
        .vmm_serial_console(&unknown, Some(0), None, None)
        .await
        .unwrap_err();
    assert_eq!(status(err), Some(404));
    let err = env
        .client
        .vmm_serial_console_stream(&unknown, None)
        .await
        .unwrap_err();
    assert_eq!(status(err), Some(404));
    for (from_start, most_recent) in [(Some(0), Some(0)), (None, None)] {
        let err = env
            .client
            .vmm_serial_console(&id, from_start, None, most_recent)
            .await
            .unwrap_err();
        match err {
            halyard_sled_agent_client::Error::ErrorResponse(e) => {
                assert_eq!(e.status().as_u16(), 400);
                assert!(e.message.contains("exactly one of"), "{}", e.message);
            }
            other => panic!("expected a 400, got {other:?}"),
        }
    }
    // Not a WebSocket request: 400.
    let response = crate::http_as(crate::Role::Operator, halyard_tls::SLED_AGENT_NAME)
        .get(format!(
            "https://{}/vmms/{id}/serial-console/stream",
            env.sled.local_addr()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
}
