"""What the tools do: check the arguments, call memring, shape the answer.

Nothing here knows MCP's wire types: :meth:`MemoryTools.call` takes a tool name and its
arguments and returns a :class:`ToolOutput` (structured content and a short text) or raises
:class:`ToolFailure` (a code and a message for the model). ``_server`` turns those into MCP
results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import ValidationError  # type: ignore[import-untyped]

from .._async_client import AsyncMemring
from .._errors import MemringError, PreconditionFailed
from .._types import Memory, SearchHit
from ._schemas import TOOLS, ToolSpec

__all__ = ["MemoryTools", "ToolFailure", "ToolOutput"]

TEXT_CONTENT_CHARS: Final = 2000
"""How much of a memory's content the text rendering shows (the structured result has all)."""

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")

HINTS: Final[dict[str, str]] = {
    "not_found": "Check the id and the scope; list shows a scope's memories.",
    "precondition_failed": (
        "The memory changed since that version was read: get it again, then redo the change "
        "with its current version."
    ),
    "rate_limited": "memring is rate limiting this tenant; wait a little and try again.",
    "unavailable": "memring could not reach a copy of the data; try again shortly.",
    "transport_error": "The memring server could not be reached; try again later.",
    "timeout": "memring did not answer in time; try again later.",
    "unauthorized": "The memring API key of this MCP server is missing or not valid.",
    "forbidden": "The memring API key of this MCP server may not do this.",
}
"""A sentence added to the error text for the model, per memring error code."""


@dataclass
class ToolOutput:
    """A tool's result: ``structured`` (matching its output schema) and ``text`` for reading."""

    structured: dict[str, Any]
    text: str


@dataclass(eq=False)  # exceptions stay hashable
class ToolFailure(Exception):
    """A call that did not succeed, as the model should see it."""

    code: str
    message: str
    status: int | None = None
    details: Any = None
    retry_after: float | None = None
    hint: str | None = None
    """A sentence on what to do about it, for the model."""

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status is not None else ""
        text = f"memring error {self.code}{where}: {self.message}"
        if self.hint:
            text += f"\n{self.hint}"
        return text

    def as_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.status is not None:
            error["status"] = self.status
        if self.details is not None:
            error["details"] = self.details
        if self.retry_after is not None:
            error["retry_after"] = self.retry_after
        return {"error": error}

    @classmethod
    def from_memring(cls, err: MemringError) -> ToolFailure:
        return cls(
            code=err.code,
            message=err.message,
            status=err.status,
            details=err.details,
            retry_after=err.retry_after,
            hint=HINTS.get(err.code),
        )


def invalid(message: str) -> ToolFailure:
    return ToolFailure(code="invalid_arguments", message=message)


# -- argument checking ---------------------------------------------------------------------------


def _path(error: ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: ValidationError) -> str:
    path = _path(error)
    where = f"{path}: " if path else ""
    schema = cast("dict[str, Any]", error.schema) if isinstance(error.schema, dict) else {}
    if error.validator == "pattern":
        hint = schema.get("description")
        return f"{where}{error.instance!r} is not valid" + (f" ({hint})" if hint else "")
    if error.validator == "propertyNames" or (error.validator == "anyOf" and path == "filter"):
        return (
            f"{where}{error.instance!r}: a key starting with $ at the top of a filter must be "
            "$and, $or or $not; put comparison operators inside a field, e.g. "
            '{"priority": {"$gte": 2}}'
        )
    return f"{where}{error.message}"


class ArgumentChecker:
    """Checks a call's arguments against the tool's advertised input schema, after the
    lenient fixes some clients need (objects and arrays sent as JSON text, ``null`` for a left
    out optional argument)."""

    def __init__(self, spec: ToolSpec) -> None:
        self.spec = spec
        self.properties: dict[str, Any] = spec.input_schema.get("properties", {})
        self.validator = Draft202012Validator(spec.input_schema)

    def _types(self, name: str) -> set[str]:
        t = self.properties.get(name, {}).get("type")
        if isinstance(t, str):
            return {t}
        return set(t or [])

    def normalise(self, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
        args = dict(arguments or {})
        for name in list(args):
            if name not in self.properties:
                continue
            types = self._types(name)
            value = args[name]
            if value is None and "null" not in types:
                del args[name]  # some clients send null for every optional argument
            elif isinstance(value, str) and "string" not in types and types:
                try:
                    parsed = json.loads(value)
                except ValueError:
                    if types == {"array"}:
                        args[name] = [value]  # "shared" for ["shared"]
                    continue
                # Objects, arrays and numbers sent as JSON text (a known client habit).
                if not isinstance(parsed, str):
                    args[name] = parsed
        return args

    def check(self, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
        args = self.normalise(arguments)
        errors = sorted(
            self.validator.iter_errors(args),
            key=lambda e: ([str(p) for p in e.absolute_path], e.message),
        )
        if errors:
            problems = "; ".join(dict.fromkeys(_describe(e) for e in errors))
            raise invalid(f"invalid arguments for {self.spec.name}: {problems}")
        return args


# -- rendering -----------------------------------------------------------------------------------


def memory_json(m: Memory) -> dict[str, Any]:
    """A memory as the tools return it: everything but the vector."""
    return {
        "id": m.id,
        "scope": m.scope,
        "content": m.content,
        "metadata": m.metadata,
        "version": m.version,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
        "expires_at": m.expires_at,
        "embedded_by": m.embedded_by,
    }


def hit_json(h: SearchHit) -> dict[str, Any]:
    scores: dict[str, Any] = {}
    if h.scores.vector is not None:
        scores["vector"] = h.scores.vector
    if h.scores.keyword is not None:
        scores["keyword"] = h.scores.keyword
    return {
        "id": h.id,
        "scope": h.scope,
        "score": h.score,
        "scores": scores,
        "content": h.content,
        "metadata": h.metadata,
        "created_at": h.created_at,
        "updated_at": h.updated_at,
    }


def _clip(text: str, limit: int = TEXT_CONTENT_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters in the structured result)"


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), sort_keys=True)


def _memory_line(m: Mapping[str, Any], prefix: str = "") -> str:
    line = f"{prefix}[{m['scope']}] {m['id']} (version {m['version']}): {_clip(m['content'])}"
    if m.get("metadata"):
        line += f"\n   metadata: {_compact(m['metadata'])}"
    if m.get("expires_at"):
        line += f"\n   expires at {m['expires_at']}"
    return line


def _hit_line(n: int, h: Mapping[str, Any]) -> str:
    score = "" if h["score"] is None else f" (score {h['score']:.3f})"
    line = f"{n}. [{h['scope']}] {h['id']}{score}: {_clip(h['content'])}"
    if h.get("metadata"):
        line += f"\n   metadata: {_compact(h['metadata'])}"
    return line


def _memories(n: int) -> str:
    return "1 memory" if n == 1 else f"{n} memories"


# -- the tools -----------------------------------------------------------------------------------

Handler = Callable[[dict[str, Any]], Awaitable[ToolOutput]]


class MemoryTools:
    """The tools of one memring tenant, through one :class:`AsyncMemring` client (which brings
    the retries, the errors and read-your-writes)."""

    def __init__(self, client: AsyncMemring) -> None:
        if not client.tenant:
            raise ValueError("the memring client needs a tenant")
        self.client = client
        self.specs: dict[str, ToolSpec] = {spec.name: spec for spec in TOOLS}
        self._checkers = {name: ArgumentChecker(spec) for name, spec in self.specs.items()}
        self._handlers: dict[str, Handler] = {
            "remember": self.remember,
            "recall": self.recall,
            "get": self.get,
            "update": self.update,
            "forget": self.forget,
            "list": self.list,
        }

    async def call(self, name: str, arguments: Mapping[str, Any] | None) -> ToolOutput:
        """Runs tool ``name``; raises :class:`ToolFailure` for anything the model should see."""
        handler = self._handlers.get(name)
        if handler is None:
            known = ", ".join(self._handlers)
            raise invalid(f"there is no tool {name!r}; the tools are {known}")
        args = self._checkers[name].check(arguments)
        try:
            return await handler(args)
        except MemringError as err:
            raise ToolFailure.from_memring(err) from err
        except (ValueError, TypeError) as err:
            # The client's own checks (they run before anything is sent).
            raise invalid(f"invalid arguments for {name}: {err}") from err

    # Each handler gets arguments that passed the tool's input schema.

    async def remember(self, args: dict[str, Any]) -> ToolOutput:
        try:
            w = await self.client.add(
                args.get("scope", "shared"),
                args["content"],
                id=args.get("id"),
                metadata=args.get("metadata"),
                ttl_seconds=args.get("ttl_seconds"),
                # Create only: a model reusing an id must not silently overwrite a memory.
                # The same write again is still the idempotent 200.
                if_none_match="id" in args,
            )
        except PreconditionFailed as err:
            if "id" not in args:
                raise
            failure = ToolFailure.from_memring(err)
            failure.hint = (
                f"Another memory already has the id {args['id']!r}: use update to change it, "
                "forget it first, or remember under another id."
            )
            raise failure from err
        out = {
            "id": w.id,
            "scope": w.scope,
            "version": w.version,
            "created": w.created,
            "created_at": w.created_at,
            "embedded_by": w.embedded_by,
            "embedded_truncated": w.embedded_truncated,
        }
        what = "a new memory" if w.created else "it was already there"
        text = f"Remembered {w.id!r} in {w.scope} (version {w.version}, {what})."
        if w.embedded_truncated:
            text += " The text is longer than the embedder's window: only its start was embedded."
        return ToolOutput(out, text)

    async def recall(self, args: dict[str, Any]) -> ToolOutput:
        for key in ("created_after", "created_before"):
            if key in args and not _RFC3339.match(args[key]):
                raise invalid(
                    f"invalid arguments for recall: {key}: {args[key]!r} is not an RFC 3339 "
                    'time such as "2025-01-31T09:00:00Z"'
                )
        scopes: list[str] = args.get("scopes", ["shared"])
        found = await self.client.search(
            scopes,
            query=args["query"],
            k=args.get("k", 10),
            mode=args.get("mode"),
            where=args.get("filter"),
            created_after=args.get("created_after"),
            created_before=args.get("created_before"),
        )
        hits = [hit_json(h) for h in found.results]
        where = ", ".join(scopes)
        if hits:
            lines = [f"{_memories(len(hits))} for {args['query']!r} in {where}, best first:"]
            lines += [_hit_line(i, h) for i, h in enumerate(hits, 1)]
        else:
            lines = [f"No memory in {where} matches {args['query']!r}."]
        if found.partial:
            lines.append(
                "(Partial: a scope could not be searched right now; its memories are missing.)"
            )
        text = "\n".join(lines)
        return ToolOutput({"results": hits, "partial": found.partial}, text)

    async def get(self, args: dict[str, Any]) -> ToolOutput:
        m = memory_json(await self.client.get(args.get("scope", "shared"), args["id"]))
        return ToolOutput(m, _memory_line(m))

    async def update(self, args: dict[str, Any]) -> ToolOutput:
        fields = [k for k in ("content", "metadata", "ttl_seconds") if k in args]
        if not fields:
            raise invalid(
                "invalid arguments for update: give at least one of content, metadata or "
                "ttl_seconds (the fields to change)"
            )
        changes: dict[str, Any] = {k: args[k] for k in fields}
        m = await self.client.patch(
            args.get("scope", "shared"),
            args["id"],
            if_match=args.get("expected_version"),
            **changes,
        )
        out = memory_json(m)
        return ToolOutput(out, "Updated: " + _memory_line(out))

    async def forget(self, args: dict[str, Any]) -> ToolOutput:
        scope = args.get("scope", "shared")
        await self.client.delete(scope, args["id"], if_match=args.get("expected_version"))
        return ToolOutput(
            {"id": args["id"], "scope": scope, "deleted": True},
            f"Forgot {args['id']!r} in {scope}.",
        )

    async def list(self, args: dict[str, Any]) -> ToolOutput:
        scope = args.get("scope", "shared")
        page = await self.client.list(scope, limit=args.get("limit", 20), cursor=args.get("cursor"))
        items = [memory_json(m) for m in page.items]
        if items:
            lines = [f"{_memories(len(items))} in {scope}:"]
            lines += [_memory_line(m, f"{i}. ") for i, m in enumerate(items, 1)]
        else:
            lines = [
                f"No memories in {scope}" + (" after this cursor." if args.get("cursor") else ".")
            ]
        if page.next_cursor:
            lines.append(f"More: call list again with cursor {page.next_cursor!r}.")
        text = "\n".join(lines)
        return ToolOutput({"items": items, "next_cursor": page.next_cursor}, text)
