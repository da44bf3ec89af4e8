//! `omdb db nics|v2p`: instances' network interfaces (with their VPC, subnet, addresses and
//! where their instance runs) and the virtual-to-physical mappings the database implies (what
//! every sled hosting an interface of a VPC should hold). `omdb db check` compares the latter
//! with what each sled agent holds (`check.rs`).

use crate::output::print_rows;
use halyard_common::ids::{InstanceUuid, NetworkInterfaceUuid, SledUuid, VpcSubnetUuid, VpcUuid};
use halyard_common::net::{MacAddr, Vni};
use halyard_db_model::{Vpc, VpcSubnet};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use tabled::Tabled;

use super::store::{Db, instance_name, project_name};

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
struct NicRow {
    id: NetworkInterfaceUuid,
    name: String,
    #[tabled(skip)]
    instance_id: InstanceUuid,
    instance: String,
    project: String,
    vpc: String,
    vni: String,
    subnet: String,
    ip: Ipv4Addr,
    #[tabled(display = "ipv6_display")]
    ipv6: Option<std::net::Ipv6Addr>,
    mac: MacAddr,
    primary: bool,
    slot: i32,
    /// The sled its instance's active VMM runs on (`-`: stopped).
    #[tabled(display = "sled_display")]
    sled: Option<SledUuid>,
    #[tabled(skip)]
    deleted: bool,
}

fn ipv6_display(ip: &Option<std::net::Ipv6Addr>) -> String {
    ip.map_or_else(|| "-".to_string(), |ip| ip.to_string())
}

fn sled_display(sled: &Option<SledUuid>) -> String {
    sled.map_or_else(|| "-".to_string(), |s| s.to_string())
}

pub(super) async fn cmd_nics(db: &Db, include_deleted: bool, json: bool) -> anyhow::Result<()> {
    let projects = db.projects().await?;
    let instances = db.instances().await?;
    let vpcs: BTreeMap<VpcUuid, Vpc> = db
        .datastore
        .vpc_list_all()
        .await
        .map_err(|e| db.err(e))?
        .into_iter()
        .map(|v| (v.id(), v))
        .collect();
    let subnets: BTreeMap<VpcSubnetUuid, VpcSubnet> = db
        .datastore
        .vpc_subnet_list_all()
        .await
        .map_err(|e| db.err(e))?
        .into_iter()
        .map(|s| (s.id(), s))
        .collect();
    let hosted: BTreeMap<NetworkInterfaceUuid, SledUuid> = db
        .datastore
        .v2p_current_all()
        .await
        .map_err(|e| db.err(e))?
        .into_iter()
        .map(|(_, h)| (h.nic_id, h.sled_id))
        .collect();
    let nics = db
        .datastore
        .network_interface_list_all()
        .await
        .map_err(|e| db.err(e))?;
    let mut rows: Vec<NicRow> = nics
        .iter()
        .filter(|n| include_deleted || n.time_deleted.is_none())
        .map(|n| {
            let vpc = vpcs.get(&n.vpc_id());
            let subnet = subnets.get(&n.subnet_id());
            NicRow {
                id: n.id(),
                name: n.name().to_string(),
                instance_id: n.instance_id(),
                instance: instance_name(&instances, n.instance_id()),
                project: vpc.map_or_else(
                    || "?".to_string(),
                    |v| project_name(&projects, v.project_id()),
                ),
                vpc: vpc.map_or_else(|| "?".to_string(), |v| v.name().to_string()),
                vni: vpc.map_or_else(|| "?".to_string(), |v| v.vni().to_string()),
                subnet: subnet.map_or_else(
                    || "?".to_string(),
                    |s| format!("{} ({})", s.name(), s.ipv4_block()),
                ),
                ip: n.ip(),
                ipv6: n.ipv6(),
                mac: n.mac(),
                primary: n.is_primary,
                slot: n.slot,
                sled: hosted.get(&n.id()).copied(),
                deleted: n.time_deleted.is_some(),
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        (&a.project, &a.instance, a.slot, a.id).cmp(&(&b.project, &b.instance, b.slot, b.id))
    });
    print_rows(&rows, json, "no network interfaces")
}

/// One mapping the database implies.
#[derive(Debug, Clone, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
pub(super) struct MappingRow {
    pub vni: Vni,
    pub vpc: String,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// The sled hosting the interface.
    pub sled: SledUuid,
    /// That sled's underlay address (where its guests' traffic is tunnelled to).
    pub underlay: IpAddr,
    pub interface: NetworkInterfaceUuid,
}

/// Every mapping the database implies, by VNI and address.
pub(super) async fn implied_mappings(db: &Db) -> anyhow::Result<Vec<MappingRow>> {
    let projects = db.projects().await?;
    let vpcs: BTreeMap<Vni, Vpc> = db
        .datastore
        .vpc_list_all()
        .await
        .map_err(|e| db.err(e))?
        .into_iter()
        .filter(|v| v.time_deleted.is_none())
        .map(|v| (v.vni(), v))
        .collect();
    Ok(db
        .datastore
        .v2p_current_all()
        .await
        .map_err(|e| db.err(e))?
        .into_iter()
        .map(|(vni, h)| MappingRow {
            vni,
            vpc: vpcs.get(&vni).map_or_else(
                || "?".to_string(),
                |v| format!("{}/{}", project_name(&projects, v.project_id()), v.name()),
            ),
            ip: h.ip,
            mac: h.mac,
            sled: h.sled_id,
            underlay: h.underlay_ip,
            interface: h.nic_id,
        })
        .collect())
}

pub(super) async fn cmd_v2p(db: &Db, json: bool) -> anyhow::Result<()> {
    let rows = implied_mappings(db).await?;
    print_rows(
        &rows,
        json,
        "no mappings (no interface of a running instance)",
    )
}
