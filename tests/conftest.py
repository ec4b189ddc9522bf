"""Fixtures every tier may use: the session's throwaway PostgreSQL server."""

from tests.postgres import PostgresServer, postgres_server, postgres_url

__all__ = ["PostgresServer", "postgres_server", "postgres_url"]
