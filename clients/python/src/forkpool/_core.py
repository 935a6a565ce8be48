"""What the synchronous and the asyncio client share and that does no I/O of its own: building the `start`
message and the input-file uploads, turning responses into events and a `Result`, writing output files, and
matching `expect()` patterns."""

from __future__ import annotations

import os
import re
import signal as signal_module
import tempfile
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import (
    IO,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Pattern,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
    cast,
)

import grpc
from google.protobuf import duration_pb2

from ._errors import Cancelled, ForkpoolError, ProtocolError, from_rpc_error
from ._proto import forkpool_pb2 as pb
from ._types import (
    Catalog,
    ContainmentMode,
    Event,
    ExitReason,
    Exited,
    Heartbeat,
    JobInfo,
    OutputChunk,
    OutputFile,
    OutputState,
    Queued,
    ReapedProcess,
    Result,
    Seconds,
    Started,
    Status,
    Stderr,
    Stdout,
    Terminal,
)

#: Bytes of stdin per `stdin` message.
STDIN_CHUNK = 64 * 1024
#: Bytes per `input` chunk of an uploaded file (well under the server's default 4 MiB message limit).
UPLOAD_CHUNK = 512 * 1024
#: Input files up to this size travel inline, inside the `start` message, as long as all inline content
#: stays within `INLINE_TOTAL` (the `start` message must stay well under the server's message limit).
INLINE_MAX = 64 * 1024
INLINE_TOTAL = 1024 * 1024
#: Stdin bytes a handle lets wait to be sent before `write()` (or the stdin feeder) blocks.
STDIN_BUFFER = 1024 * 1024
#: Events a handle holds that nobody has read yet, before it stops reading from the server (back-pressure).
EVENT_BUFFER = 32

#: An input file's content: the bytes, or the path of a local file (streamed from disk as it is sent).
InputSource = Union[bytes, str, "os.PathLike[str]"]
#: A pattern for `expect()`: a regular expression as bytes or text (UTF-8), or a compiled one.
ExpectPattern = Union[bytes, str, Pattern[bytes]]
#: A signal for `signal()`: a number, a `signal.Signals`, or a name such as `"TERM"` or `"SIGTERM"`.
SignalLike = Union[int, str, signal_module.Signals]

E = TypeVar("E", ExitReason, OutputState, ContainmentMode)

_SIGNALS = {
    1: pb.SIGNAL_HUP,
    2: pb.SIGNAL_INT,
    3: pb.SIGNAL_QUIT,
    9: pb.SIGNAL_KILL,
    10: pb.SIGNAL_USR1,
    12: pb.SIGNAL_USR2,
    15: pb.SIGNAL_TERM,
}


def seconds(value: Optional[Seconds]) -> Optional[float]:
    """A duration argument as float seconds."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def to_duration(value: Seconds) -> duration_pb2.Duration:
    """A duration argument as a protobuf `Duration`."""
    total = seconds(value)
    assert total is not None
    if total < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    nanos = round(total * 1e9)
    return duration_pb2.Duration(seconds=nanos // 1_000_000_000, nanos=nanos % 1_000_000_000)


def from_duration(value: duration_pb2.Duration) -> float:
    """A protobuf `Duration` as float seconds."""
    return value.seconds + value.nanos / 1e9


def enum_value(kind: Type[E], value: int) -> E:
    """An enum member, or `UNSPECIFIED` for a value this client does not know (a newer server)."""
    try:
        return kind(value)
    except ValueError:
        return kind(0)


def signal_message(sig: SignalLike) -> pb.ExecuteRequest:
    """The `signal` request for `sig`; only the signals the contract carries are accepted."""
    if isinstance(sig, str):
        name = sig.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            number = int(signal_module.Signals[name])
        except KeyError:
            raise ValueError(f"unknown signal {sig!r}") from None
    else:
        number = int(sig)
    if number not in _SIGNALS:
        allowed = ", ".join(signal_module.Signals(n).name for n in sorted(_SIGNALS))
        raise ValueError(f"signal {sig!r} cannot be sent to a job (allowed: {allowed})")
    return pb.ExecuteRequest(signal=pb.SendSignal(signal=_SIGNALS[number]))


def stdin_messages(data: Union[bytes, str]) -> List[pb.ExecuteRequest]:
    """`stdin` requests carrying `data` (text is UTF-8), in chunks the server takes."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    return [pb.ExecuteRequest(stdin=raw[i : i + STDIN_CHUNK]) for i in range(0, len(raw), STDIN_CHUNK)]


def resize_message(rows: int, cols: int) -> pb.ExecuteRequest:
    """The `resize` request (each dimension 1 to 65535; the server checks, and ends the call otherwise)."""
    return pb.ExecuteRequest(resize=pb.Resize(rows=rows, cols=cols))


CLOSE_STDIN = pb.ExecuteRequest(close_stdin=pb.CloseStdin())


@dataclass(frozen=True)
class Upload:
    """An input file sent as `input` chunks after the `start` message."""

    path: str
    size: int
    data: Optional[bytes] = None
    local: Optional[Path] = None

    def chunks(self) -> Iterator[pb.ExecuteRequest]:
        """Its `input` requests; a local file is read lazily, one chunk at a time, and exactly `size` bytes
        of it are sent (a file that shrank meanwhile is an error)."""
        if self.size == 0:
            return
        if self.data is not None:
            for offset in range(0, self.size, UPLOAD_CHUNK):
                piece = self.data[offset : offset + UPLOAD_CHUNK]
                yield self._chunk(piece, offset + len(piece) >= self.size)
            return
        assert self.local is not None
        with open(self.local, "rb") as f:
            sent = 0
            while sent < self.size:
                piece = f.read(min(UPLOAD_CHUNK, self.size - sent))
                if not piece:
                    raise ForkpoolError(f"{self.local}: shrank to {sent} bytes while being sent ({self.size} declared)")
                sent += len(piece)
                yield self._chunk(piece, sent >= self.size)

    def _chunk(self, data: bytes, last: bool) -> pb.ExecuteRequest:
        return pb.ExecuteRequest(input=pb.FileChunk(path=self.path, data=data, last=last))


@dataclass(frozen=True)
class Plan:
    """A job to start: its `start` message and the uploads that follow it."""

    start: pb.StartJob
    uploads: Tuple[Upload, ...]


def plan(
    job: Optional[str],
    command: Optional[Sequence[str]],
    args: Sequence[str],
    env: Optional[Mapping[str, str]],
    timeout: Optional[Seconds],
    kill_grace: Optional[Seconds],
    terminal: Union[bool, Terminal, None],
    inputs: Optional[Mapping[str, InputSource]],
    outputs: Sequence[str],
) -> Plan:
    """Checks the arguments of `run()`/`start()` that only the client can check and builds the request."""
    if (job is None) == (command is None):
        raise ValueError("give either job= (a catalog job) or command= (a raw argv), not both or neither")
    if isinstance(command, str) or isinstance(args, str) or isinstance(outputs, str):
        raise TypeError("command, args and outputs are sequences of strings, not one string")
    start = pb.StartJob(args=list(args), outputs=list(outputs))
    if job is not None:
        start.job = job
    if command is not None:
        start.command.extend(command)
    if env:
        start.env.update(env)
    if timeout is not None:
        start.timeout.CopyFrom(to_duration(timeout))
    if kill_grace is not None:
        start.kill_grace.CopyFrom(to_duration(kill_grace))
    if terminal is not None and terminal is not False:
        t = Terminal() if terminal is True else terminal
        start.terminal.CopyFrom(pb.Terminal(rows=t.rows, cols=t.cols, no_echo=t.no_echo, term=t.term))
    uploads: List[Upload] = []
    inline = 0
    for remote, source in (inputs or {}).items():
        if isinstance(source, (bytes, bytearray, memoryview)):
            content = bytes(source)
            if len(content) <= INLINE_MAX and inline + len(content) <= INLINE_TOTAL:
                inline += len(content)
                start.inputs.append(pb.InputFile(path=remote, size=len(content), content=content))
            else:
                start.inputs.append(pb.InputFile(path=remote, size=len(content)))
                uploads.append(Upload(remote, len(content), data=content))
        else:
            local = Path(source)
            info = local.stat()  # fails here, with the local path named, rather than mid-call
            if not local.is_file():
                raise IsADirectoryError(f"{local}: an input file must be a regular file")
            mode = info.st_mode & 0o7777
            start.inputs.append(pb.InputFile(path=remote, size=info.st_size, mode=mode))
            uploads.append(Upload(remote, info.st_size, local=local))
    return Plan(start, tuple(uploads))


def read_chunks(source: IO[bytes]) -> Iterator[bytes]:
    """A binary file object read in `STDIN_CHUNK` pieces, as they come (a pipe is not read to its end first)."""
    read1 = getattr(source, "read1", None)
    while True:
        data = read1(STDIN_CHUNK) if read1 is not None else source.read(STDIN_CHUNK)
        if isinstance(data, str):
            data = data.encode()
        if not data:
            return
        yield data


def sync_chunks(stdin: Union[bytes, str, IO[bytes], Iterable[bytes]]) -> Iterator[bytes]:
    """The chunks of a synchronous stdin source: bytes, text (UTF-8), a binary file, or an iterable of bytes."""
    if isinstance(stdin, str):
        stdin = stdin.encode()
    if isinstance(stdin, (bytes, bytearray, memoryview)):
        raw = bytes(stdin)
        for i in range(0, len(raw), STDIN_CHUNK):
            yield raw[i : i + STDIN_CHUNK]
        return
    if hasattr(stdin, "read"):
        yield from read_chunks(cast("IO[bytes]", stdin))
        return
    for chunk in cast("Iterable[Union[bytes, str]]", stdin):
        if isinstance(chunk, str):
            chunk = chunk.encode()
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"stdin chunks must be bytes, not {type(chunk).__name__}")
        raw = bytes(chunk)
        for i in range(0, len(raw), STDIN_CHUNK):
            yield raw[i : i + STDIN_CHUNK]


class _Sink:
    """An output file being received: in memory, or into a temporary file beside its destination."""

    def __init__(self, destination: Optional[Path]) -> None:
        self.memory: Optional[bytearray] = bytearray() if destination is None else None
        self.destination = destination
        self.file: Optional[IO[bytes]] = None
        if destination is not None:
            destination.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
            self.temp = Path(temp)
            self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        if self.memory is not None:
            self.memory += data
        else:
            assert self.file is not None
            self.file.write(data)

    def finish(self, mode: int) -> Tuple[Optional[bytes], Optional[Path]]:
        if self.memory is not None:
            return bytes(self.memory), None
        assert self.file is not None and self.destination is not None
        self.file.close()
        os.chmod(self.temp, mode or 0o644)
        os.replace(self.temp, self.destination)  # replaces a symlink at the destination, never follows it
        return None, self.destination

    def abandon(self) -> None:
        if self.file is not None:
            self.file.close()
            try:
                self.temp.unlink()
            except FileNotFoundError:
                pass


def _destination(output_dir: Path, path: str) -> Path:
    """Where an output file goes under `output_dir`: never outside it, whatever the path says."""
    parts = Path(path).parts
    if not parts or Path(path).is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise ProtocolError(f"the server sent an output file with a path that is not allowed: {path!r}")
    root = output_dir.resolve()
    target = root.joinpath(*parts)
    parent = target.parent.resolve()
    if parent != root and root not in parent.parents:
        raise ForkpoolError(f"output {path!r}: its directory leads outside {output_dir} (a symlink?)")
    return parent / target.name


class JobState:
    """The state of one call, fed every response in order: ids, output files, the ending; and the output not
    handed out as events (`buffer` for stdout, which `expect()` searches, and `stderr`)."""

    def __init__(self, output_dir: Optional[Union[str, "os.PathLike[str]"]]) -> None:
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.job_id = ""
        self.pid = 0
        self.buffer = bytearray()
        self.stderr = bytearray()
        self.result: Optional[Result] = None
        self._sinks: Dict[str, _Sink] = {}
        self._received: Dict[str, Tuple[int, Optional[bytes], Optional[Path]]] = {}
        self.before = b""
        self.match: Optional["re.Match[bytes]"] = None

    def apply(self, response: pb.ExecuteResponse) -> Event:
        """Takes one response into account and returns it as an event."""
        kind = response.WhichOneof("event")
        if kind == "stdout":
            return Stdout(response.stdout)
        if kind == "stderr":
            return Stderr(response.stderr)
        if kind == "queued":
            return Queued(response.queued.position)
        if kind == "started":
            self.job_id, self.pid = response.started.job_id, response.started.pid
            return Started(self.job_id, self.pid)
        if kind == "output":
            chunk = response.output
            sink = self._sinks.get(chunk.path)
            if sink is None:
                destination = None if self.output_dir is None else _destination(self.output_dir, chunk.path)
                sink = self._sinks[chunk.path] = _Sink(destination)
            sink.write(chunk.data)
            if chunk.last:
                data, saved = sink.finish(chunk.mode)
                del self._sinks[chunk.path]
                self._received[chunk.path] = (chunk.mode, data, saved)
            return OutputChunk(chunk.path, chunk.data, chunk.last, chunk.mode)
        if kind == "exited":
            self.result = self._result(response.exited)
            return Exited(self.result)
        if kind == "heartbeat":
            elapsed = response.heartbeat.elapsed
            return Heartbeat(elapsed.seconds + elapsed.nanos / 1e9)
        # An event of a newer contract: the call goes on.
        return Heartbeat(0.0)

    def collect(self, event: Event) -> None:
        """Keeps an event's output for the result (the events `wait()` reads, rather than hands out)."""
        if isinstance(event, Stdout):
            self.buffer += event.data
        elif isinstance(event, Stderr):
            self.stderr += event.data

    def final_result(self) -> Result:
        """The result, with the output collected until now."""
        if self.result is None:
            raise ProtocolError("the server ended the call without an exit status")
        return replace(self.result, stdout=bytes(self.buffer), stderr=bytes(self.stderr))

    def search(self, regex: Pattern[bytes]) -> Optional["re.Match[bytes]"]:
        """Looks for `regex` in the unconsumed stdout; on a match, consumes up to its end and records
        `before` and `match` (pexpect's names)."""
        text = bytes(self.buffer)
        found = regex.search(text)
        if found is not None:
            self.before, self.match = text[: found.start()], found
            del self.buffer[: found.end()]
        return found

    def abandon(self) -> None:
        """Drops partly received output files (the call ended before their last chunk)."""
        for sink in self._sinks.values():
            sink.abandon()
        self._sinks.clear()

    def _result(self, exited: pb.Exited) -> Result:
        status = exited.WhichOneof("status")
        outputs: Dict[str, OutputFile] = {}
        for o in exited.outputs:
            mode, data, saved = self._received.get(o.path, (0, None, None))
            outputs[o.path] = OutputFile(
                path=o.path,
                state=enum_value(OutputState, o.state),
                size=o.size,
                mode=mode,
                data=data,
                saved_to=saved,
            )
        reaped = tuple(
            ReapedProcess(
                pid=r.pid,
                name=r.name,
                exit_code=r.code if r.WhichOneof("status") == "code" else None,
                signal=r.signal if r.WhichOneof("status") == "signal" else None,
            )
            for r in exited.reaped
        )
        return Result(
            exit_code=exited.code if status == "code" else None,
            signal=exited.signal if status == "signal" else None,
            reason=enum_value(ExitReason, exited.reason),
            stdout=bytes(self.buffer),
            stderr=bytes(self.stderr),
            wall_time=from_duration(exited.wall_time),
            user_time=from_duration(exited.user_time),
            system_time=from_duration(exited.system_time),
            max_rss_bytes=exited.max_rss_bytes,
            reaped=reaped,
            outputs=outputs,
            job_id=self.job_id,
            pid=self.pid,
        )


def compile_pattern(pattern: ExpectPattern) -> Pattern[bytes]:
    """An `expect()` pattern as a compiled bytes regex."""
    if isinstance(pattern, str):
        return re.compile(pattern.encode())
    if isinstance(pattern, bytes):
        return re.compile(pattern)
    return pattern


def control_key(char: str) -> bytes:
    """The byte Ctrl-`char` types (`"c"` -> 0x03)."""
    if len(char) != 1 or not ("a" <= char.lower() <= "z" or char in "@[\\]^_?"):
        raise ValueError(f"no control key for {char!r}")
    if char == "?":
        return b"\x7f"
    return bytes([ord(char.upper()) & 0x1F])


EXECUTE = "/forkpool.v1.Executor/Execute"
LIST_JOBS = "/forkpool.v1.Executor/ListJobs"
GET_STATUS = "/forkpool.v1.Executor/GetStatus"


def catalog(response: pb.ListJobsResponse) -> Catalog:
    """A `ListJobs` response as a `Catalog`."""
    return Catalog(
        jobs=tuple(
            JobInfo(
                name=j.name,
                description=j.description,
                command=tuple(j.command),
                accepts_args=j.accepts_args,
                max_timeout=from_duration(j.max_timeout) if j.HasField("max_timeout") else None,
                accepts_files=j.accepts_files,
                terminal_allowed=j.terminal_allowed,
            )
            for j in response.jobs
        ),
        raw_commands_allowed=response.raw_commands_allowed,
    )


def status(response: pb.GetStatusResponse) -> Status:
    """A `GetStatus` response as a `Status`."""
    return Status(
        workers=response.workers,
        running=response.running,
        queued=response.queued,
        queue_capacity=response.queue_capacity,
        started_total=response.started_total,
        finished_total=response.finished_total,
        cancelled_total=response.cancelled_total,
        timed_out_total=response.timed_out_total,
        rejected_total=response.rejected_total,
        orphans_reaped_total=response.orphans_reaped_total,
        containment=enum_value(ContainmentMode, response.containment),
        containment_detail=response.containment_detail,
    )


class End:
    """How a call's response stream ended: cleanly, with a gRPC error, with a local cancellation, or with
    another exception in the reader."""

    def __init__(self, error: Optional[BaseException] = None, cancelled: bool = False) -> None:
        self.error = error
        self.cancelled = cancelled


def raise_for_end(
    state: JobState, end: End, cancelled_by_client: bool, failure: Optional[BaseException]
) -> None:
    """Raises what the end of a call means for its caller, or returns if the job reported its exit.

    A failure of our own (a stdin source or an input file that could not be read) comes first; then an
    `exited` event, which stands whatever happened to the call afterwards; then the call's error status as a
    typed exception (a cancellation this client made is `Cancelled`); a clean end without `exited` breaks the
    contract (`ProtocolError`).
    """
    if failure is not None:
        raise failure
    if state.result is not None:
        return
    error = end.error
    if end.cancelled or (cancelled_by_client and isinstance(error, grpc.RpcError) and _code(error) == "CANCELLED"):
        raise Cancelled(grpc.StatusCode.CANCELLED, "the call was cancelled by this client")
    if isinstance(error, grpc.RpcError):
        raise from_rpc_error(error) from None
    if error is not None:
        raise error
    raise ProtocolError("the server ended the call without an exit status")


def _code(error: grpc.RpcError) -> str:
    code = getattr(error, "code", None)
    value = code() if callable(code) else None
    return value.name if isinstance(value, grpc.StatusCode) else ""
