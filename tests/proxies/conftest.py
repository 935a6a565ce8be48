"""Fixtures: replicas, proxies and topologies, each test with its own (ports are ephemeral, nothing is shared
between tests, so the suite runs in parallel with pytest-xdist: `pytest -n 10 tests/proxies`).

Environment:
- FORKPOOL_BIN: the forkpool binary (forkpool-init beside it); default <repo>/target/debug/forkpool.
- FORKPOOL_PROXY_FIGURES: the file to which this run's measurements are written as JSON lines (default: one in
  $TMPDIR); the closing summary prints them as a table.
"""

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

# HAProxy 2.6 fails the retry tests (see test_haproxy.py); FORKPOOL_PROXY_TOPOLOGIES=envoy,nginx,round_robin,haproxy
# runs every topology test through it as well.
TOPOLOGIES = os.environ.get("FORKPOOL_PROXY_TOPOLOGIES", "envoy,nginx,round_robin").split(",")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: waits a minute or more (runs first, in parallel with the rest)")
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist); workers inherit it
        path = os.environ.setdefault("FORKPOOL_PROXY_FIGURES", os.path.join(
            tempfile.gettempdir(), f"forkpool-proxy-figures-{os.getpid()}.jsonl"))
        Path(path).write_text("")


def pytest_collection_modifyitems(config, items):
    # The slow tests first, so that pytest-xdist spreads them over its workers at once.
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") else 1)


def pytest_sessionstart(session):
    binary = harness.forkpool_bin()
    if not binary.exists():
        raise pytest.UsageError(f"no forkpool binary at {binary} (set FORKPOOL_BIN)")
    if not (binary.parent / "forkpool-init").exists():
        raise pytest.UsageError(f"no forkpool-init beside {binary}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def pytest_terminal_summary(terminalreporter):
    path = Path(os.environ["FORKPOOL_PROXY_FIGURES"])
    if not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    terminalreporter.section("measured through each topology")
    for row in sorted(rows, key=lambda r: (r["what"], r["topology"])):
        terminalreporter.write_line(f"{row['topology']:<12} {row['what']:<44} {row['value']}")


@pytest.fixture
def figure():
    """figure(topology, what, value): a measurement for the closing summary (and FORKPOOL_PROXY_FIGURES)."""
    def record(topology, what, value):
        line = json.dumps({"topology": topology, "what": what, "value": value})
        with open(os.environ["FORKPOOL_PROXY_FIGURES"], "a") as out:
            out.write(line + "\n")
        print(f"FIGURE {topology} {what}: {value}")
    return record


@pytest.fixture
def make_topology(request, tmp_path):
    """make_topology(kind, n=3, workers=1, queue=0, extra=(), drain_timeout="10s", **proxy_options): N
    replicas and, for "envoy" / "nginx" / "haproxy", that proxy in front of them rendered from deploy/ (for
    "round_robin" the client balances). proxy_options: `edit` (Envoy: a function editing the config dict),
    `drop` / `set` (nginx, HAProxy: directives)."""
    made = []

    def make(kind, n=3, workers=1, queue=0, extra=(), drain_timeout="10s", **proxy_options):
        replicas = []
        topology = None
        try:
            for i in range(n):
                replicas.append(harness.Replica(f"replica{i}", tmp_path, workers=workers, queue=queue,
                                                drain_timeout=drain_timeout, extra=extra))
            proxy = None
            if kind == "envoy":
                proxy = harness.Envoy(tmp_path, replicas, **proxy_options)
            elif kind == "nginx":
                proxy = harness.Nginx(tmp_path, replicas, **proxy_options)
            elif kind == "haproxy":
                proxy = harness.HAProxy(tmp_path, replicas, **proxy_options)
            else:
                assert kind == "round_robin" and not proxy_options, kind
            topology = harness.Topology(kind, replicas, proxy)
        finally:
            if topology is None:
                for replica in replicas:
                    replica.stop()
        made.append(topology)
        return topology

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for topology in made:
        if failed:
            print(f"==== logs of {topology.kind}\n{topology.logs()}")
        topology.close()
    if not failed:
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(params=TOPOLOGIES)
def topo(request, make_topology):
    """Three single-slot replicas (`--workers 1 --queue 0`) behind each topology."""
    return make_topology(request.param)


def wait_until(predicate, timeout, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
