//! `forkpool run -t`: the local terminal in raw mode while the job runs (keys go to the job unchanged, so
//! Ctrl-C interrupts the job's foreground program, not this client), its size sent at start and on every
//! SIGWINCH, and its settings restored on every way out: the job's exit, an error, a signal to this client,
//! even a panic (the hook restores them before the process aborts).

use std::io::IsTerminal;
use std::sync::Mutex;

use anyhow::{Context, bail};
use rustix::termios::{OptionalActions, Termios, tcgetattr, tcgetwinsize, tcsetattr};

/// The settings to restore, for the panic hook (a panic aborts: no destructor runs).
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// The local terminal in raw mode; dropping this restores it.
#[derive(Debug)]
pub(super) struct RawMode(());

/// Fails with a clear message when stdin is not a terminal.
pub(super) fn require() -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("-t needs a terminal, and stdin is not one (run without -t to pipe input to the job)");
    }
    Ok(())
}

impl RawMode {
    /// Puts the terminal on stdin into raw mode.
    pub(super) fn enter() -> anyhow::Result<RawMode> {
        require()?;
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("cannot read the terminal's settings")?;
        let mut raw = saved.clone();
        raw.make_raw();
        *SAVED.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(saved);
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        // Set after the hook: from here on, every way out restores.
        tcsetattr(&stdin, OptionalActions::Drain, &raw).context("cannot put the terminal into raw mode")?;
        Ok(RawMode(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Restores the saved settings, once.
fn restore() {
    let saved = SAVED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    if let Some(saved) = saved {
        // At once: draining could wait on a stalled terminal.
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &saved);
    }
}

/// The local terminal's size as `(rows, cols)`, if it has one.
pub(super) fn window_size() -> Option<(u32, u32)> {
    let size = tcgetwinsize(std::io::stdin()).ok()?;
    (size.ws_row > 0 && size.ws_col > 0).then(|| (u32::from(size.ws_row), u32::from(size.ws_col)))
}
