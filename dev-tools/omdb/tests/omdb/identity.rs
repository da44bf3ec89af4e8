//! `omdb db users|tokens|audit`: an operator gives a user a token, the token works against
//! Nexus's external API, revoking it ends it, and the audit log shows what was asked.

use crate::context::{RunOmdb, TestContext};
use serde_json::Value;

async fn status_of(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn an_operator_makes_a_user_and_a_token_that_works_until_revoked_and_audit_shows_it() {
    let ctx = TestContext::with_sleds(0).await;
    let created = ctx.omdb(&["db", "users", "create", "alice"]).await.ok();
    assert!(created.contains("alice"), "{created}");
    let users = ctx.omdb(&["db", "users"]).await.ok();
    assert!(users.lines().any(|l| l.contains("alice")), "{users}");
    let again = ctx.omdb(&["db", "users", "create", "alice"]).await;
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("already exists"), "{again:?}");

    let token: Value = serde_json::from_str(
        &ctx.omdb(&[
            "--json", "db", "tokens", "create", "--user", "alice", "--ttl", "1h",
        ])
        .await
        .ok(),
    )
    .unwrap();
    let secret = token["token"].as_str().unwrap().to_string();
    assert!(token["time_expires"].is_string(), "{token}");
    let listed = ctx.omdb(&["db", "tokens"]).await.ok();
    assert!(listed.contains(token["id"].as_str().unwrap()), "{listed}");
    assert!(
        !listed.contains(&secret),
        "the secret is shown only at creation:\n{listed}"
    );

    let http = reqwest::Client::new();
    let api = ctx.external_url();
    let create = |token: Option<&str>| {
        let request = http
            .post(format!("{api}/v1/projects"))
            .json(&serde_json::json!({"name": "audited", "description": ""}));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };
    assert_eq!(status_of(create(Some(&secret))).await, 201);
    assert_eq!(status_of(create(None)).await, 401);

    let audit = ctx.omdb(&["db", "audit"]).await.ok();
    let lines: Vec<&str> = audit.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two requests:\n{audit}");
    assert!(lines[0].starts_with("TIME_STARTED"), "{audit}");
    for (line, words) in [
        (
            lines[1],
            ["201", "POST", "/v1/projects", "project_create", "alice"],
        ),
        (
            lines[2],
            [
                "401",
                "POST",
                "/v1/projects",
                "project_create",
                "unauthenticated",
            ],
        ),
    ] {
        for word in words {
            assert!(line.contains(word), "{word:?} missing from {line:?}");
        }
    }
    let newest: Value = serde_json::from_str(
        &ctx.omdb(&["--json", "db", "audit", "--limit", "1"])
            .await
            .ok(),
    )
    .unwrap();
    assert_eq!(newest.as_array().unwrap().len(), 1, "{newest}");
    assert_eq!(newest[0]["status"], 401, "the newest is last: {newest}");
    assert_eq!(newest[0]["error_code"], "Unauthorized", "{newest}");

    let revoked = ctx
        .omdb(&["db", "tokens", "revoke", token["id"].as_str().unwrap()])
        .await
        .ok();
    assert!(revoked.contains("revoked"), "{revoked}");
    let me = http.get(format!("{api}/v1/me")).bearer_auth(&secret);
    assert_eq!(status_of(me).await, 401);
}
