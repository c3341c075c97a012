#!/usr/bin/env python3
"""A Streamable HTTP MCP server on the official MCP Python SDK, to check tests/mcp/client.py.

It stands in for the orchestrator's gateway when the client driver itself is under test: the
same tool names and behaviour as the sandbox server (src/bin/mcp-server/tools.rs) for the
tools the driver uses: ``echo``, ``sleep`` (progress, cancellable), ``toggle_extra_tool`` and
``extra``. Serves both protocol eras on one endpoint (the SDK's stateful Streamable HTTP app):
2026-07-28 clients get ``tools/list_changed`` on their ``subscriptions/listen`` streams (the
SDK's subscription bus), handshake-era clients on their session's GET stream; like a gateway
fanning a sandbox's notification out, it sends that to every handshake-era session that has
called a tool. Requests without ``Authorization: Bearer <token>`` get 401.

    python tests/mcp/fixture_server.py --port 8765 --token secret

Prints ``listening on http://127.0.0.1:PORT/mcp`` on stderr once it accepts connections.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer

MODERN_VERSIONS = ("2026-07-28",)


def build(token: str) -> Any:
    """The ASGI app: the SDK's Streamable HTTP app behind a bearer-token check."""
    server = MCPServer("mcp-fixture", version="0.1.0")
    # Strong references: the session object a tool sees is scoped to its request and would
    # be collected once the request ends; its connection's standalone stream lives on.
    legacy_sessions: list[Any] = []

    def remember(ctx: Context) -> None:
        if ctx.protocol_version not in MODERN_VERSIONS and len(legacy_sessions) < 1000:
            legacy_sessions.append(ctx.session)

    def extra() -> str:
        """Return 'extra'. Listed only while toggle_extra_tool enabled it."""
        return "extra"

    @server.tool()
    async def echo(text: str, ctx: Context) -> str:
        """Return the given text unchanged."""
        remember(ctx)
        return text

    @server.tool()
    async def sleep(seconds: float, ctx: Context, steps: int = 1) -> str:
        """Sleep in `steps` equal steps, reporting progress after each."""
        if not 0 <= seconds <= 60 or not 1 <= steps <= 100:
            raise ValueError("seconds must be 0-60 and steps 1-100")
        for done in range(1, steps + 1):
            await anyio.sleep(seconds / steps)
            await ctx.report_progress(done, steps)
        return f"slept {seconds:g}"

    @server.tool()
    async def toggle_extra_tool(enabled: bool, ctx: Context) -> str:
        """Show or hide the tool 'extra', then send notifications/tools/list_changed."""
        remember(ctx)
        listed = any(t.name == "extra" for t in await server.list_tools())
        if enabled and not listed:
            server.add_tool(extra, name="extra")
        elif not enabled and listed:
            server.remove_tool("extra")
        await ctx.notify_tools_changed()  # 2026-07-28 listen streams
        for session in list(legacy_sessions):  # handshake-era GET streams
            try:
                await session.send_tool_list_changed()
            except Exception as e:  # a departed session
                legacy_sessions.remove(session)
                print(f"fixture: list_changed not sent to a session: {e}", file=sys.stderr)
        return f"extra tool {'enabled' if enabled else 'disabled'}"

    app = server.streamable_http_app()
    expected = f"Bearer {token}".encode()

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization") != expected:
                await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"missing or wrong bearer token"})
                return
        await app(scope, receive, send)

    return guarded


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token", default="fixture-token")
    args = p.parse_args()
    print(f"listening on http://127.0.0.1:{args.port}/mcp", file=sys.stderr, flush=True)
    uvicorn.run(build(args.token), host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
