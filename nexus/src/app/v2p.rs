//! Virtual-to-physical mappings: telling sleds where each VPC's private addresses live.
//!
//! A VPC's mapping set lists every live interface of the VPC whose instance a live VMM
//! incarnates, with that VMM's sled and the sled's underlay address. Each sled that hosts an
//! interface of the VPC holds the VPC's whole set (its virtual switch forwards to the other
//! sleds from it, and answers ARP from it); a sled that hosts none holds an empty set. Sets
//! are versioned by the VPC's mapping generation, which `DataStore::vpc_mappings_read` bumps
//! as it reads (so a later read has a higher generation), and a sled takes only a newer set:
//! pushes that arrive out of order end with the newest.
//!
//! Who pushes:
//! - instance-start's `mappings` node, once the new VMM is registered (its undo pushes the
//!   set without that VMM), so peers reach the guest once it runs;
//! - a completed migration (the sets then name the target's sled), and every retirement of a
//!   VMM (stop, failure, a migration's source or failed target), so no sled keeps a mapping
//!   for a guest that is gone;
//! - reconciliation: when a sled agent registers (`reconcile_sled`) and in the background
//!   task `v2p_reconciliation`, every sled's sets are compared with the database's and pushed
//!   where they differ: a sled that was unreachable, or restarted and forgot its sets, gets
//!   the full set, and a push that failed is made good.
//!
//! A push to the sled whose VMM the caller is changing must succeed (instance-start fails
//! otherwise, and unwinds); a push to any other sled is best effort (logged), left to
//! reconciliation, so a sled that is down does not stop the VPC's other instances from
//! starting.

use super::Nexus;
use super::sled::sled_agent_error;
use futures::future::join_all;
use halyard_common::Error;
use halyard_common::ids::{InstanceUuid, SledUuid, VmmUuid, VpcUuid};
use halyard_db_queries::VpcMappingsRead;
use halyard_sled_agent_api::{V2pMapping, VpcMappings};
use slog::{debug, info, warn};
use std::collections::{BTreeMap, BTreeSet};

/// What the sleds of one VPC are told.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PushScope<'a> {
    /// Sleds to tell even if they host no interface of the VPC (they may have just stopped
    /// hosting one: they get the empty set).
    pub also: &'a [SledUuid],
    /// A VMM whose interfaces are left out, as if it had ended.
    pub excluding: Option<VmmUuid>,
    /// The sled whose push must succeed.
    pub must_reach: Option<SledUuid>,
}

/// A change of where interfaces live (a retirement, a migration's completion, a sled's VMMs
/// failed, a reconciliation) whose mapping pushes have not finished: taken before the change
/// is written and dropped once its pushes are done, so "nothing pending" means every sled was
/// told (or its push failed and was logged). Tests wait for it at their quiet points.
pub(crate) struct PendingPush(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for PendingPush {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Nexus {
    /// Marks a mapping push pending until the guard is dropped.
    pub(crate) fn mapping_push_pending(&self) -> PendingPush {
        self.pending_mapping_pushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        PendingPush(std::sync::Arc::clone(&self.pending_mapping_pushes))
    }

    /// How many changes' mapping pushes are still under way (0 at a quiet point).
    pub fn mapping_pushes_pending(&self) -> usize {
        self.pending_mapping_pushes
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Pushes the mapping set of every VPC the instance has interfaces in (see the module's
    /// documentation). Nothing to do for an instance without interfaces.
    pub(crate) async fn push_instance_mappings(
        &self,
        instance_id: InstanceUuid,
        scope: PushScope<'_>,
    ) -> Result<(), Error> {
        for vpc_id in self.datastore().instance_vpcs(instance_id).await? {
            self.push_vpc_mappings(vpc_id, scope).await?;
        }
        Ok(())
    }

    /// Reads a VPC's mapping set and pushes it to every sled hosting an interface of it, and
    /// the empty set to the sleds in `scope.also` that host none.
    pub(crate) async fn push_vpc_mappings(
        &self,
        vpc_id: VpcUuid,
        scope: PushScope<'_>,
    ) -> Result<(), Error> {
        let read = self
            .datastore()
            .vpc_mappings_read(vpc_id, scope.excluding, None)
            .await?;
        let mut sleds: BTreeSet<SledUuid> = read.mappings.iter().map(|m| m.sled_id).collect();
        sleds.extend(scope.also.iter().copied());
        let read = &read;
        let pushes = sleds
            .iter()
            .map(|&sled_id| async move { (sled_id, self.push_set_to_sled(sled_id, read).await) });
        for (sled_id, outcome) in join_all(pushes).await {
            match outcome {
                Ok(()) => {}
                Err(e) if scope.must_reach == Some(sled_id) => return Err(e),
                Err(e) => {
                    warn!(self.log(), "cannot push VPC mappings to a sled; reconciliation \
                        will"; "sled_id" => %sled_id, "vpc_id" => %vpc_id,
                        "vni" => %read.vni, "generation" => %read.generation, "error" => %e);
                }
            }
        }
        Ok(())
    }

    /// Pushes to one sled what it should hold of a VPC as `read` saw it: the whole set if it
    /// hosts one of the VPC's interfaces, else the empty set.
    async fn push_set_to_sled(
        &self,
        sled_id: SledUuid,
        read: &VpcMappingsRead,
    ) -> Result<(), Error> {
        let set = set_for_sled(sled_id, read);
        let client = match read.sled_agents.get(&sled_id) {
            Some(&at) => self.sled_client_at(sled_id, at)?,
            // A sled in the push's scope that hosts none of the VPC's interfaces.
            None => self.sled_client(sled_id).await?,
        };
        let answer = client
            .v2p_put(&set.vni, &set)
            .await
            .map_err(sled_agent_error)?
            .into_inner();
        debug!(self.log(), "VPC mappings pushed"; "sled_id" => %sled_id,
            "vni" => %set.vni, "generation" => %set.generation,
            "mappings" => set.mappings.len(), "applied" => answer.applied);
        Ok(())
    }

    /// Compares what a sled holds with what the database says it should hold and pushes every
    /// VPC's set that differs (a sled back from an outage, or restarted, gets its full sets;
    /// one that missed a push gets it). Returns how many sets it pushed.
    pub async fn reconcile_sled_mappings(&self, sled_id: SledUuid) -> Result<usize, Error> {
        let _pending = self.mapping_push_pending();
        let client = self.sled_client(sled_id).await?;
        let held: BTreeMap<_, _> = client
            .v2p_list()
            .await
            .map_err(sled_agent_error)?
            .into_inner()
            .into_iter()
            .map(|set| (set.vni, set))
            .collect();
        let hosted = self.datastore().sled_hosted_vpcs(sled_id).await?;
        let mut vpcs: BTreeMap<_, Option<VpcUuid>> = BTreeMap::new();
        for vpc_id in hosted {
            let vpc = self.datastore().vpc_fetch_by_id(vpc_id).await?;
            vpcs.insert(vpc.vni(), Some(vpc_id));
        }
        for (vni, set) in &held {
            if vpcs.contains_key(vni) || set.mappings.is_empty() {
                continue;
            }
            let vpc = self.datastore().vpc_fetch_by_vni(*vni).await?;
            vpcs.insert(*vni, vpc.map(|vpc| vpc.id()));
        }
        let mut pushed = 0;
        for (vni, vpc_id) in vpcs {
            let set = match vpc_id {
                Some(vpc_id) => {
                    // Past what the sled holds: a set newer than the database's (pushed by
                    // hand, or by a Nexus whose database was restored) would turn ours away.
                    let past = held.get(&vni).map(|have| have.generation);
                    let read = self
                        .datastore()
                        .vpc_mappings_read(vpc_id, None, past)
                        .await?;
                    set_for_sled(sled_id, &read)
                }
                // A deleted VPC's mappings: no newer set will ever come, so one past the held
                // generation empties it.
                None => {
                    let generation = held
                        .get(&vni)
                        .map_or(halyard_common::Generation::new(), |set| {
                            set.generation.next()
                        });
                    VpcMappings {
                        vni,
                        generation,
                        mappings: Vec::new(),
                    }
                }
            };
            let same = held
                .get(&vni)
                .is_some_and(|have| sorted(&have.mappings) == sorted(&set.mappings));
            if same {
                continue;
            }
            client.v2p_put(&vni, &set).await.map_err(sled_agent_error)?;
            info!(self.log(), "sled's VPC mappings reconciled"; "sled_id" => %sled_id,
                "vni" => %vni, "generation" => %set.generation,
                "mappings" => set.mappings.len(),
                "held" => held.get(&vni).map_or(0, |have| have.mappings.len()));
            pushed += 1;
        }
        Ok(pushed)
    }
}

/// What `sled_id` should hold of the VPC `read` describes.
pub(crate) fn set_for_sled(sled_id: SledUuid, read: &VpcMappingsRead) -> VpcMappings {
    let hosts = read.mappings.iter().any(|m| m.sled_id == sled_id);
    VpcMappings {
        vni: read.vni,
        generation: read.generation,
        mappings: if hosts {
            read.mappings
                .iter()
                .map(|m| V2pMapping {
                    virtual_ip: m.ip,
                    virtual_mac: m.mac,
                    sled_id: m.sled_id,
                    underlay_ip: m.underlay_ip,
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

fn sorted(mappings: &[V2pMapping]) -> Vec<V2pMapping> {
    let mut mappings = mappings.to_vec();
    mappings.sort();
    mappings
}
