//! Bad requests get 4xx with the error body (request_id, error_code, message), and change
//! nothing.

use crate::{TestEnv, register_body, visible_delays, wait_for_state};
use halyard_common::VmmState;
use halyard_common::ids::VmmUuid;
use halyard_sled_agent_api::{VmmPutStateBody, VmmStateRequested};
use serde_json::{Value, json};

/// A raw HTTP request, so malformed bodies can be sent; returns status and parsed body.
async fn raw(env: &TestEnv, method: reqwest::Method, path: &str, body: &str) -> (u16, Value) {
    let response = crate::http_as(crate::Role::Nexus, halyard_tls::SLED_AGENT_NAME)
        .request(method, format!("https://{}{path}", env.sled.local_addr()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Checks the error body: a request id, a message, and exactly the error code expected. `None`
/// is dropshot's own 400 (the request did not parse into the endpoint's types), which carries
/// no code: checked to be really absent.
fn assert_error_body(body: &Value, code: Option<&str>) {
    assert!(body["request_id"].is_string(), "no request_id in {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message in {body}"
    );
    assert_eq!(
        body.get("error_code").and_then(Value::as_str),
        code,
        "{body}"
    );
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let env = TestEnv::new(visible_delays()).await;
    let unknown = VmmUuid::new_v4();

    let (status, body) = raw(
        &env,
        reqwest::Method::GET,
        &format!("/vmms/{unknown}/state"),
        "",
    )
    .await;
    assert_eq!(status, 404);
    assert_error_body(&body, Some("ObjectNotFound"));
    let (status, body) = raw(
        &env,
        reqwest::Method::PUT,
        &format!("/vmms/{unknown}/state"),
        r#"{"state":{"type":"run"}}"#,
    )
    .await;
    assert_eq!(status, 404);
    assert_error_body(&body, Some("ObjectNotFound"));

    // Registering twice: same body is a no-op, a different body is a conflict.
    let id = VmmUuid::new_v4();
    let body = register_body();
    let first = env
        .client
        .vmm_register(&id, &body)
        .await
        .unwrap()
        .into_inner();
    let second = env
        .client
        .vmm_register(&id, &body)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, second);
    let mut different = body.clone();
    different.ncpus = 8;
    let (status, response) = raw(
        &env,
        reqwest::Method::PUT,
        &format!("/vmms/{id}"),
        &serde_json::to_string(&different).unwrap(),
    )
    .await;
    assert_eq!(status, 409);
    assert_error_body(&response, Some("Conflict"));
    assert!(
        response["message"]
            .as_str()
            .unwrap()
            .contains("different parameters")
    );
    assert_eq!(env.sled.agent().vmm_list()[0].ncpus, 2);

    // Requests that make no sense in the current state.
    let (status, response) = raw(
        &env,
        reqwest::Method::PUT,
        &format!("/vmms/{id}/state"),
        r#"{"state":{"type":"reboot"}}"#,
    )
    .await;
    assert_eq!(status, 409);
    assert_error_body(&response, Some("Conflict"));
    assert!(
        response["message"]
            .as_str()
            .unwrap()
            .contains("only a running VMM can reboot"),
        "{response}"
    );

    env.client
        .vmm_put_state(
            &id,
            &VmmPutStateBody {
                state: VmmStateRequested::Stop,
            },
        )
        .await
        .unwrap();
    wait_for_state(&env.client, id, VmmState::Destroyed).await;
    let (status, response) = raw(
        &env,
        reqwest::Method::PUT,
        &format!("/vmms/{id}/state"),
        r#"{"state":{"type":"run"}}"#,
    )
    .await;
    assert_eq!(status, 409);
    assert_error_body(&response, Some("Conflict"));
    let message = response["message"].as_str().unwrap();
    assert!(
        message.contains("destroyed") && message.contains("new VMM"),
        "{message}"
    );

    // Malformed input.
    let fresh = VmmUuid::new_v4();
    for (path, body) in [
        (format!("/vmms/{fresh}"), "{not json"),
        (format!("/vmms/{fresh}"), r#"{"instance_id": 7}"#),
        (
            format!("/vmms/{fresh}"),
            r#"{"instance_id":"6e5b4a3c-0000-4000-8000-000000000000","ncpus":-1,"memory":1024,"hostname":"x","migration_target":null}"#,
        ),
        ("/vmms/not-a-uuid".to_string(), "{}"),
        (
            format!("/vmms/{fresh}/state"),
            r#"{"state":{"type":"levitate"}}"#,
        ),
    ] {
        let (status, response) = raw(&env, reqwest::Method::PUT, &path, body).await;
        assert_eq!(status, 400, "{path} {body}: {response}");
        assert_error_body(&response, None);
    }
    // Each field of a registration out of range, or holding what no hostname may: NUL, control
    // characters, non-ASCII text, spaces. Numbers that do not fit their type are dropshot's.
    let valid = serde_json::to_value(register_body()).unwrap();
    let mut bad_registrations = vec![
        ("ncpus", json!(0), Some("InvalidValue")),
        ("ncpus", json!(1000), Some("InvalidValue")), // more than the sled's threads
        ("ncpus", json!(65536), None),
        ("ncpus", json!(-2), None),
        ("memory", json!(0), Some("InvalidValue")),
        ("memory", json!(1u64 << 62), Some("InvalidValue")), // more than the sled's RAM
        ("memory", json!(u64::MAX), None),
        ("memory", json!(-1), None),
        ("hostname", json!(""), Some("InvalidValue")),
        ("hostname", json!("h".repeat(254)), Some("InvalidValue")),
        ("hostname", json!("wéb"), Some("InvalidValue")),
        ("hostname", json!("web server"), Some("InvalidValue")),
        ("instance_id", json!("not-a-uuid"), None),
    ];
    for bad in [
        "nul\0inside",
        "bell\x07",
        "escape\x1b[31m",
        "cr\r",
        "del\x7f",
        "c1\u{85}",
    ] {
        bad_registrations.push(("hostname", json!(bad), Some("InvalidValue")));
    }
    for (field, value, code) in bad_registrations {
        let mut body = valid.clone();
        body[field] = value.clone();
        let (status, response) = raw(
            &env,
            reqwest::Method::PUT,
            &format!("/vmms/{fresh}"),
            &body.to_string(),
        )
        .await;
        assert_eq!(status, 400, "{field} = {value}: {response}");
        assert_error_body(&response, code);
    }
    assert!(
        env.client.vmm_get_state(&fresh).await.is_err(),
        "a refused VMM must not exist"
    );
    assert!(env.sled.agent().vmm_list().is_empty());
}
