#!/usr/bin/env python3
"""An interactive terminal job driven from Python asyncio, in the style of pexpect: `expect` a prompt, `send`
an answer. The job runs under a pseudo-terminal on the server (`StartJob.terminal`), so it prompts, hides a
password and takes Ctrl-C exactly as it would for a person at a keyboard.

Usage: python3 terminal_session.py --server 127.0.0.1:50051
"""

import argparse
import asyncio
import re
import sys

import grpc

from forkpool_client import pb, pb_grpc, session_members


class TerminalJob:
    """One job under a terminal, over one `Execute` call: pexpect's `spawn`, for forkpool."""

    def __init__(self, call):
        self._call = call
        self._buffer = b""
        self.before = b""
        self.match = None
        self.pid = None
        self.exited = None

    @classmethod
    async def spawn(cls, stub, start, rows=24, cols=80):
        """Starts `start` under a rows x cols terminal and waits until it runs."""
        start.terminal.CopyFrom(pb.Terminal(rows=rows, cols=cols))
        job = cls(stub.Execute())
        await job._call.write(pb.ExecuteRequest(start=start))
        while job.pid is None:
            await job._read_one()
        return job

    async def _read_one(self):
        response = await self._call.read()
        if response is grpc.aio.EOF:
            raise EOFError(f"the call ended; output so far: {self._buffer!r}")
        kind = response.WhichOneof("event")
        if kind == "started":
            self.pid = response.started.pid
        elif kind == "stdout":  # a terminal job's whole output
            self._buffer += response.stdout
        elif kind == "exited":
            self.exited = response.exited

    async def expect(self, pattern, timeout=10):
        """Reads until `pattern` (bytes regex) matches the output not yet consumed; returns the match."""
        regex = re.compile(pattern)

        async def until_match():
            while (found := regex.search(self._buffer)) is None:
                if self.exited is not None:
                    raise EOFError(f"the job exited before {pattern!r}: {self._buffer!r}")
                await self._read_one()
            return found

        found = await asyncio.wait_for(until_match(), timeout)
        self.before, self.match = self._buffer[: found.start()], found
        self._buffer = self._buffer[found.end():]
        return found

    async def send(self, data):
        """Types `data` (bytes or str) on the job's terminal."""
        await self._call.write(pb.ExecuteRequest(stdin=data.encode() if isinstance(data, str) else data))

    async def sendline(self, line=""):
        await self.send(line + "\n")

    async def sendcontrol(self, char):
        """Types Ctrl-<char>, e.g. `sendcontrol("c")`: the terminal turns it into SIGINT for the job."""
        await self.send(bytes([ord(char.lower()) - ord("a") + 1]))

    async def resize(self, rows, cols):
        await self._call.write(pb.ExecuteRequest(resize=pb.Resize(rows=rows, cols=cols)))

    async def wait(self, timeout=10):
        """Types EOF (`close_stdin`) and waits for `exited`."""
        await self._call.done_writing()

        async def until_exit():
            while self.exited is None:
                await self._read_one()
            return self.exited

        return await asyncio.wait_for(until_exit(), timeout)


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


async def until(condition, timeout=10):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise asyncio.TimeoutError("condition never held")
        await asyncio.sleep(0.01)


async def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default="127.0.0.1:50051")
    args = parser.parse_args()
    async with grpc.aio.insecure_channel(args.server) as channel:
        stub = pb_grpc.ExecutorStub(channel)

        # 1. The demo catalog's `prompt` job: a name (echoed) and a password (not echoed).
        job = await TerminalJob.spawn(stub, pb.StartJob(job="prompt"))
        await job.expect(rb"Name: ")
        await job.sendline("alice")
        await job.expect(rb"Password: ")
        await job.sendline("hunter2")
        greeting = await job.expect(rb"Hello, (\w+)\. Your password has (\d+) characters\.")
        exited = await job.wait()
        echoed = b"hunter2" in job.before
        print(f"prompt: greeted {greeting.group(1).decode()}, {greeting.group(2).decode()}-character password,"
              f" password echoed: {echoed}, exit code {exited.code}")
        assert not echoed and exited.code == 0

        # 2. An interactive shell: Ctrl-C interrupts its foreground program, the shell survives; a resize
        #    reaches it.
        if (await stub.ListJobs(pb.ListJobsRequest())).raw_commands_allowed:
            shell = await TerminalJob.spawn(stub, pb.StartJob(command=["sh", "-i"]), rows=30, cols=100)
            await shell.sendline("stty size")
            await shell.expect(rb"30 100\r\n")
            await shell.sendline("sleep 1000")
            # Ctrl-C before the shell has started it would only clear the line: wait for it (the server runs
            # here, so its /proc shows the job's session).
            await until(lambda: any(comm(p) == "sleep" for p in session_members(shell.pid)))
            await shell.sendcontrol("c")
            await shell.sendline("echo status=$?")
            status = await shell.expect(rb"status=(\d+)\r\n")
            await shell.resize(50, 132)
            await shell.sendline("stty size")
            await shell.expect(rb"50 132\r\n")
            await shell.sendline("exit 7")
            exited = await shell.wait()
            print(f"shell: Ctrl-C ended sleep with status {status.group(1).decode()}, resized to 50x132,"
                  f" exit code {exited.code}")
            assert status.group(1) == b"130" and exited.code == 7
    print("ok")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (AssertionError, EOFError, asyncio.TimeoutError) as e:
        sys.exit(f"failed: {e!r}")
