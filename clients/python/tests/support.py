"""Real forkpool servers for the tests (the binary from `FORKPOOL_BIN`, default
`<repo>/target/debug/forkpool`) on ephemeral loopback ports, and helpers that look at processes through /proc."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

import pytest

REPO = Path(__file__).resolve().parents[3]
GUARDIAN = "forkpool-guard"
#: A warm sandbox: forkpool's init, ready before any job (it is `forkpool-init` once it runs one).
WARM = "forkpool-warm"


def forkpool_bin() -> str:
    path = os.environ.get("FORKPOOL_BIN") or str(REPO / "target" / "debug" / "forkpool")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no forkpool binary at {path} (build it, or set FORKPOOL_BIN)")
    return path


class Server:
    """A forkpool server process: `serve --listen 127.0.0.1:0 ARGS`, its port read from its first line."""

    def __init__(self, *args: str, config: Optional[str] = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="forkpool-pytest-"))
        argv = [forkpool_bin(), "serve", "--listen", "127.0.0.1:0", "--drain-timeout", "1s", *args]
        if config is not None:
            (self.dir / "config.toml").write_text(config)
            argv += ["--config", str(self.dir / "config.toml")]
        self.log = self.dir / "server.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("forkpool listening on "):
            log = self.log.read_text(errors="replace")[-3000:]
            self.stop()
            raise RuntimeError(f"the server did not start: {line!r}\n{log}")
        self.port = int(line.rsplit(":", 1)[1])
        self.address = f"127.0.0.1:{self.port}"
        self.pid = self.proc.pid

    def children(self) -> List["Proc"]:
        """The server's children, its guardian and idle warm sandboxes aside (workers, or zombies of them)."""
        return [p for p in processes() if p.ppid == self.pid and p.comm not in (GUARDIAN, WARM)]

    def zombies(self) -> List["Proc"]:
        return [p for p in self.children() if p.state == "Z"]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """SIGTERM (a 1 s drain), SIGKILL if it lingers; its guardian goes with it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Proc:
    """One line of /proc: pid, parent, state, command name."""

    def __init__(self, pid: int, ppid: int, state: str, comm: str) -> None:
        self.pid, self.ppid, self.state, self.comm = pid, ppid, state, comm

    def __repr__(self) -> str:
        return f"Proc(pid={self.pid}, ppid={self.ppid}, state={self.state}, comm={self.comm!r})"


def processes() -> List[Proc]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        found.append(Proc(int(entry), int(fields[1]), fields[0], comm))
    return found


def marked(marker: str) -> List[int]:
    """Pids of the processes whose environment has `FORKPOOL_TEST_MARKER=marker` (a job's whole tree)."""
    needle = f"FORKPOOL_TEST_MARKER={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            pids.append(int(entry))
    return pids


def alive(pids: Sequence[int]) -> List[int]:
    """Those of `pids` that still exist (zombies included)."""
    return [p for p in pids if os.path.exists(f"/proc/{p}")]


def wait_until(condition: Callable[[], object], timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def new_marker() -> str:
    return uuid.uuid4().hex


#: A raw command whose tree is 3 processes (sh and two sleeps), which prints "ready" once both run.
TREE = ["sh", "-c", "sleep 30 & sleep 30 & echo ready; wait"]


def wait_for_tree(marker: str, count: int = 3, timeout: float = 10.0) -> List[int]:
    """Waits until the marked tree has `count` processes and returns their pids."""
    pids: List[int] = []

    def full() -> bool:
        nonlocal pids
        pids = marked(marker)
        return len(pids) >= count

    assert wait_until(full, timeout), f"the job's tree never reached {count} processes: {pids}"
    return pids


def assert_gone(pids: Sequence[int], within: float = 1.0) -> None:
    """Every one of `pids` is gone (not even a zombie) within `within` seconds."""
    assert wait_until(lambda: not alive(pids), within), f"still alive after {within} s: {alive(pids)}"


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shared_dir() -> Path:
    """A fresh directory every user can write to: jobs run as users of their own (dynamic users), which
    cannot reach pytest's private tmp_path; not under /tmp, of which each job has a private one."""
    path = Path(tempfile.mkdtemp(prefix="forkpool-shared-", dir="/var/tmp"))
    path.chmod(0o777)
    atexit.register(shutil.rmtree, path, True)
    return path
