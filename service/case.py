"""Case identity: the free-text label and the hospital's accession number of one slide.

Both may identify a patient. They are stored with the job, returned to its tenant and written
into the output TIFF's description, and never logged: the checks below never repeat the value
in their messages, and service.logs redacts them from access-log query strings.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

CASE_FIELDS = ("label", "external_id")
LABEL_MAX_CHARS = 200
EXTERNAL_ID_MAX_CHARS = 64
# Accession numbers as hospital systems print them ("S24-01234", "HP 2024/0193"): ASCII letters
# and digits, inner spaces and . _ : / - ; no characters that need escaping in a URL query.
EXTERNAL_ID_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9 ._:/-]*[A-Za-z0-9._:/-])?$"
_EXTERNAL_ID = re.compile(EXTERNAL_ID_PATTERN)
# Control, format, surrogate, unassigned and private-use code points, and line breaks.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Co", "Zl", "Zp"})
_JOINERS = frozenset("\u200c\u200d")  # format characters that scripts and emoji need


def check_label(value: str | None) -> str | None:
    """The label with surrounding spaces removed (None when blank); ValueError when unusable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if len(value) > LABEL_MAX_CHARS:
        raise ValueError(f"a label has at most {LABEL_MAX_CHARS} characters")
    if any(
        unicodedata.category(ch) in _FORBIDDEN_CATEGORIES and ch not in _JOINERS for ch in value
    ):
        raise ValueError("a label is one line of printable text")
    return value


def check_external_id(value: str | None) -> str | None:
    """The accession number (None when blank); ValueError when outside the charset or length."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if len(value) > EXTERNAL_ID_MAX_CHARS:
        raise ValueError(f"an external id has at most {EXTERNAL_ID_MAX_CHARS} characters")
    if not _EXTERNAL_ID.fullmatch(value):
        raise ValueError("an external id is ASCII letters and digits, inner spaces and . _ : / -")
    return value


@dataclass(frozen=True)
class Case:
    """The case one slide belongs to, as its submitter named it (both optional)."""

    label: str | None = None
    external_id: str | None = None

    @classmethod
    def checked(cls, label: str | None, external_id: str | None) -> Case:
        """Both values through their checks; ValueError naming the rule, never the value."""
        return cls(check_label(label), check_external_id(external_id))

    def description(self) -> str | None:
        """The text a stained slide carries in its TIFF ImageDescription (None: no case)."""
        if self.label is None and self.external_id is None:
            return None
        lines = ["dscm digitally stained slide"]
        if self.label is not None:
            lines.append(f"label: {self.label}")
        if self.external_id is not None:
            lines.append(f"external_id: {self.external_id}")
        return "\n".join(lines)


NO_CASE = Case()
