"""The client's pure pieces: retry policy, watch cursor, settings, specs, errors, rendering."""

from __future__ import annotations

import argparse
import asyncio
import io
import shlex
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from rich.console import Console

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_client import (
    ApiError,
    ConfigurationError,
    DepartmentSpec,
    FieldViolation,
    RetryPolicy,
    cli,
    completion,
    load_spec_file,
)
from provisioner_client.config import TokenSettings, channel_credentials, resolve_endpoint, resolve_token
from provisioner_client.errors import api_error, from_rpc_error
from provisioner_client.exitcodes import describe, exit_code
from provisioner_client.live import LiveSink, StepBoard
from provisioner_client.tokens import mint_token, parse_duration
from provisioner_client.watch import WatchCursor, is_resumable


def test_backoff_doubles_up_to_its_cap_and_honours_the_server_hint() -> None:
    policy = RetryPolicy(max_attempts=6, initial_delay=0.1, multiplier=2, max_delay=0.5, jitter=0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.5, 0.5, None]
    assert policy.delay(1, hint=3.0) == 3.0
    assert policy.delay(1, hint=999) == 30.0
    jittery = RetryPolicy(initial_delay=1.0, jitter=0.2)
    assert jittery.delay(1, rand=lambda: 0.0) == pytest.approx(0.8)
    assert jittery.delay(1, rand=lambda: 1.0) == pytest.approx(1.2)
    with pytest.raises(ValueError, match="max_attempts must be at least 1; multiplier"):
        RetryPolicy(max_attempts=0, multiplier=0.5)


def _event(sequence: int, kind: int = pb.JOB_EVENT_TYPE_STEP_STARTED) -> pb.WatchProgressResponse:
    return pb.WatchProgressResponse(event=pb.JobEvent(sequence=sequence, type=kind))  # type: ignore[arg-type]


def test_the_cursor_yields_one_snapshot_drops_repeats_and_stops_at_the_end() -> None:
    cursor = WatchCursor("job", after_sequence=2)
    assert cursor.request().after_sequence == 2
    assert isinstance(cursor.accept(pb.WatchProgressResponse(snapshot=pb.Job(job_id="job"))), pb.Job)
    assert cursor.accept(_event(2)) is None
    assert cursor.accept(_event(3)) is not None
    assert cursor.accept(pb.WatchProgressResponse(heartbeat=pb.Heartbeat(last_sequence=3))) is None
    assert cursor.accept(pb.WatchProgressResponse(snapshot=pb.Job(job_id="job"))) is None
    assert cursor.request().after_sequence == 3
    assert [cursor.done] == [False]  # (a list: mypy would narrow `done` for good)
    cursor.accept(_event(4, pb.JOB_EVENT_TYPE_JOB_FINISHED))
    assert cursor.done
    finished = WatchCursor("job", after_sequence=9)
    finished.accept(
        pb.WatchProgressResponse(snapshot=pb.Job(job_id="job", state=pb.JOB_STATE_FAILED, last_sequence=9))
    )
    assert finished.done


def test_only_transport_failures_resume() -> None:
    assert is_resumable(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    assert is_resumable(grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2")
    assert not is_resumable(grpc.StatusCode.INTERNAL, "internal error; see the server log")
    assert not is_resumable(grpc.StatusCode.NOT_FOUND, "")


def test_endpoint_and_token_resolution() -> None:
    assert str(resolve_endpoint(None, {})) == "127.0.0.1:50051"
    assert resolve_endpoint(None, {"PROVISIONER_SERVER": "grpc.example:443"}).target == "grpc.example:443"
    assert resolve_endpoint("https://grpc.example/", {}).tls
    assert resolve_endpoint("localhost:1", {"PROVISIONER_SERVER": "ignored:2"}).target == "localhost:1"
    assert resolve_token(None, {}) is None
    assert resolve_token(None, {"PROVISIONER_TOKEN": "abc\n"}) == "abc"
    assert resolve_token("Bearer xyz", {}) == "xyz"
    with pytest.raises(ConfigurationError) as caught:
        resolve_token(None, {"PROVISIONER_TOKEN": "sécret token"})
    assert "sécret" not in str(caught.value)
    assert "PROVISIONER_TOKEN" in str(caught.value)


def test_a_ca_file_or_client_certificate_selects_tls_and_half_a_pair_is_refused(tmp_path: Path) -> None:
    assert resolve_endpoint("127.0.0.1:1", {"PROVISIONER_CA_FILE": "ca.pem"}).tls
    mtls = {"PROVISIONER_CLIENT_CERT_FILE": "c.pem", "PROVISIONER_CLIENT_KEY_FILE": "k.pem"}
    endpoint = resolve_endpoint("127.0.0.1:1", mtls)
    assert (endpoint.tls, endpoint.cert_file, endpoint.key_file) == (True, "c.pem", "k.pem")
    with pytest.raises(ConfigurationError, match="PROVISIONER_CLIENT_KEY_FILE"):
        resolve_endpoint("127.0.0.1:1", {"PROVISIONER_CLIENT_CERT_FILE": "c.pem"})
    missing = resolve_endpoint("127.0.0.1:1", {"PROVISIONER_CA_FILE": str(tmp_path / "nowhere.pem")})
    with pytest.raises(ConfigurationError, match="cannot read PROVISIONER_CA_FILE"):
        channel_credentials(missing)


def test_spec_files_read_the_seed_names(tmp_path: Path) -> None:
    path = tmp_path / "spec.yml"
    path.write_text("departmentId: hr\nworkflows: email, database\nadmin_email: a@b.co\n")
    assert load_spec_file(path) == {
        "department_id": "hr",
        "workflows": ["email", "database"],
        "admin_email": "a@b.co",
    }
    path.write_text("dataRetention: 90\n")
    with pytest.raises(ConfigurationError, match="dataRetention must be a string, not int"):
        load_spec_file(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigurationError, match="must be a mapping"):
        load_spec_file(path)
    broken = tmp_path / "spec.json"
    broken.write_text("{nope")
    with pytest.raises(ConfigurationError, match="not valid JSON or YAML"):
        load_spec_file(broken)
    spec = DepartmentSpec("hr", "HR", ("email",), "90d", "us-west", "a@b.co")
    assert spec.to_json()["departmentId"] == "hr"
    assert spec.to_request("id").request_id == "id"
    with pytest.raises(ConfigurationError, match="not one string"):
        DepartmentSpec("hr", "HR", "email", "90d", "us-west", "a@b.co")  # type: ignore[arg-type]


def test_every_status_code_has_an_exit_code_and_one_sentence() -> None:
    cases = {
        grpc.StatusCode.INVALID_ARGUMENT: 2,
        grpc.StatusCode.UNAUTHENTICATED: 3,
        grpc.StatusCode.PERMISSION_DENIED: 3,
        grpc.StatusCode.NOT_FOUND: 4,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 5,
        grpc.StatusCode.UNAVAILABLE: 6,
        grpc.StatusCode.DEADLINE_EXCEEDED: 6,
        grpc.StatusCode.ALREADY_EXISTS: 8,
        grpc.StatusCode.FAILED_PRECONDITION: 8,
        grpc.StatusCode.INTERNAL: 7,
    }
    for code, expected in cases.items():
        error = api_error(code, "it went\nwrong.", reason="WHY", retry_delay=2.5)
        assert isinstance(error, ApiError)
        assert exit_code(error) == expected, code
        lines = describe(error, resolve_endpoint("h:1", {}), 10)
        assert len(lines) == 1
        assert lines[0].startswith("provisionctl: error: ")
        assert "it went wrong" in lines[0]
    limited = api_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", retry_delay=2.5)
    assert describe(limited, None, 1)[0].endswith("rate limited: slow down; retry in 3 s")
    invalid = api_error(
        grpc.StatusCode.INVALID_ARGUMENT, "bad", violations=[FieldViolation("region", "a region")]
    )
    assert describe(invalid, None, 1)[1:] == ["  region: a region"]
    assert "within 10 s" in describe(api_error(grpc.StatusCode.DEADLINE_EXCEEDED, "late"), None, 10)[0]
    assert exit_code(ConfigurationError("bad")) == 2


def test_a_call_without_details_still_decodes() -> None:
    class Bare(grpc.RpcError):
        pass

    error = from_rpc_error(Bare("boom"))
    assert error.code == grpc.StatusCode.UNKNOWN
    assert str(error) == "boom"


def test_tokens_and_durations() -> None:
    settings = TokenSettings(secret="x" * 32)
    assert mint_token(settings, roles=["admin"], subject="me", ttl=60, now=1000).count(".") == 2
    cases: list[dict[str, object]] = [{"roles": []}, {"roles": ["root"]}, {"subject": " "}, {"ttl": 0}]
    for bad in cases:
        with pytest.raises(ConfigurationError):
            mint_token(settings, **{"roles": ["admin"], "subject": "me", **bad})  # type: ignore[arg-type]
    assert [parse_duration(t) for t in ("90", "90s", "15m", "2h", "1d")] == [90, 90, 900, 7200, 86400]
    for bad_text in ("soon", "-5", "0m"):
        with pytest.raises(ValueError, match=r"duration|more than 0"):
            parse_duration(bad_text)


def _job() -> pb.Job:
    return pb.Job(
        job_id="j",
        department_id="hr",
        kind=pb.JOB_KIND_PROVISION,
        steps=[pb.Step(name="database", status=pb.STEP_STATUS_PENDING), pb.Step(name="gateway")],
    )


def test_the_step_board_tracks_attempts_retries_and_rollback() -> None:
    board = StepBoard()
    board.snapshot(_job())
    for sequence, (type_, attempt) in enumerate(
        (
            (pb.JOB_EVENT_TYPE_STEP_STARTED, 1),
            (pb.JOB_EVENT_TYPE_STEP_RETRYING, 1),
            (pb.JOB_EVENT_TYPE_STEP_STARTED, 2),
            (pb.JOB_EVENT_TYPE_STEP_SUCCEEDED, 0),
            (pb.JOB_EVENT_TYPE_STEP_COMPENSATING, 1),
        ),
        start=1,
    ):
        board.event(pb.JobEvent(sequence=sequence, step="database", type=type_, attempt=attempt, message="m"))
    row = board.rows["database"]
    assert (row.status, row.attempts, row.retries) == ("undoing", 2, 1)
    failed = pb.JobEvent(sequence=6, step="gateway", type=pb.JOB_EVENT_TYPE_STEP_COMPENSATION_FAILED)
    board.event(failed)
    assert board.rows["gateway"].status == "undo failed"


def test_the_step_board_never_goes_back_and_reads_a_teardown_as_one() -> None:
    board = StepBoard()
    now = _job()
    now.state, now.last_sequence = pb.JOB_STATE_VALIDATING, 2
    board.snapshot(now)
    # A watch replays the job's events after the snapshot: those it already includes change nothing.
    board.event(pb.JobEvent(sequence=1, type=pb.JOB_EVENT_TYPE_JOB_CREATED, state=pb.JOB_STATE_PENDING))
    board.event(pb.JobEvent(sequence=2, type=pb.JOB_EVENT_TYPE_STATE_CHANGED, state=pb.JOB_STATE_VALIDATING))
    assert board.state_text == "VALIDATING"

    teardown = _job()
    teardown.kind, teardown.state = pb.JOB_KIND_DEPROVISION, pb.JOB_STATE_ROLLING_BACK
    board = StepBoard()
    board.snapshot(teardown)
    rolling = pb.JOB_STATE_ROLLING_BACK
    board.event(
        pb.JobEvent(sequence=1, step="gateway", type=pb.JOB_EVENT_TYPE_STEP_COMPENSATING, state=rolling)
    )
    board.event(
        pb.JobEvent(sequence=2, step="database", type=pb.JOB_EVENT_TYPE_STEP_COMPENSATED, state=rolling)
    )
    assert board.state_text == "TEARING_DOWN"
    assert (board.rows["gateway"].status, board.rows["database"].status) == ("removing", "removed")


def test_the_live_view_draws_steps_and_the_outcome_on_a_terminal() -> None:
    screen = io.StringIO()
    sink = LiveSink(Console(file=screen, force_terminal=True, width=120))
    sink.snapshot(_job())
    sink.event(pb.JobEvent(sequence=1, step="database", type=pb.JOB_EVENT_TYPE_STEP_STARTED, attempt=1))
    sink.event(pb.JobEvent(sequence=2, step="database", type=pb.JOB_EVENT_TYPE_STEP_SUCCEEDED, progress=50))
    sink.event(
        pb.JobEvent(
            sequence=3, type=pb.JOB_EVENT_TYPE_JOB_FINISHED, state=pb.JOB_STATE_COMPLETED, progress=100
        )
    )
    sink.close()
    drawn = screen.getvalue()
    for text in ("provision of hr", "database", "succeeded", "gateway", "pending", "COMPLETED", "100%"):
        assert text in drawn, text


def test_the_client_depends_on_the_contract_never_on_the_server() -> None:
    import ast

    import provisioner_client

    allowed = {
        "provisioner_api",
        "provisioner_client",
        "grpc",
        "grpc_status",
        "google",
        "jwt",
        "rich",
        "yaml",
    }
    offenders = []
    for path in Path(provisioner_client.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            root = {n.split(".")[0] for n in names}
            offenders += [f"{path.name}: {n}" for n in root - allowed if n not in sys.stdlib_module_names]
    assert offenders == []


async def test_watch_prints_each_changed_answer_once() -> None:
    answers = iter(["a\n", "a\n", "b\n", *["b\n"] * 1000])

    async def read(args: object, client: object, output: cli.Output) -> int:
        output.out.write(next(answers))
        return 0

    out = io.StringIO()
    watching = cli._watchable(read)(  # type: ignore[arg-type]
        argparse.Namespace(watch=True, interval=0.01), None, cli.Output("text", out, io.StringIO())
    )
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(watching, 0.3)
    lines = out.getvalue().splitlines()
    assert lines[0] == "a" and lines[1].startswith("-- ") and lines[2:] == ["b"]


def complete_in_bash(*words: str) -> list[str]:
    """What bash offers after `words` (the last one being completed), with our script."""
    script = completion.script(cli.build_parser(), "bash")
    setup = f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); COMP_CWORD={len(words) - 1}"
    ran = subprocess.run(
        ["bash", "-c", f'{script}\n{setup}\n_provisionctl\nprintf "%s\\n" "${{COMPREPLY[@]}}"'],
        capture_output=True,
        text=True,
        check=True,
    )
    return ran.stdout.split()


def test_bash_completes_commands_flags_and_choices_from_the_parser() -> None:
    assert complete_in_bash("provisionctl", "de") == ["deprovision", "describe"]
    assert complete_in_bash("provisionctl", "list", "--st") == ["--status"]
    assert complete_in_bash("provisionctl", "jobs", "--state", "ro") == ["rolling_back"]
    assert complete_in_bash("provisionctl", "get", "-o", "y") == ["yaml"]
    assert "--dry-run" in complete_in_bash("provisionctl", "provision", "--")


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_name_every_command(shell: str) -> None:
    script = completion.script(cli.build_parser(), shell)
    for command in ("provision", "deprovision", "list", "jobs", "audit", "describe", "completion"):
        assert command in script
    assert ("bashcompinit" in script) == (shell == "zsh")
