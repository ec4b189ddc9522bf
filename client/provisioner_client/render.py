"""How `provisionctl` shows things as text or JSON: jobs, events, departments, outcomes.

Plain text is aligned columns without colour, so it reads the same in a terminal, a log
file and a pipe. JSON is the contract's own mapping (lowerCamelCase, enum names), with
every field present so scripts need not know proto3's defaults.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TextIO

import yaml
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_client.watch import Reconnect


def to_dict(message: Message) -> dict[str, object]:
    """The message as the REST gateway shows it: lowerCamelCase names, enum names, all fields."""
    return MessageToDict(message, always_print_fields_with_no_presence=True)


def yaml_text(message: Message | dict[str, object]) -> str:
    data = message if isinstance(message, dict) else to_dict(message)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n")


def json_text(message: Message | dict[str, object], *, pretty: bool = True) -> str:
    data = message if isinstance(message, dict) else to_dict(message)
    return json.dumps(data, indent=2 if pretty else None, ensure_ascii=False)


def state_name(value: int) -> str:
    return pb.JobState.Name(value).removeprefix("JOB_STATE_")


def state_text(kind: int, state: int) -> str:
    """A job's state as people read it: a deprovisioning's ROLLING_BACK is its teardown."""
    if kind == pb.JOB_KIND_DEPROVISION and state == pb.JOB_STATE_ROLLING_BACK:
        return "TEARING_DOWN"
    return state_name(state)


def kind_name(value: int) -> str:
    return pb.JobKind.Name(value).removeprefix("JOB_KIND_").lower()


def step_status_name(value: int) -> str:
    return pb.StepStatus.Name(value).removeprefix("STEP_STATUS_").lower()


def department_status_name(value: int) -> str:
    return pb.DepartmentStatus.Name(value).removeprefix("DEPARTMENT_STATUS_").lower()


def when(stamp: Timestamp) -> str:
    """ISO 8601 in UTC to the millisecond, or `-` for an unset timestamp."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return "-"
    return stamp.ToDatetime().isoformat(timespec="milliseconds") + "Z"


def columns(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Rows aligned under their headers, two spaces apart; the last column runs free."""
    table = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers) - 1)]
    return [
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in table
    ]


def event_line(event: pb.JobEvent, kind: int = pb.JOB_KIND_PROVISION) -> str:
    """One event on one line: time, sequence, state, progress, step, message."""
    return (
        f"{when(event.time)}  #{event.sequence:<3} {state_text(kind, event.state):<22} {event.progress:>3}%  "
        f"{event.step or '-':<10}  {event.message}"
    )


def snapshot_line(job: pb.Job) -> str:
    return (
        f"{when(job.update_time)}  job {job.job_id}: {kind_name(job.kind)} of {job.department_id}, "
        f"{state_text(job.kind, job.state)} at {job.progress}%"
    )


def reconnect_line(note: Reconnect) -> str:
    return (
        f"reconnecting… ({note.reason}); resuming after event #{note.after_sequence} "
        f"in {note.delay:.1f} s, attempt {note.attempt}"
    )


def job_lines(job: pb.Job) -> list[str]:
    """A job in full: its header, error, cleanup report and a row per step."""
    lines = columns(
        ["job", job.job_id],
        [
            ["kind", kind_name(job.kind)],
            ["department", job.department_id],
            ["state", f"{state_name(job.state)} ({job.progress}%)"],
            ["principal", job.principal or "-"],
            ["created", when(job.create_time)],
            ["updated", when(job.update_time)],
            ["finished", when(job.finish_time)],
            ["last event", f"#{job.last_sequence}"],
        ],
    )
    if job.HasField("error"):
        lines.append(f"error       {error_text(job.error)}")
    if job.HasField("cleanup"):
        lines += ["cleanup", *(f"  {line}" for line in cleanup_lines(job.cleanup))]
    lines += ["", *step_table(job.steps)]
    return lines


def step_table(steps: Iterable[pb.Step]) -> list[str]:
    rows = [
        [
            s.name,
            step_status_name(s.status),
            str(s.attempts),
            when(s.start_time),
            when(s.finish_time),
            s.last_error or " ".join(f"{k}={v}" for k, v in sorted(s.resources.items())),
        ]
        for s in steps
    ]
    return columns(["STEP", "STATUS", "ATTEMPTS", "STARTED", "FINISHED", "DETAIL"], rows)


def error_text(error: pb.JobError) -> str:
    where = f" (step {error.step})" if error.step else ""
    return f"{error.reason}: {error.message}{where}"


def cleanup_lines(cleanup: pb.CleanupReport) -> list[str]:
    lines = [f"undone: {', '.join(cleanup.compensated) or 'nothing'}"]
    for left in cleanup.remaining:
        resources = " ".join(f"{k}={v}" for k, v in sorted(left.resources.items())) or "(unknown resources)"
        lines.append(f"left behind by {left.step}: {resources}")
    if not cleanup.remaining:
        lines.append("nothing left behind")
    return lines


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job ended, from its terminal event (or, already finished, its snapshot)."""

    job: pb.Job
    state: int
    error: pb.JobError | None
    cleanup: pb.CleanupReport | None
    elapsed: float | None

    @classmethod
    def of(cls, job: pb.Job, terminal: pb.JobEvent | None) -> Outcome:
        source: pb.Job | pb.JobEvent = terminal if terminal is not None else job
        finished = terminal.time if terminal is not None else job.finish_time
        elapsed = None
        if job.create_time.seconds and finished.seconds:
            elapsed = (finished.ToDatetime() - job.create_time.ToDatetime()).total_seconds()
        return cls(
            job=job,
            state=source.state,
            error=source.error if source.HasField("error") else None,
            cleanup=source.cleanup if source.HasField("cleanup") else None,
            elapsed=elapsed,
        )

    @property
    def succeeded(self) -> bool:
        return self.state == pb.JOB_STATE_COMPLETED

    def lines(self) -> list[str]:
        took = f" in {self.elapsed:.1f} s" if self.elapsed is not None else ""
        head = (
            f"{state_name(self.state)}: {kind_name(self.job.kind)} of {self.job.department_id}{took} "
            f"(job {self.job.job_id})"
        )
        lines = [head]
        if self.error is not None:
            lines.append(f"  error: {error_text(self.error)}")
        if self.cleanup is not None and (not self.succeeded or self.cleanup.remaining):
            lines += [f"  {line}" for line in cleanup_lines(self.cleanup)]
        return lines


def department_lines(department: pb.Department) -> list[str]:
    return columns(
        ["department", department.department_id],
        [
            ["name", department.department_name],
            ["status", department_status_name(department.status)],
            ["workflows", ", ".join(department.workflows)],
            ["retention", department.data_retention],
            ["region", department.region],
            ["admin", department.admin_email],
            ["current job", department.current_job_id or "-"],
            ["created", when(department.create_time)],
            ["updated", when(department.update_time)],
        ],
    )


def department_table(departments: Iterable[pb.Department], *, wide: bool = False) -> list[str]:
    headers = ["DEPARTMENT", "STATUS", "REGION", "WORKFLOWS", "UPDATED"]
    headers += ["CREATED", "RETENTION", "ADMIN", "CURRENT JOB", "NAME"] if wide else ["NAME"]
    rows = []
    for d in departments:
        row = [d.department_id, department_status_name(d.status), d.region, ",".join(d.workflows)]
        row.append(when(d.update_time))
        if wide:
            row += [when(d.create_time), d.data_retention, d.admin_email, d.current_job_id or "-"]
        rows.append([*row, d.department_name])
    return columns(headers, rows)


def job_table(jobs: Iterable[pb.Job], *, wide: bool = False) -> list[str]:
    headers = ["JOB", "DEPARTMENT", "KIND", "STATE", "PROGRESS", "CREATED", "FINISHED", "BY"]
    headers += ["REQUEST ID", "ERROR"] if wide else []
    rows = []
    for j in jobs:
        row = [j.job_id, j.department_id, kind_name(j.kind), state_text(j.kind, j.state), f"{j.progress}%"]
        row += [when(j.create_time), when(j.finish_time) if j.HasField("finish_time") else "-", j.principal]
        if wide:
            row += [j.request_id or "-", error_text(j.error) if j.HasField("error") else "-"]
        rows.append(row)
    return columns(headers, rows)


def audit_table(events: Iterable[pb.AuditEvent], *, wide: bool = False) -> list[str]:
    headers = ["TIME", "PRINCIPAL", "ACTION", "DEPARTMENT", "OUTCOME", "JOB"]
    headers += ["REQUEST ID", "ID", "DETAIL"] if wide else ["DETAIL"]
    rows = []
    for e in events:
        row = [when(e.time), e.principal, e.action, e.department_id, e.outcome, e.job_id or "-"]
        row += [e.request_id or "-", str(e.id)] if wide else []
        rows.append([*row, e.detail])
    return columns(headers, rows)


def health_lines(health: pb.GetDepartmentHealthResponse) -> list[str]:
    verdict = "healthy" if health.healthy else "UNHEALTHY"
    rows = [[c.step, "ok" if c.healthy else "FAIL", c.reason, c.message] for c in health.conditions]
    return [
        f"department {health.department_id} is {verdict}",
        *columns(["STEP", "OK", "REASON", "MESSAGE"], rows),
    ]


def issued_client_lines(issued: pb.OAuthClient, as_json: bool) -> list[str]:
    """The department's OAuth client, which the server shows this once."""
    if as_json:
        return [json_text({"issuedClient": to_dict(issued)}, pretty=False)]
    return [
        "",
        "The department's OAuth client (the secret is shown this once; store it now):",
        f"  client id      {issued.client_id}",
        f"  client secret  {issued.client_secret}",
    ]


def export_lines(job: pb.Job, *, with_secret: bool) -> list[str]:
    """Shell `export` lines for the job and, if it was just issued, the department's client."""
    values = {"JOB_ID": job.job_id, "DEPARTMENT_ID": job.department_id}
    if with_secret and job.issued_client.client_secret:
        values |= {"CLIENT_ID": job.issued_client.client_id, "CLIENT_SECRET": job.issued_client.client_secret}
    return [f"export {name}={shlex.quote(value)}" for name, value in values.items()]


def write_lines(stream: TextIO, lines: Iterable[str]) -> None:
    for line in lines:
        stream.write(line + "\n")
    stream.flush()
