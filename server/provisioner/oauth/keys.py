"""The keys access tokens are signed with: ES256 (P-256), one per rotation period, sealed
in the job store so that every replica signs with the same key and publishes the same set.

Time is cut into periods of `rotation` seconds. The key of period N signs every token
issued in N; the published set (JWKS) holds the keys of N-1 (tokens signed just before
the turn still verify: a token lives less than a period), N, and N+1 (so a verifier that
cached the set already holds the next key when it starts being used). Each key is made
by whichever replica asks for it first: the store keeps the first one written under the
period's name (`SecretStore.add_secret`), and every other replica reads that one. Keys
two periods old are deleted.

The private keys are sealed like department secrets, with the control plane's encryption
keyring (`provisioning-server rotate-key` reseals them too); their owner in the secrets
table is `OWNER`, which can never be a department id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from provisioner.core.secrets import SealedSecret
from provisioner.steps.files import write_atomically
from provisioner.steps.vault import KeySource, SecretStore

log = logging.getLogger("provisioner.oauth")

OWNER = "_oauth"
PURPOSE = "oauth-signing"
ALGORITHM = "ES256"


@dataclass(frozen=True, slots=True)
class SigningKey:
    period: int
    kid: str
    private: ec.EllipticCurvePrivateKey

    def public_jwk(self) -> dict[str, object]:
        jwk: dict[str, object] = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": ALGORITHM}


def thumbprint(key: ec.EllipticCurvePublicKey) -> str:
    """The key's RFC 7638 thumbprint: its id, the same on every replica."""
    jwk = ECAlgorithm.to_jwk(key, as_dict=True)
    canonical = json.dumps({name: jwk[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def _name(period: int) -> str:
    return f"signing-key:{period}"


def _context() -> bytes:
    # The vault's context for (owner, purpose): `CredentialVault.reseal_all` reseals these too.
    return f"provisioner/{OWNER}/{PURPOSE}".encode()


class SigningKeys:
    """The signing keys of the current periods, from the store, cached per period."""

    def __init__(self, store: SecretStore, keys: KeySource, *, rotation: float) -> None:
        if rotation <= 0:
            raise ValueError("the signing key rotation must be a positive number of seconds")
        self._store = store
        self._keys = keys
        self.rotation = rotation
        self._cache: dict[int, SigningKey] = {}

    def period(self, now: float) -> int:
        return int(now // self.rotation)

    async def current(self, now: float) -> SigningKey:
        """The key that signs a token issued at `now`."""
        return await self._key(self.period(now))

    async def published(self, now: float) -> list[SigningKey]:
        """The keys a verifier must know at `now`: the previous, current and next periods'."""
        period = self.period(now)
        return [await self._key(p) for p in (period - 1, period, period + 1)]

    async def jwks(self, now: float) -> dict[str, object]:
        return {"keys": [key.public_jwk() for key in await self.published(now)]}

    async def prune(self, now: float) -> int:
        """Delete the keys no verifier needs any more (two periods old or older)."""
        period = self.period(now)
        removed = 0
        for record in await self._store.all_secrets():
            if record.department_id != OWNER or record.purpose != PURPOSE:
                continue
            if int(record.name.rpartition(":")[2]) < period - 1:
                removed += await self._store.delete_secrets(OWNER, purpose=PURPOSE, name=record.name)
        self._cache = {p: key for p, key in self._cache.items() if p >= period - 1}
        return removed

    async def _key(self, period: int) -> SigningKey:
        cached = self._cache.get(period)
        if cached is not None:
            return cached
        record = await self._store.get_secret(OWNER, _name(period))
        if record is None:
            candidate = ec.generate_private_key(ec.SECP256R1())
            pem = candidate.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            sealed = self._keys.keyring().seal(pem, _context())
            # The first replica's key wins; a racing one reads it back instead of its own.
            record = await self._store.add_secret(SealedSecret(OWNER, _name(period), PURPOSE, sealed))
        private = serialization.load_pem_private_key(
            self._keys.keyring().open(record.sealed, _context()), None
        )
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise ValueError(f"signing key {record.name} is not an EC key")
        key = SigningKey(period, thumbprint(private.public_key()), private)
        self._cache[period] = key
        return key


def jwks_path(state_dir: Path) -> Path:
    """Where the published keys are written for the department services on this machine."""
    return state_dir.absolute() / "oauth" / "jwks.json"


def write_jwks(path: Path, jwks: dict[str, object]) -> bool:
    """Write the key set where local department services read it; False if it is unchanged."""
    text = json.dumps(jwks, indent=2, sort_keys=True) + "\n"
    with contextlib.suppress(FileNotFoundError):
        if path.read_text(encoding="utf-8") == text:
            return False
    write_atomically(path, text)
    return True


async def publish(keys: SigningKeys, path: Path, *, interval: float = 60.0) -> None:
    """Keep `path` holding the published keys, and the store free of old ones, until cancelled.

    Pruning reads every stored secret, so it runs once per period (a key only ages out
    when the period turns), not at every look."""
    pruned: int | None = None
    while True:
        now = time.time()
        try:
            if await asyncio.to_thread(write_jwks, path, await keys.jwks(now)):
                log.info("oauth: published signing keys", extra={"fields": {"path": str(path)}})
            if keys.period(now) != pruned:
                await keys.prune(now)
                pruned = keys.period(now)
        except Exception:
            log.exception("oauth: cannot publish the signing keys")
        await asyncio.sleep(min(interval, keys.rotation / 4))
