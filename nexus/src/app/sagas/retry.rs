//! Retrying saga actions and undo actions through transient errors, so that a saga in flight
//! survives a database blip or a sled agent that is briefly out of reach.
//!
//! **What is transient:** `Error::ServiceUnavailable`, and only that: the database is out of
//! reach (connection refused or lost, pool timeout, server shutting down, a serialization
//! conflict that outlived its own retries), a sled agent is out of reach or answered 5xx, or
//! an optimistic update kept losing races. Every other error (a 4xx from a sled agent, a
//! conflict, a row that is missing, an internal error) is a real answer and is not retried.
//!
//! **Why retrying a whole action is safe:** every action and undo is idempotent (invariant 4;
//! `saga_faults.rs` runs every node twice), because steno itself runs an action again when a
//! resumed saga finds it started but unfinished. Running it again after a transient error is
//! exactly that replay, so it is safe whatever the action did before the error: a database
//! write whose reply was lost, a sled agent request that landed. That covers the sled agent
//! calls too (register with the same body, run, migrate out for the same migration,
//! unregister: each a no-op the second time).
//!
//! **How long:**
//!
//! - A forward action retries for a bounded time ([`SagaRetryPolicy::action_budget`], 60 s by
//!   default), then fails with the last error: the saga unwinds and the caller gets the 503.
//!   A user waits at most about that long for a start on a sled whose agent went away.
//! - An undo retries for as long as it takes. An undo that gives up leaves the saga stuck
//!   forever with whatever it held (a reservation, a registration), which is worse than
//!   waiting: the database comes back, and a sled agent that never does is expunged by the
//!   operator (`omdb nexus sled-expunge`), after which unregistering from it is a no-op.
//!
//! **Test hooks:** every run of an action or undo that succeeded passes through
//! `crash_point::action_effect_done` / `undo_effect_done` before steno sees its result: the
//! `after_effect` crash point, and the lost replies a test arms (the step's effects stay, its
//! caller gets a transient error once, and this retry runs it again). Both do nothing unless a
//! test armed them.
//!
//! The pauses between attempts double from [`SagaRetryPolicy::first_delay`] up to
//! [`SagaRetryPolicy::max_delay`]. The saga log's own writes retry in `DbSecStore` (steno's
//! `record_event` cannot fail), so a saga neither loses an event nor moves on without it.

use super::NexusActionContext;
use halyard_common::Error;
use slog::{Logger, info, warn};
use std::future::Future;
use std::time::{Duration, Instant};
use steno::ActionError;

/// How saga actions retry transient errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaRetryPolicy {
    /// The pause after the first transient error; each later pause doubles, up to
    /// `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// How long a forward action keeps retrying before it fails. Undo actions never give up.
    pub action_budget: Duration,
}

impl Default for SagaRetryPolicy {
    fn default() -> Self {
        SagaRetryPolicy {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            action_budget: Duration::from_secs(60),
        }
    }
}

/// Whether an API error may go away by itself.
pub(crate) fn is_transient(error: &Error) -> bool {
    matches!(error, Error::ServiceUnavailable { .. })
}

fn action_error_is_transient(error: &ActionError) -> bool {
    error
        .clone()
        .convert::<Error>()
        .is_ok_and(|e| is_transient(&e))
}

fn undo_error_is_transient(error: &anyhow::Error) -> bool {
    error.downcast_ref::<Error>().is_some_and(is_transient)
}

/// Runs `attempt` until it succeeds, fails with an error `is_transient` refuses, or (with a
/// `budget`) the budget is spent; pausing between attempts as `policy` says.
pub(crate) async fn retry_transient<T, E, F, Fut>(
    log: &Logger,
    what: &str,
    policy: SagaRetryPolicy,
    budget: Option<Duration>,
    is_transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut delay = policy.first_delay;
    let mut failures: u32 = 0;
    loop {
        match attempt().await {
            Ok(value) => {
                if failures > 0 {
                    info!(log, "succeeded after transient errors"; "what" => what,
                        "failures" => failures, "elapsed_ms" => started.elapsed().as_millis());
                }
                return Ok(value);
            }
            Err(e) if !is_transient(&e) => return Err(e),
            Err(e) => {
                failures += 1;
                if budget.is_some_and(|budget| started.elapsed() + delay > budget) {
                    warn!(log, "transient error; out of retries, failing"; "what" => what,
                        "failures" => failures, "elapsed_ms" => started.elapsed().as_millis(),
                        "error" => %e);
                    return Err(e);
                }
                warn!(log, "transient error; retrying"; "what" => what, "failures" => failures,
                    "retry_in_ms" => delay.as_millis(), "error" => %e);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(policy.max_delay);
            }
        }
    }
}

/// A forward action, retried through transient errors for the policy's budget.
pub(crate) async fn retry_action<T, F, Fut>(
    name: &str,
    ctx: &NexusActionContext,
    attempt: F,
) -> Result<T, ActionError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ActionError>>,
{
    let nexus = &ctx.user_data().nexus;
    nexus.check_still_owner(saga_uuid(ctx)).await;
    let policy = nexus.saga_retry_policy();
    let what = format!("saga action {name} ({})", ctx.node_label());
    let transient = |error: &ActionError| {
        let transient = action_error_is_transient(error);
        if transient {
            nexus.metrics().transient_error("saga_action");
        }
        transient
    };
    let mut attempt = attempt;
    // Every successful run passes the test hook of `crash_point` before steno sees it.
    let attempt_then_hook = || {
        let run = attempt();
        async move {
            let output = run.await?;
            crate::app::crash_point::action_effect_done(ctx).map_err(super::action_failed)?;
            Ok(output)
        }
    };
    let work = retry_transient(
        nexus.log(),
        &what,
        policy,
        Some(policy.action_budget),
        transient,
        attempt_then_hook,
    );
    let work = halyard_observability::request_id::scope(super::saga_request_id(ctx), work);
    // Each step acts as the saga's starter, whom its parameters name.
    crate::authn::act_as(super::saga_actor(ctx), work).await
}

/// An undo action, retried through transient errors until it succeeds.
pub(crate) async fn retry_undo<F, Fut>(
    name: &str,
    ctx: &NexusActionContext,
    attempt: F,
) -> Result<(), anyhow::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), anyhow::Error>>,
{
    let nexus = &ctx.user_data().nexus;
    nexus.check_still_owner(saga_uuid(ctx)).await;
    let what = format!("saga undo {name} ({})", ctx.node_label());
    let transient = |error: &anyhow::Error| {
        let transient = undo_error_is_transient(error);
        if transient {
            nexus.metrics().transient_error("saga_undo");
        }
        transient
    };
    let mut attempt = attempt;
    // Every successful run passes the test hook of `crash_point` before steno sees it.
    let attempt_then_hook = || {
        let run = attempt();
        async move {
            run.await?;
            crate::app::crash_point::undo_effect_done(ctx)?;
            Ok(())
        }
    };
    let work = retry_transient(
        nexus.log(),
        &what,
        nexus.saga_retry_policy(),
        None,
        transient,
        attempt_then_hook,
    );
    let work = halyard_observability::request_id::scope(super::saga_request_id(ctx), work);
    // Each step acts as the saga's starter, whom its parameters name.
    crate::authn::act_as(super::saga_actor(ctx), work).await
}

/// The saga an action runs in.
fn saga_uuid(ctx: &NexusActionContext) -> halyard_common::ids::SagaUuid {
    use halyard_common::ids::GenericUuid;
    halyard_common::ids::SagaUuid::from_untyped_uuid(ctx.user_data().saga_id.into_untyped_uuid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn policy() -> SagaRetryPolicy {
        SagaRetryPolicy {
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
            action_budget: Duration::from_millis(300),
        }
    }

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = Cell::new(0);
        let result = retry_transient(&log(), "t", policy(), None, is_transient, || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 20 {
                    Err(Error::unavailable("database down"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 20);
    }

    #[tokio::test]
    async fn other_errors_are_not_retried() {
        let calls = Cell::new(0);
        let result: Result<(), Error> =
            retry_transient(&log(), "t", policy(), None, is_transient, || {
                calls.set(calls.get() + 1);
                async { Err(Error::conflict("no")) }
            })
            .await;
        assert!(matches!(result, Err(Error::Conflict { .. })));
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test]
    async fn a_budget_ends_the_retries_with_the_last_error() {
        let started = Instant::now();
        let calls = Cell::new(0);
        let result: Result<(), Error> = retry_transient(
            &log(),
            "t",
            policy(),
            Some(Duration::from_millis(300)),
            is_transient,
            || {
                calls.set(calls.get() + 1);
                async { Err(Error::unavailable("database down")) }
            },
        )
        .await;
        assert!(matches!(result, Err(Error::ServiceUnavailable { .. })));
        // Pauses of 1, 2, 4, 8, 16, then 20 ms each; it gives up when the next pause would
        // overrun the budget. Not before 280 ms then (the budget less one longest pause),
        // however the machine schedules it; and with pauses never shorter than asked, at
        // most the 19 runs exact pauses would fit (at 0, 1, 3, 7, 15, 31, 51, ..., 291 ms).
        // How much later than 300 ms it ends depends on the machine, so it is not asserted.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(280), "{elapsed:?}");
        assert!((2..=19).contains(&calls.get()), "{} runs", calls.get());
    }

    #[test]
    fn classification() {
        let transient = ActionError::action_failed(Error::unavailable("x"));
        assert!(action_error_is_transient(&transient));
        let conflict = ActionError::action_failed(Error::conflict("x"));
        assert!(!action_error_is_transient(&conflict));
        assert!(!action_error_is_transient(&ActionError::InjectedError));
        assert!(undo_error_is_transient(&anyhow::Error::from(
            Error::unavailable("x")
        )));
        assert!(!undo_error_is_transient(&anyhow::anyhow!("error injected")));
    }
}
