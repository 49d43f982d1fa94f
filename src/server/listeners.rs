//! Who is told of changes, across every session this process serves (stdio's one, and any
//! number over HTTP): the clients listening for `tools/list` changes, and the legacy
//! `resources/subscribe` subscriptions, each kept per session so that sessions neither
//! replace nor cancel each other's, and dropped once their session is gone.

use std::collections::HashMap;
use std::sync::Mutex;

use rmcp::RoleServer;
use rmcp::service::{Peer, SubscriptionSink};
use tokio_util::sync::CancellationToken;

/// The listeners of one process.
#[derive(Default)]
pub struct Listeners {
    tools: Mutex<ToolListeners>,
    /// Legacy subscriptions by (session, URI): the watcher's stop token.
    resources: Mutex<HashMap<(String, String), CancellationToken>>,
}

#[derive(Default)]
struct ToolListeners {
    /// Initialize-era sessions, told with `notifications/tools/list_changed`.
    peers: Vec<Peer<RoleServer>>,
    /// 2026-07-28 `subscriptions/listen` streams that asked for `tools_list_changed`, by a key
    /// of ours (request ids are the clients' and repeat across HTTP clients).
    sinks: Vec<(u64, SubscriptionSink)>,
    next: u64,
}

/// Removes a `subscriptions/listen` stream from the tool listeners when dropped (the stream
/// ended).
pub struct SinkGuard<'a> {
    listeners: &'a Listeners,
    key: u64,
}

impl Drop for SinkGuard<'_> {
    fn drop(&mut self) {
        self.listeners
            .lock_tools()
            .sinks
            .retain(|(k, _)| *k != self.key);
    }
}

impl Listeners {
    fn lock_tools(&self) -> std::sync::MutexGuard<'_, ToolListeners> {
        self.tools.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_resources(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, String), CancellationToken>> {
        self.resources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An initialize-era session to tell of tool-list changes. Sessions whose transport has
    /// closed are dropped here and at every announcement, so HTTP sessions that came and went
    /// are not kept.
    pub fn add_peer(&self, peer: Peer<RoleServer>) {
        let mut l = self.lock_tools();
        l.peers.retain(|p| !p.is_transport_closed());
        l.peers.push(peer);
    }

    /// A `subscriptions/listen` stream to tell of tool-list changes, until the guard drops.
    pub fn add_sink(&self, sink: SubscriptionSink) -> SinkGuard<'_> {
        let mut l = self.lock_tools();
        let key = l.next;
        l.next += 1;
        l.sinks.push((key, sink));
        SinkGuard {
            listeners: self,
            key,
        }
    }

    /// Everyone to tell now: the live sessions and the open streams.
    pub fn tool_listeners(&self) -> (Vec<Peer<RoleServer>>, Vec<SubscriptionSink>) {
        let mut l = self.lock_tools();
        l.peers.retain(|p| !p.is_transport_closed());
        (
            l.peers.clone(),
            l.sinks.iter().map(|(_, s)| s.clone()).collect(),
        )
    }

    /// How many sessions, streams and subscriptions are kept.
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize, usize) {
        let l = self.lock_tools();
        let r = self.lock_resources();
        (l.peers.len(), l.sinks.len(), r.len())
    }

    /// Records `session`'s subscription to `uri`, replacing (and stopping) that session's
    /// earlier one to the same URI only. Subscriptions whose watcher has ended are dropped.
    pub fn subscribe(&self, session: &str, uri: &str, stop: CancellationToken) {
        let mut r = self.lock_resources();
        r.retain(|_, t| !t.is_cancelled());
        if let Some(previous) = r.insert((session.to_string(), uri.to_string()), stop) {
            previous.cancel();
        }
    }

    /// Ends `session`'s subscription to `uri`, if it has one.
    pub fn unsubscribe(&self, session: &str, uri: &str) {
        if let Some(stop) = self
            .lock_resources()
            .remove(&(session.to_string(), uri.to_string()))
        {
            stop.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::{ServerHandler, ServiceExt};

    struct Quiet;
    impl ServerHandler for Quiet {}

    /// A server-side peer of an initialized session over an in-memory pipe, and the client
    /// side that keeps it open.
    async fn session() -> Result<
        (
            Peer<RoleServer>,
            rmcp::service::RunningService<rmcp::RoleClient, ()>,
            rmcp::service::RunningService<RoleServer, Quiet>,
        ),
        Box<dyn std::error::Error>,
    > {
        let (server_end, client_end) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move { Quiet.serve(server_end).await });
        let client = ().serve(client_end).await?;
        let server = server.await??;
        Ok((server.peer().clone(), client, server))
    }

    /// HTTP sessions come and go in one process: a session whose transport closed is not
    /// kept among those told of tool-list changes.
    #[tokio::test]
    async fn closed_sessions_are_not_kept() -> Result<(), Box<dyn std::error::Error>> {
        let listeners = Listeners::default();
        let (gone, client, server) = session().await?;
        listeners.add_peer(gone.clone());
        client.cancel().await?;
        let _ = server.waiting().await;
        assert!(gone.is_transport_closed());
        let (live, _client, _server) = session().await?;
        listeners.add_peer(live);
        assert_eq!(listeners.counts().0, 1, "the closed session is still kept");
        assert_eq!(listeners.tool_listeners().0.len(), 1);
        Ok(())
    }

    /// Two sessions subscribed to one URI are two subscriptions: one subscribing again or
    /// unsubscribing leaves the other's running.
    #[test]
    fn subscriptions_are_per_session() {
        let listeners = Listeners::default();
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        listeners.subscribe("http:a", "coordinator://pipeline-runs/r1", a.clone());
        listeners.subscribe("http:b", "coordinator://pipeline-runs/r1", b.clone());
        assert!(!a.is_cancelled(), "b's subscription stopped a's");
        listeners.unsubscribe("http:b", "coordinator://pipeline-runs/r1");
        assert!(b.is_cancelled() && !a.is_cancelled());
        let again = CancellationToken::new();
        listeners.subscribe("http:a", "coordinator://pipeline-runs/r1", again.clone());
        assert!(
            a.is_cancelled(),
            "a's first subscription was replaced by its second"
        );
        assert_eq!(listeners.counts().2, 1);
    }
}
