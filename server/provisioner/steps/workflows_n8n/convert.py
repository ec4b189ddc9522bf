"""Our workflow templates as n8n workflows: pure functions, no I/O.

Each kind becomes two nodes: a Webhook trigger (POST `<department_id>/<kind>`, answering
with what the last node produced) and an "Edit Fields (Set)" node that shapes the
request into the kind's result, an email message, a file entry or a record, so the
workflow runs with no credentials at all; every run is kept as an n8n execution.

Values from the spec never become n8n expressions by accident: n8n evaluates any
parameter string that starts with "=", so such a constant is wrapped as a JavaScript
string literal, and the email subject's `{field}` placeholders become an expression
built from escaped literals and field lookups on the request body.

Node and webhook ids are UUIDs derived from the department and the kind, so converting
the same spec twice gives the same document and a re-apply can tell "unchanged" apart.
"""

from __future__ import annotations

import json
import uuid
from string import Formatter
from typing import Any

from provisioner.core.errors import StepError
from provisioner.core.spec import DepartmentSpec
from provisioner.steps.workflows import render

TRIGGER_NODE = "Webhook"
#: The n8n node each kind's action becomes, named for what it produces.
ACTION_NODES = {"email": "Compose email", "google_drive": "File entry", "database": "Record"}
SET_NODE_TYPE = "n8n-nodes-base.set"
SET_NODE_VERSION = 3.4
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


def _field(name: str, value: str, kind: str = "string") -> dict[str, Any]:
    return {"id": name, "name": name, "type": kind, "value": value}


def _action_fields(kind: str, action: dict[str, Any], department_id: str) -> list[dict[str, Any]]:
    """What the action node outputs, for each kind; the request is in `$json.body`."""
    common = [_field("department_id", constant(department_id)), _field("workflow", constant(kind))]
    received = _field("received_at", "={{ $now.toUTC().toISO() }}")
    if kind == "email":
        to, subject = action.get("to"), action.get("subject")
        if not isinstance(to, str) or not isinstance(subject, str):
            raise StepError("the email workflow template needs 'to' and 'subject' strings")
        body = action.get("body")
        if isinstance(body, str):
            body_field = _field("body", template_expression(body))
        else:  # no body template: the message carries the request as it came
            body_field = _field("body", f"={{{{ {_BODY} }}}}", "object")
        fields = [_field("to", constant(to)), _field("subject", template_expression(subject)), body_field]
        return [*common, *fields, received]
    if kind == "google_drive":
        folder = action.get("folder")
        if not isinstance(folder, str):
            raise StepError("the google_drive workflow template needs a 'folder' string")
        return [
            *common,
            _field("folder", constant(folder)),
            _field("name", template_expression("{name}")),
            _field("content", f"={{{{ {_BODY} }}}}", "object"),
            received,
        ]
    if kind == "database":
        return [*common, _field("record", f"={{{{ {_BODY} }}}}", "object"), received]
    raise StepError(f"no n8n conversion for workflow {kind!r}")


def to_n8n(kind: str, spec: DepartmentSpec) -> dict[str, Any]:
    """The n8n workflow (the public API's create/update body) for `kind` of `spec`'s department."""
    rendered = render(kind, spec)
    action = rendered.get("action")
    if not isinstance(action, dict) or action.get("type") != kind:
        raise StepError(f"the {kind} workflow template has no {kind} action")
    department_id = spec.department_id
    action_node = ACTION_NODES[kind]
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
    shaper = {
        "id": _node_id(department_id, kind, action_node),
        "name": action_node,
        "type": SET_NODE_TYPE,
        "typeVersion": SET_NODE_VERSION,
        "position": [260, 0],
        "notes": str(rendered.get("description", "")),
        "parameters": {
            "mode": "manual",
            "includeOtherFields": False,
            "assignments": {"assignments": _action_fields(kind, action, department_id)},
            "options": {},
        },
    }
    return {
        "name": workflow_name(department_id, kind),
        "nodes": [trigger, shaper],
        "connections": {TRIGGER_NODE: {"main": [[{"node": action_node, "type": "main", "index": 0}]]}},
        "settings": dict(SETTINGS),
    }
