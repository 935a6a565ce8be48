#!/usr/bin/env python3
"""Cancel latency, measured from a client: N times, start `sh -c 'sleep 1000 & sleep 1000 & echo ready; wait'`
(raw commands allowed), wait for `ready`, cancel the call, and poll /proc until the tree's 3 pids are gone.
Prints p50/p90/p99/max. Usage: python3 bench/cancel_tail.py 127.0.0.1:50051 300

Uses the Python example's generated stubs (examples/python, grpcio and grpcio-tools).
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "python"))
import forkpool_client as fc  # noqa: E402
import grpc  # noqa: E402

pb, pb_grpc = fc.pb, fc.pb_grpc


def main():
    address, runs = sys.argv[1], int(sys.argv[2])
    stub = pb_grpc.ExecutorStub(grpc.insecure_channel(address))
    samples = []
    for _ in range(runs):
        start = pb.StartJob(command=["sh", "-c", "sleep 1000 & sleep 1000 & echo ready; wait"])
        start.kill_grace.seconds = 0
        call, tree = fc.open_tree(stub, start, 3)
        began = time.perf_counter()
        call.cancel()
        while any(os.path.exists(f"/proc/{p}") for p in tree):
            if time.perf_counter() - began > 10:
                sys.exit(f"processes {tree} survived the cancel")
        samples.append((time.perf_counter() - began) * 1000)
    samples.sort()

    def at(q):
        return samples[min(len(samples) - 1, int(q * len(samples)))]

    print(f"{runs} cancels: p50 {at(0.5):.2f} ms, p90 {at(0.9):.2f} ms, p99 {at(0.99):.2f} ms, "
          f"max {samples[-1]:.2f} ms")


if __name__ == "__main__":
    main()
