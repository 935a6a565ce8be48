"""A job silent for 65 s must not be cut: through the committed configs (long timeouts), and through proxies
with idle timeouts shorter than that thanks to server heartbeats. The controls run the same silent job
through the proxies' default timeouts and through the short idle timeouts without heartbeats, and must be cut:
they prove that the positive tests could fail.

These tests wait a minute each; they run first and in parallel (pytest-xdist)."""

import datetime
import time

import grpc
import pytest

from conftest import TOPOLOGIES, wait_until
import render
from harness import Call, proto_has, serve_supports

SILENT = 65
SILENT_JOB = ["sh", "-c", f"sleep {SILENT}; echo done"]

HEARTBEATS = serve_supports("--heartbeat-interval")
needs_heartbeats = pytest.mark.skipif(
    not HEARTBEATS, reason="this forkpool binary has no `serve --heartbeat-interval` yet (server heartbeats)")

pytestmark = pytest.mark.slow


def _silent_calls(topo):
    """Two silent calls on one topology: one whose client half-closed after `start` (as grpcurl and most
    non-interactive clients do) and one whose request stream stays open (a client that could still send
    stdin)."""
    stub = topo.stub()
    return {"half-closed": Call(stub, SILENT_JOB), "open": Call(stub, SILENT_JOB, half_close=False)}


def _heartbeats(call):
    """Heartbeat events (events of a kind these stubs do not know count too: proto/ may predate them)."""
    return sum(1 for kind in call.kinds() if kind in ("heartbeat", None))


def _assert_completed(calls):
    for name, call in calls.items():
        call.wait(SILENT + 30)
        assert call.code == grpc.StatusCode.OK, (name, call.code, call.details)
        assert call.stdout == b"done\n" and call.exited.code == 0, (name, call.stdout, call.exited)
        assert call.end_time - call.start_time >= SILENT


def _assert_cut(calls, expected_after, topo, figure, what):
    """Each call ended early (not OK, no `done`) about `expected_after` s in, and the replica killed its job."""
    for name, call in calls.items():
        call.wait(SILENT + 30)
        took = call.end_time - call.start_time
        assert call.code != grpc.StatusCode.OK and b"done" not in call.stdout, (name, call.code, call.stdout)
        assert expected_after - 1 <= took <= expected_after + 4, (name, took, call.code, call.details)
        figure(topo.kind, f"{what}: {name} call cut after (s)", f"{took:.1f} ({call.code.name})")
    # The proxy reset the call upstream too: the replica cancelled the job and killed it.
    ended = max(call.end_time for call in calls.values())
    status = wait_until(lambda: (lambda s: s if s.running == 0 else None)(topo.replicas[0].status()), 5)
    assert status is not None, f"the job still runs on the replica: {topo.replicas[0].status()}"
    assert status.cancelled_total == len(calls), status
    figure(topo.kind, f"{what}: job killed on the replica after the cut (ms)",
           round((time.monotonic() - ended) * 1000))


@pytest.mark.parametrize("kind", TOPOLOGIES)
def test_silent_job_is_not_cut_with_the_committed_timeouts(make_topology, kind, figure):
    topo = make_topology(kind, n=1, workers=2)
    calls = _silent_calls(topo)
    _assert_completed(calls)
    figure(kind, f"silent {SILENT} s, committed config", "completed (half-closed and open)")


# ---------------------------------------------------------------------------------------------------- controls

def _envoy_defaults(config):
    """Envoy's own defaults: route timeout 15 s (from the end of the request), stream idle 5 min."""
    del render.envoy_route(config)["timeout"]
    del render.envoy_hcm(config)["stream_idle_timeout"]


NGINX_TIMEOUTS = ("grpc_read_timeout", "grpc_send_timeout", "client_body_timeout")


def _quiet_pings(tmp_path):
    """Replica flags for a server whose HTTP/2 keepalive PINGs are rarer than any timeout here. nginx opens one
    upstream connection per call, and every frame on it, forkpool's keepalive PINGs included (every 10 s by
    default), resets grpc_read_timeout: with the default pings nginx never cuts a silent call (measured by
    test_nginx_default_timeouts_spare_a_silent_job_while_the_server_pings). Its controls need quiet pings."""
    config = tmp_path / "quiet-pings.toml"
    config.write_text('keepalive_interval = "300s"\nkeepalive_timeout = "20s"\n')
    return ("--config", str(config))


def test_control_envoy_default_timeouts_cut_a_silent_job(make_topology, figure):
    """Envoy's default route timeout (15 s) cuts a call whose client half-closed. (A call whose request stays
    open is not timed by it: the route timeout starts at the end of the request.)"""
    topo = make_topology("envoy", n=1, workers=1, edit=_envoy_defaults)
    calls = {"half-closed": Call(topo.stub(), SILENT_JOB)}
    _assert_cut(calls, 15, topo, figure, "Envoy defaults")


def test_control_nginx_default_timeouts_cut_a_silent_job(make_topology, tmp_path, figure):
    """nginx's default grpc_read_timeout (60 s) cuts a silent call when nothing else crosses its upstream
    connection (server keepalive PINGs rarer than that)."""
    topo = make_topology("nginx", n=1, workers=2, extra=_quiet_pings(tmp_path), drop=NGINX_TIMEOUTS)
    _assert_cut(_silent_calls(topo), 60, topo, figure, "nginx defaults, quiet pings")


def test_nginx_default_timeouts_spare_a_silent_job_while_the_server_pings(make_topology, figure):
    """Measured, not promised: with forkpool's default keepalive (a PING every 10 s on each connection), nginx's
    60 s defaults do not cut a silent call, since each PING on the call's upstream connection resets
    grpc_read_timeout. The committed config does not rely on it (its timeouts are long)."""
    topo = make_topology("nginx", n=1, workers=2, drop=NGINX_TIMEOUTS)
    _assert_completed(_silent_calls(topo))
    figure("nginx", f"silent {SILENT} s, nginx defaults, server pings every 10 s", "completed (half-closed and open)")


# ---------------------------------------------------------------------------------------------------- heartbeats

SHORT_IDLE = 30


def _envoy_short_idle(config):
    render.envoy_hcm(config)["stream_idle_timeout"] = f"{SHORT_IDLE}s"


def _short_idle(kind, tmp_path, extra=()):
    """Options for make_topology: a proxy whose idle timeout (30 s) is shorter than the job's silence (for
    nginx, with quiet server pings, see _quiet_pings)."""
    if kind == "envoy":
        return {"extra": extra, "edit": _envoy_short_idle}
    return {"extra": _quiet_pings(tmp_path) + tuple(extra), "set": {"grpc_read_timeout": f"{SHORT_IDLE}s"}}


@pytest.mark.parametrize("kind", ["envoy", "nginx"])
def test_control_short_idle_timeout_cuts_a_silent_job_without_heartbeats(make_topology, kind, tmp_path, figure):
    topo = make_topology(kind, n=1, workers=2, **_short_idle(kind, tmp_path))
    _assert_cut(_silent_calls(topo), SHORT_IDLE, topo, figure, f"idle timeout {SHORT_IDLE} s, no heartbeats")


@needs_heartbeats
@pytest.mark.parametrize("kind", ["envoy", "nginx"])
def test_heartbeats_keep_a_silent_job_through_a_short_idle_timeout(make_topology, kind, tmp_path, figure):
    """The point of heartbeats: a proxy may keep a short idle timeout (dead streams are reaped quickly) and a
    job silent for longer still finishes."""
    topo = make_topology(kind, n=1, workers=2, **_short_idle(kind, tmp_path, ("--heartbeat-interval", "10s")))
    calls = _silent_calls(topo)
    _assert_completed(calls)
    if proto_has("ExecuteResponse", "heartbeat"):
        for name, call in calls.items():
            assert _heartbeats(call) >= SILENT // 10 - 1, (name, call.kinds())
    figure(kind, f"silent {SILENT} s, idle timeout {SHORT_IDLE} s, heartbeats 10 s",
           f"completed, {max(_heartbeats(c) for c in calls.values())} heartbeats")


@needs_heartbeats
@pytest.mark.skipif(not proto_has("StartJob", "heartbeat_interval"),
                    reason="proto/ has no StartJob.heartbeat_interval yet (per-call heartbeats)")
def test_a_call_asks_for_heartbeats(make_topology, figure):
    """A server without `heartbeat_interval`: the call itself asks for heartbeats every 10 s and passes an
    Envoy whose idle timeout is 30 s with a job silent for 45 s."""
    topo = make_topology("envoy", n=1, workers=1, edit=_envoy_short_idle)
    call = Call(topo.stub(), ["sh", "-c", "sleep 45; echo done"], heartbeat=datetime.timedelta(seconds=10))
    call.wait(90)
    assert call.code == grpc.StatusCode.OK and call.stdout == b"done\n", (call.code, call.details)
    assert _heartbeats(call) >= 3, call.kinds()
    figure("envoy", "silent 45 s, idle 30 s, StartJob.heartbeat_interval 10 s",
           f"completed, {_heartbeats(call)} heartbeats")
