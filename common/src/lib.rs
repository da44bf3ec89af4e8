//! Types every Halyard crate shares.
//!
//! These are the vocabulary of the system: typed identifiers (so an instance id can never be
//! handed to something that wants a VMM id), the generation numbers that order state writes,
//! sizes, user-facing names, the state machines of instances, VMMs and migrations, and the one
//! error type the API speaks. Nothing here talks to a database or the network.

pub mod background_task;
mod block_size;
mod byte_count;
mod description;
mod error;
mod generation;
pub mod ids;
pub mod internal_api;
mod labelled;
mod name;
pub mod net;
mod states;

pub use block_size::{BlockSize, BlockSizeError};
pub use byte_count::{ByteCount, ByteCountError};
pub use description::{MAX_DESCRIPTION_CHARS, validate_description};
pub use error::{Error, LookupType, ResourceType};
pub use generation::{Generation, GenerationError};
pub use labelled::{Labelled, UnknownLabel};
pub use name::{Name, NameError, NameOrId};
pub use states::{
    AutoRestartPolicy, DiskState, InstanceNexusState, InstanceState, MigrationState, SledBackend,
    SnapshotState, VmmState,
};
