//! The pipelines' periodic work: moving runs whose approvals were decided elsewhere, and
//! delivering due completion webhooks.

use std::time::Duration;

use super::{PipelineError, PipelineService};
use crate::periodic::{Periodic, Skipped};

impl PipelineService {
    /// Every 500 ms: moves runs whose approvals were decided elsewhere (the CLI, another
    /// process), and delivers due completion webhooks.
    pub fn periodic(&self) -> Vec<Periodic> {
        let every = Duration::from_millis(500);
        let ticker = self.clone();
        let sender = self.clone();
        vec![
            Periodic::new("pipeline tick", every, move || match ticker.tick() {
                Ok(0) => Ok(()),
                Ok(moved) => {
                    tracing::debug!(moved, "pipeline runs advanced");
                    Ok(())
                }
                Err(e) => Err(skipped(e)),
            }),
            Periodic::new("webhook delivery", every, move || {
                sender.deliver_webhooks().map(|_| ()).map_err(skipped)
            }),
        ]
    }
}

fn skipped(e: PipelineError) -> Skipped {
    let busy = matches!(&e, PipelineError::Store(s) if s.is_busy());
    Skipped::new(busy, e)
}
