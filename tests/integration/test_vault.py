"""Department secrets in the job store: sealed, bound to their department, shared by
every replica, rotatable live. Each test runs on the in-memory store, SQLite and
PostgreSQL; "two replicas" are two stores opened on one database.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from provisioner.core.errors import ConfigurationError, StepError
from provisioner.steps.vault import CredentialVault, KeySource, SecretStore, secret_digest
from provisioner.store.memory import InMemorySecretStore
from provisioner.store.schema import department_secrets
from provisioner.store.sql import SqlJobStore


def env_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """ "memory", or the URL of an empty job store database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/jobs.db"
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return "memory"


@pytest.fixture
async def stores(backend: str) -> AsyncIterator[Callable[[], SecretStore]]:
    """Opens a store on one shared database each time it is called (one per replica)."""
    if backend == "memory":
        shared = InMemorySecretStore()
        yield lambda: shared
        return
    url = backend
    opened: list[SqlJobStore] = []

    def open_store() -> SecretStore:
        store = SqlJobStore(url)
        opened.append(store)
        return store.secrets

    first = SqlJobStore(url)
    await first.initialize()
    opened.append(first)
    try:
        yield open_store
    finally:
        for store in opened:
            await store.close()


@pytest.fixture
def vault(stores: Callable[[], SecretStore], tmp_path: Path) -> CredentialVault:
    return CredentialVault(stores(), KeySource(path=tmp_path / "keys.json"))


async def everything_stored(store: SecretStore) -> str:
    return repr(await store.all_secrets())


async def test_an_issued_secret_is_only_ever_stored_sealed_and_hashed(vault: CredentialVault) -> None:
    client_id, secret = await vault.issue("hr", "job-1")
    assert client_id.startswith("hr.")
    assert len(secret) >= 43  # 256 bits, URL-safe base64
    assert secret not in await everything_stored(vault.store)
    assert await vault.active("hr") is None

    credential = await vault.activate("hr", "job-1")
    assert credential.client_id == client_id
    assert credential.secret_sha256 == secret_digest(secret)
    assert await vault.activate("hr", "job-1") == credential
    assert await vault.reveal("hr") == (client_id, secret)
    assert secret not in await everything_stored(vault.store)


async def test_activating_again_after_a_crash_leaves_one_sealed_copy(vault: CredentialVault) -> None:
    await vault.issue("hr", "job-1")
    issued = await vault.store.get_secret("hr", "issued:job-1")
    assert issued is not None
    await vault.activate("hr", "job-1")
    # As if a replica died after promoting and before the issued copy went.
    await vault.store.add_secret(issued)

    await vault.activate("hr", "job-1")  # the step runs again, on whichever replica

    assert [s.name for s in await vault.store.all_secrets()] == ["active"]


async def test_a_later_job_replaces_the_credential_and_revocation_leaves_nothing(
    vault: CredentialVault,
) -> None:
    await vault.issue("hr", "job-1")
    await vault.activate("hr", "job-1")
    _, second = await vault.issue("hr", "job-2")
    assert (await vault.activate("hr", "job-2")).secret_sha256 == secret_digest(second)
    with pytest.raises(StepError, match="no credentials were issued"):
        await vault.activate("hr", "job-3")
    assert await vault.revoke("hr") is True
    assert await vault.active("hr") is None
    assert await vault.revoke("hr") is False
    with pytest.raises(StepError, match="no active credentials"):
        await vault.reveal("hr")
    assert await vault.store.all_secrets() == []


async def test_a_sealed_value_does_not_open_for_another_department(vault: CredentialVault) -> None:
    await vault.issue("hr", "job-1")
    await vault.activate("hr", "job-1")
    stolen = await vault.store.get_secret("hr", "active")
    assert stolen is not None
    await vault.store.add_secret(dataclasses.replace(stolen, department_id="it"))
    with pytest.raises(StepError, match="failed authentication"):
        await vault.reveal("it")


async def test_another_replica_reveals_activates_and_revokes_what_one_issued(
    stores: Callable[[], SecretStore], tmp_path: Path
) -> None:
    key = env_key()
    one = CredentialVault(stores(), KeySource(value=key))
    two = CredentialVault(stores(), KeySource(value=key))
    client_id, secret = await one.issue("hr", "job-1")
    await two.activate("hr", "job-1")
    assert await two.reveal("hr") == (client_id, secret)
    assert await one.secret("hr", "database") == await two.secret("hr", "database")
    assert await two.revoke("hr") is True
    await two.forget("hr", "database")
    assert await one.active("hr") is None
    assert await one.store.all_secrets() == []


async def test_replicas_racing_for_a_password_agree_on_one(stores: Callable[[], SecretStore]) -> None:
    key = env_key()
    vaults = [CredentialVault(stores(), KeySource(value=key)) for _ in range(4)]
    passwords = await asyncio.gather(*(v.secret("hr", "database") for v in vaults for _ in range(3)))
    assert len(set(passwords)) == 1


async def test_a_replica_with_another_key_refuses_to_start(stores: Callable[[], SecretStore]) -> None:
    key = env_key()
    first = CredentialVault(stores(), KeySource(value=key))
    recorded = await first.check_key()
    assert await first.check_key() == recorded
    other = CredentialVault(stores(), KeySource(value=env_key()))
    with pytest.raises(ConfigurationError, match="same PROVISIONER_ENCRYPTION_KEY") as refused:
        await other.check_key()
    assert recorded in refused.value.message
    # A replica given a new primary beside the recorded key (mid-rotation) may start.
    rotating = CredentialVault(stores(), KeySource(value=f"{env_key()},{key}"))
    assert await rotating.check_key() == recorded


async def test_rotation_reseals_everything_while_every_value_stays_readable(vault: CredentialVault) -> None:
    await vault.check_key()
    await vault.issue("hr", "job-1")
    await vault.activate("hr", "job-1")
    password = await vault.secret("hr", "database")
    before = await vault.reveal("hr")
    old = vault.keys.keyring().primary

    new = vault.keys.add_primary()
    # Mid-rotation: old values open with the old key, new ones are sealed with the new.
    assert await vault.reveal("hr") == before
    await vault.issue("it", "job-9")
    assert await vault.sealed_key_ids() == {old, new}
    assert await vault.reseal_all() == 2
    assert await vault.sealed_key_ids() == {new}
    await vault.record_primary()
    assert vault.keys.keep_only_primary() == [old]
    assert await vault.check_key() == new
    assert await vault.reveal("hr") == before
    assert await vault.secret("hr", "database") == password


async def test_ids_that_are_not_departments_are_refused(vault: CredentialVault) -> None:
    for hostile in ("../etc", "a/b", "", "HR"):
        with pytest.raises(StepError):
            await vault.issue(hostile, "job")
    assert await vault.store.all_secrets() == []


async def test_a_failed_jobs_credential_is_discarded_without_touching_a_rivals(
    vault: CredentialVault,
) -> None:
    await vault.issue("hr", "winner")
    await vault.issue("hr", "loser")
    await vault.discard("hr", "loser")
    assert (await vault.activate("hr", "winner")).job_id == "winner"
    await vault.discard("hr", "winner")  # a job that failed after activation: nothing to discard
    assert await vault.active("hr") is not None


async def test_sql_rows_hold_no_plaintext(tmp_path: Path) -> None:
    store = SqlJobStore(f"sqlite+aiosqlite:///{tmp_path}/jobs.db")
    await store.initialize()
    try:
        vault = CredentialVault(store.secrets, KeySource(value=env_key()))
        _, secret = await vault.issue("hr", "job-1")
        password = await vault.secret("hr", "database")
        async with store.engine.connect() as conn:
            rows = (await conn.execute(sa.select(department_secrets))).all()
        assert len(rows) == 2
        assert secret not in repr(rows)
        assert password not in repr(rows)
    finally:
        await store.close()
