"""deploy/grafana/provisioner.json: every query is valid PromQL (promtool) and names only
metrics the server exports.

The e2e tier (tests/e2e/test_metrics.py) also runs every query on a real Prometheus that
scraped a real server, and requires an answer from each.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import provisioner.telemetry.metrics  # noqa: F401  (registers the families)
from tests.prometheus import binary

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "provisioner.json"
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
_NAMES = re.compile(r"\b(?:provisioner|process)_[a-z_]+\b")


def queries() -> list[str]:
    """Every target's expression, as Grafana sends it (with `$__rate_interval`)."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def exported() -> set[str]:
    """The sample names of every family on the registry, whether it has series yet or not."""
    return {
        family.name + suffix for family in REGISTRY.collect() for suffix in _SUFFIXES.get(family.type, ("",))
    }


def test_every_query_uses_only_exported_metrics() -> None:
    names = exported()
    used = {name for expr in queries() for name in _NAMES.findall(expr)}
    assert used, "the dashboard queries nothing"
    assert used <= names, sorted(used - names)


def test_every_panel_has_a_query_and_a_unique_id() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    assert all(panel.get("targets") for panel in panels if panel["type"] != "row")


def test_the_dashboard_covers_every_provisioner_family() -> None:
    families = {f.name for f in REGISTRY.collect() if f.name.startswith("provisioner_")}
    used = " ".join(queries())
    assert {f for f in families if f not in used} == set()


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool has no expression checker of its own: each query becomes a recording rule,
    which `promtool check rules` parses (with Grafana's `$__rate_interval` as 5m)."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, expr in enumerate(queries())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        [binary("promtool"), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout
