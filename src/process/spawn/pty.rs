//! Pseudo-terminals for terminal jobs. The pair is opened and set up here, in the spawner thread before the
//! clone (window size, echo, UTF-8 input), so the child only has to make the slave its controlling terminal
//! (one `ioctl`) and its stdio. Both ends are close-on-exec: the server's master never reaches a job, and the
//! slave reaches only the job it is made for (through `dup2` onto 0, 1 and 2).

use std::os::fd::OwnedFd;

use nix::errno::Errno;
use rustix::pty::{OpenptFlags, grantpt, ioctl_tiocgptpeer, openpt, ptsname, unlockpt};
use rustix::termios::{InputModes, LocalModes, OptionalActions, Winsize, tcgetattr, tcsetattr, tcsetwinsize};

/// How a job's terminal is at exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TerminalSpec {
    /// Window rows.
    pub(crate) rows: u16,
    /// Window columns.
    pub(crate) cols: u16,
    /// Whether input is echoed.
    pub(crate) echo: bool,
}

/// A new pseudo-terminal pair: the server keeps the master, the job gets the slave.
pub(super) struct Pair {
    pub(super) master: OwnedFd,
    pub(super) slave: OwnedFd,
}

/// Opens and sets up a pair whose slave belongs to `owner` (the job's uid, when it runs as another user: as
/// `login` and `sshd` do, so the job can reopen its terminal by name). Out of ptys
/// (`/proc/sys/kernel/pty/max`) is `ENOSPC`, out of fds `EMFILE`.
pub(super) fn open(spec: TerminalSpec, owner: Option<u32>) -> Result<Pair, Errno> {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = openpt(flags).map_err(errno)?;
    grantpt(&master).map_err(errno)?;
    unlockpt(&master).map_err(errno)?;
    // TIOCGPTPEER (Linux 4.13) opens the slave of this very master, whatever is mounted at /dev/pts; the path
    // is the fallback.
    let slave = match ioctl_tiocgptpeer(&master, flags) {
        Ok(slave) => slave,
        Err(rustix::io::Errno::NOTTY | rustix::io::Errno::INVAL) => {
            let name = ptsname(&master, Vec::new()).map_err(errno)?;
            let oflags = rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC;
            rustix::fs::open(name.as_c_str(), oflags, rustix::fs::Mode::empty()).map_err(errno)?
        }
        Err(e) => return Err(errno(e)),
    };
    if let Some(uid) = owner {
        rustix::fs::fchown(&slave, Some(rustix::fs::Uid::from_raw(uid)), None).map_err(errno)?;
    }
    let mut termios = tcgetattr(&slave).map_err(errno)?;
    // Jobs run with LANG=C.UTF-8: let erase remove a whole multi-byte character.
    termios.input_modes |= InputModes::IUTF8;
    if !spec.echo {
        termios.local_modes.remove(LocalModes::ECHO | LocalModes::ECHOE | LocalModes::ECHOK | LocalModes::ECHONL);
    }
    tcsetattr(&slave, OptionalActions::Now, &termios).map_err(errno)?;
    tcsetwinsize(&master, Winsize { ws_row: spec.rows, ws_col: spec.cols, ws_xpixel: 0, ws_ypixel: 0 })
        .map_err(errno)?;
    Ok(Pair { master, slave })
}

fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}
