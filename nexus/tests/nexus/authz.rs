//! Authorization: every operation of the external API, tried as every kind of caller, against
//! the expected statuses in `authz_expected.txt` (one row per operation id; the test fails
//! for an operation without a row and for a row without an operation).
//!
//! The callers: no token, a revoked token, the project's viewer, collaborator and admin, a
//! user who holds roles only on another project, and a fleet operator (fleet admin). Each
//! request that may change state (every method but GET) runs against its own fresh project
//! and instance (with an interface in the project's default VPC), so no result depends on
//! what ran before it.

use crate::authn_support::http_client;
use crate::context::TestContext;
use halyard_common::ids::{GenericUuid, UserUuid};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The callers, in the expected file's column order.
const CALLERS: [&str; 7] = [
    "no_token",
    "revoked",
    "viewer",
    "collaborator",
    "admin",
    "other_project",
    "fleet_operator",
];

struct Caller {
    name: &'static str,
    client: reqwest::Client,
}

struct Users {
    callers: Vec<Caller>,
    viewer: UserUuid,
    collaborator: UserUuid,
    admin: UserUuid,
}

impl Users {
    fn client(&self, name: &str) -> &reqwest::Client {
        &self.callers.iter().find(|c| c.name == name).unwrap().client
    }
}

fn base(ctx: &TestContext) -> String {
    format!("http://{}", ctx.server().external_address())
}

/// A user of the default silo with a token, optionally a fleet admin.
async fn user(ctx: &TestContext, name: &str, fleet_admin: bool) -> (UserUuid, String) {
    let datastore = ctx.nexus().datastore();
    let user = datastore
        .user_create(halyard_db_model::default_silo_id(), name.parse().unwrap())
        .await
        .unwrap();
    if fleet_admin {
        datastore
            .fleet_role_grant(user.id(), "admin")
            .await
            .unwrap();
    }
    let (_, secret) = datastore.token_create(user.id(), None).await.unwrap();
    (user.id(), secret.expose().to_string())
}

async fn users(ctx: &TestContext) -> Users {
    let (viewer, viewer_token) = user(ctx, "viewer", false).await;
    let (collaborator, collaborator_token) = user(ctx, "collaborator", false).await;
    let (admin, admin_token) = user(ctx, "admin", false).await;
    let (_, other_token) = user(ctx, "other", false).await;
    let (_, operator_token) = user(ctx, "operator", true).await;
    // A token of the project's admin, revoked: its holder would be allowed everything.
    let (revoked, revoked_secret) = ctx
        .nexus()
        .datastore()
        .token_create(admin, None)
        .await
        .unwrap();
    ctx.nexus()
        .datastore()
        .token_revoke(revoked.id())
        .await
        .unwrap();
    // The other project's user is its admin (by creating it).
    let other = http_client(&other_token);
    let created = other
        .post(format!("{}/v1/projects", base(ctx)))
        .json(&json!({"name": "elsewhere", "description": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let callers = vec![
        Caller {
            name: "no_token",
            client: reqwest::Client::new(),
        },
        Caller {
            name: "revoked",
            client: http_client(revoked_secret.expose()),
        },
        Caller {
            name: "viewer",
            client: http_client(&viewer_token),
        },
        Caller {
            name: "collaborator",
            client: http_client(&collaborator_token),
        },
        Caller {
            name: "admin",
            client: http_client(&admin_token),
        },
        Caller {
            name: "other_project",
            client: other,
        },
        Caller {
            name: "fleet_operator",
            client: http_client(&operator_token),
        },
    ];
    Users {
        callers,
        viewer,
        collaborator,
        admin,
    }
}

/// A project whose admin created it and gave the viewer and collaborator their roles, and
/// (unless `empty`) a stopped instance and a disk in it.
struct Fixture {
    project: String,
    project_id: String,
    instance_id: Option<String>,
    disk_id: Option<String>,
    snapshot_id: Option<String>,
    /// The project's `default` VPC and subnet.
    vpc_id: String,
    subnet_id: String,
    /// An interface of the instance, in the default subnet.
    nic_id: Option<String>,
}

async fn fixture(ctx: &TestContext, users: &Users, name: &str, empty: bool) -> Fixture {
    let admin = users.client("admin");
    let created: Value = admin
        .post(format!("{}/v1/projects", base(ctx)))
        .json(&json!({"name": name, "description": ""}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let policy = json!({"role_assignments": [
        {"identity_id": users.admin.into_untyped_uuid(), "identity_type": "silo_user", "role_name": "admin"},
        {"identity_id": users.collaborator.into_untyped_uuid(), "identity_type": "silo_user", "role_name": "collaborator"},
        {"identity_id": users.viewer.into_untyped_uuid(), "identity_type": "silo_user", "role_name": "viewer"},
    ]});
    admin
        .put(format!("{}/v1/projects/{name}/policy", base(ctx)))
        .json(&policy)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let instance_id = if empty {
        None
    } else {
        let instance: Value = admin
            .post(format!("{}/v1/instances?project={name}", base(ctx)))
            .json(&instance_body("inst"))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        Some(instance["id"].as_str().unwrap().to_string())
    };
    let disk_id = if empty {
        None
    } else {
        let disk: Value = admin
            .post(format!("{}/v1/disks?project={name}", base(ctx)))
            .json(&disk_body("disk"))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        Some(disk["id"].as_str().unwrap().to_string())
    };
    let snapshot_id = match &disk_id {
        None => None,
        Some(disk_id) => {
            let snapshot: Value = admin
                .post(format!("{}/v1/snapshots?project={name}", base(ctx)))
                .json(&json!({"name": "snap", "description": "", "disk": disk_id}))
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap()
                .json()
                .await
                .unwrap();
            Some(snapshot["id"].as_str().unwrap().to_string())
        }
    };
    let get_id = async |path: String| -> String {
        let found: Value = admin
            .get(format!("{}{path}", base(ctx)))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        found["id"].as_str().unwrap().to_string()
    };
    let vpc_id = get_id(format!("/v1/vpcs/default?project={name}")).await;
    let subnet_id = get_id(format!(
        "/v1/vpc-subnets/default?project={name}&vpc=default"
    ))
    .await;
    // The instance's default interface, which its create made.
    let nic_id = match &instance_id {
        None => None,
        Some(instance_id) => Some(
            get_id(format!(
                "/v1/network-interfaces/net0?instance={instance_id}"
            ))
            .await,
        ),
    };
    Fixture {
        project: name.to_string(),
        project_id: created["id"].as_str().unwrap().to_string(),
        instance_id,
        disk_id,
        snapshot_id,
        vpc_id,
        subnet_id,
        nic_id,
    }
}

/// An interface in the project's default subnet.
fn nic_body(name: &str) -> Value {
    json!({"name": name, "description": "", "vpc_name": "default", "subnet_name": "default"})
}

/// A small blank disk.
fn disk_body(name: &str) -> Value {
    json!({
        "name": name,
        "description": "",
        "size": 1024 * 1024,
        "disk_backend": {"type": "distributed", "disk_source": {"type": "blank", "block_size": 512}},
    })
}

fn instance_body(name: &str) -> Value {
    json!({
        "name": name,
        "description": "",
        "hostname": name,
        "ncpus": 1,
        "memory": 1024u64 * 1024 * 1024,
        "start": false,
    })
}

/// The request an operation is tried with: method, path and query, a JSON body or a form
/// (the device login's, as OAuth has it), and whether it is a WebSocket upgrade.
struct Request {
    method: reqwest::Method,
    path: String,
    body: Option<Value>,
    form: Option<Vec<(&'static str, String)>>,
    websocket: bool,
}

fn request(ctx: &TestContext, operation: &str, users: &Users, f: &Fixture) -> Request {
    let instance = f.instance_id.clone().unwrap_or_default();
    let disk = f.disk_id.clone().unwrap_or_default();
    let snapshot = f.snapshot_id.clone().unwrap_or_default();
    let nic = f.nic_id.clone().unwrap_or_default();
    let (vpc, subnet) = (&f.vpc_id, &f.subnet_id);
    let project = &f.project;
    let get = |path: String| Request {
        method: reqwest::Method::GET,
        path,
        body: None,
        form: None,
        websocket: false,
    };
    let with = |method: reqwest::Method, path: String, body: Option<Value>| Request {
        method,
        path,
        body,
        form: None,
        websocket: false,
    };
    let form = |path: &str, fields: Vec<(&'static str, String)>| Request {
        method: reqwest::Method::POST,
        path: path.to_string(),
        body: None,
        form: Some(fields),
        websocket: false,
    };
    use reqwest::Method as M;
    match operation {
        "device_auth_request" => form(
            "/device/auth",
            vec![("client_id", uuid::Uuid::new_v4().to_string())],
        ),
        // A user code no device login has.
        "device_auth_confirm" => with(
            M::POST,
            "/device/confirm".into(),
            Some(json!({"user_code": "BCDF-GHJK"})),
        ),
        // A device code no login has.
        "device_access_token" => form(
            "/device/token",
            vec![
                ("client_id", uuid::Uuid::new_v4().to_string()),
                ("device_code", "unknown".to_string()),
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:device_code".to_string(),
                ),
            ],
        ),
        "current_user_view" => get("/v1/me".into()),
        "project_list" => get("/v1/projects".into()),
        "project_create" => with(
            M::POST,
            "/v1/projects".into(),
            Some(json!({"name": format!("{project}-new"), "description": ""})),
        ),
        "project_view" => get(format!("/v1/projects/{project}")),
        "project_delete" => with(M::DELETE, format!("/v1/projects/{project}"), None),
        "project_policy_view" => get(format!("/v1/projects/{project}/policy")),
        "project_policy_update" => with(
            M::PUT,
            format!("/v1/projects/{project}/policy"),
            Some(json!({"role_assignments": [
                {"identity_id": users.admin.into_untyped_uuid(), "identity_type": "silo_user", "role_name": "admin"},
            ]})),
        ),
        "instance_list" => get(format!("/v1/instances?project={project}")),
        "instance_create" => with(
            M::POST,
            format!("/v1/instances?project={project}"),
            Some(instance_body("created")),
        ),
        "ping" => get("/v1/ping".to_string()),
        "instance_view" => get(format!("/v1/instances/{instance}")),
        "instance_delete" => with(M::DELETE, format!("/v1/instances/{instance}"), None),
        "instance_update" => with(
            M::PUT,
            format!("/v1/instances/{instance}"),
            Some(json!({
                "ncpus": 2, "memory": 1073741824, "auto_restart_policy": "never",
                "boot_disk": null, "cpu_platform": null, "enable_jumbo_frames": false,
            })),
        ),
        "instance_start" => with(M::POST, format!("/v1/instances/{instance}/start"), None),
        "instance_stop" => with(M::POST, format!("/v1/instances/{instance}/stop"), None),
        "instance_reboot" => with(M::POST, format!("/v1/instances/{instance}/reboot"), None),
        "instance_migrate" => with(
            M::POST,
            format!("/v1/instances/{instance}/migrate"),
            Some(json!({"dst_sled_id": ctx.sled_id(1)})),
        ),
        "instance_migration_list" => get(format!("/v1/instances/{instance}/migrations")),
        "instance_vmm_list" => get(format!("/v1/instances/{instance}/vmms")),
        "instance_disk_list" => get(format!("/v1/instances/{instance}/disks")),
        // A disk no one has: past authorization, the disk's own 404.
        "instance_disk_attach" => with(
            M::POST,
            format!("/v1/instances/{instance}/disks/attach"),
            Some(json!({"disk": uuid::Uuid::new_v4()})),
        ),
        "instance_disk_detach" => with(
            M::POST,
            format!("/v1/instances/{instance}/disks/detach"),
            Some(json!({"disk": uuid::Uuid::new_v4()})),
        ),
        "instance_serial_console" => get(format!(
            "/v1/instances/{instance}/serial-console?most_recent=100"
        )),
        "instance_serial_console_stream" => Request {
            websocket: true,
            ..get(format!(
                "/v1/instances/{instance}/serial-console/stream?most_recent=100"
            ))
        },
        "disk_list" => get(format!("/v1/disks?project={project}")),
        "disk_create" => with(
            M::POST,
            format!("/v1/disks?project={project}"),
            Some(disk_body("created")),
        ),
        "disk_view" => get(format!("/v1/disks/{disk}")),
        "disk_delete" => with(M::DELETE, format!("/v1/disks/{disk}"), None),
        "snapshot_list" => get(format!("/v1/snapshots?project={project}")),
        "snapshot_create" => with(
            M::POST,
            format!("/v1/snapshots?project={project}"),
            Some(json!({"name": "created", "description": "", "disk": disk})),
        ),
        "snapshot_view" => get(format!("/v1/snapshots/{snapshot}")),
        "snapshot_delete" => with(M::DELETE, format!("/v1/snapshots/{snapshot}"), None),
        "vpc_list" => get(format!("/v1/vpcs?project={project}")),
        "vpc_create" => with(
            M::POST,
            format!("/v1/vpcs?project={project}"),
            Some(json!({"name": "created", "description": "", "dns_name": "created"})),
        ),
        "vpc_view" => get(format!("/v1/vpcs/{vpc}")),
        // The default VPC holds the instance's interface: past authorization, 409.
        "vpc_delete" => with(M::DELETE, format!("/v1/vpcs/{vpc}"), None),
        "vpc_subnet_list" => get(format!("/v1/vpc-subnets?vpc={vpc}")),
        "vpc_subnet_create" => with(
            M::POST,
            format!("/v1/vpc-subnets?vpc={vpc}"),
            Some(json!({"name": "created", "description": "", "ipv4_block": "10.1.0.0/24"})),
        ),
        "vpc_subnet_view" => get(format!("/v1/vpc-subnets/{subnet}")),
        // Holds the instance's interface: past authorization, 409.
        "vpc_subnet_delete" => with(M::DELETE, format!("/v1/vpc-subnets/{subnet}"), None),
        "instance_network_interface_list" => {
            get(format!("/v1/network-interfaces?instance={instance}"))
        }
        "instance_network_interface_create" => with(
            M::POST,
            format!("/v1/network-interfaces?instance={instance}"),
            Some(nic_body("created")),
        ),
        "instance_network_interface_view" => get(format!("/v1/network-interfaces/{nic}")),
        "instance_network_interface_delete" => {
            with(M::DELETE, format!("/v1/network-interfaces/{nic}"), None)
        }
        "sled_list" => get("/v1/system/hardware/sleds".into()),
        "system_saga_list" => get("/v1/system/sagas".into()),
        "system_background_task_list" => get("/v1/system/background-tasks".into()),
        "system_metrics" => get("/v1/system/metrics".into()),
        "login_token" => with(
            M::POST,
            "/v1/login/token".into(),
            Some(json!({"token": "halyard_not-a-token"})),
        ),
        "logout" => with(M::POST, "/v1/logout".into(), None),
        other => panic!(
            "operation {other} is in openapi/nexus-external.json but this test has no request \
             for it: add one here and its row to authz_expected.txt"
        ),
    }
}

/// Every operation id in the external API's OpenAPI document, with its method.
fn operations() -> BTreeMap<String, String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi/nexus-external.json");
    let document: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut operations = BTreeMap::new();
    for methods in document["paths"].as_object().unwrap().values() {
        for (method, operation) in methods.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap().to_string();
            operations.insert(id, method.to_uppercase());
        }
    }
    operations
}

/// The expected file: operation id → (caller → status).
fn expected() -> BTreeMap<String, BTreeMap<&'static str, u16>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/nexus/authz_expected.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields.len(),
            1 + CALLERS.len(),
            "authz_expected.txt: a row is an operation id and {} statuses: {line}",
            CALLERS.len()
        );
        let statuses = CALLERS
            .iter()
            .zip(&fields[1..])
            .map(|(caller, status)| (*caller, status.parse().unwrap()))
            .collect();
        assert!(
            rows.insert(fields[0].to_string(), statuses).is_none(),
            "authz_expected.txt: two rows for {}",
            fields[0]
        );
    }
    rows
}

async fn send(ctx: &TestContext, client: &reqwest::Client, request: &Request) -> (u16, Value) {
    let mut builder = client.request(
        request.method.clone(),
        format!("{}{}", base(ctx), request.path),
    );
    if let Some(body) = &request.body {
        builder = builder.json(body);
    }
    if let Some(fields) = &request.form {
        // The values are letters, digits, dashes and colons (escaped).
        let encoded: Vec<String> = fields
            .iter()
            .map(|(key, value)| format!("{key}={}", value.replace(':', "%3A")))
            .collect();
        builder = builder
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encoded.join("&"));
    }
    if request.websocket {
        builder = builder
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    }
    let response = builder.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn every_operation_as_every_caller_gets_the_expected_status() {
    // Sleds with storage: every fixture but an empty project's holds a disk.
    let ctx = TestContext::with_storage(3, halyard_common::ByteCount::from_gibibytes_u32(1)).await;
    let users = users(&ctx).await;
    let operations = operations();
    let expected = expected();

    let documented: BTreeSet<&String> = operations.keys().collect();
    let with_rows: BTreeSet<&String> = expected.keys().collect();
    let missing: Vec<_> = documented.difference(&with_rows).collect();
    let stale: Vec<_> = with_rows.difference(&documented).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "authz_expected.txt must have exactly one row per operation of \
         openapi/nexus-external.json: operations without a row {missing:?}; rows without an \
         operation {stale:?}"
    );

    // Reads share one fixture; every other request gets its own.
    let shared = fixture(&ctx, &users, "shared", false).await;
    let mut mismatches = Vec::new();
    let mut fresh = 0;
    for (operation, method) in &operations {
        for caller in &users.callers {
            let own;
            let f = if method == "GET" {
                &shared
            } else {
                fresh += 1;
                let empty = operation == "project_delete";
                own = fixture(&ctx, &users, &format!("fresh-{fresh}"), empty).await;
                &own
            };
            let request = request(&ctx, operation, &users, f);
            let (status, body) = send(&ctx, &caller.client, &request).await;
            let want = expected[operation][caller.name];
            if status != want {
                mismatches.push(format!(
                    "{operation} as {}: expected {want}, got {status} ({body})",
                    caller.name
                ));
            }
            // A refusal says nothing more than Oxide's error codes.
            match status {
                401 => assert_eq!(
                    body["error_code"], "Unauthorized",
                    "{operation} {}",
                    caller.name
                ),
                403 => assert_eq!(
                    body["error_code"], "Forbidden",
                    "{operation} {}",
                    caller.name
                ),
                _ => {}
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "statuses differ from authz_expected.txt:\n{}",
        mismatches.join("\n")
    );
    // The shared fixture's project was the one read.
    assert!(!shared.project_id.is_empty());
    ctx.assert_quiet_and_consistent().await;
}

/// A caller who may not read a resource gets exactly what a caller gets for a missing one:
/// same status, code and message, for every instance, disk and project operation (by id and
/// by name).
#[tokio::test]
async fn another_projects_resources_look_missing() {
    let ctx = TestContext::with_storage(3, halyard_common::ByteCount::from_gibibytes_u32(1)).await;
    let users = users(&ctx).await;
    let f = fixture(&ctx, &users, "hidden", false).await;
    let instance = f.instance_id.clone().unwrap();
    let disk = f.disk_id.clone().unwrap();
    let stranger = users.client("other_project");
    let admin = users.client("admin");

    let paths = [
        format!("/v1/projects/{}", f.project),
        format!("/v1/projects/{}", f.project_id),
        format!("/v1/projects/{}/policy", f.project),
        format!("/v1/instances?project={}", f.project),
        format!("/v1/instances/{instance}"),
        format!("/v1/instances/inst?project={}", f.project),
        format!("/v1/instances/{instance}/migrations"),
        format!("/v1/instances/{instance}/serial-console?most_recent=10"),
        format!("/v1/disks?project={}", f.project),
        format!("/v1/disks/{disk}"),
        format!("/v1/disks/disk?project={}", f.project),
    ];
    let mut hidden = Vec::new();
    for path in &paths {
        let request = Request {
            method: reqwest::Method::GET,
            path: path.clone(),
            body: None,
            form: None,
            websocket: false,
        };
        hidden.push(send(&ctx, stranger, &request).await);
    }
    // Now make them missing: delete the instance, the disk and its snapshot, then the
    // project (which refuses while it holds any of them).
    let snapshot = f.snapshot_id.clone().unwrap();
    for gone in [
        format!("instances/{instance}"),
        format!("snapshots/{snapshot}"),
        format!("disks/{disk}"),
    ] {
        let deleted = admin
            .delete(format!("{}/v1/{gone}", base(&ctx)))
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 204, "{gone}");
    }
    let deleted = admin
        .delete(format!("{}/v1/projects/{}", base(&ctx), f.project))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    for (path, (status, body)) in paths.iter().zip(hidden) {
        let request = Request {
            method: reqwest::Method::GET,
            path: path.clone(),
            body: None,
            form: None,
            websocket: false,
        };
        let (missing_status, missing_body) = send(&ctx, stranger, &request).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(missing_status, 404, "{path}: {missing_body}");
        assert_eq!(body["error_code"], missing_body["error_code"], "{path}");
        assert_eq!(body["message"], missing_body["message"], "{path}");
    }
}

/// A project's policy through the Oxide SDK, unmodified: read, replaced, and what it grants
/// takes effect on the next request.
#[tokio::test]
async fn the_sdk_reads_and_replaces_a_project_policy() {
    use oxide::prelude::*;
    let ctx = TestContext::with_sleds(0).await;
    let (admin, admin_token) = user(&ctx, "boss", false).await;
    let (viewer, viewer_token) = user(&ctx, "reader", false).await;
    let sdk = crate::authn_support::sdk(&base(&ctx), &admin_token);
    sdk.project_create()
        .body_map(|b| b.name("shared-work").description(""))
        .send()
        .await
        .unwrap();
    let policy = sdk
        .project_policy_view()
        .project("shared-work")
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(policy.role_assignments.len(), 1);
    assert_eq!(
        policy.role_assignments[0].identity_id,
        admin.into_untyped_uuid()
    );
    assert_eq!(
        policy.role_assignments[0].role_name,
        oxide::types::ProjectRole::Admin
    );

    let reader = crate::authn_support::sdk(&base(&ctx), &viewer_token);
    let refused = reader
        .project_view()
        .project("shared-work")
        .send()
        .await
        .unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(404));

    let mut assignments = policy.role_assignments.clone();
    assignments.push(oxide::types::ProjectRoleRoleAssignment {
        identity_id: viewer.into_untyped_uuid(),
        identity_type: oxide::types::IdentityType::SiloUser,
        role_name: oxide::types::ProjectRole::Viewer,
    });
    let updated = sdk
        .project_policy_update()
        .project("shared-work")
        .body(oxide::types::ProjectRolePolicy {
            role_assignments: assignments,
        })
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.role_assignments.len(), 2);

    reader
        .project_view()
        .project("shared-work")
        .send()
        .await
        .unwrap();
    // A viewer may not change the policy (403: the project is visible to them).
    let refused = reader
        .project_policy_update()
        .project("shared-work")
        .body(oxide::types::ProjectRolePolicy {
            role_assignments: vec![],
        })
        .send()
        .await
        .unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(403));
    // The viewer's project list shows the project; another user's does not.
    let (_, stranger_token) = user(&ctx, "stranger", false).await;
    let listed = |token: String| {
        let url = base(&ctx);
        async move {
            crate::authn_support::sdk(&url, &token)
                .project_list()
                .send()
                .await
                .unwrap()
                .into_inner()
                .items
                .into_iter()
                .map(|p| p.name.to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(viewer_token.clone()).await, ["shared-work"]);
    assert!(listed(stranger_token).await.is_empty());
}

/// A saga records who started it, so a resumed one still acts for them.
#[tokio::test]
async fn a_saga_carries_the_actor_who_started_it() {
    let ctx = TestContext::with_sleds(1).await;
    let (admin, admin_token) = user(&ctx, "starter", false).await;
    let client = http_client(&admin_token);
    let created = client
        .post(format!("{}/v1/projects", base(&ctx)))
        .json(&json!({"name": "sagas", "description": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created = client
        .post(format!("{}/v1/instances?project=sagas", base(&ctx)))
        .json(&instance_body("one"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    // steno's DAG keeps the parameters in its start node.
    let actors = ctx.sql(
        "SELECT p->>'kind' || ' ' || (p->>'user_id') FROM (SELECT \
         dag->'graph'->'nodes'->((dag->>'start_node')::int)->'Start'->'params'->'actor' AS p \
         FROM saga) AS s",
    );
    assert_eq!(actors.trim(), format!("user {admin}"));
}
