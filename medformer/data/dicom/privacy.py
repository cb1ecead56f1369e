"""What may be written from a DICOM file: every rule that keeps patient identifiers out.

It imports nothing from the rest of the package, so it can be audited alone. An ingestion writes
index.csv, skipped.csv, tag_features.npy, tag_columns.json and report.json; its log lines hold
only counts and the cache folder. The rules:

Dropped, whatever the config asks for (`usable_tags`): the tags in DENY_TAGS (names, IDs, birth
data, addresses, institutions, physicians, operators, stations, device serials, accession numbers,
study/series/acquisition dates and times), every other keyword starting with "Patient" except
PatientPosition and PatientOrientation, every keyword ending in "UID" and every tag whose value
representation is a name, UID, date, time, binary, unknown or sequence (DROP_VRS).
Dropped too: any text value that mentions a patient. When a header is read the file's own
patient is checked (`_mentions`, `_safe_text`); when the cache is written, every patient seen in
the ingestion (`_Anonymiser.text`; a body part so dropped becomes "unknown").

Read, never stored: PatientName and PatientID, only as normalised "identifier forms"
(`_identifier_forms`) that recognise a mention in any case, spacing, punctuation or name order.

Hashed: every component of every source path (DICOM or not, folder or file) becomes "anon-" and
10 hex digits of HMAC-SHA256(salt, component); an extension in PLAIN_SUFFIXES is kept unless it
mentions a patient. The salt is 16 random bytes drawn for each ingestion and never stored or
logged, so a short numeric ID cannot be brute-forced back from its hash.

Withheld: a skip reason has the file's path (absolute and relative) replaced by "<file>"; if it
still mentions a patient of the ingestion, only its kind is written, followed by WITHHELD.

Applied in headers.py (`_read_header`, `_header_of`, `_collect_tags`; ProtocolName and the study
and series descriptions give the body part only as a rule's name), features.py (`tag_features`
uses `usable_tags`) and ingest.py (`ingest_dicom` draws the salt; `_write_cache` writes only
anonymised paths, values and reasons).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Any

# Tags whose values are never collected, whatever the config asks for.
DENY_TAGS: frozenset[str] = frozenset(
    {
        "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientBirthName",
        "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName", "OtherPatientIDs",
        "OtherPatientIDsSequence", "OtherPatientNames", "IssuerOfPatientID", "PatientComments",
        "PatientAge", "PatientSex", "PatientWeight", "PatientSize", "PatientInsurancePlanCodeSequence",
        "MedicalRecordLocator", "MilitaryRank", "BranchOfService", "EthnicGroup", "Occupation",
        "AdditionalPatientHistory", "PregnancyStatus", "ResponsiblePerson", "ResponsibleOrganization",
        "AccessionNumber", "StudyID", "InstitutionName", "InstitutionAddress",
        "InstitutionalDepartmentName", "ReferringPhysicianName", "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers", "PerformingPhysicianName", "PhysiciansOfRecord",
        "NameOfPhysiciansReadingStudy", "OperatorsName", "RequestingPhysician",
        "ScheduledPerformingPhysicianName", "StationName", "DeviceSerialNumber",
        "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate",
        "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "AcquisitionDateTime",
        "RequestAttributesSequence", "ReferencedPatientSequence", "ClinicalTrialSubjectID",
        "ClinicalTrialSubjectReadingID",
    }
)
# Value representations never used as features: names, UIDs, dates, binary and sequences.
DROP_VRS = frozenset({"PN", "UI", "DA", "DT", "TM", "SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "AT"})
NUMERIC_VRS = frozenset({"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _identifier_forms(ds: Any) -> list[str]:
    """Normalised forms of this file's PatientName and PatientID, for matching only."""
    forms = []
    pid = str(ds.get("PatientID", "") or "")
    if len(_norm(pid)) >= 3:
        forms.append(_norm(pid))
    name = ds.get("PatientName")
    if name:
        parts = [p for p in str(name).split("^") if p.strip()]
        forms.append(_norm("".join(parts)))
        if len(parts) >= 2:
            forms.append(_norm(parts[1] + parts[0]))
        forms.extend(_norm(p) for p in parts if len(_norm(p)) >= 4)
    return [f for f in forms if len(f) >= 3]


def _mentions(text: str, forms: list[str]) -> bool:
    low = _norm(text)
    return any(f in low for f in forms)


def _safe_text(value: Any, forms: list[str]) -> str:
    text = str(value or "")
    return "" if _mentions(text, forms) else text


def usable_tags(keywords: list[str]) -> tuple[list[str], dict[str, str]]:
    """Config tags that may become features, and why the others may not (static rules)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    keep, decisions = [], {}
    for kw in dict.fromkeys(keywords):
        technical = kw in ("PatientPosition", "PatientOrientation")
        if kw in DENY_TAGS or (kw.startswith("Patient") and not technical):
            decisions[kw] = "dropped: identifying tag (deny-list)"
        elif tag_for_keyword(kw) is None:
            decisions[kw] = "dropped: not a DICOM keyword"
        elif dictionary_VR(kw) in DROP_VRS or kw.endswith("UID"):
            decisions[kw] = f"dropped: VR {dictionary_VR(kw)} (names, UIDs, dates, binary)"
        else:
            keep.append(kw)
    return keep, decisions


def _new_salt() -> bytes:
    # A fresh random salt per ingestion, never stored: short numeric IDs cannot be brute-forced back.
    return os.urandom(16)


# Extensions kept on anonymised paths (help to find a skipped file); any other could be a name part.
PLAIN_SUFFIXES = frozenset(
    {".dcm", ".dicom", ".dic", ".ima", ".img", ".raw", ".txt", ".csv", ".json", ".xml", ".pdf", ".png",
     ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".zip", ".gz", ".nii", ".icc", ".md", ".html"}
)
WITHHELD = "details withheld: they quote a patient identifier"


class _Anonymiser:
    """Anonymised paths and skip reasons of one ingestion (its salt is never stored)."""

    def __init__(self, src: Path, forms: set[str], salt: bytes) -> None:
        self.src, self.forms, self.salt = src, sorted(forms), salt

    def _token(self, part: str) -> str:
        return "anon-" + hmac.new(self.salt, part.encode(), hashlib.sha256).hexdigest()[:10]

    def path(self, rel: str) -> str:
        """Every component hashed; a plain extension (".dcm", ".txt") kept to help find a file."""
        parts = [self._token(p) for p in Path(rel).parts]
        suffix = Path(rel).suffix.lower()
        if parts and suffix in PLAIN_SUFFIXES and not _mentions(suffix, self.forms):
            parts[-1] += suffix
        return "/".join(parts)

    def text(self, value: Any) -> Any:
        """A tag value, or "" if it mentions a patient of the ingest (files only check their own)."""
        return "" if isinstance(value, str) and _mentions(value, self.forms) else value

    def reason(self, rel: str, kind: str, text: str) -> str:
        """A skip reason without the file's path, or only its kind if it names a patient."""
        for where in (str(self.src / rel), rel):
            text = text.replace(where, "<file>")
        return f"{kind}: {WITHHELD}" if _mentions(text, self.forms) else text
