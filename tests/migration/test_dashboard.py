"""The Grafana dashboard: valid JSON, and every query names metrics and labels that exist."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import REPO, Server

DASHBOARD = REPO / "migration" / "dashboards" / "streambridge.json"
METRIC = re.compile(r"\bstreambridge_[a-z_]+\b")
BY = re.compile(r"\bby \(([^)]*)\)")
MATCHER = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)\s*\"")
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def _panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])


@pytest.fixture(scope="module")
def exposed() -> dict[str, set[str]]:
    """Sample names and their label names, scraped from a real server after one stream."""
    server = Server("async")
    try:
        httpx.post(server.url("/v1/chat"), json={"message": "hi", "options": {"tokens": 2}},
                   timeout=10).raise_for_status()
        text = httpx.get(server.url("/metrics"), timeout=10).text
    finally:
        server.stop()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("streambridge_"):
                names.setdefault(sample.name, set()).update(sample.labels)
    return names


def test_dashboard_is_grafana_json_with_unique_ids_and_layout() -> None:
    """It parses, names itself, and every panel has an id, a title and a grid position."""
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    panels = list(_panels(dash))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["title"] and {"x", "y", "w", "h"} <= set(p["gridPos"])
        assert p["type"] == "row" or p["targets"]


def test_every_query_uses_existing_metrics_and_labels(exposed: dict[str, set[str]]) -> None:
    """Each expr's metric names are exposed by /metrics; its by()/matcher labels exist on them."""
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in _panels(dash) for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"]
              if isinstance(v.get("query"), dict)]
    assert len(exprs) >= 12
    used: set[str] = set()
    for expr in exprs:
        metrics = METRIC.findall(expr)
        assert metrics, expr
        for name in metrics:
            assert name in exposed, f"{name} (in {expr!r}) is not exposed"
            used.add(name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count"))
        labels = set().union(*(exposed[m] for m in metrics)) | {"le"}
        for group in BY.findall(expr):
            for label in filter(None, (x.strip() for x in group.split(","))):
                assert label in labels, f"by ({label}) in {expr!r}"
        for label in MATCHER.findall(expr):
            assert label in labels, f"matcher {label} in {expr!r}"
        if not expr.startswith("label_values"):
            assert "path" in expr, f"not split by path: {expr!r}"
    # Every metric the brief names has a panel.
    for base in ("streambridge_active_streams", "streambridge_streams_total",
                 "streambridge_time_to_first_chunk_seconds",
                 "streambridge_stream_duration_seconds", "streambridge_chunks_total"):
        assert base in used, base
