"""Connection options against real servers: TLS (server name, CA, client certificates), bearer tokens, URL
forms; and the options that are refused before any call."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Dict, Iterator

import pytest

import forkpool
from support import Server

TOKEN = "0123456789abcdef-forkpool-test-token"


def openssl(*args: str, cwd: Path) -> None:
    # Retried: openssl once died of SIGABRT here (1 run in ~10, not reproducible alone) on a loaded machine.
    for attempt in range(3):
        done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True)
        if done.returncode == 0:
            return
    raise RuntimeError(f"openssl {' '.join(args)}: exit {done.returncode}: {done.stderr.decode(errors='replace')}")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """A CA, a server certificate for `forkpool.test` and 127.0.0.1, and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make test certificates")
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=forkpool test CA", cwd=d)
    for name, ext in (
        ("server", "subjectAltName=DNS:forkpool.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    (d / "tokens").write_text(f"# the tests\n{TOKEN}\n")
    return {name: d / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key", "tokens")}


@pytest.fixture(scope="module")
def secure_server(pki: Dict[str, Path]) -> Iterator[Server]:
    """TLS with client certificates required, and bearer tokens."""
    s = Server(
        "--tls-cert", str(pki["server.pem"]), "--tls-key", str(pki["server.key"]),
        "--tls-client-ca", str(pki["ca.pem"]), "--auth-token-file", str(pki["tokens"]),
    )
    try:
        yield s
    finally:
        s.stop()


def test_tls_client_certificate_and_token(secure_server: Server, pki: Dict[str, Path]) -> None:
    options = dict(ca_cert=pki["ca.pem"], client_cert=pki["client.pem"], client_key=pki["client.key"])
    with forkpool.Client(f"https://{secure_server.address}", token=TOKEN, **options) as client:  # type: ignore[arg-type]
        assert client.run("echo", args=["over", "tls"]).stdout == b"over tls\n"
    # The certificate names forkpool.test: verify against that name while dialling the address.
    pem = {k: v.read_bytes() for k, v in options.items()}
    with forkpool.Client(secure_server.address, server_name="forkpool.test", token_file=pki["tokens"], **pem) as client:  # type: ignore[arg-type]
        assert client.run("echo", args=["by", "name"]).stdout == b"by name\n"
        assert client.jobs().jobs
    with forkpool.Client(f"https://{secure_server.address}", **options) as client:  # type: ignore[arg-type]
        with pytest.raises(forkpool.Unauthenticated):
            client.run("echo")
    with forkpool.Client(f"https://{secure_server.address}", token="wrong-token-0123456789", **options) as client:  # type: ignore[arg-type]
        with pytest.raises(forkpool.Unauthenticated):
            client.status()
    # Without a client certificate the TLS handshake fails: no call gets through.
    with forkpool.Client(f"https://{secure_server.address}", ca_cert=pki["ca.pem"], token=TOKEN) as client:
        with pytest.raises(forkpool.Unavailable):
            client.run("echo")
    # Plaintext to a TLS server fails too.
    with forkpool.Client(f"http://{secure_server.address}", token=TOKEN) as client:
        with pytest.raises(forkpool.Unavailable):
            client.run("echo")


def test_async_tls_and_token(secure_server: Server, pki: Dict[str, Path]) -> None:
    async def scenario() -> None:
        async with forkpool.AsyncClient(
            f"https://{secure_server.address}",
            ca_cert=pki["ca.pem"],
            client_cert=pki["client.pem"],
            client_key=pki["client.key"],
            token=TOKEN,
        ) as client:
            assert (await client.run("echo", args=["async", "tls"])).stdout == b"async tls\n"
            assert (await client.status()).workers > 0

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "make",
    [
        lambda: forkpool.Client("127.0.0.1:1", client_cert=b"x"),
        lambda: forkpool.Client("https://127.0.0.1:1", tls=False),
        lambda: forkpool.Client("127.0.0.1:1", token="a", token_file="/dev/null"),
        lambda: forkpool.Client("127.0.0.1:1", service_config="{not json"),
    ],
)
def test_contradictory_options_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


def test_url_forms_and_start_arguments(address: str) -> None:
    with forkpool.Client(f"http://{address}") as client:
        assert client.run("echo", args=["url"]).stdout == b"url\n"
        with pytest.raises(ValueError):
            client.run()  # neither job nor command
        with pytest.raises(ValueError):
            client.run("echo", command=["echo"])
        with pytest.raises(TypeError):
            client.run(command="echo hi")  # type: ignore[arg-type]
    assert forkpool.Connection.make("dns:///example.test:50051").target == "dns:///example.test:50051"
    assert forkpool.Connection.make("https://example.test:443/").credentials is not None
    assert forkpool.Connection.make("example.test:1", token="t").metadata == (("authorization", "Bearer t"),)
