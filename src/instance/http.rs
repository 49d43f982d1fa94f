//! The streamable HTTP transport to a child server reached by URL (rmcp's reqwest client),
//! with the type's headers (templates already expanded, secrets included) on every request.

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
        if name.eq_ignore_ascii_case("authorization") {
            auth = Some(value.clone());
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
    if let Some(a) = auth {
        // rmcp adds "Bearer " itself.
        config = config.auth_header(a.strip_prefix("Bearer ").unwrap_or(&a).to_string());
    }
    Ok(StreamableHttpClientTransport::with_client(
        reqwest::Client::new(),
        config,
    ))
}
