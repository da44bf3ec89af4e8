//! Keeps this sled registered with Nexus: at start, then every `registration_interval`, so a
//! Nexus that restarted (or lost its database) learns the sled again without operator help.
//!
//! Each wait is the interval give or take a quarter, at random: sleds that started together
//! (a rack powering on, or thousands of simulated ones) do not keep re-registering together,
//! in waves Nexus would have to absorb all at once; on average a sled still registers once an
//! interval.

use crate::sled_agent::SledAgent;
use slog::{info, warn};
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn spawn(agent: Arc<SledAgent>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut retry = Duration::from_millis(50);
        let mut registered_once = false;
        loop {
            let info = agent.registration();
            match agent.nexus().sled_agent_put(&agent.id(), &info).await {
                Ok(_) => {
                    agent
                        .metrics()
                        .registrations
                        .with_label_values(&["accepted"])
                        .inc();
                    if !registered_once {
                        info!(agent.log(), "registered with Nexus"; "address" => %info.address);
                        registered_once = true;
                    }
                    retry = Duration::from_millis(50);
                    tokio::time::sleep(jittered(interval)).await;
                }
                Err(e) => {
                    agent
                        .metrics()
                        .registrations
                        .with_label_values(&["failed"])
                        .inc();
                    warn!(agent.log(), "cannot register with Nexus; retrying";
                        "error" => %e, "retry_in_ms" => retry.as_millis());
                    tokio::time::sleep(retry.min(interval)).await;
                    retry = (retry * 2).min(Duration::from_secs(5));
                }
            }
        }
    })
}

/// `interval` times a random factor between 0.75 and 1.25.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::random_range(0.75..1.25))
}

#[cfg(test)]
mod tests {
    use super::jittered;
    use std::time::Duration;

    #[test]
    fn a_jittered_interval_stays_within_a_quarter() {
        let interval = Duration::from_secs(10);
        for _ in 0..1000 {
            let wait = jittered(interval);
            assert!(wait >= Duration::from_millis(7_500) && wait <= Duration::from_millis(12_500));
        }
    }
}
