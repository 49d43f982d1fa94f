#!/usr/bin/env python3
"""The approval gate under attack, driven by the official MCP Python SDK in 2026-07-28 mode.

Usage: gate.py --binary PATH --child PATH --data-dir DIR

An attacker who drives the tools tries to splice the `requestState` of one approval into
the retry of a call that needs another. On 2026-07-28 a retry carries the sealed state of
the question it answers, and the answer (`inputResponses`) comes from the client, so a model
that can ask its own generic `approval_request` (its own summary, risk `low`, an action
copied from the gated call) and "answer" it could replay that state where a person's
decision about the gated call is needed. Each check drives the SDK's session by hand
(`allow_input_required=True`), so the attacker chooses which state goes where:

 1. instance tool call under a policy that needs an out-of-band decision: the gated call
    asks only with the console page (URL mode); the generic approval's state, answered
    "approve", is spliced into the retry of kid__delete_item, and the gated call's URL state
    into approval_request -> JSON-RPC errors, the child never runs, both approvals stay
    pending (the refused answers recorded nothing)
 2. the same under the default policy, where the gated call itself asks in the client: the
    generic state is still refused; the gated call's own state then works, once
 3. a state the gated call issued for kid__delete_item is refused by instance_call_tool for
    the same call (a question answers only the tool that asked it)
 4. remediation_review: a generic approval copying the remediation's action is refused;
    nothing is written; the review's own question then applies it
 5. remediation_rollback: the same with the rollback's action; nothing is restored
 6. a remediation's state is refused by a gated child call, and the reverse

Prints one line per check and, last, `N passed, M failed`; exits 0 only when every check
passed.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, MCPError, StdioServerParameters, types

from report import Expect, Report  # tests/interop/report.py, beside this script

MODERN_VERSION = "2026-07-28"
READ_TIMEOUT_SECONDS = 30
CHECK_TIMEOUT_SECONDS = 40
DETAIL_LIMIT = 400

APPROVE = types.ElicitResult(action="accept", content={"decision": "approve", "reason": "attacker says yes"})
ANSWER_APPROVE = {"decision": APPROVE}


def client_for(binary: str, child: str, data_dir: Path, out_of_band_calls: bool) -> Client:
    home = data_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    config = data_dir / "config.toml"
    # The installer writes only configs under the home and the configured projects.
    text = f"[assessments]\nprojects = [{json.dumps(str(data_dir / 'project'))}]\n\n"
    text += f"[instance_types.kid]\ncommand = {json.dumps(child)}\n"
    if out_of_band_calls:
        text += '\n[[approvals.rules]]\nkind = "instance_tool_call"\ndecide_with = "out_of_band"\n'
    config.write_text(text, encoding="utf-8")
    params = StdioServerParameters(
        command=binary,
        args=["--data-dir", str(data_dir), "--log-level", "warn", "--toolsets", "all", "--config", str(config)],
        env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local/share")},
    )

    async def no_person(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        # The attacker answers by hand; the SDK must never be asked.
        return types.ElicitResult(action="cancel")

    return Client(
        params,
        mode=MODERN_VERSION,
        client_info=types.Implementation(name="mcp-coordinator-attacker", version="1.0"),
        read_timeout_seconds=READ_TIMEOUT_SECONDS,
        elicitation_callback=no_person,
    )


async def ok(client: Client, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(name, arguments)
    sc = result.structured_content
    if result.is_error or not isinstance(sc, dict):
        raise AssertionError(f"{name}: isError={result.is_error}, structured={sc!r}, content={result.content!r}")
    return sc


async def first_round(client: Client, name: str, arguments: dict[str, Any]) -> Any:
    """One tools/call round, without the SDK answering an input-required result."""
    return await client.session.call_tool(name, arguments, allow_input_required=True)


async def retry(client: Client, name: str, arguments: dict[str, Any], state: str) -> Any:
    """A retry carrying `state` and an approving answer, chosen by the attacker."""
    return await client.session.call_tool(
        name, arguments, input_responses=ANSWER_APPROVE, request_state=state, allow_input_required=True
    )


async def deletions(client: Client) -> int:
    return int((await ok(client, "kid__deletions", {}))["count"])


async def approval(client: Client, approval_id: str) -> dict[str, Any]:
    return await ok(client, "approval_get", {"approval_id": approval_id})


async def pending_of_kind(client: Client, kind: str) -> list[dict[str, Any]]:
    page = await ok(client, "approval_list", {"state": "pending", "kind": kind, "limit": 50})
    return list(page.get("approvals") or [])


async def generic_state(client: Client, action: dict[str, Any]) -> tuple[str, str]:
    """The attacker's own generic approval copying `action`: its id and its sealed state."""
    r = await first_round(
        client,
        "approval_request",
        {"summary": "harmless, trust me", "risk": "low", "action": action},
    )
    if not isinstance(r, types.InputRequiredResult) or not r.request_state:
        raise AssertionError(f"approval_request did not ask through an input-required result: {r!r}")
    listed = await pending_of_kind(client, "generic")
    ids = [a["id"] for a in listed if a.get("action") == action]
    if len(ids) != 1:
        raise AssertionError(f"expected one pending generic approval of the action, got {ids}")
    return ids[0], r.request_state


async def expect_refused(e: Expect, call: Awaitable[Any], what: str) -> None:
    try:
        result = await call
    except MCPError as err:
        msg = str(err.error.message)
        e.that(err.error.code == -32602, f"{what}: error code {err.error.code}, expected -32602")
        e.that("requestState refused" in msg, f"{what}: message {msg!r}")
        e.notes.append(f"{what}: refused ({msg[:140]})")
        return
    e.problems.append(f"{what}: not refused, got {result!r}")


async def start_kid(client: Client) -> None:
    started = await ok(client, "instance_start", {"type": "kid"})
    if started.get("status") != "running":
        raise AssertionError(f"instance_start: {started!r}")


async def check_splice_out_of_band(e: Expect, client: Client) -> None:
    await start_kid(client)
    args = {"id": "victim"}
    before = await deletions(client)
    r = await first_round(client, "kid__delete_item", args)
    # The SDK declares URL elicitation, so the call asks with the console page (never a form)
    # and its state is one no answer can redeem as a decision.
    asks = list((r.input_requests or {}).values()) if isinstance(r, types.InputRequiredResult) else []
    e.that(
        len(asks) == 1 and getattr(asks[0].params, "mode", "form") == "url",
        f"the gated call was not held with the console page: {r!r}",
    )
    gated = await pending_of_kind(client, "instance_tool_call")
    if not e.that(len(gated) == 1, f"pending instance_tool_call approvals: {len(gated)}"):
        return
    target = gated[0]
    e.that(target.get("decide_with") == "out_of_band", f"decide_with {target.get('decide_with')!r}")
    generic_id, state = await generic_state(client, target["action"])
    await expect_refused(e, retry(client, "kid__delete_item", args, state), "spliced retry of kid__delete_item")
    if isinstance(r, types.InputRequiredResult) and r.request_state:
        await expect_refused(
            e,
            retry(client, "approval_request", {"approval_id": target["id"]}, r.request_state),
            "the gated call's URL state spliced into approval_request",
        )
    after = await deletions(client)
    e.that(after == before, f"kid__deletions went from {before} to {after}: the child ran the call")
    e.that((await approval(client, generic_id)).get("state") == "pending",
           "the refused answer was recorded on the generic approval")
    e.that((await approval(client, target["id"])).get("state") == "pending",
           "the gated call's own approval changed")
    e.notes.append(f"deletions {before}->{after}")


async def check_splice_in_client(e: Expect, client: Client) -> dict[str, str]:
    """Returns the gated call's own state, unused, for the next check."""
    await start_kid(client)
    args = {"id": "victim"}
    before = await deletions(client)
    first = await first_round(client, "kid__delete_item", args)
    if not e.that(isinstance(first, types.InputRequiredResult) and first.request_state,
                  f"the gated call did not ask: {first!r}"):
        return {}
    gated = await pending_of_kind(client, "instance_tool_call")
    if not e.that(len(gated) == 1, f"pending instance_tool_call approvals: {len(gated)}"):
        return {}
    generic_id, state = await generic_state(client, gated[0]["action"])
    await expect_refused(e, retry(client, "kid__delete_item", args, state), "spliced retry of kid__delete_item")
    e.that(await deletions(client) == before, "the child ran the spliced call")
    e.that((await approval(client, generic_id)).get("state") == "pending",
           "the refused answer was recorded on the generic approval")
    # The same call's own question still works; the separate question for check 3 too.
    second_args = {"id": "second"}
    second = await first_round(client, "kid__delete_item", second_args)
    own = await retry(client, "kid__delete_item", args, first.request_state)
    e.that(isinstance(own, types.CallToolResult) and not own.is_error, f"own retry: {own!r}")
    e.that(await deletions(client) == before + 1, "the call approved through its own question did not run once")
    return {"state": getattr(second, "request_state", "") or ""}


async def check_cross_tool(e: Expect, client: Client, kept: dict[str, str]) -> None:
    state = kept.get("state")
    if not e.that(state, "no state kept from check 2"):
        return
    before = await deletions(client)
    args = {"instance": "kid", "tool": "delete_item", "arguments": {"id": "second"}}
    await expect_refused(e, retry(client, "instance_call_tool", args, state), "kid__delete_item's state on instance_call_tool")
    e.that(await deletions(client) == before, "the child ran the call")


def install_args(project: Path, server: str) -> dict[str, Any]:
    return {
        "client": "cursor",
        "project": str(project),
        "server": server,
        "entry": {"command": "uvx", "args": ["mcp-server-time==2025.9.25"]},
    }


async def check_remediation(e: Expect, client: Client, data_dir: Path, kept: dict[str, str]) -> None:
    project = data_dir / "project"
    project.mkdir(exist_ok=True)
    config = project / ".cursor" / "mcp.json"
    first = await first_round(client, "mcp_server_install", install_args(project, "time"))
    if not e.that(isinstance(first, types.InputRequiredResult), f"the install did not ask: {first!r}"):
        return
    proposals = (await ok(client, "remediation_list", {"status": "proposed"})).get("remediations") or []
    if not e.that(len(proposals) == 1, f"proposed remediations: {len(proposals)}"):
        return
    rid = proposals[0]["id"]
    apply_approval = await approval(client, proposals[0]["approval_id"])
    _, state = await generic_state(client, apply_approval["action"])
    await expect_refused(e, retry(client, "remediation_review", {"remediation_id": rid}, state), "spliced remediation_review")
    e.that(not config.exists(), f"{config} was written")
    kept["remediation_state"] = first.request_state or ""
    # The review's own question applies it (the attacker answering its own question is what
    # elicitation is: the person answering in the client).
    own = await retry(client, "remediation_review", {"remediation_id": rid}, first.request_state or "")
    sc = own.structured_content if isinstance(own, types.CallToolResult) else None
    e.that(isinstance(sc, dict) and sc.get("status") == "executed", f"own review: {own!r}")
    e.that(config.exists(), f"{config} was not written by the approved review")
    kept["remediation_id"] = rid
    e.notes.append(f"remediation {rid}")


async def check_rollback(e: Expect, client: Client, data_dir: Path, kept: dict[str, str]) -> None:
    rid = kept.get("remediation_id")
    if not e.that(rid, "no remediation from check 4"):
        return
    config = data_dir / "project" / ".cursor" / "mcp.json"
    written = config.read_bytes()
    first = await first_round(client, "remediation_rollback", {"remediation_id": rid})
    if not e.that(isinstance(first, types.InputRequiredResult), f"the rollback did not ask: {first!r}"):
        return
    rollback = (await ok(client, "remediation_get", {"remediation_id": rid}))["remediation"]
    target = await approval(client, rollback["rollback_approval_id"])
    _, state = await generic_state(client, target["action"])
    await expect_refused(e, retry(client, "remediation_rollback", {"remediation_id": rid}, state), "spliced remediation_rollback")
    e.that(config.exists() and config.read_bytes() == written, "the file was restored by the spliced rollback")
    status = (await ok(client, "remediation_get", {"remediation_id": rid})).get("status")
    e.that(status == "executed", f"status {status!r}, expected still 'executed'")


async def check_states_stay_home(e: Expect, client: Client, kept: dict[str, str]) -> None:
    rem_state = kept.get("remediation_state")
    if not e.that(rem_state, "no remediation state from check 4"):
        return
    before = await deletions(client)
    await expect_refused(e, retry(client, "kid__delete_item", {"id": "x"}, rem_state), "a remediation's state on kid__delete_item")
    e.that(await deletions(client) == before, "the child ran the call")
    call = await first_round(client, "kid__delete_item", {"id": "y"})
    if not e.that(isinstance(call, types.InputRequiredResult), f"the gated call did not ask: {call!r}"):
        return
    rid = kept.get("remediation_id", "")
    await expect_refused(e, retry(client, "remediation_rollback", {"remediation_id": rid}, call.request_state or ""),
                         "a gated call's state on remediation_rollback")


async def step(r: Report, label: str, check: Callable[[Expect], Awaitable[None]]) -> None:
    e = Expect()
    try:
        with anyio.fail_after(CHECK_TIMEOUT_SECONDS):
            await check(e)
    except Exception as exc:  # one check failing must not stop the others
        traceback.print_exception(exc, file=sys.stderr)
        e.problems.append(f"raised {type(exc).__name__}: {exc}")
    r.check(label, not e.problems, "; ".join(e.problems or e.notes))


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True, help="path of the built mcp-coordinator binary")
    parser.add_argument("--child", required=True, help="path of the built test_child example")
    parser.add_argument("--data-dir", required=True, help="scratch directory; each run gets a subdirectory")
    args = parser.parse_args()
    root = Path(args.data_dir)
    print(f"gate: {args.binary} attacked in {MODERN_VERSION} mode", flush=True)
    r = Report(DETAIL_LIMIT)
    try:
        async with client_for(args.binary, args.child, root / "oob", out_of_band_calls=True) as client:
            await step(r, "1 generic state spliced into a gated call that needs the CLI: refused, nothing recorded",
                       lambda e: check_splice_out_of_band(e, client))
        data = root / "client"
        async with client_for(args.binary, args.child, data, out_of_band_calls=False) as client:
            kept: dict[str, str] = {}

            async def two(e: Expect) -> None:
                kept.update(await check_splice_in_client(e, client))

            await step(r, "2 generic state spliced into a gated call asked in the client: refused; its own state runs once", two)
            await step(r, "3 a gated call's state on instance_call_tool: refused",
                       lambda e: check_cross_tool(e, client, kept))
            await step(r, "4 generic state spliced into remediation_review: refused, nothing written",
                       lambda e: check_remediation(e, client, data, kept))
            await step(r, "5 generic state spliced into remediation_rollback: refused, nothing restored",
                       lambda e: check_rollback(e, client, data, kept))
            await step(r, "6 states of remediations and gated calls are refused by each other",
                       lambda e: check_states_stay_home(e, client, kept))
    except Exception as exc:
        r.crash("run", exc)
    print(f"{r.passed} passed, {r.failed} failed", flush=True)
    return 0 if r.failed == 0 and r.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
