"""The gRPC port's TLS files: refused at start when they do not fit, and a half-done
rotation keeps the previous certificate."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.core.errors import ConfigurationError
from provisioner.edge.tls import ReloadingCredentials, TlsFiles
from tests.pki import issue


def test_a_key_that_is_not_the_certificates_is_refused_by_name(tmp_path: Path) -> None:
    authority = issue("test CA")
    cert, _ = issue("localhost", authority, server=True).write(tmp_path, "server")
    _, other_key = issue("localhost", authority, server=True).write(tmp_path, "other")
    with pytest.raises(ConfigurationError, match="PROVISIONER_TLS_KEY_FILE"):
        ReloadingCredentials(TlsFiles(cert, other_key))
    with pytest.raises(ConfigurationError, match="PROVISIONER_TLS_CERT_FILE"):
        ReloadingCredentials(TlsFiles(tmp_path / "missing.pem", other_key))


def test_files_that_changed_into_a_mismatch_keep_the_previous_certificate(tmp_path: Path) -> None:
    authority = issue("test CA")
    cert, key = issue("localhost", authority, server=True).write(tmp_path, "server")
    credentials = ReloadingCredentials(TlsFiles(cert, key))
    assert credentials._fetch() is None  # unchanged
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nhalf written")
    assert credentials._fetch() is None  # not usable: the loaded pair stays
    issue("localhost", authority, server=True).write(tmp_path, "server")
    assert credentials._fetch() is not None  # a good new pair is taken
    assert credentials._fetch() is None
