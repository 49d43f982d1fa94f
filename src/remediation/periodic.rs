//! Remediations' periodic work: failing the ones a stopped coordinator left half-applied.

use std::time::Duration;

use super::{RemediationError, RemediationService};
use crate::periodic::{Periodic, Skipped};

impl RemediationService {
    /// Once a minute: marks failed the remediations whose coordinator stopped in the middle of
    /// applying them (applying for more than two minutes).
    pub fn periodic(&self) -> Vec<Periodic> {
        let remediations = self.clone();
        vec![Periodic::new(
            "check for interrupted remediations",
            Duration::from_secs(60),
            move || match remediations.fail_interrupted(Duration::from_secs(120)) {
                Ok(0) => Ok(()),
                Ok(n) => {
                    tracing::warn!(n, "marked interrupted remediations as failed");
                    Ok(())
                }
                Err(e) => {
                    let busy = matches!(&e, RemediationError::Store(s) if s.is_busy());
                    Err(Skipped::new(busy, e))
                }
            },
        )]
    }
}
