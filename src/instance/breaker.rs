//! The circuit breaker of one instance: after enough failed calls in a row it opens for a
//! while, then lets one probe call through (half-open) before closing again.

use std::time::{Duration, Instant};

use super::{Live, lock};

/// Circuit breaker state of one instance.
#[derive(Debug, Default)]
pub(super) struct Breaker {
    pub(super) failures: u32,
    pub(super) open_until: Option<Instant>,
    probing: bool,
    /// Counts probes, so a probe that ends without a verdict releases only itself.
    probe: u64,
}

impl Breaker {
    /// Ok(Some(probe)) for the half-open probe, Ok(None) for a normal call, Err(wait) while
    /// open.
    pub(super) fn admit(&mut self, now: Instant) -> Result<Option<u64>, Duration> {
        match self.open_until {
            Some(until) if now < until => Err(until - now),
            Some(_) if self.probing => Err(Duration::from_millis(100)),
            Some(_) => {
                self.probing = true;
                self.probe += 1;
                Ok(Some(self.probe))
            }
            None => Ok(None),
        }
    }

    /// A probe that ended without a verdict (cancelled, or its caller went away): the next
    /// call may probe instead.
    pub(super) fn release(&mut self, probe: u64) {
        if self.probing && self.probe == probe {
            self.probing = false;
        }
    }

    pub(super) fn success(&mut self) {
        *self = Breaker {
            probe: self.probe,
            ..Breaker::default()
        };
    }

    pub(super) fn failure(&mut self, threshold: u32, open: Duration, now: Instant) {
        self.failures += 1;
        if self.probing || self.failures >= threshold {
            self.open_until = Some(now + open);
        }
        self.probing = false;
    }

    pub(super) fn state(&self, now: Instant) -> String {
        match self.open_until {
            Some(until) if now < until => format!(
                "open ({} failures; probe in {} ms)",
                self.failures,
                (until - now).as_millis()
            ),
            Some(_) => "half_open".into(),
            None if self.failures > 0 => format!("closed ({} recent failures)", self.failures),
            None => "closed".into(),
        }
    }
}

/// Releases a half-open probe when the attempt that holds it ends.
pub(super) struct ProbeGuard<'a> {
    pub(super) live: &'a Live,
    pub(super) id: u64,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        lock(&self.live.breaker).release(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_then_probes_once() {
        let mut b = Breaker::default();
        let t0 = Instant::now();
        assert_eq!(b.admit(t0), Ok(None));
        b.failure(2, Duration::from_secs(1), t0);
        assert_eq!(b.admit(t0), Ok(None));
        b.failure(2, Duration::from_secs(1), t0);
        assert!(b.admit(t0).is_err(), "open after 2 failures");
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(b.admit(later), Ok(Some(1)), "half-open probe");
        assert!(b.admit(later).is_err(), "only one probe at a time");
        b.failure(2, Duration::from_secs(1), later);
        assert!(b.admit(later).is_err(), "a failed probe opens it again");
        let later = later + Duration::from_millis(1500);
        assert_eq!(b.admit(later), Ok(Some(2)));
        b.release(1);
        assert!(
            b.admit(later).is_err(),
            "an older probe's release leaves this one"
        );
        b.release(2);
        assert_eq!(
            b.admit(later),
            Ok(Some(3)),
            "a released probe lets the next call probe"
        );
        b.success();
        assert_eq!(b.admit(later), Ok(None));
        assert_eq!(b.state(later), "closed");
    }
}
