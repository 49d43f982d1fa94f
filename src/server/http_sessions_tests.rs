//! Tests of `http_sessions.rs`: the service's side driven by hand (its transport's `receive`
//! and `send`), the client's side through the `SessionManager` calls rmcp makes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use futures_util::StreamExt;
use rmcp::model::GetExtensions;
use serde_json::json;
use std::pin::Pin;

type Events = Pin<Box<dyn Stream<Item = ServerSseMessage> + Send + Sync>>;

fn client(v: serde_json::Value) -> ClientJsonRpcMessage {
    serde_json::from_value(v).unwrap()
}

fn server(v: serde_json::Value) -> ServerJsonRpcMessage {
    serde_json::from_value(v).unwrap()
}

fn call(id: i64, progress: Option<&str>) -> ClientJsonRpcMessage {
    let mut params = json!({"name": "coordinator_status", "arguments": {}});
    if let Some(token) = progress {
        params["_meta"] = json!({"progressToken": token});
    }
    client(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}))
}

fn progress(token: &str, n: u32) -> ServerJsonRpcMessage {
    server(json!({"jsonrpc": "2.0", "method": "notifications/progress",
        "params": {"progressToken": token, "progress": n}}))
}

fn answer(id: i64) -> ServerJsonRpcMessage {
    server(json!({"jsonrpc": "2.0", "id": id, "result": {}}))
}

/// A ping the server makes while handling request `for_request`.
fn ping_for(for_request: i64) -> ServerJsonRpcMessage {
    let mut m = server(json!({"jsonrpc": "2.0", "id": 70, "method": "ping"}));
    if let ServerJsonRpcMessage::Request(r) = &mut m {
        r.request
            .extensions_mut()
            .insert(OriginatingRequestId(RequestId::Number(for_request)));
    }
    m
}

/// The next event's id and its message as JSON (`null` for the opening event).
async fn next(events: &mut Events) -> Option<(String, serde_json::Value)> {
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("an event or the end within 5 s")?;
    let message = event
        .message
        .map(|m| serde_json::to_value(&*m).unwrap())
        .unwrap_or_default();
    Some((event.event_id.unwrap_or_default(), message))
}

async fn open() -> (DirectSessions, SessionId, SessionTransport) {
    let sessions = DirectSessions::new(Duration::from_secs(60));
    let (id, transport) = sessions.create_session().await.unwrap();
    (sessions, id, transport)
}

#[tokio::test]
async fn a_call_gets_its_progress_requests_and_answer_and_the_rest_goes_to_the_get_stream() {
    let (sessions, id, mut service) = open().await;
    let mut post: Events = Box::pin(
        sessions
            .create_stream(&id, call(1, Some("p1")))
            .await
            .unwrap(),
    );
    let (first, message) = next(&mut post).await.unwrap();
    assert_eq!((first.as_str(), message), ("0/0", serde_json::Value::Null));
    let got = service.receive().await.unwrap();
    assert!(matches!(got, ClientJsonRpcMessage::Request(r) if r.id == RequestId::Number(1)));

    service.send(progress("p1", 1)).await.unwrap();
    service.send(ping_for(1)).await.unwrap();
    service
        .send(server(
            json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}),
        ))
        .await
        .unwrap();
    service.send(progress("elsewhere", 1)).await.unwrap();
    service.send(answer(1)).await.unwrap();

    let (eid, m) = next(&mut post).await.unwrap();
    assert_eq!(
        (eid.as_str(), &m["params"]["progressToken"]),
        ("1/0", &json!("p1"))
    );
    let (_, m) = next(&mut post).await.unwrap();
    assert_eq!(m["method"], "ping", "{m}");
    let (eid, m) = next(&mut post).await.unwrap();
    assert_eq!((eid.as_str(), &m["id"]), ("3/0", &json!(1)));
    assert!(
        next(&mut post).await.is_none(),
        "the stream ends with its answer"
    );

    // What belonged to no request waits for the GET stream, numbered on its own from 1
    // (rmcp opens the stream with an event "0" of its own).
    let mut get: Events = Box::pin(sessions.create_standalone_stream(&id).await.unwrap());
    let (eid, m) = next(&mut get).await.unwrap();
    assert_eq!(
        (eid.as_str(), &m["method"]),
        ("1", &json!("notifications/tools/list_changed"))
    );
    let (eid, m) = next(&mut get).await.unwrap();
    assert_eq!(
        (eid.as_str(), &m["params"]["progressToken"]),
        ("2", &json!("elsewhere"))
    );

    // A second GET while the first is live stays open and is sent nothing.
    let mut shadow: Events = Box::pin(sessions.create_standalone_stream(&id).await.unwrap());
    service.send(progress("later", 1)).await.unwrap();
    let (eid, _) = next(&mut get).await.unwrap();
    assert_eq!(eid, "3");
    // Resuming after rmcp's opening event "0" replays every kept event.
    drop(get);
    let mut again: Events = Box::pin(sessions.resume(&id, "0".into()).await.unwrap());
    let ids: Vec<String> = [
        next(&mut again).await.unwrap().0,
        next(&mut again).await.unwrap().0,
        next(&mut again).await.unwrap().0,
    ]
    .into();
    assert_eq!(ids, ["1", "2", "3"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), shadow.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_broken_post_stream_resumes_after_the_last_event_its_client_saw() {
    let (sessions, id, mut service) = open().await;
    let mut post: Events = Box::pin(
        sessions
            .create_stream(&id, call(5, Some("t")))
            .await
            .unwrap(),
    );
    service.receive().await.unwrap();
    service.send(progress("t", 1)).await.unwrap();
    assert_eq!(next(&mut post).await.unwrap().0, "0/0");
    assert_eq!(next(&mut post).await.unwrap().0, "1/0");
    drop(post);
    service.send(progress("t", 2)).await.unwrap();
    service.send(progress("t", 3)).await.unwrap();

    let mut resumed: Events = Box::pin(sessions.resume(&id, "1/0".into()).await.unwrap());
    service.send(answer(5)).await.unwrap();
    let mut seen = Vec::new();
    while let Some((eid, _)) = next(&mut resumed).await {
        seen.push(eid);
    }
    assert_eq!(seen, ["2/0", "3/0", "4/0"]);

    // A call whose client was gone when its answer came: the answer waits for a resume.
    let mut post: Events = Box::pin(sessions.create_stream(&id, call(6, None)).await.unwrap());
    service.receive().await.unwrap();
    assert_eq!(next(&mut post).await.unwrap().0, "0/1");
    drop(post);
    service.send(answer(6)).await.unwrap();
    let mut resumed: Events = Box::pin(sessions.resume(&id, "0/1".into()).await.unwrap());
    let (eid, m) = next(&mut resumed).await.unwrap();
    assert_eq!((eid.as_str(), &m["id"]), ("1/1", &json!(6)));
    assert!(next(&mut resumed).await.is_none());

    // A finished stream that was read, or an id that names nothing, cannot be resumed.
    for bad in ["1/0", "0/1", "x", "1/99"] {
        let e = sessions.resume(&id, bad.into()).await.err();
        assert!(
            e.as_ref().is_some_and(|e| e.to_string().contains(bad)),
            "{bad}: {e:?}"
        );
    }
}

#[tokio::test]
async fn initialize_is_answered_and_a_cancelled_call_ends_its_stream() {
    let (sessions, id, mut service) = open().await;
    let sessions = Arc::new(sessions);
    let init = client(
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}}),
    );
    let waiting = tokio::spawn({
        let (sessions, id) = (sessions.clone(), id.clone());
        async move { sessions.initialize_session(&id, init).await }
    });
    service.receive().await.unwrap();
    service.send(answer(0)).await.unwrap();
    let answered = waiting.await.unwrap().unwrap();
    assert!(matches!(answered, ServerJsonRpcMessage::Response(r) if r.id == RequestId::Number(0)));

    let mut post: Events = Box::pin(sessions.create_stream(&id, call(2, None)).await.unwrap());
    next(&mut post).await.unwrap();
    sessions
        .accept_message(
            &id,
            client(
                json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": 2}}),
            ),
        )
        .await
        .unwrap();
    assert!(
        next(&mut post).await.is_none(),
        "a cancelled call's stream ends"
    );
    service.receive().await.unwrap();
    let cancel = service.receive().await.unwrap();
    assert!(matches!(cancel, ClientJsonRpcMessage::Notification(_)));
}

#[tokio::test]
async fn a_session_ends_when_closed_or_idle() {
    let sessions = DirectSessions::new(Duration::from_millis(200));
    let (busy, mut busy_service) = sessions.create_session().await.unwrap();
    let (idle, mut idle_service) = sessions.create_session().await.unwrap();
    assert_eq!(sessions.open(), 2);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(sessions.has_session(&busy).await.unwrap());
        sessions.session(&busy).unwrap();
    }
    // The idle one's service is told it ended (rmcp then closes it here).
    let ended = tokio::time::timeout(Duration::from_secs(2), idle_service.receive()).await;
    assert!(matches!(ended, Ok(None)), "{ended:?}");
    sessions.close_session(&idle).await.unwrap();

    let mut post: Events = Box::pin(sessions.create_stream(&busy, call(1, None)).await.unwrap());
    next(&mut post).await.unwrap();
    sessions.close_session(&busy).await.unwrap();
    assert!(next(&mut post).await.is_none(), "its streams end");
    assert!(busy_service.receive().await.is_none());
    assert_eq!(sessions.open(), 0);
    let e = sessions.create_stream(&busy, call(2, None)).await.err();
    assert!(e.is_some_and(|e| e.to_string().contains(busy.as_ref())));
}
