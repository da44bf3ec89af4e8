//! The test context, shared with omdb's tests: it lives in `halyard_nexus_test_utils::context`
//! (a fresh database, Nexus in-process, sled agents over real HTTP, the invariant checker).

pub use halyard_nexus_test_utils::context::{SLED_RAM_GIB, SLED_THREADS, TestContext, log};
pub use halyard_nexus_test_utils::invariant_violations;
