#!/usr/bin/env python3
"""A forkpool client in Python: runs a job, streams stdin to one, cancels one and checks that the cancelled
job's processes are gone, and converts a file (input and output files).

The stubs are generated from ../../proto at start-up with grpcio-tools, so the example always matches the
contract. Usage: python3 forkpool_client.py --server 127.0.0.1:50051
"""

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from grpc_tools import protoc
import grpc

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"


def load_stubs():
    """Generates forkpool_pb2 / forkpool_pb2_grpc into a temporary directory and imports them."""
    out = tempfile.mkdtemp(prefix="forkpool-stubs-")
    # Imported once; the files are not needed after this process.
    atexit.register(shutil.rmtree, out, True)
    include = Path(protoc.__file__).parent / "_proto"
    status = protoc.main([
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO_ROOT / "forkpool/v1/forkpool.proto"),
    ])
    if status != 0:
        sys.exit(f"protoc failed with status {status}")
    sys.path.insert(0, out)
    from forkpool.v1 import forkpool_pb2, forkpool_pb2_grpc  # noqa: E402
    return forkpool_pb2, forkpool_pb2_grpc


pb, pb_grpc = load_stubs()


def run(stub, start, stdin_chunks=()):
    """Runs one job to its end; returns (stdout bytes, Exited)."""
    def requests():
        yield pb.ExecuteRequest(start=start)
        for chunk in stdin_chunks:
            yield pb.ExecuteRequest(stdin=chunk)
        yield pb.ExecuteRequest(close_stdin=pb.CloseStdin())
    stdout = b""
    for response in stub.Execute(requests()):
        kind = response.WhichOneof("event")
        if kind == "stdout":
            stdout += response.stdout
        elif kind == "exited":
            return stdout, response.exited
    raise RuntimeError("the call ended without exited")


def convert(stub, start, inputs, outputs, chunk_bytes=1 << 20):
    """Runs a job with input files (streamed as `input` chunks after the start) and returns (output files by
    path, Exited)."""
    for path, data in inputs.items():
        start.inputs.append(pb.InputFile(path=path, size=len(data), mode=0o644))
    start.outputs.extend(outputs)

    def requests():
        yield pb.ExecuteRequest(start=start)
        for path, data in inputs.items():
            for offset in range(0, len(data), chunk_bytes):
                piece = data[offset:offset + chunk_bytes]
                last = offset + chunk_bytes >= len(data)
                yield pb.ExecuteRequest(input=pb.FileChunk(path=path, data=piece, last=last))
        yield pb.ExecuteRequest(close_stdin=pb.CloseStdin())

    files = {}
    for response in stub.Execute(requests()):
        kind = response.WhichOneof("event")
        if kind == "output":
            files[response.output.path] = files.get(response.output.path, b"") + response.output.data
        elif kind == "exited":
            return files, response.exited
    raise RuntimeError("the call ended without exited")


def open_tree(stub, start, expected):
    """Starts a job and waits until its tree has `expected` processes (for more than one, once it has printed
    `ready`); returns the open call and the tree's pids."""
    call = stub.Execute(iter([pb.ExecuteRequest(start=start)]))
    pid = None
    for response in call:
        kind = response.WhichOneof("event")
        if kind == "started":
            pid = response.started.pid
            if expected == 1:
                break
        elif kind == "stdout" and b"ready" in response.stdout:
            break
    deadline = time.monotonic() + 5
    tree = session_members(pid)
    while len(tree) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
        tree = session_members(pid)
    assert len(tree) == expected, f"expected {expected} processes in the job, found {tree}"
    return call, tree


def session_members(sid):
    """Pids of the job's processes in session `sid` (a job's worker pid), from /proc. In a pid namespace the
    worker is forkpool's init (`forkpool-init`), which is not one of them."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and name != "forkpool-init":
            members.append(int(entry))
    return members


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default="127.0.0.1:50051")
    args = parser.parse_args()
    channel = grpc.insecure_channel(args.server)
    stub = pb_grpc.ExecutorStub(channel)
    catalog = stub.ListJobs(pb.ListJobsRequest())
    print("catalog:", ", ".join(job.name for job in catalog.jobs))

    # 1. A catalog job.
    stdout, exited = run(stub, pb.StartJob(job="echo", args=["hello", "from", "python"]))
    assert stdout == b"hello from python\n" and exited.code == 0, (stdout, exited)
    print("echo:", stdout.decode().strip(), "| exit code", exited.code)

    # 2. Streaming stdin; close_stdin is EOF.
    chunks = [b"streamed ", b"through ", b"stdin\n"]
    stdout, exited = run(stub, pb.StartJob(job="cat"), chunks)
    assert stdout == b"".join(chunks) and exited.code == 0, (stdout, exited)
    print("cat:", stdout.decode().strip())

    # 3. Cancel a job whose tree is 3 processes; every one of them must be gone.
    if catalog.raw_commands_allowed:
        start = pb.StartJob(command=["sh", "-c", "sleep 1000 & sleep 1000 & echo ready; wait"])
        expected = 3
    else:
        start = pb.StartJob(job="sleep", args=["1000"])
        expected = 1
    call, tree = open_tree(stub, start, expected)
    call.cancel()
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{p}").exists() for p in tree):
        if time.monotonic() > deadline:
            sys.exit(f"processes {tree} survived the cancel")
        time.sleep(0.01)
    print(f"cancelled: {len(tree)} processes gone ({', '.join(map(str, tree))})")
    # 4. A conversion that needs real files: the demo `sort` job reads input.txt and writes sorted.txt. Small
    #    files may go inline; larger ones follow the start as `input` chunks (see convert() below).
    sorted_text, exited = convert(stub, pb.StartJob(job="sort"), {"input.txt": b"pear\napple\nfig\n"},
                                  outputs=["sorted.txt"])
    files = {o.path: pb.OutputState.Name(o.state) for o in exited.outputs}
    assert sorted_text["sorted.txt"] == b"apple\nfig\npear\n" and exited.code == 0, (sorted_text, exited)
    print("sort:", sorted_text["sorted.txt"].decode().split(), "|", files)

    status = stub.GetStatus(pb.GetStatusRequest())
    print(f"status: started {status.started_total}, finished {status.finished_total}, cancelled {status.cancelled_total}")
    print("ok")


if __name__ == "__main__":
    main()
