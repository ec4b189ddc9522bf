"""The generated OpenAPI document describes every REST binding of the contract."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from google.api import annotations_pb2

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
SEED_PATHS = {
    ("post", "/api/provision-department"),
    ("get", "/api/provision-status/{jobId}"),
    ("get", "/api/provision-status/{jobId}/watch"),
    ("delete", "/api/deprovision/{departmentId}"),
    ("get", "/api/departments"),
    ("get", "/api/departments/{departmentId}/health"),
}


def document() -> dict[str, Any]:
    return json.loads(DOCUMENT.read_text())


def bindings() -> set[tuple[str, str]]:
    found = set()
    for method in pb.DESCRIPTOR.services_by_name["ProvisioningService"].methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        path = re.sub(
            r"\{(\w+)\}",
            lambda m: "{" + re.sub(r"_(\w)", lambda c: c[1].upper(), m[1]) + "}",
            getattr(rule, verb),
        )
        found.add((verb, path))
    return found


def test_every_binding_and_every_seed_path_is_documented() -> None:
    documented = {(verb, path) for path, item in document()["paths"].items() for verb in item}
    assert bindings() == documented
    assert documented >= SEED_PATHS


def test_operations_document_errors_auth_and_the_event_stream() -> None:
    doc = document()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for item in doc["paths"].values():
        for operation in item.values():
            assert {"200", "400", "401", "403", "429", "503"} <= set(operation["responses"])
            assert "Retry-After" in operation["responses"]["429"]["headers"]
    watch = doc["paths"]["/api/provision-status/{jobId}/watch"]["get"]["responses"]["200"]["content"]
    assert set(watch) == {"text/event-stream"}


def test_request_schemas_carry_the_contracts_rules() -> None:
    request = document()["components"]["schemas"]["v1ProvisionRequest"]
    assert set(request["required"]) == {
        "departmentId", "departmentName", "workflows", "dataRetention", "region", "adminEmail",
    }  # fmt: skip
    department_id = request["properties"]["departmentId"]
    assert department_id["pattern"] == "^[a-z][a-z0-9-]*[a-z0-9]$"
    assert (department_id["minLength"], department_id["maxLength"]) == (2, 32)
    assert request["properties"]["workflows"]["items"]["enum"] == ["email", "google_drive", "database"]
    assert request["properties"]["adminEmail"]["format"] == "email"
