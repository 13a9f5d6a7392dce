"""A small tmpfs for the tests that need a full or read-only disk: mounted as root, or in a user
and mount namespace of its own (any user, where the kernel allows it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


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


@dataclass(frozen=True)
class SmallDiskRun:
    """What a command did with a small tmpfs under it."""

    returncode: int
    stdout: str
    stderr: str
    left_on_disk: list[str]  # files on the tmpfs when the command had ended, hidden ones too


# Runs as root of a new user and mount namespace: mount the tmpfs, note that it is mounted,
# run the command, list what it left there (before the namespace, and the tmpfs, go away).
_ON_SMALL_DISK = """
mount -t tmpfs -o "size=$1" tmpfs "$2" || exit 97
touch "$3"
disk=$2 listing=$4
shift 4
"$@"
code=$?
find "$disk" -mindepth 1 > "$listing"
exit $code
"""


def fill(folder: Path) -> Path:
    """Write zeros until the file system holding ``folder`` is full; the filler file."""
    filler = folder / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def run_on_small_disk(
    argv: list[str],
    disk: Path,
    size_bytes: int,
    env: dict[str, str],
    cwd: Path,
    timeout_s: float = 300,
) -> SmallDiskRun:
    """``argv`` with a ``size_bytes`` tmpfs mounted on ``disk`` (an empty folder), in a user
    and mount namespace: no root needed, and nothing stays mounted. Skips the test where
    ``unshare`` is missing or the kernel refuses the namespace or the mount."""
    if shutil.which("unshare") is None:
        pytest.skip("a full disk is a tmpfs in a user namespace, and unshare is not installed")
    disk.mkdir(parents=True, exist_ok=True)
    notes = disk.parent / f".{disk.name}-notes"
    notes.mkdir(exist_ok=True)
    mounted, listing = notes / "mounted", notes / "listing"
    namespace = ["unshare", "--user", "--map-root-user", "--mount"]
    script = ["sh", "-c", _ON_SMALL_DISK, "sh", str(size_bytes), str(disk), str(mounted)]
    run = subprocess.run(
        [*namespace, *script, str(listing), *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if not mounted.exists():
        pytest.skip(f"no tmpfs in a user namespace here (rc {run.returncode}): {run.stderr}")
    left = listing.read_text().splitlines() if listing.exists() else ["(the listing is missing)"]
    return SmallDiskRun(run.returncode, run.stdout, run.stderr, left)
