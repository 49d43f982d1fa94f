//! The controlling terminal (`/dev/tty`), where a person types the overseer's name and
//! passphrase. Never stdin (a pipe the model can fill), never an argument or an environment
//! variable (both visible to other processes and kept in shell history).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;

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

    /// Asks for a secret: not echoed, read from the terminal (rpassword turns echo off on
    /// `/dev/tty` and restores it).
    pub fn secret(&mut self, prompt: &str) -> anyhow::Result<String> {
        let config = rpassword::ConfigBuilder::new()
            .input_file_path(TTY)
            .output_file_path(TTY)
            .build();
        let value = rpassword::prompt_password_with_config(prompt, config)
            .map_err(|e| anyhow::anyhow!("cannot read from the terminal: {e}"))?;
        Ok(value)
    }
}
