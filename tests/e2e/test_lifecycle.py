"""Starting, draining and stopping the control plane as an operator does, with grpcurl
as an independent client."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import grpc
import httpx
import pytest

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc
from tests.e2e.conftest import BIN, ControlPlane, control_plane, token
from tests.e2e.report import record

pytestmark = pytest.mark.slow


def grpcurl(plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "grpcurl"), "-plaintext", "-H", f"authorization: Bearer {token()}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; its parent (init) will reap it.
    return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def envoy_pid(plane: ControlPlane) -> int:
    return int((plane.state_dir / "envoy" / "envoy.pid").read_text())


def test_one_command_starts_both_prints_where_and_stops_both(tmp_path: Path) -> None:
    plane = control_plane(tmp_path)
    plane.start()
    assert plane.grpc_target in plane.stdout
    assert plane.rest_url.removeprefix("http://") in plane.stdout
    assert "provisionctl token --role admin" in plane.stdout
    # grpcurl needs nothing but reflection; health needs no token.
    services = grpcurl(plane, plane.grpc_target, "list").stdout.split()
    assert services == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "provisioning.v1.ProvisioningService",
    ]
    health = grpcurl(plane, plane.grpc_target, "grpc.health.v1.Health/Check")
    assert json.loads(health.stdout) == {"status": "SERVING"}
    missing = grpcurl(
        plane,
        "-d",
        '{"jobId": "9b2f6c1e-0d7a-4c55-8a3e-1f6f4b8e2a10"}',
        plane.grpc_target,
        "provisioning.v1.ProvisioningService/GetStatus",
    )
    assert missing.returncode != 0
    assert "Code: NotFound" in missing.stderr
    pid = envoy_pid(plane)
    assert alive(pid)

    assert plane.stop(signal.SIGINT) == 0
    assert not alive(pid)
    assert not (plane.state_dir / "envoy" / "envoy.pid").exists()


def test_a_busy_port_is_one_clear_error_and_leaves_nothing_running(tmp_path: Path) -> None:
    plane = control_plane(tmp_path)
    host, port = plane.rest_url.removeprefix("http://").split(":")
    with socket.socket() as squatter:
        squatter.bind((host, int(port)))
        squatter.listen()
        plane.start(expect_ready=False)
        assert plane.process is not None
        assert plane.process.wait(timeout=60) == 1
    log = plane.log.read_text()
    assert "PROVISIONER_HTTP_ADDR" in log
    assert "Traceback" not in log
    # The gRPC port was released too: a second start on the same settings works.
    plane.start()
    assert plane.stop() == 0


def test_production_mode_refuses_development_conveniences_and_says_what_to_set(tmp_path: Path) -> None:
    """Without PROVISIONER_MODE=development the server needs real secrets: no self-made JWT
    secret, no key file beside the job store, no fault injection."""
    plane = control_plane(
        tmp_path, PROVISIONER_MODE="", PROVISIONER_JWT_SECRET="", PROVISIONER_FAULT_INJECTION="gateway=fail"
    )
    plane.start(expect_ready=False)
    assert plane.process is not None and plane.process.wait(timeout=60) == 2
    refusal = plane.log.read_text()
    for setting in ("PROVISIONER_JWT_SECRET", "PROVISIONER_ENCRYPTION_KEY", "PROVISIONER_FAULT_INJECTION",
                    "PROVISIONER_MODE=development"):  # fmt: skip
        assert setting in refusal, refusal
    assert not (plane.state_dir / "jwt-secret").exists()
    assert not (plane.state_dir / "encryption-keys.json").exists()
    # With real secrets it starts, and makes neither file.
    (tmp_path / "ready").mkdir()
    ready = control_plane(
        tmp_path / "ready",
        PROVISIONER_MODE="production",
        PROVISIONER_ENCRYPTION_KEY=base64.b64encode(os.urandom(32)).decode(),
    )
    ready.start()
    assert ready.stop() == 0
    assert not (ready.state_dir / "jwt-secret").exists()
    assert not (ready.state_dir / "encryption-keys.json").exists()


def test_envoy_does_not_outlive_a_killed_server_and_a_restart_takes_over(tmp_path: Path) -> None:
    plane = control_plane(tmp_path)
    plane.start()
    pid = envoy_pid(plane)
    assert plane.stop(signal.SIGKILL) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while alive(pid):
        assert time.monotonic() < deadline, "envoy outlived its server"
        time.sleep(0.05)
    plane.start()
    assert plane.stop() == 0


def test_draining_ends_watches_resumably_and_jobs_finish_after_a_restart(tmp_path: Path) -> None:
    plane = control_plane(tmp_path, PROVISIONER_STEPS="local", PROVISIONER_STEP_DELAY="0.5")
    plane.start("--no-envoy")
    metadata = (("authorization", f"Bearer {token()}"),)
    request = pb.ProvisionRequest(
        department_id="drained",
        department_name="Drained",
        workflows=["email"],
        data_retention="30d",
        region="eu-west",
        admin_email="ops@example.com",
    )
    with grpc.insecure_channel(plane.grpc_target) as channel:
        stub = pb_grpc.ProvisioningServiceStub(channel)
        job = stub.Provision(request, metadata=metadata, timeout=10)
        stream = stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), metadata=metadata)
        seen: list[int] = []

        def follow() -> None:
            for message in stream:
                if message.HasField("event"):
                    seen.append(message.event.sequence)
                    if len(seen) == 3:
                        plane.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]

        with pytest.raises(grpc.RpcError) as ended:
            follow()
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert plane.stop() == 0

    plane.start("--no-envoy")
    with grpc.insecure_channel(plane.grpc_target) as channel:
        stub = pb_grpc.ProvisioningServiceStub(channel)
        resumed = stub.WatchProgress(
            pb.WatchProgressRequest(job_id=job.job_id, after_sequence=seen[-1]), metadata=metadata
        )
        events = [m.event for m in resumed if m.HasField("event")]
    sequences = seen + [e.sequence for e in events]
    assert sequences == list(range(1, len(sequences) + 1))
    assert events[-1].state == pb.JOB_STATE_COMPLETED
    assert plane.stop() == 0


def test_envoy_is_restarted_and_rest_watchers_resume_where_they_were(tmp_path: Path) -> None:
    plane = control_plane(tmp_path, PROVISIONER_STEPS="local", PROVISIONER_STEP_DELAY="0.4")
    plane.start()
    try:
        with plane.http() as client:
            spec = {
                "departmentId": "resumed", "departmentName": "Resumed", "workflows": ["email"],
                "dataRetention": "30d", "region": "eu-west", "adminEmail": "ops@example.com",
            }  # fmt: skip
            job = client.post("/api/provision-department", json=spec).json()
            first_envoy = envoy_pid(plane)
            seen: list[int] = []
            finished = False
            reconnects = 0
            deadline = time.monotonic() + 60
            while not finished:
                assert time.monotonic() < deadline, f"never finished; saw {seen}"
                params = {"afterSequence": str(seen[-1])} if seen else None
                try:
                    with client.stream(
                        "GET", f"/api/provision-status/{job['jobId']}/watch", params=params, timeout=30
                    ) as reply:
                        if reply.status_code != 200:
                            raise httpx.TransportError(f"status {reply.status_code}")
                        for line in reply.iter_lines():
                            if not line.startswith("data: "):
                                continue
                            event = json.loads(line.removeprefix("data: ")).get("event")
                            if event is None:
                                continue
                            seen.append(int(event["sequence"]))
                            finished = event["type"] == "JOB_EVENT_TYPE_JOB_FINISHED"
                            if len(seen) == 3 and not reconnects:
                                os.kill(envoy_pid(plane), signal.SIGKILL)
                except httpx.HTTPError:
                    pass
                if not finished:
                    reconnects += 1
                    time.sleep(0.1)
        record(
            "envoy_restart",
            reconnects=reconnects,
            events=len(seen),
            lost_or_repeated=len(seen) - len(set(seen)) + len(set(range(1, max(seen) + 1)) - set(seen)),
        )
        assert reconnects >= 1
        assert seen == list(range(1, len(seen) + 1))
        assert envoy_pid(plane) != first_envoy
        assert "envoy exited" in plane.log.read_text()
    finally:
        assert plane.stop() == 0
