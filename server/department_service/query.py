"""Query-string parameters of the read routes and the workflow webhooks, checked."""

from __future__ import annotations

from urllib.parse import parse_qs

from department_service.errors import BadRequest

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def params(query: str) -> dict[str, list[str]]:
    """The parameters by name (at most 20); BadRequest for a malformed query string."""
    try:
        return parse_qs(query, max_num_fields=20)
    except ValueError as exc:
        raise BadRequest(f"bad query string: {exc}") from exc


def limit(parsed: dict[str, list[str]]) -> int:
    """`limit`: how many entries a listing returns, 1 to MAX_LIMIT (DEFAULT_LIMIT if absent)."""
    raw = parsed.get("limit", [str(DEFAULT_LIMIT)])[-1]
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_LIMIT):
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def dry_run(query: str) -> bool:
    """`?dryRun=true`: run the checks and record the execution, without the action's effect."""
    values = params(query).get("dryRun", [])
    if values and values[-1] not in ("true", "false"):
        raise BadRequest("dryRun must be true or false")
    return bool(values) and values[-1] == "true"
