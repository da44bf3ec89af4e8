//! The external API over HTTP: the official Oxide SDK unmodified, the generated client, and
//! bad input.

use crate::context::TestContext;
use futures::TryStreamExt;
use serde_json::{Value, json};
use std::time::Duration;

fn url(ctx: &TestContext) -> String {
    format!("http://{}", ctx.server().external_address())
}

/// Polls an instance through the SDK until it reaches `state` (or fails the test after 5 s).
async fn wait_for_sdk_state(
    client: &oxide::Client,
    name: &str,
    state: oxide::types::InstanceState,
) {
    use oxide::prelude::*;
    for _ in 0..500 {
        let view = client
            .instance_view()
            .project("demo")
            .instance(name)
            .send()
            .await
            .unwrap();
        if view.run_state == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} never reached {state:?}");
}

#[tokio::test]
async fn the_oxide_sdk_drives_the_system_unmodified() {
    use oxide::prelude::*;
    let ctx = TestContext::new().await;
    let client = crate::authn_support::sdk(&url(&ctx), &ctx.token);

    let project = client
        .project_create()
        .body_map(|b| b.name("demo").description("a demo"))
        .send()
        .await
        .unwrap();
    assert_eq!(project.name.to_string(), "demo");
    // The health check a load balancer asks (no token needed, but one is fine).
    let ping = client.ping().send().await.unwrap();
    assert_eq!(ping.status, oxide::types::PingStatus::Ok);
    for name in ["web-b", "web-a", "web-c"] {
        let created = client
            .instance_create()
            .project("demo")
            .body_map(|b| {
                b.name(name)
                    .description("")
                    .hostname(name)
                    .ncpus(2u16)
                    .memory(1073741824u64)
                    .start(false)
            })
            .send()
            .await
            .unwrap();
        assert_eq!(created.run_state, oxide::types::InstanceState::Stopped);
    }

    let started = client
        .instance_start()
        .project("demo")
        .instance("web-a")
        .send()
        .await
        .unwrap();
    assert!(matches!(
        started.run_state,
        oxide::types::InstanceState::Starting | oxide::types::InstanceState::Running
    ));
    wait_for_sdk_state(&client, "web-a", oxide::types::InstanceState::Running).await;

    client
        .instance_stop()
        .project("demo")
        .instance("web-a")
        .send()
        .await
        .unwrap();
    wait_for_sdk_state(&client, "web-a", oxide::types::InstanceState::Stopped).await;

    // Pagination: one item per page, both name orders.
    let names: Vec<String> = client
        .instance_list()
        .project("demo")
        .limit(1u32)
        .stream()
        .map_ok(|i| i.name.to_string())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(names, ["web-a", "web-b", "web-c"]);
    let names: Vec<String> = client
        .instance_list()
        .project("demo")
        .limit(2u32)
        .sort_by(oxide::types::NameOrIdSortMode::NameDescending)
        .stream()
        .map_ok(|i| i.name.to_string())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(names, ["web-c", "web-b", "web-a"]);

    client
        .instance_delete()
        .project("demo")
        .instance("web-a")
        .send()
        .await
        .unwrap();
    let err = client
        .instance_view()
        .project("demo")
        .instance("web-a")
        .send()
        .await
        .unwrap_err();
    match err {
        oxide::Error::ErrorResponse(e) => {
            assert_eq!(e.error_code.as_deref(), Some("ObjectNotFound"))
        }
        other => panic!("expected an error response, got {other}"),
    }
    let sleds: Vec<oxide::types::Sled> = client
        .sled_list()
        .limit(1u32)
        .stream()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(sleds.len(), 2);
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn the_generated_client_runs_the_lifecycle() {
    let ctx = TestContext::new().await;
    let client = halyard_nexus_external_client::Client::new_with_client(
        &url(&ctx),
        crate::authn_support::http_client(&ctx.token),
    );
    let name = |n: &str| n.parse::<halyard_common::Name>().unwrap();
    let project = halyard_common::NameOrId::Name(name("p"));
    client
        .project_create()
        .body_map(|b| b.name(name("p")).description(""))
        .send()
        .await
        .unwrap();
    let created = client
        .instance_create()
        .project(project.clone())
        .body_map(|b| {
            b.name(name("vm"))
                .description("")
                .hostname("vm")
                .ncpus(1u16)
                .memory(halyard_common::ByteCount::from_mebibytes_u32(256))
                .start(true)
        })
        .send()
        .await
        .unwrap()
        .into_inner();
    let id = created.id;
    let by_id =
        halyard_common::NameOrId::Id(halyard_common::ids::GenericUuid::into_untyped_uuid(id));
    ctx.wait_for(id, halyard_common::InstanceState::Running)
        .await;
    let view = client
        .instance_view()
        .instance(by_id.clone())
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(view.run_state, halyard_common::InstanceState::Running);
    client
        .instance_reboot()
        .instance(by_id.clone())
        .send()
        .await
        .unwrap();
    ctx.wait_for(id, halyard_common::InstanceState::Running)
        .await;
    client
        .instance_stop()
        .instance(by_id.clone())
        .send()
        .await
        .unwrap();
    ctx.wait_for(id, halyard_common::InstanceState::Stopped)
        .await;
    client
        .instance_delete()
        .instance(by_id)
        .send()
        .await
        .unwrap();
    client
        .project_delete()
        .project(project)
        .send()
        .await
        .unwrap();
    ctx.assert_quiet_and_consistent().await;
}

/// Sends a raw request; returns the status and the parsed body.
async fn raw(
    ctx: &TestContext,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = crate::authn_support::http_client(&ctx.token)
        .request(method, format!("{}{path}", url(ctx)));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn assert_error(status: u16, body: &Value, expected_status: u16, code: Option<&str>) {
    assert_eq!(status, expected_status, "{body}");
    assert!(body["request_id"].is_string(), "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    if let Some(code) = code {
        assert_eq!(body["error_code"], code, "{body}");
    }
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    use reqwest::Method;
    let ctx = TestContext::new().await;
    let (status, _) = raw(
        &ctx,
        Method::POST,
        "/v1/projects",
        Some(json!({"name": "p", "description": ""})),
    )
    .await;
    assert_eq!(status, 201);
    let instance = |name: &str, ncpus: u64, memory: u64| json!({"name": name, "description": "", "hostname": "h", "ncpus": ncpus, "memory": memory, "start": false});
    let snapshot = || {
        ctx.sql("SELECT (SELECT count(*) FROM project), (SELECT count(*) FROM instance), (SELECT count(*) FROM vmm), (SELECT count(*) FROM saga WHERE saga_state != 'done')")
    };
    let before = snapshot();

    for name in [
        "Bad",
        "1abc",
        "a_b",
        "ends-",
        "deadbeef-0000-4000-8000-000000000000",
        "",
    ] {
        let (status, body) = raw(
            &ctx,
            Method::POST,
            "/v1/projects",
            Some(json!({"name": name, "description": ""})),
        )
        .await;
        assert_error(status, &body, 400, None);
        let (status, body) = raw(
            &ctx,
            Method::POST,
            "/v1/instances?project=p",
            Some(instance(name, 1, 1 << 30)),
        )
        .await;
        assert_error(status, &body, 400, None);
    }
    for (ncpus, memory, label) in [
        (0, 1 << 30, "ncpus"),
        (65, 1 << 30, "ncpus"),
        (1, 0, "memory"),
        (1, 1 << 50, "memory"),
        (1, 1000, "memory"),
    ] {
        let (status, body) = raw(
            &ctx,
            Method::POST,
            "/v1/instances?project=p",
            Some(instance("vm", ncpus, memory)),
        )
        .await;
        assert_error(status, &body, 400, Some("InvalidValue"));
        assert!(body["message"].as_str().unwrap().contains(label), "{body}");
    }
    let (status, body) = raw(
        &ctx,
        Method::POST,
        "/v1/instances?project=p",
        Some(instance("vm", u64::MAX, 1 << 30)),
    )
    .await;
    assert_error(status, &body, 400, None);
    let (status, body) = raw(
        &ctx,
        Method::POST,
        "/v1/instances?project=nope",
        Some(instance("vm", 1, 1 << 30)),
    )
    .await;
    assert_error(status, &body, 404, Some("ObjectNotFound"));
    let (status, body) = raw(&ctx, Method::GET, "/v1/instances/nope?project=p", None).await;
    assert_error(status, &body, 404, Some("ObjectNotFound"));
    let (status, body) = raw(&ctx, Method::GET, "/v1/instances/vm", None).await;
    assert_error(status, &body, 400, Some("InvalidRequest"));
    let (status, body) = raw(&ctx, Method::POST, "/v1/instances?project=p", Some(json!({"name": "vm", "disks": [{"type": "attach", "name": "d"}], "description": "", "hostname": "h", "ncpus": 1, "memory": 1 << 30}))).await;
    // Disks are built: attaching one that does not exist is 404 (and creates no instance).
    assert_error(status, &body, 404, Some("ObjectNotFound"));
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("disk with name \"d\""),
        "{body}"
    );
    let response = reqwest::Client::new()
        .post(format!("{}/v1/projects", url(&ctx)))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let response = reqwest::Client::new()
        .get(format!("{}/v1/projects", url(&ctx)))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(snapshot(), before, "bad requests changed the database");

    // A running instance cannot be deleted; a deleted one cannot be started.
    let (status, body) = raw(&ctx, Method::POST, "/v1/instances?project=p", Some(json!({"name": "vm", "description": "", "hostname": "vm", "ncpus": 1, "memory": 1 << 30, "start": true}))).await;
    assert_eq!(status, 201, "{body}");
    let id: halyard_common::ids::InstanceUuid = body["id"].as_str().unwrap().parse().unwrap();
    ctx.wait_for(id, halyard_common::InstanceState::Running)
        .await;
    let (status, body) = raw(&ctx, Method::DELETE, "/v1/instances/vm?project=p", None).await;
    assert_error(status, &body, 409, Some("Conflict"));
    let (status, _) = raw(&ctx, Method::POST, "/v1/instances/vm/stop?project=p", None).await;
    assert_eq!(status, 202);
    ctx.wait_for(id, halyard_common::InstanceState::Stopped)
        .await;
    let (status, _) = raw(&ctx, Method::DELETE, "/v1/instances/vm?project=p", None).await;
    assert_eq!(status, 204);
    let (status, body) = raw(
        &ctx,
        Method::POST,
        &format!("/v1/instances/{id}/start"),
        None,
    )
    .await;
    assert_error(status, &body, 404, Some("ObjectNotFound"));
    // A project with instances cannot be deleted... this one is empty again.
    let (status, _) = raw(&ctx, Method::DELETE, "/v1/projects/p", None).await;
    assert_eq!(status, 204);
    ctx.assert_quiet_and_consistent().await;
}

#[tokio::test]
async fn migrations_are_requested_and_visible_through_the_api() {
    use reqwest::Method;
    let ctx = TestContext::new().await;
    raw(
        &ctx,
        Method::POST,
        "/v1/projects",
        Some(json!({"name": "p", "description": ""})),
    )
    .await;
    let (status, body) = raw(&ctx, Method::POST, "/v1/instances?project=p", Some(json!({"name": "vm", "description": "", "hostname": "vm", "ncpus": 1, "memory": 1 << 30}))).await;
    assert_eq!(status, 201, "{body}");
    let id: halyard_common::ids::InstanceUuid = body["id"].as_str().unwrap().parse().unwrap();
    ctx.wait_for(id, halyard_common::InstanceState::Running)
        .await;

    let unknown = uuid::Uuid::new_v4();
    let (status, body) = raw(
        &ctx,
        Method::POST,
        "/v1/instances/vm/migrate?project=p",
        Some(json!({"dst_sled_id": unknown})),
    )
    .await;
    assert_error(status, &body, 404, Some("ObjectNotFound"));

    let (status, body) = raw(
        &ctx,
        Method::POST,
        "/v1/instances/vm/migrate?project=p",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(
        body["migration_id"].is_string(),
        "the view shows the migration: {body}"
    );
    ctx.eventually("the migration to complete", async |ctx: &TestContext| {
        let (_, list) = raw(
            ctx,
            Method::GET,
            "/v1/instances/vm/migrations?project=p",
            None,
        )
        .await;
        // The refused migration (to an unknown sled) left no record: bad input changes
        // nothing.
        list.as_array().is_some_and(|l| {
            l.len() == 1
                && l[0]["time_deleted"].is_null()
                && l[0]["source_state"] == "completed"
                && l[0]["target_state"] == "completed"
        })
    })
    .await;
    ctx.eventually(
        "the instance to run on its target",
        async |ctx: &TestContext| {
            let (_, view) = raw(ctx, Method::GET, "/v1/instances/vm?project=p", None).await;
            view["run_state"] == "running" && view["migration_id"].is_null()
        },
    )
    .await;
    ctx.assert_quiet_and_consistent().await;
}
