//! A small client of the console's event stream (`/events`) for the tests, and readers of
//! the fragments it carries.

use std::time::Duration;

use super::common::console::Http;

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub data: String,
}

/// An open `/events` stream.
pub struct Stream {
    response: reqwest::Response,
    buffer: String,
    /// Everything received, for grepping.
    pub raw: String,
}

pub async fn open_stream(http: &Http, query: &str) -> Result<Stream, (u16, String)> {
    let mut rb = reqwest::Client::new()
        .get(format!("{}/events{query}", http.base))
        .header("accept", "text/event-stream");
    if let Some(c) = &http.cookie {
        rb = rb.header("cookie", format!("{}={c}", http.cookie_name));
    }
    let response = rb.send().await.expect("GET /events");
    let status = response.status().as_u16();
    if status != 200 {
        return Err((status, response.text().await.unwrap_or_default()));
    }
    Ok(Stream {
        response,
        buffer: String::new(),
        raw: String::new(),
    })
}

impl Stream {
    /// The next event within `wait`; `None` when the time ran out or the stream ended.
    pub async fn next(&mut self, wait: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = String::new();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        event = e.to_string();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
                    }
                }
                if !event.is_empty() {
                    return Some(Sse {
                        event,
                        data: data.join("\n"),
                    });
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => {
                    let text = String::from_utf8_lossy(&bytes).to_string();
                    self.raw.push_str(&text);
                    self.buffer.push_str(&text);
                }
                _ => return None,
            }
        }
    }

    /// Whether the server ended the stream within `wait` (events on the way are read).
    pub async fn ends_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self.raw.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Ok(None)) | Ok(Err(_)) => return true,
                Err(_) => return false,
            }
        }
    }
}

/// The count a queue fragment shows for `status`.
pub fn queue_count(html: &str, status: &str) -> Option<u64> {
    let marker = format!("data-count=\"{status}\">");
    let at = html.find(&marker)? + marker.len();
    html[at..].split('<').next()?.trim().parse().ok()
}

/// The console paths a page links to (`href` and `src`), but not logging out.
pub fn links(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["href=\"", "src=\""] {
        let mut rest = html;
        while let Some(at) = rest.find(attr) {
            rest = &rest[at + attr.len()..];
            let value = rest.split('"').next().unwrap_or("");
            if value.starts_with('/') && !value.starts_with("//") && value != "/logout" {
                out.push(value.replace("&amp;", "&"));
            }
        }
    }
    out
}
