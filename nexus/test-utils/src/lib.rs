//! What Halyard's tests share: the test context of the Nexus and omdb suites (`context`), the
//! invariant checker of DESIGN.md, run after every fault, race and crash test (and by the QEMU
//! backend's tests in turn), and the model test's reference model (`model`).

pub mod context;
pub mod model;

use halyard_db_model::REGIONS_PER_DISK;
use halyard_test_db::{RunSql, TestDatabase, shared_cluster};
use std::collections::{BTreeMap, BTreeSet};

/// Every invariant violation in this database and these sled agents, not just the first.
/// Each violation starts with the name of the rule it breaks; call this once the system is
/// quiet (no unfinished saga, no VMM mid-transition, no report in flight), and call it once:
/// a violation seen once is a violation.
///
/// Instances and VMMs (invariant 1):
/// - each instance's active and target VMM exist, belong to that instance, and are live (not
///   retired, not in a terminal state);
/// - every live VMM is its instance's active or target VMM (so no VMM is left running behind
///   a stopped instance), and no instance has more than two live VMMs.
///
/// Reservations and capacity (invariant 2):
/// - reservations exist exactly for the live non-terminal VMMs; each is on its VMM's sled,
///   for its VMM's instance, and of that instance's size (threads = vCPUs, memory);
/// - each sled's reserved totals equal the sum of its reservations and stay within its
///   capacity, hardware threads and memory alike;
/// - on an expunged sled nothing is reserved and no VMM is live; on a sled whose VMMs the
///   instance watcher failed for its silence, nothing made before that is.
///
/// Sagas (invariants 4 and 5): no saga is unfinished, and no saga is stuck (an undo failed;
/// steno records such a saga as `done`); no adoption generation of a saga's log has events
/// from two Nexus (fencing), nor an event from a generation the saga never reached; nothing a failed node left behind (a claim with no
/// VMM record, a reservation with no live VMM, a `creating` VMM nothing points at) is older
/// than [`LEFTOVER_BOUND_SECS`] (the leftover task releases it before).
///
/// Disks and regions (issue 19):
/// - no region without a live disk, and no disk left `creating` once no saga runs;
/// - a live disk past `creating` has exactly [`REGIONS_PER_DISK`] regions on as many distinct
///   sleds, each of the disk's size;
/// - a region on an expunged sled (its disk degraded) is left only while its disk cannot be
///   repaired: attached to an instance with a VMM, or no in-service sled of its kind has room
///   beside the disk's other regions (the region-replacement task replaces it otherwise,
///   within [`REPLACEMENT_BOUND_SECS`] of the disk becoming free to repair); no
///   disk stays marked as having a region replaced once no saga runs;
/// - each sled's `reserved_storage` equals the sum of its regions' and region snapshots' sizes
///   and never exceeds its `usable_storage`;
/// - no region snapshot without a live snapshot, no snapshot left `creating` once no saga
///   runs, a ready snapshot has a region snapshot on each of its disk's three sleds, and sled
///   by sled the region snapshots each sled agent holds are exactly the database's;
/// - a disk names an instance iff it is attaching, attached or detaching, and that instance
///   exists and is not deleted;
/// - sled by sled, the regions each sled agent holds are exactly the database's regions on
///   that sled (expunged sleds excepted), of the same size and block size.
///
/// Networking (issue 21):
/// - a live interface belongs to a live instance and lies in a live subnet of a live VPC, the
///   subnet's VPC being the interface's;
/// - its address is one of its subnet's assignable addresses (in the block, not the first five
///   nor the last), and no two live interfaces share an address in a subnet or a MAC in a VPC;
/// - an instance with interfaces has exactly one primary, and no two share a slot;
/// - sled by sled (expunged sleds excepted), the mappings each sled agent holds are exactly the
///   database's: for each VPC with an interface on a live VMM of the sled, every interface of
///   the VPC on a live VMM (address, MAC, sled, the sled's underlay address); for any other
///   VPC, none.
///
/// Sled agents (invariant 6), sled by sled: every VMM a sled agent runs is live in the
/// database, on that sled, for the same instance, in the same state; every live VMM in the
/// database runs on the sled agent of its sled; no VMM runs on two sleds. At a quiet point the
/// two agree exactly: a sled agent lists only VMMs that still run (never a terminal one), and
/// the database has no live VMM in a terminal state once its retirement is done.
pub fn invariant_violations(
    db: &TestDatabase,
    sleds: &[halyard_sled_agent::Server],
) -> Vec<String> {
    invariant_violations_in(shared_cluster(), db.name(), sleds)
}

/// How long a leftover of a failed saga node (a claim with no VMM record, a reservation with
/// no live VMM, a `creating` VMM nothing points at) may live: the leftover task's default
/// grace period (60 s) and a few of its passes.
pub const LEFTOVER_BOUND_SECS: u64 = 90;

/// How long a region lost with an expunged sled may stay unreplaced once its disk is free to
/// repair (the sled expunged, the disk and its instance unchanged, that long) before the
/// checker flags it: the region-replacement task runs far more often.
pub const REPLACEMENT_BOUND_SECS: u64 = 90;

/// The VMM states after which a VMM never runs again and holds no reservation.
const TERMINAL_VMM_STATES: &str = "('destroyed','failed','saga_unwound')";

/// [`invariant_violations`] for database `database` of `cluster` (a test's private cluster, or
/// a replicated one: a [`halyard_test_db::PatroniCluster`] answers from its primary).
pub fn invariant_violations_in(
    cluster: &impl RunSql,
    database: &str,
    sleds: &[halyard_sled_agent::Server],
) -> Vec<String> {
    let sql = |query: &str| cluster.run_sql(database, query).expect("psql");
    let mut violations = Vec::new();
    let mut check = |query: &str, rule: &str| {
        for row in sql(query).lines().filter(|l| !l.is_empty()) {
            violations.push(format!("{rule}: {row}"));
        }
    };

    // Instances and VMMs.
    for pointer in ["active_propolis_id", "target_propolis_id"] {
        let which = if pointer == "active_propolis_id" {
            "active"
        } else {
            "target"
        };
        check(
            &format!(
                "SELECT i.id, i.{pointer} FROM instance i LEFT JOIN vmm v ON v.id = i.{pointer} \
                 WHERE i.{pointer} IS NOT NULL AND v.id IS NULL"
            ),
            &format!("instance's {which} VMM does not exist (instance, VMM)"),
        );
        check(
            &format!(
                "SELECT i.id, v.id, v.instance_id FROM instance i JOIN vmm v ON v.id = i.{pointer} \
                 WHERE v.instance_id != i.id"
            ),
            &format!(
                "instance's {which} VMM belongs to another instance (instance, VMM, its instance)"
            ),
        );
        check(
            &format!(
                "SELECT i.id, v.id, v.state, v.time_deleted FROM instance i \
                 JOIN vmm v ON v.id = i.{pointer} \
                 WHERE v.time_deleted IS NOT NULL OR v.state IN {TERMINAL_VMM_STATES}"
            ),
            &format!("instance's {which} VMM is not live (instance, VMM, state, time retired)"),
        );
    }
    check(
        "SELECT v.id, v.instance_id, v.state, i.nexus_state FROM vmm v \
         LEFT JOIN instance i ON i.id = v.instance_id \
         WHERE v.time_deleted IS NULL \
           AND (i.id IS NULL OR (i.active_propolis_id IS DISTINCT FROM v.id \
                                 AND i.target_propolis_id IS DISTINCT FROM v.id))",
        "live VMM its instance does not point at (VMM, instance, VMM state, instance state)",
    );
    check(
        "SELECT instance_id, count(*) FROM vmm WHERE time_deleted IS NULL GROUP BY instance_id HAVING count(*) > 2",
        "instance with more than an active and a target VMM (instance, live VMMs)",
    );

    // Reservations and capacity.
    check(
        &format!(
            "SELECT v.id FROM vmm v LEFT JOIN sled_reservation r ON r.vmm_id = v.id \
             WHERE v.time_deleted IS NULL AND v.state NOT IN {TERMINAL_VMM_STATES} AND r.vmm_id IS NULL"
        ),
        "live VMM without a reservation (VMM)",
    );
    check(
        &format!(
            "SELECT r.vmm_id FROM sled_reservation r LEFT JOIN vmm v ON v.id = r.vmm_id \
             WHERE v.id IS NULL OR v.time_deleted IS NOT NULL OR v.state IN {TERMINAL_VMM_STATES}"
        ),
        "reservation without a live VMM (VMM)",
    );
    check(
        "SELECT r.vmm_id, r.sled_id, v.sled_id FROM sled_reservation r JOIN vmm v ON v.id = r.vmm_id \
         WHERE r.sled_id != v.sled_id",
        "reservation on another sled than its VMM (VMM, reservation's sled, VMM's sled)",
    );
    check(
        "SELECT r.vmm_id, r.instance_id, v.instance_id FROM sled_reservation r JOIN vmm v ON v.id = r.vmm_id \
         WHERE r.instance_id != v.instance_id",
        "reservation for another instance than its VMM's (VMM, reservation's instance, VMM's instance)",
    );
    check(
        "SELECT r.vmm_id, r.hardware_threads, r.physical_ram, i.ncpus, i.memory FROM sled_reservation r \
         JOIN vmm v ON v.id = r.vmm_id JOIN instance i ON i.id = v.instance_id \
         WHERE r.hardware_threads != i.ncpus OR r.physical_ram != i.memory",
        "reservation of another size than its instance (VMM, reserved threads, reserved memory, \
         instance vCPUs, instance memory)",
    );
    check(
        "SELECT s.id, s.reserved_hardware_threads, coalesce(sum(r.hardware_threads), 0), \
                s.reserved_physical_ram, coalesce(sum(r.physical_ram), 0) FROM sled s \
         LEFT JOIN sled_reservation r ON r.sled_id = s.id GROUP BY s.id \
         HAVING s.reserved_hardware_threads != coalesce(sum(r.hardware_threads), 0) \
             OR s.reserved_physical_ram != coalesce(sum(r.physical_ram), 0)",
        "sled's reserved totals disagree with its reservations (sled, reserved threads, sum, \
         reserved memory, sum)",
    );
    check(
        "SELECT id, reserved_hardware_threads, usable_hardware_threads FROM sled \
         WHERE reserved_hardware_threads > usable_hardware_threads",
        "sled's reserved hardware threads exceed its capacity (sled, reserved, usable)",
    );
    check(
        "SELECT id, reserved_physical_ram, usable_physical_ram FROM sled \
         WHERE reserved_physical_ram > usable_physical_ram",
        "sled's reserved memory exceeds its capacity (sled, reserved, usable)",
    );
    check(
        "SELECT v.id, v.sled_id FROM vmm v JOIN sled s ON s.id = v.sled_id \
         WHERE s.time_expunged IS NOT NULL AND v.time_deleted IS NULL",
        "live VMM on an expunged sled (VMM, sled)",
    );
    check(
        "SELECT r.vmm_id, r.sled_id FROM sled_reservation r JOIN sled s ON s.id = r.sled_id \
         WHERE s.time_expunged IS NOT NULL",
        "reservation on an expunged sled (VMM, sled)",
    );
    check(
        "SELECT v.id, v.sled_id FROM vmm v JOIN sled s ON s.id = v.sled_id \
         WHERE s.time_vmms_failed IS NOT NULL AND v.time_deleted IS NULL \
           AND v.time_created < s.time_vmms_failed",
        "live VMM made before its sled's VMMs were failed for silence (VMM, sled)",
    );
    check(
        "SELECT r.vmm_id, r.sled_id FROM sled_reservation r JOIN sled s ON s.id = r.sled_id \
         WHERE s.time_vmms_failed IS NOT NULL AND r.time_created < s.time_vmms_failed",
        "reservation made before its sled's VMMs were failed for silence (VMM, sled)",
    );

    // Sagas.
    check(
        "SELECT id, name, saga_state FROM saga WHERE saga_state != 'done'",
        "saga left unfinished (saga, name, state)",
    );
    check(
        "SELECT s.id, s.name, s.saga_state, e.node_id FROM saga s \
         JOIN saga_node_event e ON e.saga_id = s.id WHERE e.event_type = 'undo_failed'",
        "saga stuck after a failed undo (saga, name, state, node)",
    );
    // Fencing: each adoption generation of a saga has one writer.
    check(
        "SELECT saga_id, adopt_generation, count(DISTINCT creator) FROM saga_node_event \
         GROUP BY saga_id, adopt_generation HAVING count(DISTINCT creator) > 1",
        "saga log written by two Nexus in one adoption generation (saga, generation, writers)",
    );
    check(
        "SELECT e.saga_id, e.node_id, e.event_type, e.adopt_generation, s.adopt_generation \
         FROM saga_node_event e JOIN saga s ON s.id = e.saga_id \
         WHERE e.adopt_generation > s.adopt_generation",
        "saga event from a generation the saga never reached (saga, node, event, its \
         generation, the saga's)",
    );
    // What a failed node whose effect landed leaves (no saga runs its undo): the leftover
    // task must have released it by now.
    check(
        &format!(
            "SELECT 'claim', i.id, i.active_propolis_id, i.time_state_updated FROM instance i \
             WHERE i.nexus_state = 'vmm' AND i.time_deleted IS NULL \
               AND NOT EXISTS (SELECT 1 FROM vmm v WHERE v.id = i.active_propolis_id) \
               AND i.time_state_updated < now() - interval '{LEFTOVER_BOUND_SECS} seconds' \
             UNION ALL \
             SELECT 'reservation', r.instance_id, r.vmm_id, r.time_created FROM sled_reservation r \
             WHERE NOT EXISTS (SELECT 1 FROM vmm v WHERE v.id = r.vmm_id AND v.time_deleted IS NULL) \
               AND r.time_created < now() - interval '{LEFTOVER_BOUND_SECS} seconds' \
             UNION ALL \
             SELECT 'creating VMM', v.instance_id, v.id, v.time_state_updated FROM vmm v \
             WHERE v.time_deleted IS NULL AND v.state = 'creating' \
               AND NOT EXISTS (SELECT 1 FROM instance i WHERE i.active_propolis_id = v.id \
                                                        OR i.target_propolis_id = v.id) \
               AND v.time_state_updated < now() - interval '{LEFTOVER_BOUND_SECS} seconds'"
        ),
        "saga leftover not released within the leftover task's bound (kind, instance, VMM, since)",
    );

    // Disks and regions.
    check(
        "SELECT r.id, r.disk_id, d.state, d.time_deleted FROM region r \
         LEFT JOIN disk d ON d.id = r.disk_id WHERE d.id IS NULL OR d.time_deleted IS NOT NULL",
        "region without a live disk (region, disk, disk state, disk deleted)",
    );
    check(
        "SELECT id, name, time_created FROM disk WHERE time_deleted IS NULL AND state = 'creating'",
        "disk left creating with no saga running (disk, name, created)",
    );
    check(
        &format!(
            "SELECT d.id, d.state, count(r.id), count(DISTINCT r.sled_id) FROM disk d \
             LEFT JOIN region r ON r.disk_id = d.id \
             WHERE d.time_deleted IS NULL AND d.state != 'creating' GROUP BY d.id, d.state \
             HAVING count(r.id) != {REGIONS_PER_DISK} OR count(DISTINCT r.sled_id) != {REGIONS_PER_DISK}"
        ),
        "live disk without its regions on distinct sleds (disk, state, regions, distinct sleds)",
    );
    check(
        "SELECT r.id, r.disk_id, r.size_bytes, d.size_bytes, r.block_size, d.block_size \
         FROM region r JOIN disk d ON d.id = r.disk_id \
         WHERE r.size_bytes != d.size_bytes OR r.block_size != d.block_size",
        "region of another shape than its disk (region, disk, region size, disk size, region \
         block size, disk block size)",
    );
    // A region lost with an expunged sled leaves its disk degraded until the region-replacement
    // task replaces it, which it does as soon as nothing writes the disk and a sled has room.
    check(
        &format!(
            "SELECT r.id, r.disk_id, r.sled_id FROM region r \
         JOIN sled s ON s.id = r.sled_id JOIN disk d ON d.id = r.disk_id \
         WHERE s.time_expunged IS NOT NULL AND d.time_deleted IS NULL \
           AND d.replacing_region_id IS NULL \
           AND s.time_expunged < now() - interval '{REPLACEMENT_BOUND_SECS} seconds' \
           AND d.time_modified < now() - interval '{REPLACEMENT_BOUND_SECS} seconds' \
           AND (d.state = 'detached' OR (d.state = 'attached' AND EXISTS ( \
             SELECT 1 FROM instance i WHERE i.id = d.attach_instance_id \
               AND i.active_propolis_id IS NULL AND i.target_propolis_id IS NULL \
               AND i.time_state_updated < now() - interval '{REPLACEMENT_BOUND_SECS} seconds'))) \
           AND EXISTS (SELECT 1 FROM sled c WHERE c.time_expunged IS NULL \
             AND c.backend = s.backend AND c.usable_storage - c.reserved_storage >= d.size_bytes \
             AND c.id NOT IN (SELECT sled_id FROM region WHERE disk_id = d.id))"
        ),
        "region lost with an expunged sled left unreplaced though its disk is free and a sled \
         has room (region, disk, sled)",
    );
    check(
        "SELECT id, name, replacing_region_id FROM disk WHERE replacing_region_id IS NOT NULL",
        "disk marked as having a region replaced with no saga running (disk, name, region)",
    );
    check(
        "SELECT s.id, s.reserved_storage, \
           (SELECT coalesce(sum(r.size_bytes), 0) FROM region r WHERE r.sled_id = s.id), \
           (SELECT coalesce(sum(rs.size_bytes), 0) FROM region_snapshot rs \
            WHERE rs.sled_id = s.id) \
         FROM sled s WHERE s.reserved_storage != \
           (SELECT coalesce(sum(r.size_bytes), 0) FROM region r WHERE r.sled_id = s.id) + \
           (SELECT coalesce(sum(rs.size_bytes), 0) FROM region_snapshot rs \
            WHERE rs.sled_id = s.id)",
        "sled's reserved storage disagrees with its regions and region snapshots (sled, \
         reserved, sum of regions, sum of region snapshots)",
    );
    // Snapshots and region snapshots.
    check(
        "SELECT rs.snapshot_id, rs.region_id, s.state, s.time_deleted FROM region_snapshot rs \
         LEFT JOIN snapshot s ON s.id = rs.snapshot_id \
         WHERE s.id IS NULL OR s.time_deleted IS NOT NULL",
        "region snapshot without a live snapshot (snapshot, region, snapshot state, deleted)",
    );
    check(
        "SELECT id, name, time_created FROM snapshot \
         WHERE time_deleted IS NULL AND state = 'creating'",
        "snapshot left creating with no saga running (snapshot, name, created)",
    );
    check(
        &format!(
            "SELECT s.id, count(rs.region_id), count(DISTINCT rs.sled_id) FROM snapshot s \
             LEFT JOIN region_snapshot rs ON rs.snapshot_id = s.id \
             WHERE s.time_deleted IS NULL AND s.state = 'ready' GROUP BY s.id \
             HAVING count(rs.region_id) != {REGIONS_PER_DISK} \
                OR count(DISTINCT rs.sled_id) != {REGIONS_PER_DISK}"
        ),
        "ready snapshot without a region snapshot on each of its disk's sleds (snapshot, \
         region snapshots, distinct sleds)",
    );
    check(
        "SELECT id, reserved_storage, usable_storage FROM sled \
         WHERE reserved_storage > usable_storage",
        "sled's reserved storage exceeds its capacity (sled, reserved, usable)",
    );
    check(
        "SELECT id, state, attach_instance_id FROM disk WHERE time_deleted IS NULL \
         AND (state IN ('attaching', 'attached', 'detaching')) != (attach_instance_id IS NOT NULL)",
        "disk's instance pointer disagrees with its state (disk, state, instance)",
    );
    check(
        "SELECT d.id, d.state, d.attach_instance_id, i.time_deleted FROM disk d \
         LEFT JOIN instance i ON i.id = d.attach_instance_id \
         WHERE d.time_deleted IS NULL AND d.attach_instance_id IS NOT NULL \
           AND (i.id IS NULL OR i.time_deleted IS NOT NULL)",
        "disk attached to an instance that is missing or deleted (disk, state, instance, \
         instance deleted)",
    );

    violations.extend(sled_agent_violations(&sql, sleds));
    violations.extend(region_violations(&sql, sleds));
    violations.extend(region_snapshot_violations(&sql, sleds));
    violations.extend(network_violations(&sql, sleds));
    violations
}

/// The database's region snapshots against what each sled agent holds, sled by sled
/// (expunged sleds excepted).
fn region_snapshot_violations(
    sql: &dyn Fn(&str) -> String,
    sleds: &[halyard_sled_agent::Server],
) -> Vec<String> {
    let mut violations = Vec::new();
    // sled -> "region.snapshot" -> size, as the database has them.
    let mut in_db: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    // A faulted snapshot's region snapshots (a delete that unwound after deleting some on
    // their sleds) may be missing on their sled agents: its data is not to be trusted.
    let mut faulted: BTreeSet<String> = BTreeSet::new();
    for row in sql(
        "SELECT rs.sled_id, rs.region_id || '.' || rs.snapshot_id, rs.size_bytes, \
           sn.state = 'faulted' \
         FROM region_snapshot rs JOIN sled s ON s.id = rs.sled_id \
         LEFT JOIN snapshot sn ON sn.id = rs.snapshot_id \
         WHERE s.time_expunged IS NULL",
    )
    .lines()
    .filter(|l| !l.is_empty())
    {
        let columns: Vec<&str> = row.split('|').collect();
        if columns[3] == "t" {
            faulted.insert(columns[1].to_string());
        }
        in_db
            .entry(columns[0].to_string())
            .or_default()
            .insert(columns[1].to_string(), columns[2].to_string());
    }
    let expunged = expunged_sleds(sql);
    for sled in sleds {
        let sled_id = sled.agent().id().to_string();
        if expunged.contains(&sled_id) {
            continue;
        }
        let held = read_now(|| sled.agent().region_snapshots_now());
        let Some(held) = held else {
            violations.push(format!(
                "sled agent's region snapshots could not be read at a quiet point: sled \
                 {sled_id}'s storage table is locked"
            ));
            continue;
        };
        let mut expected = in_db.remove(&sled_id).unwrap_or_default();
        for held in held {
            let key = format!("{}.{}", held.region_id, held.snapshot_id);
            let size = held.size.to_bytes().to_string();
            match expected.remove(&key) {
                None => violations.push(format!(
                    "region snapshot on a sled agent but not in the database on that sled: \
                     {key} on sled {sled_id}"
                )),
                Some(in_db_size) if in_db_size != size => violations.push(format!(
                    "region snapshot size differs between the database and its sled agent: \
                     {key} on sled {sled_id} is {in_db_size} bytes in the database, {size} on \
                     the sled agent"
                )),
                Some(_) => {}
            }
        }
        for key in expected.keys().filter(|key| !faulted.contains(*key)) {
            violations.push(format!(
                "region snapshot in the database but not on its sled's agent: {key} on sled \
                 {sled_id}"
            ));
        }
    }
    violations
}

/// The database's regions against what each sled agent holds, sled by sled (expunged sleds,
/// whose agents no one asks, excepted).
fn region_violations(
    sql: &dyn Fn(&str) -> String,
    sleds: &[halyard_sled_agent::Server],
) -> Vec<String> {
    let mut violations = Vec::new();
    // sled -> region -> (size, block size), as the database has them.
    let mut in_db: BTreeMap<String, BTreeMap<String, (String, String)>> = BTreeMap::new();
    for row in sql(
        "SELECT r.sled_id, r.id, r.size_bytes, r.block_size FROM region r \
         JOIN sled s ON s.id = r.sled_id WHERE s.time_expunged IS NULL",
    )
    .lines()
    .filter(|l| !l.is_empty())
    {
        let columns: Vec<&str> = row.split('|').collect();
        in_db.entry(columns[0].to_string()).or_default().insert(
            columns[1].to_string(),
            (columns[2].to_string(), columns[3].to_string()),
        );
    }
    let expunged = expunged_sleds(sql);
    for sled in sleds {
        let sled_id = sled.agent().id().to_string();
        if expunged.contains(&sled_id) {
            continue;
        }
        let held = read_now(|| sled.agent().regions_now());
        let Some(held) = held else {
            violations.push(format!(
                "sled agent's regions could not be read at a quiet point: sled {sled_id}'s \
                 region table is locked (a region is being made or deleted)"
            ));
            continue;
        };
        let mut expected = in_db.remove(&sled_id).unwrap_or_default();
        for region in held {
            let id = region.region_id.to_string();
            let size = region.size.to_bytes().to_string();
            let block_size = region.block_size.to_bytes().to_string();
            match expected.remove(&id) {
                None => violations.push(format!(
                    "region on a sled agent but not in the database on that sled: region {id} \
                     on sled {sled_id}"
                )),
                Some(shape) if shape != (size.clone(), block_size.clone()) => {
                    violations.push(format!(
                        "region shape differs between the database and its sled agent: region \
                         {id} on sled {sled_id} is {} bytes in blocks of {} in the database, \
                         {size} in blocks of {block_size} on the sled agent",
                        shape.0, shape.1
                    ))
                }
                Some(_) => {}
            }
        }
        for id in expected.keys() {
            violations.push(format!(
                "region in the database but not on its sled's agent: region {id} on sled {sled_id}"
            ));
        }
    }
    violations
}

/// The networking rules (see [`invariant_violations`]).
fn network_violations(
    sql: &dyn Fn(&str) -> String,
    sleds: &[halyard_sled_agent::Server],
) -> Vec<String> {
    let mut violations = Vec::new();
    let mut check = |query: &str, rule: &str| {
        for row in sql(query).lines().filter(|l| !l.is_empty()) {
            violations.push(format!("{rule}: {row}"));
        }
    };
    check(
        "SELECT n.id, n.instance_id FROM network_interface n JOIN instance i ON i.id = n.instance_id \
         WHERE n.time_deleted IS NULL AND i.time_deleted IS NOT NULL",
        "live interface of a deleted instance (interface, instance)",
    );
    check(
        "SELECT n.id, n.subnet_id, s.vpc_id, n.vpc_id, s.time_deleted, v.time_deleted \
         FROM network_interface n JOIN vpc_subnet s ON s.id = n.subnet_id \
         JOIN vpc v ON v.id = n.vpc_id \
         WHERE n.time_deleted IS NULL \
           AND (s.vpc_id != n.vpc_id OR s.time_deleted IS NOT NULL OR v.time_deleted IS NOT NULL)",
        "live interface in a deleted subnet or VPC, or in another VPC's subnet (interface, \
         subnet, its VPC, the interface's VPC, subnet deleted, VPC deleted)",
    );
    check(
        "SELECT n.id, host(n.ip), s.ipv4_block FROM network_interface n \
         JOIN vpc_subnet s ON s.id = n.subnet_id \
         WHERE n.time_deleted IS NULL \
           AND (NOT (n.ip << s.ipv4_block) OR n.ip - network(s.ipv4_block) < 5 \
                OR host(n.ip) = host(broadcast(s.ipv4_block)))",
        "interface address not assignable in its subnet (interface, address, block)",
    );
    check(
        "SELECT subnet_id, host(ip), count(*) FROM network_interface WHERE time_deleted IS NULL \
         GROUP BY subnet_id, ip HAVING count(*) > 1",
        "address given to two live interfaces of a subnet (subnet, address, interfaces)",
    );
    check(
        "SELECT vpc_id, mac, count(*) FROM network_interface WHERE time_deleted IS NULL \
         GROUP BY vpc_id, mac HAVING count(*) > 1",
        "MAC given to two live interfaces of a VPC (VPC, MAC, interfaces)",
    );
    check(
        "SELECT instance_id, count(*) FILTER (WHERE is_primary), count(*), \
                count(DISTINCT slot) FROM network_interface WHERE time_deleted IS NULL \
         GROUP BY instance_id \
         HAVING count(*) FILTER (WHERE is_primary) != 1 OR count(DISTINCT slot) != count(*)",
        "instance's interfaces without exactly one primary, or sharing a slot (instance, \
         primaries, interfaces, slots)",
    );

    // vni -> the mappings the database implies; vni -> the sleds hosting an interface of it.
    let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut hosts: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in sql(&format!(
        "SELECT v.vni, host(n.ip), n.mac, vm.sled_id, host(coalesce(s.underlay_ip, s.ip)) \
         FROM network_interface n JOIN instance i ON i.id = n.instance_id \
         JOIN vmm vm ON vm.id = i.active_propolis_id JOIN sled s ON s.id = vm.sled_id \
         JOIN vpc v ON v.id = n.vpc_id \
         WHERE n.time_deleted IS NULL AND i.time_deleted IS NULL AND vm.time_deleted IS NULL \
           AND vm.state NOT IN {TERMINAL_VMM_STATES}"
    ))
    .lines()
    .filter(|l| !l.is_empty())
    {
        let c: Vec<&str> = row.split('|').collect();
        let mac = halyard_common::net::MacAddr::from_u64(c[2].parse().expect("a MAC number"));
        wanted
            .entry(c[0].to_string())
            .or_default()
            .insert(format!("{} {mac} {} {}", c[1], c[3], c[4]));
        hosts
            .entry(c[0].to_string())
            .or_default()
            .insert(c[3].to_string());
    }
    let expunged = expunged_sleds(sql);
    for sled in sleds {
        let sled_id = sled.agent().id().to_string();
        if expunged.contains(&sled_id) {
            continue;
        }
        let held = read_now(|| sled.agent().v2p_now());
        let Some(held) = held else {
            violations.push(format!(
                "sled agent's mappings could not be read at a quiet point: sled {sled_id}'s \
                 table is locked (a set is being applied)"
            ));
            continue;
        };
        let mut held: BTreeMap<String, BTreeSet<String>> = held
            .into_iter()
            .map(|set| {
                let entries = set
                    .mappings
                    .iter()
                    .map(|m| {
                        format!(
                            "{} {} {} {}",
                            m.virtual_ip, m.virtual_mac, m.sled_id, m.underlay_ip
                        )
                    })
                    .collect();
                (set.vni.to_string(), entries)
            })
            .collect();
        for (vni, sleds_hosting) in &hosts {
            if !sleds_hosting.contains(&sled_id) {
                continue;
            }
            let have = held.remove(vni).unwrap_or_default();
            let want = &wanted[vni];
            for missing in want.difference(&have) {
                violations.push(format!(
                    "mapping the database implies is missing on a sled hosting the VPC: vni \
                     {vni}, sled {sled_id}: {missing}"
                ));
            }
            for extra in have.difference(want) {
                violations.push(format!(
                    "mapping a sled holds that the database does not imply: vni {vni}, sled \
                     {sled_id}: {extra}"
                ));
            }
        }
        for (vni, have) in held {
            for extra in have {
                violations.push(format!(
                    "mapping held by a sled hosting no interface of the VPC: vni {vni}, sled \
                     {sled_id}: {extra}"
                ));
            }
        }
    }
    violations
}

/// The ids of the expunged sleds (their agents are not compared: the sleds are gone).
fn expunged_sleds(sql: &dyn Fn(&str) -> String) -> BTreeSet<String> {
    sql("SELECT id FROM sled WHERE time_expunged IS NOT NULL")
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A sled agent's table read without waiting (`read` is `None` while the table is locked):
/// its own work (a registration summing its regions, a set being applied) holds a table for a
/// moment on another worker thread, so it is tried again briefly before being called busy.
fn read_now<T>(read: impl Fn() -> Option<T>) -> Option<T> {
    (0..100).find_map(|_| {
        let held = read();
        if held.is_none() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        held
    })
}

/// A live VMM as the database has it.
struct LiveVmm {
    sled: String,
    instance: String,
    state: String,
}

/// The database's live VMMs against what each sled agent runs, sled by sled.
fn sled_agent_violations(
    sql: &dyn Fn(&str) -> String,
    sleds: &[halyard_sled_agent::Server],
) -> Vec<String> {
    let mut violations = Vec::new();
    let live: BTreeMap<String, LiveVmm> =
        sql("SELECT id, sled_id, instance_id, state FROM vmm WHERE time_deleted IS NULL")
            .lines()
            .filter(|l| !l.is_empty())
            .map(|row| {
                let columns: Vec<&str> = row.split('|').collect();
                let vmm = LiveVmm {
                    sled: columns[1].to_string(),
                    instance: columns[2].to_string(),
                    state: columns[3].to_string(),
                };
                (columns[0].to_string(), vmm)
            })
            .collect();

    // VMM id -> the sleds whose agents run it.
    let mut running_on: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for sled in sleds {
        let sled_id = sled.agent().id().to_string();
        for vmm in sled.agent().vmm_list() {
            let id = vmm.propolis_id.to_string();
            running_on
                .entry(id.clone())
                .or_default()
                .insert(sled_id.clone());
            let Some(in_db) = live.get(&id) else {
                violations.push(format!(
                    "VMM runs on a sled agent but is not live in the database: VMM {id} on sled {sled_id}"
                ));
                continue;
            };
            if in_db.sled != sled_id {
                violations.push(format!(
                    "VMM runs on another sled than the database's: VMM {id} runs on sled \
                     {sled_id}, the database places it on sled {}",
                    in_db.sled
                ));
            }
            let instance = vmm.instance_id.to_string();
            if in_db.instance != instance {
                violations.push(format!(
                    "VMM runs for another instance than the database's: VMM {id} on sled \
                     {sled_id} runs for instance {instance}, the database's is {}",
                    in_db.instance
                ));
            }
            let state = vmm.state.vmm_state.state.to_string();
            if in_db.state != state {
                violations.push(format!(
                    "VMM state differs between the database and its sled agent: VMM {id} is \
                     {} in the database, {state} on sled {sled_id}",
                    in_db.state
                ));
            }
        }
    }
    for (id, on) in &running_on {
        if on.len() > 1 {
            let on: Vec<&str> = on.iter().map(String::as_str).collect();
            violations.push(format!(
                "VMM runs on more than one sled: VMM {id} on sleds {}",
                on.join(", ")
            ));
        }
    }
    for (id, vmm) in &live {
        let runs_on_its_sled = running_on.get(id).is_some_and(|on| on.contains(&vmm.sled));
        if !runs_on_its_sled {
            violations.push(format!(
                "VMM is live in the database but its sled's agent does not run it: VMM {id} \
                 ({}) on sled {}",
                vmm.state, vmm.sled
            ));
        }
    }
    violations
}
