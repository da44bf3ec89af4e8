use crate::{Harness, one_vmm};
use halyard_common::ids::{InstanceUuid, SledUuid, VmmUuid};
use halyard_common::{ByteCount, Error, SledBackend};
use halyard_db_model::SledResources;
use halyard_db_queries::SledChoice;
use std::collections::BTreeMap;

/// Sums reservations per sled, and reads each sled's totals and capacity, straight from SQL.
fn audit(h: &Harness) -> Vec<(String, i64, i64, i64, i64, i64, i64)> {
    h.sql(
        "SELECT s.id, s.usable_hardware_threads, s.reserved_hardware_threads, \
                COALESCE(sum(r.hardware_threads), 0), s.usable_physical_ram, \
                s.reserved_physical_ram, COALESCE(sum(r.physical_ram), 0) \
         FROM sled s LEFT JOIN sled_reservation r ON r.sled_id = s.id GROUP BY s.id ORDER BY s.id",
    )
    .lines()
    .map(|line| {
        let f: Vec<&str> = line.split('|').collect();
        let n = |i: usize| f[i].parse::<i64>().unwrap();
        (f[0].to_string(), n(1), n(2), n(3), n(4), n(5), n(6))
    })
    .collect()
}

/// Capacity never exceeded, and the sled totals equal the sum of its reservations.
fn assert_books_balance(h: &Harness) {
    for (sled, usable_t, reserved_t, sum_t, usable_r, reserved_r, sum_r) in audit(h) {
        assert!(
            reserved_t <= usable_t && reserved_r <= usable_r,
            "sled {sled} over-committed"
        );
        assert_eq!(
            reserved_t, sum_t,
            "sled {sled} thread total disagrees with its reservations"
        );
        assert_eq!(
            reserved_r, sum_r,
            "sled {sled} RAM total disagrees with its reservations"
        );
    }
}

#[tokio::test]
async fn fifty_racing_reservations_on_room_for_ten_give_exactly_ten() {
    let h = Harness::with_pool(50);
    // Room for exactly 10 VMMs of 2 threads / 1 GiB.
    let sled = h.sled(20, 10).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let datastore = h.datastore.clone();
        let sled_id = sled.id();
        tasks.spawn(async move {
            datastore
                .sled_reserve(
                    VmmUuid::new_v4(),
                    InstanceUuid::new_v4(),
                    SledChoice::Specific(sled_id),
                    one_vmm(),
                )
                .await
        });
    }
    let (mut granted, mut refused) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(reservation) => {
                assert_eq!(reservation.sled_id(), sled.id());
                granted += 1;
            }
            Err(e) => {
                assert!(matches!(e, Error::InsufficientCapacity { .. }), "{e:?}");
                assert!(e.to_string().contains("choose another sled"), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!((granted, refused), (10, 40));
    let stored = h.datastore.sled_fetch(sled.id()).await.unwrap();
    assert_eq!(stored.reserved_hardware_threads, 20);
    assert_eq!(
        stored.reserved_physical_ram.0,
        ByteCount::from_gibibytes_u32(10)
    );
    assert_eq!(
        h.datastore
            .sled_reservation_list(Some(sled.id()))
            .await
            .unwrap()
            .len(),
        10
    );
    assert_books_balance(&h);
}

#[tokio::test]
async fn racing_placements_across_sleds_fill_them_without_over_committing() {
    let h = Harness::with_pool(40);
    // Three sleds; RAM is the limit on one, threads on another.
    let sleds = [
        h.sled(8, 100).await,
        h.sled(100, 3).await,
        h.sled(6, 6).await,
    ];
    let capacity = 4 + 3 + 3;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let datastore = h.datastore.clone();
        tasks.spawn(async move {
            datastore
                .sled_reserve(
                    VmmUuid::new_v4(),
                    InstanceUuid::new_v4(),
                    SledChoice::Any,
                    one_vmm(),
                )
                .await
        });
    }
    let mut per_sled: BTreeMap<SledUuid, usize> = BTreeMap::new();
    let mut refused = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(r) => *per_sled.entry(r.sled_id()).or_default() += 1,
            Err(e) => {
                assert!(matches!(e, Error::InsufficientCapacity { .. }), "{e:?}");
                assert!(e.to_string().contains("no sled has room"), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!(per_sled.values().sum::<usize>(), capacity);
    assert_eq!(refused, 40 - capacity);
    assert_eq!(per_sled[&sleds[0].id()], 4);
    assert_eq!(per_sled[&sleds[1].id()], 3);
    assert_eq!(per_sled[&sleds[2].id()], 3);
    assert_books_balance(&h);
}

#[tokio::test]
async fn reserving_is_idempotent_and_releasing_gives_capacity_back() {
    let h = Harness::new();
    let sled = h.sled(4, 4).await;
    let vmm = VmmUuid::new_v4();
    let instance = InstanceUuid::new_v4();
    let first = h
        .datastore
        .sled_reserve(vmm, instance, SledChoice::Any, one_vmm())
        .await
        .unwrap();
    // A repeated action (saga replay) gets the same reservation, and nothing more is taken.
    let again = h
        .datastore
        .sled_reserve(vmm, instance, SledChoice::Any, one_vmm())
        .await
        .unwrap();
    assert_eq!(first, again);
    // Racing repeats of one reservation also end with one.
    let mut tasks = tokio::task::JoinSet::new();
    let other_vmm = VmmUuid::new_v4();
    let sled_id = sled.id();
    for _ in 0..8 {
        let datastore = h.datastore.clone();
        tasks.spawn(async move {
            datastore
                .sled_reserve(
                    other_vmm,
                    instance,
                    SledChoice::Specific(sled_id),
                    one_vmm(),
                )
                .await
                .unwrap()
        });
    }
    let results: Vec<_> = tasks.join_all().await;
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    let stored = h.datastore.sled_fetch(sled.id()).await.unwrap();
    assert_eq!(stored.reserved_hardware_threads, 4);
    assert_books_balance(&h);

    // Full now.
    let err = h
        .datastore
        .sled_reserve(VmmUuid::new_v4(), instance, SledChoice::Any, one_vmm())
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), "InsufficientCapacity");

    assert!(h.datastore.sled_reservation_release(vmm).await.unwrap());
    assert!(!h.datastore.sled_reservation_release(vmm).await.unwrap());
    assert_eq!(h.datastore.sled_reservation_fetch(vmm).await.unwrap(), None);
    let stored = h.datastore.sled_fetch(sled.id()).await.unwrap();
    assert_eq!(stored.reserved_hardware_threads, 2);
    assert_books_balance(&h);
    h.datastore
        .sled_reserve(VmmUuid::new_v4(), instance, SledChoice::Any, one_vmm())
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_reservations_are_refused_clearly() {
    let h = Harness::new();
    let sled = h.sled(4, 4).await;
    let unknown = h
        .datastore
        .sled_reserve(
            VmmUuid::new_v4(),
            InstanceUuid::new_v4(),
            SledChoice::Specific(SledUuid::new_v4()),
            one_vmm(),
        )
        .await
        .unwrap_err();
    assert_eq!(unknown.error_code(), "ObjectNotFound", "{unknown:?}");

    let huge = SledResources {
        hardware_threads: u32::MAX,
        physical_ram: ByteCount::try_from(i64::MAX).unwrap(),
    };
    let err = h
        .datastore
        .sled_reserve(
            VmmUuid::new_v4(),
            InstanceUuid::new_v4(),
            SledChoice::Specific(sled.id()),
            huge,
        )
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), "InsufficientCapacity", "{err:?}");
    let err = h
        .datastore
        .sled_reserve(
            VmmUuid::new_v4(),
            InstanceUuid::new_v4(),
            SledChoice::Any,
            huge,
        )
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), "InsufficientCapacity", "{err:?}");
    assert_books_balance(&h);
    assert_eq!(h.sql("SELECT count(*) FROM sled_reservation").trim(), "0");
}

#[tokio::test]
async fn sleds_reregister_keeping_reservations_but_cannot_shrink_below_them() {
    let h = Harness::new();
    let sled = h.sled(8, 8).await;
    h.datastore
        .sled_reserve(
            VmmUuid::new_v4(),
            InstanceUuid::new_v4(),
            SledChoice::Any,
            one_vmm(),
        )
        .await
        .unwrap();
    // Re-registration at a new address with more capacity keeps what is reserved.
    let mut again = sled.clone();
    again.ip = "10.0.0.7/32".parse().unwrap();
    again.usable_hardware_threads = 16;
    let stored = h.datastore.sled_upsert(again).await.unwrap();
    assert_eq!(stored.address().to_string(), "10.0.0.7:12345");
    assert_eq!(
        (
            stored.usable_hardware_threads,
            stored.reserved_hardware_threads
        ),
        (16, 2)
    );
    assert!(stored.time_last_seen >= sled.time_last_seen);

    let mut shrunk = sled.clone();
    shrunk.usable_hardware_threads = 1;
    let err = h.datastore.sled_upsert(shrunk).await.unwrap_err();
    assert_eq!(err.error_code(), "Conflict", "{err:?}");
    assert_eq!(
        h.datastore
            .sled_fetch(sled.id())
            .await
            .unwrap()
            .usable_hardware_threads,
        16
    );
}

#[tokio::test]
async fn placement_prefers_qemu_sleds_and_migrates_only_between_sleds_of_one_kind() {
    let h = Harness::new();
    let sims = [h.sled(64, 64).await, h.sled(64, 64).await];
    // Room for two VMMs of 2 threads each on each QEMU sled.
    let qemus = [
        h.sled_of(SledBackend::Qemu, 4, 8).await,
        h.sled_of(SledBackend::Qemu, 4, 8).await,
    ];
    let reserve = |choice| {
        let datastore = h.datastore.clone();
        async move {
            datastore
                .sled_reserve(VmmUuid::new_v4(), InstanceUuid::new_v4(), choice, one_vmm())
                .await
        }
    };
    let is_qemu = |sled: SledUuid| qemus.iter().any(|q| q.id() == sled);
    // The QEMU sleds fill first, then the simulated ones take the rest.
    for _ in 0..4 {
        let placed = reserve(SledChoice::Any).await.unwrap();
        assert!(
            is_qemu(placed.sled_id()),
            "QEMU sleds are preferred while they have room"
        );
    }
    let placed = reserve(SledChoice::Any).await.unwrap();
    assert!(!is_qemu(placed.sled_id()), "then the simulated ones");

    // A VMM migrating off a simulated sled lands on the other simulated sled, never QEMU.
    for _ in 0..5 {
        let placed = reserve(SledChoice::AnyExcept(sims[0].id())).await.unwrap();
        assert_eq!(placed.sled_id(), sims[1].id());
    }
    // Off a QEMU sled, only the other QEMU sled will do; when it is full, nothing does.
    let error = reserve(SledChoice::AnyExcept(qemus[0].id()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::InsufficientCapacity { .. }),
        "{error:?}"
    );
    // The refusal names the backend that has no room, since the simulated sleds have plenty.
    assert!(
        error.to_string().contains("no other qemu sled has room"),
        "{error}"
    );
    assert_books_balance(&h);
}

#[tokio::test]
async fn an_expunged_sled_is_never_picked_nor_registered_again() {
    let h = Harness::new();
    let gone = h.sled(16, 16).await;
    let other = h.sled(16, 16).await;

    let expunged = h.datastore.sled_expunge(gone.id()).await.unwrap();
    assert!(expunged.is_expunged());
    // Idempotent: a repeat keeps the first time.
    let again = h.datastore.sled_expunge(gone.id()).await.unwrap();
    assert_eq!(again.time_expunged, expunged.time_expunged);
    let unknown = h.datastore.sled_expunge(SledUuid::new_v4()).await;
    assert!(
        matches!(unknown, Err(Error::ObjectNotFound { .. })),
        "{unknown:?}"
    );

    // Placement skips it, though it has all its room free.
    h.assert_placement_picks_only(other.id()).await;
    let named = h
        .datastore
        .sled_reserve(
            VmmUuid::new_v4(),
            InstanceUuid::new_v4(),
            SledChoice::Specific(gone.id()),
            one_vmm(),
        )
        .await
        .unwrap_err();
    assert!(matches!(named, Error::Conflict { .. }), "{named:?}");
    assert!(named.to_string().contains("expunged"), "{named}");
    // With the only other sled full, there is no room anywhere.
    let full = h
        .datastore
        .sled_reserve(
            VmmUuid::new_v4(),
            InstanceUuid::new_v4(),
            SledChoice::Any,
            SledResources {
                hardware_threads: 16,
                physical_ram: ByteCount::from_gibibytes_u32(16),
            },
        )
        .await
        .unwrap();
    assert_eq!(full.sled_id(), other.id());
    let none = h
        .datastore
        .sled_reserve(
            VmmUuid::new_v4(),
            InstanceUuid::new_v4(),
            SledChoice::Any,
            one_vmm(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(none, Error::InsufficientCapacity { .. }),
        "{none:?}"
    );

    // Its registration is refused, and changes nothing.
    let mut registration = gone.clone();
    registration.port = 40000;
    let refused = h.datastore.sled_upsert(registration).await.unwrap_err();
    assert!(matches!(refused, Error::Conflict { .. }), "{refused:?}");
    assert!(refused.to_string().contains("expunged"), "{refused}");
    assert_eq!(
        h.datastore.sled_fetch(gone.id()).await.unwrap(),
        again,
        "a refused registration changed the sled"
    );
    assert_books_balance(&h);
}
