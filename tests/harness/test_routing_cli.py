"""`llmtraffic bench routing` from the command line: the JSON shape the issue names, and the
multi-seed summary (geometric means and ratios computed from the per-seed runs)."""

from __future__ import annotations

import json
import math
import re

import pytest

from llmtraffic.cli import main

KEYS = {"ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "e2e_p90_s", "queue_time_mean_s",
        "throughput_tok_s", "completed", "shed", "failed", "kv_usage_mean",
        "kv_usage_spread", "prefix_hit_rate", "ttft_p50_failed_s", "ttft_p90_failed_s",
        "ttft_p99_failed_s"}


def _run(tmp_path, *extra: str) -> dict:
    out = tmp_path / "routing.json"
    assert main(["bench", "routing", "--workload", "seed-lora", "--pods", "2",
                 "--duration", "20", "--policies", "round-robin,llm,oracle",
                 "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_single_seed_json_has_the_issue_shape(tmp_path, capsys):
    data = _run(tmp_path, "--seed", "3")
    assert data["workload"] == "seed-lora" and data["pods"] == 2 and data["seed"] == 3
    assert data["capacity_rps"] > 0
    assert set(data["policies"]) == {"round-robin", "llm", "greedy-oracle"}  # oracle: alias
    for row in data["policies"].values():
        assert KEYS <= set(row)
        assert row["completed"] > 0
    assert "summary" not in data
    out = capsys.readouterr().out
    assert "over seeds" not in out


def test_the_table_fits_100_columns_labels_its_times_and_says_what_the_oracle_is(
        tmp_path, capsys):
    _run(tmp_path, "--seed", "3")
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100, out
    assert "times in simulated seconds" in out
    assert "greedy-oracle: a greedy per-request heuristic with clairvoyance, not a bound" in out
    assert re.search(r"^policy\s+round-robin\s+llm\s+greedy-oracle$", out, re.M), out
    assert re.search(r"^  shed \(429\)\s+0\s+0\s+0$", out, re.M), out
    assert re.search(r"^  p90, failures inf \(s\)\s+[\d.]+", out, re.M), out
    assert "(capacity.json, calibration seed" in out


def test_several_seeds_end_with_geometric_means_and_ratios(tmp_path, capsys):
    data = _run(tmp_path, "--seed", "1,2")
    runs = data["runs"]
    assert [r["seed"] for r in runs] == [1, 2]
    llm = data["summary"]["seed-lora"]["llm"]
    p90 = [r["policies"]["llm"]["ttft_p90_s"] for r in runs]
    assert llm["seeds"] == [1, 2]
    assert math.isclose(llm["ttft_p90_s_gmean"], math.sqrt(p90[0] * p90[1]))
    ratios = [r["policies"]["llm"]["ttft_p90_s"] / r["policies"]["greedy-oracle"]["ttft_p90_s"]
              for r in runs]
    assert llm["p90_vs_oracle_per_seed"] == ratios
    assert math.isclose(llm["p90_vs_oracle_gmean"], math.sqrt(ratios[0] * ratios[1]))
    assert llm["p90_vs_oracle_worst"] == max(ratios)
    assert "p90_vs_oracle_gmean" not in data["summary"]["seed-lora"]["greedy-oracle"]
    assert "over seeds 1,2" in capsys.readouterr().out


def test_bad_seed_list_is_a_usage_error(capsys):
    try:
        main(["bench", "routing", "--seed", "1,x"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("expected a usage error")
    assert "expected a seed or a comma list" in capsys.readouterr().err


def test_policy_config_reaches_the_llm_policy(tmp_path):
    base = _run(tmp_path, "--seed", "3")["policies"]["llm"]
    other = _run(tmp_path, "--seed", "3", "--policy-config",
                 '{"scorers": {"queue": 1, "lora": 40}}')["policies"]["llm"]
    assert other != base  # the weights changed the picks


def test_bad_policy_config_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "routing", "--policy-config", '{"scorers": {"nope": 1}}'])
    assert e.value.code == 2
    assert "--policy-config" in capsys.readouterr().err
