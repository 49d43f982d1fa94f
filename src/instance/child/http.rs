//! The streamable HTTP transport to a child server reached by URL (rmcp over the coordinator's
//! one reqwest client, `crate::net`), with the type's headers (templates already expanded,
//! secrets included) on every request.

use std::collections::HashMap;

use http::{HeaderName, HeaderValue};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

/// A transport for `url` sending `headers`; the error names the bad header.
pub fn transport(
    url: &str,
    headers: &[(String, String)],
) -> Result<StreamableHttpClientTransport<reqwest::Client>, String> {
    let mut map = HashMap::new();
    let mut auth = None;
    for (name, value) in headers {
        // A bearer token goes through rmcp's own auth setting (which adds the scheme);
        // any other scheme (`Basic …`, `token …`) is sent as written.
        if name.eq_ignore_ascii_case("authorization")
            && let Some(token) = bearer_token(value)
        {
            auth = Some(token.to_string());
            continue;
        }
        let n = HeaderName::try_from(name.as_str())
            .map_err(|e| format!("headers.{name}: not a valid header name: {e}"))?;
        // The value may hold a secret: the error must not show it.
        let v = HeaderValue::try_from(value.as_str())
            .map_err(|_| format!("headers.{name}: the value is not a valid header value"))?;
        map.insert(n, v);
    }
    let mut config = StreamableHttpClientTransportConfig::with_uri(url).custom_headers(map);
    if let Some(token) = auth {
        config = config.auth_header(token);
    }
    Ok(StreamableHttpClientTransport::with_client(
        crate::net::client()?,
        config,
    ))
}

/// The token of a `Bearer <token>` value (the scheme in any case), or None for another scheme.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn only_bearer_values_lose_their_scheme() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc"), Some("abc"));
        assert_eq!(bearer_token("token abc"), None);
        assert_eq!(bearer_token("Basic dXNlcjpwdw=="), None);
        assert_eq!(bearer_token("abc"), None);
    }
}
