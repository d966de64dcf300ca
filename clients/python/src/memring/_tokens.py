"""Read-your-writes tokens.

A write's answer carries ``x-memring-read-token: scope=seq,scope=seq`` (the log positions the
write reached in each scope's partition). A read that sends it back sees that write whichever
copy answers. A token belongs to one tenant (its scopes are that tenant's partitions), so the
client keeps one per tenant, merged across writes by keeping the highest position per scope.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

__all__ = ["ReadTokens", "format_token", "merge_tokens", "parse_token"]


def parse_token(text: str) -> dict[str, int]:
    """``"shared=4,agent:x=9"`` as ``{"shared": 4, "agent:x": 9}``; ignores malformed pairs."""
    out: dict[str, int] = {}
    for pair in text.split(","):
        pair = pair.strip()
        scope, sep, seq = pair.rpartition("=")
        if not sep or not scope:
            continue
        try:
            n = int(seq)
        except ValueError:
            continue
        if n > out.get(scope, -1):
            out[scope] = n
    return out


def format_token(positions: dict[str, int], scopes: Iterable[str] | None = None) -> str | None:
    """The header value for ``positions`` (only ``scopes`` when given); ``None`` when empty."""
    wanted = positions if scopes is None else {s: positions[s] for s in scopes if s in positions}
    if not wanted:
        return None
    return ",".join(f"{scope}={seq}" for scope, seq in sorted(wanted.items()))


def merge_tokens(*tokens: str | None) -> str | None:
    """Several tokens as one: per scope, the highest position."""
    merged: dict[str, int] = {}
    for token in tokens:
        for scope, seq in parse_token(token or "").items():
            if seq > merged.get(scope, -1):
                merged[scope] = seq
    return format_token(merged)


class ReadTokens:
    """The positions one client has written, per tenant; safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_tenant: dict[str, dict[str, int]] = {}

    def note(self, tenant: str, token: str | None) -> None:
        """Merges a write's token into the tenant's."""
        if not token:
            return
        parsed = parse_token(token)
        with self._lock:
            mine = self._by_tenant.setdefault(tenant, {})
            for scope, seq in parsed.items():
                if seq > mine.get(scope, -1):
                    mine[scope] = seq

    def header(self, tenant: str, scopes: Iterable[str] | None = None) -> str | None:
        """The token to send on a read of ``scopes`` (all the tenant's when ``None``)."""
        with self._lock:
            mine = dict(self._by_tenant.get(tenant, {}))
        return format_token(mine, scopes)

    def forget(self, tenant: str | None = None) -> None:
        """Drops the tenant's token (every tenant's when ``None``)."""
        with self._lock:
            if tenant is None:
                self._by_tenant.clear()
            else:
                self._by_tenant.pop(tenant, None)
