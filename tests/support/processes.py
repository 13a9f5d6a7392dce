"""A child process in its own session, its output in a log file, ended as a whole group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


class Proc:
    """Started on construction in its own process group; stop() ends the whole group, so a
    failing test leaves nothing behind."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name, self.argv, self.log_path = name, argv, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd or log_path.parent,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        """Everything it has written so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log(self, tail_chars: int = 4000) -> str:
        """The last ``tail_chars`` of its output."""
        return self.output()[-tail_chars:]

    def signal(self, sig: int) -> None:
        """To the main process only, as `docker stop` does to PID 1's child via init."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)

    def signal_group(self, sig: int) -> None:
        """To every process in its group (a prefork pool's children too)."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def wait(self, timeout_s: float) -> float | None:
        """Seconds until it exited, None if it is still running after ``timeout_s``."""
        started = time.monotonic()
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        return time.monotonic() - started

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the group, SIGKILL after ``grace_s``; safe to call twice."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            if not self.alive:
                break
            self.signal_group(sig)
            self.wait(wait_s)
        # Children may outlive the leader (a prefork pool); the group id still names them.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL to the group: no shutdown handler runs."""
        self.signal_group(signal.SIGKILL)
        self.wait(5)
