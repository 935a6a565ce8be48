"""`max_connection_age`: a long-lived client whose one HTTP/2 connection went through an L4 balancer (what a
Kubernetes ClusterIP Service or a cloud TCP load balancer does: one replica per connection, chosen when it
opens) stays on its replica forever; with `--max-connection-age` the replica closes the connection gracefully
(GOAWAY) after that age, the client reconnects, and its new calls reach a replica started later.

The L4 balancer is HAProxy in TCP mode (round robin per connection), standing in for kube-proxy."""

import time

import grpc
import pytest

import render
from harness import Call, HAProxy, Replica, free_port, owner, pb_grpc, serve_supports

# A grace far longer than the test: only the GOAWAY sent at the connection's age can move the client (a close
# at age + grace would too, but that is not what is tested).
AGE_FLAGS = ("--max-connection-age", "2s", "--max-connection-age-grace", "60s")


def _run(tmp_path, extra, figure, label):
    """Replica A, then a client calling through the L4 balancer, then replica B; returns how many of the calls
    made after B came up ran on B (and on A)."""
    late_port = free_port()
    early = Replica("early", tmp_path, extra=extra)
    proxy = late = channel = None
    try:
        proxy = HAProxy(tmp_path, None, text=lambda port: render.haproxy_tcp(
            [early.addr, ("127.0.0.1", late_port)], port))
        time.sleep(1.2)  # the balancer's checks mark the not-yet-started replica down
        channel = grpc.insecure_channel(proxy.target())
        stub = pb_grpc.ExecutorStub(channel)
        for _ in range(3):
            call = Call(stub, ["true"]).wait(20)
            assert call.code == grpc.StatusCode.OK, (call.code, call.details)
            assert owner(call.started, [early]) is early
        late = Replica("late", tmp_path, extra=extra, listen=f"127.0.0.1:{late_port}")
        time.sleep(1.2)  # and up again once it listens
        owners = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            call = Call(stub, ["sh", "-c", "sleep 0.1"]).wait(20)
            assert call.code == grpc.StatusCode.OK, (call.code, call.details)
            owners.append(owner(call.started, [early, late]))
            time.sleep(0.1)
        on_late = sum(1 for o in owners if o is late)
        figure("L4 (HAProxy tcp)", f"{label}: calls on the later replica in 10 s", f"{on_late} of {len(owners)}")
        return on_late, len(owners)
    finally:
        if channel is not None:
            channel.close()
        if proxy is not None:
            proxy.stop()
        for replica in (early, late):
            if replica is not None:
                replica.stop()


def test_control_without_max_connection_age_a_client_stays_on_its_replica(tmp_path, figure):
    on_late, total = _run(tmp_path, (), figure, "no max_connection_age")
    assert on_late == 0 and total >= 10, (on_late, total)


@pytest.mark.skipif(not serve_supports("--max-connection-age"),
                    reason="this forkpool binary has no `serve --max-connection-age` yet")
def test_max_connection_age_moves_new_calls_to_a_later_replica(tmp_path, figure):
    on_late, total = _run(tmp_path, AGE_FLAGS, figure, "max_connection_age 2s")
    assert on_late >= 1 and total >= 10, (on_late, total)
