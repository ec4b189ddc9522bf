"""The email workflow against a real SMTP server: sent, refused, unreachable, unconfigured,
over STARTTLS with a login, and what the department's database says about each."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from department_service import mail, schema
from tests.department_service.harness import DepartmentDir, RunningService
from tests.ports import free_port
from tests.smtp import MailServer

HIRE = {"name": "Ada", "employee_id": 1}


def outbox(department: DepartmentDir) -> list[tuple[object, ...]]:
    return department.rows("SELECT status, reply, settled_at IS NOT NULL FROM outbox")


def executions(department: DepartmentDir) -> list[tuple[object, ...]]:
    return [
        (status, json.loads(result).get("delivery", {}).get("status"))
        for status, result in department.rows("SELECT status, result FROM workflow_executions")
    ]


def run(department: DepartmentDir, tmp_path: Path, env: dict[str, str]) -> RunningService:
    return RunningService(department, tmp_path / "service.log", env)


def test_a_refused_recipient_is_recorded_as_failed_with_the_reply(
    service: RunningService, mail_server: MailServer
) -> None:
    mail_server.refuse_recipients("550 5.1.1 <hr-team@example.com>: no such user")

    response = service.post("email", HIRE)

    assert response.status_code == 502
    body = response.json()
    assert body["status"] == "failed"
    assert body["error"] == {
        "code": "smtp_failed",
        "message": "550 5.1.1 <hr-team@example.com>: no such user",
    }
    assert body["result"]["delivery"]["status"] == "failed"
    assert outbox(service.directory) == [("failed", "550 5.1.1 <hr-team@example.com>: no such user", 1)]
    assert executions(service.directory) == [("failed", "failed")]
    assert mail_server.received == []


def test_an_unreachable_relay_is_a_failure_not_a_crash(department: DepartmentDir, tmp_path: Path) -> None:
    service = run(department, tmp_path, {"SMTP_URL": f"smtp://127.0.0.1:{free_port()}"})
    try:
        response = service.post("email", HIRE)
        assert response.status_code == 502
        assert response.json()["error"]["message"].startswith("cannot reach 127.0.0.1:")
        assert [row[0] for row in outbox(department)] == ["failed"]
        assert service.anonymous.get("/healthz").status_code == 200
    finally:
        service.close()


def test_without_a_relay_the_message_is_kept_unsent(department: DepartmentDir, tmp_path: Path) -> None:
    service = run(department, tmp_path, {})
    try:
        response = service.post("email", HIRE)
    finally:
        service.close()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "smtp_not_configured"
    assert "PROVISIONER_SMTP_URL" in response.json()["error"]["message"]
    assert outbox(department) == [("unsent", mail.NOT_CONFIGURED.reply, 1)]
    assert executions(department) == [("failed", "unsent")]


def test_starttls_and_login_deliver_and_the_password_stays_out_of_the_logs(
    department: DepartmentDir, tmp_path: Path
) -> None:
    with MailServer(tmp_path, starttls=True, login=("hr-mailer", "p@ss w0rd")) as relay:
        url = f"smtp://hr-mailer:p%40ss%20w0rd@127.0.0.1:{relay.port}?from=hr@example.com"
        service = run(department, tmp_path, {"SMTP_URL": url, "SMTP_CA_FILE": str(relay.ca_file)})
        try:
            response = service.post("email", HIRE)
            service.stop()
            logs = service.logs()
        finally:
            service.close()
        assert response.status_code == 200, response.text
        [received] = relay.received
    assert received.sender == "hr@example.com"
    assert received.message["From"] == "hr@example.com"
    assert "w0rd" not in logs


def test_an_untrusted_relay_certificate_fails_before_the_password_is_sent(
    department: DepartmentDir, tmp_path: Path
) -> None:
    with MailServer(tmp_path, starttls=True, login=("hr-mailer", "secret")) as relay:
        service = run(department, tmp_path, {"SMTP_URL": relay.url})  # no SMTP_CA_FILE
        try:
            response = service.post("email", HIRE)
        finally:
            service.close()
        assert relay.received == []
    assert response.status_code == 502
    assert "TLS with 127.0.0.1" in response.json()["error"]["message"]


def test_a_dry_run_records_the_execution_and_sends_nothing(
    service: RunningService, mail_server: MailServer
) -> None:
    response = service.client.post("/workflows/email?dryRun=true", json=HIRE)

    assert response.status_code == 200
    assert response.json()["result"]["dry_run"] is True
    assert mail_server.received == []
    assert outbox(service.directory) == []
    assert executions(service.directory) == [("succeeded", None)]
    assert service.client.post("/workflows/email?dryRun=maybe", json=HIRE).status_code == 400


def test_the_service_brings_a_version_1_database_up_to_date(
    department: DepartmentDir, tmp_path: Path
) -> None:
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.executescript(schema._script(1))
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute("INSERT INTO workflow_executions VALUES ('e1', 'email', 't', 'succeeded', '{}', '{}')")
        conn.execute("INSERT INTO outbox (id, execution_id, created_at, recipient, subject, body)"
                     " VALUES ('m1', 'e1', 't', 'a@example.com', 's', 'b')")  # fmt: skip
    old.replace(department.db_path)
    service = run(department, tmp_path, {})
    try:
        assert service.anonymous.get("/healthz").json()["database"] == "ok"
    finally:
        service.close()
    assert department.rows("SELECT max(version) FROM schema_version") == [(schema.SCHEMA_VERSION,)]
    assert department.rows("SELECT id, status FROM outbox") == [("m1", "unsent")]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://mail.example.com", "must start with smtp:// or smtps://"),
        ("smtp://", "has no host"),
        ("smtp://mail.example.com/inbox", "takes no path"),
        ("smtp://mail.example.com?tls=off", "unknown parameters: tls"),
        ("smtp://mail.example.com?from=not-an-address", "'from' must be a plain address"),
        ("smtp://user:hunter2@mail.example.com:99999", "not valid"),
    ],
)
def test_bad_urls_are_refused_without_echoing_the_password(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        mail.parse_url(url, "hr")
    assert "hunter2" not in str(caught.value)


def test_url_defaults() -> None:
    relay = mail.parse_url("smtps://u%40x:p%3Aw@mail.example.com", "hr")
    assert (relay.host, relay.port, relay.implicit_tls, relay.sender) == (
        "mail.example.com",
        465,
        True,
        "hr@localhost",
    )
    assert (relay.username, relay.password) == ("u@x", "p:w")
    assert "p:w" not in repr(relay)
    assert mail.parse_url("smtp://[::1]", "hr").port == 25
    assert mail.parse_url("smtp://[::1]", "hr").loopback
