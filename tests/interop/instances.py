#!/usr/bin/env python3
"""Approval-gated child instance tools, driven by the official MCP Python SDK.

Usage: instances.py --binary PATH --child PATH --data-dir DIR

The coordinator's config (written under DIR) defines the instance type `kid`, run from the
test child (`examples/test_child.rs`, at --child). For each protocol era (mode="legacy": the
server sends `elicitation/create` while the tools/call waits; mode="2026-07-28": the call
returns an input-required result and the SDK retries with the answer) a fresh coordinator is
started over stdio on its own data directory, and a scripted person answers through the SDK's
elicitation callback:

 1. instance_start {"type": "kid"} -> running; kid__echo, kid__delete_item, kid__deletions listed
 2. kid__echo is forwarded without asking the person
 3. kid__delete_item, approved -> the child's {"deleted", "count"}; kid__deletions +1
 4. kid__delete_item, rejected -> isError, code forbidden; kid__deletions unchanged
 5. instance_call_tool delete_item, declined -> isError, code forbidden; kid__deletions unchanged
 6. instance_call_tool delete_item, approved -> the child's result and the approval id; +1
 7. instance_stop -> stopped, and the kid__ tools leave the list

Every question must name the tool (delete_item) and the instance (kid), and must arrive the
way the era asks (an elicitation/create request, or an input request of an input-required
result). Prints one line per check and, last, `N passed, M failed`; exits 0 only when every
check passed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters, types
from mcp.client.session import ClientRequestContext

from report import Report  # tests/interop/report.py, beside this script

MODERN_VERSION = "2026-07-28"
READ_TIMEOUT_SECONDS = 30
CHECK_TIMEOUT_SECONDS = 30
RUN_TIMEOUT_SECONDS = 120
DETAIL_LIMIT = 400
PROXIED = ("kid__echo", "kid__delete_item", "kid__deletions")


class Expect:
    """The conditions of one check: what failed, and notes for the PASS line."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []

    def that(self, ok: object, what: str) -> bool:
        if not ok:
            self.problems.append(what)
        return bool(ok)


@dataclass
class Person:
    """The SDK's elicitation callback: records each question, answers with `answer`."""

    answer: types.ElicitResult | None = None
    asked: list[types.ElicitRequestParams] = field(default_factory=list)
    request_ids: list[Any] = field(default_factory=list)

    def expect(self, answer: types.ElicitResult | None) -> None:
        self.answer = answer
        self.asked.clear()
        self.request_ids.clear()

    async def __call__(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        self.asked.append(params)
        self.request_ids.append(context.request_id)
        # Not expected to be asked: dismiss it (the check then fails on `asked`).
        return self.answer or types.ElicitResult(action="cancel")


APPROVE = types.ElicitResult(action="accept", content={"decision": "approve", "reason": "interop: fine"})
REJECT = types.ElicitResult(action="accept", content={"decision": "reject", "reason": "interop: no"})
DECLINE = types.ElicitResult(action="decline")


def client_for(mode: str, binary: str, child: str, data_dir: Path, person: Person) -> Client:
    """A coordinator on its own data dir and config, away from the real user's home."""
    home = data_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    config = data_dir / "config.toml"
    # A JSON string is a valid TOML basic string for a path.
    config.write_text(f"[instance_types.kid]\ncommand = {json.dumps(child)}\n", encoding="utf-8")
    params = StdioServerParameters(
        command=binary,
        args=["--data-dir", str(data_dir), "--log-level", "warn", "--toolsets", "all", "--config", str(config)],
        env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local/share")},
    )
    return Client(
        params,
        mode=mode,
        client_info=types.Implementation(name="mcp-coordinator-interop", version="1.0"),
        read_timeout_seconds=READ_TIMEOUT_SECONDS,
        elicitation_callback=person,
    )


def structured(result: types.CallToolResult) -> dict[str, Any]:
    sc = result.structured_content
    return sc if isinstance(sc, dict) else {}


async def ok(client: Client, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Call a tool that must succeed; its structuredContent."""
    result = await client.call_tool(name, arguments)
    sc = result.structured_content
    if result.is_error or not isinstance(sc, dict):
        raise AssertionError(f"{name}: isError={result.is_error}, structured={sc!r}, content={result.content!r}")
    return sc


async def deletions(client: Client) -> int:
    count = (await ok(client, "kid__deletions", {})).get("count")
    if not isinstance(count, int):
        raise AssertionError(f"kid__deletions count {count!r}")
    return count


async def tool_names(client: Client) -> set[str]:
    names: set[str] = set()
    cursor: str | None = None
    for _ in range(100):
        page = await client.list_tools(cursor=cursor, cache_mode="bypass")
        names.update(t.name for t in page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return names


def expect_asked(e: Expect, person: Person, legacy: bool) -> None:
    """Asked once, the way the era asks, in a form naming the tool and the instance."""
    if not e.that(len(person.asked) == 1, f"the person was asked {len(person.asked)} time(s), expected once"):
        return
    rid = person.request_ids[0]
    input_key = isinstance(rid, str) and not rid.isdigit()
    e.that(input_key != legacy, f"asked with request id {rid!r}, not the way this era asks")
    form = person.asked[0]
    if not e.that(isinstance(form, types.ElicitRequestFormParams), f"not a form elicitation: {form!r}"):
        return
    assert isinstance(form, types.ElicitRequestFormParams)
    # As words of their own: `kid__delete_item` alone would name neither.
    e.that(re.search(r"\bdelete_item\b", form.message), f"the message does not name the tool: {form.message!r}")
    e.that(re.search(r"\bkid\b", form.message), f"the message does not name the instance: {form.message!r}")
    props = form.requested_schema.get("properties", {})
    e.that("decision" in props and "reason" in props, f"form fields {sorted(props)}")
    e.notes.append(f"asked via request id {rid!r}")


def expect_forbidden(e: Expect, result: types.CallToolResult, before: int, after: int) -> None:
    sc = structured(result)
    e.that(result.is_error is True, f"isError={result.is_error!r}, expected true")
    e.that(sc.get("code") == "forbidden", f"code {sc.get('code')!r}, expected 'forbidden': {sc!r}")
    state = (sc.get("details") or {}).get("state")
    e.that(state == "rejected", f"details.state {state!r}, expected 'rejected'")
    e.that(after == before, f"kid__deletions went from {before} to {after}: the child ran the call")
    e.notes.append(f"code={sc.get('code')!r} state={state!r} deletions {before}->{after}")


async def check_start(e: Expect, client: Client, person: Person) -> None:
    person.expect(None)
    started = await ok(client, "instance_start", {"type": "kid"})
    e.that(started.get("name") == "kid", f"name {started.get('name')!r}")
    e.that(started.get("status") == "running", f"status {started.get('status')!r}, expected 'running'")
    names = await tool_names(client)
    missing = [n for n in PROXIED if n not in names]
    e.that(not missing, f"missing from tools/list: {missing}")
    e.notes.append(f"status={started.get('status')!r} pid={started.get('pid')!r}")


async def check_echo(e: Expect, client: Client, person: Person) -> None:
    person.expect(None)
    result = await client.call_tool("kid__echo", {"text": "hi"})
    e.that(result.is_error is not True, f"isError={result.is_error!r}: {result.content!r}")
    e.that(structured(result) == {"text": "hi"}, f"structured {result.structured_content!r}")
    e.that(not person.asked, f"the person was asked {len(person.asked)} time(s) for a read-only tool")


async def check_approved(e: Expect, client: Client, person: Person, legacy: bool, explicit: bool) -> None:
    item = f"{'explicit' if explicit else 'exposed'}-{'legacy' if legacy else 'modern'}"
    before = await deletions(client)
    person.expect(APPROVE)
    if explicit:
        args = {"instance": "kid", "tool": "delete_item", "arguments": {"id": item}}
        outer = await ok(client, "instance_call_tool", args)
        e.that(outer.get("is_error") is False, f"is_error {outer.get('is_error')!r}")
        e.that(isinstance(outer.get("approval_id"), str), f"approval_id {outer.get('approval_id')!r}")
        sc = outer.get("structured_content") or {}
    else:
        result = await client.call_tool("kid__delete_item", {"id": item})
        e.that(result.is_error is not True, f"isError={result.is_error!r}: {result.content!r}")
        sc = structured(result)
    after = await deletions(client)
    expect_asked(e, person, legacy)
    e.that(sc == {"deleted": item, "count": before + 1}, f"the child's result {sc!r}")
    e.that(after == before + 1, f"kid__deletions went from {before} to {after}, expected +1")
    e.notes.append(f"result={sc!r} deletions {before}->{after}")


async def check_refused(e: Expect, client: Client, person: Person, legacy: bool, explicit: bool) -> None:
    before = await deletions(client)
    person.expect(DECLINE if explicit else REJECT)
    if explicit:
        args = {"instance": "kid", "tool": "delete_item", "arguments": {"id": "never"}}
        result = await client.call_tool("instance_call_tool", args)
    else:
        result = await client.call_tool("kid__delete_item", {"id": "never"})
    after = await deletions(client)
    expect_asked(e, person, legacy)
    expect_forbidden(e, result, before, after)


async def check_stop(e: Expect, client: Client, person: Person) -> None:
    person.expect(None)
    stopped = await ok(client, "instance_stop", {"instance": "kid"})
    e.that(stopped.get("status") == "stopped", f"status {stopped.get('status')!r}, expected 'stopped'")
    left = sorted(n for n in await tool_names(client) if n.startswith("kid__"))
    e.that(not left, f"still listed after the stop: {left}")
    e.that(not person.asked, "the person was asked during the stop")


async def step(r: Report, label: str, check: Callable[[Expect], Awaitable[None]]) -> None:
    e = Expect()
    try:
        with anyio.fail_after(CHECK_TIMEOUT_SECONDS):
            await check(e)
    except Exception as exc:  # one check failing must not stop the others
        traceback.print_exception(exc, file=sys.stderr)
        e.problems.append(f"raised {type(exc).__name__}: {exc}")
    r.check(label, not e.problems, "; ".join(e.problems or e.notes))


async def run_era(r: Report, mode: str, binary: str, child: str, data_dir: Path) -> None:
    legacy = mode == "legacy"
    p = f"[{mode}]"
    person = Person()
    async with client_for(mode, binary, child, data_dir, person) as client:
        await step(r, f"{p} 1 instance_start: running, proxied tools listed",
                   lambda e: check_start(e, client, person))
        await step(r, f"{p} 2 kid__echo forwarded without asking", lambda e: check_echo(e, client, person))
        await step(r, f"{p} 3 kid__delete_item approved: forwarded once",
                   lambda e: check_approved(e, client, person, legacy, explicit=False))
        await step(r, f"{p} 4 kid__delete_item rejected: forbidden, not forwarded",
                   lambda e: check_refused(e, client, person, legacy, explicit=False))
        await step(r, f"{p} 5 instance_call_tool declined: forbidden, not forwarded",
                   lambda e: check_refused(e, client, person, legacy, explicit=True))
        await step(r, f"{p} 6 instance_call_tool approved: forwarded once",
                   lambda e: check_approved(e, client, person, legacy, explicit=True))
        await step(r, f"{p} 7 instance_stop: stopped, tools gone", lambda e: check_stop(e, client, person))


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True, help="path of the built mcp-coordinator binary")
    parser.add_argument("--child", required=True, help="path of the built test_child example")
    parser.add_argument("--data-dir", required=True, help="scratch directory; each run gets a subdirectory")
    args = parser.parse_args()
    root = Path(args.data_dir)

    print(f"instances: {args.binary} running {args.child}", flush=True)
    r = Report(DETAIL_LIMIT)
    for mode in ("legacy", MODERN_VERSION):
        try:
            with anyio.fail_after(RUN_TIMEOUT_SECONDS):
                await run_era(r, mode, args.binary, args.child, root / f"instances_{mode.replace('-', '_')}")
        except Exception as exc:  # the run stops at its first unexpected error; the next era still goes
            traceback.print_exception(exc, file=sys.stderr)
            r.check(f"[{mode}] run", False, f"raised {type(exc).__name__}: {exc}")
    print(f"{r.passed} passed, {r.failed} failed", flush=True)
    return 0 if r.failed == 0 and r.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
