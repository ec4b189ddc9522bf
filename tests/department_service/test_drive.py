"""The google_drive workflow's embedded form: files kept in the department's own database,
listed and fetched through its service, byte for byte, with limits on what a caller sends."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest

from department_service.actions import MAX_FILE_BYTES
from tests.department_service.harness import RunningService


def upload(service: RunningService, **body: object) -> dict[str, object]:
    response = service.post("google_drive", body)
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()["result"]
    return result


def test_a_binary_file_comes_back_byte_for_byte(service: RunningService) -> None:
    data = os.urandom(300_000) + b"\x00\xff"
    encoded = base64.b64encode(data).decode()

    result = upload(service, name="scan 01 (ü).pdf", contentBase64=encoded, contentType="application/pdf")

    assert result["size"] == len(data) and result["sha256"] == hashlib.sha256(data).hexdigest()
    fetched = service.client.get(f"/files/{result['file_id']}")
    assert fetched.status_code == 200
    assert fetched.content == data
    assert fetched.headers["content-type"] == "application/pdf"
    assert fetched.headers["etag"] == f'"{result["sha256"]}"'
    assert (
        fetched.headers["content-disposition"] == "attachment; filename*=UTF-8''scan%2001%20%28%C3%BC%29.pdf"
    )
    assert fetched.headers["x-content-type-options"] == "nosniff"


def test_text_and_json_files_and_the_listing(service: RunningService) -> None:
    note = upload(service, name="note.txt", content="Welcome, Ada.\n")
    request = upload(service, name="request.json", employee="Ada")

    assert service.client.get(f"/files/{note['file_id']}").text == "Welcome, Ada.\n"
    as_json = service.client.get(f"/files/{request['file_id']}")
    assert as_json.headers["content-type"] == "application/json"
    assert as_json.json() == {"name": "request.json", "employee": "Ada"}

    listed = service.client.get("/files").json()["files"]
    assert [(f["name"], f["content_type"], f["folder"]) for f in listed] == [
        ("request.json", "application/json", "Onboarding"),
        ("note.txt", "text/plain; charset=utf-8", "Onboarding"),
    ]  # newest first
    assert listed[1]["size"] == len("Welcome, Ada.\n") and listed[1]["id"] == note["file_id"]
    assert "content" not in listed[0]
    assert service.client.get("/files?limit=1").json()["files"][0]["name"] == "request.json"
    assert service.client.get("/files?folder=Elsewhere").json()["files"] == []


def test_files_are_only_for_the_departments_client(service: RunningService) -> None:
    file_id = upload(service, name="secret.txt", content="x")["file_id"]
    assert service.anonymous.get(f"/files/{file_id}").status_code == 401
    assert service.anonymous.get("/files").status_code == 401
    assert service.client.get("/files/no-such-file").status_code == 404
    assert service.client.get("/files?limit=1000").status_code == 400


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"name": "a", "content": "x", "contentBase64": "eA=="}, "not both"),
        ({"name": "a", "content": 5}, '"content" must be a string'),
        ({"name": "a", "contentBase64": "not base64!"}, "not valid base64"),
        ({"name": "a", "content": "x", "contentType": "text/html\r\nX-Evil: 1"}, "must be a media type"),
        (
            {"name": "a", "contentBase64": base64.b64encode(b"x" * (MAX_FILE_BYTES + 1)).decode()},
            "over the limit",
        ),
    ],
)
def test_bad_files_are_rejected_and_recorded(
    service: RunningService, body: dict[str, object], problem: str
) -> None:
    response = service.post("google_drive", body)

    assert response.status_code == 422, response.text
    assert problem in response.json()["error"]["message"]
    assert service.directory.rows("SELECT count(*) FROM files") == [(0,)]
    [(status, result)] = service.directory.rows("SELECT status, result FROM workflow_executions")
    assert status == "rejected" and problem in json.loads(result)["error"]["message"]


def test_only_a_file_may_be_large(service: RunningService) -> None:
    big = {"name": "a", "content": "x" * 100_000}
    assert service.post("google_drive", big).status_code == 200
    too_big_for_a_record = service.post("database", big)
    assert too_big_for_a_record.status_code == 413
    assert service.post("google_drive", content=b"{" + b" " * (2 * 1024 * 1024) + b"}").status_code == 413
