"""`python -m department_service`: check the arguments, listen, announce, serve until told to stop.

Two ways to run it:

- With `--dir` (the embedded default): the control plane's department directory holds
  its credentials, its workflows and its `data.db`, unless the environment variable
  `DATABASE_URL` names a PostgreSQL database (then the service connects as the role in
  that URL; see `postgres`). The service announces itself in `<dir>/service.json`.
- Without `--dir` (a container platform): everything comes from the environment, as a
  platform sets it: `DEPARTMENT_ID`, `PORT`, `DATABASE_URL` (PostgreSQL, required),
  `CLIENT_ID` and `CLIENT_SECRET_SHA256` (the department's OAuth client; never the secret
  itself). It serves no workflows of its own: they run on the workflow platform.

Either way callers present access tokens from the platform's authorization server:
`OAUTH_ISSUER` names it, `OAUTH_AUDIENCE` is the department's own audience, and the keys
come from `OAUTH_JWKS_FILE` (the control plane's copy on this machine) or `OAUTH_JWKS_URL`
(with `OAUTH_CA_FILE` for a private CA); see `auth`. `SMTP_URL` (and `SMTP_CA_FILE`) name
the relay the email workflow sends through (see `mail`); without it, messages are recorded
unsent.

The database URL is read from the environment, never the command line, because it
carries the role's password and a command line is visible to every user.

Exit status: 0 after a clean shutdown (SIGTERM or SIGINT), 1 if it cannot listen or write
service.json, 2 for bad arguments. Each failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from department_service import auth, mail, schema
from department_service.auth import JwksFile, JwksUrl, TokenVerifier, credentials_from_environment
from department_service.httpd import DepartmentHTTPServer
from department_service.logs import emit, utc_now
from department_service.postgres import PostgresStore, is_postgres_url
from department_service.routes import Department

DEPARTMENT_ID = re.compile(r"[a-z][a-z0-9-]{0,30}[a-z0-9]")
SERVICE_FILE = "service.json"
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not usage plus error: the control plane shows it as the launch failure."""
        self.exit(2, f"department_service: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the command line; exits 2 with one line if anything is wrong."""
    parser = _Parser(prog="python -m department_service", description="Serve one department's workflows.")
    env = os.environ
    parser.add_argument(
        "--department-id",
        default=env.get("DEPARTMENT_ID"),
        help="lowercase slug, e.g. hr or finance-emea (default: $DEPARTMENT_ID)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        help="the department directory (must exist); without it, configured by the environment",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    platform_port = env.get("PORT", "")
    if platform_port and not platform_port.isdigit():
        parser.error(f"PORT={platform_port!r} is not a port number")
    parser.add_argument(
        "--port",
        default=int(platform_port or 0),
        type=int,
        help="port to listen on (default $PORT, else 0: any free port)",
    )
    args = parser.parse_args(argv)
    if not args.department_id:
        parser.error("--department-id (or DEPARTMENT_ID) is required")
    if not DEPARTMENT_ID.fullmatch(args.department_id):
        parser.error(
            f"invalid --department-id {args.department_id!r}: use 2-32 lowercase letters, digits and "
            "hyphens, starting with a letter and not ending with a hyphen"
        )
    if args.dir is not None and not args.dir.is_dir():
        parser.error(f"--dir {str(args.dir)!r} is not an existing directory")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not between 0 and 65535")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the service until SIGTERM or SIGINT; return the exit status."""
    args = parse_args(argv)
    # Block the stop signals before any thread exists, so every thread inherits the mask and
    # the main thread alone receives them, synchronously, in sigwait below: no handler runs
    # at an arbitrary point, and a signal sent during start-up is kept until then.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        department = _department(args.department_id, args.dir and args.dir.absolute(), os.environ)
    except ValueError as exc:
        print(f"department_service: {exc}", file=sys.stderr)
        return 2
    try:
        server = DepartmentHTTPServer((args.host, args.port), department)
    except OSError as exc:
        print(f"department_service: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    host, port = str(server.server_address[0]), int(server.server_address[1])
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.25}, name="serve")
    serving.start()
    service_file = None if department.directory is None else department.directory / SERVICE_FILE
    status = 0
    try:
        # Announced only now: the socket is listening, so the control plane can connect at once.
        if service_file is not None:
            _write_service_file(service_file, args.department_id, host, port)
    except OSError as exc:
        print(f"department_service: cannot write {service_file}: {exc}", file=sys.stderr)
        status = 1
    else:
        emit(event="listening", department_id=args.department_id, host=host, port=port, pid=os.getpid())
        # What token checks and mail need is imported now, beside the first requests,
        # rather than before listening: it is a third of the start-up.
        threading.Thread(target=_warm_up, name="warm-up", daemon=True).start()
        problem = department.store.check()
        if problem:
            emit(event="database_not_ready", department_id=args.department_id, problem=problem)
        if not os.environ.get("OAUTH_ISSUER"):
            emit(event="no_token_issuer", department_id=args.department_id, problem="only /healthz answers")
        received = signal.sigwait(_STOP_SIGNALS)
        emit(event="stopping", department_id=args.department_id, signal=signal.Signals(received).name)
    finally:
        department.draining = True
        server.shutdown()  # stop accepting
        server.server_close()  # close the socket, then wait for the requests in flight
        serving.join()
        if service_file is not None:
            _remove_service_file(service_file)
    emit(event="stopped", department_id=args.department_id, exit_status=status)
    return status


def _department(department_id: str, directory: Path | None, env: Mapping[str, str]) -> Department:
    """The department as `--dir` and the environment describe it; ValueError says what is wrong."""
    database_url = env.get("DATABASE_URL", "")
    if database_url and not is_postgres_url(database_url):  # not echoed: it may hold a password
        raise ValueError("DATABASE_URL must start with postgresql:// or postgres://, or be unset for data.db")
    store = PostgresStore(database_url, department_id) if database_url else None
    smtp_url = env.get("SMTP_URL", "")
    relay = mail.parse_url(smtp_url, department_id, ca_file=env.get("SMTP_CA_FILE")) if smtp_url else None
    verifier = _verifier(department_id, env)
    if directory is not None:
        if store is None:
            _upgrade(directory / "data.db")
        return Department(department_id, directory, store=store, verifier=verifier, relay=relay)
    if store is None:
        raise ValueError("without --dir, DATABASE_URL must name the department's PostgreSQL database")
    credentials = credentials_from_environment(env)
    return Department(
        department_id, None, store=store, credentials=credentials, verifier=verifier, relay=relay
    )


def _verifier(department_id: str, env: Mapping[str, str]) -> TokenVerifier | None:
    """The access-token check the environment describes (None without `OAUTH_ISSUER`: then
    only /healthz answers); ValueError says what is wrong."""
    issuer, jwks_file, jwks_url = (
        env.get("OAUTH_ISSUER", ""),
        env.get("OAUTH_JWKS_FILE"),
        env.get("OAUTH_JWKS_URL"),
    )
    if not issuer:
        return None
    if not issuer.startswith(("https://", "http://")):
        raise ValueError("OAUTH_ISSUER must be the authorization server's http:// or https:// URL")
    if bool(jwks_file) == bool(jwks_url):
        raise ValueError("set one of OAUTH_JWKS_FILE and OAUTH_JWKS_URL: where the issuer's keys are")
    keys = (
        JwksFile(Path(jwks_file)) if jwks_file else JwksUrl(str(jwks_url), ca_file=env.get("OAUTH_CA_FILE"))
    )
    return TokenVerifier(issuer, department_id, keys, audience=env.get("OAUTH_AUDIENCE") or None)


def _warm_up() -> None:
    auth.warm_up()
    mail.warm_up()


def _upgrade(database: Path) -> None:
    """Bring an existing data.db to this release's schema (a new one is the database step's)."""
    if database.is_file():
        try:
            schema.create(database)
        except schema.SchemaError as exc:
            # Served anyway: /healthz then says what is wrong with the database.
            emit(event="database_not_upgraded", problem=str(exc))


def _write_service_file(path: Path, department_id: str, host: str, port: int) -> None:
    """Write service.json atomically: a reader sees the old file, no file, or the whole new one."""
    pid = os.getpid()
    record = {"pid": pid, "host": host, "port": port, "department_id": department_id, "started_at": utc_now()}
    tmp = path.with_name(f".{path.name}.{pid}.tmp")
    try:
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_service_file(path: Path) -> None:
    """Remove service.json if it still describes this process, so nobody dials a dead port."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()
