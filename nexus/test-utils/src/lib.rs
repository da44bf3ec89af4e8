//! What Halyard's tests share: the invariant checker of DESIGN.md, run after every fault,
//! race and crash test (and by the QEMU backend's tests in turn).

use halyard_test_db::{PostgresCluster, TestDatabase, shared_cluster};

/// Every invariant violation in this database and these sled agents, not just the first:
///
/// 1. at most one active and one target VMM per instance, and the instance's pointers name
///    live VMMs;
/// 2. reservations exist exactly for live non-terminal VMMs, and each sled's reserved totals
///    equal the sum of its reservations and stay within its capacity; on an expunged sled
///    nothing is reserved and no VMM is live;
/// 4. no saga is left unfinished (call this once the system is quiet);
/// 6. what the sled agents run is exactly what the database considers live.
pub fn invariant_violations(
    db: &TestDatabase,
    sleds: &[halyard_sled_agent::Server],
) -> Vec<String> {
    invariant_violations_in(shared_cluster(), db.name(), sleds)
}

/// [`invariant_violations`] for database `database` of `cluster` (a test's private cluster).
pub fn invariant_violations_in(
    cluster: &PostgresCluster,
    database: &str,
    sleds: &[halyard_sled_agent::Server],
) -> Vec<String> {
    let sql = |query: &str| cluster.psql(database, query).expect("psql");
    {
        let mut violations = Vec::new();
        let mut check = |query: &str, what: &str| {
            let rows = sql(query);
            for row in rows.lines().filter(|l| !l.is_empty()) {
                violations.push(format!("{what}: {row}"));
            }
        };
        check(
            "SELECT v.id FROM vmm v LEFT JOIN sled_reservation r ON r.vmm_id = v.id \
             WHERE v.time_deleted IS NULL AND v.state NOT IN ('destroyed','failed','saga_unwound') AND r.vmm_id IS NULL",
            "live VMM without a reservation",
        );
        check(
            "SELECT r.vmm_id FROM sled_reservation r LEFT JOIN vmm v ON v.id = r.vmm_id \
             WHERE v.id IS NULL OR v.time_deleted IS NOT NULL OR v.state IN ('destroyed','failed','saga_unwound')",
            "reservation without a live VMM",
        );
        check(
            "SELECT s.id, s.reserved_hardware_threads, coalesce(sum(r.hardware_threads), 0) FROM sled s \
             LEFT JOIN sled_reservation r ON r.sled_id = s.id GROUP BY s.id \
             HAVING s.reserved_hardware_threads != coalesce(sum(r.hardware_threads), 0) \
                 OR s.reserved_physical_ram != coalesce(sum(r.physical_ram), 0) \
                 OR s.reserved_hardware_threads > s.usable_hardware_threads",
            "sled totals disagree with reservations or exceed capacity",
        );
        check(
            "SELECT i.id, i.active_propolis_id FROM instance i LEFT JOIN vmm v ON v.id = i.active_propolis_id \
             WHERE i.active_propolis_id IS NOT NULL AND (v.id IS NULL OR v.time_deleted IS NOT NULL)",
            "instance pointing at a missing or retired VMM",
        );
        check(
            "SELECT instance_id, count(*) FROM vmm WHERE time_deleted IS NULL GROUP BY instance_id HAVING count(*) > 2",
            "instance with more than an active and a target VMM",
        );
        check(
            "SELECT id, name, saga_state FROM saga WHERE saga_state != 'done'",
            "saga left unfinished",
        );
        check(
            "SELECT v.id, v.sled_id FROM vmm v JOIN sled s ON s.id = v.sled_id \
             WHERE s.time_expunged IS NOT NULL AND v.time_deleted IS NULL",
            "live VMM on an expunged sled",
        );
        check(
            "SELECT r.vmm_id, r.sled_id FROM sled_reservation r JOIN sled s ON s.id = r.sled_id \
             WHERE s.time_expunged IS NOT NULL",
            "reservation on an expunged sled",
        );
        // What the sled agents run must be exactly the live VMMs in the database.
        let live: std::collections::BTreeSet<String> =
            sql("SELECT id FROM vmm WHERE time_deleted IS NULL")
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
        let mut on_sleds = std::collections::BTreeSet::new();
        for sled in sleds {
            for vmm in sled.agent().vmm_list() {
                on_sleds.insert(vmm.propolis_id.to_string());
            }
        }
        for id in live.difference(&on_sleds) {
            violations.push(format!(
                "VMM {id} is live in the database but no sled agent runs it"
            ));
        }
        for id in on_sleds.difference(&live) {
            violations.push(format!(
                "VMM {id} runs on a sled agent but is not live in the database"
            ));
        }
        violations
    }
}
