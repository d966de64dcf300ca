"""The tools as a model sees them: names, descriptions, input and output JSON Schemas.

The schemas are written out by hand rather than derived from Python signatures: they are the
contract the model reads, and the input schemas are also what the server enforces (``_tools``
validates every call against exactly these, before anything reaches memring). They stay
self-contained (no ``$ref``/``$defs``, no top-level ``anyOf``) because several MCP clients and
model APIs reject those in tool schemas.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["TOOLS", "ToolSpec"]

# -- limits (API.md, and the router's constants) --------------------------------------------------

MAX_ID_LEN: Final = 128
ID_PATTERN: Final = r"^[A-Za-z0-9_.-]{1,128}$"
WRITE_SCOPE_PATTERN: Final = r"^(shared|agent:[A-Za-z0-9_.-]{1,128})$"
READ_SCOPE_PATTERN: Final = r"^(shared|global|agent:[A-Za-z0-9_.-]{1,128})$"
MAX_CONTENT_CHARS: Final = 1 << 20
"""The router counts 1 MiB of UTF-8 bytes; a JSON Schema can only bound characters."""
MAX_QUERY_CHARS: Final = 8 << 10
MAX_TTL_SECONDS: Final = 10 * 365 * 24 * 3600
MAX_RECALL_K: Final = 100
MAX_LIST_LIMIT: Final = 100
MAX_SCOPES: Final = 32
RESERVED_FILTER_KEYS: Final = ("$and", "$or", "$not")

# -- shared pieces -------------------------------------------------------------------------------

_WRITE_SCOPE: Final[dict[str, Any]] = {
    "type": "string",
    "pattern": WRITE_SCOPE_PATTERN,
    "default": "shared",
    "description": (
        'Where the memory lives: "shared" (seen by every agent of this tenant, the default) or '
        '"agent:<agent_id>" (private to one agent, e.g. "agent:planner"; the agent id is 1-128 '
        "characters of A-Z a-z 0-9 _ . -)."
    ),
}

_ID: Final[dict[str, Any]] = {
    "type": "string",
    "pattern": ID_PATTERN,
    "minLength": 1,
    "maxLength": MAX_ID_LEN,
    "description": "The memory's id: 1-128 characters of A-Z a-z 0-9 _ . -",
}

_METADATA_IN: Final[dict[str, Any]] = {
    "type": "object",
    "description": (
        "Structured facts about the memory, any JSON object (at most 64 KiB as JSON), e.g. "
        '{"kind": "preference", "topic": "travel", "priority": 2, "tags": ["food"]}. '
        "recall can filter on these fields."
    ),
}

_TTL: Final[dict[str, Any]] = {
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_TTL_SECONDS,
    "description": (
        "Forget the memory automatically this many seconds from now (at most ten years). Leave "
        "it out to keep the memory until it is forgotten."
    ),
}

_EXPECTED_VERSION: Final[dict[str, Any]] = {
    "type": "integer",
    "minimum": 1,
    "description": (
        "Apply the change only if the memory is still at this version (optimistic "
        "concurrency; the version comes from get, list, remember or update). If someone "
        "changed it meanwhile the call fails with precondition_failed and changes nothing: "
        "get it again and redo the change."
    ),
}

_FILTER_DESCRIPTION: Final = """\
Only memories whose metadata matches this filter (memring's filter language, as in MongoDB).
Each key is a metadata field (a dotted key such as "user.country" reaches into nested objects);
all keys of one object must match.
- A plain value is equality: {"kind": "fact"}.
- Operators go in the field's object: $eq, $ne, $gt, $gte, $lt, $lte (numbers with numbers,
  strings with strings; RFC 3339 times compare as strings), $in and $nin (a JSON array of values),
  $contains (the field is an array holding the value), $exists (true or false):
  {"priority": {"$gte": 2, "$lt": 5}, "kind": {"$in": ["fact", "task"]}}.
  A missing field never matches $eq, the ranges or $in, and always matches $ne and $nin.
- Logic at any depth: {"$and": [filter, ...]}, {"$or": [filter, ...]}, {"$not": filter}:
  {"$or": [{"tags": {"$contains": "travel"}}, {"pinned": true}], "$not": {"archived": true}}.
At most 64 conditions and 8 levels of $and/$or/$not; any other $-operator is an error."""

_FILTER: Final[dict[str, Any]] = {
    "type": "object",
    "description": _FILTER_DESCRIPTION,
    # The top level can be checked without recursion: field names, or the three logic keys.
    "propertyNames": {"anyOf": [{"pattern": r"^[^$]"}, {"enum": list(RESERVED_FILTER_KEYS)}]},
    "examples": [
        {"kind": "fact"},
        {"priority": {"$gte": 2}, "tags": {"$contains": "travel"}},
        {"$or": [{"kind": "task"}, {"pinned": True}], "$not": {"status": "done"}},
    ],
}

_TIME: Final[dict[str, Any]] = {"type": "string", "format": "date-time"}

# -- outputs -------------------------------------------------------------------------------------

_NULLABLE_STRING: Final[dict[str, Any]] = {"type": ["string", "null"]}

_MEMORY_OUT: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "scope": {"type": "string"},
        "content": {"type": "string"},
        "metadata": {"type": "object"},
        "version": {"type": "integer", "description": "Pass as expected_version to change it."},
        "created_at": {"type": "string"},
        "updated_at": {"type": "string"},
        "expires_at": {**_NULLABLE_STRING, "description": "null: kept until forgotten"},
        "embedded_by": {
            **_NULLABLE_STRING,
            "description": "The model memring embedded the content with, if it did.",
        },
    },
    "required": ["id", "scope", "content", "metadata", "version", "created_at", "updated_at"],
}

_HIT_OUT: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "scope": {"type": "string"},
        "score": {
            "type": ["number", "null"],
            "description": "Higher is closer (the fused score in hybrid mode).",
        },
        "scores": {
            "type": "object",
            "properties": {
                "vector": {"type": ["number", "null"]},
                "keyword": {"type": ["number", "null"]},
            },
        },
        "content": {"type": "string"},
        "metadata": {"type": "object"},
        "created_at": {"type": "string"},
        "updated_at": _NULLABLE_STRING,
    },
    "required": ["id", "scope", "score", "content", "metadata", "created_at"],
}


class ToolSpec:
    """One tool: its name, title, description, schemas and behaviour hints."""

    def __init__(
        self,
        name: str,
        title: str,
        description: str,
        input_schema: dict[str, Any],
        output_schema: dict[str, Any],
        *,
        read_only: bool,
        destructive: bool = False,
        idempotent: bool = False,
    ) -> None:
        self.name = name
        self.title = title
        self.description = description
        self.input_schema = input_schema
        self.output_schema = output_schema
        self.read_only = read_only
        self.destructive = destructive
        self.idempotent = idempotent


def _obj(
    properties: dict[str, Any], required: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    schema.update(extra)
    return schema


REMEMBER = ToolSpec(
    "remember",
    "Remember",
    (
        "Store a memory: a self-contained piece of text worth recalling later (a fact, a "
        "preference, a decision, a task, a summary), optionally with structured metadata. "
        "memring embeds the text itself, so later recall finds it by meaning as well as by "
        "exact words. Write one idea per memory, phrased so it makes sense without the "
        'conversation around it. Use scope "shared" for what every agent of this tenant should '
        'know, "agent:<id>" for one agent\'s private notes. An id is optional; remembering an '
        "id that is already taken by another memory fails (use update to change a memory). "
        "Returns the memory's id and version."
    ),
    _obj(
        {
            "content": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_CONTENT_CHARS,
                "description": "The text to remember (at most 1 MiB of UTF-8).",
            },
            "scope": _WRITE_SCOPE,
            "metadata": _METADATA_IN,
            "id": {
                **_ID,
                "description": (
                    "Optional id of your choosing (1-128 characters of A-Z a-z 0-9 _ . -), e.g. "
                    '"user-diet"; memring picks a unique one when it is left out. It must not '
                    "belong to another memory yet (the same content again is accepted)."
                ),
            },
            "ttl_seconds": _TTL,
        },
        ["content"],
    ),
    _obj(
        {
            "id": {"type": "string"},
            "scope": {"type": "string"},
            "version": {"type": "integer"},
            "created": {
                "type": "boolean",
                "description": "true: a new memory; false: the same memory was already there.",
            },
            "created_at": {"type": "string"},
            "embedded_by": _NULLABLE_STRING,
            "embedded_truncated": {"type": "boolean"},
        },
        ["id", "scope", "version", "created"],
    ),
    read_only=False,
    destructive=False,
    idempotent=False,
)

RECALL = ToolSpec(
    "recall",
    "Recall",
    (
        "Search memories by a text query, best first across the given scopes. The default "
        "(hybrid) mode finds memories by meaning and by exact words together, so a paraphrase "
        'works ("how much can we spend?" finds "The travel budget is 1200 EUR"); use mode '
        '"keyword" for exact rare words (names, codes like "TP1353"), "vector" for meaning '
        "only. Narrow the search with a metadata filter and creation times. Call it before "
        "answering anything that earlier conversations, the user's preferences or past "
        "decisions may bear on."
    ),
    _obj(
        {
            "query": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_QUERY_CHARS,
                "description": "What to look for, in words (at most 8 KiB).",
            },
            "scopes": {
                "type": "array",
                "items": {
                    "type": "string",
                    "pattern": READ_SCOPE_PATTERN,
                    "description": '"shared", "global" or "agent:<agent_id>"',
                },
                "minItems": 1,
                "maxItems": MAX_SCOPES,
                "uniqueItems": True,
                "default": ["shared"],
                "description": (
                    'The scopes to search, together: "shared" (the default), "agent:<agent_id>" '
                    'for an agent\'s private memories, "global" for memories shared by every '
                    'tenant. E.g. ["agent:planner", "shared"].'
                ),
            },
            "k": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_RECALL_K,
                "default": 10,
                "description": "How many memories to return at most.",
            },
            "mode": {
                "type": "string",
                "enum": ["hybrid", "vector", "keyword"],
                "description": (
                    "hybrid: meaning and exact words fused (the default when memring has an "
                    "embedder); vector: meaning only; keyword: exact words only (BM25; the "
                    "default when memring has no embedder)."
                ),
            },
            "filter": _FILTER,
            "created_after": {
                **_TIME,
                "description": (
                    'Only memories created after this RFC 3339 time, e.g. "2025-01-31T00:00:00Z".'
                ),
            },
            "created_before": {
                **_TIME,
                "description": "Only memories created before this RFC 3339 time.",
            },
        },
        ["query"],
    ),
    _obj(
        {
            "results": {"type": "array", "items": _HIT_OUT},
            "partial": {
                "type": "boolean",
                "description": "true when a scope could not be searched (its results are missing).",
            },
        },
        ["results", "partial"],
    ),
    read_only=True,
    idempotent=True,
)

GET = ToolSpec(
    "get",
    "Get a memory",
    (
        "Read one memory by id and scope: its content, metadata and current version (recall "
        "results carry no version; get one before a conditional update or forget)."
    ),
    _obj({"id": _ID, "scope": _WRITE_SCOPE}, ["id"]),
    _MEMORY_OUT,
    read_only=True,
    idempotent=True,
)

UPDATE = ToolSpec(
    "update",
    "Update a memory",
    (
        "Change some fields of an existing memory and return it whole. Give at least one of "
        "content, metadata or ttl_seconds. metadata is a JSON Merge Patch (RFC 7396): the "
        "fields you give are set, a field set to null is removed, nested objects merge, the "
        "fields you leave out stay (metadata null removes all of them). New content is embedded "
        "again. Give expected_version to apply the change only if nobody changed the memory "
        "since you read it."
    ),
    _obj(
        {
            "id": _ID,
            "scope": _WRITE_SCOPE,
            "content": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_CONTENT_CHARS,
                "description": "The new text, replacing the old one.",
            },
            "metadata": {
                "type": ["object", "null"],
                "description": (
                    "A JSON Merge Patch of the metadata: "
                    '{"status": "done", "draft": null} sets status and removes draft, and '
                    "keeps the other fields; null removes every field."
                ),
            },
            "ttl_seconds": {
                **_TTL,
                "type": ["integer", "null"],
                "description": (
                    "Forget the memory this many seconds from now (at most ten years); null "
                    "keeps it until it is forgotten; leave it out to keep the expiry as it is."
                ),
            },
            "expected_version": _EXPECTED_VERSION,
        },
        ["id"],
    ),
    _MEMORY_OUT,
    read_only=False,
    destructive=True,
)

FORGET = ToolSpec(
    "forget",
    "Forget a memory",
    (
        "Delete one memory for good, by id and scope. Give expected_version to delete it only "
        "if nobody changed it since you read it. Fails with not_found when there is no such "
        "memory."
    ),
    _obj({"id": _ID, "scope": _WRITE_SCOPE, "expected_version": _EXPECTED_VERSION}, ["id"]),
    _obj(
        {"id": {"type": "string"}, "scope": {"type": "string"}, "deleted": {"type": "boolean"}},
        ["id", "scope", "deleted"],
    ),
    read_only=False,
    destructive=True,
    idempotent=True,
)

LIST = ToolSpec(
    "list",
    "List memories",
    (
        "Page through every memory of one scope, in a stable order, with their versions. "
        "Returns next_cursor while there are more: pass it as cursor to get the next page. Use "
        "recall to search instead."
    ),
    _obj(
        {
            "scope": {
                **_WRITE_SCOPE,
                "pattern": READ_SCOPE_PATTERN,
                "description": '"shared" (the default), "global" or "agent:<agent_id>".',
            },
            "limit": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_LIST_LIMIT,
                "default": 20,
                "description": "How many memories per page.",
            },
            "cursor": {
                "type": "string",
                "minLength": 1,
                "description": "next_cursor of the previous page; leave it out for the first page.",
            },
        },
    ),
    _obj(
        {
            "items": {"type": "array", "items": _MEMORY_OUT},
            "next_cursor": {
                **_NULLABLE_STRING,
                "description": "Pass as cursor for the next page; null on the last page.",
            },
        },
        ["items", "next_cursor"],
    ),
    read_only=True,
    idempotent=True,
)

TOOLS: Final[tuple[ToolSpec, ...]] = (REMEMBER, RECALL, GET, UPDATE, FORGET, LIST)
"""Every tool, in the order they are listed."""

INSTRUCTIONS: Final = """\
memring is a long-term memory store shared by the agents of one tenant. Use recall before \
answering anything that earlier conversations, the user's preferences or past decisions may \
bear on; use remember for durable facts, preferences, decisions and tasks worth keeping (one \
self-contained idea per memory). Scopes: "shared" is seen by every agent of the tenant, \
"agent:<agent_id>" is one agent's private notebook. To change a memory use update (a merge of \
its fields), to delete it forget; get and list show versions, which update and forget accept \
as expected_version to avoid overwriting someone else's change. Errors carry memring's code \
(not_found, precondition_failed, invalid_filter, ...) and a message that says how to fix the \
call."""
