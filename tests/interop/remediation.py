#!/usr/bin/env python3
"""Assessments and remediations end to end through the official MCP Python SDK.

Usage: remediation.py --binary PATH --data-dir DIR

For each protocol era (legacy: the approval form is an `elicitation/create` request; 2026-07-28:
an input-required result the SDK answers and retries), against a temporary home directory full
of MCP client configs:

 1. mcp_config_list finds every config, and shows no secret value
 2. a security assessment finds the plain-text token and the unpinned packages, evidence masked
 3. remediation_propose (from the assessment and explicit pins) previews a diff per file
 4. the person approves in the elicitation callback: each file now equals its original with the
    previewed diff applied (checked by applying the diff here), its hash is the previewed one,
    the backup (sealed: no token in it) opens to the original, and the token is gone from the file
 4b. mcp_server_install asks the same way and installs into the VS Code config
 5. a second proposal is rejected in the callback: nothing changes, no backup is taken
 6. the audit chain verifies

Prints one line per check and, last, `N passed, M failed`. Exits 0 only when every check
passed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters, types
from mcp.client.session import ClientRequestContext

from report import Report  # tests/interop/report.py, beside this script

CLIENT_NAME = "mcp-coordinator-remediation"
CLIENT_VERSION = importlib.metadata.version("mcp")
READ_TIMEOUT_SECONDS = 30
TOKEN = "ghp_R7mQ2wLx9KpV4sNbYc8HdJ1aEfGiUo3Qz5Tt"


@dataclass
class Person:
    """The SDK's elicitation callback: answers every approval form with `decision`."""

    decision: str = "approve"
    asked: list[str] = field(default_factory=list)

    async def __call__(self, context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.asked.append(getattr(params, "message", ""))
        return types.ElicitResult(action="accept", content={"decision": self.decision, "reason": "diff checked"})


def write_home(home: Path) -> dict[str, Path]:
    files = {
        "cursor": home / ".cursor" / "mcp.json",
        "claude": home / ".config" / "Claude" / "claude_desktop_config.json",
        "vscode": home / ".config" / "Code" / "User" / "mcp.json",
    }
    docs = {
        "cursor": {"mcpServers": {
            "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory"]},
            "fetch": {"command": "uvx", "args": ["mcp-server-fetch"]},
        }},
        "claude": {"mcpServers": {
            "github": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github@2025.4.8"],
                       "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": TOKEN}},
        }},
        "vscode": {"servers": {
            "everything": {"type": "stdio", "command": "npx", "args": ["-y", "@modelcontextprotocol/server-everything@2025.9.25"]},
        }},
    }
    for key, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(docs[key], indent=2) + "\n")
    return files


def apply_unified_diff(original: str, diff: str) -> str:
    """Applies a unified diff (as previewed) to the original text; raises if it does not fit."""
    old = original.splitlines()
    out: list[str] = []
    at = 0
    lines = diff.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("@@"):
            start = int(line.split()[1].split(",")[0][1:]) - 1
            out.extend(old[at:start])
            at = start
            i += 1
            while i < len(lines) and not lines[i].startswith("@@"):
                body = lines[i]
                if body.startswith(" "):
                    if old[at] != body[1:]:
                        raise AssertionError(f"context mismatch at line {at + 1}: {old[at]!r} vs {body[1:]!r}")
                    out.append(old[at])
                    at += 1
                elif body.startswith("-"):
                    if old[at] != body[1:]:
                        raise AssertionError(f"removed line mismatch at {at + 1}")
                    at += 1
                elif body.startswith("+"):
                    out.append(body[1:])
                i += 1
            continue
        i += 1
    out.extend(old[at:])
    return "\n".join(out) + "\n"


async def tool(client: Client, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(name, arguments)
    sc = result.structured_content
    if result.is_error or not isinstance(sc, dict):
        raise AssertionError(f"{name}: isError={result.is_error} structuredContent={sc!r} content={result.content!r}")
    return sc


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def open_backup(binary: str, data: Path, backup: str) -> str:
    """The original a sealed backup holds, through `mcp-coordinator secrets open-backup`."""
    out = subprocess.run(
        [binary, "--data-dir", str(data), "secrets", "open-backup", backup],
        capture_output=True, timeout=30, check=True,
    )
    return out.stdout.decode()


async def run_era(r: Report, binary: str, base: Path, mode: str) -> None:
    data = base / mode / "data"
    home = base / mode / "home"
    data.mkdir(parents=True)
    files = write_home(home)
    originals = {k: p.read_text() for k, p in files.items()}
    config = data / "config.toml"
    config.write_text(
        f'[assessments]\nhome = "{home}"\nprojects = []\nnpm_registry = "http://127.0.0.1:9"\npypi_registry = "http://127.0.0.1:9"\n'
    )
    person = Person()
    params = StdioServerParameters(
        command=binary,
        args=["--data-dir", str(data), "--config", str(config), "--log-level", "warn", "--toolsets", "all"],
        env={"HOME": str(home)},
    )
    async with Client(
        params,
        mode=mode,
        client_info=types.Implementation(name=CLIENT_NAME, version=CLIENT_VERSION),
        read_timeout_seconds=READ_TIMEOUT_SECONDS,
        elicitation_callback=person,
    ) as client:
        listed = await tool(client, "mcp_config_list", {})
        r.check(
            f"1 {mode}: mcp_config_list finds 3 files, 4 servers, no secret",
            len(listed["files"]) == 3 and listed["server_count"] == 4 and TOKEN not in json.dumps(listed),
            f"files={[f['path'] for f in listed['files']]}",
        )

        a = await tool(client, "assessment_request", {"type": "security"})
        findings = a["assessment"]["findings"]
        rules = sorted({f["rule"] for f in findings})
        r.check(
            f"2 {mode}: the assessment finds the token and the unpinned packages, masked",
            a["status"] == "completed"
            and {"secret-in-env", "unpinned-package"} <= set(rules)
            and TOKEN not in json.dumps(a),
            f"rules={rules}",
        )

        proposed = await tool(client, "remediation_propose", {
            "assessment_id": a["assessment_id"],
            "actions": [
                {"type": "pin_package_version", "file": str(files["cursor"]), "server": "memory", "version": "2025.4.25"},
                {"type": "pin_package_version", "file": str(files["cursor"]), "server": "fetch", "version": "2025.4.7"},
            ],
        })
        rem = proposed["remediation"]
        plans = {p["path"]: p for p in rem["files"]}
        r.check(
            f"3 {mode}: the proposal previews one diff per file, secrets masked",
            set(plans) == {str(files["cursor"]), str(files["claude"])}
            and TOKEN not in json.dumps(proposed)
            and all(p["diff"].startswith("--- a") for p in plans.values()),
            f"files={list(plans)} notes={rem.get('notes')}",
        )

        person.decision = "approve"
        reviewed = await tool(client, "remediation_review", {"remediation_id": proposed["remediation_id"]})
        ok = reviewed["status"] == "executed" and reviewed.get("approval_state") == "approved" and len(person.asked) == 1
        detail = f"status={reviewed['status']} asked={len(person.asked)}"
        # The cursor file has no secret, so the masked diff applies to it exactly.
        cursor = files["cursor"]
        expected = apply_unified_diff(originals["cursor"], plans[str(cursor)]["diff"])
        ok = ok and cursor.read_text() == expected
        ok = ok and all(sha(Path(p)) == plan["after_sha256"] for p, plan in plans.items())
        backups = {b["path"]: b["backup_path"] for b in reviewed["remediation"]["backups"]}
        # Sealed at rest (the token is not in them); `secrets open-backup` gives the originals.
        ok = ok and all(TOKEN.encode() not in Path(b).read_bytes() for b in backups.values())
        ok = ok and all(
            open_backup(binary, data, backups[str(p)]) == originals[k] for k, p in files.items() if str(p) in backups
        )
        ok = ok and TOKEN not in files["claude"].read_text()
        r.check(f"4 {mode}: approved: files equal original + diff, hashes match, backups hold the originals", ok, detail)

        installed = await tool(client, "mcp_server_install", {
            "client": "vscode", "server": "time",
            "entry": {"type": "stdio", "command": "uvx", "args": ["mcp-server-time==0.6.2"]},
        })
        vs = json.loads(files["vscode"].read_text())
        r.check(
            f"4b {mode}: mcp_server_install asks and installs into the VS Code config",
            installed["status"] == "executed"
            and len(person.asked) == 2
            and vs["servers"]["time"]["args"] == ["mcp-server-time==0.6.2"]
            and "everything" in vs["servers"],
            f"status={installed['status']} asked={len(person.asked)}",
        )

        person.decision = "reject"
        person.asked.clear()
        before = {k: p.read_text() for k, p in files.items()}
        second = await tool(client, "remediation_propose", {
            "actions": [{"type": "remove_server", "file": str(files["vscode"]), "server": "everything"}],
        })
        rejected = await tool(client, "remediation_review", {"remediation_id": second["remediation_id"]})
        r.check(
            f"5 {mode}: rejected in the form: nothing changed",
            rejected.get("approval_state") == "rejected"
            and rejected["status"] == "proposed"
            and len(person.asked) == 1
            and {k: p.read_text() for k, p in files.items()} == before
            and not rejected["remediation"].get("backups"),
            f"state={rejected.get('approval_state')} status={rejected['status']}",
        )

        verify = await tool(client, "audit_verify", {})
        r.check(f"6 {mode}: the audit chain verifies", verify.get("ok") is True, str(verify.get("events_checked")))


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--data-dir", required=True, type=Path)
    args = parser.parse_args()
    r = Report()
    for mode in ("legacy", "2026-07-28"):
        try:
            with anyio.fail_after(90):
                await run_era(r, args.binary, args.data_dir, mode)
        except Exception as exc:  # noqa: BLE001 - report and carry on to the summary
            r.crash(mode, exc)
    print(f"{r.passed} passed, {r.failed} failed", flush=True)
    return 0 if r.failed == 0 and r.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
