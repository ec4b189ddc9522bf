"""Enforce the field rules declared in the contract (`protos/provisioning/v1/rules.proto`).

Every rule a request breaks is reported, each under the field's proto name (with an index
for a list item), so the edge can answer INVALID_ARGUMENT with a `google.rpc.BadRequest`
listing them all. The core checks the same department rules again on the domain side;
`tests/unit/test_validation.py` keeps the two in agreement.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Iterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from provisioner.core.errors import FieldViolation
from provisioner.core.spec import EMAIL_PATTERN
from provisioner_api.provisioning.v1 import rules_pb2


def violations(request: Message) -> list[FieldViolation]:
    """Every declared rule `request` breaks, in field order; empty when it is valid."""
    found: list[FieldViolation] = [
        # proto3 enums are open: a number the contract does not name decodes fine.
        FieldViolation(field.name, f"must be one of {', '.join(field.enum_type.values_by_name)}")
        for field in request.DESCRIPTOR.fields
        if field.enum_type is not None
        and not field.is_repeated
        and getattr(request, field.name) not in field.enum_type.values_by_number
    ]
    for field, rules in _declared_rules(request):
        kind = rules.WhichOneof("type")
        value = getattr(request, field.name)
        if kind == "string":
            found += _check_string(field.name, value, rules.string)
        elif kind == "repeated":
            found += _check_repeated(field.name, list(value), rules.repeated)
        elif kind == "int32":
            found += _check_int32(field.name, value, rules.int32)
    return found


def _declared_rules(request: Message) -> Iterator[tuple[Any, rules_pb2.FieldRules]]:
    for field in request.DESCRIPTOR.fields:
        rules = _rules_of(field)
        if rules is not None:
            yield field, rules


#: The `(rules)` field option; its generated stub types it too loosely for mypy.
_RULES: Any = rules_pb2.rules


@functools.cache
def _rules_of(field: FieldDescriptor) -> rules_pb2.FieldRules | None:
    options = field.GetOptions()
    if not options.HasExtension(_RULES):
        return None
    rules: rules_pb2.FieldRules = options.Extensions[_RULES]
    return rules


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _string_problem(value: str, rules: rules_pb2.StringRules) -> bool:
    """True if `value` breaks any of `rules`."""
    if rules.ignore_empty and value == "":
        return False
    return (
        len(value) < rules.min_len
        or (rules.max_len and len(value) > rules.max_len)
        or bool(rules.pattern and not _compiled(rules.pattern).search(value))
        or bool(getattr(rules, "in") and value not in getattr(rules, "in"))
        or value in rules.not_in
        or bool(rules.not_contains and rules.not_contains in value)
        or (rules.printable and not value.isprintable())
        or (rules.trimmed and value != value.strip())
        or (rules.email and not EMAIL_PATTERN.fullmatch(value))
        or (rules.uuid and not _is_uuid(value))
    )


def _check_string(path: str, value: str, rules: rules_pb2.StringRules) -> list[FieldViolation]:
    if _string_problem(value, rules):
        return [FieldViolation(path, f"must be {rules.description}")]
    return []


def _check_repeated(path: str, items: list[str], rules: rules_pb2.RepeatedRules) -> list[FieldViolation]:
    if rules.max_items and len(items) > rules.max_items:
        # One violation for the list, not one per item: the items are not looked at.
        return [FieldViolation(path, f"must list at most {rules.max_items} item(s)")]
    found = []
    if len(items) < rules.min_items:
        found.append(FieldViolation(path, f"must list at least {rules.min_items} item(s)"))
    for index, item in enumerate(items):
        if rules.HasField("items") and _string_problem(item, rules.items):
            found.append(FieldViolation(f"{path}[{index}]", f"must be {rules.items.description}"))
        elif rules.unique and item in items[:index]:
            found.append(FieldViolation(f"{path}[{index}]", f"{item!r} is listed twice"))
    return found


def _check_int32(path: str, value: int, rules: rules_pb2.Int32Rules) -> list[FieldViolation]:
    if (rules.HasField("gte") and value < rules.gte) or (rules.HasField("lte") and value > rules.lte):
        return [FieldViolation(path, f"must be {rules.description}")]
    return []
