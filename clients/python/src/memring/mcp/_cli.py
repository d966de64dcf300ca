"""``memring-mcp``: the command line, and running the server over stdio or streamable HTTP."""

from __future__ import annotations

import argparse
import contextlib
import hmac
import ipaddress
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from .. import __version__
from .._async_client import AsyncMemring
from .._requests import DEFAULT_URL
from .._retry import RetryPolicy
from ._schemas import ID_PATTERN
from ._server import build_server
from ._tools import MemoryTools

__all__ = ["Config", "main", "parse_args", "run"]

logger = logging.getLogger("memring.mcp")

DEFAULT_KEY_ENV = "MEMRING_API_KEY"


class ConfigError(Exception):
    """A configuration that cannot work; the message says what to change."""


@dataclass(frozen=True)
class Config:
    """What one server is bound to, and how it is reached."""

    url: str
    tenant: str
    api_key: str | None
    """Read from an environment variable, never from the command line."""
    http: tuple[str, int] | None = None
    """``(host, port)`` for streamable HTTP; ``None`` for stdio."""
    http_path: str = "/mcp"
    http_token: str | None = None
    """The bearer token MCP clients must send over HTTP (from an environment variable)."""
    timeout: float = 30.0

    def __repr__(self) -> str:  # keys stay out of logs and tracebacks
        return (
            f"Config(url={self.url!r}, tenant={self.tenant!r}, api_key="
            f"{'<set>' if self.api_key else None}, http={self.http!r})"
        )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="memring-mcp",
        description=(
            "An MCP server giving AI agents long-term memory in one memring tenant: the tools "
            "remember, recall, get, update, forget and list. Speaks MCP over stdio (for desktop "
            "and IDE clients) unless --http is given."
        ),
        epilog=(
            "The API key is never a flag: it is read from the environment variable named by "
            f"--api-key-env (default {DEFAULT_KEY_ENV}; needed only when the router requires keys)."
        ),
    )
    p.add_argument(
        "--url",
        default=os.environ.get("MEMRING_URL") or DEFAULT_URL,
        help="the memring router (default: $MEMRING_URL, else %(default)s)",
    )
    p.add_argument(
        "--tenant",
        default=os.environ.get("MEMRING_TENANT"),
        help="the tenant whose memories the tools see (default: $MEMRING_TENANT); required",
    )
    p.add_argument(
        "--api-key-env",
        metavar="VAR",
        help=f"the environment variable holding the memring API key (default: {DEFAULT_KEY_ENV})",
    )
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve streamable HTTP on HOST:PORT (e.g. 127.0.0.1:8765) instead of stdio",
    )
    p.add_argument(
        "--http-path",
        default="/mcp",
        help="the MCP endpoint's path over HTTP (default %(default)s)",
    )
    p.add_argument(
        "--http-token-env",
        metavar="VAR",
        help=(
            "over HTTP, require 'Authorization: Bearer <token>' from MCP clients, the token read "
            "from this environment variable (required when HOST is not a loopback address)"
        ),
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for each memring request (default %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level, to standard error (default %(default)s)",
    )
    p.add_argument("--version", action="version", version=f"memring-mcp {__version__}")
    return p


def parse_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``PORT`` (on 127.0.0.1)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"--http takes HOST:PORT, got {value!r}") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"--http: {number} is not a TCP port")
    return host, number


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env(var: str, flag: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"{flag} names the environment variable {var}, which is not set")
    return value


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, str]:
    """The configuration from the command line and the environment, and the log level."""
    ns = _parser().parse_args(argv)
    if not ns.tenant:
        raise ConfigError("--tenant (or $MEMRING_TENANT) is required: the tenant to serve")
    if not re.fullmatch(ID_PATTERN, ns.tenant):
        raise ConfigError(f"--tenant {ns.tenant!r}: a tenant id is 1-128 of A-Z a-z 0-9 _ . -")
    if not ns.url.startswith(("http://", "https://")):
        raise ConfigError(f"--url {ns.url!r}: give the router's http:// or https:// URL")
    if ns.api_key_env:
        api_key: str | None = _env(ns.api_key_env, "--api-key-env")
    else:
        api_key = os.environ.get(DEFAULT_KEY_ENV) or None
    http = parse_host_port(ns.http) if ns.http else None
    token = _env(ns.http_token_env, "--http-token-env") if ns.http_token_env else None
    if http is not None and token is None and not is_loopback(http[0]):
        raise ConfigError(
            f"--http {ns.http} listens beyond this machine: set --http-token-env to make MCP "
            "clients authenticate, or listen on 127.0.0.1"
        )
    if http is None and ns.http_token_env:
        raise ConfigError("--http-token-env applies to --http only")
    path = ns.http_path if ns.http_path.startswith("/") else "/" + ns.http_path
    if ns.timeout <= 0:
        raise ConfigError("--timeout must be positive")
    config = Config(
        url=ns.url,
        tenant=ns.tenant,
        api_key=api_key,
        http=http,
        http_path=path,
        http_token=token,
        timeout=ns.timeout,
    )
    return config, ns.log_level


# -- running -------------------------------------------------------------------------------------


class BearerAuth:
    """ASGI middleware: HTTP requests need ``Authorization: Bearer <token>``."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = token.encode()

    def _authorized(self, header: bytes) -> bool:
        scheme, _, given = header.strip().partition(b" ")
        # The scheme is case-insensitive (RFC 9110); the token is compared in constant time.
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.expected)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not self._authorized(header):
                body = (
                    b'{"error": {"code": "unauthorized", "message": "send Authorization: Bearer '
                    b'<the token of this MCP server>"}}'
                )
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b"Bearer"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


RETRY = RetryPolicy(max_attempts=4, max_elapsed=20.0)
"""Retries of 429, 503 and lost connections inside one tool call: shorter than the client's
default (a minute), because a model waiting on a tool is a user waiting; a tool error saying
``rate_limited`` or ``unavailable`` lets the model decide what to do next."""


def client_for(config: Config) -> AsyncMemring:
    # api_key="" (not None) so that the client does not fall back to $MEMRING_API_KEY when
    # another variable was named.
    return AsyncMemring(
        config.url,
        api_key=config.api_key or "",
        tenant=config.tenant,
        timeout=config.timeout,
        retry=RETRY,
    )


async def run_stdio(config: Config) -> None:
    """Serves one MCP client on standard input and output until it closes them."""
    from mcp.server.stdio import stdio_server

    async with client_for(config) as client:
        server = build_server(MemoryTools(client))
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())


def http_app(config: Config, client: AsyncMemring) -> Any:
    """The ASGI app serving streamable HTTP at ``config.http_path``."""
    assert config.http is not None
    host = config.http[0]
    server = build_server(MemoryTools(client))
    app = server.streamable_http_app(streamable_http_path=config.http_path, host=host)
    return BearerAuth(app, config.http_token) if config.http_token else app


async def run_http(config: Config, log_level: str) -> None:
    """Serves streamable HTTP until SIGINT or SIGTERM."""
    import uvicorn

    assert config.http is not None
    host, port = config.http
    async with client_for(config) as client:
        app = http_app(config, client)
        uv = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), lifespan="on")
        )
        await uv.serve()


def run(config: Config, log_level: str = "WARNING") -> None:
    """Runs the server in the foreground (stdio, or HTTP when ``config.http`` is set)."""
    if config.http is None:
        anyio.run(run_stdio, config)
    else:
        anyio.run(run_http, config, log_level)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``memring-mcp`` console script."""
    try:
        config, log_level = parse_args(argv)
    except ConfigError as err:
        print(f"memring-mcp: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    # Standard output is the MCP channel over stdio: logs go to standard error only.
    logging.basicConfig(
        stream=sys.stderr, level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    where = (
        f"http://{config.http[0]}:{config.http[1]}{config.http_path}" if config.http else "stdio"
    )
    logger.info(
        "memring-mcp %s: tenant %s on %s, serving %s", __version__, config.tenant, config.url, where
    )
    if config.http is not None:
        print(f"memring-mcp: tenant {config.tenant} at {where}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        run(config, log_level)
