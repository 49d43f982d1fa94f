//! Initialize-era HTTP sessions in memory, each message routed where it goes as it is sent.
//!
//! rmcp's `LocalSessionManager` runs a task per session that every message passes through
//! both ways: a request went from its connection's task to that task, to the session's
//! service, and its answer back through that task to the connection. Here the service's
//! transport routes each message itself, under a short lock, into the event stream of the
//! POST it belongs to (its response, its progress, a request made while handling it), or
//! into the session's standalone GET stream; a request goes from the connection straight
//! to the service. What `LocalSessionManager` keeps is kept: request-wise routing (by
//! request id, progress token, and the request a server request was made for), the
//! standalone stream and its shadows, resumption with `Last-Event-ID` (a stream's last events
//! are kept; a POST whose client was gone when its answer came keeps its stream for a minute,
//! so the answer is not lost), and the session closed after `idle`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::Stream;
use rmcp::RoleServer;
use rmcp::model::{
    ClientJsonRpcMessage, ClientNotification, ClientRequest, GetExtensions, GetMeta,
    JsonRpcRequest, ProgressToken, RequestId, ServerJsonRpcMessage, ServerNotification,
};
use rmcp::service::OriginatingRequestId;
use rmcp::transport::Transport;
use rmcp::transport::streamable_http_server::session::{
    ServerSseMessage, SessionId, SessionManager,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Events of a stream kept for `Last-Event-ID` (rmcp's default).
const KEPT_EVENTS: usize = 16;
/// Events waiting in a stream whose client does not read them: past this the stream is
/// closed (its client can resume it from the kept events) rather than grow without end.
const BACKLOG: usize = 256;
/// The most idle standalone streams one session holds open (rmcp's limit).
const MAX_SHADOWS: usize = 32;
/// How long a POST's stream whose client was gone when its answer came stays resumable.
const UNREAD_KEPT: Duration = Duration::from_secs(60);
/// The `retry` of the event that opens a POST's stream (rmcp's default): a client that loses
/// the stream waits this long and resumes it.
const RETRY: Duration = Duration::from_secs(3);

/// Errors of [`DirectSessions`].
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no such session: {0}")]
    NotFound(SessionId),
    #[error("the session ended")]
    Ended,
    #[error("Last-Event-ID {0:?} names no event this session keeps")]
    UnknownEvent(String),
}

/// The sessions of one `/mcp` service.
pub struct DirectSessions {
    sessions: RwLock<HashMap<SessionId, Arc<Session>>>,
    /// A session without a request for this long is closed.
    idle: Duration,
}

impl DirectSessions {
    pub fn new(idle: Duration) -> Self {
        DirectSessions {
            sessions: RwLock::default(),
            idle,
        }
    }

    /// Sessions open now.
    pub fn open(&self) -> usize {
        read(&self.sessions).len()
    }

    /// Whether session `id` is open.
    pub fn contains(&self, id: &str) -> bool {
        read(&self.sessions).contains_key(id)
    }

    fn session(&self, id: &SessionId) -> Result<Arc<Session>, SessionError> {
        let session = read(&self.sessions)
            .get(id)
            .cloned()
            .ok_or_else(|| SessionError::NotFound(id.clone()))?;
        session.touch();
        Ok(session)
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|p| p.into_inner())
}

/// One session: the way in to its service, and where its service's messages go.
struct Session {
    to_service: mpsc::UnboundedSender<ClientJsonRpcMessage>,
    routes: Mutex<Routes>,
    last_seen: Mutex<Instant>,
    /// Cancelled when the session closes: its service's transport ends.
    closed: CancellationToken,
}

impl Session {
    fn touch(&self) {
        *lock(&self.last_seen) = Instant::now();
    }

    /// Hands `message` to the service; an error once the session has ended.
    fn push(&self, message: ClientJsonRpcMessage) -> Result<(), SessionError> {
        if self.closed.is_cancelled() {
            return Err(SessionError::Ended);
        }
        self.to_service
            .send(message)
            .map_err(|_| SessionError::Ended)
    }

    /// Ends the session: its service stops, every stream of it ends.
    fn close(&self) {
        self.closed.cancel();
        let mut routes = lock(&self.routes);
        routes.streams.clear();
        routes.unread.clear();
        routes.keys.clear();
        routes.common.tx = None;
        routes.shadows.clear();
        routes.init = None;
    }
}

/// What a message of the service is routed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Request(RequestId),
    Progress(ProgressToken),
}

struct Routes {
    next_stream: u64,
    /// Each POST's stream, by its number.
    streams: HashMap<u64, PostStream>,
    /// Finished POST streams whose client was gone when the answer came, until when they
    /// can be resumed.
    unread: HashMap<u64, (PostStream, Instant)>,
    /// Which POST's stream a request id or progress token belongs to.
    keys: HashMap<Key, u64>,
    /// The standalone stream (GET).
    common: Events,
    /// Idle standalone streams opened while another was live: kept open, sent nothing.
    shadows: Vec<mpsc::Sender<ServerSseMessage>>,
    /// The initialize request in flight, and who waits for its answer.
    init: Option<(RequestId, oneshot::Sender<ServerJsonRpcMessage>)>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            next_stream: 0,
            streams: HashMap::new(),
            unread: HashMap::new(),
            keys: HashMap::new(),
            // rmcp opens every GET stream with a priming event of id "0" of its own: the
            // standalone stream's events are numbered from 1, so that resuming after "0"
            // replays them all.
            common: Events {
                next: 1,
                ..Events::default()
            },
            shadows: Vec::new(),
            init: None,
        }
    }
}

struct PostStream {
    events: Events,
    keys: Vec<Key>,
}

/// One stream's sender and the events it sent, numbered for `Last-Event-ID`.
#[derive(Default)]
struct Events {
    tx: Option<mpsc::Sender<ServerSseMessage>>,
    /// The last events sent, each with its number.
    kept: VecDeque<(usize, ServerSseMessage)>,
    /// The number of the next event.
    next: usize,
    /// The POST this stream answers (part of its event ids); `None` for the standalone one.
    post: Option<u64>,
}

impl Events {
    fn event_id(&self, index: usize) -> String {
        match self.post {
            Some(post) => format!("{index}/{post}"),
            None => index.to_string(),
        }
    }

    fn send(&mut self, mut event: ServerSseMessage) {
        let index = self.next;
        self.next += 1;
        event.event_id = Some(self.event_id(index));
        if self.kept.len() == KEPT_EVENTS {
            self.kept.pop_front();
        }
        self.kept.push_back((index, event.clone()));
        if let Some(tx) = &self.tx
            && tx.try_send(event).is_err()
        {
            // The client went away, or reads too slowly: its stream ends, and the event stays
            // kept for a resume.
            self.tx = None;
        }
    }

    /// A new sender for this stream, the kept events after `after` (an index) sent first.
    fn reopen(&mut self, after: Option<usize>) -> mpsc::Receiver<ServerSseMessage> {
        let (tx, rx) = mpsc::channel(BACKLOG);
        for (index, event) in &self.kept {
            if after.is_none_or(|after| *index > after) {
                let _ = tx.try_send(event.clone());
            }
        }
        self.tx = Some(tx);
        rx
    }

    fn is_live(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| !tx.is_closed())
    }
}

/// The request `message` answers, if it is a response or an error.
fn answer_to(message: &ServerJsonRpcMessage) -> Option<&RequestId> {
    match message {
        ServerJsonRpcMessage::Response(r) => Some(&r.id),
        ServerJsonRpcMessage::Error(e) => e.id.as_ref(),
        _ => None,
    }
}

impl Routes {
    /// Where the service's `message` goes: `(post, finishes it)`, or `None` for the
    /// standalone stream.
    fn route(&self, message: &ServerJsonRpcMessage) -> Option<(u64, bool)> {
        let by = |key: Key| self.keys.get(&key).copied();
        if let Some(id) = answer_to(message) {
            return by(Key::Request(id.clone())).map(|p| (p, true));
        }
        match message {
            ServerJsonRpcMessage::Response(_) | ServerJsonRpcMessage::Error(_) => None,
            // SEP-2260: a request made while handling a client's request rides that request's
            // stream.
            ServerJsonRpcMessage::Request(r) => r
                .request
                .extensions()
                .get::<OriginatingRequestId>()
                .and_then(|o| by(Key::Request(o.0.clone())))
                .map(|p| (p, false)),
            ServerJsonRpcMessage::Notification(n) => match &n.notification {
                ServerNotification::ProgressNotification(p) => {
                    by(Key::Progress(p.params.progress_token.clone())).map(|p| (p, false))
                }
                ServerNotification::CancelledNotification(c) => c
                    .params
                    .request_id
                    .clone()
                    .and_then(|id| by(Key::Request(id)))
                    .map(|p| (p, false)),
                _ => None,
            },
        }
    }

    /// Ends POST `post`'s stream. If its client had gone, the stream stays resumable for
    /// [`UNREAD_KEPT`]: the answer is in its kept events.
    fn finish(&mut self, post: u64) {
        if let Some(mut stream) = self.streams.remove(&post) {
            for key in stream.keys.drain(..) {
                self.keys.remove(&key);
            }
            if !stream.events.is_live() {
                stream.events.tx = None;
                self.unread
                    .insert(post, (stream, Instant::now() + UNREAD_KEPT));
            }
        }
        if !self.unread.is_empty() {
            let now = Instant::now();
            self.unread.retain(|_, (_, until)| *until > now);
        }
    }

    /// Sends the service's `message` where it goes.
    fn deliver(&mut self, message: ServerJsonRpcMessage) {
        if let Some((id, _)) = &self.init
            && answer_to(&message) == Some(id)
            && let Some((_, waiting)) = self.init.take()
        {
            let _ = waiting.send(message);
            return;
        }
        let route = self.route(&message);
        let event = ServerSseMessage::from_message(message);
        match route {
            Some((post, finishes)) => {
                if let Some(stream) = self.streams.get_mut(&post) {
                    stream.events.send(event);
                }
                if finishes {
                    self.finish(post);
                }
            }
            None => self.common.send(event),
        }
    }
}

/// The service's side of a session.
pub struct SessionTransport {
    from_client: mpsc::UnboundedReceiver<ClientJsonRpcMessage>,
    session: Arc<Session>,
}

impl Transport<RoleServer> for SessionTransport {
    type Error = SessionError;

    fn send(
        &mut self,
        item: ServerJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let sent = if self.session.closed.is_cancelled() {
            Err(SessionError::Ended)
        } else {
            self.session.touch();
            lock(&self.session.routes).deliver(item);
            Ok(())
        };
        std::future::ready(sent)
    }

    async fn receive(&mut self) -> Option<ClientJsonRpcMessage> {
        // A closed session ends its service at once, whatever is still queued for it.
        tokio::select! {
            biased;
            () = self.session.closed.cancelled() => None,
            message = self.from_client.recv() => message,
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.session.close();
        Ok(())
    }
}

/// The keys a client's request is routed by: its id and its progress token.
fn keys_of(request: &JsonRpcRequest<ClientRequest>) -> Vec<Key> {
    let mut keys = vec![Key::Request(request.id.clone())];
    if let Some(token) = request.request.get_meta().get_progress_token() {
        keys.push(Key::Progress(token));
    }
    keys
}

fn stream_of(
    rx: mpsc::Receiver<ServerSseMessage>,
) -> impl Stream<Item = ServerSseMessage> + Send + Sync + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (event, rx))
    })
}

impl SessionManager for DirectSessions {
    type Error = SessionError;
    type Transport = SessionTransport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let id: SessionId = uuid::Uuid::new_v4().to_string().into();
        let (to_service, from_client) = mpsc::unbounded_channel();
        let session = Arc::new(Session {
            to_service,
            routes: Mutex::default(),
            last_seen: Mutex::new(Instant::now()),
            closed: CancellationToken::new(),
        });
        write(&self.sessions).insert(id.clone(), session.clone());
        // Closes the session once it has been idle for `idle`: the service's transport ends,
        // and rmcp then calls `close_session`.
        let (watched, closed, idle) = (Arc::downgrade(&session), session.closed.clone(), self.idle);
        tokio::spawn(async move {
            let mut deadline = Instant::now() + idle;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline.into()) => {}
                    () = closed.cancelled() => return,
                }
                let Some(session) = watched.upgrade() else {
                    return;
                };
                let seen = *lock(&session.last_seen);
                if seen.elapsed() >= idle {
                    tracing::debug!("an HTTP session was idle for {idle:?}: closing it");
                    session.close();
                    return;
                }
                deadline = seen + idle;
            }
        });
        Ok((
            id,
            SessionTransport {
                from_client,
                session,
            },
        ))
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        let session = self.session(id)?;
        let ClientJsonRpcMessage::Request(request) = &message else {
            return Err(SessionError::Ended);
        };
        let (tx, rx) = oneshot::channel();
        lock(&session.routes).init = Some((request.id.clone(), tx));
        session.push(message)?;
        rx.await.map_err(|_| SessionError::Ended)
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        Ok(self.contains(id))
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        let removed = write(&self.sessions).remove(id);
        if let Some(session) = removed {
            session.close();
        }
        Ok(())
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let session = self.session(id)?;
        let rx = {
            let mut routes = lock(&session.routes);
            let post = routes.next_stream;
            routes.next_stream += 1;
            let mut events = Events {
                post: Some(post),
                ..Events::default()
            };
            let rx = events.reopen(None);
            // The opening event carries an id (and how long to wait) before any answer, so
            // that a client whose stream breaks can resume it.
            events.send(ServerSseMessage::priming(String::new(), RETRY));
            let keys = match &message {
                ClientJsonRpcMessage::Request(r) => keys_of(r),
                _ => Vec::new(),
            };
            for key in &keys {
                routes.keys.insert(key.clone(), post);
            }
            routes.streams.insert(post, PostStream { events, keys });
            rx
        };
        session.push(message)?;
        Ok(stream_of(rx))
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        let session = self.session(id)?;
        // A request the client cancels gets no answer: its stream ends now.
        if let ClientJsonRpcMessage::Notification(n) = &message
            && let ClientNotification::CancelledNotification(c) = &n.notification
            && let Some(request) = &c.params.request_id
        {
            let mut routes = lock(&session.routes);
            if let Some(post) = routes.keys.get(&Key::Request(request.clone())).copied() {
                routes.finish(post);
            }
        }
        session.push(message)
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let session = self.session(id)?;
        Ok(stream_of(common_receiver(&session, None)))
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let session = self.session(id)?;
        let unknown = || SessionError::UnknownEvent(last_event_id.clone());
        let (index, post) = match last_event_id.split_once('/') {
            Some((index, post)) => (index, Some(post.parse::<u64>().map_err(|_| unknown())?)),
            None => (last_event_id.as_str(), None),
        };
        let index = index.parse::<usize>().map_err(|_| unknown())?;
        let Some(post) = post else {
            return Ok(stream_of(common_receiver(&session, Some(index))));
        };
        let mut routes = lock(&session.routes);
        let rx = if let Some(stream) = routes.streams.get_mut(&post) {
            stream.events.reopen(Some(index))
        } else {
            // A finished stream's answer, never read: replayed, and the stream ends.
            let (mut stream, _) = routes.unread.remove(&post).ok_or_else(unknown)?;
            let rx = stream.events.reopen(Some(index));
            stream.events.tx = None;
            rx
        };
        Ok(stream_of(rx))
    }
}

/// The standalone stream: the live one if none is (events kept since `after`, or all kept
/// ones, first), else an idle shadow that keeps its connection without taking the live
/// one's events (clients that open several would otherwise take turns closing each other's).
fn common_receiver(session: &Session, after: Option<usize>) -> mpsc::Receiver<ServerSseMessage> {
    let mut routes = lock(&session.routes);
    if !routes.common.is_live() {
        return routes.common.reopen(after);
    }
    routes.shadows.retain(|tx| !tx.is_closed());
    if routes.shadows.len() >= MAX_SHADOWS {
        routes.shadows.remove(0);
    }
    let (tx, rx) = mpsc::channel(1);
    routes.shadows.push(tx);
    rx
}

#[cfg(test)]
#[path = "http_sessions_tests.rs"]
mod tests;
