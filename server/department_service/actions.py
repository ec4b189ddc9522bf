"""What a workflow's action does with a request, as plain data: no I/O, no clock, no randomness.

`plan` turns (action, request) into an `Effect`: the row to insert and the result to return.
The caller supplies the row id and writes the effect, together with the execution row, in
one transaction. A request the action cannot accept raises `InputRejected` (422).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from department_service.errors import InputRejected
from department_service.workflows import Action, DatabaseAction, DriveAction, EmailAction

# Only a plain top-level key: no ".attr", "[index]", "!conversion" or ":format" (str.format
# would let a template reach into objects), and no positional "{}" or "{0}".
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_FORMATTER = string.Formatter()
MAX_SUBJECT = 998  # RFC 5322's line limit
MAX_FILE_NAME = 255
MAX_FILE_BYTES = 1024 * 1024
"""The largest file google_drive keeps (its request may be up to `UPLOAD_BODY_LIMIT`)."""
UPLOAD_BODY_LIMIT = 1536 * 1024
"""A workflow request's size limit: a 1 MiB file in base64, with its JSON around it."""
_CONTENT_TYPE = re.compile(
    r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*(; ?[ -~]*)?", re.IGNORECASE
)


@dataclass(frozen=True)
class Effect:
    """A row for `table` (values in the table's column order after id, execution_id, created_at)."""

    table: Literal["outbox", "files", "records"]
    values: tuple[str | int | bytes, ...]
    result: dict[str, object]


def render(template: str, request: Mapping[str, object]) -> str:
    """Fill `{field}` placeholders from the request's top-level string or number fields.

    `{{` and `}}` are literal braces. Anything else in braces, a missing field, or a field
    that is not a string or a number raises InputRejected.
    """
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise InputRejected(f"the template {template!r} is not valid: {exc}") from exc
    out: list[str] = []
    for literal, field, spec, conversion in parts:
        out.append(literal)
        if field is None:
            continue
        if not _FIELD.fullmatch(field) or spec or conversion:
            shown = field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise InputRejected(
                f"placeholder {{{shown}}} is not allowed: only {{field}} of a top-level field"
            )
        if field not in request:
            raise InputRejected(f"the request has no field {field!r} for the placeholder {{{field}}}")
        value = request[field]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise InputRejected(f"the field {field!r} must be a string or a number")
        out.append(str(value))
    return "".join(out)


def to_json(value: object) -> str:
    """The compact JSON stored in the database."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def plan(action: Action, request: Mapping[str, object], row_id: str) -> Effect:
    """The effect of running `action` on `request`; raises InputRejected if the request breaks its rules."""
    if isinstance(action, EmailAction):
        return _email(action, request, row_id)
    if isinstance(action, DriveAction):
        return _drive(action, request, row_id)
    if isinstance(action, DatabaseAction):
        return Effect("records", (to_json(dict(request)),), {"record_id": row_id})
    raise TypeError(f"unhandled action {action!r}")  # a new Action without a branch here


def _email(action: EmailAction, request: Mapping[str, object], row_id: str) -> Effect:
    subject = render(action.subject, request)
    if "\r" in subject or "\n" in subject:
        # The subject becomes a mail header: a line break would let a request add headers.
        raise InputRejected("the subject would contain a line break")
    if len(subject) > MAX_SUBJECT:
        raise InputRejected(f"the subject would be over {MAX_SUBJECT} characters")
    if action.body is None:
        body = json.dumps(dict(request), ensure_ascii=False, indent=2, sort_keys=True)
    else:
        body = render(action.body, request)
    return Effect(
        "outbox",
        (action.to, subject, body, "pending"),
        {"outbox_id": row_id, "to": action.to, "subject": subject},
    )


def _drive(action: DriveAction, request: Mapping[str, object], row_id: str) -> Effect:
    """A file in the department's own storage: "content" (text), "contentBase64" (bytes),
    or, with neither, the request itself as JSON; "contentType" names its media type."""
    name = request.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InputRejected('google_drive needs a non-empty string "name"')
    if len(name) > MAX_FILE_NAME or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise InputRejected(f'"name" must be at most {MAX_FILE_NAME} characters with no control characters')
    content, content_type = _file_content(request)
    declared = request.get("contentType")
    if declared is not None:
        if not isinstance(declared, str) or len(declared) > 200 or not _CONTENT_TYPE.fullmatch(declared):
            raise InputRejected('"contentType" must be a media type such as "application/pdf"')
        content_type = declared
    if len(content) > MAX_FILE_BYTES:
        raise InputRejected(f"the file is over the limit of {MAX_FILE_BYTES} bytes")
    digest = hashlib.sha256(content).hexdigest()
    return Effect(
        "files",
        (action.folder, name, content_type, len(content), digest, content),
        {
            "file_id": row_id,
            "folder": action.folder,
            "name": name,
            "content_type": content_type,
            "size": len(content),
            "sha256": digest,
        },
    )


def _file_content(request: Mapping[str, object]) -> tuple[bytes, str]:
    text, encoded = request.get("content"), request.get("contentBase64")
    if text is not None and encoded is not None:
        raise InputRejected('give "content" or "contentBase64", not both')
    if text is not None:
        if not isinstance(text, str):
            raise InputRejected('"content" must be a string (use "contentBase64" for bytes)')
        return text.encode("utf-8"), "text/plain; charset=utf-8"
    if encoded is not None:
        if not isinstance(encoded, str):
            raise InputRejected('"contentBase64" must be a base64 string')
        try:
            return base64.b64decode(encoded, validate=True), "application/octet-stream"
        except (binascii.Error, ValueError) as exc:
            raise InputRejected(f'"contentBase64" is not valid base64: {exc}') from exc
    document = json.dumps(dict(request), ensure_ascii=False, indent=2, sort_keys=True)
    return document.encode("utf-8"), "application/json"
