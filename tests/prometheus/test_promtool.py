"""The Prometheus config and rules under the real `promtool`: check config, check rules, the
unit tests in prometheus/tests/, plus checks that every rule has a unit test, that the
generated rule files are up to date and that rule names follow level:metric:operations."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from llmtraffic.dashboards import promql, rules
from llmtraffic.dashboards.scrapeconfig import REPO, RULES_DIR, SCRAPE_CONFIG, localize
from llmtraffic.harness.prometheus import find_binary

TESTS_DIR = REPO / "prometheus" / "tests"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([find_binary("promtool"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


def rule_list(kind: str) -> list[dict]:
    out = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out += [r for r in group["rules"] if kind in r]
    return out


def test_check_config(tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes discovery, so the kubernetes_sd_configs
    blocks are swapped for file_sd_configs (dashboards.scrapeconfig.localize) and promtool
    checks everything else: relabel rules, regexes, the rule files the config loads."""
    config = tmp_path / "prometheus.yml"
    config.write_text(localize(SCRAPE_CONFIG.read_text(), [], tmp_path / "sd"))
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout


def test_scrape_jobs_use_kubernetes_pod_discovery() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"asm-envoy-stats-llm", "vllm", "llmtraffic"}
    for job in jobs.values():
        assert [sd["role"] for sd in job["kubernetes_sd_configs"]] == ["pod"]
    envoy = jobs["asm-envoy-stats-llm"]
    assert envoy["metrics_path"] == "/stats/prometheus"
    assert envoy["metric_relabel_configs"] == [
        {"source_labels": ["__name__"], "action": "keep", "regex": "asm_llm_.*"}]
    assert config["rule_files"] == ["rules/*.yml"]


def test_check_rules() -> None:
    result = promtool("check", "rules", *map(str, sorted(RULES_DIR.glob("*.yml"))))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    files = sorted(p.name for p in TESTS_DIR.glob("*.yml"))
    assert files, "no promtool unit tests in prometheus/tests"
    result = promtool("test", "rules", *files, cwd=TESTS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    """The unit tests can fail: flip one expected value and promtool must say so."""
    text = (TESTS_DIR / "recording_test.yml").read_text()
    broken = text.replace("value: 0.75\n", "value: 0.7\n", 1)
    assert broken != text
    path = tmp_path / "broken_test.yml"
    path.write_text(broken.replace("../rules/", f"{RULES_DIR}/"))
    result = promtool("test", "rules", str(path))
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def _unit_tests() -> list[dict]:
    return [t for path in sorted(TESTS_DIR.glob("*.yml"))
            for t in yaml.safe_load(path.read_text())["tests"]]


def test_every_recording_rule_has_a_unit_test() -> None:
    tested = {name for t in _unit_tests() for case in t.get("promql_expr_test", [])
              for name in promql.metric_names(case["expr"])}
    missing = sorted({r["record"] for r in rule_list("record")} - tested)
    assert not missing, f"recording rules without a promql_expr_test: {missing}"


def test_every_alert_has_firing_and_silent_unit_tests() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for t in _unit_tests():
        for case in t.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    alerts = {r["alert"] for r in rule_list("alert")}
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - silent == set(), "alerts never tested silent"


def test_rule_files_are_generated_and_up_to_date() -> None:
    expected = rules.rule_files()
    assert sorted(p.name for p in RULES_DIR.glob("*.yml")) == sorted(expected)
    for name, text in expected.items():
        assert (RULES_DIR / name).read_bytes() == text.encode(), (
            f"prometheus/rules/{name} is out of date: run `llmtraffic dashboards --rules "
            "prometheus/rules`")


def _outer_by(expr: str) -> list[str]:
    match = re.search(r"\bby \(([^)]*)\)", expr)
    return [x.strip() for x in match.group(1).split(",")] if match else []


@pytest.mark.parametrize("rule", rule_list("record"), ids=lambda r: r["record"])
def test_recording_rule_name_says_what_it_keeps(rule: dict) -> None:
    """level:metric:operations, where level names the labels the result keeps."""
    level, metric, operations = rule["record"].split(":")
    assert re.fullmatch(r"[a-z0-9_]+", metric) and re.fullmatch(r"[a-z0-9_]+", operations)
    kept = [x for x in _outer_by(rule["expr"]) if x != "le"] + list(rule.get("labels", {}))
    assert level == "_".join(kept)
    if "rate(" in rule["expr"]:
        assert operations.endswith("5m") and "[5m]" in rule["expr"]
        assert not metric.endswith("_total")


@pytest.mark.parametrize("alert", rule_list("alert"), ids=lambda r: r["alert"])
def test_alert_has_severity_annotations_and_for(alert: dict) -> None:
    assert alert["labels"]["severity"] in {"warning", "critical"}
    assert alert["annotations"]["summary"] and alert["annotations"]["description"]
    assert re.fullmatch(r"\d+m", alert["for"])
