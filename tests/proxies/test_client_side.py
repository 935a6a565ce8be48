"""Client-side balancing (grpcio round_robin over a multi-address target): the `grpc.default_authority` pitfall,
client-side health checking of a draining replica, and the example script."""

import ast
import json
import re
import subprocess
import sys
import time

import grpc
import pytest

from conftest import wait_until
from harness import REPO, Call, channel_options, ipv4_target, owner, pb_grpc, service_config


def test_multi_address_target_without_default_authority_fails(make_topology):
    """grpcio sends a multi-address `ipv4:` target's whole address list as `:authority`; the server's HTTP/2
    layer rejects the stream (RST_STREAM PROTOCOL_ERROR): every call fails with INTERNAL, or, with
    `healthCheckConfig`, with UNAVAILABLE "health check call failed" (the health Watch is rejected the same way,
    so no replica ever counts as ready). With `grpc.default_authority` set, the same channel works."""
    topo = make_topology("round_robin")
    target = ipv4_target(topo.replicas)
    plain = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
    channels = {
        "plain": grpc.insecure_channel(target, options=[("grpc.service_config", plain)]),
        "health": grpc.insecure_channel(target, options=channel_options(round_robin=True, authority=None)),
        "fixed": grpc.insecure_channel(target, options=channel_options(round_robin=True, authority="forkpool")),
    }
    try:
        call = Call(pb_grpc.ExecutorStub(channels["plain"]), ["echo", "hi"]).wait(20)
        assert call.code == grpc.StatusCode.INTERNAL, (call.code, call.details)
        assert "RST_STREAM" in call.details and "error code 1" in call.details, call.details
        call = Call(pb_grpc.ExecutorStub(channels["health"]), ["echo", "hi"]).wait(20)
        assert call.code == grpc.StatusCode.UNAVAILABLE, (call.code, call.details)
        assert "health check call failed" in call.details, call.details
        assert sum(r.status().started_total for r in topo.replicas) == 0
        call = Call(pb_grpc.ExecutorStub(channels["fixed"]), ["echo", "hi"]).wait(20)
        assert call.code == grpc.StatusCode.OK and call.stdout == b"hi\n", (call.code, call.details)
    finally:
        for channel in channels.values():
            channel.close()


@pytest.mark.parametrize("health_checked", [True, False], ids=["healthCheckConfig", "control-without"])
def test_round_robin_skips_a_draining_replica(make_topology, tmp_path, figure, health_checked):
    """A replica draining (NOT_SERVING, its GOAWAY 30 s away, a job still running) takes no new call from a
    round_robin channel whose service config has `healthCheckConfig`: 30 calls without retries all land on the
    other two. The control, the same channel without `healthCheckConfig`, still sends about a third of them to
    the draining replica, which refuses them (UNAVAILABLE): retries alone can run out of attempts there."""
    config = tmp_path / "goaway.toml"
    config.write_text('drain_goaway_delay = "30s"\n')
    topo = make_topology("round_robin", workers=2, drain_timeout="30s", extra=("--config", str(config)))
    draining = topo.replicas[0]
    holder = Call(draining.stub, ["sleep", "30"], half_close=False)
    holder.wait_started()
    options = dict(channel_options(round_robin=True, retry=False))
    service_config = json.loads(options["grpc.service_config"])
    assert service_config["healthCheckConfig"] == {"serviceName": "forkpool.v1.Executor"}
    if not health_checked:
        del service_config["healthCheckConfig"]
    options["grpc.service_config"] = json.dumps(service_config)
    channel = grpc.insecure_channel(ipv4_target(topo.replicas), options=list(options.items()))
    try:
        stub = pb_grpc.ExecutorStub(channel)
        warm = [Call(stub, ["true"]).wait(20) for _ in range(6)]  # a connection to each replica
        assert all(c.code == grpc.StatusCode.OK for c in warm), [(c.code, c.details) for c in warm]
        draining.signal(15)
        assert wait_until(lambda: draining.health() == 2, 10), "the draining replica never said NOT_SERVING"
        time.sleep(1.0)  # the health Watch stream pushes NOT_SERVING to the channel at once; a second to spare
        calls = [Call(stub, ["true"]).wait(20) for _ in range(30)]
        refused = [c for c in calls if c.code != grpc.StatusCode.OK]
        assert all(c.code == grpc.StatusCode.UNAVAILABLE and "shutting down" in c.details for c in refused), \
            [(c.code, c.details) for c in refused]
        if health_checked:
            assert not refused, f"{len(refused)} of 30 calls were sent to the draining replica"
            assert all(owner(c.started, topo.replicas) is not draining for c in calls)
        else:
            assert refused, "without healthCheckConfig no call reached the draining replica"
        figure("round_robin", f"draining replica, {'with' if health_checked else 'without'} healthCheckConfig: "
               "calls refused (of 30, no retries)", len(refused))
        assert draining.proc.poll() is None and holder.done() is False
    finally:
        channel.close()
        holder.cancel()


def test_the_documented_service_config_is_the_tested_one():
    """deploy/README.md's service config, examples/python/round_robin.py's and the one these tests use are
    the same, so what is measured here is what users copy."""
    readme = (REPO / "deploy/README.md").read_text()
    section = readme[readme.index("### Client-side round robin"):]
    start = section.index("```json") + len("```json")
    documented = json.loads(section[start:section.index("```", start)])
    # The example's config, read from its source (importing it would put examples/python on sys.path).
    source = (REPO / "examples/python/round_robin.py").read_text()
    tree = ast.parse(source)
    node = next(n.value for n in tree.body if isinstance(n, ast.Assign)
                and getattr(n.targets[0], "id", None) == "SERVICE_CONFIG")
    example = ast.literal_eval(node)
    assert documented == example == json.loads(service_config(round_robin=True))


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
