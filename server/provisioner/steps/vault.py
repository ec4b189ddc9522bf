"""Department secrets, encrypted at rest with AES-256-GCM, kept in the job store.

A department's OAuth client secret is made when its Provision call is accepted (so the
caller can be given it once, in the response), sealed with the primary key of the
keyring, and kept beside its SHA-256 for verification. Department services only ever see
the hash. The plaintext is never stored and never logged; `reveal` exists for the
validation step, which must call the department like a real client would.

The sealed values live in the job store, not on one replica's disk: whichever replica
runs or takes over a job can resume, verify and undo its steps. Every replica must
therefore hold the same key; the store records the primary key's id and a replica with
another key refuses to start (`check_key`).

Every sealed value is bound to its department and purpose (GCM's associated data), so a
value copied to another department does not decrypt there. Keys rotate without
downtime: the keyring is re-read when its file changes, new values are sealed with the
newest key while every key still opens what it sealed, and `reseal_all` moves old values
over.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from provisioner.core.errors import ConfigurationError, StepError
from provisioner.core.secrets import SealedSecret
from provisioner.core.spec import check_department_id
from provisioner.steps.files import write_atomically

_FORMAT = "v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(key: bytes) -> str:
    """A short public name for a key: it says which key sealed a value, not the key."""
    return hashlib.sha256(b"provisioner-key-id:" + key).hexdigest()[:12]


class Keyring:
    """AES-256 keys by id. The first is the primary (it seals); every key opens."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ConfigurationError("the keyring has no keys")
        for key in keys:
            if len(key) != 32:
                raise ConfigurationError("encryption keys must be 32 bytes (AES-256)")
        self._keys = {key_id(k): k for k in keys}
        self.primary = key_id(keys[0])

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    @classmethod
    def parse(cls, text: str) -> Keyring:
        """Keys as comma-separated base64 (standard or URL-safe), the primary first."""
        keys = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            standard = part.replace("-", "+").replace("_", "/")
            try:
                keys.append(base64.b64decode(standard + "=" * (-len(part) % 4), validate=True))
            except ValueError:
                raise ConfigurationError("PROVISIONER_ENCRYPTION_KEY: not base64") from None
        return cls(keys)

    def seal(self, plaintext: bytes, context: bytes) -> str:
        nonce = os.urandom(12)
        sealed = AESGCM(self._keys[self.primary]).encrypt(nonce, plaintext, context)
        return ".".join((_FORMAT, self.primary, _b64(nonce), _b64(sealed)))

    def open(self, sealed: str, context: bytes) -> bytes:
        try:
            version, kid, nonce, body = sealed.split(".")
        except ValueError:
            raise StepError("a sealed secret is malformed") from None
        if version != _FORMAT or kid not in self._keys:
            raise StepError(f"a secret is sealed with key {kid}, which is not in the keyring")
        try:
            return AESGCM(self._keys[kid]).decrypt(_unb64(nonce), _unb64(body), context)
        except InvalidTag:
            raise StepError("a sealed secret failed authentication (tampered or misplaced)") from None

    @staticmethod
    def sealed_with(sealed: str) -> str:
        return sealed.split(".")[1]


class KeySource:
    """Where the keyring comes from: a fixed value (the environment) or a key file.

    The key file (JSON, mode 0600, created with one random key when missing) is re-read
    whenever it changes, so a running server follows a rotation without a restart.
    """

    def __init__(self, *, value: str = "", path: Path | None = None) -> None:
        if not value and path is None:
            raise ConfigurationError("a key source needs a value or a key file")
        self._fixed = Keyring.parse(value) if value else None
        self.path = path
        self._loaded: tuple[tuple[int, int], Keyring] | None = None
        self._lock = threading.Lock()

    @property
    def rotatable(self) -> bool:
        return self._fixed is None

    def keyring(self) -> Keyring:
        if self._fixed is not None:
            return self._fixed
        assert self.path is not None
        with self._lock:
            if not self.path.exists():
                self._write([os.urandom(32)])
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if self._loaded is None or self._loaded[0] != stamp:
                if stat.st_mode & 0o077:
                    raise ConfigurationError(f"{self.path} must not be readable by others (chmod 600)")
                data = json.loads(self.path.read_text())
                self._loaded = (stamp, Keyring([_unb64(k["key"]) for k in data["keys"]]))
            return self._loaded[1]

    def add_primary(self) -> str:
        """Put a new random key first (the old ones stay, to open what they sealed)."""
        keys = [os.urandom(32), *self._raw_keys()]
        self._write(keys)
        return key_id(keys[0])

    def keep_only_primary(self) -> list[str]:
        """Drop every key but the primary; returns the ids dropped."""
        keys = self._raw_keys()
        self._write(keys[:1])
        return [key_id(k) for k in keys[1:]]

    def _raw_keys(self) -> list[bytes]:
        assert self.path is not None
        return [_unb64(k["key"]) for k in json.loads(self.path.read_text())["keys"]]

    def _write(self, keys: list[bytes]) -> None:
        assert self.path is not None
        now = datetime.now(UTC).isoformat()
        body = {"keys": [{"id": key_id(k), "key": _b64(k), "created": now} for k in keys]}
        write_atomically(self.path, json.dumps(body, indent=2) + "\n")


@dataclass(frozen=True, slots=True)
class Credential:
    """What may be known about a department's client without knowing its secret."""

    client_id: str
    secret_sha256: str
    job_id: str


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class SecretStore(Protocol):
    """Where sealed secrets live: the job store (`store.secrets`), shared by every replica."""

    async def get_secret(self, department_id: str, name: str) -> SealedSecret | None: ...

    async def add_secret(self, secret: SealedSecret) -> SealedSecret:
        """Store `secret` unless one by its name exists; return the stored one."""

    async def promote_secret(
        self, department_id: str, source: str, target: str, *, job_id: str, drop_prefix: str
    ) -> SealedSecret | None: ...

    async def delete_secrets(self, department_id: str, *, purpose: str, name: str | None = None) -> int: ...

    async def all_secrets(self) -> list[SealedSecret]: ...

    async def replace_sealed(self, secret: SealedSecret, sealed: str) -> bool: ...

    async def claim_setting(self, name: str, value: str) -> str:
        """Record `value` for `name` unless one is recorded; return the recorded one."""

    async def put_setting(self, name: str, value: str) -> None: ...


OAUTH = "oauth"
ACTIVE = "active"
_ISSUED = "issued:"
#: The store-wide setting naming the key every replica must hold.
KEY_SETTING = "encryption_key_id"


class CredentialVault:
    """A department's OAuth client and other secrets, sealed, in a `SecretStore`.

    `issued:<job>` is made when a provisioning job is accepted; the OAuth step makes it
    `active`; revocation deletes both (the sealed secret goes with them).
    """

    def __init__(self, store: SecretStore, keys: KeySource) -> None:
        self.store = store
        self.keys = keys

    async def check_key(self) -> str:
        """Refuse a keyring that cannot open what the store's secrets are sealed with.

        The first replica to start records its primary key's id; every later one must
        hold that key (a rotation records the new one). Returns the recorded id.
        """
        keyring = self.keys.keyring()
        recorded = await self.store.claim_setting(KEY_SETTING, keyring.primary)
        if recorded not in keyring.ids:
            source = "the key file" if self.keys.rotatable else "PROVISIONER_ENCRYPTION_KEY"
            raise ConfigurationError(
                f"the job store's secrets are sealed with key {recorded}, which {source} does not hold "
                f"(it holds {', '.join(keyring.ids)}); every replica sharing a job store must be given "
                "the same PROVISIONER_ENCRYPTION_KEY"
            )
        return recorded

    async def issue(
        self, department_id: str, job_id: str, *, client: tuple[str, str] | None = None
    ) -> tuple[str, str]:
        """A new client id and secret for the job (or `client`, made by an external
        authorization server); returns them (the only plaintext copy).

        Other jobs' unused credentials stay: a request that loses the race to create the
        department's job must not void the winner's. They go when a credential is
        activated, when the department is revoked, or when their job fails (`discard`).
        """
        _check(department_id)
        client_id, secret = client or (f"{department_id}.{secrets.token_hex(8)}", secrets.token_urlsafe(32))
        sealed = self.keys.keyring().seal(secret.encode(), _context(department_id, OAUTH))
        await self.store.add_secret(
            SealedSecret(
                department_id, _ISSUED + job_id, OAUTH, sealed, job_id, client_id, secret_digest(secret)
            )
        )
        return client_id, secret

    async def discard(self, department_id: str, job_id: str) -> None:
        """Forget the credential issued to a job that will never use it."""
        await self.store.delete_secrets(_check(department_id), purpose=OAUTH, name=_ISSUED + job_id)

    async def activate(self, department_id: str, job_id: str) -> Credential:
        """Make the job's issued credential the department's active one (idempotent)."""
        active = await self.store.promote_secret(
            _check(department_id), _ISSUED + job_id, ACTIVE, job_id=job_id, drop_prefix=_ISSUED
        )
        if active is None:
            raise StepError(f"no credentials were issued for job {job_id}; provision again for new ones")
        return _credential(active)

    async def active(self, department_id: str) -> Credential | None:
        record = await self.store.get_secret(_check(department_id), ACTIVE)
        return None if record is None else _credential(record)

    async def reveal(self, department_id: str) -> tuple[str, str]:
        """The active client id and secret in plaintext; for calling the department."""
        record = await self.store.get_secret(_check(department_id), ACTIVE)
        if record is None or record.client_id is None:
            raise StepError(f"department {department_id} has no active credentials")
        secret = self.keys.keyring().open(record.sealed, _context(department_id, OAUTH))
        return record.client_id, secret.decode()

    async def revoke(self, department_id: str) -> bool:
        """Delete every credential of the department; True if there was one."""
        return await self.store.delete_secrets(_check(department_id), purpose=OAUTH) > 0

    async def secret(self, department_id: str, name: str) -> str:
        """A random secret of the department's (e.g. its database password), made on first use.

        Replicas racing to make it agree on the first one stored.
        """
        context = _context(_check(department_id), name)
        record = await self.store.get_secret(department_id, name)
        if record is None:
            value = secrets.token_urlsafe(32)
            sealed = self.keys.keyring().seal(value.encode(), context)
            record = await self.store.add_secret(SealedSecret(department_id, name, name, sealed))
        return self.keys.keyring().open(record.sealed, context).decode()

    async def forget(self, department_id: str, name: str, *, purpose: str | None = None) -> None:
        await self.store.delete_secrets(_check(department_id), purpose=purpose or name, name=name)

    async def keep(self, department_id: str, name: str, purpose: str, value: str) -> None:
        """Seal and store `value` (the first one stored under `name` stays)."""
        sealed = self.keys.keyring().seal(value.encode(), _context(_check(department_id), purpose))
        await self.store.add_secret(SealedSecret(department_id, name, purpose, sealed))

    async def kept_names(self, department_id: str, purpose: str) -> list[str]:
        """The names of what `keep` stored for the department with `purpose`."""
        _check(department_id)
        return sorted(
            r.name
            for r in await self.store.all_secrets()
            if r.department_id == department_id and r.purpose == purpose
        )

    async def kept(self, department_id: str, name: str, purpose: str) -> str | None:
        """What `keep` stored under `name`, or None."""
        record = await self.store.get_secret(_check(department_id), name)
        if record is None:
            return None
        return self.keys.keyring().open(record.sealed, _context(department_id, purpose)).decode()

    async def reseal_all(self) -> int:
        """Seal every stored value again with the primary key; returns how many moved."""
        keyring = self.keys.keyring()
        moved = 0
        for record in await self.store.all_secrets():
            if Keyring.sealed_with(record.sealed) == keyring.primary:
                continue
            context = _context(record.department_id, record.purpose)
            resealed = keyring.seal(keyring.open(record.sealed, context), context)
            if await self.store.replace_sealed(record, resealed):
                moved += 1
        return moved

    async def sealed_key_ids(self) -> set[str]:
        """The ids of the keys that sealed what is stored now."""
        return {Keyring.sealed_with(r.sealed) for r in await self.store.all_secrets()}

    async def record_primary(self) -> None:
        """Tell every replica that the store's secrets are now sealed with our primary key."""
        await self.store.put_setting(KEY_SETTING, self.keys.keyring().primary)


def _check(department_id: str) -> str:
    if check_department_id(department_id):
        raise StepError(f"not a department id: {department_id!r}")
    return department_id


def _context(department_id: str, purpose: str) -> bytes:
    return f"provisioner/{department_id}/{purpose}".encode()


def _credential(record: SealedSecret) -> Credential:
    assert record.client_id is not None
    assert record.secret_sha256 is not None
    assert record.job_id is not None
    return Credential(record.client_id, record.secret_sha256, record.job_id)
