"""A client for forkpool, the gRPC worker-pool service: jobs run in workers of their own and live exactly as
long as their call.

Two clients with the same shape: `Client` (synchronous, grpcio) and `AsyncClient` (asyncio, grpc.aio).

    import forkpool

    with forkpool.Client("127.0.0.1:50051") as client:
        result = client.run("echo", args=["hello"], check=True)
        assert result.stdout == b"hello\\n"

    async with forkpool.AsyncClient("127.0.0.1:50051") as client:
        result = await client.run(command=["sort"], stdin=b"b\\na\\n")

`run()` runs a job to its end; `start()` returns a handle to stream events, write stdin, signal, resize or
cancel, with `expect()`/`sendline()` for terminal jobs. Leaving a handle's block, cancelling the awaiting
task, or an exception (`KeyboardInterrupt` included) cancels the call, and the server kills the job's whole
process tree. Error statuses raise typed exceptions (`NotFound`, `PermissionDenied`, `QueueFull`,
`CannotExecute`, `InvalidRequest`, `Unavailable`, `DeadlineExceeded`, ...), all `ForkpoolError`s.

The generated protobuf messages are `forkpool.pb` (`forkpool.pb.StartJob`, ...) and the raw gRPC stubs
`forkpool.pb_grpc`.
"""

from ._async import AsyncClient, AsyncJob, AsyncStdin
from ._connection import DEFAULT_ADDRESS, Connection, read_token
from ._core import ExpectPattern, InputSource, SignalLike
from ._errors import (
    CallError,
    Cancelled,
    CannotExecute,
    DeadlineExceeded,
    ForkpoolError,
    InternalError,
    InvalidRequest,
    JobFailed,
    NotFound,
    PermissionDenied,
    ProtocolError,
    QueueFull,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from ._proto import forkpool_pb2 as pb
from ._proto import forkpool_pb2_grpc as pb_grpc
from ._sync import Client, Job, SyncStdin
from ._types import (
    Catalog,
    ContainmentMode,
    Event,
    Exited,
    Heartbeat,
    ExitReason,
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

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "AsyncStdin",
    "CallError",
    "Cancelled",
    "CannotExecute",
    "Catalog",
    "Client",
    "Connection",
    "ContainmentMode",
    "DEFAULT_ADDRESS",
    "DeadlineExceeded",
    "Event",
    "ExitReason",
    "Exited",
    "ExpectPattern",
    "Heartbeat",
    "ForkpoolError",
    "InputSource",
    "InternalError",
    "InvalidRequest",
    "Job",
    "JobFailed",
    "JobInfo",
    "NotFound",
    "OutputChunk",
    "OutputFile",
    "OutputState",
    "PermissionDenied",
    "ProtocolError",
    "QueueFull",
    "Queued",
    "ReapedProcess",
    "ResourceExhausted",
    "Result",
    "Seconds",
    "SignalLike",
    "Started",
    "Status",
    "Stderr",
    "Stdout",
    "SyncStdin",
    "Terminal",
    "Unauthenticated",
    "Unavailable",
    "pb",
    "pb_grpc",
    "read_token",
]
