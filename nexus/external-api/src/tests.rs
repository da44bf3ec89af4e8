//! Wire-compatibility with the Oxide SDK (`oxide` 0.19): bodies as it serializes them parse,
//! and views carry every field it requires. The JSON here is written from the SDK's serde
//! attributes (`oxide-0.19.0/src/generated_sdk.rs`).

use crate::pagination::{
    IdSortMode, NameOrIdSortMode, PageByNameOrId, PaginatedById, PaginatedByNameOrId,
    id_pagination, name_or_id_pagination, results_page_by_id, results_page_by_name_or_id,
    scan_params,
};
use crate::params::{
    InstanceAutoRestartPolicy, InstanceCpuPlatform, InstanceCreate, InstanceDiskAttachment,
    InstanceNetworkInterfaceAttachment, ProjectCreate, ProjectSelector,
};
use crate::views::{
    Baseboard, Instance, Project, Sled, SledPolicy, SledProvisionPolicy, SledState,
};
use chrono::Utc;
use dropshot::{PaginationOrder, WhichPage};
use halyard_common::ids::{GenericUuid, InstanceUuid, ProjectUuid, SledUuid};
use halyard_common::{ByteCount, InstanceState, Name, NameOrId};
use serde_json::json;
use std::collections::BTreeSet;
use std::num::NonZeroU32;

fn name(s: &str) -> Name {
    s.parse().unwrap()
}

fn keys(value: &serde_json::Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

/// What `client.instance_create().body_map(|b| b.name(..).description(..).hostname(..)
/// .ncpus(..).memory(..))` sends: the SDK's builder defaults, with empty lists and `None`s
/// skipped (`skip_serializing_if`) but `start`, `user_data`, `enable_jumbo_frames` and
/// `network_interfaces` always present.
#[test]
fn instance_create_as_the_sdk_sends_it_by_default() {
    let body = json!({
        "description": "a web server",
        "enable_jumbo_frames": false,
        "hostname": "web-1",
        "memory": 1073741824u64,
        "name": "web-1",
        "ncpus": 2,
        "network_interfaces": { "type": "default_dual_stack" },
        "start": true,
        "user_data": ""
    });
    let create: InstanceCreate = serde_json::from_value(body).unwrap();
    let expected = InstanceCreate::new(
        name("web-1"),
        "a web server",
        "web-1",
        2,
        ByteCount::from_gibibytes_u32(1),
    );
    assert_eq!(create, expected);
    assert!(create.unsupported_fields().is_empty());

    // Only the required fields: everything else takes Oxide's defaults.
    let minimal: InstanceCreate = serde_json::from_value(json!({
        "name": "web-1", "description": "a web server", "hostname": "web-1",
        "ncpus": 2, "memory": 1073741824u64
    }))
    .unwrap();
    assert_eq!(minimal, expected);
    assert!(minimal.start);
}

/// Every optional field present, with the explicit "nothing" values a raw client (or a later
/// SDK) may send: parses, and needs nothing Halyard lacks.
#[test]
fn instance_create_with_explicit_empty_values() {
    let body = json!({
        "name": "db", "description": "", "hostname": "db", "ncpus": 1, "memory": 536870912,
        "network_interfaces": { "type": "none" },
        "disks": [],
        "external_ips": [],
        "start": false,
        "user_data": "",
        "enable_jumbo_frames": false,
        "ssh_public_keys": null,
        "boot_disk": null,
        "auto_restart_policy": null,
        "anti_affinity_groups": [],
        "cpu_platform": null,
        "multicast_groups": []
    });
    let create: InstanceCreate = serde_json::from_value(body).unwrap();
    assert!(!create.start);
    assert_eq!(
        create.network_interfaces,
        InstanceNetworkInterfaceAttachment::None
    );
    assert!(create.unsupported_fields().is_empty());

    let create: InstanceCreate = serde_json::from_value(json!({
        "name": "db", "description": "", "hostname": "db", "ncpus": 1, "memory": 536870912,
        "ssh_public_keys": [], "auto_restart_policy": "never",
        "network_interfaces": { "type": "default_ipv4" }
    }))
    .unwrap();
    assert!(create.unsupported_fields().is_empty());
}

/// Everything the SDK can express parses (the unsupported parts as opaque JSON), and each
/// unsupported part is reported by name so the implementation can refuse it clearly.
#[test]
fn instance_create_with_everything_the_sdk_can_send() {
    let body = json!({
        "anti_affinity_groups": ["spread-out", "1c9f3fae-0b8c-4a6c-9a37-4a3b0c6a1a11"],
        "auto_restart_policy": "best_effort",
        "boot_disk": { "type": "attach", "name": "boot" },
        "cpu_platform": "amd_turin_v2",
        "description": "everything",
        "disks": [
            { "type": "create", "name": "data", "description": "", "size": 10737418240u64,
              "disk_backend": { "type": "distributed", "disk_source": { "type": "blank",
              "block_size": 4096 } } },
            { "type": "attach", "name": "boot" }
        ],
        "enable_jumbo_frames": true,
        "external_ips": [
            { "type": "ephemeral", "pool_selector": { "type": "auto" } },
            { "type": "floating", "floating_ip": "fip" }
        ],
        "hostname": "all.example.com",
        "memory": 2147483648u64,
        "multicast_groups": [{ "group": "mcast", "source_ips": ["10.0.0.1"] }],
        "name": "everything",
        "ncpus": 4,
        "network_interfaces": { "type": "create", "params": [
            { "name": "net0", "description": "", "vpc_name": "default",
              "subnet_name": "default", "ip_config": { "type": "dual_stack", "value": {
                  "v4": { "ip": { "type": "auto" } }, "v6": { "ip": { "type": "auto" } } } } }
        ] },
        "ssh_public_keys": ["my-key"],
        "start": true,
        "user_data": "I2Nsb3VkLWNvbmZpZwo="
    });
    let create: InstanceCreate = serde_json::from_value(body).unwrap();
    assert_eq!(create.cpu_platform, Some(InstanceCpuPlatform::AmdTurinV2));
    assert_eq!(
        create.auto_restart_policy,
        Some(InstanceAutoRestartPolicy::BestEffort)
    );
    // Disks are supported: they parse into typed attachments, not opaque JSON.
    assert_eq!(create.disks.len(), 2);
    assert!(matches!(
        create.boot_disk,
        Some(InstanceDiskAttachment::Attach { .. })
    ));
    assert_eq!(
        create.unsupported_fields(),
        vec![
            "user_data",
            "enable_jumbo_frames",
            "external_ips",
            "ssh_public_keys",
            "anti_affinity_groups",
            "cpu_platform",
            "multicast_groups",
        ]
    );
    for platform in ["amd_milan", "amd_turin"] {
        serde_json::from_value::<InstanceCpuPlatform>(json!(platform)).unwrap();
    }
    // Network interfaces are supported: `create` resolves to the interfaces to make.
    let nics = create.network_interfaces.interfaces().unwrap();
    assert_eq!(nics.len(), 1);
    assert_eq!(
        nics[0].ip_config.resolve().unwrap(),
        crate::params::ResolvedIpConfig {
            ipv4: None,
            dual_stack: true
        }
    );
    for nics in ["default_ipv4", "default_ipv6", "default_dual_stack", "none"] {
        serde_json::from_value::<InstanceNetworkInterfaceAttachment>(json!({ "type": nics }))
            .unwrap();
    }
}

#[test]
fn instance_create_refuses_bad_values() {
    let base = json!({
        "name": "web", "description": "", "hostname": "web", "ncpus": 1, "memory": 1024
    });
    let with = |key: &str, value: serde_json::Value| {
        let mut body = base.clone();
        body[key] = value;
        serde_json::from_value::<InstanceCreate>(body)
    };
    assert!(with("name", json!("Web")).is_err());
    assert!(with("memory", json!(-1)).is_err());
    assert!(with("ncpus", json!(65536)).is_err());
    assert!(with("network_interfaces", json!({ "type": "bogus" })).is_err());
    assert!(with("cpu_platform", json!("pentium")).is_err());
}

#[test]
fn project_create_as_the_sdk_sends_it() {
    let create: ProjectCreate =
        serde_json::from_value(json!({ "description": "d", "name": "p" })).unwrap();
    assert_eq!(create.name, name("p"));
    assert_eq!(create.defaults, None);
    let create: ProjectCreate = serde_json::from_value(json!({
        "defaults": { "vpc": { "type": "all" } }, "description": "d", "name": "p"
    }))
    .unwrap();
    assert!(create.defaults.is_some());
}

fn instance() -> Instance {
    let now = Utc::now();
    Instance {
        id: InstanceUuid::new_v4(),
        name: name("web-1"),
        description: "a web server".to_string(),
        time_created: now,
        time_modified: now,
        project_id: ProjectUuid::new_v4(),
        hostname: "web-1".to_string(),
        ncpus: 2,
        memory: ByteCount::from_gibibytes_u32(1),
        run_state: InstanceState::Running,
        time_run_state_updated: now,
        auto_restart_enabled: false,
        auto_restart_policy: None,
        auto_restart_cooldown_expiration: None,
        time_last_auto_restarted: None,
        boot_disk_id: None,
        cpu_platform: None,
        enable_jumbo_frames: false,
        migration_id: None,
    }
}

/// The SDK's `Instance` requires these fields (and has the rest as optional).
#[test]
fn instance_view_has_every_field_the_sdk_requires() {
    let value = serde_json::to_value(instance()).unwrap();
    let required: BTreeSet<&str> = [
        "auto_restart_enabled",
        "description",
        "enable_jumbo_frames",
        "hostname",
        "id",
        "memory",
        "name",
        "ncpus",
        "project_id",
        "run_state",
        "time_created",
        "time_modified",
        "time_run_state_updated",
    ]
    .into();
    let optional: BTreeSet<&str> = [
        "auto_restart_cooldown_expiration",
        "auto_restart_policy",
        "boot_disk_id",
        "cpu_platform",
        "time_last_auto_restarted",
    ]
    .into();
    // Halyard's own additions; the SDK ignores fields it does not know.
    let extensions: BTreeSet<&str> = ["migration_id"].into();
    let all: BTreeSet<&str> = required
        .union(&optional)
        .chain(extensions.iter())
        .copied()
        .collect();
    assert_eq!(keys(&value), all);
    for key in optional {
        assert!(value[key].is_null(), "{key}");
    }
    // The SDK's types: `ByteCount(u64)`, `InstanceCpuCount(u16)`, `InstanceState` labels,
    // RFC 3339 timestamps, plain UUIDs.
    assert_eq!(value["memory"], json!(1073741824u64));
    assert_eq!(value["ncpus"], json!(2));
    assert_eq!(value["run_state"], json!("running"));
    assert!(value["id"].as_str().unwrap().parse::<uuid::Uuid>().is_ok());
    assert!(chrono::DateTime::parse_from_rfc3339(value["time_created"].as_str().unwrap()).is_ok());
}

#[test]
fn project_and_sled_views_have_every_field_the_sdk_requires() {
    let now = Utc::now();
    let project = Project {
        id: ProjectUuid::new_v4(),
        name: name("p"),
        description: String::new(),
        time_created: now,
        time_modified: now,
    };
    assert_eq!(
        keys(&serde_json::to_value(&project).unwrap()),
        ["description", "id", "name", "time_created", "time_modified"].into()
    );

    let sled = Sled {
        id: SledUuid::new_v4(),
        time_created: now,
        time_modified: now,
        baseboard: Baseboard {
            serial: "sim-1".to_string(),
            part: "halyard-sim".to_string(),
            revision: 0,
        },
        rack_id: uuid::Uuid::nil(),
        slot: None,
        policy: SledPolicy::InService {
            provision_policy: SledProvisionPolicy::Provisionable,
        },
        state: SledState::Active,
        usable_hardware_threads: 32,
        usable_physical_ram: ByteCount::from_gibibytes_u32(64),
        reserved_hardware_threads: 4,
        reserved_physical_ram: ByteCount::from_gibibytes_u32(8),
        live_vmms: 2,
    };
    let value = serde_json::to_value(&sled).unwrap();
    assert_eq!(
        keys(&value),
        [
            "baseboard",
            "id",
            "live_vmms",
            "policy",
            "rack_id",
            "reserved_hardware_threads",
            "reserved_physical_ram",
            "slot",
            "state",
            "time_created",
            "time_modified",
            "usable_hardware_threads",
            "usable_physical_ram",
        ]
        .into()
    );
    assert_eq!(
        value["baseboard"],
        json!({ "serial": "sim-1", "part": "halyard-sim", "revision": 0 })
    );
    assert_eq!(
        value["policy"],
        json!({ "kind": "in_service", "provision_policy": "provisionable" })
    );
    assert_eq!(
        serde_json::to_value(SledPolicy::Expunged).unwrap(),
        json!({ "kind": "expunged" })
    );
    assert_eq!(value["state"], json!("active"));
    assert_eq!(value["usable_physical_ram"], json!(68719476736u64));
}

/// Query parameters as dropshot sees them (all strings).
fn query<T: serde::de::DeserializeOwned>(pairs: &[(&str, &str)]) -> Result<T, String> {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| e.to_string())
}

fn limit(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

#[test]
fn instance_pages_carry_the_project_and_the_order_in_the_token() {
    // First page: the scan parameters are in the query.
    let first: PaginatedByNameOrId<ProjectSelector> =
        query(&[("project", "p1"), ("sort_by", "name_descending")]).unwrap();
    let scan = scan_params(&first);
    assert_eq!(scan.selector.project, NameOrId::Name(name("p1")));
    assert_eq!(scan.sort_by, NameOrIdSortMode::NameDescending);
    match name_or_id_pagination(&first, limit(2)).unwrap() {
        PageByNameOrId::Name(p) => {
            assert_eq!(p.marker, None);
            assert_eq!(p.direction, PaginationOrder::Descending);
            assert_eq!(p.limit, limit(2));
        }
        other => panic!("{other:?}"),
    }

    let mut b = instance();
    b.name = name("b");
    let mut a = instance();
    a.name = name("a");
    let page = results_page_by_name_or_id(vec![b, a], scan).unwrap();
    let token = page.next_page.expect("a non-empty page has a next page");

    // The SDK's stream() sends only page_token (and limit) after the first page.
    let next: PaginatedByNameOrId<ProjectSelector> = query(&[("page_token", &token)]).unwrap();
    assert!(matches!(next.page, WhichPage::Next(_)));
    let scan = scan_params(&next);
    assert_eq!(scan.selector.project, NameOrId::Name(name("p1")));
    assert_eq!(scan.sort_by, NameOrIdSortMode::NameDescending);
    match name_or_id_pagination(&next, limit(2)).unwrap() {
        PageByNameOrId::Name(p) => {
            assert_eq!(p.marker, Some(&name("a")));
            assert_eq!(p.direction, PaginationOrder::Descending);
        }
        other => panic!("{other:?}"),
    }

    // An empty page ends the scan.
    let page = results_page_by_name_or_id(Vec::<Instance>::new(), scan).unwrap();
    assert!(page.next_page.is_none());

    // By id: the token names the last item's id.
    let by_id: PaginatedByNameOrId<ProjectSelector> =
        query(&[("project", "p1"), ("sort_by", "id_ascending")]).unwrap();
    let last = instance();
    let token = results_page_by_name_or_id(vec![last.clone()], scan_params(&by_id))
        .unwrap()
        .next_page
        .unwrap();
    let next: PaginatedByNameOrId<ProjectSelector> = query(&[("page_token", &token)]).unwrap();
    match name_or_id_pagination(&next, limit(5)).unwrap() {
        PageByNameOrId::Id(p) => {
            assert_eq!(p.marker, Some(&last.id.into_untyped_uuid()));
            assert_eq!(p.direction, PaginationOrder::Ascending);
        }
        other => panic!("{other:?}"),
    }

    // The project is required on the first page; a bad sort order or token is refused.
    assert!(query::<PaginatedByNameOrId<ProjectSelector>>(&[]).is_err());
    assert!(
        query::<PaginatedByNameOrId<ProjectSelector>>(&[("project", "p"), ("sort_by", "x")])
            .is_err()
    );
    assert!(query::<PaginatedByNameOrId<ProjectSelector>>(&[("page_token", "garbage")]).is_err());
}

#[test]
fn project_pages_default_to_name_ascending() {
    let first: PaginatedByNameOrId = query(&[]).unwrap();
    assert_eq!(scan_params(&first).sort_by, NameOrIdSortMode::NameAscending);
    match name_or_id_pagination(&first, limit(100)).unwrap() {
        PageByNameOrId::Name(p) => assert_eq!(p.direction, PaginationOrder::Ascending),
        other => panic!("{other:?}"),
    }
    let now = Utc::now();
    let project = Project {
        id: ProjectUuid::new_v4(),
        name: name("zz"),
        description: String::new(),
        time_created: now,
        time_modified: now,
    };
    let token = results_page_by_name_or_id(vec![project], scan_params(&first))
        .unwrap()
        .next_page
        .unwrap();
    let next: PaginatedByNameOrId = query(&[("page_token", &token)]).unwrap();
    match name_or_id_pagination(&next, limit(100)).unwrap() {
        PageByNameOrId::Name(p) => assert_eq!(p.marker, Some(&name("zz"))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sled_pages_go_by_id() {
    let first: PaginatedById = query(&[("sort_by", "id_ascending")]).unwrap();
    assert_eq!(scan_params(&first).sort_by, IdSortMode::IdAscending);
    assert_eq!(id_pagination(&first, limit(3)).marker, None);
    let sled_id = SledUuid::new_v4();
    let now = Utc::now();
    let sled = Sled {
        id: sled_id,
        time_created: now,
        time_modified: now,
        baseboard: Baseboard {
            serial: "s".to_string(),
            part: "p".to_string(),
            revision: 0,
        },
        rack_id: uuid::Uuid::nil(),
        slot: None,
        policy: SledPolicy::InService {
            provision_policy: SledProvisionPolicy::Provisionable,
        },
        state: SledState::Active,
        usable_hardware_threads: 1,
        usable_physical_ram: ByteCount::from_gibibytes_u32(1),
        reserved_hardware_threads: 0,
        reserved_physical_ram: ByteCount::from_gibibytes_u32(0),
        live_vmms: 0,
    };
    let token = results_page_by_id(vec![sled], scan_params(&first))
        .unwrap()
        .next_page
        .unwrap();
    let next: PaginatedById = query(&[("page_token", &token)]).unwrap();
    let page = id_pagination(&next, limit(3));
    assert_eq!(page.marker, Some(&sled_id.into_untyped_uuid()));
    assert_eq!(page.direction, PaginationOrder::Ascending);
    assert!(query::<PaginatedById>(&[("sort_by", "name_ascending")]).is_err());
}

#[test]
fn vpc_create_defaults_as_oxide_has_them() {
    use crate::params::VpcCreate;
    let with = |defaults: Option<serde_json::Value>| {
        let mut body = json!({ "name": "v", "description": "", "dns_name": "v" });
        if let Some(defaults) = defaults {
            body["defaults"] = defaults;
        }
        serde_json::from_value::<VpcCreate>(body)
    };
    assert!(with(None).unwrap().creates_default_subnet());
    assert!(with(Some(json!(null))).unwrap().creates_default_subnet());
    assert!(!with(Some(json!({}))).unwrap().creates_default_subnet());
    assert!(
        !with(Some(json!({ "subnet": null })))
            .unwrap()
            .creates_default_subnet()
    );
    assert!(
        with(Some(json!({ "subnet": {} })))
            .unwrap()
            .creates_default_subnet()
    );
    assert!(with(Some(json!({ "router": {} }))).is_err());
    assert!(with(Some(json!({ "subnet": { "block": "10.0.0.0/8" } }))).is_err());
}
