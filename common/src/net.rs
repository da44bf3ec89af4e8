//! Virtual networking vocabulary: MAC addresses, VPC network identifiers, and the IPv4
//! networks (`ipnet::Ipv4Net`, re-exported) that VPC subnets are carved from.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

pub use ipnet::{Ipv4Net, Ipv6Net};

/// An Ethernet MAC address, written as six lower-case hexadecimal pairs separated by colons
/// (`a8:40:25:f0:00:01`); parsing also accepts upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a MAC address (six hexadecimal pairs separated by ':')")]
pub struct MacAddrError(String);

impl MacAddr {
    /// The first address of the range Halyard gives guests: Oxide's OUI `a8:40:25`, with the
    /// fourth byte from `f0` (the locally administered guest range of the system we follow).
    pub const GUEST_FIRST: MacAddr = MacAddr([0xa8, 0x40, 0x25, 0xf0, 0x00, 0x00]);
    /// The last address of the guest range.
    pub const GUEST_LAST: MacAddr = MacAddr([0xa8, 0x40, 0x25, 0xfe, 0xff, 0xff]);

    /// The address as a number (the low 48 bits), for ranges and databases.
    pub fn to_u64(self) -> u64 {
        self.0
            .iter()
            .fold(0, |acc, byte| (acc << 8) | u64::from(*byte))
    }

    /// The address whose number is the low 48 bits of `value`.
    pub fn from_u64(value: u64) -> MacAddr {
        let bytes = value.to_be_bytes();
        MacAddr([bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = MacAddrError;

    fn from_str(s: &str) -> Result<MacAddr, MacAddrError> {
        let error = || MacAddrError(s.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(error)?;
            if part.len() != 2 {
                return Err(error());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| error())?;
        }
        if parts.next().is_some() {
            return Err(error());
        }
        Ok(MacAddr(bytes))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = MacAddrError;
    fn try_from(s: String) -> Result<MacAddr, MacAddrError> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(mac: MacAddr) -> String {
        mac.to_string()
    }
}

impl JsonSchema for MacAddr {
    fn schema_name() -> String {
        "MacAddr".to_string()
    }

    fn json_schema(_: &mut schemars::r#gen::SchemaGenerator) -> schemars::schema::Schema {
        schemars::schema::SchemaObject {
            metadata: Some(Box::new(schemars::schema::Metadata {
                title: Some("A MAC address".to_string()),
                description: Some(
                    "A Media Access Control address, in EUI-48 format: six hexadecimal pairs \
                     separated by ':'"
                        .to_string(),
                ),
                ..Default::default()
            })),
            instance_type: Some(schemars::schema::InstanceType::String.into()),
            string: Some(Box::new(schemars::schema::StringValidation {
                max_length: Some(17),
                min_length: Some(17),
                pattern: Some("^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$".to_string()),
            })),
            ..Default::default()
        }
        .into()
    }
}

/// A virtual network identifier: the 24-bit number that tags a VPC's traffic on the underlay
/// (the VNI of its VXLAN frames). Each VPC has its own, so VPCs never see each other's packets,
/// even with the same private addresses.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "u32", into = "u32")]
pub struct Vni(u32);

/// Why a number is not a VNI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("VNI {0} is out of range (a VNI has 24 bits: at most {max})", max = Vni::MAX)]
pub struct VniError(u32);

impl Vni {
    /// The largest VNI (24 bits).
    pub const MAX: u32 = (1 << 24) - 1;
    /// VNIs below this are kept for the system; guest VPCs get VNIs from here up (as in the
    /// system we follow).
    pub const FIRST_GUEST: u32 = 1024;

    pub fn as_u32(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Vni {
    type Error = VniError;
    fn try_from(value: u32) -> Result<Vni, VniError> {
        if value > Vni::MAX {
            return Err(VniError(value));
        }
        Ok(Vni(value))
    }
}

impl From<Vni> for u32 {
    fn from(vni: Vni) -> u32 {
        vni.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_round_trip_and_bad_ones_are_refused() {
        let mac: MacAddr = "A8:40:25:F0:00:1b".parse().unwrap();
        assert_eq!(mac.to_string(), "a8:40:25:f0:00:1b");
        assert_eq!(MacAddr::from_u64(mac.to_u64()), mac);
        assert_eq!(
            serde_json::to_string(&mac).unwrap(),
            "\"a8:40:25:f0:00:1b\""
        );
        for bad in [
            "",
            "a8:40:25:f0:00",
            "a8:40:25:f0:00:1b:00",
            "a8-40-25-f0-00-1b",
            "g8:40:25:f0:00:1b",
            "a8:40:25:f0:0:1bb",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn vnis_have_24_bits() {
        assert!(Vni::try_from(Vni::MAX).is_ok());
        assert!(Vni::try_from(Vni::MAX + 1).is_err());
        assert!(serde_json::from_str::<Vni>("16777216").is_err());
    }
}
