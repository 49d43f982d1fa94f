//! The controlling terminal (`/dev/tty`), where a person types the overseer's name and
//! passphrase. Never stdin (a pipe the model can fill), never an argument or an environment
//! variable (both visible to other processes and kept in shell history).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};

const TTY: &str = "/dev/tty";

/// An open controlling terminal, in the foreground of which this process runs.
pub struct Tty {
    file: File,
}

impl Tty {
    /// Opens the controlling terminal. Fails when the process has none (started by an MCP
    /// client, a child server, a pipeline) or runs in the background of it: a process group
    /// that is not the terminal's foreground one is not the person typing at it.
    pub fn open(why: &str) -> anyhow::Result<Tty> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(TTY)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{why}, typed on a terminal ({TTY}), and this process has no terminal ({e}): \
run the command yourself in a terminal"
                )
            })?;
        // SAFETY: tcgetpgrp reads the open descriptor's foreground group; getpgrp cannot fail.
        let (foreground, own) = unsafe { (libc::tcgetpgrp(file.as_raw_fd()), libc::getpgrp()) };
        if foreground != own {
            anyhow::bail!(
                "{why}, typed on a terminal, and this process runs in the background of its \
terminal: run the command yourself in the foreground"
            );
        }
        Ok(Tty { file })
    }

    /// Writes text to the terminal.
    pub fn say(&mut self, text: &str) -> anyhow::Result<()> {
        self.file.write_all(text.as_bytes())?;
        self.file.flush()?;
        Ok(())
    }

    /// Asks for one line, shown as it is typed. Reads byte by byte, so nothing typed after the
    /// line is swallowed.
    pub fn ask(&mut self, prompt: &str) -> anyhow::Result<String> {
        self.say(prompt)?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match self.file.read(&mut byte)? {
                0 => break,
                _ if byte[0] == b'\n' => break,
                _ => line.push(byte[0]),
            }
            if line.len() > 4096 {
                anyhow::bail!("the line typed is longer than 4096 bytes");
            }
        }
        let line = String::from_utf8(line)
            .map_err(|_| anyhow::anyhow!("what was typed is not UTF-8 text"))?;
        Ok(line.trim_end_matches('\r').trim().to_string())
    }

    /// Asks for a secret: not echoed, read from the terminal.
    pub fn secret(&mut self, prompt: &str) -> anyhow::Result<String> {
        read_hidden(TTY, prompt, Some(TTY))
    }
}

/// Reads one line typed on the terminal at `input` without echo, after writing `prompt` (to the
/// terminal at `output`, or to stderr when `output` is `None`). rpassword turns echo off and
/// restores it when it returns; an interrupt (Ctrl-C, which rpassword answers by raising
/// SIGINT) or a SIGTERM, SIGHUP or SIGQUIT while it reads would end the process with echo
/// still off, so those restore the terminal first ([`RestoreOnSignal`]).
pub fn read_hidden(input: &str, prompt: &str, output: Option<&str>) -> anyhow::Result<String> {
    let builder = rpassword::ConfigBuilder::new().input_file_path(input);
    let config = match output {
        Some(path) => builder.output_file_path(path),
        None => builder.output_writer(std::io::stderr()),
    }
    .build();
    let _restore = RestoreOnSignal::arm(input)?;
    rpassword::prompt_password_with_config(prompt, config)
        .map_err(|e| anyhow::anyhow!("cannot read from the terminal: {e}"))
}

/// The signals that end a process at a prompt: the person's Ctrl-C and Ctrl-\\, a closed
/// terminal, a `kill`.
const ENDING_SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// The terminal's settings before the first hidden prompt (echo on), and a descriptor of it,
/// for the signal handler: it can only read what is already in place.
static SAVED_TERMIOS: OnceLock<libc::termios> = OnceLock::new();
static SAVED_FD: AtomicI32 = AtomicI32::new(-1);

/// While alive, the ending signals first put the terminal back as it was, then end the
/// process as they would have (so the shell still sees "killed by SIGINT"). Dropping it puts
/// back the handlers that were there before. Written on `sigaction` rather than with
/// signal-hook, whose handlers cannot be removed again (after unregistering, a signal is
/// ignored instead of ending the process).
struct RestoreOnSignal {
    terminal: Option<File>,
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl RestoreOnSignal {
    fn arm(input: &str) -> anyhow::Result<Self> {
        let Ok(terminal) = OpenOptions::new().read(true).open(input) else {
            // rpassword will fail to open it too, and say so.
            return Ok(RestoreOnSignal {
                terminal: None,
                previous: Vec::new(),
            });
        };
        let fd = terminal.as_raw_fd();
        // SAFETY: termios is a plain C struct that tcgetattr fills in; on failure (not a
        // terminal) it is discarded.
        let mut now: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut now) } != 0 {
            return Ok(RestoreOnSignal {
                terminal: None,
                previous: Vec::new(),
            });
        }
        SAVED_TERMIOS.get_or_init(|| now);
        SAVED_FD.store(fd, Ordering::SeqCst);
        let mut previous = Vec::new();
        for signal in ENDING_SIGNALS {
            // SAFETY: an all-zero sigaction is valid; the handler only makes async-signal-safe
            // calls (tcsetattr, signal, raise) on data set before it was installed.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = restore_terminal_and_die as *const () as libc::sighandler_t;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &action, &mut old) == 0 {
                    previous.push((signal, old));
                }
            }
        }
        Ok(RestoreOnSignal {
            terminal: Some(terminal),
            previous,
        })
    }
}

impl Drop for RestoreOnSignal {
    fn drop(&mut self) {
        for (signal, old) in &self.previous {
            // SAFETY: puts back the action sigaction reported for this signal.
            unsafe { libc::sigaction(*signal, old, std::ptr::null_mut()) };
        }
        if self.terminal.take().is_some() {
            SAVED_FD.store(-1, Ordering::SeqCst);
        }
    }
}

extern "C" fn restore_terminal_and_die(signal: libc::c_int) {
    let fd = SAVED_FD.load(Ordering::SeqCst);
    if fd >= 0
        && let Some(saved) = SAVED_TERMIOS.get()
    {
        // SAFETY: tcsetattr, signal and raise are async-signal-safe; `saved` was written before
        // this handler was installed and is never written again.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, saved) };
    }
    // The signal stays blocked until this handler returns; then the default action ends the
    // process, exactly as it would have without the handler.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}
