"""The generated dashboards: committed JSON and ConfigMaps are up to date, the `dashboards`
command writes and checks them, and each dashboard has the variables, rows, units and
legends an SRE expects."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmtraffic.dashboards import build, queries
from llmtraffic.dashboards.scrapeconfig import REPO
from llmtraffic.dashboards.targets import all_queries, dashboard_targets
from llmtraffic.contracts import series as m
from llmtraffic.contracts import vllm as v

JSON_DIR = REPO / "dashboards" / "json"
K8S_DIR = REPO / "dashboards" / "k8s"


@pytest.fixture(scope="module")
def boards() -> dict[str, dict[str, Any]]:
    return {model["uid"]: model for model in build.dashboards().values()}


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def panel(board: dict[str, Any], title: str) -> dict[str, Any]:
    (found,) = [p for p in board["panels"] if p["title"] == title]
    return found


def test_committed_json_is_up_to_date() -> None:
    expected = build.dashboard_files()
    assert sorted(p.name for p in JSON_DIR.glob("*.json")) == sorted(expected)
    for name, text in expected.items():
        assert (JSON_DIR / name).read_bytes() == text.encode(), (
            f"dashboards/json/{name} is out of date: run `llmtraffic dashboards --configmaps`")


def test_committed_configmaps_are_up_to_date() -> None:
    expected = build.configmap_files()
    assert sorted(p.name for p in K8S_DIR.glob("*.yaml")) == sorted(expected)
    for name, text in expected.items():
        assert (K8S_DIR / name).read_bytes() == text.encode(), (
            f"dashboards/k8s/{name} is out of date: run `llmtraffic dashboards --configmaps`")


def test_json_is_stable_text() -> None:
    text = build.dashboard_files()["llmtraffic-overview.json"]
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True,
                              ensure_ascii=False) + "\n"
    assert build.dashboard_files() == build.dashboard_files()


def test_configmap_is_a_sidecar_dashboard() -> None:
    for name, text in build.configmap_files().items():
        doc = yaml.safe_load(text)
        assert doc["kind"] == "ConfigMap" and doc["apiVersion"] == "v1"
        assert doc["metadata"]["labels"]["grafana_dashboard"] == "1"
        (key,) = doc["data"]
        assert key == name.replace(".yaml", ".json")
        assert doc["data"][key] == (JSON_DIR / key).read_text()


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    build.add_parser(parser.add_subparsers())
    args = parser.parse_args(["dashboards", *argv])
    return args.func(args)


def test_cli_writes_then_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dash" / "json"
    assert run_cli("--out", str(out), "--configmaps", "--rules", str(tmp_path / "rules")) == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*"))
    assert written == ["dash/json/llmtraffic-comparison.json",
                       "dash/json/llmtraffic-overview.json",
                       "dash/k8s/llmtraffic-comparison.yaml",
                       "dash/k8s/llmtraffic-overview.yaml",
                       "rules/llmtraffic-alerts.yml",
                       "rules/llmtraffic-recording.yml"]
    assert (out / "llmtraffic-overview.json").read_bytes() == \
        (JSON_DIR / "llmtraffic-overview.json").read_bytes()
    assert run_cli("--out", str(out), "--configmaps", "--check") == 0
    (out / "llmtraffic-comparison.json").write_text("{}\n")
    capsys.readouterr()
    assert run_cli("--out", str(out), "--check") == 1
    assert "llmtraffic-comparison.json" in capsys.readouterr().err


def test_cli_is_registered() -> None:
    from llmtraffic import cli

    assert "llmtraffic.dashboards.build" in cli.COMMAND_MODULES


def test_uids_titles_and_variables(boards: dict[str, dict[str, Any]]) -> None:
    assert set(boards) == {"llmtraffic-overview", "llmtraffic-comparison"}
    assert boards["llmtraffic-overview"]["title"] == "LLM inference overview"
    assert boards["llmtraffic-comparison"]["title"] == "LLM load balancing comparison"
    for uid, names in (("llmtraffic-overview", ["datasource", "namespace", "pool", "model"]),
                       ("llmtraffic-comparison", ["datasource", "pool_a", "pool_b"])):
        variables = boards[uid]["templating"]["list"]
        assert [x["name"] for x in variables] == names
        assert variables[0]["type"] == "datasource" and variables[0]["query"] == "prometheus"
        for var in variables[1:]:
            assert var["type"] == "query" and var["query"].startswith("label_values(")
            assert var["datasource"]["uid"] == "${datasource}"
            if var.get("includeAll"):
                assert var["allValue"] == ".*"


def test_overview_rows_read_like_an_sre(boards: dict[str, dict[str, Any]]) -> None:
    rows = [p["title"] for p in boards["llmtraffic-overview"]["panels"] if p["type"] == "row"]
    assert rows == ["Traffic", "Latency", "Saturation", "Prefix cache and LoRA",
                    "Autoscaling signals", "llmtraffic pipeline"]


@pytest.mark.parametrize("uid", ["llmtraffic-overview", "llmtraffic-comparison"])
def test_panels_are_complete_and_laid_out(boards: dict[str, dict[str, Any]], uid: str) -> None:
    board = boards[uid]
    titles = [p["title"] for p in board["panels"]]
    assert len(set(titles)) == len(titles)
    ids = [p["id"] for p in board["panels"]]
    assert ids == list(range(1, len(ids) + 1))
    cells: set[tuple[int, int]] = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
    for p in panels(board):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["description"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs == [chr(ord("A") + i) for i in range(len(refs))]
        if p["type"] != "table":
            assert p["fieldConfig"]["defaults"]["unit"], p["title"]
            assert all(t["legendFormat"] not in ("", "__auto") for t in p["targets"])
    # Legends of multi-target panels tell the targets apart.
    for p in panels(board):
        legends = [t["legendFormat"] for t in p["targets"]]
        assert len(set(legends)) == len(legends), p["title"]


def test_units(boards: dict[str, dict[str, Any]]) -> None:
    o, c = boards["llmtraffic-overview"], boards["llmtraffic-comparison"]

    def unit(board: dict[str, Any], title: str) -> str:
        return panel(board, title)["fieldConfig"]["defaults"]["unit"]

    assert unit(o, "Time to first token (vLLM)") == "s"
    assert unit(o, "Queue time (mean) per pod") == "s"
    assert unit(o, "KV-cache usage per pod") == "percentunit"
    assert unit(o, "Prefix-cache hit rate by pool") == "percentunit"
    assert unit(o, "Token throughput by model") == "suffix: tok/s"
    assert unit(o, "Requests by model") == "reqps"
    assert unit(c, "Completion tokens/s by policy") == "suffix: tok/s"
    assert unit(c, "TTFT by policy") == "s"
    assert panel(o, "KV-cache usage per pod")["fieldConfig"]["defaults"]["max"] == 1


def exprs(p: dict[str, Any]) -> str:
    return " ".join(t["expr"] for t in p["targets"])


def test_overview_covers_the_inference_signals(boards: dict[str, dict[str, Any]]) -> None:
    o = boards["llmtraffic-overview"]
    wanted = {
        "Requests by model": queries.counter(m.REQUESTS),
        "Token throughput by model": queries.counter(m.COMPLETION_TOKENS),
        "Time to first token (vLLM)": queries.bucket(v.TTFT),
        "Queue time (mean) per pod": queries.hsum(v.QUEUE_TIME),
        "KV-cache usage per pod": queries.gauge(v.KV_CACHE_USAGE),
        "Requests running / waiting per pod": queries.gauge(v.LEGACY_NUM_REQUESTS_SWAPPED),
        "vLLM prompt / generation throughput": queries.counter(v.GENERATION_TOKENS),
        "Prefix-cache hit rate by pool": queries.counter(v.PREFIX_CACHE_HITS),
        "LoRA adapters per pod": queries.gauge(v.LORA_REQUESTS_INFO),
        "Ready pods": queries.gauge(m.POOL_READY_PODS),
        "Pool KV-cache usage (mean / max)": queries.gauge(m.POOL_KV_USAGE_MEAN),
        "Pool waiting requests": queries.gauge(m.POOL_WAITING),
    }
    for title, name in wanted.items():
        assert name in exprs(panel(o, title)), title
    lora = panel(o, "LoRA adapters per pod")
    assert lora["type"] == "table"
    assert lora["targets"][0]["instant"] and lora["targets"][0]["format"] == "table"
    rename = lora["transformations"][0]["options"]["renameByName"]
    assert {"running_lora_adapters", "waiting_lora_adapters"} <= set(rename)
    for p in panels(o):
        text = exprs(p)
        if "vllm:" in text:
            assert '$namespace' in text and '$pool' in text, p["title"]
        if queries.counter(m.REQUESTS) in text:
            assert "$model" in text


def test_comparison_sets_policies_and_pools_side_by_side(
        boards: dict[str, dict[str, Any]]) -> None:
    c = boards["llmtraffic-comparison"]
    by_policy = [p for p in panels(c) if "lb_policy" in exprs(p)]
    text = " ".join(exprs(p) for p in by_policy)
    assert queries.bucket(m.BALANCER_TTFT) in text
    assert queries.counter(m.BALANCER_COMPLETION_TOKENS) in text
    pool_panels = [p for p in panels(c) if "$pool_a" in exprs(p) and "$pool_b" in exprs(p)]
    covered = " ".join(exprs(p) for p in pool_panels)
    for name in (queries.gauge(v.KV_CACHE_USAGE), queries.hsum(v.QUEUE_TIME),
                 queries.counter(v.GENERATION_TOKENS), queries.bucket(v.TTFT)):
        assert name in covered, name
    for p in pool_panels:
        if p["type"] == "timeseries":
            legends = [t["legendFormat"] for t in p["targets"]]
            assert {x.split()[0] for x in legends} == {"A", "B"}, p["title"]


def test_all_queries_substitutes_every_variable() -> None:
    listed = all_queries(include_legacy_only=True)
    assert len(listed) == len(dashboard_targets())
    for title, expr in listed:
        assert "$" not in expr, (title, expr)
        assert " / " in title
    assert any("[1m]" in expr for _, expr in listed)
    assert any('=~".*"' in expr for _, expr in listed)
