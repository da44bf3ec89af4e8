//! Bad input, table-driven: malformed requests to every external and internal endpoint each
//! get the status and error code their row expects, with the error body (request_id, message),
//! and a dump of every column of every table confirms nothing changed (no saga recorded
//! either). VPCs, subnets and network interfaces too: bad prefixes and blocks, reserved and
//! foreign addresses, unsupported IP stacks, selectors missing or contradicting. Strings carry NUL, control characters and non-ASCII text; numbers are negative,
//! too large for their type, or too large for Halyard; list limits are huge.
//!
//! Dropshot's own 400s (a body or path or query that does not parse into the endpoint's types)
//! carry no `error_code`: dropshot builds them before any Halyard code runs and offers no hook
//! to add one. Their rows expect `None`, and the test checks the code is really absent, so a
//! dropshot that starts sending one shows up here.

use crate::context::TestContext;
use halyard_common::MAX_DESCRIPTION_CHARS;
use serde_json::{Value, json};

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
    /// The status expected.
    status: u16,
    /// The error code expected: `None` for dropshot's own 400s, which have none (and for the
    /// few rows that expect success).
    code: Option<&'static str>,
}

fn case(
    api: Api,
    method: &'static str,
    path: impl Into<String>,
    body: impl Into<String>,
    status: u16,
    code: Option<&'static str>,
) -> Case {
    Case {
        api,
        method,
        path: path.into(),
        content_type: "application/json",
        body: body.into(),
        status,
        code,
    }
}

const INVALID_VALUE: Option<&str> = Some("InvalidValue");
const INVALID_REQUEST: Option<&str> = Some("InvalidRequest");
const NOT_FOUND: Option<&str> = Some("ObjectNotFound");
const ALREADY_EXISTS: Option<&str> = Some("ObjectAlreadyExists");
const CONFLICT: Option<&str> = Some("Conflict");
/// Dropshot's own 400: the request does not parse into the endpoint's types.
const UNPARSED: Option<&str> = None;

/// Strings no free-text field may hold: NUL (PostgreSQL cannot store it), other control
/// characters (terminal escapes, a bell, a carriage return, DEL, a C1 control).
const CONTROL_STRINGS: [&str; 6] = [
    "nul\0inside",
    "bell\x07",
    "escape \x1b[31mred",
    "carriage\rreturn",
    "delete\x7f",
    "c1 \u{85}next line",
];

/// Every row of every table, all columns, in a stable order, so that any change shows. The
/// only columns left out are the two a sled agent's periodic registration moves while the
/// test runs (the sled's `time_modified` and `time_last_seen`).
fn dump_every_table(ctx: &TestContext) -> String {
    let tables = ctx.sql(
        "SELECT table_name FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1",
    );
    let tables: Vec<&str> = tables.lines().collect();
    for expected in [
        "project",
        "instance",
        "vmm",
        "migration",
        "sled",
        "sled_reservation",
        "saga",
        "saga_node_event",
    ] {
        assert!(
            tables.contains(&expected),
            "table {expected} missing from {tables:?}"
        );
    }
    let mut dump = String::new();
    // The audit log records every mutating request, refused ones included: that is its job
    // (the authn tests check its rows), not a change a bad request made.
    for table in tables.into_iter().filter(|t| *t != "audit_log") {
        // A sled's registrations and a Nexus's heartbeats say they are alive: not state.
        let row = match table {
            "sled" => "to_jsonb(t) - 'time_modified' - 'time_last_seen'",
            "nexus" => "to_jsonb(t) - 'time_heartbeat'",
            _ => "to_jsonb(t)",
        };
        dump += &format!("== {table}\n");
        dump += &ctx.sql(&format!("SELECT ({row})::text FROM {table} t ORDER BY 1"));
        dump.push('\n');
    }
    dump
}

#[tokio::test]
async fn malformed_requests_to_every_endpoint_get_their_code_and_change_nothing() {
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
    let project_body = |name: &str, description: &str| {
        json!({"name": name, "description": description}).to_string()
    };
    let raw_instance_body = |ncpus: &str, memory: &str, name: &str| {
        format!(
            "{{\"name\": \"{name}\", \"description\": \"\", \"hostname\": \"h\", \"ncpus\": {ncpus}, \"memory\": {memory}}}"
        )
    };
    let instance_body = |name: &str, description: &str, hostname: &str| {
        json!({"name": name, "description": description, "hostname": hostname, "ncpus": 1,
               "memory": 1u64 << 30, "start": false})
        .to_string()
    };
    let create_instance = "/v1/instances?project=p";
    let update_instance = "/v1/instances/vm?project=p";
    let update_body = |ncpus: &str, memory: &str, policy: &str, platform: &str, boot: &str| {
        format!(
            "{{\"ncpus\": {ncpus}, \"memory\": {memory}, \"auto_restart_policy\": {policy}, \
             \"cpu_platform\": {platform}, \"boot_disk\": {boot}, \"enable_jumbo_frames\": false}}"
        )
    };
    let too_long = "é".repeat(MAX_DESCRIPTION_CHARS + 1);
    let create_vpc = "/v1/vpcs?project=p";
    let vpc_body = |name: &str, description: &str, ipv6_prefix: Option<&str>| {
        json!({"name": name, "description": description, "dns_name": "dns",
               "ipv6_prefix": ipv6_prefix})
        .to_string()
    };
    let create_subnet = "/v1/vpc-subnets?project=p&vpc=default";
    let subnet_body = |name: &str, block: &str| {
        json!({"name": name, "description": "", "ipv4_block": block}).to_string()
    };
    let create_nic = "/v1/network-interfaces?project=p&instance=vm";
    let nic_body = |name: &str, description: &str, vpc: &str, subnet: &str, ip_config: Value| {
        json!({"name": name, "description": description, "vpc_name": vpc,
               "subnet_name": subnet, "ip_config": ip_config})
        .to_string()
    };

    let mut cases = vec![
        // Projects.
        case(
            External,
            "POST",
            "/v1/projects",
            "{\"name\": ",
            400,
            UNPARSED,
        ),
        case(External, "POST", "/v1/projects", "[]", 400, UNPARSED),
        case(
            External,
            "POST",
            "/v1/projects",
            "{\"name\": 5, \"description\": \"\"}",
            400,
            UNPARSED,
        ),
        case(
            External,
            "POST",
            "/v1/projects",
            project_body("Bad Name", ""),
            400,
            UNPARSED,
        ),
        case(
            External,
            "POST",
            "/v1/projects",
            project_body("p", ""),
            400,
            ALREADY_EXISTS,
        ),
        case(External, "POST", "/v1/projects", huge, 400, UNPARSED),
        case(
            External,
            "POST",
            "/v1/projects",
            project_body("p2", &too_long),
            400,
            INVALID_VALUE,
        ),
        case(
            External,
            "POST",
            "/v1/projects",
            project_body("pröject", ""),
            400,
            UNPARSED,
        ),
        case(
            External,
            "GET",
            format!("/v1/projects/{unknown}"),
            "",
            404,
            NOT_FOUND,
        ),
        case(
            External,
            "GET",
            "/v1/projects/NOT_A_NAME",
            "",
            400,
            UNPARSED,
        ),
        case(External, "GET", "/v1/projects/p%00", "", 400, UNPARSED),
        case(
            External,
            "GET",
            "/v1/projects/pr%C3%B6ject",
            "",
            400,
            UNPARSED,
        ),
        case(External, "DELETE", "/v1/projects/nope", "", 404, NOT_FOUND),
        case(
            External,
            "DELETE",
            "/v1/projects/p",
            "",
            400,
            INVALID_REQUEST,
        ), // not empty
        case(External, "GET", "/v1/projects?limit=0", "", 400, UNPARSED),
        case(External, "GET", "/v1/projects?limit=-1", "", 400, UNPARSED),
        case(
            External,
            "GET",
            "/v1/projects?limit=4294967296",
            "",
            400,
            UNPARSED,
        ),
        case(
            External,
            "GET",
            "/v1/projects?limit=99999999999999999999999",
            "",
            400,
            UNPARSED,
        ),
        // A huge limit that fits its type is served, capped at the server's page size.
        case(
            External,
            "GET",
            "/v1/projects?limit=4294967295",
            "",
            200,
            None,
        ),
        case(
            External,
            "GET",
            "/v1/projects?sort_by=sideways",
            "",
            400,
            UNPARSED,
        ),
        case(
            External,
            "GET",
            "/v1/projects?page_token=garbage",
            "",
            400,
            UNPARSED,
        ),
        // Instances.
        case(External, "GET", "/v1/instances", "", 400, UNPARSED),
        case(
            External,
            "GET",
            "/v1/instances?project=p%00",
            "",
            400,
            UNPARSED,
        ),
        case(
            External,
            "GET",
            "/v1/instances?project=p&limit=0",
            "",
            400,
            UNPARSED,
        ),
        case(
            External,
            "GET",
            "/v1/instances?project=p&limit=4294967296",
            "",
            400,
            UNPARSED,
        ),
        case(
            External,
            "GET",
            "/v1/instances?project=p&limit=4294967295",
            "",
            200,
            None,
        ),
        case(
            External,
            "POST",
            create_instance,
            raw_instance_body("0", "1073741824", "a"),
            400,
            INVALID_VALUE,
        ),
        case(
            External,
            "POST",
            create_instance,
            raw_instance_body("-1", "1073741824", "a"),
            400,
            UNPARSED,
        ),
        case(
            External,
            "POST",
            create_instance,
            raw_instance_body("1000", "1073741824", "a"),
            400,
            INVALID_VALUE,
        ),
        case(
            External,
            "POST",
            create_instance,
            raw_instance_body("65536", "1073741824", "a"),
            400,
            UNPARSED,
        ),
        case(
            External,
            "POST",
            create_instance,
            raw_instance_body("1e30", "1073741824", "a"),
            400,
            UNPARSED,
        ),
        case(
            External,
            "POST",
            create_instance,
            raw_instance_body("1", "0", "a"),
            400,
            INVALID_VALUE,
        ),
        case(
            External,
            "POST",
            create_instance,
            raw_instance_body("1", "-5", "a"),
            400,
            UNPARSED,
        ),
        case(
            External,
            "POST",
            create_instance,
            raw_instance_body("1", "99999999999999999999", "a"),
            400,
            UNPARSED,
        ),
        // Beyond what a size may be (the database's INT8).
        case(
            External,
            "POST",
            create_instance,
            raw_instance_body("1", "9223372036854775808", "a"),
            400,
            UNPARSED,
        ),
        // A valid size, far beyond what an instance may have.
        case(
            External,
            "POST",
            create_instance,
            raw_instance_body("1", "4611686018427387904", "a"),
            400,
            INVALID_VALUE,
        ),
        // Not a whole number of MiB.
        case(
            External,
            "POST",
            create_instance,
            raw_instance_body("1", "1073741825", "a"),
            400,
            INVALID_VALUE,
        ),
        case(
            External,
            "POST",
            create_instance,
            raw_instance_body("1", "1073741824", "-bad"),
            400,
            UNPARSED,
        ),
        case(
            External,
            "POST",
            create_instance,
            instance_body("vm", "", "h"),
            400,
            ALREADY_EXISTS,
        ),
        case(
            External,
            "POST",
            create_instance,
            instance_body("a", &too_long, "h"),
            400,
            INVALID_VALUE,
        ),
        case(
            External,
            "POST",
            create_instance,
            instance_body("a", "", "wéb"),
            400,
            INVALID_VALUE,
        ),
        case(
            External,
            "POST",
            create_instance,
            instance_body("a", "", &"h".repeat(254)),
            400,
            INVALID_VALUE,
        ),
        case(
            External,
            "POST",
            create_instance,
            instance_body("vm-ü", "", "h"),
            400,
            UNPARSED,
        ),
        case(
            External,
            "POST",
            create_instance,
            json!({"name": "a", "description": "", "hostname": "h", "ncpus": 1,
                   "memory": 1u64 << 30, "user_data": "\0"})
            .to_string(),
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "POST",
            "/v1/instances?project=nope",
            raw_instance_body("1", "1073741824", "a"),
            404,
            NOT_FOUND,
        ),
        case(
            External,
            "POST",
            "/v1/instances",
            raw_instance_body("1", "1073741824", "a"),
            400,
            UNPARSED,
        ),
        case(
            External,
            "GET",
            "/v1/instances/vm",
            "",
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "GET",
            format!("/v1/instances/{id}?project=p"),
            "",
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "GET",
            format!("/v1/instances/{unknown}"),
            "",
            404,
            NOT_FOUND,
        ),
        case(
            External,
            "GET",
            "/v1/instances/vm%00?project=p",
            "",
            400,
            UNPARSED,
        ),
        case(
            External,
            "POST",
            format!("/v1/instances/{unknown}/start"),
            "",
            404,
            NOT_FOUND,
        ),
        case(
            External,
            "POST",
            format!("/v1/instances/{unknown}/stop"),
            "",
            404,
            NOT_FOUND,
        ),
        case(External, "PUT", update_instance, "{}", 400, UNPARSED),
        case(
            External,
            "PUT",
            update_instance,
            update_body("0", "1073741824", "null", "null", "null"),
            400,
            INVALID_VALUE,
        ),
        case(
            External,
            "PUT",
            update_instance,
            update_body("70000", "1073741824", "null", "null", "null"),
            400,
            UNPARSED,
        ),
        case(
            External,
            "PUT",
            update_instance,
            update_body("1", "1000000", "null", "null", "null"),
            400,
            INVALID_VALUE,
        ),
        case(
            External,
            "PUT",
            update_instance,
            update_body("1", "1073741824", "\"sometimes\"", "null", "null"),
            400,
            UNPARSED,
        ),
        case(
            External,
            "PUT",
            update_instance,
            update_body("1", "1073741824", "null", "\"amd_milan\"", "null"),
            400,
            INVALID_REQUEST,
        ), // not supported yet
        case(
            External,
            "PUT",
            update_instance,
            update_body("1", "1073741824", "null", "null", "\"other-disk\""),
            400,
            INVALID_REQUEST,
        ), // changing the boot disk: not supported yet
        case(
            External,
            "PUT",
            format!("/v1/instances/{unknown}"),
            update_body("1", "1073741824", "null", "null", "null"),
            404,
            NOT_FOUND,
        ),
        case(
            External,
            "POST",
            "/v1/instances/vm/reboot?project=p",
            "",
            409,
            CONFLICT,
        ), // not running
        case(
            External,
            "POST",
            "/v1/instances/vm/migrate?project=p",
            "{}",
            409,
            CONFLICT,
        ), // not running
        case(
            External,
            "POST",
            "/v1/instances/vm/migrate?project=p",
            "{\"dst_sled_id\": 3}",
            400,
            UNPARSED,
        ),
        case(
            External,
            "DELETE",
            "/v1/instances/nope?project=p",
            "",
            404,
            NOT_FOUND,
        ),
        case(
            External,
            "GET",
            "/v1/instances/nope/migrations?project=p",
            "",
            404,
            NOT_FOUND,
        ),
        // Serial console.
        case(
            External,
            "GET",
            "/v1/instances/vm/serial-console?project=p&from_start=0&most_recent=0",
            "",
            400,
            INVALID_REQUEST,
        ), // both offsets
        case(
            External,
            "GET",
            "/v1/instances/vm/serial-console?project=p",
            "",
            400,
            INVALID_REQUEST,
        ), // neither
        case(
            External,
            "GET",
            "/v1/instances/vm/serial-console?project=p&from_start=-1",
            "",
            400,
            UNPARSED,
        ),
        case(
            External,
            "GET",
            "/v1/instances/vm/serial-console?project=p&from_start=0",
            "",
            400,
            INVALID_REQUEST,
        ), // not running
        case(
            External,
            "GET",
            "/v1/instances/nope/serial-console?project=p&most_recent=5",
            "",
            404,
            NOT_FOUND,
        ),
        case(
            External,
            "GET",
            "/v1/instances/vm/serial-console?from_start=0",
            "",
            400,
            INVALID_REQUEST,
        ), // a name without its project
        case(
            External,
            "GET",
            "/v1/instances/vm/serial-console/stream?project=p",
            "",
            400,
            UNPARSED,
        ), // not a WebSocket request
        case(
            External,
            "GET",
            "/v1/instances/vm/serial-console/stream?project=p&most_recent=x",
            "",
            400,
            UNPARSED,
        ),
        case(
            External,
            "GET",
            "/v1/system/hardware/sleds?limit=-1",
            "",
            400,
            UNPARSED,
        ),
        case(
            External,
            "GET",
            "/v1/system/hardware/sleds?limit=4294967296",
            "",
            400,
            UNPARSED,
        ),
        case(
            External,
            "GET",
            "/v1/system/hardware/sleds?limit=4294967295",
            "",
            200,
            None,
        ),
        // Internal API.
        case(
            Internal,
            "PUT",
            format!("/sled-agents/{sled}"),
            "{\"address\": \"not an address\"}",
            400,
            UNPARSED,
        ),
        case(
            Internal,
            "PUT",
            "/sled-agents/not-a-uuid",
            "{}",
            400,
            UNPARSED,
        ),
        case(
            Internal,
            "PUT",
            format!("/sled-agents/{sled}"),
            "{\"address\": \"127.0.0.1:1\", \"backend\": \"sim\", \"hardware_threads\": -1, \"physical_ram\": 1}",
            400,
            UNPARSED,
        ),
        case(
            Internal,
            "PUT",
            format!("/sled-agents/{sled}"),
            "{\"address\": \"127.0.0.1:1\", \"backend\": \"sim\", \"hardware_threads\": 4294967296, \"physical_ram\": 1}",
            400,
            UNPARSED,
        ),
        case(
            Internal,
            "PUT",
            format!("/sled-agents/{sled}"),
            "{\"address\": \"127.0.0.1:1\", \"backend\": \"sim\", \"hardware_threads\": 8, \"physical_ram\": 18446744073709551616}",
            400,
            UNPARSED,
        ),
        case(
            Internal,
            "PUT",
            format!("/sled-agents/{sled}"),
            json!({"address": "127.0.0.1:1\0", "backend": "sim", "hardware_threads": 8,
                   "physical_ram": 1u64 << 30})
            .to_string(),
            400,
            UNPARSED,
        ),
        case(
            Internal,
            "PUT",
            format!("/vmms/{unknown}"),
            "{\"vmm_state\": {\"state\": \"running\", \"generation\": 2, \"time_updated\": \"2026-01-01T00:00:00Z\"}, \"migration_in\": null, \"migration_out\": null}",
            404,
            NOT_FOUND,
        ),
        case(
            Internal,
            "PUT",
            format!("/vmms/{unknown}"),
            "{\"vmm_state\": {\"state\": \"levitating\", \"generation\": 2, \"time_updated\": \"2026-01-01T00:00:00Z\"}}",
            400,
            UNPARSED,
        ),
        case(
            Internal,
            "PUT",
            format!("/vmms/{unknown}"),
            "{\"vmm_state\": {\"state\": \"running\\u0000\", \"generation\": 2, \"time_updated\": \"2026-01-01T00:00:00Z\"}}",
            400,
            UNPARSED,
        ),
        case(
            Internal,
            "PUT",
            format!("/vmms/{unknown}"),
            "{\"vmm_state\": {\"state\": \"running\", \"generation\": 0, \"time_updated\": \"2026-01-01T00:00:00Z\"}}",
            400,
            UNPARSED,
        ),
        case(
            Internal,
            "PUT",
            format!("/vmms/{unknown}"),
            "{\"vmm_state\": {\"state\": \"running\", \"generation\": -2, \"time_updated\": \"2026-01-01T00:00:00Z\"}}",
            400,
            UNPARSED,
        ),
        // Beyond what the database's INT8 holds.
        case(
            Internal,
            "PUT",
            format!("/vmms/{unknown}"),
            "{\"vmm_state\": {\"state\": \"running\", \"generation\": 9223372036854775808, \"time_updated\": \"2026-01-01T00:00:00Z\"}}",
            400,
            UNPARSED,
        ),
        case(
            Internal,
            "POST",
            "/sleds/not-a-uuid/expunge",
            "",
            400,
            UNPARSED,
        ),
        case(
            Internal,
            "POST",
            format!("/sleds/{unknown}/expunge"),
            "",
            404,
            NOT_FOUND,
        ), // unknown sled
        // VPCs.
        case(External, "GET", "/v1/vpcs", "", 400, UNPARSED),
        case(External, "GET", "/v1/vpcs?project=p%00", "", 400, UNPARSED),
        case(
            External,
            "GET",
            "/v1/vpcs?project=p&limit=0",
            "",
            400,
            UNPARSED,
        ),
        case(
            External,
            "POST",
            create_vpc,
            vpc_body("default", "", None),
            400,
            ALREADY_EXISTS,
        ),
        case(
            External,
            "POST",
            create_vpc,
            vpc_body("Bad", "", None),
            400,
            UNPARSED,
        ),
        case(
            External,
            "POST",
            create_vpc,
            json!({"name": "v2", "description": "", "dns_name": "-dns"}).to_string(),
            400,
            UNPARSED,
        ),
        // Not a /48, not unique local, not a prefix at all.
        case(
            External,
            "POST",
            create_vpc,
            vpc_body("v2", "", Some("fd00::/64")),
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "POST",
            create_vpc,
            vpc_body("v2", "", Some("2001:db8::/48")),
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "POST",
            create_vpc,
            vpc_body("v2", "", Some("fd00::/129")),
            400,
            UNPARSED,
        ),
        case(
            External,
            "POST",
            create_vpc,
            vpc_body("v2", &too_long, None),
            400,
            INVALID_VALUE,
        ),
        case(
            External,
            "GET",
            "/v1/vpcs/default",
            "",
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "GET",
            format!("/v1/vpcs/{unknown}?project=p"),
            "",
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "GET",
            format!("/v1/vpcs/{unknown}"),
            "",
            404,
            NOT_FOUND,
        ),
        case(
            External,
            "DELETE",
            "/v1/vpcs/nope?project=p",
            "",
            404,
            NOT_FOUND,
        ),
        case(
            External,
            "GET",
            "/v1/vpcs/NOPE?project=p",
            "",
            400,
            UNPARSED,
        ),
        // VPC subnets.
        case(
            External,
            "GET",
            "/v1/vpc-subnets?project=p",
            "",
            400,
            UNPARSED,
        ),
        case(
            External,
            "GET",
            "/v1/vpc-subnets?vpc=default",
            "",
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "GET",
            "/v1/vpc-subnets?vpc=nope&project=p",
            "",
            404,
            NOT_FOUND,
        ),
        // Not private; too small; not a prefix; overlapping the default subnet.
        case(
            External,
            "POST",
            create_subnet,
            subnet_body("s2", "8.8.8.0/24"),
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "POST",
            create_subnet,
            subnet_body("s2", "10.0.0.0/27"),
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "POST",
            create_subnet,
            subnet_body("s2", "10.0.0.0/33"),
            400,
            UNPARSED,
        ),
        case(
            External,
            "POST",
            create_subnet,
            subnet_body("s2", "172.30.1.0/24"),
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "POST",
            create_subnet,
            subnet_body("default", "10.5.0.0/24"),
            400,
            ALREADY_EXISTS,
        ),
        case(
            External,
            "POST",
            create_subnet,
            json!({"name": "s2", "description": "", "ipv4_block": "10.5.0.0/24",
                   "custom_router": "r"})
            .to_string(),
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "POST",
            create_subnet,
            json!({"name": "s2", "description": "", "ipv4_block": "10.5.0.0/24",
                   "ipv6_block": "fd00:1:2:3::/80"})
            .to_string(),
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "GET",
            "/v1/vpc-subnets/default?project=p",
            "",
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "GET",
            format!("/v1/vpc-subnets/{unknown}?vpc=default&project=p"),
            "",
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "GET",
            format!("/v1/vpc-subnets/{unknown}"),
            "",
            404,
            NOT_FOUND,
        ),
        case(
            External,
            "DELETE",
            "/v1/vpc-subnets/nope?project=p&vpc=default",
            "",
            404,
            NOT_FOUND,
        ),
        // Network interfaces.
        case(
            External,
            "GET",
            "/v1/network-interfaces?project=p",
            "",
            400,
            UNPARSED,
        ),
        case(
            External,
            "GET",
            "/v1/network-interfaces?instance=vm",
            "",
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "POST",
            create_nic,
            nic_body(
                "n",
                "",
                "nope",
                "default",
                json!({"type": "v4", "value": {"ip": {"type": "auto"}}}),
            ),
            404,
            NOT_FOUND,
        ),
        case(
            External,
            "POST",
            create_nic,
            nic_body(
                "n",
                "",
                "default",
                "nope",
                json!({"type": "v4", "value": {"ip": {"type": "auto"}}}),
            ),
            404,
            NOT_FOUND,
        ),
        case(
            External,
            "POST",
            create_nic,
            nic_body(
                "n",
                "",
                "default",
                "default",
                json!({"type": "v6", "value": {"ip": {"type": "auto"}}}),
            ),
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "POST",
            create_nic,
            nic_body(
                "n",
                "",
                "default",
                "default",
                json!({"type": "v4", "value": {"ip": {"type": "auto"}, "transit_ips": ["10.0.0.0/8"]}}),
            ),
            400,
            INVALID_REQUEST,
        ),
        // Reserved (the first five), outside the subnet, not an address.
        case(
            External,
            "POST",
            create_nic,
            nic_body(
                "n",
                "",
                "default",
                "default",
                json!({"type": "v4", "value": {"ip": {"type": "explicit", "value": "172.30.0.1"}}}),
            ),
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "POST",
            create_nic,
            nic_body(
                "n",
                "",
                "default",
                "default",
                json!({"type": "v4", "value": {"ip": {"type": "explicit", "value": "10.0.0.5"}}}),
            ),
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "POST",
            create_nic,
            nic_body(
                "n",
                "",
                "default",
                "default",
                json!({"type": "v4", "value": {"ip": {"type": "explicit", "value": "300.1.1.1"}}}),
            ),
            400,
            UNPARSED,
        ),
        case(
            External,
            "POST",
            create_nic,
            nic_body("n", "", "default", "default", json!({"type": "bogus"})),
            400,
            UNPARSED,
        ),
        case(
            External,
            "POST",
            "/v1/network-interfaces?instance=vm",
            nic_body(
                "n",
                "",
                "default",
                "default",
                json!({"type": "v4", "value": {"ip": {"type": "auto"}}}),
            ),
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "POST",
            format!("/v1/network-interfaces?instance={unknown}"),
            nic_body(
                "n",
                "",
                "default",
                "default",
                json!({"type": "v4", "value": {"ip": {"type": "auto"}}}),
            ),
            404,
            NOT_FOUND,
        ),
        case(
            External,
            "GET",
            "/v1/network-interfaces/net0?project=p",
            "",
            400,
            INVALID_REQUEST,
        ),
        case(
            External,
            "GET",
            format!("/v1/network-interfaces/{unknown}"),
            "",
            404,
            NOT_FOUND,
        ),
        case(
            External,
            "DELETE",
            "/v1/network-interfaces/nope?project=p&instance=vm",
            "",
            404,
            NOT_FOUND,
        ),
        case(
            External,
            "DELETE",
            format!("/v1/network-interfaces/{unknown}?instance=vm"),
            "",
            400,
            INVALID_REQUEST,
        ),
    ];
    // NUL and control characters in every free-text field: project and instance
    // descriptions (refused by Halyard, `InvalidValue`), names and hostnames.
    for bad in CONTROL_STRINGS {
        cases.push(case(
            External,
            "POST",
            "/v1/projects",
            project_body("p2", bad),
            400,
            INVALID_VALUE,
        ));
        cases.push(case(
            External,
            "POST",
            "/v1/projects",
            project_body(&format!("p2{bad}"), ""),
            400,
            UNPARSED,
        ));
        cases.push(case(
            External,
            "POST",
            create_instance,
            instance_body("a", bad, "h"),
            400,
            INVALID_VALUE,
        ));
        cases.push(case(
            External,
            "POST",
            create_instance,
            instance_body(&format!("a{bad}"), "", "h"),
            400,
            UNPARSED,
        ));
        cases.push(case(
            External,
            "POST",
            create_instance,
            instance_body("a", "", &format!("h{bad}")),
            400,
            INVALID_VALUE,
        ));
        cases.push(case(
            External,
            "POST",
            create_vpc,
            vpc_body("v2", bad, None),
            400,
            INVALID_VALUE,
        ));
        cases.push(case(
            External,
            "POST",
            create_vpc,
            vpc_body(&format!("v2{bad}"), "", None),
            400,
            UNPARSED,
        ));
        cases.push(case(
            External,
            "POST",
            create_subnet,
            json!({"name": "s2", "description": bad, "ipv4_block": "10.5.0.0/24"}).to_string(),
            400,
            INVALID_VALUE,
        ));
        cases.push(case(
            External,
            "POST",
            create_nic,
            nic_body(
                "n",
                bad,
                "default",
                "default",
                json!({"type": "v4", "value": {"ip": {"type": "auto"}}}),
            ),
            400,
            INVALID_VALUE,
        ));
        cases.push(case(
            External,
            "POST",
            create_nic,
            nic_body(
                &format!("n{bad}"),
                "",
                "default",
                "default",
                json!({"type": "v4", "value": {"ip": {"type": "auto"}}}),
            ),
            400,
            UNPARSED,
        ));
    }
    let mut wrong_type = case(External, "POST", "/v1/projects", "name=p", 400, UNPARSED);
    wrong_type.content_type = "application/x-www-form-urlencoded";
    cases.push(wrong_type);
    let mut wrong_type = case(
        External,
        "POST",
        "/v1/projects",
        project_body("p3", ""),
        400,
        UNPARSED,
    );
    wrong_type.content_type = "text/plain";
    cases.push(wrong_type);

    let before = dump_every_table(&ctx);
    let external_http = crate::authn_support::http_client(&ctx.token);
    // The internal API's cases as the operator (its TLS front requires a certificate).
    let internal_http = crate::context::operator_http(halyard_tls::NEXUS_NAME);
    let mut problems = Vec::new();
    for case in &cases {
        let (http, url) = match case.api {
            External => (
                &external_http,
                format!("http://{}", ctx.server().external_address()),
            ),
            Internal => (
                &internal_http,
                format!("https://{}", ctx.server().internal_address()),
            ),
        };
        let mut request = http
            .request(case.method.parse().unwrap(), format!("{url}{}", case.path))
            .header("content-type", case.content_type);
        if !case.body.is_empty() {
            request = request.body(case.body.clone());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let shown_body: String = case.body.chars().take(120).collect();
        let what = format!(
            "{} {} {:?} ({} bytes)",
            case.method,
            case.path,
            shown_body,
            case.body.len()
        );
        let code = body.get("error_code").and_then(Value::as_str);
        if status != case.status || code != case.code {
            problems.push(format!(
                "{what}: expected {} {:?}, got {status} {code:?}: {body}",
                case.status, case.code
            ));
        } else if status >= 400
            && (!body["request_id"].is_string()
                || body["message"].as_str().is_none_or(str::is_empty))
        {
            problems.push(format!("{what}: {status} without the error body: {body}"));
        }
    }
    ctx.assert_quiet_and_consistent().await;
    let after = dump_every_table(&ctx);
    let mut changes = String::new();
    if after != before {
        let before: Vec<&str> = before.lines().collect();
        let after: Vec<&str> = after.lines().collect();
        let gone: Vec<&&str> = before.iter().filter(|l| !after.contains(l)).collect();
        let new: Vec<&&str> = after.iter().filter(|l| !before.contains(l)).collect();
        changes = format!(
            "bad requests changed the database:\nrows before, changed or gone:\n{gone:#?}\n\
             rows after, changed or new:\n{new:#?}"
        );
    }
    assert!(
        problems.is_empty() && changes.is_empty(),
        "{} of {} rows wrong:\n{}\n{changes}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );
}

/// What the limits still allow is kept as given: a description of exactly 512 characters of
/// non-ASCII text, with tabs and newlines, round-trips through a project and an instance.
#[tokio::test]
async fn descriptions_of_any_script_up_to_the_limit_are_kept() {
    let ctx = TestContext::new().await;
    let http = crate::authn_support::http_client(&ctx.token);
    let base = format!("http://{}", ctx.server().external_address());
    let line = "日本語\tέλληνικά\n";
    let description: String = line.chars().cycle().take(MAX_DESCRIPTION_CHARS).collect();
    assert!(
        description.len() > MAX_DESCRIPTION_CHARS,
        "more bytes than characters"
    );
    let created = http
        .post(format!("{base}/v1/projects"))
        .json(&json!({"name": "p", "description": description}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let project: Value = created.json().await.unwrap();
    assert_eq!(project["description"], description);
    let created = http
        .post(format!("{base}/v1/instances?project=p"))
        .json(
            &json!({"name": "vm", "description": description, "hostname": "vm",
                      "ncpus": 1, "memory": 1u64 << 30, "start": false}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let instance: Value = http
        .get(format!("{base}/v1/instances/vm?project=p"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(instance["description"], description);
    ctx.assert_quiet_and_consistent().await;
}
