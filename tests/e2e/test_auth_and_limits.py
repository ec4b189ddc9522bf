"""Tokens, roles and rate limits as REST clients meet them through Envoy."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import SECRET, ControlPlane, control_plane, token
from tests.e2e.report import record
from tests.e2e.test_rest import SPEC

pytestmark = pytest.mark.slow


def client(plane: ControlPlane, bearer: str | None) -> httpx.Client:
    # An empty bearer goes as "Bearer": HTTP clients strip the trailing space anyway.
    headers = {"authorization": f"Bearer {bearer}".strip()} if bearer is not None else {}
    return httpx.Client(base_url=plane.rest_url, headers=headers, timeout=10, trust_env=False)


def test_bad_or_missing_tokens_get_401_and_missing_roles_403(plane: ControlPlane) -> None:
    for bearer in (None, "", "not-a-jwt", token().replace(SECRET[:3], "") + "x"):
        with client(plane, bearer) as http:
            reply = http.get("/api/departments")
        assert reply.status_code == 401, (bearer, reply.text)
        assert reply.json()["code"] == 16
        if bearer:
            assert bearer not in reply.text
    with client(plane, token("viewer")) as http:
        assert http.get("/api/departments").status_code == 200
        denied = http.post("/api/provision-department", json={"departmentId": "viewers", **SPEC})
        assert denied.status_code == 403
        assert "admin" in denied.json()["message"]


def test_the_provision_limit_is_exact_says_when_to_retry_and_survives_a_restart(tmp_path: Path) -> None:
    limit = 5
    plane = control_plane(tmp_path, PROVISIONER_RATE_LIMIT_PROVISION=f"{limit}/h", PROVISIONER_STEPS="noop")
    plane.start()
    try:
        with client(plane, token(subject="alice")) as alice:
            codes = [
                alice.post(
                    "/api/provision-department", json={"departmentId": f"d{uuid.uuid4().hex[:8]}", **SPEC}
                )
                for _ in range(limit + 3)
            ]
            # Reads have their own budget; other principals their own windows.
            reads = alice.get("/api/departments").status_code
        with client(plane, token(subject="bob")) as bob:
            others = bob.post("/api/provision-department", json={"departmentId": "bobs", **SPEC}).status_code
        assert plane.stop() == 0
        plane.start()
        with client(plane, token(subject="alice")) as alice:
            after_restart = alice.post("/api/provision-department", json={"departmentId": "later", **SPEC})
    finally:
        plane.stop()

    allowed = sum(reply.status_code == 200 for reply in codes)
    refused = [reply for reply in codes if reply.status_code == 429]
    record(
        "rate_limit",
        limit=limit,
        allowed=allowed,
        refused=len(refused),
        others_unaffected=others == 200,
        held_across_restart=after_restart.status_code == 429,
    )
    assert [reply.status_code for reply in codes] == [200] * limit + [429] * 3
    assert all(3000 < int(reply.headers["retry-after"]) <= 3600 for reply in refused)
    assert all(any(d["@type"].endswith("RetryInfo") for d in r.json()["details"]) for r in refused)
    assert (reads, others, after_restart.status_code) == (200, 200, 429)
