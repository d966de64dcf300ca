"""Names and payloads: how LangGraph's namespaces, keys, thread ids and checkpoint ids become
memring scopes and memory ids, and how values and binary blobs become metadata and content.

Every encoding here is reversible or backed by the original kept in the memory's metadata, and
pure (no I/O), so both integrations and their tests share it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

MAX_ID: Final = 128
"""memring's limit on agent ids and memory ids (characters of ``[A-Za-z0-9_.-]``)."""

_KEEP: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")


def label(text: str) -> str:
    """One string as id characters: ``[A-Za-z0-9-]`` kept, every other UTF-8 byte as ``_xx``
    (lower-case hex). Reversible, never contains ``.``, never empty for a non-empty string."""
    out: list[str] = []
    for b in text.encode():
        out.append(chr(b) if b in _KEEP else f"_{b:02x}")
    return "".join(out)


def unlabel(text: str) -> str:
    """The inverse of :func:`label`."""
    raw = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "_":
            raw.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(text[i]))
            i += 1
    return raw.decode()


def digest(*parts: str, n: int = 40) -> str:
    """A stable hex digest of ``parts`` (length-prefixed, so no two part lists collide)."""
    h = hashlib.sha256()
    for p in parts:
        b = p.encode()
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()[:n]


def named_id(prefix: str, *parts: str) -> str:
    """An id: ``prefix`` + ``r`` + the labels of ``parts`` joined by ``.`` when that fits in
    128 characters, else ``prefix`` + ``h`` + a digest of ``parts`` (whoever needs the original
    keeps it in the memory's metadata). The letter after ``prefix`` keeps the forms apart."""
    readable = prefix + "r" + ".".join(label(p) for p in parts)
    if len(readable) <= MAX_ID:
        return readable
    return prefix + "h" + digest(*parts)


# -- reverse order ---------------------------------------------------------------------------

_HEX: Final = "0123456789abcdef"
_REV: Final = str.maketrans(_HEX, _HEX[::-1])


def reverse_key(text: str) -> str:
    """An id-safe string whose ascending order is the *descending* order of ``text``.

    The UTF-8 hex of ``text`` (same order as the text), every digit complemented (reversing the
    order), then ``z``, which is above every digit, so a text sorts after its own extensions
    (``"a" < "ab"`` becomes ``rev("a") > rev("ab")``). Twice the length plus one.
    """
    return text.encode().hex().translate(_REV) + "z"


def unreverse_key(key: str) -> str:
    """The inverse of :func:`reverse_key`."""
    return bytes.fromhex(key[:-1].translate(_REV)).decode()


# -- metadata keys ---------------------------------------------------------------------------


def escape_key(key: str) -> str:
    """A dict key as a memring metadata key that memring's filter paths read literally: ``~``
    becomes ``~0``, ``.`` (memring's path separator) ``~1``, and a leading ``$`` (an operator in
    memring's filters) ``~2``. Escaped keys never start with ``~`` and a letter, which leaves
    those for the integrations' own bookkeeping keys."""
    out = key.replace("~", "~0").replace(".", "~1")
    if out.startswith("$"):
        out = "~2" + out[1:]
    return out


def unescape_key(key: str) -> str:
    """The inverse of :func:`escape_key`."""
    if key.startswith("~2"):
        key = "$" + key[2:]
    return key.replace("~1", ".").replace("~0", "~")


def escape_value(value: Any) -> Any:
    """``value`` with every object key (at any depth) escaped by :func:`escape_key`."""
    if isinstance(value, Mapping):
        return {escape_key(str(k)): escape_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [escape_value(v) for v in value]
    return value


def unescape_value(value: Any) -> Any:
    """The inverse of :func:`escape_value`."""
    if isinstance(value, dict):
        return {unescape_key(k): unescape_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unescape_value(v) for v in value]
    return value


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON, as memring measures metadata."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


# -- binary payloads in content --------------------------------------------------------------

# 32 one-byte characters that are not letters or digits (ASCII punctuation but the backslash,
# and the space): content made of them has no Unicode words, so memring's keyword index (BM25
# over the words of content) holds nothing for it, and 600 KiB of bytes are 960 KiB of content.
_B32: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_PUNCT: Final = "!#$%&'()*+,-./:;<=>?@[]^_`{|}~ \""
_TO_PUNCT: Final = str.maketrans(_B32, _PUNCT)
_FROM_PUNCT: Final = str.maketrans(_PUNCT, _B32)
assert len(set(_PUNCT)) == len(_PUNCT) == 32

CHUNK_BYTES: Final = 600 * 1024
"""Raw bytes per memory: 600 KiB is 960 KiB of content, under memring's 1 MiB."""


def encode_bytes(data: bytes) -> str:
    """Bytes as content text without words (base32 over punctuation, no padding)."""
    return base64.b32encode(data).decode().rstrip("=").translate(_TO_PUNCT)


def decode_bytes(text: str) -> bytes:
    """The inverse of :func:`encode_bytes`."""
    b32 = text.translate(_FROM_PUNCT)
    return base64.b32decode(b32 + "=" * (-len(b32) % 8))


def typed_to_bytes(typed: tuple[str, bytes]) -> bytes:
    """A serializer's ``(type, bytes)`` as one byte string."""
    kind, data = typed
    return kind.encode() + b"\x00" + data


def bytes_to_typed(raw: bytes) -> tuple[str, bytes]:
    """The inverse of :func:`typed_to_bytes`."""
    kind, _, data = raw.partition(b"\x00")
    return kind.decode(), data


def chunks(data: bytes, size: int = CHUNK_BYTES) -> list[bytes]:
    """``data`` in pieces of at most ``size`` bytes (one empty piece for empty data)."""
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def namespace_path(namespace: Sequence[str]) -> str:
    """A namespace as a readable string (for messages)."""
    return "/".join(namespace)
