use crate::{Harness, instance_params};
use halyard_common::ids::{GenericUuid, ProjectUuid};
use halyard_common::{Error, NameOrId, ResourceType};
use halyard_db_model::Project;
use halyard_db_queries::{DataPageParams, PaginatedBy, PaginationOrder};
use std::num::NonZeroU32;

#[tokio::test]
async fn projects_are_created_fetched_by_name_or_id_and_named_uniquely() {
    let h = Harness::new();
    let created = h.project("alpha").await;
    let by_name = h
        .datastore
        .project_fetch(&"alpha".parse().unwrap())
        .await
        .unwrap();
    let by_id = h
        .datastore
        .project_fetch(&NameOrId::Id(created.id().into_untyped_uuid()))
        .await
        .unwrap();
    assert_eq!(by_name, created);
    assert_eq!(by_id, created);

    let duplicate = h
        .datastore
        .project_create(Project::new(
            ProjectUuid::new_v4(),
            "alpha".parse().unwrap(),
            String::new(),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&duplicate, Error::ObjectAlreadyExists { type_name: ResourceType::Project, name } if name == "alpha"),
        "{duplicate:?}"
    );

    let missing = h
        .datastore
        .project_fetch(&"nope".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(missing.error_code(), "ObjectNotFound");
    assert!(missing.to_string().contains("\"nope\""), "{missing}");
}

#[tokio::test]
async fn projects_page_by_name_and_id_in_both_directions() {
    let h = Harness::new();
    let names = ["p-c", "p-a", "p-e", "p-b", "p-d"];
    let mut ids = Vec::new();
    for name in names {
        ids.push(h.project(name).await.id().into_untyped_uuid());
    }
    let two = NonZeroU32::new(2).unwrap();

    // Walk every page by name, ascending.
    let mut seen = Vec::new();
    let mut marker = None;
    loop {
        let params = DataPageParams {
            marker: marker.as_ref(),
            direction: PaginationOrder::Ascending,
            limit: two,
        };
        let page = h
            .datastore
            .project_list(&PaginatedBy::Name(params))
            .await
            .unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        marker = Some(last.name().clone());
        seen.extend(page.iter().map(|p| p.name().to_string()));
    }
    assert_eq!(seen, ["p-a", "p-b", "p-c", "p-d", "p-e"]);

    // Descending by name, after a marker.
    let marker = "p-d".parse().unwrap();
    let params = DataPageParams {
        marker: Some(&marker),
        direction: PaginationOrder::Descending,
        limit: two,
    };
    let page = h
        .datastore
        .project_list(&PaginatedBy::Name(params))
        .await
        .unwrap();
    assert_eq!(
        page.iter()
            .map(|p| p.name().to_string())
            .collect::<Vec<_>>(),
        ["p-c", "p-b"]
    );

    // By id: every project exactly once, in id order.
    let params = DataPageParams {
        marker: None,
        direction: PaginationOrder::Ascending,
        limit: NonZeroU32::new(100).unwrap(),
    };
    let listed: Vec<_> = h
        .datastore
        .project_list(&PaginatedBy::Id(params))
        .await
        .unwrap()
        .iter()
        .map(|p| p.id().into_untyped_uuid())
        .collect();
    ids.sort();
    assert_eq!(listed, ids);
}

#[tokio::test]
async fn only_empty_projects_can_be_deleted() {
    let h = Harness::new();
    let project = h.project("busy").await;
    let instance = h.instance(&project, "web").await;

    let refused = h
        .datastore
        .project_delete(&"busy".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(refused.error_code(), "InvalidRequest");
    assert!(
        refused.to_string().contains("delete them first"),
        "{refused}"
    );
    assert!(
        h.datastore
            .project_fetch(&"busy".parse().unwrap())
            .await
            .is_ok()
    );

    h.datastore
        .instance_mark_destroyed(instance.id())
        .await
        .unwrap();
    assert_eq!(
        h.datastore
            .project_delete(&"busy".parse().unwrap())
            .await
            .unwrap(),
        project.id()
    );
    let gone = h
        .datastore
        .project_fetch(&"busy".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(gone.error_code(), "ObjectNotFound");
    // Deleting again is "not found", and the name is free again.
    assert!(
        h.datastore
            .project_delete(&"busy".parse().unwrap())
            .await
            .is_err()
    );
    h.project("busy").await;
}

#[tokio::test]
async fn a_project_delete_racing_instance_creates_never_orphans_an_instance() {
    for round in 0..5 {
        let h = Harness::with_pool(24);
        let project = h.project("racy").await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..10 {
            let datastore = h.datastore.clone();
            let params = instance_params(&project, &format!("vm-{i}"));
            tasks.spawn(async move { datastore.instance_insert(params).await.map(|_| ()) });
        }
        let datastore = h.datastore.clone();
        let delete =
            tokio::spawn(async move { datastore.project_delete(&"racy".parse().unwrap()).await });
        let mut created = 0;
        while let Some(result) = tasks.join_next().await {
            match result.unwrap() {
                Ok(()) => created += 1,
                Err(e) => assert_eq!(e.error_code(), "ObjectNotFound", "round {round}: {e}"),
            }
        }
        let deleted = delete.await.unwrap().is_ok();
        let live_instances: i64 = h
            .sql(&format!(
                "SELECT count(*) FROM instance WHERE project_id = '{}' AND time_deleted IS NULL",
                project.id()
            ))
            .trim()
            .parse()
            .unwrap();
        assert_eq!(live_instances, created, "round {round}");
        assert!(
            !(deleted && created > 0),
            "round {round}: project deleted with {created} live instances"
        );
    }
}

/// Both ways of creating a project (the plain one, and the external API's, which makes its
/// creator the admin) give it the `default` VPC with the `default` subnet, each project its own
/// VNI: an instance's default interface needs them.
#[tokio::test]
async fn every_project_gets_a_default_vpc_and_subnet_however_it_is_created() {
    let h = Harness::new();
    let ds = &h.datastore;
    let plain = h.project("plain").await;
    let admin = ds
        .user_create(
            halyard_db_model::default_silo_id(),
            "owner".parse().unwrap(),
        )
        .await
        .unwrap();
    let administered = ds
        .project_create_with_admin(
            Project::new(
                ProjectUuid::new_v4(),
                "administered".parse().unwrap(),
                String::new(),
            ),
            admin.id(),
        )
        .await
        .unwrap();
    // What a create returns is the project as committed (its VPC's insert bumped its rcgen).
    for project in [&plain, &administered] {
        let fetched = ds
            .project_fetch(&NameOrId::Id(project.id().into_untyped_uuid()))
            .await
            .unwrap();
        assert_eq!(&fetched, project);
    }
    let default: NameOrId = NameOrId::Name("default".parse().unwrap());
    let mut vnis = Vec::new();
    for project in [&plain, &administered] {
        let vpc = ds
            .vpc_fetch(project.id(), &default)
            .await
            .unwrap_or_else(|e| panic!("project {}: {e}", project.name()));
        ds.vpc_subnet_fetch(vpc.id(), &default)
            .await
            .unwrap_or_else(|e| panic!("project {}: {e}", project.name()));
        vnis.push(vpc.vni());
    }
    assert_ne!(vnis[0], vnis[1], "each project's VPC its own VNI");
    let duplicate = ds
        .project_create_with_admin(
            Project::new(
                ProjectUuid::new_v4(),
                "administered".parse().unwrap(),
                String::new(),
            ),
            admin.id(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&duplicate, Error::ObjectAlreadyExists { type_name: ResourceType::Project, name } if name == "administered"),
        "{duplicate:?}"
    );
}
