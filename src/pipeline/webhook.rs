//! Completion webhooks: checking a run's webhook URL, showing it without its secret parts, and
//! one HTTP POST of the final run status (the retry schedule lives in the run's row).

use std::time::Duration;

use serde_json::Value;
use url::Url;

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
