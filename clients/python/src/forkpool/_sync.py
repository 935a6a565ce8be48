"""The synchronous client (grpcio): `Client` and its job handle, `Job`."""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from collections import deque
from types import TracebackType
from typing import (
    IO,
    Any,
    Deque,
    Iterable,
    Iterator,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
    cast,
)

import grpc

from . import _core
from ._connection import DEFAULT_ADDRESS, ChannelOption, Connection, Pem
from ._core import CLOSE_STDIN, End, ExpectPattern, InputSource, JobState, Plan, SignalLike
from ._errors import from_rpc_error
from ._proto import forkpool_pb2 as pb
from ._types import Catalog, Event, Result, Seconds, Started, Status, Terminal

__all__ = ["Client", "Job", "SyncStdin"]

#: What `stdin=` takes in the synchronous client: bytes, text (UTF-8), a binary file object (read as it
#: comes, e.g. a pipe), or an iterable of bytes chunks (consumed lazily, in a thread of its own).
SyncStdin = Union[bytes, str, IO[bytes], Iterable[bytes]]


#: The longest a wait in the caller's thread lasts before Python code runs again (so a KeyboardInterrupt is
#: raised promptly), as in grpc's own waits.
_SLICE = 0.1


class _Closed(Exception):
    """The call is over: nothing more can be sent."""


class _Requests:
    """The requests waiting to be sent, in order. gRPC's sending thread takes them one at a time, each once
    the previous one is on its way (flow control).

    Stdin bytes are bounded (`STDIN_BUFFER`): `put_stdin` blocks beyond it, so a fast producer is held back
    by a job that does not read; control messages (close stdin, a signal, a resize) never wait. Stdin that
    waits is coalesced into messages of up to `STDIN_CHUNK` bytes: a source of many small pieces (one line
    at a time) becomes a few large messages instead of a flood of tiny HTTP/2 frames, which servers refuse
    (`ENHANCE_YOUR_CALM`, the whole connection closed)."""

    def __init__(self, limit: int = _core.STDIN_BUFFER) -> None:
        self._cond = threading.Condition()
        self._items: Deque[Union[pb.ExecuteRequest, bytearray]] = deque()
        self._pending = 0
        self._limit = limit
        self._closed = False

    def put(self, request: pb.ExecuteRequest) -> None:
        """Queues a control message (or `start`-time stdin that is known to be small)."""
        with self._cond:
            if self._closed:
                raise _Closed()
            self._items.append(request)
            self._cond.notify_all()

    def put_stdin(self, data: bytes) -> None:
        """Queues stdin bytes (at most `STDIN_CHUNK`), merged into the stdin waiting before them if it fits."""
        with self._cond:
            while self._pending >= self._limit and not self._closed:
                self._cond.wait(_SLICE)  # in slices: see Job._next_event
            if self._closed:
                raise _Closed()
            last = self._items[-1] if self._items else None
            if isinstance(last, bytearray) and len(last) + len(data) <= _core.STDIN_CHUNK:
                last += data
            else:
                self._items.append(bytearray(data))
            self._pending += len(data)
            self._cond.notify_all()

    def get(self) -> Optional[pb.ExecuteRequest]:
        """The next request, or `None` once the call is over."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            if isinstance(item, bytearray):
                self._pending -= len(item)
                return pb.ExecuteRequest(stdin=bytes(item))
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class Job:
    """A job started with `Client.start()`: one `Execute` call.

    Use it as a context manager: leaving the block (normally, by an exception, or by `KeyboardInterrupt`)
    cancels the call if the job is still running, which kills the job and every process it started.

    Events arrive by iterating (`for event in job`), by `wait()` (which collects the output into the
    `Result`), or by `expect()`. Requests go out with `write()`, `close_stdin()`, `signal()`, `resize()`;
    `cancel()` ends the call. Responses are read by a thread of the handle into a bounded buffer, so the
    server's output never waits on your writes, and a consumer that does not keep up slows the job down
    instead of filling memory. Iterate, `wait()` or `expect()` from one thread at a time.
    """

    def __init__(
        self,
        execute: "grpc.StreamStreamMultiCallable[pb.ExecuteRequest, pb.ExecuteResponse]",
        plan: Plan,
        *,
        stdin: Optional[SyncStdin],
        metadata: Tuple[Tuple[str, str], ...],
        deadline: Optional[float],
        wait_for_ready: Optional[bool],
        output_dir: Optional[Union[str, "os.PathLike[str]"]],
    ) -> None:
        self._state = JobState(output_dir)
        self._requests = _Requests()
        self._events: "queue.Queue[Union[pb.ExecuteResponse, End]]" = queue.Queue(_core.EVENT_BUFFER)
        self._end: Optional[End] = None
        self._closing = threading.Event()
        self._failure: Optional[BaseException] = None
        self._cancelled = False
        self._stdin_open = stdin is None
        self._feeder: Optional[threading.Thread] = None
        self._call_ready = threading.Event()
        if isinstance(stdin, (str, bytes)) and len(stdin) <= _core.STDIN_BUFFER:
            # Small enough to queue at once without blocking: no thread needed.
            for message in _core.stdin_messages(stdin):
                self._requests.put_stdin(message.stdin)
            self._requests.put(CLOSE_STDIN)
            stdin = None
        self._call = execute(
            self._request_stream(plan), timeout=deadline, metadata=metadata, wait_for_ready=wait_for_ready
        )
        try:
            self._call_ready.set()
            self._reader = threading.Thread(target=self._read, name="forkpool-events", daemon=True)
            self._reader.start()
            if stdin is not None:
                self._feeder = threading.Thread(
                    target=self._feed, args=(_core.sync_chunks(stdin),), name="forkpool-stdin", daemon=True
                )
                self._feeder.start()
        except BaseException:
            # KeyboardInterrupt (or anything) before the caller holds the handle: nobody could cancel the
            # call later, so cancel it now.
            self._cancel_call()
            raise

    # -- the threads

    def _request_stream(self, plan: Plan) -> Iterator[pb.ExecuteRequest]:
        """The request stream gRPC sends from its own thread: `start`, the uploads (read from disk lazily),
        then whatever `write()`, `close_stdin()`, `signal()`, `resize()` and the stdin feeder queue, until the
        call is over."""
        yield pb.ExecuteRequest(start=plan.start)
        try:
            for upload in plan.uploads:
                for chunk in upload.chunks():
                    if self._requests.closed:
                        return
                    yield chunk
        except Exception as e:  # noqa: BLE001 - an input file could not be read: end the job, report it
            self._failure = e
            self._call_ready.wait()
            self._cancel_call()
            return
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def _read(self) -> None:
        end = End()
        try:
            for response in self._call:
                if not self._offer(response):
                    return
        except grpc.RpcError as e:
            end.error = e
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            end.error = e
        finally:
            self._requests.close()
        self._offer(end)

    def _offer(self, item: Union[pb.ExecuteResponse, End]) -> bool:
        while not self._closing.is_set():
            try:
                self._events.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _feed(self, chunks: Iterator[bytes]) -> None:
        try:
            for chunk in chunks:
                self._requests.put_stdin(chunk)
            self._requests.put(CLOSE_STDIN)
        except _Closed:
            pass
        except BaseException as e:  # noqa: BLE001 - the stdin source failed: end the job, report it
            self._failure = e
            self._cancel_call()

    # -- reading events

    def _next_event(self, timeout: Optional[float]) -> Optional[Event]:
        """The next event, `None` after the last one; raises the call's error, or `TimeoutError`."""
        if self._end is None:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                # In slices, as grpc's own waits: a SIGINT that the kernel hands to another thread only
                # becomes KeyboardInterrupt when this thread runs Python code again.
                remaining = _remaining(deadline)
                try:
                    item = self._events.get(timeout=_SLICE if remaining is None else min(remaining, _SLICE))
                    break
                except queue.Empty:
                    if remaining is not None and remaining <= _SLICE:
                        raise TimeoutError(
                            f"no event from job {self._state.job_id or '(not started)'} in {timeout:g} s"
                        ) from None
            if not isinstance(item, End):
                return self._state.apply(item)
            self._end = item
            self._requests.close()
            self._state.abandon()
        _core.raise_for_end(self._state, self._end, self._cancelled, self._failure)
        return None

    def __iter__(self) -> Iterator[Event]:
        """The job's events, in order, ending with `Exited`; raises the call's error status as a typed
        exception (`NotFound`, `QueueFull`, ...)."""
        while True:
            event = self._next_event(None)
            if event is None:
                return
            yield event

    def wait_started(self, timeout: Optional[float] = None) -> Started:
        """Reads events until the job has started (skipping `Queued`) and returns its `Started` event.

        Output read meanwhile is kept for `wait()`. Raises `EOFError` if the call ends first with an exit."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            event = self._next_event(_remaining(deadline))
            if isinstance(event, Started):
                return event
            if event is None:
                raise EOFError("the job ended before it started")
            self._state.collect(event)

    def wait(self, timeout: Optional[float] = None, *, close_stdin: bool = True) -> Result:
        """Waits for the job's end and returns its `Result`, like `subprocess.Popen.communicate()`.

        Unless `close_stdin=False`, closes the job's stdin first (if `start()` was not given a `stdin`
        source, which closes it itself when exhausted), so a job reading it to its end cannot wait forever.
        The result's `stdout`/`stderr` hold the output read here (and any that `expect()` left), not the
        output already handed out as events. `TimeoutError` after `timeout` seconds (the job keeps running);
        the call's error status raises its typed exception; after `cancel()`, `Cancelled`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if close_stdin and self._stdin_open:
            self.close_stdin()
        while True:
            event = self._next_event(_remaining(deadline))
            if event is None:
                return self._state.final_result()
            self._state.collect(event)

    # -- sending

    def _put(self, request: pb.ExecuteRequest) -> bool:
        try:
            self._requests.put(request)
            return True
        except _Closed:
            return False

    def write(self, data: Union[bytes, str]) -> None:
        """Sends `data` (text: UTF-8) to the job's stdin (to a terminal job: typed keys). Blocks while more
        than `STDIN_BUFFER` bytes wait to be sent (the job is not reading). `BrokenPipeError` once the call
        is over; `ValueError` after `close_stdin()` or when `start()` was given a `stdin` source."""
        if not self._stdin_open:
            raise ValueError("the job's stdin is closed (or fed by the stdin source given to start())")
        for message in _core.stdin_messages(data):
            try:
                self._requests.put_stdin(message.stdin)
            except _Closed:
                raise BrokenPipeError("the job's call is over") from None

    def close_stdin(self) -> None:
        """Closes the job's stdin: EOF (for a terminal job, Ctrl-D typed once). The call stays open, so
        signals and resizes can still follow. Does nothing if stdin is already closed or the call is over."""
        if self._stdin_open:
            self._stdin_open = False
            self._put(CLOSE_STDIN)

    def signal(self, sig: SignalLike) -> None:
        """Delivers a signal to the job's process group: `signal.SIGTERM`, `15`, `"TERM"` or `"SIGTERM"` (the
        contract carries HUP, INT, QUIT, KILL, USR1, USR2 and TERM). Does nothing once the call is over, as
        `Popen.send_signal` does for a finished process."""
        self._put(_core.signal_message(sig))

    def resize(self, rows: int, cols: int) -> None:
        """Sets a terminal job's window size (its foreground process group gets SIGWINCH). For a job without
        a terminal, the server ends the call with `InvalidRequest` and kills the job."""
        self._put(_core.resize_message(rows, cols))

    def cancel(self) -> None:
        """Cancels the call: the server kills the job and every process it started. A later `wait()` or
        iteration raises `Cancelled` (unless the job had already reported its exit)."""
        if self._end is None:
            self._cancelled = True
        self._cancel_call()

    def _cancel_call(self) -> None:
        self._call.cancel()
        self._requests.close()

    # -- pexpect-style helpers

    def send(self, data: Union[bytes, str]) -> None:
        """Types `data` (pexpect's `send`): the same as `write()`."""
        self.write(data)

    def sendline(self, line: Union[bytes, str] = "") -> None:
        """Types `line` and Enter."""
        self.write((line.encode() if isinstance(line, str) else line) + b"\n")

    def sendcontrol(self, char: str) -> None:
        """Types Ctrl-`char`: `sendcontrol("c")` interrupts a terminal job's foreground program."""
        self.write(_core.control_key(char))

    def sendeof(self) -> None:
        """Types EOF: `close_stdin()`."""
        self.close_stdin()

    def expect(self, pattern: ExpectPattern, timeout: Optional[float] = 30.0) -> "re.Match[bytes]":
        """Reads the job's stdout until `pattern` (a bytes or text regex, or a compiled bytes one) matches the
        output not consumed yet, and returns the match; the output up to its end is consumed
        (`before` is what preceded it). `TimeoutError` after `timeout` seconds, `EOFError` if the job ends
        first (the call's error status raises its typed exception)."""
        regex = _core.compile_pattern(pattern)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            found = self._state.search(regex)
            if found is not None:
                return found
            try:
                event = self._next_event(_remaining(deadline))
            except TimeoutError:
                raise TimeoutError(
                    f"{regex.pattern!r} not seen in {timeout:g} s; output not consumed: {bytes(self._state.buffer[-300:])!r}"
                ) from None
            if event is None:
                raise EOFError(f"the job ended before {regex.pattern!r}; output: {bytes(self._state.buffer[-300:])!r}")
            self._state.collect(event)

    @property
    def before(self) -> bytes:
        """The output that preceded the last `expect()` match."""
        return self._state.before

    @property
    def match(self) -> "Optional[re.Match[bytes]]":
        """The last `expect()` match."""
        return self._state.match

    # -- state

    @property
    def pid(self) -> Optional[int]:
        """The worker's pid (its session and process group id), once the `Started` event was read."""
        return self._state.pid or None

    @property
    def job_id(self) -> Optional[str]:
        """The server's id of the job, once the `Started` event was read."""
        return self._state.job_id or None

    @property
    def result(self) -> Optional[Result]:
        """The result, once the `Exited` event was read."""
        return self._state.result

    def close(self) -> None:
        """Ends the handle: cancels the call if it is still going, and stops its threads."""
        if self._call.is_active():
            self.cancel()
        self._closing.set()
        self._requests.close()
        self._reader.join(timeout=5)
        self._state.abandon()

    def __enter__(self) -> "Job":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


def _remaining(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class Client:
    """A synchronous forkpool client over one gRPC channel (grpcio). Thread-safe; use one per process.

    The connection options are the CLI's: `address` (`host:port`, `http://`/`https://` URLs, or any gRPC
    target such as `dns:///host:port` or `ipv4:a:p,b:p`), TLS (`ca_cert`, `client_cert`/`client_key`,
    `server_name`), a bearer `token` (or `token_file`), and `service_config` (passed through as
    `grpc.service_config`, for load balancing and retries); see `Connection.make`. `wait_for_ready=True`
    makes calls wait for the server to become reachable instead of failing with `Unavailable`.

        with forkpool.Client("127.0.0.1:50051") as client:
            result = client.run("echo", args=["hello"], check=True)
            print(result.stdout)
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        tls: Optional[bool] = None,
        ca_cert: Optional[Pem] = None,
        client_cert: Optional[Pem] = None,
        client_key: Optional[Pem] = None,
        server_name: Optional[str] = None,
        token: Optional[str] = None,
        token_file: Optional[Union[str, "os.PathLike[str]"]] = None,
        service_config: Optional[Union[str, Mapping[str, Any]]] = None,
        options: Sequence[ChannelOption] = (),
        wait_for_ready: Optional[bool] = None,
    ) -> None:
        self.connection = Connection.make(
            address,
            tls=tls,
            ca_cert=ca_cert,
            client_cert=client_cert,
            client_key=client_key,
            server_name=server_name,
            token=token,
            token_file=token_file,
            service_config=service_config,
            options=options,
        )
        self._wait_for_ready = wait_for_ready
        self._channel = self.connection.channel()
        self._execute = cast(
            "grpc.StreamStreamMultiCallable[pb.ExecuteRequest, pb.ExecuteResponse]",
            self._channel.stream_stream(
                _core.EXECUTE,
                request_serializer=pb.ExecuteRequest.SerializeToString,
                response_deserializer=pb.ExecuteResponse.FromString,
            ),
        )
        self._list_jobs = self._channel.unary_unary(
            _core.LIST_JOBS,
            request_serializer=pb.ListJobsRequest.SerializeToString,
            response_deserializer=pb.ListJobsResponse.FromString,
        )
        self._get_status = self._channel.unary_unary(
            _core.GET_STATUS,
            request_serializer=pb.GetStatusRequest.SerializeToString,
            response_deserializer=pb.GetStatusResponse.FromString,
        )

    def run(
        self,
        job: Optional[str] = None,
        *,
        command: Optional[Sequence[str]] = None,
        args: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        stdin: Optional[SyncStdin] = None,
        timeout: Optional[Seconds] = None,
        kill_grace: Optional[Seconds] = None,
        inputs: Optional[Mapping[str, InputSource]] = None,
        outputs: Sequence[str] = (),
        output_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        terminal: Union[bool, Terminal, None] = None,
        deadline: Optional[Seconds] = None,
        check: bool = False,
    ) -> Result:
        """Runs a job to its end and returns its `Result` (exit code or signal, reason, stdout, stderr, times,
        peak memory, reaped orphans, output files).

        - `job` names a catalog job; `command` is a raw argv instead (the server must allow raw commands).
          `args` are appended to a catalog job's command; `env` adds environment entries.
        - `stdin`: bytes, text, a binary file object or an iterable of bytes chunks, streamed as it is read
          (never read to its end first) while the output is read; EOF follows it. `None`: EOF at once.
        - `timeout`: the job is killed after it (the result says `TIMED_OUT`, not an exception);
          `kill_grace`: SIGTERM to SIGKILL time when it is killed. Seconds or `timedelta`.
        - `inputs`: `{path in the job's directory: bytes or local file path}`; `outputs`: paths or glob
          patterns to send back, kept in memory (`Result.outputs[path].data`) or, with `output_dir`, written
          there (`.saved_to`).
        - `terminal`: `True` or a `Terminal(rows, cols, ...)` runs the job under a pseudo-terminal.
        - `deadline`: the call's deadline in seconds: past it the server kills the job and
          `DeadlineExceeded` is raised.
        - `check=True` raises `JobFailed` unless the job exited with code 0.

        Error statuses raise `NotFound`, `PermissionDenied`, `QueueFull`, `CannotExecute`, `InvalidRequest`,
        `Unavailable`, `DeadlineExceeded`, ... with the server's message. Any exception while waiting
        (`KeyboardInterrupt` included) cancels the call, which kills the job.
        """
        with self.start(
            job,
            command=command,
            args=args,
            env=env,
            stdin=b"" if stdin is None else stdin,
            timeout=timeout,
            kill_grace=kill_grace,
            inputs=inputs,
            outputs=outputs,
            output_dir=output_dir,
            terminal=terminal,
            deadline=deadline,
        ) as handle:
            result = handle.wait()
        return result.check() if check else result

    def start(
        self,
        job: Optional[str] = None,
        *,
        command: Optional[Sequence[str]] = None,
        args: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        stdin: Optional[SyncStdin] = None,
        timeout: Optional[Seconds] = None,
        kill_grace: Optional[Seconds] = None,
        inputs: Optional[Mapping[str, InputSource]] = None,
        outputs: Sequence[str] = (),
        output_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        terminal: Union[bool, Terminal, None] = None,
        deadline: Optional[Seconds] = None,
    ) -> Job:
        """Starts a job and returns its handle at once (the arguments are `run()`'s).

        Without `stdin`, the job's stdin stays open for `write()` until `close_stdin()` (or `wait()`); with
        it, the source is streamed from a thread of the handle and EOF follows. Use the handle as a context
        manager: leaving the block cancels the job if it is still running.

            with client.start("cat") as job:
                job.write(b"hello\\n")
                job.close_stdin()
                for event in job:
                    ...
        """
        return Job(
            self._execute,
            _core.plan(job, command, args, env, timeout, kill_grace, terminal, inputs, outputs),
            stdin=stdin,
            metadata=self.connection.metadata,
            deadline=_core.seconds(deadline),
            wait_for_ready=self._wait_for_ready,
            output_dir=output_dir,
        )

    def jobs(self, *, deadline: Optional[Seconds] = 30) -> Catalog:
        """The server's catalog, and whether it allows raw commands (`ListJobs`)."""
        try:
            response = self._list_jobs(
                pb.ListJobsRequest(),
                timeout=_core.seconds(deadline),
                metadata=self.connection.metadata,
                wait_for_ready=self._wait_for_ready,
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return _core.catalog(response)

    def status(self, *, deadline: Optional[Seconds] = 30) -> Status:
        """Pool occupancy and lifetime counters (`GetStatus`)."""
        try:
            response = self._get_status(
                pb.GetStatusRequest(),
                timeout=_core.seconds(deadline),
                metadata=self.connection.metadata,
                wait_for_ready=self._wait_for_ready,
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return _core.status(response)

    def close(self) -> None:
        """Closes the channel (calls still going are cancelled)."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()
