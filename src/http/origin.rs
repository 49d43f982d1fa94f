//! Browser origins: which may call `/mcp` (`[http] allowed_origins`), the `403` every other
//! `Origin` gets before any token is looked at, and CORS for the allowed ones only (none at all
//! without a list). rmcp checks `Origin` again with the same list; ours comes first so that the
//! refusal names the setting, and the same matching decides which origins CORS answers.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The allowed origins, parsed once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// `null`: what a sandboxed frame or a `file:` page sends.
    Null,
    Tuple {
        scheme: String,
        host: String,
        port: Port,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// `:*`
    Any,
    /// Given, or the scheme's default.
    Exact(u16),
}

/// `http(s)://host[:port]` as its parts, the port made explicit; `None` for anything else
/// (another scheme, a path, a query, user info, no host).
fn tuple(origin: &str) -> Option<(String, String, Option<u16>)> {
    let url = url::Url::parse(origin).ok()?;
    let bare = url.path() == "/" && !origin.ends_with('/');
    if !matches!(url.scheme(), "http" | "https")
        || !bare
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
    {
        return None;
    }
    let host = url.host_str()?.to_string();
    Some((url.scheme().to_string(), host, url.port_or_known_default()))
}

impl Origins {
    /// Parses `[http] allowed_origins`; an entry that is not an origin is an error naming it.
    pub fn parse(list: &[String]) -> Result<Self, String> {
        let entries = list
            .iter()
            .map(|raw| {
                let value = raw.trim();
                let bad = || {
                    format!(
                        "http.allowed_origins: `{raw}` is not an origin: expected \
                         scheme://host[:port] (`:*` for any port, no port for the scheme's \
                         default, http or https) or `null`"
                    )
                };
                if value.eq_ignore_ascii_case("null") {
                    return Ok(Entry::Null);
                }
                let (base, any) = match value.strip_suffix(":*") {
                    Some(base) => (base, true),
                    None => (value, false),
                };
                let (scheme, host, port) = tuple(base).ok_or_else(bad)?;
                let port = match (any, port) {
                    (true, _) => Port::Any,
                    (false, Some(p)) => Port::Exact(p),
                    (false, None) => return Err(bad()),
                };
                Ok(Entry::Tuple { scheme, host, port })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Origins { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a request's `Origin` value is one of the allowed.
    pub fn allows(&self, origin: &str) -> bool {
        if origin.trim().eq_ignore_ascii_case("null") {
            return self.entries.contains(&Entry::Null);
        }
        let Some((scheme, host, port)) = tuple(origin.trim()) else {
            return false;
        };
        self.entries.iter().any(|e| match e {
            Entry::Null => false,
            Entry::Tuple {
                scheme: s,
                host: h,
                port: p,
            } => {
                *s == scheme
                    && *h == host
                    && match p {
                        Port::Any => true,
                        Port::Exact(p) => port == Some(*p),
                    }
            }
        })
    }

    /// The list in the form rmcp's own check reads, every port explicit (rmcp reads an entry
    /// without a port as any port).
    pub fn for_rmcp(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| match e {
                Entry::Null => "null".to_string(),
                Entry::Tuple { scheme, host, port } => match port {
                    Port::Any => format!("{scheme}://{host}:*"),
                    Port::Exact(p) => format!("{scheme}://{host}:{p}"),
                },
            })
            .collect()
    }
}

/// The `403` for a request whose `Origin` is not allowed (naming the setting), or `None`: a
/// request without `Origin` (not from a browser page) goes on.
pub fn refusal(origins: &Origins, headers: &HeaderMap) -> Option<Response> {
    let origin = headers.get(header::ORIGIN)?;
    let value = origin.to_str().unwrap_or("(not text)");
    if origins.allows(value) {
        return None;
    }
    let why = if origins.is_empty() {
        "no browser origin is allowed"
    } else {
        "it is not one of the allowed"
    };
    Some(
        (
            StatusCode::FORBIDDEN,
            format!(
                "Origin `{value}` refused: {why}; browser origins allowed to call /mcp are set \
                 in [http] allowed_origins"
            ),
        )
            .into_response(),
    )
}

/// CORS for the allowed origins (preflights answered without a token: browsers send none),
/// or nothing when none are configured.
pub fn cors(origins: &Origins) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins = Arc::new(origins.clone());
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
                origin.to_str().is_ok_and(|o| origins.allows(o))
            }))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("mcp-session-id"),
                HeaderName::from_static("mcp-protocol-version"),
                HeaderName::from_static("last-event-id"),
                // 2026-07-28 clients name the method and tool in headers too (SEP-2243).
                HeaderName::from_static("mcp-method"),
                HeaderName::from_static("mcp-name"),
            ])
            .expose_headers([
                HeaderName::from_static("mcp-session-id"),
                header::WWW_AUTHENTICATE,
                header::RETRY_AFTER,
            ])
            .max_age(Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn origins(list: &[&str]) -> Origins {
        Origins::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn ports_are_explicit_default_or_any() {
        let o = origins(&["https://app.example.com", "http://localhost:*", "null"]);
        assert!(o.allows("https://app.example.com"));
        assert!(o.allows("https://app.example.com:443"));
        assert!(!o.allows("https://app.example.com:8443"));
        assert!(!o.allows("http://app.example.com"));
        assert!(o.allows("http://localhost:5173"));
        assert!(o.allows("null"));
        assert!(!o.allows("https://evil.example"));
        assert!(!o.allows("https://app.example.com/path"));
        assert_eq!(
            o.for_rmcp(),
            vec!["https://app.example.com:443", "http://localhost:*", "null"]
        );
    }

    #[test]
    fn an_entry_that_is_no_origin_is_refused_by_name() {
        for bad in [
            "app.example.com",
            "https://a.example/x",
            "https://",
            "ftp://h",
        ] {
            let e = Origins::parse(&[bad.to_string()]).unwrap_err();
            assert!(e.contains("http.allowed_origins") && e.contains(bad), "{e}");
        }
        assert!(origins(&[]).is_empty());
        assert!(!origins(&[]).allows("https://a.example"));
    }
}
