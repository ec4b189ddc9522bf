"""The keyring: AES-256-GCM keys from the environment or a key file, rotatable live.

What the vault does with them (sealed secrets in the job store) is tested on every
store in tests/integration/test_vault.py.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from provisioner.core.errors import ConfigurationError, StepError
from provisioner.steps.vault import Keyring, KeySource


def test_keys_from_the_environment_and_their_mistakes() -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    ring = Keyring.parse(key)
    assert ring.open(ring.seal(b"x", b"ctx"), b"ctx") == b"x"
    with pytest.raises(ConfigurationError, match="32 bytes"):
        Keyring.parse(base64.b64encode(b"short").decode())
    with pytest.raises(ConfigurationError, match="not base64"):
        Keyring.parse("%%%")


def test_a_value_sealed_for_one_context_does_not_open_in_another() -> None:
    ring = Keyring([os.urandom(32)])
    sealed = ring.seal(b"secret", b"provisioner/hr/oauth")
    with pytest.raises(StepError, match="failed authentication"):
        ring.open(sealed, b"provisioner/it/oauth")
    with pytest.raises(StepError, match="not in the keyring"):
        Keyring([os.urandom(32)]).open(sealed, b"provisioner/hr/oauth")


def test_the_key_file_is_private_and_rotates_in_place(tmp_path: Path) -> None:
    source = KeySource(path=tmp_path / "keys.json")
    first = source.keyring().primary
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    new = source.add_primary()
    assert source.keyring().ids == [new, first]
    assert source.keep_only_primary() == [first]
    assert source.keyring().ids == [new]


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    source = KeySource(path=tmp_path / "keys.json")
    source.keyring()
    (tmp_path / "keys.json").chmod(0o644)
    os.utime(tmp_path / "keys.json", ns=(1, 1))
    with pytest.raises(ConfigurationError, match="chmod 600"):
        source.keyring()
