"""deploy/grafana: the generated dashboard is current, well formed, complete; its PromQL parses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    GRAFANA_DIR,
    compose,
    contract_metrics,
    load_module,
    load_yaml,
    metrics_in,
    require_tool,
    run_tool,
)

builder = load_module(GRAFANA_DIR / "build_dashboard.py")
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "stream-reco.json"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in builder.iter_panels(dashboard) if p["type"] != "row"]


def _panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    (found,) = [p for p in _panels(dashboard) if p["title"] == title]
    return found


def _exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel["targets"]]


# --------------------------------------------------------------------------- generation


def test_committed_json_is_what_the_builder_generates(dashboard: dict[str, Any]) -> None:
    assert DASHBOARD_FILE.read_text(encoding="utf-8") == builder.render(), (
        "stale dashboard: run python deploy/grafana/build_dashboard.py"
    )
    assert dashboard == builder.build_dashboard()


def test_check_mode_detects_a_stale_file(tmp_path: Path) -> None:
    out = tmp_path / "dash.json"
    assert builder.main(["--output", str(out)]) == 0
    assert builder.main(["--output", str(out), "--check"]) == 0
    out.write_text(out.read_text().replace("Hit rate", "Hit ratio"))
    assert builder.main(["--output", str(out), "--check"]) == 1


# --------------------------------------------------------------------------- structure


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "stream-reco"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert "id" not in dashboard  # provisioning assigns it


def test_every_panel_has_targets_with_expr_and_unique_ref_ids(dashboard: dict[str, Any]) -> None:
    panels = _panels(dashboard)
    assert len(panels) >= 15
    for panel in panels:
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert "legendFormat" in target


def test_panel_ids_and_titles_are_unique(dashboard: dict[str, Any]) -> None:
    everything = list(builder.iter_panels(dashboard))
    ids = [p["id"] for p in everything]
    assert len(ids) == len(set(ids))
    titles = [p["title"] for p in _panels(dashboard)]
    assert len(titles) == len(set(titles))


def test_panels_fit_the_grid_without_overlap(dashboard: dict[str, Any]) -> None:
    cells: set[tuple[int, int]] = set()
    for panel in builder.iter_panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps at {(x, y)}"
                cells.add((x, y))


def test_datasource_references_are_all_the_template_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": "${datasource}"}
    for panel in _panels(dashboard):
        assert panel["datasource"] == expected, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
    for annotation in dashboard["annotations"]["list"]:
        assert annotation["datasource"] == expected, annotation["name"]
    for name in ("instance", "model"):
        assert variables[name]["datasource"] == expected


def test_model_and_instance_variables_filter_the_queries(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "stream_model_hit_rate" in variables["model"]["query"]
    assert variables["model"]["includeAll"] and variables["model"]["multi"]
    for where, expr in builder.promql_expressions(dashboard):
        for selector in re.findall(r"(stream_\w+)\{([^}]*)\}", expr):
            metric, matchers = selector
            if metric.startswith("stream_model_") or metric == "stream_drift_detections_total":
                assert 'model=~"$model"' in matchers, where
            if "ALERTS" not in expr:
                assert 'instance=~"$instance"' in matchers, where
    # every stream_* series in the dashboard has a selector (so the filters above apply)
    for where, expr in builder.promql_expressions(dashboard):
        assert not re.search(r"\bstream_\w+\b(?!\{)", expr), where


# --------------------------------------------------------------------------- content


def test_every_contract_metric_is_on_the_dashboard_and_nothing_else(
    dashboard: dict[str, Any],
) -> None:
    used: set[str] = set()
    for _, expr in builder.promql_expressions(dashboard):
        used |= metrics_in(expr)
    assert used == contract_metrics()


def test_the_required_panels_exist(dashboard: dict[str, Any]) -> None:
    throughput = _exprs(_panel(dashboard, "Events per second by type"))
    assert any("sum by (event_type)" in e and "rate(stream_events_total" in e for e in throughput)
    latency = _exprs(_panel(dashboard, "Processing latency per event"))
    quantiles = [re.match(r"histogram_quantile\(([\d.]+),", e) for e in latency]
    assert [m.group(1) for m in quantiles if m] == ["0.5", "0.95", "0.99"]
    assert all("stream_processing_seconds_bucket" in e for e in latency)
    assert "stream_consumer_lag" in _exprs(_panel(dashboard, "Consumer lag by partition"))[0]
    assert "stream_model_hit_rate" in _exprs(_panel(dashboard, "Hit rate @K"))[0]
    assert "stream_model_ndcg" in _exprs(_panel(dashboard, "NDCG @K"))[0]
    assert any(
        "stream_model_rmse" in e for e in _exprs(_panel(dashboard, "Rating error (RMSE, MAE)"))
    )
    assert (
        "stream_drift_detections_total"
        in _exprs(_panel(dashboard, "Drift detections (cumulative)"))[0]
    )
    assert "by (reason)" in _exprs(_panel(dashboard, "Dead letters per second by reason"))[0]
    known = _exprs(_panel(dashboard, "Users and items known"))
    assert any("stream_known_users" in e for e in known)
    assert any("stream_known_items" in e for e in known)
    assert "stream_worker_ready" in _exprs(_panel(dashboard, "Worker ready"))[0]


def test_drift_detections_are_annotations(dashboard: dict[str, Any]) -> None:
    (drift,) = [a for a in dashboard["annotations"]["list"] if a["name"] == "Drift detections"]
    assert drift["enable"] is True
    assert "stream_drift_detections_total" in drift["expr"]
    assert {"model", "metric"} <= set(drift["tagKeys"].split(","))


def test_every_promql_expression_parses(tmp_path: Path, dashboard: dict[str, Any]) -> None:
    """promtool parses each expression as a recording rule (Grafana variables substituted)."""
    promtool = require_tool("promtool")
    expressions = builder.promql_expressions(dashboard)
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": builder.substitute(expr)}
        for i, (_, expr) in enumerate(expressions)
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_tool(promtool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout
    # and it would notice a broken one
    rules.append({"record": "dashboard:broken", "expr": "sum by (le (rate(x[1m]))"})
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert run_tool(promtool, "check", "rules", path).returncode != 0


def test_substitute_leaves_no_grafana_variable(dashboard: dict[str, Any]) -> None:
    for where, expr in builder.promql_expressions(dashboard):
        assert "$" not in builder.substitute(expr, rate_interval="30s"), where


# --------------------------------------------------------------------------- provisioning


def test_datasource_provisioning_points_at_the_compose_prometheus() -> None:
    provisioning = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = provisioning["datasources"]
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True  # the `datasource` variable picks the default
    host_port = re.fullmatch(r"http://([\w-]+):(\d+)", source["url"])
    assert host_port, source["url"]
    services = compose()["services"]
    assert host_port.group(1) in services
    assert f"{host_port.group(2)}:{host_port.group(2)}" in services["prometheus"]["ports"]


def test_dashboard_provider_path_is_where_compose_mounts_the_json() -> None:
    provider = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "provider.yml")
    (entry,) = provider["providers"]
    volumes = compose()["services"]["grafana"]["volumes"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in volumes}
    assert mounts[entry["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    home = compose()["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home == f"{entry['options']['path']}/{DASHBOARD_FILE.name}"
