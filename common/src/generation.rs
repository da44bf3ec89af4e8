//! Generation numbers: the order of state writes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A monotonically increasing version of some piece of state.
///
/// Every state write in Halyard carries a generation and is applied only if it is newer than
/// what is stored, so a stale or repeated write is ignored rather than applied twice. The
/// first generation is 1. Generations are stored as `INT8`, so they never exceed `i64::MAX`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "u64", into = "u64")]
pub struct Generation(u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerationError {
    #[error("generation must be at least 1, got {0}")]
    TooSmall(i128),
    #[error("generation {0} is too large (the largest is {max})", max = i64::MAX)]
    TooLarge(u64),
}

impl Generation {
    /// The generation of a newly created object.
    pub const fn new() -> Generation {
        Generation(1)
    }

    /// The generation after this one.
    ///
    /// # Panics
    ///
    /// At `i64::MAX`, which at one write per nanosecond takes 292 years to reach.
    pub fn next(self) -> Generation {
        assert!(self.0 < i64::MAX as u64, "generation overflow");
        Generation(self.0 + 1)
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }

    pub fn as_i64(self) -> i64 {
        // Construction guarantees the value fits.
        self.0 as i64
    }
}

impl Default for Generation {
    fn default() -> Self {
        Generation::new()
    }
}

impl TryFrom<u64> for Generation {
    type Error = GenerationError;

    fn try_from(value: u64) -> Result<Self, Self::Error> {
        match value {
            0 => Err(GenerationError::TooSmall(0)),
            v if v > i64::MAX as u64 => Err(GenerationError::TooLarge(v)),
            v => Ok(Generation(v)),
        }
    }
}

impl TryFrom<i64> for Generation {
    type Error = GenerationError;

    fn try_from(value: i64) -> Result<Self, Self::Error> {
        if value < 1 {
            return Err(GenerationError::TooSmall(value.into()));
        }
        Ok(Generation(value as u64))
    }
}

impl From<Generation> for u64 {
    fn from(g: Generation) -> u64 {
        g.0
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_start_at_one_and_fit_in_int8() {
        assert_eq!(Generation::new().as_u64(), 1);
        assert_eq!(Generation::new().next().as_i64(), 2);
        assert!(Generation::try_from(0u64).is_err());
        assert!(Generation::try_from(-5i64).is_err());
        assert!(Generation::try_from(u64::MAX).is_err());
        assert!(serde_json::from_str::<Generation>("0").is_err());
        assert_eq!(serde_json::from_str::<Generation>("7").unwrap().as_u64(), 7);
    }
}
