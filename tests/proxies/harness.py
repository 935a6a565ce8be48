"""Real forkpool replicas, real proxies (Envoy, nginx, HAProxy) and grpcio clients, all on loopback.

Replicas are `forkpool serve` processes (binary from $FORKPOOL_BIN, default <repo>/target/debug/forkpool, with
forkpool-init beside it) on ephemeral ports, each with a small pool. Which replica ran a call is read from the
/proc tree: a job's processes descend from the replica's server process (server -> forkpool-init -> job).
"""

import atexit
import json
import os
import queue as queues
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from functools import lru_cache
from pathlib import Path

import grpc
from grpc_tools import protoc

import render

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"


# ---------------------------------------------------------------------------------------------------- stubs

def _load_stubs():
    """Generates forkpool_pb2 / forkpool_pb2_grpc from proto/ into a temporary directory and imports them."""
    out = tempfile.mkdtemp(prefix="forkpool-stubs-")
    # Imported once; the files are not needed after this process.
    atexit.register(shutil.rmtree, out, True)
    include = Path(protoc.__file__).parent / "_proto"
    status = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}",
                          f"--grpc_python_out={out}", str(PROTO_ROOT / "forkpool/v1/forkpool.proto")])
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    sys.path.insert(0, out)
    from forkpool.v1 import forkpool_pb2, forkpool_pb2_grpc  # noqa: E402
    return forkpool_pb2, forkpool_pb2_grpc


pb, pb_grpc = _load_stubs()


def forkpool_bin():
    path = Path(os.environ.get("FORKPOOL_BIN", REPO / "target/debug/forkpool"))
    return path if path.is_absolute() else (Path.cwd() / path)


@lru_cache(maxsize=None)
def serve_help():
    out = subprocess.run([str(forkpool_bin()), "serve", "--help"], capture_output=True, text=True, timeout=30)
    return out.stdout + out.stderr


def serve_supports(flag):
    """Whether this forkpool binary's `serve` has `flag` (server features that land separately)."""
    return flag in serve_help()


def proto_has(message, field):
    return field in getattr(pb, message).DESCRIPTOR.fields_by_name


# ---------------------------------------------------------------------------------------------------- ports

def free_port():
    """A loopback port that was free a moment ago (bind port 0, read it back, close). A process that then
    fails to bind it is restarted on another (see `start_with_port`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


# ---------------------------------------------------------------------------------------------------- /proc

def proc_table():
    """{pid: (ppid, comm, cmdline)} of every live, non-zombie process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z":
            continue
        table[int(entry)] = (int(fields[1]), comm, cmdline)
    return table


def ancestors(pid, table):
    seen = []
    while pid in table and pid not in seen:
        seen.append(pid)
        pid = table[pid][0]
    return seen


def marker_pids(marker, roots):
    """Pids of a job's processes: those descending from one of `roots` (replica servers) whose command line
    holds `marker`, except forkpool-init (the job's pid-namespace init, whose command line repeats the job's).
    A client's own command line may hold the marker too: it descends from no replica."""
    table = proc_table()
    roots = set(roots)
    return sorted(pid for pid, (_, comm, cmd) in table.items()
                  if marker in cmd and comm != "forkpool-init" and roots & set(ancestors(pid, table)[1:]))


def alive(pids):
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out


def wait_gone(pids, timeout):
    """Seconds until every pid is gone (dead and reaped, or a zombie about to be); None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not alive(pids):
            return time.monotonic() - start
        time.sleep(0.002)
    return None


# ---------------------------------------------------------------------------------------------------- replicas

class Replica:
    """One `forkpool serve` on an ephemeral loopback port, with --metrics-listen."""

    def __init__(self, name, workdir, workers=1, queue=0, drain_timeout="10s", extra=(), listen="127.0.0.1:0"):
        self.name = name
        self.log_path = Path(workdir) / f"{name}.log"
        args = [str(forkpool_bin()), "serve", "--listen", listen, "--allow-raw-commands",
                "--workers", str(workers), "--queue", str(queue), "--drain-timeout", drain_timeout,
                "--metrics-listen", "127.0.0.1:0", *extra]
        self.args = args
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL,
                                     text=True)
        self.pid = self.proc.pid
        self.port = None
        self.metrics_port = None
        lines = queues.Queue()
        threading.Thread(target=_pump_lines, args=(self.proc.stdout, lines), daemon=True).start()
        seen = []
        deadline = time.monotonic() + 20
        # First lines: "forkpool listening on 127.0.0.1:PORT", "forkpool metrics on http://ADDR/metrics".
        while self.port is None or self.metrics_port is None:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queues.Empty:
                line = None
            if line is None:
                self.stop(kill=True)
                raise RuntimeError(f"replica {name} did not start: {seen} {self.log_path.read_text()[-2000:]}")
            seen.append(line)
            if line.startswith("forkpool listening on "):
                self.port = int(line.rsplit(":", 1)[1])
            elif line.startswith("forkpool metrics on "):
                self.metrics_port = int(line.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        self.addr = ("127.0.0.1", self.port)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.ExecutorStub(self.channel)

    def __repr__(self):
        return f"<{self.name} pid {self.pid} port {self.port}>"

    def status(self):
        return self.stub.GetStatus(pb.GetStatusRequest(), timeout=5)

    def health(self, service="forkpool.v1.Executor"):
        return health_check(self.channel, service)

    def metrics(self):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def owns(self, pid):
        """Whether `pid` descends from this replica's server process."""
        return self.pid in ancestors(pid, proc_table())

    def signal(self, sig):
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def stop(self, kill=False):
        """SIGTERM (drain), a second SIGTERM half a second later (kills the jobs at once), SIGKILL as a last
        resort: the server cleans up its cgroups and directories itself."""
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            self.channel.close()
        except Exception:
            pass
        self.log.close()


def _pump_lines(stream, lines):
    for line in stream:
        lines.put(line.strip())
    lines.put(None)


def health_check(channel, service="forkpool.v1.Executor", timeout=2):
    """grpc.health.v1.Health/Check without generated stubs: 1 SERVING, 2 NOT_SERVING."""
    call = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
    name = service.encode()
    reply = call(b"\x0a" + bytes([len(name)]) + name if name else b"", timeout=timeout)
    return reply[1] if len(reply) >= 2 else 0


def which_replica(pid, replicas):
    """The replica whose server process `pid` descends from (None once the process is gone)."""
    table = proc_table()
    chain = ancestors(pid, table)
    for replica in replicas:
        if replica.pid in chain:
            return replica
    return None


def owner(started, replicas, timeout=3.0):
    """The replica that ran the job of a `started` event: from /proc while the worker lives, else from the
    replicas' logs, whose job spans carry `job_id=... pid=...}` (job ids alone may repeat across replicas
    started in the same second; the pair does not)."""
    replica = which_replica(started.pid, replicas)
    if replica is not None:
        return replica
    needles = (f"job_id={started.job_id} ", f" pid={started.pid}}}")
    deadline = time.monotonic() + timeout
    while True:
        for replica in replicas:
            try:
                text = replica.log_path.read_text(errors="replace")
            except OSError:
                continue
            if any(all(n in line for n in needles) for line in text.splitlines()):
                return replica
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------------- clients

RETRY_CODES = ["RESOURCE_EXHAUSTED", "UNAVAILABLE"]


def service_config(round_robin=False, retry=True, max_attempts=5):
    """A gRPC service config: round_robin with client-side health checking (or the default pick_first), and a
    retry policy for the two codes that forkpool returns only for calls it never admitted."""
    config = {}
    if round_robin:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        config["healthCheckConfig"] = {"serviceName": "forkpool.v1.Executor"}
    if retry:
        config["methodConfig"] = [{
            "name": [{"service": "forkpool.v1.Executor"}],
            "retryPolicy": {"maxAttempts": max_attempts, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                            "backoffMultiplier": 2, "retryableStatusCodes": RETRY_CODES},
        }]
    return json.dumps(config)


def channel_options(round_robin=False, retry=True, authority="forkpool", max_attempts=5):
    options = [("grpc.service_config", service_config(round_robin, retry, max_attempts)),
               ("grpc.enable_retries", 1 if retry else 0)]
    if authority:
        options.append(("grpc.default_authority", authority))
    return options


def ipv4_target(replicas):
    return "ipv4:" + ",".join(f"{host}:{port}" for host, port in (r.addr for r in replicas))


class Call:
    """One Execute call driven from a thread: events collected, helpers to wait for output or the end."""

    def __init__(self, stub, command, *, half_close=True, timeout=None, stdin=(), heartbeat=None,
                 wait_for_ready=None):
        self.events = []
        self.stdout = b""
        self.code = None
        self.details = None
        self.exited = None
        self.started = None
        self.end_time = None
        self._done = threading.Event()
        self._cond = threading.Condition()
        self._close = threading.Event()
        start = pb.StartJob(command=command)
        if heartbeat is not None:
            start.heartbeat_interval.FromTimedelta(heartbeat)

        def requests():
            yield pb.ExecuteRequest(start=start)
            for chunk in stdin:
                yield pb.ExecuteRequest(stdin=chunk)
            if not half_close:
                self._close.wait()

        self.start_time = time.monotonic()
        self.call = stub.Execute(requests(), timeout=timeout, wait_for_ready=wait_for_ready)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self):
        try:
            for response in self.call:
                kind = response.WhichOneof("event")
                with self._cond:
                    self.events.append((time.monotonic(), kind, response))
                    if kind == "stdout":
                        self.stdout += response.stdout
                    elif kind == "started":
                        self.started = response.started
                    elif kind == "exited":
                        self.exited = response.exited
                    self._cond.notify_all()
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            self.code = error.code()
            self.details = error.details()
        finally:
            self.end_time = time.monotonic()
            self._close.set()
            self._done.set()
            with self._cond:
                self._cond.notify_all()

    def wait_stdout(self, needle, timeout=15):
        with self._cond:
            ok = self._cond.wait_for(lambda: needle in self.stdout or self._done.is_set(), timeout=timeout)
        assert ok and needle in self.stdout, \
            f"no {needle!r} in stdout: code {self.code} {self.details} {self.stdout!r}"

    def wait_started(self, timeout=15):
        with self._cond:
            self._cond.wait_for(lambda: self.started is not None or self._done.is_set(), timeout=timeout)
        assert self.started is not None, f"not started: {self.code} {self.details}"
        return self.started

    def wait(self, timeout=120):
        assert self._done.wait(timeout), "the call did not end"
        return self

    def done(self):
        return self._done.is_set()

    def cancel(self):
        self.call.cancel()

    def close_stdin(self):
        self._close.set()

    def kinds(self):
        return [kind for _, kind, _ in self.events]


def tree_job(marker):
    """The 3-process job: a shell and two sleeps, `marker` being a sleep length unique to the test."""
    return ["sh", "-c", f"sleep {marker} & sleep {marker} & echo ready; wait"]


def new_marker():
    """A sleep length no other test uses (their processes are found by it in /proc/*/cmdline)."""
    return str(1_000_000 + (os.getpid() * 7919 + time.monotonic_ns() // 1000) % 8_999_999)


def job_tree(marker, replicas, expected=3, timeout=5):
    """The job's processes (found by `marker`) on any of `replicas`, once `expected` of them exist."""
    deadline = time.monotonic() + timeout
    while True:
        pids = marker_pids(marker, [r.pid for r in replicas])
        if len(pids) >= expected or time.monotonic() > deadline:
            return pids
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------------- proxies

class ProxyProcess:
    """A proxy process with its scratch directory; `port` is where clients connect."""

    name = "proxy"
    retries = "client"  # who retries RESOURCE_EXHAUSTED / UNAVAILABLE: "proxy" or "client"

    def __init__(self, workdir):
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=workdir))
        self.proc = None
        self.port = None

    def target(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        """SIGTERM: each proxy's fast shutdown (nginx's SIGQUIT would wait for open calls)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self):
        out = []
        for path in sorted(self.workdir.glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)


class Envoy(ProxyProcess):
    name = "envoy"
    retries = "proxy"

    def __init__(self, workdir, replicas, edit=None):
        super().__init__(workdir)
        config = self.workdir / "envoy.yaml"
        config.write_text(render.envoy_render([r.addr for r in replicas], edit=edit))
        admin_path = self.workdir / "admin-address"
        self.proc = subprocess.Popen(
            ["envoy", "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn",
             "--admin-address-path", str(admin_path), "--log-path", str(self.workdir / "envoy.log")],
            stdout=subprocess.DEVNULL, stderr=open(self.workdir / "stderr.log", "w"), stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not (admin_path.exists() and admin_path.read_text().strip()):
            self._check(deadline)
            time.sleep(0.05)
        self.admin = admin_path.read_text().strip()
        while self.port is None:
            self._check(deadline)
            try:
                listeners = json.loads(self.admin_get("/listeners?format=json"))
                for status in listeners.get("listener_statuses", []):
                    port = status["local_address"]["socket_address"].get("port_value")
                    if port:
                        self.port = port
            except OSError:
                pass
            time.sleep(0.05)
        # Serving once the listener is up (Envoy opens it after the first health-check round); wait for the
        # replicas to be healthy, as a real deployment's readiness would.
        while self.healthy_hosts() < len(replicas):
            self._check(deadline)
            time.sleep(0.05)

    def _check(self, deadline):
        if self.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"envoy did not come up\n{self.logs()}")

    def admin_get(self, path):
        return urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5).read().decode()

    def stats(self, prefix="cluster.forkpool."):
        out = {}
        for line in self.admin_get(f"/stats?filter=^{prefix}").splitlines():
            key, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[key[len(prefix):]] = int(value)
        return out

    def healthy_hosts(self):
        try:
            text = self.admin_get("/clusters")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines()
                   if line.startswith("forkpool::") and "::health_flags::healthy" in line)


class Nginx(ProxyProcess):
    name = "nginx"

    def __init__(self, workdir, replicas, drop=(), set=None):
        super().__init__(workdir)
        for attempt in range(5):
            port = free_port()
            config = self.workdir / "nginx.conf"
            config.write_text(render.nginx_render([r.addr for r in replicas], port, self.workdir, drop, set))
            self.proc = subprocess.Popen(
                ["nginx", "-c", str(config), "-p", str(self.workdir), "-g", "daemon off;"],
                stdout=open(self.workdir / "stdout.log", "w"), stderr=open(self.workdir / "stderr.log", "w"),
                stdin=subprocess.DEVNULL)
            if wait_port(port, 10, self.proc):
                self.port = port
                return
            self.stop()
        raise RuntimeError(f"nginx did not come up\n{self.logs()}")


class HAProxy(ProxyProcess):
    name = "haproxy"

    def __init__(self, workdir, replicas, drop=(), set=None, text=None):
        super().__init__(workdir)
        for attempt in range(5):
            port = free_port()
            config = self.workdir / "haproxy.cfg"
            config.write_text(text(port) if text else
                              render.haproxy_render([r.addr for r in replicas], port, drop, set))
            self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(config)],
                                         stdout=open(self.workdir / "stdout.log", "w"),
                                         stderr=open(self.workdir / "stderr.log", "w"), stdin=subprocess.DEVNULL)
            if wait_port(port, 10, self.proc):
                self.port = port
                return
            self.stop()
        raise RuntimeError(f"haproxy did not come up\n{self.logs()}")


# ---------------------------------------------------------------------------------------------------- topologies

class Topology:
    """N replicas and the way a client reaches them: a proxy, or client-side round robin."""

    def __init__(self, kind, replicas, proxy=None):
        self.kind = kind
        self.replicas = replicas
        self.proxy = proxy
        self.retries = proxy.retries if proxy else "client"
        self._channels = []

    @property
    def target(self):
        return self.proxy.target() if self.proxy else ipv4_target(self.replicas)

    def channel_args(self, retry=True):
        """(target, options) for a client of this topology. Behind Envoy the proxy retries, so the client has
        no retry policy (the tests prove Envoy's); behind nginx and HAProxy the client retries; with client-side
        balancing, round_robin + retries + an explicit authority."""
        if self.proxy is None:
            return self.target, channel_options(round_robin=True, retry=retry)
        client_retry = retry and self.retries == "client"
        return self.target, channel_options(retry=client_retry, authority=None)

    def channel(self, retry=True):
        target, options = self.channel_args(retry)
        channel = grpc.insecure_channel(target, options=options)
        self._channels.append(channel)
        return channel

    def stub(self, retry=True):
        return pb_grpc.ExecutorStub(self.channel(retry))

    def running(self):
        return [r.status().running if r.proc.poll() is None else None for r in self.replicas]

    def started(self):
        return [r.status().started_total for r in self.replicas]

    def close(self):
        for channel in self._channels:
            channel.close()
        if self.proxy:
            self.proxy.stop()
        for replica in self.replicas:
            replica.stop()

    def logs(self):
        out = [self.proxy.logs()] if self.proxy else []
        for r in self.replicas:
            try:
                out.append(f"--- {r.name}\n{r.log_path.read_text(errors='replace')[-3000:]}")
            except OSError:
                pass
        return "\n".join(out)
