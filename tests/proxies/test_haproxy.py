"""HAProxy is not a supported topology (it is not in deploy/): HAProxy before 3.2 turns a replica's refusal
(RESOURCE_EXHAUSTED, UNAVAILABLE) into CANCELLED when the replica answered before the client finished
sending, which it does for refused calls (haproxy/haproxy#1219). This test keeps the measurement: it asserts
what a supported proxy must do and is expected to fail on HAProxy < 3.2 (Debian 12 has 2.6). Everything
else (calls, cancel, killed client, deadline, balancing) passes through HAProxy 2.6:
`FORKPOOL_PROXY_TOPOLOGIES=haproxy pytest tests/proxies/test_topologies.py` runs all of them."""

import re
import shutil
import subprocess

import grpc
import pytest

from harness import Call


def _haproxy_version():
    if not shutil.which("haproxy"):
        return None
    out = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout
    found = re.search(r"version (\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else None


VERSION = _haproxy_version()


@pytest.mark.skipif(VERSION is None, reason="no haproxy")
@pytest.mark.xfail(VERSION is not None and VERSION < (3, 2), strict=False,
                   reason="HAProxy < 3.2 resets refused calls with CANCEL (haproxy/haproxy#1219)")
def test_haproxy_passes_refusals_on(make_topology, figure):
    topo = make_topology("haproxy", n=1)
    fill = Call(topo.replicas[0].stub, ["sleep", "60"], half_close=False)
    fill.wait_started()
    stub = topo.stub(retry=False)
    codes = []
    for _ in range(20):
        codes.append(Call(stub, ["true"]).wait(20).code)
    fill.cancel()
    cancelled = codes.count(grpc.StatusCode.CANCELLED)
    figure("haproxy", "refusals arriving as CANCELLED (of 20)", f"{cancelled} (HAProxy {VERSION[0]}.{VERSION[1]})")
    assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}, codes
    assert cancelled == 0, f"{cancelled} of 20 refusals arrived as CANCELLED"
