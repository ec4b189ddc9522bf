"""Settings from `PROVISIONER_*` environment variables, validated once at start.

This is the only module that reads the environment. Every problem is reported at once,
each naming its variable, so a bad deployment fails fast with a message a human can act on.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from department_service import mail
from provisioner.core.errors import ConfigurationError
from provisioner.core.retry import RetryPolicy
from provisioner.core.states import StepName
from provisioner.edge.concurrency import ConcurrencyLimits
from provisioner.edge.jwks_url import check_jwks_url
from provisioner.edge.ratelimit import Rate, parse_rate
from provisioner.edge.tls import TlsFiles
from provisioner.engine.config import EngineConfig
from provisioner.steps.container_railway.api import DEFAULT_ENDPOINT, AuthKind
from provisioner.steps.envoy_config import SYSTEM_CA_FILE, http_url
from provisioner.steps.faults import Fault, parse_fault_plan
from provisioner.steps.vault import Keyring

STEP_BACKENDS = ("embedded", "local", "noop")
MODES = ("production", "development")
#: Provisions and deprovisions per hour per caller in development mode, unless set: enough
#: for someone trying things, still a limit.
TRIAL_RATE = Rate(600, 3600.0)
#: Regions departments may run in unless PROVISIONER_REGIONS says otherwise.
DEFAULT_REGIONS = (
    "us-west", "us-east", "us-central", "eu-west", "eu-central-1", "eu-north",
    "ap-south", "ap-southeast", "ap-northeast",
)  # fmt: skip
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Settings:
    state_dir: Path = Path("var")
    database_url: str = ""
    grpc_addr: Address = Address("127.0.0.1", 50051)
    http_addr: Address = Address("127.0.0.1", 8080)
    envoy_admin_addr: Address = Address("127.0.0.1", 9901)
    metrics_addr: Address = Address("127.0.0.1", 9464)
    steps: str = "embedded"
    step_delay: float = 0.0
    faults: Mapping[StepName, tuple[Fault, ...]] = field(default_factory=dict)
    engine: EngineConfig = field(default_factory=EngineConfig)
    replica_id: str = ""
    log_level: str = "INFO"
    # Authentication: HS256 with a shared secret and/or RS256/ES256 keys from a JWKS file
    # (re-read when it changes) or URL. With none set, a server in development mode creates
    # a secret under the state dir (see `app`); one in production mode refuses to start.
    jwt_secret: str = field(default="", repr=False)
    jwks_file: Path | None = None
    jwks_url: str = ""
    #: Seconds between fetches of the JWKS URL for tokens naming an unknown key id.
    jwks_min_refresh: float = 30.0
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_leeway: float = 10.0
    rate_provision: Rate = Rate(10, 3600.0)
    rate_deprovision: Rate = Rate(10, 3600.0)
    rate_read: Rate = Rate(1200, 60.0)
    cors_origins: tuple[str, ...] = ()
    heartbeat_seconds: float = 15.0
    concurrency: ConcurrencyLimits = field(default_factory=ConcurrencyLimits)
    # Department secrets: AES-256 keys, comma-separated base64, the primary first. Unset:
    # a key file under the state dir, created with mode 0600 and rotatable in place.
    encryption_key: str = field(default="", repr=False)
    regions: tuple[str, ...] = DEFAULT_REGIONS
    # Production adapters, each chosen by its own settings (see compose.py). The tenant
    # database URL connects as an administrator, so it is kept out of repr.
    tenant_database_url: str = field(default="", repr=False)
    railway_token: str = field(default="", repr=False)
    railway_token_kind: AuthKind = "bearer"  # noqa: S105 (how the token is sent, not a token)
    railway_project_id: str = ""
    railway_environment_id: str = ""
    railway_image: str = ""
    railway_endpoint: str = DEFAULT_ENDPOINT
    n8n_url: str = ""
    n8n_api_key: str = field(default="", repr=False)
    #: The authorities Envoy trusts for department services reached over TLS (Railway's).
    upstream_ca_file: Path = SYSTEM_CA_FILE
    #: TLS on the gRPC port and Envoy's listener (None: plaintext, for loopback only).
    tls: TlsFiles | None = None
    #: Standard Webhooks: where job.completed, job.failed and department.needs_attention go,
    #: and the `whsec_` secret they are signed with.
    webhook_url: str = ""
    webhook_secret: str = field(default="", repr=False)
    webhook_timeout: float = 10.0
    webhook_max_attempts: int = 12
    webhook_retry_base: float = 5.0
    #: The SMTP relay the email workflow sends through (`smtp://` or `smtps://`, see
    #: `department_service.mail`), and an extra CA for its certificate. Passed to each
    #: department's service in its environment when the service starts.
    smtp_url: str = field(default="", repr=False)
    smtp_ca_file: Path | None = None
    #: OAuth 2.0 for departments: the issuer URL callers reach (default: the REST
    #: listener's URL), access tokens' lifetime, how often the signing key changes, and
    #: how many tokens one client may have.
    oauth_issuer: str = ""
    oauth_token_ttl: float = 300.0
    oauth_key_rotation: float = 86400.0
    oauth_token_rate: Rate = Rate(60, 60.0)
    #: An external authorization server's issuer URL: departments' clients are registered
    #: there (RFC 7591) with this initial access token, instead of the built-in server.
    oauth_provider: str = ""
    oauth_registration_token: str = field(default="", repr=False)
    #: `production` (the default) refuses to start without real secrets; `development`
    #: allows the conveniences of a trial on one machine (see `production_problems`).
    mode: str = "production"

    @property
    def railway(self) -> bool:
        """Department services run on Railway (PROVISIONER_RAILWAY_TOKEN is set)."""
        return bool(self.railway_token)

    @property
    def issuer(self) -> str:
        """Where department clients get tokens: PROVISIONER_OAUTH_ISSUER, else the REST listener."""
        return self.oauth_issuer or http_url(self.http_addr, tls=self.tls is not None)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{(self.state_dir / 'provisioner.db').resolve()}"


def _address(text: str, *, any_port: bool = False) -> Address:
    host, sep, port = text.rpartition(":")
    lowest = 0 if any_port else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) < 65536:
        raise ValueError(f"expected host:port, got {text!r}")
    return Address(host.strip("[]"), int(port))


def _any_port_address(text: str) -> Address:
    """For the listeners the server reports (gRPC, metrics): port 0 asks for any free port."""
    return _address(text, any_port=True)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(f"expected a non-negative number of seconds, got {text!r}")
    return value


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"expected a whole number, got {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if _count(text) < 1:
        raise ValueError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days >= 0 or days == float("inf"):
        raise ValueError(f"expected a number of days, 0 or more (0 keeps everything), got {text!r}")
    return days


def _positive_seconds(text: str) -> float:
    if _seconds(text) <= 0:
        raise ValueError(f"expected more than 0 seconds, got {text!r}")
    return _seconds(text)


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {text!r}")
        return text

    return parse


def database_url(text: str) -> str:
    """Accept plain driver URLs and pick the async driver for them."""
    for plain, async_ in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite:///", "sqlite+aiosqlite:///"),
    ):
        if text.startswith(plain):
            return async_ + text.removeprefix(plain)
    if text.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite:///")):
        return text
    raise ValueError("expected a postgresql:// or sqlite:/// URL")


def _tenant_database_url(text: str) -> str:
    if not text.startswith(("postgresql://", "postgres://")):
        # Not echoed: it may hold the administrator's password.
        raise ValueError("expected a postgresql:// URL (an administrator of the departments' database)")
    return text


def _http_url(text: str) -> str:
    if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", text):
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    return text.rstrip("/")


def _webhook_url(text: str) -> str:
    if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", text):
        raise ValueError("expected an http:// or https:// URL")
    return text


def _webhook_secret(text: str) -> str:
    """A Standard Webhooks secret: `whsec_` and base64 of 24 to 64 random bytes."""
    try:
        raw = base64.b64decode(text.removeprefix("whsec_"), validate=True)
    except ValueError:
        raw = b""
    if not text.startswith("whsec_") or not 24 <= len(raw) <= 64:
        # Never echoed: it is a secret.
        raise ValueError("expected whsec_ followed by base64 of 24 to 64 random bytes")
    return text


def _smtp_url(text: str) -> str:
    mail.parse_url(text, "department")  # ValueError says what is wrong, without the password
    return text


def _issuer_url(text: str) -> str:
    if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", text) or text.endswith("/"):
        raise ValueError("expected an http:// or https:// URL with no query, fragment or trailing slash")
    return text


def _readable_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"{text!r} is not a readable file")
    return path


def _origins(text: str) -> tuple[str, ...]:
    origins = tuple(o.strip() for o in text.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ValueError(f"expected origins like https://console.example.com, got {origin!r}")
    return origins


def _regions(text: str) -> tuple[str, ...]:
    regions = tuple(r.strip() for r in text.split(",") if r.strip())
    for region in regions:
        if not re.fullmatch(r"[a-z]{2,10}(?:-[a-z0-9]{1,12}){1,2}", region):
            raise ValueError(f"expected regions like us-west or eu-central-1, got {region!r}")
    return regions


def _keys(text: str) -> str:
    Keyring.parse(text)  # raises, naming the problem, for anything but 32-byte base64 keys
    return text


def _tls_files(env: Mapping[str, str], problems: list[str]) -> TlsFiles | None:
    cert, key, client_ca = (env.get(f"PROVISIONER_TLS_{n}_FILE", "") for n in ("CERT", "KEY", "CLIENT_CA"))
    if not (cert or key or client_ca):
        return None
    if not (cert and key):
        problems.append("PROVISIONER_TLS_CERT_FILE and PROVISIONER_TLS_KEY_FILE: set both, or neither")
        return None
    return TlsFiles(Path(cert), Path(key), Path(client_ca) if client_ca else None)


def _adapter_problems(env: Mapping[str, str], values: Mapping[str, object]) -> list[str]:
    """The production adapters' settings: each complete, and together a profile that works."""
    problems = []

    def given(name: str) -> bool:
        return bool(env.get(f"PROVISIONER_{name}"))

    railway = ("RAILWAY_TOKEN", "RAILWAY_PROJECT_ID", "RAILWAY_ENVIRONMENT_ID", "RAILWAY_IMAGE")
    adapters = {"railway": railway, "n8n": ("N8N_URL", "N8N_API_KEY")}
    for names in adapters.values():
        if any(given(n) for n in names):
            problems += [
                f"PROVISIONER_{n}: must be set with {', '.join(names)}" for n in names if not given(n)
            ]
    chosen = [name for name, names in adapters.items() if any(given(n) for n in names)]
    if given("TENANT_DATABASE_URL"):
        chosen.append("tenant database")
    if chosen and values["steps"] != "embedded":
        problems.append(
            f"PROVISIONER_STEPS={values['steps']} runs no real steps, so the {' and '.join(chosen)} "
            "settings would be ignored: unset them or use PROVISIONER_STEPS=embedded"
        )
    if any(given(n) for n in railway):
        # A service on Railway cannot open a file on this machine.
        if not given("TENANT_DATABASE_URL"):
            problems.append(
                "PROVISIONER_TENANT_DATABASE_URL: required with Railway, whose department services "
                "cannot reach a database file on this machine"
            )
        if not given("N8N_URL"):
            problems.append(
                "PROVISIONER_N8N_URL: required with Railway, whose department services cannot read "
                "workflow files from this machine (the workflows run on n8n)"
            )
        ca_file = values["upstream_ca_file"]
        if isinstance(ca_file, Path) and not ca_file.is_file():
            problems.append(
                f"PROVISIONER_UPSTREAM_CA_FILE: {ca_file} is not a file of trusted certificate authorities"
            )
    return problems


def production_problems(settings: Settings) -> list[str]:
    """What production mode refuses: the development conveniences, each named with the
    setting that replaces it. Empty in development mode."""
    if settings.mode == "development":
        return []
    problems = []
    if not (settings.jwt_secret or settings.jwks_file or settings.jwks_url):
        problems.append(
            "PROVISIONER_JWT_SECRET, PROVISIONER_JWKS_FILE or PROVISIONER_JWKS_URL: set one "
            "(development mode makes a secret under the state dir)"
        )
    if not settings.encryption_key:
        problems.append(
            "PROVISIONER_ENCRYPTION_KEY: set it (development mode keeps a key file beside the job store)"
        )
    if settings.faults:
        problems.append("PROVISIONER_FAULT_INJECTION: fails steps on purpose; development mode only")
    if settings.step_delay:
        problems.append("PROVISIONER_STEP_DELAY: slows every step on purpose; development mode only")
    if settings.steps != "embedded":
        problems.append(f"PROVISIONER_STEPS={settings.steps}: makes nothing real; development mode only")
    return problems


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from the environment; raise `ConfigurationError` listing every problem."""
    env = os.environ if environ is None else environ
    problems: list[str] = []

    def read(name: str, parse: Callable[[str], T], default: T) -> T:
        raw = env.get(f"PROVISIONER_{name}")
        if raw is None or raw == "":
            return default
        try:
            return parse(raw)
        except (ValueError, ConfigurationError) as exc:
            problems.append(f"PROVISIONER_{name}: {exc}")
            return default

    defaults = Settings()
    policy = RetryPolicy()
    try:
        faults = parse_fault_plan(env.get("PROVISIONER_FAULT_INJECTION", ""))
    except ConfigurationError as exc:
        problems.append(str(exc))
        faults = {}
    mode = read("MODE", _choice(MODES), defaults.mode)

    def trial(rate: Rate) -> Rate:
        """Development mode's default for the provision and deprovision limits."""
        return TRIAL_RATE if mode == "development" else rate

    values = {
        "state_dir": read("STATE_DIR", Path, defaults.state_dir),
        "database_url": read("DATABASE_URL", database_url, ""),
        "grpc_addr": read("GRPC_ADDR", _any_port_address, defaults.grpc_addr),
        "http_addr": read("HTTP_ADDR", _address, defaults.http_addr),
        "envoy_admin_addr": read("ENVOY_ADMIN_ADDR", _address, defaults.envoy_admin_addr),
        "metrics_addr": read("METRICS_ADDR", _any_port_address, defaults.metrics_addr),
        "steps": read("STEPS", _choice(STEP_BACKENDS), defaults.steps),
        "step_delay": read("STEP_DELAY", _seconds, 0.0),
        "replica_id": read("REPLICA_ID", str, ""),
        "log_level": read("LOG_LEVEL", lambda t: _choice(LOG_LEVELS)(t.upper()), defaults.log_level),
        "jwt_secret": read("JWT_SECRET", str, ""),
        "jwks_file": read("JWKS_FILE", Path, defaults.jwks_file),
        "jwks_url": read("JWKS_URL", check_jwks_url, ""),
        "jwks_min_refresh": read("JWKS_MIN_REFRESH", _seconds, defaults.jwks_min_refresh),
        "mode": mode,
        "jwt_issuer": read("JWT_ISSUER", str, ""),
        "jwt_audience": read("JWT_AUDIENCE", str, ""),
        "jwt_leeway": read("JWT_LEEWAY", _seconds, defaults.jwt_leeway),
        "rate_provision": read("RATE_LIMIT_PROVISION", parse_rate, trial(defaults.rate_provision)),
        "rate_deprovision": read("RATE_LIMIT_DEPROVISION", parse_rate, trial(defaults.rate_deprovision)),
        "rate_read": read("RATE_LIMIT_READ", parse_rate, defaults.rate_read),
        "cors_origins": read("CORS_ORIGINS", _origins, defaults.cors_origins),
        "heartbeat_seconds": read("WATCH_HEARTBEAT", _seconds, defaults.heartbeat_seconds),
        "encryption_key": read("ENCRYPTION_KEY", _keys, ""),
        "regions": read("REGIONS", _regions, defaults.regions),
        "tenant_database_url": read("TENANT_DATABASE_URL", _tenant_database_url, ""),
        "railway_token": read("RAILWAY_TOKEN", str, ""),
        "railway_token_kind": read("RAILWAY_TOKEN_KIND", _choice(("bearer", "project")), "bearer"),
        "railway_project_id": read("RAILWAY_PROJECT_ID", str, ""),
        "railway_environment_id": read("RAILWAY_ENVIRONMENT_ID", str, ""),
        "railway_image": read("RAILWAY_IMAGE", str, ""),
        "railway_endpoint": read("RAILWAY_ENDPOINT", _http_url, DEFAULT_ENDPOINT),
        "n8n_url": read("N8N_URL", _http_url, ""),
        "n8n_api_key": read("N8N_API_KEY", str, ""),
        "upstream_ca_file": read("UPSTREAM_CA_FILE", Path, SYSTEM_CA_FILE),
        "webhook_url": read("WEBHOOK_URL", _webhook_url, ""),
        "webhook_secret": read("WEBHOOK_SECRET", _webhook_secret, ""),
        "webhook_timeout": read("WEBHOOK_TIMEOUT", _positive_seconds, defaults.webhook_timeout),
        "webhook_max_attempts": read("WEBHOOK_MAX_ATTEMPTS", _positive, defaults.webhook_max_attempts),
        "webhook_retry_base": read("WEBHOOK_RETRY_BASE", _positive_seconds, defaults.webhook_retry_base),
        "smtp_url": read("SMTP_URL", _smtp_url, ""),
        "smtp_ca_file": read("SMTP_CA_FILE", _readable_file, None),
        "oauth_issuer": read("OAUTH_ISSUER", _issuer_url, ""),
        "oauth_token_ttl": read("OAUTH_TOKEN_TTL", _positive_seconds, defaults.oauth_token_ttl),
        "oauth_key_rotation": read("OAUTH_KEY_ROTATION", _positive_seconds, defaults.oauth_key_rotation),
        "oauth_token_rate": read("OAUTH_TOKEN_RATE", parse_rate, defaults.oauth_token_rate),
        "oauth_provider": read("OAUTH_PROVIDER", _issuer_url, ""),
        "oauth_registration_token": read("OAUTH_REGISTRATION_TOKEN", str, ""),
    }
    values["tls"] = _tls_files(env, problems)
    if values["jwt_secret"] and len(str(values["jwt_secret"])) < 32:
        problems.append("PROVISIONER_JWT_SECRET: use at least 32 characters (HS256 needs 256 bits)")
    if bool(values["webhook_url"]) != bool(values["webhook_secret"]):
        problems.append("PROVISIONER_WEBHOOK_URL and PROVISIONER_WEBHOOK_SECRET: set both or neither")
    if float(values["oauth_token_ttl"]) >= float(values["oauth_key_rotation"]):  # type: ignore[arg-type]
        problems.append("PROVISIONER_OAUTH_TOKEN_TTL: must be shorter than PROVISIONER_OAUTH_KEY_ROTATION")
    if bool(values["oauth_provider"]) != bool(values["oauth_registration_token"]):
        problems.append(
            "PROVISIONER_OAUTH_PROVIDER and PROVISIONER_OAUTH_REGISTRATION_TOKEN: set both or neither"
        )
    if values["heartbeat_seconds"] == 0:
        problems.append("PROVISIONER_WATCH_HEARTBEAT: must be more than 0 seconds")
    problems += _adapter_problems(env, values)
    engine_values = {
        "step_timeout": read("STEP_TIMEOUT", _seconds, defaults.engine.step_timeout),
        "health_timeout": read("HEALTH_TIMEOUT", _positive_seconds, defaults.engine.health_timeout),
        "health_ttl": read("HEALTH_CACHE_SECONDS", _seconds, defaults.engine.health_ttl),
        "job_deadline": read("JOB_DEADLINE", _seconds, defaults.engine.job_deadline),
        "lease_seconds": read("LEASE_SECONDS", _seconds, defaults.engine.lease_seconds),
        "claim_interval": read("CLAIM_INTERVAL", _seconds, defaults.engine.claim_interval),
        "max_running_jobs": read("MAX_RUNNING_JOBS", _count, defaults.engine.max_running_jobs),
        "max_departments": read("MAX_DEPARTMENTS", _count, defaults.engine.max_departments),
        "census_interval": read("CENSUS_INTERVAL", _positive_seconds, defaults.engine.census_interval),
        "webhooks": bool(values["webhook_url"]),
        "regions": values["regions"],
        "retention_days": read("RETENTION_DAYS", _days, defaults.engine.retention_days),
        "retention_interval": read(
            "RETENTION_INTERVAL", _positive_seconds, defaults.engine.retention_interval
        ),
    }
    limits = defaults.concurrency
    concurrency_values = {
        "streams": read("MAX_STREAMS_PER_PRINCIPAL", _positive, limits.streams),
        "calls": read("MAX_CALLS_PER_PRINCIPAL", _positive, limits.calls),
        "health": read("MAX_HEALTH_CHECKS_PER_PRINCIPAL", _positive, limits.health),
        "total_streams": read("MAX_STREAMS", _positive, limits.total_streams),
        "total_calls": read("MAX_CALLS", _positive, limits.total_calls),
        "lag_threshold": read("OVERLOAD_LAG", _positive_seconds, limits.lag_threshold),
    }
    retry_values = {
        "max_retries": read("MAX_RETRIES", _count, policy.max_retries),
        "base_delay": read("RETRY_BASE_SECONDS", _seconds, policy.base_delay),
        "max_delay": read("RETRY_MAX_SECONDS", _seconds, policy.max_delay),
    }
    if problems:
        raise ConfigurationError("invalid settings:\n  " + "\n  ".join(problems))
    try:
        retry = RetryPolicy(**retry_values)  # type: ignore[arg-type]
        engine = EngineConfig(retry=retry, **engine_values)  # type: ignore[arg-type]
        concurrency = ConcurrencyLimits(**concurrency_values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigurationError(f"invalid settings: {exc}") from exc
    return Settings(faults=faults, engine=engine, concurrency=concurrency, **values)  # type: ignore[arg-type]
