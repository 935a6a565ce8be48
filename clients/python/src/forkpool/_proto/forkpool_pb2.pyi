# Generated from proto/forkpool/v1/forkpool.proto by clients/python/generate.py with grpcio-tools==1.75.1.
import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Signal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNAL_UNSPECIFIED: _ClassVar[Signal]
    SIGNAL_HUP: _ClassVar[Signal]
    SIGNAL_INT: _ClassVar[Signal]
    SIGNAL_QUIT: _ClassVar[Signal]
    SIGNAL_KILL: _ClassVar[Signal]
    SIGNAL_USR1: _ClassVar[Signal]
    SIGNAL_USR2: _ClassVar[Signal]
    SIGNAL_TERM: _ClassVar[Signal]

class OutputState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_STATE_UNSPECIFIED: _ClassVar[OutputState]
    OUTPUT_STATE_SENT: _ClassVar[OutputState]
    OUTPUT_STATE_MISSING: _ClassVar[OutputState]
    OUTPUT_STATE_TOO_LARGE: _ClassVar[OutputState]
    OUTPUT_STATE_NOT_REGULAR: _ClassVar[OutputState]

class ExitReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXIT_REASON_UNSPECIFIED: _ClassVar[ExitReason]
    EXIT_REASON_EXITED: _ClassVar[ExitReason]
    EXIT_REASON_TIMED_OUT: _ClassVar[ExitReason]
    EXIT_REASON_OUTPUT_LIMIT: _ClassVar[ExitReason]
    EXIT_REASON_MEMORY_LIMIT: _ClassVar[ExitReason]
    EXIT_REASON_SHUTDOWN: _ClassVar[ExitReason]

class ContainmentMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTAINMENT_MODE_UNSPECIFIED: _ClassVar[ContainmentMode]
    CONTAINMENT_MODE_CGROUP: _ClassVar[ContainmentMode]
    CONTAINMENT_MODE_PROCESS_GROUP: _ClassVar[ContainmentMode]
SIGNAL_UNSPECIFIED: Signal
SIGNAL_HUP: Signal
SIGNAL_INT: Signal
SIGNAL_QUIT: Signal
SIGNAL_KILL: Signal
SIGNAL_USR1: Signal
SIGNAL_USR2: Signal
SIGNAL_TERM: Signal
OUTPUT_STATE_UNSPECIFIED: OutputState
OUTPUT_STATE_SENT: OutputState
OUTPUT_STATE_MISSING: OutputState
OUTPUT_STATE_TOO_LARGE: OutputState
OUTPUT_STATE_NOT_REGULAR: OutputState
EXIT_REASON_UNSPECIFIED: ExitReason
EXIT_REASON_EXITED: ExitReason
EXIT_REASON_TIMED_OUT: ExitReason
EXIT_REASON_OUTPUT_LIMIT: ExitReason
EXIT_REASON_MEMORY_LIMIT: ExitReason
EXIT_REASON_SHUTDOWN: ExitReason
CONTAINMENT_MODE_UNSPECIFIED: ContainmentMode
CONTAINMENT_MODE_CGROUP: ContainmentMode
CONTAINMENT_MODE_PROCESS_GROUP: ContainmentMode

class ExecuteRequest(_message.Message):
    __slots__ = ("start", "stdin", "close_stdin", "signal", "resize", "input")
    START_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    CLOSE_STDIN_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    start: StartJob
    stdin: bytes
    close_stdin: CloseStdin
    signal: SendSignal
    resize: Resize
    input: FileChunk
    def __init__(self, start: _Optional[_Union[StartJob, _Mapping]] = ..., stdin: _Optional[bytes] = ..., close_stdin: _Optional[_Union[CloseStdin, _Mapping]] = ..., signal: _Optional[_Union[SendSignal, _Mapping]] = ..., resize: _Optional[_Union[Resize, _Mapping]] = ..., input: _Optional[_Union[FileChunk, _Mapping]] = ...) -> None: ...

class StartJob(_message.Message):
    __slots__ = ("job", "args", "env", "timeout", "command", "kill_grace", "terminal", "inputs", "outputs", "heartbeat_interval")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    KILL_GRACE_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    job: str
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    timeout: _duration_pb2.Duration
    command: _containers.RepeatedScalarFieldContainer[str]
    kill_grace: _duration_pb2.Duration
    terminal: Terminal
    inputs: _containers.RepeatedCompositeFieldContainer[InputFile]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, job: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., command: _Optional[_Iterable[str]] = ..., kill_grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., terminal: _Optional[_Union[Terminal, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[InputFile, _Mapping]]] = ..., outputs: _Optional[_Iterable[str]] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class InputFile(_message.Message):
    __slots__ = ("path", "size", "mode", "content")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    mode: int
    content: bytes
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., mode: _Optional[int] = ..., content: _Optional[bytes] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("path", "data", "last", "mode")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    path: str
    data: bytes
    last: bool
    mode: int
    def __init__(self, path: _Optional[str] = ..., data: _Optional[bytes] = ..., last: bool = ..., mode: _Optional[int] = ...) -> None: ...

class Terminal(_message.Message):
    __slots__ = ("rows", "cols", "no_echo", "term")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    NO_ECHO_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    no_echo: bool
    term: str
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ..., no_echo: bool = ..., term: _Optional[str] = ...) -> None: ...

class Resize(_message.Message):
    __slots__ = ("rows", "cols")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ...) -> None: ...

class CloseStdin(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SendSignal(_message.Message):
    __slots__ = ("signal",)
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    signal: Signal
    def __init__(self, signal: _Optional[_Union[Signal, str]] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("queued", "started", "stdout", "stderr", "exited", "output", "heartbeat")
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXITED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    queued: Queued
    started: Started
    stdout: bytes
    stderr: bytes
    exited: Exited
    output: FileChunk
    heartbeat: Heartbeat
    def __init__(self, queued: _Optional[_Union[Queued, _Mapping]] = ..., started: _Optional[_Union[Started, _Mapping]] = ..., stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exited: _Optional[_Union[Exited, _Mapping]] = ..., output: _Optional[_Union[FileChunk, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("elapsed",)
    ELAPSED_FIELD_NUMBER: _ClassVar[int]
    elapsed: _duration_pb2.Duration
    def __init__(self, elapsed: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Queued(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("job_id", "pid")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    pid: int
    def __init__(self, job_id: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class Exited(_message.Message):
    __slots__ = ("code", "signal", "reason", "wall_time", "user_time", "system_time", "max_rss_bytes", "reaped", "outputs")
    CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    USER_TIME_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_TIME_FIELD_NUMBER: _ClassVar[int]
    MAX_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    REAPED_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    code: int
    signal: int
    reason: ExitReason
    wall_time: _duration_pb2.Duration
    user_time: _duration_pb2.Duration
    system_time: _duration_pb2.Duration
    max_rss_bytes: int
    reaped: _containers.RepeatedCompositeFieldContainer[ReapedProcess]
    outputs: _containers.RepeatedCompositeFieldContainer[OutputFile]
    def __init__(self, code: _Optional[int] = ..., signal: _Optional[int] = ..., reason: _Optional[_Union[ExitReason, str]] = ..., wall_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., user_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., system_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_rss_bytes: _Optional[int] = ..., reaped: _Optional[_Iterable[_Union[ReapedProcess, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[OutputFile, _Mapping]]] = ...) -> None: ...

class OutputFile(_message.Message):
    __slots__ = ("path", "state", "size")
    PATH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    path: str
    state: OutputState
    size: int
    def __init__(self, path: _Optional[str] = ..., state: _Optional[_Union[OutputState, str]] = ..., size: _Optional[int] = ...) -> None: ...

class ReapedProcess(_message.Message):
    __slots__ = ("pid", "name", "code", "signal")
    PID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    pid: int
    name: str
    code: int
    signal: int
    def __init__(self, pid: _Optional[int] = ..., name: _Optional[str] = ..., code: _Optional[int] = ..., signal: _Optional[int] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "raw_commands_allowed")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    RAW_COMMANDS_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    raw_commands_allowed: bool
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ..., raw_commands_allowed: bool = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("name", "description", "command", "accepts_args", "max_timeout", "accepts_files", "terminal_allowed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_ARGS_FIELD_NUMBER: _ClassVar[int]
    MAX_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_FILES_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    command: _containers.RepeatedScalarFieldContainer[str]
    accepts_args: bool
    max_timeout: _duration_pb2.Duration
    accepts_files: bool
    terminal_allowed: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., accepts_args: bool = ..., max_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., accepts_files: bool = ..., terminal_allowed: bool = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("workers", "running", "queued", "queue_capacity", "started_total", "finished_total", "cancelled_total", "timed_out_total", "rejected_total", "orphans_reaped_total", "containment", "containment_detail")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    STARTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FINISHED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REJECTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ORPHANS_REAPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CONTAINMENT_FIELD_NUMBER: _ClassVar[int]
    CONTAINMENT_DETAIL_FIELD_NUMBER: _ClassVar[int]
    workers: int
    running: int
    queued: int
    queue_capacity: int
    started_total: int
    finished_total: int
    cancelled_total: int
    timed_out_total: int
    rejected_total: int
    orphans_reaped_total: int
    containment: ContainmentMode
    containment_detail: str
    def __init__(self, workers: _Optional[int] = ..., running: _Optional[int] = ..., queued: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., started_total: _Optional[int] = ..., finished_total: _Optional[int] = ..., cancelled_total: _Optional[int] = ..., timed_out_total: _Optional[int] = ..., rejected_total: _Optional[int] = ..., orphans_reaped_total: _Optional[int] = ..., containment: _Optional[_Union[ContainmentMode, str]] = ..., containment_detail: _Optional[str] = ...) -> None: ...
