"""A department's spec as a typed value, and as the seed's JSON/YAML document.

Only the shape is checked here (which fields, of what type): the rules (lengths, patterns,
allowed workflows) belong to the server, which reports every broken one at once.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypedDict, cast

import yaml

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_client.errors import ConfigurationError


class SpecFields(TypedDict, total=False):
    """A `DepartmentSpec` as keyword arguments (all are needed)."""

    department_id: str
    department_name: str
    workflows: Sequence[str]
    data_retention: str
    region: str
    admin_email: str


#: The seed's JSON names (lowerCamelCase), as `provisionctl provision -f` reads them.
JSON_NAMES: dict[str, str] = {
    "departmentId": "department_id",
    "departmentName": "department_name",
    "workflows": "workflows",
    "dataRetention": "data_retention",
    "region": "region",
    "adminEmail": "admin_email",
}


@dataclass(frozen=True, slots=True)
class DepartmentSpec:
    """What a department should be: the body of a provisioning request."""

    department_id: str
    department_name: str
    workflows: tuple[str, ...]
    data_retention: str
    region: str
    admin_email: str

    def __post_init__(self) -> None:
        # A bare string would otherwise become a tuple of its letters.
        if isinstance(cast(object, self.workflows), str):
            raise ConfigurationError("workflows must be a list of names, not one string")
        object.__setattr__(self, "workflows", tuple(self.workflows))

    @classmethod
    def of(cls, values: SpecFields) -> DepartmentSpec:
        """Build from keyword fields, naming every one that is missing."""
        missing = [f.name for f in fields(cls) if f.name not in values]
        if missing:
            raise ConfigurationError(f"the department spec lacks {', '.join(missing)}")
        return cls(
            department_id=values["department_id"],
            department_name=values["department_name"],
            workflows=tuple(values["workflows"]),
            data_retention=values["data_retention"],
            region=values["region"],
            admin_email=values["admin_email"],
        )

    def to_request(self, request_id: str = "") -> pb.ProvisionRequest:
        """The contract's `ProvisionRequest` for this spec."""
        return pb.ProvisionRequest(
            department_id=self.department_id,
            department_name=self.department_name,
            workflows=list(self.workflows),
            data_retention=self.data_retention,
            region=self.region,
            admin_email=self.admin_email,
            request_id=request_id,
        )

    def to_json(self) -> dict[str, object]:
        """The seed's JSON document for this spec (lowerCamelCase names)."""
        return {camel: getattr(self, snake) for camel, snake in JSON_NAMES.items()} | {
            "workflows": list(self.workflows)
        }


def fields_from_document(document: object, source: str = "the spec") -> SpecFields:
    """The fields present in a seed-style document; snake_case names are accepted too."""
    if not isinstance(document, Mapping):
        raise ConfigurationError(f"{source} must be a mapping of field names to values")
    known = JSON_NAMES | {snake: snake for snake in JSON_NAMES.values()}
    unknown = sorted(str(k) for k in document if k not in known)
    if unknown:
        raise ConfigurationError(
            f"{source} has unknown fields {', '.join(unknown)} (expected {', '.join(JSON_NAMES)})"
        )
    found: dict[str, object] = {}
    for key, value in document.items():
        name = known[key]
        if name == "workflows":
            if isinstance(value, str):
                value = [w.strip() for w in value.split(",") if w.strip()]
            if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
                raise ConfigurationError(f"{source}: {key} must be a list of workflow names")
        elif not isinstance(value, str):
            # YAML reads `region: 90` or `dataRetention: 90` as numbers; say so plainly.
            raise ConfigurationError(f"{source}: {key} must be a string, not {type(value).__name__}")
        found[name] = value
    return found  # type: ignore[return-value]  # keys and value types checked above


def load_spec_file(path: str | Path) -> SpecFields:
    """Read a spec from a `.json`, `.yaml` or `.yml` file (or `-` for standard input, as YAML)."""
    name = str(path)
    try:
        text = sys.stdin.read() if name == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read the spec file {name}: {exc.strerror or exc}") from exc
    try:
        # YAML is a superset of JSON, but JSON's own parser gives the better error for .json.
        document = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigurationError(f"the spec file {name} is not valid JSON or YAML: {first_line}") from exc
    return fields_from_document(document, f"the spec file {name}")
