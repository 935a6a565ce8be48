"""The autoscaling manifests scale on metrics that a real server exports, as gauges that mean what the
manifests assume: busy slots and calls waiting for one."""

import re
import time
import urllib.request

import grpc

from harness import REPO, Call, Replica

AUTOSCALING = [REPO / "deploy/kubernetes/autoscaling/hpa-queue-depth.yaml",
               REPO / "deploy/kubernetes/autoscaling/keda-scaledobject.yaml"]


def test_autoscaling_metrics_are_the_servers_gauges(tmp_path):
    names = set()
    for path in AUTOSCALING:
        names |= set(re.findall(r"\b(forkpool_[a-z_]+)\b", path.read_text()))
    assert names == {"forkpool_calls_queued", "forkpool_jobs_running"}, names
    replica = Replica("metrics", tmp_path, workers=1, queue=2)
    try:
        running = Call(replica.stub, ["sleep", "30"], half_close=False)
        running.wait_started()
        waiting = Call(replica.stub, ["true"])
        deadline = time.monotonic() + 5
        while replica.metrics().get("forkpool_calls_queued") != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        metrics = replica.metrics()
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{replica.metrics_port}/metrics", timeout=5).read().decode()
        for name in names:
            assert re.search(rf"^# TYPE {name} gauge$", text, re.M), f"{name} is not a gauge"
        assert metrics["forkpool_jobs_running"] == 1 and metrics["forkpool_calls_queued"] == 1, metrics
        running.cancel()
        waiting.wait(20)
        assert waiting.code == grpc.StatusCode.OK
    finally:
        replica.stop()
