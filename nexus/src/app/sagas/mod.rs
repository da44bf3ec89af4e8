//! Sagas: every multi-step operation, as a steno DAG whose every action has an undo.
//!
//! One saga per file, each with its DAG and undo story in its module comment. Action names
//! (e.g. `instance_start.reserve`) are stored in the saga log, so they must never change:
//! a Nexus resuming a saga looks its actions up by these names.

pub mod disk_attach;
pub mod disk_create;
pub mod disk_delete;
pub mod disk_detach;
pub mod instance_create;
pub mod instance_delete;
pub mod instance_migrate;
pub mod instance_start;
pub mod region_replace;
pub mod retry;
pub mod snapshot_create;
pub mod snapshot_delete;
mod vmm_steps;
pub use vmm_steps::vmm_nic;

use crate::app::Nexus;
use halyard_common::Error;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use steno::{ActionError, DagBuilder, SagaDag, SagaName};

/// The steno saga type of every Nexus saga.
#[derive(Debug)]
pub struct NexusSagaType;

impl steno::SagaType for NexusSagaType {
    type ExecContextType = SagaContext;
}

/// What actions see: the Nexus that runs them, and which saga they run in (for the test hooks
/// of `app::crash_point`, which steno's `ActionContext` does not tell).
pub struct SagaContext {
    pub(crate) nexus: Arc<Nexus>,
    pub(crate) saga_id: steno::SagaId,
    pub(crate) dag: Arc<SagaDag>,
}

impl Debug for SagaContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SagaContext")
    }
}

pub type ActionRegistry = steno::ActionRegistry<NexusSagaType>;
pub(crate) type NexusActionContext = steno::ActionContext<NexusSagaType>;
pub(crate) type NexusAction = Arc<dyn steno::Action<NexusSagaType>>;

/// A kind of saga: its name, parameters, actions and DAG.
pub trait NexusSaga {
    const NAME: &'static str;
    type Params: Serialize + DeserializeOwned + Debug;

    /// Adds this saga's actions to the registry every Nexus builds at start.
    fn register_actions(registry: &mut ActionRegistry);

    /// Appends this saga's nodes.
    fn make_dag(params: &Self::Params, builder: &mut DagBuilder);
}

/// Every action of every saga, by name.
pub fn action_registry() -> Arc<ActionRegistry> {
    let mut registry = ActionRegistry::new();
    instance_create::SagaInstanceCreate::register_actions(&mut registry);
    instance_start::SagaInstanceStart::register_actions(&mut registry);
    instance_delete::SagaInstanceDelete::register_actions(&mut registry);
    instance_migrate::SagaInstanceMigrate::register_actions(&mut registry);
    disk_attach::SagaDiskAttach::register_actions(&mut registry);
    disk_detach::SagaDiskDetach::register_actions(&mut registry);
    disk_create::SagaDiskCreate::register_actions(&mut registry);
    disk_delete::SagaDiskDelete::register_actions(&mut registry);
    snapshot_create::SagaSnapshotCreate::register_actions(&mut registry);
    snapshot_delete::SagaSnapshotDelete::register_actions(&mut registry);
    region_replace::SagaRegionReplace::register_actions(&mut registry);
    Arc::new(registry)
}

/// The DAG of one run of saga `S` with these parameters.
pub fn create_saga_dag<S: NexusSaga>(params: S::Params) -> Result<SagaDag, Error> {
    let mut builder = DagBuilder::new(SagaName::new(S::NAME));
    S::make_dag(&params, &mut builder);
    let dag = builder
        .build()
        .map_err(|e| Error::internal(format!("building the {} saga: {e}", S::NAME)))?;
    let mut params = serde_json::to_value(&params)
        .map_err(|e| Error::internal(format!("serializing {} parameters: {e}", S::NAME)))?;
    // The external request the saga serves travels with its parameters (so it survives a
    // crash): every saga's `Params` are a JSON object, and their own deserialization ignores
    // the extra field.
    if let (Some(request_id), Some(object)) = (
        halyard_observability::request_id::current(),
        params.as_object_mut(),
    ) {
        object.insert(
            halyard_observability::request_id::SAGA_PARAM.to_string(),
            serde_json::Value::String(request_id),
        );
    }
    // So is the actor who started it (a saga is done on their behalf; a resumed saga still
    // knows who that was). A saga started by Nexus's own work has no actor here.
    if let (Some(actor), Some(object)) = (crate::authn::current_actor(), params.as_object_mut()) {
        let actor = serde_json::to_value(&actor)
            .map_err(|e| Error::internal(format!("serializing the saga's actor: {e}")))?;
        object.insert(crate::authn::SAGA_ACTOR_PARAM.to_string(), actor);
    }
    Ok(SagaDag::new(dag, params))
}

/// The actor on whose behalf the saga `ctx` runs: its starter, as its parameters keep it, or
/// `Actor::Saga` (Nexus's own) if it names none.
pub(crate) fn saga_actor(ctx: &NexusActionContext) -> crate::authn::Actor {
    #[derive(Debug, serde::Deserialize, serde::Serialize)]
    struct StartedBy {
        // Named as `authn::SAGA_ACTOR_PARAM`.
        actor: Option<crate::authn::Actor>,
    }
    ctx.saga_params::<StartedBy>()
        .ok()
        .and_then(|started_by| started_by.actor)
        .unwrap_or(crate::authn::Actor::Saga)
}

/// The id of the external request that started the saga `ctx` runs in, if any.
pub(crate) fn saga_request_id(ctx: &NexusActionContext) -> Option<String> {
    #[derive(Debug, serde::Deserialize, serde::Serialize)]
    struct StartedBy {
        // Named as `halyard_observability::request_id::SAGA_PARAM`.
        request_id: Option<String>,
    }
    ctx.saga_params::<StartedBy>()
        .ok()
        .and_then(|started_by| started_by.request_id)
}

/// An API error as a saga action failure (so the caller gets the same error back).
pub(crate) fn action_failed(error: Error) -> ActionError {
    ActionError::action_failed(error)
}

/// The API error behind a saga action failure.
pub(crate) fn error_from_action(error: ActionError) -> Error {
    match error.convert::<Error>() {
        Ok(error) => error,
        Err(other) => Error::internal(format!("saga action failed: {other:#}")),
    }
}

/// Declares a lazily built action (so DAGs and the registry share one instance). Used by
/// [`declare_saga`], which is how a saga declares its actions.
///
/// Action and undo functions take the context by reference (`async fn(&NexusActionContext)`),
/// so that the declared action can run them again through transient errors (see
/// [`retry`]): a forward action for a bounded time, an undo until it succeeds.
macro_rules! declare_action {
    ($static:ident, $name:expr, $action:expr, $undo:expr) => {
        static $static: std::sync::LazyLock<$crate::app::sagas::NexusAction> =
            std::sync::LazyLock::new(|| {
                steno::ActionFunc::new_action(
                    $name,
                    |ctx: $crate::app::sagas::NexusActionContext| async move {
                        let ctx = &ctx;
                        $crate::app::sagas::retry::retry_action($name, ctx, || $action(ctx)).await
                    },
                    |ctx: $crate::app::sagas::NexusActionContext| async move {
                        let ctx = &ctx;
                        $crate::app::sagas::retry::retry_undo($name, ctx, || $undo(ctx)).await
                    },
                )
            });
    };
    ($static:ident, $name:expr, $action:expr) => {
        static $static: std::sync::LazyLock<$crate::app::sagas::NexusAction> =
            std::sync::LazyLock::new(|| {
                steno::new_action_noop_undo(
                    $name,
                    |ctx: $crate::app::sagas::NexusActionContext| async move {
                        let ctx = &ctx;
                        $crate::app::sagas::retry::retry_action($name, ctx, || $action(ctx)).await
                    },
                )
            });
    };
}
pub(crate) use declare_action;

/// Declares a saga from its table of nodes, in DAG order: the saga type and its
/// [`NexusSaga`] impl (`register_actions` and `make_dag`), and one action static per node.
///
/// ```ignore
/// declare_saga! {
///     saga SagaInstanceStart, named "instance-start", params Params;
///     action names "instance_start.<action>";
///     // node           label                 action static          action                 undo
///     "propolis_id",    "GeneratePropolisId", GENERATE_PROPOLIS_ID,  generate_propolis_id,  -;
///     "claim",          "Claim",              CLAIM,                 claim,                 undo_claim;
/// }
/// ```
///
/// - *node*: the node's name, under which later actions look up its output
///   (`ctx.lookup("claim")`). It is stored in the saga log and named by the crash-replay and
///   lost-reply tests and omdb's output.
/// - *label*: the node's label in steno's DAG dumps.
/// - *action*: the `async fn(&NexusActionContext)` that runs the step; the action's registered
///   name is the saga's action prefix, a dot and this function's name
///   (`instance_start.claim`). It is stored in the saga log, so it must never change: a
///   Nexus resuming a saga looks its actions up by these names.
/// - *undo*: the function that undoes it, or `-` for none (a step with no effect, or the last
///   node, which nothing after it can unwind).
///
/// Every saga here is a chain, each node after the one before; a saga that needed parallel
/// branches would write its `make_dag` by hand.
macro_rules! declare_saga {
    (
        saga $saga:ident, named $saga_name:literal, params $params:ty;
        action names $prefix:literal;
        $( $node:literal, $label:literal, $static:ident, $action:ident, $undo:tt; )+
    ) => {
        $(
            $crate::app::sagas::declare_saga!(
                @action $static, concat!($prefix, ".", stringify!($action)), $action, $undo
            );
        )+

        pub struct $saga;

        impl $crate::app::sagas::NexusSaga for $saga {
            const NAME: &'static str = $saga_name;
            type Params = $params;

            fn register_actions(registry: &mut $crate::app::sagas::ActionRegistry) {
                $( registry.register((*$static).clone()); )+
            }

            fn make_dag(_: &$params, builder: &mut steno::DagBuilder) {
                $( builder.append(steno::Node::action($node, $label, $static.as_ref())); )+
            }
        }
    };
    (@action $static:ident, $name:expr, $action:ident, -) => {
        $crate::app::sagas::declare_action!($static, $name, $action);
    };
    (@action $static:ident, $name:expr, $action:ident, $undo:ident) => {
        $crate::app::sagas::declare_action!($static, $name, $action, $undo);
    };
}
pub(crate) use declare_saga;
