#!/usr/bin/env python3
"""What MCP does over stdio, over streamable HTTP: the official MCP Python SDK's HTTP client
against `mcp-coordinator serve --http`, with a bearer token, in both protocol eras.

Usage: http_parity.py --binary PATH --data-dir DIR --url URL --token TOKEN --token-name NAME

The server is already running (tests/http_parity.rs starts it on DIR and issues the token).
For each era (mode="legacy": an initialize-era session; mode="2026-07-28": stateless requests):

 1. connect with `Authorization: Bearer`, list the tools, call coordinator_status (era, and
    the caller named by its token)
 2. approvals over HTTP, two clients at once: neither client is asked to decide (no form
    elicitation, no input-required decision: the requester must not decide its own request;
    at most a URL elicitation sends its person to the console's page of its own approval);
    each call waits until a person approves its own approval out of band (the CLI here, the
    console in a team) and returns that approval's outcome
 3. progress and cancellation: a client without elicitation waits on an approval with
    progress notifications, then cancels the call; the server stops waiting (its audit event
    is written at once, not when the wait would have ended) and the approval stays pending
 4. tools/list_changed (legacy: `notifications/tools/list_changed`; 2026-07-28: a
    `subscriptions/listen` event): when another client starts and stops the child instance
    `kid` (the server's config defines it), and when this client turns a toolset off and on
 5. resource subscriptions: two clients subscribe to the same pipeline run (legacy:
    `resources/subscribe`; 2026-07-28: `subscriptions/listen`); both are told when it moves;
    (legacy) after one unsubscribes, the other still is, and the one that left is not

Prints one line per check and, last, `N passed, M failed`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, types
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from report import Report  # tests/interop/report.py, beside this script

MODERN_VERSION = "2026-07-28"
CLIENT_NAME = "mcp-coordinator-http-parity"
CLIENT_VERSION = importlib.metadata.version("mcp")
READ_TIMEOUT_SECONDS = 30
CHECK_TIMEOUT_SECONDS = 40
SIGNAL_TIMEOUT_SECONDS = 10
# Check 3: the call would wait this long; the client cancels it after CANCEL_AFTER.
WAIT_SECONDS = 30
CANCEL_AFTER_SECONDS = 2.5
# ...and the server must have stopped waiting (its audit event written) this soon after.
STOPPED_WITHIN_SECONDS = 6.0
LIST_CHANGED = "notifications/tools/list_changed"
RESOURCE_UPDATED = "notifications/resources/updated"

PIPELINE = {
    "name": "http-parity",
    "description": "two steps a worker does, to watch a run move",
    "stages": [{"name": "one", "type": "etl"}, {"name": "two", "type": "etl"}],
    "dependencies": [{"from": "one", "to": "two"}],
}


class Expect:
    """The conditions of one check: what failed, and notes for the PASS line."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []

    def that(self, ok: object, what: str) -> bool:
        if not ok:
            self.problems.append(what)
        return bool(ok)

    def note(self, what: str) -> None:
        self.notes.append(what)


@dataclass
class Person:
    """The elicitation callback: approves every form, and records how it was asked."""

    asked: list[Any] = field(default_factory=list)
    request_ids: list[Any] = field(default_factory=list)

    async def __call__(self, context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.asked.append(params)
        self.request_ids.append(context.request_id)
        return types.ElicitResult(action="accept", content={"decision": "approve", "reason": "fine over HTTP"})


@dataclass
class Heard:
    """The server's notifications one client received, by method."""

    messages: list[tuple[str, Any]] = field(default_factory=list)
    event: anyio.Event = field(default_factory=anyio.Event)

    async def __call__(self, message: Any) -> None:
        method = getattr(message, "method", None)
        if isinstance(method, str):
            self.messages.append((method, getattr(message, "params", None)))
            self.event.set()

    def count(self, method: str, uri: str | None = None) -> int:
        return sum(
            1
            for m, p in self.messages
            if m == method and (uri is None or str(getattr(p, "uri", "")) == uri)
        )

    async def wait_for(self, method: str, uri: str | None = None, at_least: int = 1) -> bool:
        with anyio.move_on_after(SIGNAL_TIMEOUT_SECONDS):
            while self.count(method, uri) < at_least:
                self.event = anyio.Event()
                await self.event.wait()
        return self.count(method, uri) >= at_least


@dataclass
class Run:
    mode: str
    binary: str
    data_dir: Path
    url: str
    token: str
    token_name: str

    @property
    def legacy(self) -> bool:
        return self.mode == "legacy"

    @property
    def p(self) -> str:
        return f"[{self.mode}]"

    def action(self, check: int) -> dict[str, Any]:
        return {"tool": "deploy", "service": "http-parity", "check": check, "mode": self.mode}


@asynccontextmanager
async def connect(
    run: Run,
    person: Person | None = None,
    heard: Heard | None = None,
    token: str | None = None,
) -> AsyncIterator[Client]:
    """The SDK's streamable HTTP client at the server, with the bearer token, in `run.mode`."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token or run.token}"})
    async with http:
        client = Client(
            streamable_http_client(run.url, http_client=http),
            mode=run.mode,
            client_info=types.Implementation(name=CLIENT_NAME, version=CLIENT_VERSION),
            read_timeout_seconds=READ_TIMEOUT_SECONDS,
            elicitation_callback=person,
            message_handler=heard,
        )
        async with client:
            yield client


async def tool(
    client: Client,
    name: str,
    arguments: dict[str, Any],
    progress: Callable[[float, float | None, str | None], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    result = await client.call_tool(name, arguments, progress_callback=progress)
    sc = result.structured_content
    if result.is_error or not isinstance(sc, dict):
        raise AssertionError(f"{name}: isError={result.is_error} structuredContent={sc!r} content={result.content!r}")
    return sc


async def cli(run: Run, *args: str) -> tuple[int, str]:
    argv = [run.binary, "--data-dir", str(run.data_dir), "--log-level", "warn", *args]
    with anyio.fail_after(15):
        done = await anyio.run_process(argv, check=False, stdin=subprocess.DEVNULL, env=dict(os.environ))
    return done.returncode, (done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")).strip()


def request_args(run: Run, check: int, **extra: Any) -> dict[str, Any]:
    return {
        "summary": f"http parity check {check} ({run.mode})",
        "action": run.action(check),
        "risk": "medium",
        "preview": f"would deploy http-parity for check {check}",
        **extra,
    }


# ---------------------------------------------------------------------------------------------


async def check_connect(run: Run, e: Expect) -> None:
    async with connect(run) as client:
        version = client.protocol_version
        e.note(f"protocol {version}")
        if run.legacy:
            e.that(version.startswith("2025-"), f"negotiated {version!r}, expected a 2025 handshake version")
        else:
            e.that(version == MODERN_VERSION, f"negotiated {version!r}")
        names = [t.name for t in (await client.list_tools()).tools]
        for wanted in ("coordinator_status", "approval_request", "pipeline_run", "toolsets"):
            e.that(wanted in names, f"{wanted} not listed: {names}")
        status = await tool(client, "coordinator_status", {})
        era = "legacy" if run.legacy else "stateless"
        e.that(status.get("era") == era, f"era {status.get('era')!r}, expected {era!r}")
        who = str(status.get("client"))
        e.that(CLIENT_NAME in who and run.token_name in who, f"client {who!r} does not name the token's principal")
        e.note(f"client {who!r}")


async def check_elicitation(run: Run, e: Expect) -> None:
    """Two clients ask at once. Over HTTP neither client is asked to decide (its answer would
    be the requester's own): each call waits, with the approval pending, until a person decides
    it out of band (here at the CLI), and each gets its own approval's outcome."""
    people = [Person(), Person()]
    results: list[dict[str, Any]] = [{}, {}]

    async def ask(i: int) -> None:
        async with connect(run, person=people[i]) as client:
            results[i] = await tool(client, "approval_request", request_args(run, 20 + i, wait_seconds=25))

    async def decide() -> None:
        decided: set[str] = set()
        with anyio.fail_after(20):
            while len(decided) < 2:
                code, out = await cli(run, "approvals", "list", "--json")
                if code == 0:
                    # stdout's JSON first, then whatever stderr said.
                    listed = json.JSONDecoder().raw_decode(out[out.index("["):])[0] if "[" in out else []
                    for a in listed:
                        mine = a.get("action") in (run.action(20), run.action(21))
                        if mine and a.get("state") == "pending" and a["id"] not in decided:
                            code, said = await cli(
                                run, "approvals", "approve", a["id"], "--yes", "--reason", "fine over HTTP"
                            )
                            e.that(code == 0, f"approvals approve {a['id']}: {said}")
                            decided.add(a["id"])
                await anyio.sleep(0.2)

    async with anyio.create_task_group() as tg:
        for i in range(2):
            tg.start_soon(ask, i)
        tg.start_soon(decide)
    for i, (person, sc) in enumerate(zip(people, results)):
        approval = sc.get("approval") if isinstance(sc.get("approval"), dict) else {}
        decision = approval.get("decision") or {}
        e.that(sc.get("state") == "approved", f"client {i}: state {sc.get('state')!r}")
        e.that(approval.get("action") == run.action(20 + i), f"client {i}: action {approval.get('action')!r}")
        e.that(decision.get("via") == "cli", f"client {i}: decision.via {decision.get('via')!r}")
        e.that(decision.get("reason") == "fine over HTTP", f"client {i}: decision.reason {decision.get('reason')!r}")
        forms = [p for p in person.asked if getattr(p, "mode", "form") != "url"]
        e.that(not forms, f"client {i} was given a form to decide its own request: {forms!r}")
        # At most a URL elicitation: the console's page of its own approval, where someone
        # else decides.
        own_page = f"/approvals/{approval.get('id')}"
        e.that(
            all(own_page in str(getattr(p, "url", "")) for p in person.asked),
            f"client {i} was sent to another page than {own_page}: {[getattr(p, 'url', None) for p in person.asked]}",
        )
    e.note(
        "no form; each client at most sent to the console's page of its own approval "
        f"({sum(len(p.asked) for p in people)} URL elicitation(s)); decided at the CLI"
    )


async def check_progress_and_cancel(run: Run, e: Expect) -> None:
    notes: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append((progress, total, message))

    async with connect(run) as client:
        started = time.monotonic()
        with anyio.move_on_after(CANCEL_AFTER_SECONDS) as scope:
            result = await client.call_tool(
                "approval_request", request_args(run, 3, wait_seconds=WAIT_SECONDS), progress_callback=on_progress
            )
            e.that(False, f"the call returned before it was cancelled: {result.structured_content!r}")
        cancelled_at = time.monotonic()
        e.that(scope.cancelled_caught, "the call was not cancelled")
        e.that(bool(notes), "no progress notification arrived while the call waited")
        e.note(f"{len(notes)} progress notification(s): {[n[2] for n in notes][:2]}")
        # The server stops waiting when the call is cancelled: its tool.call event is written
        # then, with a duration near the cancel, not after WAIT_SECONDS.
        event = None
        while time.monotonic() - cancelled_at < STOPPED_WITHIN_SECONDS and event is None:
            page = await tool(client, "audit_query", {"action": "tool.call", "subject": "approval_request", "limit": 50})
            for ev in page.get("events", []):
                args = (ev.get("detail") or {}).get("arguments") or {}
                if args.get("action") == run.action(3):
                    event = ev
            if event is None:
                await anyio.sleep(0.2)
        if e.that(event is not None, f"no tool.call event within {STOPPED_WITHIN_SECONDS}s of the cancel"):
            assert event is not None
            duration = (event.get("detail") or {}).get("duration_us", 0) / 1e6
            e.note(f"the server's call lasted {duration:.2f}s (cancelled after {cancelled_at - started:.2f}s)")
            e.that(duration < WAIT_SECONDS / 2, f"the server's call lasted {duration:.2f}s")
        listed = await tool(client, "approval_list", {"state": "pending", "limit": 200})
        pending = [a for a in listed.get("approvals", []) if a.get("action") == run.action(3)]
        e.that(len(pending) == 1, f"{len(pending)} pending approval(s) for the cancelled call")


async def check_list_changed(run: Run, e: Expect) -> None:
    """Told when a child starts and stops (another client starts it: a change for everyone),
    and when this client's own toolsets call changes its list."""
    heard = Heard()
    async with connect(run, heard=heard) as listener, connect(run) as other:

        async def child_comes_and_goes() -> None:
            started = await tool(other, "instance_start", {"type": "kid"})
            e.that(started.get("status") == "running", f"instance_start: {started!r}")
            names = [t.name for t in (await listener.list_tools()).tools]
            e.that("kid__echo" in names, f"kid__echo not listed while kid runs: {names}")
            stopped = await tool(other, "instance_stop", {"instance": "kid"})
            e.that(stopped.get("status") == "stopped", f"instance_stop: {stopped!r}")

        async def own_toolsets() -> None:
            off = await tool(listener, "toolsets", {"disable": "agents"})
            on = await tool(listener, "toolsets", {"enable": "agents"})
            e.that(off.get("changed") is True and on.get("changed") is True, f"toolsets: {off!r} {on!r}")

        if run.legacy:
            # The listener's session is known to the server once it has asked something.
            await listener.list_tools()
            await child_comes_and_goes()
            e.that(await heard.wait_for(LIST_CHANGED, at_least=2), f"child start and stop: heard {heard.messages}")
            before = heard.count(LIST_CHANGED)
            await own_toolsets()
            e.that(
                await heard.wait_for(LIST_CHANGED, at_least=before + 2), f"own toolsets: heard {heard.messages}"
            )
            e.note(f"heard {heard.count(LIST_CHANGED)} {LIST_CHANGED}")
        else:
            for label, change in (("child start and stop", child_comes_and_goes), ("own toolsets", own_toolsets)):
                events: list[Any] = []
                async with listener.listen(tools_list_changed=True) as sub:
                    await change()
                    with anyio.move_on_after(SIGNAL_TIMEOUT_SECONDS):
                        async for event in sub:
                            events.append(event)
                            break
                e.that(bool(events), f"{label}: no subscriptions/listen event for the tool list")
                e.note(f"{label}: {events!r}")


@dataclass
class Worker:
    token: str
    ran: list[str] = field(default_factory=list)

    async def one_stage(self, client: Client) -> str:
        """Claims the next task and completes it; the stage's name."""
        with anyio.fail_after(SIGNAL_TIMEOUT_SECONDS):
            while True:
                claimed = await tool(client, "task_claim", {"token": self.token})
                task = claimed.get("task")
                if task:
                    break
                await anyio.sleep(0.05)
        stage = task["params"]["pipeline"]["stage"]
        await tool(client, "task_report", {"token": self.token, "task_id": task["id"], "result": {"stage": stage}})
        self.ran.append(stage)
        return stage


async def start_run(client: Client, check: str) -> tuple[str, str, Worker]:
    """A run of a two-stage pipeline of its own (its own task type, so that no other run's
    task is claimed for it), and a worker for it."""
    suffix = f"{check}-{uuid.uuid4().hex[:8]}"
    kind = f"etl-{suffix}"
    stages = [dict(s, type=kind) for s in PIPELINE["stages"]]
    pipeline = dict(PIPELINE, name=f"http-parity-{suffix}", stages=stages)
    await tool(client, "pipeline_create", pipeline)
    reg = await tool(client, "agent_register", {"name": f"worker-{suffix}", "capabilities": [kind]})
    started = await tool(client, "pipeline_run", {"pipeline": pipeline["name"]})
    run_id = started["run_id"]
    return run_id, f"coordinator://pipeline-runs/{run_id}", Worker(reg["token"])


async def check_subscriptions_legacy(run: Run, e: Expect) -> None:
    a, b = Heard(), Heard()
    async with connect(run, heard=a) as ca, connect(run, heard=b) as cb, connect(run) as worker_client:
        _, uri, worker = await start_run(worker_client, "legacy")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # resources/subscribe is deprecated, and what is tested
            await ca.subscribe_resource(uri)
            await cb.subscribe_resource(uri)
        await worker.one_stage(worker_client)
        e.that(await a.wait_for(RESOURCE_UPDATED, uri), f"the first subscriber heard {a.messages}")
        e.that(await b.wait_for(RESOURCE_UPDATED, uri), f"the second subscriber heard {b.messages}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await cb.unsubscribe_resource(uri)
        await anyio.sleep(0.5)  # updates already on their way to b
        a_before, b_before = a.count(RESOURCE_UPDATED, uri), b.count(RESOURCE_UPDATED, uri)
        await worker.one_stage(worker_client)
        e.that(
            await a.wait_for(RESOURCE_UPDATED, uri, at_least=a_before + 1),
            f"after the other unsubscribed, the first subscriber heard nothing more ({a_before} update(s) before)",
        )
        await anyio.sleep(0.5)
        e.that(b.count(RESOURCE_UPDATED, uri) == b_before, f"the unsubscribed client still heard updates: {b.messages}")
        e.note(f"a heard {a.count(RESOURCE_UPDATED, uri)}, b {b.count(RESOURCE_UPDATED, uri)}; stages {worker.ran}")


async def check_subscriptions_modern(run: Run, e: Expect) -> None:
    async with connect(run) as ca, connect(run) as cb, connect(run) as worker_client:
        _, uri, worker = await start_run(worker_client, "modern")
        got: dict[str, list[Any]] = {"a": [], "b": []}
        async with ca.listen(resource_subscriptions=[uri]) as sa, cb.listen(resource_subscriptions=[uri]) as sb:
            e.that(list(sa.honored.resource_subscriptions or []) == [uri], f"honored {sa.honored!r}")

            async def drain(name: str, sub: Any) -> None:
                async for event in sub:
                    got[name].append(event)
                    return

            with anyio.move_on_after(SIGNAL_TIMEOUT_SECONDS):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(drain, "a", sa)
                    tg.start_soon(drain, "b", sb)
                    await worker.one_stage(worker_client)
        e.that(bool(got["a"]) and bool(got["b"]), f"events: {got!r}")
        e.note(f"events {got!r}")


async def step(r: Report, label: str, check: Callable[[Expect], Awaitable[None]]) -> None:
    e = Expect()
    try:
        with anyio.fail_after(CHECK_TIMEOUT_SECONDS):
            await check(e)
    except Exception as exc:  # one check failing must not stop the others
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
        e.problems.append(f"raised {type(exc).__name__}: {exc}")
    r.check(label, not e.problems, "; ".join(e.problems) if e.problems else "; ".join(e.notes))


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--token-name", required=True)
    parser.add_argument("--only", help="run only the checks whose label contains this")
    args = parser.parse_args()
    print(f"mcp SDK {CLIENT_VERSION} (Python {sys.version.split()[0]}) against {args.url}", flush=True)
    r = Report(400)
    for mode in ("legacy", MODERN_VERSION):
        run = Run(mode, args.binary, args.data_dir, args.url, args.token, args.token_name)
        checks: list[tuple[str, Callable[[Expect], Awaitable[None]]]] = [
            ("1 bearer: tools/list and a call", lambda e: check_connect(run, e)),
            ("2 two clients at once: each asked about its own approval", lambda e: check_elicitation(run, e)),
            ("3 progress while waiting; the client cancels, the server stops", lambda e: check_progress_and_cancel(run, e)),
            ("4 tools/list_changed: a child starts and stops; own toolsets", lambda e: check_list_changed(run, e)),
            (
                "5 two clients subscribe to one run: both told; one leaves, the other still is",
                lambda e: (check_subscriptions_legacy if run.legacy else check_subscriptions_modern)(run, e),
            ),
        ]
        for label, check in checks:
            if args.only and args.only not in label:
                continue
            await step(r, f"{run.p} {label}", check)
    print(f"{r.passed} passed, {r.failed} failed", flush=True)
    return 0 if r.failed == 0 and r.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
