"""Finish the OpenAPI document converted from protoc-gen-swagger's output.

Usage: openapi.py IN.json OUT.json (run by scripts/gen-protos, never by hand)

Everything added is derived from the contract, not written here: field constraints from
the `(rules)` options and `google.api.field_behavior`, path and query parameters renamed
to the lowerCamelCase JSON names Envoy's transcoder accepts, the error statuses every
operation can answer with, bearer authentication, and the Server-Sent Events framing of
server-streaming methods.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import rules_pb2

SERVICE = pb.DESCRIPTOR.services_by_name["ProvisioningService"]
STATUS_REF = "#/components/schemas/Status"

# (HTTP status, when): what Envoy's transcoder makes of the gRPC statuses we send.
ERRORS = {
    "400": "INVALID_ARGUMENT: the request breaks the contract's rules (see the BadRequest detail)",
    "401": "UNAUTHENTICATED: a missing, malformed, expired or untrusted bearer token",
    "403": "PERMISSION_DENIED: the token lacks the role this method needs",
    "404": "NOT_FOUND: no such job or department",
    "409": "ALREADY_EXISTS: conflicts with the department's current state",
    "429": "RESOURCE_EXHAUSTED: over the caller's rate limit; retry after `Retry-After` seconds",
    "503": "UNAVAILABLE: the server is starting, draining or cannot reach its store; retry",
}
WRITES = {"Provision", "Deprovision"}


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def string_schema(rules: rules_pb2.StringRules) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    if rules.min_len:
        schema["minLength"] = rules.min_len
    if rules.max_len:
        schema["maxLength"] = rules.max_len
    if rules.pattern:
        schema["pattern"] = rules.pattern
    if rules.email:
        schema["format"] = "email"
    if rules.uuid:
        schema["format"] = "uuid"
    allowed = getattr(rules, "in")  # `in` is a Python keyword
    if allowed:
        schema["enum"] = list(allowed)
    refused: list[dict[str, Any]] = []
    if rules.not_in:
        refused.append({"enum": list(rules.not_in)})
    if rules.not_contains:
        # Escape only what ECMA-262 (the dialect of OpenAPI patterns) treats as special.
        literal = re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", rules.not_contains)
        refused.append({"pattern": literal})
    if refused:
        schema["not"] = refused[0] if len(refused) == 1 else {"anyOf": refused}
    if rules.description:
        schema["x-rule"] = rules.description
    if rules.ignore_empty and schema:
        return {"anyOf": [{"type": "string", "maxLength": 0}, {"type": "string", **schema}]}
    return schema


def field_schema(field: FieldDescriptor) -> dict[str, Any]:
    options = field.GetOptions()
    if not options.HasExtension(rules_pb2.rules):
        return {}
    rules = options.Extensions[rules_pb2.rules]
    kind = rules.WhichOneof("type")
    if kind == "string":
        return string_schema(rules.string)
    if kind == "repeated":
        schema: dict[str, Any] = {}
        if rules.repeated.min_items:
            schema["minItems"] = rules.repeated.min_items
        if rules.repeated.max_items:
            schema["maxItems"] = rules.repeated.max_items
        if rules.repeated.unique:
            schema["uniqueItems"] = True
        if rules.repeated.HasField("items"):
            schema["items"] = {"type": "string", **string_schema(rules.repeated.items)}
        return schema
    if kind == "int32":
        bounds = {"minimum": rules.int32.gte} if rules.int32.HasField("gte") else {}
        if rules.int32.HasField("lte"):
            bounds["maximum"] = rules.int32.lte
        return bounds
    raise SystemExit(f"openapi.py: no schema for rules of kind {kind!r} on {field.full_name}")


def required(field: FieldDescriptor) -> bool:
    behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    return field_behavior_pb2.REQUIRED in behaviors


def integer_strings(node: Any) -> None:
    """proto3 JSON writes 64-bit integers as strings: say which strings those are."""
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("format") in ("int64", "uint64"):
            node["pattern"] = "^-?[0-9]+$" if node["format"] == "int64" else "^[0-9]+$"
        for value in node.values():
            integer_strings(value)
    elif isinstance(node, list):
        for item in node:
            integer_strings(item)


def constrain(schema: dict[str, Any], message: Descriptor) -> None:
    """Add each field's rules to the object schema of `message`."""
    properties = schema.get("properties", {})
    for field in message.fields:
        target = properties.get(field.json_name)
        if target is None:
            continue
        extra = field_schema(field)
        if "anyOf" in extra:
            description = target.get("description")
            target.clear()
            target.update(extra, **({"description": description} if description else {}))
        else:
            target.update(extra)
    names = [f.json_name for f in message.fields if required(f) and f.json_name in properties]
    if names:
        schema["required"] = names


def parameters(operation: dict[str, Any], message: Descriptor) -> None:
    """Name parameters as the JSON fields they fill, with those fields' rules."""
    by_name = {f.name: f for f in message.fields}
    for parameter in operation.get("parameters", []):
        field = by_name.get(parameter["name"])
        if field is None:
            continue
        parameter["name"] = field.json_name
        extra = field_schema(field)
        parameter["schema"] = {**parameter.get("schema", {}), **extra}


def errors(operation: dict[str, Any], method: str) -> None:
    responses = operation.setdefault("responses", {})
    responses.pop("default", None)
    for code, description in ERRORS.items():
        if code == "409" and method not in WRITES:
            continue
        response: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": STATUS_REF}}},
        }
        if code == "429":
            response["headers"] = {
                "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
            }
        responses[code] = response


def stream(operation: dict[str, Any]) -> None:
    ok = operation["responses"]["200"]
    message = ok["content"]["application/json"]["schema"]
    ok["description"] = (
        "Server-Sent Events: each `data:` line holds one JSON message (the schema below); "
        "the stream ends after the job's terminal event"
    )
    ok["content"] = {"text/event-stream": {"schema": {"type": "string"}, "x-data": message}}


def finish(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in schemas.items():
        message = pb.DESCRIPTOR.message_types_by_name.get(name.removeprefix("v1"))
        if message is not None:
            constrain(schema, message)
    schemas["Status"] = {
        "type": "object",
        "description": "A google.rpc.Status: the gRPC code, one sentence, and typed details",
        "properties": {
            "code": {"type": "integer"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": {"type": "object"}},
        },
    }
    document["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    }
    document["security"] = [{"bearer": []}]
    paths: dict[str, Any] = {}
    for path, item in document["paths"].items():
        path = re.sub(r"\{(\w+)\}", lambda m: "{" + camel(m.group(1)) + "}", path)
        for operation in item.values():
            method = SERVICE.methods_by_name[operation["operationId"]]
            parameters(operation, method.input_type)
            if method.server_streaming:
                stream(operation)
            errors(operation, method.name)
        paths[path] = item
    document["paths"] = paths
    document["info"] = {
        "title": "provisioning.v1 REST API",
        "version": "v1",
        "description": "Generated from protos/ by scripts/gen-protos; served by Envoy's "
        "gRPC-JSON transcoder in front of provisioning.v1.ProvisioningService.",
    }
    document.pop("servers", None)
    integer_strings(document)
    return document


def main() -> None:
    source, target = sys.argv[1:3]
    with open(source, encoding="utf-8") as file:
        document = finish(json.load(file))
    with open(target, "w", encoding="utf-8") as file:
        json.dump(document, file, indent=2, sort_keys=True)
        file.write("\n")


if __name__ == "__main__":
    main()
