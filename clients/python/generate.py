#!/usr/bin/env python3
"""Generates the package's protobuf and gRPC code from the contract, `proto/forkpool/v1/forkpool.proto`.

    python clients/python/generate.py           # writes clients/python/src/forkpool/_proto/
    python clients/python/generate.py --check   # regenerates into a temporary directory; exit 1 if stale

Run it with the grpcio-tools version pinned in `requirements-generate.txt` (it refuses another one: the
generated code, and so the package's minimum grpcio and protobuf, depends on it):

    python3 -m venv /tmp/gen && /tmp/gen/bin/pip install -r clients/python/requirements-generate.txt
    /tmp/gen/bin/python clients/python/generate.py

The files are `forkpool_pb2.py` (messages), `forkpool_pb2.pyi` (their types) and `forkpool_pb2_grpc.py`
(stubs), with the stubs' import of the messages made package-relative, so they live inside `forkpool._proto`
instead of claiming the top-level `forkpool.v1` name.
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROTO_ROOT = REPO / "proto"
PROTO = "forkpool/v1/forkpool.proto"
TARGET = HERE / "src" / "forkpool" / "_proto"
PIN_FILE = HERE / "requirements-generate.txt"
GENERATED = ("forkpool_pb2.py", "forkpool_pb2.pyi", "forkpool_pb2_grpc.py")
INIT = '''"""Code generated from proto/forkpool/v1/forkpool.proto by clients/python/generate.py. Do not edit."""
'''


def pinned_version() -> str:
    """The grpcio-tools version `requirements-generate.txt` pins."""
    for line in PIN_FILE.read_text().splitlines():
        found = re.fullmatch(r"\s*grpcio-tools\s*==\s*([\w.]+)\s*", line)
        if found:
            return found.group(1)
    raise SystemExit(f"{PIN_FILE}: no `grpcio-tools==VERSION` line")


def check_tool_version() -> str:
    """Fails unless the running interpreter has exactly the pinned grpcio-tools."""
    want = pinned_version()
    try:
        from importlib.metadata import version

        have = version("grpcio-tools")
    except Exception:  # noqa: BLE001 - any failure means it is not installed
        have = None
    if have != want:
        raise SystemExit(
            f"generate.py needs grpcio-tools=={want} (found {have or 'none'}): "
            f"pip install -r {PIN_FILE.relative_to(REPO)}"
        )
    return want


def generate(out: Path, tools_version: str) -> None:
    """Writes the generated package `_proto` into `out`."""
    with tempfile.TemporaryDirectory(prefix="forkpool-protoc-") as raw:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"--python_out={raw}",
                f"--pyi_out={raw}",
                f"--grpc_python_out={raw}",
                str(PROTO_ROOT / PROTO),
            ],
            check=True,
        )
        produced = Path(raw) / Path(PROTO).parent
        out.mkdir(parents=True, exist_ok=True)
        header = (
            f"# Generated from proto/{PROTO} by clients/python/generate.py with grpcio-tools=={tools_version}.\n"
        )
        for name in GENERATED:
            text = (produced / name).read_text()
            if name == "forkpool_pb2_grpc.py":
                fixed = text.replace(
                    "from forkpool.v1 import forkpool_pb2 as", "from . import forkpool_pb2 as"
                )
                if fixed == text:
                    raise SystemExit(f"{name}: the import of forkpool_pb2 was not where expected")
                text = fixed
            (out / name).write_text(header + text)
        (out / "__init__.py").write_text(INIT)


def compare(expected: Path, actual: Path) -> list[str]:
    """Differences between the freshly generated files and the committed ones, as diff lines."""
    problems: list[str] = []
    names = sorted({p.name for p in expected.iterdir()} | {p.name for p in actual.iterdir() if p.is_file()})
    for name in names:
        if name == "__pycache__":
            continue
        want, have = expected / name, actual / name
        if not have.exists():
            problems.append(f"missing: {have}")
        elif not want.exists():
            problems.append(f"not generated (remove it): {have}")
        elif want.read_text() != have.read_text():
            problems.extend(
                difflib.unified_diff(
                    have.read_text().splitlines(),
                    want.read_text().splitlines(),
                    f"committed/{name}",
                    f"generated/{name}",
                    lineterm="",
                )
            )
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is not what the proto gives")
    args = parser.parse_args()
    tools_version = check_tool_version()
    if not args.check:
        generate(TARGET, tools_version)
        print(f"generated {TARGET.relative_to(REPO)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="forkpool-generated-") as tmp:
        fresh = Path(tmp) / "_proto"
        generate(fresh, tools_version)
        if not TARGET.is_dir():
            print(f"{TARGET.relative_to(REPO)} does not exist: run clients/python/generate.py", file=sys.stderr)
            return 1
        problems = compare(fresh, TARGET)
    if problems:
        print("\n".join(problems[:200]), file=sys.stderr)
        print(
            f"{TARGET.relative_to(REPO)} is stale: run clients/python/generate.py and commit the result",
            file=sys.stderr,
        )
        return 1
    print(f"{TARGET.relative_to(REPO)} is up to date with proto/{PROTO}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
