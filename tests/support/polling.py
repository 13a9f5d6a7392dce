"""Waiting for a condition, with a deadline and a message that says what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from support.processes import Proc


def wait_until(
    predicate: Callable[[], Any],
    timeout_s: float,
    what: str,
    interval_s: float = 0.05,
    watch: Sequence[Proc] = (),
) -> Any:
    """``predicate()``'s first truthy value; AssertionError after ``timeout_s``, or as soon as
    a process in ``watch`` exits (its log in the message)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        for proc in watch:
            if not proc.alive:
                raise AssertionError(f"{proc.name} exited while waiting for {what}:\n{proc.log()}")
        if time.monotonic() > deadline:
            logs = "".join(f"\n--- {p.name}\n{p.log()}" for p in watch)
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{logs}")
        time.sleep(interval_s)
