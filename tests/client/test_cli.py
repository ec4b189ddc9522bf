"""`provisionctl` in-process (`cli.main`) against a real server on a background thread."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import uuid
from pathlib import Path

import jwt
import pytest
import yaml

from provisioner_client import cli
from tests.client.harness import ThreadedServer

SECRET = "a-development-secret-of-forty-characters!"
FLAGS = [
    "--name",
    "Human Resources",
    "--workflow",
    "email",
    "--workflow",
    "google_drive,database",
    "--retention",
    "90d",
    "--region",
    "us-west",
    "--admin-email",
    "admin@synrgscaling.com",
]


@pytest.fixture
def target(threaded_server: ThreadedServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PROVISIONER_SERVER", threaded_server.target)
    return threaded_server.target


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_provision_streams_a_line_per_event_then_the_outcome(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "provision", "--department-id", "hr", *FLAGS)
    assert code == 0, err
    lines = out.splitlines()
    assert "job " in lines[0] and "provision of hr" in lines[0]
    for step in ("validate", "database", "oauth", "container", "workflows", "gateway", "validation"):
        assert any(f"{step} succeeded" in line for line in lines), step
    assert any("#1 " in line and "PENDING" in line for line in lines)
    assert lines[-1].startswith("COMPLETED: provision of hr in ")


def test_provision_json_is_one_object_per_line(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-o", "json", "provision", "--department-id", "hr", *FLAGS)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert list(lines[0]) == ["snapshot"]
    assert lines[0]["snapshot"]["departmentId"] == "hr"
    events = [line["event"] for line in lines[1:]]
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "JOB_EVENT_TYPE_JOB_FINISHED"
    assert events[-1]["state"] == "JOB_STATE_COMPLETED"


def test_a_failed_job_exits_1_with_its_error_and_cleanup(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "provision", "--department-id", "doomed-hr", *FLAGS)
    assert code == 1
    assert any("undoing" in line for line in out.splitlines())
    tail = out[out.index("FAILED: provision of doomed-hr") :]
    assert "the gateway refused the route (step gateway)" in tail
    assert "undone: " in tail and "nothing left behind" in tail
    job_id = tail.split("(job ")[1].split(")")[0]
    code, out, _ = run(capsys, "status", job_id)
    assert code == 1
    assert "FAILED" in out and "gateway" in out


def test_invalid_arguments_exit_2_listing_each_field(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "provision",
        "--department-id",
        "HR",
        *FLAGS[:-4],
        "--region",
        "x",
        "--admin-email",
        "nope",
    )
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith("provisionctl: error: the server rejected the request")
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "--department-id",
        "--region",
        "--admin-email",
    ]


def test_usage_errors_exit_2(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "provision", "--department-id", "hr")
    assert code == 2
    assert err.strip() == (
        "provisionctl: error: provision needs --name, --workflow, --retention, --region, --admin-email "
        "(or a spec file given with -f)"
    )
    assert run(capsys)[0] == 2
    assert run(capsys, "list", "--status", "sleepy")[0] == 2
    assert run(capsys, "--timeout", "-1", "list")[0] == 2


def test_unknown_things_exit_4(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "status", str(uuid.uuid4()))
    assert code == 4
    assert err.startswith("provisionctl: error: not found: job ") and err.count("\n") == 1
    assert run(capsys, "get", "ghost")[0] == 4
    assert run(capsys, "health", "ghost")[0] == 4
    assert run(capsys, "watch", str(uuid.uuid4()))[0] == 4
    assert run(capsys, "deprovision", "ghost")[0] == 4


def test_an_unreachable_server_exits_6(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = run(capsys, "--server", f"127.0.0.1:{port}", "list")
    assert code == 6
    assert out == ""
    assert err.startswith(f"provisionctl: error: cannot reach the server at 127.0.0.1:{port}")
    assert err.count("\n") == 1


def test_refusals_exit_3_and_rate_limits_exit_5_with_the_delay(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--token", "nobody", "list")
    assert code == 3
    assert "not authenticated: the token is not valid" in err
    assert "nobody" not in err
    code, _, err = run(capsys, "list", "--token", "rate-limited")
    assert code == 5
    assert "rate limited: too many requests; retry in 7 s" in err


def test_spec_files_in_yaml_and_json(target: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    yaml_spec = tmp_path / "spec.yaml"
    yaml_spec.write_text(
        "departmentId: yaml-dept\ndepartmentName: From YAML\nworkflows: [email]\n"
        "dataRetention: 30d\nregion: eu-west\nadminEmail: a@example.com\n"
    )
    code, out, _ = run(capsys, "-o", "json", "provision", "-f", str(yaml_spec), "--no-wait")
    assert code == 0
    job = json.loads(out)
    assert job["departmentId"] == "yaml-dept"
    assert job["state"] == "JOB_STATE_PENDING"
    json_spec = tmp_path / "spec.json"
    json_spec.write_text(
        json.dumps(
            {
                "departmentId": "json-dept",
                "departmentName": "From JSON",
                "workflows": ["database"],
                "dataRetention": "7d",
                "region": "us-east",
                "adminEmail": "b@example.com",
            }
        )
    )
    # A flag beats the file.
    code, out, _ = run(capsys, "provision", "-f", str(json_spec), "--region", "ap-south")
    assert code == 0
    code, out, _ = run(capsys, "-o", "json", "get", "json-dept")
    assert json.loads(out)["region"] == "ap-south"
    bad = tmp_path / "bad.yaml"
    bad.write_text("departmentId: x\ncolour: blue\n")
    code, _, err = run(capsys, "provision", "-f", str(bad))
    assert code == 2
    assert "unknown fields colour" in err
    code, _, err = run(capsys, "provision", "-f", str(tmp_path / "missing.yaml"))
    assert code == 2
    assert "cannot read the spec file" in err


def test_list_get_health_and_deprovision(
    target: str, threaded_server: ThreadedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, region in (("a1", "us-west"), ("b2", "eu-west")):
        assert (
            run(capsys, "provision", "--department-id", name, *FLAGS[:-4], "--region", region, *FLAGS[-2:])[0]
            == 0
        )
    code, out, _ = run(capsys, "list")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["DEPARTMENT", "a1", "b2"]
    code, out, _ = run(capsys, "list", "--region", "eu-west", "--status", "active", "-o", "json")
    assert [d["departmentId"] for d in json.loads(out)["departments"]] == ["b2"]
    code, out, _ = run(capsys, "get", "a1")
    assert code == 0 and "active" in out
    code, out, _ = run(capsys, "health", "a1")
    assert code == 0 and out.startswith("department a1 is healthy")
    (threaded_server.harness.root / "a1" / "gateway.json").unlink()
    code, out, _ = run(capsys, "health", "a1", "-o", "json")
    assert code == 1
    assert json.loads(out)["healthy"] is False
    code, out, _ = run(capsys, "deprovision", "b2")
    assert code == 0
    assert "removing" in out and "undoing" not in out
    assert out.splitlines()[-1].startswith("COMPLETED: deprovision of b2")
    code, out, _ = run(capsys, "list", "--status", "deprovisioned")
    assert [line.split()[0] for line in out.splitlines()] == ["DEPARTMENT", "b2"]


def test_watch_survives_a_server_restart(
    target: str, threaded_server: ThreadedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "-o", "json", "provision", "--no-wait", "--department-id", "slow-w", *FLAGS)
    job_id = json.loads(out)["jobId"]
    restarted = threaded_server.later(_restart_once_watched(threaded_server))
    code, out, err = run(capsys, "-o", "json", "watch", job_id)
    restarted.result(timeout=5)
    assert code == 0
    assert "reconnecting… (UNAVAILABLE" in err
    events = [json.loads(line)["event"] for line in out.splitlines()[1:]]
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["state"] == "JOB_STATE_COMPLETED"


async def _restart_once_watched(server: ThreadedServer) -> None:
    """Restart as soon as the CLI's watch is subscribed, while the slow job still runs."""
    hub = server.harness.orchestrator.hub
    for _ in range(1000):  # the hub has no event to await: poll it, for at most 5 s
        if hub.subscriber_count:
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)
    await server.harness.restart(down_for=0.3)


def test_token_mints_the_claims_the_server_checks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "token", "--role", "admin")
    assert code == 2
    assert out == ""
    assert "PROVISIONER_JWT_SECRET is not set" in err
    monkeypatch.setenv("PROVISIONER_JWT_SECRET", "short")
    code, _, err = run(capsys, "token", "--role", "admin")
    assert code == 2 and "too short" in err and "short" not in err.split("too short")[0].split(":", 2)[-1]
    monkeypatch.setenv("PROVISIONER_JWT_SECRET", SECRET)
    before = int(time.time())
    code, out, err = run(capsys, "token", "--role", "viewer", "--subject", "alice", "--ttl", "15m")
    assert code == 0 and err == ""
    token = out.strip()
    assert out == token + "\n"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["roles"] == ["viewer"]
    assert before <= claims["iat"] == claims["nbf"] <= int(time.time())
    assert claims["exp"] == claims["iat"] + 900
    assert "iss" not in claims and "aud" not in claims
    monkeypatch.setenv("PROVISIONER_JWT_ISSUER", "https://issuer.example")
    monkeypatch.setenv("PROVISIONER_JWT_AUDIENCE", "provisioning")
    code, out, _ = run(capsys, "token", "--role", "admin", "--role", "viewer")
    claims = jwt.decode(
        out.strip(), SECRET, algorithms=["HS256"], issuer="https://issuer.example", audience="provisioning"
    )
    assert claims["roles"] == ["admin", "viewer"]
    assert claims["exp"] - claims["iat"] == 3600
    assert run(capsys, "token", "--role", "root")[0] == 2


def test_the_token_goes_out_as_a_bearer_header_and_is_never_printed(
    target: str,
    threaded_server: ThreadedServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PROVISIONER_TOKEN", "env-token-123")
    code, out, err = run(capsys, "list")
    assert code == 0
    assert threaded_server.harness.auth.seen[-1] == "Bearer env-token-123"
    assert "env-token-123" not in out + err
    code, _, err = run(capsys, "--token", "bad token", "list")
    assert code == 2
    assert "bad token" not in err


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "exit codes:" in out
    for line in ("0  success", "4  NOT_FOUND", "6  server unreachable", "7  anything else"):
        assert line in out


def test_conflicts_exit_8_and_surprises_7_in_one_sentence(
    target: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "provision", "--no-wait", "--department-id", "hr", *FLAGS)[0] == 0
    code, _, err = run(
        capsys,
        "provision",
        "--no-wait",
        "--department-id",
        "hr",
        *FLAGS[:-4],
        "--region",
        "eu-west",
        *FLAGS[-2:],
    )
    assert code == 8
    assert err.count("\n") == 1 and err.startswith("provisionctl: error: conflict: ")

    async def explode(*args: object) -> int:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(cli, "_list", explode)
    code, _, err = run(capsys, "list")
    assert code == 7
    assert err == "provisionctl: error: unexpected RuntimeError: kaboom\n"


def test_export_prints_only_shell_lines_and_a_replay_says_what_it_is(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "provision", "--department-id", "hr", *FLAGS, "--export")
    assert code == 0, err
    assert all(line.startswith("export ") for line in out.splitlines())
    exports = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    assert exports["DEPARTMENT_ID"] == "hr" and len(exports["JOB_ID"]) == 36
    assert "COMPLETED: provision of hr" in err, "the progress goes to stderr"

    code, out, err = run(capsys, "provision", "--department-id", "hr", *FLAGS, "--no-wait")
    assert code == 0
    assert f"hr was already asked for by job {exports['JOB_ID']} (COMPLETED)" in err
    assert "not shown again" in err


def test_violations_are_named_as_the_caller_wrote_them(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "provision", "--department-id", "hr", *FLAGS[:-2], "--admin-email", "nope")
    assert code == 2
    assert err.splitlines() == [
        "provisionctl: error: the server rejected the request: invalid request: --admin-email "
        "must be an email address like admin@example.com",
        "  --admin-email: must be an email address like admin@example.com",
    ]
    spec = tmp_path / "spec.yaml"
    spec.write_text("departmentId: hr\ndepartmentName: HR\nworkflows: [email]\ndataRetention: 9999d\n")
    code, _, err = run(capsys, "provision", "-f", str(spec), "--region", "us-west", "--admin-email", "a@b.co")
    assert code == 2
    assert f"  dataRetention in {spec}: " in err


def test_dry_runs_say_what_would_happen_and_do_nothing(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "provision", "--department-id", "hr", *FLAGS, "--dry-run")
    assert (code, out) == (0, "dry run: provision of hr would be accepted; nothing done\n"), err
    code, out, _ = run(capsys, "list")
    assert out == "no departments\n"
    code, _, err = run(capsys, "provision", "--department-id", "HR", *FLAGS, "--dry-run")
    assert code == 2 and "--department-id" in err
    code, _, err = run(capsys, "deprovision", "hr", "--dry-run")
    assert code == 4, err
    assert run(capsys, "provision", "--department-id", "hr", *FLAGS)[0] == 0
    code, out, _ = run(capsys, "deprovision", "hr", "--dry-run", "-o", "json")
    assert (
        code == 0 and json.loads(out)["kind"] == "JOB_KIND_DEPROVISION" and not json.loads(out).get("jobId")
    )
    code, out, _ = run(capsys, "provision", "--department-id", "hr", *FLAGS, "--dry-run")
    assert code == 0 and "would return job" in out and "(COMPLETED), which already does it" in out


def test_every_read_command_speaks_yaml_wide_and_no_headers(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "provision", "--department-id", "hr", *FLAGS)[0] == 0
    assert run(capsys, "provision", "--department-id", "ops", *FLAGS)[0] == 0
    assert run(capsys, "deprovision", "ops")[0] == 0

    code, out, err = run(capsys, "list")
    assert [line.split()[0] for line in out.splitlines()] == ["DEPARTMENT", "hr"]
    assert err == "(1 deprovisioned not shown; --all shows them)\n"
    code, out, _ = run(capsys, "list", "--all", "--no-headers")
    assert [line.split()[:2] for line in out.splitlines()] == [["hr", "active"], ["ops", "deprovisioned"]]
    code, out, _ = run(capsys, "list", "-o", "wide")
    assert "CURRENT JOB" in out.splitlines()[0] and "admin@synrgscaling.com" in out
    code, out, _ = run(capsys, "list", "-o", "yaml")
    assert yaml.safe_load(out)["departments"][0]["departmentId"] == "hr"

    code, out, _ = run(capsys, "jobs", "--department", "ops", "-o", "yaml")
    assert [j["kind"] for j in yaml.safe_load(out)["jobs"]] == ["JOB_KIND_DEPROVISION", "JOB_KIND_PROVISION"]
    code, out, _ = run(capsys, "jobs", "--no-headers", "-o", "wide")
    assert len(out.splitlines()) == 3 and not out.startswith("JOB")
    code, out, _ = run(capsys, "get", "hr", "-o", "yaml")
    assert yaml.safe_load(out)["status"] == "DEPARTMENT_STATUS_ACTIVE"
    code, out, _ = run(capsys, "health", "hr", "--no-headers")
    assert out.startswith("department hr is healthy") and "STEP" not in out
    code, out, _ = run(capsys, "audit", "-o", "wide", "--limit", "1")
    assert code == 0 and "REQUEST ID" in out.splitlines()[0] and len(out.splitlines()) == 2


def test_version_and_a_precondition_said_once(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("provisionctl ")
    assert run(capsys, "provision", "--department-id", "hr", *FLAGS)[0] == 0
    assert run(capsys, "deprovision", "hr")[0] == 0
    code, _, err = run(capsys, "health", "hr")
    assert code == 8
    assert err == "provisionctl: error: not possible now: department hr is deprovisioned\n"


def test_describe_shows_the_department_its_job_and_its_health(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "provision", "--department-id", "hr", *FLAGS)[0] == 0
    code, out, _ = run(capsys, "describe", "hr")
    assert code == 0
    assert out.split()[:2] == ["department", "hr"] and "\njob " in out and "department hr is healthy" in out
    code, out, _ = run(capsys, "describe", "hr", "-o", "json")
    described = json.loads(out)
    assert described["currentJob"]["state"] == "JOB_STATE_COMPLETED" and described["health"]["healthy"]
    assert run(capsys, "deprovision", "hr")[0] == 0
    code, out, _ = run(capsys, "describe", "hr")
    assert code == 0 and "health not checked: department hr is deprovisioned" in out


def test_contexts_name_a_server_and_how_to_get_a_token(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PROVISIONER_SERVER")
    marker = tmp_path / "token-asked"
    command = f"{sys.executable} -c \"open('{marker}', 'w').close(); print('a-token')\""
    code, out, err = run(
        capsys, "config", "set-context", "local", "--server", target, "--token-command", command
    )
    assert code == 0, err
    config = tmp_path / "provisionctl.yaml"
    assert f"context local saved in {config}" in out and config.stat().st_mode & 0o777 == 0o600
    assert run(capsys, "config", "set-context", "nowhere", "--server", "127.0.0.1:1")[0] == 0

    code, out, _ = run(capsys, "config", "get-contexts")
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [["*", "local"], ["nowhere", "127.0.0.1:1"]]
    code, out, err = run(capsys, "list")
    assert (code, out) == (0, "no departments\n"), err
    assert marker.exists(), "the token came from the context's command"
    assert run(capsys, "--timeout", "1", "--context", "nowhere", "list")[0] == 6

    assert run(capsys, "config", "use-context", "nowhere")[1] == "switched to context nowhere\n"
    assert run(capsys, "config", "current-context")[1] == "nowhere\n"
    code, _, err = run(capsys, "config", "use-context", "prod")
    assert code == 2 and "no context 'prod'" in err and "local, nowhere" in err
    # The environment still wins over the context.
    monkeypatch.setenv("PROVISIONER_SERVER", target)
    assert run(capsys, "list")[0] == 0


def test_cancel_of_an_ended_job_is_not_possible_now(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "provision", "--department-id", "hr", *FLAGS)[0] == 0
    job_id = run(capsys, "jobs", "--no-headers")[1].split()[0]
    code, _, err = run(capsys, "cancel", job_id)
    assert code == 8 and "has already ended (COMPLETED)" in err
