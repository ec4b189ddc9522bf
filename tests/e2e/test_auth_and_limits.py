"""Tokens, roles and rate limits as REST clients meet them through Envoy."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import SECRET, ControlPlane, control_plane, token
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
    plane = control_plane(tmp_path, PROVISIONER_RATE_LIMIT_PROVISION="2/h", PROVISIONER_STEPS="noop")
    plane.start()
    try:
        with client(plane, token(subject="alice")) as alice:
            for _ in range(2):
                body = {"departmentId": f"d{uuid.uuid4().hex[:8]}", **SPEC}
                assert alice.post("/api/provision-department", json=body).status_code == 200
            over = alice.post("/api/provision-department", json={"departmentId": "one-too-many", **SPEC})
            assert over.status_code == 429
            assert 3000 < int(over.headers["retry-after"]) <= 3600
            assert any(d["@type"].endswith("RetryInfo") for d in over.json()["details"])
            # Reads have their own budget; other principals their own windows.
            assert alice.get("/api/departments").status_code == 200
        with client(plane, token(subject="bob")) as bob:
            assert (
                bob.post("/api/provision-department", json={"departmentId": "bobs", **SPEC}).status_code
                == 200
            )
        assert plane.stop() == 0

        plane.start()
        with client(plane, token(subject="alice")) as alice:
            again = alice.post("/api/provision-department", json={"departmentId": "after-restart", **SPEC})
            assert again.status_code == 429
    finally:
        plane.stop()
