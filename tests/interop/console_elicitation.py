#!/usr/bin/env python3
"""One approval_request through the official MCP Python SDK, reported line by line for
tests/console_elicitation.rs, which decides it in the oversight console with a real browser.

Usage: console_elicitation.py --binary PATH --data-dir DIR --client url|plain
                              [--answer accept|decline] [--wait-seconds N] [--mode legacy|2026-07-28]

--client url:   the SDK is given an elicitation callback, so it declares form and URL
                elicitation; the callback answers each question with --answer (after printing
                what it was asked).
--client plain: no callback: the client declares no elicitation.

The call is `approval_request` with risk `critical` (policy: decided out of band). Every line
on stdout is one JSON object with an `event`:
  {"event": "elicit", "mode", "url", "elicitation_id", "message"}   a question the client got
  {"event": "complete", "elicitation_id"}                           notifications/elicitation/complete
  {"event": "progress", "message"}                                  a progress notification
  {"event": "result", "is_error", "structured"}                     the call's result
  {"event": "error", "error"}                                       the script failed
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters, types
from mcp.client.session import ClientRequestContext

# Long enough for the test's browser to log in and decide.
CALL_TIMEOUT_SECONDS = 180


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def isolated_env(data_dir: Path) -> dict[str, str]:
    """Keep the server away from the real user's config and data directories."""
    home = data_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
    }


async def main(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir)

    async def person(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        fields = params.model_dump(by_alias=True, exclude_none=True)
        emit(
            "elicit",
            mode=fields.get("mode", "form"),
            url=fields.get("url"),
            elicitation_id=fields.get("elicitationId"),
            message=fields.get("message"),
        )
        return types.ElicitResult(action=args.answer)

    async def messages(message: Any) -> None:
        if isinstance(message, types.ElicitCompleteNotification):
            emit("complete", elicitation_id=message.params.elicitation_id)

    async def progress(done: float, total: float | None, message: str | None) -> None:
        emit("progress", message=message)

    params = StdioServerParameters(
        command=args.binary,
        args=["--data-dir", str(data_dir), "--log-level", "warn", "--toolsets", "all"],
        env=isolated_env(data_dir),
    )
    client = Client(
        params,
        mode=args.mode,
        client_info=types.Implementation(name="console-elicitation-test", version="1"),
        read_timeout_seconds=CALL_TIMEOUT_SECONDS,
        elicitation_callback=person if args.client == "url" else None,
        message_handler=messages,
    )
    arguments: dict[str, Any] = {
        "summary": "Drop the production database",
        "action": {"tool": "drop_database", "name": "production"},
        "risk": "critical",
    }
    if args.wait_seconds:
        arguments["wait_seconds"] = args.wait_seconds
    async with client:
        result = await client.call_tool(
            "approval_request", arguments, progress_callback=progress
        )
        emit("result", is_error=result.is_error, structured=result.structured_content)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--client", choices=["url", "plain"], required=True)
    parser.add_argument("--answer", choices=["accept", "decline", "cancel"], default="accept")
    parser.add_argument("--wait-seconds", type=int, default=0)
    parser.add_argument("--mode", default="legacy")
    try:
        anyio.run(main, parser.parse_args())
    except BaseException as e:  # noqa: BLE001 - reported to the Rust test, then re-raised
        emit("error", error=f"{type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stderr)
        sys.exit(1)
