//! The web console: its session cookie (sign-in with a token, the cookie's attributes, what it
//! authenticates, sign-out, a cookie sent from another origin), the page and assets Nexus
//! serves, the endpoints the console reads (an instance's VMMs, sleds' usage, sagas,
//! background tasks, metrics), and the console itself driven in Debian's headless Chromium by
//! Playwright (`console/tests/`) against a Nexus with a real QEMU sled.

use crate::context::TestContext;
use halyard_common::ids::UserUuid;
use serde_json::{Value, json};
use std::path::PathBuf;

fn base(ctx: &TestContext) -> String {
    ctx.external_url()
}

/// `GET {base}{path}` with `client`: the response.
async fn get(ctx: &TestContext, client: &reqwest::Client, path: &str) -> reqwest::Response {
    client
        .get(format!("{}{path}", base(ctx)))
        .send()
        .await
        .unwrap()
}

/// `GET {base}{path}` with `client`, whose body is JSON.
async fn get_json<T: serde::de::DeserializeOwned>(
    ctx: &TestContext,
    client: &reqwest::Client,
    path: &str,
) -> T {
    get(ctx, client, path).await.json().await.unwrap()
}

/// A user of the default silo holding `fleet_role` (if any), and a token of theirs.
async fn user(ctx: &TestContext, name: &str, fleet_role: Option<&str>) -> (UserUuid, String) {
    let datastore = ctx.nexus().datastore();
    let user = datastore
        .user_create(halyard_db_model::default_silo_id(), name.parse().unwrap())
        .await
        .unwrap();
    if let Some(role) = fleet_role {
        datastore.fleet_role_grant(user.id(), role).await.unwrap();
    }
    let (_, secret) = datastore.token_create(user.id(), None).await.unwrap();
    (user.id(), secret.expose().to_string())
}

/// `POST /v1/login/token` with `body` (raw) and extra headers: status, `Set-Cookie` values
/// and body.
async fn login_raw(
    ctx: &TestContext,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<String>, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/login/token", base(ctx)))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let cookies = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let text = response.text().await.unwrap();
    (
        status,
        cookies,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Signs in with `token`: the session cookie's `name=value`.
async fn sign_in(ctx: &TestContext, token: &str) -> String {
    let (status, cookies, body) = login_raw(ctx, &json!({ "token": token }).to_string(), &[]).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    cookies[0].split(';').next().unwrap().to_string()
}

/// `method path` with only `cookie` (and extra headers) as credentials: status and body.
async fn with_cookie(
    ctx: &TestContext,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", base(ctx)))
        .header("cookie", cookie);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn a_token_signs_in_to_a_session_cookie_that_authenticates_until_sign_out() {
    let ctx = TestContext::with_sleds(1).await;
    let (user_id, token) = user(&ctx, "alice", None).await;
    let (status, cookies, body) =
        login_raw(&ctx, &json!({ "token": token }).to_string(), &[]).await;
    assert_eq!(status, 204, "{body}");
    let attributes: Vec<&str> = cookies[0].split("; ").collect();
    assert!(attributes[0].starts_with("session=halyard_"), "{cookies:?}");
    for wanted in ["Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=28800"] {
        assert!(attributes.contains(&wanted), "{wanted} in {cookies:?}");
    }
    // Plain HTTP here: not `Secure`, or the browser would never send it back.
    assert!(!attributes.contains(&"Secure"), "{cookies:?}");
    let cookie = attributes[0].to_string();

    let get = reqwest::Method::GET;
    let (status, me) = with_cookie(&ctx, get.clone(), "/v1/me", &cookie, &[]).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["id"], json!(user_id));
    assert_eq!(me["display_name"], "alice");
    assert_eq!(me["fleet_viewer"], false);
    // Among other cookies, and with this origin's `Origin`, it still authenticates.
    let origin = base(&ctx);
    let mixed = format!("theme=dark; {cookie}; lang=en");
    let (status, _) =
        with_cookie(&ctx, get.clone(), "/v1/me", &mixed, &[("origin", &origin)]).await;
    assert_eq!(status, 200);
    // A mutation through the cookie is the user's, as with the token.
    let (status, project) = with_cookie(
        &ctx,
        reqwest::Method::POST,
        "/v1/projects",
        &cookie,
        &[("content-type", "application/json"), ("origin", &origin)],
    )
    .await;
    assert_eq!(status, 400, "an empty body is a 400: {project}");

    // From another origin (another port of the same host is the same *site*, so the browser
    // sends a `SameSite=Strict` cookie): refused, with the usual 401.
    let (status, body) = with_cookie(
        &ctx,
        get.clone(),
        "/v1/me",
        &cookie,
        &[("origin", "http://127.0.0.1:1")],
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error_code"], "Unauthorized");
    // Two session cookies: which one is meant? Neither.
    let other = sign_in(&ctx, &token).await;
    let (status, _) = with_cookie(
        &ctx,
        get.clone(),
        "/v1/me",
        &format!("{cookie}; {other}"),
        &[],
    )
    .await;
    assert_eq!(status, 401);
    // A bearer token wins over a cookie: the cookie is not even looked at.
    let response = reqwest::Client::new()
        .get(format!("{}/v1/me", base(&ctx)))
        .header("cookie", "session=garbage")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // Sign-out ends the session and clears the cookie; the other session and the token live.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/logout", base(&ctx)))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let cleared = response.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with("session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"),
        "{cleared}"
    );
    let (status, _) = with_cookie(&ctx, get.clone(), "/v1/me", &cookie, &[]).await;
    assert_eq!(status, 401, "an ended session authenticates nothing");
    let (status, _) = with_cookie(&ctx, get.clone(), "/v1/me", &other, &[]).await;
    assert_eq!(status, 200);
    let (status, _) = with_cookie(&ctx, get, "/v1/me", &format!("session={token}"), &[]).await;
    assert_eq!(status, 200, "the API token itself still works");
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn a_bad_sign_in_is_a_4xx_with_a_body_and_sets_no_cookie() {
    let ctx = TestContext::with_sleds(1).await;
    let (_, token) = user(&ctx, "bob", None).await;
    let revoked = {
        let datastore = ctx.nexus().datastore();
        let user = datastore
            .user_fetch_by_name(halyard_db_model::default_silo_id(), &"bob".parse().unwrap())
            .await
            .unwrap();
        let (made, secret) = datastore.token_create(user.id(), None).await.unwrap();
        datastore.token_revoke(made.id()).await.unwrap();
        secret.expose().to_string()
    };
    let cases: Vec<(String, u16)> = vec![
        (
            json!({"token": "halyard_not-a-real-token-at-all"}).to_string(),
            401,
        ),
        (json!({"token": revoked}).to_string(), 401),
        (json!({"token": ""}).to_string(), 401),
        (json!({"token": "x".repeat(100_000)}).to_string(), 401),
        (json!({"token": 7}).to_string(), 400),
        (json!({}).to_string(), 400),
        (json!({"token": token, "extra": 1}).to_string(), 400),
        ("not json".to_string(), 400),
        ("\u{0}\u{ff}".to_string(), 400),
    ];
    let sessions_before = ctx.sql("SELECT count(*) FROM api_token");
    for (body, expected) in cases {
        let (status, cookies, error) = login_raw(&ctx, &body, &[]).await;
        assert_eq!(status, expected, "{body:.80}: {error}");
        assert!(cookies.is_empty(), "{body:.80}: {cookies:?}");
        assert!(error["message"].is_string(), "{error}");
        assert!(error["request_id"].is_string(), "{error}");
    }
    // A good token from another origin: 403, no session.
    let (status, cookies, error) = login_raw(
        &ctx,
        &json!({ "token": token }).to_string(),
        &[("origin", "http://evil.example")],
    )
    .await;
    assert_eq!(status, 403, "{error}");
    assert!(cookies.is_empty());
    assert_eq!(ctx.sql("SELECT count(*) FROM api_token"), sessions_before);
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn every_console_route_gets_the_page_and_assets_are_served_with_their_types() {
    let ctx = TestContext::with_sleds(1).await;
    let client = reqwest::Client::new();
    for path in [
        "/",
        "/login",
        "/projects",
        "/projects/p/instances/i",
        "/projects/p/instances/i/console",
        "/system/sleds",
        "/device/verify?user_code=ABCD-EFGH",
    ] {
        let response = get(&ctx, &client, path).await;
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let headers = response.headers().clone();
        assert_eq!(
            headers["content-type"], "text/html; charset=utf-8",
            "{path}"
        );
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let page = response.text().await.unwrap();
        assert!(page.contains("/assets/console.js"), "{path}: {page:.200}");
        assert!(page.contains("/assets/console.css"), "{path}: {page:.200}");
    }
    for (asset, content_type) in [
        ("console.js", "text/javascript; charset=utf-8"),
        ("console.css", "text/css; charset=utf-8"),
    ] {
        let response = get(&ctx, &client, &format!("/assets/{asset}")).await;
        assert_eq!(response.status().as_u16(), 200, "{asset}");
        assert_eq!(response.headers()["content-type"], content_type);
        assert!(!response.bytes().await.unwrap().is_empty(), "{asset}");
    }
    for missing in [
        "/assets/nope.js",
        "/assets/",
        "/assets/a/console.js",
        "/nowhere",
    ] {
        let response = get(&ctx, &client, missing).await;
        assert_eq!(response.status().as_u16(), 404, "{missing}");
        let body: Value = response.json().await.unwrap();
        assert!(body["message"].is_string(), "{missing}: {body}");
    }
}

#[tokio::test]
async fn the_console_reads_an_instances_vmms_and_the_fleets_state() {
    let ctx = TestContext::with_sleds(2).await;
    let admin = crate::authn_support::http_client(&ctx.token);
    let project = ctx.project("p").await;
    let id = ctx.instance(&project, "vm", 2).await;
    ctx.start(id).await;
    ctx.stop(id).await;
    ctx.start(id).await;
    let vmms: Vec<Value> = get_json(&ctx, &admin, &format!("/v1/instances/{id}/vmms")).await;
    assert_eq!(vmms.len(), 2, "{vmms:#?}");
    assert_eq!(vmms[0]["role"], "past");
    assert_eq!(vmms[0]["state"], "destroyed");
    assert_eq!(vmms[1]["role"], "active");
    assert_eq!(vmms[1]["state"], "running");
    assert_eq!(vmms[1]["id"], json!(ctx.active_vmm(id).await));
    // By name under its project, as the console asks.
    let by_name: Vec<Value> = get_json(&ctx, &admin, "/v1/instances/vm/vmms?project=p").await;
    assert_eq!(by_name, vmms);

    // The sled holding it shows its reservation and one live VMM; the other none.
    let sled = vmms[1]["sled_id"].as_str().unwrap().to_string();
    let sleds: Value = get_json(&ctx, &admin, "/v1/system/hardware/sleds").await;
    let items = sleds["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    for item in items {
        let holds = item["id"] == sled;
        assert_eq!(item["live_vmms"], json!(u32::from(holds)), "{item}");
        assert_eq!(
            item["reserved_hardware_threads"],
            json!(if holds { 2 } else { 0 }),
            "{item}"
        );
        assert_eq!(
            item["reserved_physical_ram"],
            json!(if holds { 1u64 << 30 } else { 0 }),
            "{item}"
        );
    }

    // Operators' reads: sagas in progress (none now), background tasks, metrics.
    let sagas: Vec<Value> = get_json(&ctx, &admin, "/v1/system/sagas").await;
    assert!(sagas.is_empty(), "{sagas:#?}");
    let tasks: Vec<Value> = get_json(&ctx, &admin, "/v1/system/background-tasks").await;
    assert!(
        tasks.iter().any(|task| task["name"] == "vmm_retirement"),
        "{tasks:#?}"
    );
    let metrics = get(&ctx, &admin, "/v1/system/metrics").await;
    assert_eq!(metrics.status().as_u16(), 200);
    assert!(
        metrics.text().await.unwrap().contains("# TYPE"),
        "Prometheus text"
    );
    // A fleet viewer reads them too; a user without a fleet role is refused (403).
    let (_, viewer) = user(&ctx, "viewer", Some("viewer")).await;
    let (_, nobody) = user(&ctx, "nobody", None).await;
    for path in [
        "/v1/system/sagas",
        "/v1/system/background-tasks",
        "/v1/system/metrics",
    ] {
        let seen = get(&ctx, &crate::authn_support::http_client(&viewer), path).await;
        assert_eq!(seen.status().as_u16(), 200, "{path}");
        let refused = get(&ctx, &crate::authn_support::http_client(&nobody), path).await;
        assert_eq!(refused.status().as_u16(), 403, "{path}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(
            body["message"], "Forbidden: your roles do not allow you to read this fleet",
            "the refusal says why: {body}"
        );
    }
    ctx.assert_quiet_and_consistent().await;
}

/// The console in Debian's headless Chromium, driven by Playwright (`console/tests/`): sign
/// in, create a project and an instance (a real QEMU guest), watch it run, its serial console
/// (banner, heartbeats, a command typed), stop it, a viewer refused, phone width and keyboard
/// navigation. The harness gives the tests the system through their environment:
/// `HALYARD_URL`, `HALYARD_TOKEN` (a fleet admin), `HALYARD_VIEWER_TOKEN` (a fleet viewer),
/// `HALYARD_SCREENSHOTS` (where every page's picture goes: `target/console-screenshots`).
#[tokio::test]
async fn the_console_in_a_real_browser() {
    let console = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../console");
    let ctx = TestContext::with_qemu(1).await;
    let (_, viewer) = user(&ctx, "viewer", Some("viewer")).await;
    let screenshots =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    if std::env::var_os("HALYARD_CONSOLE_HOLD").is_some() {
        // For working on the console: the system stays up for `npx playwright test` (or a
        // browser) run by hand with these lines, until the test is killed.
        eprintln!(
            "console test system up (HALYARD_CONSOLE_HOLD):\n\
             export HALYARD_URL={} HALYARD_TOKEN={} HALYARD_VIEWER_TOKEN={viewer} \
             HALYARD_SCREENSHOTS={}",
            base(&ctx),
            ctx.token,
            screenshots.display()
        );
        std::future::pending::<()>().await;
    }
    assert!(
        console.join("node_modules/@playwright/test").exists(),
        "the browser tests need their npm packages: `npm ci` in {} (the README's test command \
         does it)",
        console.display()
    );
    let mut command = tokio::process::Command::new("npx");
    command
        .args(["playwright", "test"])
        .current_dir(&console)
        .env("HALYARD_URL", base(&ctx))
        .env("HALYARD_TOKEN", &ctx.token)
        .env("HALYARD_VIEWER_TOKEN", &viewer)
        .env("HALYARD_SCREENSHOTS", &screenshots)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .kill_on_drop(true);
    let status = command.status().await.expect("running npx playwright test");
    assert!(
        status.success(),
        "the browser tests failed ({status}); their screenshots and traces are in {}",
        console.join("test-results").display()
    );
    // What the browser did is what the system holds: the instance it stopped is stopped.
    let stopped = ctx.sql(
        "SELECT count(*) FROM instance WHERE time_deleted IS NULL AND active_propolis_id IS NULL",
    );
    assert_ne!(stopped.trim(), "0", "the browser's instance is stopped");
    ctx.assert_quiet_and_consistent().await;
}
