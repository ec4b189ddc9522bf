"""Fixtures every tier may use: the session's throwaway PostgreSQL server, the opt-in n8n,
the OpenID Provider."""

from tests.n8n import N8n, n8n
from tests.oidc import OidcProvider, oidc_provider
from tests.postgres import PostgresServer, admin_url, postgres_server, postgres_url

__all__ = [
    "N8n",
    "OidcProvider",
    "PostgresServer",
    "admin_url",
    "n8n",
    "oidc_provider",
    "postgres_server",
    "postgres_url",
]
