"""The service keeps its promises to the platform: standard library only, small modules.

Two exceptions: `postgres.py` may import psycopg, the driver of the PostgreSQL store that
only `DATABASE_URL` turns on, and `auth.py` PyJWT (with `cryptography`), which checks
access tokens' ES256 signatures: no one should write that by hand.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import department_service

PACKAGE = Path(department_service.__file__).parent
EXCEPTIONS = {"postgres.py": ("psycopg",), "auth.py": ("jwt",)}


def test_it_imports_only_the_standard_library_and_itself() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            top = {name.split(".")[0] for name in names}
            allowed = {"department_service", *EXCEPTIONS.get(path.name, ())}
            offenders += [f"{path.name}: {t}" for t in top - sys.stdlib_module_names - allowed]
    assert offenders == []


def test_its_modules_stay_small() -> None:
    sizes = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n >= 300} == {}


def test_the_schema_template_ships_beside_its_module() -> None:
    assert (PACKAGE / "schema" / "v1.sql").is_file()
