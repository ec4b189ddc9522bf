"""Fixtures every tier may use: the session's throwaway PostgreSQL server, the opt-in n8n."""

from tests.n8n import N8n, n8n
from tests.postgres import PostgresServer, admin_url, postgres_server, postgres_url

__all__ = ["N8n", "PostgresServer", "admin_url", "n8n", "postgres_server", "postgres_url"]
