//! Sizes in bytes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A non-negative number of bytes that fits in an `INT8` column.
///
/// Serialized as a plain integer, as Oxide's API does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "u64", into = "u64")]
pub struct ByteCount(u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteCountError {
    #[error("a size cannot be negative (got {0} bytes)")]
    Negative(i64),
    #[error("{0} bytes is too large (the largest size is {max} bytes)", max = i64::MAX)]
    TooLarge(u64),
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

impl ByteCount {
    pub const fn from_mebibytes_u32(mib: u32) -> ByteCount {
        ByteCount(mib as u64 * MIB)
    }

    pub const fn from_gibibytes_u32(gib: u32) -> ByteCount {
        ByteCount(gib as u64 * GIB)
    }

    pub fn to_bytes(self) -> u64 {
        self.0
    }

    pub fn to_i64(self) -> i64 {
        // Construction guarantees the value fits.
        self.0 as i64
    }

    pub fn to_whole_mebibytes(self) -> u64 {
        self.0 / MIB
    }

    pub fn checked_add(self, other: ByteCount) -> Option<ByteCount> {
        self.0
            .checked_add(other.0)
            .and_then(|sum| ByteCount::try_from(sum).ok())
    }
}

impl TryFrom<u64> for ByteCount {
    type Error = ByteCountError;

    fn try_from(bytes: u64) -> Result<Self, Self::Error> {
        if bytes > i64::MAX as u64 {
            return Err(ByteCountError::TooLarge(bytes));
        }
        Ok(ByteCount(bytes))
    }
}

impl TryFrom<i64> for ByteCount {
    type Error = ByteCountError;

    fn try_from(bytes: i64) -> Result<Self, Self::Error> {
        u64::try_from(bytes)
            .map(ByteCount)
            .map_err(|_| ByteCountError::Negative(bytes))
    }
}

impl From<ByteCount> for u64 {
    fn from(b: ByteCount) -> u64 {
        b.0
    }
}

impl fmt::Display for ByteCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= GIB && b.is_multiple_of(GIB) {
            write!(f, "{} GiB", b / GIB)
        } else if b >= MIB && b.is_multiple_of(MIB) {
            write!(f, "{} MiB", b / MIB)
        } else {
            write!(f, "{b} B")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_reject_negative_and_oversized_values() {
        assert_eq!(
            ByteCount::try_from(-1i64),
            Err(ByteCountError::Negative(-1))
        );
        assert!(ByteCount::try_from(u64::MAX).is_err());
        assert!(serde_json::from_str::<ByteCount>("-4096").is_err());
        assert_eq!(ByteCount::from_gibibytes_u32(2).to_string(), "2 GiB");
        assert_eq!(ByteCount::from_mebibytes_u32(512).to_whole_mebibytes(), 512);
        assert_eq!(
            ByteCount::try_from(i64::MAX as u64)
                .unwrap()
                .checked_add(ByteCount(1)),
            None
        );
    }
}
