"""Client-side balancing (grpcio round_robin over a multi-address target): the `grpc.default_authority` pitfall,
and the example script."""

import re
import subprocess
import sys

import grpc

from harness import REPO, Call, channel_options, ipv4_target, pb_grpc


def test_multi_address_target_without_default_authority_fails(make_topology):
    """grpcio sends a multi-address `ipv4:` target's whole address list as `:authority`; the server's HTTP/2
    layer rejects the stream (RST_STREAM PROTOCOL_ERROR), so every call fails with INTERNAL. With
    `grpc.default_authority` set, the same channel works."""
    topo = make_topology("round_robin")
    target = ipv4_target(topo.replicas)
    bare = grpc.insecure_channel(target, options=channel_options(round_robin=True, authority=None))
    fixed = grpc.insecure_channel(target, options=channel_options(round_robin=True, authority="forkpool"))
    try:
        call = Call(pb_grpc.ExecutorStub(bare), ["echo", "hi"]).wait(20)
        assert call.code == grpc.StatusCode.INTERNAL, (call.code, call.details)
        assert "RST_STREAM" in call.details and "error code 1" in call.details, call.details
        assert sum(r.status().started_total for r in topo.replicas) == 0
        call = Call(pb_grpc.ExecutorStub(fixed), ["echo", "hi"]).wait(20)
        assert call.code == grpc.StatusCode.OK and call.stdout == b"hi\n", (call.code, call.details)
    finally:
        bare.close()
        fixed.close()


def test_round_robin_example_spreads_calls(make_topology):
    """examples/python/round_robin.py over three replicas of two slots: six 1-second jobs at once, each
    replica runs some, none fails (refused calls are retried onto a free replica)."""
    topo = make_topology("round_robin", workers=2)
    servers = [arg for r in topo.replicas for arg in ("--server", f"127.0.0.1:{r.port}")]
    out = subprocess.run([sys.executable, str(REPO / "examples/python/round_robin.py"), *servers, "--calls", "6"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    counts = [int(n) for n in re.findall(r": (\d+) jobs started", out.stdout)]
    assert len(counts) == 3 and sum(counts) == 6 and min(counts) >= 1, out.stdout
    assert "6 of 6 calls ok" in out.stdout
