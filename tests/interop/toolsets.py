#!/usr/bin/env python3
"""Toolsets through the official MCP Python SDK, in both protocol eras.

Usage: toolsets.py --binary PATH --data-dir DIR

A server started with its default toolsets lists at most 20 tools. The script lists the
toolsets with the `toolsets` tool, enables `agents` and waits for the list-changed signal
(`notifications/tools/list_changed` in the legacy era, a `subscriptions/listen` event on
2026-07-28), finds `task_submit` in the list and calls it, then disables `agents` and checks
that `task_get` is refused with `toolset_disabled` naming the toolset.

Prints one line per check and, last, `N passed, M failed`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, types

from interop import server_params  # tests/interop/interop.py, beside this script
from report import Report  # tests/interop/report.py, beside this script

MODERN_VERSION = "2026-07-28"
RUN_TIMEOUT_SECONDS = 120
SIGNAL_TIMEOUT_SECONDS = 10
LIST_CHANGED = "notifications/tools/list_changed"


async def names(client: Client) -> list[str]:
    return [t.name for t in (await client.list_tools()).tools]


def structured(result: types.CallToolResult) -> dict[str, Any]:
    sc = result.structured_content
    return sc if isinstance(sc, dict) else {}


async def run_era(r: Report, binary: str, data_dir: Path, mode: str) -> None:
    p = f"[{mode}]"
    changed = anyio.Event()
    heard: list[anyio.Event] = [changed]

    async def on_message(message: Any) -> None:
        if getattr(message, "method", None) == LIST_CHANGED:
            heard[0].set()

    # No --toolsets: the default set is what is tested.
    client = Client(server_params(binary, data_dir, None), mode=mode, message_handler=on_message)
    async with client:
        start = await names(client)
        r.check(f"{p} default list: at most 20 tools", len(start) <= 20, f"{len(start)}: {start}")
        r.check(f"{p} default list: has toolsets, not task_submit", "toolsets" in start and "task_submit" not in start)

        listing = structured(await client.call_tool("toolsets", {}))
        sets = {t.get("name"): t for t in listing.get("toolsets", [])}
        agents = sets.get("agents", {})
        r.check(
            f"{p} toolsets lists agents, off, with one line",
            agents.get("enabled") is False and isinstance(agents.get("summary"), str) and agents.get("tools", 0) > 0,
            repr(agents),
        )

        async def enable_and_wait(arguments: dict[str, Any], label: str) -> dict[str, Any]:
            heard[0] = anyio.Event()
            if mode == "legacy":
                result = structured(await client.call_tool("toolsets", arguments))
                with anyio.move_on_after(SIGNAL_TIMEOUT_SECONDS):
                    await heard[0].wait()
                r.check(f"{p} {label}: notifications/tools/list_changed", heard[0].is_set())
                return result
            async with client.listen(tools_list_changed=True) as sub:
                result = structured(await client.call_tool("toolsets", arguments))
                event = None
                with anyio.move_on_after(SIGNAL_TIMEOUT_SECONDS):
                    event = await sub.__anext__()
                r.check(f"{p} {label}: subscriptions/listen event", event is not None, repr(event))
            return result

        on = await enable_and_wait({"enable": "agents"}, "enable agents")
        r.check(f"{p} enable agents: changed", on.get("changed") is True, repr(on.get("changed")))
        listed = await names(client)
        r.check(f"{p} enable agents: task_submit listed", "task_submit" in listed, f"{len(listed)} tools")
        submitted = await client.call_tool("task_submit", {"kind": "interop"})
        task_id = structured(submitted).get("task_id")
        r.check(f"{p} task_submit works", not submitted.is_error and isinstance(task_id, str), repr(submitted.structured_content))

        await enable_and_wait({"disable": "agents"}, "disable agents")
        listed = await names(client)
        r.check(f"{p} disable agents: task_get gone", "task_get" not in listed, f"{len(listed)} tools")
        refused = await client.call_tool("task_get", {"task_id": task_id or "x"})
        error = structured(refused)
        r.check(
            f"{p} disabled tool refused naming the toolset",
            refused.is_error is True
            and error.get("code") == "toolset_disabled"
            and error.get("details", {}).get("toolset") == "agents"
            and "`agents`" in str(error.get("message")),
            repr(error),
        )


async def guarded(r: Report, label: str, run: Any) -> None:
    try:
        with anyio.fail_after(RUN_TIMEOUT_SECONDS):
            await run
    except Exception as exc:
        r.crash(label, exc)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    root = Path(args.data_dir)
    r = Report()
    for mode in ("legacy", MODERN_VERSION):
        await guarded(r, f"[{mode}] run", run_era(r, args.binary, root / mode.replace("-", "_"), mode))
    print(f"{r.passed} passed, {r.failed} failed", flush=True)
    return 0 if r.failed == 0 and r.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
