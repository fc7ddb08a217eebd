"""The Grafana dashboard asks only for metrics the router exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e_helpers import running_router

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "sse-router.json"
PROMQL_FUNCTIONS = {"sum", "rate", "histogram_quantile", "max", "by", "le"}


def expressions(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in expressions(value)]
    if isinstance(node, list):
        return [e for item in node for e in expressions(item)]
    return []


async def test_every_promql_expression_names_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = expressions(dashboard)
    assert len(exprs) >= 15
    async with running_router() as router:
        text = (await router.client.get("/metrics")).text
    exported = {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }
    for expr in exprs:
        without_labels = re.sub(r"\{[^}]*\}|\[[^\]]*\]|by \([^)]*\)", " ", expr)
        names = set(re.findall(r"[a-z_][a-z0-9_]*", without_labels)) - PROMQL_FUNCTIONS
        unknown = names - exported
        assert not unknown, f"{expr!r} asks for {sorted(unknown)}, which the router does not export"


def test_the_dashboard_covers_the_four_areas() -> None:
    titles = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    for row in ("Connections", "Performance", "Errors", "Business events"):
        assert row in titles
