"""TLS for the gRPC port: the server's certificate, re-read when its files change, and
optionally client certificates required (mTLS) for internal services.

grpc asks `_fetch` for the configuration at every new connection's handshake; it compares
the files' identity (inode, size, modification time) with what it loaded and re-reads them
only when they changed. A certificate and key that do not form a pair are refused at
start, and ignored (with a warning) if they appear later, so a half-written rotation never
takes the port down: connections keep the previous certificate until a good pair is there.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from provisioner.core.errors import ConfigurationError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: the server's certificate chain and key, and the authorities whose client
    certificates it accepts (None: clients are not asked for one)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.cert_file, self.key_file) + ((self.client_ca_file,) if self.client_ca_file else ())


def check_pair(files: TlsFiles) -> None:
    """Raise ConfigurationError unless the files are readable PEM and the key fits."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(files.cert_file, files.key_file)
        if files.client_ca_file is not None:
            context.load_verify_locations(files.client_ca_file)
    except (OSError, ssl.SSLError) as exc:
        names = "PROVISIONER_TLS_CERT_FILE, PROVISIONER_TLS_KEY_FILE" + (
            ", PROVISIONER_TLS_CLIENT_CA_FILE" if files.client_ca_file else ""
        )
        raise ConfigurationError(f"cannot use the TLS files ({names}): {exc}") from exc


class ReloadingCredentials:
    """Server credentials for `files` that follow them as they are replaced."""

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        check_pair(files)
        self._seen = self._identity()
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            self._fetch,  # type: ignore[arg-type]  # grpc documents None as "unchanged"
            require_client_authentication=files.client_ca_file is not None,
        )

    def _identity(self) -> tuple[tuple[int, int, int], ...]:
        stats = [path.stat() for path in self._files.files]
        return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        files = self._files
        return grpc.ssl_server_certificate_configuration(
            [(files.key_file.read_bytes(), files.cert_file.read_bytes())],
            root_certificates=files.client_ca_file.read_bytes() if files.client_ca_file else None,
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """None: keep what is loaded. Called by grpc at every handshake."""
        try:
            identity = self._identity()
            if identity == self._seen:
                return None
            check_pair(self._files)
            configuration = self._configuration()
        except (OSError, ConfigurationError) as exc:
            log.warning("TLS files changed but cannot be used yet; keeping the previous ones: %s", exc)
            return None
        self._seen = identity
        log.info("TLS certificate reloaded", extra={"fields": {"cert_file": str(self._files.cert_file)}})
        return configuration
