//! Driving the dashboard in the test browser: marks that tell a reload, reading text in one
//! script run, waiting for a condition.

use std::time::{Duration, Instant};

use serde_json::json;

use super::common;

/// Marks the page's document, so that a reload (a new document) can be told.
pub async fn mark_document(browser: &common::console::Browser) {
    let script = "window.__sameDocument = true; return 1;";
    browser.client.execute(script, vec![]).await.unwrap();
}

pub async fn assert_same_document(browser: &common::console::Browser) {
    let script = "return window.__sameDocument === true;";
    let same = browser.client.execute(script, vec![]).await.unwrap();
    assert_eq!(same, json!(true), "the page was reloaded");
}

/// The text of the element `css` selects, read in one script run: the live script may
/// replace the element between a WebDriver find and a read of its text.
pub async fn text_of(browser: &common::console::Browser, css: &str) -> String {
    let text = browser
        .client
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            vec![json!(css)],
        )
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    text.as_str()
        .unwrap_or_else(|| panic!("no element {css}"))
        .trim()
        .to_string()
}

pub async fn wait_until<'a, F, Fut>(browser: &'a common::console::Browser, what: &str, check: F)
where
    F: Fn(&'a common::console::Browser) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check(browser).await {
        assert!(Instant::now() < deadline, "waited 10 s for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
