//! Pipe ends for the proxy's hot path: a writer that never blocks its caller (what the pipe
//! does not take now is kept, in order, and written by a short-lived drainer thread), and a
//! line reader that hands over every complete line of a read.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Above this much unwritten data a writer waits for the drainer (the reader is not reading).
const BACKLOG_LIMIT: usize = 64 << 20;

/// Puts the calling relay thread in `SCHED_BATCH`: it still runs at once on an idle CPU, but
/// its wake-ups do not preempt a busy thread (the child or the client doing the actual work).
/// With 16 calls in flight on 2 CPUs this kept the child busier; see the README's figures.
/// Linux only: other systems have no such class, and their relay threads keep the default.
#[cfg(target_os = "linux")]
pub fn relay_thread_policy() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets the calling thread's own policy (pid 0); `param` outlives the call.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if r != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "could not set SCHED_BATCH on a relay thread");
    }
}

/// Not Linux: no batch scheduling class; the relay threads keep the default policy.
#[cfg(not(target_os = "linux"))]
pub fn relay_thread_policy() {}

/// Writes whole messages to a pipe (or any file descriptor) from any thread or task.
///
/// On a pipe or socket the descriptor is switched to non-blocking mode: a write takes what the
/// kernel accepts at once and queues the rest for a drainer thread, so a peer that stops
/// reading never stalls the caller (up to [`BACKLOG_LIMIT`] bytes). Writes keep their order and
/// are never interleaved. Other descriptors (a terminal, a file) are written in blocking mode.
pub struct PipeWriter {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when the backlog shrinks or the writer breaks.
    room: Condvar,
    label: String,
}

struct State {
    file: Option<Arc<File>>,
    backlog: Vec<u8>,
    /// A drainer thread owns the head of the queue; new data goes to the backlog.
    draining: bool,
    /// Close once the backlog is written.
    closing: bool,
    /// A write failed (the reader is gone): every later write fails.
    broken: bool,
    nonblocking: bool,
}

impl State {
    /// Drops the descriptor, back in blocking mode: the open file may be shared (our stdout
    /// with whoever started us), and others expect the mode they had.
    fn release(&mut self) {
        if let Some(file) = self.file.take()
            && self.nonblocking
        {
            let _ = set_nonblocking(&*file, false);
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn broken_pipe() -> io::Error {
    io::ErrorKind::BrokenPipe.into()
}

/// Whether `fd` is a pipe or a socket (where non-blocking mode is safe and useful).
fn is_pipe_or_socket(fd: &OwnedFd) -> bool {
    // SAFETY: fstat writes into the zeroed struct we own; the descriptor is valid (owned).
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
            return false;
        }
        let kind = st.st_mode & libc::S_IFMT;
        kind == libc::S_IFIFO || kind == libc::S_IFSOCK
    }
}

/// Sets or clears `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: &impl AsRawFd, on: bool) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor the caller keeps open; F_GETFL/F_SETFL take no pointers.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let wanted = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        if wanted != flags && libc::fcntl(fd, libc::F_SETFL, wanted) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits until `fd` is ready for `events` (or `timeout` passes); `Ok(false)` on timeout.
fn wait_ready(fd: &impl AsRawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one pollfd we own, count 1.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    match n {
        n if n < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        // Ready, or an error or hang-up the next read or write reports.
        _ => Ok(true),
    }
}

impl PipeWriter {
    /// Takes over `fd`. `label` names it in logs and in the drainer thread's name.
    pub fn new(fd: OwnedFd, label: &str) -> io::Result<Self> {
        let nonblocking = is_pipe_or_socket(&fd);
        if nonblocking {
            set_nonblocking(&fd, true)?;
        }
        Ok(PipeWriter {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    file: Some(Arc::new(File::from(fd))),
                    backlog: Vec::new(),
                    draining: false,
                    closing: false,
                    broken: false,
                    nonblocking,
                }),
                room: Condvar::new(),
                label: label.to_string(),
            }),
        })
    }

    /// Writes all of `data` after everything written before, or queues what the pipe does not
    /// take now. Fails once the reader is gone or the writer is closed.
    pub fn write(&self, data: &[u8]) -> io::Result<()> {
        let mut st = lock(&self.shared.state);
        if st.broken || st.closing {
            return Err(broken_pipe());
        }
        let Some(file) = st.file.clone() else {
            return Err(broken_pipe());
        };
        if !st.nonblocking {
            let r = (&*file).write_all(data);
            if r.is_err() {
                st.broken = true;
            }
            return r;
        }
        if st.draining {
            st.backlog.extend_from_slice(data);
            while st.backlog.len() > BACKLOG_LIMIT && st.draining && !st.broken {
                st = self.shared.room.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            return if st.broken {
                Err(broken_pipe())
            } else {
                Ok(())
            };
        }
        let mut done = 0;
        while done < data.len() {
            match (&*file).write(&data[done..]) {
                Ok(0) => {
                    st.broken = true;
                    return Err(broken_pipe());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    st.backlog.extend_from_slice(&data[done..]);
                    st.draining = true;
                    drop(st);
                    return self.start_drainer();
                }
                Err(e) => {
                    st.broken = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn start_drainer(&self) -> io::Result<()> {
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("drain {}", self.shared.label))
            .spawn(move || drain(&shared));
        if let Err(e) = spawned {
            let mut st = lock(&self.shared.state);
            st.broken = true;
            st.draining = false;
            st.backlog = Vec::new();
            return Err(e);
        }
        Ok(())
    }

    /// Waits up to `limit` for the queued data to be written; `true` if nothing is left.
    pub fn wait_drained(&self, limit: Duration) -> bool {
        let st = lock(&self.shared.state);
        let (st, _) = self
            .shared
            .room
            .wait_timeout_while(st, limit, |st| st.draining && !st.broken)
            .unwrap_or_else(|p| p.into_inner());
        !st.draining
    }

    /// Closes the descriptor once everything queued is written (the reader then sees EOF).
    pub fn close(&self) {
        let mut st = lock(&self.shared.state);
        st.closing = true;
        if !st.draining {
            st.release();
        }
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        self.close();
    }
}

/// The drainer: writes the backlog as the reader takes it, then ends.
fn drain(shared: &Shared) {
    loop {
        let (file, chunk) = {
            let mut st = lock(&shared.state);
            if st.backlog.is_empty() || st.broken {
                st.draining = false;
                st.backlog = Vec::new();
                if st.closing {
                    st.release();
                }
                shared.room.notify_all();
                return;
            }
            let Some(file) = st.file.clone() else {
                st.draining = false;
                st.broken = true;
                shared.room.notify_all();
                return;
            };
            (file, std::mem::take(&mut st.backlog))
        };
        shared.room.notify_all();
        if let Err(e) = write_blocking(&file, &chunk) {
            tracing::debug!(pipe = %shared.label, error = %e, "pipe reader gone; dropping what was queued");
            let mut st = lock(&shared.state);
            st.broken = true;
        }
    }
}

/// Writes all of `data` to a non-blocking descriptor, waiting for room as needed.
fn write_blocking(file: &File, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match (&mut &*file).write(data) {
            Ok(0) => return Err(broken_pipe()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_ready(file, libc::POLLOUT, Duration::from_millis(500))?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads lines from a descriptor, a read at a time (the reactor polls it first). A line
/// longer than its limit is dropped (its bytes are skipped up to the next newline), so a
/// peer that never writes a newline cannot make the buffer grow without end.
pub struct LineReader {
    file: File,
    /// Always fully initialized; `start..filled` is read but not yet handed over.
    buf: Vec<u8>,
    start: usize,
    filled: usize,
    eof: bool,
    max_line: usize,
    /// Inside a line that was too long: skipping to its end.
    skipping: bool,
    /// Lines dropped since [`LineReader::take_dropped`] last asked.
    dropped: u64,
}

const READ_CHUNK: usize = 64 << 10;

/// The longest line handed over (a JSON-RPC message; large tool results fit).
pub const MAX_LINE: usize = 32 << 20;

impl LineReader {
    /// The descriptor, to poll.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    pub fn new(fd: OwnedFd) -> Self {
        Self::with_max_line(fd, MAX_LINE)
    }

    pub fn with_max_line(fd: OwnedFd, max_line: usize) -> Self {
        LineReader {
            file: File::from(fd),
            buf: vec![0; READ_CHUNK],
            start: 0,
            filled: 0,
            eof: false,
            max_line,
            skipping: false,
            dropped: 0,
        }
    }

    /// How many lines were dropped for being longer than the limit since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// Reads once (blocking only if the descriptor is blocking and has nothing yet), then
    /// calls `each` with every complete line it completed (newline included), in order. At end of input a last line without a newline is handed over too.
    /// `Ok(false)` once the input has ended.
    pub fn read_lines(&mut self, mut each: impl FnMut(&[u8])) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        // Keep the unfinished tail at the front, and room for a read behind it.
        if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.filled < READ_CHUNK / 4 {
            let bigger = self.buf.len() * 2;
            self.buf.resize(bigger, 0);
        }
        let have = self.filled;
        let n = loop {
            match self.file.read(&mut self.buf[have..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A non-blocking descriptor with nothing after all: the caller polls again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            self.eof = true;
            if self.filled > 0 && !self.skipping {
                each(&self.buf[..self.filled]);
            }
            self.filled = 0;
            return Ok(false);
        }
        self.filled += n;
        // Lines end in the part just read; the tail before it had none.
        let mut from = have;
        while let Some(i) = memchr::memchr(b'\n', &self.buf[from..self.filled]) {
            let end = from + i + 1;
            if self.skipping {
                self.skipping = false;
            } else if end - self.start > self.max_line {
                self.dropped += 1;
            } else {
                each(&self.buf[self.start..end]);
            }
            self.start = end;
            from = end;
        }
        if !self.skipping && self.filled - self.start > self.max_line {
            // Too long already: the rest of it is skipped as it comes.
            self.skipping = true;
            self.dropped += 1;
        }
        if self.skipping || self.start == self.filled {
            self.start = 0;
            self.filled = 0;
        }
        // A long line grew the buffer: give the memory back once it is through.
        if self.filled == 0 && self.buf.len() > 4 * READ_CHUNK {
            self.buf = vec![0; READ_CHUNK];
        }
        Ok(true)
    }
}

#[cfg(test)]
pub(in crate::instance) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A fresh pipe: (read end, write end).
    pub(in crate::instance) fn pipe() -> (OwnedFd, OwnedFd) {
        // std's pipe is close-on-exec on every platform (pipe2 where there is one).
        let (r, w) = std::io::pipe().unwrap();
        (OwnedFd::from(r), OwnedFd::from(w))
    }

    #[test]
    fn a_line_over_the_limit_is_dropped_and_the_next_one_kept() {
        let (r, w) = pipe();
        let mut w = File::from(w);
        let mut reader = LineReader::with_max_line(r, 100);
        let mut lines: Vec<Vec<u8>> = Vec::new();
        // A line that grows past the limit over several reads, then ends.
        w.write_all(b"short\n").unwrap();
        w.write_all(&[b'x'; 80]).unwrap();
        assert!(reader.read_lines(|l| lines.push(l.to_vec())).unwrap());
        w.write_all(&[b'x'; 80]).unwrap();
        assert!(reader.read_lines(|l| lines.push(l.to_vec())).unwrap());
        assert_eq!(reader.take_dropped(), 1);
        w.write_all(&[b'x'; 80]).unwrap();
        assert!(reader.read_lines(|l| lines.push(l.to_vec())).unwrap());
        w.write_all(b"xx\nnext\n").unwrap();
        assert!(reader.read_lines(|l| lines.push(l.to_vec())).unwrap());
        // A complete line over the limit in one read.
        let mut long = vec![b'y'; 150];
        long.extend_from_slice(b"\nlast\n");
        w.write_all(&long).unwrap();
        assert!(reader.read_lines(|l| lines.push(l.to_vec())).unwrap());
        assert_eq!(reader.take_dropped(), 1);
        assert_eq!(reader.take_dropped(), 0);
        assert_eq!(
            lines,
            vec![b"short\n".to_vec(), b"next\n".to_vec(), b"last\n".to_vec()]
        );
        assert!(
            reader.buf.len() <= 4 * READ_CHUNK,
            "the buffer stayed small"
        );
        // An unfinished over-long line at the end of input is not handed over.
        w.write_all(&[b'z'; 150]).unwrap();
        drop(w);
        while reader.read_lines(|l| lines.push(l.to_vec())).unwrap() {}
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn lines_are_split_across_reads_and_the_last_unterminated_line_is_kept() {
        let (r, w) = pipe();
        let mut w = File::from(w);
        let mut reader = LineReader::new(r);
        w.write_all(b"one\ntw").unwrap();
        let mut got = Vec::new();
        assert!(
            reader
                .read_lines(|l| got.push(String::from_utf8_lossy(l).into_owned()))
                .unwrap()
        );
        assert_eq!(got, ["one\n"]);
        w.write_all(b"o\nthree\nfour").unwrap();
        drop(w);
        while reader
            .read_lines(|l| got.push(String::from_utf8_lossy(l).into_owned()))
            .unwrap()
        {}
        assert_eq!(got, ["one\n", "two\n", "three\n", "four"]);
    }

    #[test]
    fn a_writer_never_blocks_on_a_full_pipe_and_keeps_the_order() {
        let (r, w) = pipe();
        let writer = PipeWriter::new(w, "test").unwrap();
        // Far more than a pipe holds (64 KiB), with nobody reading yet.
        let mut expected = Vec::new();
        for i in 0..20_000 {
            let line = format!("line {i:05} {}\n", "x".repeat(20));
            writer.write(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        writer.close();
        let mut got = Vec::new();
        File::from(r).read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes came out of order");
    }

    fn is_nonblocking(fd: &OwnedFd) -> bool {
        // SAFETY: F_GETFL on a descriptor we own.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        assert!(flags >= 0);
        flags & libc::O_NONBLOCK != 0
    }

    #[test]
    fn a_closed_writer_leaves_the_shared_descriptor_blocking_again() {
        let (_r, w) = pipe();
        let other = w.try_clone().unwrap(); // shares the open file, like a dup of stdout
        let writer = PipeWriter::new(w, "test").unwrap();
        assert!(is_nonblocking(&other));
        writer.write(b"x\n").unwrap();
        writer.close();
        assert!(!is_nonblocking(&other));
    }

    #[test]
    fn a_writer_fails_once_the_reader_is_gone() {
        let (r, w) = pipe();
        let writer = PipeWriter::new(w, "test").unwrap();
        drop(r);
        assert!(writer.write(b"hello\n").is_err());
        assert!(writer.write(b"again\n").is_err());
    }
}
