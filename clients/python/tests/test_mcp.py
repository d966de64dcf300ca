"""memring-mcp end to end: the official MCP Python client drives the real ``memring-mcp``
command, over stdio (spawned as a subprocess, as desktop clients do) and over streamable HTTP
(a server process on a free port), in both MCP eras (the ``initialize`` handshake that today's
desktop and IDE clients speak, and the 2026 per-request protocol); every effect is checked
against the cluster through the plain :class:`memring.Memring` client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent

import memring
from memring import Memring

from ._cluster import LocalCluster, child_env, free_port
from .conftest import Auth, new_tenant

# -- running memring-mcp -------------------------------------------------------------------------

TOOL_NAMES = {"remember", "recall", "get", "update", "forget", "list"}


def mcp_command() -> list[str]:
    """The installed ``memring-mcp`` script next to this Python, else ``python -m memring.mcp``."""
    script = Path(sys.executable).with_name("memring-mcp")
    if os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "memring.mcp"]


def open_log(path: Path) -> TextIO:
    return open(path, "a")  # closed by the caller


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**child_env(), **(extra or {})}


class HttpServer:
    """``memring-mcp --http`` in a subprocess, its log in a file."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.log = log
        cmd = [*mcp_command(), *args, "--http", f"127.0.0.1:{self.port}", "--log-level", "INFO"]
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        self.wait_ready()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"memring-mcp exited: {self.log.read_text(errors='replace')}")
            try:
                httpx.get(self.url, timeout=1.0, trust_env=False)
                return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"memring-mcp never listened: {self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


@asynccontextmanager
async def mcp_client(
    transport: str,
    args: Sequence[str],
    tmp_path: Path,
    *,
    mode: str = "auto",
    env: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[Client]:
    """An MCP client session with a new ``memring-mcp`` started with ``args``."""
    if transport == "stdio":
        cmd = mcp_command()
        params = StdioServerParameters(command=cmd[0], args=[*cmd[1:], *args], env=server_env(env))
        errlog = open_log(tmp_path / "mcp-stdio.log")  # the server's standard error
        try:
            async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:
                yield client
        finally:
            errlog.close()
        return
    server = HttpServer(args, tmp_path / "mcp-http.log", env=server_env(env))
    try:
        async with (
            httpx2.AsyncClient(headers=headers or {}, timeout=30.0) as http,
            Client(streamable_http_client(server.url, http_client=http), mode=mode) as client,
        ):
            yield client
    finally:
        server.stop()


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


def ok(result: CallToolResult) -> dict[str, Any]:
    """The structured content of a successful call."""
    assert not result.is_error, text_of(result)
    assert isinstance(result.structured_content, dict)
    assert text_of(result), "every result has a text rendering"
    return result.structured_content


def failed(result: CallToolResult, code: str) -> str:
    """The text of a tool error carrying memring's ``code``."""
    assert result.is_error, f"expected {code}, got {result.structured_content}"
    text = text_of(result)
    assert code in text, text
    assert result.meta is not None
    assert result.meta["memring/error"]["code"] == code
    return text


# -- fixtures ------------------------------------------------------------------------------------

# (transport, MCP era): today's desktop clients speak the handshake era ("legacy").
TRANSPORTS = [
    pytest.param(("stdio", "legacy"), id="stdio-handshake"),
    pytest.param(("stdio", "auto"), id="stdio-2026"),
    pytest.param(("http", "legacy"), id="http-handshake"),
    pytest.param(("http", "auto"), id="http-2026"),
]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> tuple[str, str]:
    value: tuple[str, str] = request.param
    return value


@pytest.fixture
def plain(cluster: LocalCluster, tenant: str) -> Iterator[Memring]:
    """The plain client on the same tenant, to check what the tools did."""
    with Memring(cluster.url, tenant=tenant) as m:
        yield m


def bound(cluster: LocalCluster, tenant: str) -> list[str]:
    return ["--url", cluster.url, "--tenant", tenant]


# -- the tools, as listed -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tools_are_listed_with_precise_schemas(
    cluster: LocalCluster, tenant: str, tmp_path: Path, transport: tuple[str, str]
) -> None:
    kind, mode = transport
    async with mcp_client(kind, bound(cluster, tenant), tmp_path, mode=mode) as client:
        assert client.instructions is not None
        assert "recall" in client.instructions
        assert "remember" in client.instructions
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == TOOL_NAMES
        for tool in tools.values():
            assert tool.description is not None
            assert len(tool.description) > 80, tool.name
            assert tool.input_schema["type"] == "object"
            assert tool.input_schema["additionalProperties"] is False
            assert tool.output_schema is not None
            assert tool.output_schema["type"] == "object"
            assert "$ref" not in str(tool.input_schema), "no $ref: some clients refuse them"
            assert tool.annotations is not None

        recall = tools["recall"].input_schema
        assert recall["required"] == ["query"]
        props = recall["properties"]
        assert props["mode"]["enum"] == ["hybrid", "vector", "keyword"]
        assert (props["k"]["minimum"], props["k"]["maximum"]) == (1, 100)
        assert props["scopes"]["items"]["pattern"].startswith("^(shared|global|agent:")
        for op in ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$contains"):
            assert op in props["filter"]["description"], op
        for op in ("$exists", "$and", "$or", "$not"):
            assert op in props["filter"]["description"], op
        assert props["created_after"]["format"] == "date-time"

        remember = tools["remember"].input_schema
        assert remember["required"] == ["content"]
        assert remember["properties"]["scope"]["default"] == "shared"
        assert remember["properties"]["ttl_seconds"]["minimum"] == 1
        assert remember["properties"]["id"]["maxLength"] == 128

        update = tools["update"].input_schema
        assert update["required"] == ["id"]
        assert update["properties"]["expected_version"]["minimum"] == 1
        assert "null" in update["properties"]["metadata"]["type"]
        assert tools["list"].input_schema["properties"]["limit"]["maximum"] == 100
        assert tools["forget"].input_schema["required"] == ["id"]

        hints = {name: t.annotations for name, t in tools.items() if t.annotations is not None}
        assert hints["recall"].read_only_hint is True
        assert hints["list"].read_only_hint is True
        assert hints["get"].read_only_hint is True
        assert hints["forget"].destructive_hint is True
        assert hints["update"].destructive_hint is True
        assert hints["remember"].read_only_hint is False
        assert hints["remember"].destructive_hint is False


# -- every tool, checked against the cluster ------------------------------------------------------


@pytest.mark.asyncio
async def test_every_tool_against_the_cluster(
    cluster: LocalCluster, tenant: str, plain: Memring, tmp_path: Path, transport: tuple[str, str]
) -> None:
    kind, mode = transport
    async with mcp_client(kind, bound(cluster, tenant), tmp_path, mode=mode) as client:
        # remember: a private memory with an id and metadata, two shared ones without.
        r = await client.call_tool(
            "remember",
            {
                "content": "Ana is vegetarian and allergic to peanuts",
                "scope": "agent:planner",
                "id": "diet",
                "metadata": {"kind": "fact", "priority": 3, "tags": ["food"]},
            },
        )
        written = ok(r)
        assert written["id"] == "diet"
        assert (written["scope"], written["version"], written["created"]) == (
            "agent:planner",
            1,
            True,
        )
        assert "diet" in text_of(r)
        stored = plain.get("agent:planner", "diet")
        assert stored.content == "Ana is vegetarian and allergic to peanuts"
        assert stored.metadata == {"kind": "fact", "priority": 3, "tags": ["food"]}
        assert stored.embedded_by is not None, "the router embedded the text"

        budget = ok(
            await client.call_tool(
                "remember",
                {"content": "The travel budget is 1200 EUR per trip", "metadata": {"kind": "fact"}},
            )
        )
        assert budget["scope"] == "shared", "shared is the default scope"
        assert plain.get("shared", budget["id"]).metadata == {"kind": "fact"}
        flight = ok(
            await client.call_tool(
                "remember",
                {
                    "content": "Book the 9:40 flight to Lisbon on TAP TP1353",
                    "metadata": {"kind": "task"},
                    "ttl_seconds": 3600,
                },
            )
        )
        assert plain.get("shared", flight["id"]).expires_at is not None

        # The same remember again is accepted as it is; another memory under a taken id is not.
        again = ok(
            await client.call_tool(
                "remember",
                {
                    "content": "Ana is vegetarian and allergic to peanuts",
                    "scope": "agent:planner",
                    "id": "diet",
                    "metadata": {"kind": "fact", "priority": 3, "tags": ["food"]},
                },
            )
        )
        assert (again["version"], again["created"]) == (1, False)
        taken = await client.call_tool(
            "remember", {"content": "something else", "scope": "agent:planner", "id": "diet"}
        )
        assert "use update" in failed(taken, "precondition_failed")
        assert plain.get("agent:planner", "diet").version == 1

        # recall: a paraphrase across both scopes; a filter with operators; exact words.
        found = ok(
            await client.call_tool(
                "recall",
                {"query": "how much money can we spend?", "scopes": ["agent:planner", "shared"]},
            )
        )
        assert found["partial"] is False
        assert found["results"][0]["id"] == budget["id"]
        assert found["results"][0]["score"] is not None
        filtered = ok(
            await client.call_tool(
                "recall",
                {
                    "query": "food",
                    "scopes": ["agent:planner", "shared"],
                    "filter": {"priority": {"$gte": 2}, "tags": {"$contains": "food"}},
                },
            )
        )
        assert [h["id"] for h in filtered["results"]] == ["diet"]
        assert filtered["results"][0]["metadata"]["priority"] == 3
        tasks = ok(
            await client.call_tool(
                "recall",
                {"query": "TP1353", "mode": "keyword", "filter": {"$not": {"kind": "fact"}}},
            )
        )
        assert [h["id"] for h in tasks["results"]] == [flight["id"]]
        assert "TP1353" in text_of(await client.call_tool("recall", {"query": "TP1353", "k": 1}))
        none = ok(await client.call_tool("recall", {"query": "zebra", "mode": "keyword"}))
        assert none["results"] == []

        # get: with its version.
        got = ok(await client.call_tool("get", {"id": "diet", "scope": "agent:planner"}))
        assert (got["version"], got["metadata"]["kind"]) == (1, "fact")
        assert "embedding" not in got

        # update: a merge patch, conditional; a stale version changes nothing.
        upd = ok(
            await client.call_tool(
                "update",
                {
                    "id": "diet",
                    "scope": "agent:planner",
                    "metadata": {"priority": None, "source": {"chat": 41}},
                    "expected_version": 1,
                },
            )
        )
        assert upd["version"] == 2
        assert plain.get("agent:planner", "diet").metadata == {
            "kind": "fact",
            "tags": ["food"],
            "source": {"chat": 41},
        }
        stale = await client.call_tool(
            "update",
            {"id": "diet", "scope": "agent:planner", "content": "x", "expected_version": 1},
        )
        text = failed(stale, "precondition_failed")
        assert "412" in text
        after = plain.get("agent:planner", "diet")
        assert (after.version, after.content) == (2, "Ana is vegetarian and allergic to peanuts")
        content = ok(
            await client.call_tool(
                "update",
                {"id": budget["id"], "content": "The travel budget is 1500 EUR per trip"},
            )
        )
        assert content["content"].endswith("1500 EUR per trip")
        assert plain.get("shared", budget["id"]).content.endswith("1500 EUR per trip")
        forever = ok(await client.call_tool("update", {"id": flight["id"], "ttl_seconds": None}))
        assert forever["expires_at"] is None
        assert plain.get("shared", flight["id"]).expires_at is None

        # forget: a stale version refuses; then it is gone; then not_found.
        refused = await client.call_tool(
            "forget", {"id": "diet", "scope": "agent:planner", "expected_version": 1}
        )
        failed(refused, "precondition_failed")
        assert plain.get("agent:planner", "diet").version == 2
        gone = ok(
            await client.call_tool(
                "forget", {"id": "diet", "scope": "agent:planner", "expected_version": 2}
            )
        )
        assert gone == {"id": "diet", "scope": "agent:planner", "deleted": True}
        with pytest.raises(memring.NotFound):
            plain.get("agent:planner", "diet")
        failed(
            await client.call_tool("forget", {"id": "diet", "scope": "agent:planner"}), "not_found"
        )
        failed(await client.call_tool("get", {"id": "diet", "scope": "agent:planner"}), "not_found")


@pytest.mark.asyncio
async def test_list_pages_with_a_cursor(
    cluster: LocalCluster, tenant: str, plain: Memring, tmp_path: Path
) -> None:
    ids = {f"note-{i}" for i in range(7)}
    plain.add_many(
        [
            {"scope": "agent:scribe", "id": i, "content": f"note {i}", "metadata": {"n": 1}}
            for i in ids
        ]
    )
    async with mcp_client("stdio", bound(cluster, tenant), tmp_path, mode="legacy") as client:
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            args: dict[str, Any] = {"scope": "agent:scribe", "limit": 3}
            if cursor:
                args["cursor"] = cursor
            page = ok(await client.call_tool("list", args))
            pages += 1
            assert len(page["items"]) <= 3
            for item in page["items"]:
                assert item["version"] == 1
                assert item["metadata"] == {"n": 1}
            seen += [m["id"] for m in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert "cursor" in text_of(await client.call_tool("list", args))
        assert sorted(seen) == sorted(ids)
        assert pages == 3
        empty = ok(await client.call_tool("list", {"scope": "agent:nobody"}))
        assert empty == {"items": [], "next_cursor": None}
        shared = ok(await client.call_tool("list", {}))
        assert shared["items"] == []


# -- bad calls are tool errors, never a crash ----------------------------------------------------

BAD_CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("recall", {}, "'query' is a required property"),
    ("recall", {"query": ""}, "query"),
    ("recall", {"query": "x", "k": 0}, "k: 0 is less than the minimum of 1"),
    ("recall", {"query": "x", "k": 5000}, "k: 5000 is greater than the maximum of 100"),
    ("recall", {"query": "x", "mode": "fuzzy"}, "'fuzzy' is not one of"),
    ("recall", {"query": "x", "scopes": ["team"]}, "scopes[0]: 'team' is not valid"),
    ("recall", {"query": "x", "scopes": []}, "scopes"),
    ("recall", {"query": "x", "filter": {"$regex": "a"}}, "must be $and, $or or $not"),
    ("recall", {"query": "x", "filter": "kind"}, "filter"),
    ("recall", {"query": "x", "created_after": "yesterday"}, "RFC 3339"),
    ("recall", {"query": "x", "tenant": "other"}, "'tenant' was unexpected"),
    ("remember", {"content": "x", "scope": "global"}, "scope: 'global' is not valid"),
    ("remember", {"content": "x", "id": "a/b"}, "id: 'a/b' is not valid"),
    ("remember", {"content": "x", "ttl_seconds": 0}, "ttl_seconds: 0 is less than the minimum"),
    ("remember", {"content": "x", "metadata": [1]}, "metadata: [1] is not of type 'object'"),
    ("remember", {"scope": "shared"}, "'content' is a required property"),
    ("update", {"id": "a"}, "give at least one of content, metadata or ttl_seconds"),
    ("update", {"id": "a", "content": "x", "expected_version": 0}, "expected_version"),
    ("forget", {"scope": "shared"}, "'id' is a required property"),
    ("list", {"limit": 101}, "limit: 101 is greater than the maximum of 100"),
    ("nonsense", {}, "there is no tool 'nonsense'"),
]


@pytest.mark.asyncio
async def test_bad_arguments_are_tool_errors(
    cluster: LocalCluster, tenant: str, plain: Memring, tmp_path: Path
) -> None:
    async with mcp_client("stdio", bound(cluster, tenant), tmp_path, mode="legacy") as client:
        for name, args, expected in BAD_CALLS:
            result = await client.call_tool(name, args)
            text = failed(result, "invalid_arguments")
            assert expected in text, (name, args, text)
        # The server's own checks come back the same way, with memring's code and message.
        deep = await client.call_tool(
            "recall", {"query": "x", "filter": {"kind": {"$regex": "f.*"}}}
        )
        assert "$regex" in failed(deep, "invalid_filter")
        # Lenient where clients are known to be sloppy: JSON text for objects and numbers,
        # null for a left-out optional argument.
        r = ok(
            await client.call_tool(
                "remember",
                {
                    "content": "lenient",
                    "metadata": '{"kind": "json-text"}',
                    "id": None,
                    "ttl_seconds": None,
                },
            )
        )
        assert plain.get("shared", r["id"]).metadata == {"kind": "json-text"}
        hits = ok(
            await client.call_tool("recall", {"query": "lenient", "k": "3", "mode": "keyword"})
        )
        assert [h["id"] for h in hits["results"]] == [r["id"]]
        assert plain.list("shared").items[0].content == "lenient", "nothing else was written"


# -- configuration: the tenant and the key are the server's --------------------------------------


@pytest.mark.asyncio
async def test_the_key_comes_from_the_named_environment_variable(
    auth: Auth, tmp_path: Path
) -> None:
    args = ["--url", auth.url, "--tenant", auth.tenant, "--api-key-env", "AGENT_MEMORY_KEY"]
    env = {"AGENT_MEMORY_KEY": auth.key, "MEMRING_API_KEY": "mrk_not_this_one"}
    scope = f"agent:{new_tenant('k')}"
    async with mcp_client("stdio", args, tmp_path, env=env, mode="legacy") as client:
        w = ok(await client.call_tool("remember", {"content": "keyed", "scope": scope}))
    with Memring(auth.url, api_key=auth.key, tenant=auth.tenant) as m:
        assert m.get(scope, w["id"]).content == "keyed"
    # A wrong key: every call is a tool error naming memring's code, and the server lives on.
    env = {"AGENT_MEMORY_KEY": "mrk_wrong"}
    async with mcp_client("http", args, tmp_path, env=env) as client:
        failed(await client.call_tool("list", {"scope": scope}), "unauthorized")
        failed(await client.call_tool("recall", {"query": "keyed"}), "unauthorized")
    # Another tenant's key on this tenant: forbidden.
    env = {"AGENT_MEMORY_KEY": auth.other_key}
    async with mcp_client("stdio", args, tmp_path, env=env) as client:
        failed(await client.call_tool("get", {"id": w["id"], "scope": scope}), "forbidden")


@pytest.mark.asyncio
async def test_an_unreachable_memring_is_a_tool_error(tmp_path: Path) -> None:
    args = ["--url", f"http://127.0.0.1:{free_port()}", "--tenant", "t", "--timeout", "2"]
    async with mcp_client("stdio", args, tmp_path, mode="legacy") as client:
        r = await client.call_tool("recall", {"query": "anything"})
        assert "could not be reached" in failed(r, "transport_error")
        ok_tools = await client.list_tools()
        assert len(ok_tools.tools) == 6, "the server still answers"


@pytest.mark.asyncio
async def test_http_bearer_token(cluster: LocalCluster, tenant: str, tmp_path: Path) -> None:
    args = [*bound(cluster, tenant), "--http-token-env", "MCP_TOKEN"]
    env = {"MCP_TOKEN": "s3cret-token"}
    server = HttpServer(args, tmp_path / "token.log", env=server_env(env))
    try:
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        }
        accept = {"accept": "application/json, text/event-stream"}
        async with httpx.AsyncClient(trust_env=False) as http:
            for headers in (
                {},
                {"authorization": "Bearer wrong"},
                {"authorization": "s3cret-token"},
            ):
                r = await http.post(server.url, json=init, headers={**accept, **headers})
                assert r.status_code == 401
                assert r.json()["error"]["code"] == "unauthorized"
    finally:
        server.stop()
    headers = {"authorization": "bearer s3cret-token"}  # the scheme is case-insensitive
    async with mcp_client("http", args, tmp_path, env=env, headers=headers) as client:
        assert ok(await client.call_tool("list", {}))["items"] == []


def test_configuration_errors_stop_the_command(tmp_path: Path) -> None:
    def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*mcp_command(), *args],
            capture_output=True,
            text=True,
            env=server_env(env),
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    cases = [
        ([], "--tenant (or $MEMRING_TENANT) is required"),
        (
            ["--tenant", "t", "--api-key-env", "NOT_SET_ANYWHERE"],
            "NOT_SET_ANYWHERE, which is not set",
        ),
        (["--tenant", "t", "--http", "0.0.0.0:0"], "set --http-token-env"),
        (["--tenant", "t", "--http", "localhost:x"], "HOST:PORT"),
        (["--tenant", "t", "--http-token-env", "HOME"], "applies to --http only"),
    ]
    for args, message in cases:
        done = run(args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert done.stdout == "", "nothing on standard output, the MCP channel"
    version = run(["--version"])
    assert version.returncode == 0
    assert version.stdout.strip() == f"memring-mcp {memring.__version__}"
