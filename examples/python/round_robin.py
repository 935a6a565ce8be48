#!/usr/bin/env python3
"""Client-side balancing over several forkpool replicas with grpcio: the `round_robin` policy spreads calls
over every replica (one HTTP/2 connection to each), and a retry policy sends a call that a replica refused
(RESOURCE_EXHAUSTED: its pool and queue are full; UNAVAILABLE: it is draining) to the next one. forkpool
refuses a call only before its job starts, so a retried call never runs twice.

Several addresses:  python3 round_robin.py --server 127.0.0.1:50051 --server 127.0.0.1:50052 ...
A DNS name:         python3 round_robin.py --target dns:///forkpool-grpc.default.svc.cluster.local:50051
                    (a Kubernetes headless Service: one address per ready pod)

Pitfall: a multi-address target (`ipv4:A:P1,B:P2`) makes grpcio send the whole comma-separated list as the
`:authority` header, which the server's HTTP/2 layer rejects: every call fails with INTERNAL "Received
RST_STREAM with error code 1" (PROTOCOL_ERROR). Set `grpc.default_authority` (any valid host name) as
below. A `dns:///` target's authority is the name, which is fine.

Runs --calls concurrent `sleep` jobs and prints, with --server, how many each replica ran.
"""

import argparse
import json
import sys
import threading
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forkpool_client import pb, pb_grpc  # noqa: E402  (stubs generated from ../../proto at import)

SERVICE_CONFIG = {
    # One subchannel per address, calls in turn; a replica that is down or closed its connection is skipped.
    "loadBalancingConfig": [{"round_robin": {}}],
    # Calls only to replicas whose grpc.health.v1 status is SERVING: a draining replica (NOT_SERVING at once,
    # GOAWAY a second later) gets no new call, instead of a third of them refused with UNAVAILABLE.
    "healthCheckConfig": {"serviceName": "forkpool.v1.Executor"},
    "methodConfig": [{
        "name": [{"service": "forkpool.v1.Executor"}],
        # Retried only while no response arrived: forkpool answers a refused call with its status alone, and a
        # call whose job started has already received headers and `started`, so it is never retried.
        "retryPolicy": {
            "maxAttempts": 5,
            "initialBackoff": "0.05s",
            "maxBackoff": "0.5s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["RESOURCE_EXHAUSTED", "UNAVAILABLE"],
        },
    }],
}


def channel(target):
    return grpc.insecure_channel(target, options=[
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
        ("grpc.enable_retries", 1),
        # Needed for multi-address `ipv4:` targets (see above); harmless for the others.
        ("grpc.default_authority", "forkpool"),
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", action="append", default=[], help="HOST:PORT of a replica (repeat)")
    parser.add_argument("--target", help="a gRPC target instead, e.g. dns:///NAME:PORT")
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--seconds", default="1", help="how long each `sleep` job runs")
    args = parser.parse_args()
    if not args.target and not args.server:
        parser.error("give --server (several) or --target")
    target = args.target or "ipv4:" + ",".join(args.server)
    stub = pb_grpc.ExecutorStub(channel(target))

    failures = []

    def one(i):
        try:
            start = pb.StartJob(job="sleep", args=[args.seconds])
            for response in stub.Execute(iter([pb.ExecuteRequest(start=start)])):
                if response.WhichOneof("event") == "exited" and response.exited.code != 0:
                    failures.append(f"call {i}: exit {response.exited}")
        except grpc.RpcError as error:
            failures.append(f"call {i}: {error.code().name} {error.details()}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(args.calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for server in args.server:  # each replica's own count, asked directly
        status = pb_grpc.ExecutorStub(grpc.insecure_channel(server)).GetStatus(pb.GetStatusRequest(), timeout=5)
        print(f"{server}: {status.started_total} jobs started, {status.rejected_total} calls refused")
    for failure in failures:
        print(failure)
    print(f"{args.calls - len(failures)} of {args.calls} calls ok")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
