from __future__ import annotations

import base64
from pathlib import Path

import pytest

from provisioner.core.errors import ConfigurationError
from provisioner.core.states import StepName
from provisioner.edge.ratelimit import Rate
from provisioner.settings import Address, load_settings, production_problems
from provisioner.steps.faults import Fault, parse_fault_plan


def test_defaults_are_the_embedded_control_plane() -> None:
    settings = load_settings({})
    assert settings.grpc_addr == Address("127.0.0.1", 50051)
    assert settings.http_addr == Address("127.0.0.1", 8080)
    assert settings.envoy_admin_addr == Address("127.0.0.1", 9901)
    assert settings.state_dir == Path("var")
    assert settings.effective_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.effective_database_url.endswith("/var/provisioner.db")
    assert settings.engine.step_timeout == 60
    assert settings.engine.job_deadline == 300
    assert settings.engine.retry.max_retries == 3
    assert settings.faults == {}


def test_values_are_read_and_plain_database_urls_get_async_drivers() -> None:
    settings = load_settings(
        {
            "PROVISIONER_DATABASE_URL": "postgresql://u@db:5432/jobs",
            "PROVISIONER_STEP_TIMEOUT": "5",
            "PROVISIONER_JOB_DEADLINE": "30",
            "PROVISIONER_GRPC_ADDR": "0.0.0.0:6000",
            "PROVISIONER_STEPS": "noop",
        }
    )
    assert settings.effective_database_url == "postgresql+asyncpg://u@db:5432/jobs"
    assert settings.engine.step_timeout == 5
    assert settings.grpc_addr == Address("0.0.0.0", 6000)
    assert settings.steps == "noop"


def test_every_bad_setting_is_named_at_once() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(
            {
                "PROVISIONER_GRPC_ADDR": "nowhere",
                "PROVISIONER_STEP_TIMEOUT": "soon",
                "PROVISIONER_STEPS": "magic",
                "PROVISIONER_DATABASE_URL": "mysql://x",
                "PROVISIONER_FAULT_INJECTION": "teleport=fail",
            }
        )
    message = caught.value.message
    for name in ("GRPC_ADDR", "STEP_TIMEOUT", "STEPS", "DATABASE_URL", "FAULT_INJECTION"):
        assert f"PROVISIONER_{name}" in message


def test_inconsistent_timeouts_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="PROVISIONER_JOB_DEADLINE"):
        load_settings({"PROVISIONER_STEP_TIMEOUT": "60", "PROVISIONER_JOB_DEADLINE": "10"})


def test_fault_plans_parse_every_documented_mode() -> None:
    plan = parse_fault_plan(
        "container=fail, gateway=transient:2,workflows=hang,database=fail-compensate,container=hang@hr"
    )
    assert plan == {
        StepName.CONTAINER: (Fault("fail"), Fault("hang", department="hr")),
        StepName.GATEWAY: (Fault("transient", 2),),
        StepName.WORKFLOWS: (Fault("hang"),),
        StepName.DATABASE: (Fault("fail-compensate"),),
    }


@pytest.mark.parametrize(
    ("text", "complaint"),
    [("nope=fail", "unknown step"), ("gateway", "step=mode"), ("gateway=explode", "unknown mode"),
     ("gateway=transient:0", "positive count"), ("gateway=transient:x", "positive count"),
     ("gateway=fail@../x", "department id")],
)  # fmt: skip
def test_bad_fault_plans_say_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        parse_fault_plan(text)


def test_auth_rate_and_cors_settings_are_read_and_the_secret_never_printed() -> None:
    settings = load_settings(
        {
            "PROVISIONER_JWT_SECRET": "s" * 40,
            "PROVISIONER_JWT_ISSUER": "https://issuer.example",
            "PROVISIONER_RATE_LIMIT_PROVISION": "3/30s",
            "PROVISIONER_RATE_LIMIT_READ": "600/m",
            "PROVISIONER_CORS_ORIGINS": "https://console.example.com, http://localhost:3000",
        }
    )
    assert settings.rate_provision == Rate(3, 30.0)
    assert settings.rate_read == Rate(600, 60.0)
    assert settings.rate_deprovision == Rate(10, 3600.0)
    assert settings.cors_origins == ("https://console.example.com", "http://localhost:3000")
    assert "s" * 40 not in repr(settings)


def test_bad_auth_and_rate_settings_are_named() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(
            {
                "PROVISIONER_JWT_SECRET": "short",
                "PROVISIONER_RATE_LIMIT_PROVISION": "lots",
                "PROVISIONER_CORS_ORIGINS": "javascript:alert(1)",
            }
        )
    message = caught.value.message
    for name in ("JWT_SECRET", "RATE_LIMIT_PROVISION", "CORS_ORIGINS"):
        assert f"PROVISIONER_{name}" in message


def test_concurrency_limits_are_read_and_zero_is_refused_by_name() -> None:
    settings = load_settings(
        {
            "PROVISIONER_MAX_STREAMS_PER_PRINCIPAL": "7",
            "PROVISIONER_MAX_CALLS": "50",
            "PROVISIONER_OVERLOAD_LAG": "1.5",
        }
    )
    assert (settings.concurrency.streams, settings.concurrency.total_calls) == (7, 50)
    assert settings.concurrency.lag_threshold == 1.5
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"PROVISIONER_MAX_CALLS_PER_PRINCIPAL": "0", "PROVISIONER_OVERLOAD_LAG": "0"})
    assert "PROVISIONER_MAX_CALLS_PER_PRINCIPAL" in caught.value.message
    assert "PROVISIONER_OVERLOAD_LAG" in caught.value.message


def test_health_budget_and_cache_are_read() -> None:
    settings = load_settings({"PROVISIONER_HEALTH_TIMEOUT": "1.5", "PROVISIONER_HEALTH_CACHE_SECONDS": "0"})
    assert (settings.engine.health_timeout, settings.engine.health_ttl) == (1.5, 0.0)
    with pytest.raises(ConfigurationError, match="PROVISIONER_HEALTH_TIMEOUT"):
        load_settings({"PROVISIONER_HEALTH_TIMEOUT": "0"})


def test_tls_needs_a_certificate_and_its_key() -> None:
    settings = load_settings({"PROVISIONER_TLS_CERT_FILE": "c.pem", "PROVISIONER_TLS_KEY_FILE": "k.pem"})
    assert settings.tls is not None and settings.tls.client_ca_file is None
    assert load_settings({}).tls is None
    with pytest.raises(ConfigurationError, match="PROVISIONER_TLS_CERT_FILE and PROVISIONER_TLS_KEY_FILE"):
        load_settings({"PROVISIONER_TLS_CLIENT_CA_FILE": "ca.pem", "PROVISIONER_TLS_CERT_FILE": "c.pem"})


def test_production_mode_names_every_development_convenience_it_refuses() -> None:
    development = load_settings({"PROVISIONER_MODE": "development", "PROVISIONER_STEPS": "noop"})
    assert production_problems(development) == []
    refused = production_problems(
        load_settings({"PROVISIONER_FAULT_INJECTION": "gateway=fail", "PROVISIONER_STEP_DELAY": "1"})
    )
    for setting in ("PROVISIONER_JWT_SECRET", "PROVISIONER_ENCRYPTION_KEY", "PROVISIONER_FAULT_INJECTION",
                    "PROVISIONER_STEP_DELAY"):  # fmt: skip
        assert any(setting in line for line in refused), (setting, refused)
    ready = load_settings(
        {
            "PROVISIONER_JWKS_URL": "https://idp.example/jwks",
            "PROVISIONER_ENCRYPTION_KEY": base64.b64encode(b"k" * 32).decode(),
        }
    )
    assert production_problems(ready) == []
    with pytest.raises(ConfigurationError, match="PROVISIONER_JWKS_URL"):
        load_settings({"PROVISIONER_JWKS_URL": "http://idp.example/jwks"})
    with pytest.raises(ConfigurationError, match="PROVISIONER_MODE"):
        load_settings({"PROVISIONER_MODE": "staging"})


RAILWAY = {
    "PROVISIONER_RAILWAY_TOKEN": "railway-token-0123456789",
    "PROVISIONER_RAILWAY_PROJECT_ID": "project-1",
    "PROVISIONER_RAILWAY_ENVIRONMENT_ID": "env-1",
    "PROVISIONER_RAILWAY_IMAGE": "ghcr.io/example/department-service:1",
}
N8N = {"PROVISIONER_N8N_URL": "https://n8n.example.com/", "PROVISIONER_N8N_API_KEY": "n8n-key-0123456789"}
TENANTS = {"PROVISIONER_TENANT_DATABASE_URL": "postgresql://admin:pg-admin-password@db.example.com/tenants"}


def test_the_production_adapters_are_read_and_their_secrets_never_printed(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = load_settings({**RAILWAY, **N8N, **TENANTS, "PROVISIONER_UPSTREAM_CA_FILE": str(ca_file)})
    assert settings.railway and settings.railway_token_kind == "bearer"
    assert settings.n8n_url == "https://n8n.example.com"
    assert settings.upstream_ca_file == ca_file
    for secret in ("railway-token-0123456789", "n8n-key-0123456789", "pg-admin-password"):
        assert secret not in repr(settings)


def test_an_adapter_half_configured_names_what_is_missing() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"PROVISIONER_RAILWAY_TOKEN": "t", "PROVISIONER_N8N_URL": "http://n8n:5678"})
    message = caught.value.message
    for name in ("RAILWAY_PROJECT_ID", "RAILWAY_ENVIRONMENT_ID", "RAILWAY_IMAGE", "N8N_API_KEY"):
        assert f"PROVISIONER_{name}: must be set with" in message
    # A service on Railway cannot reach a SQLite file on this machine.
    assert "PROVISIONER_TENANT_DATABASE_URL: required with Railway" in message


def test_railway_needs_its_data_in_postgres_and_its_workflows_on_n8n() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(RAILWAY)
    assert "PROVISIONER_TENANT_DATABASE_URL: required with Railway" in caught.value.message
    assert "PROVISIONER_N8N_URL: required with Railway" in caught.value.message
    # Without Railway, each of the others stands on its own beside the embedded steps.
    assert load_settings(TENANTS).tenant_database_url
    assert load_settings(N8N).n8n_url


def test_adapters_are_refused_beside_steps_that_would_ignore_them() -> None:
    with pytest.raises(ConfigurationError, match="PROVISIONER_STEPS=local runs no real steps"):
        load_settings({**TENANTS, "PROVISIONER_STEPS": "local"})


def test_a_tenant_database_url_that_is_not_postgres_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"PROVISIONER_TENANT_DATABASE_URL": "mysql://root:hunter2@db/x"})
    assert "PROVISIONER_TENANT_DATABASE_URL: expected a postgresql:// URL" in caught.value.message
    assert "hunter2" not in caught.value.message


def test_retention_days_are_read_from_the_settings() -> None:
    assert load_settings({}).engine.retention_days == 90
    assert load_settings({"PROVISIONER_RETENTION_DAYS": "0"}).engine.retention_days == 0
    with pytest.raises(ConfigurationError, match="PROVISIONER_RETENTION_DAYS"):
        load_settings({"PROVISIONER_RETENTION_DAYS": "-1"})


def test_development_mode_has_a_limit_for_trying_things_and_production_the_contracts() -> None:
    trial = load_settings({"PROVISIONER_MODE": "development"})
    assert trial.rate_provision == trial.rate_deprovision == Rate(600, 3600.0)
    assert load_settings({}).rate_provision == Rate(10, 3600.0)
    chosen = load_settings({"PROVISIONER_MODE": "development", "PROVISIONER_RATE_LIMIT_PROVISION": "5/h"})
    assert chosen.rate_provision == Rate(5, 3600.0)


def test_oauth_and_smtp_settings_are_read_and_their_secrets_never_printed() -> None:
    settings = load_settings(
        {
            "PROVISIONER_SMTP_URL": "smtp://mailer:hunter2@mail.example.com:587?from=ops@example.com",
            "PROVISIONER_OAUTH_ISSUER": "https://platform.example",
            "PROVISIONER_OAUTH_TOKEN_TTL": "120",
            "PROVISIONER_OAUTH_TOKEN_RATE": "10/m",
            "PROVISIONER_OAUTH_PROVIDER": "https://login.example",
            "PROVISIONER_OAUTH_REGISTRATION_TOKEN": "initial-access-token",
        }
    )
    assert settings.issuer == "https://platform.example"
    assert (settings.oauth_token_ttl, str(settings.oauth_token_rate)) == (120, "10/60s")
    assert settings.oauth_provider == "https://login.example"
    assert "hunter2" not in repr(settings) and "initial-access-token" not in repr(settings)
    assert load_settings({"PROVISIONER_HTTP_ADDR": "127.0.0.1:9000"}).issuer == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"PROVISIONER_SMTP_URL": "http://mail.example.com"}, "PROVISIONER_SMTP_URL: SMTP URL must start"),
        (
            {"PROVISIONER_SMTP_URL": "smtp://u:hunter2@mail.example.com:99999"},
            "PROVISIONER_SMTP_URL: SMTP URL is not",
        ),
        ({"PROVISIONER_OAUTH_ISSUER": "https://platform.example/"}, "PROVISIONER_OAUTH_ISSUER: expected"),
        ({"PROVISIONER_OAUTH_TOKEN_TTL": "86400"}, "PROVISIONER_OAUTH_TOKEN_TTL: must be shorter"),
        ({"PROVISIONER_OAUTH_PROVIDER": "https://login.example"}, "set both or neither"),
    ],
)
def test_bad_oauth_and_smtp_settings_are_named(env: dict[str, str], complaint: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(env)
    assert complaint in str(caught.value)
    assert "hunter2" not in str(caught.value)
