//! The sled's virtual switch: how the NICs of this sled's QEMU guests reach each other and
//! the guests of other sleds in the same VPC, and nothing else.
//!
//! ```text
//!   root namespace                  │ the sled's namespace hl-<first 8 hex of the sled id>
//!                                   │
//!   QEMU ── tap hv<vmm8>n<slot> ────┼──► moved here, a port of the VNI's bridge
//!                                   │      br<vni> ── vx<vni> (VXLAN, VNI <vni>, UDP 4789,
//!                                   │                          from the underlay address)
//!   environment's bridge            │
//!     └── veth hu-<sled8> ──────────┼──── veth "underlay" with the sled's underlay address
//! ```
//!
//! - **One namespace per sled** (`hl-` and the first 8 hex digits of the sled id): made at
//!   start (whatever an earlier run of the same sled left is removed first), removed at
//!   shutdown. QEMU itself stays in the root namespace: its QMP sockets, its NBD connections
//!   and its migration stream need it there.
//! - **Per VPC (VNI) with a NIC on this sled, a segment**: a bridge `br<vni>` and, with an
//!   underlay, a VXLAN device `vx<vni>` (`nolearning proxy`, a port of the bridge that does
//!   not learn either). It is made when the VNI's first NIC appears and removed with its last.
//! - **Per NIC a tap** `hv<first 8 hex of the VMM id>n<slot>`: QEMU makes it in the root
//!   namespace (`-netdev tap,ifname=...`), the sled agent moves it into the sled's namespace
//!   once QEMU is up and makes it a port of its VNI's bridge. It goes with its QEMU (a tap
//!   dies with the last file descriptor on it); the sled agent deletes it too, before the VMM
//!   is reported gone.
//! - **Forwarding comes only from the V2P table** ([`crate::v2p`]): for every mapping of the
//!   VNI whose sled is another sled, a VXLAN forwarding entry (`bridge fdb replace MAC dev
//!   vx<vni> dst UNDERLAY`) and a permanent neighbour entry (`ip neigh replace IP lladdr MAC
//!   dev vx<vni>`), which the VXLAN device's proxy uses to answer a guest's ARP request
//!   itself: no ARP crosses sleds, no frame is flooded to other sleds (no all-zeros entry)
//!   and nothing is learned. A frame for a MAC no mapping names is dropped at the VXLAN
//!   device. A new set replaces the old one: entries no longer in it are removed. Guests of
//!   the same VNI on this sled reach each other through the bridge alone.
//! - **The underlay** (`[qemu.underlay]`): a veth pair, one end (`hu-<sled8>`) a port of the
//!   environment's bridge in the root namespace, the other (`underlay`) in the sled's
//!   namespace with the sled's underlay address. Its MTU is 1550, so a VXLAN device carries
//!   the guests' 1500-byte frames whole. Without it there are no VXLAN devices: guests reach
//!   the guests of their VNI on this sled only.
//!
//! Everything is done with iproute2 (`ip -n <namespace> ...`, `bridge -n <namespace> ...`).
//! The switch keeps what it programmed, so a set is applied as the difference to it.

use crate::config::UnderlayConfig;
use halyard_common::ids::{SledUuid, VmmUuid};
use halyard_common::net::{MacAddr, Vni};
use halyard_sled_agent_api::{VmmNic, VpcMappings};
use slog::{Logger, debug, info, warn};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// The name of the sled's end of the underlay veth pair, inside its namespace.
const UNDERLAY_LINK: &str = "underlay";
/// The MTU of the underlay link: a guest's 1500-byte frame plus VXLAN's 50 bytes.
const UNDERLAY_MTU: u32 = 1550;
/// The MTU of VXLAN devices (and so of the bridges): the guests' own.
const VXLAN_MTU: u32 = 1500;
/// VXLAN's IANA port.
const VXLAN_PORT: u16 = 4789;
/// The most NICs a VMM has (their PCI slots are 0x10 to 0x17: [`nic_pci_address`]).
pub(crate) const MAX_NICS: usize = 8;
/// How long QEMU's tap may take to appear once QEMU answers on QMP (it is made before).
const TAP_APPEAR_TIMEOUT: Duration = Duration::from_secs(2);

/// What went wrong in the switch.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetworkError {
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("the underlay bridge {bridge} does not exist in the root network namespace: {stderr}")]
    NoUnderlayBridge { bridge: String, stderr: String },
    #[error("QEMU's tap {tap} never appeared in the root network namespace")]
    TapMissing { tap: String },
    #[error("this sled has no virtual switch ({reason}); it cannot run VMMs with NICs")]
    NoSwitch { reason: String },
}

impl From<NetworkError> for halyard_common::Error {
    fn from(error: NetworkError) -> halyard_common::Error {
        halyard_common::Error::unavailable(error.to_string())
    }
}

/// The network namespace of the QEMU sled `sled_id` (`hl-` and the first 8 hex digits of
/// its id).
pub fn namespace_name(sled_id: SledUuid) -> String {
    format!("hl-{}", &sled_id.to_string()[..8])
}

/// The root namespace's end of the sled's underlay veth pair.
fn underlay_veth_name(sled_id: SledUuid) -> String {
    format!("hu-{}", &sled_id.to_string()[..8])
}

/// The tap of VMM `vmm`'s NIC in `slot` (at most 13 bytes; unique among the host's live VMMs,
/// which is what matters while QEMU's tap is in the root namespace).
pub(crate) fn tap_name(vmm: VmmUuid, slot: u8) -> String {
    format!("hv{}n{slot}", &vmm.to_string()[..8])
}

/// The PCI address of the NIC in `slot` (disks are at 0x08 + index, below).
pub(crate) fn nic_pci_address(slot: u8) -> String {
    format!("0x{:02x}", 0x10 + u32::from(slot))
}

fn bridge_name(vni: Vni) -> String {
    format!("br{}", vni.as_u32())
}

fn vxlan_name(vni: Vni) -> String {
    format!("vx{}", vni.as_u32())
}

/// The underlay link as the switch set it up.
#[derive(Debug, Clone)]
struct Underlay {
    address: Ipv4Addr,
}

/// What the switch has programmed on one VNI's VXLAN device.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Forwarding {
    /// MAC → the underlay address its frames go to.
    fdb: BTreeMap<MacAddr, IpAddr>,
    /// Private address → MAC (the proxy's ARP answers).
    neigh: BTreeMap<Ipv4Addr, MacAddr>,
}

impl Forwarding {
    /// What `set` asks for on a sled other than the ones its mappings are local to.
    fn wanted(set: &VpcMappings, this_sled: SledUuid) -> Forwarding {
        let mut wanted = Forwarding::default();
        for mapping in set.mappings.iter().filter(|m| m.sled_id != this_sled) {
            wanted.fdb.insert(mapping.virtual_mac, mapping.underlay_ip);
            wanted.neigh.insert(mapping.virtual_ip, mapping.virtual_mac);
        }
        wanted
    }
}

/// One VNI's bridge (and VXLAN device) on this sled.
#[derive(Debug, Default)]
struct Segment {
    taps: BTreeSet<String>,
    programmed: Forwarding,
}

#[derive(Default)]
struct SwitchState {
    /// The newest mapping set the sled took per VNI (handed over by `SledAgent::v2p_put`).
    sets: BTreeMap<Vni, VpcMappings>,
    segments: BTreeMap<Vni, Segment>,
    /// Each VMM's taps and their VNIs.
    vmms: BTreeMap<VmmUuid, Vec<(String, Vni)>>,
}

/// The sled's virtual switch (see the module documentation).
pub(crate) struct Switch {
    sled_id: SledUuid,
    namespace: String,
    underlay: Option<Underlay>,
    /// Set when the switch could not be made (no privileges for namespaces, say) and no
    /// underlay was configured: VMMs without NICs still run.
    unavailable: Option<String>,
    state: tokio::sync::Mutex<SwitchState>,
    log: Logger,
}

impl Switch {
    /// Makes the sled's namespace (removing an earlier run's first) and its underlay link.
    /// Without `[qemu.underlay]`, a failure leaves a switch that refuses NICs, so a sled agent
    /// without the privileges for namespaces still runs VMMs without NICs.
    pub(crate) async fn start(
        sled_id: SledUuid,
        underlay: Option<&UnderlayConfig>,
        log: &Logger,
    ) -> Result<Switch, NetworkError> {
        let log = log.new(slog::o!("component" => "switch"));
        let namespace = namespace_name(sled_id);
        let mut switch = Switch {
            sled_id,
            namespace,
            underlay: None,
            unavailable: None,
            state: tokio::sync::Mutex::new(SwitchState::default()),
            log,
        };
        switch.remove_namespace().await;
        let made = async {
            switch
                .run("ip", &["netns", "add", &switch.namespace])
                .await?;
            switch.ip(&["link", "set", "lo", "up"]).await?;
            if let Some(config) = underlay {
                switch.underlay = Some(switch.connect_underlay(config).await?);
            }
            Ok::<(), NetworkError>(())
        }
        .await;
        match made {
            Ok(()) => {
                info!(switch.log, "virtual switch ready"; "namespace" => &switch.namespace,
                    "underlay_address" => ?switch.underlay.as_ref().map(|u| u.address),
                    "underlay_bridge" => ?underlay.map(|u| &u.bridge));
                Ok(switch)
            }
            Err(error) if underlay.is_none() => {
                warn!(switch.log, "no virtual switch: VMMs with NICs will be refused";
                    "namespace" => &switch.namespace, "error" => %error);
                switch.remove_namespace().await;
                switch.unavailable = Some(error.to_string());
                Ok(switch)
            }
            Err(error) => {
                switch.remove_namespace().await;
                Err(error)
            }
        }
    }

    /// The sled's underlay address, if it has an underlay.
    pub(crate) fn underlay_address(&self) -> Option<IpAddr> {
        self.underlay.as_ref().map(|u| IpAddr::V4(u.address))
    }

    /// Refuses NICs if the switch could not be made.
    pub(crate) fn check_available(&self, nics: &[VmmNic]) -> Result<(), NetworkError> {
        match &self.unavailable {
            Some(reason) if !nics.is_empty() => Err(NetworkError::NoSwitch {
                reason: reason.clone(),
            }),
            _ => Ok(()),
        }
    }

    async fn connect_underlay(&self, config: &UnderlayConfig) -> Result<Underlay, NetworkError> {
        let bridge = &config.bridge;
        if let Err(error) = self
            .run("ip", &["link", "show", "dev", bridge, "type", "bridge"])
            .await
            .and_then(|out| {
                if out.trim().is_empty() {
                    Err(NetworkError::NoUnderlayBridge {
                        bridge: bridge.clone(),
                        stderr: "it is not a bridge".into(),
                    })
                } else {
                    Ok(out)
                }
            })
        {
            return Err(match error {
                NetworkError::Command { stderr, .. } => NetworkError::NoUnderlayBridge {
                    bridge: bridge.clone(),
                    stderr,
                },
                other => other,
            });
        }
        let outer = underlay_veth_name(self.sled_id);
        let mtu = UNDERLAY_MTU.to_string();
        self.run(
            "ip",
            &[
                "link",
                "add",
                &outer,
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                UNDERLAY_LINK,
                "mtu",
                &mtu,
                "netns",
                &self.namespace,
            ],
        )
        .await?;
        self.run("ip", &["link", "set", &outer, "master", bridge, "up"])
            .await?;
        let address = config.address.to_string();
        self.ip(&["addr", "add", &address, "dev", UNDERLAY_LINK])
            .await?;
        self.ip(&["link", "set", UNDERLAY_LINK, "up"]).await?;
        Ok(Underlay {
            address: config.address.addr(),
        })
    }

    /// Connects VMM `vmm`'s NICs: moves each tap QEMU made into the sled's namespace and makes
    /// it a port of its VNI's bridge (made, and given the VNI's held mappings, if it is the
    /// VNI's first NIC here). On an error, what was connected is undone.
    pub(crate) async fn attach(&self, vmm: VmmUuid, nics: &[VmmNic]) -> Result<(), NetworkError> {
        if nics.is_empty() {
            return Ok(());
        }
        self.check_available(nics)?;
        let mut state = self.state.lock().await;
        for nic in nics {
            let tap = tap_name(vmm, nic.slot);
            // Recorded first, so that a failure half way is undone by `detach`.
            state
                .vmms
                .entry(vmm)
                .or_default()
                .push((tap.clone(), nic.vni));
            let attached = self.attach_one(&mut state, &tap, nic.vni).await;
            if let Err(error) = attached {
                drop(state);
                self.detach(vmm).await;
                return Err(error);
            }
            info!(self.log, "NIC connected"; "propolis_id" => %vmm, "nic_id" => %nic.nic_id,
                "nic" => &nic.name, "tap" => &tap, "vni" => %nic.vni, "mac" => %nic.mac,
                "ip" => %nic.ip);
        }
        Ok(())
    }

    async fn attach_one(
        &self,
        state: &mut SwitchState,
        tap: &str,
        vni: Vni,
    ) -> Result<(), NetworkError> {
        if let std::collections::btree_map::Entry::Vacant(entry) = state.segments.entry(vni) {
            if let Err(error) = self.make_segment(vni).await {
                // What was made of it goes, so the next NIC of the VNI starts afresh.
                self.remove_segment(vni).await;
                return Err(error);
            }
            entry.insert(Segment::default());
            if let Some(set) = state.sets.get(&vni).cloned() {
                self.program_segment(state, &set).await?;
            }
        }
        self.move_tap_here(tap).await?;
        // From here the tap is the segment's, so a failure below removes it with the VMM.
        state
            .segments
            .get_mut(&vni)
            .expect("made above")
            .taps
            .insert(tap.to_string());
        self.ip(&["link", "set", tap, "master", &bridge_name(vni), "up"])
            .await?;
        Ok(())
    }

    /// Moves QEMU's tap from the root namespace into the sled's (waiting briefly for it).
    async fn move_tap_here(&self, tap: &str) -> Result<(), NetworkError> {
        let deadline = tokio::time::Instant::now() + TAP_APPEAR_TIMEOUT;
        loop {
            match self
                .run("ip", &["link", "set", "dev", tap, "netns", &self.namespace])
                .await
            {
                Ok(_) => return Ok(()),
                Err(NetworkError::Command { stderr, .. })
                    if stderr.contains("Cannot find device")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(NetworkError::Command { stderr, .. })
                    if stderr.contains("Cannot find device") =>
                {
                    return Err(NetworkError::TapMissing {
                        tap: tap.to_string(),
                    });
                }
                Err(other) => return Err(other),
            }
        }
    }

    async fn make_segment(&self, vni: Vni) -> Result<(), NetworkError> {
        let bridge = bridge_name(vni);
        let mtu = VXLAN_MTU.to_string();
        self.ip(&["link", "add", &bridge, "mtu", &mtu, "type", "bridge"])
            .await?;
        if let Some(underlay) = &self.underlay {
            let vxlan = vxlan_name(vni);
            let id = vni.as_u32().to_string();
            let local = underlay.address.to_string();
            let port = VXLAN_PORT.to_string();
            self.ip(&[
                "link",
                "add",
                &vxlan,
                "mtu",
                &mtu,
                "type",
                "vxlan",
                "id",
                &id,
                "local",
                &local,
                "dstport",
                &port,
                "nolearning",
                "proxy",
            ])
            .await?;
            self.ip(&["link", "set", &vxlan, "master", &bridge, "up"])
                .await?;
            // The bridge learns no MAC behind the VXLAN port either: a guest that migrates
            // here must not stay remembered as remote.
            self.bridge(&["link", "set", "dev", &vxlan, "learning", "off"])
                .await?;
        }
        self.ip(&["link", "set", &bridge, "up"]).await?;
        info!(self.log, "VNI segment made"; "vni" => %vni, "bridge" => &bridge,
            "vxlan" => self.underlay.is_some());
        Ok(())
    }

    /// Takes `set` (the newest the sled holds for its VNI) and, if the VNI has a segment here,
    /// programs it: entries the set no longer names are removed, new or changed ones added.
    /// Idempotent: programming the same set again changes nothing.
    pub(crate) async fn program(&self, set: &VpcMappings) -> Result<(), NetworkError> {
        let mut state = self.state.lock().await;
        state.sets.insert(set.vni, set.clone());
        if state.segments.contains_key(&set.vni) {
            self.program_segment(&mut state, set).await?;
        }
        Ok(())
    }

    async fn program_segment(
        &self,
        state: &mut SwitchState,
        set: &VpcMappings,
    ) -> Result<(), NetworkError> {
        if self.underlay.is_none() {
            debug!(self.log, "no underlay: mappings to other sleds are not programmed";
                "vni" => %set.vni);
            return Ok(());
        }
        let segment = state
            .segments
            .get_mut(&set.vni)
            .expect("the caller checked");
        let wanted = Forwarding::wanted(set, self.sled_id);
        if wanted == segment.programmed {
            return Ok(());
        }
        let vxlan = vxlan_name(set.vni);
        let programmed = &mut segment.programmed;
        // Removals first, so an address that moved to another MAC is never answered twice.
        let stale_neigh: Vec<Ipv4Addr> = programmed
            .neigh
            .iter()
            .filter(|(ip, mac)| wanted.neigh.get(ip) != Some(mac))
            .map(|(ip, _)| *ip)
            .collect();
        for ip in stale_neigh {
            let address = ip.to_string();
            self.ip_allowing_absent(&["neigh", "del", &address, "dev", &vxlan])
                .await?;
            programmed.neigh.remove(&ip);
        }
        let stale_fdb: Vec<(MacAddr, IpAddr)> = programmed
            .fdb
            .iter()
            .filter(|(mac, dst)| wanted.fdb.get(mac) != Some(dst))
            .map(|(mac, dst)| (*mac, *dst))
            .collect();
        for (mac, dst) in stale_fdb {
            let (mac_text, dst_text) = (mac.to_string(), dst.to_string());
            self.bridge_allowing_absent(&[
                "fdb", "del", &mac_text, "dev", &vxlan, "dst", &dst_text, "self",
            ])
            .await?;
            programmed.fdb.remove(&mac);
        }
        for (mac, dst) in &wanted.fdb {
            if programmed.fdb.get(mac) == Some(dst) {
                continue;
            }
            let (mac_text, dst_text) = (mac.to_string(), dst.to_string());
            self.bridge(&[
                "fdb",
                "replace",
                &mac_text,
                "dev",
                &vxlan,
                "dst",
                &dst_text,
                "self",
                "permanent",
            ])
            .await?;
            programmed.fdb.insert(*mac, *dst);
        }
        for (ip, mac) in &wanted.neigh {
            if programmed.neigh.get(ip) == Some(mac) {
                continue;
            }
            let (ip_text, mac_text) = (ip.to_string(), mac.to_string());
            self.ip(&[
                "neigh",
                "replace",
                &ip_text,
                "lladdr",
                &mac_text,
                "dev",
                &vxlan,
                "nud",
                "permanent",
            ])
            .await?;
            programmed.neigh.insert(*ip, *mac);
        }
        info!(self.log, "VNI forwarding programmed"; "vni" => %set.vni,
            "generation" => %set.generation, "remote_macs" => programmed.fdb.len(),
            "remote_addresses" => programmed.neigh.len());
        Ok(())
    }

    /// Disconnects VMM `vmm`'s NICs: deletes its taps (QEMU's exit usually has already) and
    /// removes each VNI's segment whose last NIC it was (the VNI's mappings stay held).
    pub(crate) async fn detach(&self, vmm: VmmUuid) {
        let mut state = self.state.lock().await;
        let Some(taps) = state.vmms.remove(&vmm) else {
            return;
        };
        for (tap, vni) in taps {
            if let Err(error) = self.ip_allowing_absent(&["link", "del", "dev", &tap]).await {
                warn!(self.log, "cannot delete a tap"; "propolis_id" => %vmm, "tap" => &tap,
                    "error" => %error);
            }
            if let Some(segment) = state.segments.get_mut(&vni) {
                segment.taps.remove(&tap);
            }
            info!(self.log, "NIC disconnected"; "propolis_id" => %vmm, "tap" => &tap,
                "vni" => %vni);
        }
        // Every segment without a NIC goes (also one an attach made and then failed to use).
        let empty: Vec<Vni> = state
            .segments
            .iter()
            .filter(|(_, segment)| segment.taps.is_empty())
            .map(|(vni, _)| *vni)
            .collect();
        for vni in empty {
            state.segments.remove(&vni);
            self.remove_segment(vni).await;
        }
    }

    async fn remove_segment(&self, vni: Vni) {
        for device in [vxlan_name(vni), bridge_name(vni)] {
            if let Err(error) = self
                .ip_allowing_absent(&["link", "del", "dev", &device])
                .await
            {
                warn!(self.log, "cannot remove a VNI's device"; "vni" => %vni,
                    "device" => &device, "error" => %error);
            }
        }
        info!(self.log, "VNI segment removed (no NIC of it left here)"; "vni" => %vni);
    }

    /// Removes the namespace and the underlay link (at shutdown).
    pub(crate) async fn shut_down(&self) {
        self.remove_namespace().await;
        info!(self.log, "virtual switch removed"; "namespace" => &self.namespace);
    }

    /// Removes the root end of the underlay veth pair (at once: the namespace's removal would
    /// take it only later) and the namespace, if they exist.
    async fn remove_namespace(&self) {
        let outer = underlay_veth_name(self.sled_id);
        if let Err(error) = self
            .run_allowing_absent("ip", &["link", "del", "dev", &outer])
            .await
        {
            warn!(self.log, "cannot remove the underlay link"; "link" => &outer,
                "error" => %error);
        }
        let exists = self
            .run("ip", &["netns", "list"])
            .await
            .map(|list| {
                list.lines()
                    .any(|line| line.split_whitespace().next() == Some(&self.namespace))
            })
            .unwrap_or(false);
        if exists {
            match self.run("ip", &["netns", "del", &self.namespace]).await {
                Ok(_) => info!(self.log, "removed the sled's network namespace";
                    "namespace" => &self.namespace),
                Err(error) => warn!(self.log, "cannot remove the sled's network namespace";
                    "namespace" => &self.namespace, "error" => %error),
            }
        }
    }

    /// `ip -n <namespace> args`.
    async fn ip(&self, args: &[&str]) -> Result<String, NetworkError> {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        self.run("ip", &all).await
    }

    /// `bridge -n <namespace> args`.
    async fn bridge(&self, args: &[&str]) -> Result<String, NetworkError> {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        self.run("bridge", &all).await
    }

    /// [`Self::ip`] for a deletion, where the thing already being gone is fine.
    async fn ip_allowing_absent(&self, args: &[&str]) -> Result<(), NetworkError> {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        self.run_allowing_absent("ip", &all).await
    }

    async fn bridge_allowing_absent(&self, args: &[&str]) -> Result<(), NetworkError> {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        self.run_allowing_absent("bridge", &all).await
    }

    async fn run_allowing_absent(&self, program: &str, args: &[&str]) -> Result<(), NetworkError> {
        match self.run(program, args).await {
            Ok(_) => Ok(()),
            Err(NetworkError::Command { stderr, .. })
                if stderr.contains("Cannot find device")
                    || stderr.contains("No such file or directory")
                    || stderr.contains("No such process")
                    || stderr.contains("does not exist") =>
            {
                Ok(())
            }
            Err(other) => Err(other),
        }
    }

    /// Runs `program args`; its standard output, or an error with its standard error.
    async fn run(&self, program: &str, args: &[&str]) -> Result<String, NetworkError> {
        let command = format!("{program} {}", args.join(" "));
        let output = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| NetworkError::Spawn {
                command: command.clone(),
                source,
            })?;
        if !output.status.success() {
            return Err(NetworkError::Command {
                command,
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        debug!(self.log, "ran"; "command" => &command);
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// The guest's kernel command line arguments for `nics` (`halyard.nic=MAC,ADDRESS/PREFIX`,
/// in slot order): the contract of `dev-tools/guest-image.sh`.
pub(crate) fn kernel_args(nics: &[VmmNic]) -> Vec<String> {
    let mut nics: Vec<&VmmNic> = nics.iter().collect();
    nics.sort_by_key(|nic| nic.slot);
    nics.iter()
        .map(|nic| {
            format!(
                "halyard.nic={},{}/{}",
                nic.mac,
                nic.ip,
                nic.subnet.prefix_len()
            )
        })
        .collect()
}

/// QEMU's arguments for `nics` of VMM `vmm`: per NIC a tap netdev (QEMU makes the tap; no
/// scripts) and a virtio-net device with the NIC's MAC at its slot's fixed PCI address (no
/// option ROM: the guest boots from `-kernel`).
pub(crate) fn command_line_args(vmm: VmmUuid, nics: &[VmmNic]) -> Vec<String> {
    let mut args = Vec::new();
    for nic in nics {
        let id = format!("nic{}", nic.slot);
        args.push("-netdev".to_string());
        args.push(format!(
            "tap,id={id},ifname={},script=no,downscript=no",
            tap_name(vmm, nic.slot)
        ));
        args.push("-device".to_string());
        args.push(format!(
            "virtio-net-pci,netdev={id},mac={},addr={},romfile=",
            nic.mac,
            nic_pci_address(nic.slot)
        ));
    }
    args
}

/// Refuses NICs no VMM could attach: too many, a slot or MAC twice, a slot beyond
/// [`MAX_NICS`], an address outside its subnet or that is its network or broadcast address,
/// not exactly one primary.
pub(crate) fn validate(nics: &[VmmNic]) -> Result<(), halyard_common::Error> {
    use halyard_common::Error;
    if nics.is_empty() {
        return Ok(());
    }
    if nics.len() > MAX_NICS {
        return Err(Error::invalid_value(
            "nics",
            format!("a VMM has at most {MAX_NICS} NICs"),
        ));
    }
    let mut slots = BTreeSet::new();
    let mut macs = BTreeSet::new();
    for nic in nics {
        if usize::from(nic.slot) >= MAX_NICS {
            return Err(Error::invalid_value(
                "nics",
                format!(
                    "NIC {} has slot {}; slots are 0 to {}",
                    nic.name,
                    nic.slot,
                    MAX_NICS - 1
                ),
            ));
        }
        if !slots.insert(nic.slot) {
            return Err(Error::invalid_value(
                "nics",
                format!("slot {} is given twice", nic.slot),
            ));
        }
        if !macs.insert(nic.mac) {
            return Err(Error::invalid_value(
                "nics",
                format!("MAC {} is given twice", nic.mac),
            ));
        }
        let subnet = nic.subnet.trunc();
        if !subnet.contains(&nic.ip)
            || nic.ip == subnet.network()
            || (subnet.prefix_len() < 31 && nic.ip == subnet.broadcast())
        {
            return Err(Error::invalid_value(
                "nics",
                format!(
                    "NIC {}'s address {} is not a host address of its subnet {}",
                    nic.name, nic.ip, nic.subnet
                ),
            ));
        }
    }
    if nics.iter().filter(|nic| nic.primary).count() != 1 {
        return Err(Error::invalid_value(
            "nics",
            "exactly one NIC must be the primary",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use halyard_common::Generation;
    use halyard_common::ids::NetworkInterfaceUuid;
    use halyard_sled_agent_api::V2pMapping;

    fn nic(slot: u8, last_octet: u8) -> VmmNic {
        VmmNic {
            nic_id: NetworkInterfaceUuid::new_v4(),
            name: format!("net{slot}"),
            mac: MacAddr::from_u64(MacAddr::GUEST_FIRST.to_u64() + u64::from(last_octet)),
            ip: Ipv4Addr::new(172, 30, 0, last_octet),
            subnet: "172.30.0.0/22".parse().unwrap(),
            vni: Vni::try_from(4096).unwrap(),
            primary: slot == 0,
            slot,
        }
    }

    #[test]
    fn names_fit_in_an_interface_name() {
        let vmm = VmmUuid::new_v4();
        assert!(tap_name(vmm, 7).len() <= 15);
        assert!(namespace_name(SledUuid::new_v4()).len() <= 15);
        assert!(underlay_veth_name(SledUuid::new_v4()).len() <= 15);
        let biggest = Vni::try_from(Vni::MAX).unwrap();
        assert!(bridge_name(biggest).len() <= 15 && vxlan_name(biggest).len() <= 15);
        // Below the disks' 0x08..0x0f and clear of q35's own 0x1f.
        assert_eq!(nic_pci_address(0), "0x10");
        assert_eq!(nic_pci_address(7), "0x17");
    }

    #[test]
    fn the_guest_gets_its_nics_in_slot_order() {
        let args = kernel_args(&[nic(1, 9), nic(0, 5)]);
        assert_eq!(
            args,
            vec![
                "halyard.nic=a8:40:25:f0:00:05,172.30.0.5/22",
                "halyard.nic=a8:40:25:f0:00:09,172.30.0.9/22"
            ]
        );
    }

    #[test]
    fn nics_no_vmm_could_attach_are_refused() {
        assert!(validate(&[nic(0, 5), nic(1, 6)]).is_ok());
        assert!(validate(&[nic(0, 5), nic(0, 6)]).is_err(), "a slot twice");
        assert!(validate(&[nic(0, 5), nic(1, 5)]).is_err(), "a MAC twice");
        assert!(validate(&[nic(8, 5)]).is_err(), "slot 8");
        let mut outside = nic(0, 5);
        outside.ip = Ipv4Addr::new(172, 31, 0, 5);
        assert!(validate(&[outside]).is_err());
        let mut network = nic(0, 5);
        network.ip = Ipv4Addr::new(172, 30, 0, 0);
        assert!(validate(&[network]).is_err());
        let mut no_primary = nic(0, 5);
        no_primary.primary = false;
        assert!(validate(&[no_primary]).is_err());
    }

    #[test]
    fn only_other_sleds_mappings_are_forwarded() {
        let here = SledUuid::new_v4();
        let there = SledUuid::new_v4();
        let mapping = |sled_id, last_octet: u8, underlay: [u8; 4]| V2pMapping {
            virtual_ip: Ipv4Addr::new(172, 30, 0, last_octet),
            virtual_mac: MacAddr::from_u64(MacAddr::GUEST_FIRST.to_u64() + u64::from(last_octet)),
            sled_id,
            underlay_ip: IpAddr::from(underlay),
        };
        let set = VpcMappings {
            vni: Vni::try_from(4096).unwrap(),
            generation: Generation::try_from(3u64).unwrap(),
            mappings: vec![
                mapping(here, 5, [10, 200, 0, 1]),
                mapping(there, 6, [10, 200, 0, 2]),
            ],
        };
        let wanted = Forwarding::wanted(&set, here);
        assert_eq!(wanted.fdb.len(), 1);
        let mac6 = MacAddr::from_u64(MacAddr::GUEST_FIRST.to_u64() + 6);
        assert_eq!(wanted.fdb.get(&mac6), Some(&IpAddr::from([10, 200, 0, 2])));
        assert_eq!(wanted.neigh.get(&Ipv4Addr::new(172, 30, 0, 6)), Some(&mac6));
    }
}
