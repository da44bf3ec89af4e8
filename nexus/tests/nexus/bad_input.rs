//! Bad input, table-driven: malformed requests to every external and internal endpoint each
//! get a 4xx with the error body (request_id, message, and our error code where the request
//! reached our code), and the invariant checker and a snapshot confirm nothing changed.

use crate::context::TestContext;
use serde_json::Value;

enum Api {
    External,
    Internal,
}

struct Case {
    api: Api,
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: String,
}

fn case(api: Api, method: &'static str, path: impl Into<String>, body: impl Into<String>) -> Case {
    Case {
        api,
        method,
        path: path.into(),
        content_type: "application/json",
        body: body.into(),
    }
}

#[tokio::test]
async fn malformed_requests_to_every_endpoint_get_4xx_and_change_nothing() {
    use Api::*;
    let ctx = TestContext::new().await;
    let project = ctx.project("p").await;
    let id = ctx.instance(&project, "vm", 1).await;
    let sled = ctx.sleds[0].agent().id();
    let unknown = uuid::Uuid::new_v4();
    let huge = format!(
        "{{\"name\": \"p2\", \"description\": \"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let instance_body = |ncpus: &str, memory: &str, name: &str| {
        format!(
            "{{\"name\": \"{name}\", \"description\": \"\", \"hostname\": \"h\", \"ncpus\": {ncpus}, \"memory\": {memory}}}"
        )
    };

    let mut cases = vec![
        // Projects.
        case(External, "POST", "/v1/projects", "{\"name\": "),
        case(External, "POST", "/v1/projects", "[]"),
        case(
            External,
            "POST",
            "/v1/projects",
            "{\"name\": 5, \"description\": \"\"}",
        ),
        case(
            External,
            "POST",
            "/v1/projects",
            "{\"name\": \"Bad Name\", \"description\": \"\"}",
        ),
        case(
            External,
            "POST",
            "/v1/projects",
            "{\"name\": \"p\", \"description\": \"\"}",
        ), // taken
        case(External, "POST", "/v1/projects", huge),
        case(External, "GET", format!("/v1/projects/{unknown}"), ""),
        case(External, "GET", "/v1/projects/NOT_A_NAME", ""),
        case(External, "DELETE", "/v1/projects/nope", ""),
        case(External, "DELETE", "/v1/projects/p", ""), // not empty
        case(External, "GET", "/v1/projects?limit=0", ""),
        case(External, "GET", "/v1/projects?sort_by=sideways", ""),
        case(External, "GET", "/v1/projects?page_token=garbage", ""),
        // Instances.
        case(External, "GET", "/v1/instances", ""),
        case(
            External,
            "POST",
            "/v1/instances?project=p",
            instance_body("0", "1073741824", "a"),
        ),
        case(
            External,
            "POST",
            "/v1/instances?project=p",
            instance_body("-1", "1073741824", "a"),
        ),
        case(
            External,
            "POST",
            "/v1/instances?project=p",
            instance_body("1000", "1073741824", "a"),
        ),
        case(
            External,
            "POST",
            "/v1/instances?project=p",
            instance_body("1", "0", "a"),
        ),
        case(
            External,
            "POST",
            "/v1/instances?project=p",
            instance_body("1", "-5", "a"),
        ),
        case(
            External,
            "POST",
            "/v1/instances?project=p",
            instance_body("1", "99999999999999999999", "a"),
        ),
        case(
            External,
            "POST",
            "/v1/instances?project=p",
            instance_body("1", "1073741824", "-bad"),
        ),
        case(
            External,
            "POST",
            "/v1/instances?project=p",
            instance_body("1", "1073741824", "vm"),
        ), // taken
        case(
            External,
            "POST",
            "/v1/instances?project=nope",
            instance_body("1", "1073741824", "a"),
        ),
        case(
            External,
            "POST",
            "/v1/instances",
            instance_body("1", "1073741824", "a"),
        ),
        case(External, "GET", "/v1/instances/vm", ""),
        case(External, "GET", format!("/v1/instances/{id}?project=p"), ""),
        case(External, "GET", format!("/v1/instances/{unknown}"), ""),
        case(
            External,
            "POST",
            format!("/v1/instances/{unknown}/start"),
            "",
        ),
        case(
            External,
            "POST",
            format!("/v1/instances/{unknown}/stop"),
            "",
        ),
        case(External, "POST", "/v1/instances/vm/reboot?project=p", ""), // not running
        case(External, "POST", "/v1/instances/vm/migrate?project=p", "{}"), // not running
        case(
            External,
            "POST",
            "/v1/instances/vm/migrate?project=p",
            "{\"dst_sled_id\": 3}",
        ),
        case(External, "DELETE", "/v1/instances/nope?project=p", ""),
        case(
            External,
            "GET",
            "/v1/instances/nope/migrations?project=p",
            "",
        ),
        // Serial console.
        case(
            External,
            "GET",
            "/v1/instances/vm/serial-console?project=p&from_start=0&most_recent=0",
            "",
        ), // both offsets
        case(
            External,
            "GET",
            "/v1/instances/vm/serial-console?project=p",
            "",
        ), // neither
        case(
            External,
            "GET",
            "/v1/instances/vm/serial-console?project=p&from_start=-1",
            "",
        ),
        case(
            External,
            "GET",
            "/v1/instances/vm/serial-console?project=p&from_start=0",
            "",
        ), // not running
        case(
            External,
            "GET",
            "/v1/instances/nope/serial-console?project=p&most_recent=5",
            "",
        ),
        case(
            External,
            "GET",
            "/v1/instances/vm/serial-console?from_start=0",
            "",
        ), // a name without its project
        case(
            External,
            "GET",
            "/v1/instances/vm/serial-console/stream?project=p",
            "",
        ), // not a WebSocket request
        case(
            External,
            "GET",
            "/v1/instances/vm/serial-console/stream?project=p&most_recent=x",
            "",
        ),
        case(External, "GET", "/v1/system/hardware/sleds?limit=-1", ""),
        // Internal API.
        case(
            Internal,
            "PUT",
            format!("/sled-agents/{sled}"),
            "{\"address\": \"not an address\"}",
        ),
        case(Internal, "PUT", "/sled-agents/not-a-uuid", "{}"),
        case(
            Internal,
            "PUT",
            format!("/sled-agents/{sled}"),
            "{\"address\": \"127.0.0.1:1\", \"backend\": \"sim\", \"hardware_threads\": -1, \"physical_ram\": 1}",
        ),
        case(
            Internal,
            "PUT",
            format!("/vmms/{unknown}"),
            "{\"vmm_state\": {\"state\": \"running\", \"generation\": 2, \"time_updated\": \"2026-01-01T00:00:00Z\"}, \"migration_in\": null, \"migration_out\": null}",
        ),
        case(
            Internal,
            "PUT",
            format!("/vmms/{unknown}"),
            "{\"vmm_state\": {\"state\": \"levitating\", \"generation\": 2, \"time_updated\": \"2026-01-01T00:00:00Z\"}}",
        ),
        case(
            Internal,
            "PUT",
            format!("/vmms/{unknown}"),
            "{\"vmm_state\": {\"state\": \"running\", \"generation\": 0, \"time_updated\": \"2026-01-01T00:00:00Z\"}}",
        ),
        case(Internal, "POST", "/sleds/not-a-uuid/expunge", ""),
        case(Internal, "POST", format!("/sleds/{unknown}/expunge"), ""), // unknown sled
    ];
    let mut wrong_type = case(External, "POST", "/v1/projects", "name=p");
    wrong_type.content_type = "application/x-www-form-urlencoded";
    cases.push(wrong_type);
    let mut wrong_type = case(
        External,
        "POST",
        "/v1/projects",
        "{\"name\": \"p3\", \"description\": \"\"}",
    );
    wrong_type.content_type = "text/plain";
    cases.push(wrong_type);

    let snapshot = || {
        ctx.sql("SELECT (SELECT string_agg(name || ':' || rcgen, ',' ORDER BY name) FROM project), \
                        (SELECT string_agg(name || ':' || nexus_state || ':' || state_generation, ',' ORDER BY name) FROM instance), \
                        (SELECT count(*) FROM vmm), (SELECT count(*) FROM migration), \
                        (SELECT string_agg(id::text || ':' || usable_hardware_threads || ':' || reserved_hardware_threads, ',' ORDER BY id) FROM sled), \
                        (SELECT count(*) FROM saga WHERE saga_state != 'done')")
    };
    let before = snapshot();
    let http = reqwest::Client::new();
    let mut problems = Vec::new();
    for case in &cases {
        let address = match case.api {
            External => ctx.server.external_address(),
            Internal => ctx.server.internal_address(),
        };
        let mut request = http
            .request(
                case.method.parse().unwrap(),
                format!("http://{address}{}", case.path),
            )
            .header("content-type", case.content_type);
        if !case.body.is_empty() {
            request = request.body(case.body.clone());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let what = format!("{} {} ({} bytes)", case.method, case.path, case.body.len());
        if !(400..500).contains(&status) {
            problems.push(format!("{what}: expected a 4xx, got {status}: {body}"));
        } else if !body["request_id"].is_string()
            || body["message"].as_str().is_none_or(str::is_empty)
        {
            problems.push(format!("{what}: {status} without the error body: {body}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    ctx.assert_quiet_and_consistent().await;
    assert_eq!(snapshot(), before, "a bad request changed the database");
}
