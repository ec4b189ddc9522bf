"""Every SQL identifier and literal the tenant database adapter sends is made here.

Names derive only from a department id that passes the spec rules again at this point
(`check_department_id`), whatever validated it before: a step must not trust that its
input came through the front door. Identifiers are then quoted anyway, so a rule that
loosened one day could not turn a name into SQL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from provisioner.core.errors import StepError
from provisioner.core.spec import check_department_id

NAME_PREFIX = "dept_"

#: What a derived name may look like; checked after the mapping as a second fence.
_DERIVED_NAME = re.compile(r"dept_[a-z][a-z0-9_]{0,30}[a-z0-9]")

#: PostgreSQL's default iteration count for SCRAM-SHA-256 (`scram_iterations`).
SCRAM_ITERATIONS = 4096
_SCRAM_SALT_BYTES = 16


@dataclass(frozen=True, slots=True)
class DepartmentNames:
    """The PostgreSQL names of one department: its login role and its schema."""

    department_id: str
    role: str
    schema: str

    @property
    def quoted_role(self) -> str:
        return quote_ident(self.role)

    @property
    def quoted_schema(self) -> str:
        return quote_ident(self.schema)


def department_names(department_id: str) -> DepartmentNames:
    """The role and schema of a department, or a fatal `StepError` for a bad id.

    The role and the schema are both `dept_<id>` with hyphens turned into underscores.
    That mapping is injective because an id never contains an underscore (spec rules):
    `a-b` becomes `dept_a_b` and nothing else can. With at most 32 characters the name
    stays far below PostgreSQL's 63-byte identifier limit, so it is never truncated.
    """
    if check_department_id(department_id):
        # The id is not echoed: it failed the rules, so it may hold anything at all.
        raise StepError("the department id breaks the spec rules; no database names derive from it")
    name = NAME_PREFIX + department_id.replace("-", "_")
    if not _DERIVED_NAME.fullmatch(name):
        raise StepError("the department id does not map to a safe PostgreSQL name")
    return DepartmentNames(department_id=department_id, role=name, schema=name)


def quote_ident(name: str) -> str:
    """Quote an SQL identifier as PostgreSQL's `quote_ident` does (double any `"`)."""
    if "\x00" in name:
        raise ValueError("an SQL identifier cannot contain NUL")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote an SQL string literal as PostgreSQL's `quote_literal` does.

    For the few places where PostgreSQL takes no bind parameter (utility statements such
    as `CREATE ROLE ... PASSWORD` or `ALTER ROLE ... SET`). A value with a backslash gets
    the `E''` form, which reads the same whatever `standard_conforming_strings` says.
    """
    if "\x00" in value:
        raise ValueError("an SQL literal cannot contain NUL")
    quoted = value.replace("'", "''")
    if "\\" in quoted:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"


def advisory_lock_key(department_id: str) -> int:
    """A signed 64-bit key for `pg_advisory_xact_lock`, one per department.

    A hash collision between two departments would only serialize them, never mix them.
    """
    digest = hashlib.sha256(b"provisioner/tenant-database/" + department_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL would store for `password` (RFC 5802/7677).

    Sending the verifier instead of the password (as psql's `\\password` does) keeps the
    clear password out of the statement, so out of server logs and `pg_stat_activity`.
    PostgreSQL applies SASLprep to a password first; for printable ASCII that is the
    identity, so only printable ASCII is accepted rather than a partial SASLprep.
    """
    if not password or not all(" " <= ch <= "~" for ch in password):
        raise ValueError("the password must be non-empty printable ASCII")
    salt = os.urandom(_SCRAM_SALT_BYTES) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
