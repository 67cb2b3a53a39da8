"""Generate ``prometheusrule.yaml`` (Prometheus Operator) from ``deploy/prometheus/alerts.yml``.

The rule file stays the single source of truth (it is unit-tested with promtool); run
``python deploy/k8s/build_prometheusrule.py`` after editing it. ``--check`` exits 1 when the
committed manifest is stale, as ``tests/deploy/test_k8s_manifests.py`` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

__all__ = ["ALERTS_PATH", "RULE_PATH", "build_rule", "main", "render"]

HERE = Path(__file__).resolve().parent
ALERTS_PATH = HERE.parent / "prometheus" / "alerts.yml"
RULE_PATH = HERE / "prometheusrule.yaml"

_HEADER = (
    "# GENERATED from deploy/prometheus/alerts.yml by deploy/k8s/build_prometheusrule.py: do not\n"
    "# edit. The Prometheus Operator selects PrometheusRules by label (`release: prometheus` for\n"
    "# kube-prometheus-stack by default): adjust to your installation.\n"
)


def build_rule(alerts_path: Path = ALERTS_PATH) -> dict[str, Any]:
    """The PrometheusRule object holding the rule groups of ``alerts_path``."""
    groups = yaml.safe_load(alerts_path.read_text(encoding="utf-8"))["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "stream-worker",
            "labels": {
                "app.kubernetes.io/name": "stream-worker",
                "app.kubernetes.io/component": "worker",
                "release": "prometheus",
            },
        },
        "spec": {"groups": groups},
    }


def render(alerts_path: Path = ALERTS_PATH) -> str:
    """The manifest text as committed."""
    body = yaml.safe_dump(
        build_rule(alerts_path), sort_keys=False, default_flow_style=False, width=100
    )
    return _HEADER + str(body)


def main(argv: list[str] | None = None) -> int:
    """Write the manifest, or with ``--check`` fail when the committed one is stale."""
    parser = argparse.ArgumentParser(description="Generate deploy/k8s/prometheusrule.yaml.")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = RULE_PATH.read_text(encoding="utf-8") if RULE_PATH.exists() else ""
        if current != text:
            print(f"{RULE_PATH} is out of date: run python {__file__}", file=sys.stderr)
            return 1
        return 0
    RULE_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {RULE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
