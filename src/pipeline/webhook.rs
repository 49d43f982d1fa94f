//! Completion webhooks: checking a run's webhook URL, showing it without its secret parts, and
//! one HTTP POST of the final run status (the retry schedule lives in the run's row).

use std::time::Duration;

use serde_json::Value;

/// Checks a webhook URL: `http://` or `https://` with a host. Returns the trimmed URL.
pub fn check_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("expected an http:// or https:// URL, got {:?}", masked(url)))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("expected a URL with a host, got {:?}", masked(url)));
    }
    if url.len() > 2048 {
        return Err("at most 2048 characters".into());
    }
    Ok(url.to_string())
}

/// The URL with everything after the host hidden: webhook paths and queries often carry a
/// token (Slack, Discord, Teams), so tool results and logs show only where it goes.
pub fn masked(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s, r),
        None => return "…".into(),
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    // A user:password@ part is secret too.
    let host = host.rsplit('@').next().unwrap_or(host);
    if rest.len() > host.len() {
        format!("{scheme}://{host}/…")
    } else {
        format!("{scheme}://{host}")
    }
}

/// POSTs `body` as JSON. Ok on any 2xx answer; otherwise says what happened.
pub fn post(url: &str, body: &Value, delivery_id: &str, timeout: Duration) -> Result<u16, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let response = agent
        .post(url)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("mcp-coordinator/", env!("CARGO_PKG_VERSION")),
        )
        .header("x-mcp-coordinator-event", "pipeline_run.finished")
        .header("x-mcp-coordinator-delivery", delivery_id)
        .send(body.to_string())
        .map_err(|e| format!("request to {} failed: {e}", masked(url)))?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(format!("{} answered HTTP {status}", masked(url)))
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
    }
}
