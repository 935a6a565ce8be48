"""How to reach a server: the same options as the CLI's `--server`, `--tls-*` and `--token-file`, plus a
`grpc.service_config` pass-through."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import grpc

__all__ = ["DEFAULT_ADDRESS", "Connection", "read_token"]

#: Where the clients connect when no address is given (the server's default listen address).
DEFAULT_ADDRESS = "127.0.0.1:50051"

#: PEM material: the bytes themselves, or the path of a file holding them.
Pem = Union[bytes, str, "os.PathLike[str]"]
#: A channel option (`grpc.*` channel arguments).
ChannelOption = Tuple[str, Any]


def _pem(value: Optional[Pem]) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def read_token(path: Union[str, "os.PathLike[str]"]) -> str:
    """The first token of a token file, as the CLI's `--token-file` reads it: the first word of the first line
    that is neither blank nor a `#` comment (the server's token files have `TOKEN [jobs]` lines)."""
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line.split()[0]
    raise ValueError(f"no token in {path}")


@dataclass(frozen=True)
class Connection:
    """A resolved set of connection options: the gRPC target, credentials, channel options and the metadata
    every call carries. Built by `Connection.make` from the clients' keyword arguments."""

    target: str
    credentials: Optional[grpc.ChannelCredentials]
    options: Tuple[ChannelOption, ...]
    metadata: Tuple[Tuple[str, str], ...]

    @classmethod
    def make(
        cls,
        address: str = DEFAULT_ADDRESS,
        *,
        tls: Optional[bool] = None,
        ca_cert: Optional[Pem] = None,
        client_cert: Optional[Pem] = None,
        client_key: Optional[Pem] = None,
        server_name: Optional[str] = None,
        token: Optional[str] = None,
        token_file: Optional[Union[str, "os.PathLike[str]"]] = None,
        service_config: Optional[Union[str, Mapping[str, Any]]] = None,
        options: Sequence[ChannelOption] = (),
    ) -> "Connection":
        """Resolves the options.

        `address` is `host:port`, `http://host:port`, `https://host:port` (TLS), or any gRPC target such as
        `dns:///host:port` or `ipv4:10.0.0.1:50051,10.0.0.2:50051` (for load balancing). TLS is used for
        `https://`, when `tls=True`, or when any of `ca_cert`, `client_cert`, `server_name` is given; without
        `ca_cert` the system's roots verify the server. `client_cert` and `client_key` (mutual TLS) go
        together. `server_name` is the name to verify the server's certificate against (the CLI's
        `--tls-domain`). `token` (or the first token of `token_file`) is sent as `authorization: Bearer ...`
        on every call. `service_config` (a dict or JSON text) becomes the channel's `grpc.service_config`,
        e.g. `{"loadBalancingConfig": [{"round_robin": {}}]}` or a retry policy; `options` are further gRPC
        channel arguments.
        """
        target = address
        scheme_tls: Optional[bool] = None
        for scheme, secure in (("http://", False), ("https://", True)):
            if address.startswith(scheme):
                target = address[len(scheme) :].split("/", 1)[0]
                scheme_tls = secure
        if (client_cert is None) != (client_key is None):
            raise ValueError("client_cert and client_key go together")
        wants_tls = any(v is not None for v in (ca_cert, client_cert, server_name))
        if tls is None:
            tls = bool(scheme_tls) or wants_tls
        elif not tls and (scheme_tls or wants_tls):
            raise ValueError("tls=False contradicts https:// or the TLS options given")
        credentials = None
        channel_options = list(options)
        if tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_pem(ca_cert),
                private_key=_pem(client_key),
                certificate_chain=_pem(client_cert),
            )
            if server_name is not None:
                channel_options.append(("grpc.ssl_target_name_override", server_name))
        for scheme in ("ipv4:", "ipv6:"):
            if target.startswith(scheme) and "," in target and not any(k == "grpc.default_authority" for k, _ in options):
                # gRPC would send the whole address list as the `:authority`, which HTTP/2 servers refuse
                # (RST_STREAM PROTOCOL_ERROR): name the first address instead.
                channel_options.append(("grpc.default_authority", target[len(scheme) :].split(",", 1)[0]))
        if service_config is not None:
            text = service_config if isinstance(service_config, str) else json.dumps(service_config)
            json.loads(text)  # fail here, not in gRPC's resolver, on a malformed config
            channel_options.append(("grpc.service_config", text))
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        if token_file is not None:
            token = read_token(token_file)
        metadata: Tuple[Tuple[str, str], ...] = ()
        if token is not None:
            metadata = (("authorization", f"Bearer {token}"),)
        return cls(target, credentials, tuple(channel_options), metadata)

    def channel(self) -> grpc.Channel:
        """A new synchronous channel."""
        if self.credentials is None:
            return grpc.insecure_channel(self.target, options=self.options)
        return grpc.secure_channel(self.target, self.credentials, options=self.options)

    def aio_channel(self) -> grpc.aio.Channel:
        """A new asyncio channel (create it inside the event loop that uses it)."""
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self.options)
        return grpc.aio.secure_channel(self.target, self.credentials, options=self.options)
