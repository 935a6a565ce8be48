"""A client in a process of its own, for the test that SIGKILLs a client: starts a raw command through TARGET
(channel options as JSON), prints `ready` once the job printed `ready`, then waits to be killed.

Usage: python3 client_proc.py TARGET OPTIONS_JSON -- COMMAND...
"""

import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402

from harness import pb, pb_grpc  # noqa: E402


def main():
    target, options = sys.argv[1], json.loads(sys.argv[2])
    command = sys.argv[sys.argv.index("--") + 1:]
    channel = grpc.insecure_channel(target, options=[tuple(option) for option in options])
    stub = pb_grpc.ExecutorStub(channel)
    never = threading.Event()

    def requests():
        yield pb.ExecuteRequest(start=pb.StartJob(command=command))
        never.wait()  # the request stream stays open: only the process's death ends the call

    output = b""
    call = stub.Execute(requests())  # kept referenced: a collected call is cancelled
    for response in call:
        if response.WhichOneof("event") == "stdout":
            output += response.stdout
            if b"ready" in output:
                print("ready", flush=True)
                break
    time.sleep(3600)
    call.cancel()


if __name__ == "__main__":
    main()
