//! The block sizes a disk may have.

use schemars::JsonSchema;
use schemars::r#gen::SchemaGenerator;
use schemars::schema::{InstanceType, Schema, SchemaObject};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A disk's block size in bytes: 512, 2048 or 4096, as Oxide's API allows.
///
/// Serialized as a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct BlockSize(u32);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a block size must be 512, 2048 or 4096 bytes (got {0})")]
pub struct BlockSizeError(pub i64);

impl BlockSize {
    /// Every block size a disk may have, smallest first.
    pub const ALL: [BlockSize; 3] = [BlockSize(512), BlockSize(2048), BlockSize(4096)];

    pub fn to_bytes(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for BlockSize {
    type Error = BlockSizeError;

    fn try_from(bytes: u32) -> Result<Self, Self::Error> {
        BlockSize::ALL
            .into_iter()
            .find(|size| size.0 == bytes)
            .ok_or(BlockSizeError(bytes.into()))
    }
}

impl TryFrom<i64> for BlockSize {
    type Error = BlockSizeError;

    fn try_from(bytes: i64) -> Result<Self, Self::Error> {
        u32::try_from(bytes)
            .map_err(|_| BlockSizeError(bytes))
            .and_then(BlockSize::try_from)
    }
}

impl From<BlockSize> for u32 {
    fn from(size: BlockSize) -> u32 {
        size.0
    }
}

impl fmt::Display for BlockSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl JsonSchema for BlockSize {
    fn schema_name() -> String {
        "BlockSize".to_string()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        SchemaObject {
            metadata: Some(Box::new(schemars::schema::Metadata {
                title: Some("A disk's block size in bytes".to_string()),
                ..Default::default()
            })),
            instance_type: Some(InstanceType::Integer.into()),
            enum_values: Some(BlockSize::ALL.iter().map(|s| s.0.into()).collect()),
            ..Default::default()
        }
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_sizes_are_block_sizes() {
        for ok in [512u32, 2048, 4096] {
            assert_eq!(BlockSize::try_from(ok).unwrap().to_bytes(), ok);
        }
        for bad in [0u32, 1, 511, 1024, 8192, u32::MAX] {
            assert_eq!(BlockSize::try_from(bad), Err(BlockSizeError(bad.into())));
        }
        assert!(BlockSize::try_from(-512i64).is_err());
        let json: Result<BlockSize, _> = serde_json::from_str("1000");
        assert!(json.is_err());
        assert_eq!(serde_json::to_string(&BlockSize::ALL[2]).unwrap(), "4096");
    }
}
