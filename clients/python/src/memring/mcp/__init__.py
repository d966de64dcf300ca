"""``memring-mcp``: an MCP server that gives AI agents long-term memory in one memring tenant.

It offers the tools ``remember``, ``recall``, ``get``, ``update``, ``forget`` and ``list``
over stdio (desktop and IDE clients) or streamable HTTP, on top of :class:`memring.AsyncMemring`
(its retries, errors and read-your-writes). Install with ``pip install 'memring[mcp]'`` and run
``memring-mcp --tenant acme`` (``--help`` for the rest; the API key comes from an environment
variable). Embedding it elsewhere::

    from memring import AsyncMemring
    from memring.mcp import MemoryTools, build_server

    server = build_server(MemoryTools(AsyncMemring(url, tenant="acme")))  # an mcp.server.Server
"""

from __future__ import annotations

try:
    import mcp as _mcp  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("memring.mcp needs the MCP SDK: pip install 'memring[mcp]'") from exc

from ._cli import Config, main, run
from ._schemas import INSTRUCTIONS, TOOLS, ToolSpec
from ._server import ERROR_META_KEY, build_server
from ._tools import MemoryTools, ToolFailure, ToolOutput

__all__ = [
    "ERROR_META_KEY",
    "INSTRUCTIONS",
    "TOOLS",
    "Config",
    "MemoryTools",
    "ToolFailure",
    "ToolOutput",
    "ToolSpec",
    "build_server",
    "main",
    "run",
]
