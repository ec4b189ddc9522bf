"""Attacks on authentication and authorization, against the running control plane, over gRPC and Envoy.

The server trusts HS256 with the shared secret and RS256/ES256 with the keys of a JWKS file, and
requires an issuer and an audience. A corpus of bad tokens must each get UNAUTHENTICATED over gRPC and
401 through Envoy, with a JSON body that never repeats the token; every method is called with every
kind of role over both and checked against the role matrix, in the answers and on disk; and keys
rotate through the JWKS file while the server runs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.protobuf.json_format import ParseDict
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc
from tests.e2e.conftest import SECRET, ControlPlane, control_plane
from tests.e2e.report import record

pytestmark = pytest.mark.slow

ISSUER, AUDIENCE = "https://issuer.example", "provisioning-api"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ROGUE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # published nowhere
NEXT_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # rotated in
Code = grpc.StatusCode
FIGURES = ("bad_tokens", "bad_tokens_accepted", "role_checks", "role_violations", "rotations_ok")
SPEC = {"departmentName": "Auth", "workflows": ["email"], "dataRetention": "30d", "region": "us-west",
        "adminEmail": "admin@example.com"}  # fmt: skip


def claims(**overrides: Any) -> dict[str, Any]:
    """Good claims (admin, issuer, audience, valid for an hour) with `overrides`; None removes one."""
    now = int(time.time())
    values = {"sub": "alice", "roles": ["admin"], "iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now,
              "exp": now + 3600, **overrides}  # fmt: skip
    return {k: v for k, v in values.items() if v is not None}


def signed(key: Any = RSA_KEY, kid: str | None = "rsa-1", **overrides: Any) -> str:
    """A token signed with `key` (the shared secret when a string), naming `kid`."""
    algorithm = (
        "HS256" if isinstance(key, str) else "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    )
    return jwt.encode(claims(**overrides), key, algorithm=algorithm, headers={"kid": kid} if kid else None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None = None) -> str:
    """A token assembled by hand, as an attacker would: PyJWT refuses to make these."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest() if hmac_key else b""
    return f"{signing_input}.{b64(signature)}"


def jwk(key: Any, kid: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid}


def publish(path: Path, **keys: Any) -> None:
    """Replace the JWKS file atomically with the public halves of `keys`, by kid."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"keys": [jwk(key, kid.replace("_", "-")) for kid, key in keys.items()]}))
    os.replace(temporary, path)


def bad_tokens() -> dict[str, list[str]]:
    """The `authorization` values of each bad token, by what is wrong with it."""
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header, payload, signature = signed().split(".")
    tampered = b64(json.dumps(claims(sub="mallory", roles=["admin", "viewer"])).encode())
    tokens = {
        "alg none": forged({"alg": "none", "typ": "JWT"}, claims()),
        "alg None with a kid": forged({"alg": "None", "kid": "rsa-1"}, claims()),
        "HS256 signed with the RSA public key": forged({"alg": "HS256", "kid": "rsa-1"}, claims(), pem),
        "HS256 signed with the RSA public key, no kid": forged({"alg": "HS256"}, claims(), pem),
        "HS256 signed with another secret": signed("another-secret-that-is-long-enough-too", None),
        "expired": signed(exp=int(time.time()) - 3600),
        "not yet valid": signed(nbf=int(time.time()) + 3600),
        "no expiry": signed(exp=None),
        "expiry not a number": signed(exp="tomorrow"),
        "expiry a numeric string": signed(exp=str(int(time.time()) + 3600)),
        "expiry 10^400": signed(exp=10**400),
        "not-before 10^400": signed(nbf=10**400),
        "expiry infinite": signed(exp=float("inf")),
        "not-before NaN": signed(nbf=float("nan")),
        "wrong issuer": signed(iss="https://evil.example"),
        "no issuer": signed(iss=None),
        "wrong audience": signed(aud="another-api"),
        "no audience": signed(aud=None),
        "signed by an unpublished key": signed(ROGUE_KEY),
        "payload tampered": f"{header}.{tampered}.{signature}",
        "signature stripped": f"{header}.{payload}.",
        "unknown kid": signed(kid="rsa-9"),
        "no kid": signed(kid=None),
        "RS256 naming the EC key": signed(kid="ec-1"),
        "ES256 naming the RSA key": signed(EC_KEY, kid="rsa-1"),
        "no sub": signed(sub=None),
        "empty sub": signed(sub=""),
        "sub not printable": signed(sub="alice\nadmin"),
        "sub too long": signed(sub="a" * 300),
        "roles not a list": signed(roles="admin"),
        "roles not strings": signed(roles=[["admin"]]),
        "malformed": "not-a-jwt",
        "three empty parts": "..",
        "garbage parts": "a.b.c",
        "header not JSON": f"{b64(b'{nope')}.{payload}.{signature}",
    }
    values = {name: [f"Bearer {token}"] for name, token in tokens.items()}
    return values | {
        "missing header": [],
        "empty bearer": ["Bearer "],
        "basic scheme": ["Basic YWxpY2U6aHVudGVyMg=="],
        "token without scheme": [signed()],
        "a bad token beside a good one": [f"Bearer {tokens['unknown kid']}", f"Bearer {signed()}"],
    }


def tokens_in(authorization: list[str]) -> list[str]:
    """What could be a credential in `authorization` values (long enough not to be found by chance)."""
    return [token for value in authorization if len(token := value.partition(" ")[2] or value) > 8]


@dataclass
class Attacked:
    """The control plane under attack, and the figures of the report."""

    plane: ControlPlane
    jwks: Path
    stub: pb_grpc.ProvisioningServiceStub
    figures: Counter[str] = field(default_factory=Counter)

    def grpc(self, method: str, request: Any, authorization: list[str]) -> tuple[Code, str]:
        """The code of a gRPC call, and everything the answer says."""
        metadata = [("authorization", value) for value in authorization]
        try:
            reply = getattr(self.stub, method)(request, metadata=metadata, timeout=30)
            if method == "WatchProgress":
                reply = list(reply)
        except grpc.RpcError as error:
            return error.code(), f"{error.details()} {error.trailing_metadata()}"  # type: ignore[attr-defined]
        return Code.OK, str(reply)

    def rest(self, method: str, path: str, authorization: list[str], **kwargs: Any) -> httpx.Response:
        # HTTP header values cannot end in whitespace: an empty bearer goes as "Bearer".
        headers = [("authorization", value.strip()) for value in authorization]
        with httpx.Client(base_url=self.plane.rest_url, timeout=30, trust_env=False) as client:
            return client.request(method, path, headers=headers, **kwargs)

    def resources(self, department_id: str) -> list[str]:
        """The marker files the (local) steps made for a department: the real world."""
        return sorted(p.name for p in (self.plane.state_dir / "resources" / department_id).glob("*.json"))


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attacked]:
    root = tmp_path_factory.mktemp("auth")
    jwks = root / "jwks.json"
    publish(jwks, rsa_1=RSA_KEY, ec_1=EC_KEY)
    plane = control_plane(
        root,
        PROVISIONER_STEPS="local",  # the edge is under attack, not the steps
        PROVISIONER_JWKS_FILE=str(jwks),
        PROVISIONER_JWT_ISSUER=ISSUER,
        PROVISIONER_JWT_AUDIENCE=AUDIENCE,
        PROVISIONER_RATE_LIMIT_READ="1000000/m",
    )
    plane.start()
    with grpc.insecure_channel(plane.grpc_target) as channel:
        attack = Attacked(plane, jwks, pb_grpc.ProvisioningServiceStub(channel))
        yield attack
    record("auth", **{figure: attack.figures[figure] for figure in FIGURES})
    assert plane.stop() == 0, plane.log.read_text()[-3000:]


def test_bad_tokens_get_unauthenticated_over_grpc_and_401_through_envoy(attacked: Attacked) -> None:
    corpus = bad_tokens()
    listing = pb.ListDepartmentsRequest()
    good = [signed(), signed(EC_KEY, kid="ec-1"), signed(SECRET, None)]
    for token in good:  # so that each refusal below is the token's doing
        assert attacked.grpc("ListDepartments", listing, [f"Bearer {token}"])[0] == Code.OK
        assert attacked.rest("GET", "/api/departments", [f"Bearer {token}"]).status_code == 200
    refused: dict[str, tuple[Code, int]] = {}
    for name, authorization in corpus.items():
        code, said = attacked.grpc("ListDepartments", listing, authorization)
        reply = attacked.rest("GET", "/api/departments", authorization)
        refused[name] = (code, reply.status_code)
        attacked.figures["bad_tokens_accepted"] += (code != Code.UNAUTHENTICATED) + (reply.status_code != 401)
        assert reply.headers["content-type"] == "application/json" and reply.json()["code"] == 16, reply.text
        for token in tokens_in(authorization):
            assert token not in said and token not in reply.text and token not in str(reply.headers), name
    attacked.figures["bad_tokens"] += len(corpus)
    assert refused == dict.fromkeys(corpus, (Code.UNAUTHENTICATED, 401))
    # Nor are they written down: not in the server's log, not in Envoy's.
    logs = attacked.plane.log.read_text() + (attacked.plane.state_dir / "envoy" / "envoy.log").read_text()
    leaked = [name for name, authorization in corpus.items() for t in tokens_in(authorization) if t in logs]
    assert leaked == []


#: Each kind of caller, with a token signed by each kind of key the server trusts.
CALLERS = {
    "no token": "",
    "no role": signed(SECRET, None, sub="nora", roles=[]),
    "unknown role": signed(sub="uma", roles=["superuser", "Admin", "root"]),
    "viewer": signed(EC_KEY, kid="ec-1", sub="victor", roles=["viewer"]),
    "admin": signed(sub="alice", roles=["admin"]),
}
ADMIN_ONLY = {"Provision", "Deprovision"}


def calls(caller: str, job_id: str) -> dict[str, tuple[Any, str, str, dict[str, Any] | None]]:
    """Every method as (gRPC request, HTTP method, path, JSON body), on what the matrix made."""
    mine, job, base = caller.replace(" ", "-"), f"/api/provision-status/{job_id}", "/api/departments/mx-base"
    new = {via: SPEC | {"departmentId": f"mx-{mine}-{via}"} for via in "gr"}  # over gRPC, over REST
    return {
        "Provision": (
            ParseDict(new["g"], pb.ProvisionRequest()),
            "POST",
            "/api/provision-department",
            new["r"],
        ),
        "GetStatus": (pb.GetStatusRequest(job_id=job_id), "GET", job, None),
        "WatchProgress": (pb.WatchProgressRequest(job_id=job_id), "GET", f"{job}/watch", None),
        "Deprovision": (
            pb.DeprovisionRequest(department_id="mx-gone-g"),
            "DELETE",
            "/api/deprovision/mx-gone-r",
            None,
        ),
        "ListDepartments": (pb.ListDepartmentsRequest(), "GET", "/api/departments", None),
        "GetDepartment": (pb.GetDepartmentRequest(department_id="mx-base"), "GET", base, None),
        "GetDepartmentHealth": (
            pb.GetDepartmentHealthRequest(department_id="mx-base"),
            "GET",
            f"{base}/health",
            None,
        ),
    }


def finish(attacked: Attacked, job_id: str) -> pb.Job:
    admin = [("authorization", f"Bearer {CALLERS['admin']}")]
    list(attacked.stub.WatchProgress(pb.WatchProgressRequest(job_id=job_id), metadata=admin, timeout=60))
    return attacked.stub.GetStatus(pb.GetStatusRequest(job_id=job_id), metadata=admin, timeout=10)


def test_every_method_and_role_against_the_matrix_over_grpc_and_through_envoy(attacked: Attacked) -> None:
    admin = [f"Bearer {CALLERS['admin']}"]
    jobs = {}
    for dept in ("mx-base", "mx-gone-g", "mx-gone-r"):
        reply = attacked.rest("POST", "/api/provision-department", admin, json={**SPEC, "departmentId": dept})
        jobs[dept] = reply.json()["jobId"]
        assert finish(attacked, jobs[dept]).state == pb.JOB_STATE_COMPLETED
    made = attacked.resources("mx-base")
    assert len(made) == 7, made

    found, wanted = {}, {}
    for caller, token in CALLERS.items():  # the admin last: its Deprovision takes what the others could not
        for method, (request, verb, path, body) in calls(caller, jobs["mx-base"]).items():
            bearer = [f"Bearer {token}"] if token else []
            code, _ = attacked.grpc(method, request, bearer)
            reply = attacked.rest(verb, path, bearer, json=body)
            allowed = caller == "admin" or (caller == "viewer" and method not in ADMIN_ONLY)
            want = (Code.OK, 200) if allowed else (Code.PERMISSION_DENIED, 403)
            found[caller, method] = got = (code, reply.status_code)
            wanted[caller, method] = want = want if token else (Code.UNAUTHENTICATED, 401)
            attacked.figures["role_checks"] += 2
            attacked.figures["role_violations"] += (got[0] != want[0]) + (got[1] != want[1])
            if reply.status_code in (
                401,
                403,
            ):  # a JSON google.rpc.Status: UNAUTHENTICATED, PERMISSION_DENIED
                assert reply.json()["code"] == {401: 16, 403: 7}[reply.status_code], reply.text
        if caller != "admin":  # on disk: a refused caller made nothing and removed nothing
            assert attacked.resources(f"mx-{caller.replace(' ', '-')}-g") == []
            assert attacked.resources(f"mx-{caller.replace(' ', '-')}-r") == []
            assert attacked.resources("mx-gone-g") == attacked.resources("mx-gone-r") == made
    assert found == wanted
    # And the admin's calls did happen: its departments exist, the ones it tore down are gone.
    admin_metadata = [("authorization", admin[0])]
    for dept, markers in {"mx-admin-g": 7, "mx-admin-r": 7, "mx-gone-g": 0, "mx-gone-r": 0}.items():
        shown = attacked.stub.GetDepartment(
            pb.GetDepartmentRequest(department_id=dept), metadata=admin_metadata
        )
        assert finish(attacked, shown.current_job_id).state == pb.JOB_STATE_COMPLETED
        assert len(attacked.resources(dept)) == markers, dept


def test_keys_rotate_through_the_jwks_file_while_the_server_runs(attacked: Attacked) -> None:
    process = attacked.plane.process
    assert process is not None
    old, new = signed(sub="olga"), signed(NEXT_KEY, kid="rsa-2", sub="nick")

    def accepted(token: str) -> tuple[bool, bool]:
        code, _ = attacked.grpc("ListDepartments", pb.ListDepartmentsRequest(), [f"Bearer {token}"])
        status = attacked.rest("GET", "/api/departments", [f"Bearer {token}"]).status_code
        assert (code, status) in ((Code.OK, 200), (Code.UNAUTHENTICATED, 401)), (code, status)
        return code == Code.OK, status == 200

    phases = [
        ("before", {}, {old: (True, True), new: (False, False)}),
        ("the new key published beside the old", {"rsa_2": NEXT_KEY}, {old: (True, True), new: (True, True)}),
        ("the old key retired", {"rsa_1": None, "rsa_2": NEXT_KEY}, {old: (False, False), new: (True, True)}),
    ]
    keys: dict[str, Any] = {"rsa_1": RSA_KEY, "ec_1": EC_KEY}
    for phase, change, expected in phases:
        keys = {kid: key for kid, key in (keys | change).items() if key is not None}
        publish(attacked.jwks, **keys)
        found = {token: accepted(token) for token in expected}
        assert found == expected, phase
        attacked.figures["rotations_ok"] += bool(change)
    # Without a restart: the same process served every phase.
    assert process.poll() is None and attacked.plane.process is process
