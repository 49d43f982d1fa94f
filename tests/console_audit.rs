//! The console's audit section over HTTP against the real binary, on a database of a few
//! thousand events: filters and keyset paging both ways, verify before and after a row is
//! tampered with, and the JSONL export against `mcp-coordinator audit export`; and the page in
//! a real headless Chromium, with a screenshot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::console::{Browser, ConsoleProc, Http, PASSPHRASE, form_token, init_overseer};
use mcp_coordinator::audit::chain::now_ts;
use mcp_coordinator::audit::{Action, Actor, ActorKind, AuditLog, AuditSigner, NewEvent, Outcome};
use mcp_coordinator::store::{Location, Store};
use serde_json::json;

const SECRET: &str = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";

/// The `i`-th event of the fixture: every third by agent a7, every seventh an error, ten
/// subjects, a rare action every hundredth, and a secret in every detail (redacted on write).
fn event(i: usize) -> NewEvent {
    NewEvent {
        actor: if i.is_multiple_of(3) {
            Actor::new(ActorKind::Agent, "a7")
        } else {
            Actor::new(ActorKind::Client, "fixture/1")
        },
        action: if i.is_multiple_of(100) {
            Action::TaskFailed
        } else {
            Action::ToolCall
        },
        subject: format!("s{}", i % 10),
        outcome: if i.is_multiple_of(7) {
            Outcome::Error
        } else {
            Outcome::Ok
        },
        detail: json!({"i": i, "arguments": {"token": SECRET}}),
        critical: false,
    }
}

/// Appends `n` fixture events in batches through the library (the same service the server
/// appends with), under the data dir's own key, and signs the head.
fn append(dir: &Path, range: std::ops::Range<usize>) {
    let store = Store::open(&Location::File(common::db_path(dir))).unwrap();
    let log = AuditLog::new(store, Arc::new(AuditSigner::load_or_create(dir).unwrap()));
    let events: Vec<NewEvent> = range.map(event).collect();
    for chunk in events.chunks(500) {
        log.record_batch(chunk).unwrap();
    }
    log.sign_head().unwrap();
}

fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(common::db_path(dir)).unwrap()
}

/// The sequence numbers of the events the database holds matching `condition`, newest first.
fn seqs_where(dir: &Path, condition: &str) -> Vec<i64> {
    let conn = db(dir);
    let mut stmt = conn
        .prepare(&format!(
            "SELECT seq FROM audit_events WHERE {condition} ORDER BY seq DESC"
        ))
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The sequence numbers of the rows of an audit page, in page order.
fn rows(html: &str) -> Vec<i64> {
    html.split("<tr id=\"event-")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].parse().unwrap())
        .collect()
}

/// The target of the link with `rel` (`prev` for newer, `next` for older), unescaped.
fn link(html: &str, rel: &str) -> Option<String> {
    let at = html.find(&format!("rel=\"{rel}\" href=\""))?;
    let rest = &html[at + rel.len() + 13..];
    Some(rest[..rest.find('"')?].replace("&amp;", "&"))
}

/// Every row of every page from `path` on, following the older links.
async fn walk(http: &mut Http, path: &str) -> Vec<i64> {
    let mut all = Vec::new();
    let mut next = Some(path.to_string());
    while let Some(p) = next {
        let page = http.get(&p).await;
        assert_eq!(page.status, 200, "{p}: {}", page.body);
        let r = rows(&page.body);
        assert!(r.len() <= 50, "{p}: {} rows", r.len());
        all.extend(r);
        next = link(&page.body, "next");
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_paging_verify_and_export() {
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    append(dir.path(), 0..2_000);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let middle = now_ts();
    tokio::time::sleep(Duration::from_millis(30)).await;
    append(dir.path(), 2_000..3_000);
    let console = ConsoleProc::start(dir.path(), &[]);
    let mut http = Http::new(&console.url);
    assert_eq!(
        http.get("/audit").await.status,
        303,
        "the audit log needs a session"
    );
    assert_eq!(http.login(PASSPHRASE).await.status, 303);
    let all = seqs_where(dir.path(), "1=1");
    assert!(all.len() > 3_000, "{}", all.len());

    // The first page: the 50 newest, then older pages by the keyset, and back.
    let first = http.get("/audit").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(rows(&first.body), all[..50], "{}", first.body);
    assert!(link(&first.body, "prev").is_none(), "no newer page");
    let older = link(&first.body, "next").unwrap();
    assert_eq!(older, format!("/audit?before={}", all[49]));
    let second = http.get(&older).await;
    assert_eq!(rows(&second.body), all[50..100]);
    let newer = link(&second.body, "prev").unwrap();
    assert_eq!(newer, format!("/audit?after={}", all[50]));
    assert_eq!(rows(&http.get(&newer).await.body), all[..50]);
    // Deep in the chain, both ways.
    let deep = http.get("/audit?before=1500").await;
    assert_eq!(rows(&deep.body), (1450..1500).rev().collect::<Vec<i64>>());
    let back = http.get("/audit?after=1449").await;
    assert_eq!(rows(&back.body), (1450..1500).rev().collect::<Vec<i64>>());
    // The oldest page has no older link.
    let oldest = http.get("/audit?before=10").await;
    assert_eq!(rows(&oldest.body), (1..10).rev().collect::<Vec<i64>>());
    assert!(link(&oldest.body, "next").is_none());

    // Filters, walked to the end, match what the database holds.
    let walked = walk(&mut http, "/audit?actor=agent%3Aa7&outcome=error").await;
    assert_eq!(
        walked,
        seqs_where(dir.path(), "actor = 'agent:a7' AND outcome = 'error'")
    );
    assert_eq!(walked.len(), 143);
    let walked = walk(&mut http, "/audit?action=task.failed").await;
    assert_eq!(walked, seqs_where(dir.path(), "action = 'task.failed'"));
    assert_eq!(walked.len(), 30);
    let walked = walk(&mut http, "/audit?subject=s3&actor=client%3Afixture%2F1").await;
    assert_eq!(
        walked,
        seqs_where(dir.path(), "subject = 's3' AND actor = 'client:fixture/1'")
    );
    let walked = walk(&mut http, "/audit?subject=s3").await;
    assert_eq!(walked, seqs_where(dir.path(), "subject = 's3'"));
    let walked = walk(&mut http, "/audit?actor=agent%3A*&action=task.*").await;
    assert_eq!(
        walked,
        seqs_where(dir.path(), "actor LIKE 'agent:%' AND action LIKE 'task.%'")
    );
    // A time range: the second batch starts after `middle`.
    let second_batch = seqs_where(dir.path(), "action IN ('tool.call', 'task.failed')");
    let from_middle = http
        .get(&format!(
            "/audit?since={}&before={}",
            urlencode(&middle),
            second_batch[999] + 5
        ))
        .await;
    assert_eq!(
        rows(&from_middle.body),
        (second_batch[999]..second_batch[999] + 5)
            .rev()
            .collect::<Vec<i64>>(),
        "{}",
        from_middle.body
    );
    assert!(link(&from_middle.body, "next").is_none());
    let until_middle = http
        .get(&format!("/audit?until={}", urlencode(&middle)))
        .await;
    assert_eq!(rows(&until_middle.body)[0], second_batch[1_000]);
    // The form shows the filters it was sent, with a label for each control.
    let form = http.get("/audit?actor=agent%3Aa7&outcome=error").await.body;
    assert!(form.contains("value=\"agent:a7\""), "{form}");
    assert!(form.contains("<option value=\"error\" selected>"), "{form}");
    for id in [
        "f-since",
        "f-until",
        "f-actor",
        "f-action",
        "f-subject",
        "f-outcome",
    ] {
        assert!(form.contains(&format!("<label for=\"{id}\"")), "{id}");
    }
    // Bad input is a page naming the field.
    for (query, message) in [
        ("since=yesterday", "since: expected an RFC 3339 time"),
        ("before=x", "before: expected a sequence number"),
        ("outcome=maybe", "outcome: expected ok, error or invalid"),
        ("before=5&after=2", "give either before or after, not both"),
        // i64::MAX: one past it would overflow while paging.
        (
            "after=9223372036854775807",
            "after: expected a sequence number",
        ),
    ] {
        let bad = http.get(&format!("/audit?{query}")).await;
        assert_eq!(bad.status, 400, "{query}");
        assert!(bad.body.contains(message), "{query}: {}", bad.body);
    }

    // Details are pretty JSON, redacted.
    assert!(
        first
            .body
            .contains("&quot;token&quot;: &quot;[REDACTED]&quot;"),
        "{}",
        first.body
    );
    for page in [&first.body, &second.body, &deep.body] {
        assert!(!page.contains(SECRET));
        assert!(!page.contains("ghp_0123"));
    }

    // Export: the very lines `audit export` writes, as an attachment; filtered too.
    let (code, cli_export, err) = common::cli(dir.path(), &["audit", "export"]);
    assert_eq!(code, 0, "{err}");
    let export = http.get("/audit/export").await;
    assert_eq!(export.status, 200);
    let disposition = export.headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"audit-"),
        "{disposition}"
    );
    assert_eq!(export.body, cli_export);
    assert_eq!(export.body.lines().count(), all.len());
    let errors = http
        .get("/audit/export?outcome=error&subject=s0")
        .await
        .body;
    let lines: Vec<serde_json::Value> = errors
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected = seqs_where(dir.path(), "outcome = 'error' AND subject = 's0'");
    assert_eq!(lines.len(), expected.len());
    assert_eq!(
        lines
            .iter()
            .map(|l| l["seq"].as_i64().unwrap())
            .rev()
            .collect::<Vec<_>>(),
        expected
    );

    // Verify: intact, then a row edited behind the log's back.
    let page = http.get("/audit").await;
    let token = form_token(&page.body).unwrap();
    let report = http.post("/audit/verify", &[("csrf", &token)]).await;
    assert_eq!(report.status, 200, "{}", report.body);
    let checked = seqs_where(dir.path(), "1=1").len();
    assert!(
        report
            .body
            .contains(&format!("Chain intact: {checked} events checked")),
        "{}",
        report.body
    );
    // The login event is the head; a console alone signs only with its decisions.
    assert!(
        report.body.contains("(not signed yet: 1 newer events"),
        "{}",
        report.body
    );
    let replay = http.post("/audit/verify", &[("csrf", &token)]).await;
    assert_eq!(replay.status, 403, "a form token works once");

    let conn = db(dir.path());
    conn.execute_batch(
        "DROP TRIGGER audit_events_no_update;
         UPDATE audit_events SET subject = 'edited' WHERE seq = 1234;",
    )
    .unwrap();
    let page = http.get("/audit").await;
    let token = form_token(&page.body).unwrap();
    let report = http.post("/audit/verify", &[("csrf", &token)]).await;
    assert_eq!(report.status, 200, "{}", report.body);
    assert!(
        report.body.contains("Chain TAMPERED: first bad event 1234"),
        "{}",
        report.body
    );
    assert!(report.body.contains("Edited"), "{}", report.body);
}

/// `n` as the audit page prints event numbers, with a comma between groups of three digits.
fn grouped(n: i64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The target of the page's "continue" link (a page that read its whole span), unescaped.
fn continue_link(html: &str) -> Option<String> {
    let at = html.find("class=\"continue\" href=\"")?;
    let rest = &html[at + 23..];
    Some(rest[..rest.find('"')?].replace("&amp;", "&"))
}

/// A filter no index serves reads one span of the chain per page: an actor whose one event
/// lies beyond the first span shows what the page read and a link on from there, which finds
/// it; the same towards newer events; and with an exact subject the index reaches it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rare_actor_beyond_one_span() {
    const SPAN: i64 = mcp_coordinator::store::audit::SCAN_SPAN;
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    {
        let store = Store::open(&Location::File(common::db_path(dir.path()))).unwrap();
        let log = AuditLog::new(
            store,
            Arc::new(AuditSigner::load_or_create(dir.path()).unwrap()),
        );
        log.record(NewEvent {
            actor: Actor::new(ActorKind::User, "rare@elsewhere"),
            action: Action::ToolCall,
            subject: "rare-subject".into(),
            outcome: Outcome::Ok,
            detail: json!({}),
            critical: false,
        })
        .unwrap();
    }
    append(dir.path(), 0..SPAN as usize + 2_000);
    let console = ConsoleProc::start(dir.path(), &[]);
    let mut http = Http::new(&console.url);
    assert_eq!(http.login(PASSPHRASE).await.status, 303);
    let rare = seqs_where(dir.path(), "actor = 'user:rare@elsewhere'");
    assert_eq!(rare.len(), 1);
    let rare = rare[0];
    let head = seqs_where(dir.path(), "1=1")[0];
    assert!(head - rare > SPAN, "{head} {rare}");

    // The first page reads the newest span, finds nothing, and says where to go on.
    let filter = "/audit?actor=user%3Arare%40elsewhere";
    let first = http.get(filter).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(rows(&first.body).is_empty());
    let start = head - SPAN + 1;
    assert!(
        first.body.contains(&format!(
            "No matches in events {} to {}; ",
            grouped(start),
            grouped(head)
        )),
        "{}",
        first.body
    );
    assert!(!first.body.contains("No events match."));
    let on = continue_link(&first.body).unwrap();
    assert_eq!(on, format!("{filter}&before={start}"));
    assert_eq!(link(&first.body, "next").as_deref(), Some(on.as_str()));
    assert!(link(&first.body, "prev").is_none(), "the newest page");
    // Following it finds the event, and the chain's start: nothing older.
    let found = http.get(&on).await;
    assert_eq!(rows(&found.body), [rare], "{}", found.body);
    assert!(continue_link(&found.body).is_none(), "{}", found.body);
    assert!(link(&found.body, "next").is_none());
    // Back towards newer events: one span at a time too.
    let newer = link(&found.body, "prev").unwrap();
    assert_eq!(newer, format!("{filter}&after={rare}"));
    let newer = http.get(&newer).await;
    assert!(rows(&newer.body).is_empty());
    assert!(
        newer.body.contains(&format!(
            "No matches in events {} to {}; ",
            grouped(rare + 1),
            grouped(rare + SPAN)
        )),
        "{}",
        newer.body
    );
    let on = continue_link(&newer.body).unwrap();
    assert_eq!(on, format!("{filter}&after={}", rare + SPAN));
    assert_eq!(link(&newer.body, "prev").as_deref(), Some(on.as_str()));
    let newest = http.get(&on).await;
    assert!(rows(&newest.body).is_empty());
    assert!(continue_link(&newest.body).is_none(), "{}", newest.body);
    assert!(newest.body.contains("No events match."));
    assert!(link(&newest.body, "prev").is_none());
    // Walking the older links from the start finds exactly the one event.
    assert_eq!(walk(&mut http, filter).await, [rare]);
    // An exact subject reads its index, which reaches the event on the first page.
    let indexed = http.get(&format!("{filter}&subject=rare-subject")).await;
    assert_eq!(rows(&indexed.body), [rare], "{}", indexed.body);
    assert!(continue_link(&indexed.body).is_none());
}

/// Clicks the element `css` selects.
async fn click(browser: &Browser, css: &str) {
    browser
        .client
        .find(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_page_in_chromium() {
    use fantoccini::Locator;
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    append(dir.path(), 0..300);
    let console = ConsoleProc::start(dir.path(), &[]);
    let browser = Browser::start(1280, 1000).await;
    browser.login(&console.url, PASSPHRASE).await;
    let base = console.url.trim_end_matches('/');
    browser.client.goto(&format!("{base}/audit")).await.unwrap();
    // Filter through the form, as a person would.
    browser
        .client
        .find(Locator::Css("#f-actor"))
        .await
        .unwrap()
        .send_keys("agent:a7")
        .await
        .unwrap();
    click(&browser, "#f-outcome option[value=error]").await;
    click(&browser, "form.filters button[type=submit]").await;
    browser
        .client
        .wait()
        .for_element(Locator::Css("#f-outcome option[value=error][selected]"))
        .await
        .unwrap();
    let at = browser.client.current_url().await.unwrap();
    assert!(
        at.as_str().contains("actor=agent%3Aa7") && at.as_str().contains("outcome=error"),
        "{at}"
    );
    let shown = browser
        .client
        .find_all(Locator::Css("tbody tr"))
        .await
        .unwrap()
        .len();
    assert_eq!(
        shown, 15,
        "events 0..300 by agent a7 with an error: i % 21 == 0"
    );
    // Open one detail.
    click(&browser, "tbody tr details summary").await;
    let detail = browser
        .client
        .find(Locator::Css("tbody tr details pre"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(detail.contains("\"token\": \"[REDACTED]\""), "{detail}");
    let shot = browser.screenshot("audit").await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    // At phone width the page still fits: the filters wrap, and only the table scrolls.
    browser.client.set_window_size(390, 844).await.unwrap();
    let width: i64 = browser
        .client
        .execute("return document.documentElement.scrollWidth", vec![])
        .await
        .unwrap()
        .as_i64()
        .unwrap();
    assert!(
        width <= 390,
        "the page is {width} px wide at a 390 px window"
    );
    browser.screenshot("audit-phone").await;
    browser.client.set_window_size(1280, 1000).await.unwrap();
    // Verify from the page.
    click(&browser, "form[action='/audit/verify'] button").await;
    let notice = browser
        .client
        .wait()
        .for_element(Locator::Css("p.notice"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(notice.starts_with("Chain intact:"), "{notice}");
    browser.screenshot("audit-verify").await;
    browser.close().await;
}
