"""Each topology (Envoy, nginx, client-side round robin) over three single-slot replicas: calls work, a job's
tree dies with its call however the call ends, calls spread over replicas, refused calls are retried onto a
free replica (and only refused ones), and draining a replica loses no call."""

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

import harness
from conftest import TOPOLOGIES, wait_until
from harness import Call, job_tree, new_marker, owner, pb, tree_job, wait_gone, which_replica

HERE = Path(__file__).resolve().parent


def test_call_works(topo):
    stub = topo.stub()
    call = Call(stub, ["sh", "-c", "echo hello; echo oops >&2; exit 3"]).wait(20)
    assert call.code == grpc.StatusCode.OK, (call.code, call.details)
    assert call.stdout == b"hello\n"
    assert [r.stderr for _, kind, r in call.events if kind == "stderr"] == [b"oops\n"]
    assert call.exited.code == 3 and call.exited.reason == pb.EXIT_REASON_EXITED
    assert call.kinds()[0] == "started" and call.kinds()[-1] == "exited"
    # A stream of stdin larger than nginx's default body limit (1 MiB), and unary calls.
    chunk = b"x" * 65536
    call = Call(stub, ["wc", "-c"], stdin=[chunk] * 40).wait(30)
    assert call.code == grpc.StatusCode.OK, (call.code, call.details)
    assert call.stdout.strip() == str(len(chunk) * 40).encode()
    assert stub.GetStatus(pb.GetStatusRequest(), timeout=5).workers == 1
    assert harness.health_check(topo.channel()) == 1


def _started_tree(topo, stub, marker, **kwargs):
    call = Call(stub, tree_job(marker), **kwargs)
    call.wait_stdout(b"ready")
    tree = job_tree(marker, topo.replicas)
    assert len(tree) == 3, f"expected the shell and two sleeps, found {tree}"
    replica = which_replica(call.started.pid, topo.replicas)
    assert replica is not None and all(replica.owns(pid) for pid in tree), (tree, topo.replicas)
    return call, tree


def test_cancel_kills_the_tree(topo, figure):
    call, tree = _started_tree(topo, topo.stub(), new_marker(), half_close=False)
    call.cancel()
    gone = wait_gone(tree, 5)
    assert gone is not None and gone < 1.0, f"{tree} still alive after the cancel ({gone})"
    call.wait(5)
    assert call.code == grpc.StatusCode.CANCELLED
    figure(topo.kind, "cancel -> tree gone (ms)", round(gone * 1000, 1))
    assert wait_until(lambda: sum(r.status().cancelled_total for r in topo.replicas) == 1, 5)


def test_killed_client_kills_the_tree(topo, figure):
    marker = new_marker()
    target, options = topo.channel_args()
    client = subprocess.Popen([sys.executable, str(HERE / "client_proc.py"), target, json.dumps(options), "--",
                               *tree_job(marker)], stdout=subprocess.PIPE, text=True)
    try:
        line = client.stdout.readline()
        assert line.strip() == "ready", line
        tree = job_tree(marker, topo.replicas)
        assert len(tree) == 3, tree
        client.send_signal(signal.SIGKILL)
        gone = wait_gone(tree, 5)
        assert gone is not None and gone < 1.0, f"{tree} still alive after the client was killed ({gone})"
        figure(topo.kind, "client SIGKILLed -> tree gone (ms)", round(gone * 1000, 1))
    finally:
        client.kill()
        client.wait()


def test_deadline_kills_the_tree(topo, figure):
    marker = new_marker()
    call = Call(topo.stub(), tree_job(marker), timeout=2.0, half_close=False)
    call.wait_stdout(b"ready")
    tree = job_tree(marker, topo.replicas)
    assert len(tree) == 3, tree
    deadline = call.start_time + 2.0
    assert wait_gone(tree, 5) is not None, f"{tree} survived the deadline"
    after = time.monotonic() - deadline  # from the deadline to the instant every process was gone
    call.wait(5)
    assert call.code == grpc.StatusCode.DEADLINE_EXCEEDED, (call.code, call.details)
    assert after < 1.0, f"the tree was gone {after:.3f} s after the deadline"
    figure(topo.kind, "deadline -> tree gone (ms)", round(after * 1000, 1))


def test_long_jobs_land_on_different_replicas(topo, figure):
    stub = topo.stub()
    calls = []
    for _ in range(3):
        call = Call(stub, ["sleep", "30"])
        call.wait_started()
        calls.append(call)
    owners = [which_replica(call.started.pid, topo.replicas) for call in calls]
    assert None not in owners
    assert len(set(owners)) == 3, f"three long jobs on {owners}"
    assert topo.running() == [1, 1, 1]
    rejected = sum(r.status().rejected_total for r in topo.replicas)
    figure(topo.kind, "3 long jobs: replicas used / refusals on the way", f"3 / {rejected}")
    for call in calls:
        call.cancel()


def _fill(replica):
    """A job holding the replica's one slot, started directly (not through the topology: as another client
    or another proxy instance would)."""
    call = Call(replica.stub, ["sleep", "60"], half_close=False)
    call.wait_started()
    return call


def test_call_is_retried_onto_the_free_replica(topo, figure):
    fills = [_fill(r) for r in topo.replicas[:2]]
    before = [r.status() for r in topo.replicas]
    stub = topo.stub()
    for i in range(6):
        call = Call(stub, ["sh", "-c", "echo ran"]).wait(20)
        assert call.code == grpc.StatusCode.OK, (i, call.code, call.details)
        assert call.stdout == b"ran\n"
    after = [r.status() for r in topo.replicas]
    started = [a.started_total - b.started_total for a, b in zip(after, before)]
    refused = [a.rejected_total - b.rejected_total for a, b in zip(after, before)]
    assert started == [0, 0, 6], started
    # The full replicas did refuse some of those calls (RESOURCE_EXHAUSTED) and the retry moved them.
    assert sum(refused) >= 1 and refused[2] == 0, refused
    retried_by = "Envoy" if topo.retries == "proxy" else "the client"
    if topo.retries == "proxy":
        assert topo.proxy.stats()["upstream_rq_retry"] == sum(refused)
    figure(topo.kind, "2 of 3 full: 6 calls, refusals retried", f"{sum(refused)} refusals, 6/6 ok ({retried_by})")
    for call in fills:
        call.cancel()


def test_all_full_is_resource_exhausted_after_the_retries(topo, figure):
    fills = [_fill(r) for r in topo.replicas]
    before = [r.status().rejected_total for r in topo.replicas]
    start = time.monotonic()
    call = Call(topo.stub(), ["echo", "never"]).wait(30)
    took = time.monotonic() - start
    assert call.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (call.code, call.details)
    assert call.events == []
    refused = [r.status().rejected_total - b for r, b in zip(topo.replicas, before)]
    # Envoy: 1 try + num_retries (3); the clients' policy: maxAttempts (5). Each a refusal, no job started.
    attempts = 4 if topo.retries == "proxy" else 5
    assert sum(refused) == attempts, refused
    assert all(n >= 1 for n in refused), refused
    assert [r.status().started_total for r in topo.replicas] == [1, 1, 1]
    figure(topo.kind, "all full: attempts before RESOURCE_EXHAUSTED", f"{attempts} ({took * 1000:.0f} ms)")
    for call in fills:
        call.cancel()


@pytest.mark.parametrize("kind", TOPOLOGIES)
def test_draining_replica_loses_no_call(make_topology, kind, figure):
    """SIGTERM to the replica running a long job while three clients keep calling: every call succeeds (the
    refusals of the draining replica are retried elsewhere), the long job finishes, the replica exits 0."""
    topo = make_topology(kind, workers=2, drain_timeout="20s")
    stub = topo.stub()
    long_call = Call(stub, ["sh", "-c", "sleep 3; echo finished"])
    long_call.wait_started()
    draining = which_replica(long_call.started.pid, topo.replicas)
    results = []
    stop = threading.Event()

    def load():
        while not stop.is_set():
            call = Call(stub, ["sh", "-c", "sleep 0.1; echo ok"]).wait(30)
            owner_ = call.started and owner(call.started, topo.replicas)
            results.append((call.start_time, call.end_time, call.code, call.details, call.stdout, owner_))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    sigterm = time.monotonic()
    draining.signal(signal.SIGTERM)
    not_serving = None
    refused = 0
    while draining.proc.poll() is None:  # until the long job is done and the replica exits
        try:
            if not_serving is None and draining.health() == 2:
                not_serving = time.monotonic()
            refused = draining.metrics().get('forkpool_calls_rejected_total{reason="draining"}', refused)
        except Exception:
            pass
        time.sleep(0.05)
    exit_code = draining.proc.wait()
    exited = time.monotonic()
    time.sleep(1.5)  # calls go on after the replica is gone
    stop.set()
    for thread in threads:
        thread.join(60)
    long_call.wait(5)
    failed = [r for r in results if r[2] != grpc.StatusCode.OK or r[4] != b"ok\n"]
    assert not failed, f"{len(failed)} of {len(results)} calls failed: {failed[:5]}"
    assert not_serving is not None, "the draining replica never said NOT_SERVING"
    assert long_call.code == grpc.StatusCode.OK and long_call.exited.code == 0, (long_call.code, long_call.exited)
    assert long_call.stdout == b"finished\n"
    assert exit_code == 0
    during = [r for r in results if sigterm <= r[1] <= exited]
    after = [r for r in results if r[1] > exited]
    assert len(during) >= 5 and len(after) >= 3, (len(during), len(after))
    assert all(r[5] is not None for r in results), "a call whose replica is unknown"
    # A call sent as the signal arrives may still be admitted; none sent after NOT_SERVING was seen. (The server
    # closes admission first, then says NOT_SERVING; this test polls health every 50 ms, so it checks the
    # invariant, not that order.)
    late = [r for r in results if r[0] > not_serving and r[5] is draining]
    assert not late, f"calls admitted by the draining replica after it said NOT_SERVING: {late}"
    figure(kind, "drain: ok calls while draining / after exit", f"{len(during)} / {len(after)}, 0 failed")
    figure(kind, "drain: refusals retried elsewhere", int(refused))


def _bursts(topo, n, rounds=1, until=None):
    """Two replicas kept full directly, then `n` calls at once through the topology, `rounds` times (or until
    `until(calls)`): the free replica has the slots for all of them, most are refused first somewhere else.
    Returns the calls of the last round."""
    workers = topo.replicas[0].status().workers
    fills = [Call(r.stub, ["sleep", "60"], half_close=False) for r in topo.replicas[:2] for _ in range(workers)]
    for call in fills:
        call.wait_started()
    stub = topo.stub()
    try:
        for _ in range(rounds):
            calls = [Call(stub, ["sh", "-c", "sleep 0.5; echo ok"]) for _ in range(n)]
            for call in calls:
                call.wait(30)
            if until is not None and until(calls):
                break
        return calls
    finally:
        for call in fills:
            call.cancel()


def test_envoy_retries_a_burst_of_refusals(make_topology, figure):
    """Eight calls at once, most refused at first: Envoy retries every one onto the free replica (its default
    of 3 retries in flight per cluster would fail some: see the control). Envoy only: its retries avoid the
    replicas already tried (`previous_hosts`); a client's retries go round the replicas in turn, and eight
    concurrent calls could each meet full replicas on all of their attempts."""
    topo = make_topology("envoy", workers=8)
    calls = _bursts(topo, 8)
    failed = [(c.code, c.details) for c in calls if c.code != grpc.StatusCode.OK or c.stdout != b"ok\n"]
    refused = sum(r.status().rejected_total for r in topo.replicas)
    assert not failed, failed
    assert topo.replicas[2].status().started_total == 8
    figure("envoy", "burst of 8 calls, 2 of 3 full", f"8/8 ok, {refused} refusals retried")


def _envoy_default_circuit_breakers(config):
    del config["static_resources"]["clusters"][0]["circuit_breakers"]


def test_control_envoy_default_retry_limit_fails_a_burst(make_topology, figure):
    """The same bursts with Envoy's default circuit breakers (3 retries in flight per cluster) lose calls. How
    many retries overlap depends on timing (a loaded machine spreads them out): up to 5 bursts until one
    loses a call."""
    topo = make_topology("envoy", workers=8, edit=_envoy_default_circuit_breakers)
    calls = _bursts(topo, 8, rounds=5, until=lambda calls: any(c.code != grpc.StatusCode.OK for c in calls))
    failed = [c.code for c in calls if c.code != grpc.StatusCode.OK]
    overflow = topo.proxy.stats().get("upstream_rq_retry_overflow")
    figure("envoy", "burst of 8, Envoy's default circuit breakers (control)",
           f"{len(failed)} failed, {overflow} retries refused by the breaker")
    assert failed and overflow, (failed, overflow)
