#!/usr/bin/env python3
"""MCP client driver for the integration tests, on the official MCP Python SDK.

Run it with the venv's python (scripts/test makes the venv: ``target/mcp-venv``, SDK pinned in
tests/mcp/requirements.txt); tests/common/mcp_py.rs wraps it for the Rust tests. Only the SDK's
public client API is used: ``mcp.Client`` over the Streamable HTTP transport
(``mcp.client.streamable_http.streamable_http_client`` with an ``httpx2.AsyncClient`` carrying
the bearer header) or the stdio transport (``mcp.StdioServerParameters``).

Usage (the connection options may stand before or after the subcommand)::

    client.py [--url URL --token TOKEN | --stdio] [--mode auto|legacy] [--timeout S]
              SUBCOMMAND [ARGS] [-- CMD ARGS...]

``--stdio`` spawns ``CMD ARGS...`` (everything after ``--``) and speaks MCP on its stdio.
``--mode auto`` is the SDK's default (``server/discover`` at 2026-07-28, falling back to the
``initialize`` handshake); ``--mode legacy`` forces the handshake.

Subcommands (each result is one JSON object per line on stdout):

* ``info``: negotiated protocol version, server name and version, tool names, whether the
  server advertises ``tools.listChanged``.
* ``call TOOL JSON_ARGS``: ``{"result": {"texts": [...], "isError": bool}}`` or
  ``{"error": {"code": N, "message": "..."}}`` for a JSON-RPC error.
* ``concurrent --clients N --calls K``: N clients (own connection, own session) call ``echo``
  K times each, concurrently, with unique texts; checks every answer against its request.
* ``listen-changed --clients N [--trigger | --trigger-self] [--reset]``: N clients wait for
  ``tools/list_changed`` (handshake era: the session's message handler, fed by the GET stream
  over HTTP; 2026-07-28: ``Client.listen(tools_list_changed=True)``); with ``--trigger`` one
  more client calls ``toggle_extra_tool {"enabled": true}``, with ``--trigger-self`` listener
  0 does on its own connection (for one stdio server). Prints how many got it in time and each
  client's tool names afterwards; ``--reset`` toggles the tool off at the end.
* ``progress``: ``sleep {"seconds": 1, "steps": 4}`` with a progress callback; prints the
  progress values.
* ``call-cancel TOOL JSON_ARGS [--after S]``: starts the call and cancels it after S seconds
  (the SDK's own cancel: ``notifications/cancelled`` on a handshake-era session, the request's
  stream closed on 2026-07-28); prints ``{"cancelled": true}``.
* ``call-during-kill TOOL JSON_ARGS``: prints ``{"started": true}`` once the request is on its
  way, then how the call ended (result, JSON-RPC error, transport error or timeout) and when;
  with ``--retry-until-ok S``, then ``{"recovered": bool, "after_ms": N}`` once an ``echo`` on
  the same client works again (tried every 0.25 s for up to S seconds).
* ``bench --calls N --clients C [--raw]``: ``echo`` round trips after a warm-up: p50/p99 and
  calls/s, the negotiated protocol version(s); ``--raw`` adds every call's latency (ms).

Exit codes: 0 when the operation completed (a JSON-RPC error or an ``isError`` result from
``call`` counts as completed: it is printed), 1 on failure (connection or transport error,
timeout, mismatched answers, missing notifications; the reason goes to stderr), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx2
from mcp import Client, MCPError, StdioServerParameters
from mcp import types as mcp_types
from mcp.client.streamable_http import streamable_http_client

#: Protocol versions at which list_changed arrives on ``subscriptions/listen`` streams.
MODERN_VERSIONS = ("2026-07-28",)


class Failure(Exception):
    """A failure to report on stderr with exit code 1."""


def emit(obj: dict[str, Any]) -> None:
    """Print one JSON object as a line on stdout and flush it."""
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def describe(exc: BaseException) -> str:
    """One line for an exception, unwrapping (nested) exception groups to their leaves."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    text = str(exc) or repr(exc)
    if isinstance(exc, MCPError):
        return f"MCPError {exc.code}: {text}"
    return f"{type(exc).__name__}: {text}"


def mcp_error(exc: BaseException) -> MCPError | None:
    """The MCPError in ``exc`` (itself or the only leaf of an exception group), if any."""
    if isinstance(exc, MCPError):
        return exc
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return mcp_error(exc.exceptions[0])
    return None


@asynccontextmanager
async def connect(
    args: argparse.Namespace,
    message_handler: Callable[[Any], Awaitable[None]] | None = None,
) -> AsyncIterator[Client]:
    """An entered ``mcp.Client`` for the connection options in ``args``."""
    async with AsyncExitStack() as stack:
        if args.url:
            headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
            http = await stack.enter_async_context(
                httpx2.AsyncClient(
                    headers=headers,
                    timeout=httpx2.Timeout(args.timeout, read=max(args.timeout, 300.0)),
                )
            )
            target: Any = streamable_http_client(args.url, http_client=http)
        else:
            target = StdioServerParameters(command=args.command[0], args=args.command[1:])
        client = Client(
            target,
            mode=args.mode,
            read_timeout_seconds=args.timeout,
            message_handler=message_handler,
        )
        yield await stack.enter_async_context(client)


def texts(result: mcp_types.CallToolResult) -> list[str]:
    """The text items of a tool result's content."""
    return [c.text for c in result.content if isinstance(c, mcp_types.TextContent)]


def result_json(result: mcp_types.CallToolResult) -> dict[str, Any]:
    return {"texts": texts(result), "isError": bool(result.is_error)}


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of ``values``, rounded to 0.01 ms."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return round(ordered[rank - 1], 2)


def parse_json_args(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise Failure(f"JSON_ARGS is not JSON: {e}") from e
    if not isinstance(value, dict):
        raise Failure("JSON_ARGS must be a JSON object")
    return value


# --- subcommands ---------------------------------------------------------------------------


async def cmd_info(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        tools = await client.list_tools()
        caps = client.server_capabilities
        info = client.server_info
        emit(
            {
                "protocol_version": client.protocol_version,
                "server_name": info.name if info else None,
                "server_version": info.version if info else None,
                "tools": sorted(t.name for t in tools.tools),
                "tools_list_changed": bool(caps.tools and caps.tools.list_changed),
            }
        )
    return 0


async def cmd_call(args: argparse.Namespace) -> int:
    arguments = parse_json_args(args.json_args)
    async with connect(args) as client:
        try:
            result = await client.call_tool(args.tool, arguments)
        except MCPError as e:
            emit({"error": {"code": e.code, "message": e.message}})
            return 0
        emit({"result": result_json(result)})
    return 0


async def cmd_concurrent(args: argparse.Namespace) -> int:
    latencies: list[float] = []
    counts = {"ok": 0, "mismatches": 0, "errors": 0}
    problems: list[str] = []
    run = secrets.token_hex(4)

    async def one_client(i: int) -> None:
        try:
            async with connect(args) as client:
                for j in range(args.calls):
                    text = f"c{i}-k{j}-{run}-{secrets.token_hex(4)}"
                    started = time.perf_counter()
                    try:
                        result = await client.call_tool("echo", {"text": text})
                    except MCPError as e:
                        counts["errors"] += 1
                        problems.append(f"client {i} call {j}: JSON-RPC error {e.code} {e.message}")
                        continue
                    latencies.append((time.perf_counter() - started) * 1000.0)
                    got = "".join(texts(result))
                    if result.is_error or got != text:
                        counts["mismatches"] += 1
                        problems.append(f"client {i} call {j}: sent {text!r}, got {got!r}")
                    else:
                        counts["ok"] += 1
        except Exception as e:  # a whole client failed: count its missing calls as errors
            missing = args.calls - sum(1 for p in problems if p.startswith(f"client {i} "))
            counts["errors"] += max(missing, 1)
            problems.append(f"client {i}: {describe(e)}")

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(args.clients):
            tg.start_soon(one_client, i)
    elapsed = time.perf_counter() - started
    total = args.clients * args.calls
    emit(
        {
            "clients": args.clients,
            "calls": total,
            "ok": counts["ok"],
            "mismatches": counts["mismatches"],
            "errors": counts["errors"],
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
            "calls_per_s": round(counts["ok"] / elapsed, 1) if elapsed > 0 else None,
            "elapsed_s": round(elapsed, 3),
            "problems": problems[:20],
        }
    )
    if counts["ok"] != total:
        raise Failure(f"{total - counts['ok']} of {total} calls failed or mismatched: {problems[:3]}")
    return 0


async def cmd_listen_changed(args: argparse.Namespace) -> int:
    n = args.clients
    ready = [anyio.Event() for _ in range(n)]
    received = [anyio.Event() for _ in range(n)]
    done = anyio.Event()
    how: list[str | None] = [None] * n
    latency_ms: list[float | None] = [None] * n
    tools_after: list[list[str] | None] = [None] * n
    problems: list[str] = []
    triggered_at: list[float] = []
    trigger_self = anyio.Event()
    toggled = anyio.Event()

    async def self_trigger(i: int, client: Client) -> None:
        """--trigger-self: listener 0 toggles on its own connection (one stdio server)."""
        if i != 0:
            return
        await trigger_self.wait()
        try:
            result = await client.call_tool("toggle_extra_tool", {"enabled": True})
            if result.is_error:
                problems.append(f"toggle_extra_tool failed: {texts(result)}")
        finally:
            toggled.set()

    async def received_and_toggled(i: int) -> None:
        await received[i].wait()
        if i == 0 and args.trigger_self:
            with anyio.move_on_after(args.timeout):
                await toggled.wait()

    def mark(i: int) -> None:
        if not received[i].is_set():
            if triggered_at:
                latency_ms[i] = round((time.perf_counter() - triggered_at[0]) * 1000.0, 2)
            received[i].set()

    async def listener(i: int) -> None:
        async def handler(message: Any) -> None:
            if isinstance(message, mcp_types.ToolListChangedNotification):
                how[i] = how[i] or "message_handler"
                mark(i)

        try:
            async with connect(args, message_handler=handler) as client:
                if client.protocol_version in MODERN_VERSIONS:
                    async with client.listen(tools_list_changed=True) as sub:
                        ready[i].set()

                        async def drain() -> None:
                            async for _event in sub:
                                how[i] = "listen"
                                mark(i)
                                return

                        async with anyio.create_task_group() as tg:
                            tg.start_soon(drain)
                            tg.start_soon(self_trigger, i, client)
                            await received_and_toggled(i)
                            tg.cancel_scope.cancel()
                else:
                    # The handshake era: notifications arrive on the session's GET stream,
                    # which the SDK opens in the background after `initialized` and offers no
                    # signal for. One round trip, then --settle seconds, before reporting ready.
                    await client.call_tool("echo", {"text": f"listener-{i}"})
                    await anyio.sleep(args.settle)
                    ready[i].set()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self_trigger, i, client)
                        await received_and_toggled(i)
                        tg.cancel_scope.cancel()
                await done.wait()
                tools = await client.list_tools()
                tools_after[i] = sorted(t.name for t in tools.tools)
        except Exception as e:
            problems.append(f"listener {i}: {describe(e)}")
            ready[i].set()

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(listener, i)
        with anyio.move_on_after(args.timeout):
            for event in ready:
                await event.wait()
        if args.trigger:
            try:
                async with connect(args) as trigger:
                    triggered_at.append(time.perf_counter())
                    result = await trigger.call_tool("toggle_extra_tool", {"enabled": True})
                    if result.is_error:
                        problems.append(f"toggle_extra_tool failed: {texts(result)}")
            except Exception as e:
                problems.append(f"trigger: {describe(e)}")
        elif args.trigger_self:
            triggered_at.append(time.perf_counter())
            trigger_self.set()
        with anyio.move_on_after(args.wait):
            for event in received:
                await event.wait()
        got = sum(1 for e in received if e.is_set())
        # Release the listeners that did not get it, so that they list tools too.
        for event in received:
            event.set()
        done.set()
        with anyio.move_on_after(args.timeout):
            while any(t is None for t in tools_after) and len(problems) < n:
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()

    if args.reset:
        try:
            async with connect(args) as client:
                await client.call_tool("toggle_extra_tool", {"enabled": False})
        except Exception as e:
            problems.append(f"reset: {describe(e)}")
    emit(
        {
            "clients": n,
            "received": got,
            "how": how,
            "latency_ms": latency_ms,
            "tools_after": tools_after,
            "problems": problems,
        }
    )
    if got < n:
        raise Failure(f"only {got} of {n} clients received tools/list_changed within {args.wait} s: {problems}")
    return 0


async def cmd_progress(args: argparse.Namespace) -> int:
    values: list[float] = []
    totals: list[float | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        values.append(progress)
        totals.append(total)

    async with connect(args) as client:
        result = await client.call_tool(
            "sleep", {"seconds": args.seconds, "steps": args.steps}, progress_callback=on_progress
        )
        emit(
            {
                "protocol_version": client.protocol_version,
                "progress": values,
                "totals": totals,
                "result": result_json(result),
            }
        )
    return 0


async def cmd_call_cancel(args: argparse.Namespace) -> int:
    arguments = parse_json_args(args.json_args)
    async with connect(args) as client:
        finished = False
        with anyio.move_on_after(args.after) as scope:
            await client.call_tool(args.tool, arguments)
            finished = True
        emit({"cancelled": scope.cancelled_caught and not finished})
        # Give the SDK time to tell the server before the connection closes.
        await anyio.sleep(args.linger)
    return 0


async def cmd_call_during_kill(args: argparse.Namespace) -> int:
    arguments = parse_json_args(args.json_args)
    outcome: dict[str, Any] = {}
    started: list[float] = []
    ended: list[float] = []

    async def call(client: Client) -> None:
        try:
            result = await client.call_tool(args.tool, arguments)
            outcome.update({"outcome": "result", "result": result_json(result)})
        except Exception as e:
            error = mcp_error(e)
            if error is not None:
                outcome.update({"outcome": "jsonrpc_error", "code": error.code, "message": error.message})
            else:
                outcome.update({"outcome": "transport_error", "message": describe(e)})
        ended.append(time.perf_counter())
        if args.retry_until_ok:
            await retry(client)

    async def retry(client: Client) -> None:
        # Print the failed call now, then keep calling `echo` on the same client until the
        # server is back: the client must not need to reconnect.
        emit(dict(outcome, elapsed_ms=round((ended[0] - started[0]) * 1000.0, 2)))
        t0 = time.perf_counter()
        recovered = False
        with anyio.move_on_after(args.retry_until_ok):
            while not recovered:
                try:
                    result = await client.call_tool("echo", {"text": "after"})
                    recovered = "".join(texts(result)) == "after"
                except Exception:
                    pass
                if not recovered:
                    await anyio.sleep(0.25)
        emit({"recovered": recovered, "after_ms": round((time.perf_counter() - t0) * 1000.0, 2)})
        outcome["retried"] = True

    with anyio.move_on_after(args.timeout + (args.retry_until_ok or 0)) as scope:
        try:
            async with connect(args) as client:
                async with anyio.create_task_group() as tg:
                    started.append(time.perf_counter())
                    tg.start_soon(call, client)
                    # Let the transport write the request before telling the test to kill.
                    await anyio.sleep(args.started_delay)
                    emit({"started": True})
        except Exception as e:
            # The transport's own task failed and tore the client down (e.g. the HTTP
            # connection dropped before the response headers of a POST).
            ended.append(time.perf_counter())
            if not started:
                raise
            if not outcome:
                outcome.update({"outcome": "transport_error", "message": describe(e)})
            else:
                outcome["teardown_error"] = describe(e)
    if not started:
        raise Failure(f"could not connect within {args.timeout} s")
    if scope.cancelled_caught and not outcome:
        outcome = {"outcome": "timeout", "message": f"no answer within {args.timeout} s"}
    if outcome.get("retried"):
        return 0
    end = ended[0] if ended else time.perf_counter()
    outcome["elapsed_ms"] = round((end - started[0]) * 1000.0, 2)
    emit(outcome)
    return 0


async def cmd_bench(args: argparse.Namespace) -> int:
    latencies: list[float] = []
    per_client = [args.calls // args.clients + (1 if i < args.calls % args.clients else 0) for i in range(args.clients)]
    connected = [anyio.Event() for _ in range(args.clients)]
    go = anyio.Event()
    errors: list[str] = []
    versions: set[str] = set()

    async def one_client(i: int) -> None:
        try:
            async with connect(args) as client:
                versions.add(str(client.protocol_version))
                for j in range(args.warmup):
                    await client.call_tool("echo", {"text": f"warm-{i}-{j}"})
                connected[i].set()
                await go.wait()
                for j in range(per_client[i]):
                    text = f"b{i}-{j}"
                    t0 = time.perf_counter()
                    result = await client.call_tool("echo", {"text": text})
                    latencies.append((time.perf_counter() - t0) * 1000.0)
                    if "".join(texts(result)) != text:
                        errors.append(f"client {i}: wrong answer to {text!r}")
        except Exception as e:
            errors.append(f"client {i}: {describe(e)}")
            connected[i].set()

    connect_started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(args.clients):
            tg.start_soon(one_client, i)
        for event in connected:
            await event.wait()
        setup_s = time.perf_counter() - connect_started
        started = time.perf_counter()
        go.set()
    elapsed = time.perf_counter() - started
    raw = {"latencies_ms": [round(v, 3) for v in latencies]} if args.raw else {}
    emit(
        {
            **raw,
            "clients": args.clients,
            "calls": len(latencies),
            "protocol_versions": sorted(versions),
            "warmup_per_client": args.warmup,
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
            "mean_ms": round(sum(latencies) / len(latencies), 2) if latencies else None,
            "calls_per_s": round(len(latencies) / elapsed, 1) if elapsed > 0 else None,
            "setup_s": round(setup_s, 3),
            "errors": errors[:20],
        }
    )
    if errors:
        raise Failure(f"{len(errors)} errors: {errors[:3]}")
    return 0


# --- command line ----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    def connection(suppress: bool) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(add_help=False)
        d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
        p.add_argument("--url", default=d(None), help="Streamable HTTP endpoint")
        p.add_argument("--token", default=d(None), help="bearer token for --url")
        p.add_argument("--stdio", action="store_true", default=d(False), help="spawn the command after --")
        p.add_argument("--mode", choices=["auto", "legacy"], default=d("auto"))
        p.add_argument("--timeout", type=float, default=d(30.0), help="per-request timeout, seconds")
        return p

    main = argparse.ArgumentParser(
        prog="client.py", description=__doc__.split("\n\n")[0], parents=[connection(False)]
    )
    sub = main.add_subparsers(dest="subcommand", required=True)
    common = [connection(True)]

    sub.add_parser("info", parents=common, help="protocol version, server, tools")
    p = sub.add_parser("call", parents=common, help="call one tool")
    p.add_argument("tool")
    p.add_argument("json_args", nargs="?", default="{}")
    p = sub.add_parser("concurrent", parents=common, help="N clients x K echo calls")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--calls", type=int, default=10)
    p = sub.add_parser("listen-changed", parents=common, help="wait for tools/list_changed")
    p.add_argument("--clients", type=int, default=2)
    trigger = p.add_mutually_exclusive_group()
    trigger.add_argument("--trigger", action="store_true", help="one more client toggles the extra tool on")
    trigger.add_argument(
        "--trigger-self", action="store_true", help="listener 0 toggles it on its own connection (stdio)"
    )
    p.add_argument("--wait", type=float, default=10.0, help="how long to wait for the notification")
    p.add_argument("--settle", type=float, default=0.5, help="handshake era: wait for GET streams")
    p.add_argument("--reset", action="store_true", help="toggle the extra tool off afterwards")
    p = sub.add_parser("progress", parents=common, help="sleep with progress notifications")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=4)
    p = sub.add_parser("call-cancel", parents=common, help="a call the client cancels")
    p.add_argument("tool")
    p.add_argument("json_args")
    p.add_argument("--after", type=float, default=1.0, help="seconds before cancelling")
    p.add_argument("--linger", type=float, default=0.5, help="seconds to stay connected after")
    p = sub.add_parser("call-during-kill", parents=common, help="a call whose server gets killed")
    p.add_argument("tool")
    p.add_argument("json_args", nargs="?", default="{}")
    p.add_argument("--started-delay", type=float, default=0.2, help="seconds between sending and 'started'")
    p.add_argument(
        "--retry-until-ok",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the call ends, print its outcome, then call echo on the same client until it works",
    )
    p = sub.add_parser("bench", parents=common, help="echo round-trip latency")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--warmup", type=int, default=20, help="warm-up calls per client")
    p.add_argument("--raw", action="store_true", help="also print every call's latency (latencies_ms)")
    return main


COMMANDS = {
    "info": cmd_info,
    "call": cmd_call,
    "concurrent": cmd_concurrent,
    "listen-changed": cmd_listen_changed,
    "progress": cmd_progress,
    "call-cancel": cmd_call_cancel,
    "call-during-kill": cmd_call_during_kill,
    "bench": cmd_bench,
}


def main(argv: list[str]) -> int:
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    p = parser()
    args = p.parse_args(argv)
    args.command = command
    if bool(args.url) == bool(args.stdio):
        p.error("give exactly one of --url URL or --stdio -- CMD ARGS...")
    if args.stdio and not command:
        p.error("--stdio needs the command after --")
    if args.url and command:
        p.error("a command after -- is only for --stdio")
    for name in ("clients", "calls"):
        value = getattr(args, name, None)
        if value is not None and not 1 <= value <= 100_000:
            p.error(f"--{name} must be between 1 and 100000")
    try:
        return anyio.run(COMMANDS[args.subcommand], args)
    except Failure as e:
        print(f"client.py {args.subcommand}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseException as e:  # connection refused, HTTP errors, timeouts, exception groups
        print(f"client.py {args.subcommand}: failed: {describe(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
