"""Deployed workflow definitions: `DIR/workflows/<name>.json`, written by the control plane.

The files are read afresh on every request (a directory listing and a few small files),
so a deploy or a removal takes effect at once with no cache to invalidate. A file that
cannot be run is not an error here: it becomes a *broken* workflow with a one-line problem,
listed by /healthz and /workflows and answered with 500 by its webhook.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
"""What a workflow (file) name may be: it appears in URLs and log lines."""

MAX_FILE_BYTES = 64 * 1024
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


@dataclass(frozen=True)
class EmailAction:
    """Mail `to` through the SMTP relay, recorded in the outbox; `subject` (and `body`, if
    given) are `{field}` templates."""

    to: str
    subject: str
    body: str | None = None


@dataclass(frozen=True)
class DriveAction:
    """Keep the file the request carries (named by its "name") in `folder`, in the
    department's own database; see `actions._drive`."""

    folder: str


@dataclass(frozen=True)
class DatabaseAction:
    """Store the request object as a record."""


Action = EmailAction | DriveAction | DatabaseAction


@dataclass(frozen=True)
class Workflow:
    """One deployed workflow; `problem` is set (and `action` is None) when it is broken."""

    name: str
    id: str | None = None
    version: int | None = None
    action_type: str | None = None
    action: Action | None = None
    problem: str | None = None

    @property
    def state(self) -> str:
        """The state shown by /healthz and /workflows: active or broken."""
        return "broken" if self.problem else "active"

    def describe(self) -> dict[str, object]:
        """The workflow as GET /workflows shows it."""
        entry: dict[str, object] = {
            "name": self.name,
            "id": self.id,
            "version": self.version,
            "action": self.action_type,
            "state": self.state,
        }
        if self.problem:
            entry["problem"] = self.problem
        return entry


def parse_workflow(name: str, text: str, department_id: str) -> Workflow:
    """Parse one definition; never raises: whatever is wrong becomes the workflow's problem."""
    if not NAME.fullmatch(name):
        return Workflow(name, problem=f"{name!r} is not a valid workflow name")
    try:
        data = json.loads(text)
    except ValueError as exc:
        return Workflow(name, problem=f"not valid JSON: {exc}")
    if not isinstance(data, dict):
        return Workflow(name, problem="not a JSON object")
    wf_id, version, action = data.get("id"), data.get("version"), data.get("action")
    action_type = action.get("type") if isinstance(action, dict) else None
    base = Workflow(
        name,
        id=wf_id if isinstance(wf_id, str) else None,
        version=version if isinstance(version, int) and not isinstance(version, bool) else None,
        action_type=action_type if isinstance(action_type, str) else None,
    )
    problem = _header_problem(data, name, department_id)
    parsed = _parse_action(action)
    if problem is None and not isinstance(parsed, str):
        return replace(base, action=parsed)
    return replace(base, problem=problem or str(parsed))


def load_all(directory: Path, department_id: str) -> dict[str, Workflow]:
    """Every deployed workflow by name (none if the directory does not exist yet)."""
    return {
        name: _load(path, name, department_id) for name, path in sorted(_definition_files(directory).items())
    }


def find(directory: Path, name: str, department_id: str) -> Workflow | None:
    """The workflow called `name`, or None if it is not deployed.

    The name is matched against the directory listing, never joined into a path, so a
    request cannot reach a file outside the workflows directory.
    """
    path = _definition_files(directory).get(name)
    return None if path is None else _load(path, name, department_id)


def _definition_files(directory: Path) -> dict[str, Path]:
    try:
        with os.scandir(directory) as entries:
            # Dot files are the control plane's temporary files, mid atomic write.
            return {
                entry.name[: -len(".json")]: Path(entry.path)
                for entry in entries
                if entry.name.endswith(".json") and not entry.name.startswith(".")
            }
    except (FileNotFoundError, NotADirectoryError):
        return {}


def _load(path: Path, name: str, department_id: str) -> Workflow:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return Workflow(name, problem=f"unreadable: {exc.strerror or exc}")
    if len(raw) > MAX_FILE_BYTES:
        return Workflow(name, problem=f"definition is over {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Workflow(name, problem="definition is not UTF-8")
    return parse_workflow(name, text, department_id)


def _header_problem(data: dict[str, object], name: str, department_id: str) -> str | None:
    if data.get("name") != name:
        return f"its name {data.get('name')!r} does not match the file name {name!r}"
    if data.get("department_id") != department_id:
        return f"it belongs to department {data.get('department_id')!r}, not {department_id!r}"
    if not isinstance(data.get("id"), str):
        return "id must be a string"
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return "version must be a positive integer"
    return None


def _parse_action(action: object) -> Action | str:
    """The action, or a one-line problem if it cannot be run."""
    if not isinstance(action, dict):
        return "action must be an object"
    kind = action.get("type")
    if kind == "email":
        to, subject, body = action.get("to"), action.get("subject"), action.get("body")
        if not isinstance(to, str) or not _EMAIL.fullmatch(to):
            return "email action needs a valid address in 'to'"
        if not isinstance(subject, str):
            return "email action needs a 'subject' string"
        if body is not None and not isinstance(body, str):
            return "email action 'body' must be a string"
        return EmailAction(to, subject, body)
    if kind == "google_drive":
        folder = action.get("folder")
        if not isinstance(folder, str) or not folder.strip():
            return "google_drive action needs a 'folder'"
        return DriveAction(folder)
    if kind == "database":
        return DatabaseAction()
    return f"unknown action type {kind!r}"
