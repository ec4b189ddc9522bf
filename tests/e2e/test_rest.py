"""A REST client's whole journey through the real Envoy, on the seed's paths."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ControlPlane

pytestmark = pytest.mark.slow

SPEC = {
    "departmentName": "Human Resources",
    "workflows": ["email", "google_drive", "database"],
    "dataRetention": "90d",
    "region": "us-west",
    "adminEmail": "admin@synrgscaling.com",
}


def department_id() -> str:
    return f"d{uuid.uuid4().hex[:10]}"


def watch(client: httpx.Client, job_id: str, after: int = 0) -> list[tuple[float, dict[str, Any]]]:
    """Every SSE message of a watch, with the time it arrived."""
    seen: list[tuple[float, dict[str, Any]]] = []
    params = {"afterSequence": str(after)} if after else None
    with client.stream("GET", f"/api/provision-status/{job_id}/watch", params=params, timeout=30) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if line.startswith("data: "):
                seen.append((time.monotonic(), json.loads(line.removeprefix("data: "))))
    return seen


def finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    events = [m["event"] for _, m in watch(client, job_id) if "event" in m]
    assert events[-1]["type"] == "JOB_EVENT_TYPE_JOB_FINISHED", events[-1]
    return events[-1]


def test_provision_watch_list_health_and_deprovision_on_the_seeds_paths(plane: ControlPlane) -> None:
    dept = department_id()
    with plane.http() as client:
        created = client.post("/api/provision-department", json={"departmentId": dept, **SPEC})
        assert created.status_code == 200, created.text
        job = created.json()
        # The job is the top-level JSON object, in lowerCamelCase, as in the seed.
        assert job["departmentId"] == dept
        assert job["state"] in {"JOB_STATE_PENDING", "JOB_STATE_VALIDATING"}
        assert [s["name"] for s in job["steps"]][:2] == ["validate", "database"]

        messages = watch(client, job["jobId"])
        first, rest = messages[0][1], messages[1:]
        assert first["snapshot"]["jobId"] == job["jobId"]
        events = [m["event"] for _, m in rest if "event" in m]
        sequences = [int(e["sequence"]) for e in events]
        assert sequences == list(range(1, len(sequences) + 1))
        assert events[-1]["state"] == "JOB_STATE_COMPLETED"
        # Server-Sent Events arrive as the steps happen (0.15 s each), not in one burst.
        arrivals = [t for t, m in rest if "event" in m]
        assert arrivals[-1] - arrivals[0] > 0.6

        status = client.get(f"/api/provision-status/{job['jobId']}").json()
        assert status["state"] == "JOB_STATE_COMPLETED"
        assert status["progress"] == 100

        listed = client.get("/api/departments", params={"region": "us-west"}).json()["departments"]
        assert dept in [d["departmentId"] for d in listed]
        assert client.get(f"/api/departments/{dept}").json()["status"] == "DEPARTMENT_STATUS_ACTIVE"
        health = client.get(f"/api/departments/{dept}/health").json()
        assert health["healthy"] is True
        assert {c["step"] for c in health["conditions"]} >= {"database", "oauth", "container", "gateway"}

        teardown = client.delete(f"/api/deprovision/{dept}")
        assert teardown.status_code == 200, teardown.text
        assert teardown.json()["kind"] == "JOB_KIND_DEPROVISION"
        assert finished(client, teardown.json()["jobId"])["state"] == "JOB_STATE_COMPLETED"
        gone = client.get(f"/api/departments/{dept}").json()
        assert gone["status"] == "DEPARTMENT_STATUS_DEPROVISIONED"


def test_departments_page_by_json_named_query_parameters(plane: ControlPlane) -> None:
    made = sorted(department_id() for _ in range(2))
    with plane.http() as client:
        for dept in made:
            body = {"departmentId": dept, **SPEC, "region": "ap-south"}
            assert client.post("/api/provision-department", json=body).status_code == 200
        first = client.get("/api/departments", params={"region": "ap-south", "pageSize": "1"}).json()
        token = first["nextPageToken"]
        second = client.get(
            "/api/departments", params={"region": "ap-south", "pageSize": "1", "pageToken": token}
        ).json()
        other_filter = client.get("/api/departments", params={"region": "us-west", "pageToken": token})
    assert [first["departments"][0]["departmentId"], second["departments"][0]["departmentId"]] == made
    assert second["nextPageToken"] == ""
    assert other_filter.status_code == 400


def test_a_departments_job_history_and_the_audit_log_over_rest_and_the_cli(plane: ControlPlane) -> None:
    dept = department_id()
    with plane.http() as admin, plane.http("viewer") as viewer:
        provision = admin.post("/api/provision-department", json={"departmentId": dept, **SPEC}).json()
        finished(admin, provision["jobId"])
        teardown = admin.delete(f"/api/deprovision/{dept}").json()
        finished(admin, teardown["jobId"])

        history = viewer.get("/api/jobs", params={"departmentId": dept}).json()
        assert [j["jobId"] for j in history["jobs"]] == [teardown["jobId"], provision["jobId"]]
        newest = viewer.get("/api/jobs", params={"pageSize": "1", "kind": "JOB_KIND_PROVISION"}).json()
        assert [j["jobId"] for j in newest["jobs"]] == [provision["jobId"]]

        assert viewer.get("/api/audit").status_code == 403
        audit = admin.get("/api/audit", params={"departmentId": dept}).json()["auditEvents"]
        assert [(e["action"], e["outcome"], e["jobId"]) for e in audit] == [
            ("deprovision", "accepted", teardown["jobId"]),
            ("provision", "accepted", provision["jobId"]),
        ]
        window = admin.get("/api/audit", params={"departmentId": dept, "endTime": audit[-1]["time"]}).json()
        assert window.get("auditEvents", []) == []
        bad_time = admin.get("/api/audit", params={"startTime": "yesterday"})
        assert bad_time.status_code == 400

    jobs = plane.run("jobs", "--department", dept, "-o", "json", role="viewer")
    assert jobs.returncode == 0, jobs.stderr
    assert [j["jobId"] for j in json.loads(jobs.stdout)["jobs"]] == [teardown["jobId"], provision["jobId"]]
    table = plane.run("jobs", "--department", dept, "--limit", "1")
    assert (
        table.returncode == 0 and teardown["jobId"] in table.stdout and provision["jobId"] not in table.stdout
    )
    audit_cli = plane.run("audit", "--department", dept, "--since", "1h")
    assert audit_cli.returncode == 0, audit_cli.stderr
    assert audit_cli.stdout.splitlines()[0].split()[:3] == ["TIME", "PRINCIPAL", "ACTION"]
    assert "deprovision" in audit_cli.stdout and "e2e-user" in audit_cli.stdout
    refused = plane.run("audit", role="viewer")
    assert refused.returncode != 0 and "admin" in refused.stderr


def test_dry_runs_over_rest_check_everything_and_change_nothing(plane: ControlPlane) -> None:
    dept = department_id()
    with plane.http() as client:
        body = {"departmentId": dept, **SPEC, "validateOnly": True}
        preview = client.post("/api/provision-department", json=body)
        assert preview.status_code == 200, preview.text
        assert preview.json()["departmentId"] == dept and not preview.json().get("jobId")
        assert client.get(f"/api/departments/{dept}").status_code == 404
        refused = client.post(
            "/api/provision-department", json={**body, "region": "mars-1", "adminEmail": "x"}
        )
        assert refused.status_code == 400
        violations = next(d for d in refused.json()["details"] if d["@type"].endswith("BadRequest"))
        assert {v["field"] for v in violations["fieldViolations"]} == {"region", "admin_email"}

        job = client.post("/api/provision-department", json={"departmentId": dept, **SPEC}).json()
        finished(client, job["jobId"])
        teardown = client.delete(f"/api/deprovision/{dept}", params={"validateOnly": "true"})
        assert teardown.status_code == 200, teardown.text
        assert teardown.json()["kind"] == "JOB_KIND_DEPROVISION" and not teardown.json().get("jobId")
        assert client.get(f"/api/departments/{dept}").json()["status"] == "DEPARTMENT_STATUS_ACTIVE"
        ended = client.post(f"/api/jobs/{job['jobId']}:cancel", json={})
        assert ended.status_code == 400 and ended.json()["code"] == 9, ended.text  # FAILED_PRECONDITION


def test_a_resumed_watch_sees_nothing_twice_and_misses_nothing(plane: ControlPlane) -> None:
    with plane.http() as client:
        job = client.post("/api/provision-department", json={"departmentId": department_id(), **SPEC}).json()
        everything = [m["event"] for _, m in watch(client, job["jobId"]) if "event" in m]
        resumed = [m["event"] for _, m in watch(client, job["jobId"], after=5) if "event" in m]
    assert resumed == everything[5:]


def test_errors_are_json_bodies_with_the_matching_http_status(plane: ControlPlane) -> None:
    with plane.http() as client:
        bad = client.post("/api/provision-department", json={"departmentId": "Robert'); DROP TABLE--"})
        assert bad.status_code == 400
        body = bad.json()
        assert body["code"] == 3
        violations = next(d for d in body["details"] if d["@type"].endswith("BadRequest"))
        fields = {v["field"] for v in violations["fieldViolations"]}
        assert fields == {
            "department_id",
            "department_name",
            "workflows",
            "data_retention",
            "region",
            "admin_email",
        }
        info = next(d for d in body["details"] if d["@type"].endswith("ErrorInfo"))
        assert info["domain"] == "provisioning.v1"
        assert "Traceback" not in bad.text

        martian = client.post(
            "/api/provision-department", json={"departmentId": department_id(), **SPEC, "region": "mars-1"}
        )
        assert martian.status_code == 400, martian.text
        (refusal,) = next(d for d in martian.json()["details"] if d["@type"].endswith("BadRequest"))[
            "fieldViolations"
        ]
        assert refusal["field"] == "region" and "us-west, us-east" in refusal["description"]

        missing = client.get(f"/api/provision-status/{uuid.uuid4()}")
        assert missing.status_code == 404
        assert missing.json()["code"] == 5

        not_json = client.post(
            "/api/provision-department", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert not_json.status_code == 400

        unknown_path = client.get("/api/nothing-here")
        assert unknown_path.status_code == 404
        assert unknown_path.headers["content-type"] == "application/json"
        assert client.get("/elsewhere").status_code == 404
        unknown_query = client.get("/api/departments", params={"colour": "blue"})
        assert unknown_query.status_code == 400
        assert client.put("/api/departments").status_code == 404


def test_cors_is_granted_to_configured_origins_only(plane: ControlPlane) -> None:
    preflight = {"access-control-request-method": "POST", "access-control-request-headers": "authorization"}
    with plane.http() as client:
        allowed = client.options(
            "/api/provision-department", headers={"origin": "http://console.example", **preflight}
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "http://console.example"
        other = client.options(
            "/api/provision-department", headers={"origin": "http://evil.example", **preflight}
        )
        assert "access-control-allow-origin" not in other.headers
