"""`provisionctl`: provision, follow and inspect departments from the command line.

Every command is one call (or one followed job) through `AsyncProvisioningClient`.
Results go to stdout, as aligned text or JSON (`-o json`); errors go to stderr as one
sentence and set the exit code (see `exitcodes`), never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import importlib.metadata
import io
import os
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO, TypeVar

from google.protobuf.message import Message
from rich.console import Console

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_client import completion, contexts, exitcodes, render
from provisioner_client._base import KIND_NAMES, STATE_NAMES, STATUS_NAMES
from provisioner_client.aio import AsyncProvisioningClient
from provisioner_client.config import (
    CA_FILE_ENV,
    DEFAULT_TIMEOUT,
    SERVER_ENV,
    TOKEN_ENV,
    Endpoint,
    resolve_endpoint,
    token_settings,
)
from provisioner_client.errors import ApiError, ClientError, ConfigurationError
from provisioner_client.live import JsonSink, LiveSink, PlainSink, ProgressSink
from provisioner_client.spec import DepartmentSpec, SpecFields, load_spec_file
from provisioner_client.tokens import DEFAULT_TTL, ROLES, mint_token, parse_duration
from provisioner_client.watch import is_terminal

#: Spec fields and the `provision` flags that set them, for "missing" messages.
_FLAGS = {
    "department_id": "--department-id",
    "department_name": "--name",
    "workflows": "--workflow",
    "data_retention": "--retention",
    "region": "--region",
    "admin_email": "--admin-email",
}


@dataclass(frozen=True, slots=True)
class Output:
    """Where and how a command writes: `format` is text, wide, json or yaml."""

    format: str
    out: TextIO
    err: TextIO
    headers: bool = True

    @property
    def structured(self) -> bool:
        return self.format in ("json", "yaml")

    @property
    def json(self) -> bool:
        """Machine-readable: a document for reads, JSON lines for streams (either format)."""
        return self.structured

    @property
    def wide(self) -> bool:
        return self.format == "wide"

    def lines(self, lines: Sequence[str]) -> None:
        render.write_lines(self.out, lines)

    def document(self, data: Message | dict[str, object]) -> None:
        """A read command's answer as JSON or YAML, in the contract's JSON names."""
        self.lines([render.json_text(data) if self.format == "json" else render.yaml_text(data)])

    def table(self, lines: Sequence[str]) -> None:
        """Aligned rows under a header line, which `--no-headers` leaves out."""
        self.lines(lines if self.headers else lines[1:])

    def listing(
        self, key: str, items: Sequence[Message], table: Callable[..., list[str]], empty: str
    ) -> None:
        """A list command's answer: `{key: [...]}` as JSON or YAML, else a table (or `empty`)."""
        if self.structured:
            self.document({key: [render.to_dict(item) for item in items]})
        elif items:
            self.table(table(items, wide=self.wide))
        else:
            self.lines([empty])

    def sink(self) -> ProgressSink:
        if self.json:
            return JsonSink(self.out, self.err)
        if self.out.isatty():
            return LiveSink(Console(file=self.out))
        return PlainSink(self.out, self.err)


Command = Callable[[argparse.Namespace, AsyncProvisioningClient, Output], Coroutine[Any, Any, int]]
T = TypeVar("T")


async def _follow(
    client: AsyncProvisioningClient, job_id: str, output: Output, after_sequence: int = 0
) -> int:
    """Stream a job's progress to the end; print how it ended; 0 if it COMPLETED."""
    sink = output.sink()
    snapshot: pb.Job | None = None
    terminal: pb.JobEvent | None = None
    try:
        async for item in client.watch(job_id, after_sequence=after_sequence, on_reconnect=sink.reconnecting):
            if isinstance(item, pb.Job):
                snapshot = item
                sink.snapshot(item)
            else:
                sink.event(item)
                terminal = item if is_terminal(item) else terminal
    finally:
        sink.close()
    if snapshot is None:  # the server always sends one first; be safe anyway
        snapshot = await client.get_status(job_id)
    outcome = render.Outcome.of(snapshot, terminal)
    if not output.json:
        output.lines(outcome.lines())
    return exitcodes.OK if outcome.succeeded else exitcodes.FAILED


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def _spec(args: argparse.Namespace) -> DepartmentSpec:
    found: SpecFields = load_spec_file(args.file) if args.file else {}
    flags: dict[str, Any] = {
        "department_id": args.department_id,
        "department_name": args.name,
        "workflows": [w.strip() for item in args.workflow for w in item.split(",") if w.strip()]
        if args.workflow
        else None,
        "data_retention": args.retention,
        "region": args.region,
        "admin_email": args.admin_email,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    merged: dict[str, Any] = {**found, **given}
    # The server names contract fields; say them as the caller wrote them.
    args.field_names = {
        name: _FLAGS[name] if name in given else f"{_camel(name)} in {args.file}" for name in merged
    }
    missing = [flag for name, flag in _FLAGS.items() if name not in merged]
    if missing:
        raise ConfigurationError(f"provision needs {', '.join(missing)} (or a spec file given with -f)")
    return DepartmentSpec(**merged)


async def _provision(args: argparse.Namespace, client: AsyncProvisioningClient, output: Output) -> int:
    if args.dry_run:
        preview = await client.provision(_spec(args), request_id=args.request_id, validate_only=True)
        return _dry_run(preview, "provision", output)
    job = await client.provision(_spec(args), request_id=args.request_id)
    if job.state in (pb.JOB_STATE_COMPLETED, pb.JOB_STATE_FAILED):
        # A new job cannot have ended yet: this is the same spec again, or the same request
        # id. Say so before its (already known) progress, and why no secret follows.
        render.write_lines(
            output.err,
            [
                f"provisionctl: {job.department_id} was already asked for by job {job.job_id} "
                f"({render.state_name(job.state)}); its client secret was shown to that request "
                "and is not shown again"
            ],
        )
    if args.export:
        # Progress to stderr; stdout is only the `export` lines, for `eval "$(...)"`.
        code = await _started(job, args, client, Output("text", output.err, output.err))
        output.lines(render.export_lines(job, with_secret=code == exitcodes.OK))
        return code
    code = await _started(job, args, client, output)
    # The server returns the department's client secret once, to the call that created the
    # job: say so plainly, after the progress (a failed job's credentials were revoked).
    # (`--no-wait -o json` printed the whole job, secret included, already.)
    issued = job.issued_client
    if issued.client_secret and code == exitcodes.OK and not (args.no_wait and output.json):
        output.lines(render.issued_client_lines(issued, output.json))
    return code


async def _deprovision(args: argparse.Namespace, client: AsyncProvisioningClient, output: Output) -> int:
    if args.dry_run:
        preview = await client.deprovision(args.department_id, request_id=args.request_id, validate_only=True)
        return _dry_run(preview, "deprovision", output)
    job = await client.deprovision(args.department_id, request_id=args.request_id)
    return await _started(job, args, client, output)


def _dry_run(preview: pb.Job, action: str, output: Output) -> int:
    """What the server said it would do; exit 0 (a refusal exits as the real call would)."""
    if output.structured:
        output.document(preview)
    elif preview.job_id:
        output.lines(
            [
                f"dry run: {action} of {preview.department_id} would return job {preview.job_id} "
                f"({render.state_text(preview.kind, preview.state)}), which already does it; nothing done"
            ]
        )
    else:
        output.lines([f"dry run: {action} of {preview.department_id} would be accepted; nothing done"])
    return exitcodes.OK


async def _started(
    job: pb.Job, args: argparse.Namespace, client: AsyncProvisioningClient, output: Output
) -> int:
    if args.no_wait:
        output.lines([render.json_text(job)] if output.json else render.job_lines(job))
        return exitcodes.OK
    try:
        return await _follow(client, job.job_id, output)
    except asyncio.CancelledError:  # Ctrl-C: only the watching stops, not the job
        render.write_lines(
            output.err, [f"provisionctl: the job goes on; follow it with: provisionctl watch {job.job_id}"]
        )
        raise


async def _cancel(args: argparse.Namespace, client: AsyncProvisioningClient, output: Output) -> int:
    job = await client.cancel_job(args.job_id)
    if args.no_wait:
        if output.structured:
            output.document(job)
        else:
            output.lines(
                [
                    f"cancelling job {job.job_id} ({job.department_id}): it rolls back; "
                    f"follow it with: provisionctl watch {job.job_id}"
                ]
            )
        return exitcodes.OK
    # Followed to its end, which is FAILED (cancelled, and rolled back): that is success here.
    code = await _follow(client, job.job_id, output)
    return exitcodes.OK if code == exitcodes.FAILED else code


async def _watch(args: argparse.Namespace, client: AsyncProvisioningClient, output: Output) -> int:
    return await _follow(client, args.job_id, output, args.after_sequence)


async def _status(args: argparse.Namespace, client: AsyncProvisioningClient, output: Output) -> int:
    job = await client.get_status(args.job_id)
    if output.structured:
        output.document(job)
    else:
        output.lines(render.job_lines(job))
    return exitcodes.FAILED if job.state == pb.JOB_STATE_FAILED else exitcodes.OK


def _watchable(command: Command) -> Command:
    """`command`, or with `--watch` the same read every `--interval` seconds, printing each
    answer that differs from the one before, until Ctrl-C (like `kubectl get -w`)."""

    async def repeated(args: argparse.Namespace, client: AsyncProvisioningClient, output: Output) -> int:
        if not args.watch:
            return await command(args, client, output)
        previous: tuple[str, str] | None = None
        while True:
            out, err = io.StringIO(), io.StringIO()
            await command(args, client, dataclasses.replace(output, out=out, err=err))
            answer = (out.getvalue(), err.getvalue())
            if answer != previous:
                if previous is not None and not output.structured:
                    output.lines([f"-- {datetime.now(UTC):%H:%M:%S}Z --"])
                output.out.write(answer[0])
                output.out.flush()
                output.err.write(answer[1])
                previous = answer
            await asyncio.sleep(args.interval)

    return repeated


async def _list(args: argparse.Namespace, client: AsyncProvisioningClient, output: Output) -> int:
    listed = [d async for d in client.list_departments(status=args.status, region=args.region)]
    # Like `kubectl get`, what is gone is hidden unless asked for (--all, or its status).
    shown = args.all or args.status
    found = [d for d in listed if shown or d.status != pb.DEPARTMENT_STATUS_DEPROVISIONED]
    hidden = len(listed) - len(found)
    output.listing("departments", found, render.department_table, "no departments")
    if hidden and not output.structured:
        render.write_lines(output.err, [f"({hidden} deprovisioned not shown; --all shows them)"])
    return exitcodes.OK


async def _jobs(args: argparse.Namespace, client: AsyncProvisioningClient, output: Output) -> int:
    found = client.list_jobs(department_id=args.department, kind=args.kind, state=args.state)
    jobs = [j async for j in _first(found, args.limit)]
    output.listing("jobs", jobs, render.job_table, "no jobs")
    return exitcodes.OK


async def _audit(args: argparse.Namespace, client: AsyncProvisioningClient, output: Output) -> int:
    found = client.list_audit_events(
        department_id=args.department,
        principal=args.principal,
        action=args.action,
        since=args.since,
        until=args.until,
    )
    events = [e async for e in _first(found, args.limit)]
    output.listing("auditEvents", events, render.audit_table, "no audit entries")
    return exitcodes.OK


async def _first(items: AsyncIterator[T], limit: int) -> AsyncIterator[T]:
    """The first `limit` of `items`, fetching no page beyond them."""
    if limit <= 0:
        return
    count = 0
    async for item in items:
        yield item
        count += 1
        if count >= limit:
            return


async def _get(args: argparse.Namespace, client: AsyncProvisioningClient, output: Output) -> int:
    department = await client.get_department(args.department_id)
    if output.structured:
        output.document(department)
    else:
        output.lines(render.department_lines(department))
    return exitcodes.OK


async def _describe(args: argparse.Namespace, client: AsyncProvisioningClient, output: Output) -> int:
    """The department, its current job and its live health, in one view."""
    department = await client.get_department(args.department_id)
    job = await client.get_status(department.current_job_id) if department.current_job_id else None
    health: pb.GetDepartmentHealthResponse | None = None
    unchecked = ""
    try:
        health = await client.get_department_health(args.department_id)
    except ApiError as exc:  # deprovisioned, or run by another replica: say why, show the rest
        unchecked = exc.message
    if output.structured:
        document: dict[str, object] = {"department": render.to_dict(department)}
        if job is not None:
            document["currentJob"] = render.to_dict(job)
        document["health"] = render.to_dict(health) if health is not None else {"unchecked": unchecked}
        output.document(document)
    else:
        lines = render.department_lines(department)
        if job is not None:
            lines += ["", *render.job_lines(job)]
        lines += [
            "",
            *(render.health_lines(health) if health is not None else [f"health not checked: {unchecked}"]),
        ]
        output.lines(lines)
    return exitcodes.OK if health is None or health.healthy else exitcodes.FAILED


async def _health(args: argparse.Namespace, client: AsyncProvisioningClient, output: Output) -> int:
    health = await client.get_department_health(args.department_id)
    if output.structured:
        output.document(health)
    else:
        lines = render.health_lines(health)
        output.lines([lines[0], *(lines[1:] if output.headers else lines[2:])])
    return exitcodes.OK if health.healthy else exitcodes.FAILED


def _token(args: argparse.Namespace, out: TextIO) -> int:
    token = mint_token(
        token_settings(), roles=args.role, subject=args.subject or _default_subject(), ttl=args.ttl
    )
    out.write(token + "\n")
    return exitcodes.OK


def _config(args: argparse.Namespace, out: TextIO) -> int:
    settings = contexts.Config.load(contexts.config_path())
    if args.action == "get-contexts":
        rows = [
            ["*" if name == settings.current else "", name, c.get("server", "-"), c.get("ca-file", "-")]
            for name, c in sorted(settings.contexts.items())
        ]
        render.write_lines(out, render.columns(["CURRENT", "NAME", "SERVER", "CA FILE"], rows))
    elif args.action == "current-context":
        if not settings.current:
            raise ConfigurationError(f"no current context in {settings.path}")
        render.write_lines(out, [settings.current])
    elif args.action == "use-context":
        settings.context(args.name)  # it must exist
        settings.current = args.name
        settings.save()
        render.write_lines(out, [f"switched to context {args.name}"])
    else:  # set-context
        given = {"server": args.server, "token-command": args.token_command, "ca-file": args.ca_file}
        context = settings.contexts.setdefault(args.name, {})
        context.update({k: v for k, v in given.items() if v is not None})
        settings.current = settings.current or args.name
        settings.save()
        render.write_lines(out, [f"context {args.name} saved in {settings.path}"])
    return exitcodes.OK


def _apply_context(args: argparse.Namespace) -> None:
    """Fill in what flags and the environment leave unset from the chosen context."""
    chosen = contexts.Config.load(contexts.config_path()).context(args.context)
    if args.server is None and not os.environ.get(SERVER_ENV) and chosen.get("server"):
        args.server = chosen["server"]
    if chosen.get("ca-file") and not os.environ.get(CA_FILE_ENV):
        os.environ[CA_FILE_ENV] = chosen["ca-file"]  # read with the server's address, as set
    if args.token is None and not os.environ.get(TOKEN_ENV) and chosen.get("token-command"):
        args.token = contexts.token_from(chosen["token-command"])


def _default_subject() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        return "developer"


async def _run(command: Command, args: argparse.Namespace, output: Output) -> int:
    timeout = args.timeout if args.timeout is not None else DEFAULT_TIMEOUT
    async with AsyncProvisioningClient(args.server, args.token, timeout=timeout) as client:
        return await command(args, client, output)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `provisionctl` with `argv` (default: the process's arguments); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return exc.code if isinstance(exc.code, int) else exitcodes.USAGE
    out, err = sys.stdout, sys.stderr
    try:
        if args.command == "token":
            return _token(args, out)
        if args.command == "completion":
            out.write(completion.script(parser, args.shell))
            return exitcodes.OK
        if args.command == "config":
            return _config(args, out)
        _apply_context(args)
        output = Output(args.output, out, err, headers=not args.no_headers)
        return asyncio.run(_run(args.handler, args, output))
    except ClientError as exc:
        names = getattr(args, "field_names", None)
        render.write_lines(
            err, exitcodes.describe(exc, _endpoint(args), args.timeout or DEFAULT_TIMEOUT, names=names)
        )
        return exitcodes.exit_code(exc)
    except KeyboardInterrupt:
        render.write_lines(err, ["provisionctl: interrupted"])
        return exitcodes.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`provisionctl list | head -1`): nothing left to say, and
        # the interpreter's own flush of stdout at exit must not complain either.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until the process ends
        return exitcodes.OK
    except Exception as exc:  # noqa: BLE001 - a CLI answers in a sentence, never a traceback
        render.write_lines(err, [f"provisionctl: error: unexpected {type(exc).__name__}: {exc}"])
        return exitcodes.OTHER


def _endpoint(args: argparse.Namespace) -> Endpoint | None:
    try:
        return resolve_endpoint(args.server)
    except ClientError:
        return None


def _time(text: str) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise), or a duration before now: 2h, 7d."""
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        found = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a time like 2026-12-01T09:00:00Z or a duration ago like 2h or 7d, got {text!r}"
        ) from None
    return found if found.tzinfo is not None else found.replace(tzinfo=UTC)


def _add_watch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-w", "--watch", action="store_true", help="keep reading; print each change (Ctrl-C stops)"
    )
    parser.add_argument(
        "--interval",
        type=_positive_seconds,
        default=2.0,
        metavar="SECONDS",
        help="how often --watch reads (default 2 s)",
    )


def _version() -> str:
    try:
        return importlib.metadata.version("provisioning-orchestrator")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _positive_seconds(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_globals(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # On subcommands the defaults are suppressed, so `provisionctl -o json list` and
    # `provisionctl list -o json` both work and neither undoes the other.
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--server", default=default, help="gRPC address (default: $PROVISIONER_SERVER or 127.0.0.1:50051)"
    )
    group.add_argument("--token", default=default, help="bearer token (default: $PROVISIONER_TOKEN)")
    group.add_argument(
        "--context", default=default, help="a context of the config file (default: its current one)"
    )
    group.add_argument(
        "-o",
        "--output",
        choices=("text", "wide", "json", "yaml"),
        default=argparse.SUPPRESS if suppress else "text",
        help="text, wide (more columns), json or yaml; progress streams are JSON lines for both",
    )
    group.add_argument(
        "--no-headers",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="tables without their header line",
    )
    group.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=default,
        metavar="SECONDS",
        help=f"deadline of each call (default {DEFAULT_TIMEOUT:g} s; watches are not limited)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, with the exit codes in the epilog."""
    parser = argparse.ArgumentParser(
        prog="provisionctl",
        description="Provision, follow and inspect departments on a provisioning server.",
        epilog=exitcodes.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_globals(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Command | None, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=text,
            description=textwrap.fill(text, 88),
            epilog=exitcodes.EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_globals(sub, suppress=True)
        sub.set_defaults(handler=handler)
        return sub

    follow = (
        "Streams live progress until the job ends, unless --no-wait; -o json prints one JSON object per line."
    )
    sub = command("provision", _provision, f"Provision a department from flags or a spec file. {follow}")
    sub.add_argument(
        "-f",
        "--file",
        metavar="SPEC",
        help="YAML or JSON spec with the seed's names (departmentId, ...); - for stdin",
    )
    needed = "required unless in the -f file"
    sub.add_argument("--department-id", help=f"lowercase slug, like hr ({needed})")
    sub.add_argument("--name", help=f"human-readable department name ({needed})")
    sub.add_argument(
        "--workflow",
        action="append",
        help=f"email, google_drive or database, repeatable or comma-separated ({needed})",
    )
    sub.add_argument("--retention", help=f"data retention in days, like 90d ({needed})")
    sub.add_argument("--region", help=f"one of the platform's regions, like us-west ({needed})")
    sub.add_argument("--admin-email", help=f"the department's administrator ({needed})")
    sub.add_argument("--request-id", help="idempotency key (a UUID): repeating it returns the same job")
    sub.add_argument("--no-wait", action="store_true", help="print the new job and return at once")
    sub.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything (spec, region, conflicts, quota, rate limit) and do nothing",
    )
    sub.add_argument(
        "--export",
        action="store_true",
        help="print shell `export` lines (JOB_ID, DEPARTMENT_ID, CLIENT_ID, CLIENT_SECRET) for "
        '`eval "$(provisionctl provision ... --export)"`; progress goes to stderr',
    )

    sub = command("deprovision", _deprovision, f"Tear a department down. {follow}")
    sub.add_argument("department_id", metavar="DEPARTMENT_ID")
    sub.add_argument("--request-id", help="idempotency key (a UUID)")
    sub.add_argument("--no-wait", action="store_true", help="print the teardown job and return at once")
    sub.add_argument("--dry-run", action="store_true", help="check that it would be accepted and do nothing")

    sub = command(
        "watch", _watch, "Follow a job to its end, resuming across reconnects; exit 1 if it FAILED."
    )
    sub.add_argument("job_id", metavar="JOB_ID")
    sub.add_argument("--after-sequence", type=int, default=0, metavar="N", help="skip events up to N")

    sub = command(
        "cancel", _cancel, "Stop a running provisioning and roll it back (admin role); follows the rollback."
    )
    sub.add_argument("job_id", metavar="JOB_ID")
    sub.add_argument("--no-wait", action="store_true", help="return once the cancellation is recorded")

    sub = command("status", _status, "Show a job and its steps; exit 1 if it FAILED.")
    sub.add_argument("job_id", metavar="JOB_ID")

    sub = command("list", _watchable(_list), "List departments, optionally filtered.")
    _add_watch(sub)
    sub.add_argument("--status", choices=STATUS_NAMES, help="only departments in this status")
    sub.add_argument("--region", help="only departments in this region")
    sub.add_argument("--all", action="store_true", help="deprovisioned departments too")

    sub = command("jobs", _jobs, "List jobs, newest first: a department's history, or every job.")
    sub.add_argument("--department", metavar="DEPARTMENT_ID", help="only this department's jobs")
    sub.add_argument("--kind", choices=KIND_NAMES, help="only jobs of this kind")
    sub.add_argument("--state", choices=STATE_NAMES, help="only jobs in this state")
    sub.add_argument("--limit", type=int, default=50, metavar="N", help="at most N jobs (default 50)")

    sub = command("audit", _audit, "List the audit log, newest first (admin role).")
    sub.add_argument("--department", metavar="DEPARTMENT_ID", help="only entries about this department")
    sub.add_argument("--principal", help="only entries of this caller (a token's subject)")
    sub.add_argument("--action", help="only this action: provision or deprovision")
    sub.add_argument("--since", type=_time, metavar="TIME", help="from this time: ISO 8601, or ago, like 24h")
    sub.add_argument("--until", type=_time, metavar="TIME", help="before this time: ISO 8601, or ago")
    sub.add_argument("--limit", type=int, default=50, metavar="N", help="at most N entries (default 50)")

    sub = command("get", _watchable(_get), "Show one department.")
    sub.add_argument("department_id", metavar="DEPARTMENT_ID")
    _add_watch(sub)

    sub = command(
        "describe", _describe, "Show a department, its current job and its live health; exit 1 if unhealthy."
    )
    sub.add_argument("department_id", metavar="DEPARTMENT_ID")

    sub = command("health", _health, "Check a department's components live; exit 1 if unhealthy.")
    sub.add_argument("department_id", metavar="DEPARTMENT_ID")

    sub = command(
        "config",
        None,
        "Contexts: named servers with how to get a token and which CA to trust, kept in "
        "$PROVISIONER_CONFIG or ~/.config/provisionctl/config.yaml.",
    )
    actions = sub.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("get-contexts", help="list the contexts, the current one starred")
    actions.add_parser("current-context", help="print the current context's name")
    chosen = actions.add_parser("use-context", help="make NAME the current context")
    chosen.add_argument("name", metavar="NAME")
    made = actions.add_parser("set-context", help="add or change context NAME")
    made.add_argument("name", metavar="NAME")
    made.add_argument("--server", help="host:port, several comma-separated, or https://host:port")
    made.add_argument("--token-command", help="a command that prints a bearer token, run without a shell")
    made.add_argument("--ca-file", help="the CA that signed the server's certificate")

    sub = command(
        "completion",
        None,
        "Print shell completion for bash, zsh or fish: "
        "`source <(provisionctl completion bash)` (or add that line to ~/.bashrc).",
    )
    sub.add_argument("shell", choices=completion.SHELLS)

    sub = command(
        "token",
        None,
        "Mint an HS256 development token from $PROVISIONER_JWT_SECRET and print only the token, "
        "so `export PROVISIONER_TOKEN=$(provisionctl token --role admin)` works.",
    )
    sub.add_argument(
        "--role", action="append", choices=ROLES, required=True, help="admin or viewer (repeatable)"
    )
    sub.add_argument("--subject", help="the token's sub claim (default: your user name)")
    sub.add_argument(
        "--ttl",
        type=_positive_seconds,
        default=DEFAULT_TTL,
        metavar="DURATION",
        help="lifetime: 3600, 15m, 12h, 7d (default 1h)",
    )
    return parser
