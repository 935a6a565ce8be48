"""The values the client hands out: results, events, the catalog and the server's status."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

from ._errors import JobFailed

__all__ = [
    "ExitReason",
    "OutputState",
    "ContainmentMode",
    "Terminal",
    "ReapedProcess",
    "OutputFile",
    "Result",
    "Queued",
    "Started",
    "Stdout",
    "Stderr",
    "OutputChunk",
    "Exited",
    "Event",
    "JobInfo",
    "Catalog",
    "Status",
    "Seconds",
]

#: A duration: seconds (`float`/`int`) or a `datetime.timedelta`.
Seconds = Union[float, int, timedelta]


class ExitReason(enum.IntEnum):
    """Why a job ended (`Exited.reason` in the proto)."""

    UNSPECIFIED = 0
    #: The job ended on its own, or through a signal the client sent.
    EXITED = 1
    #: Its `timeout` (or the catalog job's maximum) passed; it was killed.
    TIMED_OUT = 2
    #: It wrote more than the server's output limit; it was killed.
    OUTPUT_LIMIT = 3
    #: The memory limit killed it (cgroup mode).
    MEMORY_LIMIT = 4
    #: The server shut down.
    SHUTDOWN = 5


class OutputState(enum.IntEnum):
    """What became of a requested output file."""

    UNSPECIFIED = 0
    #: Sent back (its bytes are in `OutputFile.data` or at `OutputFile.saved_to`).
    SENT = 1
    #: A path that did not exist, or a pattern that matched nothing.
    MISSING = 2
    #: Over a size or count cap: not sent.
    TOO_LARGE = 3
    #: Not a regular file with a single link (directory, symlink, FIFO, device, hard link): never read.
    NOT_REGULAR = 4


class ContainmentMode(enum.IntEnum):
    """How the server contains jobs (`Status.containment`)."""

    UNSPECIFIED = 0
    #: One cgroup per job: everything a job starts dies with it.
    CGROUP = 1
    #: Process groups, session tracking and subreaper sweeps.
    PROCESS_GROUP = 2


@dataclass(frozen=True)
class Terminal:
    """Run the job under a pseudo-terminal of this size (`terminal=Terminal(...)`; `terminal=True` is the
    default 24 x 80). Its output then arrives as stdout only, `write()` types keys (0x03 is Ctrl-C) and
    `close_stdin()` types Ctrl-D once."""

    rows: int = 24
    cols: int = 80
    #: The terminal starts with echo off.
    no_echo: bool = False
    #: The job's `TERM`; empty means the server's default, `xterm-256color`.
    term: str = ""


@dataclass(frozen=True)
class ReapedProcess:
    """A process of the job's tree that the server reaped itself (an orphan or a leftover)."""

    pid: int
    #: Its `/proc/PID/comm`, read before it was reaped.
    name: str
    exit_code: Optional[int]
    signal: Optional[int]


@dataclass(frozen=True)
class OutputFile:
    """A requested output file (or pattern match) and what became of it."""

    #: Its path in the job's directory (for `MISSING`: the requested path or pattern).
    path: str
    state: OutputState
    #: Its size in bytes (sent, or too large to send).
    size: int
    #: Its permission bits, as the server sent them (0 when not sent).
    mode: int = 0
    #: Its content, when it was sent and kept in memory (no `output_dir`).
    data: Optional[bytes] = None
    #: Where it was written, when it was sent and `output_dir` was given.
    saved_to: Optional[Path] = None

    @property
    def sent(self) -> bool:
        """Whether the file came back."""
        return self.state == OutputState.SENT


@dataclass(frozen=True)
class Result:
    """How a job ended, what it wrote, and its output files.

    `stdout` and `stderr` hold the output the handle collected itself: everything, for `run()`; for a
    streamed job, what `wait()` read and what `expect()` left unconsumed, never the output already handed to
    you as `Stdout`/`Stderr` events.
    """

    #: The exit code, when the job exited on its own (else `None`).
    exit_code: Optional[int]
    #: The signal that killed the job (else `None`).
    signal: Optional[int]
    reason: ExitReason
    stdout: bytes
    stderr: bytes
    #: Wall-clock, user-CPU and system-CPU time of the job, in seconds.
    wall_time: float
    user_time: float
    system_time: float
    #: The job's peak memory (0: unknown; see the proto's comment).
    max_rss_bytes: int
    #: Processes of the job's tree that the server reaped itself.
    reaped: Tuple[ReapedProcess, ...]
    #: Every requested output path and every pattern match, by path.
    outputs: Mapping[str, OutputFile]
    #: The server's id of the job (as in its logs) and the worker's pid (0 if the job never started).
    job_id: str = ""
    pid: int = 0

    @property
    def returncode(self) -> int:
        """`subprocess`-style: the exit code, or minus the signal number."""
        if self.exit_code is not None:
            return self.exit_code
        return -(self.signal or 0)

    @property
    def ok(self) -> bool:
        """Whether the job exited with code 0."""
        return self.exit_code == 0

    @property
    def timed_out(self) -> bool:
        """Whether the job's `timeout` killed it."""
        return self.reason == ExitReason.TIMED_OUT

    def check(self) -> "Result":
        """Raises `JobFailed` unless the job exited with code 0; returns the result otherwise."""
        if not self.ok:
            raise JobFailed(self)
        return self

    def output(self, path: str) -> bytes:
        """The content of a sent output file (read back from disk when it was saved to `output_dir`).

        Raises `KeyError` for a path that was not requested or not sent."""
        file = self.outputs[path]
        if not file.sent:
            raise KeyError(f"{path}: {file.state.name}")
        if file.data is not None:
            return file.data
        if file.saved_to is not None:
            return file.saved_to.read_bytes()
        raise KeyError(path)


@dataclass(frozen=True)
class Queued:
    """The call waits for a worker slot; sent again whenever the position changes (1 = next)."""

    position: int


@dataclass(frozen=True)
class Started:
    """The job started: its server-side id and its worker's pid (also its session and process group)."""

    job_id: str
    pid: int


@dataclass(frozen=True)
class Stdout:
    """A chunk of the job's stdout (for a terminal job: all of its output)."""

    data: bytes


@dataclass(frozen=True)
class Stderr:
    """A chunk of the job's stderr."""

    data: bytes


@dataclass(frozen=True)
class OutputChunk:
    """A chunk (at most 64 KiB) of an output file, sent after the job's whole tree is gone."""

    path: str
    data: bytes
    #: The file's final chunk.
    last: bool
    mode: int


@dataclass(frozen=True)
class Exited:
    """The job ended: always the last event of a call that did not fail."""

    result: Result


@dataclass(frozen=True)
class Heartbeat:
    """Nothing happened for the call's heartbeat interval (`heartbeat_interval`): the call is alive. Also what
    an event this client does not know yet (from a newer server) is reported as."""

    #: Seconds since the server accepted the call (0 for an unknown event).
    elapsed: float


#: Any event of a job's stream.
Event = Union[Queued, Started, Stdout, Stderr, OutputChunk, Exited, Heartbeat]


@dataclass(frozen=True)
class JobInfo:
    """A job of the server's catalog."""

    name: str
    description: str
    command: Tuple[str, ...]
    accepts_args: bool
    #: Its longest run (also its default timeout), in seconds; `None` when unbounded.
    max_timeout: Optional[float]
    #: Whether it takes input and output files.
    accepts_files: bool
    #: Whether it may run under a terminal.
    terminal_allowed: bool


@dataclass(frozen=True)
class Catalog:
    """The server's catalog (`ListJobs`)."""

    jobs: Tuple[JobInfo, ...]
    raw_commands_allowed: bool
    by_name: Dict[str, JobInfo] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {job.name: job for job in self.jobs})

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def __getitem__(self, name: str) -> JobInfo:
        return self.by_name[name]


@dataclass(frozen=True)
class Status:
    """Pool occupancy and lifetime counters (`GetStatus`)."""

    #: Worker slots: at most this many jobs run at once.
    workers: int
    running: int
    queued: int
    queue_capacity: int
    #: Jobs whose worker was spawned.
    started_total: int
    #: Started jobs that ended, for any reason.
    finished_total: int
    #: Calls (queued or running) ended by their client: cancel, disconnect or deadline.
    cancelled_total: int
    timed_out_total: int
    #: Calls refused admission (queue full, too many uploads or terminals, draining).
    rejected_total: int
    #: Processes other than workers that the server reaped.
    orphans_reaped_total: int
    containment: ContainmentMode
    containment_detail: str
