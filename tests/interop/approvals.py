#!/usr/bin/env python3
"""Human approvals through elicitation, driven by the official MCP Python SDK.

Usage: approvals.py --binary PATH --data-dir DIR

For each protocol era (mode="legacy": the server sends `elicitation/create` and the
tools/call waits for the answer; mode="2026-07-28": the tool returns an input-required
result and the SDK retries with the answer and the sealed request state) a fresh server
process is started over stdio with its own data directory under DIR, and a scripted
"person" answers the approval form through the SDK's elicitation callback:

 1. approve          -> approved, via elicitation_form, by client:<name>/<version>, reason kept
 2. reject           -> rejected, with the reason given
 3. decline          -> rejected, the cause says declined
 4. cancel           -> cancelled
 5. slow person      -> the call waits for the answer (legacy: with progress notifications)
 6. critical risk    -> never a form: the person is sent to the console's page with a URL
                       elicitation (legacy: elicitation/create; 2026-07-28: in an input-required
                       result); dismissed here, so pending console_declined and nothing recorded;
                       the CLI decides it
 7. the client cancels the waiting call -> the approval stays pending; the CLI decides it
 8. a client without elicitation -> pending no_elicitation; `wait_seconds` returns the CLI decision
 9. decisions are final: the CLI cannot reject an approved approval
10. the audit trail lists the approvals and the signed chain verifies

Prints one line per check and, last, `N passed, M failed`. Exits 0 only when every
check passed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from jsonschema.validators import validator_for
from mcp import Client, StdioServerParameters, types
from mcp.client.session import ClientRequestContext

from report import Report  # tests/interop/report.py, beside this script

MODERN_VERSION = "2026-07-28"
CLIENT_NAME = "mcp-coordinator-interop"
CLIENT_VERSION = importlib.metadata.version("mcp")
EXPECTED_ACTOR = f"client:{CLIENT_NAME}/{CLIENT_VERSION}"
READ_TIMEOUT_SECONDS = 30
# Bounds so that a hung server fails a check, or a run, instead of hanging the test.
CHECK_TIMEOUT_SECONDS = 30
RUN_TIMEOUT_SECONDS = 90
CLI_TIMEOUT_SECONDS = 15
# The slow person of check 5, and how much of that the call must visibly wait.
SLOW_ANSWER_SECONDS = 3.0
SLOW_ANSWER_MIN_WAIT = 2.5
# Check 7: how long the client lets the question stand before cancelling the call, and how
# long the scripted person would keep the form open if nobody withdrew it.
CANCEL_AFTER_SECONDS = 1.0
BLOCKED_FORM_LIMIT_SECONDS = 30.0
# Check 8: the CLI decides this long after the waiting call starts; the call must return
# within LATE_LIMIT of the CLI finishing, and all of it within TOTAL_LIMIT.
CLI_DELAY_SECONDS = 1.5
WAIT_SECONDS = 20
WAITING_CALL_LATE_LIMIT = 1.5
WAITING_CALL_TOTAL_LIMIT = 10.0
DETAIL_LIMIT = 400


class Expect:
    """The conditions of one check: what failed, and notes for the PASS line."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []

    def that(self, ok: bool, what: str) -> bool:
        if not ok:
            self.problems.append(what)
        return ok

    def note(self, what: str) -> None:
        self.notes.append(what)


@dataclass
class Answer:
    """How the scripted person answers the next form."""

    action: str  # "accept" | "decline" | "cancel"
    content: dict[str, Any] | None = None
    delay: float = 0.0
    # When set, keep the form open until this is set (or BLOCKED_FORM_LIMIT_SECONDS pass).
    hold: anyio.Event | None = None


def approve(reason: str, **kw: Any) -> Answer:
    return Answer("accept", {"decision": "approve", "reason": reason}, **kw)


def reject(reason: str) -> Answer:
    return Answer("accept", {"decision": "reject", "reason": reason})


@dataclass
class Person:
    """The SDK's elicitation callback: records every question and answers as scripted."""

    answer: Answer | None = None
    asked: list[types.ElicitRequestParams] = field(default_factory=list)
    # How each question arrived: the JSON-RPC id of an `elicitation/create` request (legacy),
    # or the key of an input request inside an input-required result (2026-07-28).
    request_ids: list[Any] = field(default_factory=list)
    withdrawn: int = 0  # questions the server withdrew while the person was looking at them

    def expect(self, answer: Answer | None) -> None:
        self.answer = answer
        self.asked.clear()
        self.request_ids.clear()

    async def __call__(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        self.asked.append(params)
        self.request_ids.append(context.request_id)
        answer = self.answer
        if answer is None:
            # Not expected to be asked at all: dismiss it (the check then fails on `asked`).
            return types.ElicitResult(action="cancel")
        try:
            if answer.delay:
                await anyio.sleep(answer.delay)
            if answer.hold is not None:
                with anyio.move_on_after(BLOCKED_FORM_LIMIT_SECONDS):
                    await answer.hold.wait()
        except anyio.get_cancelled_exc_class():
            self.withdrawn += 1
            raise
        return types.ElicitResult(action=answer.action, content=answer.content)


@dataclass
class Run:
    """One era's server, and what its checks learnt for the later ones."""

    mode: str
    binary: str
    data_dir: Path
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    ids: dict[int, str] = field(default_factory=dict)
    approved: list[str] = field(default_factory=list)
    decisions: int = 0

    @property
    def legacy(self) -> bool:
        return self.mode == "legacy"

    def action(self, check: int) -> dict[str, Any]:
        """A distinct action per check, so no two checks share an approval."""
        return {"tool": "deploy", "service": "interop", "check": check, "mode": self.mode}


def schema_problems(schema: dict[str, Any], instance: Any) -> list[str]:
    cls = validator_for(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(instance)
    ]


def isolated_env(data_dir: Path) -> dict[str, str]:
    """Keep the server and the CLI away from the real user's config and data directories."""
    home = data_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
    }


def client_for(run: Run, person: Person | None) -> Client:
    """A client that declares form elicitation when given a person, and no elicitation otherwise."""
    params = StdioServerParameters(
        command=run.binary,
        args=["--data-dir", str(run.data_dir), "--log-level", "warn", "--toolsets", "all"],
        env=isolated_env(run.data_dir),
    )
    return Client(
        params,
        mode=run.mode,
        client_info=types.Implementation(name=CLIENT_NAME, version=CLIENT_VERSION),
        read_timeout_seconds=READ_TIMEOUT_SECONDS,
        elicitation_callback=person,
    )


async def cli(run: Run, *args: str) -> tuple[int, str]:
    """`mcp-coordinator --data-dir DIR approvals ARGS...`: exit code and output."""
    argv = [run.binary, "--data-dir", str(run.data_dir), "--log-level", "warn", "approvals", *args]
    with anyio.fail_after(CLI_TIMEOUT_SECONDS):
        done = await anyio.run_process(
            argv, check=False, stdin=subprocess.DEVNULL, env={**os.environ, **isolated_env(run.data_dir)}
        )
    output = (done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")).strip()
    return done.returncode, output


async def tool(
    run: Run,
    e: Expect,
    client: Client,
    name: str,
    arguments: dict[str, Any],
    progress: Callable[[float, float | None, str | None], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Call a tool that must succeed; its structuredContent, checked against the outputSchema."""
    result = await client.call_tool(name, arguments, progress_callback=progress)
    sc = result.structured_content
    if result.is_error or not isinstance(sc, dict):
        raise AssertionError(
            f"{name}({json.dumps(arguments)}): isError={result.is_error}, structuredContent={sc!r}, "
            f"content={result.content!r}"
        )
    schema = run.schemas.get(name)
    if e.that(schema is not None, f"{name} is not listed with an outputSchema") and schema is not None:
        problems = schema_problems(schema, sc)
        e.that(not problems, f"{name} result does not match its outputSchema: {'; '.join(problems[:5])}")
    return sc


def decision_of(approval: Any) -> dict[str, Any]:
    decision = approval.get("decision") if isinstance(approval, dict) else None
    return decision if isinstance(decision, dict) else {}


def summary_of(sc: dict[str, Any]) -> str:
    approval = sc.get("approval") if isinstance(sc.get("approval"), dict) else {}
    return (
        f"state={sc.get('state')!r} pending_reason={sc.get('pending_reason')!r} "
        f"decision={json.dumps(decision_of(approval))} decide_command={sc.get('decide_command')!r}"
    )


def expect_decided(
    e: Expect, sc: dict[str, Any], state: str, via: str, by: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    """The approval_request result says `state`, decided via `via` (by `by`, with `reason`)."""
    approval = sc.get("approval") if isinstance(sc.get("approval"), dict) else {}
    decision = decision_of(approval)
    e.that(sc.get("state") == state, f"state {sc.get('state')!r}, expected {state!r}")
    e.that(approval.get("state") == state, f"approval.state {approval.get('state')!r}, expected {state!r}")
    e.that(sc.get("pending_reason") is None, f"pending_reason {sc.get('pending_reason')!r}, expected null")
    e.that(decision.get("via") == via, f"decision.via {decision.get('via')!r}, expected {via!r}")
    if by is not None:
        e.that(decision.get("by") == by, f"decision.by {decision.get('by')!r}, expected {by!r}")
    if reason is not None:
        e.that(decision.get("reason") == reason, f"decision.reason {decision.get('reason')!r}, expected {reason!r}")
    return approval


def request_args(run: Run, check: int, risk: str = "medium", **extra: Any) -> dict[str, Any]:
    return {
        "summary": f"interop check {check} ({run.mode}): deploy the interop service",
        "action": run.action(check),
        "risk": risk,
        "preview": f"would deploy interop for check {check}",
        **extra,
    }


# ---------------------------------------------------------------------------------------------
# The checks. Each fills its Expect; an exception fails the check with what it had found.


async def check_approve(run: Run, e: Expect, client: Client, person: Person) -> None:
    reason = "looks right to me"
    person.expect(approve(reason))
    sc = await tool(run, e, client, "approval_request", request_args(run, 1))
    e.note(summary_of(sc))
    approval = expect_decided(e, sc, "approved", "elicitation_form", by=EXPECTED_ACTOR, reason=reason)
    e.that(len(person.asked) == 1, f"the person was asked {len(person.asked)} time(s), expected once")
    if person.request_ids:
        # Legacy: a server-to-client `elicitation/create` request (a JSON-RPC id); 2026-07-28:
        # an input request the SDK found in an input-required result (the input key, a name).
        rid = person.request_ids[0]
        input_key = isinstance(rid, str) and not rid.isdigit()
        how = "an input-required result" if input_key else "an elicitation/create request"
        e.note(f"asked through {how} (request id {rid!r})")
        e.that(input_key != run.legacy, f"asked through {how} (request id {rid!r}) in mode {run.mode}")
    if person.asked:
        form = person.asked[0]
        if e.that(isinstance(form, types.ElicitRequestFormParams), f"not a form elicitation: {form!r}"):
            assert isinstance(form, types.ElicitRequestFormParams)
            schema = form.requested_schema
            props = schema.get("properties", {}) if isinstance(schema, dict) else {}
            options = [o.get("const") for o in props.get("decision", {}).get("oneOf", []) if isinstance(o, dict)]
            e.that(sorted(options) == ["approve", "reject"], f"decision options {options!r}")
            e.that("reason" in props, f"no reason field in the form: {sorted(props)}")
            e.that(run.action(1)["service"] in form.message, "the form message does not show the action")
    approval_id = approval.get("id")
    if not e.that(isinstance(approval_id, str), f"no approval id in {sc!r}"):
        return
    run.ids[1] = approval_id
    run.decisions += 1
    run.approved.append(approval_id)
    got = await tool(run, e, client, "approval_get", {"approval_id": approval_id})
    decision = decision_of(got)
    e.that(got.get("state") == "approved", f"approval_get state {got.get('state')!r}")
    e.that(decision.get("via") == "elicitation_form", f"approval_get decision.via {decision.get('via')!r}")
    e.that(
        str(decision.get("by", "")).startswith("client:"), f"approval_get decision.by {decision.get('by')!r}"
    )
    e.that(decision.get("reason") == reason, f"approval_get decision.reason {decision.get('reason')!r}")
    e.that(got.get("action") == run.action(1), f"approval_get action {got.get('action')!r}")


async def check_reject(run: Run, e: Expect, client: Client, person: Person) -> None:
    reason = "not during the freeze"
    person.expect(reject(reason))
    sc = await tool(run, e, client, "approval_request", request_args(run, 2, risk="high"))
    e.note(summary_of(sc))
    approval = expect_decided(e, sc, "rejected", "elicitation_form", by=EXPECTED_ACTOR, reason=reason)
    e.that(len(person.asked) == 1, f"the person was asked {len(person.asked)} time(s), expected once")
    run.ids[2] = approval.get("id", "")
    run.decisions += 1


async def check_decline(run: Run, e: Expect, client: Client, person: Person) -> None:
    person.expect(Answer("decline"))
    sc = await tool(run, e, client, "approval_request", request_args(run, 3, risk="low"))
    e.note(summary_of(sc))
    approval = expect_decided(e, sc, "rejected", "elicitation_form", by=EXPECTED_ACTOR)
    cause = decision_of(approval).get("cause")
    e.that(isinstance(cause, str) and "declined" in cause.lower(), f"decision.cause {cause!r} (expected 'declined')")
    run.ids[3] = approval.get("id", "")
    run.decisions += 1


async def check_cancel(run: Run, e: Expect, client: Client, person: Person) -> None:
    person.expect(Answer("cancel"))
    sc = await tool(run, e, client, "approval_request", request_args(run, 4))
    e.note(summary_of(sc))
    approval = expect_decided(e, sc, "cancelled", "elicitation_form", by=EXPECTED_ACTOR)
    run.ids[4] = approval.get("id", "")
    run.decisions += 1
    if approval.get("id"):
        got = await tool(run, e, client, "approval_get", {"approval_id": approval["id"]})
        e.that(got.get("state") == "cancelled", f"approval_get state {got.get('state')!r}")


async def check_slow_person(run: Run, e: Expect, client: Client, person: Person) -> None:
    reason = "took a while to read it"
    person.expect(approve(reason, delay=SLOW_ANSWER_SECONDS))
    notes: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append((progress, total, message))

    started = time.monotonic()
    sc = await tool(
        run, e, client, "approval_request", request_args(run, 5), progress=on_progress if run.legacy else None
    )
    waited = time.monotonic() - started
    e.note(f"waited {waited:.2f}s, {len(notes)} progress notification(s); {summary_of(sc)}")
    approval = expect_decided(e, sc, "approved", "elicitation_form", by=EXPECTED_ACTOR, reason=reason)
    e.that(waited >= SLOW_ANSWER_MIN_WAIT, f"the call returned after {waited:.2f}s, before the person answered")
    if run.legacy:
        e.that(bool(notes), "no progress notification arrived while the person took their time")
        e.that(
            all(isinstance(p, (int, float)) for p, _, _ in notes), f"progress values {[p for p, _, _ in notes]!r}"
        )
    if approval.get("id"):
        run.ids[5] = approval["id"]
        run.approved.append(approval["id"])
    run.decisions += 1


async def check_critical(run: Run, e: Expect, client: Client, person: Person) -> None:
    person.expect(None)
    sc = await tool(run, e, client, "approval_request", request_args(run, 6, risk="critical"))
    e.note(summary_of(sc))
    approval = sc.get("approval") if isinstance(sc.get("approval"), dict) else {}
    approval_id = approval.get("id")
    command = sc.get("decide_command")
    e.that(sc.get("state") == "pending", f"state {sc.get('state')!r}, expected 'pending'")
    # The SDK declares URL elicitation with its callback, so the person is sent to the console
    # page; this scripted person dismisses it, which decides nothing.
    e.that(
        sc.get("pending_reason") == "console_declined",
        f"pending_reason {sc.get('pending_reason')!r}, expected 'console_declined'",
    )
    forms = [p for p in person.asked if getattr(p, "mode", "form") != "url"]
    urls = [p for p in person.asked if getattr(p, "mode", "form") == "url"]
    e.that(not forms, f"the person was shown a form {len(forms)} time(s) for a critical action")
    page = f"/approvals/{approval_id}"
    e.that(
        len(urls) == 1 and urls[0].url.endswith(page) and urls[0].url == sc.get("decide_url"),
        f"expected one URL elicitation for the console page {sc.get('decide_url')!r}, got {[u.url for u in urls]}",
    )
    person.expect(None)
    e.that(
        isinstance(command, str) and f"approvals approve {approval_id}" in command,
        f"decide_command {command!r} does not contain 'approvals approve {approval_id}'",
    )
    if not isinstance(approval_id, str):
        return
    run.ids[6] = approval_id
    code, output = await cli(run, "approve", approval_id, "--reason", "ok", "--yes")
    if not e.that(code == 0, f"CLI approve exited {code}: {output}"):
        return
    run.decisions += 1
    run.approved.append(approval_id)
    again = await tool(run, e, client, "approval_request", {"approval_id": approval_id})
    e.note(f"after the CLI: {summary_of(again)}")
    expect_decided(e, again, "approved", "cli", reason="ok")
    e.that(not person.asked, "the person was asked in the client when asked again by id")
    by = decision_of(again.get("approval")).get("by")
    e.that(isinstance(by, str) and by.startswith("user:"), f"decision.by {by!r}, expected user:...")


async def check_client_cancels(run: Run, e: Expect, client: Client, person: Person) -> None:
    hold = anyio.Event()
    person.expect(approve("should never be recorded", hold=hold))
    try:
        with anyio.move_on_after(CANCEL_AFTER_SECONDS) as scope:
            sc = await client.call_tool("approval_request", request_args(run, 7))
            e.that(False, f"the call returned before it was cancelled: {sc.structured_content!r}")
        e.that(scope.cancelled_caught, "the call was not cancelled")
        e.that(len(person.asked) == 1, f"the person was asked {len(person.asked)} time(s), expected once")
        # Give the server a moment to see the cancellation, then look at the approval.
        await anyio.sleep(0.5)
        listed = await tool(run, e, client, "approval_list", {"state": "pending", "limit": 200})
        pending = [a for a in listed.get("approvals", []) if a.get("action") == run.action(7)]
        if not e.that(len(pending) == 1, f"{len(pending)} pending approval(s) for the cancelled call's action"):
            return
        approval_id = pending[0]["id"]
        run.ids[7] = approval_id
        got = await tool(run, e, client, "approval_get", {"approval_id": approval_id})
        e.that(
            got.get("state") == "pending", f"approval_get state {got.get('state')!r} after the cancel, expected pending"
        )
        e.that(got.get("decision") is None, f"approval_get decision {got.get('decision')!r}, expected null")
        e.note(f"question withdrawn in the client: {person.withdrawn > 0}")
        code, output = await cli(run, "approve", approval_id, "--reason", "approved at the terminal", "--yes")
        if not e.that(code == 0, f"CLI approve after the cancel exited {code}: {output}"):
            return
        run.decisions += 1
        run.approved.append(approval_id)
        got = await tool(run, e, client, "approval_get", {"approval_id": approval_id})
        decision = decision_of(got)
        e.that(got.get("state") == "approved", f"approval_get state {got.get('state')!r} after the CLI approved")
        e.that(decision.get("via") == "cli", f"decision.via {decision.get('via')!r}, expected 'cli'")
    finally:
        hold.set()  # let the scripted person go, if the server never withdrew the form


async def check_no_elicitation(run: Run, e: Expect, client: Client) -> None:
    sc = await tool(run, e, client, "approval_request", request_args(run, 8))
    e.note(f"first: {summary_of(sc)}")
    approval = sc.get("approval") if isinstance(sc.get("approval"), dict) else {}
    approval_id = approval.get("id")
    command = sc.get("decide_command")
    e.that(sc.get("state") == "pending", f"state {sc.get('state')!r}, expected 'pending'")
    e.that(
        sc.get("pending_reason") == "no_elicitation",
        f"pending_reason {sc.get('pending_reason')!r}, expected 'no_elicitation'",
    )
    e.that(
        isinstance(command, str) and f"approvals approve {approval_id}" in command,
        f"decide_command {command!r} does not contain 'approvals approve {approval_id}'",
    )
    if not isinstance(approval_id, str):
        return
    run.ids[8] = approval_id
    cli_result: dict[str, Any] = {}

    async def person_at_terminal() -> None:
        await anyio.sleep(CLI_DELAY_SECONDS)
        code, output = await cli(run, "approve", approval_id, "--reason", "fine by me", "--yes")
        cli_result.update(code=code, output=output, done=time.monotonic())

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(person_at_terminal)
        again = {"approval_id": approval_id, "wait_seconds": WAIT_SECONDS}
        waited = await tool(run, e, client, "approval_request", again)
        returned = time.monotonic()
    total = returned - started
    e.that(cli_result.get("code") == 0, f"CLI approve exited {cli_result.get('code')}: {cli_result.get('output')}")
    if cli_result.get("code") == 0:
        run.decisions += 1
        run.approved.append(approval_id)
    late = returned - cli_result.get("done", returned)
    e.note(f"waiting call: {total:.2f}s, {late:.2f}s after the CLI finished; {summary_of(waited)}")
    expect_decided(e, waited, "approved", "cli", reason="fine by me")
    e.that(total >= CLI_DELAY_SECONDS * 0.9, f"the waiting call returned after {total:.2f}s, before the CLI ran")
    e.that(late <= WAITING_CALL_LATE_LIMIT, f"the waiting call returned {late:.2f}s after the CLI decided")
    e.that(total < WAITING_CALL_TOTAL_LIMIT, f"the waiting call took {total:.2f}s")


async def check_final(run: Run, e: Expect) -> None:
    approval_id = run.ids.get(1)
    if not e.that(bool(approval_id), "check 1 recorded no approval"):
        return
    assert approval_id is not None
    code, output = await cli(run, "reject", approval_id, "--reason", "x")
    e.note(f"exit {code}: {output}")
    e.that(code == 1, f"CLI reject of the approved {approval_id} exited {code}, expected 1: {output}")


async def check_audit(run: Run, e: Expect, client: Client) -> None:
    page = await tool(run, e, client, "audit_query", {"action": "approval.approved", "limit": 500})
    events = [ev for ev in page.get("events", []) if isinstance(ev, dict)]
    subjects = {ev.get("subject") for ev in events}
    missing = [i for i in run.approved if i not in subjects]
    e.that(bool(run.approved), "no approval was approved above")
    e.that(not missing, f"approved approvals missing from the audit: {missing}")
    e.that(
        all(ev.get("action") == "approval.approved" for ev in events),
        f"actions {sorted({str(ev.get('action')) for ev in events})}",
    )
    first = [ev for ev in events if ev.get("subject") == run.ids.get(1)]
    e.that(
        len(first) == 1 and first[0].get("actor") == EXPECTED_ACTOR,
        f"check 1's approval event actors {[ev.get('actor') for ev in first]}, expected [{EXPECTED_ACTOR!r}]",
    )
    verified = await tool(run, e, client, "audit_verify", {})
    signatures = verified.get("signatures") if isinstance(verified.get("signatures"), dict) else {}
    valid = signatures.get("valid")
    e.note(
        f"{len(events)} approval.approved event(s) for {len(run.approved)} approval(s); "
        f"ok={verified.get('ok')!r}, signatures={json.dumps(signatures)}; {run.decisions} decision(s)"
    )
    e.that(verified.get("ok") is True, f"audit_verify ok={verified.get('ok')!r}")
    e.that(
        isinstance(valid, int) and valid >= run.decisions,
        f"signatures.valid={valid!r}, expected >= {run.decisions} decision(s)",
    )
    e.that(signatures.get("invalid") in (0, None), f"signatures.invalid={signatures.get('invalid')!r}")


# ---------------------------------------------------------------------------------------------


async def step(r: Report, label: str, check: Callable[[Expect], Awaitable[None]]) -> None:
    e = Expect()
    try:
        with anyio.fail_after(CHECK_TIMEOUT_SECONDS):
            await check(e)
    except Exception as exc:  # one check failing must not stop the others
        traceback.print_exception(exc, file=sys.stderr)
        e.problems.append(f"raised {type(exc).__name__}: {exc}")
    r.check(label, not e.problems, "; ".join(e.problems) if e.problems else "; ".join(e.notes))


async def list_schemas(run: Run, client: Client) -> None:
    cursor: str | None = None
    for _ in range(100):
        page = await client.list_tools(cursor=cursor)
        for listed in page.tools:
            if listed.output_schema is not None:
                run.schemas[listed.name] = listed.output_schema
        cursor = page.next_cursor
        if cursor is None:
            break


async def run_era(r: Report, binary: str, data_dir: Path, mode: str) -> None:
    run = Run(mode=mode, binary=binary, data_dir=data_dir)
    p = f"[{mode}]"
    person = Person()
    async with client_for(run, person) as client:
        await list_schemas(run, client)
        await step(r, f"{p} 1 approve via the form", lambda e: check_approve(run, e, client, person))
        await step(r, f"{p} 2 reject via the form, with a reason", lambda e: check_reject(run, e, client, person))
        await step(r, f"{p} 3 decline -> rejected", lambda e: check_decline(run, e, client, person))
        await step(r, f"{p} 4 cancel -> cancelled", lambda e: check_cancel(run, e, client, person))
        slow = "slow person: the call waits" + (" with progress notifications" if run.legacy else "")
        await step(r, f"{p} 5 {slow}", lambda e: check_slow_person(run, e, client, person))
        await step(
            r,
            f"{p} 6 critical risk: no form, the console page instead; the CLI decides",
            lambda e: check_critical(run, e, client, person),
        )
        # Legacy: the server withdraws its elicitation. 2026-07-28: the client never retries.
        await step(
            r,
            f"{p} 7 client cancels the waiting call: approval stays pending, CLI decides",
            lambda e: check_client_cancels(run, e, client, person),
        )
    # A client that declares no elicitation, on the same data directory.
    async with client_for(run, None) as bare:
        await list_schemas(run, bare)
        await step(
            r,
            f"{p} 8 no elicitation: pending with decide_command, wait_seconds returns the CLI decision",
            lambda e: check_no_elicitation(run, e, bare),
        )
        await step(r, f"{p} 9 decisions are final: CLI reject of check 1 exits 1", lambda e: check_final(run, e))
        await step(
            r, f"{p} 10 audit lists the approvals, the signed chain verifies", lambda e: check_audit(run, e, bare)
        )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True, help="path of the built mcp-coordinator binary")
    parser.add_argument("--data-dir", required=True, help="scratch directory; each run gets a subdirectory")
    args = parser.parse_args()
    root = Path(args.data_dir)

    print(f"mcp SDK {CLIENT_VERSION} (Python {sys.version.split()[0]}) against {args.binary}", flush=True)
    r = Report(DETAIL_LIMIT)
    for mode in ("legacy", MODERN_VERSION):
        try:
            with anyio.fail_after(RUN_TIMEOUT_SECONDS):
                await run_era(r, args.binary, root / f"approvals_{mode.replace('-', '_')}", mode)
        except Exception as exc:  # the run stops at its first unexpected error; the next era still goes
            traceback.print_exception(exc, file=sys.stderr)
            r.check(f"[{mode}] run", False, f"raised {type(exc).__name__}: {exc}")
    print(f"{r.passed} passed, {r.failed} failed", flush=True)
    return 0 if r.failed == 0 and r.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
