//! VPCs, subnets and network interfaces through the external API: the Oxide SDK unmodified
//! (every project's `default` VPC and subnet, a VPC and subnet made and deleted, interfaces
//! added, listed, viewed and removed on a stopped instance and refused on a running one), and
//! the allocator under a race (64 interfaces asked for at once of a subnet with room for 58).

use crate::context::TestContext;
use futures::TryStreamExt;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

fn sdk(ctx: &TestContext) -> oxide::Client {
    crate::authn_support::sdk(&ctx.external_url(), &ctx.token)
}

/// The error code and message of an SDK error response.
fn sdk_error<T: std::fmt::Debug>(
    result: Result<T, oxide::Error<oxide::types::Error>>,
) -> (u16, String, String) {
    match result {
        Err(oxide::Error::ErrorResponse(e)) => (
            e.status().as_u16(),
            e.error_code.clone().unwrap_or_default(),
            e.message.clone(),
        ),
        other => panic!("expected an error response, got {other:?}"),
    }
}

async fn wait_for_state(client: &oxide::Client, name: &str, state: oxide::types::InstanceState) {
    use oxide::prelude::*;
    for _ in 0..1000 {
        let view = client
            .instance_view()
            .project("p")
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

async fn nic_names(client: &oxide::Client, instance: &str) -> Vec<String> {
    use oxide::prelude::*;
    client
        .instance_network_interface_list()
        .project("p")
        .instance(instance)
        .limit(1u32)
        .stream()
        .map_ok(|n| n.name.to_string())
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_oxide_sdk_manages_vpcs_subnets_and_interfaces() {
    use oxide::prelude::*;
    use oxide::types::{
        InstanceNetworkInterfaceAttachment, InstanceState, Ipv4Assignment, PrivateIpStack,
        PrivateIpStackCreate, PrivateIpv4StackCreate,
    };
    let ctx = TestContext::new().await;
    let client = sdk(&ctx);
    client
        .project_create()
        .body_map(|b| b.name("p").description(""))
        .send()
        .await
        .unwrap();

    // A new project has its `default` VPC with its `default` subnet.
    let vpcs: Vec<oxide::types::Vpc> = client
        .vpc_list()
        .project("p")
        .stream()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(vpcs.len(), 1);
    let default = &vpcs[0];
    assert_eq!(default.name.to_string(), "default");
    assert_eq!(default.dns_name.to_string(), "default");
    assert_eq!(
        default.system_router_id, default.id,
        "the VPC's id stands for its router"
    );
    assert!(default.ipv6_prefix.ends_with("/48") && default.ipv6_prefix.starts_with("fd"));
    let by_id = client
        .vpc_view()
        .vpc(default.id.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(by_id.name.to_string(), "default");
    let subnets: Vec<oxide::types::VpcSubnet> = client
        .vpc_subnet_list()
        .project("p")
        .vpc("default")
        .stream()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(subnets.len(), 1);
    assert_eq!(subnets[0].name.to_string(), "default");
    assert_eq!(subnets[0].ipv4_block.to_string(), "172.30.0.0/22");
    assert_eq!(subnets[0].vpc_id, default.id);
    assert_eq!(subnets[0].custom_router_id, None);

    // A VPC (with its own `default` subnet) and a subnet in it.
    let net = client
        .vpc_create()
        .project("p")
        .body_map(|b| b.name("net").description("mine").dns_name("net"))
        .send()
        .await
        .unwrap();
    assert_ne!(net.id, default.id);
    // `defaults: {}` asks for no default subnet; `{"subnet": {}}` for it.
    for (name, defaults, subnets) in [
        ("bare", oxide::types::VpcCreateDefaults { subnet: None }, 0),
        (
            "full",
            oxide::types::VpcCreateDefaults {
                subnet: Some(oxide::types::SubnetCreateDefaults {}),
            },
            1,
        ),
    ] {
        client
            .vpc_create()
            .project("p")
            .body_map(|b| {
                b.name(name)
                    .description("")
                    .dns_name(name)
                    .defaults(defaults)
            })
            .send()
            .await
            .unwrap();
        let found: Vec<oxide::types::VpcSubnet> = client
            .vpc_subnet_list()
            .project("p")
            .vpc(name)
            .stream()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(found.len(), subnets, "{name}");
        client
            .vpc_delete()
            .project("p")
            .vpc(name)
            .send()
            .await
            .unwrap();
    }
    let small = client
        .vpc_subnet_create()
        .project("p")
        .vpc("net")
        .body_map(|b| {
            b.name("small")
                .description("")
                .ipv4_block("10.2.0.0/24".parse::<oxide::types::Ipv4Net>().unwrap())
        })
        .send()
        .await
        .unwrap();
    assert_eq!(small.vpc_id, net.id);
    assert_eq!(small.ipv4_block.to_string(), "10.2.0.0/24");
    let names: Vec<String> = client
        .vpc_subnet_list()
        .vpc(net.id.to_string())
        .stream()
        .map_ok(|s| s.name.to_string())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(names, ["default", "small"]);
    // Overlapping blocks and custom routers are refused, and nothing is made.
    let (status, code, message) = sdk_error(
        client
            .vpc_subnet_create()
            .project("p")
            .vpc("net")
            .body_map(|b| {
                b.name("overlap")
                    .description("")
                    .ipv4_block("10.2.0.128/25".parse::<oxide::types::Ipv4Net>().unwrap())
            })
            .send()
            .await,
    );
    assert_eq!(
        (status, code.as_str()),
        (400, "InvalidRequest"),
        "{message}"
    );
    assert!(message.contains("overlaps subnet \"small\""), "{message}");
    let (status, _, message) = sdk_error(
        client
            .vpc_subnet_create()
            .project("p")
            .vpc("net")
            .body_map(|b| {
                b.name("routed")
                    .description("")
                    .ipv4_block("10.3.0.0/24".parse::<oxide::types::Ipv4Net>().unwrap())
                    .custom_router(Some("r".parse::<oxide::types::NameOrId>().unwrap()))
            })
            .send()
            .await,
    );
    assert_eq!(status, 400, "{message}");
    assert!(
        message.contains("custom routers are not supported"),
        "{message}"
    );
    // A subnet named without its VPC is a 400, as an instance named without its project.
    let (status, _, message) = sdk_error(client.vpc_subnet_view().subnet("small").send().await);
    assert_eq!(status, 400, "{message}");
    assert_eq!(
        client
            .vpc_subnet_view()
            .subnet(small.id.to_string())
            .send()
            .await
            .unwrap()
            .name
            .to_string(),
        "small"
    );

    // An instance without interfaces; two interfaces added while it is stopped.
    client
        .instance_create()
        .project("p")
        .body_map(|b| {
            b.name("vm")
                .description("")
                .hostname("vm")
                .ncpus(1u16)
                .memory(1073741824u64)
                .start(false)
                .network_interfaces(InstanceNetworkInterfaceAttachment::None)
        })
        .send()
        .await
        .unwrap();
    assert!(nic_names(&client, "vm").await.is_empty());
    let net0 = client
        .instance_network_interface_create()
        .project("p")
        .instance("vm")
        .body_map(|b| {
            b.name("net0")
                .description("first")
                .vpc_name("net")
                .subnet_name("small")
        })
        .send()
        .await
        .unwrap();
    assert!(net0.primary);
    assert_eq!((net0.vpc_id, net0.subnet_id), (net.id, small.id));
    assert!(net0.mac.starts_with("a8:40:25:f"), "{}", *net0.mac);
    let PrivateIpStack::DualStack { v4, v6 } = &net0.ip_stack else {
        panic!(
            "the SDK's default ip_config is dual stack: {:?}",
            net0.ip_stack
        );
    };
    let ip = u32::from(v4.ip);
    assert!(
        (u32::from(Ipv4Addr::new(10, 2, 0, 5))..=u32::from(Ipv4Addr::new(10, 2, 0, 254)))
            .contains(&ip),
        "{} is not assignable in 10.2.0.0/24",
        v4.ip
    );
    assert!(v4.transit_ips.is_empty() && v6.transit_ips.is_empty());
    let v6_block: halyard_common::net::Ipv6Net = small.ipv6_block.parse().unwrap();
    assert!(v6_block.contains(&v6.ip), "{} not in {v6_block}", v6.ip);
    let net1 = client
        .instance_network_interface_create()
        .project("p")
        .instance("vm")
        .body_map(|b| {
            b.name("net1")
                .description("")
                .vpc_name("net")
                .subnet_name("small")
                .ip_config(PrivateIpStackCreate::V4(PrivateIpv4StackCreate {
                    ip: Ipv4Assignment::Explicit(Ipv4Addr::new(10, 2, 0, 100)),
                    transit_ips: Vec::new(),
                }))
        })
        .send()
        .await
        .unwrap();
    assert!(!net1.primary);
    assert_ne!(*net1.mac, *net0.mac);
    match &net1.ip_stack {
        PrivateIpStack::V4(v4) => assert_eq!(v4.ip, Ipv4Addr::new(10, 2, 0, 100)),
        other => panic!("an interface without IPv6 is v4: {other:?}"),
    }
    // The same explicit address again: 409.
    let (status, code, message) = sdk_error(
        client
            .instance_network_interface_create()
            .project("p")
            .instance("vm")
            .body_map(|b| {
                b.name("net2")
                    .description("")
                    .vpc_name("net")
                    .subnet_name("small")
                    .ip_config(PrivateIpStackCreate::V4(PrivateIpv4StackCreate {
                        ip: Ipv4Assignment::Explicit(Ipv4Addr::new(10, 2, 0, 100)),
                        transit_ips: Vec::new(),
                    }))
            })
            .send()
            .await,
    );
    assert_eq!((status, code.as_str()), (409, "Conflict"), "{message}");
    assert!(message.contains("10.2.0.100"), "{message}");
    // All of an instance's interfaces are in one VPC.
    let (status, code, message) = sdk_error(
        client
            .instance_network_interface_create()
            .project("p")
            .instance("vm")
            .body_map(|b| {
                b.name("net2")
                    .description("")
                    .vpc_name("default")
                    .subnet_name("default")
            })
            .send()
            .await,
    );
    assert_eq!(
        (status, code.as_str()),
        (400, "InvalidRequest"),
        "{message}"
    );
    assert!(message.contains("another VPC"), "{message}");
    assert_eq!(nic_names(&client, "vm").await, ["net0", "net1"]);
    let viewed = client
        .instance_network_interface_view()
        .project("p")
        .instance("vm")
        .interface("net1")
        .send()
        .await
        .unwrap();
    assert_eq!(viewed.id, net1.id);
    let viewed = client
        .instance_network_interface_view()
        .interface(net0.id.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(viewed.name.to_string(), "net0");
    assert_eq!(
        serde_json::to_value(&viewed.ip_stack).unwrap(),
        serde_json::to_value(&net0.ip_stack).unwrap()
    );
    // Neither the VPC nor the subnet can go while interfaces are in them.
    let (status, _, message) = sdk_error(client.vpc_delete().project("p").vpc("net").send().await);
    assert_eq!(status, 409, "{message}");
    assert!(message.contains("network interface"), "{message}");
    let (status, _, message) = sdk_error(
        client
            .vpc_subnet_delete()
            .project("p")
            .vpc("net")
            .subnet("small")
            .send()
            .await,
    );
    assert_eq!(status, 409, "{message}");

    // Running: interfaces can be neither added nor removed, and nothing changes.
    client
        .instance_start()
        .project("p")
        .instance("vm")
        .send()
        .await
        .unwrap();
    wait_for_state(&client, "vm", InstanceState::Running).await;
    let nics_before = ctx.sql("SELECT to_jsonb(n)::text FROM network_interface n ORDER BY id");
    let (status, code, message) = sdk_error(
        client
            .instance_network_interface_create()
            .project("p")
            .instance("vm")
            .body_map(|b| {
                b.name("net2")
                    .description("")
                    .vpc_name("net")
                    .subnet_name("small")
            })
            .send()
            .await,
    );
    assert_eq!((status, code.as_str()), (409, "Conflict"), "{message}");
    assert!(message.contains("must be stopped"), "{message}");
    let (status, _, message) = sdk_error(
        client
            .instance_network_interface_delete()
            .interface(net1.id.to_string())
            .send()
            .await,
    );
    assert_eq!(status, 409, "{message}");
    assert!(message.contains("must be stopped"), "{message}");
    assert_eq!(
        ctx.sql("SELECT to_jsonb(n)::text FROM network_interface n ORDER BY id"),
        nics_before
    );
    assert_eq!(nic_names(&client, "vm").await, ["net0", "net1"]);
    client
        .instance_stop()
        .project("p")
        .instance("vm")
        .send()
        .await
        .unwrap();
    wait_for_state(&client, "vm", InstanceState::Stopped).await;

    // Stopped again: the primary goes last; then the subnet and the VPC can go.
    let (status, _, message) = sdk_error(
        client
            .instance_network_interface_delete()
            .project("p")
            .instance("vm")
            .interface("net0")
            .send()
            .await,
    );
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("primary"), "{message}");
    client
        .instance_network_interface_delete()
        .project("p")
        .instance("vm")
        .interface("net1")
        .send()
        .await
        .unwrap();
    client
        .instance_network_interface_delete()
        .interface(net0.id.to_string())
        .send()
        .await
        .unwrap();
    assert!(nic_names(&client, "vm").await.is_empty());
    let (status, code, _) = sdk_error(
        client
            .instance_network_interface_view()
            .interface(net0.id.to_string())
            .send()
            .await,
    );
    assert_eq!((status, code.as_str()), (404, "ObjectNotFound"));
    client
        .vpc_subnet_delete()
        .subnet(small.id.to_string())
        .send()
        .await
        .unwrap();
    client
        .vpc_delete()
        .project("p")
        .vpc("net")
        .send()
        .await
        .unwrap();
    let names: Vec<String> = client
        .vpc_list()
        .project("p")
        .stream()
        .map_ok(|v| v.name.to_string())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(names, ["default"]);
    let (status, _, _) = sdk_error(client.vpc_view().vpc(net.id.to_string()).send().await);
    assert_eq!(status, 404);

    // Deleting an instance deletes its interfaces: the default subnet can go afterwards.
    let last = client
        .instance_network_interface_create()
        .project("p")
        .instance("vm")
        .body_map(|b| {
            b.name("last")
                .description("")
                .vpc_name("default")
                .subnet_name("default")
        })
        .send()
        .await
        .unwrap();
    client
        .instance_delete()
        .project("p")
        .instance("vm")
        .send()
        .await
        .unwrap();
    let (status, _, _) = sdk_error(
        client
            .instance_network_interface_view()
            .interface(last.id.to_string())
            .send()
            .await,
    );
    assert_eq!(status, 404);
    assert_eq!(
        ctx.sql("SELECT count(*) FROM network_interface WHERE time_deleted IS NULL")
            .trim(),
        "0"
    );
    client
        .vpc_subnet_delete()
        .project("p")
        .vpc("default")
        .subnet("default")
        .send()
        .await
        .unwrap();
    ctx.assert_quiet_and_consistent().await;
}

/// The must-show race: 64 stopped instances each ask for an interface in a /26 (58 assignable
/// addresses: the first five and the last are reserved) at once, through the API. Exactly 58
/// get one, each a different address in the assignable range; the other 6 are refused with
/// 409 saying the subnet is full; the database holds exactly the 58 interfaces answered. Then
/// all 58 are deleted (none stays live) and the 58 addresses can be had again.
#[tokio::test]
async fn sixty_four_racing_interface_creates_fill_a_26_with_exactly_58() {
    const INSTANCES: usize = 64;
    const ASSIGNABLE: usize = 58;
    let ctx = TestContext::new().await;
    let http = crate::authn_support::http_client(&ctx.token);
    let base = ctx.external_url();
    let post = |path: String, body: Value| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let response = http.post(url).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, _) = post(
        "/v1/projects".into(),
        json!({"name": "p", "description": ""}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = post(
        "/v1/vpc-subnets?project=p&vpc=default".into(),
        json!({"name": "tiny", "description": "", "ipv4_block": "10.9.0.0/26"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let subnet_id = body["id"].as_str().unwrap().to_string();
    for chunk in (0..INSTANCES).collect::<Vec<_>>().chunks(8) {
        let created = futures::future::join_all(chunk.iter().map(|i| {
            post(
                "/v1/instances?project=p".into(),
                json!({"name": format!("vm{i}"), "description": "", "hostname": format!("vm{i}"),
                       "ncpus": 1, "memory": 1u64 << 30, "start": false,
                       "network_interfaces": {"type": "none"}}),
            )
        }))
        .await;
        for (status, body) in created {
            assert_eq!(status, 201, "{body}");
        }
    }

    let race = async || {
        futures::future::join_all((0..INSTANCES).map(|i| {
            post(
                format!("/v1/network-interfaces?project=p&instance=vm{i}"),
                json!({"name": "net0", "description": "", "vpc_name": "default",
                       "subnet_name": "tiny", "ip_config": {"type": "v4",
                       "value": {"ip": {"type": "auto"}}}}),
            )
        }))
        .await
    };
    let check = |answers: Vec<(u16, Value)>| -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        let mut refused = 0;
        for (status, body) in answers {
            match status {
                201 => {
                    assert_eq!(body["subnet_id"], subnet_id.as_str());
                    assert_eq!(body["ip_stack"]["type"], "v4", "{body}");
                    let ip: Ipv4Addr = body["ip_stack"]["value"]["ip"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    let octets = ip.octets();
                    assert!(
                        octets[..3] == [10, 9, 0] && (5..=62).contains(&octets[3]),
                        "{ip} is not an assignable address of 10.9.0.0/26"
                    );
                    assert!(addresses.insert(ip), "{ip} was given twice");
                    ids.insert(body["id"].as_str().unwrap().to_string());
                }
                409 => {
                    assert_eq!(body["error_code"], "Conflict", "{body}");
                    let message = body["message"].as_str().unwrap();
                    assert!(
                        message.contains("subnet \"tiny\" (10.9.0.0/26) is full"),
                        "{message}"
                    );
                    refused += 1;
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
        assert_eq!(
            (ids.len(), refused),
            (ASSIGNABLE, INSTANCES - ASSIGNABLE),
            "exactly 58 interfaces made and 6 refused"
        );
        ids
    };
    let live_in_subnet = || {
        ctx.sql(&format!(
            "SELECT id FROM network_interface WHERE subnet_id = '{subnet_id}' \
             AND time_deleted IS NULL ORDER BY id"
        ))
        .lines()
        .map(str::to_string)
        .collect::<BTreeSet<String>>()
    };

    let answered = check(race().await);
    // No interface in the database that no response announced, and none missing.
    assert_eq!(live_in_subnet(), answered);
    assert_eq!(
        ctx.sql(&format!(
            "SELECT count(*) FROM network_interface WHERE subnet_id = '{subnet_id}'"
        ))
        .trim(),
        "58",
        "no row left by a losing attempt"
    );

    // Delete them all, at once too.
    let deleted = futures::future::join_all(answered.iter().map(|id| {
        let http = http.clone();
        let url = format!("{base}/v1/network-interfaces/{id}");
        async move { http.delete(url).send().await.unwrap().status().as_u16() }
    }))
    .await;
    assert!(deleted.iter().all(|s| *s == 204), "{deleted:?}");
    assert!(live_in_subnet().is_empty(), "no live interface remains");
    assert_eq!(
        ctx.nexus()
            .datastore()
            .network_interface_list_all()
            .await
            .unwrap()
            .iter()
            .filter(|n| n.time_deleted.is_none())
            .count(),
        0
    );

    // The addresses are free again: the same race has the same outcome.
    let again = check(race().await);
    assert!(again.is_disjoint(&answered), "new interfaces, new ids");
    assert_eq!(live_in_subnet(), again);
    ctx.assert_quiet_and_consistent().await;
}

/// A subnet deleted while interfaces are being made in it, round after round: either the
/// delete wins (204, and every create finds the subnet gone: 404) or the creates it raced do
/// (the delete is 409 and they are all made); never a live interface in a deleted subnet.
#[tokio::test]
async fn a_subnet_delete_racing_interface_creates_leaves_none_in_a_deleted_subnet() {
    const INSTANCES: usize = 8;
    const ROUNDS: usize = 7; // an instance holds at most 8 interfaces
    let ctx = TestContext::new().await;
    let http = crate::authn_support::http_client(&ctx.token);
    let base = ctx.external_url();
    let send = |method: reqwest::Method, path: String, body: Option<Value>| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let mut request = http.request(method, url);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    use reqwest::Method as M;
    let (status, _) = send(
        M::POST,
        "/v1/projects".into(),
        Some(json!({"name": "p", "description": ""})),
    )
    .await;
    assert_eq!(status, 201);
    for i in 0..INSTANCES {
        let (status, body) = send(
            M::POST,
            "/v1/instances?project=p".into(),
            Some(json!({"name": format!("vm{i}"), "description": "",
                        "hostname": format!("vm{i}"), "ncpus": 1, "memory": 1u64 << 30,
                        "start": false, "network_interfaces": {"type": "none"}})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let (mut delete_won, mut creates_won) = (0, 0);
    for round in 0..ROUNDS {
        let (status, body) = send(
            M::POST,
            "/v1/vpc-subnets?project=p&vpc=default".into(),
            Some(json!({"name": format!("s{round}"), "description": "",
                        "ipv4_block": format!("10.{}.0.0/24", 20 + round)})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let subnet_id = body["id"].as_str().unwrap().to_string();
        let creates = futures::future::join_all((0..INSTANCES).map(|i| {
            send(
                M::POST,
                format!("/v1/network-interfaces?project=p&instance=vm{i}"),
                Some(json!({"name": format!("n{round}"), "description": "",
                            "vpc_name": "default", "subnet_name": format!("s{round}")})),
            )
        }));
        let delete = async {
            // Let some creates get under way first.
            tokio::time::sleep(Duration::from_millis(2 * round as u64)).await;
            send(M::DELETE, format!("/v1/vpc-subnets/{subnet_id}"), None).await
        };
        let (creates, (deleted, delete_body)) = futures::join!(creates, delete);
        let made = creates.iter().filter(|(s, _)| *s == 201).count();
        let gone = creates.iter().filter(|(s, _)| *s == 404).count();
        assert_eq!(made + gone, INSTANCES, "{creates:?}");
        match deleted {
            204 => {
                delete_won += 1;
                assert_eq!(made, 0, "the subnet was deleted, yet: {creates:?}");
            }
            409 => {
                creates_won += 1;
                assert_eq!(delete_body["error_code"], "Conflict");
                assert_eq!(gone, 0, "the delete was refused, yet: {creates:?}");
            }
            other => panic!("subnet delete answered {other}: {delete_body}"),
        }
        assert_eq!(
            ctx.sql(
                "SELECT count(*) FROM network_interface n JOIN vpc_subnet s \
                 ON s.id = n.subnet_id \
                 WHERE n.time_deleted IS NULL AND s.time_deleted IS NOT NULL"
            )
            .trim(),
            "0",
            "a live interface in a deleted subnet (round {round})"
        );
    }
    eprintln!("delete won {delete_won} rounds, the creates {creates_won}");
    ctx.assert_quiet_and_consistent().await;
}
