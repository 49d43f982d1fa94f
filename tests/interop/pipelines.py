#!/usr/bin/env python3
"""Pipeline approval stages through the official MCP Python SDK's elicitation callback.

Usage: pipelines.py --binary PATH --data-dir DIR

A pipeline `prep -> gate (approval) -> ship` runs while this script is both the assistant
(waiting on `pipeline_run` with a progress callback) and the worker agent (claiming and
reporting tasks on the same session, concurrently):

 1. legacy era, the person approves in the form -> the run completes; the gate's output names
    the person and the reason; `ship` ran after the decision; progress was reported
 2. legacy era, the person rejects -> the run fails, `ship` is skipped and never queued
 3. 2026-07-28 era: the waiting call returns `needs_approval`; `approval_request` with the
    approval id asks through an input-required result, the person approves, and
    `pipeline_run_get` with `wait_seconds` sees the run complete
 4. the audit chain verifies

Prints one line per check and, last, `N passed, M failed`. Exits 0 only when every check
passed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters, types
from mcp.client.session import ClientRequestContext

from report import Report  # tests/interop/report.py, beside this script

CLIENT_NAME = "mcp-coordinator-pipelines"
CLIENT_VERSION = importlib.metadata.version("mcp")
PERSON = f"client:{CLIENT_NAME}/{CLIENT_VERSION}"
READ_TIMEOUT_SECONDS = 30
CHECK_TIMEOUT_SECONDS = 60

PIPELINE = {
    "name": "gated-release",
    "description": "build, sign off, ship",
    "stages": [
        {"name": "prep", "type": "etl"},
        {"name": "gate", "type": "review", "approval": True, "risk": "medium"},
        {"name": "ship", "type": "etl"},
    ],
    "dependencies": [{"from": "prep", "to": "gate"}, {"from": "gate", "to": "ship"}],
}


@dataclass
class Person:
    """The SDK's elicitation callback: answers every form with `decision` and records it."""

    decision: str = "approve"
    reason: str = ""
    asked: list[str] = field(default_factory=list)

    async def __call__(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        self.asked.append(getattr(params, "message", ""))
        return types.ElicitResult(action="accept", content={"decision": self.decision, "reason": self.reason})


def client_for(binary: str, data_dir: Path, mode: str, person: Person) -> Client:
    params = StdioServerParameters(
        command=binary,
        args=["--data-dir", str(data_dir), "--log-level", "warn", "--toolsets", "all"],
        env={"HOME": str(data_dir / "home")},
    )
    return Client(
        params,
        mode=mode,
        client_info=types.Implementation(name=CLIENT_NAME, version=CLIENT_VERSION),
        read_timeout_seconds=READ_TIMEOUT_SECONDS,
        elicitation_callback=person,
    )


async def tool(client: Client, name: str, arguments: dict[str, Any], progress=None) -> dict[str, Any]:
    result = await client.call_tool(name, arguments, progress_callback=progress)
    sc = result.structured_content
    if result.is_error or not isinstance(sc, dict):
        raise AssertionError(f"{name}: isError={result.is_error} structuredContent={sc!r} content={result.content!r}")
    return sc


@dataclass
class Worker:
    """A worker agent on the same session: claims `etl` tasks and completes them."""

    token: str
    ran: list[str] = field(default_factory=list)

    async def work(self, client: Client, stop: anyio.Event) -> None:
        while not stop.is_set():
            claimed = await tool(client, "task_claim", {"token": self.token})
            task = claimed.get("task")
            if not task:
                with anyio.move_on_after(0.05):
                    await stop.wait()
                continue
            stage = task["params"]["pipeline"]["stage"]
            self.ran.append(stage)
            await tool(
                client,
                "task_report",
                {"token": self.token, "task_id": task["id"], "result": {"stage": stage, "by": "py"}},
            )


def stage(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in run["stages"] if s["name"] == name)


async def run_with_worker(client: Client, worker: Worker, call) -> dict[str, Any]:
    """Runs `call` (the assistant's waiting call) while the worker works; returns its result."""
    out: dict[str, Any] = {}
    stop = anyio.Event()

    async def assistant() -> None:
        out.update(await call())
        stop.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.work, client, stop)
        tg.start_soon(assistant)
    return out


async def legacy(r: Report, binary: str, data_dir: Path) -> None:
    person = Person()
    async with client_for(binary, data_dir, "legacy", person) as client:
        await tool(client, "pipeline_create", PIPELINE)
        reg = await tool(client, "agent_register", {"name": "py-worker", "capabilities": ["etl"]})
        worker = Worker(reg["token"])

        progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append((p, total, message))

        # 1. Approved in the form.
        person.decision, person.reason = "approve", "release notes checked"
        with anyio.fail_after(CHECK_TIMEOUT_SECONDS):
            out = await run_with_worker(
                client,
                worker,
                lambda: tool(
                    client,
                    "pipeline_run",
                    {"pipeline": "gated-release", "input": {"tag": "v1"}, "wait_seconds": 45},
                    progress=on_progress,
                ),
            )
        run = out["run"]
        gate = stage(run, "gate")
        r.check(
            "1 legacy: approved in the form -> run completed",
            out["status"] == "completed"
            and len(person.asked) == 1
            and "gate" in person.asked[0]
            and gate["status"] == "completed"
            and gate["output"].get("approved_by") == PERSON
            and gate["output"].get("reason") == "release notes checked"
            and worker.ran == ["prep", "ship"]
            and [p[0] for p in progress] == [0.0, 1.0, 2.0, 3.0],
            f"status={out['status']} asked={len(person.asked)} gate={gate} ran={worker.ran} progress={progress}",
        )

        # 2. Rejected in the form.
        person.decision, person.reason = "reject", "not this week"
        person.asked.clear()
        worker.ran.clear()
        with anyio.fail_after(CHECK_TIMEOUT_SECONDS):
            out = await run_with_worker(
                client,
                worker,
                lambda: tool(client, "pipeline_run", {"pipeline": "gated-release", "wait_seconds": 45}),
            )
        run = out["run"]
        r.check(
            "2 legacy: rejected in the form -> run failed, ship skipped and never queued",
            out["status"] == "failed"
            and len(person.asked) == 1
            and stage(run, "gate")["status"] == "failed"
            and "not this week" in (stage(run, "gate").get("error") or "")
            and stage(run, "ship")["status"] == "skipped"
            and "task_id" not in stage(run, "ship")
            and worker.ran == ["prep"],
            f"status={out['status']} gate={stage(run, 'gate')} ship={stage(run, 'ship')} ran={worker.ran}",
        )
        await tool(client, "agent_deregister", {"token": worker.token})


async def modern(r: Report, binary: str, data_dir: Path) -> None:
    person = Person("approve", "ok from the modern client")
    async with client_for(binary, data_dir, "2026-07-28", person) as client:
        reg = await tool(client, "agent_register", {"name": "py-worker-2", "capabilities": ["etl"]})
        worker = Worker(reg["token"])
        with anyio.fail_after(CHECK_TIMEOUT_SECONDS):
            waited = await run_with_worker(
                client,
                worker,
                lambda: tool(client, "pipeline_run", {"pipeline": "gated-release", "wait_seconds": 45}),
            )
            approval_id = (waited["run"].get("awaiting_approvals") or [None])[0]
            decided = {}
            if approval_id:
                decided = await tool(client, "approval_request", {"approval_id": approval_id})
            done = await run_with_worker(
                client,
                worker,
                lambda: tool(client, "pipeline_run_get", {"run_id": waited["run_id"], "wait_seconds": 45}),
            )
        r.check(
            "3 2026-07-28: needs_approval, approval_request asks, the run completes",
            waited["wait"] == "needs_approval"
            and decided.get("state") == "approved"
            and len(person.asked) == 1
            and done["status"] == "completed"
            and stage(done["run"], "gate")["output"].get("approved_by") == PERSON
            and worker.ran == ["prep", "ship"],
            f"wait={waited['wait']} decided={decided.get('state')} status={done['status']} ran={worker.ran}",
        )
        verify = await tool(client, "audit_verify", {})
        r.check("4 the audit chain verifies", verify.get("ok") is True, str(verify))


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--data-dir", required=True, type=Path)
    args = parser.parse_args()
    (args.data_dir / "home").mkdir(parents=True, exist_ok=True)
    r = Report()
    for label, part in (("legacy", legacy), ("2026-07-28", modern)):
        try:
            await part(r, args.binary, args.data_dir)
        except Exception as exc:  # noqa: BLE001 - report and carry on to the summary
            r.crash(label, exc)
    print(f"{r.passed} passed, {r.failed} failed", flush=True)
    return 0 if r.failed == 0 and r.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
