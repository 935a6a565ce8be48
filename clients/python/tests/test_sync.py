"""`forkpool.Client` against a real server: results, stdin, half-close, terminals, files, signals, errors,
and cancellation that kills the job's tree."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest

import forkpool
from support import (
    TREE,
    Server,
    alive,
    assert_gone,
    free_port,
    marked,
    new_marker,
    shared_dir,
    wait_for_tree,
    wait_until,
)


@pytest.fixture
def client(address: str) -> Iterator[forkpool.Client]:
    with forkpool.Client(address) as c:
        yield c


def test_runs_a_catalog_job(client: forkpool.Client) -> None:
    result = client.run("echo", args=["hello", "world"])
    assert result.stdout == b"hello world\n"
    assert result.stderr == b""
    assert result.exit_code == 0 and result.signal is None and result.ok
    assert result.reason == forkpool.ExitReason.EXITED
    assert result.job_id and result.pid > 0
    assert result.wall_time >= 0 and result.user_time >= 0 and result.system_time >= 0
    assert result.reaped == () and dict(result.outputs) == {}
    if client.status().containment == forkpool.ContainmentMode.CGROUP:
        assert result.max_rss_bytes > 0  # the job cgroup's peak


def test_orphans_the_server_reaped_are_reported(client: forkpool.Client) -> None:
    result = client.run(command=["sh", "-c", "sleep 30 & echo left a sleeper"])
    assert result.exit_code == 0 and result.stdout == b"left a sleeper\n"
    # One orphan, killed at the job's end: `sleep`, or still `sh` if the fork had not exec'd it yet.
    assert len(result.reaped) == 1, result.reaped
    orphan = result.reaped[0]
    assert orphan.name in ("sleep", "sh") and orphan.exit_code is None and orphan.signal is not None
    assert orphan.pid > 0


def test_exit_codes_signals_and_check(client: forkpool.Client) -> None:
    result = client.run(command=["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.exit_code, result.returncode, result.stdout, result.stderr) == (3, 3, b"out\n", b"err\n")
    with pytest.raises(forkpool.JobFailed) as failed:
        client.run(command=["sh", "-c", "echo bad input >&2; exit 2"], check=True)
    assert failed.value.result.exit_code == 2
    assert "exited with code 2" in str(failed.value) and "bad input" in str(failed.value)
    killed = client.run(command=["sh", "-c", "kill -KILL $$"])
    assert killed.exit_code is None and killed.signal == 9 and killed.returncode == -9
    assert client.run("echo", check=True).ok


def test_stdin_from_bytes_text_file_and_iterator(client: forkpool.Client, tmp_path: Path) -> None:
    assert client.run("cat", stdin=b"bytes\n").stdout == b"bytes\n"
    assert client.run("cat", stdin="text \u00e9\n").stdout == "text \u00e9\n".encode()
    path = tmp_path / "in.txt"
    path.write_bytes(b"from a file\n" * 1000)
    with open(path, "rb") as f:
        assert client.run("cat", stdin=f).stdout == path.read_bytes()
    assert client.run("cat", stdin=io.BytesIO(b"buffered")).stdout == b"buffered"
    assert client.run("cat", stdin=iter([b"a", b"b", b"c"])).stdout == b"abc"


def test_large_stdin_and_output_do_not_deadlock(client: forkpool.Client) -> None:
    # 16 MiB through cat: far more than every pipe and HTTP/2 window on the way, so stdin must be written
    # while the output is read.
    data = os.urandom(1 << 20) * 16
    result = client.run("cat", stdin=(data[i : i + 100_000] for i in range(0, len(data), 100_000)), deadline=60)
    assert result.exit_code == 0 and len(result.stdout) == len(data) and result.stdout == data


def test_run_streams_an_iterator_without_reading_it_first(client: forkpool.Client) -> None:
    # The job appends each line to a file as it reads it; the iterator yields its second line only once the
    # job has written the first, which could never happen if run() read the iterator to its end first.
    seen = shared_dir() / "seen"
    seen.touch()
    seen.chmod(0o666)

    def lines() -> Iterator[bytes]:
        yield b"one\n"
        assert wait_until(lambda: seen.read_bytes() == b"one\n", 10), "the first line never reached the job"
        yield b"two\n"

    result = client.run(command=["sh", "-c", f'while read l; do echo "$l" >> {seen}; echo "$l"; done'], stdin=lines())
    assert result.stdout == b"one\ntwo\n" and seen.read_bytes() == b"one\ntwo\n"


def test_output_after_stdin_eof_and_the_call_stays_open(client: forkpool.Client) -> None:
    # sort prints nothing before EOF; close_stdin is EOF, and the output that follows it still arrives.
    with client.start(command=["sort"]) as job:
        job.write(b"pear\napple\n")
        job.write(b"fig\n")
        job.close_stdin()
        events = list(job)
    stdout = b"".join(e.data for e in events if isinstance(e, forkpool.Stdout))
    assert stdout == b"apple\nfig\npear\n"
    assert isinstance(events[-1], forkpool.Exited) and events[-1].result.exit_code == 0

    # After EOF the call is still open: a signal still reaches the job.
    with client.start(command=["sh", "-c", "cat >/dev/null; echo eof-seen; exec sleep 30"]) as job:
        job.write(b"ignored")
        job.close_stdin()
        job.expect("eof-seen\n", timeout=10)
        job.signal("TERM")
        result = job.wait(timeout=10)
    assert result.signal == signal.SIGTERM and result.reason == forkpool.ExitReason.EXITED


def test_wait_closes_stdin_so_cat_ends(client: forkpool.Client) -> None:
    with client.start("cat") as job:
        job.write("half-closed\n")
        result = job.wait(timeout=10)
    assert result.stdout == b"half-closed\n" and result.exit_code == 0
    with pytest.raises(ValueError):
        job.write(b"more")


def test_events_in_order(client: forkpool.Client) -> None:
    with client.start("echo", args=["events"]) as job:
        events = list(job)
    kinds = [type(e).__name__ for e in events if not isinstance(e, forkpool.Queued)]
    assert kinds == ["Started", "Stdout", "Exited"]
    started = events[[type(e) for e in events].index(forkpool.Started)]
    assert isinstance(started, forkpool.Started) and job.pid == started.pid and job.job_id == started.job_id
    assert job.result is not None and job.result.exit_code == 0


def test_terminal_expect_and_sendline(client: forkpool.Client) -> None:
    with client.start("prompt", terminal=True) as job:
        job.expect(r"Name: ")
        job.sendline("alice")
        job.expect(b"Password: ")
        job.sendline("hunter2")
        greeting = job.expect(rb"Hello, (\w+)\. Your password has (\d+) characters\.")
        assert b"hunter2" not in job.before  # read with echo off
        result = job.wait(timeout=10)
    assert greeting.group(1) == b"alice" and greeting.group(2) == b"7"
    assert result.exit_code == 0


def test_terminal_resize_and_control_keys(client: forkpool.Client) -> None:
    terminal = forkpool.Terminal(rows=30, cols=100)
    with client.start(command=["sh", "-c", "stty size; read x; stty size; echo $TERM"], terminal=terminal) as job:
        job.expect("30 100\r\n")
        job.resize(50, 132)
        job.sendline()
        job.expect("50 132\r\n")
        job.expect("xterm-256color")
        assert job.wait(timeout=10).exit_code == 0
    # dash catches SIGINT under -c: one that arrives before sleep runs can be lost. Wait until the worker
    # has exec'd sleep.
    with client.start(command=["sh", "-c", "echo ready; exec sleep 30"], terminal=True) as job:
        job.expect("ready")
        assert job.pid is not None
        # The worker, or (in a pid namespace) the program its init started.
        pid = job.pid
        children = Path(f"/proc/{pid}/task/{pid}/children")
        if Path(f"/proc/{pid}/comm").read_text().strip() == "forkpool-init":
            assert wait_until(lambda: children.read_text().split() != [], 10)
            pid = int(children.read_text().split()[0])
        assert wait_until(lambda: Path(f"/proc/{pid}/comm").read_text().strip() == "sleep", 10)
        job.sendcontrol("c")  # SIGINT to the terminal's foreground group
        result = job.wait(timeout=10)
    assert result.signal == signal.SIGINT


def test_resize_of_a_job_without_a_terminal_is_invalid(client: forkpool.Client) -> None:
    with client.start(command=["sleep", "30"]) as job:
        job.resize(10, 10)
        with pytest.raises(forkpool.InvalidRequest):
            job.wait(timeout=10)


def test_signal_reaches_the_job(client: forkpool.Client) -> None:
    script = 'trap "echo got-usr1; exit 7" USR1; echo ready; while :; do sleep 0.05; done'
    with client.start(command=["sh", "-c", script]) as job:
        job.expect("ready")
        job.signal(signal.SIGUSR1)
        result = job.wait(timeout=10)
    assert result.exit_code == 7 and b"got-usr1" in result.stdout
    with pytest.raises(ValueError):
        job.signal(signal.SIGSTOP)  # not carried by the contract


def test_files_in_and_out(client: forkpool.Client, tmp_path: Path) -> None:
    # The demo `sort` job: input.txt -> sorted.txt.
    result = client.run("sort", inputs={"input.txt": b"pear\napple\nfig\n"}, outputs=["sorted.txt", "absent.txt"])
    assert result.exit_code == 0
    assert result.outputs["sorted.txt"].state == forkpool.OutputState.SENT
    assert result.output("sorted.txt") == b"apple\nfig\npear\n"
    assert result.outputs["absent.txt"].state == forkpool.OutputState.MISSING

    # A local file streamed in chunks (larger than the inline limit), a bytes input, a glob, saved to disk.
    big = tmp_path / "big.txt"
    lines = [f"line {i:07d}\n".encode() for i in range(300_000)]
    big.write_bytes(b"".join(reversed(lines)))
    big.chmod(0o640)
    out = tmp_path / "out"
    script = "sort -o result/sorted.txt data/big.txt && cp small.bin result/copy.bin && stat -c %a data/big.txt"
    result = client.run(
        command=["sh", "-c", f"mkdir result && {script}"],
        inputs={"data/big.txt": big, "small.bin": b"\x00\x01"},
        outputs=["result/*"],
        output_dir=out,
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == b"640\n"  # the local file's mode travels with it
    assert set(result.outputs) == {"result/sorted.txt", "result/copy.bin"}
    saved = result.outputs["result/sorted.txt"]
    assert saved.sent and saved.saved_to == out / "result" / "sorted.txt" and saved.data is None
    assert (out / "result" / "sorted.txt").read_bytes() == b"".join(lines)
    assert result.output("result/copy.bin") == b"\x00\x01"
    assert saved.size == big.stat().st_size


def test_job_timeout_is_a_result_not_an_error(client: forkpool.Client) -> None:
    result = client.run(command=["sleep", "30"], timeout=0.3)
    assert result.timed_out and result.reason == forkpool.ExitReason.TIMED_OUT and result.signal is not None
    with pytest.raises(forkpool.JobFailed):
        client.run(command=["sleep", "30"], timeout=0.3, check=True)


def test_typed_errors_carry_the_servers_message(client: forkpool.Client, make_server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(forkpool.NotFound) as e:
        client.run("no-such-job")
    assert "no-such-job" in str(e.value) and e.value.details == str(e.value)
    with pytest.raises(forkpool.CannotExecute) as cannot:
        client.run(command=["/nonexistent/program"])
    assert "/nonexistent/program" in str(cannot.value)
    with pytest.raises(forkpool.InvalidRequest):
        client.run(command=[])
    with pytest.raises(forkpool.InvalidRequest):
        client.run("sort", inputs={"../escape": b"x"})
    with pytest.raises(forkpool.PermissionDenied):
        client.run("cat", args=["/etc/passwd"])  # `cat` takes no args
    with pytest.raises(forkpool.PermissionDenied):
        client.run("echo", inputs={"x": b"y"})  # `echo` takes no files
    strict = make_server()  # no --allow-raw-commands
    with forkpool.Client(strict.address) as c:
        with pytest.raises(forkpool.PermissionDenied) as denied:
            c.run(command=["true"])
        assert isinstance(denied.value, forkpool.CallError) and denied.value.details
        assert c.run("echo", args=["catalog jobs still run"]).ok
    with forkpool.Client(f"127.0.0.1:{free_port()}") as nobody:
        with pytest.raises(forkpool.Unavailable):
            nobody.run("echo")
        with pytest.raises(forkpool.Unavailable):
            nobody.status()


def test_queue_full(make_server) -> None:  # type: ignore[no-untyped-def]
    tiny = make_server("--allow-raw-commands", "--workers", "1", "--queue", "0")
    with forkpool.Client(tiny.address) as client:
        with client.start(command=["sleep", "30"]) as busy:
            busy.wait_started(timeout=10)
            with pytest.raises(forkpool.QueueFull) as full:
                client.run("echo")
            assert full.value.code.name == "RESOURCE_EXHAUSTED" and str(full.value)
        assert wait_until(lambda: client.status().running == 0, 5)
        assert client.status().rejected_total == 1


def test_deadline_exceeded_kills_the_job(client: forkpool.Client) -> None:
    marker = new_marker()
    started = time.monotonic()
    with pytest.raises(forkpool.DeadlineExceeded):
        client.run(command=TREE, env={"FORKPOOL_TEST_MARKER": marker}, deadline=1.0)
    assert time.monotonic() - started < 5
    assert wait_until(lambda: not marked(marker), 2), f"left: {marked(marker)}"


def test_an_exception_in_the_with_block_kills_the_tree(make_server) -> None:  # type: ignore[no-untyped-def]
    # A server of its own: its counters see this call only.
    with forkpool.Client(make_server("--allow-raw-commands").address) as client:
        marker = new_marker()
        with pytest.raises(RuntimeError):
            with client.start(command=TREE, env={"FORKPOOL_TEST_MARKER": marker}) as job:
                job.expect("ready")
                tree = wait_for_tree(marker)
                raise RuntimeError("the caller failed")
        assert_gone(tree)
        assert wait_until(lambda: client.status().cancelled_total == 1, 2)
        assert client.status().finished_total == client.status().started_total == 1


def test_keyboard_interrupt_in_the_with_block_kills_the_tree(client: forkpool.Client) -> None:
    marker = new_marker()
    with pytest.raises(KeyboardInterrupt):
        with client.start(command=TREE, env={"FORKPOOL_TEST_MARKER": marker}) as job:
            job.expect("ready")
            tree = wait_for_tree(marker)
            raise KeyboardInterrupt
    assert_gone(tree)


def test_ctrl_c_during_run_kills_the_tree(client: forkpool.Client) -> None:
    # A real SIGINT to this process while run() blocks, as Ctrl-C in a terminal sends it.
    assert threading.current_thread() is threading.main_thread()
    marker = new_marker()
    tree: List[int] = []

    def interrupt() -> None:
        tree.extend(wait_for_tree(marker))
        os.kill(os.getpid(), signal.SIGINT)

    # Python raises KeyboardInterrupt only where SIGINT was not ignored at its start (a shell's background job
    # ignores it): make sure it is Python's own handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    helper = threading.Thread(target=interrupt)
    helper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            client.run(command=TREE, env={"FORKPOOL_TEST_MARKER": marker}, deadline=30)
    finally:
        helper.join()
        signal.signal(signal.SIGINT, previous)
    assert len(tree) == 3
    assert_gone(tree)


def test_cancel_then_wait_raises_cancelled(client: forkpool.Client) -> None:
    marker = new_marker()
    with client.start(command=TREE, env={"FORKPOOL_TEST_MARKER": marker}) as job:
        job.expect("ready")
        tree = wait_for_tree(marker)
        job.cancel()
        with pytest.raises(forkpool.Cancelled):
            job.wait(timeout=10)
    assert_gone(tree)


def test_wait_timeout_leaves_the_job_running(client: forkpool.Client) -> None:
    with client.start(command=["sh", "-c", "sleep 0.5; echo late"]) as job:
        with pytest.raises(TimeoutError):
            job.wait(timeout=0.1)
        assert job.wait(timeout=10).stdout == b"late\n"
    with client.start(command=["sleep", "30"]) as job:
        with pytest.raises(TimeoutError):
            job.expect("never", timeout=0.2)
        assert job.pid is not None and alive([job.pid])


def test_catalog_and_status(client: forkpool.Client, server: Server) -> None:
    catalog = client.jobs()
    assert catalog.raw_commands_allowed
    assert {"echo", "sleep", "cat", "prompt", "sort"} <= {j.name for j in catalog.jobs}
    assert "sort" in catalog and catalog["sort"].accepts_files and not catalog["cat"].accepts_args
    assert catalog["echo"].max_timeout == 10.0
    status = client.status()
    assert status.workers == 8 and status.queue_capacity == 64
    assert status.containment in (forkpool.ContainmentMode.CGROUP, forkpool.ContainmentMode.PROCESS_GROUP)
    before = status.started_total
    client.run("echo")
    after = client.status()
    assert after.started_total == before + 1 and after.finished_total >= before + 1


def test_round_robin_service_config(make_server) -> None:  # type: ignore[no-untyped-def]
    a, b = make_server(), make_server()
    # As the README shows it: round robin over the replicas whose health says SERVING.
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": "forkpool.v1.Executor"},
    }
    with forkpool.Client(f"ipv4:{a.address},{b.address}", service_config=config, wait_for_ready=True) as client:
        for _ in range(8):
            assert client.run("echo", args=["balanced"]).ok
    with forkpool.Client(a.address) as ca, forkpool.Client(b.address) as cb:
        counts = ca.status().started_total, cb.status().started_total
    assert sum(counts) == 8 and min(counts) >= 1, counts


def test_statuses_and_exits_survive_writes_racing_the_end_of_the_call(client: forkpool.Client) -> None:
    for _ in range(100):
        with pytest.raises(forkpool.InvalidRequest):
            client.run(command=[])
        with pytest.raises(forkpool.NotFound):
            client.run("nope", stdin=iter([b"x" * 70_000] * 3))
    for _ in range(20):
        result = client.run(command=["sh", "-c", "head -c 1 >/dev/null; echo done"], stdin=b"y" * (4 << 20))
        assert result.stdout == b"done\n" and result.exit_code == 0


def test_many_small_stdin_pieces_are_coalesced(client: forkpool.Client) -> None:
    # Half a million 2-byte pieces: sent one message each, they would be a flood of tiny HTTP/2 frames that
    # the server answers with GOAWAY (ENHANCE_YOUR_CALM) for the whole connection.
    # One message per piece also takes ~30 s here: the deadline fails that too.
    result = client.run(command=["wc", "-l"], stdin=(b"x\n" for _ in range(500_000)), deadline=15)
    assert result.stdout.strip() == b"500000"
    assert client.run("echo", args=["the connection is fine"]).ok


def test_many_inputs_stay_within_the_message_limit(client: forkpool.Client) -> None:
    # 80 files of 60 KiB: each small enough to travel inline, but together 4.9 MB, over the server's 4 MiB
    # message limit for one `start` message; the client inlines 1 MiB of them and sends the rest as chunks.
    # And one 3 MiB bytes input, sent in chunks.
    inputs = {f"f{i:02d}": bytes([i]) * 60 * 1024 for i in range(80)}
    inputs["big"] = b"z" * (3 << 20)
    result = client.run(command=["sh", "-c", "cat f* | wc -c; wc -c < big"], inputs=inputs, deadline=60)
    assert result.stdout.split() == [str(80 * 60 * 1024).encode(), str(3 << 20).encode()]
