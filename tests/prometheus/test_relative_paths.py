"""A local Prometheus set up in a relative folder (the demo's default `--out`) starts, and
the config it writes finds its targets when started by hand from anywhere else."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmtraffic.dashboards.scrapeconfig import SCRAPE_CONFIG, LocalPod, localize
from llmtraffic.harness.prometheus import PrometheusServer
from tests.prometheus.test_scrape_dashboards_live import active_targets

pytestmark = pytest.mark.e2e


def _pod(port: int) -> LocalPod:
    return LocalPod("llmtraffic-exporter-0",
                    labels={"app.kubernetes.io/name": "llmtraffic-exporter"},
                    ports={"metrics": port})


def test_a_relative_folder_starts_and_finds_its_targets(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    pdir = Path("llmtraffic-demo") / "prometheus"
    config = localize(SCRAPE_CONFIG.read_text(), [_pod(9)], pdir / "sd",
                      scrape_interval="1s")
    with PrometheusServer(pdir, config) as prom:
        assert len(active_targets(prom, {"llmtraffic": 1}).get("llmtraffic", [])) == 1


def test_the_written_config_names_files_by_absolute_paths(tmp_path: Path,
                                                          monkeypatch) -> None:
    """So `prometheus --config.file=llmtraffic-demo/prometheus/prometheus.yml`, run from the
    folder above, or from any other, reads the same targets and rules."""
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load(localize(SCRAPE_CONFIG.read_text(), [_pod(9)], Path("out/sd")))
    files = [f for job in config["scrape_configs"] for sd in job.get("file_sd_configs", [])
             for f in sd["files"]] + config["rule_files"]
    assert files and all(Path(f).is_absolute() and list(Path("/").glob(f.lstrip("/")))
                         for f in files), files
