"""Fixtures: the shared server, and servers of a test's own."""

from __future__ import annotations

import os
from typing import Callable, Iterator, List, Optional

import pytest

# Before anything imports grpc. Python 3.9's subprocess forks (3.10 and later use vfork), and with gRPC's fork
# handlers on, a child forked while other threads are inside gRPC can die before it execs (grpcio 1.80: 11
# of 150 spawns). The tests start servers while calls are running.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from support import Server, wait_until


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """The shared server: demo catalog, raw commands allowed, 8 workers."""
    s = Server("--allow-raw-commands", "--workers", "8")
    try:
        yield s
        assert wait_until(lambda: not s.zombies(), 5), f"zombies: {s.zombies()}"
        assert wait_until(lambda: not s.children(), 5), f"job processes left: {s.children()}"
    finally:
        s.stop()


@pytest.fixture
def address(server: Server) -> str:
    return server.address


@pytest.fixture
def make_server() -> Iterator[Callable[..., Server]]:
    """Starts servers of a test's own (stopped at its end)."""
    started: List[Server] = []

    def make(*args: str, config: Optional[str] = None) -> Server:
        s = Server(*args, config=config)
        started.append(s)
        return s

    try:
        yield make
    finally:
        for s in started:
            s.stop()
