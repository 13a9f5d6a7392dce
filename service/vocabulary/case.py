"""Case identity: the free-text label and the hospital's accession number of one slide.

Both may identify a patient. They are stored with the job, returned to its tenant and written
into the output TIFF's description, and never logged: the checks below never repeat the value
in their messages, and service.runtime.logs redacts them from access-log query strings.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

PATIENT_FIELDS = ("patient_id", "patient_name", "study_instance_uid", "accession_number")
CASE_FIELDS = ("label", "external_id", *PATIENT_FIELDS)
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


# DICOM value representations of the patient and study fields (PS3.5 6.2): LO and SH are one
# line without a backslash, PN is up to five ^-separated name components, UI is dotted digits.
_UID = re.compile(r"^(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+$")
_VR_MAX_CHARS = {"patient_id": 64, "patient_name": 64, "accession_number": 16}


def _check_dicom_text(field: str, value: str | None) -> str | None:
    """A DICOM string (LO, PN or SH): stripped, within its length, printable, no backslash."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    limit = _VR_MAX_CHARS[field]
    if len(value) > limit:
        raise ValueError(f"{field} has at most {limit} characters (its DICOM VR)")
    if "\\" in value or any(unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in value):
        raise ValueError(f"{field} is one line of printable text without a backslash")
    if field == "patient_name" and ("=" in value or value.count("^") > 4):
        raise ValueError("patient_name is Family^Given^Middle^Prefix^Suffix (at most 4 ^, no =)")
    return value


def check_study_uid(value: str | None) -> str | None:
    """A DICOM UID: digits in dot-separated components without leading zeros, <= 64 chars."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if len(value) > 64 or not _UID.fullmatch(value):
        raise ValueError(
            "study_instance_uid is a DICOM UID: at most 64 characters, digits in "
            "dot-separated components without leading zeros"
        )
    return value


@dataclass(frozen=True)
class Patient:
    """The patient and study a DICOM output is filed under in the archive (all optional; they
    identify a patient: stored with the job, written into DICOM, never logged, purged)."""

    patient_id: str | None = None
    patient_name: str | None = None
    study_instance_uid: str | None = None
    accession_number: str | None = None

    @classmethod
    def checked(cls, **fields: str | None) -> Patient:
        """Each field through its DICOM VR check; ValueError naming the field, not the value."""
        unknown = set(fields) - set(PATIENT_FIELDS)
        if unknown:
            raise ValueError(f"unknown patient field(s) {', '.join(sorted(unknown))}")
        return cls(
            patient_id=_check_dicom_text("patient_id", fields.get("patient_id")),
            patient_name=_check_dicom_text("patient_name", fields.get("patient_name")),
            study_instance_uid=check_study_uid(fields.get("study_instance_uid")),
            accession_number=_check_dicom_text("accession_number", fields.get("accession_number")),
        )

    def to_json(self) -> dict[str, str] | None:
        """The stored form: only the stated fields; None when none is."""
        stated = {k: v for k, v in vars(self).items() if v is not None}
        return stated or None


NO_PATIENT = Patient()


@dataclass(frozen=True)
class Case:
    """The case one slide belongs to, as its submitter named it (all optional)."""

    label: str | None = None
    external_id: str | None = None
    patient: Patient = NO_PATIENT

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
