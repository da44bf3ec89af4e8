//! `omdb db check`: the database against what every sled agent reports.
//!
//! What it compares (each mismatch is one disagreement):
//!
//! - a VMM the database holds live (not retired, not terminal, past `creating`: a VMM still
//!   being created is registered with its sled agent by its saga's next step) that its sled
//!   agent does not list, and a VMM a sled agent lists that the database holds no live
//!   record of (or places on another sled);
//! - a reservation without a live VMM, a live VMM without a reservation (or with one on
//!   another sled);
//! - a sled whose reserved totals differ from the sum of its reservations, or exceed its
//!   capacity;
//! - a sled agent that cannot be reached (its VMMs are then not compared);
//! - a live VMM on an expunged sled (expunging retires them all). An expunged sled's agent is
//!   not asked: the sled is gone;
//! - sled by sled, the VPC mappings it holds against those the database implies (`omdb db
//!   v2p`): a sled hosting an interface of a VPC must hold exactly the VPC's mappings, any
//!   other sled none of them.
//!
//! The database is read first, then the sled agents, so work in flight (a saga between two
//! steps, a report on its way) can show up as a passing disagreement: run it again to
//! confirm one.

use super::store::{Db, instance_name};
use crate::Outcome;
use crate::output::{print_rows, time};
use halyard_common::ids::{SledUuid, VmmUuid};
use halyard_common::{ByteCount, Error, VmmState};
use halyard_db_model::{Sled, SledReservation, Vmm};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use tabled::Tabled;

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct Disagreement {
    /// What kind of disagreement (stable, for scripts).
    pub kind: &'static str,
    /// The object it is about: a VMM's id, or a sled's for sled-level ones.
    pub id: String,
    #[tabled(skip)]
    pub sled: Option<SledUuid>,
    pub detail: String,
}

/// One VMM as a sled agent lists it.
struct Listed {
    instance_id: halyard_common::ids::InstanceUuid,
    state: VmmState,
}

pub(super) async fn cmd_check(db: &Db, json: bool) -> anyhow::Result<Outcome> {
    let sleds = db.sleds().await?;
    let vmms: Vec<Vmm> = db
        .datastore
        .vmm_list(None, false)
        .await
        .map_err(|e| db.err(e))?;
    let reservations: Vec<SledReservation> = db
        .datastore
        .sled_reservation_list(None)
        .await
        .map_err(|e| db.err(e))?;
    let instances = db.instances().await?;
    let live: BTreeMap<VmmUuid, &Vmm> = vmms
        .iter()
        .filter(|v| !v.state().is_terminal())
        .map(|v| (v.id(), v))
        .collect();
    let sled_by_id: BTreeMap<SledUuid, &Sled> = sleds.iter().map(|s| (s.id(), s)).collect();
    let sled_text = |id: SledUuid| match sled_by_id.get(&id) {
        Some(sled) => format!("sled {id} ({})", sled.address()),
        None => format!("sled {id} (not registered)"),
    };

    // Ask every sled agent at once.
    let mut asks = tokio::task::JoinSet::new();
    for sled in sleds.iter().filter(|s| !s.is_expunged()) {
        let (id, address) = (sled.id(), sled.address());
        asks.spawn(async move { (id, list_vmms(address).await) });
    }
    let mut listed: BTreeMap<SledUuid, BTreeMap<VmmUuid, Listed>> = BTreeMap::new();
    let mut found = Vec::new();
    while let Some(answer) = asks.join_next().await {
        let (sled_id, answer) = answer?;
        match answer {
            Ok(vmms) => {
                listed.insert(sled_id, vmms);
            }
            Err(why) => found.push(Disagreement {
                kind: "sled-unreachable",
                id: sled_id.to_string(),
                sled: Some(sled_id),
                detail: format!(
                    "cannot reach the sled agent of {}: {why}; its VMMs were not compared",
                    sled_text(sled_id)
                ),
            }),
        }
    }

    // The database's live VMMs against the sled agents' lists. A VMM still `creating` is not
    // registered with its sled agent yet (its start or migrate saga does that next), so its
    // absence is expected.
    for vmm in live.values() {
        if sled_by_id
            .get(&vmm.sled_id())
            .is_some_and(|sled| sled.is_expunged())
        {
            found.push(Disagreement {
                kind: "vmm-on-expunged-sled",
                id: vmm.id().to_string(),
                sled: Some(vmm.sled_id()),
                detail: format!(
                    "the database holds this VMM of instance {:?} live ({}) on {}, which was \
                     expunged; expunging it again retires it",
                    instance_name(&instances, vmm.instance_id()),
                    vmm.state(),
                    sled_text(vmm.sled_id())
                ),
            });
            continue;
        }
        let Some(on_sled) = listed.get(&vmm.sled_id()) else {
            continue; // unreachable (reported above) or not a registered sled
        };
        if vmm.state() != VmmState::Creating && !on_sled.contains_key(&vmm.id()) {
            found.push(Disagreement {
                kind: "vmm-missing-on-sled",
                id: vmm.id().to_string(),
                sled: Some(vmm.sled_id()),
                detail: format!(
                    "the database says this VMM of instance {:?} is {} on {}, but that sled \
                     agent does not have it",
                    instance_name(&instances, vmm.instance_id()),
                    vmm.state(),
                    sled_text(vmm.sled_id())
                ),
            });
        }
    }
    for (sled_id, on_sled) in &listed {
        for (vmm_id, seen) in on_sled {
            let problem = match live.get(vmm_id) {
                Some(vmm) if vmm.sled_id() == *sled_id => continue,
                Some(vmm) => format!("the database places it on {}", sled_text(vmm.sled_id())),
                None => match db.datastore.vmm_fetch(*vmm_id).await {
                    Ok(record) => match record.time_deleted {
                        Some(retired) => format!(
                            "the database retired it ({}) at {}",
                            record.state(),
                            time(&retired)
                        ),
                        None => format!(
                            "the database says it is {} (terminal) and awaits retirement",
                            record.state()
                        ),
                    },
                    Err(Error::ObjectNotFound { .. }) => {
                        "the database has no record of it".to_string()
                    }
                    Err(e) => return Err(db.err(e)),
                },
            };
            found.push(Disagreement {
                kind: "vmm-unknown-to-database",
                id: vmm_id.to_string(),
                sled: Some(*sled_id),
                detail: format!(
                    "the sled agent of {} has this VMM ({}, instance {}), but {problem}",
                    sled_text(*sled_id),
                    seen.state,
                    seen.instance_id
                ),
            });
        }
    }

    // Reservations against live VMMs.
    let reserved: BTreeMap<VmmUuid, &SledReservation> =
        reservations.iter().map(|r| (r.vmm_id(), r)).collect();
    for r in &reservations {
        let problem = match live.get(&r.vmm_id()) {
            Some(vmm) if vmm.sled_id() == r.sled_id() => continue,
            Some(vmm) => Some(format!("runs on {}", sled_text(vmm.sled_id()))),
            None => None,
        };
        let why = match problem {
            Some(problem) => format!("but the VMM {problem}"),
            None => match vmms.iter().find(|v| v.id() == r.vmm_id()) {
                Some(vmm) => format!("but the VMM is {} (terminal)", vmm.state()),
                None => "but the VMM has no live record".to_string(),
            },
        };
        found.push(Disagreement {
            kind: "reservation-without-vmm",
            id: r.vmm_id().to_string(),
            sled: Some(r.sled_id()),
            detail: format!(
                "{} holds a reservation ({} threads, {}) for this VMM of instance {:?}, {why}",
                sled_text(r.sled_id()),
                r.hardware_threads,
                r.physical_ram.0,
                instance_name(&instances, r.instance_id.0),
            ),
        });
    }
    for vmm in live.values() {
        if !reserved.contains_key(&vmm.id()) {
            found.push(Disagreement {
                kind: "vmm-without-reservation",
                id: vmm.id().to_string(),
                sled: Some(vmm.sled_id()),
                detail: format!(
                    "this VMM of instance {:?} is {} on {} but holds no reservation",
                    instance_name(&instances, vmm.instance_id()),
                    vmm.state(),
                    sled_text(vmm.sled_id())
                ),
            });
        }
    }

    // Each sled's totals against its reservations and its capacity.
    for sled in &sleds {
        let mine: Vec<&SledReservation> = reservations
            .iter()
            .filter(|r| r.sled_id() == sled.id())
            .collect();
        let sum_threads: i64 = mine.iter().map(|r| r.hardware_threads).sum();
        let sum_ram: i64 = mine.iter().map(|r| r.physical_ram.0.to_i64()).sum();
        let (threads, ram) = (
            sled.reserved_hardware_threads,
            sled.reserved_physical_ram.0.to_i64(),
        );
        if threads != sum_threads || ram != sum_ram {
            found.push(Disagreement {
                kind: "sled-totals-mismatch",
                id: sled.id().to_string(),
                sled: Some(sled.id()),
                detail: format!(
                    "{} records {threads} threads and {} reserved, but its {} reservation(s) \
                     add up to {sum_threads} threads and {}",
                    sled_text(sled.id()),
                    bytes(ram),
                    mine.len(),
                    bytes(sum_ram)
                ),
            });
        }
        let (usable_threads, usable_ram) = (
            sled.usable_hardware_threads,
            sled.usable_physical_ram.0.to_i64(),
        );
        if threads > usable_threads || ram > usable_ram {
            found.push(Disagreement {
                kind: "sled-over-capacity",
                id: sled.id().to_string(),
                sled: Some(sled.id()),
                detail: format!(
                    "{} has {threads} threads and {} reserved, more than its capacity of \
                     {usable_threads} threads and {}",
                    sled_text(sled.id()),
                    bytes(ram),
                    bytes(usable_ram)
                ),
            });
        }
    }

    // Each reachable sled's VPC mappings against what the database implies.
    let reachable: Vec<(SledUuid, std::net::SocketAddr)> = sleds
        .iter()
        .filter(|s| listed.contains_key(&s.id()))
        .map(|s| (s.id(), s.address()))
        .collect();
    found.extend(mapping_disagreements(db, &reachable).await?);

    found.sort_by(|a, b| (a.kind, &a.id, &a.detail).cmp(&(b.kind, &b.id, &b.detail)));
    if json {
        print_rows(&found, true, "")?;
    } else if found.is_empty() {
        println!(
            "no disagreements ({} sled(s), {} live VMM(s), {} reservation(s) checked)",
            sleds.len(),
            live.len(),
            reservations.len()
        );
    } else {
        print_rows(&found, false, "")?;
        println!();
        let kinds: BTreeSet<&str> = found.iter().map(|d| d.kind).collect();
        println!(
            "{} disagreement(s) ({}). Work in flight can cause passing ones: run the check \
             again to confirm.",
            found.len(),
            kinds.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(if found.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Disagreements
    })
}

/// Sled by sled, the VPC mappings each holds against those the database implies: a sled
/// hosting an interface of a VPC holds all of the VPC's mappings, any other sled none.
async fn mapping_disagreements(
    db: &Db,
    sleds: &[(SledUuid, std::net::SocketAddr)],
) -> anyhow::Result<Vec<Disagreement>> {
    type Entry = (
        std::net::Ipv4Addr,
        halyard_common::net::MacAddr,
        SledUuid,
        std::net::IpAddr,
    );
    let implied = super::network::implied_mappings(db).await?;
    let mut wanted: BTreeMap<halyard_common::net::Vni, BTreeSet<Entry>> = BTreeMap::new();
    let mut hosts: BTreeMap<halyard_common::net::Vni, BTreeSet<SledUuid>> = BTreeMap::new();
    for m in &implied {
        wanted
            .entry(m.vni)
            .or_default()
            .insert((m.ip, m.mac, m.sled, m.underlay));
        hosts.entry(m.vni).or_default().insert(m.sled);
    }
    let mut found = Vec::new();
    for &(sled_id, address) in sleds {
        let held = match crate::sled_agent::client(address) {
            Ok(client) => client
                .v2p_list()
                .await
                .map_err(|e| crate::sled_agent::error_chain(&e)),
            Err(e) => Err(format!("{e:#}")),
        };
        let held = match held {
            Ok(held) => held.into_inner(),
            Err(why) => {
                found.push(Disagreement {
                    kind: "sled-unreachable",
                    id: sled_id.to_string(),
                    sled: Some(sled_id),
                    detail: format!(
                        "cannot read the VPC mappings of sled {sled_id} ({address}): {why}"
                    ),
                });
                continue;
            }
        };
        let mut held: BTreeMap<_, BTreeSet<Entry>> = held
            .into_iter()
            .map(|set| {
                let entries = set
                    .mappings
                    .iter()
                    .map(|m| (m.virtual_ip, m.virtual_mac, m.sled_id, m.underlay_ip))
                    .collect();
                (set.vni, entries)
            })
            .collect();
        for (vni, hosting) in &hosts {
            if !hosting.contains(&sled_id) {
                continue;
            }
            let have = held.remove(vni).unwrap_or_default();
            for (ip, mac, on, underlay) in wanted[vni].difference(&have) {
                found.push(Disagreement {
                    kind: "mapping-missing-on-sled",
                    id: sled_id.to_string(),
                    sled: Some(sled_id),
                    detail: format!(
                        "sled {sled_id} hosts an interface of VNI {vni} but lacks the mapping                          {ip} ({mac}) on sled {on} via {underlay}; reconciliation                          (v2p_reconciliation) pushes it"
                    ),
                });
            }
            for entry in have.difference(&wanted[vni]) {
                found.push(mapping_not_implied(sled_id, *vni, entry));
            }
        }
        for (vni, have) in held {
            for entry in &have {
                found.push(mapping_not_implied(sled_id, vni, entry));
            }
        }
    }
    Ok(found)
}

fn mapping_not_implied(
    sled_id: SledUuid,
    vni: halyard_common::net::Vni,
    (ip, mac, on, underlay): &(
        std::net::Ipv4Addr,
        halyard_common::net::MacAddr,
        SledUuid,
        std::net::IpAddr,
    ),
) -> Disagreement {
    Disagreement {
        kind: "mapping-not-implied",
        id: sled_id.to_string(),
        sled: Some(sled_id),
        detail: format!(
            "sled {sled_id} holds the mapping {ip} ({mac}) on sled {on} via {underlay} for VNI              {vni}, which the database does not imply (the interface moved, stopped or is              gone, or this sled hosts none of the VPC's); reconciliation removes it"
        ),
    }
}

fn bytes(n: i64) -> String {
    ByteCount::try_from(n).map_or_else(|_| format!("{n} B"), |b| b.to_string())
}

/// What one sled agent lists, or why it could not be asked.
async fn list_vmms(address: std::net::SocketAddr) -> Result<BTreeMap<VmmUuid, Listed>, String> {
    let client = crate::sled_agent::client(address).map_err(|e| format!("{e:#}"))?;
    let vmms = client
        .vmm_list()
        .await
        .map_err(|e| match e.status() {
            Some(status) => format!(
                "it answered {status}: {}",
                crate::sled_agent::error_chain(&e)
            ),
            None => crate::sled_agent::error_chain(&e),
        })?
        .into_inner();
    Ok(vmms
        .into_iter()
        .map(|v| {
            (
                v.propolis_id,
                Listed {
                    instance_id: v.instance_id,
                    state: v.state.vmm_state.state,
                },
            )
        })
        .collect())
}
