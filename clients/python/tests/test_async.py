"""`forkpool.AsyncClient` against a real server. Structural cancellation first: cancelling the awaiting task,
`asyncio.timeout`, a failing `TaskGroup` and an exception in `async with` each kill the job's whole tree.
Each test runs its own event loop (`asyncio.run`): no pytest plugin needed."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, List

import pytest

import forkpool
from support import (
    TREE,
    assert_gone,
    free_port,
    marked,
    new_marker,
    shared_dir,
    wait_for_tree,
    wait_until,
)

needs_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout and TaskGroup are 3.11+")


def run(address: str, scenario: Callable[[forkpool.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        async with forkpool.AsyncClient(address) as client:
            await scenario(client)

    asyncio.run(main())


async def tree_of(marker: str) -> List[int]:
    return await asyncio.get_running_loop().run_in_executor(None, wait_for_tree, marker)


async def gone(pids: List[int]) -> None:
    await asyncio.get_running_loop().run_in_executor(None, assert_gone, pids)


def test_run_and_results(address: str) -> None:
    async def scenario(client: forkpool.AsyncClient) -> None:
        result = await client.run("echo", args=["hello", "async"])
        assert result.stdout == b"hello async\n" and result.exit_code == 0 and result.pid > 0
        failed = await client.run(command=["sh", "-c", "echo oops >&2; exit 4"])
        assert failed.exit_code == 4 and failed.stderr == b"oops\n"
        with pytest.raises(forkpool.JobFailed):
            await client.run(command=["false"], check=True)
        timed_out = await client.run(command=["sleep", "30"], timeout=0.3)
        assert timed_out.timed_out
        assert (await client.jobs()).raw_commands_allowed
        assert (await client.status()).workers == 8

    run(address, scenario)


def test_stdin_sources(address: str, tmp_path: Path) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"async ", b"iterator", b"\n"):
            await asyncio.sleep(0.01)
            yield part

    path = tmp_path / "stdin"
    path.write_bytes(b"a file, read in a thread\n")

    async def scenario(client: forkpool.AsyncClient) -> None:
        assert (await client.run("cat", stdin=chunks())).stdout == b"async iterator\n"
        assert (await client.run("cat", stdin=b"bytes")).stdout == b"bytes"
        assert (await client.run("cat", stdin=[b"sync ", b"list"])).stdout == b"sync list"
        with open(path, "rb") as f:
            assert (await client.run("cat", stdin=f)).stdout == path.read_bytes()
        reader = asyncio.StreamReader()
        reader.feed_data(b"a stream reader")
        reader.feed_eof()
        assert (await client.run("cat", stdin=reader)).stdout == b"a stream reader"
        big = bytes(range(256)) * 40_000  # ~10 MiB in and out at once
        assert (await client.run("cat", stdin=big, deadline=60)).stdout == big

    run(address, scenario)


def test_run_streams_an_async_iterator_without_reading_it_first(address: str) -> None:
    seen = shared_dir() / "seen"
    seen.touch()
    seen.chmod(0o666)

    async def lines() -> AsyncIterator[bytes]:
        yield b"one\n"
        deadline = time.monotonic() + 10
        while seen.read_bytes() != b"one\n":
            assert time.monotonic() < deadline, "the first line never reached the job"
            await asyncio.sleep(0.01)
        yield b"two\n"

    async def scenario(client: forkpool.AsyncClient) -> None:
        script = f'while read l; do echo "$l" >> {seen}; echo "$l"; done'
        result = await client.run(command=["sh", "-c", script], stdin=lines())
        assert result.stdout == b"one\ntwo\n"

    run(address, scenario)


def test_half_close_then_output(address: str) -> None:
    async def scenario(client: forkpool.AsyncClient) -> None:
        async with client.start(command=["sort"]) as job:
            await job.write(b"b\nc\na\n")
            await job.close_stdin()
            events = [event async for event in job]
        assert b"".join(e.data for e in events if isinstance(e, forkpool.Stdout)) == b"a\nb\nc\n"
        assert isinstance(events[-1], forkpool.Exited) and events[-1].result.ok
        async with client.start("cat") as job:
            await job.write("through cat\n")
            result = await job.wait(timeout=10)  # closes stdin first
        assert result.stdout == b"through cat\n" and result.exit_code == 0

    run(address, scenario)


def test_terminal_expect_sendline_resize_signal(address: str) -> None:
    async def scenario(client: forkpool.AsyncClient) -> None:
        async with client.start("prompt", terminal=forkpool.Terminal(rows=40, cols=120)) as job:
            await job.expect("Name: ")
            await job.sendline("bob")
            await job.expect("Password: ")
            await job.sendline("secret")
            found = await job.expect(rb"Hello, (\w+)\. Your password has (\d+) characters\.")
            assert (found.group(1), found.group(2)) == (b"bob", b"6") and b"secret" not in job.before
            assert (await job.wait(timeout=10)).exit_code == 0
        async with client.start(command=["sh", "-c", "stty size; read x; stty size"], terminal=True) as job:
            await job.expect("24 80")
            await job.resize(33, 99)
            await job.sendline()
            await job.expect("33 99")
            assert (await job.wait(timeout=10)).ok
        script = 'trap "echo got-term; exit 9" TERM; echo ready; while :; do sleep 0.05; done'
        async with client.start(command=["sh", "-c", script]) as job:
            await job.expect("ready")
            await job.signal("SIGTERM")
            result = await job.wait(timeout=10)
            assert result.exit_code == 9 and b"got-term" in result.stdout

    run(address, scenario)


def test_files(address: str, tmp_path: Path) -> None:
    local = tmp_path / "input.txt"
    local.write_bytes(b"".join(f"{i}\n".encode() for i in range(200_000, 0, -1)))

    async def scenario(client: forkpool.AsyncClient) -> None:
        result = await client.run("sort", inputs={"input.txt": local}, outputs=["sorted.txt"], output_dir=tmp_path / "o")
        assert result.exit_code == 0
        saved = result.outputs["sorted.txt"]
        assert saved.state == forkpool.OutputState.SENT and saved.saved_to == tmp_path / "o" / "sorted.txt"
        assert saved.saved_to.read_bytes() == b"".join(sorted(f"{i}\n".encode() for i in range(1, 200_001)))
        inline = await client.run("sort", inputs={"input.txt": b"b\na\n"}, outputs=["sorted.txt", "nothing*"])
        assert inline.output("sorted.txt") == b"a\nb\n"
        assert inline.outputs["nothing*"].state == forkpool.OutputState.MISSING

    run(address, scenario)


def test_typed_errors(address: str, make_server) -> None:  # type: ignore[no-untyped-def]
    async def scenario(client: forkpool.AsyncClient) -> None:
        with pytest.raises(forkpool.NotFound):
            await client.run("nope")
        with pytest.raises(forkpool.CannotExecute):
            await client.run(command=["/no/such/binary"])
        with pytest.raises(forkpool.InvalidRequest):
            await client.run(command=[])
        with pytest.raises(forkpool.PermissionDenied):
            await client.run("sleep", env={"NOT_ALLOWED": "1"})
        marker = new_marker()
        with pytest.raises(forkpool.DeadlineExceeded):
            await client.run(command=TREE, env={"FORKPOOL_TEST_MARKER": marker}, deadline=0.5)
        assert await asyncio.get_running_loop().run_in_executor(None, wait_until, lambda: not marked(marker), 2)

    run(address, scenario)

    tiny = make_server("--workers", "1", "--queue", "0")

    async def full(client: forkpool.AsyncClient) -> None:
        async with client.start("sleep", args=["30"]) as busy:
            await busy.wait_started(timeout=10)
            with pytest.raises(forkpool.QueueFull):
                await client.run("echo")

    run(tiny.address, full)

    async def nobody(client: forkpool.AsyncClient) -> None:
        with pytest.raises(forkpool.Unavailable):
            await client.run("echo")

    run(f"127.0.0.1:{free_port()}", nobody)


def test_cancelling_the_awaiting_task_kills_the_tree(make_server) -> None:  # type: ignore[no-untyped-def]
    async def scenario(client: forkpool.AsyncClient) -> None:
        marker = new_marker()
        before = (await client.status()).cancelled_total  # a server of its own: 0
        task = asyncio.ensure_future(client.run(command=TREE, env={"FORKPOOL_TEST_MARKER": marker}))
        tree = await tree_of(marker)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await gone(tree)
        deadline = time.monotonic() + 2
        while (await client.status()).cancelled_total != before + 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

    run(make_server("--allow-raw-commands").address, scenario)


@needs_311
def test_asyncio_timeout_kills_the_tree(address: str) -> None:
    async def scenario(client: forkpool.AsyncClient) -> None:
        marker = new_marker()
        tree: List[int] = []

        async def watch() -> None:
            tree.extend(await tree_of(marker))

        watcher = asyncio.ensure_future(watch())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):  # type: ignore[attr-defined]
                await client.run(command=TREE, env={"FORKPOOL_TEST_MARKER": marker})
        await watcher
        assert len(tree) == 3
        await gone(tree)

    run(address, scenario)


@needs_311
def test_a_failing_task_group_kills_the_tree(address: str) -> None:
    async def scenario(client: forkpool.AsyncClient) -> None:
        marker = new_marker()
        tree: List[int] = []

        async def sibling() -> None:
            tree.extend(await tree_of(marker))
            raise ValueError("a sibling task failed")

        with pytest.raises(BaseException) as failure:
            async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined]
                group.create_task(client.run(command=TREE, env={"FORKPOOL_TEST_MARKER": marker}))
                group.create_task(sibling())
        assert failure.value.__class__.__name__ == "ExceptionGroup"
        assert [type(e) for e in failure.value.exceptions] == [ValueError]  # type: ignore[attr-defined]
        await gone(tree)

    run(address, scenario)


def test_an_exception_in_async_with_kills_the_tree(address: str) -> None:
    async def scenario(client: forkpool.AsyncClient) -> None:
        marker = new_marker()
        tree: List[int] = []
        with pytest.raises(RuntimeError):
            async with client.start(command=TREE, env={"FORKPOOL_TEST_MARKER": marker}) as job:
                await job.expect("ready")
                tree = await tree_of(marker)
                raise RuntimeError("the handler failed")
        await gone(tree)

    run(address, scenario)


def test_cancel_then_wait_and_expect_timeout(address: str) -> None:
    async def scenario(client: forkpool.AsyncClient) -> None:
        marker = new_marker()
        async with client.start(command=TREE, env={"FORKPOOL_TEST_MARKER": marker}) as job:
            started = await job.wait_started(timeout=10)
            assert started.pid == job.pid
            with pytest.raises(TimeoutError):
                await job.expect("never printed", timeout=0.2)
            await job.expect("ready")  # the timeout cancelled nothing: the call is still going
            tree = await tree_of(marker)
            job.cancel()
            with pytest.raises(forkpool.Cancelled):
                await job.wait(timeout=10)
        await gone(tree)
        job = await client.start("echo", args=["awaited"])  # started by await, closed by hand
        try:
            assert (await job.wait(timeout=10)).stdout == b"awaited\n"
        finally:
            await job.aclose()

    run(address, scenario)


def test_statuses_and_exits_survive_writes_racing_the_end_of_the_call(address: str) -> None:
    # The server refuses these right after `start`, while the client is still sending (stdin, EOF): the
    # status must be the server's every time, never grpc.aio's INTERNAL "Internal error from Core".
    async def scenario(client: forkpool.AsyncClient) -> None:
        for _ in range(100):
            with pytest.raises(forkpool.InvalidRequest):
                await client.run(command=[])
            with pytest.raises(forkpool.NotFound):
                await client.run("nope", stdin=b"x" * 200_000)
        # A job that exits without reading its stdin, while it is still being sent: its exit is reported.
        for _ in range(20):
            result = await client.run(command=["sh", "-c", "head -c 1 >/dev/null; echo done"], stdin=b"y" * (4 << 20))
            assert result.stdout == b"done\n" and result.exit_code == 0

    run(address, scenario)


def test_many_small_stdin_pieces_are_coalesced(address: str) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(500_000):
            yield b"x\n"

    async def scenario(client: forkpool.AsyncClient) -> None:
        result = await client.run(command=["wc", "-l"], stdin=pieces(), deadline=15)
        assert result.stdout.strip() == b"500000"
        assert (await client.run("echo")).ok

    run(address, scenario)
