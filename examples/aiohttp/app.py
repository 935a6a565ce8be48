#!/usr/bin/env python3
"""The service forkpool was made to replace, rebuilt on it: an aiohttp application that hands work to worker
processes and must stop that work when its own HTTP client goes away.

The original ran the work in `multiprocessing` pools forked from the web server: workers inherited the server's
signal wake-up fd (SIGTERM to a worker shut the server down), the binaries they spawned piled up as zombies,
and a worker's exception could deadlock the pool. Here nothing forks from the app: every job runs in a forkpool
worker of its own, through one `forkpool.AsyncClient`, and a client that disconnects mid-job cancels the
handler, which cancels the call, which kills the job's whole process tree.

    POST /execute   {"job": "NAME", "args": [...], "env": {...}, "stdin": "text", "timeout": 5, "deadline": 30}
                    -> 200 {"exit_code": 0, "signal": null, "reason": "exited", "stdout": "...", ...}
                    -> 400/403/404/422/503/504 {"error": "NotFound", "message": "the server's message"}
    GET  /status    -> forkpool's pool counters, and this app's own tallies

Usage: python3 app.py --forkpool 127.0.0.1:50051 [--listen 127.0.0.1:8080]
It prints `app listening on http://HOST:PORT` once it serves (so `--listen 127.0.0.1:0` is usable).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Tuple

import aiohttp
from aiohttp import web

import forkpool

FORKPOOL = web.AppKey("forkpool", forkpool.AsyncClient) if hasattr(web, "AppKey") else "forkpool"
TALLY = web.AppKey("tally", dict) if hasattr(web, "AppKey") else "tally"

#: How each refusal of forkpool's becomes an HTTP status.
HTTP_STATUS: List[Tuple[type, int]] = [
    (forkpool.InvalidRequest, 400),
    (forkpool.Unauthenticated, 502),  # this app's own credentials are wrong: not the HTTP client's fault
    (forkpool.PermissionDenied, 403),
    (forkpool.NotFound, 404),
    (forkpool.CannotExecute, 422),
    (forkpool.QueueFull, 503),
    (forkpool.Unavailable, 503),
    (forkpool.DeadlineExceeded, 504),
]


def error(status: int, kind: str, message: str) -> web.Response:
    headers = {"Retry-After": "1"} if status == 503 else None
    return web.json_response({"error": kind, "message": message}, status=status, headers=headers)


def parse(body: Any) -> Dict[str, Any]:
    """The keyword arguments of `AsyncClient.run` from a request body; `ValueError` if it is malformed."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    unknown = set(body) - {"job", "args", "env", "stdin", "timeout", "deadline"}
    if unknown:
        raise ValueError(f"unknown fields: {sorted(unknown)}")
    job = body.get("job")
    if not isinstance(job, str) or not job:
        raise ValueError("`job` (a catalog job's name) is required")
    args = body.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError("`args` must be a list of strings")
    env = body.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("`env` must map strings to strings")
    stdin = body.get("stdin", "")
    if not isinstance(stdin, str):
        raise ValueError("`stdin` must be a string")
    kwargs: Dict[str, Any] = {"args": args, "env": env, "stdin": stdin.encode()}
    for key in ("timeout", "deadline"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"`{key}` must be a positive number of seconds")
            kwargs[key] = float(value)
    return {"job": job, **kwargs}


def result_json(result: forkpool.Result) -> Dict[str, Any]:
    return {
        "exit_code": result.exit_code,
        "signal": result.signal,
        "reason": result.reason.name.lower(),
        "stdout": result.stdout.decode("utf-8", "replace"),
        "stderr": result.stderr.decode("utf-8", "replace"),
        "wall_time": result.wall_time,
        "user_time": result.user_time,
        "system_time": result.system_time,
        "max_rss_bytes": result.max_rss_bytes,
        "job_id": result.job_id,
        "pid": result.pid,
    }


async def execute(request: web.Request) -> web.Response:
    """Runs a catalog job and answers with its result. If the HTTP client disconnects first, aiohttp cancels
    this handler; the cancellation reaches `run()`, which cancels the gRPC call, and forkpool kills the job's
    whole tree. Nothing to clean up here: that is the point."""
    tally = request.app[TALLY]
    try:
        kwargs = parse(await request.json())
    except ValueError as e:  # json.JSONDecodeError is a ValueError too
        return error(400, "InvalidRequest", str(e))
    client = request.app[FORKPOOL]
    try:
        result = await client.run(**kwargs)
    except asyncio.CancelledError:
        tally["cancelled"] += 1
        raise
    except forkpool.CallError as e:
        tally["refused"] += 1
        status = next((code for kind, code in HTTP_STATUS if isinstance(e, kind)), 502)
        return error(status, type(e).__name__, str(e))
    tally["completed"] += 1
    return web.json_response(result_json(result))


async def status(request: web.Request) -> web.Response:
    pool = await request.app[FORKPOOL].status()
    counters = asdict(pool)
    counters["containment"] = pool.containment.name.lower()
    return web.json_response({"forkpool": counters, "app": dict(request.app[TALLY])})


def make_app(forkpool_address: str, **client_options: Any) -> web.Application:
    """The application, with one `AsyncClient` made at start-up (inside the loop) and closed at shutdown."""
    app = web.Application()
    app[TALLY] = {"completed": 0, "cancelled": 0, "refused": 0}

    async def client_context(app: web.Application) -> Any:
        app[FORKPOOL] = forkpool.AsyncClient(forkpool_address, **client_options)
        yield
        await app[FORKPOOL].close()

    app.cleanup_ctx.append(client_context)
    app.router.add_post("/execute", execute)
    app.router.add_get("/status", status)
    return app


def handler_cancellation() -> Dict[str, bool]:
    """aiohttp 3.9 stopped cancelling handlers whose client disconnected unless asked to; 3.8 and older always
    did (and do not know the option)."""
    major, minor = (int(part) for part in aiohttp.__version__.split(".")[:2])
    return {"handler_cancellation": True} if (major, minor) >= (3, 9) else {}


async def serve(listen: str, forkpool_address: str, token_file: Optional[str]) -> None:
    host, _, port = listen.rpartition(":")
    options = {"token_file": token_file} if token_file else {}
    runner = web.AppRunner(make_app(forkpool_address, **options), **handler_cancellation())
    await runner.setup()
    site = web.TCPSite(runner, host or "127.0.0.1", int(port))
    await site.start()
    bound = runner.addresses[0]
    print(f"app listening on http://{bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT to serve HTTP on (port 0: any)")
    parser.add_argument("--forkpool", default=forkpool.DEFAULT_ADDRESS, help="the forkpool server's address")
    parser.add_argument("--token-file", help="bearer token for forkpool (first token of the file)")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.forkpool, args.token_file))


if __name__ == "__main__":
    sys.exit(main())
