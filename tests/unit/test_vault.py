"""Department secrets: sealed at rest, bound to their department, rotatable live."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from provisioner.core.errors import ConfigurationError, StepError
from provisioner.steps.vault import CredentialVault, Keyring, KeySource, secret_digest


@pytest.fixture
def vault(tmp_path: Path) -> CredentialVault:
    return CredentialVault(tmp_path / "vault", KeySource(path=tmp_path / "keys.json"))


def everything_on_disk(root: Path) -> str:
    return "".join(p.read_text() for p in root.rglob("*") if p.is_file())


def test_an_issued_secret_is_only_ever_on_disk_sealed_and_hashed(
    vault: CredentialVault, tmp_path: Path
) -> None:
    client_id, secret = vault.issue("hr", "job-1")
    assert client_id.startswith("hr.")
    assert len(secret) >= 43  # 256 bits, URL-safe base64
    assert secret not in everything_on_disk(tmp_path)
    assert vault.active("hr") is None

    credential = vault.activate("hr", "job-1")
    assert credential.client_id == client_id
    assert credential.secret_sha256 == secret_digest(secret)
    assert vault.activate("hr", "job-1") == credential
    assert vault.reveal("hr") == (client_id, secret)
    for path in (tmp_path / "vault").rglob("*.json"):
        assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600


def test_activating_again_after_a_crash_between_its_writes_leaves_one_sealed_copy(
    vault: CredentialVault, tmp_path: Path
) -> None:
    vault.issue("hr", "job-1")
    issued = (tmp_path / "vault" / "hr" / "issued-job-1.json").read_text()
    vault.activate("hr", "job-1")
    # As if killed after active.json was written and before the issued copy went.
    (tmp_path / "vault" / "hr" / "issued-job-1.json").write_text(issued)

    vault.activate("hr", "job-1")  # the step runs again after the restart

    assert sorted(p.name for p in (tmp_path / "vault" / "hr").iterdir()) == ["active.json"]


def test_a_later_job_replaces_the_credential_and_revocation_leaves_nothing(vault: CredentialVault) -> None:
    vault.issue("hr", "job-1")
    vault.activate("hr", "job-1")
    _, second = vault.issue("hr", "job-2")
    assert vault.activate("hr", "job-2").secret_sha256 == secret_digest(second)
    with pytest.raises(StepError, match="no credentials were issued"):
        vault.activate("hr", "job-3")
    assert vault.revoke("hr") is True
    assert vault.active("hr") is None
    assert vault.revoke("hr") is False
    with pytest.raises(StepError, match="no active credentials"):
        vault.reveal("hr")


def test_a_sealed_value_does_not_open_for_another_department(vault: CredentialVault) -> None:
    vault.issue("hr", "job-1")
    vault.activate("hr", "job-1")
    stolen = (vault.root / "hr" / "active.json").read_text()
    (vault.root / "it").mkdir(mode=0o700)
    (vault.root / "it" / "active.json").write_text(stolen)
    with pytest.raises(StepError, match="failed authentication"):
        vault.reveal("it")


def test_rotation_reseals_everything_while_every_value_stays_readable(vault: CredentialVault) -> None:
    vault.issue("hr", "job-1")
    vault.activate("hr", "job-1")
    password = vault.secret("hr", "database")
    before = vault.reveal("hr")
    old = vault.keys.keyring().primary

    new = vault.keys.add_primary()
    # Mid-rotation: old values open with the old key, new ones are sealed with the new.
    assert vault.reveal("hr") == before
    vault.issue("it", "job-9")
    assert vault.sealed_key_ids() == {old, new}
    assert vault.reseal_all() == 2
    assert vault.sealed_key_ids() == {new}
    assert vault.keys.keep_only_primary() == [old]
    assert vault.keys.keyring().ids == [new]
    assert vault.reveal("hr") == before
    assert vault.secret("hr", "database") == password


def test_keys_from_the_environment_and_their_mistakes() -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    ring = Keyring.parse(key)
    assert ring.open(ring.seal(b"x", b"ctx"), b"ctx") == b"x"
    with pytest.raises(ConfigurationError, match="32 bytes"):
        Keyring.parse(base64.b64encode(b"short").decode())
    with pytest.raises(ConfigurationError, match="not base64"):
        Keyring.parse("%%%")


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    source = KeySource(path=tmp_path / "keys.json")
    source.keyring()
    (tmp_path / "keys.json").chmod(0o644)
    os.utime(tmp_path / "keys.json", ns=(1, 1))
    with pytest.raises(ConfigurationError, match="chmod 600"):
        source.keyring()


def test_ids_that_are_not_departments_never_become_paths(vault: CredentialVault) -> None:
    for hostile in ("../etc", "a/b", "", "HR"):
        with pytest.raises(StepError):
            vault.issue(hostile, "job")
    assert not vault.root.exists()


def test_a_failed_jobs_credential_is_discarded_without_touching_a_rivals(vault: CredentialVault) -> None:
    vault.issue("hr", "winner")
    vault.issue("hr", "loser")
    vault.discard("hr", "loser")
    assert vault.activate("hr", "winner").job_id == "winner"
    vault.discard("hr", "winner")  # a job that failed after activation: nothing to discard
    assert vault.active("hr") is not None
