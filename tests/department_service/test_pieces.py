"""The pure pieces, in-process: authentication, templates, actions, workflow files, request bodies."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import jwt
import pytest
from jwt.algorithms import ECAlgorithm

from department_service.actions import plan, render
from department_service.auth import Credentials, JwksUrl, TokenVerifier, parse_credentials
from department_service.errors import BadRequest, Forbidden, InputRejected, Unauthorized
from department_service.routes import parse_object
from department_service.workflows import DatabaseAction, DriveAction, EmailAction, parse_workflow
from tests.department_service.harness import CLIENT_ID, DEPARTMENT, ISSUER, KEY, KID, mint

CREDENTIALS = Credentials(CLIENT_ID)


class _Keys:
    """A key source over a dict, counting lookups."""

    def __init__(self, **keys: jwt.PyJWK) -> None:
        self.keys = keys

    def key(self, kid: str) -> jwt.PyJWK | None:
        return self.keys.get(kid)


def _verifier() -> TokenVerifier:
    public = jwt.PyJWK(ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True), algorithm="ES256")
    return TokenVerifier(ISSUER, DEPARTMENT, _Keys(**{KID: public}))


class TestAuthenticate:
    def test_a_token_of_the_current_client_with_the_scope_passes(self) -> None:
        caller = _verifier().verify(f"Bearer {mint()}", CREDENTIALS, "workflows:run")
        assert caller.client_id == CLIENT_ID
        assert caller.scopes == {"workflows:run", "executions:read", "files:read"}
        assert _verifier().verify(f"bearer  {mint()}", CREDENTIALS, "files:read").client_id == CLIENT_ID

    @pytest.mark.parametrize(
        ("header", "reason"),
        [
            (None, "no Authorization header"),
            ("", "no Authorization header"),
            ("Basic abc", "Authorization is not Bearer"),
            ("Bearer ", "the Bearer token is empty or too long"),
            ("Bearer " + "a" * 5000, "the Bearer token is empty or too long"),
            ("Bearer abc", "the token is not a JWT"),
            ("Bearer " + mint(typ="JWT"), "the token is not an access token"),
            ("Bearer " + mint(kid="other"), "the token's key 'other' is not one of the platform's"),
            ("Bearer " + mint(aud="http://platform.test/departments/finance/"), "Audience doesn't match"),
            ("Bearer " + mint(iss="http://evil.test"), "Invalid issuer"),
            ("Bearer " + mint(exp=1, iat=0), "Signature has expired"),
            ("Bearer " + mint(client_id="hr.ffff"), "not the department's current client"),
            ("Bearer " + mint(jti=None), 'Token is missing the "jti" claim'),
        ],
    )
    def test_anything_else_is_unauthorized(self, header: str | None, reason: str) -> None:
        with pytest.raises(Unauthorized) as caught:
            _verifier().verify(header, CREDENTIALS, "workflows:run")
        assert reason in caught.value.reason
        assert caught.value.status == 401
        assert caught.value.headers["WWW-Authenticate"].startswith('Bearer realm="department"')

    def test_a_revoked_client_lets_nobody_in(self) -> None:
        with pytest.raises(Unauthorized, match="access token is required") as caught:
            _verifier().verify(f"Bearer {mint()}", Credentials(CLIENT_ID, revoked=True), "workflows:run")
        assert "current client" in caught.value.reason

    def test_a_missing_scope_is_forbidden(self) -> None:
        with pytest.raises(Forbidden) as caught:
            _verifier().verify(f"Bearer {mint(scope='files:read')}", CREDENTIALS, "workflows:run")
        assert caught.value.status == 403
        assert 'scope="workflows:run"' in caught.value.headers["WWW-Authenticate"]

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("not json", "not JSON"),
            ("[]", "not a JSON object"),
            ("{}", "client_id must be 1-128"),
            ('{"client_id": "has space"}', "client_id must be 1-128"),
            ('{"client_id": "hr.abc", "revoked": "no"}', "revoked must be"),
        ],
    )
    def test_unusable_credentials_files_say_why(self, text: str, problem: str) -> None:
        with pytest.raises(ValueError, match=problem):
            parse_credentials(text)

    def test_the_key_set_url_is_fetched_again_for_a_new_key_at_most_every_30_s(self) -> None:
        served = {"keys": []}
        fetched: list[float] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fetched.append(now[0])
                body = json.dumps(served).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        now = [1000.0]
        server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            keys = JwksUrl(f"http://127.0.0.1:{server.server_port}/jwks", clock=lambda: now[0])
            assert keys.key(KID) is None
            served["keys"] = [{**ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": KID}]
            assert keys.key(KID) is None and keys.key("random") is None  # within 30 s: not fetched
            now[0] += 31
            assert keys.key(KID) is not None
            assert keys.key(KID) is not None  # known: no fetch
            assert fetched == [1000.0, 1031.0]
        finally:
            server.shutdown()
            server.server_close()

    def test_a_dropped_connection_to_the_key_set_is_tried_once_more(self) -> None:
        body = json.dumps(
            {"keys": [{**ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": KID}]}
        ).encode()
        answered: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answered.append("dropped" if not answered else "served")
                if answered[-1] == "dropped":  # as a replica dying behind the balancer does
                    self.close_connection = True
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            assert JwksUrl(f"http://127.0.0.1:{server.server_port}/jwks").key(KID) is not None
            assert answered == ["dropped", "served"]
        finally:
            server.shutdown()
            server.server_close()


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
