"""A small tmpfs for the tests that need a full or read-only disk, mounted as root."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def mount_tmpfs(target: Path, options: str) -> bool:
    """A tmpfs with ``options`` (``size=4m``, ``ro,size=1m``) on ``target``; False where this
    process may not mount one (not root, or no mount(8)): the caller skips."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    target.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True
    )
    return mounted.returncode == 0


def unmount(target: Path) -> None:
    """Lazily, so a process that still holds a file there does not keep it mounted."""
    subprocess.run(["umount", "-l", str(target)], capture_output=True)
