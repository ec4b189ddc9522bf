"""Durable job store adapters (SQLite, PostgreSQL) and an in-memory one for unit tests."""
