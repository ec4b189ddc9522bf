"""The core stays pure: it imports no I/O module, driver or framework."""

from __future__ import annotations

import ast
from pathlib import Path

import provisioner.core

IO_MODULES = {
    "asyncio", "os", "io", "socket", "subprocess", "time", "pathlib", "shutil", "sqlite3", "random",
    "sqlalchemy", "alembic", "aiosqlite", "asyncpg", "grpc", "logging", "threading",
}  # fmt: skip


def test_the_core_imports_nothing_that_does_io() -> None:
    offenders = []
    for path in Path(provisioner.core.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in IO_MODULES]
    assert offenders == []
