"""The real service in a subprocess, over real HTTP: every endpoint and every error path."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.department_service.harness import (
    CLIENT_ID,
    ISSUER,
    KEY,
    KID,
    DepartmentDir,
    RunningService,
    bearer,
    mint,
)
from tests.smtp import MailServer

JSON = "application/json"


def _error_code(response: httpx.Response) -> str:
    assert response.headers["content-type"] == JSON
    return str(response.json()["error"]["code"])


def test_healthz_is_serving_and_lists_workflow_states(service: RunningService) -> None:
    service.directory.deploy("sms", {"type": "sms", "to": "+15550100"})

    response = service.anonymous.get("/healthz")

    assert response.status_code == 200
    assert response.headers["content-type"] == JSON
    assert response.json() == {
        "status": "SERVING",
        "department_id": "hr",
        "database": "ok",
        "credentials": "ok",
        "workflows": {"database": "active", "email": "active", "google_drive": "active", "sms": "broken"},
    }


def test_healthz_is_not_serving_without_its_database(tmp_path: Path) -> None:
    department = DepartmentDir(tmp_path / "hr")
    department.write_credentials()
    department.deploy("database", {"type": "database"})
    service = RunningService(department, tmp_path / "service.log")
    try:
        response = service.anonymous.get("/healthz")
        assert response.status_code == 503
        assert response.json()["status"] == "NOT_SERVING"
        assert response.json()["reason"] == "data.db does not exist"
        assert _error_code(service.post("database", {"a": 1})) == "database_unavailable"
        assert not department.db_path.exists()  # never created behind the control plane's back
    finally:
        service.close()


def test_email_workflow_sends_a_message(service: RunningService, mail_server: MailServer) -> None:
    response = service.post("email", {"name": "Ada Lovelace", "employee_id": 1815})

    assert response.status_code == 200
    body = response.json()
    assert body["workflow"] == "email"
    assert body["status"] == "succeeded"
    assert body["result"]["subject"] == "New hire: Ada Lovelace (1815)"
    assert body["result"]["delivery"] == {"status": "sent", "reply": "250 2.0.0 Ok: queued as Q0001"}
    [execution] = service.directory.rows("SELECT id, workflow, status, request FROM workflow_executions")
    assert execution[:3] == (body["execution_id"], "email", "succeeded")
    assert json.loads(execution[3]) == {"name": "Ada Lovelace", "employee_id": 1815}
    [message] = service.directory.rows(
        "SELECT id, execution_id, recipient, subject, body, status, reply FROM outbox"
    )
    assert message[:4] == (body["result"]["outbox_id"], body["execution_id"], "hr-team@example.com",
                           "New hire: Ada Lovelace (1815)")  # fmt: skip
    assert json.loads(message[4]) == {"name": "Ada Lovelace", "employee_id": 1815}
    assert message[5:] == ("sent", "250 2.0.0 Ok: queued as Q0001")
    [received] = mail_server.received
    assert received.recipients == ["hr-team@example.com"]
    assert received.message["Subject"] == "New hire: Ada Lovelace (1815)"
    assert received.message["Message-ID"] == f"<{message[0]}@hr.department>"
    assert json.loads(received.message.get_content()) == {"name": "Ada Lovelace", "employee_id": 1815}


def test_google_drive_workflow_records_a_file(service: RunningService) -> None:
    response = service.post("google_drive", {"name": "contract.pdf"})

    assert response.status_code == 200
    result = response.json()["result"]
    assert result["folder"] == "Onboarding"
    rows = service.directory.rows("SELECT id, execution_id, folder, name FROM files")
    assert rows == [(result["file_id"], response.json()["execution_id"], "Onboarding", "contract.pdf")]


def test_database_workflow_stores_the_request(service: RunningService) -> None:
    record = {"employee": "ada", "salary": 120000, "tags": ["new", "remote"], "manager": None}

    response = service.post("database", record)

    assert response.status_code == 200
    [(execution_id, data)] = service.directory.rows("SELECT execution_id, data FROM records")
    assert execution_id == response.json()["execution_id"]
    assert json.loads(data) == record


REFUSED = [
    ("google_drive", {"title": "no name"}, 'google_drive needs a non-empty string "name"'),
    ("google_drive", {"name": 42}, 'google_drive needs a non-empty string "name"'),
    ("email", {"name": "Ada"}, "the request has no field 'employee_id' for the placeholder {employee_id}"),
    ("email", {"name": {"first": "Ada"}, "employee_id": 1}, "the field 'name' must be a string or a number"),
]


def test_input_the_action_refuses_is_422_and_recorded(service: RunningService) -> None:
    # One service for every case (a loop, not parametrize): starting a process is the slow part.
    for workflow, body, message in REFUSED:
        response = service.post(workflow, body)

        assert response.status_code == 422, message
        assert response.json()["status"] == "rejected"
        assert response.json()["error"] == {"code": "rejected", "message": message}
        [(status, result)] = service.directory.rows(
            "SELECT status, result FROM workflow_executions WHERE id = ?", response.json()["execution_id"]
        )
        assert status == "rejected"
        assert json.loads(result)["error"]["message"] == message
    assert service.directory.rows("SELECT count(*) FROM workflow_executions") == [(len(REFUSED),)]
    assert service.directory.rows("SELECT count(*) FROM files") == [(0,)]
    assert service.directory.rows("SELECT count(*) FROM outbox") == [(0,)]


def test_placeholders_cannot_reach_into_objects(service: RunningService) -> None:
    service.directory.deploy("leaky", {"type": "email", "to": "a@example.com", "subject": "{name.__class__}"})

    response = service.post("leaky", {"name": "Ada"})

    assert response.status_code == 422
    assert "is not allowed" in response.json()["error"]["message"]


OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
NOW = int(time.time())

BAD_TOKENS = {
    "no token": None,
    "Basic credentials": "Basic " + base64.b64encode(f"{CLIENT_ID}:secret".encode()).decode(),
    "not a JWT": "Bearer not-a-jwt",
    "signed by another key": "Bearer " + mint(key=OTHER_KEY),
    "another key claiming ours": "Bearer " + mint(key=OTHER_KEY, kid=KID),
    "unknown kid": "Bearer " + mint(kid="nobody"),
    "expired": "Bearer " + mint(iat=NOW - 900, exp=NOW - 600),
    "another department's": "Bearer " + mint(department_id="finance"),
    "another issuer's": "Bearer " + mint(iss="http://elsewhere.test"),
    "another client's": "Bearer " + mint(client_id="hr.ffffffffffffffff"),
    "an ID token, not an access token": "Bearer " + mint(typ="JWT"),
    "without jti": "Bearer " + mint(jti=None),
    "alg none": "Bearer "
    + jwt.encode(
        {"iss": ISSUER, "client_id": CLIENT_ID}, None, algorithm="none", headers={"kid": KID, "typ": "at+jwt"}
    ),
    "HS256 with the public key": "Bearer "
    + jwt.encode(
        {"iss": ISSUER, "client_id": CLIENT_ID},
        b"x" * 32,
        algorithm="HS256",
        headers={"kid": KID, "typ": "at+jwt"},
    ),
}


@pytest.mark.parametrize("what", BAD_TOKENS)
def test_bad_or_missing_tokens_are_401(service: RunningService, what: str) -> None:
    authorization = BAD_TOKENS[what]
    headers = {"authorization": authorization} if authorization else {}
    for method, path in [
        ("POST", "/workflows/email"),
        ("GET", "/executions"),
        ("GET", "/workflows"),
        ("GET", "/files"),
    ]:
        response = service.anonymous.request(
            method, path, headers=headers, json={"name": "x", "employee_id": 1}
        )
        assert response.status_code == 401, (what, method, path, response.text)
        challenge = 'Bearer realm="department"' + ("" if authorization is None else ', error="invalid_token"')
        assert response.headers["www-authenticate"] == challenge
        assert _error_code(response) == "unauthorized"
    # Authentication comes first: an unauthenticated caller cannot tell which workflows exist.
    assert service.anonymous.post("/workflows/never-deployed", headers=headers).status_code == 401
    assert service.directory.rows("SELECT count(*) FROM workflow_executions") == [(0,)]


def test_each_route_needs_its_scope(service: RunningService) -> None:
    reader = bearer(mint(scope="executions:read"))
    assert service.anonymous.get("/executions", headers=reader).status_code == 200
    assert service.anonymous.get("/workflows", headers=reader).status_code == 200
    refused = service.anonymous.post("/workflows/database", headers=reader, json={})
    assert refused.status_code == 403
    assert refused.headers["www-authenticate"] == (
        'Bearer realm="department", error="insufficient_scope", scope="workflows:run"'
    )
    assert _error_code(refused) == "insufficient_scope"
    assert service.anonymous.get("/files", headers=reader).status_code == 403
    assert service.anonymous.get("/files", headers=bearer(mint(scope="files:read"))).status_code == 200


def test_revocation_and_a_new_client_take_effect_at_once(service: RunningService) -> None:
    assert service.post("database", {"n": 1}).status_code == 200

    service.directory.write_credentials(revoked=True)
    assert service.post("database", {"n": 2}).status_code == 401
    assert service.anonymous.get("/healthz").json()["credentials"] == "revoked"

    service.directory.write_credentials(client_id="hr.1111111111111111")
    assert service.post("database", {"n": 3}).status_code == 401  # the old client's token
    new_client = bearer(mint(client_id="hr.1111111111111111"))
    assert service.client.post("/workflows/database", json={"n": 4}, headers=new_client).status_code == 200

    (service.directory.root / "credentials.json").unlink()
    assert service.client.post("/workflows/database", json={"n": 5}, headers=new_client).status_code == 401
    assert service.anonymous.get("/healthz").json()["credentials"] == "missing"


def test_a_rotated_key_is_picked_up_without_a_restart(service: RunningService) -> None:
    rotated = ec.generate_private_key(ec.SECP256R1())
    token = bearer(mint(key=rotated, kid="k1"))
    assert service.client.post("/workflows/database", json={}, headers=token).status_code == 401

    service.directory.publish_keys(KEY, rotated)

    assert service.client.post("/workflows/database", json={}, headers=token).status_code == 200
    assert service.post("database", {}).status_code == 200  # the previous key still verifies


def test_a_removed_workflow_is_404(service: RunningService) -> None:
    assert service.post("database", {"n": 1}).status_code == 200

    (service.directory.root / "workflows" / "database.json").unlink()

    response = service.post("database", {"n": 2})
    assert response.status_code == 404
    assert _error_code(response) == "not_found"
    assert "database" not in service.anonymous.get("/healthz").json()["workflows"]
    assert service.post("never-deployed", {}).status_code == 404
    assert service.post("..%2Fcredentials", {}).status_code == 404


def test_a_body_that_is_not_a_json_object_is_400(service: RunningService) -> None:
    for content in [b"{not json", b'{"a": NaN}', b"\xff\xfe", b"[" * 5000, b"[1, 2]", b'"text"']:
        response = service.post("database", content=content, headers={"content-type": JSON})

        assert response.status_code == 400, content[:20]
        assert _error_code(response) == "bad_request"
    assert service.directory.rows("SELECT count(*) FROM workflow_executions") == [(0,)]


def test_an_oversized_body_is_413(service: RunningService) -> None:
    response = service.post("database", content=b"x" * (64 * 1024 + 1))

    assert response.status_code == 413
    assert _error_code(response) == "payload_too_large"
    assert service.post("database", content=json.dumps({"pad": "x" * 60000}).encode()).status_code == 200


def test_a_broken_workflow_is_500_json_and_listed_as_broken(service: RunningService) -> None:
    service.directory.deploy("sms", {"type": "sms"})
    (service.directory.root / "workflows" / "garbled.json").write_text("{")

    for name, problem in [("sms", "unknown action type 'sms'"), ("garbled", "not valid JSON")]:
        response = service.post(name, {"a": 1})
        assert response.status_code == 500
        assert _error_code(response) == "workflow_broken"
        assert problem in response.json()["error"]["message"]
    listed = {w["name"]: w for w in service.client.get("/workflows").json()["workflows"]}
    assert listed["sms"]["state"] == "broken"
    assert listed["sms"]["problem"] == "unknown action type 'sms'"
    assert listed["email"] == {
        "name": "email",
        "id": "hr-email",
        "version": 1,
        "action": "email",
        "state": "active",
    }
    assert service.anonymous.get("/healthz").json()["workflows"]["garbled"] == "broken"


def test_unknown_paths_are_404_and_wrong_methods_405(service: RunningService) -> None:
    assert _error_code(service.anonymous.get("/nope")) == "not_found"
    assert service.anonymous.get("/workflows/email/extra").status_code == 404
    response = service.client.get("/workflows/email")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert _error_code(response) == "method_not_allowed"
    response = service.anonymous.delete("/healthz")
    assert (response.status_code, response.headers["allow"]) == (405, "GET, HEAD")
    head = service.anonymous.head("/healthz")
    assert (head.status_code, head.content) == (200, b"")
    assert _error_code(service.anonymous.request("BREW", "/healthz")) == "not_implemented"


def test_executions_are_listed_newest_first(service: RunningService) -> None:
    ids = [service.post("database", {"n": n}).json()["execution_id"] for n in range(3)]
    ids.append(service.post("google_drive", {"name": "a.txt"}).json()["execution_id"])

    everything = service.client.get("/executions").json()["executions"]
    assert [e["id"] for e in everything] == ids[::-1]
    assert everything[0]["request"] == {"name": "a.txt"}
    assert everything[0]["result"]["folder"] == "Onboarding"
    some = service.client.get("/executions", params={"workflow": "database", "limit": 2}).json()["executions"]
    assert [e["id"] for e in some] == [ids[2], ids[1]]
    assert {e["workflow"] for e in some} == {"database"}
    for bad in ["0", "101", "-1", "ten"]:
        assert service.client.get("/executions", params={"limit": bad}).status_code == 400


def test_concurrent_webhooks_all_commit(service: RunningService) -> None:
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda n: service.post("database", {"n": n}).status_code, range(48)))

    assert statuses == [200] * 48
    assert service.directory.rows("SELECT count(*) FROM records") == [(48,)]


def test_sigterm_finishes_the_request_in_flight_then_exits_0(service: RunningService) -> None:
    blocker = sqlite3.connect(service.directory.db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the webhook's write now waits for this lock
    result: dict[str, httpx.Response] = {}
    service.wait_for_threads(2, at_most=True)  # the warm-up thread is done: a third is the request's
    request = threading.Thread(target=lambda: result.setdefault("r", service.post("database", {"late": 1})))
    request.start()
    service.wait_for_threads(3)  # main, the accept loop and this request's thread: it is in flight

    service.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    assert service.process.poll() is None  # still finishing the request
    blocker.execute("COMMIT")
    blocker.close()
    request.join(5)

    assert result["r"].status_code == 200
    assert service.process.wait(5) == 0
    assert not (service.directory.root / "service.json").exists()
    lines = service.log_lines()
    assert [line.get("event") or line["status"] for line in lines] == [
        "listening",
        "stopping",
        200,
        "stopped",
    ]
    with pytest.raises(httpx.ConnectError):
        service.anonymous.get("/healthz")


def test_sigint_also_exits_0(service: RunningService) -> None:
    assert service.stop(signal.SIGINT) == 0


def test_logs_one_line_per_request_and_no_secrets(service: RunningService) -> None:
    token = mint()
    ok = service.post("email", {"name": "Ada", "employee_id": 1})
    service.post("email", {"name": "Ada"}, headers=bearer(mint(key=OTHER_KEY, kid=KID)))
    service.anonymous.get("/healthz")
    assert service.stop() == 0

    text = service.logs()
    assert token.rpartition(".")[0] not in text
    assert "authorization" not in text.lower()
    requests = [line for line in service.log_lines() if "status" in line]
    assert [(r["method"], r["path"], r["status"]) for r in requests] == [
        ("POST", "/workflows/email", 200),
        ("POST", "/workflows/email", 401),
        ("GET", "/healthz", 200),
    ]
    assert requests[0]["execution_id"] == ok.json()["execution_id"]
    assert requests[1]["auth"].startswith("the token is not valid here: Signature verification failed")
    assert all(isinstance(r["latency_ms"], float) for r in requests)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--department-id", "HR"], "invalid --department-id 'HR'"),
        (["--department-id", "hr-"], "invalid --department-id 'hr-'"),
        (["--department-id", "h"], "invalid --department-id 'h'"),
        (["--department-id", "a" * 33], "invalid --department-id"),
        (["--department-id", "hr", "--dir", "/nonexistent/hr"], "is not an existing directory"),
        (["--department-id", "hr", "--port", "70000"], "--port 70000 is not between 0 and 65535"),
        (["--department-id", "hr", "--port", "http"], "argument --port: invalid int value"),
        (["--dir", "."], "--department-id (or DEPARTMENT_ID) is required"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    if "--dir" not in args:
        args = [*args, "--dir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "department_service", *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert message in done.stderr


def test_a_port_in_use_exits_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run(
            [sys.executable, "-m", "department_service", "--department-id", "hr", "--dir", str(tmp_path),
             "--port", port],
            capture_output=True, text=True, timeout=10, check=False,
            env={**os.environ, **DepartmentDir(tmp_path / "hr").environment},
        )  # fmt: skip

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert not (tmp_path / "service.json").exists()
