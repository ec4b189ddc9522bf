"""Our workflow templates as n8n workflows: pure functions, no I/O.

Each kind becomes two nodes: a Webhook trigger (POST `<department_id>/<kind>`, answering
with what the last node produced) and the node that does the work:

- `email`: n8n's Send Email node, through the department's SMTP credential
  (`dept-<id>-smtp`, written from PROVISIONER_SMTP_URL by the adapter), to the
  template's recipient; it answers with the relay's acceptance.
- `google_drive`: n8n's Google Drive node creating a text file from the request, through
  the department's Google Drive credential (`dept-<id>-google-drive`), a placeholder an
  operator fills in: until then a run fails in n8n, saying so.
- `database`: an "Edit Fields (Set)" node that shapes the request into a record.

Every run is kept as an n8n execution. Values from the spec never become n8n
expressions by accident: n8n evaluates any parameter string that starts with "=", so
such a constant is wrapped as a JavaScript string literal, and the email subject's
`{field}` placeholders become an expression built from escaped literals and field
lookups on the request body.

Node, webhook and credential ids are derived from the department and the kind, so
converting the same spec twice gives the same document and a re-apply can tell
"unchanged" apart; a credential's id is how every replica finds it again.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from string import Formatter
from typing import Any

from department_service.mail import Relay
from provisioner.core.errors import StepError
from provisioner.core.spec import DepartmentSpec
from provisioner.steps.workflows import render

TRIGGER_NODE = "Webhook"
#: The n8n node each kind's action becomes: (name, type, version).
ACTION_NODES = {
    "email": ("Send email", "n8n-nodes-base.emailSend", 2.1),
    "google_drive": ("Create file in Google Drive", "n8n-nodes-base.googleDrive", 3),
    "database": ("Record", "n8n-nodes-base.set", 3.4),
}
WEBHOOK_NODE_TYPE = "n8n-nodes-base.webhook"
WEBHOOK_NODE_VERSION = 2.1
#: Saved executions are the only trace a run leaves here, so keep them whatever the
#: instance's default; and no other workflow may call a department's workflows.
SETTINGS: dict[str, Any] = {
    "executionOrder": "v1",
    "saveDataSuccessExecution": "all",
    "saveDataErrorExecution": "all",
    "callerPolicy": "none",
}
_IDS = uuid.UUID("8a4d0c57-3f0e-4f7e-9c55-5b8f0d6a2e41")
_BODY = "$json.body"


@dataclass(frozen=True, slots=True)
class Credential:
    """An n8n credential of a department: its id (at most 16 characters, n8n's limit) is
    derived from the department, so a re-run and a rollback on any replica find it."""

    id: str
    name: str
    type: str

    @property
    def reference(self) -> dict[str, dict[str, str]]:
        """How a node names it."""
        return {self.type: {"id": self.id, "name": self.name}}


#: The credential each kind's node uses: (name suffix, n8n credential type).
_CREDENTIALS = {"email": ("smtp", "smtp"), "google_drive": ("google-drive", "googleDriveOAuth2Api")}


def credential(department_id: str, kind: str) -> Credential | None:
    """The credential the department's workflow of `kind` runs with, if it needs one."""
    if kind not in _CREDENTIALS:
        return None
    suffix, credential_type = _CREDENTIALS[kind]
    return Credential(
        id=uuid.uuid5(_IDS, f"{department_id}/credential/{suffix}").hex[:16],
        name=f"dept-{department_id}-{suffix}",
        type=credential_type,
    )


def smtp_data(relay: Relay) -> dict[str, Any]:
    """The `smtp` credential's data for `relay`: n8n's Send Email node (nodemailer)
    uses implicit TLS for smtps:// and STARTTLS whenever the relay offers it."""
    return {
        "host": relay.host,
        "port": relay.port,
        "secure": relay.implicit_tls,
        "disableStartTls": False,
        "user": relay.username or "",
        "password": relay.password or "",
    }


def workflow_name(department_id: str, kind: str) -> str:
    """The n8n workflow name of a department's workflow: it is how a re-run finds it."""
    return f"dept-{department_id}-{kind}"


def department_tag(department_id: str) -> str:
    """The n8n tag on every workflow of the department."""
    return f"department:{department_id}"


def webhook_path(department_id: str, kind: str) -> str:
    """The trigger's path; n8n serves it at `<n8n>/webhook/<path>` once active."""
    return f"{department_id}/{kind}"


def js_string(text: str) -> str:
    """`text` as a JavaScript string literal with no braces in it.

    JSON's escaping makes a valid literal; braces become escapes too, since a `}}` would
    end the expression that holds the literal.
    """
    return json.dumps(text, ensure_ascii=True).replace("{", "\\u007b").replace("}", "\\u007d")


def constant(text: str) -> str:
    """A parameter value that n8n takes as the text itself, never as an expression."""
    return f"={{{{ {js_string(text)} }}}}" if text.startswith("=") else text


def template_expression(template: str) -> str:
    """An n8n expression for a `{field}` template over the request body.

    Same rules as the department service's templates: `{{` and `}}` are literal braces,
    a placeholder names one top-level field, a missing field renders empty.
    """
    parts: list[str] = []
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as exc:
        raise StepError(f"workflow template {template!r} is not valid: {exc}") from exc
    text = ""  # literal text not yet emitted: Formatter splits it at each escaped brace
    for literal, field, conversion, spec in parsed:
        text += literal
        if field is None:
            continue
        if not field or conversion or spec or not field.isidentifier():
            raise StepError(f"workflow template {template!r}: only {{field}} placeholders are allowed")
        if text:
            parts.append(js_string(text))
            text = ""
        parts.append(f"String({_BODY}[{js_string(field)}] ?? {js_string('')})")
    if text or not parts:
        parts.append(js_string(text))
    return f"={{{{ {' + '.join(parts)} }}}}"


def _node_id(department_id: str, kind: str, node: str) -> str:
    return str(uuid.uuid5(_IDS, f"{department_id}/{kind}/{node}"))


def _email(action: dict[str, Any], sender: str) -> dict[str, Any]:
    to, subject = action.get("to"), action.get("subject")
    if not isinstance(to, str) or not isinstance(subject, str):
        raise StepError("the email workflow template needs 'to' and 'subject' strings")
    body = action.get("body")
    # With no body template the message carries the request as it came.
    text = (
        template_expression(body) if isinstance(body, str) else f"={{{{ JSON.stringify({_BODY}, null, 2) }}}}"
    )
    return {
        "resource": "email",
        "operation": "send",
        "fromEmail": constant(sender),
        "toEmail": constant(to),
        "subject": template_expression(subject),
        "emailFormat": "text",
        "text": text,
        "options": {"appendAttribution": False},
    }


def _google_drive(action: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(action.get("folder"), str):
        raise StepError("the google_drive workflow template needs a 'folder' string")
    # The request's `content` text, else the request itself as JSON, as a text file.
    content = f"typeof {_BODY}.content === 'string' ? {_BODY}.content : JSON.stringify({_BODY}, null, 2)"
    return {
        "authentication": "oAuth2",
        "resource": "file",
        "operation": "createFromText",
        "content": f"={{{{ {content} }}}}",
        "name": template_expression("{name}"),
        # Drive folders are found by id, which only the operator's account can tell:
        # files go to the root of My Drive until the operator picks the folder.
        "driveId": {"__rl": True, "mode": "list", "value": "My Drive"},
        "folderId": {"__rl": True, "mode": "list", "value": "root", "cachedResultName": "/ (Root folder)"},
        "options": {},
    }


def _field(name: str, value: str, kind: str = "string") -> dict[str, Any]:
    return {"id": name, "name": name, "type": kind, "value": value}


def _record(department_id: str) -> dict[str, Any]:
    fields = [
        _field("department_id", constant(department_id)),
        _field("workflow", constant("database")),
        _field("record", f"={{{{ {_BODY} }}}}", "object"),
        _field("received_at", "={{ $now.toUTC().toISO() }}"),
    ]
    return {
        "mode": "manual",
        "includeOtherFields": False,
        "assignments": {"assignments": fields},
        "options": {},
    }


def to_n8n(kind: str, spec: DepartmentSpec, *, sender: str | None = None) -> dict[str, Any]:
    """The n8n workflow (the public API's create/update body) for `kind` of `spec`'s
    department; `sender` is the email's From address (default `<department_id>@localhost`)."""
    rendered = render(kind, spec)
    action = rendered.get("action")
    if not isinstance(action, dict) or action.get("type") != kind:
        raise StepError(f"the {kind} workflow template has no {kind} action")
    department_id = spec.department_id
    notes = str(rendered.get("description", ""))
    if kind == "email":
        parameters = _email(action, sender or f"{department_id}@localhost")
    elif kind == "google_drive":
        parameters = _google_drive(action)
        notes += f'.\nFolder: "{action["folder"]}": pick it here once the credential is filled in.'

    elif kind == "database":
        parameters = _record(department_id)
    else:
        raise StepError(f"no n8n conversion for workflow {kind!r}")
    name, node_type, version = ACTION_NODES[kind]
    trigger = {
        "id": _node_id(department_id, kind, TRIGGER_NODE),
        "name": TRIGGER_NODE,
        "type": WEBHOOK_NODE_TYPE,
        "typeVersion": WEBHOOK_NODE_VERSION,
        "position": [0, 0],
        "webhookId": _node_id(department_id, kind, "webhook"),
        "parameters": {
            "httpMethod": "POST",
            "path": webhook_path(department_id, kind),
            "responseMode": "lastNode",
            "responseData": "firstEntryJson",
            "options": {},
        },
    }
    action_node: dict[str, Any] = {
        "id": _node_id(department_id, kind, name),
        "name": name,
        "type": node_type,
        "typeVersion": version,
        "position": [260, 0],
        "notes": notes,
        "parameters": parameters,
    }
    if kind == "email":
        # n8n gives this node a webhook id of its own (its send-and-wait operation has a
        # webhook) unless it has one: ours keeps a re-apply from seeing a change.
        action_node["webhookId"] = _node_id(department_id, kind, "action-webhook")
    needs = credential(department_id, kind)
    if needs is not None:
        action_node["credentials"] = needs.reference
    return {
        "name": workflow_name(department_id, kind),
        "nodes": [trigger, action_node],
        "connections": {TRIGGER_NODE: {"main": [[{"node": name, "type": "main", "index": 0}]]}},
        "settings": dict(SETTINGS),
    }
