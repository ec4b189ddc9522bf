"""A department secret as the job store keeps it: sealed, never in plaintext."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SealedSecret:
    """One sealed value of a department's (an OAuth client's secret, a role's password).

    `sealed` is AES-GCM ciphertext bound to the department and `purpose`; `name` tells
    the department's secrets apart (`active`, `issued:<job>`, `database`). An OAuth
    client also carries its public half: the client id and the secret's SHA-256.
    """

    department_id: str
    name: str
    purpose: str
    sealed: str
    job_id: str | None = None
    client_id: str | None = None
    secret_sha256: str | None = None
