//! VPCs, VPC subnets and instances' network interfaces: what the external API's calls on them
//! do. The handlers hand in records found by the authorized lookups (`app/authorized.rs`);
//! the rules that need the database (overlapping subnets, address allocation, an instance
//! that must be stopped, a VPC or subnet still holding interfaces) are the DataStore's
//! (`db-queries/src/datastore/network.rs`), each decided in the transaction that writes.
//!
//! Halyard has no routers: a subnet's `custom_router` is refused (400), and a VPC's
//! `system_router_id` in its view is the VPC's own id.

use super::Nexus;
use halyard_common::ids::NetworkInterfaceUuid;
use halyard_common::{Error, NameOrId};
use halyard_db_model::{Instance, NetworkInterface, Vpc, VpcSubnet};
use halyard_db_queries::{InstanceForNics, NewNetworkInterface};
use halyard_nexus_external_api::params::{
    InstanceNetworkInterfaceCreate, VpcCreate, VpcSubnetCreate,
};
use slog::info;

impl Nexus {
    /// Makes a VPC in a project, with its `default` subnet unless `defaults` says otherwise.
    pub async fn vpc_create(
        &self,
        project_id: halyard_common::ids::ProjectUuid,
        params: VpcCreate,
    ) -> Result<(Vpc, Option<VpcSubnet>), Error> {
        let default_subnet = params.creates_default_subnet();
        let (vpc, subnet) = self
            .datastore()
            .vpc_create(
                project_id,
                params.name,
                params.description,
                params.dns_name,
                params.ipv6_prefix,
                default_subnet,
            )
            .await?;
        info!(self.log(), "VPC created";
            "vpc_id" => %vpc.id(), "project_id" => %project_id, "vni" => %vpc.vni(),
            "default_subnet_id" => ?subnet.as_ref().map(|s| s.id()));
        Ok((vpc, subnet))
    }

    /// Deletes a VPC and its subnets (409 while an interface is in it).
    pub async fn vpc_delete(&self, vpc: &Vpc) -> Result<(), Error> {
        self.datastore().vpc_delete(vpc.id()).await?;
        info!(self.log(), "VPC deleted"; "vpc_id" => %vpc.id());
        Ok(())
    }

    /// Makes a subnet in a VPC. `custom_router` is refused: Halyard has no routers.
    pub async fn vpc_subnet_create(
        &self,
        vpc: &Vpc,
        params: VpcSubnetCreate,
    ) -> Result<VpcSubnet, Error> {
        if let Some(router) = &params.custom_router {
            return Err(Error::invalid_request(format!(
                "custom routers are not supported (Halyard has no VPC routers): remove \
                 \"custom_router\" ({router})"
            )));
        }
        let subnet = self
            .datastore()
            .vpc_subnet_create(
                vpc.id(),
                params.name,
                params.description,
                params.ipv4_block,
                params.ipv6_block,
            )
            .await?;
        info!(self.log(), "VPC subnet created";
            "subnet_id" => %subnet.id(), "vpc_id" => %vpc.id(),
            "ipv4_block" => %subnet.ipv4_block());
        Ok(subnet)
    }

    /// Deletes a subnet (409 while an interface is in it).
    pub async fn vpc_subnet_delete(&self, subnet: &VpcSubnet) -> Result<(), Error> {
        self.datastore().vpc_subnet_delete(subnet).await?;
        info!(self.log(), "VPC subnet deleted"; "subnet_id" => %subnet.id());
        Ok(())
    }

    /// Makes a network interface on a stopped instance, in a subnet of a VPC of the
    /// instance's project (both named in `params`). Checked before anything is written: an
    /// `ip_config` Halyard can make (400 otherwise); the VPC and subnet exist (404). The
    /// DataStore refuses an instance that is not stopped and a full subnet (409).
    pub async fn network_interface_create(
        &self,
        instance: &Instance,
        params: InstanceNetworkInterfaceCreate,
    ) -> Result<NetworkInterface, Error> {
        let ip = params.ip_config.resolve().map_err(Error::invalid_request)?;
        let vpc = self
            .datastore()
            .vpc_fetch(instance.project_id(), &NameOrId::Name(params.vpc_name))
            .await?;
        let subnet = self
            .datastore()
            .vpc_subnet_fetch(vpc.id(), &NameOrId::Name(params.subnet_name))
            .await?;
        let nic = self
            .datastore()
            .network_interface_create(
                NewNetworkInterface {
                    id: NetworkInterfaceUuid::new_v4(),
                    instance_id: instance.id(),
                    name: params.name,
                    description: params.description,
                    subnet,
                    ip: ip.ipv4,
                    dual_stack: ip.dual_stack,
                },
                InstanceForNics::Stopped,
            )
            .await?;
        info!(self.log(), "network interface created";
            "nic_id" => %nic.id(), "instance_id" => %instance.id(),
            "subnet_id" => %nic.subnet_id(), "ip" => %nic.ip(), "mac" => %nic.mac());
        Ok(nic)
    }

    /// Deletes a network interface of a stopped instance (409 otherwise).
    pub async fn network_interface_delete(&self, nic: &NetworkInterface) -> Result<(), Error> {
        let deleted = self
            .datastore()
            .network_interface_delete(nic.id(), InstanceForNics::Stopped)
            .await?;
        info!(self.log(), "network interface deleted";
            "nic_id" => %nic.id(), "instance_id" => %nic.instance_id(),
            "was_live" => deleted);
        Ok(())
    }
}
