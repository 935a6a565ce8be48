"""The original scenario, end to end, all real processes: forkpool (the binary from `FORKPOOL_BIN`, default
`<repo>/target/debug/forkpool`) and `app.py` on ephemeral loopback ports, driven over HTTP.

1. a request completes with the job's output;
2. an HTTP client that disconnects while a job with a 3-process tree runs: the whole tree is gone within 1 s;
3. SIGTERM to a job's worker: the app and forkpool keep serving (nothing forks from the app);
4. 200 concurrent requests, a third disconnecting at random: no job process and no zombie left, and forkpool's
   counters match what the HTTP side saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

# Before grpc is imported: see clients/python/tests/conftest.py (Python 3.9 forks for subprocesses).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import aiohttp  # noqa: E402
import pytest  # noqa: E402

import forkpool  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

CONFIG = """
workers = 256
queue = 64
default_kill_grace = "1s"

[[job]]
name = "echo"
command = ["echo"]
accepts_args = true
max_timeout = "10s"

[[job]]
name = "work"
description = "Sleeps $1 seconds, then prints `done $2`."
command = ["sh", "-c", 'sleep "$1"; echo "done $2"', "work"]
accepts_args = true
allowed_env = ["FORKPOOL_TEST_MARKER"]
max_timeout = "60s"

[[job]]
name = "tree"
description = "Three processes: sh and two sleeps."
command = ["sh", "-c", "sleep 30 & sleep 30 & echo ready; wait", "tree"]
allowed_env = ["FORKPOOL_TEST_MARKER"]
max_timeout = "60s"
"""


class Process:
    """A server process that prints `... listening on ...:PORT` as its first line."""

    def __init__(self, argv: List[str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=f, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if " listening on " not in line:
            self.stop()
            raise RuntimeError(f"{argv[0]} did not start: {line!r}\n{log.read_text()[-3000:]}")
        self.port = int(line.strip().rsplit(":", 1)[1])
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def proc_stat(pid: int) -> Optional[Tuple[str, int]]:
    """(state, ppid) of a process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def children(pid: int) -> List[Tuple[int, str, str]]:
    """(pid, state, comm) of the processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid:
                found.append((int(entry), fields[0], stat[stat.index("(") + 1 : stat.rindex(")")]))
    return found


def marked(marker: str) -> List[int]:
    """Pids of the job processes whose environment has `FORKPOOL_TEST_MARKER=marker` (a job's pid-namespace
    init, `forkpool-init`, may carry the job's environment too: it is forkpool's, not the job's)."""
    needle = f"FORKPOOL_TEST_MARKER={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    if Path(f"/proc/{entry}/comm").read_text().strip() != "forkpool-init":
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def worker_of(pid: int, server: int) -> Optional[int]:
    """The server's child that `pid` descends from (its worker: the job's init in a pid namespace)."""
    while pid > 1:
        stat = proc_stat(pid)
        if stat is None:
            return None
        if stat[1] == server:
            return pid
        pid = stat[1]
    return None


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


class Stack:
    def __init__(self, forkpool_server: Process, app: Process) -> None:
        self.forkpool = forkpool_server
        self.app = app
        self.address = f"127.0.0.1:{forkpool_server.port}"
        self.url = f"http://127.0.0.1:{app.port}"

    def post(self, body: Dict[str, Any], timeout: float = 30) -> Tuple[int, Dict[str, Any]]:
        """A blocking POST /execute on a connection of its own."""
        with socket.create_connection(("127.0.0.1", self.app.port), timeout=timeout) as s:
            s.sendall(http_request(body))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(payload)

    def app_tally(self) -> Dict[str, int]:
        """The app's own tallies (GET /status): handlers completed, cancelled, refused."""
        with socket.create_connection(("127.0.0.1", self.app.port), timeout=10) as s:
            s.sendall(b"GET /status HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        tally: Dict[str, int] = json.loads(data.partition(b"\r\n\r\n")[2])["app"]
        return tally

    def status(self) -> forkpool.Status:
        with forkpool.Client(self.address) as client:
            return client.status()

    def workers(self) -> List[Tuple[int, str, str]]:
        """forkpool's children other than its guardian: job workers (or their zombies)."""
        # Its guardian and its idle warm sandboxes are not jobs.
        return [c for c in children(self.forkpool.pid) if c[2] not in ("forkpool-guard", "forkpool-warm")]


def http_request(body: Dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    return (
        b"POST /execute HTTP/1.1\r\nHost: app\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    binary = os.environ.get("FORKPOOL_BIN") or str(REPO / "target" / "debug" / "forkpool")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no forkpool binary at {binary} (build it, or set FORKPOOL_BIN)")
    work = Path(tempfile.mkdtemp(prefix="forkpool-aiohttp-"))
    (work / "forkpool.toml").write_text(CONFIG)
    server = Process(
        [binary, "serve", "--listen", "127.0.0.1:0", "--config", str(work / "forkpool.toml"), "--drain-timeout", "1s"],
        work / "forkpool.log",
    )
    app: Optional[Process] = None
    try:
        app = Process(
            [sys.executable, str(HERE / "app.py"), "--listen", "127.0.0.1:0", "--forkpool", f"127.0.0.1:{server.port}"],
            work / "app.log",
        )
        yield Stack(server, app)
        # Whatever the tests did: no zombie, no job process, and nothing ever forked from the app.
        s = Stack(server, app)
        assert wait_until(lambda: not s.workers(), 5), f"job processes left: {s.workers()}"
        assert children(app.pid) == []
    finally:
        if app is not None:
            app.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_a_request_completes_with_the_jobs_output(stack: Stack) -> None:
    status, body = stack.post({"job": "echo", "args": ["hello", "from", "aiohttp"]})
    assert status == 200, body
    assert body["exit_code"] == 0 and body["signal"] is None and body["reason"] == "exited"
    assert body["stdout"] == "hello from aiohttp\n" and body["stderr"] == ""
    assert body["pid"] > 0 and body["job_id"]
    # forkpool's refusals come back as HTTP errors carrying its message.
    status, body = stack.post({"job": "no-such-job"})
    assert (status, body["error"]) == (404, "NotFound") and "no-such-job" in body["message"]
    status, body = stack.post({"job": "echo", "env": {"NOT_ALLOWED": "x"}})
    assert (status, body["error"]) == (403, "PermissionDenied")
    status, body = stack.post({"args": []})
    assert (status, body["error"]) == (400, "InvalidRequest")


def test_a_disconnecting_client_kills_the_jobs_tree_within_a_second(stack: Stack) -> None:
    marker = uuid.uuid4().hex
    before = stack.status().cancelled_total
    with socket.create_connection(("127.0.0.1", stack.app.port), timeout=10) as s:
        s.sendall(http_request({"job": "tree", "env": {"FORKPOOL_TEST_MARKER": marker}}))
        assert wait_until(lambda: len(marked(marker)) == 3, 10), f"the tree never had 3 processes: {marked(marker)}"
        tree = marked(marker)
        s.shutdown(socket.SHUT_RDWR)
    disconnected = time.monotonic()
    assert wait_until(lambda: all(proc_stat(p) is None for p in tree), 1.0), (
        f"alive 1 s after the disconnect: {[(p, proc_stat(p)) for p in tree if proc_stat(p)]}"
    )
    print(f"tree of 3 gone {time.monotonic() - disconnected:.3f} s after the disconnect")
    assert wait_until(lambda: stack.status().cancelled_total == before + 1, 2)


def test_sigterm_to_a_worker_leaves_the_app_and_forkpool_serving(stack: Stack) -> None:
    marker = uuid.uuid4().hex
    outcome: Dict[str, Any] = {}

    async def request() -> None:
        async with aiohttp.ClientSession() as session:
            body = {"job": "tree", "env": {"FORKPOOL_TEST_MARKER": marker}}
            async with session.post(f"{stack.url}/execute", json=body) as response:
                outcome["status"], outcome["body"] = response.status, await response.json()

    async def scenario() -> None:
        task = asyncio.ensure_future(request())
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, wait_until, lambda: len(marked(marker)) == 3, 10)
        # The worker is the server's child the tree descends from (in a pid namespace, the job's init).
        worker = sorted({w for p in marked(marker) if (w := worker_of(p, stack.forkpool.pid)) is not None})
        assert len(worker) == 1, worker
        os.kill(worker[0], signal.SIGTERM)
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert outcome["status"] == 200 and outcome["body"]["signal"] == signal.SIGTERM, outcome
    assert stack.app.alive() and stack.forkpool.alive()
    status, body = stack.post({"job": "echo", "args": ["still", "serving"]})
    assert status == 200 and body["stdout"] == "still serving\n"
    assert stack.status().running == 0
    assert children(stack.app.pid) == []  # the app never forked a worker


def markers_running(prefix: str) -> Dict[str, int]:
    """For each `FORKPOOL_TEST_MARKER` value starting with `prefix`: how many processes carry it."""
    found: Dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            for item in environ.split(b"\0"):
                if item.startswith(b"FORKPOOL_TEST_MARKER=" + prefix.encode()):
                    value = item.split(b"=", 1)[1].decode()
                    found[value] = found.get(value, 0) + 1
    return found


def test_200_concurrent_requests_a_third_disconnecting(stack: Stack) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    total = 200
    leaving = set(rng.sample(range(total), 67))
    prefix = uuid.uuid4().hex
    before = stack.status()
    tally_before = stack.app_tally()
    outcomes: Dict[int, Any] = {}
    running: Dict[str, asyncio.Event] = {}

    async def watch(done: asyncio.Event) -> None:
        """Tells each leaving client when its job runs (from /proc: the job's processes carry its marker)."""
        loop = asyncio.get_running_loop()
        while not done.is_set():
            for marker in await loop.run_in_executor(None, markers_running, prefix):
                if marker in running:
                    running[marker].set()
            await asyncio.sleep(0.02)

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        marker = f"{prefix}-{i}"
        if i in leaving:
            # A job that would run for 30 s; its client leaves at a random instant while it runs.
            running[marker] = asyncio.Event()
            body = {"job": "work", "args": ["30", str(i)], "env": {"FORKPOOL_TEST_MARKER": marker}}
            request = asyncio.ensure_future(session.post(f"{stack.url}/execute", json=body))
            await asyncio.wait_for(running[marker].wait(), 30)
            await asyncio.sleep(rng.uniform(0, 0.5))
            assert not request.done(), f"request {i} ended before its client left"
            request.cancel()
            try:
                await request
            except asyncio.CancelledError:
                outcomes[i] = "left"
            return
        body = {"job": "work", "args": [f"{rng.uniform(0.1, 1.0):.2f}", str(i)], "env": {"FORKPOOL_TEST_MARKER": marker}}
        async with session.post(f"{stack.url}/execute", json=body) as response:
            outcomes[i] = (response.status, await response.json())

    async def scenario() -> float:
        started = time.monotonic()
        done = asyncio.Event()
        watcher = asyncio.ensure_future(watch(done))
        # One connection per request, closed with it: a cancelled request is a disconnected client.
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
                await asyncio.gather(*(one(session, i) for i in range(total)))
        finally:
            done.set()
            await watcher
        return time.monotonic() - started

    took = asyncio.run(scenario())
    print(f"200 requests in {took:.2f} s")
    completed = {i: o for i, o in outcomes.items() if i not in leaving}
    assert len(completed) == total - len(leaving) == 133
    for i, (status, body) in completed.items():
        assert status == 200 and body["exit_code"] == 0 and body["stdout"] == f"done {i}\n", (i, status, body)
    assert sorted(i for i, o in outcomes.items() if o == "left") == sorted(leaving)

    # Afterwards: no job process (from /proc), no zombie, nothing left running or queued.
    assert wait_until(lambda: not markers_running(prefix), 5), f"job processes left: {markers_running(prefix)}"
    assert wait_until(lambda: not stack.workers(), 5), f"children of forkpool left: {stack.workers()}"
    assert not [c for c in children(stack.forkpool.pid) if c[1] == "Z"]
    assert children(stack.app.pid) == []

    # forkpool's counters match the HTTP side: 200 jobs started and finished, the 67 whose client left were
    # cancelled, nothing refused or timed out, nothing running or queued.
    with forkpool.Client(stack.address) as client:
        assert wait_until(lambda: client.status().running == 0 and client.status().queued == 0, 5)
        after = client.status()
    delta = {
        name: getattr(after, name) - getattr(before, name)
        for name in ("started_total", "finished_total", "cancelled_total", "rejected_total", "timed_out_total")
    }
    print(f"forkpool counters: {delta}")
    assert delta == {
        "started_total": 200,
        "finished_total": 200,
        "cancelled_total": 67,
        "rejected_total": 0,
        "timed_out_total": 0,
    }

    # And the app saw the same: 133 handlers completed, 67 cancelled, none refused.
    tally = stack.app_tally()
    assert {k: tally[k] - tally_before[k] for k in tally} == {"completed": 133, "cancelled": 67, "refused": 0}
