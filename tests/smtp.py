"""A real SMTP server for tests (aiosmtpd), keeping what it receives in memory.

`MailServer` runs aiosmtpd's Controller on a free loopback port, optionally with STARTTLS
(a certificate from `tests.pki`) and AUTH. Its handler answers DATA with a reply naming a
queue id, as a relay does, refuses recipients when told to, or holds messages in DATA as a
slow relay would.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.pki import issue
from tests.ports import free_port


@dataclass(frozen=True)
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage


class _Handler:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.refuse: str | None = None
        self.lock = threading.Lock()
        self.flowing = threading.Event()  # cleared: messages wait in DATA until it is set
        self.flowing.set()
        self.held = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.refuse:
            return self.refuse
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not self.flowing.is_set():
            with self.lock:
                self.held += 1
            await asyncio.to_thread(self.flowing.wait, 10)  # as a slow relay; other sessions go on
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
            number = len(self.received)
        return f"250 2.0.0 Ok: queued as Q{number:04d}"


class MailServer:
    """A running SMTP server: `url` is what SMTP_URL should be; `received` what arrived."""

    def __init__(
        self, directory: Path | None = None, *, starttls: bool = False, login: tuple[str, str] | None = None
    ) -> None:
        self.handler = _Handler()
        self.port = free_port()
        self.ca_file: Path | None = None
        options: dict[str, Any] = {}
        if starttls:
            if directory is None:
                raise ValueError("STARTTLS needs a directory for its certificates")
            authority = issue("test mail CA")
            cert, key = issue("127.0.0.1", authority, server=True).write(directory, "smtp")
            self.ca_file, _ = authority.write(directory, "smtp-ca")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            options.update(tls_context=context, require_starttls=True)
        if login is not None:
            expected = (login[0].encode(), login[1].encode())

            def authenticate(
                server: Any, session: Any, envelope: Any, mechanism: str, data: Any
            ) -> AuthResult:
                ok = isinstance(data, LoginPassword) and (data.login, data.password) == expected
                return AuthResult(success=ok)

            options.update(authenticator=authenticate, auth_required=True, auth_require_tls=starttls)
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **options)
        self.login = login

    @property
    def url(self) -> str:
        credentials = f"{self.login[0]}:{self.login[1]}@" if self.login else ""
        return f"smtp://{credentials}127.0.0.1:{self.port}"

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def refuse_recipients(self, reply: str) -> None:
        self.handler.refuse = reply

    def hold(self) -> None:
        """Keep every message from now on waiting in DATA, until `release`."""
        self.handler.flowing.clear()

    def release(self) -> None:
        self.handler.flowing.set()

    def wait_until_holding(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.handler.held < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.handler.held} messages are held, not {count}")
            time.sleep(0.01)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.received)} messages arrived, not {count}")
            time.sleep(0.01)
        return self.received

    def __enter__(self) -> MailServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@pytest.fixture
def mail_server() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server
