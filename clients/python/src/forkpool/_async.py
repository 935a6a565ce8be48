"""The asyncio client (grpc.aio): `AsyncClient` and its job handle, `AsyncJob`."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
from collections import deque
from types import TracebackType
from typing import (
    IO,
    Any,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Deque,
    Generator,
    Iterable,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
    cast,
)

import grpc
import grpc.aio

from . import _core
from ._connection import DEFAULT_ADDRESS, ChannelOption, Connection, Pem
from ._core import CLOSE_STDIN, End, ExpectPattern, InputSource, JobState, Plan, SignalLike, Upload
from ._errors import from_rpc_error
from ._proto import forkpool_pb2 as pb
from ._types import Catalog, Event, Result, Seconds, Started, Status, Terminal

__all__ = ["AsyncClient", "AsyncJob", "AsyncStdin"]

#: What `stdin=` takes in the asyncio client: everything the synchronous client takes (a blocking file
#: object is read in a worker thread), an async iterable of bytes chunks, or an object whose `read(n)` is a
#: coroutine (`asyncio.StreamReader`, aiohttp's request content).
AsyncStdin = Union[bytes, str, IO[bytes], Iterable[bytes], AsyncIterable[bytes], Any]

T = TypeVar("T")
_DONE = object()


class _CallOver(Exception):
    """The call is over: nothing more can be sent."""


async def _in_thread(function: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


async def _upload_chunks(upload: Upload) -> AsyncIterator[pb.ExecuteRequest]:
    """An upload's chunks; a local file is read in a worker thread, one chunk at a time."""
    chunks = upload.chunks()
    if upload.local is None:
        for chunk in chunks:
            yield chunk
        return
    while True:
        item = await _in_thread(next, chunks, _DONE)
        if item is _DONE:
            return
        yield cast(pb.ExecuteRequest, item)


async def _stdin_chunks(source: AsyncStdin) -> AsyncIterator[bytes]:
    """The chunks of an asyncio stdin source, as they come."""
    if isinstance(source, (str, bytes, bytearray, memoryview)):
        for chunk in _core.sync_chunks(bytes(source) if not isinstance(source, str) else source):
            yield chunk
        return
    read = getattr(source, "read", None)
    if read is not None and inspect.iscoroutinefunction(read):
        # asyncio.StreamReader, aiohttp's request.content: read in chunks (their iterators yield lines).
        while True:
            data = await read(_core.STDIN_CHUNK)
            if not data:
                return
            yield data.encode() if isinstance(data, str) else bytes(data)
    if hasattr(source, "__aiter__"):
        async for chunk in source:
            if isinstance(chunk, str):
                chunk = chunk.encode()
            raw = bytes(chunk)
            for i in range(0, len(raw), _core.STDIN_CHUNK):
                yield raw[i : i + _core.STDIN_CHUNK]
        return
    chunks = _core.sync_chunks(source)
    if read is not None:  # a blocking file object: read it in a worker thread
        while True:
            item = await _in_thread(next, chunks, _DONE)
            if item is _DONE:
                return
            yield cast(bytes, item)
    for chunk in chunks:
        yield chunk


async def _write(call: "grpc.aio.StreamStreamCall[pb.ExecuteRequest, pb.ExecuteResponse]", request: pb.ExecuteRequest) -> None:
    """Sends one request without letting a failed send hide the call's status.

    `grpc.aio`'s `write()` turns a send that fails because the server has just ended the call (an error
    status right after `start`, a job that exited while stdin was still flowing) into the call's status:
    `INTERNAL "Internal error from Core"`, replacing the server's `NOT_FOUND`, `PERMISSION_DENIED`... and
    making buffered responses (`exited` included) unreadable. This sends through the call's Core object as
    `write()` does, but leaves the status to the server. Should a grpcio release lack those attributes, it
    falls back to `write()`.
    """
    core = getattr(call, "_cython_call", None)
    metadata_sent = getattr(call, "_metadata_sent", None)
    send = getattr(core, "send_serialized_message", None)
    if send is None or not isinstance(metadata_sent, asyncio.Event):
        await call.write(request)
        return
    if not metadata_sent.is_set():
        await metadata_sent.wait()
    if call.done():
        raise _CallOver()
    try:
        await send(request.SerializeToString())
    except asyncio.CancelledError:
        if not call.cancelled():
            call.cancel()
        raise
    except Exception:  # noqa: BLE001 - the stream is closed: the server's status (or our cancel) says why
        raise _CallOver() from None


class AsyncJob:
    """A job started with `AsyncClient.start()`: one `Execute` call.

    `async with client.start(...) as job:` starts it; leaving the block cancels the call if the job is still
    running, and so does cancelling the task that awaits inside it (aiohttp cancelling its handler when the
    HTTP client disconnects, `asyncio.timeout`, a failing `TaskGroup`): the server kills the job and every
    process it started. `job = await client.start(...)` starts it too; then `aclose()` it yourself.

    Events arrive by `async for event in job`, by `wait()` (which collects the output into the `Result`), or
    by `expect()`. Requests go out with `write()`, `close_stdin()`, `signal()`, `resize()`; `cancel()` ends the
    call. A task of the handle reads responses into a bounded buffer: waiting for events with a timeout never
    cancels the call, and a consumer that does not keep up slows the job down instead of filling memory. Read
    events from one task at a time.
    """

    def __init__(
        self,
        client: "AsyncClient",
        plan: Plan,
        *,
        stdin: Optional[AsyncStdin],
        deadline: Optional[float],
        output_dir: Optional[Union[str, "os.PathLike[str]"]],
    ) -> None:
        self._client = client
        self._plan = plan
        self._stdin_source = stdin
        self._deadline = deadline
        self._state = JobState(output_dir)
        self._call: Optional["grpc.aio.StreamStreamCall[pb.ExecuteRequest, pb.ExecuteResponse]"] = None
        self._events: Deque[Union[pb.ExecuteResponse, End]] = deque()
        self._end: Optional[End] = None
        self._failure: Optional[BaseException] = None
        self._cancelled = False
        self._stdin_open = stdin is None
        self._tasks: "list[asyncio.Future[None]]" = []

    # -- starting and ending

    async def _open(self) -> "AsyncJob":
        if self._call is not None:
            raise RuntimeError("this job was already started")
        execute = self._client._methods().execute
        # Made here, inside the running loop (Python 3.9 binds them to a loop when they are made).
        self._available = asyncio.Event()
        self._space = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._uploaded = asyncio.Event()
        self._call = execute(
            timeout=self._deadline,
            metadata=self._client.connection.metadata,
            wait_for_ready=self._client._wait_for_ready,
        )
        self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._send_initial())]
        return self

    def __await__(self) -> Generator[Any, None, "AsyncJob"]:
        return self._open().__await__()

    async def __aenter__(self) -> "AsyncJob":
        return await self._open()

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Ends the handle: cancels the call if it is still going (the job is killed), and stops its tasks."""
        call = self._call
        if call is None:
            return
        if not call.done():
            if self._end is None:
                self._cancelled = True
            call.cancel()  # first, synchronously: whatever happens to this task next, the job dies
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._state.abandon()

    # -- the tasks

    async def _read(self) -> None:
        assert self._call is not None
        end = End()
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    break
                while len(self._events) >= _core.EVENT_BUFFER:
                    self._space.clear()
                    await self._space.wait()
                self._events.append(cast(pb.ExecuteResponse, response))
                self._available.set()
        except asyncio.CancelledError:
            # The call was cancelled locally (cancel(), aclose()): grpc.aio reports it as CancelledError.
            end.cancelled = True
        except grpc.RpcError as e:
            end.error = e
        except Exception as e:  # noqa: BLE001 - handed to the consumer
            end.error = e
        self._events.append(end)
        self._available.set()

    async def _send(self, request: pb.ExecuteRequest) -> None:
        call = self._call
        assert call is not None
        async with self._write_lock:
            if call.done():
                raise _CallOver()
            try:
                await _write(call, request)
            except _CallOver:
                raise
            except asyncio.CancelledError:
                if call.cancelled():
                    raise _CallOver() from None
                raise
            except (grpc.RpcError, asyncio.InvalidStateError):
                raise _CallOver() from None
            except Exception:
                if call.done():
                    raise _CallOver() from None
                raise

    async def _send_initial(self) -> None:
        """`start`, the uploads, then the stdin source given to `start()` and EOF."""
        try:
            await self._send(pb.ExecuteRequest(start=self._plan.start))
            for upload in self._plan.uploads:
                async for chunk in _upload_chunks(upload):
                    await self._send(chunk)
            self._uploaded.set()
            source = self._stdin_source
            if isinstance(source, (bytes, str)) and len(source) <= _core.STDIN_BUFFER:
                for message in _core.stdin_messages(source):  # at hand: no reader task needed
                    await self._send(message)
                await self._send(CLOSE_STDIN)
            elif source is not None:
                await self._feed_stdin(source)
                await self._send(CLOSE_STDIN)
        except _CallOver:
            pass
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a source failed: end the job, report it
            self._failure = e
            if self._call is not None:
                self._call.cancel()
        finally:
            self._uploaded.set()

    async def _feed_stdin(self, source: AsyncStdin) -> None:
        """Streams a stdin source: a task of its own reads it into a bounded buffer (`STDIN_BUFFER`) while
        this loop sends what has gathered, up to `STDIN_CHUNK` bytes a message. A source of many small pieces
        (one line at a time) so becomes a few large messages instead of a flood of tiny HTTP/2 frames, which
        servers refuse (`ENHANCE_YOUR_CALM`, the whole connection closed); a slow source is sent as it comes.
        The source's own failure is raised here."""
        buffer = bytearray()
        finished = False
        ready = asyncio.Event()
        room = asyncio.Event()

        async def read() -> None:
            nonlocal finished
            try:
                async for data in _stdin_chunks(source):
                    while len(buffer) >= _core.STDIN_BUFFER:
                        room.clear()
                        await room.wait()
                    buffer.extend(data)
                    ready.set()
            finally:
                finished = True
                ready.set()

        reader = asyncio.ensure_future(read())
        try:
            while True:
                while not buffer and not finished:
                    ready.clear()
                    await ready.wait()
                if not buffer:
                    break
                chunk = bytes(buffer[: _core.STDIN_CHUNK])
                del buffer[: _core.STDIN_CHUNK]
                room.set()
                await self._send(pb.ExecuteRequest(stdin=chunk))
            await reader  # the source's failure, if any
        finally:
            if not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    # -- reading events

    async def _next_event(self, deadline: Optional[float]) -> Optional[Event]:
        """The next event, `None` after the last one; raises the call's error, or `TimeoutError`."""
        if self._call is None:
            raise RuntimeError("the job is not started: use `async with client.start(...)` or `await` it")
        if self._end is None:
            loop = asyncio.get_running_loop()
            while not self._events:
                self._available.clear()
                if deadline is None:
                    await self._available.wait()
                else:
                    remaining = deadline - loop.time()
                    try:
                        if remaining <= 0:
                            raise asyncio.TimeoutError()
                        await asyncio.wait_for(self._available.wait(), remaining)
                    except asyncio.TimeoutError:
                        raise TimeoutError(f"no event from job {self._state.job_id or '(not started)'}") from None
            item = self._events.popleft()
            self._space.set()
            if not isinstance(item, End):
                return self._state.apply(item)
            self._end = item
            self._state.abandon()
        _core.raise_for_end(self._state, self._end, self._cancelled, self._failure)
        return None

    def _deadline_of(self, timeout: Optional[float]) -> Optional[float]:
        return None if timeout is None else asyncio.get_running_loop().time() + timeout

    def __aiter__(self) -> AsyncIterator[Event]:
        """The job's events, in order, ending with `Exited`; raises the call's error status as a typed
        exception."""
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            event = await self._next_event(None)
            if event is None:
                return
            yield event

    async def wait_started(self, timeout: Optional[float] = None) -> Started:
        """Reads events until the job has started (skipping `Queued`) and returns its `Started` event.
        Output read meanwhile is kept for `wait()`. `EOFError` if the call ends with an exit first."""
        deadline = self._deadline_of(timeout)
        while True:
            event = await self._next_event(deadline)
            if isinstance(event, Started):
                return event
            if event is None:
                raise EOFError("the job ended before it started")
            self._state.collect(event)

    async def wait(self, timeout: Optional[float] = None, *, close_stdin: bool = True) -> Result:
        """Waits for the job's end and returns its `Result` (see `Job.wait`): closes stdin first unless
        `close_stdin=False` or a stdin source feeds it; `TimeoutError` after `timeout` seconds (the job keeps
        running; cancel the awaiting task instead to kill it)."""
        deadline = self._deadline_of(timeout)
        if close_stdin and self._stdin_open:
            await self.close_stdin()
        while True:
            event = await self._next_event(deadline)
            if event is None:
                return self._state.final_result()
            self._state.collect(event)

    # -- sending

    async def _control(self, request: pb.ExecuteRequest) -> bool:
        if self._call is None:
            raise RuntimeError("the job is not started")
        await self._uploaded.wait()
        try:
            await self._send(request)
            return True
        except _CallOver:
            return False

    async def write(self, data: Union[bytes, str]) -> None:
        """Sends `data` (text: UTF-8) to the job's stdin (to a terminal job: typed keys); returns once it is
        on its way (flow control holds it while the job does not read). `BrokenPipeError` once the call is
        over; `ValueError` after `close_stdin()` or when `start()` was given a `stdin` source."""
        if not self._stdin_open:
            raise ValueError("the job's stdin is closed (or fed by the stdin source given to start())")
        for message in _core.stdin_messages(data):
            if not await self._control(message):
                raise BrokenPipeError("the job's call is over")

    async def close_stdin(self) -> None:
        """Closes the job's stdin: EOF (for a terminal job, Ctrl-D typed once); the call stays open."""
        if self._stdin_open:
            self._stdin_open = False
            await self._control(CLOSE_STDIN)

    async def signal(self, sig: SignalLike) -> None:
        """Delivers a signal to the job's process group (see `Job.signal`); nothing once the call is over."""
        await self._control(_core.signal_message(sig))

    async def resize(self, rows: int, cols: int) -> None:
        """Sets a terminal job's window size (see `Job.resize`)."""
        await self._control(_core.resize_message(rows, cols))

    def cancel(self) -> None:
        """Cancels the call: the server kills the job and every process it started. A later `wait()` or
        iteration raises `Cancelled` (unless the job had already reported its exit)."""
        if self._call is None:
            return
        if self._end is None and not self._call.done():
            self._cancelled = True
        self._call.cancel()

    # -- pexpect-style helpers

    async def send(self, data: Union[bytes, str]) -> None:
        """Types `data`: the same as `write()`."""
        await self.write(data)

    async def sendline(self, line: Union[bytes, str] = "") -> None:
        """Types `line` and Enter."""
        await self.write((line.encode() if isinstance(line, str) else line) + b"\n")

    async def sendcontrol(self, char: str) -> None:
        """Types Ctrl-`char`: `sendcontrol("c")` interrupts a terminal job's foreground program."""
        await self.write(_core.control_key(char))

    async def sendeof(self) -> None:
        """Types EOF: `close_stdin()`."""
        await self.close_stdin()

    async def expect(self, pattern: ExpectPattern, timeout: Optional[float] = 30.0) -> "re.Match[bytes]":
        """Reads the job's stdout until `pattern` matches the output not consumed yet and returns the match
        (see `Job.expect`). `TimeoutError` after `timeout` seconds (the job keeps running), `EOFError` if the
        job ends first."""
        regex = _core.compile_pattern(pattern)
        deadline = self._deadline_of(timeout)
        while True:
            found = self._state.search(regex)
            if found is not None:
                return found
            try:
                event = await self._next_event(deadline)
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


class _Methods:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.execute = cast(
            "grpc.aio.StreamStreamMultiCallable[pb.ExecuteRequest, pb.ExecuteResponse]",
            channel.stream_stream(
                _core.EXECUTE,
                request_serializer=pb.ExecuteRequest.SerializeToString,
                response_deserializer=pb.ExecuteResponse.FromString,
            ),
        )
        self.list_jobs = channel.unary_unary(
            _core.LIST_JOBS,
            request_serializer=pb.ListJobsRequest.SerializeToString,
            response_deserializer=pb.ListJobsResponse.FromString,
        )
        self.get_status = channel.unary_unary(
            _core.GET_STATUS,
            request_serializer=pb.GetStatusRequest.SerializeToString,
            response_deserializer=pb.GetStatusResponse.FromString,
        )


class AsyncClient:
    """An asyncio forkpool client over one gRPC channel (grpc.aio), with the options and methods of `Client`.

    The channel is made on first use, inside the running event loop; use the client from that loop only, and
    `await client.close()` (or `async with AsyncClient(...) as client`) at the end.

        async with forkpool.AsyncClient("127.0.0.1:50051") as client:
            result = await client.run("echo", args=["hello"], check=True)

    Cancellation is structural: cancelling a task that awaits `run()` (or sits inside `async with
    client.start(...)`) cancels the call, and the server kills the job's whole process tree.
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
        self._channel: Optional[_Methods] = None

    def _methods(self) -> _Methods:
        if self._channel is None:
            self._channel = _Methods(self.connection.aio_channel())
        return self._channel

    async def run(
        self,
        job: Optional[str] = None,
        *,
        command: Optional[Sequence[str]] = None,
        args: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        stdin: Optional[AsyncStdin] = None,
        timeout: Optional[Seconds] = None,
        kill_grace: Optional[Seconds] = None,
        inputs: Optional[Mapping[str, InputSource]] = None,
        outputs: Sequence[str] = (),
        output_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        terminal: Union[bool, Terminal, None] = None,
        deadline: Optional[Seconds] = None,
        check: bool = False,
    ) -> Result:
        """Runs a job to its end and returns its `Result`; the arguments, result and exceptions are
        `Client.run()`'s. `stdin` may also be an async iterable of bytes or a stream with a coroutine
        `read()`; it is streamed while the output is read. Cancelling the awaiting task cancels the call:
        the job and its whole tree are killed."""
        async with self.start(
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
            result = await handle.wait()
        return result.check() if check else result

    def start(
        self,
        job: Optional[str] = None,
        *,
        command: Optional[Sequence[str]] = None,
        args: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        stdin: Optional[AsyncStdin] = None,
        timeout: Optional[Seconds] = None,
        kill_grace: Optional[Seconds] = None,
        inputs: Optional[Mapping[str, InputSource]] = None,
        outputs: Sequence[str] = (),
        output_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        terminal: Union[bool, Terminal, None] = None,
        deadline: Optional[Seconds] = None,
    ) -> AsyncJob:
        """A job handle, started by `async with` (or `await`); the arguments are `Client.run()`'s.

            async with client.start("cat") as job:
                await job.write(b"hello\\n")
                await job.close_stdin()
                async for event in job:
                    ...
        """
        return AsyncJob(
            self,
            _core.plan(job, command, args, env, timeout, kill_grace, terminal, inputs, outputs),
            stdin=stdin,
            deadline=_core.seconds(deadline),
            output_dir=output_dir,
        )

    async def _unary(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def jobs(self, *, deadline: Optional[Seconds] = 30) -> Catalog:
        """The server's catalog, and whether it allows raw commands (`ListJobs`)."""
        response = await self._unary(
            self._methods().list_jobs(
                pb.ListJobsRequest(),
                timeout=_core.seconds(deadline),
                metadata=self.connection.metadata,
                wait_for_ready=self._wait_for_ready,
            )
        )
        return _core.catalog(response)

    async def status(self, *, deadline: Optional[Seconds] = 30) -> Status:
        """Pool occupancy and lifetime counters (`GetStatus`)."""
        response = await self._unary(
            self._methods().get_status(
                pb.GetStatusRequest(),
                timeout=_core.seconds(deadline),
                metadata=self.connection.metadata,
                wait_for_ready=self._wait_for_ready,
            )
        )
        return _core.status(response)

    async def close(self) -> None:
        """Closes the channel (calls still going are cancelled)."""
        if self._channel is not None:
            channel, self._channel = self._channel.channel, None
            await channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()
