"""memring-mcp without a cluster: the schemas, argument checking, rendering and configuration."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

import memring
from memring import AsyncMemring
from memring.mcp import TOOLS, MemoryTools, ToolFailure
from memring.mcp._cli import ConfigError, is_loopback, parse_args, parse_host_port
from memring.mcp._schemas import READ_SCOPE_PATTERN, WRITE_SCOPE_PATTERN
from memring.mcp._tools import ArgumentChecker, hit_json, memory_json


def checker(name: str) -> ArgumentChecker:
    return ArgumentChecker(next(s for s in TOOLS if s.name == name))


def test_every_schema_is_valid_json_schema() -> None:
    for spec in TOOLS:
        Draft202012Validator.check_schema(spec.input_schema)
        Draft202012Validator.check_schema(spec.output_schema)
        assert spec.input_schema["type"] == "object"
        assert "anyOf" not in spec.input_schema, "top-level anyOf is refused by some model APIs"
        for name, prop in spec.input_schema["properties"].items():
            assert prop.get("description"), f"{spec.name}.{name} has no description"


@pytest.mark.parametrize(
    ("scope", "write", "read"),
    [
        ("shared", True, True),
        ("global", False, True),
        ("agent:planner", True, True),
        ("agent:a.b-c_9", True, True),
        ("agent:", False, False),
        ("agent:a b", False, False),
        ("agent:" + "x" * 129, False, False),
        ("Shared", False, False),
        ("team", False, False),
    ],
)
def test_scope_patterns(scope: str, write: bool, read: bool) -> None:
    import re

    assert bool(re.match(WRITE_SCOPE_PATTERN, scope)) is write
    assert bool(re.match(READ_SCOPE_PATTERN, scope)) is read


def test_arguments_are_checked_against_the_advertised_schema() -> None:
    recall = checker("recall")
    assert recall.check({"query": "x"}) == {"query": "x"}
    with pytest.raises(ToolFailure) as err:
        recall.check({"query": "x", "k": 0, "mode": "fuzzy", "extra": 1})
    failure = err.value
    assert failure.code == "invalid_arguments"
    # Every problem at once, each with where it is.
    assert "k: 0 is less than the minimum of 1" in failure.message
    assert "mode: 'fuzzy' is not one of" in failure.message
    assert "'extra' was unexpected" in failure.message
    assert str(failure).startswith("memring error invalid_arguments: invalid arguments for recall")


def test_lenient_fixes_for_sloppy_clients() -> None:
    remember = checker("remember")
    args = remember.check(
        {"content": "x", "metadata": '{"a": [1, 2]}', "ttl_seconds": "60", "id": None}
    )
    assert args == {"content": "x", "metadata": {"a": [1, 2]}, "ttl_seconds": 60}
    # One scope for a list of scopes.
    assert checker("recall").check({"query": "q", "scopes": "agent:a"})["scopes"] == ["agent:a"]
    # A string field keeps JSON-looking text as it is.
    assert remember.check({"content": '{"a": 1}'}) == {"content": '{"a": 1}'}
    # null is kept where it means something (update: remove metadata, keep for ever).
    update = checker("update")
    assert update.check({"id": "a", "metadata": None, "ttl_seconds": None}) == {
        "id": "a",
        "metadata": None,
        "ttl_seconds": None,
    }
    # Text that is not JSON stays, and fails the type check.
    with pytest.raises(ToolFailure, match="metadata: 'kind=fact' is not of type 'object'"):
        remember.check({"content": "x", "metadata": "kind=fact"})


def test_filter_top_level_keys() -> None:
    recall = checker("recall")
    ok: dict[str, Any] = {
        "query": "x",
        "filter": {"kind": "fact", "$and": [{"a": 1}], "$or": [{"b": 2}], "$not": {"c": 3}},
    }
    assert recall.check(ok) == ok
    with pytest.raises(ToolFailure, match=r"'\$gte': a key starting with \$"):
        recall.check({"query": "x", "filter": {"$gte": 2}})


def test_renderings() -> None:
    m = memring.Memory.from_json(
        {
            "id": "a",
            "scope": "shared",
            "content": "x" * 5000,
            "metadata": {"k": 1},
            "embedding": [0.1, 0.2],
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "version": 3,
        }
    )
    out = memory_json(m)
    assert "embedding" not in out
    assert out["version"] == 3
    assert len(out["content"]) == 5000, "structured content is never cut"
    hit = memring.SearchHit.from_json(
        {
            "id": "a",
            "scope": "shared",
            "score": 0.5,
            "scores": {"keyword": 1.5},
            "content": "c",
            "metadata": {},
            "created_at": "t",
        }
    )
    assert hit_json(hit)["scores"] == {"keyword": 1.5}


@pytest.mark.asyncio
async def test_unknown_tool_and_client_side_errors() -> None:
    async with AsyncMemring("http://127.0.0.1:9", tenant="t") as client:
        tools = MemoryTools(client)
        with pytest.raises(ToolFailure, match="there is no tool 'drop_table'"):
            await tools.call("drop_table", {})
        with pytest.raises(ToolFailure, match="give at least one of"):
            await tools.call("update", {"id": "a", "scope": "shared"})
    with pytest.raises(ValueError, match="tenant"):
        MemoryTools(AsyncMemring("http://127.0.0.1:9"))


def test_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMRING_TENANT", raising=False)
    monkeypatch.setenv("MEMRING_API_KEY", "mrk_default")
    monkeypatch.setenv("MY_KEY", "mrk_mine")
    config, level = parse_args(["--tenant", "acme"])
    assert (config.tenant, config.api_key, config.http, level) == (
        "acme",
        "mrk_default",
        None,
        "WARNING",
    )
    config, _ = parse_args(["--tenant", "acme", "--api-key-env", "MY_KEY", "--http", "8765"])
    assert config.api_key == "mrk_mine"
    assert config.http == ("127.0.0.1", 8765)
    assert "mrk_mine" not in repr(config), "keys stay out of logs"
    monkeypatch.setenv("MEMRING_TENANT", "from-env")
    monkeypatch.setenv("TOK", "t0k")
    config, _ = parse_args(["--http", "[::]:80", "--http-token-env", "TOK", "--http-path", "x"])
    assert (config.tenant, config.http, config.http_token, config.http_path) == (
        "from-env",
        ("::", 80),
        "t0k",
        "/x",
    )
    with pytest.raises(ConfigError, match="listens beyond this machine"):
        parse_args(["--http", "0.0.0.0:80"])
    with pytest.raises(ConfigError, match="not set"):
        parse_args(["--api-key-env", "SURELY_NOT_SET_42"])
    with pytest.raises(ConfigError, match="a tenant id is"):
        parse_args(["--tenant", "acme corp"])
    with pytest.raises(ConfigError, match="http:// or https://"):
        parse_args(["--url", "localhost:7700"])


def test_host_port() -> None:
    assert parse_host_port("127.0.0.1:1") == ("127.0.0.1", 1)
    assert parse_host_port("[::1]:8000") == ("::1", 8000)
    assert parse_host_port(":8000") == ("127.0.0.1", 8000)
    with pytest.raises(ConfigError):
        parse_host_port("host:99999")
    for host in ("localhost", "::1", "127.0.0.2"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "example.com", "10.0.0.1"):
        assert not is_loopback(host), host


def test_bearer_token_check() -> None:
    from memring.mcp._cli import BearerAuth

    auth = BearerAuth(app=None, token="t0k")
    assert auth._authorized(b"Bearer t0k")
    assert auth._authorized(b"bearer  t0k ")
    for header in (b"", b"t0k", b"Bearer", b"Bearer t0", b"Bearer t0kk", b"Basic t0k"):
        assert not auth._authorized(header), header


def test_python_dash_m() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "memring.mcp", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"memring-mcp {memring.__version__}"
