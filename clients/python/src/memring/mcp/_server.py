"""The MCP server: the tools of ``_tools`` behind the MCP SDK's low-level ``Server``.

The low-level server is used rather than ``MCPServer`` so that what is advertised is exactly the
hand-written schemas of ``_schemas`` (``MCPServer`` derives schemas from Python signatures) and so
that every result is built here: structured content with a short text beside it, and every
failure a tool error (``is_error``) whose text names memring's error code — the server itself
never fails a call.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp_types import (
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    Tool,
    ToolAnnotations,
)

from .. import __version__
from ._schemas import INSTRUCTIONS, ToolSpec
from ._tools import MemoryTools, ToolFailure

__all__ = ["ERROR_META_KEY", "build_server"]

logger = logging.getLogger("memring.mcp")

ERROR_META_KEY: Final = "memring/error"
"""The ``_meta`` key of a failed call's result holding ``{"code", "message", "status", ...}``."""


def _tool(spec: ToolSpec) -> Tool:
    return Tool(
        name=spec.name,
        title=spec.title,
        description=spec.description,
        input_schema=spec.input_schema,
        output_schema=spec.output_schema,
        annotations=ToolAnnotations(
            title=spec.title,
            read_only_hint=spec.read_only,
            destructive_hint=spec.destructive,
            idempotent_hint=spec.idempotent,
            open_world_hint=False,
        ),
    )


def failure_result(failure: ToolFailure) -> CallToolResult:
    """A tool error: the text for the model, the same as data under ``_meta``."""
    return CallToolResult(
        content=[TextContent(type="text", text=str(failure))],
        is_error=True,
        _meta={ERROR_META_KEY: failure.as_json()["error"]},
    )


def build_server(tools: MemoryTools, *, name: str = "memring") -> Server[Any]:
    """An MCP server offering ``tools`` (``remember``, ``recall``, ``get``, ``update``,
    ``forget``, ``list``); run it with ``run_stdio`` / ``http_app`` of this package."""
    listed = [_tool(spec) for spec in tools.specs.values()]

    async def on_list_tools(
        ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        return ListToolsResult(tools=listed)

    async def on_call_tool(
        ctx: ServerRequestContext[Any], params: CallToolRequestParams
    ) -> CallToolResult:
        try:
            out = await tools.call(params.name, params.arguments)
        except ToolFailure as failure:
            logger.info("tool %s failed: %s", params.name, failure.code)
            return failure_result(failure)
        except Exception:
            # A bug of ours, never a crash of the server: the model gets a generic error.
            logger.exception("tool %s raised", params.name)
            return failure_result(
                ToolFailure(
                    code="internal_error",
                    message=f"the MCP server failed to run {params.name}; see its log",
                )
            )
        return CallToolResult(
            content=[TextContent(type="text", text=out.text)], structured_content=out.structured
        )

    def input_schema(tool_name: str) -> dict[str, Any] | None:
        spec = tools.specs.get(tool_name)
        return None if spec is None else spec.input_schema

    return Server(
        name,
        version=__version__,
        title="memring",
        description="Long-term memory for agents, backed by a memring cluster",
        instructions=INSTRUCTIONS,
        website_url=None,
        get_tool_input_schema=input_schema,
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
    )
