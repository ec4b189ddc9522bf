"""A department's spec and the rules it must satisfy, checked all at once."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from provisioner.core.errors import FieldViolation, InvalidSpecError

#: Lowercase DNS-label-like slug: it names a schema, a role, a file and a route, so it
#: allows nothing those could misread (no dots, slashes, underscores, quotes or unicode).
DEPARTMENT_ID_PATTERN = re.compile(r"[a-z](?:[a-z0-9]|-(?!-)){0,30}[a-z0-9]")
REGION_PATTERN = re.compile(r"[a-z]{2,10}(?:-[a-z0-9]{1,12}){1,2}")
RETENTION_PATTERN = re.compile(r"([1-9][0-9]{0,3})d")
EMAIL_PATTERN = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
WORKFLOW_KINDS = ("email", "google_drive", "database")
RESERVED_IDS = frozenset({"api", "admin", "public", "system", "default", "root", "envoy"})
MAX_RETENTION_DAYS = 3650
MAX_NAME_LENGTH = 100


@dataclass(frozen=True, slots=True)
class DepartmentSpec:
    """What a caller asks for: the seed's request body."""

    department_id: str
    department_name: str
    workflows: tuple[str, ...] = field(default_factory=tuple)
    data_retention: str = "90d"
    region: str = ""
    admin_email: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "department_id": self.department_id,
            "department_name": self.department_name,
            "workflows": list(self.workflows),
            "data_retention": self.data_retention,
            "region": self.region,
            "admin_email": self.admin_email,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DepartmentSpec:
        return cls(
            department_id=str(data["department_id"]),
            department_name=str(data["department_name"]),
            workflows=tuple(str(w) for w in data.get("workflows", ())),
            data_retention=str(data.get("data_retention", "")),
            region=str(data.get("region", "")),
            admin_email=str(data.get("admin_email", "")),
        )

    def fingerprint(self) -> str:
        """A stable hash of the spec, to tell a replay from a different request."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def retention_days(self) -> int:
        match = RETENTION_PATTERN.fullmatch(self.data_retention)
        if match is None:
            raise ValueError(f"unvalidated retention {self.data_retention!r}")
        return int(match.group(1))


def check_department_id(department_id: str) -> list[FieldViolation]:
    if not DEPARTMENT_ID_PATTERN.fullmatch(department_id):
        return [
            FieldViolation(
                "department_id",
                "must be 2-32 characters: lowercase letters, digits and single hyphens, "
                "starting with a letter and ending with a letter or digit",
            )
        ]
    if department_id in RESERVED_IDS:
        return [FieldViolation("department_id", f"{department_id!r} is reserved")]
    return []


def _is_printable(text: str) -> bool:
    return all(ch.isprintable() for ch in text)


def violations(spec: DepartmentSpec) -> list[FieldViolation]:
    """Every rule the spec breaks, in field order; empty when the spec is valid."""
    found = check_department_id(spec.department_id)
    name = spec.department_name
    if not name.strip():
        found.append(FieldViolation("department_name", "must not be empty"))
    elif len(name) > MAX_NAME_LENGTH:
        found.append(FieldViolation("department_name", f"must be at most {MAX_NAME_LENGTH} characters"))
    elif not _is_printable(name) or name != name.strip():
        found.append(
            FieldViolation(
                "department_name",
                "must not contain control characters or leading/trailing whitespace",
            )
        )
    if not spec.workflows:
        found.append(FieldViolation("workflows", f"must list at least one of {', '.join(WORKFLOW_KINDS)}"))
    for index, kind in enumerate(spec.workflows):
        if kind not in WORKFLOW_KINDS:
            found.append(FieldViolation(f"workflows[{index}]", f"must be one of {', '.join(WORKFLOW_KINDS)}"))
        elif kind in spec.workflows[:index]:
            found.append(FieldViolation(f"workflows[{index}]", f"{kind!r} is listed twice"))
    match = RETENTION_PATTERN.fullmatch(spec.data_retention)
    if match is None or int(match.group(1)) > MAX_RETENTION_DAYS:
        found.append(
            FieldViolation(
                "data_retention", f"must be a number of days like '90d', 1d to {MAX_RETENTION_DAYS}d"
            )
        )
    if not REGION_PATTERN.fullmatch(spec.region):
        found.append(FieldViolation("region", "must look like 'us-west' or 'eu-central-1'"))
    if len(spec.admin_email) > 254 or not EMAIL_PATTERN.fullmatch(spec.admin_email):
        found.append(FieldViolation("admin_email", "must be an email address like admin@example.com"))
    return found


def validate(spec: DepartmentSpec) -> DepartmentSpec:
    """Return the spec unchanged if valid, else raise with every violation."""
    found = violations(spec)
    if found:
        raise InvalidSpecError(found)
    return spec
