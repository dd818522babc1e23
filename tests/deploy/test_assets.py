"""Checks of the deployment assets that need no network and no cluster.

- the alert rules and the Grafana dashboard have one source, and every copy matches it;
- promtool (when installed: on PATH or in .tools/bin, see .ci/k8s-lint.sh) accepts the
  rules, passes their unit tests and parses every dashboard query;
- every metric the dashboard or the alerts query is in the metric contract;
- values.schema.json is valid JSON and covers every key of values.yaml, and every
  values.yaml key is documented with "## @param".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/pop3proxy.rules.yaml"
RULES_TEST = ROOT / "deploy/prometheus/pop3proxy.test.yaml"
DASHBOARD = ROOT / "deploy/grafana/pop3proxy-dashboard.json"
CHART = ROOT / "helm/pop3proxy"
KUSTOMIZE_RULE = ROOT / "deploy/kubernetes/prometheusrule.yaml"

# The metric contract (docs/metrics.md): names the proxy exports.
CONTRACT = {
    "pop3proxy_connections_total",
    "pop3proxy_connections_active",
    "pop3proxy_tls_handshake_failures_total",
    "pop3proxy_tls_handshakes_total",
    "pop3proxy_tls_certificate_expiry_timestamp_seconds",
    "pop3proxy_auth_total",
    "pop3proxy_limit_rejections_total",
    "pop3proxy_login_delay_seconds_total",
    "pop3proxy_sessions_active",
    "pop3proxy_sessions_limit",
    "pop3proxy_session_duration_seconds",
    "pop3proxy_bytes_total",
    "pop3proxy_commands_total",
    "pop3proxy_backend_connect_seconds",
    "pop3proxy_backend_errors_total",
    "pop3proxy_backend_up",
    "pop3proxy_backend_state",
    "pop3proxy_backend_state_changes_total",
    "pop3proxy_kicks_total",
    "pop3proxy_kicked_sessions_total",
    "pop3proxy_login_delay_changes_total",
    "pop3proxy_delayed_logins_total",
    "pop3proxy_delayed_login_wait_seconds_total",
    "pop3proxy_download_budget_exhausted_total",
    "pop3proxy_download_budget_refusals_total",
    "pop3proxy_download_budget_flush_seconds",
    "pop3proxy_uidl_maps",
    "pop3proxy_uidl_translated_total",
    "pop3proxy_proxy_protocol_errors_total",
    "pop3proxy_directory_lookups_total",
    "pop3proxy_directory_redis_seconds",
    "pop3proxy_directory_corrupt_records_total",
    "pop3proxy_redis_up",
    "pop3proxy_build_info",
}
HISTOGRAMS = {
    "pop3proxy_session_duration_seconds",
    "pop3proxy_backend_connect_seconds",
    "pop3proxy_directory_redis_seconds",
    "pop3proxy_download_budget_flush_seconds",
}
METRIC_RE = re.compile(r"\bpop3proxy_[a-z0-9_]+")


def exported_families() -> set[str]:
    """Every metric family pop3proxy.metrics defines, as the exposition names it."""
    from prometheus_client import Counter, Gauge, Histogram

    from pop3proxy import metrics

    families = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            families.add(f"{value._name}_total")
        elif isinstance(value, Gauge | Histogram):
            families.add(value._name)
    return families


def test_every_exported_metric_is_in_the_contract_and_documented():
    families = exported_families()
    assert families, "no metric found in pop3proxy.metrics"
    assert families == CONTRACT, (
        f"not in the contract: {sorted(families - CONTRACT)}; "
        f"in the contract but not exported: {sorted(CONTRACT - families)}"
    )
    documented = set(
        re.findall(r"^\| `(pop3proxy_[a-z0-9_]+)`", (ROOT / "docs/metrics.md").read_text(), re.M)
    )
    assert families <= documented, f"not in docs/metrics.md: {sorted(families - documented)}"


def contract_name(series: str) -> str:
    """Map a queried series name to its metric family (histogram _bucket/_sum/_count)."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = series.removesuffix(suffix)
        if base != series and base in HISTOGRAMS:
            return base
    return series


def dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if var.get("type") == "query" and query:
            exprs.append(query)
    return exprs


def find_promtool() -> str | None:
    local = ROOT / ".tools/bin/promtool"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("promtool")


PROMTOOL = find_promtool()
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found on PATH or in .tools/bin (run .ci/k8s-lint.sh once to install it)",
)


# --- one source, identical copies ----------------------------------------------------


def test_chart_rules_copy_is_identical():
    copy = CHART / "files/pop3proxy.rules.yaml"
    assert copy.read_bytes() == RULES.read_bytes(), "run deploy/prometheus/sync.sh"


def test_chart_dashboard_copy_is_identical():
    copy = CHART / "files/pop3proxy-dashboard.json"
    assert copy.read_bytes() == DASHBOARD.read_bytes(), "run deploy/prometheus/sync.sh"


def test_kustomize_prometheusrule_spec_equals_rules_file():
    crd = yaml.safe_load(KUSTOMIZE_RULE.read_text())
    assert crd["kind"] == "PrometheusRule"
    assert crd["apiVersion"] == "monitoring.coreos.com/v1"
    assert crd["spec"] == yaml.safe_load(RULES.read_text()), "run deploy/prometheus/sync.sh"


def test_chart_prometheusrule_template_reads_the_rules_file():
    template = (CHART / "templates/prometheusrule.yaml").read_text()
    assert '.Files.Get "files/pop3proxy.rules.yaml"' in template


def test_chart_dashboard_template_reads_the_dashboard_file():
    template = (CHART / "templates/grafana-dashboard.yaml").read_text()
    assert '.Files.Get "files/pop3proxy-dashboard.json"' in template
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["grafanaDashboard"]["labels"] == {"grafana_dashboard": "1"}


# --- alert rules -----------------------------------------------------------------------


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_every_alert_has_severity_summary_and_docs():
    alerts_doc = (ROOT / "docs/alerts.md").read_text()
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert f"docs/alerts.md#{rule['alert'].lower()}" in rule["annotations"]["description"]
        assert f"## {rule['alert']}" in alerts_doc, f"{rule['alert']} missing in docs/alerts.md"


def test_every_alert_has_firing_and_quiet_unit_tests():
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    firing, quiet = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names <= firing, f"no firing test for {sorted(names - firing)}"
    assert names <= quiet, f"no not-firing test for {sorted(names - quiet)}"


def test_rules_query_only_contract_metrics():
    for rule in alert_rules():
        for name in METRIC_RE.findall(rule["expr"]):
            assert contract_name(name) in CONTRACT, f"{rule['alert']}: {name} not in the contract"


@needs_promtool
def test_promtool_check_rules():
    run = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_promtool_test_rules():
    run = subprocess.run(
        [PROMTOOL, "test", "rules", RULES_TEST.name],
        cwd=RULES_TEST.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


# --- Grafana dashboard -------------------------------------------------------------------


def test_dashboard_parses_and_has_the_required_panels():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "pop3proxy"
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for needed in (
        "sessions",
        "logins by result",
        "throughput",
        "backend health",
        "cache hit ratio",
        "p50 / p99",
        "backend states",
        "kicks and evacuations",
        "logins by mechanism",
        "login delay",
        "download budget",
        "uidl map",
        "uidls translated",
    ):
        assert needed in titles, f"no panel about {needed!r}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_queries_only_contract_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dashboard)
    assert exprs
    seen = set()
    for expr in exprs:
        for name in METRIC_RE.findall(expr):
            family = contract_name(name)
            assert family in CONTRACT, f"dashboard queries {name}, not in the metric contract"
            seen.add(family)
    assert seen, "the dashboard queries no pop3proxy metric"


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses every panel query (Grafana variables replaced by plain values)."""
    dashboard = json.loads(DASHBOARD.read_text())
    rules = []
    for i, expr in enumerate(dashboard_exprs(dashboard)):
        if expr.startswith("label_values("):
            continue
        expr = (
            expr.replace("$__rate_interval", "5m")
            .replace("$namespace", ".*")
            .replace("$tenant", ".*")
        )
        rules.append({"record": f"pop3proxy:dashboard_query:{i}", "expr": expr})
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


# --- Helm values ------------------------------------------------------------------------


def leaf_paths(node, prefix=""):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaf_paths(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def test_values_schema_is_valid_json_and_covers_values():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"].startswith("http://json-schema.org/draft-07/")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in leaf_paths(values):
        node = schema
        for key in path.split("."):
            if key in node.get("properties", {}):
                node = node["properties"][key]
                continue
            # only free-form objects (config, resources, labels ...) may lack the key
            assert node.get("additionalProperties", True) is not False, (
                f"values.schema.json lacks {path}"
            )
            break


def test_every_value_is_documented():
    text = (CHART / "values.yaml").read_text()
    documented = set(re.findall(r"^\s*## @param (\S+) \S", text, re.M))
    values = yaml.safe_load(text)
    for path in leaf_paths(values):
        parts = path.split(".")
        prefixes = {".".join(parts[: i + 1]) for i in range(len(parts))}
        assert prefixes & documented, f"values.yaml: {path} has no '## @param' line"


def test_chart_versions():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == "0.1.0"
    assert str(chart["appVersion"]) == "0.1.0"
