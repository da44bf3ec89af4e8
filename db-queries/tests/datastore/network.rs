//! VPCs, subnets and interfaces at the database: every project starts with its default VPC
//! and subnet; subnets of a VPC never overlap; an interface's address comes from its subnet's
//! assignable range and is freed by its delete; interfaces change only while their instance
//! has no VMM; and mapping reads take strictly increasing generations, even when they race.

use crate::Harness;
use halyard_common::net::Ipv4Net;
use halyard_common::{Error, NameOrId};
use halyard_db_queries::{InstanceForNics, NewNetworkInterface};
use std::collections::BTreeSet;

fn block(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

/// The VPC every project starts with.
async fn default_vpc(h: &Harness, project: &halyard_db_model::Project) -> halyard_db_model::Vpc {
    h.datastore
        .vpc_fetch(project.id(), &NameOrId::Name("default".parse().unwrap()))
        .await
        .unwrap()
}

#[tokio::test]
async fn subnets_of_a_vpc_never_overlap_and_a_project_starts_with_its_default() {
    let h = Harness::new();
    let project = h.project("p").await;
    let vpc = default_vpc(&h, &project).await;
    let default = h
        .datastore
        .vpc_subnet_fetch(vpc.id(), &NameOrId::Name("default".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(default.ipv4_block(), block("172.30.0.0/22"));
    assert!(vpc.ipv6_prefix().contains(&default.ipv6_block()));

    for (overlapping, name) in [
        ("172.30.1.0/24", "inside"),
        ("172.16.0.0/12", "around"),
        ("172.30.3.0/26", "end"),
    ] {
        let err = h
            .datastore
            .vpc_subnet_create(
                vpc.id(),
                name.parse().unwrap(),
                String::new(),
                block(overlapping),
                None,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidRequest { .. }) && err.to_string().contains("overlaps"),
            "{overlapping}: {err}"
        );
    }
    for bad in ["8.8.8.0/24", "10.0.0.0/27", "10.0.0.0/7"] {
        let err = h
            .datastore
            .vpc_subnet_create(
                vpc.id(),
                "bad".parse().unwrap(),
                String::new(),
                block(bad),
                None,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidRequest { .. }), "{bad}: {err}");
    }
    let next = h
        .datastore
        .vpc_subnet_create(
            vpc.id(),
            "next".parse().unwrap(),
            String::new(),
            block("172.30.4.0/24"),
            None,
        )
        .await
        .unwrap();
    assert_ne!(next.ipv6_block(), default.ipv6_block());
}

#[tokio::test]
async fn addresses_come_from_the_assignable_range_and_are_freed_by_delete() {
    let h = Harness::new();
    let project = h.project("p").await;
    let vpc = default_vpc(&h, &project).await;
    // A /26: 64 addresses, 58 assignable (the first five and the last are reserved).
    let subnet = h
        .datastore
        .vpc_subnet_create(
            vpc.id(),
            "small".parse().unwrap(),
            String::new(),
            block("10.1.0.0/26"),
            None,
        )
        .await
        .unwrap();
    let instance = h.stopped_instance(&project, "vm").await;
    let new = |name: &str, ip| NewNetworkInterface {
        id: halyard_common::ids::NetworkInterfaceUuid::new_v4(),
        instance_id: instance.id(),
        name: name.parse().unwrap(),
        description: String::new(),
        subnet: subnet.clone(),
        ip,
        dual_stack: true,
    };
    for reserved in ["10.1.0.0", "10.1.0.4", "10.1.0.63", "10.2.0.9"] {
        let err = h
            .datastore
            .network_interface_create(
                new("r", Some(reserved.parse().unwrap())),
                InstanceForNics::Stopped,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidRequest { .. }),
            "{reserved}: {err}"
        );
    }
    let explicit = h
        .datastore
        .network_interface_create(
            new("a", Some("10.1.0.5".parse().unwrap())),
            InstanceForNics::Stopped,
        )
        .await
        .unwrap();
    assert!(explicit.is_primary);
    assert_eq!(explicit.slot, 0);
    assert_eq!(explicit.ip().to_string(), "10.1.0.5");
    assert_eq!(explicit.ipv6(), Some(subnet.ipv6_for(explicit.ip())));
    let taken = h
        .datastore
        .network_interface_create(
            new("b", Some("10.1.0.5".parse().unwrap())),
            InstanceForNics::Stopped,
        )
        .await
        .unwrap_err();
    assert!(matches!(taken, Error::Conflict { .. }), "{taken}");
    let auto = h
        .datastore
        .network_interface_create(new("c", None), InstanceForNics::Stopped)
        .await
        .unwrap();
    assert!(!auto.is_primary);
    assert_eq!(auto.slot, 1);
    let n = u32::from(auto.ip());
    assert!(
        (u32::from("10.1.0.5".parse::<std::net::Ipv4Addr>().unwrap())
            ..=u32::from("10.1.0.62".parse::<std::net::Ipv4Addr>().unwrap()))
            .contains(&n)
    );
    assert_ne!(auto.ip(), explicit.ip());
    // The primary goes last; then the address is free again.
    let err = h
        .datastore
        .network_interface_delete(explicit.id(), InstanceForNics::Stopped)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err}");
    for nic in [&auto, &explicit] {
        assert!(
            h.datastore
                .network_interface_delete(nic.id(), InstanceForNics::Stopped)
                .await
                .unwrap()
        );
    }
    let again = h
        .datastore
        .network_interface_create(
            new("d", Some("10.1.0.5".parse().unwrap())),
            InstanceForNics::Stopped,
        )
        .await
        .unwrap();
    assert!(again.is_primary);
    // A deleted interface is not made again under its id.
    let mut repeat = new("e", None);
    repeat.id = explicit.id();
    let err = h
        .datastore
        .network_interface_create(repeat, InstanceForNics::Stopped)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    // Only while the instance has no VMM: a `creating` instance refuses the API's kind.
    let creating = h.instance(&project, "creating").await;
    let mut on_creating = new("f", None);
    on_creating.instance_id = creating.id();
    let err = h
        .datastore
        .network_interface_create(on_creating, InstanceForNics::Stopped)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
}

#[tokio::test]
async fn racing_mapping_reads_take_distinct_increasing_generations() {
    let h = Harness::new();
    let project = h.project("p").await;
    let vpc = default_vpc(&h, &project).await;
    let first = h
        .datastore
        .vpc_mappings_read(vpc.id(), None, None)
        .await
        .unwrap();
    assert_eq!(first.vni, vpc.vni());
    assert!(first.mappings.is_empty(), "no instance runs");
    let reads = futures::future::join_all(
        (0..16).map(|_| h.datastore.vpc_mappings_read(vpc.id(), None, None)),
    )
    .await;
    let generations: BTreeSet<u64> = reads
        .into_iter()
        .map(|r| r.unwrap().generation.as_u64())
        .collect();
    assert_eq!(generations.len(), 16, "{generations:?}");
    assert!(generations.iter().all(|g| *g > first.generation.as_u64()));
}

#[tokio::test]
async fn a_mappings_read_past_a_generation_exceeds_it() {
    let h = Harness::new();
    let project = h.project("p").await;
    let vpc = default_vpc(&h, &project).await;
    let first = h
        .datastore
        .vpc_mappings_read(vpc.id(), None, None)
        .await
        .unwrap();
    // A sled holds a set far newer than the database's: the read skips past it.
    let held = halyard_common::Generation::try_from(first.generation.as_u64() + 100).unwrap();
    let past = h
        .datastore
        .vpc_mappings_read(vpc.id(), None, Some(held))
        .await
        .unwrap();
    assert_eq!(past.generation, held.next());
    // An older `past` changes nothing: the read still takes the next generation.
    let next = h
        .datastore
        .vpc_mappings_read(vpc.id(), None, Some(first.generation))
        .await
        .unwrap();
    assert_eq!(next.generation, past.generation.next());
}
