"""The token endpoint's rules (provisioner.core.oauth): the form, client authentication,
scopes and the access token's claims, as RFC 6749, 8414 and 9068 state them."""

from __future__ import annotations

import base64

import pytest

from provisioner.core.oauth import (
    SCOPES,
    OAuthError,
    access_token_claims,
    audience_of,
    authenticate_request,
    department_of,
    granted_scope,
    metadata,
    parse_form,
)

FORM = "application/x-www-form-urlencoded"


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


class TestForm:
    def test_parameters_of_a_form_body(self) -> None:
        assert parse_form(FORM + "; charset=UTF-8", b"grant_type=client_credentials&scope=a+b") == {
            "grant_type": "client_credentials",
            "scope": "a b",
        }
        assert parse_form(FORM, b"") == {}

    @pytest.mark.parametrize(
        ("content_type", "body", "problem"),
        [
            ("application/json", b'{"grant_type": "client_credentials"}', "must be sent as"),
            (None, b"grant_type=client_credentials", "must be sent as"),
            (FORM, b"grant_type=a&grant_type=b", "more than once: grant_type"),
            (FORM, b"\xff=1", "cannot be read"),
            (FORM, b"scope=" + b"x" * 600, "over 512 characters: scope"),
            (FORM, b"&".join(b"p%d=1" % i for i in range(30)), "cannot be read"),
        ],
    )
    def test_anything_else_is_invalid_request(
        self, content_type: str | None, body: bytes, problem: str
    ) -> None:
        with pytest.raises(OAuthError) as caught:
            parse_form(content_type, body)
        assert caught.value.error == "invalid_request" and caught.value.status == 400
        assert problem in caught.value.description


class TestClientAuthentication:
    def test_basic_with_form_urlencoded_halves(self) -> None:
        # RFC 6749 §2.3.1: id and secret are form-urlencoded before base64.
        client = authenticate_request(basic("hr.a%2Bb", "p%40ss+w%C3%B6rd"), {})
        assert (client.client_id, client.secret, client.method) == (
            "hr.a+b",
            "p@ss wörd",
            "client_secret_basic",
        )

    def test_form_parameters(self) -> None:
        client = authenticate_request(None, {"client_id": "hr.1", "client_secret": "s"})
        assert (client.client_id, client.secret, client.method) == ("hr.1", "s", "client_secret_post")

    @pytest.mark.parametrize(
        ("authorization", "form", "error", "status", "challenge"),
        [
            (None, {}, "invalid_client", 401, True),
            (None, {"client_id": "hr.1"}, "invalid_client", 401, True),
            ("Bearer abc", {}, "invalid_client", 401, False),
            ("Basic %%%", {}, "invalid_client", 401, True),
            ("Basic " + base64.b64encode(b"no-colon").decode(), {}, "invalid_client", 401, True),
            (basic("hr.1", "s"), {"client_secret": "s"}, "invalid_request", 400, False),
            (None, {"client_secret": "s"}, "invalid_request", 400, False),
        ],
    )
    def test_refusals(
        self, authorization: str | None, form: dict[str, str], error: str, status: int, challenge: bool
    ) -> None:
        with pytest.raises(OAuthError) as caught:
            authenticate_request(authorization, form)
        assert (caught.value.error, caught.value.status, caught.value.basic_challenge) == (
            error,
            status,
            challenge,
        )


@pytest.mark.parametrize(
    ("client_id", "department"),
    [
        ("hr.0a1b", "hr"),
        ("finance-emea.x", "finance-emea"),
        ("hr", None),
        ("hr.", None),
        ("HR.1", None),
        ("", None),
    ],
)
def test_a_client_id_names_its_department(client_id: str, department: str | None) -> None:
    assert department_of(client_id) == department


def test_scopes() -> None:
    assert granted_scope(None) == SCOPES
    assert granted_scope("  ") == SCOPES
    assert granted_scope("files:read files:read workflows:run") == ("files:read", "workflows:run")
    with pytest.raises(OAuthError) as caught:
        granted_scope("files:read admin")
    assert caught.value.error == "invalid_scope" and "admin" in caught.value.description


def test_claims_follow_rfc_9068() -> None:
    claims = access_token_claims(
        issuer="https://platform.example",
        client_id="hr.1",
        department_id="hr",
        scope=("files:read",),
        now=1000,
        ttl=300,
        jti="j1",
    )
    assert claims == {
        "iss": "https://platform.example",
        "sub": "hr.1",
        "client_id": "hr.1",
        "aud": "https://platform.example/departments/hr/",
        "scope": "files:read",
        "iat": 1000,
        "exp": 1300,
        "jti": "j1",
    }
    assert audience_of("https://platform.example/", "hr") == claims["aud"]


def test_metadata_follows_rfc_8414() -> None:
    described = metadata("https://platform.example")
    assert described["issuer"] == "https://platform.example"
    assert described["token_endpoint"] == "https://platform.example/oauth2/token"
    assert described["jwks_uri"] == "https://platform.example/.well-known/jwks.json"
    assert described["grant_types_supported"] == ["client_credentials"]
    assert described["token_endpoint_auth_methods_supported"] == ["client_secret_basic", "client_secret_post"]
