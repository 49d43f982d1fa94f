"""Check bookkeeping shared by the interop scripts: one PASS/FAIL line per check, and the
closing `N passed, M failed` line the Rust runner reads."""

from __future__ import annotations

import sys
import traceback


class Report:
    """Counts checks and prints one line per check."""

    def __init__(self, detail_limit: int = 300) -> None:
        self.passed = 0
        self.failed = 0
        # Longest detail printed after a passing check (a failing one prints it whole).
        self.detail_limit = detail_limit

    def check(self, label: str, ok: bool, detail: str = "") -> bool:
        if ok and len(detail) > self.detail_limit:
            detail = detail[: self.detail_limit] + "..."
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print(f"{'PASS' if ok else 'FAIL'} {label}" + (f": {detail}" if detail else ""), flush=True)
        return ok

    def crash(self, label: str, exc: BaseException) -> None:
        self.failed += 1
        print(f"FAIL {label}: raised {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exception(exc, file=sys.stderr)


class Expect:
    """The conditions of one check: what failed, and notes for the PASS line."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []

    def that(self, ok: object, what: str) -> bool:
        if not ok:
            self.problems.append(what)
        return bool(ok)
