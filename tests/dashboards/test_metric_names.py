"""Every metric name the dashboards, the variables, the rules and the promtool unit tests use
is one the exporter/balancer (contracts/series.py) or vLLM (contracts/vllm.py, exposed forms)
declare, or a recording rule defined in prometheus/rules — and the dashboard code spells none
of them by hand."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from llmtraffic.dashboards import promql, queries, rules
from llmtraffic.dashboards.scrapeconfig import REPO, RULES_DIR
from llmtraffic.dashboards.targets import dashboard_targets, variable_queries
from llmtraffic.contracts import series as m
from llmtraffic.contracts import vllm as v

PROMETHEUS_BUILTINS = {"up"}


def recorded() -> set[str]:
    return {r["record"] for path in RULES_DIR.glob("*.yml")
            for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]
            if "record" in r}


def declared() -> set[str]:
    return m.all_exposed_names() | queries.vllm_exposed_names() | PROMETHEUS_BUILTINS


def rule_exprs() -> list[tuple[str, str]]:
    return [(r.get("record") or r["alert"], r["expr"]) for path in RULES_DIR.glob("*.yml")
            for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def test_dashboard_queries_use_declared_names() -> None:
    targets = dashboard_targets()
    assert len(targets) > 40
    allowed = declared() | recorded()
    bad = [(uid, title, sorted(promql.metric_names(expr) - allowed))
           for uid, title, expr in targets if promql.metric_names(expr) - allowed]
    assert not bad


def test_every_dashboard_query_selects_a_metric() -> None:
    assert all(promql.metric_names(expr) for _, _, expr in dashboard_targets())


def test_variable_queries_use_declared_names() -> None:
    for uid, name, query in variable_queries():
        selector, _ = promql.label_values_selector(query)
        assert promql.metric_names(selector) <= declared(), (uid, name)


def test_rules_use_declared_names() -> None:
    allowed = declared() | recorded()
    bad = [(name, sorted(promql.metric_names(expr) - allowed))
           for name, expr in rule_exprs() if promql.metric_names(expr) - allowed]
    assert not bad


def test_promtool_unit_test_inputs_use_declared_names() -> None:
    names = set()
    for path in (REPO / "prometheus" / "tests").glob("*.yml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            names |= {s["series"].split("{")[0] for s in test["input_series"]}
    assert names and names <= declared()


def test_a_wrong_name_is_caught() -> None:
    """The check can fail: a misspelt counter (no `_total`) is not a declared name."""
    expr = f"rate({m.PROMPT_TOKENS.name}[5m])"
    assert promql.metric_names(expr) - declared() == {m.PROMPT_TOKENS.name}


def test_v1_queries_also_read_the_legacy_name() -> None:
    """Where vLLM renamed a series, every query that reads the V1 name also reads the legacy
    one (`v1 or legacy`), in dashboards and rules alike."""
    pairs = {
        v.KV_CACHE_USAGE: v.LEGACY_GPU_CACHE_USAGE,
        v.PREFIX_CACHE_HITS: v.LEGACY_PREFIX_CACHE_HITS,
        v.PREFIX_CACHE_QUERIES: v.LEGACY_PREFIX_CACHE_QUERIES,
        v.QUEUE_TIME: v.LEGACY_TIME_IN_QUEUE,
        v.INTER_TOKEN_LATENCY: v.LEGACY_TIME_PER_OUTPUT_TOKEN,
    }
    exprs = [e for _, _, e in dashboard_targets()] + [e for _, e in rule_exprs()]
    checked = 0
    for new, old in pairs.items():
        for expr in exprs:
            names = promql.metric_names(expr)
            for sample_new, sample_old in zip(queries.vllm_exposed(new),
                                              queries.vllm_exposed(old)):
                if sample_new in names:
                    checked += 1
                    assert sample_old in names, expr
                    assert " or " in expr
    assert checked >= 10


def _string_constants(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


@pytest.mark.parametrize("path", sorted((REPO / "dashboards").glob("*.py")),
                         ids=lambda p: p.name)
def test_dashboard_code_spells_no_metric_name(path: Path) -> None:
    """Names come from contracts/series.py and contracts/vllm.py, so a rename cannot drift."""
    names = declared() - PROMETHEUS_BUILTINS
    names |= {s.name for s in m.ALL} | set(queries.VLLM_KINDS)
    pattern = re.compile(r"(?<![\w:])(" + "|".join(map(re.escape, sorted(names))) + r")(?![\w:])")
    spelled = {match.group(1) for text in _string_constants(path)
               for match in pattern.finditer(text)}
    assert not spelled


def test_recording_rule_names_derive_from_declared_names() -> None:
    bases = {s.name for s in m.ALL} | {n.replace(":", "_") for n in queries.VLLM_KINDS}
    for name in recorded():
        metric = name.split(":")[1]
        assert metric in bases or metric == rules.PREFIX_HIT_BY_POOL.split(":")[1], name
