//! A VMM's disks on QEMU's command line: one virtio block device per disk, whose backend is
//! QEMU's `quorum` driver over one `nbd` child per replica (the regions' exports, served by
//! the `qemu-storage-daemon` of each region's sled).
//!
//! - Writes go to every replica and succeed when at least [`VOTE_THRESHOLD`] of them do;
//!   reads go to every replica and are decided by vote (`read-pattern=quorum`), so one
//!   replica that missed writes or lost them is outvoted (QEMU reports it with a
//!   `QUORUM_REPORT_BAD` event). It is not rewritten on the spot: quorum's `rewrite-corrupted`
//!   takes write permission on the replicas when it opens them, which QEMU (10.0) refuses for
//!   a migration target's still-inactive block nodes ("Permission 'write' unavailable on
//!   inactive node"), and a VMM's disks must be the same wherever it runs. Bringing a stale
//!   replica back is region replacement's job.
//! - An `nbd` child whose server goes away (its storage daemon died and is being restarted)
//!   holds its requests for up to [`RECONNECT_DELAY_S`] while it reconnects, then sends them
//!   again; only a replica still unreachable after that fails its requests (and the other
//!   replicas carry the writes). At start, a replica's server may take up to
//!   [`OPEN_TIMEOUT_S`] to answer.
//! - The disks are attached in the order given (the boot disk first), each at a fixed PCI
//!   slot, so the guest sees them in that order (`vda`, `vdb`, ...) and a migration target,
//!   given the same disks, has the same devices. The guest reads a disk's name as the
//!   device's serial number.
//!
//! A migration target opens the same exports (nothing is copied): QEMU opens a migration
//! target's block devices inactive and takes them over when the stream completes, after the
//! source has drained and flushed them (QEMU stops the source's VM with `bdrv_drain_all` +
//! `bdrv_flush_all` and inactivates its block devices before sending the last state).

use halyard_common::Error;
use halyard_sled_agent_api::VmmDisk;
use serde_json::json;

/// How many replicas must take a write, and agree on a read.
pub(crate) const VOTE_THRESHOLD: usize = 2;
/// How long an `nbd` child holds its requests while reconnecting to a replica's server.
///
/// QEMU's NBD connection thread retries with a doubling pause (1, 2, 4, 8, then 16 s:
/// `nbd/client-connection.c`), so after a server dies it tries again about 0, 1, 3, 7 and
/// 15 s later. A delay of 10 s caught only a storage daemon back within 7 s, which a
/// restart on a loaded sled can miss (the replica then missed writes); 20 s catches one
/// back within 15 s. The price: a replica gone for good holds the guest's writes once, for
/// 20 s, before quorum goes on with the other two (quorum completes a write when every
/// child has answered; Linux's virtio-blk has no request timeout, so the guest waits).
pub(crate) const RECONNECT_DELAY_S: u64 = 20;
/// How long an `nbd` child keeps trying to reach its server when QEMU starts.
pub(crate) const OPEN_TIMEOUT_S: u64 = 5;
/// The most disks a VMM takes (Oxide's limit per instance).
pub(crate) const MAX_DISKS: usize = 8;
/// The PCI slot of the first disk on the root bus; the others follow.
const FIRST_DISK_SLOT: usize = 0x08;
/// The longest serial number virtio-blk carries (`VIRTIO_BLK_ID_BYTES`).
const MAX_SERIAL: usize = 20;

/// What a sled's VMMs need of a disk's replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replicas {
    /// A QEMU VMM reads and writes them: at least [`VOTE_THRESHOLD`] are needed.
    Served,
    /// A simulated VMM touches no data, and simulated regions are served nowhere: any
    /// number will do (Nexus sends none for a disk on simulated sleds).
    Simulated,
}

/// Refuses disks no VMM could attach, before anything starts (both backends).
pub(crate) fn validate(disks: &[VmmDisk], replicas: Replicas) -> Result<(), Error> {
    if disks.len() > MAX_DISKS {
        return Err(Error::invalid_value(
            "disks",
            format!("a VMM takes at most {MAX_DISKS} disks"),
        ));
    }
    for (i, disk) in disks.iter().enumerate() {
        if disks[..i].iter().any(|d| d.disk_id == disk.disk_id) {
            return Err(Error::invalid_value(
                "disks",
                format!("disk {} is given twice", disk.disk_id),
            ));
        }
        // Oxide's names: lowercase letters, digits and '-'. The serial carries the first 20.
        if disk.name.is_empty()
            || disk.name.len() > 63
            || !disk
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(Error::invalid_value(
                "disks",
                format!(
                    "disk {}'s name must be 1 to 63 lowercase letters, digits or '-'",
                    disk.disk_id
                ),
            ));
        }
        let block = u64::from(disk.block_size.to_bytes());
        if disk.size.to_bytes() == 0 || disk.size.to_bytes() % block != 0 {
            return Err(Error::invalid_value(
                "disks",
                format!(
                    "disk {}'s size must be a positive multiple of its block size ({block})",
                    disk.disk_id
                ),
            ));
        }
        if replicas == Replicas::Served && disk.replicas.len() < VOTE_THRESHOLD {
            return Err(Error::invalid_value(
                "disks",
                format!(
                    "disk {} has {} replicas; at least {VOTE_THRESHOLD} are needed",
                    disk.disk_id,
                    disk.replicas.len()
                ),
            ));
        }
        for (j, replica) in disk.replicas.iter().enumerate() {
            if disk.replicas[..j].contains(replica) {
                return Err(Error::invalid_value(
                    "disks",
                    format!("disk {} names one replica twice", disk.disk_id),
                ));
            }
        }
    }
    Ok(())
}

/// The `-blockdev` and `-device` arguments (JSON, so names need no escaping) attaching
/// `disks`, in order.
pub(crate) fn command_line_args(disks: &[VmmDisk]) -> Vec<String> {
    let mut args = Vec::new();
    for (index, disk) in disks.iter().enumerate() {
        let node = format!("disk{index}");
        let children: Vec<serde_json::Value> = disk
            .replicas
            .iter()
            .enumerate()
            .map(|(r, replica)| {
                json!({
                    "driver": "nbd",
                    "node-name": format!("{node}-replica{r}"),
                    "server": {
                        "type": "inet",
                        "host": replica.address.ip().to_string(),
                        "port": replica.address.port().to_string(),
                    },
                    "export": replica.name,
                    "reconnect-delay": RECONNECT_DELAY_S,
                    "open-timeout": OPEN_TIMEOUT_S,
                })
            })
            .collect();
        let blockdev = json!({
            "driver": "quorum",
            "node-name": node,
            "vote-threshold": VOTE_THRESHOLD,
            "read-pattern": "quorum",
            "rewrite-corrupted": false,
            "children": children,
        });
        let serial: String = disk.name.chars().take(MAX_SERIAL).collect();
        let block_size = disk.block_size.to_bytes();
        let device = json!({
            "driver": "virtio-blk-pci",
            "id": format!("{node}-device"),
            "drive": node,
            "bus": "pcie.0",
            "addr": format!("{:#04x}", FIRST_DISK_SLOT + index),
            "serial": serial,
            "logical_block_size": block_size,
            "physical_block_size": block_size,
        });
        args.push("-blockdev".to_string());
        args.push(blockdev.to_string());
        args.push("-device".to_string());
        args.push(device.to_string());
    }
    args
}

/// The disk and replica that QEMU block node `node` (a quorum child) stands for.
pub(crate) fn replica_of_node<'a>(
    disks: &'a [VmmDisk],
    node: &str,
) -> Option<(&'a VmmDisk, &'a halyard_sled_agent_api::NbdExport)> {
    let (disk, replica) = node.strip_prefix("disk")?.split_once("-replica")?;
    let disk = disks.get(disk.parse::<usize>().ok()?)?;
    let replica = disk.replicas.get(replica.parse::<usize>().ok()?)?;
    Some((disk, replica))
}

#[cfg(test)]
mod tests {
    use super::*;
    use halyard_common::ids::DiskUuid;
    use halyard_common::{BlockSize, ByteCount};
    use halyard_sled_agent_api::NbdExport;

    fn disk(name: &str, replicas: usize) -> VmmDisk {
        VmmDisk {
            disk_id: DiskUuid::new_v4(),
            name: name.into(),
            size: ByteCount::from_mebibytes_u32(64),
            block_size: BlockSize::try_from(4096u32).unwrap(),
            replicas: (0..replicas)
                .map(|i| NbdExport {
                    address: format!("10.0.0.{}:10809", i + 1).parse().unwrap(),
                    name: format!("region-{i}"),
                })
                .collect(),
        }
    }

    #[test]
    fn each_disk_is_a_quorum_over_its_replicas_in_order() {
        let disks = vec![disk("boot", 3), disk("a-very-long-disk-name-indeed", 2)];
        validate(&disks, Replicas::Served).unwrap();
        let args = command_line_args(&disks);
        assert_eq!(args.len(), 8);
        let boot: serde_json::Value = serde_json::from_str(&args[1]).unwrap();
        assert_eq!(boot["driver"], "quorum");
        assert_eq!(boot["vote-threshold"], 2);
        let children = boot["children"].as_array().unwrap();
        assert_eq!(children.len(), 3);
        assert_eq!(children[1]["server"]["host"], "10.0.0.2");
        assert_eq!(children[1]["server"]["port"], "10809");
        assert_eq!(children[1]["export"], "region-1");
        let device: serde_json::Value = serde_json::from_str(&args[3]).unwrap();
        assert_eq!(device["drive"], "disk0");
        assert_eq!(device["serial"], "boot");
        assert_eq!(device["addr"], "0x08");
        assert_eq!(device["logical_block_size"], 4096);
        let child = children[1]["node-name"].as_str().unwrap();
        let (found, replica) = replica_of_node(&disks, child).unwrap();
        assert_eq!((found, replica), (&disks[0], &disks[0].replicas[1]));
        assert!(replica_of_node(&disks, "disk1-replica2").is_none());
        let second: serde_json::Value = serde_json::from_str(&args[7]).unwrap();
        assert_eq!(second["addr"], "0x09");
        assert_eq!(second["serial"], "a-very-long-disk-nam", "cut to 20 bytes");
    }

    #[test]
    fn disks_no_vmm_could_attach_are_refused() {
        assert!(validate(&[disk("one-replica", 1)], Replicas::Served).is_err());
        validate(&[disk("simulated", 0)], Replicas::Simulated).unwrap();
        assert!(validate(&[disk("Upper", 3)], Replicas::Served).is_err());
        assert!(validate(&[disk("", 3)], Replicas::Served).is_err());
        let mut odd = disk("odd", 3);
        odd.size = ByteCount::try_from(4096u64 * 3 + 512).unwrap();
        assert!(validate(&[odd], Replicas::Served).is_err());
        let mut twice = disk("twice", 3);
        twice.replicas[2] = twice.replicas[0].clone();
        assert!(validate(&[twice], Replicas::Served).is_err());
        let same = disk("same", 3);
        assert!(validate(&[same.clone(), same], Replicas::Served).is_err());
        assert!(validate(&vec![disk("many", 3); 9], Replicas::Served).is_err());
    }
}
