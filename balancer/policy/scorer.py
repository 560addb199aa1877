"""`Scorer`, what one of the llm policy's scorers implements (one file each: queue.py,
kvcache.py, lora.py, prefix.py), and `Candidates`, what every scorer sees of one pick.
The policy adds weight x score over the configured scorers, in their configured order."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from llmtraffic.balancer.policy.request import LLMRequest
from llmtraffic.contracts.store import PodState

if TYPE_CHECKING:
    from llmtraffic.balancer.policy.settings import PolicyConfig


@dataclass(slots=True)
class Candidates:
    """The pods a request may go to, and the values several scorers share."""

    request: LLMRequest
    pods: list[PodState]
    queues: list[float]  # PodState.queue of each candidate
    q_min: float  # least and greatest of `queues` (min() and max() of them)
    q_max: float
    matched: dict[str, int]  # address -> leading prompt blocks the prefix index says it holds
    uncached: dict[str, float]  # address -> moving average of uncached prompt tokens sent


class Scorer(ABC):
    """One term of the llm policy's score. `name` is its key in `PolicyConfig.scorers` and
    the name of its native twin (csrc/scorers.c), if it has one. A scorer that can decide
    a pick names the pick's reason (`llm:<name>`) when it `claims` the winner; claims are
    asked in `reason_rank` order (lower first), `None` = never claims."""

    name: ClassVar[str]
    reason_rank: ClassVar[int | None] = None
    #: Needs the prompt's prefix-index match (`Candidates.matched`).
    uses_prefix_index: ClassVar[bool] = False

    def __init__(self, config: PolicyConfig) -> None:
        """Made once per policy, with the policy's configuration."""

    @abstractmethod
    def score(self, c: Candidates) -> list[float] | None:
        """A score (0..1) per candidate, in `c.pods` order; None = no opinion on this
        request (nothing is added)."""

    def claims(self, c: Candidates, j: int) -> bool:
        """Whether this scorer decided the pick of candidate `j` (see `reason_rank`)."""
        return False

    def native_params(self) -> dict[str, float]:
        """The parameters its native twin reads, by name (csrc/scorers.c)."""
        return {}
