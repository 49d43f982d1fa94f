//! Completion webhooks: checking a run's webhook URL, showing it without its secret parts, one
//! HTTP POST of the final run status, and the delivery of due webhooks with their retries (the
//! schedule lives in the run's row, so every process may deliver and none repeats an attempt).

use std::time::Duration;

use serde_json::{Value, json};
use url::Url;

use super::{PipelineError, PipelineService, WebhookState};
use crate::agent::now_ms;
use crate::audit::{Action, Actor, NewEvent, Outcome};
use crate::store::budget::{self, Budget};
use crate::store::pipeline::{self as sql, RunRow};

/// Checks a webhook URL: `http://` or `https://` (any case) with a host. Returns the trimmed URL.
pub fn check_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    if url.len() > 2048 {
        return Err("at most 2048 characters".into());
    }
    let parsed = Url::parse(url).map_err(|e| {
        format!(
            "expected an http:// or https:// URL, got {:?}: {e}",
            masked(url)
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "expected an http:// or https:// URL, got {:?}",
            masked(url)
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("expected a URL with a host, got {:?}", masked(url)));
    }
    Ok(url.to_string())
}

/// The URL with everything after the host hidden: webhook paths and queries often carry a
/// token (Slack, Discord, Teams), so tool results and logs show only where it goes. User
/// name and password are hidden too; what does not parse as a URL shows as `…`.
pub fn masked(url: &str) -> String {
    let Ok(parsed) = Url::parse(url.trim()) else {
        return "…".into();
    };
    let Some(host) = parsed.host_str() else {
        return format!("{}:…", parsed.scheme());
    };
    let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
    let more = parsed.path() != "/" && !parsed.path().is_empty()
        || parsed.query().is_some()
        || parsed.fragment().is_some()
        || !parsed.username().is_empty()
        || parsed.password().is_some();
    if more {
        format!("{}://{host}{port}/…", parsed.scheme())
    } else {
        format!("{}://{host}{port}", parsed.scheme())
    }
}

/// POSTs `body` as JSON. Ok on any 2xx answer; otherwise says what happened.
pub fn post(url: &str, body: &Value, delivery_id: &str, timeout: Duration) -> Result<u16, String> {
    let failed = |e: String| format!("request to {} failed: {e}", masked(url));
    let client = crate::net::client().map_err(failed)?;
    let request = client
        .post(url)
        .timeout(timeout)
        .header("content-type", "application/json")
        .header("x-mcp-coordinator-event", "pipeline_run.finished")
        .header("x-mcp-coordinator-delivery", delivery_id)
        .body(body.to_string())
        .send();
    let response = crate::net::block_on(request)
        .map_err(failed)?
        .map_err(|e| failed(crate::net::describe(e)))?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(format!("{} answered HTTP {status}", masked(url)))
    }
}

impl PipelineService {
    /// Delivers due completion webhooks (one attempt each), recording the outcome. Returns
    /// how many were attempted.
    pub fn deliver_webhooks(&self) -> Result<usize, PipelineError> {
        let now = now_ms();
        let timeout = Duration::from_secs(self.inner.config.webhook_timeout_seconds.max(1));
        let due = self.store().read(|tx| sql::due_webhooks(tx, now, 16))?;
        let mut attempted = 0;
        for r in due {
            let Some(url) = r.webhook_url.clone() else {
                continue;
            };
            let seen = r.webhook_next_ms.unwrap_or(now);
            // Hold the attempt for longer than it can take, so no other process repeats it.
            let hold = now + timeout.as_millis() as i64 * 2 + 1_000;
            let claimed = self
                .store()
                .write(|tx| sql::claim_webhook(tx, &r.id, seen, hold))?;
            if !claimed {
                continue;
            }
            attempted += 1;
            // From here on the attempt is taken and (below) made, so its reads and its outcome
            // wait for the lock like a call does: skipping them as a busy background tick may
            // would leave the attempt counted but unrecorded, held back for minutes.
            budget::sync_scope(Budget::for_call(), || self.deliver_one(&r, &url, timeout))?;
            self.notify();
        }
        Ok(attempted)
    }

    /// Makes one claimed delivery attempt of `r`'s webhook and records its outcome.
    fn deliver_one(&self, r: &RunRow, url: &str, timeout: Duration) -> Result<(), PipelineError> {
        let attempt = r.webhook_attempts + 1;
        let run = self.get_run(&r.id)?;
        let body = json!({"event": "pipeline_run.finished", "attempt": attempt, "run": run});
        let result = post(url, &body, &format!("{}:{attempt}", r.id), timeout);
        let max = i64::from(self.inner.config.webhook_max_attempts.max(1));
        self.store().write(|tx| -> Result<(), PipelineError> {
            let (state, next, error) = match &result {
                Ok(_) => (WebhookState::Delivered, None, None),
                Err(e) if attempt >= max => (WebhookState::Failed, None, Some(e.clone())),
                Err(e) => {
                    let delay = self
                        .inner
                        .config
                        .webhook_backoff_ms
                        .saturating_mul(1u64 << (attempt - 1).clamp(0, 20) as u32);
                    (
                        WebhookState::Pending,
                        Some(now_ms() + delay as i64),
                        Some(e.clone()),
                    )
                }
            };
            sql::webhook_outcome(tx, &r.id, state, next, error.as_deref())?;
            if state != WebhookState::Pending {
                self.append(
                    tx,
                    NewEvent {
                        actor: Actor::system(),
                        action: Action::PipelineWebhook,
                        subject: r.id.clone(),
                        outcome: if state == WebhookState::Delivered {
                            Outcome::Ok
                        } else {
                            Outcome::Error
                        },
                        detail: json!({"state": state, "attempts": attempt,
                                   "url": masked(url), "error": error}),
                        critical: false,
                    },
                )?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_masked() {
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("http://").is_err());
        assert_eq!(
            check_url(" https://hooks.example.com/T0/B1/secret ").as_deref(),
            Ok("https://hooks.example.com/T0/B1/secret")
        );
        assert_eq!(
            masked("https://hooks.slack.com/services/T0/B1/XYZ"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(masked("http://user:pw@h:8080?q=1"), "http://h:8080/…");
        assert_eq!(masked("http://127.0.0.1:9"), "http://127.0.0.1:9");
        // The scheme in any case is a URL all the same; a user name alone is hidden too.
        assert!(check_url("HTTPS://hooks.example.com/x").is_ok());
        assert_eq!(masked("HTTP://hook@h.example/"), "http://h.example/…");
        assert_eq!(masked("http://[::1]:8080"), "http://[::1]:8080");
        assert_eq!(masked("not a url"), "…");
        assert!(check_url("https://exa mple.com/").is_err());
        assert!(check_url("mailto:a@b.c").is_err());
    }
}
