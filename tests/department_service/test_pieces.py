"""The pure pieces, in-process: authentication, templates, actions, workflow files, request bodies."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from department_service.actions import plan, render
from department_service.auth import Credentials, authenticate, parse_credentials
from department_service.errors import BadRequest, InputRejected, Unauthorized
from department_service.routes import parse_object
from department_service.workflows import DatabaseAction, DriveAction, EmailAction, parse_workflow

CREDENTIALS = Credentials("client-1", hashlib.sha256(b"secret-1").hexdigest(), revoked=False)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class TestAuthenticate:
    def test_the_right_client_passes(self) -> None:
        assert authenticate(basic("client-1", "secret-1"), CREDENTIALS) == "client-1"
        assert authenticate("basic  " + basic("client-1", "secret-1")[6:], CREDENTIALS) == "client-1"

    def test_id_and_secret_are_form_urlencoded_as_rfc_6749_says(self) -> None:
        credentials = Credentials("a b/c", hashlib.sha256("p@ss:wörd".encode()).hexdigest(), revoked=False)
        assert authenticate(basic("a+b%2Fc", "p%40ss%3Aw%C3%B6rd"), credentials) == "a b/c"

    @pytest.mark.parametrize(
        ("header", "reason"),
        [
            (None, "no Authorization header"),
            ("", "no Authorization header"),
            ("Bearer abc", "Authorization is not Basic"),
            ("Basic", "Authorization is not Basic"),
            ("Basic %%%", "Authorization is not valid base64 UTF-8"),
            ("Basic " + base64.b64encode(b"\xff:\xfe").decode(), "Authorization is not valid base64 UTF-8"),
            (
                "Basic " + base64.b64encode(b"client-1").decode(),
                "Authorization has no client_id:client_secret pair",
            ),
            (basic("client-1", "secret-2"), "wrong client id or secret"),
            (basic("client-2", "secret-1"), "wrong client id or secret"),
            (basic("client-1", hashlib.sha256(b"secret-1").hexdigest()), "wrong client id or secret"),
        ],
    )
    def test_anything_else_is_unauthorized(self, header: str | None, reason: str) -> None:
        with pytest.raises(Unauthorized) as caught:
            authenticate(header, CREDENTIALS)
        assert caught.value.reason == reason
        assert caught.value.status == 401
        assert caught.value.headers == {"WWW-Authenticate": 'Basic realm="department"'}

    def test_revoked_credentials_let_nobody_in(self) -> None:
        revoked = Credentials(CREDENTIALS.client_id, CREDENTIALS.secret_sha256, revoked=True)
        with pytest.raises(Unauthorized) as caught:
            authenticate(basic("client-1", "secret-1"), revoked)
        assert caught.value.reason == "client credentials are revoked"

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("not json", "not JSON"),
            ("[]", "not a JSON object"),
            ('{"secret_sha256": "' + "a" * 64 + '"}', "client_id must be a non-empty string"),
            ('{"client_id": "c", "secret_sha256": "abc"}', "secret_sha256 must be 64 hex digits"),
            ('{"client_id": "c", "secret_sha256": "' + "a" * 64 + '", "revoked": "no"}', "revoked must be"),
        ],
    )
    def test_unusable_credentials_files_say_why(self, text: str, problem: str) -> None:
        with pytest.raises(ValueError, match=problem):
            parse_credentials(text)

    def test_the_digest_is_compared_case_insensitively(self) -> None:
        text = json.dumps({"client_id": "c", "secret_sha256": CREDENTIALS.secret_sha256.upper()})
        assert parse_credentials(text) == Credentials("c", CREDENTIALS.secret_sha256, revoked=False)


class TestRender:
    def test_fills_top_level_strings_and_numbers(self) -> None:
        request = {"name": "Ada", "id": 7, "score": 9.5, "first-name": "A"}
        assert render("{name} #{id} scored {score} ({first-name})", request) == "Ada #7 scored 9.5 (A)"
        assert render("{{literal}} {name}", request) == "{literal} Ada"
        assert render("no placeholders", {}) == "no placeholders"

    @pytest.mark.parametrize(
        "template",
        ["{name.__class__}", "{name[0]}", "{0}", "{}", "{name!r}", "{name:>10}", "{name:{id}}", "{ name}"],
    )
    def test_refuses_anything_but_a_plain_field(self, template: str) -> None:
        with pytest.raises(InputRejected, match="is not allowed"):
            render(template, {"name": "Ada", "id": 1, "0": "zero", "": "empty", " name": "x"})

    @pytest.mark.parametrize("template", ["{name", "name}", "{name}}"])
    def test_refuses_unbalanced_braces(self, template: str) -> None:
        with pytest.raises(InputRejected, match="is not valid"):
            render(template, {"name": "Ada"})

    @pytest.mark.parametrize("value", [True, None, [1], {"a": 1}])
    def test_refuses_values_that_are_not_strings_or_numbers(self, value: object) -> None:
        with pytest.raises(InputRejected, match="must be a string or a number"):
            render("{v}", {"v": value})

    def test_refuses_a_missing_field(self) -> None:
        with pytest.raises(InputRejected, match="no field 'v'"):
            render("{v}", {})


class TestPlan:
    def test_email_renders_subject_and_body(self) -> None:
        effect = plan(
            EmailAction("a@example.com", "Hi {name}", "Dear {name},\nwelcome."), {"name": "Ada"}, "m1"
        )
        assert effect.table == "outbox"
        assert effect.values == ("a@example.com", "Hi Ada", "Dear Ada,\nwelcome.", "pending")
        assert effect.result == {"outbox_id": "m1", "to": "a@example.com", "subject": "Hi Ada"}

    def test_email_body_defaults_to_the_request(self) -> None:
        effect = plan(EmailAction("a@example.com", "Hi"), {"b": 1, "a": "x"}, "m1")
        assert json.loads(effect.values[2]) == {"a": "x", "b": 1}

    def test_email_subject_cannot_gain_headers(self) -> None:
        with pytest.raises(InputRejected, match="line break"):
            plan(EmailAction("a@example.com", "Hi {name}"), {"name": "Ada\r\nBcc: x@evil.test"}, "m1")

    @pytest.mark.parametrize("name", [None, 3, "", "   ", "a\x00b", "x" * 256])
    def test_google_drive_needs_a_usable_name(self, name: object) -> None:
        with pytest.raises(InputRejected):
            plan(DriveAction("Docs"), {} if name is None else {"name": name}, "f1")

    def test_google_drive_and_database(self) -> None:
        document = b'{\n  "name": "a.pdf"\n}'
        assert plan(DriveAction("Docs"), {"name": "a.pdf"}, "f1").values == (
            "Docs", "a.pdf", "application/json", len(document), hashlib.sha256(document).hexdigest(), document
        )  # fmt: skip
        effect = plan(DatabaseAction(), {"k": [1, {"v": None}]}, "r1")
        assert (effect.table, json.loads(effect.values[0]), effect.result) == (
            "records", {"k": [1, {"v": None}]}, {"record_id": "r1"}
        )  # fmt: skip


class TestParseWorkflow:
    @staticmethod
    def definition(**changes: object) -> str:
        data = {
            "id": "hr-x",
            "name": "x",
            "department_id": "hr",
            "version": 1,
            "action": {"type": "database"},
        }
        return json.dumps({**data, **changes})

    def test_a_good_definition_is_active(self) -> None:
        workflow = parse_workflow("x", self.definition(), "hr")
        assert (workflow.state, workflow.action, workflow.problem) == ("active", DatabaseAction(), None)

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("{", "not valid JSON"),
            ("[]", "not a JSON object"),
            (definition(action={"type": "fax"}), "unknown action type 'fax'"),
            (definition(action={"type": "email", "to": "nobody", "subject": "s"}), "valid address"),
            (definition(action={"type": "email", "to": "a@b.co"}), "'subject' string"),
            (definition(action={"type": "google_drive"}), "needs a 'folder'"),
            (definition(action="database"), "action must be an object"),
            (definition(name="y"), "does not match the file name"),
            (definition(department_id="finance"), "belongs to department 'finance'"),
            (definition(version=0), "version must be a positive integer"),
        ],
    )
    def test_a_bad_definition_is_broken_with_its_problem(self, text: str, problem: str) -> None:
        workflow = parse_workflow("x", text, "hr")
        assert workflow.state == "broken"
        assert workflow.action is None
        assert problem in (workflow.problem or "")


class TestParseObject:
    def test_objects_and_the_empty_body(self) -> None:
        assert parse_object(b' {"a": [1, 2.5, null]} ') == {"a": [1, 2.5, None]}
        assert parse_object(b"") == {}

    @pytest.mark.parametrize("body", [b"{", b"[1]", b"null", b'{"a": Infinity}', b"\xc3\x28", b"[" * 100_000])
    def test_anything_else_is_a_bad_request(self, body: bytes) -> None:
        with pytest.raises(BadRequest):
            parse_object(body)
