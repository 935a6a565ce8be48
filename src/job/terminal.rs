//! A terminal job's pty master, as the job's supervisor uses it: window size changes and the EOF key. The
//! pair itself is opened by the spawner ([`crate::process::spawn`]); its output and input go through the
//! same pumps as pipes ([`super::stdio`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::termios::{SpecialCodeIndex, Winsize, tcgetattr, tcsetwinsize};

use super::stdio::Watched;

/// The server's handle on a terminal job's pty master.
#[derive(Debug, Clone)]
pub(crate) struct Terminal {
    master: Watched,
}

impl Terminal {
    /// A handle on `master`.
    pub(crate) fn new(master: Watched) -> Self {
        Terminal { master }
    }

    /// Sets the window size; the kernel sends SIGWINCH to the terminal's foreground process group.
    pub(crate) fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        let size = Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        Ok(tcsetwinsize(self.master.get_ref(), size)?)
    }

    /// The terminal's EOF character as the job has it set now (`None` if the job disabled it, or the terminal
    /// is gone). On Linux the master reads the pair's settings.
    pub(crate) fn eof_char(&self) -> Option<u8> {
        let termios = tcgetattr(self.master.get_ref()).ok()?;
        // 0 is `_POSIX_VDISABLE`: no EOF key.
        Some(termios.special_codes[SpecialCodeIndex::VEOF]).filter(|c| *c != 0)
    }
}

/// The server's count of terminal jobs (queued or running), capped by `max_terminals`.
#[derive(Debug)]
pub(crate) struct TerminalCount {
    in_use: AtomicUsize,
    max: usize,
}

/// A terminal job's place in the count, from admission to the end of its call.
#[derive(Debug)]
pub(crate) struct TerminalPermit(Arc<TerminalCount>);

impl TerminalCount {
    /// At most `max` terminal jobs at once.
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(TerminalCount { in_use: AtomicUsize::new(0), max })
    }

    /// The cap.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// A permit, or `None` when `max` terminal jobs hold one already.
    pub(crate) fn acquire(self: &Arc<Self>) -> Option<TerminalPermit> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| TerminalPermit(Arc::clone(self)))
    }
}

impl Drop for TerminalPermit {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}
