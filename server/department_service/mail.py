"""Sending the email workflow's messages over SMTP (standard library `smtplib`).

`SMTP_URL` names the relay: `smtp://[user[:password]@]host[:port]` (port 25 by default;
STARTTLS whenever the server offers it) or `smtps://...` (TLS from the first byte, port
465 by default). An optional `?from=address` sets the envelope and header sender, by
default `<department>@localhost`. `SMTP_CA_FILE` adds a CA for the relay's certificate.

The outcome is always a `Delivery` carrying the server's own reply ("250 2.0.0 queued as
...", "550 5.1.1 no such user", or what went wrong before a reply): a refusal or an
unreachable relay is a result to record, never an exception. A password is never sent
over a connection without TLS, except to a loopback relay.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from email.message import EmailMessage

DEFAULT_TIMEOUT = 10.0
MAX_REPLY = 500  # characters of a server's reply kept in the database and the answer


@dataclass(frozen=True)
class Relay:
    """Where and how to send: parsed from SMTP_URL (the password stays out of repr)."""

    host: str
    port: int
    implicit_tls: bool
    sender: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class Delivery:
    """What became of one message: `sent` with the relay's acceptance, `failed` and why, or
    `unsent` when no relay is configured."""

    status: Literal["sent", "failed", "unsent"]
    reply: str


NOT_CONFIGURED = Delivery(
    "unsent", "no SMTP relay is configured (PROVISIONER_SMTP_URL); the message is kept unsent"
)


def parse_url(url: str, department_id: str, *, ca_file: str | None = None) -> Relay:
    """The relay named by `url`; ValueError says what is wrong (never echoing the password)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"SMTP URL is not valid: {exc}") from None
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError("SMTP URL must start with smtp:// or smtps://")
    if not parts.hostname:
        raise ValueError("SMTP URL has no host")
    if parts.path not in ("", "/"):
        raise ValueError("SMTP URL takes no path")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"from"})
    if unknown:
        raise ValueError(f"SMTP URL has unknown parameters: {', '.join(unknown)} (only 'from')")
    sender = query.get("from", [f"{department_id}@localhost"])[-1]
    if "@" not in sender or any(ch in sender for ch in "\r\n <>"):
        raise ValueError("SMTP URL's 'from' must be a plain address")
    implicit = parts.scheme == "smtps"
    return Relay(
        host=parts.hostname,
        port=port or (465 if implicit else 25),
        implicit_tls=implicit,
        sender=sender,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        ca_file=ca_file or None,
    )


def warm_up() -> None:
    """Import what sending needs (smtplib, ssl, email): deferred like `auth.warm_up`."""
    import email.policy  # noqa: F401
    import smtplib  # noqa: F401


def compose(
    relay: Relay, message_id: str, department_id: str, to: str, subject: str, body: str
) -> EmailMessage:
    """The message as sent: its Message-ID is the outbox row's, so a receiver can spot a repeat."""
    from email.message import EmailMessage
    from email.policy import SMTP as SMTP_POLICY
    from email.utils import formatdate

    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = relay.sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = f"<{message_id}@{department_id}.department>"
    message.set_content(body)
    return message


def send(relay: Relay, message: EmailMessage) -> Delivery:
    """Deliver `message` to the relay: STARTTLS when offered, AUTH when a user is given."""
    import smtplib
    import ssl

    recipients = [str(message["To"])]
    try:
        context = ssl.create_default_context(cafile=relay.ca_file)
        if relay.implicit_tls:
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                relay.host, relay.port, timeout=relay.timeout, context=context
            )
        else:
            client = smtplib.SMTP(relay.host, relay.port, timeout=relay.timeout)
        with client:
            client.ehlo()
            secured = relay.implicit_tls
            if not secured and client.has_extn("starttls"):
                client.starttls(context=context)
                client.ehlo()
                secured = True
            if relay.username is not None:
                if not secured and not relay.loopback:
                    return Delivery(
                        "failed", "the relay offers no STARTTLS; the password is not sent in clear"
                    )
                client.login(relay.username, relay.password or "")
            code, reply = client.mail(relay.sender)
            if code != 250:
                return _refused(code, reply)
            for recipient in recipients:
                code, reply = client.rcpt(recipient)
                if code not in (250, 251):
                    return _refused(code, reply)
            code, reply = client.data(message.as_bytes())
            if code != 250:
                return _refused(code, reply)
            return Delivery("sent", _reply(code, reply))
    except smtplib.SMTPResponseException as exc:
        return _refused(exc.smtp_code, exc.smtp_error)
    except smtplib.SMTPNotSupportedError as exc:
        return Delivery("failed", _clip(f"the relay does not support it: {exc}"))
    except ssl.SSLError as exc:
        return Delivery("failed", _clip(f"TLS with {relay.host}:{relay.port} failed: {exc.reason or exc}"))
    except (OSError, smtplib.SMTPException) as exc:
        return Delivery(
            "failed", _clip(f"cannot reach {relay.host}:{relay.port}: {exc or type(exc).__name__}")
        )


def _refused(code: int, reply: bytes | str) -> Delivery:
    return Delivery("failed", _reply(code, reply))


def _reply(code: int, reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return _clip(f"{code} {' '.join(text.split())}")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REPLY else text[: MAX_REPLY - 1] + "…"
