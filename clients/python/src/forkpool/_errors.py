"""The exceptions of the client: one per gRPC status the server uses, and `JobFailed` for `check=True`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Type

import grpc

if TYPE_CHECKING:
    from ._types import Result

__all__ = [
    "ForkpoolError",
    "CallError",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "Unauthenticated",
    "QueueFull",
    "ResourceExhausted",
    "CannotExecute",
    "DeadlineExceeded",
    "Unavailable",
    "Cancelled",
    "InternalError",
    "ProtocolError",
    "JobFailed",
]


class ForkpoolError(Exception):
    """Base class of every exception this package raises on purpose."""


class CallError(ForkpoolError):
    """The call ended with an error status instead of an `exited` event.

    `code` is the gRPC status code and `details` the server's message (it names the problem: the unknown job,
    the program that cannot be executed and the OS error, the path that is not allowed...). `str(error)` is
    the message. Subclasses name the statuses forkpool uses; other codes raise `CallError` itself.
    """

    #: The status this class stands for (`None` on `CallError` itself).
    status: Optional[grpc.StatusCode] = None

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details or code.name)
        self.code = code
        self.details = details

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}: {self.details!r})"


class InvalidRequest(CallError):
    """`INVALID_ARGUMENT`: a malformed request (no command, a bad path, a bad upload, a resize of a job without
    a terminal...). The job, if it had started, was killed."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CallError):
    """`NOT_FOUND`: no catalog job of that name."""

    status = grpc.StatusCode.NOT_FOUND


class PermissionDenied(CallError):
    """`PERMISSION_DENIED`: raw commands are not allowed, or the job does not accept these args, env,
    terminal or files, or the token may not run it."""

    status = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(CallError):
    """`UNAUTHENTICATED`: the server wants a bearer token, and this one is missing or unknown."""

    status = grpc.StatusCode.UNAUTHENTICATED


class QueueFull(CallError):
    """`RESOURCE_EXHAUSTED`: the call was refused admission: the queue is full (or too many uploads or
    terminal jobs, input files over a limit, no process, pipe or pty to be had). Retry later."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


#: Another name for `QueueFull`, after its status code.
ResourceExhausted = QueueFull


class CannotExecute(CallError):
    """`FAILED_PRECONDITION`: the program cannot be executed (not found, not executable); the message names it
    and the OS error."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceeded(CallError):
    """`DEADLINE_EXCEEDED`: the call's `deadline` passed (the server killed the job), or an upload stalled.

    A job's own `timeout` is not an error: it ends with `Result.reason == ExitReason.TIMED_OUT`.
    """

    status = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(CallError):
    """`UNAVAILABLE`: no server could be reached, or it is shutting down."""

    status = grpc.StatusCode.UNAVAILABLE


class Cancelled(CallError):
    """`CANCELLED`: the call was cancelled, by `cancel()` on its handle or from outside."""

    status = grpc.StatusCode.CANCELLED


class InternalError(CallError):
    """`INTERNAL`: a job's file could not be read or written for an unexpected reason (or a gRPC failure)."""

    status = grpc.StatusCode.INTERNAL


class ProtocolError(ForkpoolError):
    """The server did not keep the contract (a call that ended without `exited` and without an error)."""


class JobFailed(ForkpoolError):
    """Raised by `run(check=True)` and `Result.check()` when the job exited non-zero or was killed by a signal.

    `result` is the whole `Result` (stdout and stderr included), as `subprocess.CalledProcessError` has
    `returncode` and `output`.
    """

    def __init__(self, result: "Result") -> None:
        self.result = result
        if result.signal is not None:
            how = f"was killed by signal {result.signal}"
        else:
            how = f"exited with code {result.exit_code}"
        reason = "" if result.reason.name == "EXITED" else f" ({result.reason.name.lower()})"
        tail = result.stderr[-500:].decode("utf-8", "replace").strip()
        super().__init__(f"job {result.job_id or '?'} {how}{reason}" + (f": {tail}" if tail else ""))


_BY_CODE: Dict[grpc.StatusCode, Type[CallError]] = {
    cls.status: cls
    for cls in (
        InvalidRequest,
        NotFound,
        PermissionDenied,
        Unauthenticated,
        QueueFull,
        CannotExecute,
        DeadlineExceeded,
        Unavailable,
        Cancelled,
        InternalError,
    )
    if cls.status is not None
}


def error_for(code: grpc.StatusCode, details: str) -> CallError:
    """The exception for a status: the subclass of `CallError` that names it, else `CallError`."""
    return _BY_CODE.get(code, CallError)(code, details)


def from_rpc_error(error: grpc.RpcError) -> CallError:
    """The exception for a failed gRPC call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else None
    details = details_of() if callable(details_of) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return error_for(code, details if isinstance(details, str) else str(error))
