#!/usr/bin/env python3
"""An MCP client (the official Python SDK) whose calls wait for a person in the oversight console.

Usage:
  console_client.py --binary PATH --data-dir DIR approval --risk RISK --summary TEXT --wait SECONDS
  console_client.py --binary PATH --data-dir DIR remediation --home DIR

The client declares no elicitation, so the coordinator cannot ask the person in the client:
an approval stays pending and is decided out of band (tests/console_approvals.rs decides it
in a real browser).

`approval`: calls `approval_request` for a new generic approval, prints `PENDING <id>`, then
calls it again with the id and `wait_seconds` and prints `RESULT <json>` with the state and
the decision the waiting call returned.

`remediation`: writes a Cursor config under HOME, proposes pinning a package in it, calls
`remediation_review` (which opens the remediation approval and returns at once), prints
`PENDING <approval id>`.

Every line is flushed as printed; the Rust test reads them while the script runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters, types

CLIENT_NAME = "mcp-coordinator-console-test"


def say(line: str) -> None:
    print(line, flush=True)


async def tool(client: Client, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(name, arguments)
    sc = result.structured_content
    if result.is_error or not isinstance(sc, dict):
        raise SystemExit(f"{name}: isError={result.is_error} structuredContent={sc!r} content={result.content!r}")
    return sc


def client(binary: str, data_dir: str, home: Path, extra: list[str], timeout: float) -> Client:
    params = StdioServerParameters(
        command=binary,
        args=["--data-dir", data_dir, *extra, "--log-level", "warn", "--toolsets", "all"],
        env={"HOME": str(home)},
    )
    return Client(
        params,
        mode="legacy",
        client_info=types.Implementation(name=CLIENT_NAME, version="1.0"),
        read_timeout_seconds=timeout,
    )


async def approval(args: argparse.Namespace) -> None:
    home = Path(args.data_dir) / "home"
    home.mkdir(parents=True, exist_ok=True)
    async with client(args.binary, args.data_dir, home, [], args.wait + 30) as c:
        first = await tool(c, "approval_request", {
            "summary": args.summary,
            "action": {"tool": "deploy", "service": "console-test", "summary": args.summary},
            "risk": args.risk,
            "preview": f"would deploy console-test ({args.summary})",
        })
        approval_id = first["approval"]["id"]
        say(f"PENDING {approval_id} {first.get('pending_reason')}")
        waited = await tool(c, "approval_request", {"approval_id": approval_id, "wait_seconds": args.wait})
        decision = waited["approval"].get("decision") or {}
        say("RESULT " + json.dumps({"state": waited["state"], "decision": decision}))


async def remediation(args: argparse.Namespace) -> None:
    home = Path(args.home)
    cursor = home / ".cursor" / "mcp.json"
    cursor.parent.mkdir(parents=True, exist_ok=True)
    cursor.write_text(json.dumps({"mcpServers": {
        "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory"]},
    }}, indent=2) + "\n")
    config = Path(args.data_dir) / "config.toml"
    config.write_text(
        f'[assessments]\nhome = "{home}"\nprojects = []\n'
        'npm_registry = "http://127.0.0.1:9"\npypi_registry = "http://127.0.0.1:9"\n'
    )
    async with client(args.binary, args.data_dir, home, ["--config", str(config)], 30) as c:
        proposed = await tool(c, "remediation_propose", {"actions": [
            {"type": "pin_package_version", "file": str(cursor), "server": "memory", "version": "2025.4.25"},
        ]})
        reviewed = await tool(c, "remediation_review", {"remediation_id": proposed["remediation_id"]})
        rem = reviewed.get("remediation") or {}
        say(f"PENDING {reviewed.get('approval_id') or rem.get('approval_id')} {reviewed.get('status')}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--data-dir", required=True)
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("approval")
    a.add_argument("--risk", default="medium")
    a.add_argument("--summary", required=True)
    a.add_argument("--wait", type=int, default=60)
    r = sub.add_parser("remediation")
    r.add_argument("--home", required=True)
    args = parser.parse_args()
    await (approval(args) if args.what == "approval" else remediation(args))
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
