//! The sled's virtual-to-physical mappings: for each VPC (by VNI) that Nexus told this sled
//! about, which sled hosts each of the VPC's private addresses. Nexus pushes a VPC's whole set
//! at once, versioned by the VPC's mapping generation; a set is taken only if its generation is
//! newer than the one held, so sets pushed out of order (two Nexus, a slow retry) end with
//! the newest. The table is what both backends keep; the QEMU backend also programs its
//! virtual switch from it (`qemu::network`).

use halyard_common::net::Vni;
use halyard_sled_agent_api::{V2pApplied, VpcMappings};
use std::collections::BTreeMap;

/// Every VPC's mappings this sled holds, by VNI.
#[derive(Default)]
pub(crate) struct V2pTable {
    vpcs: BTreeMap<Vni, VpcMappings>,
}

impl V2pTable {
    /// Takes `set` if it is newer than the VPC's held set (or the VPC is new here).
    pub(crate) fn apply(&mut self, set: VpcMappings) -> V2pApplied {
        match self.vpcs.get(&set.vni) {
            Some(held) if held.generation >= set.generation => V2pApplied {
                applied: false,
                generation: held.generation,
            },
            _ => {
                let generation = set.generation;
                let mut set = set;
                set.mappings.sort();
                set.mappings.dedup();
                self.vpcs.insert(set.vni, set);
                V2pApplied {
                    applied: true,
                    generation,
                }
            }
        }
    }

    pub(crate) fn get(&self, vni: Vni) -> Option<&VpcMappings> {
        self.vpcs.get(&vni)
    }

    pub(crate) fn list(&self) -> Vec<VpcMappings> {
        self.vpcs.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halyard_common::Generation;
    use halyard_common::ids::SledUuid;
    use halyard_common::net::MacAddr;
    use halyard_sled_agent_api::V2pMapping;

    fn set(generation: u64, last_octet: u8) -> VpcMappings {
        VpcMappings {
            vni: Vni::try_from(4096).unwrap(),
            generation: Generation::try_from(generation).unwrap(),
            mappings: vec![V2pMapping {
                virtual_ip: [172, 30, 0, last_octet].into(),
                virtual_mac: MacAddr::GUEST_FIRST,
                sled_id: SledUuid::new_v4(),
                underlay_ip: [10, 0, 0, 1].into(),
            }],
        }
    }

    #[test]
    fn only_newer_generations_replace_a_vpcs_set() {
        let mut table = V2pTable::default();
        assert!(table.apply(set(2, 5)).applied);
        let stale = table.apply(set(1, 6));
        assert!(!stale.applied);
        assert_eq!(stale.generation.as_u64(), 2);
        assert!(
            !table.apply(set(2, 7)).applied,
            "a repeat of the held generation"
        );
        let vni = Vni::try_from(4096).unwrap();
        assert_eq!(
            table.get(vni).unwrap().mappings[0].virtual_ip,
            std::net::Ipv4Addr::new(172, 30, 0, 5)
        );
        assert!(table.apply(set(3, 8)).applied);
        assert_eq!(table.list().len(), 1);
        assert_eq!(
            table.get(vni).unwrap().mappings[0].virtual_ip,
            std::net::Ipv4Addr::new(172, 30, 0, 8)
        );
    }
}
