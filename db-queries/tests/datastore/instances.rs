use crate::{Harness, instance_params};
use halyard_common::ids::{GenericUuid, InstanceUuid, ProjectUuid, VmmUuid};
use halyard_common::{ByteCount, Error, InstanceNexusState, ResourceType};
use halyard_db_queries::{DataPageParams, PaginatedBy, PaginationOrder};
use std::num::NonZeroU32;

#[tokio::test]
async fn instances_are_inserted_fetched_and_listed_per_project() {
    let h = Harness::new();
    let project = h.project("web").await;
    let other = h.project("other").await;
    let a = h.instance(&project, "a").await;
    let b = h.instance(&project, "b").await;
    h.instance(&other, "a").await; // same name, another project: allowed

    assert_eq!(a.runtime.nexus_state(), InstanceNexusState::Creating);
    assert_eq!(a.runtime.generation().as_u64(), 1);
    assert_eq!(h.datastore.instance_fetch(a.id()).await.unwrap(), a);
    assert_eq!(
        h.datastore
            .instance_fetch_by_name(project.id(), a.name())
            .await
            .unwrap(),
        a
    );

    let limit = NonZeroU32::new(10).unwrap();
    let page = DataPageParams {
        marker: None,
        direction: PaginationOrder::Descending,
        limit,
    };
    let listed: Vec<_> = h
        .datastore
        .instance_list_with_vmm(project.id(), &PaginatedBy::Name(page))
        .await
        .unwrap()
        .into_iter()
        .map(|listed| listed.instance)
        .collect();
    assert_eq!(listed, vec![b.clone(), a.clone()]);

    let marker = a.id().into_untyped_uuid();
    let page = DataPageParams {
        marker: Some(&marker),
        direction: PaginationOrder::Ascending,
        limit,
    };
    let after_a = h
        .datastore
        .instance_list_with_vmm(project.id(), &PaginatedBy::Id(page))
        .await
        .unwrap();
    assert!(
        after_a
            .iter()
            .all(|i| i.instance.id().into_untyped_uuid() > marker)
    );
    assert_eq!(
        after_a.len(),
        usize::from(b.id().into_untyped_uuid() > marker)
    );

    // Same name in the same project: refused, naming the name.
    let err = h
        .datastore
        .instance_insert(instance_params(&project, "a"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ObjectAlreadyExists { type_name: ResourceType::Instance, name } if name == "a"),
        "{err:?}"
    );

    // Repeating an insert (as a replayed saga action does) returns the stored record.
    let mut again = instance_params(&project, "zzz");
    again.id = a.id();
    assert_eq!(h.datastore.instance_insert(again).await.unwrap(), a);
}

#[tokio::test]
async fn bad_instance_input_gets_typed_errors_and_changes_nothing() {
    let h = Harness::new();
    let project = h.project("p").await;
    let base = instance_params(&project, "vm");

    let mut zero_cpus = base.clone();
    zero_cpus.ncpus = 0;
    let mut zero_memory = base.clone();
    zero_memory.memory = ByteCount::try_from(0u64).unwrap();
    let mut odd_memory = base.clone();
    odd_memory.memory = ByteCount::try_from(1_000_000u64).unwrap();
    let mut bad_hostname = base.clone();
    bad_hostname.hostname = "-bad_host-".into();
    let mut long_description = base.clone();
    long_description.description = "x".repeat(10_000);
    let mut unknown_project = base.clone();
    unknown_project.project_id = ProjectUuid::new_v4();

    for (params, label) in [
        (zero_cpus, "ncpus"),
        (zero_memory, "memory"),
        (odd_memory, "memory"),
        (bad_hostname, "hostname"),
        (long_description, "description"),
    ] {
        let err = h.datastore.instance_insert(params).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidValue { label: l, .. } if l == label),
            "{err:?}"
        );
        assert_eq!(err.status_code(), 400);
    }
    let err = h
        .datastore
        .instance_insert(unknown_project)
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), "ObjectNotFound", "{err:?}");

    // Negative sizes cannot even be expressed.
    assert!(ByteCount::try_from(-1i64).is_err());

    // Unknown ids are "not found", never a panic.
    let unknown = InstanceUuid::new_v4();
    assert_eq!(
        h.datastore
            .instance_fetch(unknown)
            .await
            .unwrap_err()
            .error_code(),
        "ObjectNotFound"
    );
    assert_eq!(
        h.datastore
            .instance_mark_destroyed(unknown)
            .await
            .unwrap_err()
            .error_code(),
        "ObjectNotFound"
    );
    assert_eq!(
        h.datastore
            .vmm_fetch(VmmUuid::new_v4())
            .await
            .unwrap_err()
            .error_code(),
        "ObjectNotFound"
    );

    assert_eq!(h.sql("SELECT count(*) FROM instance").trim(), "0");
}

#[tokio::test]
async fn corrupt_rows_are_reported_as_errors_not_panics() {
    let h = Harness::new();
    let project = h.project("p").await;
    // A name that breaks the naming rules, written behind the datastore's back.
    h.sql(&format!(
        "UPDATE project SET name = 'Not A Name' WHERE id = '{}'",
        project.id()
    ));
    let err = h
        .datastore
        .project_fetch(&halyard_common::NameOrId::Id(
            project.id().into_untyped_uuid(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), "Internal", "{err:?}");
    assert!(err.to_string().contains("cannot read"), "{err}");
}

#[tokio::test]
async fn runtime_writes_apply_only_with_a_newer_generation() {
    let h = Harness::new();
    let project = h.project("p").await;
    let instance = h.instance(&project, "vm").await;

    let mut newer = instance.runtime.next();
    newer.nexus_state = InstanceNexusState::NoVmm.into();
    assert!(
        h.datastore
            .instance_update_runtime(instance.id(), &newer)
            .await
            .unwrap()
    );
    // The same write again is a repeat: not applied.
    assert!(
        !h.datastore
            .instance_update_runtime(instance.id(), &newer)
            .await
            .unwrap()
    );

    // A write built on the old generation (a racer that lost) is stale: not applied.
    let mut stale = instance.runtime.next();
    stale.nexus_state = InstanceNexusState::Failed.into();
    assert!(
        !h.datastore
            .instance_update_runtime(instance.id(), &stale)
            .await
            .unwrap()
    );
    let stored = h.datastore.instance_fetch(instance.id()).await.unwrap();
    assert_eq!(stored.runtime, newer);

    // Racing writers of the same next generation: exactly one wins.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let datastore = h.datastore.clone();
        let mut attempt = stored.runtime.next();
        attempt.active_propolis_id = Some(VmmUuid::new_v4().into());
        attempt.nexus_state = InstanceNexusState::Vmm.into();
        let id = instance.id();
        tasks.spawn(async move {
            (
                datastore
                    .instance_update_runtime(id, &attempt)
                    .await
                    .unwrap(),
                attempt,
            )
        });
    }
    let mut winners = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let (applied, attempt) = result.unwrap();
        if applied {
            winners.push(attempt);
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(
        h.datastore
            .instance_fetch(instance.id())
            .await
            .unwrap()
            .runtime,
        winners[0]
    );

    // An unknown instance is an error, not "stale".
    let err = h
        .datastore
        .instance_update_runtime(InstanceUuid::new_v4(), &newer)
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), "ObjectNotFound");
}

#[tokio::test]
async fn only_instances_without_a_vmm_are_destroyed() {
    let h = Harness::new();
    let project = h.project("p").await;
    let instance = h.stopped_instance(&project, "vm").await;

    let mut running = instance.runtime.next();
    running.nexus_state = InstanceNexusState::Vmm.into();
    running.active_propolis_id = Some(VmmUuid::new_v4().into());
    assert!(
        h.datastore
            .instance_update_runtime(instance.id(), &running)
            .await
            .unwrap()
    );
    let err = h
        .datastore
        .instance_mark_destroyed(instance.id())
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), "Conflict");
    assert!(err.to_string().contains("stop it"), "{err}");

    let mut stopped = running.next();
    stopped.nexus_state = InstanceNexusState::NoVmm.into();
    stopped.active_propolis_id = None;
    assert!(
        h.datastore
            .instance_update_runtime(instance.id(), &stopped)
            .await
            .unwrap()
    );
    assert!(
        h.datastore
            .instance_mark_destroyed(instance.id())
            .await
            .unwrap()
    );
    assert!(
        !h.datastore
            .instance_mark_destroyed(instance.id())
            .await
            .unwrap()
    );
    assert_eq!(
        h.datastore
            .instance_fetch(instance.id())
            .await
            .unwrap_err()
            .error_code(),
        "ObjectNotFound"
    );
    // Its name is free again.
    h.instance(&project, "vm").await;
}
