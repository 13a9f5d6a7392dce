"""API keys: ``dscm_<id>_<secret>``, stored only as sha256, each with a tenant and roles.

Keys are random 256-bit secrets, so a plain sha256 is enough (no password stretching needed); the
stored hash is compared in constant time. The key file is re-read when it changes, so keys made
with ``dscm keys create`` work without a restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from service.runtime.config import ApiKeyEntry, KeyRole, Settings

KEY_PREFIX = "dscm"
_ENTRIES = TypeAdapter(list[ApiKeyEntry])


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant and what it may do."""

    tenant: str
    roles: frozenset[KeyRole]
    key_id: str | None

    def has(self, role: KeyRole) -> bool:
        """Whether the key holds ``role``; admin holds every role."""
        return role in self.roles or "admin" in self.roles

    @property
    def is_admin(self) -> bool:
        """Whether the key holds the admin role."""
        return "admin" in self.roles

    @property
    def tenant_scope(self) -> str | None:
        """The tenant whose jobs this caller sees; None: every tenant's (an admin key)."""
        return None if self.is_admin else self.tenant


def hash_key(key: str) -> str:
    """The sha256 hex digest of an API key: the key file stores digests, never keys."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """Returns ``(key_id, key)``."""
    key_id = secrets.token_hex(4)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    """The id part of a ``dscm_<id>_<secret>`` key, or None for anything else."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    return parts[1]


def read_key_file(path: Path) -> list[ApiKeyEntry]:
    """The entries of the API key file, none when it does not exist; ValueError naming the file when
    it is unreadable or malformed."""
    if not path.exists():
        return []
    try:
        return _ENTRIES.validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise ValueError(f"API key file {path} is unreadable or malformed: {exc}") from exc


def write_key_file(path: Path, entries: list[ApiKeyEntry]) -> None:
    """Replace ``path`` atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    data = json.dumps([e.model_dump() for e in entries], indent=2) + "\n"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(data)
    os.replace(temp, path)


def add_key(path: Path, tenant: str, roles: list[str]) -> tuple[ApiKeyEntry, str]:
    """Create a key, append its hash to ``path`` and return the entry and the key (shown once)."""
    entries = read_key_file(path)
    key_id, key = new_key()
    entry = ApiKeyEntry.model_validate(
        {
            "id": key_id,
            "tenant": tenant,
            "roles": roles,
            "sha256": hash_key(key),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    write_key_file(path, [*entries, entry])
    return entry, key


def remove_key(path: Path, key_id: str) -> bool:
    """Remove the key with this id from the key file; False when there was none."""
    entries = read_key_file(path)
    kept = [e for e in entries if e.id != key_id]
    if len(kept) == len(entries):
        return False
    write_key_file(path, kept)
    return True


class Keyring:
    """Looks up a presented key among the configured hashes."""

    def __init__(self, settings: Settings) -> None:
        self._static = list(settings.api_keys)
        self._path = settings.effective_api_keys_file
        self._anonymous = settings.anonymous_tenant
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._by_id: dict[str, list[ApiKeyEntry]] = {}
        self.reload()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def reload(self) -> None:
        """Read the key file again (beside the keys given in settings) and swap the whole keyring at
        once."""
        stamp = self._file_stamp()
        entries = self._static + read_key_file(self._path)
        by_id: dict[str, list[ApiKeyEntry]] = {}
        for entry in entries:
            by_id.setdefault(entry.id, []).append(entry)
        with self._lock:
            self._by_id, self._stamp = by_id, stamp

    def _refresh(self) -> None:
        if self._file_stamp() != self._stamp:
            # A broken file keeps the last good keys in service.
            with contextlib.suppress(ValueError):
                self.reload()

    @property
    def size(self) -> int:
        """The number of keys loaded."""
        return sum(len(v) for v in self._by_id.values())

    def anonymous(self) -> Principal | None:
        """The principal for requests without a key (submit and read, in DSCM_ANONYMOUS_TENANT), or
        None when anonymous access is off."""
        if self._anonymous is None:
            return None
        return Principal(self._anonymous, frozenset({"submit", "read"}), None)

    def authenticate(self, key: str) -> Principal | None:
        """The principal a key stands for, or None for a malformed or unknown key; the key file is
        re-read when it changed and digests are compared in constant time."""
        key_id = key_id_of(key)
        if key_id is None:
            return None
        self._refresh()
        digest = hash_key(key)
        for entry in self._by_id.get(key_id, []):
            if hmac.compare_digest(entry.sha256, digest):
                return Principal(entry.tenant, frozenset(entry.roles), entry.id)
        return None
