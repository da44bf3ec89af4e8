//! Users, tokens, device authorization requests and the audit log.

use crate::Harness;
use chrono::{Duration, Utc};
use halyard_common::ids::{ApiTokenUuid, AuditLogEntryUuid};
use halyard_common::{Error, ResourceType};
use halyard_db_model::{AuditLogEntry, default_silo_id};
use halyard_db_queries::DeviceTokenPoll;
use halyard_db_queries::secret::hash_secret;

#[tokio::test]
async fn a_token_authenticates_its_user_until_it_expires_or_is_revoked_and_only_its_hash_is_kept() {
    let h = Harness::new();
    let ds = &h.datastore;
    let alice = ds
        .user_create(default_silo_id(), "alice".parse().unwrap())
        .await
        .unwrap();
    let duplicate = ds
        .user_create(default_silo_id(), "alice".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(
            duplicate,
            Error::ObjectAlreadyExists {
                type_name: ResourceType::User,
                ..
            }
        ),
        "{duplicate:?}"
    );

    let (token, secret) = ds.token_create(alice.id(), None).await.unwrap();
    let owner = ds
        .token_authenticate(secret.expose())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.user.id(), alice.id());
    assert_eq!(owner.token.id(), token.id());
    // The database holds the hash, never the secret.
    let stored = h.sql("SELECT token_hash FROM api_token");
    assert_eq!(stored.trim(), hash_secret(secret.expose()));
    assert!(!h.sql("SELECT * FROM api_token").contains(secret.expose()));

    let (_, expiring) = ds
        .token_create(alice.id(), Some(Utc::now() + Duration::hours(1)))
        .await
        .unwrap();
    assert!(
        ds.token_authenticate(expiring.expose())
            .await
            .unwrap()
            .is_some()
    );
    let (_, expired) = ds
        .token_create(alice.id(), Some(Utc::now() - Duration::seconds(1)))
        .await
        .unwrap();
    assert!(
        ds.token_authenticate(expired.expose())
            .await
            .unwrap()
            .is_none()
    );

    let revoked = ds.token_revoke(token.id()).await.unwrap();
    let first = revoked.time_revoked.unwrap();
    assert!(
        ds.token_authenticate(secret.expose())
            .await
            .unwrap()
            .is_none()
    );
    // Revoking again keeps the first revocation.
    assert_eq!(
        ds.token_revoke(token.id()).await.unwrap().time_revoked,
        Some(first)
    );
    let unknown = ds.token_revoke(ApiTokenUuid::new_v4()).await.unwrap_err();
    assert_eq!(unknown.error_code(), "ObjectNotFound");

    // A deleted user's tokens stop working.
    h.sql(&format!(
        "UPDATE silo_user SET time_deleted = now() WHERE id = '{}'",
        alice.id()
    ));
    assert!(
        ds.token_authenticate(expiring.expose())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_device_request_grants_one_token_once_confirmed_and_never_again() {
    let h = Harness::new();
    let ds = &h.datastore;
    let bob = ds
        .user_create(default_silo_id(), "bob".parse().unwrap())
        .await
        .unwrap();
    let client = uuid::Uuid::new_v4();
    let (request, device_code) = ds
        .device_auth_request_create(client, Some(60))
        .await
        .unwrap();
    assert!(request.user_code.len() == 9 && request.user_code.as_bytes()[4] == b'-');

    let poll = ds
        .device_access_token_poll(client, device_code.expose())
        .await
        .unwrap();
    assert!(matches!(poll, DeviceTokenPoll::Pending), "{poll:?}");
    let other_client = ds
        .device_access_token_poll(uuid::Uuid::new_v4(), device_code.expose())
        .await
        .unwrap();
    assert!(
        matches!(other_client, DeviceTokenPoll::Invalid),
        "{other_client:?}"
    );

    let unknown = ds
        .device_auth_confirm("ZZZZ-ZZZZ", bob.id())
        .await
        .unwrap_err();
    assert_eq!(unknown.error_code(), "ObjectNotFound");
    ds.device_auth_confirm(&request.user_code.to_lowercase(), bob.id())
        .await
        .unwrap();
    // Confirmed once only.
    assert!(
        ds.device_auth_confirm(&request.user_code, bob.id())
            .await
            .is_err()
    );

    let DeviceTokenPoll::Granted { token, secret } = ds
        .device_access_token_poll(client, device_code.expose())
        .await
        .unwrap()
    else {
        panic!("not granted");
    };
    assert_eq!(token.user_id(), bob.id());
    let lifetime = token.time_expires.unwrap() - token.time_created;
    assert!((59..=61).contains(&lifetime.num_seconds()), "{lifetime}");
    assert_eq!(
        ds.token_authenticate(secret.expose())
            .await
            .unwrap()
            .unwrap()
            .user
            .id(),
        bob.id()
    );
    let again = ds
        .device_access_token_poll(client, device_code.expose())
        .await
        .unwrap();
    assert!(matches!(again, DeviceTokenPoll::Invalid), "{again:?}");

    // An expired request can be neither confirmed nor polled.
    let (late, late_code) = ds.device_auth_request_create(client, None).await.unwrap();
    h.sql(&format!(
        "UPDATE device_auth_request SET time_expires = now() - interval '1 second' WHERE id = '{}'",
        late.id.0
    ));
    assert!(
        ds.device_auth_confirm(&late.user_code, bob.id())
            .await
            .is_err()
    );
    let late_poll = ds
        .device_access_token_poll(client, late_code.expose())
        .await
        .unwrap();
    assert!(
        matches!(late_poll, DeviceTokenPoll::Invalid),
        "{late_poll:?}"
    );
}

#[tokio::test]
async fn the_audit_log_lists_the_newest_entries_newest_last() {
    let h = Harness::new();
    let ds = &h.datastore;
    let start = Utc::now();
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = AuditLogEntryUuid::new_v4();
        ids.push(id);
        ds.audit_log_insert(&AuditLogEntry {
            id: id.into(),
            time_started: halyard_db_model::now() + Duration::milliseconds(i),
            time_completed: None,
            request_id: format!("request-{i}"),
            method: "POST".into(),
            path: "/v1/projects".into(),
            operation_id: "project_create".into(),
            actor_kind: "unauthenticated".into(),
            actor_id: None,
            actor_silo_id: None,
            http_status: None,
            error_code: None,
        })
        .await
        .unwrap();
    }
    ds.audit_log_complete(ids[4], 409, Some("Conflict".into()))
        .await
        .unwrap();
    let newest = ds.audit_log_list(2).await.unwrap();
    let request_ids: Vec<&str> = newest.iter().map(|e| e.request_id.as_str()).collect();
    assert_eq!(request_ids, ["request-3", "request-4"]);
    assert_eq!(newest[1].http_status, Some(409));
    assert_eq!(newest[1].error_code.as_deref(), Some("Conflict"));
    assert!(newest[1].time_completed.unwrap() >= start);
    assert_eq!(newest[0].http_status, None);
}
