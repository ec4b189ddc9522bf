"""TLS and mTLS on the gRPC port, with certificates made here: what a client without the
right certificate gets, what the SDK, `provisionctl` and grpcurl get with it, a
certificate replaced while the server runs, and REST through Envoy all the while (Envoy
reaches the server on its private Unix socket, needing no client certificate)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc
from tests.e2e.conftest import BIN, ControlPlane, provisioned, started_plane, token
from tests.pki import Issued, issue

pytestmark = pytest.mark.slow


@dataclass
class Pki:
    directory: Path
    ca_file: Path
    client: tuple[Path, Path]
    server: tuple[Path, Path]
    server_ca: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    server_ca, client_ca = issue("test server CA"), issue("test client CA")
    ca_file = directory / "server-ca.pem"
    ca_file.write_bytes(server_ca.cert.public_bytes(serialization.Encoding.PEM))
    (directory / "client-ca.pem").write_bytes(client_ca.cert.public_bytes(serialization.Encoding.PEM))
    client = issue("billing-service", client_ca).write(directory, "client")
    server = issue("localhost", server_ca, server=True).write(directory, "server")
    return Pki(directory, ca_file, client, server, server_ca)


@pytest.fixture(scope="module")
def plane(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with started_plane(
        tmp_path_factory.mktemp("tls"),
        PROVISIONER_STEPS="local",
        PROVISIONER_TLS_CERT_FILE=str(pki.server[0]),
        PROVISIONER_TLS_KEY_FILE=str(pki.server[1]),
        PROVISIONER_TLS_CLIENT_CA_FILE=str(pki.directory / "client-ca.pem"),
    ) as running:
        yield running


def list_over(channel: grpc.Channel) -> pb.ListDepartmentsResponse:
    stub = pb_grpc.ProvisioningServiceStub(channel)
    metadata = (("authorization", f"Bearer {token('viewer')}"),)
    return stub.ListDepartments(pb.ListDepartmentsRequest(), metadata=metadata, timeout=5)


def test_without_tls_or_without_a_client_certificate_nothing_is_served(plane: ControlPlane, pki: Pki) -> None:
    with grpc.insecure_channel(plane.grpc_target) as channel, pytest.raises(grpc.RpcError) as plain:
        list_over(channel)
    assert plain.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    anonymous = grpc.ssl_channel_credentials(root_certificates=pki.ca_file.read_bytes())
    with (
        grpc.secure_channel(plane.grpc_target, anonymous) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        list_over(channel)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert "Traceback" not in plane.log.read_text()


def test_the_sdk_cli_and_grpcurl_are_served_with_a_client_certificate(plane: ControlPlane, pki: Pki) -> None:
    cert, key = pki.client
    credentials = grpc.ssl_channel_credentials(pki.ca_file.read_bytes(), key.read_bytes(), cert.read_bytes())
    with grpc.secure_channel(plane.grpc_target, credentials) as channel:
        assert list_over(channel).departments == []
    tls = {"PROVISIONER_CA_FILE": str(pki.ca_file), "PROVISIONER_CLIENT_CERT_FILE": str(cert),
           "PROVISIONER_CLIENT_KEY_FILE": str(key)}  # fmt: skip
    plane.env.update(tls)  # `run` passes plane.env to provisionctl
    try:
        listed = plane.run("list", "-o", "json")
    finally:
        for name in tls:
            plane.env.pop(name)
    assert listed.returncode == 0, listed.stderr
    grpcurl = subprocess.run(
        [str(BIN / "grpcurl"), "-cacert", str(pki.ca_file), "-cert", str(cert), "-key", str(key),
         "-H", f"authorization: Bearer {token('viewer')}",
         plane.grpc_target, "provisioning.v1.ProvisioningService/ListDepartments"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert grpcurl.returncode == 0, grpcurl.stderr
    # REST through Envoy over TLS; Envoy reaches the server on its private socket.
    with rest(plane, pki) as api:
        assert api.get("/api/departments").status_code == 200
    curl = subprocess.run(
        ["curl", "-sS", "--fail", "--cacert", str(pki.ca_file),
         "-H", f"authorization: Bearer {token('viewer')}",
         plane.rest_url.replace("http://", "https://") + "/api/departments"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert curl.returncode == 0 and '"departments"' in curl.stdout, curl.stderr


def rest(plane: ControlPlane, pki: Pki) -> httpx.Client:
    return httpx.Client(
        base_url=plane.rest_url.replace("http://", "https://"),
        headers={"authorization": f"Bearer {token('admin')}"},
        verify=ssl.create_default_context(cafile=pki.ca_file),
        timeout=10,
        trust_env=False,
    )


def test_envoys_listener_speaks_tls_only(plane: ControlPlane) -> None:
    with pytest.raises(httpx.HTTPError), plane.http("viewer") as api:
        api.get("/api/departments")


def served_certificate(plane: ControlPlane, pki: Pki, *, target: str = "") -> x509.Certificate:
    context = ssl.create_default_context(cafile=pki.ca_file)
    context.load_cert_chain(*pki.client)
    context.set_alpn_protocols(["h2"])
    host, port = (target or plane.grpc_target).split(":")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_a_replaced_certificate_is_served_to_new_connections_without_a_restart(
    plane: ControlPlane, pki: Pki
) -> None:
    before = served_certificate(plane, pki)
    renewed = issue("localhost", pki.server_ca, server=True)
    renewed.write(pki.directory, "server")
    deadline = time.monotonic() + 10
    while served_certificate(plane, pki).serial_number == before.serial_number:
        assert time.monotonic() < deadline, "the renewed certificate was never served"
        time.sleep(0.1)
    assert served_certificate(plane, pki).serial_number == renewed.cert.serial_number
    # Envoy's listener follows the same files.
    listener = plane.rest_url.removeprefix("http://")
    while served_certificate(plane, pki, target=listener).serial_number != renewed.cert.serial_number:
        assert time.monotonic() < deadline + 10, "Envoy never served the renewed certificate"
        time.sleep(0.1)
    with rest(plane, pki) as api:
        assert api.get("/api/departments").status_code == 200
    assert plane.process is not None and plane.process.poll() is None


def test_a_department_is_made_and_reached_through_envoy_over_tls(pki: Pki, tmp_path: Path) -> None:
    """The embedded steps route and validate the department through the TLS listener."""
    with (
        started_plane(
            tmp_path,
            PROVISIONER_TLS_CERT_FILE=str(pki.server[0]),
            PROVISIONER_TLS_KEY_FILE=str(pki.server[1]),
        ) as plane,
        rest(plane, pki) as api,
    ):
        spec = {"departmentId": "secure", "departmentName": "Secure", "workflows": ["email"],
                "dataRetention": "30d", "region": "us-west", "adminEmail": "admin@example.com"}  # fmt: skip
        job = provisioned(api, spec)
        assert job["state"] == "JOB_STATE_COMPLETED", job
        assert api.get("/departments/secure/healthz").json()["status"] == "SERVING"
