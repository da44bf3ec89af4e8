//! Keeps this sled registered with Nexus: at start, then every `registration_interval`, so a
//! Nexus that restarted (or lost its database) learns the sled again without operator help.

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
                    tokio::time::sleep(interval).await;
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
