"""Department secrets, encrypted at rest with AES-256-GCM.

A department's OAuth client secret is made when its Provision call is accepted (so the
caller can be given it once, in the response), sealed with the primary key of the
keyring, and kept beside its SHA-256 for verification. Department services only ever see
the hash. The plaintext is never written and never logged; `reveal` exists for the
validation step, which must call the department like a real client would.

Every sealed value is bound to its department and purpose (GCM's associated data), so a
file copied to another department does not decrypt there. Keys rotate without downtime:
the keyring is re-read when its file changes, new values are sealed with the newest key
while every key still opens what it sealed, and `reseal_all` moves old values over.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from provisioner.core.errors import ConfigurationError, StepError
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


class CredentialVault:
    """Department secrets under `root/<department>/`, one JSON file each, mode 0600.

    `issued-<job>.json` is made when a provisioning job is accepted; the OAuth step makes
    it `active.json`; revocation deletes both (the sealed secret goes with them).
    """

    def __init__(self, root: Path, keys: KeySource) -> None:
        self.root = root
        self.keys = keys

    def _dir(self, department_id: str) -> Path:
        if check_department_id(department_id):
            raise StepError(f"not a department id: {department_id!r}")
        return self.root / department_id

    def issue(self, department_id: str, job_id: str) -> tuple[str, str]:
        """A new client id and secret for the job; returns them (the only plaintext copy).

        Other jobs' unused credentials stay: a request that loses the race to create the
        department's job must not void the winner's. They go when a credential is
        activated, when the department is revoked, or when their job fails (`discard`).
        """
        client_id = f"{department_id}.{secrets.token_hex(8)}"
        secret = secrets.token_urlsafe(32)
        record = {
            "client_id": client_id,
            "secret_sha256": secret_digest(secret),
            "sealed_secret": self.keys.keyring().seal(secret.encode(), self._context(department_id, "oauth")),
            "job_id": job_id,
            "issued_at": datetime.now(UTC).isoformat(),
        }
        write_atomically(self._dir(department_id) / f"issued-{job_id}.json", json.dumps(record, indent=2))
        return client_id, secret

    def discard(self, department_id: str, job_id: str) -> None:
        """Forget the credential issued to a job that will never use it."""
        folder = self._dir(department_id)
        (folder / f"issued-{job_id}.json").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()

    def activate(self, department_id: str, job_id: str) -> Credential:
        """Make the job's issued credential the department's active one (idempotent)."""
        folder = self._dir(department_id)
        active = self._read(folder / "active.json")
        if active is None or active["job_id"] != job_id:
            issued = self._read(folder / f"issued-{job_id}.json")
            if issued is None:
                raise StepError(f"no credentials were issued for job {job_id}; provision again for new ones")
            write_atomically(folder / "active.json", json.dumps(issued, indent=2))
            active = issued
        # Also when already active: a crash may have come between that write and this.
        for other in folder.glob("issued-*.json"):
            other.unlink(missing_ok=True)
        return self._credential(active)

    def active(self, department_id: str) -> Credential | None:
        record = self._read(self._dir(department_id) / "active.json")
        return None if record is None else self._credential(record)

    def reveal(self, department_id: str) -> tuple[str, str]:
        """The active client id and secret in plaintext; for calling the department."""
        record = self._read(self._dir(department_id) / "active.json")
        if record is None:
            raise StepError(f"department {department_id} has no active credentials")
        secret = self.keys.keyring().open(record["sealed_secret"], self._context(department_id, "oauth"))
        return record["client_id"], secret.decode()

    def revoke(self, department_id: str) -> bool:
        """Delete every credential of the department; True if there was one."""
        folder = self._dir(department_id)
        found = False
        for path in [folder / "active.json", *folder.glob("issued-*.json")]:
            if path.exists():
                path.unlink()
                found = True
        with contextlib.suppress(OSError):
            folder.rmdir()  # gone unless other secrets of the department remain
        return found

    def secret(self, department_id: str, name: str) -> str:
        """A random secret of the department's (e.g. its database password), made on first use."""
        path = self._dir(department_id) / f"{name}.secret.json"
        context = self._context(department_id, name)
        record = self._read(path)
        if record is None:
            value = secrets.token_urlsafe(32)
            write_atomically(path, json.dumps({"sealed": self.keys.keyring().seal(value.encode(), context)}))
            return value
        return self.keys.keyring().open(record["sealed"], context).decode()

    def forget(self, department_id: str, name: str) -> None:
        folder = self._dir(department_id)
        (folder / f"{name}.secret.json").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()

    def reseal_all(self) -> int:
        """Seal every stored value again with the primary key; returns how many moved."""
        keyring = self.keys.keyring()
        moved = 0
        for path, department_id, purpose, field in self._sealed_values():
            record = self._read(path)
            if record is None or Keyring.sealed_with(record[field]) == keyring.primary:
                continue
            context = self._context(department_id, purpose)
            record[field] = keyring.seal(keyring.open(record[field], context), context)
            write_atomically(path, json.dumps(record, indent=2))
            moved += 1
        return moved

    def sealed_key_ids(self) -> set[str]:
        """The ids of the keys that sealed what is stored now."""
        found = set()
        for path, _, _, field in self._sealed_values():
            record = self._read(path)
            if record is not None:
                found.add(Keyring.sealed_with(record[field]))
        return found

    def _sealed_values(self) -> Iterator[tuple[Path, str, str, str]]:
        if not self.root.exists():
            return
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for path in sorted(folder.glob("*.json")):
                if path.name.endswith(".secret.json"):
                    yield path, folder.name, path.name.removesuffix(".secret.json"), "sealed"
                else:
                    yield path, folder.name, "oauth", "sealed_secret"

    @staticmethod
    def _context(department_id: str, purpose: str) -> bytes:
        return f"provisioner/{department_id}/{purpose}".encode()

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        return data

    @staticmethod
    def _credential(record: dict[str, Any]) -> Credential:
        return Credential(record["client_id"], record["secret_sha256"], record["job_id"])
