//! A connection's socket, driven by the thread that waits for its answer: non-blocking, read
//! and written when a statement is polled, waited on with poll(2) in between. Why not a tokio
//! runtime: with the connection a task on a runtime thread, every statement crossed threads
//! twice (the request to that task, the answer back), which on loopback made a statement take
//! several times the round trip itself. Here the waiting thread does the I/O and the kernel
//! wakes it, so the store's synchronous surface works the same on any thread, a tokio worker
//! included (there is no runtime to nest).

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::{Host, TargetSessionAttrs};
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// The connection half of a tokio-postgres client over a [`Socket`].
pub(super) type Connection = tokio_postgres::Connection<Socket, NoTlsStream>;

const WANT_READ: u8 = 1;
const WANT_WRITE: u8 = 2;

/// A TCP or Unix-domain socket in non-blocking mode. A read or write that would block records
/// what it waited for in `wants`, which [`Driver::run`] then waits on with poll(2).
pub struct Socket {
    stream: Stream,
    wants: Arc<AtomicU8>,
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn shutdown(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }
}

impl Socket {
    /// Runs `op` until it does not block; a block is recorded in `wants` and answered Pending
    /// (the driver polls again once poll(2) says the socket is ready).
    fn attempt<T>(
        &mut self,
        want: u8,
        mut op: impl FnMut(&mut Stream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            match op(&mut self.stream) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wants.fetch_or(want, Ordering::Relaxed);
                    return Poll::Pending;
                }
                done => return Poll::Ready(done),
            }
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let dst = buf.initialize_unfilled();
        match this.attempt(WANT_READ, |s| s.read(dst)) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().attempt(WANT_WRITE, |s| s.write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here: every write went to the kernel.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.stream.shutdown())
    }
}

/// What one connection needs to be driven: its socket's descriptor and what the socket last
/// waited for.
pub(super) struct Driver {
    fd: RawFd,
    wants: Arc<AtomicU8>,
}

/// Why [`Driver::run`] returned without the future's answer.
pub(super) enum Stopped {
    /// The connection ended (the server closed it, the network dropped it): its error if any.
    Ended(Option<tokio_postgres::Error>),
    /// The deadline passed.
    TimedOut,
    /// poll(2) failed.
    Io(io::Error),
}

impl Driver {
    /// Polls `f` and the connection (when there is one; during the start-up `f` owns the
    /// socket) until `f` is ready, waiting for the socket in between. `conn` becomes `None`
    /// when the connection ends.
    pub(super) fn run<F: Future>(
        &self,
        conn: &mut Option<Connection>,
        f: F,
        deadline: Option<Instant>,
    ) -> Result<F::Output, Stopped> {
        let mut f = pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            self.wants.store(0, Ordering::Relaxed);
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return Ok(v);
            }
            if let Some(c) = conn.as_mut()
                && let Poll::Ready(ended) = Pin::new(c).poll(&mut cx)
            {
                *conn = None;
                // The connection's end fails the statement's future; take its error if so.
                if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                    return Ok(v);
                }
                return Err(Stopped::Ended(ended.err()));
            }
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return Ok(v);
            }
            let wants = self.wants.load(Ordering::Relaxed);
            if wants == 0 {
                // Progress without I/O (an answer handed from the connection to the statement
                // through their channel): go round again.
                continue;
            }
            let timeout = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Stopped::TimedOut);
                    }
                    left.min(Duration::from_secs(1))
                }
                // The server bounds a statement (statement_timeout) and TCP keepalive a dead
                // peer; waking each second costs nothing and never hangs on a lost wake-up.
                None => Duration::from_secs(1),
            };
            self.wait(wants, timeout)?;
        }
    }

    /// Polls the connection once without waiting: reads what the server sent meanwhile (a
    /// closed socket, a notice) so a connection the server ended is seen as ended.
    pub(super) fn pump(&self, conn: &mut Option<Connection>) {
        let mut cx = Context::from_waker(Waker::noop());
        if let Some(c) = conn.as_mut()
            && Pin::new(c).poll(&mut cx).is_ready()
        {
            *conn = None;
        }
    }

    fn wait(&self, wants: u8, timeout: Duration) -> Result<(), Stopped> {
        let mut events = 0;
        if wants & WANT_READ != 0 {
            events |= libc::POLLIN;
        }
        if wants & WANT_WRITE != 0 {
            events |= libc::POLLOUT;
        }
        let mut fds = [libc::pollfd {
            fd: self.fd,
            events,
            revents: 0,
        }];
        let ms = libc::c_int::try_from(timeout.as_millis().max(1)).unwrap_or(1_000);
        // SAFETY: one valid pollfd, its length passed with it.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(Stopped::Io(e));
            }
        }
        Ok(())
    }
}

/// Connects as `config` says (each host in turn, TCP or a Unix socket directory, with its
/// port), runs the start-up and authentication, and checks `target_session_attrs`. Only the
/// settings a URL can carry for a plain (non-TLS) connection are read.
pub(super) fn connect(
    config: &tokio_postgres::Config,
    timeout: Duration,
) -> Result<(tokio_postgres::Client, Connection, Driver), String> {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let count = hosts.len().max(addrs.len());
    if count == 0 {
        return Err("the URL names no host".into());
    }
    let ports = config.get_ports();
    let mut last = String::new();
    for i in 0..count {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let target = match (addrs.get(i), hosts.get(i)) {
            (Some(ip), _) => Host::Tcp(ip.to_string()),
            (None, Some(h)) => h.clone(),
            (None, None) => continue,
        };
        match connect_host(config, &target, port, timeout) {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn connect_host(
    config: &tokio_postgres::Config,
    host: &Host,
    port: u16,
    timeout: Duration,
) -> Result<(tokio_postgres::Client, Connection, Driver), String> {
    let deadline = Instant::now() + timeout;
    let stream = match host {
        Host::Tcp(name) => Stream::Tcp(tcp(config, name, port, timeout)?),
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            Stream::Unix(
                UnixStream::connect(&path).map_err(|e| format!("{}: {e}", path.display()))?,
            )
        }
    };
    match &stream {
        Stream::Tcp(s) => s.set_nonblocking(true),
        Stream::Unix(s) => s.set_nonblocking(true),
    }
    .map_err(|e| e.to_string())?;
    let wants = Arc::new(AtomicU8::new(0));
    let driver = Driver {
        fd: stream.fd(),
        wants: wants.clone(),
    };
    let socket = Socket { stream, wants };
    let mut none = None;
    let (client, connection) = driver
        .run(&mut none, config.connect_raw(socket, NoTls), Some(deadline))
        .map_err(|s| stopped(&s, "while connecting"))?
        .map_err(|e| super::conn::describe(&e))?;
    let mut conn = Some(connection);
    if config.get_target_session_attrs() == TargetSessionAttrs::ReadWrite {
        let answer = driver
            .run(
                &mut conn,
                client.simple_query("SHOW transaction_read_only"),
                Some(deadline),
            )
            .map_err(|s| stopped(&s, "while checking target_session_attrs"))?
            .map_err(|e| super::conn::describe(&e))?;
        let read_only = answer.iter().any(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0) == Some("on"),
            _ => false,
        });
        if read_only {
            return Err("the server is read-only (target_session_attrs=read-write)".into());
        }
    }
    let connection = conn.ok_or("the server closed the connection while it started")?;
    Ok((client, connection, driver))
}

/// A TCP connection to `name:port` (each address it resolves to in turn), with Nagle off (a
/// statement is one small message; waiting to coalesce it costs a round trip) and the
/// keepalive and user timeout the config asks for.
fn tcp(
    config: &tokio_postgres::Config,
    name: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, String> {
    let addrs: Vec<_> = (name, port)
        .to_socket_addrs()
        .map_err(|e| format!("{name}:{port}: {e}"))?
        .collect();
    let mut last = format!("{name}:{port}: no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                let sock = socket2::SockRef::from(&s);
                if config.get_keepalives() {
                    let mut keepalive =
                        socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
                    if let Some(i) = config.get_keepalives_interval() {
                        keepalive = keepalive.with_interval(i);
                    }
                    if let Some(r) = config.get_keepalives_retries() {
                        keepalive = keepalive.with_retries(r);
                    }
                    sock.set_tcp_keepalive(&keepalive)
                        .map_err(|e| e.to_string())?;
                }
                // Linux's own socket option; elsewhere the keepalive above is what notices.
                #[cfg(any(target_os = "linux", target_os = "android"))]
                if let Some(t) = config.get_tcp_user_timeout() {
                    sock.set_tcp_user_timeout(Some(*t))
                        .map_err(|e| e.to_string())?;
                }
                return Ok(s);
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

/// What a [`Stopped`] says, `when` naming the step.
pub(super) fn stopped(s: &Stopped, when: &str) -> String {
    match s {
        Stopped::Ended(Some(e)) => {
            format!("the connection ended {when}: {}", super::conn::describe(e))
        }
        Stopped::Ended(None) => format!("the server closed the connection {when}"),
        Stopped::TimedOut => format!("no answer {when} within the connect timeout"),
        Stopped::Io(e) => format!("waiting for the socket {when}: {e}"),
    }
}
