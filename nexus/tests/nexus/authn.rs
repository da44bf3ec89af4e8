//! Authentication: who may call at all, the device login through the Oxide SDK, and the audit
//! log of mutating requests.

use crate::authn_support::{http_client, sdk, test_user_token};
use crate::context::TestContext;
use chrono::Utc;
use futures::StreamExt;
use halyard_common::ids::NexusUuid;
use halyard_db_queries::secret::Secret;
use halyard_test_db::TestDatabase;
use oxide::prelude::*;
use serde_json::{Value, json};
use std::path::Path;

fn base(ctx: &TestContext) -> String {
    format!("http://{}", ctx.server().external_address())
}

/// `GET /v1/me` with exactly these `Authorization` header values (raw bytes): status, body.
async fn me_with_headers(ctx: &TestContext, values: &[&[u8]]) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(format!("{}/v1/me", base(ctx)));
    for value in values {
        request = request.header(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn me_with_token(ctx: &TestContext, token: &str) -> (u16, Value) {
    let header = format!("Bearer {token}");
    me_with_headers(ctx, &[header.as_bytes()]).await
}

/// Oxide's 401, the same whatever was wrong: only the request id differs.
fn assert_unauthorized(case: &str, (status, body): &(u16, Value)) {
    assert_eq!(*status, 401, "{case}: {body}");
    assert_eq!(body["error_code"], "Unauthorized", "{case}: {body}");
    assert_eq!(
        body["message"], "credentials missing or invalid",
        "{case}: {body}"
    );
    assert!(
        body["request_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{case}: {body}"
    );
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["error_code", "message", "request_id"], "{case}");
}

#[tokio::test]
async fn a_missing_malformed_unknown_expired_or_revoked_token_gets_the_same_401() {
    let ctx = TestContext::with_sleds(0).await;
    let datastore = ctx.nexus().datastore();
    let (status, me) = me_with_token(&ctx, &ctx.token).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["display_name"], crate::authn_support::TEST_USER);
    let user = datastore
        .user_fetch(me["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();

    let (_, expired) = datastore
        .token_create(user.id(), Some(Utc::now() - chrono::Duration::seconds(1)))
        .await
        .unwrap();
    let (revoked_row, revoked) = datastore.token_create(user.id(), None).await.unwrap();
    datastore.token_revoke(revoked_row.id()).await.unwrap();
    let unknown = Secret::new_token();

    assert_unauthorized("no header", &me_with_headers(&ctx, &[]).await);
    assert_unauthorized("malformed", &me_with_token(&ctx, "not-a-token").await);
    assert_unauthorized("unknown", &me_with_token(&ctx, unknown.expose()).await);
    assert_unauthorized("expired", &me_with_token(&ctx, expired.expose()).await);
    assert_unauthorized("revoked", &me_with_token(&ctx, revoked.expose()).await);
    // A mutating request is refused the same way, and changes nothing.
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/projects", base(&ctx)))
        .json(&json!({"name": "p", "description": ""}))
        .send()
        .await
        .unwrap();
    let refused = (refused.status().as_u16(), refused.json().await.unwrap());
    assert_unauthorized("no header on a POST", &refused);
    assert_eq!(ctx.sql("SELECT count(*) FROM project").trim(), "0");
}

#[tokio::test]
async fn a_revoked_token_is_refused_on_its_very_next_request() {
    let ctx = TestContext::with_sleds(0).await;
    let token = test_user_token(ctx.nexus()).await;
    assert_eq!(me_with_token(&ctx, &token).await.0, 200);
    let token_row = ctx
        .sql(&format!(
            "SELECT id FROM api_token WHERE token_hash = '{}'",
            halyard_db_queries::secret::hash_secret(&token)
        ))
        .trim()
        .to_string();
    ctx.nexus()
        .datastore()
        .token_revoke(token_row.parse().unwrap())
        .await
        .unwrap();
    assert_unauthorized("just revoked", &me_with_token(&ctx, &token).await);
    // The harness's own token is untouched.
    assert_eq!(me_with_token(&ctx, &ctx.token).await.0, 200);
}

#[tokio::test]
async fn garbage_oversized_non_ascii_and_repeated_authorization_headers_get_401() {
    let ctx = TestContext::with_sleds(0).await;
    let good = format!("Bearer {}", ctx.token);
    let oversized = format!("Bearer {}", "A".repeat(16 * 1024));
    let oversized_token = format!("Bearer halyard_{}", "A".repeat(60 * 1024));
    let mut non_ascii = good.clone().into_bytes();
    *non_ascii.last_mut().unwrap() = 0xE9;
    let cases: Vec<(&str, Vec<&[u8]>)> = vec![
        ("empty", vec![b""]),
        ("garbage", vec![b"%%% garbage {}[] \t;"]),
        ("binary", vec![b"Bearer \xff\xfe\x80\x81"]),
        ("scheme only", vec![b"Bearer"]),
        ("empty token", vec![b"Bearer "]),
        ("basic", vec![b"Basic dXNlcjpwYXNzd29yZA=="]),
        ("token without scheme", vec![ctx.token.as_bytes()]),
        (
            "two spaces",
            vec![format!("Bearer  {}", ctx.token).leak().as_bytes()],
        ),
        ("trailing junk", vec![format!("{good} x").leak().as_bytes()]),
        ("oversized", vec![oversized.as_bytes()]),
        ("oversized token", vec![oversized_token.as_bytes()]),
        ("non-ASCII", vec![&non_ascii]),
        (
            "repeated, both valid",
            vec![good.as_bytes(), good.as_bytes()],
        ),
        ("repeated, one empty", vec![good.as_bytes(), b""]),
    ];
    for (case, values) in cases {
        assert_unauthorized(case, &me_with_headers(&ctx, &values).await);
    }
    // And the good one alone still works.
    assert_eq!(me_with_headers(&ctx, &[good.as_bytes()]).await.0, 200);
}

/// A logger that writes everything, debug included, to `path`.
fn logger_to_file(path: &Path) -> slog::Logger {
    use slog::Drain;
    let file = std::fs::File::create(path).unwrap();
    let drain = slog_term::FullFormat::new(slog_term::PlainSyncDecorator::new(file))
        .build()
        .fuse();
    let drain = slog::LevelFilter::new(drain, slog::Level::Trace).fuse();
    slog::Logger::root(drain, slog::o!())
}

async fn body_json(stream: oxide::ByteStream) -> Value {
    let mut bytes = Vec::new();
    let mut inner = stream.into_inner();
    while let Some(chunk) = inner.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    serde_json::from_slice(&bytes).unwrap()
}

/// What `POST /device/token` answers: status and JSON.
async fn poll_token(
    client: &oxide::Client,
    client_id: uuid::Uuid,
    device_code: &str,
) -> (u16, Value) {
    let result = client
        .device_access_token()
        .body_map(|b| {
            b.client_id(client_id)
                .device_code(device_code)
                .grant_type("urn:ietf:params:oauth:grant-type:device_code")
        })
        .send()
        .await;
    match result {
        Ok(response) => (
            response.status().as_u16(),
            body_json(response.into_inner()).await,
        ),
        Err(oxide::Error::ErrorResponse(response)) => (
            response.status().as_u16(),
            body_json(response.into_inner()).await,
        ),
        Err(e) => panic!("polling for the token: {e}"),
    }
}

#[tokio::test]
async fn the_oxide_sdk_logs_in_through_the_device_flow_and_no_token_reaches_the_log() {
    let db = TestDatabase::new();
    let dir = std::env::temp_dir().join(format!("halyard-authn-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("nexus.log");
    let server = halyard_nexus::Server::start(
        &halyard_nexus::Config {
            retirement_interval_ms: 200,
            heartbeat_interval_ms: 200,
            ..halyard_nexus::Config::new(
                NexusUuid::new_v4(),
                db.url().to_string(),
                "127.0.0.1:0".parse().unwrap(),
                "127.0.0.1:0".parse().unwrap(),
                crate::context::tls_files(crate::context::Role::Nexus),
            )
        },
        &logger_to_file(&log_path),
    )
    .await
    .unwrap();
    let url = format!("http://{}", server.external_address());
    let (alice, alice_token) = server
        .nexus()
        .default_silo_user_token(&"alice".parse().unwrap())
        .await
        .unwrap();
    let alice_token = alice_token.expose().to_string();

    // The CLI's side, with no token yet.
    let anonymous = oxide::Client::new(&url);
    let client_id = uuid::Uuid::new_v4();
    let started = anonymous
        .device_auth_request()
        .body_map(|b| b.client_id(client_id))
        .send()
        .await
        .unwrap();
    let started = body_json(started.into_inner()).await;
    let device_code = started["device_code"].as_str().unwrap().to_string();
    let user_code = started["user_code"].as_str().unwrap().to_string();
    assert!(
        started["verification_uri"]
            .as_str()
            .unwrap()
            .starts_with(&url),
        "{started}"
    );
    assert!(started["expires_in"].as_u64().unwrap() > 0, "{started}");

    let (status, pending) = poll_token(&anonymous, client_id, &device_code).await;
    assert_eq!(
        (status, &pending["error"]),
        (400, &json!("authorization_pending"))
    );
    // Another client's id with this device code gets nothing.
    let (status, wrong) = poll_token(&anonymous, uuid::Uuid::new_v4(), &device_code).await;
    assert_eq!((status, &wrong["error"]), (400, &json!("invalid_grant")));

    // Confirming needs a user: the user code alone is not enough.
    let refused = anonymous
        .device_auth_confirm()
        .body_map(|b| b.user_code(user_code.clone()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(401));
    // Alice confirms (typing the code in lower case).
    sdk(&url, &alice_token)
        .device_auth_confirm()
        .body_map(|b| b.user_code(user_code.to_lowercase()))
        .send()
        .await
        .unwrap();

    let (status, granted) = poll_token(&anonymous, client_id, &device_code).await;
    assert_eq!(status, 200, "{granted}");
    assert_eq!(granted["token_type"], "Bearer");
    let access_token = granted["access_token"].as_str().unwrap().to_string();
    // Handed out once.
    let (status, again) = poll_token(&anonymous, client_id, &device_code).await;
    assert_eq!((status, &again["error"]), (400, &json!("invalid_grant")));

    // The new token acts as Alice.
    let me = sdk(&url, &access_token)
        .current_user_view()
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.id, alice.id().into_untyped_uuid());
    assert_eq!(me.display_name, "alice");
    assert_eq!(me.silo_id, halyard_db_model::DEFAULT_SILO_ID);
    assert_eq!(me.silo_name.as_str(), "default-silo");
    sdk(&url, &access_token)
        .project_create()
        .body_map(|b| b.name("alices").description(""))
        .send()
        .await
        .unwrap();

    server.close().await.unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    // The log did see the flow (so finding nothing below means something)...
    for seen in [
        "uri: /device/auth",
        "uri: /device/token",
        "uri: /device/confirm",
        "uri: /v1/me",
    ] {
        assert!(log.contains(seen), "the log never mentions {seen}:\n{log}");
    }
    // ...and none of its secrets.
    for (what, secret) in [
        ("the granted token", access_token.as_str()),
        ("the confirming user's token", alice_token.as_str()),
        ("the device code", device_code.as_str()),
    ] {
        assert!(!log.contains(secret), "{what} is in the log");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

use halyard_common::ids::GenericUuid;

/// What the audit test compares of an entry: method, operation, actor kind, status, error code.
type AuditSummary<'a> = (&'a str, &'a str, &'a str, Option<i32>, Option<&'a str>);

#[tokio::test]
async fn mutating_requests_and_refused_ones_are_in_the_audit_log_and_reads_are_not() {
    let ctx = TestContext::with_sleds(0).await;
    let http = http_client(&ctx.token);
    let me: Value = http
        .get(format!("{}/v1/me", base(&ctx)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let created = http
        .post(format!("{}/v1/projects", base(&ctx)))
        .json(&json!({"name": "audited", "description": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let created_request_id = created.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let conflict = http
        .post(format!("{}/v1/projects", base(&ctx)))
        .json(&json!({"name": "audited", "description": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(conflict.status().as_u16(), 400);
    let deleted = http
        .delete(format!("{}/v1/projects/audited", base(&ctx)))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let refused = reqwest::Client::new()
        .delete(format!("{}/v1/projects/audited", base(&ctx)))
        .bearer_auth(Secret::new_token().expose())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let refused_request_id = refused.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();

    let entries = ctx.nexus().datastore().audit_log_list(100).await.unwrap();
    let seen: Vec<AuditSummary> = entries
        .iter()
        .map(|e| {
            (
                e.method.as_str(),
                e.operation_id.as_str(),
                e.actor_kind.as_str(),
                e.http_status,
                e.error_code.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("POST", "project_create", "user", Some(201), None),
            (
                "POST",
                "project_create",
                "user",
                Some(400),
                Some("ObjectAlreadyExists")
            ),
            ("DELETE", "project_delete", "user", Some(204), None),
            (
                "DELETE",
                "project_delete",
                "unauthenticated",
                Some(401),
                Some("Unauthorized")
            ),
        ],
        "newest last; the GET /v1/me is not there"
    );
    let me_id: uuid::Uuid = me["id"].as_str().unwrap().parse().unwrap();
    for entry in &entries[..3] {
        assert_eq!(entry.actor_id, Some(me_id));
        assert_eq!(entry.actor_silo_id, Some(halyard_db_model::DEFAULT_SILO_ID));
        assert!(entry.time_completed.unwrap() >= entry.time_started);
    }
    assert_eq!(entries[0].request_id, created_request_id);
    assert_eq!(entries[0].path, "/v1/projects");
    assert_eq!(entries[2].path, "/v1/projects/audited");
    assert_eq!(entries[3].request_id, refused_request_id);
    assert_eq!(entries[3].actor_id, None);
}
