//! One thread that waits on every relayed pipe at once with poll(2): the client's stdin and
//! each child's stdout. Under load one wake-up serves whatever is ready on all of them (a
//! request in and several answers out), instead of a thread per pipe waking for each line.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};

/// A pipe the reactor reads.
pub trait Source: Send {
    /// The descriptor to wait on (readable or hung up).
    fn fd(&self) -> RawFd;
    /// Not to be read for now (whoever takes its lines is behind); asked again every 10 ms.
    fn paused(&self) -> bool {
        false
    }
    /// The descriptor is ready: read once and handle what came, without blocking. `false`
    /// once the source has ended (it is then dropped).
    fn ready(&mut self) -> bool;
}

/// The handle to the reactor thread: add sources to it from anywhere.
pub struct Reactor {
    add: Mutex<Sender<Box<dyn Source>>>,
    /// Written to wake the thread to take new sources (or to end).
    wake: OwnedFd,
}

/// A descriptor the thread polls and one that makes it readable: an eventfd for both on
/// Linux; elsewhere (no eventfd) the two ends of a non-blocking pipe.
#[cfg(target_os = "linux")]
fn wake_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let other = fd.try_clone()?;
    Ok((fd, other))
}

#[cfg(not(target_os = "linux"))]
fn wake_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = io::pipe()?;
    let (read, write) = (OwnedFd::from(read), OwnedFd::from(write));
    super::pipe::set_nonblocking(&read, true)?;
    super::pipe::set_nonblocking(&write, true)?;
    Ok((read, write))
}

fn signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a local u64 to a descriptor we hold open (an eventfd adds
    // one to its count; a full pipe refuses, and is readable already).
    unsafe {
        libc::write(
            fd.as_raw_fd(),
            (&one as *const u64).cast::<libc::c_void>(),
            std::mem::size_of::<u64>(),
        );
    }
}

fn clear(fd: &OwnedFd) {
    let mut buf = [0u8; 64];
    // SAFETY: reads into a local buffer of the length given from a non-blocking descriptor we
    // hold open, until it has nothing more (an eventfd gives its count once).
    while unsafe {
        libc::read(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast::<libc::c_void>(),
            buf.len(),
        )
    } > 0
    {}
}

impl Reactor {
    /// Starts the reactor thread.
    pub fn start() -> io::Result<Reactor> {
        let (theirs, wake) = wake_pair()?;
        let (add, taken) = mpsc::channel();
        std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || run(&theirs, &taken))?;
        Ok(Reactor {
            add: Mutex::new(add),
            wake,
        })
    }

    /// Hands a source to the reactor thread.
    pub fn add(&self, source: Box<dyn Source>) -> io::Result<()> {
        self.add
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(source)
            .map_err(|_| io::Error::other("the relay thread has ended"))?;
        signal(&self.wake);
        Ok(())
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        // The thread sees the channel closed and ends once its sources have.
        signal(&self.wake);
    }
}

fn run(wake: &OwnedFd, taken: &Receiver<Box<dyn Source>>) {
    super::pipe::relay_thread_policy();
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut open = true;
    loop {
        fds.clear();
        fds.push(libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let mut any_paused = false;
        fds.extend(sources.iter().map(|s| {
            // A negative descriptor is skipped by poll.
            let fd = if s.paused() {
                any_paused = true;
                -1
            } else {
                s.fd()
            };
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            }
        }));
        let timeout = if any_paused { 10 } else { -1 };
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %e, "the relay cannot wait on its pipes; relaying ends");
            return;
        }
        // Ready sources first, from the back so that removing one moves only sources already
        // handled (or added after the poll) into its place.
        let polled = fds.len() - 1;
        for i in (0..polled).rev() {
            if fds[i + 1].revents != 0 && !sources[i].ready() {
                sources.swap_remove(i);
            }
        }
        if fds[0].revents != 0 {
            clear(wake);
            loop {
                match taken.try_recv() {
                    Ok(s) => sources.push(s),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        if !open && sources.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::instance::child::pipe::LineReader;
    use crate::instance::child::pipe::tests::pipe;
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Collects the lines of one pipe.
    struct Lines {
        reader: LineReader,
        got: Arc<Mutex<Vec<String>>>,
        paused: Arc<AtomicBool>,
    }

    impl Source for Lines {
        fn fd(&self) -> RawFd {
            self.reader.fd()
        }
        fn paused(&self) -> bool {
            self.paused.load(Ordering::SeqCst)
        }
        fn ready(&mut self) -> bool {
            let got = &self.got;
            let more = self.reader.read_lines(|l| {
                got.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(l).trim_end().to_string());
            });
            more.unwrap_or(false)
        }
    }

    /// A new pipe whose lines the reactor collects into `got`: returns its write end.
    fn add_pipe(
        reactor: &Reactor,
        got: &Arc<Mutex<Vec<String>>>,
        paused: &Arc<AtomicBool>,
    ) -> std::fs::File {
        let (r, w) = pipe();
        reactor
            .add(Box::new(Lines {
                reader: LineReader::new(r),
                got: got.clone(),
                paused: paused.clone(),
            }))
            .unwrap();
        std::fs::File::from(w)
    }

    /// Waits up to 2 s for `got` to hold `n` lines.
    fn wait_for_lines(got: &Mutex<Vec<String>>, n: usize) {
        for _ in 0..200 {
            if got.lock().unwrap().len() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn one_thread_serves_every_pipe_and_drops_ended_ones() {
        let reactor = Reactor::start().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicBool::new(false));
        let mut writers: Vec<_> = (0..3).map(|_| add_pipe(&reactor, &got, &running)).collect();
        for (i, w) in writers.iter_mut().enumerate() {
            writeln!(w, "from {i}").unwrap();
        }
        // One pipe ends; the others still work.
        drop(writers.remove(0));
        writeln!(writers[1], "later").unwrap();
        wait_for_lines(&got, 4);
        let mut all = got.lock().unwrap().clone();
        all.sort();
        assert_eq!(all, ["from 0", "from 1", "from 2", "later"]);
    }

    #[test]
    fn a_paused_source_is_not_read_until_it_resumes() {
        let reactor = Reactor::start().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let paused = Arc::new(AtomicBool::new(true));
        let mut w = add_pipe(&reactor, &got, &paused);
        writeln!(w, "held").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(got.lock().unwrap().is_empty(), "read while paused");
        paused.store(false, Ordering::SeqCst);
        wait_for_lines(&got, 1);
        assert_eq!(*got.lock().unwrap(), ["held"]);
    }
}
