#!/usr/bin/env python3
"""Drive a built mcp-coordinator binary with the official MCP Python SDK.

Usage: interop.py --binary PATH --data-dir DIR

For each protocol era the SDK can speak, a fresh server process is started over
stdio (with its own data directory under DIR) and checked end to end: the
negotiated version, the tool listing, structured results against the declared
output schemas, a refused argument as an isError result naming the field, an
unknown tool as a protocol error, domain errors, the audit trail those calls
left, and the audit chain's verification. A short third run checks that the
SDK's default `mode="auto"` picks the stateless era.

Prints one line per check and, last, `N passed, M failed`. Exits 0 only when
every check passed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any

import anyio
from jsonschema.validators import validator_for
from mcp import Client, MCPError, StdioServerParameters, types
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS

from report import Report  # tests/interop/report.py, beside this script

MODERN_VERSION = "2026-07-28"
TOOLS = ("coordinator_status", "audit_query", "audit_verify")
UNKNOWN_TOOL = "interop_no_such_tool"
INVALID_PARAMS = -32602
CLIENT_NAME = "mcp-coordinator-interop"
CLIENT_VERSION = importlib.metadata.version("mcp")
EXPECTED_ACTOR = f"client:{CLIENT_NAME}/{CLIENT_VERSION}"
# One bound for everything a single server run may take, so a hung server fails the run
# instead of hanging the test.
RUN_TIMEOUT_SECONDS = 120
READ_TIMEOUT_SECONDS = 30
# Longest detail printed after a passing check (a failing one prints it whole).
DETAIL_LIMIT = 300


def schema_problems(schema: dict[str, Any], instance: Any) -> list[str]:
    """Validate `instance` against `schema` with the validator its `$schema` names."""
    cls = validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    problems = []
    for error in validator.iter_errors(instance):
        where = "/".join(str(part) for part in error.absolute_path) or "<root>"
        problems.append(f"{where}: {error.message}")
    return problems


def schema_is_valid(schema: Any) -> str | None:
    """None when `schema` is a valid JSON Schema, else why not."""
    if not isinstance(schema, dict):
        return f"not an object: {schema!r}"
    try:
        validator_for(schema).check_schema(schema)
    except Exception as exc:  # jsonschema.SchemaError, or an unknown $schema
        return str(exc)
    return None


def server_params(binary: str, data_dir: Path, toolsets: str | None = "all") -> StdioServerParameters:
    """The server on `data_dir` offering `toolsets` (None: its default set)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    home = data_dir / "home"
    home.mkdir(exist_ok=True)
    return StdioServerParameters(
        command=binary,
        args=["--data-dir", str(data_dir), "--log-level", "warn"] + (["--toolsets", toolsets] if toolsets else []),
        # Keep the server away from the real user's config and data directories.
        env={
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
        },
    )


def client_for(binary: str, data_dir: Path, mode: str) -> Client:
    return Client(
        server_params(binary, data_dir),
        mode=mode,
        client_info=types.Implementation(name=CLIENT_NAME, version=CLIENT_VERSION),
        read_timeout_seconds=READ_TIMEOUT_SECONDS,
    )


async def expect_protocol_error(
    r: Report, label: str, client: Client, name: str, arguments: dict[str, Any], must_mention: str
) -> None:
    try:
        result = await client.call_tool(name, arguments)
    except MCPError as exc:
        r.check(
            label,
            exc.code == INVALID_PARAMS and must_mention in exc.message,
            f"code {exc.code}, message {exc.message!r}, data {exc.data!r}"
            + ("" if exc.code == INVALID_PARAMS else f" (expected code {INVALID_PARAMS})")
            + ("" if must_mention in exc.message else f" (expected the message to mention {must_mention!r})"),
        )
        return
    r.check(
        label,
        False,
        f"expected a JSON-RPC error, got a result: isError={result.is_error}, "
        f"structuredContent={result.structured_content!r}",
    )


async def expect_invalid_argument(
    r: Report, label: str, client: Client, name: str, arguments: dict[str, Any], field: str
) -> None:
    """The call is refused as a tool result the model can read: isError, code invalid_argument,
    details.field naming `field`, and the message (naming it too) as the text."""
    try:
        result = await client.call_tool(name, arguments)
    except MCPError as exc:
        r.check(label, False, f"expected an isError result, got a JSON-RPC error: code {exc.code}, message {exc.message!r}")
        return
    sc = result.structured_content
    details = sc.get("details") if isinstance(sc, dict) else None
    message = sc.get("message") if isinstance(sc, dict) else None
    texts = [block.text for block in result.content if isinstance(block, types.TextContent)]
    r.check(
        label,
        result.is_error is True
        and isinstance(sc, dict)
        and sc.get("code") == "invalid_argument"
        and sc.get("retryable") is False
        and isinstance(details, dict)
        and details.get("tool") == name
        and details.get("field") == field
        and isinstance(message, str)
        and f"`{field}`" in message
        and texts == [message],
        f"isError={result.is_error}, structuredContent={sc!r}, text={texts!r}",
    )


def check_structured(r: Report, label: str, tool: types.Tool | None, result: types.CallToolResult) -> Any:
    """Common checks on a successful tool result; returns its structured content."""
    sc = result.structured_content
    r.check(
        f"{label}: not isError",
        not result.is_error,
        "" if not result.is_error else f"structuredContent={sc!r}, content={result.content!r}",
    )
    if not r.check(f"{label}: structuredContent present", isinstance(sc, dict), f"got {type(sc).__name__}"):
        return sc
    if tool is None or tool.output_schema is None:
        r.check(f"{label}: validates against outputSchema", False, "the tool was not listed with an outputSchema")
    else:
        problems = schema_problems(tool.output_schema, sc)
        r.check(
            f"{label}: validates against outputSchema",
            not problems,
            "; ".join(problems[:5]) if problems else "",
        )
    # Clients that predate structured content read the text block; it should carry the same JSON.
    texts = [block.text for block in result.content if isinstance(block, types.TextContent)]
    try:
        mirrored = any(json.loads(text) == sc for text in texts)
    except ValueError:
        mirrored = False
    r.check(f"{label}: text content mirrors structuredContent", mirrored, f"{len(texts)} text block(s)")
    return sc


async def run_era(r: Report, binary: str, data_dir: Path, mode: str) -> None:
    modern = mode != "legacy"
    era = "stateless" if modern else "legacy"
    p = f"[{mode}]"
    async with client_for(binary, data_dir, mode) as client:
        # 1. The negotiated protocol version, and what the server says about itself.
        version = client.protocol_version
        if modern:
            r.check(f"{p} connect: protocol version is {MODERN_VERSION}", version == MODERN_VERSION, version)
            # mode="2026-07-28" adopts the version without a round trip; ask the server itself.
            raw = await client.session.send_discover(MODERN_VERSION)
            discovered = types.DiscoverResult.model_validate(raw)
            r.check(
                f"{p} connect: server/discover lists {MODERN_VERSION}",
                MODERN_VERSION in discovered.supported_versions,
                f"supportedVersions={discovered.supported_versions}",
            )
            r.check(
                f"{p} connect: server/discover advertises tools",
                discovered.capabilities.tools is not None,
                f"capabilities={discovered.capabilities.model_dump(exclude_none=True)}",
            )
            client.session.adopt(discovered)
            info = client.server_info
            r.check(
                f"{p} connect: discover result stamps serverInfo",
                info is not None and info.name == "mcp-coordinator",
                f"serverInfo={info.model_dump(exclude_none=True) if info else None}",
            )
        else:
            r.check(
                f"{p} connect: protocol version is a 2025 handshake version",
                version in HANDSHAKE_PROTOCOL_VERSIONS and version.startswith("2025-"),
                version,
            )
            init = client.session.initialize_result
            r.check(
                f"{p} connect: initialize result names the server and advertises tools",
                init is not None and init.server_info.name == "mcp-coordinator" and init.capabilities.tools is not None,
                f"serverInfo={init.server_info.model_dump(exclude_none=True) if init else None}",
            )

        # 2. The tool listing (every page).
        listed: dict[str, types.Tool] = {}
        cursor: str | None = None
        for _ in range(100):
            page = await client.list_tools(cursor=cursor)
            listed.update((tool.name, tool) for tool in page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        r.check(
            f"{p} tools/list: lists {', '.join(TOOLS)}",
            all(name in listed for name in TOOLS),
            f"listed {sorted(listed)}",
        )
        for name in TOOLS:
            tool = listed.get(name)
            if tool is None:
                continue
            input_problem = schema_is_valid(tool.input_schema)
            r.check(
                f"{p} tools/list: {name} has a valid object inputSchema",
                input_problem is None and tool.input_schema.get("type") == "object",
                input_problem or "",
            )
            output_problem = schema_is_valid(tool.output_schema) if tool.output_schema is not None else "missing"
            r.check(f"{p} tools/list: {name} has a valid outputSchema", output_problem is None, output_problem or "")
            annotations = tool.annotations
            r.check(
                f"{p} tools/list: {name} has annotations with readOnlyHint true",
                annotations is not None and annotations.read_only_hint is True,
                f"annotations={annotations.model_dump(exclude_none=True) if annotations else None}",
            )

        # 3. Each tool, its structured result checked against its declared output schema.
        status = check_structured(
            r, f"{p} coordinator_status", listed.get("coordinator_status"), await client.call_tool("coordinator_status")
        )
        if isinstance(status, dict):
            r.check(f"{p} coordinator_status: era is {era}", status.get("era") == era, f"era={status.get('era')!r}")
            r.check(
                f"{p} coordinator_status: protocol_version matches the connection",
                status.get("protocol_version") == version,
                f"protocol_version={status.get('protocol_version')!r}",
            )
            r.check(
                f"{p} coordinator_status: client is {EXPECTED_ACTOR}",
                status.get("client") == EXPECTED_ACTOR,
                f"client={status.get('client')!r}",
            )
            counts = status.get("counts")
            audit_events = counts.get("audit_events") if isinstance(counts, dict) else None
            r.check(
                f"{p} coordinator_status: counts.audit_events is a count",
                isinstance(audit_events, int) and audit_events >= 0,
                f"counts={counts!r}",
            )
        page = check_structured(
            r, f"{p} audit_query", listed.get("audit_query"), await client.call_tool("audit_query", {"limit": 5})
        )
        if isinstance(page, dict):
            r.check(
                f"{p} audit_query: events is a list of at most limit=5",
                isinstance(page.get("events"), list) and len(page["events"]) <= 5,
                f"{len(page.get('events') or [])} event(s)",
            )
        check_structured(r, f"{p} audit_verify", listed.get("audit_verify"), await client.call_tool("audit_verify"))

        # 4. A wrong argument is a result the model sees and corrects (MCP 2025-11-25); an unknown
        # tool is a protocol error.
        await expect_invalid_argument(
            r,
            f'{p} audit_query limit="ten": isError result invalid_argument naming limit',
            client,
            "audit_query",
            {"limit": "ten"},
            "limit",
        )
        await expect_protocol_error(
            r, f"{p} unknown tool: JSON-RPC error {INVALID_PARAMS}", client, UNKNOWN_TOOL, {}, UNKNOWN_TOOL
        )

        # 5. A domain failure is a normal result with isError and a structured error.
        since, until = "2030-01-01T00:00:00Z", "2020-01-01T00:00:00Z"
        failed = await client.call_tool("audit_query", {"since": since, "until": until})
        sc = failed.structured_content
        r.check(f"{p} audit_query since>until: isError true", failed.is_error is True, f"isError={failed.is_error}")
        r.check(
            f"{p} audit_query since>until: structured code invalid_request, not retryable",
            isinstance(sc, dict)
            and sc.get("code") == "invalid_request"
            and sc.get("retryable") is False
            and isinstance(sc.get("message"), str)
            and bool(sc.get("message")),
            f"structuredContent={sc!r}",
        )
        r.check(
            f"{p} audit_query since>until: a text block explains it",
            any(isinstance(block, types.TextContent) and block.text for block in failed.content),
            f"{len(failed.content)} content block(s)",
        )

        # 6. What the calls above left in the audit log.
        audited = check_structured(
            r,
            f"{p} audit_query action=tool.call",
            listed.get("audit_query"),
            await client.call_tool("audit_query", {"action": "tool.call", "limit": 500}),
        )
        events = audited.get("events") if isinstance(audited, dict) else None
        events = [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []
        ours = [e for e in events if e.get("actor") == EXPECTED_ACTOR]
        r.check(
            f"{p} audit: events are attributed to {EXPECTED_ACTOR}",
            bool(ours) and len(ours) == len(events),
            f"{len(ours)} of {len(events)} event(s); actors {sorted({str(e.get('actor')) for e in events})}",
        )
        r.check(
            f"{p} audit: the filter kept only action tool.call",
            bool(events) and all(e.get("action") == "tool.call" for e in events),
            f"actions {sorted({str(e.get('action')) for e in events})}",
        )
        subjects = {e.get("subject") for e in ours}
        wanted = set(TOOLS) | {UNKNOWN_TOOL}
        r.check(
            f"{p} audit: subjects include every tool called",
            wanted <= subjects,
            f"missing {sorted(wanted - subjects)}"
            if not wanted <= subjects
            else f"subjects {sorted(map(str, subjects))}",
        )

        def outcomes(subject: str) -> list[str]:
            return sorted(str(e.get("outcome")) for e in ours if e.get("subject") == subject)

        r.check(
            f"{p} audit: the wrong-type audit_query call is outcome invalid",
            outcomes("audit_query").count("invalid") == 1,
            f"audit_query outcomes {outcomes('audit_query')}",
        )
        r.check(
            f"{p} audit: the since>until audit_query call is outcome error",
            outcomes("audit_query").count("error") == 1,
            f"audit_query outcomes {outcomes('audit_query')}",
        )
        r.check(
            f"{p} audit: the unknown tool call is outcome invalid",
            outcomes(UNKNOWN_TOOL) == ["invalid"],
            f"{UNKNOWN_TOOL} outcomes {outcomes(UNKNOWN_TOOL)}",
        )
        r.check(
            f"{p} audit: coordinator_status and audit_verify calls are outcome ok",
            outcomes("coordinator_status") == ["ok"] and outcomes("audit_verify") == ["ok"],
            f"coordinator_status {outcomes('coordinator_status')}, audit_verify {outcomes('audit_verify')}",
        )
        seqs = [e.get("seq") for e in events]
        by_seq = {e.get("seq"): e for e in events}
        broken = [
            s
            for s in seqs
            if isinstance(s, int) and s - 1 in by_seq and by_seq[s].get("prev_hash") != by_seq[s - 1].get("hash")
        ]
        r.check(
            f"{p} audit: newest first, each prev_hash links to the event before",
            all(isinstance(s, int) for s in seqs) and seqs == sorted(seqs, reverse=True) and not broken,
            f"seqs {seqs}" + (f", broken links at {broken}" if broken else ""),
        )

        # 7. The chain verifies.
        verified = check_structured(
            r, f"{p} audit_verify (final)", listed.get("audit_verify"), await client.call_tool("audit_verify")
        )
        if isinstance(verified, dict):
            checked = verified.get("events_checked")
            r.check(
                f"{p} audit_verify: ok true, no bad event",
                verified.get("ok") is True and verified.get("first_bad_seq") is None,
                f"ok={verified.get('ok')!r}, first_bad_seq={verified.get('first_bad_seq')!r}",
            )
            r.check(
                f"{p} audit_verify: checked every event audited so far",
                isinstance(checked, int) and checked >= len(events),
                f"events_checked={checked!r}, audited tool calls seen={len(events)}",
            )
            r.check(
                f"{p} audit_verify: signatures block present",
                isinstance(verified.get("signatures"), dict),
                f"signatures={verified.get('signatures')!r}",
            )


async def run_auto(r: Report, binary: str, data_dir: Path) -> None:
    """The SDK default: probe server/discover, fall back to initialize only when it must."""
    async with client_for(binary, data_dir, "auto") as client:
        version = client.protocol_version
        r.check(f"[auto] connect: negotiates {MODERN_VERSION}", version == MODERN_VERSION, version)
        status = (await client.call_tool("coordinator_status")).structured_content
        era = status.get("era") if isinstance(status, dict) else None
        r.check("[auto] coordinator_status: era is stateless", era == "stateless", f"era={era!r}")


async def guarded(r: Report, label: str, run: Any) -> None:
    try:
        with anyio.fail_after(RUN_TIMEOUT_SECONDS):
            await run
    except Exception as exc:  # the run stops at its first unexpected error; later runs still go
        r.crash(label, exc)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True, help="path of the built mcp-coordinator binary")
    parser.add_argument("--data-dir", required=True, help="scratch directory; each run gets a subdirectory")
    args = parser.parse_args()
    root = Path(args.data_dir)

    print(f"mcp SDK {CLIENT_VERSION} (Python {sys.version.split()[0]}) against {args.binary}", flush=True)
    r = Report(DETAIL_LIMIT)
    for mode in ("legacy", MODERN_VERSION):
        await guarded(r, f"[{mode}] run", run_era(r, args.binary, root / mode.replace("-", "_"), mode))
    await guarded(r, "[auto] run", run_auto(r, args.binary, root / "auto"))
    print(f"{r.passed} passed, {r.failed} failed", flush=True)
    return 0 if r.failed == 0 and r.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
